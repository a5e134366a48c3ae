//! The rules of groups and virtual rooms (DESIGN.md §1), enforced by the server on every
//! event whoever sends it, so that any Matrix client sees them through standard events
//! (`m.room.power_levels`, refusals with Matrix errors):
//!
//! - [`create`]: the power levels a group or virtual room starts with (the server's,
//!   whatever `power_level_content_override` says) and the virtual room's required name;
//! - [`power`]: which `m.room.power_levels` changes are allowed, and what a member
//!   muted by text mute is told;
//! - [`members`]: the owner cannot be kicked or banned, the last moderator of a virtual
//!   room cannot leave other members behind, a group holds at most `groups.max_members`;
//! - [`roles`]: owner and moderators as `/roles` reports them, and text mute.
//!
//! Roles: the **owner** is the room's creator (the `m.room.create` sender), at level 100
//! and the only user ever at 100; **moderators** are members at level 50 or more.
//! Conversations keep the plain Matrix rules.

mod create;
mod members;
mod power;
mod roles;

use std::sync::Arc;

use ruma::{OwnedUserId, RoomId};

pub(in crate::rooms) use self::create::{check_create, initial_power_levels};
pub use self::roles::RoomRoles;
use super::{RoomGuard, RoomKind, RoomPolicy, RoomsService};
use crate::Result;

/// The owner's level: the room creator's, and nobody else's ever.
pub const OWNER_LEVEL: i64 = 100;

/// The level from which a member is a moderator.
pub const MODERATOR_LEVEL: i64 = 50;

/// A change the server makes itself, marked on the room guard it holds while it appends
/// the event: the policies let exactly this change through. Only code inside `rooms`
/// sets it, so the same event sent by a client is still judged by the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::rooms) enum ServerAction {
    /// Text mute: an `m.room.power_levels` event whose only change is `events_default`,
    /// to this value.
    TextMute {
        /// The new `events_default`.
        events_default: i64,
    },
    /// The server itself removes a member (a deactivated account leaving its rooms; a
    /// room being deleted): neither the last-moderator rule nor the owner's protection
    /// holds it back.
    Departure,
}

impl RoomGuard {
    /// Marks the event about to be appended under this guard as the server's own change.
    pub(in crate::rooms) fn set_server_action(&mut self, action: ServerAction) {
        self.server_action = Some(action);
    }

    /// The server's own change marked on this guard, if any.
    pub(in crate::rooms) fn server_action(&self) -> Option<ServerAction> {
        self.server_action
    }
}

/// The policies of groups and virtual rooms, for [`RoomsService::new`]; a group holds at
/// most `group_max_members` users, joined or invited.
pub fn kind_policies(group_max_members: usize) -> Vec<Arc<dyn RoomPolicy>> {
    vec![
        Arc::new(power::PowerLevelsPolicy),
        Arc::new(power::MutedMessages),
        Arc::new(members::OwnerProtection),
        Arc::new(members::LastModerator),
        Arc::new(members::GroupCap {
            max_members: group_max_members,
        }),
    ]
}

impl RoomsService {
    /// The room's creator: the sender of `m.room.create`.
    pub(in crate::rooms) fn creator(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        Ok(self
            .state_event_str(room_id, "m.room.create", "")?
            .map(|pdu| pdu.sender.clone()))
    }

    /// The owner of a group or virtual room (its creator); `None` for a conversation.
    pub fn room_owner(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        match RoomKind::of(&self.room(room_id)?) {
            RoomKind::Conversation => Ok(None),
            RoomKind::Group | RoomKind::VirtualRoom => self.creator(room_id),
        }
    }
}
