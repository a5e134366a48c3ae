//! `createRoom`: the create event, the creator's join, power levels, preset state,
//! initial state, name, topic, alias and invites, in the order the spec gives.

use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};

use super::membership::MemberProfile;
use super::{append::NewEvent, RoomRecord, RoomsService};
use crate::{events, storage::Batch, Error, Result};

/// A `createRoom` request after parsing.
#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    /// `private_chat`, `public_chat` or `trusted_private_chat`.
    pub preset: Option<String>,
    /// `public` puts the room in the directory.
    pub visibility_public: bool,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Users to invite, with their profiles (copied into the invite events, as Synapse
    /// does, so invitees have a name before they join).
    pub invite: Vec<(OwnedUserId, MemberProfile)>,
    /// Marks invites as direct chats.
    pub is_direct: bool,
    /// Extra state events `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    /// Merged over the default power levels.
    pub power_level_content_override: Option<Map<String, Value>>,
    /// Local alias name (`#{name}:{server}`).
    pub room_alias_name: Option<String>,
    /// Room version; default 11.
    pub room_version: Option<String>,
    /// Extra `m.room.create` content.
    pub creation_content: Option<Map<String, Value>>,
    /// The creator's displayname and avatar for the join event.
    pub creator_profile: (Option<String>, Option<String>),
}

/// Event types a member may send by default beyond messages: MatrixRTC call membership.
const MEMBER_STATE_EVENTS: &[&str] = &["org.matrix.msc3401.call.member", "m.rtc.member"];

fn random_localpart(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl RoomsService {
    /// Creates a room; returns its id once the room is durable and visible, whole.
    #[tracing::instrument(skip(self, req), fields(creator = %creator))]
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        // Readers see the room whole or not at all: a sync must never show a new
        // encrypted DM before its `m.room.encryption` event.
        let hold = self.hold_publication();
        let created = self.create_room_held(creator, req).await;
        drop(hold);
        let room_id = created?;
        self.wait_visible(self.applied_pos()).await?;
        Ok(room_id)
    }

    /// Creates a room while the caller holds publication (see [`Self::hold_publication`]);
    /// the events are applied, not yet published.
    pub(super) async fn create_room_held(
        &self,
        creator: &UserId,
        req: CreateRoom,
    ) -> Result<OwnedRoomId> {
        super::kinds::check_create(&req)?;
        let version = match req.room_version.as_deref() {
            None => RoomVersionId::V11,
            Some(v) => events::supported_room_version(v).ok_or_else(|| {
                Error::matrix(
                    crate::ErrorKind::Invalid,
                    "M_UNSUPPORTED_ROOM_VERSION",
                    format!("Room version {v} is not supported"),
                )
            })?,
        };
        let preset = req.preset.clone().unwrap_or_else(|| {
            if req.visibility_public {
                "public_chat"
            } else {
                "private_chat"
            }
            .to_owned()
        });
        if !matches!(
            preset.as_str(),
            "private_chat" | "public_chat" | "trusted_private_chat"
        ) {
            return Err(Error::bad_json(format!("unknown preset {preset}")));
        }
        let alias = match &req.room_alias_name {
            Some(name) => {
                let alias = format!("#{name}:{}", self.server_name);
                let alias = ruma::OwnedRoomAliasId::try_from(alias)
                    .map_err(|e| Error::invalid_param(format!("room_alias_name: {e}")))?;
                if self.resolve_alias(&alias)?.is_some() {
                    return Err(Error::matrix(
                        crate::ErrorKind::Invalid,
                        "M_ROOM_IN_USE",
                        "Room alias already taken",
                    ));
                }
                Some(alias)
            }
            None => None,
        };

        let room_id =
            OwnedRoomId::try_from(format!("!{}:{}", random_localpart(18), self.server_name))
                .map_err(|e| Error::internal(format!("room id: {e}")))?;
        let room_type = req
            .creation_content
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let record = RoomRecord {
            version: version.clone(),
            room_type,
        };
        let mut batch = Batch::new();
        batch.insert_json(&self.storage.trees.rooms, room_id.as_bytes(), &record)?;
        self.storage.commit(batch)?;

        let guard = self.lock(&room_id).await;
        let result =
            self.create_room_events(&guard, creator, &req, &version, &preset, alias.as_ref());
        if let Err(e) = result {
            // Leave nothing half-made behind.
            let users = self.purge_subjects(&room_id)?;
            self.purge_locked(&guard, &users)?;
            return Err(e);
        }
        if req.visibility_public {
            self.set_public(&room_id, true)?;
        }
        Ok(room_id)
    }

    fn create_room_events(
        &self,
        guard: &super::RoomGuard,
        creator: &UserId,
        req: &CreateRoom,
        version: &RoomVersionId,
        preset: &str,
        alias: Option<&ruma::OwnedRoomAliasId>,
    ) -> Result<()> {
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.insert("room_version".into(), json!(version.as_str()));
        if *version != RoomVersionId::V11 {
            create.insert("creator".into(), json!(creator));
        }
        self.append(
            guard,
            creator,
            NewEvent::state("m.room.create", "", Value::Object(create)),
        )?;

        let mut join = json!({ "membership": "join" });
        if let Some(name) = &req.creator_profile.0 {
            join["displayname"] = json!(name);
        }
        if let Some(avatar) = &req.creator_profile.1 {
            join["avatar_url"] = json!(avatar);
        }
        self.append(
            guard,
            creator,
            NewEvent::state("m.room.member", creator.as_str(), join),
        )?;
        // Tests stretch the time between the creator's join and the rest of the room here
        // (`return(MS)`: a pause off the worker thread, so the publisher and the pipeline
        // keep running) to check that readers still see the room only whole.
        #[cfg(feature = "test-hooks")]
        fail::eval("rooms.create_room.after_join", |ms| {
            let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
            tokio::task::block_in_place(|| {
                std::thread::sleep(std::time::Duration::from_millis(ms))
            });
        });

        let mut users = Map::new();
        users.insert(creator.to_string(), json!(100));
        if preset == "trusted_private_chat" {
            for (u, _) in &req.invite {
                users.insert(u.to_string(), json!(100));
            }
        }
        let mut events = Map::new();
        for (kind, level) in [
            ("m.room.name", 50),
            ("m.room.power_levels", 100),
            ("m.room.history_visibility", 100),
            ("m.room.canonical_alias", 50),
            ("m.room.avatar", 50),
            ("m.room.tombstone", 100),
            ("m.room.server_acl", 100),
            ("m.room.encryption", 100),
        ] {
            events.insert(kind.into(), json!(level));
        }
        for kind in MEMBER_STATE_EVENTS {
            events.insert((*kind).into(), json!(0));
        }
        let mut power = json!({
            "users": users, "users_default": 0, "events": events, "events_default": 0,
            "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 50,
            "notifications": { "room": 50 },
        });
        // Groups and virtual rooms get the server's levels, whatever the request says.
        let kind_levels = super::kinds::initial_power_levels(req, creator, &power);
        if let (Some(over), Value::Object(map)) = (&req.power_level_content_override, &mut power) {
            for (k, v) in over {
                map.insert(k.clone(), v.clone());
            }
        }
        let power = kind_levels.unwrap_or(power);
        self.append(
            guard,
            creator,
            NewEvent::state("m.room.power_levels", "", power),
        )?;

        if let Some(alias) = alias {
            self.append(
                guard,
                creator,
                NewEvent::state("m.room.canonical_alias", "", json!({ "alias": alias })),
            )?;
        }

        let (join_rule, guest) = match preset {
            "public_chat" => ("public", "forbidden"),
            _ => ("invite", "can_join"),
        };
        self.append(
            guard,
            creator,
            NewEvent::state("m.room.join_rules", "", json!({ "join_rule": join_rule })),
        )?;
        self.append(
            guard,
            creator,
            NewEvent::state(
                "m.room.history_visibility",
                "",
                json!({ "history_visibility": "shared" }),
            ),
        )?;
        self.append(
            guard,
            creator,
            NewEvent::state("m.room.guest_access", "", json!({ "guest_access": guest })),
        )?;

        for (kind, key, content) in &req.initial_state {
            self.append(
                guard,
                creator,
                NewEvent::state(kind.clone(), key.clone(), content.clone()),
            )?;
        }
        if let Some(name) = &req.name {
            self.append(
                guard,
                creator,
                NewEvent::state("m.room.name", "", json!({ "name": name })),
            )?;
        }
        if let Some(topic) = &req.topic {
            let content =
                json!({ "topic": topic, "m.topic": [{ "body": topic, "mimetype": "text/plain" }] });
            self.append(guard, creator, NewEvent::state("m.room.topic", "", content))?;
        }
        if let Some(alias) = alias {
            self.put_alias(alias, guard.room_id(), creator)?;
        }
        for (user, profile) in &req.invite {
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            if let Some(name) = &profile.displayname {
                content["displayname"] = json!(name);
            }
            if let Some(avatar) = &profile.avatar_url {
                content["avatar_url"] = json!(avatar);
            }
            self.append(
                guard,
                creator,
                NewEvent::state("m.room.member", user.as_str(), content),
            )?;
        }
        Ok(())
    }
}
