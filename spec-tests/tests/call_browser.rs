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

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use spec_tests::{chromium, js_node, run_program, Client, TestServer};

/// Announces `client`'s call membership in `room` (`org.matrix.msc3401.call.member`, as
/// Element Call does before it joins the SFU): "mute for all" spares the moderator's own
/// devices by this membership.
async fn join_call(client: &Client, room: &str, service_url: &str) -> anyhow::Result<()> {
    let key = format!("_{}_{}_m.call", client.user_id, client.device_id);
    client
        .set_state(
            room,
            "org.matrix.msc3401.call.member",
            &key,
            json!({
                "application": "m.call",
                "call_id": "",
                "scope": "m.room",
                "device_id": client.device_id,
                "expires": 3_600_000,
                "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
                "foci_preferred": [{
                    "type": "livekit",
                    "livekit_alias": room,
                    "livekit_service_url": service_url,
                }],
            }),
        )
        .await?
        .ok()?;
    Ok(())
}

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
    let call_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("call");
    for package in ["livekit-client", "playwright-core"] {
        if !call_dir.join("node_modules").join(package).exists() {
            bail!(
                "{package} is not installed in {}: run the tests with spec-tests/run (npm ci)",
                call_dir.display()
            );
        }
    }
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
    join_call(&alice, &room, &service_url).await?;
    join_call(&bob, &room, &service_url).await?;

    let config = json!({
        "homeserver": server.base,
        "serviceUrl": service_url,
        "roomId": room,
        "chromium": chromium,
        "alice": participant(&alice).await?,
        "bob": participant(&bob).await?,
    });
    let script = call_dir.join("call.mjs");
    let mut driver = std::process::Command::new(js_node());
    driver
        .arg(script)
        .env("MYELIN_CALL_CONFIG", config.to_string());
    let out = run_program(driver, Duration::from_secs(300))
        .await
        .with_context(|| {
            format!(
                "running the call driver with Node.js (MYELIN_JS_NODE or node)\nserver log:\n{}",
                server.log()
            )
        })?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    let failure = || {
        format!(
            "browser call failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
            out.status,
            server.log()
        )
    };
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .with_context(failure)?;
    assert!(out.status.success(), "{}", failure());
    assert_eq!(summary["ok"], true, "{}", failure());

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
