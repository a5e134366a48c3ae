//! Tests of delayed events on the in-memory engine and on sled across a restart.

use std::time::Duration;

use serde_json::json;

use super::{
    claim::{Claim, Intent, Record},
    *,
};
use crate::{config::Config, rooms::NewEvent, services::Services};

fn user(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:localhost")).unwrap()
}

const KEY: &str = "_@alice:localhost_DEV_m.call";
const CALL: &str = "org.matrix.msc3401.call.member";

async fn room_with(s: &Arc<Services>, members: &[&OwnedUserId]) -> OwnedRoomId {
    let room = s
        .rooms
        .create_room(&user("alice"), Default::default())
        .await
        .unwrap();
    for m in members {
        s.rooms
            .invite(&room, &user("alice"), m, None, false, None)
            .await
            .unwrap();
        s.rooms
            .join(&room, m, &Default::default(), None)
            .await
            .unwrap();
    }
    room
}

async fn schedule(
    s: &Arc<Services>,
    who: &UserId,
    room: &RoomId,
    delay_ms: u64,
    content: Value,
) -> Result<String> {
    s.rtc
        .schedule_delayed(
            who,
            "DEV".into(),
            room,
            CALL,
            Some(KEY),
            content,
            delay_ms,
            None,
        )
        .await
}

fn call_state(s: &Services, room: &RoomId) -> Option<Value> {
    s.rooms.state_content(room, CALL, KEY).unwrap()
}

/// Polls `f` for up to 10 s.
async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Stores a scheduled event with its indexes as `schedule_delayed` does, claimed or not
/// (what a process that died after its claim leaves behind).
async fn plant(s: &Services, event: &DelayedEvent, claim: Option<Claim>) {
    let trees = &s.storage().trees;
    let id = &event.delay_id;
    let mut batch = Batch::new();
    let record = Record {
        event: event.clone(),
        claim,
    };
    batch
        .insert_json(&trees.delayed_events, id.as_bytes(), &record)
        .unwrap();
    batch.insert(
        &trees.delayed_by_deadline,
        &deadline_key(event.deadline(), id),
        b"",
    );
    batch.insert(&trees.delayed_by_user, &user_key(&event.user_id, id), b"");
    s.storage().commit_durable(batch).await.unwrap();
}

/// A call-member event of alice's in `room`, due `delay_ms` after `running_since`.
fn alices(room: &RoomId, id: &str, content: Value, running_since: u64) -> DelayedEvent {
    DelayedEvent {
        delay_id: id.to_owned(),
        user_id: user("alice"),
        device_id: "DEV".into(),
        room_id: room.to_owned(),
        kind: CALL.to_owned(),
        state_key: Some(KEY.to_owned()),
        content,
        delay_ms: 100,
        running_since,
    }
}

// Deadlines are wall-clock milliseconds (they survive restarts), so tokio's paused time
// cannot drive them; instead of sleeping around the deadline, the test compares the
// timestamps the server recorded: when the delay was restarted and when the event was sent.
#[tokio::test]
async fn fires_after_the_delay_and_restart_postpones() {
    const DELAY_MS: u64 = 1_000;
    let s = Services::in_memory(Config::default()).unwrap();
    let alice = user("alice");
    let room = room_with(&s, &[]).await;
    let id = schedule(&s, &alice, &room, DELAY_MS, json!({}))
        .await
        .unwrap();
    assert_eq!(s.rtc.list_delayed(&alice).unwrap().len(), 1);
    assert!(call_state(&s, &room).is_none());
    let scheduled = s.rtc.delayed_event(&id).unwrap().unwrap().running_since;
    // Restart once the clock moved on, so that the deadline moves too.
    while now_ms() <= scheduled {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.rtc
        .update_delayed(&id, DelayedAction::Restart, Some(&alice))
        .await
        .unwrap();
    let restarted = s.rtc.delayed_event(&id).unwrap().unwrap().running_since;
    assert!(restarted > scheduled, "{restarted} <= {scheduled}");
    assert!(wait_for(|| call_state(&s, &room).is_some()).await);
    let sent = s.rooms.state_event_str(&room, CALL, KEY).unwrap().unwrap();
    let sent_at = u64::from(sent.origin_server_ts.0);
    assert!(
        sent_at >= restarted + DELAY_MS,
        "sent at {sent_at}, before the restarted deadline {}",
        restarted + DELAY_MS
    );
    // The record is dropped just after the event is sent.
    assert!(wait_for(|| s.rtc.list_delayed(&alice).unwrap().is_empty()).await);
    assert_eq!(
        s.rtc
            .update_delayed(&id, DelayedAction::Cancel, Some(&alice))
            .await
            .unwrap_err()
            .errcode(),
        "M_NOT_FOUND"
    );
}

#[tokio::test]
async fn send_now_cancel_and_ownership() {
    let s = Services::in_memory(Config::default()).unwrap();
    let alice = user("alice");
    let bob = user("bob");
    let room = room_with(&s, &[&bob]).await;
    let id = schedule(&s, &alice, &room, 60_000, json!({"left": true}))
        .await
        .unwrap();
    // Another user cannot touch it through the authenticated endpoint.
    assert_eq!(
        s.rtc
            .update_delayed(&id, DelayedAction::Send, Some(&bob))
            .await
            .unwrap_err()
            .errcode(),
        "M_NOT_FOUND"
    );
    s.rtc
        .update_delayed(&id, DelayedAction::Send, None)
        .await
        .unwrap();
    assert_eq!(call_state(&s, &room).unwrap()["left"], true);

    let id = schedule(&s, &alice, &room, 60_000, json!({"again": 1}))
        .await
        .unwrap();
    s.rtc
        .update_delayed(&id, DelayedAction::Cancel, Some(&alice))
        .await
        .unwrap();
    assert!(s.rtc.delayed_event(&id).unwrap().is_none());
    assert!(s.rtc.list_delayed(&alice).unwrap().is_empty());
    assert!(s
        .storage()
        .trees
        .delayed_by_deadline
        .scan_prefix(&[])
        .next()
        .is_none());
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let mut config = Config::default();
    config.rtc.max_delay_ms = 1000;
    config.rtc.max_delayed_per_user = 2;
    let s = Services::in_memory(config).unwrap();
    let alice = user("alice");
    let carol = user("carol");
    let room = room_with(&s, &[]).await;
    let code = |r: Result<String>| r.unwrap_err().errcode();
    assert_eq!(
        code(schedule(&s, &alice, &room, 5000, json!({})).await),
        "M_MAX_DELAY_EXCEEDED"
    );
    assert_eq!(
        code(schedule(&s, &carol, &room, 10, json!({})).await),
        "M_FORBIDDEN"
    );
    let unknown = RoomId::parse("!nope:localhost").unwrap();
    assert_eq!(
        code(schedule(&s, &alice, &unknown, 10, json!({})).await),
        "M_NOT_FOUND"
    );
    assert_eq!(
        code(schedule(&s, &alice, &room, 10, json!([1])).await),
        "M_BAD_JSON"
    );
    assert!(s
        .storage()
        .trees
        .delayed_events
        .scan_prefix(&[])
        .next()
        .is_none());
    schedule(&s, &alice, &room, 1000, json!({})).await.unwrap();
    schedule(&s, &alice, &room, 1000, json!({})).await.unwrap();
    assert_eq!(
        code(schedule(&s, &alice, &room, 1000, json!({})).await),
        "M_LIMIT_EXCEEDED"
    );
    assert!(DelayedAction::parse("explode").is_err());
}

#[tokio::test]
async fn transaction_ids_are_idempotent() {
    let s = Services::in_memory(Config::default()).unwrap();
    let alice = user("alice");
    let room = room_with(&s, &[]).await;
    let go = || {
        s.rtc.schedule_delayed(
            &alice,
            "DEV".into(),
            &room,
            "m.room.message",
            None,
            json!({"body": "later"}),
            60_000,
            Some("txn1"),
        )
    };
    let first = go().await.unwrap();
    assert_eq!(go().await.unwrap(), first);
    assert_eq!(s.rtc.list_delayed(&alice).unwrap().len(), 1);
}

#[tokio::test]
async fn another_users_state_cancels_pending_state_but_own_does_not() {
    let s = Services::in_memory(Config::default()).unwrap();
    let alice = user("alice");
    let room = room_with(&s, &[]).await;
    let id = schedule(&s, &alice, &room, 60_000, json!({}))
        .await
        .unwrap();
    // Alice's own newer state of that key keeps her scheduled leave (Synapse's rule).
    {
        let guard = s.rooms.lock(&room).await;
        s.rooms
            .send(
                guard,
                &alice,
                NewEvent::state(CALL, KEY, json!({"application": "m.call"})),
            )
            .await
            .unwrap();
    }
    assert!(s.rtc.delayed_event(&id).unwrap().is_some());
    // Someone else overwriting that state supersedes it. Alice (power 100) writes as
    // a second account would: give bob the right first.
    let bob = user("bob");
    s.rooms
        .invite(&room, &alice, &bob, None, false, None)
        .await
        .unwrap();
    s.rooms
        .join(&room, &bob, &Default::default(), None)
        .await
        .unwrap();
    {
        let guard = s.rooms.lock(&room).await;
        s.rooms
            .send(guard, &bob, NewEvent::state(CALL, KEY, json!({})))
            .await
            .unwrap();
    }
    assert!(s.rtc.delayed_event(&id).unwrap().is_none());
    assert!(s.rtc.list_delayed(&alice).unwrap().is_empty());
}

#[tokio::test]
async fn survives_a_restart_and_fires_then() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let (room, id) = {
        let s = Services::open(config.clone()).unwrap();
        let room = room_with(&s, &[]).await;
        let id = schedule(&s, &user("alice"), &room, 200, json!({"after": "restart"}))
            .await
            .unwrap();
        (room, id)
    };
    let s = Services::reopen(config).await.unwrap();
    assert!(s.rtc.delayed_event(&id).unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        call_state(&s, &room).is_none(),
        "nothing fires before the timer starts"
    );
    s.rtc.start_delayed_events();
    assert!(wait_for(|| call_state(&s, &room).is_some_and(|c| c["after"] == "restart")).await);
    // The record is dropped just after the event is sent.
    assert!(wait_for(|| s.rtc.delayed_event(&id).unwrap().is_none()).await);
}

#[tokio::test]
async fn purge_drops_the_rooms_scheduled_events_only() {
    let s = Services::in_memory(Config::default()).unwrap();
    let alice = user("alice");
    let gone = room_with(&s, &[]).await;
    let kept = room_with(&s, &[]).await;
    let id = schedule(&s, &alice, &gone, 60_000, json!({}))
        .await
        .unwrap();
    let other = schedule(&s, &alice, &kept, 60_000, json!({}))
        .await
        .unwrap();
    s.rtc.purge_room_delayed(&gone).unwrap();
    assert_eq!(s.rtc.delayed_event(&id).unwrap(), None);
    assert!(s.rtc.delayed_event(&other).unwrap().is_some());
    let listed: Vec<String> = s
        .rtc
        .list_delayed(&alice)
        .unwrap()
        .into_iter()
        .map(|e| e.delay_id)
        .collect();
    assert_eq!(listed, vec![other]);
    let t = &s.storage().trees;
    let needle = gone.as_str().as_bytes();
    for tree in [&t.delayed_by_state, &t.delayed_events] {
        assert!(tree.scan_prefix(&[]).all(|kv| {
            let (k, v) = kv.unwrap();
            !k.windows(needle.len()).any(|w| w == needle)
                && !v.windows(needle.len()).any(|w| w == needle)
        }));
    }
}

#[tokio::test]
async fn a_claim_left_by_a_crash_is_finished_when_the_timer_starts() {
    let s = Services::in_memory(Config::default()).unwrap();
    let room = room_with(&s, &[]).await;
    let now = now_ms();
    // Claimed just now, by a process that is gone: alone on its database, the timer
    // takes the claim over at once.
    let claim = |intent| Some(Claim { intent, at: now });
    let send = alices(&room, "mylSEND", json!({"sent": 1}), now - 1_000);
    plant(&s, &send, claim(Intent::Send)).await;
    let cancel = alices(&room, "mylCANC", json!({"cancelled": 1}), now - 2_000);
    plant(&s, &cancel, claim(Intent::Cancel)).await;
    let gone = |id: &str| {
        s.storage()
            .trees
            .delayed_events
            .get(id.as_bytes())
            .unwrap()
            .is_none()
    };
    assert!(s.rtc.delayed_event(&send.delay_id).unwrap().is_none());
    s.rtc.start_delayed_events();
    assert!(wait_for(|| gone(&send.delay_id) && gone(&cancel.delay_id)).await);
    assert_eq!(call_state(&s, &room).unwrap(), send.content);
    assert_eq!(
        s.rtc.delayed.sent.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(s
        .storage()
        .trees
        .delayed_by_deadline
        .scan_prefix(&[])
        .next()
        .is_none());
}

#[tokio::test]
async fn a_restart_cut_short_does_not_fire_early() {
    let s = Services::in_memory(Config::default()).unwrap();
    let room = room_with(&s, &[]).await;
    let now = now_ms();
    // The record was swapped for the restarted one (due in a minute), but its deadline
    // entry was never moved: the old one is due now.
    let mut restarted = alices(&room, "mylREST", json!({}), now);
    restarted.delay_ms = 60_000;
    plant(&s, &restarted, None).await;
    let trees = &s.storage().trees;
    let old = deadline_key(now - 1_000, &restarted.delay_id);
    trees.delayed_by_deadline.insert(&old, b"").unwrap();
    s.rtc.start_delayed_events();
    assert!(wait_for(|| !trees.delayed_by_deadline.contains(&old).unwrap()).await);
    let entries: Vec<Vec<u8>> = trees
        .delayed_by_deadline
        .scan_prefix(&[])
        .map(|kv| kv.unwrap().0)
        .collect();
    assert_eq!(
        entries,
        vec![deadline_key(restarted.deadline(), &restarted.delay_id)]
    );
    assert_eq!(
        s.rtc.delayed_event(&restarted.delay_id).unwrap(),
        Some(restarted)
    );
    assert_eq!(
        s.rtc.delayed.sent.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// The same on PostgreSQL shared by two processes.
mod shared;
