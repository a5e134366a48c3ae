//! Service-level tests of the E2EE key relay on the in-memory engine.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::StreamPoint;
use crate::{
    config::Config,
    rooms::{CreateRoom, MemberProfile},
    services::Services,
    sync::SyncRequest,
    users::Session,
};

pub(crate) fn services() -> Arc<Services> {
    Services::in_memory(Config::default()).expect("services")
}

/// A user with one (new) logged-in device.
pub(crate) fn login(s: &Services, name: &str) -> (OwnedUserId, OwnedDeviceId) {
    let user = match s.users.create_user(name, Some("pw"), false) {
        Ok(u) => u,
        Err(_) => s.users.user_id_from(name).unwrap(),
    };
    let (_, device) = s.users.create_session_now(&user, None, None).unwrap();
    (user, device)
}

pub(crate) fn device_keys(user: &UserId, device: &DeviceId, curve: &str) -> Value {
    json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): curve, format!("ed25519:{device}"): "ed" },
        "signatures": { user.as_str(): { format!("ed25519:{device}"): "sig" } },
    })
}

pub(crate) fn map(v: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

fn now(s: &Services) -> StreamPoint {
    StreamPoint {
        timeline: s.rooms.current_pos(),
        e2ee: s.e2ee.current_pos(),
    }
}

async fn shared_room(s: &Services, owner: &UserId, others: &[&UserId]) -> OwnedRoomId {
    let room = s
        .rooms
        .create_room(
            owner,
            CreateRoom {
                preset: Some("public_chat".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for other in others {
        s.rooms
            .join(&room, other, &MemberProfile::default(), None)
            .await
            .unwrap();
    }
    room
}

#[test]
fn one_time_keys_are_claimed_once_then_the_fallback_key() {
    let s = services();
    let (alice, dev) = login(&s, "alice");
    let counts = s
        .e2ee
        .upload_keys_now(
            &alice,
            &dev,
            Some(&device_keys(&alice, &dev, "c1")),
            &map(json!({
                "signed_curve25519:AAAA": { "key": "k1", "signatures": {} },
                "signed_curve25519:AAAB": { "key": "k2", "signatures": {} },
            })),
            &map(json!({ "signed_curve25519:FFFF": { "key": "fb", "fallback": true } })),
        )
        .unwrap();
    assert_eq!(counts["signed_curve25519"], 2);
    // `key_counts` (what /sync reads) is cached per device: every check below also
    // proves the cache follows claims and uploads.
    let cached = |s: &Services| s.e2ee.key_counts(&alice, &dev).unwrap();
    assert_eq!(cached(&s).one_time["signed_curve25519"], 2);
    assert_eq!(
        s.e2ee.unused_fallback_key_types(&alice, &dev).unwrap(),
        vec!["signed_curve25519"]
    );
    assert_eq!(cached(&s).unused_fallback, vec!["signed_curve25519"]);

    let request = BTreeMap::from([(
        alice.clone(),
        BTreeMap::from([(dev.clone(), "signed_curve25519".to_owned())]),
    )]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (claimed, failures) = s.e2ee.claim_keys_now(&request).unwrap();
        assert!(failures.is_empty());
        let keys = &claimed[&alice][&dev];
        assert_eq!(keys.len(), 1);
        seen.push(keys.keys().next().unwrap().clone());
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["signed_curve25519:AAAA", "signed_curve25519:AAAB"]
    );
    assert_eq!(
        s.e2ee.one_time_key_counts(&alice, &dev).unwrap()["signed_curve25519"],
        0
    );
    assert_eq!(cached(&s).one_time["signed_curve25519"], 0);

    // No one-time key left: the fallback key, marked used, and again on the next claim.
    for _ in 0..2 {
        let (claimed, _) = s.e2ee.claim_keys_now(&request).unwrap();
        assert_eq!(claimed[&alice][&dev]["signed_curve25519:FFFF"]["key"], "fb");
    }
    assert!(s
        .e2ee
        .unused_fallback_key_types(&alice, &dev)
        .unwrap()
        .is_empty());
    assert!(cached(&s).unused_fallback.is_empty());

    // Re-uploading the same fallback key keeps it used; a new one is unused.
    s.e2ee
        .upload_keys_now(
            &alice,
            &dev,
            None,
            &BTreeMap::new(),
            &map(json!({ "signed_curve25519:FFFF": { "key": "fb", "fallback": true } })),
        )
        .unwrap();
    assert!(s
        .e2ee
        .unused_fallback_key_types(&alice, &dev)
        .unwrap()
        .is_empty());
    s.e2ee
        .upload_keys_now(
            &alice,
            &dev,
            None,
            &BTreeMap::new(),
            &map(json!({ "signed_curve25519:FFFG": { "key": "fb2", "fallback": true } })),
        )
        .unwrap();
    assert_eq!(
        s.e2ee.unused_fallback_key_types(&alice, &dev).unwrap(),
        vec!["signed_curve25519"]
    );
    assert_eq!(cached(&s).unused_fallback, vec!["signed_curve25519"]);

    // Unknown devices and algorithms give nothing.
    let other = BTreeMap::from([(
        alice.clone(),
        BTreeMap::from([(OwnedDeviceId::from("NOPE"), "signed_curve25519".to_owned())]),
    )]);
    assert!(s.e2ee.claim_keys_now(&other).unwrap().0.is_empty());
}

#[test]
fn bad_uploads_are_refused_and_change_nothing() {
    let s = services();
    let (alice, dev) = login(&s, "alice");
    let (bob, _) = login(&s, "bob");
    let before = s.e2ee.current_pos();
    // Keys of another user.
    let err = s
        .e2ee
        .upload_keys_now(
            &alice,
            &dev,
            Some(&device_keys(&bob, &dev, "c")),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
    assert_eq!(err.errcode(), "M_INVALID_PARAM");
    // Valid device keys with one bad one-time key: nothing is stored.
    let err = s
        .e2ee
        .upload_keys_now(
            &alice,
            &dev,
            Some(&device_keys(&alice, &dev, "c")),
            &map(json!({ "signed_curve25519:A": { "key": "k" }, "signed_curve25519:B": 5 })),
            &BTreeMap::new(),
        )
        .unwrap_err();
    assert_eq!(err.errcode(), "M_BAD_JSON");
    assert_eq!(s.e2ee.current_pos(), before);
    let q = s
        .e2ee
        .query_keys(&alice, &BTreeMap::from([(alice.clone(), vec![])]))
        .unwrap();
    assert!(q.device_keys[&alice].is_empty());
    assert_eq!(
        s.e2ee.one_time_key_counts(&alice, &dev).unwrap()["signed_curve25519"],
        0
    );
    // A one-time key id cannot be reused with different content.
    s.e2ee
        .upload_keys_now(
            &alice,
            &dev,
            None,
            &map(json!({ "signed_curve25519:A": "k" })),
            &BTreeMap::new(),
        )
        .unwrap();
    let err = s
        .e2ee
        .upload_keys_now(
            &alice,
            &dev,
            None,
            &map(json!({ "signed_curve25519:A": "other" })),
            &BTreeMap::new(),
        )
        .unwrap_err();
    assert_eq!(err.errcode(), "M_INVALID_PARAM");
}

#[test]
fn query_adds_display_names_and_drops_deleted_devices() {
    let s = services();
    let (alice, d1) = login(&s, "alice");
    let (_, d2) = login(&s, "alice");
    s.users
        .set_device_display_name_now(&alice, &d1, Some("laptop".into()))
        .unwrap();
    for d in [&d1, &d2] {
        s.e2ee
            .upload_keys_now(
                &alice,
                d,
                Some(&device_keys(&alice, d, "c")),
                &map(json!({ "signed_curve25519:A": "k" })),
                &BTreeMap::new(),
            )
            .unwrap();
    }
    let all = BTreeMap::from([(alice.clone(), vec![])]);
    let q = s.e2ee.query_keys(&alice, &all).unwrap();
    assert_eq!(q.device_keys[&alice].len(), 2);
    assert_eq!(
        q.device_keys[&alice][&d1]["unsigned"]["device_display_name"],
        "laptop"
    );
    let one = BTreeMap::from([(alice.clone(), vec![d2.clone()])]);
    assert_eq!(
        s.e2ee.query_keys(&alice, &one).unwrap().device_keys[&alice].len(),
        1
    );

    // Deleting a device deletes its keys and one-time keys, and the counts `/sync` reads
    // (kept in memory) follow: a device made again with the same id starts with none.
    assert_eq!(
        s.e2ee.key_counts(&alice, &d1).unwrap().one_time["signed_curve25519"],
        1
    );
    s.users.remove_device_now(&alice, &d1).unwrap();
    let q = s.e2ee.query_keys(&alice, &all).unwrap();
    assert_eq!(q.device_keys[&alice].keys().collect::<Vec<_>>(), vec![&d2]);
    assert_eq!(
        s.e2ee.one_time_key_counts(&alice, &d1).unwrap()["signed_curve25519"],
        0
    );
    assert_eq!(
        s.e2ee.key_counts(&alice, &d1).unwrap().one_time["signed_curve25519"],
        0
    );

    // Remote users are failures, unknown local users are empty.
    let remote: OwnedUserId = "@x:elsewhere.example".try_into().unwrap();
    let ghost: OwnedUserId = "@ghost:localhost".try_into().unwrap();
    let q = s
        .e2ee
        .query_keys(
            &alice,
            &BTreeMap::from([(remote, vec![]), (ghost.clone(), vec![])]),
        )
        .unwrap();
    assert!(q.failures.contains_key("elsewhere.example"));
    assert!(q.device_keys[&ghost].is_empty());
}

#[test]
fn to_device_messages_are_idempotent_and_deleted_after_ack() {
    let s = services();
    let (alice, adev) = login(&s, "alice");
    let (bob, b1) = login(&s, "bob");
    let (_, b2) = login(&s, "bob");
    let messages = BTreeMap::from([(
        bob.clone(),
        BTreeMap::from([("*".to_owned(), json!({ "body": "hi" }))]),
    )]);
    s.e2ee
        .send_to_device_now(&alice, &adev, "m.test", "txn1", &messages)
        .unwrap();
    let pos = s.e2ee.current_pos();
    // The same transaction again does nothing.
    s.e2ee
        .send_to_device_now(&alice, &adev, "m.test", "txn1", &messages)
        .unwrap();
    assert_eq!(s.e2ee.current_pos(), pos);

    for d in [&b1, &b2] {
        let got = s.e2ee.to_device_for_sync(&bob, d, None, pos).unwrap();
        assert_eq!(got.events.len(), 1);
        assert_eq!(got.events[0]["sender"], alice.as_str());
        assert_eq!(got.events[0]["type"], "m.test");
        assert_eq!(got.events[0]["content"]["body"], "hi");
    }
    // b1 syncs with a token before the message: still delivered.
    let got = s
        .e2ee
        .to_device_for_sync(&bob, &b1, Some(pos - 1), pos)
        .unwrap();
    assert_eq!(got.events.len(), 1);
    // b1 acknowledges: gone for b1, still there for b2.
    let got = s
        .e2ee
        .to_device_for_sync(&bob, &b1, Some(pos), pos)
        .unwrap();
    assert!(got.events.is_empty());
    assert!(s
        .e2ee
        .to_device_for_sync(&bob, &b1, None, pos)
        .unwrap()
        .events
        .is_empty());
    assert_eq!(
        s.e2ee
            .to_device_for_sync(&bob, &b2, None, pos)
            .unwrap()
            .events
            .len(),
        1
    );

    // Non-object content is refused.
    let bad = BTreeMap::from([(
        bob.clone(),
        BTreeMap::from([(b1.to_string(), json!("text"))]),
    )]);
    assert_eq!(
        s.e2ee
            .send_to_device_now(&alice, &adev, "m.test", "txn2", &bad)
            .unwrap_err()
            .errcode(),
        "M_BAD_JSON"
    );
}

#[test]
fn to_device_delivery_is_paged() {
    let s = services();
    let (alice, adev) = login(&s, "alice");
    let (bob, bdev) = login(&s, "bob");
    let total = super::to_device::TO_DEVICE_LIMIT + 5;
    for i in 0..total {
        let messages = BTreeMap::from([(
            bob.clone(),
            BTreeMap::from([(bdev.to_string(), json!({ "i": i }))]),
        )]);
        s.e2ee
            .send_to_device_now(&alice, &adev, "m.test", &format!("t{i}"), &messages)
            .unwrap();
    }
    let upto = s.e2ee.current_pos();
    let first = s.e2ee.to_device_for_sync(&bob, &bdev, None, upto).unwrap();
    assert_eq!(first.events.len(), super::to_device::TO_DEVICE_LIMIT);
    let stop = first.limited_at.expect("limited");
    let rest = s
        .e2ee
        .to_device_for_sync(&bob, &bdev, Some(stop), upto)
        .unwrap();
    assert_eq!(rest.events.len(), 5);
    assert!(rest.limited_at.is_none());
    assert_eq!(rest.events[4]["content"]["i"], total - 1);
}

#[tokio::test]
async fn device_list_changes_follow_shared_rooms() {
    let s = services();
    let (alice, _) = login(&s, "alice");
    let (bob, bdev) = login(&s, "bob");
    let (carol, cdev) = login(&s, "carol");
    let room = shared_room(&s, &alice, &[&bob]).await;

    let start = now(&s);
    s.e2ee
        .upload_keys_now(
            &bob,
            &bdev,
            Some(&device_keys(&bob, &bdev, "c")),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap();
    s.e2ee
        .upload_keys_now(
            &carol,
            &cdev,
            Some(&device_keys(&carol, &cdev, "c")),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap();
    let changes = s.e2ee.device_list_changes(&alice, start, now(&s)).unwrap();
    assert_eq!(changes.changed, vec![bob.clone()], "carol shares no room");
    assert!(changes.left.is_empty());
    // Re-uploading identical keys is no change.
    let mid = now(&s);
    s.e2ee
        .upload_keys_now(
            &bob,
            &bdev,
            Some(&device_keys(&bob, &bdev, "c")),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .unwrap();
    assert!(s
        .e2ee
        .device_list_changes(&alice, mid, now(&s))
        .unwrap()
        .is_empty());

    // Carol joins: she is new to alice, and alice and bob are new to her.
    let before_join = now(&s);
    s.rooms
        .join(&room, &carol, &MemberProfile::default(), None)
        .await
        .unwrap();
    let changes = s
        .e2ee
        .device_list_changes(&alice, before_join, now(&s))
        .unwrap();
    assert_eq!(changes.changed, vec![carol.clone()]);
    let for_carol = s
        .e2ee
        .device_list_changes(&carol, before_join, now(&s))
        .unwrap();
    assert_eq!(for_carol.changed, vec![alice.clone(), bob.clone()]);

    // Bob deletes his device: alice and carol hear about it.
    let before_delete = now(&s);
    s.users.remove_device_now(&bob, &bdev).unwrap();
    assert_eq!(
        s.e2ee
            .device_list_changes(&alice, before_delete, now(&s))
            .unwrap()
            .changed,
        vec![bob.clone()]
    );

    // Bob leaves: alice no longer shares a room with him.
    let before_leave = now(&s);
    s.rooms.leave(&room, &bob, None).await.unwrap();
    let changes = s
        .e2ee
        .device_list_changes(&alice, before_leave, now(&s))
        .unwrap();
    assert_eq!(changes.left, vec![bob.clone()]);
    assert!(changes.changed.is_empty());
    // And bob sees everybody go.
    let for_bob = s
        .e2ee
        .device_list_changes(&bob, before_leave, now(&s))
        .unwrap();
    assert_eq!(for_bob.left, vec![alice.clone(), carol.clone()]);

    // A user's own new device is a change for them.
    let before_login = now(&s);
    login(&s, "alice");
    assert_eq!(
        s.e2ee
            .device_list_changes(&alice, before_login, now(&s))
            .unwrap()
            .changed,
        vec![alice.clone()]
    );
}

fn sync_request(since: Option<String>) -> SyncRequest {
    SyncRequest {
        since,
        timeout: std::time::Duration::ZERO,
        filter: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn sync_delivers_to_device_device_lists_and_counts() {
    let s = services();
    let (alice, adev) = login(&s, "alice");
    let (bob, bdev) = login(&s, "bob");
    shared_room(&s, &alice, &[&bob]).await;
    let bob_session = Session {
        user_id: bob.clone(),
        device_id: bdev.clone(),
        is_guest: false,
        rate_limit_exempt: false,
        appservice: None,
    };
    let first = s.sync.sync(&bob_session, sync_request(None)).await.unwrap();
    let token = first["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(token.matches('_').count(), 3, "{token}");
    assert_eq!(first["device_one_time_keys_count"]["signed_curve25519"], 0);

    // A long-polling sync is woken by a to-device message.
    let waiter = {
        let s = s.clone();
        let session = bob_session.clone();
        let since = token.clone();
        tokio::spawn(async move {
            let mut req = sync_request(Some(since));
            req.timeout = std::time::Duration::from_secs(30);
            s.sync.sync(&session, req).await.unwrap()
        })
    };
    // It is parked, waiting for a wake-up, before the message is sent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.notifier.parked(&bob) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll never parked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let messages = BTreeMap::from([(
        bob.clone(),
        BTreeMap::from([(bdev.to_string(), json!({ "secret": 1 }))]),
    )]);
    s.e2ee
        .send_to_device_now(&alice, &adev, "m.room_key_request", "t1", &messages)
        .unwrap();
    let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("sync woken")
        .unwrap();
    assert_eq!(woken["to_device"]["events"][0]["content"]["secret"], 1);
    let next = woken["next_batch"].as_str().unwrap().to_owned();

    // Alice uploads keys: bob hears about it; acknowledged messages are gone.
    s.e2ee
        .upload_keys_now(
            &alice,
            &adev,
            Some(&device_keys(&alice, &adev, "c")),
            &BTreeMap::new(),
            &map(json!({ "signed_curve25519:F": "fb" })),
        )
        .unwrap();
    let res = s
        .sync
        .sync(&bob_session, sync_request(Some(next.clone())))
        .await
        .unwrap();
    assert_eq!(res["device_lists"]["changed"], json!([alice.as_str()]));
    assert_eq!(res["to_device"]["events"], json!([]));

    // Bob's own key counts and fallback types.
    s.e2ee
        .upload_keys_now(
            &bob,
            &bdev,
            None,
            &map(json!({ "signed_curve25519:A": "k" })),
            &map(json!({ "signed_curve25519:F": "fb" })),
        )
        .unwrap();
    let res = s
        .sync
        .sync(&bob_session, sync_request(Some(next)))
        .await
        .unwrap();
    assert_eq!(res["device_one_time_keys_count"]["signed_curve25519"], 1);
    assert_eq!(
        res["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    assert_eq!(
        res["org.matrix.msc2732.device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
}

#[test]
fn concurrent_claims_never_hand_out_a_key_twice() {
    let s = services();
    let (alice, dev) = login(&s, "alice");
    let keys: BTreeMap<String, Value> = (0..40)
        .map(|i| {
            (
                format!("signed_curve25519:K{i:03}"),
                json!({ "key": format!("k{i}") }),
            )
        })
        .collect();
    s.e2ee
        .upload_keys_now(&alice, &dev, None, &keys, &BTreeMap::new())
        .unwrap();
    let request = BTreeMap::from([(
        alice.clone(),
        BTreeMap::from([(dev.clone(), "signed_curve25519".to_owned())]),
    )]);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            let request = request.clone();
            let (alice, dev) = (alice.clone(), dev.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..10 {
                    let (claimed, _) = s.e2ee.claim_keys_now(&request).unwrap();
                    got.extend(claimed[&alice][&dev].keys().cloned());
                }
                got
            })
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (40, 40));
    assert!(s.e2ee.claim_keys_now(&request).unwrap().0.is_empty());
}
