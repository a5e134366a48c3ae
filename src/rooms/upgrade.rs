//! Room upgrades (`/rooms/{roomId}/upgrade`): a new room of the requested version with
//! the old room's important state, a tombstone in the old room, local aliases moved, and
//! the old room restricted so conversation continues in the new one.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{
    append::NewEvent, create::CreateRoom, membership::MemberProfile, Membership, RoomsService,
};
use crate::{Error, Result};

/// State copied into the replacement room (Synapse's list).
const COPIED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

impl RoomsService {
    /// Upgrades `old` to `version` on behalf of `user`; returns the replacement room.
    pub async fn upgrade_room(
        &self,
        old: &RoomId,
        user: &UserId,
        version: &str,
        profile: MemberProfile,
    ) -> Result<OwnedRoomId> {
        if !self.exists(old)? {
            return Err(Error::not_found("Unknown room"));
        }
        if self.membership(old, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        self.check_kind_allows_upgrade(old)?;
        if crate::events::supported_room_version(version).is_none() {
            return Err(Error::matrix(
                crate::ErrorKind::Invalid,
                "M_UNSUPPORTED_ROOM_VERSION",
                format!("Room version {version} is not supported"),
            ));
        }
        let power = self.power_levels(old)?;
        if power.user_level(user) < power.event_level("m.room.tombstone", true) {
            return Err(Error::forbidden(
                "You do not have the power to upgrade this room",
            ));
        }

        let old_create = self
            .state_content(old, "m.room.create", "")?
            .unwrap_or_default();
        let last_event = self
            .last_event(old)?
            .ok_or_else(|| Error::internal("room without events"))?;
        let mut creation = Map::new();
        creation.insert(
            "predecessor".into(),
            json!({ "room_id": old, "event_id": last_event.event_id }),
        );
        if let Some(t) = old_create.get("type") {
            creation.insert("type".into(), t.clone());
        }
        let mut initial_state = Vec::new();
        for kind in COPIED_STATE {
            if let Some(content) = self.state_content(old, kind, "")? {
                initial_state.push(((*kind).to_owned(), String::new(), content));
            }
        }
        // The upgrader needs enough power to send the copied state; the old levels are
        // restored right after creation.
        let old_levels = self
            .state_content(old, "m.room.power_levels", "")?
            .unwrap_or_else(|| json!({}));
        let mut boosted = old_levels.as_object().cloned().unwrap_or_default();
        let mut users = boosted
            .get("users")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let needed = 100.max(power.user_level(user));
        users.insert(user.to_string(), json!(needed));
        boosted.insert("users".into(), Value::Object(users));

        // Readers see the upgrade whole: the new room, the moved aliases, the tombstone.
        let hold = self.hold_publication();
        let new_room = self
            .create_room_held(
                user,
                CreateRoom {
                    preset: Some("private_chat".into()),
                    visibility_public: false,
                    name: None,
                    topic: None,
                    invite: Vec::new(),
                    is_direct: false,
                    initial_state,
                    power_level_content_override: Some(boosted.clone()),
                    room_alias_name: None,
                    room_version: Some(version.to_owned()),
                    creation_content: Some(creation),
                    creator_profile: (profile.displayname, profile.avatar_url),
                },
            )
            .await?;

        let new_guard = self.lock(&new_room).await;
        if Value::Object(boosted) != old_levels && old_levels.is_object() {
            self.append(
                &new_guard,
                user,
                NewEvent::state("m.room.power_levels", "", old_levels.clone()),
            )?;
        }
        // Local aliases and the canonical alias move to the new room.
        let aliases = self.room_aliases(old)?;
        for alias in &aliases {
            self.delete_alias(alias, user)?;
            self.put_alias(alias, &new_room, user)?;
        }
        if let Some(canonical) = self.state_content(old, "m.room.canonical_alias", "")? {
            self.append(
                &new_guard,
                user,
                NewEvent::state("m.room.canonical_alias", "", canonical),
            )?;
        }
        let was_public = self.is_public(old)?;
        if was_public {
            self.set_public(&new_room, true)?;
        }
        drop(new_guard);

        let guard = self.lock(old).await;
        self.append(
            &guard,
            user,
            NewEvent::state(
                "m.room.tombstone",
                "",
                json!({ "body": "This room has been replaced", "replacement_room": new_room }),
            ),
        )?;
        if !aliases.is_empty()
            && self
                .state_content(old, "m.room.canonical_alias", "")?
                .is_some()
        {
            self.append(
                &guard,
                user,
                NewEvent::state("m.room.canonical_alias", "", json!({})),
            )?;
        }
        // Restrict the old room: only those who could already moderate may speak or invite.
        let mut restricted = old_levels.as_object().cloned().unwrap_or_default();
        let users_default = restricted
            .get("users_default")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let floor = 50.max(users_default + 1);
        for key in ["events_default", "invite"] {
            let current = restricted.get(key).and_then(Value::as_i64).unwrap_or(0);
            restricted.insert(key.into(), json!(current.max(floor)));
        }
        if Value::Object(restricted.clone()) != old_levels {
            self.append(
                &guard,
                user,
                NewEvent::state("m.room.power_levels", "", Value::Object(restricted)),
            )?;
        }
        if was_public {
            self.set_public(old, false)?;
        }
        drop(guard);
        drop(hold);
        self.wait_visible(self.applied_pos()).await?;
        Ok(new_room)
    }
}
