//! Several SFUs behind one token service (`rtc.sfus`): two `myelin-sfu` processes, calls
//! placed on them by rendezvous hashing. Two rooms' calls land on different SFUs; everyone
//! in one call gets the same SFU and meets there; a kick reaches the SFU hosting that
//! call (the member is disconnected there), a delegated leave must name the hosting SFU.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use livekit_protocol as proto;
use myelin_sfu::client::{Client as SfuClient, Event};
use serde_json::{json, Value};
use spec_tests::{
    enc, free_port, free_udp_port, http_client, invite_and_join, workspace_binary, Client,
    TestServer,
};

const KEY: &str = "multikey";
const SECRET: &str = "a-secret-shared-by-the-token-service-and-both-sfus";
const INTERNAL: &str = "internal-secret-of-both-sfus";

/// A standalone `myelin-sfu` on loopback; killed on drop.
struct Sfu {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_sfu() -> Result<Sfu> {
    let bin = workspace_binary("MYELIN_SFU_BIN", "myelin-sfu");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --workspace --bins` (spec-tests/run does)",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let udp = free_udp_port()?;
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\n[keys]\n{KEY} = \"{SECRET}\"\n\n[rtc]\nbind_ip = \
         \"127.0.0.1\"\nudp_port = {udp}\n\n[internal]\nsecret = \"{INTERNAL}\"\n"
    );
    let path = dir.path().join("sfu.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.path().join("sfu.log"))?;
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut sfu = Sfu {
        child,
        url: format!("ws://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = sfu.child.try_wait()? {
            bail!(
                "the SFU exited with {status}: {}",
                std::fs::read_to_string(sfu._dir.path().join("sfu.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("the SFU did not listen within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(sfu)
}

/// `{url, jwt}` for `c`'s device `device` in the room's call, from `/sfu/get`.
async fn sfu_grant(server: &TestServer, c: &Client, room: &str, device: &str) -> Result<Value> {
    let body = json!({"room": room, "openid_token": c.openid_token().await?, "device_id": device});
    let response = http_client(Duration::from_secs(30))
        .post(format!("{}/sfu/get", server.base))
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let grant: Value = response.json().await?;
    if !status.is_success() {
        bail!("/sfu/get answered {status}: {grant}");
    }
    Ok(grant)
}

#[tokio::test]
async fn calls_are_spread_over_two_sfus_and_each_call_meets_on_its_own() -> Result<()> {
    let (a, b) = (start_sfu().await?, start_sfu().await?);
    let sfus = format!("{},{}", a.url, b.url);
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_RTC_EMBEDDED_SFU", "false"),
        ("MYELIN_RTC_LIVEKIT_API_KEY", KEY),
        ("MYELIN_RTC_LIVEKIT_API_SECRET", SECRET),
        ("MYELIN_RTC_SFU_INTERNAL_SECRET", INTERNAL),
        ("MYELIN_RTC_SFUS", sfus.as_str()),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;

    // Rooms until one call is on each SFU (rendezvous hashing spreads them evenly).
    let mut on_a = None;
    let mut on_b = None;
    for _ in 0..40 {
        let room = alice.create_room(json!({})).await?;
        let url = sfu_grant(&server, &alice, &room, "ADEV").await?["url"]
            .as_str()
            .context("url")?
            .to_owned();
        if url == a.url && on_a.is_none() {
            on_a = Some(room);
        } else if url == b.url && on_b.is_none() {
            on_b = Some(room);
        } else if url != a.url && url != b.url {
            bail!("a call was placed on {url}, which is neither SFU");
        }
        if on_a.is_some() && on_b.is_some() {
            break;
        }
    }
    let (Some(room_a), Some(room_b)) = (on_a, on_b) else {
        bail!("40 calls never used both SFUs");
    };

    let mut calls = Vec::new();
    for (room, sfu) in [(&room_a, &a), (&room_b, &b)] {
        invite_and_join(&alice, &bob, room).await?;
        let alice_grant = sfu_grant(&server, &alice, room, "ADEV").await?;
        let bob_grant = sfu_grant(&server, &bob, room, "BDEV").await?;
        // The same call, the same SFU, every time and for everyone.
        assert_eq!(alice_grant["url"], sfu.url.as_str(), "{alice_grant}");
        assert_eq!(bob_grant["url"], sfu.url.as_str(), "{bob_grant}");
        let mut alice_call =
            SfuClient::connect(&sfu.url, alice_grant["jwt"].as_str().context("jwt")?).await?;
        let bob_call =
            SfuClient::connect(&sfu.url, bob_grant["jwt"].as_str().context("jwt")?).await?;
        let bob_identity = format!("{}:BDEV", bob.user_id);
        alice_call
            .wait_for("alice to meet bob on the hosting SFU", |e| {
                matches!(e, Event::Signal(proto::signal_response::Message::Update(u))
                    if u.participants.iter().any(|p| p.identity == bob_identity))
            })
            .await?;
        calls.push((room.clone(), alice_call, bob_call));
    }

    // A kick in the room on SFU B disconnects bob there; his call on SFU A goes on.
    let (_, _, mut bob_on_b) = calls.pop().context("call on b")?;
    alice
        .post(
            &format!("/rooms/{}/kick", enc(&room_b)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .ok()?;
    bob_on_b
        .wait_for("SFU B to remove bob", |e| {
            matches!(e, Event::Signal(proto::signal_response::Message::Leave(l))
                if l.reason == proto::DisconnectReason::ParticipantRemoved as i32)
        })
        .await?;
    let (_, alice_on_a, bob_on_a) = calls.pop().context("call on a")?;
    let still = sfu_grant(&server, &bob, &room_a, "BDEV").await?;
    SfuClient::connect(&a.url, still["jwt"].as_str().context("jwt")?)
        .await?
        .close()
        .await;

    // A delegated leave must name the SFU that hosts the call.
    let delegate = |url: &str| {
        json!({"url": url, "room_id": room_a, "slot_id": "m.call#ROOM",
               "member_id": "m1", "delay_id": "nope"})
    };
    let wrong = alice
        .request(
            reqwest::Method::POST,
            "/_matrix/client/v1/rtc/livekit/delegate_delayed_leave",
            Some(&delegate(&b.url)),
        )
        .await?;
    assert_eq!(wrong.status, 400, "{}", wrong.text);
    assert!(wrong.text.contains(&a.url), "{}", wrong.text);
    alice_on_a.close().await;
    bob_on_a.close().await;
    bob_on_b.close().await;
    Ok(())
}
