//! Thread subscriptions (MSC4306) and the feed of their changes that sliding sync and the
//! companion endpoint serve (MSC4308).
//!
//! Each `(user, room, thread root)` has one record: subscribed manually, automatically, or
//! unsubscribed (kept to refuse a late automatic subscription whose cause the user had
//! already seen when unsubscribing). Every change takes a user-data stream position, its
//! `bump_stamp`; `thread_subscription_log` indexes the latest change of each thread by
//! that position, so a sync reads only what changed since its token.

use std::collections::BTreeMap;

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::UsersService;
use crate::{
    storage::keys::{self, KeyBuilder},
    Error, Result,
};

/// The unstable error code of an automatic subscription the user's unsubscription beats.
pub const CONFLICTING_UNSUBSCRIPTION: &str = "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION";

/// Where a thread subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Manual,
    Automatic,
    Unsubscribed,
}

/// The stored record of one thread for one user.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    state: State,
    /// User-data stream position of the last change clients were told about (0: none).
    pos: u64,
    /// Timeline position when the user last unsubscribed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsubscribed_at: Option<u64>,
}

/// The log entry of a change: which thread.
#[derive(Serialize, Deserialize)]
struct Logged {
    room: OwnedRoomId,
    root: OwnedEventId,
}

/// How a subscription is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// By the user's choice: always subscribes, and outranks an automatic subscription.
    Manual,
    /// By a client on the user's behalf, because of the event at timeline position
    /// `cause_pos` (a mention in the thread).
    Automatic {
        /// The cause event's timeline position.
        cause_pos: u64,
    },
}

/// One change in the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadChange {
    /// The room.
    pub room: OwnedRoomId,
    /// The thread root.
    pub root: OwnedEventId,
    /// `Some(automatic)` for a subscription, `None` for an unsubscription.
    pub subscribed: Option<bool>,
    /// The change's stream position.
    pub bump_stamp: u64,
}

/// Changes in a position range, newest first, and where older ones continue.
#[derive(Debug, Default)]
pub struct ThreadChanges {
    /// The changes, newest first.
    pub changes: Vec<ThreadChange>,
    /// When the limit cut the list: the position at and below which older changes remain.
    pub older_from: Option<u64>,
}

/// Page size of the feed when the client names none, and the most it gets.
pub const DEFAULT_FEED_LIMIT: usize = 100;

impl ThreadChanges {
    /// The changes as the feed and the sliding-sync extension carry them:
    /// `{subscribed: {room: {root: {automatic, bump_stamp}}}, unsubscribed: {room: {root:
    /// {bump_stamp}}}}` (empty maps left out).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut subscribed: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let mut unsubscribed: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for c in &self.changes {
            let (map, value) = match c.subscribed {
                Some(automatic) => (
                    &mut subscribed,
                    json!({ "automatic": automatic, "bump_stamp": c.bump_stamp }),
                ),
                None => (&mut unsubscribed, json!({ "bump_stamp": c.bump_stamp })),
            };
            map.entry(c.room.to_string())
                .or_default()
                .insert(c.root.to_string(), value);
        }
        let mut out = Map::new();
        if !subscribed.is_empty() {
            out.insert("subscribed".into(), json!(subscribed));
        }
        if !unsubscribed.is_empty() {
            out.insert("unsubscribed".into(), json!(unsubscribed));
        }
        out
    }
}

fn record_key(user: &UserId, room: &RoomId, root: &EventId) -> Vec<u8> {
    keys::strs(&[user.as_str(), room.as_str(), root.as_str()])
}

fn log_key(user: &UserId, pos: u64) -> Vec<u8> {
    KeyBuilder::new().str(user.as_str()).u64(pos).build()
}

/// What a write does to a record.
enum Change {
    /// A new state clients are told about (with the unsubscription point to keep).
    Told(State, Option<u64>),
    /// The record changes without news for clients.
    Quiet(Stored),
}

/// What a request changes, decided from the current record.
enum Outcome {
    /// Nothing to store.
    Same,
    /// Store this state as a new change.
    Change(State),
}

fn decide(current: Option<&Stored>, wanted: Subscription) -> Result<Outcome> {
    let state = current.map(|s| s.state);
    match (wanted, state) {
        (Subscription::Manual, Some(State::Manual)) => Ok(Outcome::Same),
        (Subscription::Manual, _) => Ok(Outcome::Change(State::Manual)),
        // Manual outranks automatic; an automatic one stays as it is.
        (Subscription::Automatic { .. }, Some(State::Manual | State::Automatic)) => {
            Ok(Outcome::Same)
        }
        (Subscription::Automatic { cause_pos }, _) => {
            match current.and_then(|s| s.unsubscribed_at) {
                // The user had seen the cause when they unsubscribed: their choice stands.
                Some(at) if cause_pos <= at => Err(Error::matrix(
                    crate::ErrorKind::Conflict,
                    CONFLICTING_UNSUBSCRIPTION,
                    "The user unsubscribed from this thread after its cause event",
                )),
                _ => Ok(Outcome::Change(State::Automatic)),
            }
        }
    }
}

impl UsersService {
    /// The user's subscription to a thread: `Some(automatic)`, or `None` when unsubscribed.
    pub fn thread_subscription(
        &self,
        user: &UserId,
        room: &RoomId,
        root: &EventId,
    ) -> Result<Option<bool>> {
        let stored: Option<Stored> = self
            .storage
            .trees
            .thread_subscriptions
            .get_json(&record_key(user, room, root))?;
        Ok(match stored.map(|s| s.state) {
            Some(State::Manual) => Some(false),
            Some(State::Automatic) => Some(true),
            Some(State::Unsubscribed) | None => None,
        })
    }

    /// Subscribes the user to a thread (the caller checked the thread is theirs to see).
    /// An automatic subscription whose cause the user had seen when they last unsubscribed
    /// is refused with 409 `IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION`.
    pub fn subscribe_thread(
        &self,
        user: &UserId,
        room: &RoomId,
        root: &EventId,
        wanted: Subscription,
    ) -> Result<()> {
        let key = record_key(user, room, root);
        let tree = &self.storage.trees.thread_subscriptions;
        // Decided without the stream lock first, so a request that changes nothing (the
        // common repeated automatic subscription) takes no stream position.
        if matches!(
            decide(tree.get_json::<Stored>(&key)?.as_ref(), wanted)?,
            Outcome::Same
        ) {
            return Ok(());
        }
        self.store_thread_change(user, room, root, |current| {
            decide(current, wanted).map(|outcome| match outcome {
                Outcome::Same => None,
                Outcome::Change(state) => {
                    Some(Change::Told(state, current.and_then(|s| s.unsubscribed_at)))
                }
            })
        })
    }

    /// Unsubscribes the user from a thread (idempotent), remembering the timeline position
    /// `timeline_pos` they had reached, so automatic subscriptions caused by events up to
    /// there are refused.
    pub fn unsubscribe_thread(
        &self,
        user: &UserId,
        room: &RoomId,
        root: &EventId,
        timeline_pos: u64,
    ) -> Result<()> {
        self.store_thread_change(user, room, root, |current| {
            Ok(match current.map(|s| s.state) {
                Some(State::Manual | State::Automatic) => {
                    Some(Change::Told(State::Unsubscribed, Some(timeline_pos)))
                }
                // Never subscribed, or already unsubscribed: nothing to tell clients;
                // only the point the user has seen moves on.
                _ => Some(Change::Quiet(Stored {
                    state: State::Unsubscribed,
                    pos: current.map_or(0, |s| s.pos),
                    unsubscribed_at: Some(timeline_pos),
                })),
            })
        })
    }

    /// Stores a change under the stream lock (re-deciding there, against concurrent
    /// requests from the user's other devices): a change clients are told about takes the
    /// next user-data position and wakes the user's syncs.
    fn store_thread_change(
        &self,
        user: &UserId,
        room: &RoomId,
        root: &EventId,
        change: impl FnOnce(Option<&Stored>) -> Result<Option<Change>>,
    ) -> Result<()> {
        let trees = &self.storage.trees;
        let key = record_key(user, room, root);
        let mut told = false;
        self.commit_with_pos_then(
            |pos, batch| {
                let current: Option<Stored> = trees.thread_subscriptions.get_json(&key)?;
                match change(current.as_ref())? {
                    None => {}
                    Some(Change::Quiet(record)) => {
                        batch.insert_json(&trees.thread_subscriptions, &key, &record)?;
                    }
                    Some(Change::Told(state, unsubscribed_at)) => {
                        if let Some(old) = current.as_ref().filter(|s| s.pos > 0) {
                            batch.remove(&trees.thread_subscription_log, &log_key(user, old.pos));
                        }
                        batch.insert_json(
                            &trees.thread_subscriptions,
                            &key,
                            &Stored {
                                state,
                                pos,
                                unsubscribed_at,
                            },
                        )?;
                        batch.insert_json(
                            &trees.thread_subscription_log,
                            &log_key(user, pos),
                            &Logged {
                                room: room.to_owned(),
                                root: root.to_owned(),
                            },
                        )?;
                        told = true;
                    }
                }
                Ok(())
            },
            |_| {},
        )?;
        if told {
            self.changed(user);
        }
        Ok(())
    }

    /// The user's thread-subscription changes with a position in `(after, upto]`, newest
    /// first, at most `limit` (each thread once, with its latest state).
    pub fn thread_subscription_changes(
        &self,
        user: &UserId,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ThreadChanges> {
        let trees = &self.storage.trees;
        let mut out = ThreadChanges::default();
        if upto <= after || limit == 0 {
            return Ok(out);
        }
        let from = log_key(user, after.saturating_add(1));
        let to = log_key(user, upto.saturating_add(1));
        for entry in trees.thread_subscription_log.range(&from, &to, true) {
            let (key, value) = entry?;
            let Some(pos) = key
                .len()
                .checked_sub(8)
                .and_then(|at| key[at..].try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            if out.changes.len() >= limit {
                out.older_from = Some(pos);
                break;
            }
            let logged: Logged = serde_json::from_slice(&value)?;
            let stored: Option<Stored> = trees.thread_subscriptions.get_json(&record_key(
                user,
                &logged.room,
                &logged.root,
            ))?;
            // A log entry is removed when its thread changes again; one left behind by an
            // interrupted write names a record that has moved on.
            let Some(stored) = stored.filter(|s| s.pos == pos) else {
                continue;
            };
            out.changes.push(ThreadChange {
                room: logged.room,
                root: logged.root,
                subscribed: match stored.state {
                    State::Manual => Some(false),
                    State::Automatic => Some(true),
                    State::Unsubscribed => None,
                },
                bump_stamp: pos,
            });
        }
        Ok(out)
    }
}

impl UsersService {
    /// Drops the thread subscriptions `users` hold in a purged room (and their feed
    /// entries). Idempotent.
    pub fn purge_room_thread_subscriptions(
        &self,
        room: &RoomId,
        users: &[ruma::OwnedUserId],
    ) -> Result<()> {
        let trees = &self.storage.trees;
        for user in users {
            let mut batch = crate::storage::Batch::new();
            let prefix = keys::strs(&[user.as_str(), room.as_str()]);
            for kv in trees.thread_subscriptions.scan_prefix(&prefix) {
                let (k, v) = kv?;
                if let Ok(stored) = serde_json::from_slice::<Stored>(&v) {
                    if stored.pos > 0 {
                        batch.remove(&trees.thread_subscription_log, &log_key(user, stored.pos));
                    }
                }
                batch.remove(&trees.thread_subscriptions, &k);
            }
            self.storage.commit(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, room_id, user_id};

    use super::*;
    use crate::users::test_support::service;

    #[test]
    fn manual_automatic_and_unsubscribed_follow_the_rules() {
        let users = service();
        let (alice, room, root) = (user_id!("@alice:x"), room_id!("!r:x"), event_id!("$root"));
        assert_eq!(users.thread_subscription(alice, room, root).unwrap(), None);

        users
            .subscribe_thread(alice, room, root, Subscription::Automatic { cause_pos: 5 })
            .unwrap();
        assert_eq!(
            users.thread_subscription(alice, room, root).unwrap(),
            Some(true)
        );
        // Manual outranks automatic; a later automatic one does not downgrade it.
        users
            .subscribe_thread(alice, room, root, Subscription::Manual)
            .unwrap();
        assert_eq!(
            users.thread_subscription(alice, room, root).unwrap(),
            Some(false)
        );
        let before = users.current_userdata_pos();
        users
            .subscribe_thread(alice, room, root, Subscription::Automatic { cause_pos: 9 })
            .unwrap();
        assert_eq!(
            users.thread_subscription(alice, room, root).unwrap(),
            Some(false)
        );
        assert_eq!(
            users.current_userdata_pos(),
            before,
            "no change, no position"
        );

        // Unsubscribed at timeline position 10: an automatic subscription caused by an
        // event up to there is refused, a later cause subscribes again.
        users.unsubscribe_thread(alice, room, root, 10).unwrap();
        assert_eq!(users.thread_subscription(alice, room, root).unwrap(), None);
        let err = users
            .subscribe_thread(alice, room, root, Subscription::Automatic { cause_pos: 10 })
            .unwrap_err();
        assert_eq!(err.errcode(), CONFLICTING_UNSUBSCRIPTION);
        assert_eq!(users.thread_subscription(alice, room, root).unwrap(), None);
        users
            .subscribe_thread(alice, room, root, Subscription::Automatic { cause_pos: 11 })
            .unwrap();
        assert_eq!(
            users.thread_subscription(alice, room, root).unwrap(),
            Some(true)
        );
        // Unsubscribing twice is fine.
        users.unsubscribe_thread(alice, room, root, 12).unwrap();
        users.unsubscribe_thread(alice, room, root, 13).unwrap();
        assert!(users
            .subscribe_thread(alice, room, root, Subscription::Automatic { cause_pos: 13 })
            .is_err());
        // A manual subscription always goes through.
        users
            .subscribe_thread(alice, room, root, Subscription::Manual)
            .unwrap();
        assert_eq!(
            users.thread_subscription(alice, room, root).unwrap(),
            Some(false)
        );
    }

    #[test]
    fn the_feed_lists_each_thread_once_newest_first_with_a_continuation() {
        let users = service();
        let alice = user_id!("@alice:x");
        let bob = user_id!("@bob:x");
        let room = room_id!("!r:x");
        let start = users.current_userdata_pos();
        let roots = [event_id!("$a"), event_id!("$b"), event_id!("$c")];
        for root in roots {
            users
                .subscribe_thread(alice, room, root, Subscription::Manual)
                .unwrap();
        }
        users
            .subscribe_thread(bob, room, roots[0], Subscription::Manual)
            .unwrap();
        // $a changes again: it moves to the front and is listed once.
        users.unsubscribe_thread(alice, room, roots[0], 3).unwrap();
        let now = users.current_userdata_pos();

        let all = users
            .thread_subscription_changes(alice, start, now, 100)
            .unwrap();
        let listed: Vec<(&str, Option<bool>)> = all
            .changes
            .iter()
            .map(|c| (c.root.as_str(), c.subscribed))
            .collect();
        assert_eq!(
            listed,
            [("$a", None), ("$c", Some(false)), ("$b", Some(false))]
        );
        assert!(all
            .changes
            .windows(2)
            .all(|w| w[0].bump_stamp > w[1].bump_stamp));
        assert_eq!(all.older_from, None);

        // Two at a time: the rest continues from `older_from`.
        let first = users
            .thread_subscription_changes(alice, start, now, 2)
            .unwrap();
        assert_eq!(first.changes.len(), 2);
        let older = first.older_from.expect("more below");
        let rest = users
            .thread_subscription_changes(alice, start, older, 2)
            .unwrap();
        assert_eq!(rest.changes.len(), 1);
        assert_eq!(rest.changes[0].root, "$b");
        assert_eq!(rest.older_from, None);

        // Nothing after `now`; bob's feed is his own.
        assert!(users
            .thread_subscription_changes(alice, now, now, 10)
            .unwrap()
            .changes
            .is_empty());
        let bobs = users
            .thread_subscription_changes(bob, start, now, 10)
            .unwrap();
        assert_eq!(bobs.changes.len(), 1);

        // A purged room takes its subscriptions and their feed entries along.
        users
            .purge_room_thread_subscriptions(room, &[alice.to_owned(), bob.to_owned()])
            .unwrap();
        assert_eq!(
            users.thread_subscription(alice, room, roots[1]).unwrap(),
            None
        );
        assert!(users
            .thread_subscription_changes(alice, start, now, 100)
            .unwrap()
            .changes
            .is_empty());
    }
}
