//! Join links: a moderator's link to a room's meeting (`{public_base_url}/meet/{token}`),
//! what the link shows before joining (the lobby), and joining by link as a temporary
//! participant.

use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;
use serde_json::{json, Value};

use super::{store::TemporaryRecord, LinkRecord, MeetingsService, TEMPORARY_KEY};
use crate::{
    rooms::{Membership, NewEvent, RoomKind},
    users::{now_ms, Session},
    Error, Result,
};

/// Length of a join link token (alphanumeric: about 143 bits).
const TOKEN_LEN: usize = 24;
/// Longest display name chosen at join, in characters.
const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// A room's join link.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JoinLink {
    /// The secret token.
    pub token: String,
    /// `{public_base_url}/meet/{token}`.
    pub url: String,
}

/// Checks a display name chosen at join: 1 to 64 characters, no control characters.
pub(super) fn check_display_name(name: &str) -> Result<()> {
    let count = name.chars().count();
    if count == 0 || count > MAX_DISPLAY_NAME_CHARS || name.trim().is_empty() {
        return Err(Error::invalid_param(format!(
            "display_name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid_param(
            "display_name must not contain control characters",
        ));
    }
    Ok(())
}

impl MeetingsService {
    /// The URL of a join link token.
    pub fn link_url(&self, token: &str) -> String {
        format!("{}/meet/{token}", self.config.base_url())
    }

    /// The room's link URL, if it has a link.
    pub fn room_link_url(&self, room_id: &RoomId) -> Result<Option<String>> {
        Ok(self
            .store
            .room_token(room_id)?
            .map(|token| self.link_url(&token)))
    }

    /// The room's join link, made now if it has none (not yet durable).
    pub(super) fn ensure_link(&self, room_id: &RoomId, created_by: &UserId) -> Result<JoinLink> {
        let token = match self.store.room_token(room_id)? {
            Some(token) => token,
            None => {
                let fresh: String = rand::thread_rng()
                    .sample_iter(&Alphanumeric)
                    .take(TOKEN_LEN)
                    .map(char::from)
                    .collect();
                let record = LinkRecord {
                    room_id: room_id.to_owned(),
                    created_by: created_by.to_owned(),
                    created_ts: now_ms(),
                };
                self.store.install_link(&fresh, &record)?
            }
        };
        Ok(JoinLink {
            url: self.link_url(&token),
            token,
        })
    }

    /// A new virtual room's link, made by its creator (see the `meetings` consumer).
    pub async fn link_new_room(&self, room_id: &RoomId, creator: &UserId) -> Result<()> {
        if RoomKind::of(&self.rooms.room(room_id)?) == RoomKind::VirtualRoom {
            self.ensure_link(room_id, creator)?;
            self.store.durable().await?;
        }
        Ok(())
    }

    /// `POST …/rooms/{roomId}/join_link`: a moderator gets the room's link (the current
    /// one, or a new one when there is none).
    pub async fn join_link(&self, room_id: &RoomId, user: &UserId) -> Result<JoinLink> {
        self.check_moderator(room_id, user)?;
        let link = self.ensure_link(room_id, user)?;
        self.store.durable().await?;
        Ok(link)
    }

    /// `DELETE …/rooms/{roomId}/join_link`: a moderator revokes the link; its token then
    /// answers 404.
    pub async fn revoke_link(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        self.check_moderator(room_id, user)?;
        self.store.remove_link(room_id)?;
        self.store.durable().await
    }

    /// The live link of a token, 404 otherwise (unknown, revoked, or its room gone).
    fn resolve(&self, token: &str) -> Result<LinkRecord> {
        let record = self
            .store
            .link(token)?
            .ok_or_else(|| Error::not_found("Unknown or revoked join link"))?;
        if !self.rooms.exists(&record.room_id)? {
            return Err(Error::not_found("Unknown or revoked join link"));
        }
        Ok(record)
    }

    /// What a lobby shows for a link: the room's id, name, topic, avatar and kind and
    /// whether its call is on — nothing about its members.
    pub fn lobby(&self, token: &str) -> Result<Value> {
        let record = self.resolve(token)?;
        let room_id = &record.room_id;
        let field = |kind: &str, key: &str| -> Result<Value> {
            Ok(self
                .rooms
                .state_content(room_id, kind, "")?
                .and_then(|c| c.get(key).filter(|v| v.is_string()).cloned())
                .unwrap_or(Value::Null))
        };
        let participants = self.rtc.call_members(room_id)?.len();
        Ok(json!({
            "room_id": room_id,
            "name": field("m.room.name", "name")?,
            "topic": field("m.room.topic", "topic")?,
            "avatar_url": field("m.room.avatar", "url")?,
            "kind": RoomKind::of(&self.rooms.room(room_id)?).as_str(),
            "call": { "active": participants > 0, "participants": participants },
        }))
    }

    /// Who lets a temporary participant in (the invite before the join): the link's
    /// maker, else the owner, else the highest joined member allowed to invite.
    fn authoriser(&self, room_id: &RoomId, link: &LinkRecord) -> Result<OwnedUserId> {
        let levels = self.rooms.power_levels(room_id)?;
        let members = self.rooms.members(room_id)?;
        let may_invite = |u: &UserId| {
            members.get(u) == Some(Membership::Join) && levels.user_level(u) >= levels.invite
        };
        if may_invite(&link.created_by) {
            return Ok(link.created_by.clone());
        }
        if let Some(owner) = self.rooms.room_owner(room_id)? {
            if may_invite(&owner) {
                return Ok(owner);
            }
        }
        members
            .joined()
            .filter(|u| may_invite(u))
            .max_by_key(|u| levels.user_level(u))
            .map(ToOwned::to_owned)
            .ok_or_else(|| Error::forbidden("Nobody who may let you in is in this room right now"))
    }

    /// `POST …/join/{token}`: the caller joins the link's room as a temporary participant
    /// (member event with `io.myelin.temporary: true`); a local user already joined or
    /// invited joins normally. Guests must choose a display name.
    #[tracing::instrument(skip(self, token, session), fields(user = %session.user_id))]
    pub async fn join_by_link(
        &self,
        token: &str,
        session: &Session,
        display_name: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let link = self.resolve(token)?;
        let room_id = link.room_id.clone();
        let user = &session.user_id;
        if let Some(name) = display_name {
            check_display_name(name)?;
        } else if session.is_guest {
            return Err(Error::missing_param(
                "Guests must choose a display_name to join",
            ));
        }
        let (profile_name, avatar) = self.users.profile(user)?;
        match self.rooms.membership(&room_id, user)? {
            Some(Membership::Join) => return Ok(room_id),
            Some(Membership::Ban) => return Err(Error::forbidden("You are banned from this room")),
            Some(Membership::Invite) if !session.is_guest => {
                let profile = crate::rooms::MemberProfile {
                    displayname: display_name.map(str::to_owned).or(profile_name),
                    avatar_url: avatar,
                };
                self.rooms.join(&room_id, user, &profile, None).await?;
                return Ok(room_id);
            }
            _ => {}
        }
        if session.is_guest {
            self.users
                .set_displayname(user, display_name.map(str::to_owned))?;
        }
        let displayname = display_name.map(str::to_owned).or(profile_name);
        // Watched from now on, so a participant who never joins the call is removed.
        self.store.put_temporary(
            &room_id,
            user,
            &TemporaryRecord {
                since_ms: now_ms(),
                in_call: false,
                guest: session.is_guest,
            },
        )?;
        if let Err(e) = self
            .join_temporarily(&room_id, &link, user, displayname, avatar)
            .await
        {
            self.store.remove_temporary(&room_id, user)?;
            return Err(e);
        }
        Ok(room_id)
    }

    async fn join_temporarily(
        &self,
        room_id: &RoomId,
        link: &LinkRecord,
        user: &UserId,
        displayname: Option<String>,
        avatar: Option<String>,
    ) -> Result<()> {
        let mut content = json!({ "membership": "join", TEMPORARY_KEY: true });
        if let Some(name) = &displayname {
            content["displayname"] = json!(name);
        }
        if let Some(avatar) = &avatar {
            content["avatar_url"] = json!(avatar);
        }
        let join_rule = self
            .rooms
            .state_content(room_id, "m.room.join_rules", "")?
            .and_then(|c| c["join_rule"].as_str().map(str::to_owned));
        if join_rule.as_deref() != Some("public")
            && self.rooms.membership(room_id, user)? != Some(Membership::Invite)
        {
            // The link stands for a moderator's invitation: the auth rules see one.
            let authoriser = self.authoriser(room_id, link)?;
            let mut invite = json!({
                "membership": "invite",
                "reason": "Joined by link",
                TEMPORARY_KEY: true,
            });
            if let Some(name) = &displayname {
                invite["displayname"] = json!(name);
            }
            let guard = self.rooms.lock(room_id).await;
            self.rooms
                .send(
                    guard,
                    &authoriser,
                    NewEvent::state("m.room.member", user.as_str(), invite),
                )
                .await?;
        }
        let guard = self.rooms.lock(room_id).await;
        self.rooms
            .send(
                guard,
                user,
                NewEvent::state("m.room.member", user.as_str(), content),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_chosen_at_join() {
        for ok in ["Ann", "Zoë Müller", &"x".repeat(64), "日本語"] {
            check_display_name(ok).unwrap();
        }
        for bad in [
            "",
            "   ",
            &"x".repeat(65),
            "a\u{7}b",
            "line\nbreak",
            "tab\t",
        ] {
            assert_eq!(
                check_display_name(bad).unwrap_err().errcode(),
                "M_INVALID_PARAM",
                "{bad:?}"
            );
        }
    }
}
