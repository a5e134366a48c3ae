//! Purging rooms: a dissolved group, a deleted virtual room or group, a room an
//! administrator deletes. The room's data is spread over the domains that own their key
//! layouts; a purge asks each one to drop its part, in turn:
//!
//! 1. `rooms` (`src/rooms/purge.rs`): the room record, aliases and directory entry first
//!    (the room answers 404 from then on), then transactions and reports, the events
//!    with their stream and timeline entries, state, receipts, caches;
//! 2. `push` (`src/push/purge.rs`): notification records and cached unread counts;
//! 3. `users`: room account data;
//! 4. `rtc`: scheduled delayed events;
//! 5. `meetings`: the join link, temporary participants and personal-room record.
//!
//! **Crash safety.** Before the first deletion a marker `purging/<room_id>` in the `meta`
//! tree records the room and the users whose per-user records may mention it (read from
//! the membership history, which the purge deletes); it is durable before anything is
//! removed and removed, durably, after the last domain. At start
//! ([`PurgeService::resume`]) every marked room is purged again; each domain's purge is
//! idempotent and deletes in batches that keep its indexes consistent.
//!
//! Before a purge the members are taken out of the room with ordinary leave events
//! ([`crate::rooms::RoomsService::remove_everyone`]) that every client sees in `/sync`
//! and sliding sync; afterwards the room is in no sync at all.

mod dissolve;

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

pub use self::dissolve::GroupDissolution;
use crate::{
    push::PushService,
    rooms::{RoomKind, RoomsService},
    rtc::RtcService,
    storage::{keys, Batch, Storage},
    users::UsersService,
    Error, Result,
};

/// What a purge marker records.
#[derive(Serialize, Deserialize)]
struct Marker {
    /// Users who had a membership in the room.
    users: Vec<OwnedUserId>,
}

/// What an administrator's delete did (the Synapse admin API's answer).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// Users taken out of the room (joined, invited or knocking).
    pub kicked_users: Vec<OwnedUserId>,
    /// Users who could not be taken out.
    pub failed_to_kick_users: Vec<OwnedUserId>,
    /// The room's local aliases, removed with it.
    pub local_aliases: Vec<OwnedRoomAliasId>,
}

/// The purge service.
pub struct PurgeService {
    storage: Arc<Storage>,
    rooms: Arc<RoomsService>,
    push: Arc<PushService>,
    users: Arc<UsersService>,
    rtc: Arc<RtcService>,
    /// One purge at a time: a group deleted by its owner is also dissolved by its last
    /// leave; the second purge then finds nothing left.
    running: tokio::sync::Mutex<()>,
}

fn marker_key(room_id: &RoomId) -> Vec<u8> {
    keys::strs(&["purging", room_id.as_str()])
}

/// How long an administrator's delete status is kept (as Synapse keeps its own).
const DELETE_STATUS_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Where a delete's status is kept (`meta` tree, under this prefix and the delete id):
/// stored, so the status endpoint may reach another process than the delete did.
const DELETE_STATUS: &str = "room_delete";

/// A recorded delete.
#[derive(Serialize, Deserialize)]
struct DeleteRecord {
    room_id: ruma::OwnedRoomId,
    outcome: DeleteOutcome,
    recorded_ms: u64,
}

/// The test hook in front of each domain's part: `purge.<domain>`.
fn failpoint(point: &str) -> Result<()> {
    fail::fail_point!(point, |_| Err(Error::internal(format!(
        "failpoint {point}"
    ))));
    let _ = point;
    Ok(())
}

impl PurgeService {
    /// The service over the domains a room's data lives in.
    pub fn new(
        storage: Arc<Storage>,
        rooms: Arc<RoomsService>,
        push: Arc<PushService>,
        users: Arc<UsersService>,
        rtc: Arc<RtcService>,
    ) -> PurgeService {
        PurgeService {
            storage,
            rooms,
            push,
            users,
            rtc,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Removes every trace of the room from storage (see the module doc). Idempotent;
    /// finishes an interrupted purge of the same room.
    #[tracing::instrument(skip(self), fields(room = %room_id))]
    pub async fn purge(&self, room_id: &RoomId) -> Result<()> {
        let _running = self.running.lock().await;
        let meta = &self.storage.trees.meta;
        let users = match meta.get_json::<Marker>(&marker_key(room_id))? {
            Some(marker) => marker.users,
            None => {
                let users = self.rooms.purge_subjects(room_id)?;
                let mut batch = Batch::new();
                batch.insert_json(
                    meta,
                    &marker_key(room_id),
                    &Marker {
                        users: users.clone(),
                    },
                )?;
                self.storage.commit_durable(batch).await?;
                users
            }
        };
        failpoint("purge.rooms")?;
        self.rooms.purge_room(room_id, &users).await?;
        failpoint("purge.push")?;
        self.push.purge_room(room_id, &users)?;
        self.users.purge_room_account_data(room_id, &users)?;
        self.users
            .purge_room_thread_subscriptions(room_id, &users)?;
        self.rtc.purge_room_delayed(room_id)?;
        crate::meetings::MeetingsStore::new(self.storage.clone()).purge_room(room_id)?;
        self.storage.durable().await?;
        let mut batch = Batch::new();
        batch.remove(meta, &marker_key(room_id));
        self.storage.commit_durable(batch).await?;
        tracing::info!(users = users.len(), "room purged");
        Ok(())
    }

    /// Finishes the purges a stop interrupted (call once at start).
    pub async fn resume(&self) -> Result<()> {
        let prefix = keys::strs(&["purging"]);
        let mut rooms = Vec::new();
        for kv in self.storage.trees.meta.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let room =
                String::from_utf8_lossy(&k[prefix.len()..k.len().saturating_sub(1)]).into_owned();
            match ruma::OwnedRoomId::try_from(room) {
                Ok(room) => rooms.push(room),
                Err(e) => tracing::error!(error = %e, "unreadable purge marker"),
            }
        }
        for room in rooms {
            tracing::info!(room = %room, "finishing an interrupted purge");
            self.purge(&room).await?;
        }
        Ok(())
    }

    /// A group whose last joined member left is dissolved: pending invites are withdrawn
    /// (and knocks refused), then the room is purged. Does nothing for other rooms, a
    /// group with a joined member, or a room already gone.
    pub async fn dissolve_if_empty(&self, room_id: &RoomId) -> Result<bool> {
        let Ok(record) = self.rooms.room(room_id) else {
            return Ok(false);
        };
        if RoomKind::of(&record) != RoomKind::Group || self.joined(room_id)? > 0 {
            return Ok(false);
        }
        self.rooms
            .remove_everyone(
                room_id,
                None,
                "The group was dissolved: its last member left",
            )
            .await?;
        // Someone who joined meanwhile (a public group) keeps it alive.
        if self.joined(room_id)? > 0 {
            return Ok(false);
        }
        self.purge(room_id).await?;
        Ok(true)
    }

    fn joined(&self, room_id: &RoomId) -> Result<usize> {
        Ok(self
            .rooms
            .members(room_id)?
            .count(crate::rooms::Membership::Join))
    }

    /// `requester` deletes a group or virtual room they own: every member is taken out
    /// (kicked by the owner, who leaves last), the room's call ends (the SFU disconnects
    /// its participants), then the room is purged. 404 for an unknown room; 403 for a
    /// conversation or anyone but the owner (and nothing is written).
    #[tracing::instrument(skip(self), fields(room = %room_id, requester = %requester))]
    pub async fn delete_room(&self, room_id: &RoomId, requester: &UserId) -> Result<()> {
        let record = self.rooms.room(room_id)?;
        if RoomKind::of(&record) == RoomKind::Conversation {
            return Err(Error::forbidden(
                "Only groups and virtual rooms can be deleted; leave a conversation instead",
            ));
        }
        if self.rooms.room_owner(room_id)?.as_deref() != Some(requester) {
            return Err(Error::forbidden("Only the room's owner may delete it"));
        }
        self.shut_down(room_id, Some(requester), "The owner deleted the room")
            .await?;
        self.purge(room_id).await
    }

    /// Takes everyone out of the room, then ends its call.
    async fn shut_down(
        &self,
        room_id: &RoomId,
        remover: Option<&UserId>,
        reason: &str,
    ) -> Result<Vec<OwnedUserId>> {
        let removed = self.rooms.remove_everyone(room_id, remover, reason).await?;
        // The members have left: none can get a new SFU token. An unreachable SFU does
        // not keep the room alive (its call then ends when its tokens lapse).
        match self.rtc.end_call(room_id).await {
            Ok(disconnected) if !disconnected.is_empty() => {
                tracing::info!(room = %room_id, participants = disconnected.len(), "call ended")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(room = %room_id, error = %e, "could not end the room's call"),
        }
        Ok(removed)
    }

    /// An administrator deletes any room (Synapse's `DELETE /_synapse/admin/v1/rooms`):
    /// every user leaves by themselves (the server writes it for them), the call ends,
    /// then the room is purged unless `purge` is false, and blocked when `block`. 404 for
    /// an unknown room (unless only blocking it).
    #[tracing::instrument(skip(self), fields(room = %room_id))]
    pub async fn admin_delete(
        &self,
        room_id: &RoomId,
        admin: Option<&UserId>,
        block: bool,
        purge: bool,
    ) -> Result<DeleteOutcome> {
        let mut outcome = DeleteOutcome::default();
        if self.rooms.exists(room_id)? {
            outcome.local_aliases = self.rooms.room_aliases(room_id)?;
            outcome.kicked_users = self
                .shut_down(
                    room_id,
                    None,
                    "The room was deleted by the server's administrator",
                )
                .await?;
            if purge {
                self.purge(room_id).await?;
            } else {
                outcome.local_aliases.clear();
            }
        } else if !block {
            return Err(Error::not_found("Unknown room"));
        }
        if block {
            self.rooms.set_room_blocked(room_id, true, admin).await?;
            self.storage.durable().await?;
        }
        Ok(outcome)
    }

    /// Runs [`Self::admin_delete`] and records its outcome under a new delete id (the
    /// v2 admin API, whose status endpoints read it back).
    pub async fn admin_delete_recorded(
        &self,
        room_id: &RoomId,
        admin: Option<&UserId>,
        block: bool,
        purge: bool,
    ) -> Result<String> {
        let outcome = self.admin_delete(room_id, admin, block, purge).await?;
        let id: String = {
            use rand::Rng;
            rand::thread_rng()
                .sample_iter(rand::distributions::Alphanumeric)
                .take(16)
                .map(char::from)
                .collect()
        };
        let now = crate::users::now_ms();
        let meta = &self.storage.trees.meta;
        let mut batch = Batch::new();
        for (key, record) in self.delete_records()? {
            if now.saturating_sub(record.recorded_ms) >= DELETE_STATUS_TTL_MS {
                batch.remove(meta, &key);
            }
        }
        let record = DeleteRecord {
            room_id: room_id.to_owned(),
            outcome,
            recorded_ms: now,
        };
        batch.insert_json(meta, &keys::strs(&[DELETE_STATUS, &id]), &record)?;
        self.storage.commit_durable(batch).await?;
        Ok(id)
    }

    /// Every recorded delete with its key.
    fn delete_records(&self) -> Result<Vec<(Vec<u8>, DeleteRecord)>> {
        let meta = &self.storage.trees.meta;
        let mut records = Vec::new();
        for entry in meta.scan_prefix(&keys::strs(&[DELETE_STATUS])) {
            let (key, value) = entry?;
            match serde_json::from_slice(&value) {
                Ok(record) => records.push((key, record)),
                Err(e) => tracing::warn!(error = %e, "unreadable room delete status"),
            }
        }
        Ok(records)
    }

    /// The recorded deletes of the last 24 hours: by id, or every one of a room.
    pub fn delete_statuses(
        &self,
        delete_id: Option<&str>,
        room_id: Option<&RoomId>,
    ) -> Result<Vec<(String, ruma::OwnedRoomId, DeleteOutcome)>> {
        let now = crate::users::now_ms();
        Ok(self
            .delete_records()?
            .into_iter()
            .filter_map(|(key, record)| {
                let id = keys::split_strs(&key).get(1)?.to_string();
                let wanted = delete_id.is_none_or(|d| d == id)
                    && room_id.is_none_or(|r| r == record.room_id)
                    && now.saturating_sub(record.recorded_ms) < DELETE_STATUS_TTL_MS;
                wanted.then_some((id, record.room_id, record.outcome))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
