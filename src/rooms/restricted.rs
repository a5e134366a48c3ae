//! Restricted joins (join rules `restricted` and `knock_restricted`, room versions 8+): a
//! user who is neither joined nor invited may join only while joined to one of the rooms
//! the join rules' `allow` list names, and the join must name, in
//! `join_authorised_via_users_server`, a joined local member who may invite. The auth rules
//! check only the second part; this policy checks both, and fills in the authorising
//! member for joins that do not name one.

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};

use super::{append::NewEvent, members::Membership, RoomsService};
use crate::{events::rules_for, Error, Result};

/// The content key naming the member who authorised a restricted join.
const AUTHORISED_VIA: &str = "join_authorised_via_users_server";

impl RoomsService {
    /// Checks a member event against the room's restricted join rules before it is built:
    /// a join by someone neither joined nor invited is refused with 403 unless they are
    /// joined to an allowed room, and gets a local authorising member filled in.
    /// Every other event passes unchanged.
    pub(super) fn restricted_join_policy(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        mut event: NewEvent,
    ) -> Result<NewEvent> {
        if event.kind != "m.room.member"
            || event.state_key.as_deref() != Some(sender.as_str())
            || Membership::from_content(&event.content) != Membership::Join
        {
            return Ok(event);
        }
        let Some(join_rules) = self.state_content(room_id, "m.room.join_rules", "")? else {
            return Ok(event);
        };
        let rules = rules_for(&self.room_version(room_id)?)?.authorization;
        let restricted = match join_rules.get("join_rule").and_then(Value::as_str) {
            Some("restricted") => rules.restricted_join_rule,
            Some("knock_restricted") => rules.knock_restricted_join_rule,
            _ => false,
        };
        if !restricted
            || matches!(
                self.membership(room_id, sender)?,
                Some(Membership::Join | Membership::Invite)
            )
        {
            // Not a restricted join (the auth rules decide the rest).
            return Ok(event);
        }
        if !self.in_allowed_room(&join_rules, sender)? {
            return Err(Error::forbidden(
                "You are not a member of any room this room's join rules allow",
            ));
        }
        let authoriser = match event.content.get(AUTHORISED_VIA) {
            Some(named) => {
                let named = named
                    .as_str()
                    .and_then(|u| UserId::parse(u).ok())
                    .ok_or_else(|| Error::bad_json(format!("{AUTHORISED_VIA} is not a user id")))?;
                if !self.can_authorise_join(room_id, &named)? {
                    return Err(Error::forbidden(format!(
                        "{named} cannot authorise joins to this room"
                    )));
                }
                named
            }
            None => self.join_authoriser(room_id)?.ok_or_else(|| {
                Error::forbidden("No member of this room here can authorise your join")
            })?,
        };
        event.content[AUTHORISED_VIA] = json!(authoriser);
        Ok(event)
    }

    /// Whether `user` is joined to a room named by an `m.room_membership` entry of the
    /// join rules' `allow` list.
    fn in_allowed_room(&self, join_rules: &Value, user: &UserId) -> Result<bool> {
        let allow = join_rules.get("allow").and_then(Value::as_array);
        for entry in allow.into_iter().flatten() {
            if entry.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Some(allowed) = entry
                .get("room_id")
                .and_then(Value::as_str)
                .and_then(|r| RoomId::parse(r).ok())
            else {
                continue;
            };
            if self.membership(&allowed, user)? == Some(Membership::Join) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `user` is a joined member of this server with the power to invite.
    fn can_authorise_join(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        Ok(user.server_name() == self.server_name()
            && self.membership(room_id, user)? == Some(Membership::Join)
            && {
                let power = self.power_levels(room_id)?;
                power.user_level(user) >= power.invite
            })
    }

    /// A joined local member who may invite: the most powerful one (ties by user id).
    fn join_authoriser(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        let power = self.power_levels(room_id)?;
        let members = self.members(room_id)?;
        Ok(members
            .joined()
            .filter(|u| u.server_name() == self.server_name())
            .map(|u| (power.user_level(u), u))
            .filter(|(level, _)| *level >= power.invite)
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, u)| u.to_owned()))
    }
}
