//! Wipe history, for one user only: every event of a room up to the wipe disappears from
//! that user's reads (timelines, `/event`, `/context`, `/relations`, notifications and
//! unread counts); the room's state still applies and other members are unaffected.
//! Applied inside [`RoomsService::visible_timeline`] and
//! [`RoomsService::can_see_event`], which every read path goes through.
//!
//! Every read asks for the reader's wipe of the room, and almost nobody has one: the keys
//! of the stored wipes are kept in memory ([`Wipes`]), so a read looks in storage only
//! for a user who wiped that room.

use std::{collections::HashSet, sync::Mutex};

use ruma::{RoomId, UserId};

use super::{members::Membership, RoomsService};
use crate::{
    storage::{keys, Batch, Storage},
    Error, Result,
};

fn wipe_key(user: &UserId, room_id: &RoomId) -> Vec<u8> {
    keys::strs(&[user.as_str(), room_id.as_str()])
}

/// The keys of every stored wipe (a removed one may linger: its read then finds nothing).
pub(super) struct Wipes(Mutex<HashSet<Vec<u8>>>);

impl Wipes {
    /// Reads the keys of the stored wipes.
    pub(super) fn load(storage: &Storage) -> Result<Wipes> {
        let mut known = HashSet::new();
        for entry in storage.trees.history_wipes.scan_prefix(&[]) {
            known.insert(entry?.0);
        }
        Ok(Wipes(Mutex::new(known)))
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// Takes the keys of `other` (re-read from storage).
    pub(super) fn replace(&self, other: Wipes) {
        let known = other.0.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = known;
    }

    fn insert(&self, key: Vec<u8>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    }
}

impl RoomsService {
    /// Hides every event of the room up to now from `user` (a joined member). Returns the
    /// last hidden position. Durable on return.
    pub async fn wipe_history(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        if !self.exists(room_id)? {
            return Err(Error::not_found("No known room with that id"));
        }
        if self.membership(room_id, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let upto = self.current_pos().max(self.wiped_until(room_id, user)?);
        let key = wipe_key(user, room_id);
        let mut batch = Batch::new();
        batch.insert(&self.storage.trees.history_wipes, &key, &upto.to_be_bytes());
        // Known before it is written: a read in between finds the previous value.
        self.wipes.insert(key);
        self.storage.commit_durable(batch).await?;
        // Counts and timelines changed for this user only.
        self.notifier.notify_user(user);
        Ok(upto)
    }

    /// The last timeline position `user` wiped in the room (0: never wiped).
    pub fn wiped_until(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        let key = wipe_key(user, room_id);
        if !self.wipes.contains(&key) {
            return Ok(0);
        }
        Ok(self
            .storage
            .trees
            .history_wipes
            .get(&key)?
            .and_then(|v| keys::leading_u64(&v))
            .unwrap_or(0))
    }
}
