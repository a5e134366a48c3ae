//! Ephemeral room data: typing notifications (memory only) and receipts (stored), both
//! on the ephemeral stream so `/sync` can ask "what changed since".

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ruma::{EventId, MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::RoomsService;
use crate::{storage::keys, Result};

/// Who is typing in a room, with a change position.
pub type Typing = Vec<OwnedUserId>;

#[derive(Default)]
pub(super) struct TypingState {
    rooms: Mutex<HashMap<OwnedRoomId, (u64, HashMap<OwnedUserId, Instant>)>>,
    /// The rooms of the latest receipts, by position (at most [`RECENT_RECEIPTS`], since
    /// the start): which rooms an ephemeral reader after a position must look at.
    receipt_rooms: Mutex<VecDeque<(u64, OwnedRoomId)>>,
    /// Every receipt after this position has its room in `receipt_rooms` (the position
    /// at start, then the newest one dropped from it).
    receipts_complete_after: AtomicU64,
}

/// Receipt positions remembered for [`RoomsService::ephemeral_rooms_since`].
const RECENT_RECEIPTS: usize = 10_000;

impl TypingState {
    /// The state of a process whose ephemeral stream is at `pos`.
    pub(super) fn starting_at(pos: u64) -> TypingState {
        TypingState {
            receipts_complete_after: AtomicU64::new(pos),
            ..Default::default()
        }
    }

    /// Drops the oldest remembered receipt room (the list is full).
    fn forget_oldest_receipt(&self, recent: &mut VecDeque<(u64, OwnedRoomId)>) {
        if let Some((pos, _)) = recent.pop_front() {
            self.receipts_complete_after
                .fetch_max(pos, Ordering::SeqCst);
        }
    }

    /// Drops a room's typing users (room purged).
    pub(super) fn forget(&self, room_id: &RoomId) {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
    }
}

/// One receipt to store with [`RoomsService::record_receipts`] (`thread` empty: unthreaded).
pub(super) struct NewReceipt<'a> {
    pub room_id: &'a RoomId,
    pub user: &'a UserId,
    pub kind: &'a str,
    pub event_id: &'a EventId,
    pub thread: &'a str,
}

/// Receipt types a client may set.
pub const RECEIPT_TYPES: &[&str] = &["m.read", "m.read.private"];

impl RoomsService {
    /// Takes the next ephemeral position for an in-memory change: `apply` makes the
    /// change at that position before readers may see it. The position itself is
    /// persisted, so positions keep growing across restarts.
    fn advance_ephemeral(&self, apply: impl FnOnce(u64)) -> Result<u64> {
        self.ephemeral_pos
            .commit_next(&self.storage, |_, _| Ok(()), apply)
    }

    /// Like [`Self::advance_ephemeral`] for a typing change, which on a shared database
    /// is also written for the other processes (`until`: `None` when stopped).
    fn advance_typing(
        &self,
        room_id: &RoomId,
        user: &UserId,
        until: Option<Instant>,
        apply: impl FnOnce(u64),
    ) -> Result<u64> {
        if !self.storage.is_shared() {
            return self.advance_ephemeral(apply);
        }
        let until_ms = until.map_or(0, |until| {
            let left = until.saturating_duration_since(Instant::now());
            u64::from(MilliSecondsSinceUnixEpoch::now().get()) + left.as_millis() as u64
        });
        self.ephemeral_pos.commit_next(
            &self.storage,
            |pos, batch| {
                batch.insert_json(
                    &self.storage.trees.typing,
                    &keys::strs(&[room_id.as_str(), user.as_str()]),
                    &json!({ "until_ms": until_ms, "pos": pos }),
                )
            },
            apply,
        )
    }

    /// Another process changed who types in a room (`key`: `room_id, user_id`; `record`:
    /// `{until_ms, pos}`): apply it here; returns the room and position.
    pub(super) fn remote_typing(&self, key: &[u8], record: &Value) -> Option<(OwnedRoomId, u64)> {
        let mut parts = key.split(|b| *b == 0xFF);
        let room = OwnedRoomId::try_from(std::str::from_utf8(parts.next()?).ok()?).ok()?;
        let user = OwnedUserId::try_from(std::str::from_utf8(parts.next()?).ok()?).ok()?;
        let pos = record["pos"].as_u64()?;
        let until_ms = record["until_ms"].as_u64().unwrap_or(0);
        let now_ms = u64::from(MilliSecondsSinceUnixEpoch::now().get());
        let mut rooms = self.typing.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let entry = rooms.entry(room.clone()).or_default();
        entry.0 = entry.0.max(pos);
        if until_ms > now_ms {
            let left = Duration::from_millis(until_ms - now_ms);
            entry.1.insert(user, Instant::now() + left);
        } else {
            entry.1.remove(&user);
        }
        Some((room, pos))
    }

    /// Another process stored receipts in `room` at ephemeral position `pos`: remember
    /// the room for readers after an earlier position.
    pub(super) fn remote_receipt(&self, room: OwnedRoomId, pos: u64) {
        let mut recent = self
            .typing
            .receipt_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Kept in position order; another process's positions interleave with ours.
        let at = recent.partition_point(|(p, _)| *p <= pos);
        if recent
            .iter()
            .skip(at.saturating_sub(1))
            .take(2)
            .any(|(p, r)| *p == pos && *r == room)
        {
            return;
        }
        if recent.len() == RECENT_RECEIPTS {
            self.typing.forget_oldest_receipt(&mut recent);
        }
        let at = recent.partition_point(|(p, _)| *p <= pos);
        recent.insert(at, (pos, room));
    }

    /// Sets or clears `user` typing in a room, for at most `timeout`.
    pub fn set_typing(
        self: &Arc<Self>,
        room_id: &RoomId,
        user: &UserId,
        typing: bool,
        timeout: Duration,
    ) -> Result<()> {
        let until = Instant::now() + timeout.min(Duration::from_secs(120));
        self.advance_typing(room_id, user, typing.then_some(until), |pos| {
            let mut rooms = self.typing.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let entry = rooms.entry(room_id.to_owned()).or_default();
            entry.0 = pos;
            if typing {
                entry.1.insert(user.to_owned(), until);
            } else {
                entry.1.remove(user);
            }
        })?;
        if typing {
            self.expire_typing_at(room_id, user, until);
        }
        self.notifier.notify(self.members(room_id)?.joined());
        Ok(())
    }

    /// Drops `user` from the room's typing list once `until` passes, unless the typing was
    /// renewed or stopped meanwhile: a timeout is a change clients must see, so it takes a
    /// new position and wakes the members' long-polls.
    fn expire_typing_at(self: &Arc<Self>, room_id: &RoomId, user: &UserId, until: Instant) {
        let this = Arc::downgrade(self);
        let (room_id, user) = (room_id.to_owned(), user.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            let Some(this) = this.upgrade() else {
                return;
            };
            let still_due = |rooms: &HashMap<OwnedRoomId, (u64, HashMap<OwnedUserId, Instant>)>| {
                rooms
                    .get(&room_id)
                    .is_some_and(|entry| entry.1.get(&user) == Some(&until))
            };
            if !still_due(&this.typing.rooms.lock().unwrap_or_else(|e| e.into_inner())) {
                return;
            }
            // Checked again under the position: a renewal meanwhile keeps the user typing.
            let mut expired = false;
            let advanced = this.advance_typing(&room_id, &user, None, |pos| {
                let mut rooms = this.typing.rooms.lock().unwrap_or_else(|e| e.into_inner());
                if still_due(&rooms) {
                    if let Some(entry) = rooms.get_mut(&room_id) {
                        entry.1.remove(&user);
                        entry.0 = pos;
                        expired = true;
                    }
                }
            });
            if let Err(e) = advanced {
                tracing::warn!(error = %e, room = %room_id, "typing expiry");
                return;
            }
            if expired {
                match this.members(&room_id) {
                    Ok(members) => this.notifier.notify(members.joined()),
                    Err(e) => tracing::warn!(error = %e, room = %room_id, "typing expiry"),
                }
            }
        });
    }

    /// The rooms whose typing or receipts changed after ephemeral position `since` (since
    /// this process started; receipts: among the latest 10,000).
    pub fn ephemeral_rooms_since(&self, since: u64) -> Vec<OwnedRoomId> {
        let mut rooms: Vec<OwnedRoomId> = self
            .typing
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (pos, _))| *pos > since)
            .map(|(room, _)| room.clone())
            .collect();
        let recent = self
            .typing
            .receipt_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, room) in recent.iter().rev().take_while(|(pos, _)| *pos > since) {
            if !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        rooms
    }

    /// The users typing in a room, if that changed after `since` (always for `since` 0).
    pub fn typing_since(&self, room_id: &RoomId, since: u64) -> Option<Typing> {
        let rooms = self.typing.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let (pos, users) = rooms.get(room_id)?;
        if *pos <= since && since != 0 {
            return None;
        }
        let now = Instant::now();
        let typing: Typing = users
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(u, _)| u.clone())
            .collect();
        if since == 0 && typing.is_empty() {
            return None;
        }
        Some(typing)
    }

    /// Records a receipt.
    /// Durable on return.
    pub async fn set_receipt(
        &self,
        room_id: &RoomId,
        user: &UserId,
        kind: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        self.set_receipt_now(room_id, user, kind, event_id, thread)?;
        self.storage.durable().await
    }

    /// [`Self::set_receipt`] without waiting for durability.
    pub(crate) fn set_receipt_now(
        &self,
        room_id: &RoomId,
        user: &UserId,
        kind: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        self.record_receipt(room_id, user, kind, event_id, thread)?;
        if kind == "m.read.private" {
            self.notifier.notify_user(user);
        } else {
            self.notifier.notify(self.members(room_id)?.joined());
        }
        Ok(())
    }

    /// Stores a receipt at the next ephemeral position, waking nobody.
    pub(super) fn record_receipt(
        &self,
        room_id: &RoomId,
        user: &UserId,
        kind: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        self.record_receipts(&[NewReceipt {
            room_id,
            user,
            kind,
            event_id,
            thread: thread.unwrap_or(""),
        }])
    }

    /// Stores several receipts in one commit, all at the next ephemeral position, waking
    /// nobody: one lock, one batch and one position whatever their number.
    pub(super) fn record_receipts(&self, receipts: &[NewReceipt<'_>]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let trees = &self.storage.trees;
        let ts = MilliSecondsSinceUnixEpoch::now();
        // The receipts and their log entries are applied before their position is
        // visible, so a sync that reads the position finds them.
        self.ephemeral_pos.commit_next(
            &self.storage,
            |pos, batch| {
                for (i, r) in receipts.iter().enumerate() {
                    let record = json!({ "event_id": r.event_id, "ts": ts, "pos": pos });
                    batch.insert_json(
                        &trees.receipts,
                        &keys::strs(&[r.room_id.as_str(), r.kind, r.user.as_str(), r.thread]),
                        &record,
                    )?;
                    // The index keeps log keys of one position apart.
                    batch.insert(
                        &trees.receipts_log,
                        &keys::KeyBuilder::new()
                            .str(r.room_id.as_str())
                            .u64(pos)
                            .u64(i as u64)
                            .build(),
                        &keys::strs(&[r.kind, r.user.as_str(), r.thread]),
                    );
                }
                Ok(())
            },
            |pos| {
                let mut recent = self
                    .typing
                    .receipt_rooms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut rooms: Vec<&RoomId> = receipts.iter().map(|r| r.room_id).collect();
                rooms.sort();
                rooms.dedup();
                for room in rooms {
                    if recent.len() == RECENT_RECEIPTS {
                        self.typing.forget_oldest_receipt(&mut recent);
                    }
                    recent.push_back((pos, room.to_owned()));
                }
            },
        )?;
        Ok(())
    }

    /// The user's own `m.read`/`m.read.private` receipt position in a room (the later one).
    pub fn own_read_pos(&self, room_id: &RoomId, user: &UserId) -> Result<Option<u64>> {
        let mut best = None;
        for kind in RECEIPT_TYPES {
            best = best.max(self.receipt_pos(room_id, kind, user)?);
        }
        Ok(best)
    }

    /// The timeline position of the user's unthreaded receipt of `kind` in a room.
    pub(super) fn receipt_pos(
        &self,
        room_id: &RoomId,
        kind: &str,
        user: &UserId,
    ) -> Result<Option<u64>> {
        let key = keys::strs(&[room_id.as_str(), kind, user.as_str(), ""]);
        match self.storage.trees.receipts.get_json::<Value>(&key)? {
            Some(record) => self.record_event_pos(&record),
            None => Ok(None),
        }
    }

    /// The timeline position of the event a stored receipt record names.
    pub(super) fn record_event_pos(&self, record: &Value) -> Result<Option<u64>> {
        match record["event_id"]
            .as_str()
            .and_then(|s| EventId::parse(s).ok())
        {
            Some(id) => self.event_pos(&id),
            None => Ok(None),
        }
    }

    /// Whether receipts in `room_id` may have been stored after ephemeral position
    /// `since`. No only when the remembered receipt rooms cover every position after
    /// `since` and name no receipt of this room there, so a long poll woken by a message
    /// reads no receipt log. On a shared database another process's receipts are learnt
    /// after their positions, so the answer there is always yes.
    fn may_have_receipts_since(&self, room_id: &RoomId, since: u64) -> bool {
        if self.is_shared() {
            return true;
        }
        let recent = self
            .typing
            .receipt_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if since < self.typing.receipts_complete_after.load(Ordering::SeqCst) {
            return true;
        }
        recent
            .iter()
            .rev()
            .take_while(|(pos, _)| *pos > since)
            .any(|(_, room)| room == room_id)
    }

    /// The `m.receipt` content of receipts changed after `since` (all for 0), as `viewer`
    /// sees them (private receipts only their own).
    pub fn receipts_since(
        &self,
        room_id: &RoomId,
        since: u64,
        viewer: &UserId,
    ) -> Result<Option<Value>> {
        if !self.may_have_receipts_since(room_id, since) {
            return Ok(None);
        }
        let trees = &self.storage.trees;
        let mut entries: Vec<(String, String, String)> = Vec::new();
        if since == 0 {
            let prefix = keys::strs(&[room_id.as_str()]);
            for kv in trees.receipts.scan_prefix(&prefix) {
                let (k, _) = kv?;
                if let [_, kind, user, rest @ ..] = keys::split_strs(&k).as_slice() {
                    entries.push((
                        kind.to_string(),
                        user.to_string(),
                        rest.first().copied().unwrap_or("").to_string(),
                    ));
                }
            }
        } else {
            let from = keys::KeyBuilder::new()
                .str(room_id.as_str())
                .u64(since + 1)
                .build();
            let to = keys::KeyBuilder::new()
                .str(room_id.as_str())
                .u64(u64::MAX)
                .build();
            for kv in trees.receipts_log.range(&from, &to, false) {
                let (_, v) = kv?;
                let parts = keys::split_strs(&v);
                if let [kind, user, rest @ ..] = parts.as_slice() {
                    entries.push((
                        kind.to_string(),
                        user.to_string(),
                        rest.first().copied().unwrap_or("").to_string(),
                    ));
                }
            }
        }
        let mut content: Map<String, Value> = Map::new();
        for (kind, user, thread) in entries {
            if kind == "m.read.private" && user != viewer.as_str() {
                continue;
            }
            let key = keys::strs(&[room_id.as_str(), &kind, &user, &thread]);
            let Some(record) = trees.receipts.get_json::<Value>(&key)? else {
                continue;
            };
            let Some(event_id) = record["event_id"].as_str() else {
                continue;
            };
            let mut receipt = json!({ "ts": record["ts"] });
            if !thread.is_empty() {
                receipt["thread_id"] = json!(thread);
            }
            let by_event = content
                .entry(event_id.to_owned())
                .or_insert_with(|| json!({}));
            by_event[&kind][&user] = receipt;
        }
        Ok((!content.is_empty()).then_some(Value::Object(content)))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use ruma::RoomId;

    use crate::{rooms::test_support::room_with_message, storage::keys};

    #[tokio::test]
    async fn typing_and_receipts_take_persisted_positions_in_order() {
        let (s, alice, room, event) = room_with_message().await;
        let stored = || {
            s.storage()
                .trees
                .meta
                .get(b"ephemeral_pos")
                .unwrap()
                .and_then(|v| keys::leading_u64(&v))
        };
        let start = s.rooms.current_ephemeral_pos();

        s.rooms
            .set_typing(&room, &alice, true, Duration::from_secs(30))
            .unwrap();
        let typed = s.rooms.current_ephemeral_pos();
        assert_eq!(typed, start + 1);
        assert_eq!(stored(), Some(typed), "a typing position is persisted");
        assert_eq!(
            s.rooms.typing_since(&room, start),
            Some(vec![alice.clone()])
        );
        assert_eq!(s.rooms.typing_since(&room, typed), None);

        s.rooms
            .set_receipt_now(&room, &alice, "m.read", &event, None)
            .unwrap();
        let read = s.rooms.current_ephemeral_pos();
        assert_eq!(read, typed + 1);
        assert_eq!(stored(), Some(read));
    }

    #[tokio::test]
    async fn receipts_since_skips_the_log_only_where_the_recent_rooms_cover_it() {
        let (s, alice, room, event) = room_with_message().await;
        let other = ruma::room_id!("!other:localhost");
        let before = s.rooms.current_ephemeral_pos();
        s.rooms
            .set_receipt_now(&room, &alice, "m.read", &event, None)
            .unwrap();
        let after = s.rooms.current_ephemeral_pos();
        let since = |r: &RoomId, pos| s.rooms.receipts_since(r, pos, &alice).unwrap();
        assert!(since(&room, before).is_some());
        assert!(since(&room, after).is_none());
        assert!(since(other, before).is_none());
        // As if the receipt had been dropped from the recent rooms (or stored before
        // this process started): the log is read again for positions before that.
        s.rooms.typing.receipt_rooms.lock().unwrap().clear();
        s.rooms
            .typing
            .receipts_complete_after
            .store(after, Ordering::SeqCst);
        assert!(since(&room, before).is_some(), "read from the log");
        assert!(since(&room, after).is_none());
    }
}
