//! Homeserver → appservice transactions: the events of rooms its users are in, in stream
//! order, with its `hs_token`; retried (same id, same events) while it fails, and after a
//! `kill -9` of the server; every event delivered once.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use spec_tests::{
    enc,
    fake_appservice::{write_registration, AsRequest, AsScript, FakeAppservice},
    Client, TestServer,
};

const WAIT: Duration = Duration::from_secs(20);

/// A server with the appservice `br` at `fake`, alice's room and the puppet `@br_alice`
/// joined to it (registered and joined by the appservice).
async fn setup(dir: &std::path::Path, fake: &FakeAppservice) -> (TestServer, Client, String) {
    let reg = write_registration(dir, "br", Some(&fake.url)).unwrap();
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_APPSERVICES", reg.to_str().unwrap()),
    ])
    .await
    .unwrap();
    let alice = server.register("alice").await.unwrap();
    let room = alice.create_room(json!({})).await.unwrap();
    let mut bridge = server.client();
    bridge.token = Some("br_as".into());
    bridge
        .post(
            "/register",
            json!({"type": "m.login.application_service", "username": "br_alice"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let puppet = server.user_id("br_alice");
    alice.invite(&room, &puppet).await.unwrap();
    bridge
        .post(
            &format!("/join/{}?user_id={}", enc(&room), enc(&puppet)),
            json!({}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    (server, alice, room)
}

/// The message bodies of the acknowledged transactions, in order.
fn acknowledged(reqs: &[AsRequest]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.status == 200)
        .flat_map(AsRequest::bodies)
        .collect()
}

fn has(r: &AsRequest, body: &str) -> bool {
    r.bodies().iter().any(|b| b == body)
}

#[tokio::test]
async fn transactions_carry_the_hs_token_and_keep_stream_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = FakeAppservice::start(Box::new(|_| 200)).await.unwrap();
    let (_server, alice, room) = setup(dir.path(), &fake).await;
    for i in 1..=5 {
        alice.say(&room, &format!("m{i}")).await.unwrap();
    }
    let got = fake.collect_until(WAIT, |r| has(r, "m5")).await.unwrap();
    for r in &got {
        assert_eq!(r.method, "PUT", "{r:?}");
        assert!(r.txn_id().is_some(), "{r:?}");
        assert_eq!(r.authorization.as_deref(), Some("Bearer br_hs"), "{r:?}");
    }
    assert_eq!(acknowledged(&got), ["m1", "m2", "m3", "m4", "m5"]);
    // The puppet's join reached the appservice before the messages, with the room id.
    let first = &got[0].body["events"][0];
    assert_eq!(first["room_id"], room.as_str());
    let ids: Vec<&str> = got.iter().filter_map(AsRequest::txn_id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "a transaction id was used twice");
    // Nothing more comes: no event is sent twice.
    assert!(fake.drain(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn a_failing_appservice_gets_each_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let failures = Arc::new(AtomicU32::new(0));
    let f = failures.clone();
    // The first three transactions carrying a message are answered 500.
    let script: AsScript = Box::new(move |r| {
        if !r.bodies().is_empty() && f.fetch_add(1, Ordering::SeqCst) < 3 {
            500
        } else {
            200
        }
    });
    let mut fake = FakeAppservice::start(script).await.unwrap();
    let (_server, alice, room) = setup(dir.path(), &fake).await;
    for i in 1..=3 {
        alice.say(&room, &format!("m{i}")).await.unwrap();
    }
    let got = fake
        .collect_until(WAIT, |r| r.status == 200 && has(r, "m3"))
        .await
        .unwrap();
    assert_eq!(acknowledged(&got), ["m1", "m2", "m3"]);
    // Every refused transaction came again, unchanged, with the same id.
    for pair in got.windows(2) {
        if pair[0].status == 500 {
            assert_eq!(pair[0].txn_id(), pair[1].txn_id(), "{pair:?}");
            assert_eq!(pair[0].body, pair[1].body, "{pair:?}");
        }
    }
    assert_eq!(got.iter().filter(|r| r.status == 500).count(), 3);
    assert!(fake.drain(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn an_unacknowledged_transaction_survives_kill_9_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let script: AsScript = Box::new(move |r| {
        if r.bodies().is_empty() || u.load(Ordering::SeqCst) {
            200
        } else {
            503
        }
    });
    let mut fake = FakeAppservice::start(script).await.unwrap();
    let (mut server, alice, room) = setup(dir.path(), &fake).await;
    alice.say(&room, "m1").await.unwrap();
    let before = fake.collect_until(WAIT, |r| has(r, "m1")).await.unwrap();
    let txn = before.last().unwrap().txn_id().unwrap().to_owned();
    assert_eq!(before.last().unwrap().status, 503);

    server.kill9().unwrap();
    fake.drain(Duration::from_millis(300)).await;
    server.start_again().await.unwrap();
    let again = fake.collect_until(WAIT, |r| has(r, "m1")).await.unwrap();
    assert_eq!(again.last().unwrap().txn_id(), Some(txn.as_str()));

    up.store(true, Ordering::SeqCst);
    let done = fake
        .collect_until(WAIT, |r| r.status == 200 && has(r, "m1"))
        .await
        .unwrap();
    let last = done.last().unwrap();
    assert_eq!(last.txn_id(), Some(txn.as_str()));
    assert_eq!(last.bodies(), ["m1"]);

    // The next event goes in a new transaction, without m1.
    alice.say(&room, "m2").await.unwrap();
    let next = fake.collect_until(WAIT, |r| has(r, "m2")).await.unwrap();
    let last = next.last().unwrap();
    assert_eq!(last.bodies(), ["m2"]);
    assert_ne!(last.txn_id(), Some(txn.as_str()));
    assert!(next.iter().all(|r| !has(r, "m1")), "{next:?}");
}

#[tokio::test]
async fn a_down_appservice_slows_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = FakeAppservice::start(Box::new(|_| 503)).await.unwrap();
    let (_server, alice, room) = setup(dir.path(), &fake).await;
    let start = std::time::Instant::now();
    for i in 1..=5 {
        alice.say(&room, &format!("m{i}")).await.unwrap();
    }
    // Sends return while the appservice refuses every transaction, and readers see them.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let sync = alice.sync("timeout=0").await.unwrap();
    let bodies = spec_tests::bodies(&spec_tests::timeline(&sync, &room));
    assert_eq!(bodies, ["m1", "m2", "m3", "m4", "m5"]);
    // The appservice is still being retried.
    let refused = fake.next(WAIT).await.unwrap();
    assert_eq!(refused.status, 503);
}

/// MSC2409: with `receive_ephemeral: true`, typing and receipts of the rooms the
/// appservice follows, and the presence of their members, arrive in transactions (`ephemeral` and the unstable key); an
/// appservice that did not ask gets none, and rooms it does not follow stay private.
#[tokio::test]
async fn ephemeral_events_reach_appservices_that_ask() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = FakeAppservice::start(Box::new(|_| 200)).await.unwrap();
    let mut other = FakeAppservice::start(Box::new(|_| 200)).await.unwrap();
    let reg = write_registration(dir.path(), "br", Some(&fake.url)).unwrap();
    let text = std::fs::read_to_string(&reg).unwrap();
    std::fs::write(&reg, format!("{text}receive_ephemeral: true\n")).unwrap();
    let plain = write_registration(dir.path(), "pl", Some(&other.url)).unwrap();
    let list = format!("{},{}", reg.display(), plain.display());
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_APPSERVICES", list.as_str()),
    ])
    .await
    .unwrap();
    let alice = server.register("alice").await.unwrap();
    let bridged = alice
        .create_room(json!({"preset": "public_chat"}))
        .await
        .unwrap();
    let private = alice.create_room(json!({})).await.unwrap();
    for (token, user) in [("br_as", "br_bot"), ("pl_as", "pl_bot")] {
        let mut bot = server.client();
        bot.token = Some(token.into());
        bot.post(&format!("/join/{}", enc(&bridged)), json!({}))
            .await
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("{user} joins: {e}"));
    }
    let event = alice
        .send(
            &bridged,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "read me"}),
        )
        .await
        .unwrap();
    // Typing and a receipt where the bridge's bot is joined; typing where it is not.
    alice
        .put(
            &format!("/rooms/{}/typing/{}", enc(&private), enc(&alice.user_id)),
            json!({"typing": true, "timeout": 30000}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    alice
        .put(
            &format!("/rooms/{}/typing/{}", enc(&bridged), enc(&alice.user_id)),
            json!({"typing": true, "timeout": 30000}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    alice
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&bridged), enc(&event)),
            json!({}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    alice
        .put(
            &format!("/presence/{}/status", enc(&alice.user_id)),
            json!({"presence": "online", "status_msg": "bridging"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();

    let ephemeral = |r: &AsRequest| -> Vec<serde_json::Value> {
        r.body["ephemeral"].as_array().cloned().unwrap_or_default()
    };
    let mut seen = Vec::new();
    let got = fake
        .collect_until(WAIT, |r| {
            seen.extend(ephemeral(r));
            let typed = seen.iter().any(|e| {
                e["type"] == "m.typing"
                    && e["room_id"] == bridged.as_str()
                    && e["content"]["user_ids"] == json!([alice.user_id])
            });
            let read = seen.iter().any(|e| {
                e["type"] == "m.receipt"
                    && e["room_id"] == bridged.as_str()
                    && e["content"][&event]["m.read"][&alice.user_id].is_object()
            });
            let present = seen.iter().any(|e| {
                e["type"] == "m.presence"
                    && e["sender"] == alice.user_id.as_str()
                    && e["content"]["status_msg"] == "bridging"
            });
            typed && read && present
        })
        .await
        .unwrap();
    assert!(
        seen.iter()
            .filter(|e| e["type"] != "m.presence")
            .all(|e| e["room_id"] == bridged.as_str()),
        "nothing of a room the bridge does not follow: {seen:#?}"
    );
    // Under the unstable key too, for bridges written against MSC2409.
    for r in got.iter().filter(|r| !ephemeral(r).is_empty()) {
        assert_eq!(r.body["de.sorunome.msc2409.ephemeral"], r.body["ephemeral"]);
        assert_eq!(r.authorization.as_deref(), Some("Bearer br_hs"));
    }
    // The appservice that did not ask receives only timeline transactions.
    let plain_reqs = other.drain(Duration::from_millis(1500)).await;
    assert!(
        plain_reqs
            .iter()
            .all(|r| ephemeral(r).is_empty()
                && r.body.get("de.sorunome.msc2409.ephemeral").is_none()),
        "{plain_reqs:#?}"
    );
}
