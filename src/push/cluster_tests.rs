//! Two processes sharing one PostgreSQL database: what one writes, the other's push
//! service uses — rules, unread counts, pushers, members' names.

use ruma::{api::client::push::Pusher, push::Ruleset, OwnedRoomId, UserId};
use serde_json::json;

use crate::{
    rooms::{CreateRoom, MemberProfile, NewEvent},
    services::{two_processes, Services},
    stream::test_support::eventually,
};

/// A ruleset as JSON (rulesets do not compare).
fn json_of(rules: &Ruleset) -> serde_json::Value {
    serde_json::to_value(rules).unwrap()
}

/// A room on `s` that `owner` created and `other` joined.
async fn room_of_two(s: &Services, owner: &UserId, other: &UserId) -> OwnedRoomId {
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
    s.rooms
        .join(&room, other, &MemberProfile::default(), None)
        .await
        .unwrap();
    room
}

#[tokio::test]
async fn rules_saved_through_one_process_are_used_by_the_other() {
    let (a, b) = two_processes();
    let alice = a.users.create_user("alice", None, false).unwrap();
    // B reads (and keeps) the server default...
    assert_eq!(
        json_of(&b.push.ruleset(&alice).unwrap()),
        json_of(&Ruleset::server_default(&alice))
    );
    // ... until alice's own rules are saved on A.
    let mut custom = Ruleset::server_default(&alice);
    custom
        .set_enabled(ruma::push::RuleKind::Override, ".m.rule.master", true)
        .unwrap();
    a.push.save_ruleset(&alice, custom.clone()).await.unwrap();
    eventually("B uses alice's own rules", || {
        json_of(&b.push.ruleset(&alice).unwrap()) == json_of(&custom)
    })
    .await;
}

#[tokio::test]
async fn unread_counts_raised_by_one_process_are_read_right_on_the_other() {
    let (a, b) = two_processes();
    let alice = a.users.create_user("alice", None, false).unwrap();
    let bob = a.users.create_user("bob", None, false).unwrap();
    let room = room_of_two(&a, &alice, &bob).await;
    // B counts (and keeps) bob's unread notifications: none yet.
    assert_eq!(b.push.unread_counts(&bob, &room).unwrap(), (0, 0));
    let guard = a.rooms.lock(&room).await;
    let message = NewEvent::message("m.room.message", json!({"body": "hi", "msgtype": "m.text"}));
    a.rooms.send(guard, &alice, message).await.unwrap();
    assert_eq!(a.push.unread_counts(&bob, &room).unwrap(), (1, 0));
    eventually("B counts the new notification", || {
        b.push.unread_counts(&bob, &room).unwrap() == (1, 0)
    })
    .await;
}

#[tokio::test]
async fn pushers_and_names_changed_through_one_process_reach_the_other() {
    let (a, b) = two_processes();
    let alice = a.users.create_user("alice", None, false).unwrap();
    let bob = a.users.create_user("bob", None, false).unwrap();
    let room = room_of_two(&a, &alice, &bob).await;

    // A pusher set on A: B's push delivery looks bob's pushers up.
    assert!(!b.push.may_have_pushers(&bob));
    let pusher: Pusher = serde_json::from_value(json!({
        "kind": "email", "app_id": "m.email", "pushkey": "bob@example.org",
        "app_display_name": "Email", "device_display_name": "bob", "lang": "en",
        "data": {},
    }))
    .unwrap();
    a.push.set_pusher(&bob, pusher, false).await.unwrap();
    eventually("B knows bob has a pusher", || b.push.may_have_pushers(&bob)).await;

    // A display name changed on A: B's naming rules look for the new one.
    assert_eq!(b.push.display_name(&room, &bob).unwrap(), "bob");
    let change = crate::accounts::ProfileChange {
        displayname: Some(Some("Bobby Tables".into())),
        avatar_url: None,
    };
    a.accounts.set_profile(&bob, change).await.unwrap();
    eventually("B uses bob's new name", || {
        b.push.display_name(&room, &bob).unwrap() == "Bobby Tables"
    })
    .await;
}
