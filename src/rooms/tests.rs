//! Service-level tests of rooms on the in-memory engine.

use std::sync::Arc;

use ruma::{OwnedUserId, UserId};
use serde_json::json;

use super::*;
use crate::{
    config::Config, events::keys::ServerKeys, services::Services, storage::Storage,
    stream::Notifier,
};

fn services() -> Arc<Services> {
    Services::in_memory(Config::default()).expect("services")
}

fn user(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:localhost")).unwrap()
}

async fn send_text(
    s: &Services,
    room: &RoomId,
    sender: &UserId,
    body: &str,
) -> Result<(ruma::OwnedEventId, u64)> {
    let guard = s.rooms.lock(room).await;
    s.rooms
        .send(
            guard,
            sender,
            NewEvent::message("m.room.message", json!({"msgtype": "m.text", "body": body})),
        )
        .await
}

#[tokio::test]
async fn create_room_sets_up_state_and_creator_power() {
    let s = services();
    let alice = user("alice");
    let req = CreateRoom {
        name: Some("Hall".into()),
        topic: Some("t".into()),
        ..Default::default()
    };
    let room = s.rooms.create_room(&alice, req).await.unwrap();
    let state = s.rooms.current_state(&room).unwrap();
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(
            state.contains_key(&(kind.to_string(), String::new())),
            "{kind} missing"
        );
    }
    assert_eq!(
        s.rooms.membership(&room, &alice).unwrap(),
        Some(Membership::Join)
    );
    assert_eq!(s.rooms.power_levels(&room).unwrap().user_level(&alice), 100);
    assert_eq!(s.rooms.room(&room).unwrap().version.as_str(), "11");
    let join_rule = s
        .rooms
        .state_content(&room, "m.room.join_rules", "")
        .unwrap()
        .unwrap();
    assert_eq!(join_rule["join_rule"], "invite");
}

#[tokio::test]
async fn unsupported_version_creates_nothing() {
    let s = services();
    let req = CreateRoom {
        room_version: Some("1".into()),
        ..Default::default()
    };
    let err = s.rooms.create_room(&user("a"), req).await.unwrap_err();
    assert_eq!(err.errcode(), "M_UNSUPPORTED_ROOM_VERSION");
    assert!(s.rooms.user_rooms(&user("a")).unwrap().is_empty());
}

#[tokio::test]
async fn non_members_cannot_send_and_invited_users_can_join() {
    let s = services();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = s
        .rooms
        .create_room(&alice, CreateRoom::default())
        .await
        .unwrap();
    let err = send_text(&s, &room, &bob, "hi").await.unwrap_err();
    assert_eq!(err.errcode(), "M_FORBIDDEN");
    let err = s
        .rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), "M_FORBIDDEN", "invite-only room");
    s.rooms
        .invite(&room, &alice, &bob, None, false, None)
        .await
        .unwrap();
    s.rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    send_text(&s, &room, &bob, "hi").await.unwrap();
}

#[tokio::test]
async fn transaction_ids_are_idempotent() {
    let s = services();
    let alice = user("alice");
    let room = s
        .rooms
        .create_room(&alice, CreateRoom::default())
        .await
        .unwrap();
    let mut ev = NewEvent::message("m.room.message", json!({"body": "x", "msgtype": "m.text"}));
    ev.txn = Some(Transaction::new(
        "DEV".into(),
        "PUT /rooms/r/send/m.room.message",
        "t1",
    ));
    let guard = s.rooms.lock(&room).await;
    let (a, _) = s.rooms.send(guard, &alice, ev.clone()).await.unwrap();
    let guard = s.rooms.lock(&room).await;
    let (b, _) = s.rooms.send(guard, &alice, ev).await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn historical_state_and_pagination() {
    let s = services();
    let alice = user("alice");
    let room = s
        .rooms
        .create_room(
            &alice,
            CreateRoom {
                name: Some("one".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let before = s.rooms.current_pos();
    {
        let guard = s.rooms.lock(&room).await;
        s.rooms
            .send(
                guard,
                &alice,
                NewEvent::state("m.room.name", "", json!({"name": "two"})),
            )
            .await
            .unwrap();
    }
    let old = s.rooms.state_at(&room, before).unwrap();
    let id = &old[&("m.room.name".to_string(), String::new())];
    let pdu = s.rooms.get_pdu(id).unwrap().unwrap();
    assert!(pdu.content.get().contains("one"));

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            send_text(&s, &room, &alice, &format!("m{i}"))
                .await
                .unwrap()
                .0,
        );
    }
    let filter = EventFilter::from_json(&json!({"types": ["m.room.message"]}));
    let (_, page) = s
        .rooms
        .messages(&room, &alice, None, None, Direction::Backward, 3, &filter)
        .unwrap();
    let got: Vec<_> = page.chunk.iter().map(|p| p.event_id.clone()).collect();
    assert_eq!(got, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    let end = page.end.expect("more to come");
    let (_, page) = s
        .rooms
        .messages(
            &room,
            &alice,
            Some(end),
            None,
            Direction::Backward,
            3,
            &filter,
        )
        .unwrap();
    let got: Vec<_> = page.chunk.iter().map(|p| p.event_id.clone()).collect();
    assert_eq!(got, vec![ids[1].clone(), ids[0].clone()]);
}

#[tokio::test]
async fn redaction_strips_content_and_needs_power_for_others() {
    let s = services();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = s
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
    s.rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    let (msg, _) = send_text(&s, &room, &alice, "secret").await.unwrap();
    let guard = s.rooms.lock(&room).await;
    let mut redaction = NewEvent::message("m.room.redaction", json!({}));
    redaction.redacts = Some(msg.clone());
    let err = s
        .rooms
        .send(guard, &bob, redaction.clone())
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), "M_FORBIDDEN");
    let guard = s.rooms.lock(&room).await;
    s.rooms.send(guard, &alice, redaction).await.unwrap();
    let pdu = s.rooms.get_pdu(&msg).unwrap().unwrap();
    assert!(!pdu.content.get().contains("secret"));
    assert!(pdu.to_client_event()["unsigned"]["redacted_because"].is_object());
}

#[tokio::test]
async fn cached_room_lists_follow_membership_changes() {
    let s = services();
    let (alice, bob) = (user("alice"), user("bob"));
    let public = CreateRoom {
        preset: Some("public_chat".into()),
        ..Default::default()
    };
    let first = s.rooms.create_room(&alice, public.clone()).await.unwrap();
    // Bob's (empty) list is cached before he joins anything.
    assert!(s.rooms.user_rooms(&bob).unwrap().is_empty());
    s.rooms
        .join(&first, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    let second = s.rooms.create_room(&alice, public).await.unwrap();
    s.rooms
        .join(&second, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    s.rooms.leave(&first, &bob, None).await.unwrap();
    let mut rooms = s.rooms.user_rooms(&bob).unwrap().to_vec();
    rooms.sort_by_key(|a| a.2);
    let memberships: Vec<_> = rooms.iter().map(|(r, m, _)| (r.clone(), *m)).collect();
    assert_eq!(
        memberships,
        vec![
            (second.clone(), Membership::Join),
            (first.clone(), Membership::Leave)
        ]
    );
    // The single-room lookup agrees with the list (found by search in the sorted list).
    for (room, m, pos) in &rooms {
        assert_eq!(s.rooms.user_room(&bob, room).unwrap(), Some((*m, *pos)));
    }
    let elsewhere: ruma::OwnedRoomId = "!elsewhere:localhost".try_into().unwrap();
    assert_eq!(s.rooms.user_room(&bob, &elsewhere).unwrap(), None);
    let users = s.rooms.purge_subjects(&second).unwrap();
    s.rooms.purge_room(&second, &users).await.unwrap();
    let rooms = s.rooms.user_rooms(&bob).unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].0, first);
}

#[tokio::test]
async fn member_changes_are_known_per_room_by_position() {
    let s = services();
    let (alice, bob) = (user("alice"), user("bob"));
    let public = CreateRoom {
        preset: Some("public_chat".into()),
        ..Default::default()
    };
    let room = s.rooms.create_room(&alice, public).await.unwrap();
    let (_, after_create) = send_text(&s, &room, &alice, "hello").await.unwrap();
    // Messages only since `after_create`: no member change to read.
    send_text(&s, &room, &alice, "again").await.unwrap();
    assert!(!s.rooms.members_changed_since(&room, after_create));
    assert!(s.rooms.members_changed_since(&room, 0));
    s.rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    assert!(s.rooms.members_changed_since(&room, after_create));
    let (_, after_join) = send_text(&s, &room, &alice, "welcome").await.unwrap();
    assert!(!s.rooms.members_changed_since(&room, after_join));
}

#[tokio::test]
async fn after_a_restart_member_changes_count_up_to_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let (alice, bob) = (user("alice"), user("bob"));
    let (room, before_join, last) = {
        let s = Services::open(config.clone()).unwrap();
        let public = CreateRoom {
            preset: Some("public_chat".into()),
            ..Default::default()
        };
        let room = s.rooms.create_room(&alice, public).await.unwrap();
        let (_, before_join) = send_text(&s, &room, &alice, "hello").await.unwrap();
        s.rooms
            .join(&room, &bob, &MemberProfile::default(), None)
            .await
            .unwrap();
        let (_, last) = send_text(&s, &room, &alice, "welcome").await.unwrap();
        s.storage().flush().unwrap();
        (room, before_join, last)
    };
    let s = Services::reopen(config).await.unwrap();
    // Bob's join happened before the start: a reader from before it must look.
    assert!(s.rooms.members_changed_since(&room, before_join));
    assert!(!s.rooms.members_changed_since(&room, last));
}

#[tokio::test]
async fn recent_window_answers_like_storage() {
    let s = services();
    let alice = user("alice");
    let room = s
        .rooms
        .create_room(&alice, CreateRoom::default())
        .await
        .unwrap();
    // Interleave another room so positions are not contiguous, and go well past the
    // window's capacity.
    let other = s
        .rooms
        .create_room(&alice, CreateRoom::default())
        .await
        .unwrap();
    for i in 0..40 {
        send_text(&s, &room, &alice, &format!("m{i}"))
            .await
            .unwrap();
        if i % 3 == 0 {
            send_text(&s, &other, &alice, "x").await.unwrap();
        }
    }
    let members = EventFilter::from_json(&json!({ "types": ["m.room.member"] }));
    let messages = EventFilter::from_json(&json!({ "types": ["m.room.message"] }));
    let now = s.rooms.current_pos();
    let mut from_memory = 0;
    for lo in (0..=now).step_by(3) {
        for hi in [lo, lo + 1, lo + 5, now.saturating_sub(1), now, now + 3] {
            for dir in [Direction::Forward, Direction::Backward] {
                for limit in [1, 2, 5, 100] {
                    for filter in [None, Some(&members), Some(&messages)] {
                        let fast = s.rooms.timeline_range(&room, lo, hi, dir, limit, filter);
                        let stored = s
                            .rooms
                            .timeline_range_stored(&room, lo, hi, dir, limit, filter);
                        let ids = |r: Result<(Vec<(u64, Arc<crate::events::Pdu>)>, bool)>| {
                            let (events, more) = r.unwrap();
                            let ids: Vec<(u64, String)> = events
                                .iter()
                                .map(|(p, e)| (*p, e.event_id.to_string()))
                                .collect();
                            (ids, more)
                        };
                        assert_eq!(
                            ids(fast),
                            ids(stored),
                            "lo {lo} hi {hi} {dir:?} limit {limit} filter {}",
                            filter.is_some()
                        );
                    }
                }
            }
            let window = s.rooms.recent.lock().unwrap();
            if window.get(&room).unwrap().range(lo, hi).is_some() {
                from_memory += 1;
            }
        }
    }
    assert!(from_memory > 10, "the window answered {from_memory} ranges");
    // Purging the room drops its window.
    let users = s.rooms.purge_subjects(&room).unwrap();
    s.rooms.purge_room(&room, &users).await.unwrap();
    assert!(s.rooms.recent.lock().unwrap().get(&room).is_none());
}

/// Refuses topics: a stand-in for the room kinds' rules.
struct NoTopics;

impl RoomPolicy for NoTopics {
    fn name(&self) -> &'static str {
        "no_topics"
    }

    fn check(
        &self,
        _rooms: &RoomsService,
        _guard: &RoomGuard,
        _room: &RoomRecord,
        event: &crate::events::Pdu,
    ) -> Result<()> {
        if event.kind.to_string() == "m.room.topic" {
            return Err(Error::forbidden("Topics are not allowed here"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_policy_refusal_writes_nothing() {
    let rooms = RoomsService::new(
        Arc::new(Config::default()),
        Arc::new(Storage::in_memory()),
        Arc::new(ServerKeys::generate().unwrap()),
        Arc::new(Notifier::new()),
        vec![Arc::new(NoTopics)],
    )
    .unwrap();
    let alice = user("alice");
    let room = rooms
        .create_room_held(&alice, CreateRoom::default())
        .await
        .unwrap();
    let guard = rooms.lock(&room).await;
    let before = rooms.applied_pos();
    let events_before = rooms
        .timeline_range_stored(&room, 0, u64::MAX - 1, Direction::Forward, 1000, None)
        .unwrap()
        .0
        .len();

    let refused = rooms
        .append(
            &guard,
            &alice,
            NewEvent::state("m.room.topic", "", json!({ "topic": "no" })),
        )
        .unwrap_err();
    assert_eq!(
        (refused.kind(), refused.errcode()),
        (Some(crate::ErrorKind::Forbidden), "M_FORBIDDEN")
    );
    assert_eq!(rooms.applied_pos(), before, "a position was taken");
    assert!(rooms
        .state_content(&room, "m.room.topic", "")
        .unwrap()
        .is_none());
    let events_after = rooms
        .timeline_range_stored(&room, 0, u64::MAX - 1, Direction::Forward, 1000, None)
        .unwrap()
        .0
        .len();
    assert_eq!(events_after, events_before, "the refused event was stored");

    // What the policy does not refuse goes through.
    rooms
        .append(
            &guard,
            &alice,
            NewEvent::state("m.room.name", "", json!({ "name": "yes" })),
        )
        .unwrap();
    assert_eq!(rooms.applied_pos(), before + 1);
}
