//! A real call in real browsers: `livekit-client` in two headless Chromium pages
//! (`spec-tests/call/call.mjs`, driven with playwright-core) against Myelin with its
//! embedded SFU. Alice and bob register, share a room and announce their call membership
//! like Element Call; each page trades an OpenID token for a LiveKit token at
//! `/sfu/get`, joins, and publishes the fake camera and microphone. The driver checks that
//! each side receives the other's audio and video (inbound bytes and decoded frames rising),
//! that data packets arrive, that mutes — the publisher's own and the moderator's "mute for
//! all" — are seen, and that leaving is seen.
//!
//! `spec-tests/run` installs Debian's Chromium and `spec-tests/call/node_modules` and sets
//! `MYELIN_CHROMIUM`; without them this test fails rather than skipping.

use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};
use spec_tests::{browser_driver_dir, chromium, run_browser_driver, Client, TestServer};

/// The driver's view of one user.
async fn participant(client: &Client) -> anyhow::Result<Value> {
    let openid = client.openid_token().await?;
    Ok(json!({
        "userId": client.user_id,
        "deviceId": client.device_id,
        "accessToken": client.token,
        "openidToken": openid,
    }))
}

#[tokio::test]
async fn two_browsers_call_through_the_embedded_sfu() -> anyhow::Result<()> {
    let started = Instant::now();
    browser_driver_dir()?;
    let chromium = chromium()?;

    let (server, _) = TestServer::start_with_sfu(&[
        // The SFU's own decisions in detail; webrtc-rs only when something is wrong.
        (
            "RUST_LOG",
            "info,ruma_state_res=warn,myelin_sfu=debug,webrtc=warn,webrtc_ice=error,\
             webrtc_srtp=warn,webrtc_sctp=warn,webrtc_data=warn,dtls=error",
        ),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await?;
    bob.join(&room).await?;
    let transports = alice
        .request(
            reqwest::Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
        )
        .await?
        .ok()?;
    let service_url = transports["rtc_transports"][0]["livekit_service_url"]
        .as_str()
        .context("no livekit_service_url in the RTC transports")?
        .trim_end_matches('/')
        .to_owned();
    alice.join_call(&room, &service_url, 3_600_000).await?;
    bob.join_call(&room, &service_url, 3_600_000).await?;

    let config = json!({
        "homeserver": server.base,
        "serviceUrl": service_url,
        "roomId": room,
        "chromium": chromium,
        "alice": participant(&alice).await?,
        "bob": participant(&bob).await?,
    });
    let summary = run_browser_driver(
        &server,
        "call.mjs",
        "MYELIN_CALL_CONFIG",
        &config,
        "browser call",
    )
    .await?;

    // The driver checked the details; make sure the summary says so, too.
    let alice_identity = format!("{}:{}", alice.user_id, alice.device_id);
    let bob_identity = format!("{}:{}", bob.user_id, bob.device_id);
    assert_eq!(summary["identities"]["alice"], alice_identity.as_str());
    assert_eq!(summary["identities"]["bob"], bob_identity.as_str());
    for name in ["alice", "bob"] {
        let media = &summary["media"][name];
        for counter in ["audioBytes", "videoBytes", "framesDecoded"] {
            let first = media["first"][counter].as_u64().unwrap_or(0);
            let later = media["later"][counter].as_u64().unwrap_or(0);
            assert!(
                first > 0 && later > first,
                "{name}: {counter} did not rise: {media}"
            );
        }
    }
    assert_eq!(summary["muteAll"], json!({"muted": [bob_identity]}));
    let steps: Vec<&str> = summary["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for expected in [
        "alice received bob's data packet",
        "bob received alice's data packet",
        "bob sees alice's mute",
        "bob's microphone muted by mute_all (seen by bob)",
        "bob's microphone muted by mute_all (seen by alice)",
        "alice sees bob leave",
    ] {
        assert!(
            steps.contains(&expected),
            "missing step {expected}: {steps:?}"
        );
    }
    for step in summary["steps"].as_array().into_iter().flatten() {
        let at = step["atMs"].as_u64().unwrap_or(0);
        eprintln!("{at:>6} ms  {}", step["name"].as_str().unwrap_or(""));
    }
    eprintln!(
        "media: {}\n{} (driver {} ms); browser call test passed in {:.1?}",
        summary["media"],
        summary["browser"],
        summary["durationMs"],
        started.elapsed()
    );
    Ok(())
}
