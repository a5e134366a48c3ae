//! What other processes sharing the database change in the push service's memory (see
//! [`crate::storage::remote`]): users' rules (their `m.push_rules` account data), unread
//! counts (the rooms' notification records), who has pushers, and members' names.

use std::sync::{Arc, Mutex};

use ruma::{OwnedUserId, RoomId, UserId};

use super::{counts::UnreadCache, evaluate::NameCache, pushers::WithPushers, rules};
use crate::storage::{keys, Changed, Storage};

/// The in-memory state the handlers keep up to date.
pub(super) struct Watched<'a> {
    /// Users' own rules.
    pub rules: &'a Arc<Mutex<rules::RulesCache>>,
    /// Unread counts per room and user.
    pub unread: &'a Arc<Mutex<UnreadCache>>,
    /// Users who have a pusher.
    pub with_pushers: &'a Arc<Mutex<WithPushers>>,
    /// Members' names per room.
    pub names: &'a Arc<Mutex<NameCache>>,
}

/// Registers the handlers of the trees the push service caches (before anything they
/// maintain is read). Only for a shared database.
pub(super) fn watch(storage: &Storage, watched: Watched<'_>) {
    let trees = &storage.trees;

    let cache = Arc::downgrade(watched.rules);
    storage.on_remote_change(&trees.account_data, move |changed| {
        let Some(cache) = cache.upgrade() else { return };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        match changed {
            Changed::Keys(keys) => {
                let users: Vec<&UserId> =
                    keys.iter().filter_map(|k| rules::rules_owner(k)).collect();
                if !users.is_empty() {
                    cache.changed_elsewhere(Some(&users));
                }
            }
            Changed::All => cache.changed_elsewhere(None),
        }
    });

    // A new notification record: the counts of the room are counted again (the records
    // name their users in the value, which handlers do not read).
    let cache = Arc::downgrade(watched.unread);
    storage.on_remote_change(&trees.event_push, move |changed| {
        let Some(cache) = cache.upgrade() else { return };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        match changed {
            Changed::Keys(keys) => {
                for room in keys.iter().filter_map(|k| record_room(k)) {
                    cache.remove(room);
                }
            }
            Changed::All => cache.clear(),
        }
    });

    let cache = Arc::downgrade(watched.with_pushers);
    storage.on_remote_change(&trees.pushers, move |changed| {
        let Some(cache) = cache.upgrade() else { return };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        match changed {
            // A removal keeps its user listed: an extra user costs one lookup.
            Changed::Keys(keys) => cache.users.extend(keys.iter().filter_map(|k| {
                keys::split_strs(k)
                    .first()
                    .and_then(|u| OwnedUserId::try_from(*u).ok())
            })),
            Changed::All => cache.stale = true,
        }
    });

    let cache = Arc::downgrade(watched.names);
    storage.on_remote_change(&trees.room_state, move |changed| {
        let Some(cache) = cache.upgrade() else { return };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        match changed {
            Changed::Keys(keys) => {
                for key in keys.iter() {
                    let parts = keys::split_strs(key);
                    let [room, "m.room.member", user] = parts.as_slice() else {
                        continue;
                    };
                    if let (Ok(room), Ok(user)) =
                        (<&RoomId>::try_from(*room), <&UserId>::try_from(*user))
                    {
                        cache.changed_elsewhere(Some((room, user)));
                    }
                }
            }
            Changed::All => cache.changed_elsewhere(None),
        }
    });
}

/// The room of a notification record's key (`room, pos`).
fn record_room(key: &[u8]) -> Option<&RoomId> {
    let room = key.get(..key.len().checked_sub(9)?)?;
    if key.get(room.len()) != Some(&keys::SEP) {
        return None;
    }
    <&RoomId>::try_from(std::str::from_utf8(room).ok()?).ok()
}
