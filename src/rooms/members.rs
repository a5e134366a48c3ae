//! Room membership: the `Membership` of each user, cached in memory per room (loaded
//! from current state on first use, updated on every member event).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::RoomsService;
use crate::{storage::keys, Result};

/// A membership state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Membership {
    /// `join`
    Join,
    /// `invite`
    Invite,
    /// `leave`
    Leave,
    /// `ban`
    Ban,
    /// `knock`
    Knock,
}

impl Membership {
    /// Reads `content.membership` (unknown values count as leave).
    pub fn from_content(content: &Value) -> Membership {
        Membership::parse(
            content
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or("leave"),
        )
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Membership {
        match s {
            "join" => Membership::Join,
            "invite" => Membership::Invite,
            "ban" => Membership::Ban,
            "knock" => Membership::Knock,
            _ => Membership::Leave,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Join => "join",
            Membership::Invite => "invite",
            Membership::Leave => "leave",
            Membership::Ban => "ban",
            Membership::Knock => "knock",
        }
    }
}

/// The members of one room.
#[derive(Clone, Default, Debug)]
pub struct RoomMembers {
    map: HashMap<OwnedUserId, Membership>,
    /// Users per membership, indexed by `Membership as usize` (kept with `map`).
    counts: [usize; 5],
}

impl RoomMembers {
    /// Records a user's membership.
    fn insert(&mut self, user: OwnedUserId, m: Membership) {
        if let Some(old) = self.map.insert(user, m) {
            self.counts[old as usize] -= 1;
        }
        self.counts[m as usize] += 1;
    }

    /// A user's membership.
    pub fn get(&self, user: &UserId) -> Option<Membership> {
        self.map.get(user).copied()
    }

    /// Users currently joined.
    pub fn joined(&self) -> impl Iterator<Item = &UserId> {
        self.with(Membership::Join)
    }

    /// Users with the given membership.
    pub fn with(&self, m: Membership) -> impl Iterator<Item = &UserId> {
        self.map
            .iter()
            .filter(move |(_, v)| **v == m)
            .map(|(k, _)| k.as_ref())
    }

    /// Every user with any membership.
    pub fn all(&self) -> impl Iterator<Item = (&UserId, Membership)> {
        self.map.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Number of users with the given membership.
    pub fn count(&self, m: Membership) -> usize {
        self.counts[m as usize]
    }
}

/// A user's rooms, sorted by room id: each with the user's membership and its event's
/// stream position.
pub type UserRooms = Arc<Vec<(OwnedRoomId, Membership, u64)>>;

/// Per-room membership cache.
#[derive(Default)]
pub(super) struct MembersCache {
    /// The timeline position when the service started (or, on a shared database, when it
    /// last lost track of other processes' changes): every membership event of a room
    /// missing from `changed_at` is at or below it.
    started_at: std::sync::atomic::AtomicU64,
    /// The position of the newest membership event of each room changed since start.
    changed_at: Mutex<HashMap<OwnedRoomId, u64>>,
    rooms: RwLock<HashMap<OwnedRoomId, Arc<RoomMembers>>>,
    /// The rooms of users read since start (`user_rooms`), kept current by every
    /// membership write. A miss reads storage while holding the lock, so a write that
    /// commits meanwhile updates the entry after it is inserted, never before.
    user_rooms: Mutex<HashMap<OwnedUserId, UserRooms>>,
}

impl MembersCache {
    /// An empty cache for a service started at timeline position `started_at`.
    pub(super) fn new(started_at: u64) -> MembersCache {
        MembersCache {
            started_at: started_at.into(),
            ..MembersCache::default()
        }
    }

    /// Forgets everything, as if started at timeline position `last` (another process's
    /// changes may have been missed).
    pub(super) fn reset(&self, last: u64) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let mut user_rooms = self.user_rooms.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = self.changed_at.lock().unwrap_or_else(|e| e.into_inner());
        rooms.clear();
        user_rooms.clear();
        changed.clear();
        self.started_at
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
    }

    /// Records a membership change of a cached room (uncached rooms load on next use).
    pub(super) fn set(&self, room_id: &RoomId, user: &UserId, m: Membership) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = rooms.get_mut(room_id) {
            Arc::make_mut(members).insert(user.to_owned(), m);
        }
    }

    /// Records a committed membership of `user` in `room_id` at stream position `pos`
    /// (before the position is visible to readers).
    pub(super) fn set_user_room(&self, user: &UserId, room_id: &RoomId, m: Membership, pos: u64) {
        {
            let mut changed = self.changed_at.lock().unwrap_or_else(|e| e.into_inner());
            let last = changed.entry(room_id.to_owned()).or_insert(pos);
            *last = (*last).max(pos);
        }
        let mut cache = self.user_rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rooms) = cache.get_mut(user) {
            // Kept sorted by room id (as storage lists them) for `user_room`'s search.
            let rooms = Arc::make_mut(rooms);
            match rooms.binary_search_by(|(r, _, _)| r.as_str().cmp(room_id.as_str())) {
                Ok(i) => rooms[i] = (room_id.to_owned(), m, pos),
                Err(i) => rooms.insert(i, (room_id.to_owned(), m, pos)),
            }
        }
    }

    /// Drops users' cached room lists (their records were removed).
    pub(super) fn forget_user_rooms<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let mut cache = self.user_rooms.lock().unwrap_or_else(|e| e.into_inner());
        for user in users {
            cache.remove(user);
        }
    }

    /// Drops a room from the cache (room purged).
    pub(super) fn forget(&self, room_id: &RoomId) {
        self.rooms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
    }
}

impl RoomsService {
    /// The members of a room (empty for an unknown room).
    pub fn members(&self, room_id: &RoomId) -> Result<Arc<RoomMembers>> {
        if let Some(m) = self
            .members
            .rooms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
        {
            return Ok(m.clone());
        }
        // Load under the write lock so a concurrent `set` cannot slip between our read of
        // storage and the insert (it would be lost).
        let mut rooms = self
            .members
            .rooms
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = rooms.get(room_id) {
            return Ok(m.clone());
        }
        let prefix = keys::strs(&[room_id.as_str(), "m.room.member"]);
        let mut members = RoomMembers::default();
        for kv in self.storage.trees.room_state.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let Ok(user) = UserId::parse(
                String::from_utf8_lossy(&k[prefix.len()..k.len().saturating_sub(1)]).as_ref(),
            ) else {
                continue;
            };
            let id = super::append::parse_event_id(&v)?;
            if let Some(pdu) = self.get_pdu(&id)? {
                let content: Value = serde_json::from_str(pdu.content.get())?;
                members.insert(user, Membership::from_content(&content));
            }
        }
        let members = Arc::new(members);
        rooms.insert(room_id.to_owned(), members.clone());
        Ok(members)
    }

    /// The memberships recorded in a state map (the room as of some position).
    pub fn members_in(&self, map: &super::StateMap) -> Result<RoomMembers> {
        let mut members = RoomMembers::default();
        for ((kind, key), id) in map {
            if kind != "m.room.member" {
                continue;
            }
            let (Ok(user), Some(pdu)) = (UserId::parse(key.as_str()), self.get_pdu(id)?) else {
                continue;
            };
            let content: Value = serde_json::from_str(pdu.content.get())?;
            members.insert(user, Membership::from_content(&content));
        }
        Ok(members)
    }

    /// A user's membership in a room.
    pub fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<Membership>> {
        Ok(self.members(room_id)?.get(user))
    }

    /// Fails with 403 unless the user is joined.
    pub fn check_joined(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        if self.membership(room_id, user)? == Some(Membership::Join) {
            Ok(())
        } else {
            Err(crate::Error::forbidden("You are not joined to this room"))
        }
    }

    /// Every room the user has a membership record in, with that membership and the
    /// stream position of the membership event.
    /// Shared, not copied: a sync reads it for every request.
    pub fn user_rooms(&self, user: &UserId) -> Result<UserRooms> {
        let mut cache = self
            .members
            .user_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rooms) = cache.get(user) {
            return Ok(rooms.clone());
        }
        let prefix = keys::strs(&[user.as_str()]);
        let mut out = Vec::new();
        for kv in self.storage.trees.user_rooms.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let room =
                String::from_utf8_lossy(&k[prefix.len()..k.len().saturating_sub(1)]).into_owned();
            let Ok(room) = OwnedRoomId::try_from(room) else {
                continue;
            };
            let record: Value = serde_json::from_slice(&v)?;
            let m = Membership::parse(record["membership"].as_str().unwrap_or("leave"));
            let pos = record["pos"].as_u64().unwrap_or(0);
            out.push((room, m, pos));
        }
        // Storage orders keys by room id followed by the separator; sort by the id alone.
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let out = Arc::new(out);
        cache.insert(user.to_owned(), out.clone());
        Ok(out)
    }

    /// The user's membership in a room and the stream position of its event, from the
    /// same cache as [`Self::user_rooms`] (no storage read once the user's rooms are known).
    pub fn user_room(&self, user: &UserId, room_id: &RoomId) -> Result<Option<(Membership, u64)>> {
        let rooms = self.user_rooms(user)?;
        Ok(rooms
            .binary_search_by(|(r, _, _)| r.as_str().cmp(room_id.as_str()))
            .ok()
            .map(|i| (rooms[i].1, rooms[i].2)))
    }

    /// Whether a membership event of the room may lie after timeline position `since`
    /// (false: none does, and a reader looking for member changes can skip the room).
    pub fn members_changed_since(&self, room_id: &RoomId, since: u64) -> bool {
        let last = self
            .members
            .changed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
            .copied()
            .unwrap_or_else(|| {
                self.members
                    .started_at
                    .load(std::sync::atomic::Ordering::Acquire)
            });
        last > since
    }

    /// Rooms the user is joined to.
    pub fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .user_rooms(user)?
            .iter()
            .filter(|(_, m, _)| *m == Membership::Join)
            .map(|(r, _, _)| r.clone())
            .collect())
    }
}

impl RoomsService {
    /// Users `user` may find in the user directory: members (joined or invited) of rooms
    /// `user` is joined to, and joined members of rooms in the public directory; sorted,
    /// without `user`.
    pub fn visible_users(&self, user: &UserId) -> Result<Vec<OwnedUserId>> {
        let mut out = std::collections::BTreeSet::new();
        for room in self.joined_rooms(user)? {
            for (member, m) in self.members(&room)?.all() {
                if matches!(m, Membership::Join | Membership::Invite) {
                    out.insert(member.to_owned());
                }
            }
        }
        for room in self.public_room_ids()? {
            out.extend(self.members(&room)?.joined().map(ToOwned::to_owned));
        }
        out.remove(user);
        Ok(out.into_iter().collect())
    }
}
