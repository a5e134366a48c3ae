//! MatrixRTC over HTTP against the real binary with its embedded SFU: OpenID tokens and
//! their userinfo, SFU discovery, the lk-jwt-service compatible token service and the
//! MSC4195 endpoint, the SFU accepting the issued token, "mute for all", and delayed
//! events (MSC4140) that fire after a restart.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, free_port, Client, TestServer};

async fn server_with_sfu() -> anyhow::Result<(TestServer, String)> {
    let port = free_port()?;
    let sfu = format!("ws://127.0.0.1:{port}");
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_RTC_EMBEDDED_SFU", "true"),
        ("MYELIN_RTC_LIVEKIT_URL", &sfu),
        ("MYELIN_SFU_BIND_IP", "127.0.0.1"),
    ])
    .await?;
    Ok((server, sfu))
}

async fn openid(client: &Client) -> anyhow::Result<Value> {
    client
        .post(
            &format!("/user/{}/openid/request_token", enc(&client.user_id)),
            json!({}),
        )
        .await?
        .ok()
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
async fn openid_token_service_and_embedded_sfu() -> anyhow::Result<()> {
    let (server, sfu_url) = server_with_sfu().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;

    // Discovery: transports and .well-known foci.
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
    let service_url = transports["rtc_transports"][0]["livekit_service_url"]
        .as_str()
        .context("livekit_service_url")?
        .to_owned();
    let well_known = server
        .client()
        .request(Method::GET, "/.well-known/matrix/client", None)
        .await?
        .ok()?;
    assert_eq!(
        well_known["org.matrix.msc4143.rtc_foci"][0]["livekit_service_url"],
        service_url.as_str()
    );

    // OpenID: only for oneself; userinfo names the user.
    alice
        .post(
            &format!("/user/{}/openid/request_token", enc(&bob.user_id)),
            json!({}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let token = openid(&alice).await?;
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

    // The legacy token service: a joined member gets a token the SFU accepts.
    let http = reqwest::Client::new();
    let sfu_get = |openid: Value, device: &str| {
        let http = http.clone();
        let body = json!({"room": room, "openid_token": openid, "device_id": device});
        let url = format!("{service_url}/sfu/get");
        async move {
            let resp = http.post(&url).json(&body).send().await?;
            let status = resp.status().as_u16();
            let value: Value = resp.json().await?;
            anyhow::Ok((status, value))
        }
    };
    let (status, grant) = sfu_get(token.clone(), "ADEV").await?;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["url"], sfu_url.as_str());
    let jwt = grant["jwt"].as_str().context("jwt")?;
    let c = claims(jwt)?;
    assert_eq!(c["sub"], format!("{}:ADEV", alice.user_id));
    assert_eq!(c["video"]["roomJoin"], true);
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

    // Bob is not in the room: no token; a bad OpenID token: no token.
    let (status, err) = sfu_get(openid(&bob).await?, "BDEV").await?;
    assert_eq!(
        (status, err["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    let (status, _) = sfu_get(
        json!({"access_token": "bogus", "matrix_server_name": "localhost"}),
        "BDEV",
    )
    .await?;
    assert_eq!(status, 401);
    // CORS preflight for browsers (Element Call runs on another origin).
    let preflight = http
        .request(Method::OPTIONS, format!("{service_url}/sfu/get"))
        .header("Origin", "https://call.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await?;
    assert!(preflight.status().is_success());
    assert!(preflight
        .headers()
        .contains_key("access-control-allow-origin"));

    // MSC4195: the same token for the authenticated device.
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
        claims(direct["jwt"].as_str().unwrap())?["sub"],
        format!("{}:{}", alice.user_id, alice.device_id)
    );

    // Mute for all: moderators only; with nobody in the call nobody is muted.
    invite_and_join(&alice, &bob, &room).await?;
    let mute_path = format!(
        "/_matrix/client/unstable/io.myelin/rooms/{}/rtc/mute_all",
        enc(&room)
    );
    bob.request(Method::POST, &mute_path, Some(&json!({})))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
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

#[tokio::test]
async fn delayed_events_fire_after_restart() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(&[("MYELIN_REGISTRATION_MODE", "open")]).await?;
    let versions = server
        .client()
        .request(Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let state_path = |delay: u64| {
        format!(
            "/rooms/{}/state/org.matrix.msc3401.call.member/{}?org.matrix.msc4140.delay={delay}",
            enc(&room),
            enc(&format!("_{}_DEV", alice.user_id))
        )
    };
    // One to cancel, one to fire while the server is down.
    let cancelled = alice
        .put(&state_path(60_000), json!({"application": "m.call"}))
        .await?
        .ok()?;
    let cancel_id = cancelled["delay_id"]
        .as_str()
        .context("delay_id")?
        .to_owned();
    let fired = alice.put(&state_path(1_500), json!({})).await?.ok()?;
    assert!(fired["delay_id"].is_string(), "{fired}");
    let listed = alice
        .request(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            None,
        )
        .await?
        .ok()?;
    assert_eq!(listed["delayed_events"].as_array().map(Vec::len), Some(2));
    alice
        .request(
            Method::POST,
            &format!("/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{cancel_id}"),
            Some(&json!({"action": "cancel"})),
        )
        .await?
        .ok()?;
    alice
        .request(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/nope",
            Some(&json!({"action": "send"})),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    server.kill9()?;
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    server.start_again().await?;
    let key = format!("_{}_DEV", alice.user_id);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = alice
            .get(&format!(
                "/rooms/{}/state/org.matrix.msc3401.call.member/{}",
                enc(&room),
                enc(&key)
            ))
            .await?;
        if state.status == 200 {
            assert_eq!(
                state.body,
                json!({}),
                "the due event was sent, not the cancelled one"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delayed event did not fire after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = alice
        .request(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            None,
        )
        .await?
        .ok()?;
    assert_eq!(listed["delayed_events"], json!([]));
    Ok(())
}
