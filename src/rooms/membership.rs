//! Membership changes: join, invite, leave, kick, ban, unban, knock, forget, and profile
//! propagation into member events. The auth rules decide what is allowed.

use ruma::{OwnedRoomId, RoomId, RoomOrAliasId, UserId};
use serde_json::{json, Value};

use super::{append::NewEvent, members::Membership, RoomsService};
use crate::{
    storage::{keys, Batch},
    Error, Result,
};

/// A user's displayname and avatar, copied into their member events.
#[derive(Clone, Debug, Default)]
pub struct MemberProfile {
    /// Display name.
    pub displayname: Option<String>,
    /// Avatar mxc URI.
    pub avatar_url: Option<String>,
}

impl RoomsService {
    /// Resolves a room id or alias to a room id known here (404 otherwise).
    pub fn resolve_room(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        let room_id = match <&RoomId>::try_from(room) {
            Ok(id) => id.to_owned(),
            Err(alias) => self
                .resolve_alias(alias)?
                .ok_or_else(|| Error::not_found("Room alias not found"))?,
        };
        if !self.exists(&room_id)? {
            return Err(Error::not_found("No known room with that id"));
        }
        Ok(room_id)
    }

    /// Sends a member event for `target` with `membership` and extra content.
    async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: Membership,
        reason: Option<&str>,
        profile: Option<&MemberProfile>,
        extra: Option<Value>,
    ) -> Result<()> {
        if !self.exists(room_id)? {
            return Err(Error::not_found("Unknown room"));
        }
        let mut content = json!({ "membership": membership.as_str() });
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        if let Some(p) = profile {
            if let Some(d) = &p.displayname {
                content["displayname"] = json!(d);
            }
            if let Some(a) = &p.avatar_url {
                content["avatar_url"] = json!(a);
            }
        }
        if let (Some(Value::Object(extra)), Value::Object(c)) = (extra, &mut content) {
            c.extend(extra);
        }
        let guard = self.lock(room_id).await;
        self.send(
            guard,
            sender,
            NewEvent::state("m.room.member", target.as_str(), content),
        )
        .await?;
        Ok(())
    }

    /// `user` joins the room.
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: &MemberProfile,
        reason: Option<&str>,
    ) -> Result<()> {
        if self.membership(room_id, user)? == Some(Membership::Join) {
            // Re-joining refreshes the profile only if it changed; otherwise nothing to do.
            return Ok(());
        }
        self.set_membership(
            room_id,
            user,
            user,
            Membership::Join,
            reason,
            Some(profile),
            None,
        )
        .await
    }

    /// `sender` invites `target`.
    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
        target_profile: Option<&MemberProfile>,
    ) -> Result<()> {
        if self.membership(room_id, sender)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        match self.membership(room_id, target)? {
            Some(Membership::Join) => {
                return Err(Error::forbidden(format!("{target} is already in the room")))
            }
            Some(Membership::Ban) => {
                return Err(Error::forbidden(format!(
                    "{target} is banned from the room"
                )))
            }
            _ => {}
        }
        let extra = is_direct.then(|| json!({ "is_direct": true }));
        self.set_membership(
            room_id,
            sender,
            target,
            Membership::Invite,
            reason,
            target_profile,
            extra,
        )
        .await
    }

    /// `user` leaves (or rejects an invite, or withdraws a knock).
    pub async fn leave(&self, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<()> {
        match self.membership(room_id, user)? {
            Some(Membership::Join | Membership::Invite | Membership::Knock) => {}
            _ => return Err(Error::forbidden("You are not in this room")),
        }
        self.set_membership(room_id, user, user, Membership::Leave, reason, None, None)
            .await
    }

    /// `sender` kicks `target`.
    pub async fn kick(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        match self.membership(room_id, target)? {
            Some(Membership::Join | Membership::Invite | Membership::Knock) => {}
            _ => return Err(Error::forbidden(format!("{target} is not in the room"))),
        }
        self.set_membership(
            room_id,
            sender,
            target,
            Membership::Leave,
            reason,
            None,
            None,
        )
        .await
    }

    /// `sender` bans `target`.
    pub async fn ban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.set_membership(room_id, sender, target, Membership::Ban, reason, None, None)
            .await
    }

    /// `sender` lifts the ban on `target`.
    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        if self.membership(room_id, target)? != Some(Membership::Ban) {
            return Err(Error::forbidden(format!("{target} is not banned")));
        }
        self.set_membership(
            room_id,
            sender,
            target,
            Membership::Leave,
            reason,
            None,
            None,
        )
        .await
    }

    /// `user` knocks on the room.
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: &MemberProfile,
        reason: Option<&str>,
    ) -> Result<()> {
        if self.membership(room_id, user)? == Some(Membership::Join) {
            return Err(Error::forbidden("You are already in the room"));
        }
        self.set_membership(
            room_id,
            user,
            user,
            Membership::Knock,
            reason,
            Some(profile),
            None,
        )
        .await
    }

    /// `user` forgets a room they have left.
    pub fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self.membership(room_id, user)? {
            Some(Membership::Join | Membership::Invite | Membership::Knock) => Err(
                Error::bad_request("You must leave the room before forgetting it"),
            ),
            None => Err(Error::not_found("You have never been in this room")),
            Some(_) => {
                let mut batch = Batch::new();
                batch.insert(
                    &self.storage.trees.forgotten,
                    &keys::strs(&[user.as_str(), room_id.as_str()]),
                    b"",
                );
                self.storage.commit(batch)
            }
        }
    }

    /// Whether the user forgot the room.
    pub fn is_forgotten(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        self.storage
            .trees
            .forgotten
            .contains(&keys::strs(&[user.as_str(), room_id.as_str()]))
    }

    /// Copies a changed profile into the user's member event in every joined room.
    pub async fn update_profile_in_rooms(
        &self,
        user: &UserId,
        profile: &MemberProfile,
    ) -> Result<()> {
        for room_id in self.joined_rooms(user)? {
            let guard = self.lock(&room_id).await;
            let mut content = match self.state_content(&room_id, "m.room.member", user.as_str())? {
                Some(Value::Object(c)) => c,
                _ => continue,
            };
            for (key, value) in [
                ("displayname", &profile.displayname),
                ("avatar_url", &profile.avatar_url),
            ] {
                match value {
                    Some(v) => content.insert(key.into(), json!(v)),
                    None => content.remove(key),
                };
            }
            content.remove("reason");
            // Only the join itself needed an authorising member.
            content.remove("join_authorised_via_users_server");
            let event = NewEvent::state("m.room.member", user.as_str(), Value::Object(content));
            if let Err(e) = self.append(&guard, user, event) {
                tracing::warn!(room = %room_id, error = %e, "profile update not applied in room");
            }
        }
        self.wait_visible(self.applied_pos()).await
    }

    /// Makes a deactivated user leave every room they are in.
    pub async fn leave_all_rooms(&self, user: &UserId) -> Result<()> {
        for &(ref room_id, m, _) in self.user_rooms(user)?.iter() {
            if matches!(m, Membership::Join | Membership::Invite | Membership::Knock) {
                if let Err(e) = self.leave_on_deactivation(room_id, user).await {
                    tracing::warn!(room = %room_id, error = %e, "could not leave room on deactivation");
                }
            }
        }
        Ok(())
    }
}
