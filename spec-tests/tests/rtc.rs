//! MatrixRTC over HTTP against the real binary with its embedded SFU: OpenID tokens and
//! their userinfo, SFU discovery, the lk-jwt-service compatible token service and the
//! MSC4195 endpoint, the SFU accepting the issued token, "mute for all", and delayed
//! events (MSC4140): cancelled ones never fire, due ones fire after a restart.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, http_client, invite_and_join, Client, TestServer};

/// The LiveKit service URL the server advertises in its RTC transports.
async fn service_url(client: &Client) -> anyhow::Result<String> {
    let transports = client
        .request(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
        )
        .await?
        .ok()?;
    Ok(transports["rtc_transports"][0]["livekit_service_url"]
        .as_str()
        .with_context(|| format!("livekit_service_url: {transports}"))?
        .to_owned())
}

/// `POST {service}/sfu/get` of the lk-jwt-service API: status and body.
async fn sfu_get(
    service_url: &str,
    room: &str,
    openid: Value,
    device: &str,
) -> anyhow::Result<(u16, Value)> {
    let body = json!({"room": room, "openid_token": openid, "device_id": device});
    let resp = http_client(Duration::from_secs(30))
        .post(format!("{service_url}/sfu/get"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let value = serde_json::from_str(&text).with_context(|| format!("{status}: {text}"))?;
    Ok((status, value))
}

/// The claims of a JWT (not verified here: the SFU does that).
fn claims(jwt: &str) -> anyhow::Result<Value> {
    let payload = jwt.split('.').nth(1).context("JWT has three parts")?;
    let mut bytes = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => continue,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buf >> bits) as u8);
        }
    }
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test]
async fn rtc_transports_and_well_known_foci_name_the_token_service() -> anyhow::Result<()> {
    let (server, _) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let transports = alice
        .request(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
        )
        .await?
        .ok()?;
    assert_eq!(transports["rtc_transports"][0]["type"], "livekit");
    assert_eq!(transports["rtc_transports"], transports["transports"]);
    let service_url = service_url(&alice).await?;
    let well_known = server
        .client()
        .request(Method::GET, "/.well-known/matrix/client", None)
        .await?
        .ok()?;
    assert_eq!(
        well_known["org.matrix.msc4143.rtc_foci"][0]["livekit_service_url"],
        service_url.as_str(),
        "{well_known}"
    );
    Ok(())
}

#[tokio::test]
async fn openid_tokens_only_for_oneself_and_userinfo_names_the_user() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice
        .post(
            &format!("/user/{}/openid/request_token", enc(&bob.user_id)),
            json!({}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let token = alice.openid_token().await?;
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["matrix_server_name"], "localhost");
    let info = server
        .client()
        .request(
            Method::GET,
            &format!(
                "/_matrix/federation/v1/openid/userinfo?access_token={}",
                token["access_token"].as_str().unwrap()
            ),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(info["sub"], alice.user_id.as_str());
    server
        .client()
        .request(
            Method::GET,
            "/_matrix/federation/v1/openid/userinfo?access_token=nope",
            None,
        )
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    Ok(())
}

#[tokio::test]
async fn token_service_grants_members_a_token_the_sfu_accepts() -> anyhow::Result<()> {
    let (server, sfu_url) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let service_url = service_url(&alice).await?;
    let (status, grant) = sfu_get(&service_url, &room, alice.openid_token().await?, "ADEV").await?;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["url"], sfu_url.as_str());
    let jwt = grant["jwt"].as_str().context("jwt")?;
    let c = claims(jwt)?;
    assert_eq!(c["sub"], format!("{}:ADEV", alice.user_id));
    assert_eq!(c["video"]["roomJoin"], true);
    let http = http_client(Duration::from_secs(30));
    let http_sfu = sfu_url.replacen("ws://", "http://", 1);
    let validate = http
        .get(format!("{http_sfu}/rtc/validate?access_token={jwt}"))
        .send()
        .await?;
    assert_eq!(validate.status().as_u16(), 200, "the SFU accepts the token");
    let forged = http
        .get(format!("{http_sfu}/rtc/validate?access_token={jwt}x"))
        .send()
        .await?;
    assert_eq!(forged.status().as_u16(), 401, "a bad signature is refused");
    Ok(())
}

#[tokio::test]
async fn token_service_refuses_non_members_and_bad_openid_tokens() -> anyhow::Result<()> {
    let (server, _) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let service_url = service_url(&alice).await?;
    // Bob is not in the room: no token; a bad OpenID token: no token.
    let (status, err) = sfu_get(&service_url, &room, bob.openid_token().await?, "BDEV").await?;
    assert_eq!(
        (status, err["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{err}"
    );
    let (status, err) = sfu_get(
        &service_url,
        &room,
        json!({"access_token": "bogus", "matrix_server_name": "localhost"}),
        "BDEV",
    )
    .await?;
    assert_eq!(status, 401, "{err}");
    // CORS preflight for browsers (Element Call runs on another origin).
    let preflight = http_client(Duration::from_secs(30))
        .request(Method::OPTIONS, format!("{service_url}/sfu/get"))
        .header("Origin", "https://call.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await?;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert!(preflight
        .headers()
        .contains_key("access-control-allow-origin"));
    Ok(())
}

#[tokio::test]
async fn msc4195_get_token_is_for_the_authenticated_device() -> anyhow::Result<()> {
    let (server, sfu_url) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let direct = alice
        .request(
            Method::POST,
            "/_matrix/client/v1/rtc/livekit/get_token",
            Some(&json!({
                "room_id": room,
                "slot_id": "m.call#ROOM",
                "url": sfu_url,
                "member_id": "member-1",
            })),
        )
        .await?
        .ok()?;
    assert_eq!(
        claims(direct["jwt"].as_str().context("jwt")?)?["sub"],
        format!("{}:{}", alice.user_id, alice.device_id)
    );
    Ok(())
}

#[tokio::test]
async fn mute_all_is_for_moderators() -> anyhow::Result<()> {
    let (server, _) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    invite_and_join(&alice, &bob, &room).await?;
    let mute_path = format!(
        "/_matrix/client/unstable/io.myelin/rooms/{}/rtc/mute_all",
        enc(&room)
    );
    bob.request(Method::POST, &mute_path, Some(&json!({})))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // with nobody in the call nobody is muted
    let muted = alice
        .request(Method::POST, &mute_path, Some(&json!({})))
        .await?
        .ok()?;
    assert_eq!(muted, json!({"muted": []}));
    server
        .client()
        .request(Method::POST, &mute_path, Some(&json!({})))
        .await?
        .expect_error(401, "M_MISSING_TOKEN")?;
    Ok(())
}

const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";

/// `PUT` of a call member state event under `key` delayed by `delay_ms`; the delay id.
async fn put_delayed(
    alice: &Client,
    room: &str,
    key: &str,
    delay_ms: u64,
    content: Value,
) -> anyhow::Result<String> {
    let r = alice
        .put(
            &format!(
                "/rooms/{}/state/{CALL_MEMBER}/{}?org.matrix.msc4140.delay={delay_ms}",
                enc(room),
                enc(key)
            ),
            content,
        )
        .await?
        .ok()?;
    Ok(r["delay_id"]
        .as_str()
        .with_context(|| format!("no delay_id: {r}"))?
        .to_owned())
}

/// The current call member state under `key`: status and content.
async fn call_member(
    alice: &Client,
    room: &str,
    key: &str,
) -> anyhow::Result<spec_tests::Response> {
    alice
        .get(&format!(
            "/rooms/{}/state/{CALL_MEMBER}/{}",
            enc(room),
            enc(key)
        ))
        .await
}

/// The ids of the user's pending delayed events.
async fn pending(alice: &Client) -> anyhow::Result<Vec<String>> {
    let listed = alice.request(Method::GET, DELAYED, None).await?.ok()?;
    Ok(listed["delayed_events"]
        .as_array()
        .with_context(|| format!("no delayed_events: {listed}"))?
        .iter()
        .filter_map(|e| e["delay_id"].as_str().map(str::to_owned))
        .collect())
}

/// Polls (up to 15 s) until the call member state under `key` exists; returns its content.
async fn wait_for_member(alice: &Client, room: &str, key: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = call_member(alice, room, key).await?;
        if state.status == 200 {
            return Ok(state.body);
        }
        state.expect_error(404, "M_NOT_FOUND")?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "delayed event under {key} did not fire within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_delayed_event_due_while_the_server_is_down_fires_after_restart() -> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_secs(4);
    let mut server = TestServer::start().await?;
    let versions = server
        .client()
        .request(Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let key = format!("_{}_DEV", alice.user_id);
    // The server counts the delay from when it got the request: after `sent`.
    let sent = Instant::now();
    let id = put_delayed(
        &alice,
        &room,
        &key,
        DELAY.as_millis() as u64,
        json!({"application": "m.call"}),
    )
    .await?;
    // Still pending just before the kill...
    assert_eq!(pending(&alice).await?, [id]);
    call_member(&alice, &room, &key)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    server.kill9()?;
    // ...and the kill came before it was due, so it cannot have fired then.
    anyhow::ensure!(
        sent.elapsed() < DELAY,
        "the test was too slow to kill the server before the event was due ({:?})",
        sent.elapsed()
    );
    tokio::time::sleep((DELAY + Duration::from_millis(300)).saturating_sub(sent.elapsed())).await;
    server.start_again().await?;
    let content = wait_for_member(&alice, &room, &key).await?;
    assert_eq!(content, json!({"application": "m.call"}));
    assert_eq!(pending(&alice).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn a_cancelled_delayed_event_never_fires() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let cancelled_key = format!("_{}_CANCELLED", alice.user_id);
    let later_key = format!("_{}_LATER", alice.user_id);
    let cancelled = put_delayed(&alice, &room, &cancelled_key, 1_000, json!({})).await?;
    // Due after the cancelled one: once it fired, the cancelled one's time has passed.
    let later = put_delayed(&alice, &room, &later_key, 2_000, json!({})).await?;
    let mut listed = pending(&alice).await?;
    listed.sort();
    let mut both = vec![cancelled.clone(), later];
    both.sort();
    assert_eq!(listed, both);
    alice
        .request(
            Method::POST,
            &format!("{DELAYED}/{cancelled}"),
            Some(&json!({"action": "cancel"})),
        )
        .await?
        .ok()?;
    alice
        .request(
            Method::POST,
            &format!("{DELAYED}/nope"),
            Some(&json!({"action": "send"})),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    wait_for_member(&alice, &room, &later_key).await?;
    call_member(&alice, &room, &cancelled_key)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    assert_eq!(pending(&alice).await?, Vec::<String>::new());
    // and it is gone: cancelling it again finds nothing
    alice
        .request(
            Method::POST,
            &format!("{DELAYED}/{cancelled}"),
            Some(&json!({"action": "cancel"})),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}
