//! Unread totals per room kind (`GET …/io.myelin/unread`), for a client's left column:
//! conversations, groups and virtual rooms, from the same per-room counts `/sync` reports
//! in `unread_notifications`.

use ruma::UserId;
use serde::Serialize;

use super::PushService;
use crate::{rooms::RoomKind, Result};

/// The unread totals of one kind of room.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UnreadTotals {
    /// Joined rooms with at least one unread notification.
    pub rooms: u64,
    /// Unread notifications (`notification_count`) summed over the rooms.
    pub notifications: u64,
    /// Unread highlights (`highlight_count`) summed over the rooms.
    pub highlights: u64,
}

/// Unread totals per room kind.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UnreadByKind {
    /// Rooms without a Myelin type (direct chats included).
    pub conversations: UnreadTotals,
    /// `io.myelin.group` rooms.
    pub groups: UnreadTotals,
    /// `io.myelin.virtual_room` rooms.
    pub virtual_rooms: UnreadTotals,
}

impl PushService {
    /// The user's unread totals per kind over the rooms they are joined to.
    pub fn unread_by_kind(&self, user: &UserId) -> Result<UnreadByKind> {
        let mut out = UnreadByKind::default();
        for room_id in self.rooms.joined_rooms(user)? {
            let Ok(room) = self.rooms.room(&room_id) else {
                continue;
            };
            let (notifications, highlights) = self.unread_counts(user, &room_id)?;
            let totals = match RoomKind::of(&room) {
                RoomKind::Conversation => &mut out.conversations,
                RoomKind::Group => &mut out.groups,
                RoomKind::VirtualRoom => &mut out.virtual_rooms,
            };
            totals.rooms += u64::from(notifications > 0);
            totals.notifications += notifications;
            totals.highlights += highlights;
        }
        Ok(out)
    }
}
