//! What `createRoom` does differently for groups and virtual rooms: a virtual room needs
//! a name, and both start with the server's power levels whatever the request's
//! `power_level_content_override` (or preset) says. Upgrades are not offered for them:
//! the replacement room would need power levels the rules forbid.

use ruma::{RoomId, UserId};
use serde_json::{json, Value};

use super::{MODERATOR_LEVEL, OWNER_LEVEL};
use crate::{
    rooms::{CreateRoom, RoomKind, RoomsService},
    Error, Result,
};

/// The kind a `createRoom` request asks for (`creation_content.type`).
pub(in crate::rooms) fn requested_kind(req: &CreateRoom) -> RoomKind {
    RoomKind::from_type(
        req.creation_content
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str),
    )
}

/// Refuses a `createRoom` request its kind does not allow, before anything is written:
/// a virtual room without a name (the `name` field or an `m.room.name` in
/// `initial_state`) gets 400 `M_INVALID_PARAM`.
pub(in crate::rooms) fn check_create(req: &CreateRoom) -> Result<()> {
    if requested_kind(req) != RoomKind::VirtualRoom {
        return Ok(());
    }
    let named = |name: Option<&str>| name.is_some_and(|n| !n.trim().is_empty());
    let in_initial_state = req.initial_state.iter().any(|(kind, key, content)| {
        kind == "m.room.name" && key.is_empty() && named(content["name"].as_str())
    });
    if named(req.name.as_deref()) || in_initial_state {
        Ok(())
    } else {
        Err(Error::invalid_param(
            "A virtual room needs a name: set `name` in the createRoom request",
        ))
    }
}

/// The power levels a group or virtual room starts with, from the default `levels` of a
/// new room: the creator is the owner (100) and alone at that level; kicking, banning,
/// redacting others' events and state need 50; anyone may talk (`events_default` 0);
/// moderators change member levels (`m.room.power_levels` 50, within the rules of
/// [`super::power`]); inviting needs 50 in a virtual room and nothing in a group. `None`
/// for a conversation, which keeps the request's levels.
pub(in crate::rooms) fn initial_power_levels(
    req: &CreateRoom,
    creator: &UserId,
    levels: &Value,
) -> Option<Value> {
    let invite = match requested_kind(req) {
        RoomKind::Conversation => return None,
        RoomKind::Group => 0,
        RoomKind::VirtualRoom => MODERATOR_LEVEL,
    };
    let mut events = levels["events"].as_object().cloned().unwrap_or_default();
    events.insert("m.room.power_levels".into(), json!(MODERATOR_LEVEL));
    Some(json!({
        "users": { creator.as_str(): OWNER_LEVEL },
        "users_default": 0,
        "events": events,
        "events_default": 0,
        "state_default": MODERATOR_LEVEL,
        "ban": MODERATOR_LEVEL,
        "kick": MODERATOR_LEVEL,
        "redact": MODERATOR_LEVEL,
        "invite": invite,
        "notifications": { "room": MODERATOR_LEVEL },
    }))
}

impl RoomsService {
    /// Refuses to upgrade a group or virtual room (403): its replacement would have to
    /// copy levels and restrict the old room in ways its rules forbid.
    pub(in crate::rooms) fn check_kind_allows_upgrade(&self, room_id: &RoomId) -> Result<()> {
        match RoomKind::of(&self.room(room_id)?) {
            RoomKind::Conversation => Ok(()),
            kind => Err(Error::forbidden(format!(
                "A {} cannot be upgraded to another room version",
                match kind {
                    RoomKind::Group => "group",
                    _ => "virtual room",
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn request(kind: Option<&str>, name: Option<&str>) -> CreateRoom {
        let mut creation = Map::new();
        if let Some(kind) = kind {
            creation.insert("type".into(), json!(kind));
        }
        CreateRoom {
            name: name.map(str::to_owned),
            creation_content: Some(creation),
            ..Default::default()
        }
    }

    #[test]
    fn virtual_rooms_need_a_name() {
        let vr = Some(crate::rooms::VIRTUAL_ROOM_TYPE);
        assert!(check_create(&request(vr, Some("Lobby"))).is_ok());
        for name in [None, Some(""), Some("   ")] {
            let err = check_create(&request(vr, name)).unwrap_err();
            assert_eq!(err.errcode(), "M_INVALID_PARAM");
        }
        let mut named_in_state = request(vr, None);
        named_in_state.initial_state = vec![(
            "m.room.name".into(),
            String::new(),
            json!({"name": "Lobby"}),
        )];
        assert!(check_create(&named_in_state).is_ok());
        assert!(check_create(&request(None, None)).is_ok());
        assert!(check_create(&request(Some(crate::rooms::GROUP_TYPE), None)).is_ok());
    }

    #[test]
    fn kinds_get_the_server_levels() {
        let creator = ruma::user_id!("@owner:x");
        let defaults = json!({"events": {"m.room.name": 50, "m.room.power_levels": 100}});
        assert!(initial_power_levels(&request(None, None), creator, &defaults).is_none());
        let vr = initial_power_levels(
            &request(Some(crate::rooms::VIRTUAL_ROOM_TYPE), Some("x")),
            creator,
            &defaults,
        )
        .unwrap();
        assert_eq!(vr["users"], json!({"@owner:x": 100}));
        assert_eq!(vr["invite"], 50);
        assert_eq!(vr["events"]["m.room.power_levels"], 50);
        assert_eq!(vr["events"]["m.room.name"], 50);
        let group = initial_power_levels(
            &request(Some(crate::rooms::GROUP_TYPE), None),
            creator,
            &defaults,
        )
        .unwrap();
        assert_eq!(group["invite"], 0);
        assert_eq!(group["events_default"], 0);
    }
}
