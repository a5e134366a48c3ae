//! Two processes sharing one PostgreSQL database: what one writes through its E2EE
//! service, the other's inbox index, key counts and long polls see.

use std::{collections::BTreeMap, future::Future};

use ruma::UserId;
use serde_json::json;

use super::{
    tests::{device_keys, login, map},
    StreamPoint,
};
use crate::{
    rooms::{CreateRoom, MemberProfile},
    services::{two_processes, Services},
    stream::test_support::{eventually, woken_after},
};

/// Waits until B has seen every change A made so far (so that a wake-up expected next is
/// not one for an earlier change); B's e2ee position then.
async fn caught_up(a: &Services, b: &Services) -> u64 {
    let (userdata, e2ee) = (a.users.current_userdata_pos(), a.e2ee.current_pos());
    eventually("B reaches A's positions", || {
        b.users.current_userdata_pos() >= userdata && b.e2ee.current_pos() >= e2ee
    })
    .await;
    b.e2ee.current_pos()
}

/// Runs `write` while a long poll of `user` waits on `s`; `s`'s e2ee position when a
/// wake-up found it past `since` (`None`: not in time).
async fn wakes(
    s: &Services,
    user: &UserId,
    since: u64,
    write: impl Future<Output = ()>,
) -> Option<u64> {
    woken_after(&s.notifier, user, write, || s.e2ee.current_pos() > since)
        .await
        .then(|| s.e2ee.current_pos())
}

#[tokio::test]
async fn a_to_device_message_sent_through_one_process_is_delivered_by_the_other() {
    let (a, b) = two_processes();
    let (alice, adev) = login(&a, "alice");
    let (bob, bdev) = login(&a, "bob");
    let since = caught_up(&a, &b).await;
    // Bob's inbox is empty on B...
    let empty = b.e2ee.to_device_for_sync(&bob, &bdev, Some(since), since);
    assert!(empty.unwrap().events.is_empty());
    // ... until alice sends on A: bob's long poll on B wakes once B's position has it.
    let messages = BTreeMap::from([(bob.clone(), map(json!({ bdev.as_str(): { "secret": 1 } })))]);
    let woken_at = wakes(&b, &bob, since, async {
        a.e2ee
            .send_to_device(&alice, &adev, "m.test", "t1", &messages)
            .await
            .unwrap();
    })
    .await
    .expect("bob's long poll on B is woken");
    let got = b
        .e2ee
        .to_device_for_sync(&bob, &bdev, Some(since), woken_at)
        .unwrap();
    assert_eq!(got.events.len(), 1);
    assert_eq!(got.events[0]["content"]["secret"], 1);
}

#[tokio::test]
async fn key_uploads_through_one_process_wake_the_owner_and_the_trackers_on_the_other() {
    let (a, b) = two_processes();
    // The room first: B's rooms service reads alice's rooms when her device list
    // changes (at login), and keeping its caches current is the rooms service's part.
    let alice = a.users.create_user("alice", Some("pw"), false).unwrap();
    let bob = a.users.create_user("bob", Some("pw"), false).unwrap();
    let room = a
        .rooms
        .create_room(
            &alice,
            CreateRoom {
                preset: Some("public_chat".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    a.rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    let (_, adev) = login(&a, "alice");
    let before = b.e2ee.key_counts(&alice, &adev).unwrap();
    assert_eq!(before.one_time["signed_curve25519"], 0);

    // One-time keys: the device's owner hears of the new counts.
    let since = caught_up(&a, &b).await;
    wakes(&b, &alice, since, async {
        a.e2ee
            .upload_keys(
                &alice,
                &adev,
                None,
                &map(json!({ "signed_curve25519:AAAA": { "key": "k1", "signatures": {} } })),
                &BTreeMap::new(),
            )
            .await
            .unwrap();
    })
    .await
    .expect("alice's long poll on B is woken");
    let counts = b.e2ee.key_counts(&alice, &adev).unwrap();
    assert_eq!(counts.one_time["signed_curve25519"], 1);

    // Device keys: bob, who shares a room with alice, hears that her devices changed.
    let from = StreamPoint {
        timeline: b.rooms.current_pos(),
        e2ee: caught_up(&a, &b).await,
    };
    let woken_at = wakes(&b, &bob, from.e2ee, async {
        a.e2ee
            .upload_keys(
                &alice,
                &adev,
                Some(&device_keys(&alice, &adev, "c1")),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .await
            .unwrap();
    })
    .await
    .expect("bob's long poll on B is woken");
    let to = StreamPoint {
        e2ee: woken_at,
        ..from
    };
    let changes = b.e2ee.device_list_changes(&bob, from, to).unwrap();
    assert_eq!(changes.changed, vec![alice.clone()]);
}
