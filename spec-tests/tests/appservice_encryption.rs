//! Encrypted appservices (MSC3202, `org.matrix.msc3202: true`): to-device messages for a
//! bridged user's device, the one-time-key counts of a device the bridge uploads keys for
//! (masquerading as the device), and the device-list changes of users sharing a room with
//! its users arrive in transactions; a to-device message is delivered once even when the
//! appservice refuses the first attempts, and survives a `kill -9` of the server.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{
    enc,
    fake_appservice::{write_registration, AsRequest, AsScript, FakeAppservice},
    Client, TestServer,
};

const WAIT: Duration = Duration::from_secs(20);
const DEVICE: &str = "BRIDGEDEV";

/// A server with the encrypted appservice `br` at `fake`, alice's room and the puppet
/// `@br_alice` (created by the appservice with the device [`DEVICE`], MSC4190) joined to
/// it. Returns the server, alice, the bridge's client, the puppet's id and the room.
async fn setup(
    dir: &std::path::Path,
    fake: &FakeAppservice,
) -> (TestServer, Client, Client, String, String) {
    let reg = write_registration(dir, "br", Some(&fake.url)).unwrap();
    let text = std::fs::read_to_string(&reg).unwrap();
    std::fs::write(
        &reg,
        format!(
            "{text}org.matrix.msc3202: true\nde.sorunome.msc2409.push_ephemeral: true\n\
             io.element.msc4190: true\n"
        ),
    )
    .unwrap();
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
    bridge
        .request(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/devices/{DEVICE}?user_id={}",
                enc(&puppet)
            ),
            Some(&json!({"display_name": "bridge"})),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
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
    (server, alice, bridge, puppet, room)
}

fn to_device(r: &AsRequest) -> Vec<Value> {
    r.body["de.sorunome.msc2409.to_device"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn changed(r: &AsRequest) -> Vec<String> {
    r.body["org.matrix.msc3202.device_lists"]["changed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

fn mentions(r: &AsRequest, user: &str) -> bool {
    r.body.to_string().contains(user)
}

/// Alice sends a to-device message `{n}` to the puppet's device.
async fn send_to_puppet(alice: &Client, puppet: &str, n: u32) {
    alice
        .put(
            &format!("/sendToDevice/m.room_key_request/td{n}"),
            json!({"messages": {(puppet): {(DEVICE): {"n": n}}}}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
}

/// The `n` of the to-device messages in acknowledged transactions, in order.
fn delivered(reqs: &[AsRequest]) -> Vec<u64> {
    reqs.iter()
        .filter(|r| r.status == 200)
        .flat_map(to_device)
        .filter_map(|e| e["content"]["n"].as_u64())
        .collect()
}

#[tokio::test]
async fn to_device_key_counts_and_device_lists_reach_the_appservice() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = FakeAppservice::start(Box::new(|_| 200)).await.unwrap();
    let (server, alice, bridge, puppet, _room) = setup(dir.path(), &fake).await;

    // The puppet's joining made alice (and everybody in the room) newly shared.
    fake.collect_until(WAIT, |r| changed(r).contains(&alice.user_id))
        .await
        .unwrap();

    // The bridge uploads keys as the puppet's device (MSC3202 device masquerading).
    let query = format!(
        "user_id={}&org.matrix.msc3202.device_id={DEVICE}",
        enc(&puppet)
    );
    let up = bridge
        .post(
            &format!("/keys/upload?{query}"),
            json!({
                "device_keys": {
                    "user_id": puppet, "device_id": DEVICE,
                    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                    "keys": {
                        format!("curve25519:{DEVICE}"): "curvekeycurvekeycurvekeycurvekeycurvekey0",
                        format!("ed25519:{DEVICE}"): "edkeyedkeyedkeyedkeyedkeyedkeyedkeyedkey00",
                    },
                    "signatures": {(puppet.as_str()): {format!("ed25519:{DEVICE}"): "sig"}},
                },
                "one_time_keys": {
                    "signed_curve25519:AAAA": {"key": "k1"},
                    "signed_curve25519:AAAB": {"key": "k2"},
                    "signed_curve25519:AAAC": {"key": "k3"},
                },
                "fallback_keys": {"signed_curve25519:FFFF": {"key": "fb", "fallback": true}},
            }),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(up["one_time_key_counts"]["signed_curve25519"], 3);
    let got = fake
        .collect_until(WAIT, |r| {
            r.body["org.matrix.msc3202.device_one_time_keys_count"][&puppet][DEVICE]
                ["signed_curve25519"]
                == 3
        })
        .await
        .unwrap();
    let last = got.last().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer br_hs"));
    assert_eq!(
        last.body["org.matrix.msc3202.device_unused_fallback_key_types"][&puppet][DEVICE],
        json!(["signed_curve25519"])
    );

    // Alice claims a key for the device: the count the bridge sees goes down.
    alice
        .post(
            "/keys/claim",
            json!({"one_time_keys": {(puppet.as_str()): {(DEVICE): "signed_curve25519"}}}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    fake.collect_until(WAIT, |r| {
        r.body["org.matrix.msc3202.device_one_time_keys_count"][&puppet][DEVICE]
            ["signed_curve25519"]
            == 2
    })
    .await
    .unwrap();

    // A to-device message from alice to the puppet's device.
    send_to_puppet(&alice, &puppet, 1).await;
    let got = fake
        .collect_until(WAIT, |r| !to_device(r).is_empty())
        .await
        .unwrap();
    assert_eq!(
        to_device(got.last().unwrap()),
        [json!({
            "sender": alice.user_id, "type": "m.room_key_request", "content": {"n": 1},
            "to_user_id": puppet, "to_device_id": DEVICE,
        })]
    );
    // The puppet's device does not get it a second time by syncing.
    let sync = bridge
        .get(&format!(
            "/sync?timeout=0&user_id={}&org.matrix.msc3202.device_id={DEVICE}",
            enc(&puppet)
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        sync["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{sync}"
    );
    fake.drain(Duration::from_millis(500)).await;

    // Alice's new device keys: she shares a room with the puppet. Bob's: he does not.
    let bob = server.register("bob").await.unwrap();
    for user in [&bob, &alice] {
        user.post(
            "/keys/upload",
            json!({"device_keys": {
                "user_id": user.user_id, "device_id": user.device_id,
                "algorithms": ["m.megolm.v1.aes-sha2"],
                "keys": {format!("ed25519:{}", user.device_id): "ed"},
                "signatures": {(user.user_id.as_str()): {format!("ed25519:{}", user.device_id): "sig"}},
            }}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    }
    let got = fake
        .collect_until(WAIT, |r| changed(r).contains(&alice.user_id))
        .await
        .unwrap();
    let mut rest = fake.drain(Duration::from_millis(1000)).await;
    rest.extend(got);
    assert!(
        rest.iter().all(|r| !mentions(r, &bob.user_id)),
        "bob shares no room with the bridge: {rest:#?}"
    );
}

#[tokio::test]
async fn a_refused_to_device_transaction_is_retried_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let refusals = Arc::new(AtomicU32::new(0));
    let r = refusals.clone();
    // The first three transactions carrying a to-device message are answered 500.
    let script: AsScript = Box::new(move |req| {
        if !to_device(req).is_empty() && r.fetch_add(1, Ordering::SeqCst) < 3 {
            500
        } else {
            200
        }
    });
    let mut fake = FakeAppservice::start(script).await.unwrap();
    let (_server, alice, _bridge, puppet, _room) = setup(dir.path(), &fake).await;
    send_to_puppet(&alice, &puppet, 1).await;
    let got = fake
        .collect_until(WAIT, |r| r.status == 200 && !to_device(r).is_empty())
        .await
        .unwrap();
    let tries: Vec<&AsRequest> = got.iter().filter(|r| !to_device(r).is_empty()).collect();
    assert_eq!(tries.len(), 4, "{tries:#?}");
    assert_eq!(
        tries.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    // Every attempt was the same transaction: same id, same body.
    for pair in tries.windows(2) {
        assert_eq!(pair[0].txn_id(), pair[1].txn_id());
        assert_eq!(pair[0].body, pair[1].body);
    }
    // Once acknowledged it never comes again; the next message is a new transaction.
    send_to_puppet(&alice, &puppet, 2).await;
    let mut all = got;
    all.extend(
        fake.collect_until(WAIT, |r| r.status == 200 && !to_device(r).is_empty())
            .await
            .unwrap(),
    );
    all.extend(fake.drain(Duration::from_millis(1000)).await);
    assert_eq!(delivered(&all), [1, 2]);
    let ids: Vec<&str> = all
        .iter()
        .filter(|r| r.status == 200 && !to_device(r).is_empty())
        .filter_map(AsRequest::txn_id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn unacknowledged_to_device_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    // To-device transactions are refused until the test lets them through.
    let script: AsScript = Box::new(move |r| {
        if to_device(r).is_empty() || u.load(Ordering::SeqCst) {
            200
        } else {
            503
        }
    });
    let mut fake = FakeAppservice::start(script).await.unwrap();
    let (mut server, alice, _bridge, puppet, _room) = setup(dir.path(), &fake).await;
    send_to_puppet(&alice, &puppet, 1).await;
    let before = fake
        .collect_until(WAIT, |r| !to_device(r).is_empty())
        .await
        .unwrap();
    let refused = before.last().unwrap().clone();
    assert_eq!(refused.status, 503);
    // Sent (durable) while the first is pending: queued for the next transaction.
    send_to_puppet(&alice, &puppet, 2).await;

    server.kill9().unwrap();
    fake.drain(Duration::from_millis(300)).await;
    server.start_again().await.unwrap();
    let again = fake
        .collect_until(WAIT, |r| !to_device(r).is_empty())
        .await
        .unwrap();
    let retried = again.last().unwrap();
    assert_eq!(
        retried.txn_id(),
        refused.txn_id(),
        "the same transaction id"
    );
    assert_eq!(retried.body, refused.body, "the same body");

    up.store(true, Ordering::SeqCst);
    let mut all = fake
        .collect_until(WAIT, |r| delivered(std::slice::from_ref(r)).contains(&2))
        .await
        .unwrap();
    all.extend(fake.drain(Duration::from_millis(1000)).await);
    // Each message once, in order, nothing lost.
    assert_eq!(delivered(&all), [1, 2]);
}
