use std::{collections::BTreeMap, path::Path, sync::Arc};

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::E2eeTransaction;
use crate::{
    config::Config,
    e2ee::tests::{device_keys, login, map},
    rooms::{CreateRoom, MemberProfile},
    services::Services,
};

/// A config with the encrypted appservice `br` (exclusive `@br_.*`) and data under `dir`.
fn config(dir: &Path) -> Config {
    let reg = dir.join("br.yaml");
    std::fs::write(
        &reg,
        "id: br\nurl: \"http://127.0.0.1:9\"\nas_token: br_as\nhs_token: br_hs\n\
         sender_localpart: br_bot\norg.matrix.msc3202: true\n\
         namespaces:\n  users: [{exclusive: true, regex: \"@br_.*\"}]\n",
    )
    .unwrap();
    Config {
        appservices: vec![reg],
        data_dir: dir.join("data"),
        ..Config::default()
    }
}

async fn next(s: &Services) -> Option<E2eeTransaction> {
    let reg = s.appservices.by_id("br").unwrap().clone();
    s.appservices.next_e2ee_transaction(&reg).await.unwrap()
}

async fn ack(s: &Services, txn: &E2eeTransaction) {
    let reg = s.appservices.by_id("br").unwrap().clone();
    s.appservices
        .acknowledge_e2ee(&reg, &txn.txn_id)
        .await
        .unwrap();
}

/// Sends everything waiting and acknowledges it.
async fn flush(s: &Services) {
    while let Some(t) = next(s).await {
        ack(s, &t).await;
    }
}

fn send(s: &Services, from: &(OwnedUserId, OwnedDeviceId), to: &UserId, device: &str, n: u32) {
    let messages = BTreeMap::from([(
        to.to_owned(),
        BTreeMap::from([(device.to_owned(), json!({ "n": n }))]),
    )]);
    s.e2ee
        .send_to_device_now(&from.0, &from.1, "m.test", &format!("t{n}"), &messages)
        .unwrap();
}

fn to_device(t: &E2eeTransaction) -> Vec<Value> {
    t.body["de.sorunome.msc2409.to_device"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn queued(s: &Services) -> usize {
    s.storage()
        .trees
        .appservice_to_device
        .scan_prefix(&[])
        .count()
}

#[tokio::test]
async fn to_device_for_bridged_users_waits_for_the_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let s = Services::in_memory(config(dir.path())).unwrap();
    let alice = login(&s, "alice");
    let (alice2_user, alice2) = login(&s, "alice");
    let (puppet, dev) = login(&s, "br_x");
    send(&s, &alice, &puppet, dev.as_str(), 1);
    // Not in the device's inbox: the appservice gets it.
    let upto = s.e2ee.current_pos();
    let inbox = s
        .e2ee
        .to_device_for_sync(&puppet, &dev, None, upto)
        .unwrap();
    assert!(inbox.events.is_empty());

    let t = next(&s).await.expect("a transaction");
    assert!(t.txn_id.starts_with("e2ee-"), "{t:?}");
    assert_eq!(
        to_device(&t),
        [json!({
            "sender": alice.0, "type": "m.test", "content": { "n": 1 },
            "to_user_id": puppet, "to_device_id": dev,
        })]
    );
    // Unacknowledged: the same transaction again, and a wrong id changes nothing.
    assert_eq!(next(&s).await.as_ref(), Some(&t));
    let reg = s.appservices.by_id("br").unwrap().clone();
    s.appservices
        .acknowledge_e2ee(&reg, "e2ee-99")
        .await
        .unwrap();
    assert_eq!(next(&s).await.as_ref(), Some(&t));
    assert_eq!(queued(&s), 1);

    // A message sent meanwhile goes in the next transaction, not into the pending one.
    send(&s, &alice, &puppet, dev.as_str(), 2);
    assert_eq!(next(&s).await.as_ref(), Some(&t));
    ack(&s, &t).await;
    let t2 = next(&s).await.expect("the second message");
    assert_ne!(t2.txn_id, t.txn_id);
    assert_eq!(to_device(&t2).len(), 1);
    assert_eq!(to_device(&t2)[0]["content"]["n"], 2);
    ack(&s, &t2).await;
    assert_eq!(next(&s).await, None);
    assert_eq!(queued(&s), 0);

    // Messages for other users still go to their inboxes.
    send(&s, &alice, &alice2_user, alice2.as_str(), 3);
    assert_eq!(next(&s).await, None);
    let inbox = s
        .e2ee
        .to_device_for_sync(&alice2_user, &alice2, None, s.e2ee.current_pos())
        .unwrap();
    assert_eq!(inbox.events.len(), 1);
}

#[tokio::test]
async fn key_counts_of_bridged_devices_follow_uploads_and_claims() {
    let dir = tempfile::tempdir().unwrap();
    let s = Services::in_memory(config(dir.path())).unwrap();
    let (puppet, dev) = login(&s, "br_x");
    flush(&s).await;
    s.e2ee
        .upload_keys_now(
            &puppet,
            &dev,
            Some(&device_keys(&puppet, &dev, "c1")),
            &map(json!({
                "signed_curve25519:AAAA": { "key": "k1", "signatures": {} },
                "signed_curve25519:AAAB": { "key": "k2", "signatures": {} },
            })),
            &map(json!({ "signed_curve25519:FFFF": { "key": "fb", "fallback": true } })),
        )
        .unwrap();
    let t = next(&s).await.expect("counts");
    let counts = &t.body["org.matrix.msc3202.device_one_time_keys_count"];
    assert_eq!(
        counts[puppet.as_str()][dev.as_str()]["signed_curve25519"],
        2
    );
    assert_eq!(
        t.body["org.matrix.msc3202.device_unused_fallback_key_types"][puppet.as_str()]
            [dev.as_str()],
        json!(["signed_curve25519"])
    );
    // Its own device keys changed: the puppet is in `changed`.
    assert_eq!(
        t.body["org.matrix.msc3202.device_lists"]["changed"],
        json!([puppet])
    );
    ack(&s, &t).await;
    assert_eq!(next(&s).await, None);

    // A claim while a transaction is pending: the pending one keeps its counts, and
    // the change is sent after it.
    let claim = BTreeMap::from([(
        puppet.clone(),
        BTreeMap::from([(dev.clone(), "signed_curve25519".to_owned())]),
    )]);
    s.e2ee.claim_keys(&claim).await.unwrap();
    let t = next(&s).await.expect("counts after a claim");
    let count = |t: &E2eeTransaction| {
        t.body["org.matrix.msc3202.device_one_time_keys_count"][puppet.as_str()][dev.as_str()]
            ["signed_curve25519"]
            .clone()
    };
    assert_eq!(count(&t), 1);
    s.e2ee.claim_keys(&claim).await.unwrap();
    assert_eq!(next(&s).await.as_ref(), Some(&t));
    ack(&s, &t).await;
    let t = next(&s).await.expect("the newer change was not lost");
    assert_eq!(count(&t), 0);
    ack(&s, &t).await;
    assert_eq!(next(&s).await, None);

    // A deleted device's counts are not sent, and nothing of it is left waiting.
    let (_, gone) = login(&s, "br_x");
    flush(&s).await;
    s.e2ee
        .upload_keys_now(
            &puppet,
            &gone,
            None,
            &map(json!({ "signed_curve25519:AAAA": { "key": "k1", "signatures": {} } })),
            &BTreeMap::new(),
        )
        .unwrap();
    s.users.remove_device(&puppet, &gone).await.unwrap();
    let t = next(&s).await.expect("the device list changed");
    assert!(
        t.body
            .get("org.matrix.msc3202.device_one_time_keys_count")
            .is_none(),
        "{t:?}"
    );
    ack(&s, &t).await;
    let markers = || {
        s.storage()
            .trees
            .appservice_key_counts
            .scan_prefix(&[])
            .count()
    };
    assert_eq!(markers(), 0);
    // A marker left for a device that no longer exists (a change racing its deletion)
    // is dropped without a transaction.
    let stale = crate::storage::keys::strs(&["br", puppet.as_str(), "GONE"]);
    s.storage()
        .trees
        .appservice_key_counts
        .insert(&stale, &1u64.to_be_bytes())
        .unwrap();
    assert_eq!(next(&s).await, None);
    assert_eq!(markers(), 0);
}

#[tokio::test]
async fn device_lists_cover_users_sharing_a_room_with_bridged_users() {
    let dir = tempfile::tempdir().unwrap();
    let s = Services::in_memory(config(dir.path())).unwrap();
    let alice = login(&s, "alice");
    let bob = login(&s, "bob");
    let carol = login(&s, "carol");
    let (puppet, _) = login(&s, "br_x");
    let room = s
        .rooms
        .create_room(
            &alice.0,
            CreateRoom {
                preset: Some("public_chat".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.rooms
        .join(&room, &puppet, &MemberProfile::default(), None)
        .await
        .unwrap();
    flush(&s).await;
    let lists = |t: &E2eeTransaction| t.body["org.matrix.msc3202.device_lists"].clone();

    // Alice shares the room: her new keys count; bob's do not.
    for (user, device) in [&alice, &bob] {
        s.e2ee
            .upload_keys_now(
                user,
                device,
                Some(&device_keys(user, device, "c")),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .unwrap();
    }
    let t = next(&s).await.expect("alice's change");
    assert_eq!(lists(&t), json!({"changed": [alice.0], "left": []}));
    ack(&s, &t).await;

    // Carol joins: newly shared; then leaves: no longer shared.
    s.rooms
        .join(&room, &carol.0, &MemberProfile::default(), None)
        .await
        .unwrap();
    let t = next(&s).await.expect("carol joined");
    assert_eq!(lists(&t), json!({"changed": [carol.0], "left": []}));
    ack(&s, &t).await;
    s.rooms.leave(&room, &carol.0, None).await.unwrap();
    let t = next(&s).await.expect("carol left");
    assert_eq!(lists(&t), json!({"changed": [], "left": [carol.0]}));
    ack(&s, &t).await;

    // Bob joining and leaving a room no bridged user is in is none of its business.
    let other = s
        .rooms
        .create_room(&bob.0, CreateRoom::default())
        .await
        .unwrap();
    s.rooms.leave(&other, &bob.0, None).await.unwrap();
    assert_eq!(next(&s).await, None);
}

#[tokio::test]
async fn a_pending_transaction_and_queued_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let s = Services::open(config.clone()).unwrap();
    let alice = login(&s, "alice");
    let (puppet, dev) = login(&s, "br_x");
    send(&s, &alice, &puppet, dev.as_str(), 1);
    let t = next(&s).await.expect("a transaction");
    // Queued, not yet in any transaction.
    send(&s, &alice, &puppet, dev.as_str(), 2);
    s.flush_storage().unwrap();
    drop(s);

    let s: Arc<Services> = Services::reopen(config).await.unwrap();
    assert_eq!(next(&s).await.as_ref(), Some(&t), "same id and body");
    ack(&s, &t).await;
    let t2 = next(&s).await.expect("the queued message");
    assert_eq!(to_device(&t2)[0]["content"]["n"], 2);
    ack(&s, &t2).await;
    assert_eq!(next(&s).await, None);
    assert_eq!(queued(&s), 0);
}
