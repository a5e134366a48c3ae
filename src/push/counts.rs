//! Unread notification and highlight counts per room, cached per read position.

use std::collections::HashMap;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{
    store::{record_for, record_key},
    PushService,
};
use crate::Result;

/// Unread counts per room and user as of a read position: `(read_pos, notify,
/// highlight)`.
pub(super) type UnreadCache = HashMap<OwnedRoomId, HashMap<OwnedUserId, (u64, u64, u64)>>;

impl PushService {
    /// `(notification_count, highlight_count)` of a room: notifying events after the
    /// user's read receipt.
    pub fn unread_counts(&self, user: &UserId, room_id: &RoomId) -> Result<(u64, u64)> {
        // Wiped history counts as read.
        let read = self
            .rooms
            .own_read_pos(room_id, user)?
            .unwrap_or(0)
            .max(self.rooms.wiped_until(room_id, user)?);
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(at, notify, highlight)) = unread.get(room_id).and_then(|r| r.get(user)) {
            if at == read {
                return Ok((notify, highlight));
            }
        }
        let (notify, highlight) = self.count_unread(user, room_id, read)?;
        unread
            .entry(room_id.to_owned())
            .or_default()
            .insert(user.to_owned(), (read, notify, highlight));
        Ok((notify, highlight))
    }

    /// Counts the stored records naming `user` after the read position `read`.
    pub(super) fn count_unread(
        &self,
        user: &UserId,
        room_id: &RoomId,
        read: u64,
    ) -> Result<(u64, u64)> {
        let from = record_key(room_id, read.saturating_add(1));
        let to = record_key(room_id, u64::MAX);
        let (mut notify, mut highlight) = (0, 0);
        for kv in self.storage.trees.event_push.range(&from, &to, false) {
            let (_, v) = kv?;
            if let Some(record) = record_for(&v, user) {
                notify += 1;
                highlight += u64::from(record.highlight);
            }
        }
        Ok((notify, highlight))
    }

    pub(super) fn total_unread(&self, user: &UserId) -> Result<u64> {
        let mut total = 0;
        for room in self.rooms.joined_rooms(user)? {
            total += self.unread_counts(user, &room)?.0;
        }
        Ok(total)
    }
}
