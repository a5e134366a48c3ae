//! Room kinds of the corporate model (DESIGN.md §1), read from `m.room.create`'s `type`:
//! conversations (no type), groups and virtual rooms. The rules each kind adds live in the
//! room policies; this module only names the kinds.

use super::RoomRecord;

/// The `m.room.create` type of a group: anyone creates, any member invites, capped in
/// size, purged when the last member leaves.
pub const GROUP_TYPE: &str = "io.myelin.group";

/// The `m.room.create` type of a virtual room: persistent, named, with an owner and
/// moderators whose power levels the server sets.
pub const VIRTUAL_ROOM_TYPE: &str = "io.myelin.virtual_room";

/// What kind of room a room is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomKind {
    /// A plain Matrix room or direct chat (no Myelin type).
    Conversation,
    /// `io.myelin.group`.
    Group,
    /// `io.myelin.virtual_room`.
    VirtualRoom,
}

impl RoomKind {
    /// The kind named by an `m.room.create` `type` (any other type, such as
    /// `m.space`, is a conversation as far as Myelin's rules go).
    pub fn from_type(room_type: Option<&str>) -> RoomKind {
        match room_type {
            Some(GROUP_TYPE) => RoomKind::Group,
            Some(VIRTUAL_ROOM_TYPE) => RoomKind::VirtualRoom,
            _ => RoomKind::Conversation,
        }
    }

    /// The kind of a stored room.
    pub fn of(room: &RoomRecord) -> RoomKind {
        RoomKind::from_type(room.room_type.as_deref())
    }

    /// The name the `io.myelin` endpoints use (`/roles` `kind`, `/unread` categories).
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Conversation => "conversation",
            RoomKind::Group => "group",
            RoomKind::VirtualRoom => "virtual_room",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_create_type() {
        assert_eq!(RoomKind::from_type(None), RoomKind::Conversation);
        assert_eq!(RoomKind::from_type(Some("m.space")), RoomKind::Conversation);
        assert_eq!(RoomKind::from_type(Some(GROUP_TYPE)), RoomKind::Group);
        assert_eq!(
            RoomKind::from_type(Some(VIRTUAL_ROOM_TYPE)),
            RoomKind::VirtualRoom
        );
        assert_eq!(RoomKind::VirtualRoom.as_str(), "virtual_room");
    }
}
