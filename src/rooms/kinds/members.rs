//! Membership rules of groups and virtual rooms, as [`RoomPolicy`]s on `m.room.member`
//! events:
//!
//! - [`OwnerProtection`]: nobody kicks or bans the owner (groups and virtual rooms);
//! - [`LastModerator`]: in a virtual room a moderator (owner included) leaves only when
//!   no other member is joined or another moderator is;
//! - [`GroupCap`]: a group holds at most `groups.max_members` users, joined or invited.

use serde_json::Value;

use super::{ServerAction, MODERATOR_LEVEL};
use crate::{
    events::Pdu,
    rooms::{Membership, RoomGuard, RoomKind, RoomPolicy, RoomRecord, RoomsService},
    Error, Result,
};

/// The target and new membership of a member event.
fn member_change(event: &Pdu) -> Option<(&str, Membership)> {
    if !event.is_state("m.room.member") {
        return None;
    }
    let content: Value = serde_json::from_str(event.content.get()).ok()?;
    Some((
        event.state_key.as_deref()?,
        Membership::from_content(&content),
    ))
}

/// Nobody kicks or bans the owner of a group or virtual room, whoever asks (the server
/// removing members itself, [`ServerAction::Departure`], is not asking).
pub(super) struct OwnerProtection;

impl RoomPolicy for OwnerProtection {
    fn name(&self) -> &'static str {
        "kind_owner_protection"
    }

    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if RoomKind::of(room) == RoomKind::Conversation
            || guard.server_action() == Some(ServerAction::Departure)
        {
            return Ok(());
        }
        let Some((target, membership)) = member_change(event) else {
            return Ok(());
        };
        let removal = match membership {
            Membership::Ban => true,
            // Leaving on one's own is not a kick.
            Membership::Leave => event.sender.as_str() != target,
            _ => false,
        };
        if removal
            && rooms
                .creator(guard.room_id())?
                .is_some_and(|owner| owner.as_str() == target)
        {
            return Err(Error::forbidden(
                "The owner of this room cannot be kicked or banned",
            ));
        }
        Ok(())
    }
}

/// In a virtual room, a moderator (owner included) may leave only when no other member is
/// joined or another moderator is joined: members are never left without one. A
/// deactivated account leaves regardless ([`ServerAction::Departure`]).
pub(super) struct LastModerator;

impl RoomPolicy for LastModerator {
    fn name(&self) -> &'static str {
        "kind_last_moderator"
    }

    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if RoomKind::of(room) != RoomKind::VirtualRoom
            || guard.server_action() == Some(ServerAction::Departure)
        {
            return Ok(());
        }
        let Some((target, Membership::Leave)) = member_change(event) else {
            return Ok(());
        };
        let room_id = guard.room_id();
        let leaver = &event.sender;
        if leaver.as_str() != target || rooms.membership(room_id, leaver)? != Some(Membership::Join)
        {
            return Ok(());
        }
        let power = rooms.power_levels(room_id)?;
        if power.user_level(leaver) < MODERATOR_LEVEL {
            return Ok(());
        }
        let members = rooms.members(room_id)?;
        let mut others = members.joined().filter(|u| *u != leaver).peekable();
        if others.peek().is_none() {
            return Ok(());
        }
        if others.any(|u| power.user_level(u) >= MODERATOR_LEVEL) {
            return Ok(());
        }
        Err(Error::forbidden(
            "You are the last moderator of this room: promote another member to moderator \
             before leaving",
        ))
    }
}

/// A group holds at most `max_members` users, joined or invited: the invite, join or
/// knock that would go over is refused.
pub(super) struct GroupCap {
    pub(super) max_members: usize,
}

impl RoomPolicy for GroupCap {
    fn name(&self) -> &'static str {
        "group_member_cap"
    }

    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if RoomKind::of(room) != RoomKind::Group {
            return Ok(());
        }
        let Some((target, membership)) = member_change(event) else {
            return Ok(());
        };
        if !matches!(
            membership,
            Membership::Invite | Membership::Join | Membership::Knock
        ) {
            return Ok(());
        }
        let members = rooms.members(guard.room_id())?;
        let counted =
            |m: Option<Membership>| matches!(m, Some(Membership::Join | Membership::Invite));
        let current = ruma::UserId::parse(target)
            .ok()
            .and_then(|u| members.get(&u));
        if counted(current) || current == Some(Membership::Ban) {
            // Already counted (an invite accepted, a profile change), or banned (the auth
            // rules refuse that).
            return Ok(());
        }
        let count = members.count(Membership::Join) + members.count(Membership::Invite);
        if count >= self.max_members {
            return Err(Error::forbidden(format!(
                "This group is full: a group has at most {} members, joined or invited",
                self.max_members
            )));
        }
        Ok(())
    }
}
