//! Roles as members see them (`/roles`) and the moderators' actions the server performs
//! on their behalf: text mute, and a deactivated account's departure.

use ruma::{OwnedUserId, RoomId, UserId};
use serde::Serialize;
use serde_json::json;

use super::{ServerAction, MODERATOR_LEVEL};
use crate::{
    rooms::{Membership, NewEvent, RoomKind, RoomsService},
    Error, Result,
};

/// A room's kind and roles (`GET …/io.myelin/rooms/{roomId}/roles`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RoomRoles {
    /// `conversation`, `group` or `virtual_room`.
    pub kind: &'static str,
    /// The owner of a group or virtual room (its creator); `null` for a conversation.
    pub owner: Option<OwnedUserId>,
    /// Joined members at level 50 or more, the owner excepted, sorted.
    pub moderators: Vec<OwnedUserId>,
    /// Joined members.
    pub members: usize,
    /// Invited users.
    pub invited: usize,
    /// A group's cap on joined plus invited users; `null` for other kinds.
    pub max_members: Option<usize>,
}

impl RoomsService {
    /// The kind and roles of a room, for a joined member (404 for an unknown room, 403
    /// for anyone else). `group_max_members` is the configured cap of groups.
    pub fn roles(
        &self,
        room_id: &RoomId,
        user: &UserId,
        group_max_members: usize,
    ) -> Result<RoomRoles> {
        let kind = RoomKind::of(&self.room(room_id)?);
        self.check_joined(room_id, user)?;
        let owner = self.room_owner(room_id)?;
        let power = self.power_levels(room_id)?;
        let members = self.members(room_id)?;
        let mut moderators: Vec<OwnedUserId> = members
            .joined()
            .filter(|u| owner.as_deref() != Some(*u))
            .filter(|u| power.user_level(u) >= MODERATOR_LEVEL)
            .map(ToOwned::to_owned)
            .collect();
        moderators.sort();
        Ok(RoomRoles {
            kind: kind.as_str(),
            owner,
            moderators,
            members: members.count(Membership::Join),
            invited: members.count(Membership::Invite),
            max_members: (kind == RoomKind::Group).then_some(group_max_members),
        })
    }

    /// Text mute for all: a joined moderator of a group or virtual room has the server set
    /// `events_default` to 50 (`muted`) or back to 0 in `m.room.power_levels`, sent as
    /// the moderator. Members below 50 can then send no messages (clients grey out their
    /// composer). Returns whether the levels changed (no event when already so).
    pub async fn set_text_mute(
        &self,
        room_id: &RoomId,
        moderator: &UserId,
        muted: bool,
    ) -> Result<bool> {
        let kind = RoomKind::of(&self.room(room_id)?);
        let mut guard = self.lock(room_id).await;
        self.check_joined(room_id, moderator)?;
        if kind == RoomKind::Conversation {
            return Err(Error::forbidden(
                "Text mute is for groups and virtual rooms; this room is a conversation",
            ));
        }
        if self.power_levels(room_id)?.user_level(moderator) < MODERATOR_LEVEL {
            return Err(Error::forbidden(
                "Only moderators may mute or unmute messages for everyone",
            ));
        }
        let events_default = if muted { MODERATOR_LEVEL } else { 0 };
        let mut content = self
            .state_content(room_id, "m.room.power_levels", "")?
            .unwrap_or_else(|| json!({}));
        if content.get("events_default").and_then(|v| v.as_i64()) == Some(events_default) {
            return Ok(false);
        }
        content["events_default"] = json!(events_default);
        guard.set_server_action(ServerAction::TextMute { events_default });
        let (_, pos) = self.append(
            &guard,
            moderator,
            NewEvent::state("m.room.power_levels", "", content),
        )?;
        drop(guard);
        self.wait_visible(pos).await?;
        Ok(true)
    }

    /// A deactivated account leaves a room it is in; the last-moderator rule does not
    /// hold it back.
    pub(in crate::rooms) async fn leave_on_deactivation(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<()> {
        let mut guard = self.lock(room_id).await;
        if !matches!(
            self.membership(room_id, user)?,
            Some(Membership::Join | Membership::Invite | Membership::Knock)
        ) {
            return Ok(());
        }
        guard.set_server_action(ServerAction::Departure);
        let content = json!({ "membership": "leave", "reason": "Account deactivated" });
        let (_, pos) = self.append(
            &guard,
            user,
            NewEvent::state("m.room.member", user.as_str(), content),
        )?;
        drop(guard);
        self.wait_visible(pos).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::{config::Config, rooms::CreateRoom, services::Services};

    #[tokio::test]
    async fn only_the_marked_guard_passes_a_threshold_change() {
        let s = Services::in_memory(Config::default()).unwrap();
        let rooms = &s.rooms;
        let alice = ruma::user_id!("@alice:localhost");
        let bob = ruma::user_id!("@bob:localhost");
        let mut creation = Map::new();
        creation.insert("type".into(), json!(crate::rooms::VIRTUAL_ROOM_TYPE));
        let room = rooms
            .create_room(
                alice,
                CreateRoom {
                    name: Some("Town hall".into()),
                    creation_content: Some(creation),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        rooms
            .invite(&room, alice, bob, None, false, None)
            .await
            .unwrap();
        rooms
            .join(&room, bob, &Default::default(), None)
            .await
            .unwrap();

        assert!(rooms.set_text_mute(&room, alice, true).await.unwrap());
        assert!(!rooms.set_text_mute(&room, alice, true).await.unwrap());
        let muted = rooms
            .state_content(&room, "m.room.power_levels", "")
            .unwrap()
            .unwrap();
        assert_eq!(muted["events_default"], 50);
        // the same unmute the endpoint would send, through a plain guard: refused
        let mut unmuted = muted.clone();
        unmuted["events_default"] = json!(0);
        let guard = rooms.lock(&room).await;
        let err = rooms
            .append(
                &guard,
                alice,
                NewEvent::state("m.room.power_levels", "", unmuted),
            )
            .unwrap_err();
        assert_eq!(err.errcode(), "M_FORBIDDEN");
        // a marker for another value does not pass it either
        let mut guard = guard;
        guard.set_server_action(ServerAction::TextMute { events_default: 25 });
        let mut other = muted.clone();
        other["events_default"] = json!(0);
        assert!(rooms
            .append(
                &guard,
                alice,
                NewEvent::state("m.room.power_levels", "", other)
            )
            .is_err());
        drop(guard);

        // the last moderator stays, unless the server removes them
        assert_eq!(
            rooms.leave(&room, alice, None).await.unwrap_err().errcode(),
            "M_FORBIDDEN"
        );
        rooms.leave_on_deactivation(&room, alice).await.unwrap();
        assert_eq!(
            rooms.membership(&room, alice).unwrap(),
            Some(Membership::Leave)
        );
    }
}
