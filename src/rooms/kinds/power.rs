//! Power-level changes in groups and virtual rooms. Only members' levels change, and only
//! this way:
//!
//! - a moderator (≥ 50) may raise any member (joined or invited) to 50, no higher;
//! - only the owner may lower a moderator;
//! - nobody may raise anyone to 100 or change the owner's level;
//! - nobody may change the thresholds (`events_default`, `invite`, `events`, …): the one
//!   change the server makes itself is text mute's `events_default`
//!   ([`ServerAction::TextMute`]).
//!
//! [`MutedMessages`] explains refusals while text mute is on. The spec's auth rules apply
//! too (a sender needs the `m.room.power_levels` level and cannot touch levels at or
//! above their own).

use std::collections::BTreeSet;

use ruma::UserId;
use serde_json::{Map, Value};

use super::{ServerAction, MODERATOR_LEVEL, OWNER_LEVEL};
use crate::{
    events::Pdu,
    rooms::{Membership, RoomGuard, RoomKind, RoomPolicy, RoomRecord, RoomsService},
    Error, Result,
};

/// The [`RoomPolicy`] judging `m.room.power_levels` events in groups and virtual rooms.
pub(super) struct PowerLevelsPolicy;

impl RoomPolicy for PowerLevelsPolicy {
    fn name(&self) -> &'static str {
        "kind_power_levels"
    }

    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if RoomKind::of(room) == RoomKind::Conversation
            || !event.is_state("m.room.power_levels")
            || event.state_key.as_deref() != Some("")
        {
            return Ok(());
        }
        let room_id = guard.room_id();
        // The first levels are the server's own, set by createRoom.
        let Some(current) = rooms.state_content(room_id, "m.room.power_levels", "")? else {
            return Ok(());
        };
        let new = event.content_value();
        if let Some(ServerAction::TextMute { events_default }) = guard.server_action() {
            if is_text_mute(&current, &new, events_default) {
                return Ok(());
            }
        }
        let owner = rooms.creator(room_id)?;
        let members = rooms.members(room_id)?;
        judge(&current, &new, &event.sender, owner.as_deref(), |user| {
            matches!(
                UserId::parse(user).ok().and_then(|u| members.get(&u)),
                Some(Membership::Join | Membership::Invite)
            )
        })
    }
}

/// While text mute is on (`events_default` at moderator level) in a group or virtual
/// room, a member's message gets a refusal that says so; the auth rules would refuse it
/// anyway, with "not enough power".
pub(super) struct MutedMessages;

impl RoomPolicy for MutedMessages {
    fn name(&self) -> &'static str {
        "kind_muted_messages"
    }

    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if RoomKind::of(room) == RoomKind::Conversation || event.state_key.is_some() {
            return Ok(());
        }
        let power = rooms.power_levels(guard.room_id())?;
        let kind = event.kind.to_string();
        if power.event_level(&kind, false) >= MODERATOR_LEVEL
            && power.event_level("m.room.message", false) >= MODERATOR_LEVEL
            && power.user_level(&event.sender) < power.event_level(&kind, false)
        {
            return Err(Error::forbidden(
                "A moderator has muted messages in this room: only moderators can write \
                 until they unmute it",
            ));
        }
        Ok(())
    }
}

/// Reads a level (the spec allows integers and, in old rooms, numeric strings).
fn level(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Everything but `users`: the thresholds.
fn thresholds(content: &Value) -> Map<String, Value> {
    let mut map = content.as_object().cloned().unwrap_or_default();
    map.remove("users");
    map
}

/// Whether `new` is `current` with `events_default` set to `value` and nothing else
/// changed.
fn is_text_mute(current: &Value, new: &Value, value: i64) -> bool {
    let (mut before, mut after) = (current.clone(), new.clone());
    for content in [&mut before, &mut after] {
        if let Some(map) = content.as_object_mut() {
            map.remove("events_default");
        }
    }
    before == after && new.get("events_default").and_then(level) == Some(value)
}

/// Judges a change of power levels from `current` to `new` by `sender`; `is_member` tells
/// whether a user is joined or invited.
pub(super) fn judge(
    current: &Value,
    new: &Value,
    sender: &UserId,
    owner: Option<&UserId>,
    is_member: impl Fn(&str) -> bool,
) -> Result<()> {
    if thresholds(current) != thresholds(new) {
        return Err(Error::forbidden(
            "The permission thresholds of this room are set by the server: only members' \
             levels can change (use text mute to mute or unmute everyone)",
        ));
    }
    let users = |content: &Value| -> Map<String, Value> {
        content["users"].as_object().cloned().unwrap_or_default()
    };
    let (before, after) = (users(current), users(new));
    let default = current.get("users_default").and_then(level).unwrap_or(0);
    let level_in = |map: &Map<String, Value>, user: &str| -> i64 {
        map.get(user).and_then(level).unwrap_or(default)
    };
    let sender_level = level_in(&before, sender.as_str());
    let named: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for user in named {
        let (old, new) = (level_in(&before, user), level_in(&after, user));
        if old == new {
            continue;
        }
        if owner.is_some_and(|o| o.as_str() == user) {
            return Err(Error::forbidden(
                "The owner's power level cannot be changed",
            ));
        }
        if new >= OWNER_LEVEL {
            return Err(Error::forbidden(
                "Nobody can be raised to 100: the owner is the only user at that level",
            ));
        }
        if new > MODERATOR_LEVEL {
            return Err(Error::forbidden(format!(
                "Members can be raised to moderator ({MODERATOR_LEVEL}) and no higher"
            )));
        }
        if new < old && old >= MODERATOR_LEVEL && owner.is_none_or(|o| o != sender) {
            return Err(Error::forbidden("Only the owner may lower a moderator"));
        }
        if new > old {
            if sender_level < MODERATOR_LEVEL {
                return Err(Error::forbidden("Only moderators may promote members"));
            }
            if !is_member(user) {
                return Err(Error::forbidden(format!(
                    "{user} is not a member of this room: only members can be promoted"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ruma::user_id;
    use serde_json::json;

    use super::*;

    fn levels(users: Value) -> Value {
        json!({
            "users": users, "users_default": 0, "events_default": 0, "state_default": 50,
            "invite": 50, "kick": 50, "ban": 50, "redact": 50,
            "events": {"m.room.power_levels": 50, "m.room.name": 50},
        })
    }

    fn errcode(r: Result<()>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.errcode(),
        }
    }

    #[test]
    fn member_levels_follow_the_roles() {
        let owner = user_id!("@o:x");
        let moderator = user_id!("@m:x");
        let member = user_id!("@b:x");
        let everyone = |_: &str| true;
        let current = levels(json!({"@o:x": 100, "@m:x": 50}));
        let judge_as = |sender, new: Value| judge(&current, &new, sender, Some(owner), everyone);
        // a moderator promotes a member to 50, not to 100 or 75
        assert_eq!(
            errcode(judge_as(
                moderator,
                levels(json!({"@o:x": 100, "@m:x": 50, "@b:x": 50}))
            )),
            "ok"
        );
        for level in [100, 75] {
            assert_eq!(
                errcode(judge_as(
                    moderator,
                    levels(json!({"@o:x": 100, "@m:x": 50, "@b:x": level}))
                )),
                "M_FORBIDDEN"
            );
        }
        // only the owner demotes a moderator (also by removing the entry)
        assert_eq!(
            errcode(judge_as(moderator, levels(json!({"@o:x": 100, "@m:x": 0})))),
            "M_FORBIDDEN"
        );
        assert_eq!(errcode(judge_as(owner, levels(json!({"@o:x": 100})))), "ok");
        // nobody changes the owner, not even the owner
        assert_eq!(
            errcode(judge_as(owner, levels(json!({"@o:x": 50, "@m:x": 50})))),
            "M_FORBIDDEN"
        );
        // members do not promote
        assert_eq!(
            errcode(judge_as(
                member,
                levels(json!({"@o:x": 100, "@m:x": 50, "@b:x": 50}))
            )),
            "M_FORBIDDEN"
        );
        // thresholds are the server's
        let mut muted = current.clone();
        muted["events_default"] = json!(50);
        assert_eq!(errcode(judge_as(owner, muted.clone())), "M_FORBIDDEN");
        assert!(is_text_mute(&current, &muted, 50));
        assert!(!is_text_mute(&current, &muted, 0));
        let mut muted_and_promoted = muted.clone();
        muted_and_promoted["users"]["@b:x"] = json!(50);
        assert!(!is_text_mute(&current, &muted_and_promoted, 50));
        // non-members are not promoted
        assert_eq!(
            errcode(judge(
                &current,
                &levels(json!({"@o:x": 100, "@m:x": 50, "@b:x": 50})),
                owner,
                Some(owner),
                |_| false
            )),
            "M_FORBIDDEN"
        );
        // an unchanged resend is fine
        assert_eq!(errcode(judge_as(moderator, current.clone())), "ok");
    }
}
