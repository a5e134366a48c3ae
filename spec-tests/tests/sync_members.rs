//! Lazy-loaded members in incremental `/sync`: a sender's member event arrives in `state`
//! the first time they appear in the timeline, and only again with
//! `include_redundant_members`.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use spec_tests::{enc, timeline, Client, TestServer};

/// The state keys of the member events in a room's `state` section.
fn state_members(sync: &Value, room: &str) -> BTreeSet<String> {
    sync["rooms"]["join"][room]["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect()
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// Incremental sync from `since` with `filter` that waits until `room` has timeline events.
async fn sync_room(c: &Client, since: &str, filter: &str, room: &str) -> anyhow::Result<Value> {
    let s = c
        .sync(&format!("since={since}&timeout=5000&filter={filter}"))
        .await?;
    anyhow::ensure!(
        !timeline(&s, room).is_empty(),
        "no timeline for the room: {s}"
    );
    Ok(s)
}

fn ids<const N: usize>(users: [&Client; N]) -> BTreeSet<String> {
    users.iter().map(|c| c.user_id.clone()).collect()
}

/// A room where alice, bob and carol are joined and only bob has spoken lately.
async fn room_with_quiet_carol(
    server: &TestServer,
) -> anyhow::Result<(Client, Client, Client, String)> {
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    for i in 0..4 {
        bob.say(&room, &format!("bob {i}")).await?;
    }
    Ok((alice, bob, carol, room))
}

#[tokio::test]
async fn lazy_members_arrive_once_in_incremental_syncs() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, carol, room) = room_with_quiet_carol(&server).await?;
    let filter = enc(
        &json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 2}}})
            .to_string(),
    );
    let first = alice.sync(&format!("timeout=0&filter={filter}")).await?;
    // the timeline holds only bob's messages: bob and alice herself, not carol
    assert_eq!(state_members(&first, &room), ids([&alice, &bob]), "{first}");

    // carol speaks for the first time since: her member event comes with it
    carol.say(&room, "carol here").await?;
    let s = sync_room(&alice, &next_batch(&first), &filter, &room).await?;
    assert_eq!(state_members(&s, &room), ids([&carol]), "{s}");
    let carol_member = s["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == carol.user_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(carol_member["content"]["membership"], "join");
    // a client that lost that response and syncs from the same token gets it again
    let retry = sync_room(&alice, &next_batch(&first), &filter, &room).await?;
    assert_eq!(state_members(&retry, &room), ids([&carol]), "{retry}");

    // not again: neither for carol nor for bob, who was sent in the initial sync
    carol.say(&room, "carol again").await?;
    let s = sync_room(&alice, &next_batch(&s), &filter, &room).await?;
    assert_eq!(state_members(&s, &room), BTreeSet::new(), "{s}");
    bob.say(&room, "bob again").await?;
    let s = sync_room(&alice, &next_batch(&s), &filter, &room).await?;
    assert_eq!(state_members(&s, &room), BTreeSet::new(), "{s}");
    Ok(())
}

#[tokio::test]
async fn redundant_members_are_sent_every_time_when_asked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, carol, room) = room_with_quiet_carol(&server).await?;
    let filter = enc(
        &json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true},
                         "timeline": {"limit": 2}}})
        .to_string(),
    );
    let first = alice.sync(&format!("timeout=0&filter={filter}")).await?;
    assert_eq!(state_members(&first, &room), ids([&alice, &bob]));

    carol.say(&room, "carol here").await?;
    let s = sync_room(&alice, &next_batch(&first), &filter, &room).await?;
    assert!(state_members(&s, &room).contains(&carol.user_id), "{s}");
    carol.say(&room, "carol again").await?;
    let s = sync_room(&alice, &next_batch(&s), &filter, &room).await?;
    assert!(state_members(&s, &room).contains(&carol.user_id), "{s}");
    bob.say(&room, "bob again").await?;
    let s = sync_room(&alice, &next_batch(&s), &filter, &room).await?;
    assert!(state_members(&s, &room).contains(&bob.user_id), "{s}");
    assert!(!state_members(&s, &room).contains(&carol.user_id), "{s}");

    // without lazy loading, an incremental sync sends no member state for known senders
    let plain = enc(&json!({"room": {"timeline": {"limit": 2}}}).to_string());
    carol.say(&room, "plain").await?;
    let s = sync_room(&alice, &next_batch(&s), &plain, &room).await?;
    assert_eq!(state_members(&s, &room), BTreeSet::new(), "{s}");
    Ok(())
}
