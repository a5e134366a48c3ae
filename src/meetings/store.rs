//! The meetings trees, the only place naming them and building their keys:
//!
//! - `join_links`: `token` → JSON [`LinkRecord`]; `room_join_links`: `room_id` → `token`
//!   (a token is live only while both agree, so a revoked token answers 404 whatever is
//!   left behind);
//! - `temporary_participants`: `room_id, user_id` → JSON [`TemporaryRecord`];
//!   `temporary_by_user`: `user_id, room_id` → `""` (the same set, by user);
//! - `personal_rooms`: `user_id` → `room_id`.
//!
//! A room's purge drops its entries ([`MeetingsStore::purge_room`]).

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    storage::{keys, Batch, Storage},
    Result,
};

/// What a join link token points at.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The moderator who made the link (or the room's creator for a new virtual room).
    pub created_by: OwnedUserId,
    /// When, ms since the epoch.
    pub created_ts: u64,
}

/// A temporary participant being watched.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemporaryRecord {
    /// Start of the current period: the join, or when a call membership was first seen.
    pub since_ms: u64,
    /// Whether a call membership of the participant has been seen since the join.
    pub in_call: bool,
    /// Whether the participant is a guest account (deactivated with no room left).
    pub guest: bool,
}

/// Typed access to the meetings trees.
pub struct MeetingsStore {
    storage: Arc<Storage>,
}

impl MeetingsStore {
    /// The store over `storage`.
    pub fn new(storage: Arc<Storage>) -> MeetingsStore {
        MeetingsStore { storage }
    }

    /// The current token of the room's join link.
    pub fn room_token(&self, room_id: &RoomId) -> Result<Option<String>> {
        Ok(self
            .storage
            .trees
            .room_join_links
            .get(room_id.as_bytes())?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    /// The room a live token points at.
    pub fn link(&self, token: &str) -> Result<Option<LinkRecord>> {
        let Some(record) = self
            .storage
            .trees
            .join_links
            .get_json::<LinkRecord>(token.as_bytes())?
        else {
            return Ok(None);
        };
        let current = self.room_token(&record.room_id)?;
        Ok((current.as_deref() == Some(token)).then_some(record))
    }

    /// Installs `token` as the room's link unless it has one; returns the room's token
    /// (ours or the one already there). Not yet durable.
    pub fn install_link(&self, token: &str, record: &LinkRecord) -> Result<String> {
        let trees = &self.storage.trees;
        trees
            .join_links
            .insert(token.as_bytes(), &serde_json::to_vec(record)?)?;
        if trees.room_join_links.compare_and_swap(
            record.room_id.as_bytes(),
            None,
            Some(token.as_bytes().to_vec()),
        )? {
            return Ok(token.to_owned());
        }
        trees.join_links.remove(token.as_bytes())?;
        Ok(self.room_token(&record.room_id)?.unwrap_or_default())
    }

    /// Removes the room's link; its token then resolves to nothing. Not yet durable.
    pub fn remove_link(&self, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::new();
        if let Some(token) = self.room_token(room_id)? {
            batch.remove(&self.storage.trees.join_links, token.as_bytes());
        }
        batch.remove(&self.storage.trees.room_join_links, room_id.as_bytes());
        self.storage.commit(batch)
    }

    /// The record of a temporary participant.
    pub fn temporary(&self, room_id: &RoomId, user: &UserId) -> Result<Option<TemporaryRecord>> {
        self.storage
            .trees
            .temporary_participants
            .get_json(&keys::strs(&[room_id.as_str(), user.as_str()]))
    }

    /// Whether `user` is a temporary participant of `room_id` (one read).
    pub fn is_temporary(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        self.storage
            .trees
            .temporary_by_user
            .contains(&keys::strs(&[user.as_str(), room_id.as_str()]))
    }

    /// Records (or updates) a temporary participant.
    pub fn put_temporary(
        &self,
        room_id: &RoomId,
        user: &UserId,
        record: &TemporaryRecord,
    ) -> Result<()> {
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.temporary_participants,
            &keys::strs(&[room_id.as_str(), user.as_str()]),
            record,
        )?;
        batch.insert(
            &self.storage.trees.temporary_by_user,
            &keys::strs(&[user.as_str(), room_id.as_str()]),
            b"",
        );
        self.storage.commit(batch)
    }

    /// Forgets a temporary participant.
    pub fn remove_temporary(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        batch.remove(
            &self.storage.trees.temporary_participants,
            &keys::strs(&[room_id.as_str(), user.as_str()]),
        );
        batch.remove(
            &self.storage.trees.temporary_by_user,
            &keys::strs(&[user.as_str(), room_id.as_str()]),
        );
        self.storage.commit(batch)
    }

    /// Every temporary participant: `(room, user, record)`.
    pub fn all_temporary(&self) -> Result<Vec<(OwnedRoomId, OwnedUserId, TemporaryRecord)>> {
        let mut out = Vec::new();
        for entry in self.storage.trees.temporary_participants.scan_prefix(&[]) {
            let (key, value) = entry?;
            let parts = keys::split_strs(&key);
            let (Some(room), Some(user)) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let (Ok(room), Ok(user)) = (RoomId::parse(*room), UserId::parse(*user)) else {
                continue;
            };
            out.push((room, user, serde_json::from_slice(&value)?));
        }
        Ok(out)
    }

    /// The rooms `user` is a temporary participant of.
    pub fn temporary_rooms_of(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        let mut out = Vec::new();
        let prefix = keys::strs(&[user.as_str()]);
        for entry in self.storage.trees.temporary_by_user.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if let Some(room) = keys::split_strs(&key).get(1) {
                if let Ok(room) = RoomId::parse(*room) {
                    out.push(room);
                }
            }
        }
        Ok(out)
    }

    /// The user's personal meeting room.
    pub fn personal_room(&self, user: &UserId) -> Result<Option<OwnedRoomId>> {
        Ok(self
            .storage
            .trees
            .personal_rooms
            .get(user.as_bytes())?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| RoomId::parse(s).ok()))
    }

    /// Records the user's personal meeting room.
    pub fn set_personal_room(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        self.storage
            .trees
            .personal_rooms
            .insert(user.as_bytes(), room_id.as_bytes())
    }

    /// Drops every meetings entry of a purged room: its join link, its temporary
    /// participants, and the personal-room record pointing at it. Not yet durable.
    pub fn purge_room(&self, room_id: &RoomId) -> Result<()> {
        let trees = &self.storage.trees;
        let mut batch = Batch::new();
        if let Some(token) = self.room_token(room_id)? {
            batch.remove(&trees.join_links, token.as_bytes());
        }
        batch.remove(&trees.room_join_links, room_id.as_bytes());
        for entry in trees
            .temporary_participants
            .scan_prefix(&keys::strs(&[room_id.as_str()]))
        {
            let (key, _) = entry?;
            if let Some(user) = keys::split_strs(&key).get(1) {
                batch.remove(
                    &trees.temporary_by_user,
                    &keys::strs(&[user, room_id.as_str()]),
                );
            }
            batch.remove(&trees.temporary_participants, &key);
        }
        for entry in trees.personal_rooms.scan_prefix(&[]) {
            let (user, room) = entry?;
            if room == room_id.as_bytes() {
                batch.remove(&trees.personal_rooms, &user);
            }
        }
        self.storage.commit(batch)
    }

    /// Waits until every write so far is durable.
    pub async fn durable(&self) -> Result<()> {
        self.storage.durable().await
    }
}
