//! Delegated delayed leave (MSC4195 and lk-jwt-service's `/delegate_delayed_leave`)
//! against the real binary and its embedded SFU: a client schedules its call
//! membership's delayed leave for an hour, delegates it, connects to the SFU and
//! crashes; the server sends the leave within seconds. Bad delegations are refused.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use myelin_sfu::client::Client as SfuClient;
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, http_client, Client, TestServer};

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";
const SLOT: &str = "m.call#ROOM";
const DELEGATE: &str = "/_matrix/client/v1/rtc/livekit/delegate_delayed_leave";
const HOUR_MS: u64 = 3_600_000;

fn member_key(c: &Client) -> String {
    format!("_{}_{}_m.call", c.user_id, c.device_id)
}

/// Joins the call the way Element Call does: the delayed leave first (an hour), then the
/// membership. Returns the delay id.
async fn join_call_with_delayed_leave(c: &Client, room: &str) -> anyhow::Result<String> {
    let key = member_key(c);
    let delayed = c
        .put(
            &format!(
                "/rooms/{}/state/{CALL_MEMBER}/{}?org.matrix.msc4140.delay={HOUR_MS}",
                enc(room),
                enc(&key)
            ),
            json!({}),
        )
        .await?
        .ok()?;
    let delay_id = delayed["delay_id"].as_str().context("delay_id")?.to_owned();
    c.set_state(
        room,
        CALL_MEMBER,
        &key,
        json!({"application": "m.call", "call_id": "", "scope": "m.room",
            "device_id": c.device_id, "expires": HOUR_MS}),
    )
    .await?
    .ok()?;
    Ok(delay_id)
}

/// A LiveKit token for `c`'s device (MSC4195): `(url, jwt)`.
async fn livekit_token(c: &Client, room: &str, sfu_url: &str) -> anyhow::Result<(String, String)> {
    let grant = c
        .request(
            Method::POST,
            "/_matrix/client/v1/rtc/livekit/get_token",
            Some(&json!({"room_id": room, "slot_id": SLOT, "member_id": "m1", "url": sfu_url})),
        )
        .await?
        .ok()?;
    Ok((
        grant["url"].as_str().context("url")?.to_owned(),
        grant["jwt"].as_str().context("jwt")?.to_owned(),
    ))
}

async fn membership(c: &Client, room: &str) -> anyhow::Result<Value> {
    c.get(&format!(
        "/rooms/{}/state/{CALL_MEMBER}/{}",
        enc(room),
        enc(&member_key(c))
    ))
    .await?
    .ok()
}

/// Connects, waits until the server has seen the connection, crashes, and waits (at most
/// 15 s, far less than the hour of the delay) until the membership is withdrawn.
async fn crash_and_see_the_leave(
    c: &Client,
    room: &str,
    sfu_url: &str,
    jwt: &str,
) -> anyhow::Result<()> {
    let participant = SfuClient::connect(sfu_url, jwt).await?;
    // The delegation polls every 500 ms: give it time to see the participant connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        membership(c, room).await?["device_id"],
        c.device_id.as_str(),
        "still in the call while connected"
    );
    participant.kill();
    let start = Instant::now();
    loop {
        let content = membership(c, room).await?;
        if content == json!({}) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("the membership was not withdrawn after the crash: {content}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_crashed_client_leaves_the_call_promptly_msc4195() -> anyhow::Result<()> {
    let (server, sfu_url) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let bobs_room = bob.create_room(json!({})).await?;
    let delay_id = join_call_with_delayed_leave(&alice, &room).await?;
    let bobs_delay = join_call_with_delayed_leave(&bob, &bobs_room).await?;
    let (url, jwt) = livekit_token(&alice, &room, &sfu_url).await?;
    assert_eq!(url, sfu_url);

    let delegate = |body: Value| {
        let alice = alice.clone();
        async move { alice.request(Method::POST, DELEGATE, Some(&body)).await }
    };
    let request = |url: &str, room: &str, delay: &str| json!({"url": url, "room_id": room, "slot_id": SLOT, "member_id": "m1", "delay_id": delay});
    for (bad, why) in [
        (
            request("wss://elsewhere.example", &room, &delay_id),
            "another SFU",
        ),
        (request(&url, &room, "nope"), "an unknown delay id"),
        (
            request(&url, &room, &bobs_delay),
            "another user's delayed event",
        ),
        (request(&url, &bobs_room, &delay_id), "another room"),
    ] {
        delegate(bad)
            .await?
            .expect_error(400, "M_INVALID_PARAM")
            .context(why)?;
    }
    delegate(json!({"url": url}))
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    let ok = delegate(request(&url, &room, &delay_id)).await?.ok()?;
    assert_eq!(ok, json!({}));
    crash_and_see_the_leave(&alice, &room, &sfu_url, &jwt).await
}

#[tokio::test]
async fn a_crashed_client_leaves_the_call_promptly_lk_jwt_service() -> anyhow::Result<()> {
    let (server, sfu_url) = TestServer::start_with_sfu(&[]).await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let delay_id = join_call_with_delayed_leave(&alice, &room).await?;
    let (_, jwt) = livekit_token(&alice, &room, &sfu_url).await?;
    let openid = alice.openid_token().await?;
    let body = json!({"room_id": room, "slot_id": SLOT, "openid_token": openid,
        "member": {"id": "m1", "claimed_user_id": alice.user_id,
            "claimed_device_id": alice.device_id},
        "delay_id": delay_id, "delay_timeout": HOUR_MS, "delay_cs_api_url": server.base});
    let http = http_client(Duration::from_secs(30));
    let resp = http
        .post(format!("{}/delegate_delayed_leave", server.base))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let preflight = http
        .request(
            Method::OPTIONS,
            format!("{}/delegate_delayed_leave", server.base),
        )
        .header("origin", "https://call.example")
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    assert_eq!(preflight.status().as_u16(), 200);
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
    let mut forged = body.clone();
    forged["member"]["claimed_user_id"] = json!("@mallory:localhost");
    let resp = http
        .post(format!("{}/delegate_delayed_leave", server.base))
        .json(&forged)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    crash_and_see_the_leave(&alice, &room, &sfu_url, &jwt).await
}
