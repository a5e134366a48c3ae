//! Rooms on a database shared with other processes (`storage.postgres_shared`).
//!
//! Appends of one room serialise across processes on a database lock named after the
//! room, taken with the room's local lock; under it the room's newest event is read from
//! storage (another process may have appended since this one last did). Timeline
//! positions are drawn from the `timeline_pos` counter in the database, so they commit in
//! order across processes.
//!
//! Other processes' commits reach this one through the change feed
//! ([`crate::storage::remote`]): first the caches they invalidate (recent events and tips
//! of the rooms they appended to, events they rewrote, memberships they changed, wipes,
//! relation types), then their timeline positions, which let this process publish up to
//! the newest position before which it has taken in every event.

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Weak},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde_json::Value;

use super::{Membership, RoomsService};
use crate::{
    storage::{keys, Changed, Storage},
    Result,
};

/// The `meta` key of the timeline's position counter on a shared database.
pub(super) const TIMELINE_POS: &[u8] = b"timeline_pos";

/// The database lock name of a room's appends.
pub(super) fn room_lock_name(room_id: &RoomId) -> i64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    "myelin room".hash(&mut hasher);
    room_id.as_str().hash(&mut hasher);
    // Never the process lock's name ("myelin" in ASCII, a small positive number).
    (hasher.finish() | (1 << 63)) as i64
}

/// Makes sure the timeline counter starts past every stored position (a database that a
/// single process used before is shared from now on).
pub(super) fn seed_timeline_counter(storage: &Storage, last: u64) -> Result<()> {
    let meta = &storage.trees.meta;
    loop {
        let current = meta.get(TIMELINE_POS)?;
        let value = current.as_deref().and_then(keys::leading_u64).unwrap_or(0);
        if value >= last {
            return Ok(());
        }
        if meta.compare_and_swap(
            TIMELINE_POS,
            current.as_deref(),
            Some(last.to_be_bytes().to_vec()),
        )? {
            return Ok(());
        }
    }
}

/// `(user, room)` from a `user_rooms` key.
fn user_room_key(key: &[u8]) -> Option<(OwnedUserId, OwnedRoomId)> {
    let mut parts = key.split(|b| *b == 0xFF);
    let user = OwnedUserId::try_from(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    let room = OwnedRoomId::try_from(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    Some((user, room))
}

/// The room and position of a `receipts_log` key (`room_id, pos, index`).
fn receipt_log_key(key: &[u8]) -> Option<(OwnedRoomId, u64)> {
    let end = key.iter().position(|b| *b == 0xFF)?;
    let room = OwnedRoomId::try_from(std::str::from_utf8(&key[..end]).ok()?).ok()?;
    Some((room, keys::leading_u64(key.get(end + 1..)?)?))
}

/// The room of a `room_timeline` key (`room_id, pos`).
fn timeline_room(key: &[u8]) -> Option<OwnedRoomId> {
    let end = key.iter().position(|b| *b == 0xFF)?;
    OwnedRoomId::try_from(std::str::from_utf8(&key[..end]).ok()?).ok()
}

impl RoomsService {
    /// Follows other processes' commits (a shared database only); call once, right
    /// after building the service and before serving.
    pub fn follow_other_processes(self: &Arc<Self>) -> Result<()> {
        if !self.storage.is_shared() {
            return Ok(());
        }
        let storage = &self.storage;
        let trees = &storage.trees;
        let this = Arc::downgrade(self);
        let on = |f: fn(&RoomsService, Changed<'_>)| {
            let this: Weak<RoomsService> = this.clone();
            move |changed: Changed<'_>| {
                if let Some(rooms) = this.upgrade() {
                    f(&rooms, changed);
                }
            }
        };
        storage.on_remote_change(&trees.room_timeline, on(RoomsService::remote_timeline));
        storage.on_remote_change(&trees.pdus, on(RoomsService::remote_pdus));
        storage.on_remote_change(&trees.user_rooms, on(RoomsService::remote_memberships));
        storage.on_remote_change(&trees.history_wipes, on(RoomsService::remote_wipes));
        storage.on_remote_change(
            &trees.relations,
            on(|rooms, _| rooms.relation_types_cache.clear()),
        );
        storage.on_remote_position(&trees.stream, on(RoomsService::remote_positions));
        storage.on_remote_change(
            &trees.meta,
            on(|rooms, changed| {
                if let Changed::Keys(keys) = changed {
                    for key in keys {
                        rooms.remote_publication_hold(key);
                    }
                }
            }),
        );
        storage.on_remote_change(&trees.receipts_log, on(RoomsService::remote_receipts));
        storage.on_remote_position(&trees.receipts_log, on(RoomsService::remote_ephemeral_wake));
        storage.on_remote_change(&trees.typing, on(RoomsService::remote_typings));
        storage.on_remote_position(
            &trees.typing,
            on(RoomsService::remote_ephemeral_wake_typing),
        );
        // Whatever was committed between reading the last position and now.
        self.remote_positions(Changed::All);
        Ok(())
    }

    /// Another process appended to rooms (or removed timeline entries): its events join
    /// the rooms' recent windows (a window starts with them when the room has none), so
    /// the syncs they wake read memory, not storage; the events are read into the event
    /// cache before their positions are published ([`Self::remote_positions`]). Tips are
    /// stale. A removed entry drops the room's window.
    fn remote_timeline(&self, changed: Changed<'_>) {
        let Changed::Keys(keys) = changed else {
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.tips.lock().unwrap_or_else(|e| e.into_inner()).clear();
            return;
        };
        let mut entries = Vec::new();
        for key in keys {
            let Some(room) = timeline_room(key) else {
                continue;
            };
            let Some(pos) = keys::trailing_u64(key) else {
                continue;
            };
            let id = match self.storage.trees.room_timeline.get(key) {
                Ok(Some(value)) => super::append::parse_event_id(&value).ok(),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading another process's append");
                    None
                }
            };
            entries.push((room, pos, id));
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (room, pos, id) in &entries {
                match id {
                    Some(id) => recent
                        .entry(room.clone())
                        .or_insert_with(|| super::read::RecentEvents::starting_at(*pos))
                        .insert(*pos, id.clone()),
                    None => {
                        recent.remove(room);
                    }
                }
            }
        }
        let mut tips = self.tips.lock().unwrap_or_else(|e| e.into_inner());
        for (room, ..) in &entries {
            tips.remove(room);
        }
        drop(tips);
        self.remote_appended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(entries.into_iter().filter_map(|(_, _, id)| id));
    }

    /// Another process rewrote events (redactions): drop them from the read cache.
    fn remote_pdus(&self, changed: Changed<'_>) {
        match changed {
            Changed::Keys(keys) => {
                for key in keys {
                    if let Ok(id) = super::append::parse_event_id(key) {
                        self.invalidate_pdu(&id);
                    }
                }
            }
            Changed::All => self
                .pdu_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear(),
        }
    }

    /// Another process changed memberships: replay them into the member caches.
    fn remote_memberships(&self, changed: Changed<'_>) {
        let Changed::Keys(keys) = changed else {
            self.members.reset(self.stream_last());
            return;
        };
        for key in keys {
            let Some((user, room)) = user_room_key(key) else {
                continue;
            };
            let record = self
                .storage
                .trees
                .user_rooms
                .get_json::<Value>(key)
                .ok()
                .flatten();
            match record {
                Some(record) => {
                    let m = Membership::parse(record["membership"].as_str().unwrap_or("leave"));
                    let pos = record["pos"].as_u64().unwrap_or(0);
                    self.members.set_user_room(&user, &room, m, pos);
                    self.members.set(&room, &user, m);
                }
                None => {
                    self.members.forget_user_rooms([user.as_ref()]);
                    self.members.forget(&room);
                }
            }
        }
    }

    /// Another process wiped history: re-read the wipes.
    fn remote_wipes(&self, _: Changed<'_>) {
        match super::wipe::Wipes::load(&self.storage) {
            Ok(wipes) => self.wipes.replace(wipes),
            Err(e) => tracing::error!(error = %e, "re-reading history wipes"),
        }
    }

    /// Timeline positions another process committed (or, for `All`, every position in
    /// storage past the applied one).
    fn remote_positions(&self, changed: Changed<'_>) {
        let appended = std::mem::take(
            &mut *self
                .remote_appended
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for id in appended {
            if let Err(e) = self.get_pdu(&id) {
                tracing::warn!(error = %e, event = %id, "reading another process's event");
            }
        }
        match changed {
            Changed::Keys(keys) => {
                for pos in keys.iter().filter_map(|k| keys::leading_u64(k)) {
                    self.publication.committed(pos, &self.storage);
                }
            }
            Changed::All => {
                let from = (self.applied_pos() + 1).to_be_bytes();
                for kv in self
                    .storage
                    .trees
                    .stream
                    .range(&from, &u64::MAX.to_be_bytes(), false)
                {
                    match kv {
                        Ok((k, _)) => {
                            if let Some(pos) = keys::leading_u64(&k) {
                                self.publication.committed(pos, &self.storage);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reading timeline positions");
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Another process stored receipts: index their rooms for ephemeral readers.
    fn remote_receipts(&self, changed: Changed<'_>) {
        match changed {
            Changed::Keys(keys) => {
                for (room, pos) in keys.iter().filter_map(|k| receipt_log_key(k)) {
                    self.remote_receipt(room, pos);
                }
            }
            Changed::All => {
                // Receipts of the latest positions, read back.
                let after = self.current_ephemeral_pos().saturating_sub(1_000);
                for kv in self.storage.trees.receipts_log.scan_prefix(&[]) {
                    let Ok((k, _)) = kv else {
                        break;
                    };
                    if let Some((room, pos)) = receipt_log_key(&k) {
                        if pos > after {
                            self.remote_receipt(room, pos);
                        }
                    }
                }
            }
        }
    }

    /// Another process changed who types: take it in.
    fn remote_typings(&self, changed: Changed<'_>) {
        let Changed::Keys(keys) = changed else {
            for kv in self.storage.trees.typing.scan_prefix(&[]) {
                let Ok((k, v)) = kv else {
                    break;
                };
                if let Ok(record) = serde_json::from_slice::<Value>(&v) {
                    self.remote_typing(&k, &record);
                }
            }
            return;
        };
        for key in keys {
            if let Ok(Some(record)) = self.storage.trees.typing.get_json::<Value>(key) {
                self.remote_typing(key, &record);
            }
        }
    }

    /// After receipts from another process: their position, then the members' long polls.
    fn remote_ephemeral_wake(&self, changed: Changed<'_>) {
        let rooms: Vec<(OwnedRoomId, u64)> = match changed {
            Changed::Keys(keys) => keys.iter().filter_map(|k| receipt_log_key(k)).collect(),
            Changed::All => Vec::new(),
        };
        self.ephemeral_wake(rooms);
    }

    /// After typing from another process: its position, then the members' long polls.
    fn remote_ephemeral_wake_typing(&self, changed: Changed<'_>) {
        let Changed::Keys(keys) = changed else {
            return;
        };
        let mut rooms = Vec::new();
        for key in keys {
            if let Ok(Some(record)) = self.storage.trees.typing.get_json::<Value>(key) {
                let room = key
                    .iter()
                    .position(|b| *b == 0xFF)
                    .and_then(|end| std::str::from_utf8(&key[..end]).ok())
                    .and_then(|r| OwnedRoomId::try_from(r).ok());
                if let (Some(room), Some(pos)) = (room, record["pos"].as_u64()) {
                    rooms.push((room, pos));
                }
            }
        }
        self.ephemeral_wake(rooms);
    }

    fn ephemeral_wake(&self, rooms: Vec<(OwnedRoomId, u64)>) {
        for (room, pos) in rooms {
            self.ephemeral_pos.observe(pos);
            match self.members(&room) {
                Ok(members) => self.notifier.notify(members.joined()),
                Err(e) => tracing::warn!(error = %e, %room, "waking a room's members"),
            }
        }
    }

    /// The newest stored timeline position.
    fn stream_last(&self) -> u64 {
        self.storage
            .trees
            .stream
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| keys::leading_u64(&k))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use ruma::UserId;
    use serde_json::json;

    use super::*;
    use crate::{
        rooms::{CreateRoom, NewEvent},
        services::two_processes,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn appends_from_two_processes_form_one_chain() {
        let (a, b) = two_processes();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = a
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();
        let sends: Vec<_> = (0..40)
            .map(|i| {
                let services = if i % 2 == 0 { a.clone() } else { b.clone() };
                let (room, alice) = (room.clone(), alice.clone());
                tokio::spawn(async move {
                    let content = json!({"msgtype": "m.text", "body": format!("m{i}")});
                    services
                        .rooms
                        .send_to(&room, &alice, NewEvent::message("m.room.message", content))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut positions = Vec::new();
        for send in sends {
            positions.push(send.await.unwrap().1);
        }
        positions.sort();
        positions.dedup();
        assert_eq!(positions.len(), 40, "every event has a position of its own");
        // In position order, each event follows the one before it: no fork.
        let prefix = keys::strs(&[room.as_str()]);
        let ids: Vec<_> = a
            .storage()
            .trees
            .room_timeline
            .scan_prefix(&prefix)
            .map(|kv| super::super::append::parse_event_id(&kv.unwrap().1).unwrap())
            .collect();
        assert!(ids.len() > 40);
        for pair in ids.windows(2) {
            let before = b.rooms.get_pdu(&pair[0]).unwrap().unwrap();
            let after = b.rooms.get_pdu(&pair[1]).unwrap().unwrap();
            assert_eq!(after.prev_events, vec![before.event_id.clone()]);
            assert_eq!(after.depth, before.depth + 1);
        }
        // Each process sees everything, up to the last position.
        let last = *positions.last().unwrap();
        for services in [&a, &b] {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                services.rooms.wait_visible(last),
            )
            .await
            .unwrap()
            .unwrap();
        }
        // Both hold the newest events in memory, in storage's order, and the event cache
        // has the last one (read before it was published): syncs read no storage.
        let lo = positions[positions.len() - 12];
        for services in [&a, &b] {
            let rooms = &services.rooms;
            let window = rooms
                .recent
                .lock()
                .unwrap()
                .get(&room)
                .unwrap()
                .range(lo, last);
            let stored = rooms
                .timeline_range_stored(&room, lo, last, crate::rooms::Direction::Forward, 100, None)
                .unwrap()
                .0;
            let stored: Vec<_> = stored
                .iter()
                .map(|(p, e)| (*p, e.event_id.clone()))
                .collect();
            assert_eq!(window, Some(stored));
            let newest = rooms.recent.lock().unwrap()[&room]
                .range(last - 1, last)
                .unwrap();
            assert!(rooms.pdu_cache_get(&newest[0].1).is_some());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn another_processs_publication_hold_is_honoured() {
        let (a, b) = two_processes();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = a
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();
        let created = a.rooms.current_pos();
        let wait = std::time::Duration::from_secs(10);
        tokio::time::timeout(wait, b.rooms.wait_visible(created))
            .await
            .unwrap()
            .unwrap();

        // B (not the leader: A started first) holds publication, as room creation does,
        // and appends; A, whose pipeline runs the cluster's consumers, must wait for it.
        let (a, b) = (b, a);
        let hold = a.rooms.hold_publication();
        let guard = a.rooms.lock(&room).await;
        let content = json!({"msgtype": "m.text", "body": "held"});
        let (_, pos) = a
            .rooms
            .append(&guard, &alice, NewEvent::message("m.room.message", content))
            .unwrap();
        drop(guard);
        // B has taken the event in, and still does not show it.
        let deadline = std::time::Instant::now() + wait;
        while b.rooms.applied_pos() < pos {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            b.rooms.current_pos() < pos,
            "published under another process's hold"
        );
        drop(hold);
        tokio::time::timeout(wait, b.rooms.wait_visible(pos))
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn keys_parse_back() {
        let key = keys::strs(&["@a:x", "!r:x"]);
        assert_eq!(
            user_room_key(&key),
            Some(("@a:x".try_into().unwrap(), "!r:x".try_into().unwrap()))
        );
        let timeline = keys::KeyBuilder::new().str("!r:x").u64(7).build();
        assert_eq!(timeline_room(&timeline), Some("!r:x".try_into().unwrap()));
        let a = room_lock_name(<&RoomId>::try_from("!a:x").unwrap());
        let b = room_lock_name(<&RoomId>::try_from("!b:x").unwrap());
        assert_ne!(a, b);
        assert!(a < 0 && b < 0);
    }
}
