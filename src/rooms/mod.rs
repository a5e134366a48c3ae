//! Rooms: the timeline, current and historical state, membership, aliases, the public
//! directory and ephemeral data (typing, receipts). Every event is built, signed and
//! checked against the spec's authorization rules here before it is stored.

mod admin;
mod aggregations;
mod alias;
mod append;
mod block;
mod cluster;
mod create;
mod delivered;
mod ephemeral;
mod kind;
mod kinds;
mod members;
mod membership;
mod policy;
mod publish;
mod purge;
mod read;
mod relation_index;
mod relations;
mod reports;
mod restricted;
mod state;
#[cfg(test)]
pub(crate) mod test_support;
mod thread_updates;
mod threads;
mod upgrade;
mod visibility;
mod wipe;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedServerName, RoomId, RoomVersionId};
use serde::{Deserialize, Serialize};

pub use self::{
    admin::{RoomOrder, RoomQuery, RoomSummary},
    append::{NewEvent, Transaction},
    block::{BlockedRoomPolicy, RoomBlock},
    create::CreateRoom,
    delivered::DELIVERED_RECEIPT,
    ephemeral::{Typing, RECEIPT_TYPES},
    kind::{RoomKind, GROUP_TYPE, VIRTUAL_ROOM_TYPE},
    kinds::{kind_policies, RoomRoles, MODERATOR_LEVEL, OWNER_LEVEL},
    members::{Membership, RoomMembers},
    membership::MemberProfile,
    policy::RoomPolicy,
    publish::PublicationHold,
    read::{ContextPage, Direction, EventFilter, MessagesPage, Token},
    relations::{RelationsPage, RelationsQuery},
    reports::{EventReport, ReportQuery},
    state::{PowerLevels, StateMap},
    thread_updates::{ThreadUpdate, ThreadUpdates, UpdatesQuery, MAX_THREAD_UPDATES},
    threads::ThreadsPage,
};
use crate::{
    config::Config,
    events::keys::ServerKeys,
    storage::{Storage, StreamPosition},
    stream::Notifier,
    Error, Result,
};

/// What Myelin records about a room besides its events.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The room version (`"10"` or `"11"`).
    pub version: RoomVersionId,
    /// The room type from `m.room.create`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
}

/// Proof that the caller holds a room's lock: state-changing calls take it.
pub struct RoomGuard {
    room_id: OwnedRoomId,
    /// A change the server makes itself under this lock, which the room policies let
    /// through (see [`kinds::ServerAction`]). Only code inside `rooms` sets it: no
    /// client request can carry it.
    server_action: Option<kinds::ServerAction>,
    /// The room's database lock, when other processes share the database.
    _shared: Option<Box<dyn Send + Sync>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl RoomGuard {
    /// The locked room.
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }
}

/// The rooms service.
pub struct RoomsService {
    storage: Arc<Storage>,
    keys: Arc<ServerKeys>,
    notifier: Arc<Notifier>,
    server_name: OwnedServerName,
    locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises stream-position allocation with the batch that uses it; holds the last
    /// applied timeline position.
    stream: Mutex<u64>,
    /// Applied, durable and visible watermarks (see [`publish`]).
    publication: Arc<publish::Publication>,
    /// Rules that may refuse an event inside `append` (see [`policy`]).
    policies: Vec<Arc<dyn RoomPolicy>>,
    /// Ephemeral (receipts, typing) stream position: a receipt's position is visible once
    /// its batch is applied; typing changes take positions too (persisted, so a restart
    /// never hands out a position a client has already seen).
    ephemeral_pos: StreamPosition,
    members: members::MembersCache,
    typing: ephemeral::TypingState,
    /// Delivered receipts noted by syncs, written in the background (see [`delivered`]).
    deliveries: delivered::Deliveries,
    /// The newest event of each room touched since start: id and depth (the next event's
    /// `prev_events` and depth), so sending does not scan storage backwards.
    tips: Mutex<HashMap<OwnedRoomId, (ruma::OwnedEventId, u64)>>,
    /// The newest timeline entries of each room appended to since start (see
    /// [`read::RecentEvents`]): incremental syncs read them without a storage scan.
    recent: Mutex<HashMap<OwnedRoomId, read::RecentEvents>>,
    /// Events other processes appended that this one has not read yet: read into the
    /// event cache before their positions are published, so the syncs they wake find
    /// them there (a shared database).
    remote_appended: Mutex<Vec<ruma::OwnedEventId>>,
    /// Relation types of recently served events (see [`relation_index::TypesCache`]).
    relation_types_cache: relation_index::TypesCache,
    /// Which users wiped which rooms' history (see [`wipe::Wipes`]).
    wipes: wipe::Wipes,
    /// Recently read events.
    pdu_cache: Mutex<HashMap<ruma::OwnedEventId, (u64, Arc<crate::events::Pdu>)>>,
}

/// Events kept in the read cache before it is cleared.
const PDU_CACHE_SIZE: usize = 4_096;

impl RoomsService {
    /// Builds the service, reading the stream positions back from storage; `policies` may
    /// refuse events inside `append`.
    pub fn new(
        config: Arc<Config>,
        storage: Arc<Storage>,
        keys: Arc<ServerKeys>,
        notifier: Arc<Notifier>,
        policies: Vec<Arc<dyn RoomPolicy>>,
    ) -> Result<RoomsService> {
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|e| Error::internal(format!("server name: {e}")))?;
        let last = storage
            .trees
            .stream
            .last()?
            .and_then(|(k, _)| crate::storage::keys::leading_u64(&k))
            .unwrap_or(0)
            .max(purge::stream_floor(&storage)?);
        if storage.is_shared() {
            cluster::seed_timeline_counter(&storage, last)?;
        }
        let ephemeral_pos = StreamPosition::load(&storage, b"ephemeral_pos")?;
        let wipes = wipe::Wipes::load(&storage)?;
        Ok(RoomsService {
            storage,
            keys,
            notifier,
            server_name,
            locks: Mutex::default(),
            stream: Mutex::new(last),
            publication: publish::Publication::new(last),
            policies,
            members: members::MembersCache::new(last),
            typing: ephemeral::TypingState::starting_at(ephemeral_pos.current()),
            ephemeral_pos,
            deliveries: delivered::Deliveries::default(),
            tips: Mutex::default(),
            recent: Mutex::default(),
            remote_appended: Mutex::default(),
            relation_types_cache: Default::default(),
            wipes,
            pdu_cache: Mutex::default(),
        })
    }

    /// Takes the room's lock (and, on a database shared with other processes, the room's
    /// database lock: appends of one room serialise across processes).
    pub async fn lock(&self, room_id: &RoomId) -> RoomGuard {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(room_id.to_owned()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        let mut shared = None;
        while self.storage.is_shared() {
            let storage = self.storage.clone();
            let name = cluster::room_lock_name(room_id);
            // Waiting for another process must not hold up this runtime's threads. No
            // append goes ahead without the lock: while the database cannot be reached,
            // ask again.
            match tokio::task::spawn_blocking(move || storage.lock(name)).await {
                Ok(Ok(held)) => {
                    shared = Some(held);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, %room_id, "taking a room's database lock")
                }
                Err(e) => tracing::error!(error = %e, %room_id, "taking a room's database lock"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        RoomGuard {
            room_id: room_id.to_owned(),
            server_action: None,
            _shared: shared,
            _guard: guard,
        }
    }

    /// The server name events are created under.
    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// The room's record, or 404 when the room is unknown.
    pub fn room(&self, room_id: &RoomId) -> Result<RoomRecord> {
        self.storage
            .trees
            .rooms
            .get_json(room_id.as_bytes())?
            .ok_or_else(|| Error::not_found("Unknown room"))
    }

    /// The room's version.
    pub fn room_version(&self, room_id: &RoomId) -> Result<RoomVersionId> {
        Ok(self.room(room_id)?.version)
    }

    /// Whether the room exists here.
    pub fn exists(&self, room_id: &RoomId) -> Result<bool> {
        self.storage.trees.rooms.contains(room_id.as_bytes())
    }

    /// The current ephemeral stream position.
    pub fn current_ephemeral_pos(&self) -> u64 {
        self.ephemeral_pos.current()
    }

    fn pdu_cache_get(&self, event_id: &ruma::EventId) -> Option<(u64, Arc<crate::events::Pdu>)> {
        self.pdu_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(event_id)
            .cloned()
    }

    fn pdu_cache_put(&self, event_id: &ruma::EventId, pos: u64, pdu: Arc<crate::events::Pdu>) {
        let mut cache = self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PDU_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(event_id.to_owned(), (pos, pdu));
    }

    fn invalidate_pdu(&self, event_id: &ruma::EventId) {
        self.pdu_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(event_id);
    }
}

#[cfg(test)]
mod tests;
