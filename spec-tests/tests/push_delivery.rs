//! Delivery to HTTP push gateways: retries with increasing backoff, pushers removed when
//! the gateway rejects their push key, and the sygnal payload (full and `event_id_only`).

use std::{collections::HashMap, time::Duration};

use serde_json::{json, Value};
use spec_tests::{
    enc,
    gateway::{FakeGateway, Push},
    Client, TestServer,
};

async fn set_pusher(c: &Client, pushkey: &str, data: Value) -> anyhow::Result<()> {
    c.post(
        "/pushers/set",
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
               "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
               "data": data}),
    )
    .await?
    .ok()?;
    Ok(())
}

async fn pushkeys(c: &Client) -> anyhow::Result<Vec<String>> {
    let listed = c.get("/pushers").await?.ok()?;
    Ok(listed["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
        .collect())
}

/// Alice and bob in a two-person room, bob with no pushers yet (so the join is not pushed).
async fn two_in_a_room(server: &TestServer) -> anyhow::Result<(Client, Client, String)> {
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Payload room"}))
        .await?;
    bob.join(&room).await?;
    Ok((alice, bob, room))
}

#[tokio::test]
async fn failed_pushes_are_retried_with_growing_backoff_then_delivered_once() -> anyhow::Result<()>
{
    let server = start_server().await?;
    let (alice, bob, room) = two_in_a_room(&server).await?;
    // Every event fails a scripted number of times (502), then is accepted: the first
    // event twice, the second three times.
    let plan = [2, 3];
    let mut failures: HashMap<String, usize> = HashMap::new();
    let mut gateway = FakeGateway::start(Box::new(move |body: &Value| {
        let id = body["notification"]["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let n = failures.len();
        let left = failures
            .entry(id)
            .or_insert_with(|| plan.get(n).copied().unwrap_or(0));
        if *left > 0 {
            *left -= 1;
            (502, json!({"error": "try later"}))
        } else {
            (200, json!({"rejected": []}))
        }
    }))
    .await?;
    set_pusher(&bob, "k1", json!({"url": gateway.url})).await?;

    let first = alice.say(&room, "retry me").await?;
    let attempts = gateway
        .collect_until(Duration::from_secs(20), |p| p.status == 200)
        .await?;
    assert_eq!(
        attempts.iter().map(|p| p.status).collect::<Vec<_>>(),
        [502, 502, 200],
        "{attempts:#?}"
    );
    assert!(attempts.iter().all(|p| p.event_id() == first));
    let gap1 = attempts[1].at - attempts[0].at;
    let gap2 = attempts[2].at - attempts[1].at;
    assert!(
        gap1 >= Duration::from_millis(800),
        "first retry too soon: {gap1:?}"
    );
    assert!(
        gap2 >= gap1 + Duration::from_millis(500),
        "backoff does not grow: {gap1:?} then {gap2:?}"
    );

    // A second event fails three times: its delivery comes after 1 + 2 + 4 s, later than
    // any resend of the first one would, so the first must not show up again meanwhile.
    let second = alice.say(&room, "retry me too").await?;
    let attempts = gateway
        .collect_until(Duration::from_secs(30), |p| p.status == 200)
        .await?;
    assert!(
        attempts.iter().all(|p| p.event_id() == second),
        "the accepted push was sent again: {attempts:#?}"
    );
    assert_eq!(attempts.len(), 4, "{attempts:#?}");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[2] >= gaps[1] + Duration::from_millis(1000),
        "backoff does not grow: {gaps:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rejected_pushkey_removes_its_pusher() -> anyhow::Result<()> {
    let server = start_server().await?;
    let (alice, bob, room) = two_in_a_room(&server).await?;
    // The gateway rejects "dead"; "live" is accepted (a rejection of some other key does
    // not concern it).
    let mut gateway = FakeGateway::start(Box::new(|body: &Value| {
        let key = body["notification"]["devices"][0]["pushkey"]
            .as_str()
            .unwrap_or_default();
        if key == "dead" {
            (200, json!({"rejected": ["dead"]}))
        } else {
            (200, json!({"rejected": ["someone-else"]}))
        }
    }))
    .await?;
    set_pusher(&bob, "dead", json!({"url": gateway.url})).await?;
    set_pusher(&bob, "live", json!({"url": gateway.url})).await?;
    let mut keys = pushkeys(&bob).await?;
    keys.sort();
    assert_eq!(keys, ["dead", "live"]);

    let first = alice.say(&room, "one").await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let p = gateway.next(Duration::from_secs(10)).await?;
        assert_eq!(p.event_id(), first);
        seen.push(p.pushkey().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["dead", "live"]);
    // the rejected pusher goes away; the other stays
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = pushkeys(&bob).await?;
        if keys == ["live"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejected pusher still listed: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and gets no more pushes: two later events reach only the live one
    let second = alice.say(&room, "two").await?;
    let third = alice.say(&room, "three").await?;
    let mut pending = vec![second.clone(), third.clone()];
    let later = gateway
        .collect_until(Duration::from_secs(10), |p| {
            pending.retain(|id| id != p.event_id());
            pending.is_empty()
        })
        .await?;
    assert!(later.iter().all(|p| p.pushkey() == "live"), "{later:#?}");
    // Deliveries run concurrently: compare without order.
    let mut got: Vec<&str> = later.iter().map(Push::event_id).collect();
    got.sort_unstable();
    let mut want = [second.as_str(), third.as_str()];
    want.sort_unstable();
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test]
async fn full_payload_and_event_id_only() -> anyhow::Result<()> {
    let server = start_server().await?;
    let (alice, bob, room) = two_in_a_room(&server).await?;
    alice
        .put(
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            json!({"displayname": "Alice A"}),
        )
        .await?
        .ok()?;
    let mut gateway = FakeGateway::accepting().await?;
    set_pusher(&bob, "full", json!({"url": gateway.url, "custom": "kept"})).await?;
    set_pusher(
        &bob,
        "short",
        json!({"url": gateway.url, "format": "event_id_only"}),
    )
    .await?;

    let content = json!({"msgtype": "m.text", "body": "hello bob",
                         "m.mentions": {"user_ids": [bob.user_id]}});
    let sent = alice.send(&room, "m.room.message", content.clone()).await?;
    let mut by_key = HashMap::new();
    while by_key.len() < 2 {
        let p = gateway.next(Duration::from_secs(10)).await?;
        assert_eq!(p.event_id(), sent, "{:#?}", p.body);
        by_key.insert(p.pushkey().to_owned(), p.body["notification"].clone());
    }

    let full = &by_key["full"];
    assert_eq!(full["event_id"], sent.as_str());
    assert_eq!(full["room_id"], room.as_str());
    assert_eq!(full["type"], "m.room.message");
    assert_eq!(full["sender"], alice.user_id.as_str());
    assert_eq!(full["sender_display_name"], "Alice A");
    assert_eq!(full["room_name"], "Payload room");
    assert_eq!(full["content"], content);
    assert_eq!(full["counts"]["unread"], 1, "{full}");
    // a mention highlights: high priority, highlight tweak
    assert_eq!(full["prio"], "high", "{full}");
    let device = &full["devices"][0];
    assert_eq!(full["devices"].as_array().unwrap().len(), 1);
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "full");
    assert_eq!(device["data"]["custom"], "kept", "{device}");
    assert!(
        device["data"].get("url").is_none(),
        "the url is not sent back: {device}"
    );
    assert_eq!(device["tweaks"]["highlight"], true, "{device}");

    let short = &by_key["short"];
    assert_eq!(short["event_id"], sent.as_str());
    assert_eq!(short["room_id"], room.as_str());
    assert_eq!(short["counts"]["unread"], 1);
    assert_eq!(short["devices"][0]["pushkey"], "short");
    assert_eq!(short["devices"][0]["app_id"], "org.example.app");
    for field in [
        "type",
        "sender",
        "sender_display_name",
        "room_name",
        "content",
    ] {
        assert!(
            short.get(field).is_none(),
            "event_id_only carries {field}: {short}"
        );
    }

    // the unread count is the user's total: a second message counts 2
    let again = alice.say(&room, "and again").await?;
    let p = gateway
        .collect_until(Duration::from_secs(10), |p| {
            p.event_id() == again && p.pushkey() == "full"
        })
        .await?;
    let last = &p.last().unwrap().body["notification"];
    assert_eq!(last["counts"]["unread"], 2, "{last}");
    // a plain message in a one-to-one room is not a highlight
    assert!(last["devices"][0]["tweaks"]
        .get("highlight")
        .is_none_or(|h| h == false));
    Ok(())
}

/// A server that may push to the fake gateway on loopback (refused by default).
async fn start_server() -> anyhow::Result<TestServer> {
    TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_PUSH_GATEWAY_ALLOW_CIDRS", "127.0.0.0/8"),
    ])
    .await
}
