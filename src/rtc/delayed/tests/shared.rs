//! Delayed events on one PostgreSQL database shared by two processes (two `Services`):
//! only A, the leader, runs the timer; B serves the clients. Rooms are still served by
//! one process at a time on a shared database, so A creates the room, and the tests count
//! sends per process (the `sent` counter) besides the events stored.

use std::sync::atomic::Ordering;

use super::*;
use crate::{
    events::keys::ServerKeys,
    rtc::delayed::claim::{Claim, Intent, CLAIM_TIMEOUT_MS},
    storage::{postgres_engine::test_database, Storage},
};

/// Processes A (the leader, its timer started) and B on a new shared database.
fn processes() -> (Arc<Services>, Arc<Services>) {
    let url = test_database();
    let open = || {
        let storage = Storage::open_postgres_shared(&url, 4).unwrap();
        Services::build(Config::default(), storage, ServerKeys::generate().unwrap()).unwrap()
    };
    let (a, b) = (open(), open());
    // A leads (its background work, the delayed-event timer among it, runs as in `myelin
    // serve`); B publishes and runs its own pipeline stages but never asks for the lead.
    a.start_background();
    b.rooms.start_publication();
    b.pipeline.start();
    (a, b)
}

/// Events the process sent from its scheduled ones.
fn sent(s: &Services) -> usize {
    s.rtc.delayed.sent.load(Ordering::SeqCst)
}

/// Both processes' sends.
fn sent_by_both(a: &Services, b: &Services) -> usize {
    sent(a) + sent(b)
}

/// Call-member events in `room` with this content, as stored.
fn stored_events(s: &Services, room: &RoomId, content: &Value) -> usize {
    s.storage()
        .trees
        .pdus
        .scan_prefix(&[])
        .filter(|kv| {
            let stored: Value = serde_json::from_slice(&kv.as_ref().unwrap().1).unwrap();
            let pdu = &stored["pdu"];
            pdu["room_id"] == room.as_str() && pdu["type"] == CALL && pdu["content"] == *content
        })
        .count()
}

/// Whether the event's record is gone (claimed or not) and neither process is sending
/// anything: nothing more can be sent.
fn settled(a: &Services, b: &Services, id: &str) -> bool {
    a.storage()
        .trees
        .delayed_events
        .get(id.as_bytes())
        .unwrap()
        .is_none()
        && a.rtc.inflight().is_empty()
        && b.rtc.inflight().is_empty()
}

/// Sleeps until the wall clock reads `ms`.
async fn until(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_on_one_process_fires_once_on_the_leader() {
    let (a, b) = processes();
    let alice = user("alice");
    let room = room_with(&a, &[]).await;
    let content = json!({"from": "b"});
    let id = schedule(&b, &alice, &room, 300, content.clone())
        .await
        .unwrap();
    assert!(
        !b.rtc.delayed.started.is_completed(),
        "scheduling on a shared database starts no timer"
    );
    // A's timer slept with nothing scheduled: B's change must wake it.
    assert!(wait_for(|| call_state(&a, &room).is_some_and(|c| c == content)).await);
    assert!(wait_for(|| settled(&a, &b, &id)).await);
    assert_eq!((sent(&a), sent(&b)), (1, 0));
    assert_eq!(stored_events(&a, &room, &content), 1);
    assert!(b.rtc.list_delayed(&alice).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clients_action_at_the_deadline_races_the_leaders_timer_once() {
    let (a, b) = processes();
    let alice = user("alice");
    let room = room_with(&a, &[]).await;
    let actions = [
        DelayedAction::Send,
        DelayedAction::Cancel,
        DelayedAction::Restart,
    ];
    for i in 0..15u64 {
        let action = actions[(i % 3) as usize];
        let content = json!({"n": i});
        let id = schedule(&b, &alice, &room, 200, content.clone())
            .await
            .unwrap();
        let deadline = b.rtc.delayed_event(&id).unwrap().unwrap().deadline();
        let before = sent_by_both(&a, &b);
        // At the deadline, or a little after: while A's timer claims or sends it.
        until(deadline + (i / 3) * 2).await;
        let acted = b.rtc.update_delayed(&id, action, None).await;
        let won = match &acted {
            Ok(()) => true,
            Err(e) if e.errcode() == "M_NOT_FOUND" => false,
            Err(e) => panic!("{action:?}: {e}"),
        };
        let expected = match action {
            // Whoever sends it, it is sent once.
            DelayedAction::Send => 1,
            // Cancelled or sent, never both.
            DelayedAction::Cancel => usize::from(!won),
            DelayedAction::Restart if won => {
                // Restarted: still pending, so it can be cancelled, and nothing was sent.
                b.rtc
                    .update_delayed(&id, DelayedAction::Cancel, None)
                    .await
                    .unwrap();
                0
            }
            DelayedAction::Restart => 1,
        };
        assert!(wait_for(|| settled(&a, &b, &id)).await, "{i}: {action:?}");
        assert_eq!(
            sent_by_both(&a, &b) - before,
            expected,
            "{i}: {action:?} answered {acted:?}"
        );
        assert_eq!(stored_events(&a, &room, &content), expected, "{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_on_one_process_never_fires_on_the_leader() {
    let (a, b) = processes();
    let alice = user("alice");
    let room = room_with(&a, &[]).await;
    let cancelled = json!({"cancelled": true});
    let id = schedule(&b, &alice, &room, 300, cancelled.clone())
        .await
        .unwrap();
    b.rtc
        .update_delayed(&id, DelayedAction::Cancel, Some(&alice))
        .await
        .unwrap();
    // A later event fires after the cancelled one's deadline: had A kept that one, it
    // would have fired first.
    let later = json!({"later": true});
    let sentinel = schedule(&b, &alice, &room, 400, later.clone())
        .await
        .unwrap();
    assert!(wait_for(|| settled(&a, &b, &sentinel)).await);
    assert!(settled(&a, &b, &id));
    assert_eq!((sent(&a), sent(&b)), (1, 0));
    assert_eq!(call_state(&a, &room).unwrap(), later);
    assert_eq!(stored_events(&a, &room, &cancelled), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_takes_over_a_dead_claim_but_not_a_live_one() {
    let (a, b) = processes();
    let room = room_with(&a, &[]).await;
    let now = now_ms();
    // B claimed both to send them, then one of its claims grew stale: B died before
    // sending. The other claim is fresh: B is sending that one now.
    let dead = alices(&room, "mylDEAD", json!({"dead": 1}), now - 1_000);
    let claim = |at| {
        Some(Claim {
            intent: Intent::Send,
            at,
        })
    };
    plant(&b, &dead, claim(now - CLAIM_TIMEOUT_MS - 1)).await;
    let live = alices(&room, "mylLIVE", json!({"live": 1}), now - 1_000);
    plant(&b, &live, claim(now_ms())).await;
    assert!(wait_for(|| settled(&a, &b, &dead.delay_id)).await);
    assert_eq!(stored_events(&a, &room, &dead.content), 1);
    // A cancel claim left behind is finished, not sent.
    let cancelled = alices(&room, "mylCANC", json!({"cancelled": 1}), now - 1_000);
    plant(
        &b,
        &cancelled,
        Some(Claim {
            intent: Intent::Cancel,
            at: now,
        }),
    )
    .await;
    assert!(wait_for(|| settled(&a, &b, &cancelled.delay_id)).await);
    // By then A has met the live claim too (its deadline is as old): it left it alone.
    let sentinel = schedule(&b, &user("alice"), &room, 100, json!({"after": 1}))
        .await
        .unwrap();
    assert!(wait_for(|| settled(&a, &b, &sentinel)).await);
    assert_eq!(sent(&a), 2);
    assert_eq!(stored_events(&a, &room, &live.content), 0);
    assert_eq!(stored_events(&a, &room, &cancelled.content), 0);
    let record = a.rtc.stored(&live.delay_id).unwrap().unwrap().record;
    assert_eq!(record.claim.map(|c| c.intent), Some(Intent::Send));
    // Not to be read or acted on while claimed.
    assert!(a.rtc.delayed_event(&live.delay_id).unwrap().is_none());
    assert_eq!(
        b.rtc
            .update_delayed(&live.delay_id, DelayedAction::Cancel, None)
            .await
            .unwrap_err()
            .errcode(),
        "M_NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_delegation_through_the_other_process_ends_the_older_watch() {
    use crate::rtc::delegation::DelegationRequest;
    let (a, b) = processes();
    let alice = user("alice");
    let room = room_with(&a, &[]).await;
    let delegate = |s: &Arc<Services>, delay_id: &str| {
        let url = s.rtc.sfu_url(&room, "m.call#ROOM").to_owned();
        s.rtc.delegate_delayed_leave(
            &alice,
            "DEV",
            DelegationRequest {
                url: &url,
                room_id: &room,
                slot_id: "m.call#ROOM",
                member_id: "member",
                delay_id,
            },
        )
    };
    // Long delays: the SFU is not running, so the watches wait for the participant.
    let first = schedule(&a, &alice, &room, 60_000, json!({}))
        .await
        .unwrap();
    delegate(&a, &first).unwrap();
    assert_eq!(a.rtc.delegations().len(), 1);
    let second = schedule(&b, &alice, &room, 60_000, json!({}))
        .await
        .unwrap();
    delegate(&b, &second).unwrap();
    assert_eq!(b.rtc.delegations().len(), 1);
    assert!(
        wait_for(|| a.rtc.delegations().is_empty()).await,
        "A stops watching the replaced delegation"
    );
    assert_eq!(b.rtc.delegations().len(), 1, "B's goes on");
    // The leader's sweep keeps the current delegation while its delayed event lives.
    assert_eq!(a.rtc.sweep_delegations().unwrap(), 0);
    b.rtc
        .update_delayed(&second, DelayedAction::Cancel, None)
        .await
        .unwrap();
    assert!(wait_for(|| b.rtc.delegations().is_empty()).await);
    assert_eq!(
        a.storage().trees.rtc_delegations.scan_prefix(&[]).count(),
        0,
        "an ended watch forgets its delegation"
    );
}
