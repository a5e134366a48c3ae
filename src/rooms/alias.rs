//! Room aliases and the public room directory.

use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId};
use serde_json::{json, Value};

use super::{members::Membership, NewEvent, RoomsService};
use crate::{
    storage::{keys, Batch},
    Error, Result,
};

impl RoomsService {
    /// The room an alias points at.
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        match self.storage.trees.aliases.get(alias.as_bytes())? {
            Some(v) => Ok(OwnedRoomId::try_from(String::from_utf8_lossy(&v).into_owned()).ok()),
            None => Ok(None),
        }
    }

    /// Points a local alias at a room (`M_ROOM_IN_USE` if taken).
    pub fn put_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        _creator: &UserId,
    ) -> Result<()> {
        if alias.server_name() != self.server_name() {
            return Err(Error::invalid_param("Alias must be on this server"));
        }
        if self.resolve_alias(alias)?.is_some() {
            return Err(Error::matrix(
                crate::ErrorKind::Conflict,
                "M_UNKNOWN",
                "Room alias already exists",
            ));
        }
        if !self.exists(room_id)? {
            return Err(Error::not_found("Unknown room"));
        }
        let mut batch = Batch::new();
        batch.insert(
            &self.storage.trees.aliases,
            alias.as_bytes(),
            room_id.as_bytes(),
        );
        batch.insert(
            &self.storage.trees.room_aliases,
            &keys::strs(&[room_id.as_str(), alias.as_str()]),
            b"",
        );
        self.storage.commit(batch)
    }

    /// Removes an alias; only a room member with power to change state may, or whoever set it.
    pub fn delete_alias(&self, alias: &RoomAliasId, user: &UserId) -> Result<()> {
        let room_id = self
            .resolve_alias(alias)?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let power = self.power_levels(&room_id)?;
        if self.membership(&room_id, user)? != Some(Membership::Join)
            || power.user_level(user) < power.event_level("m.room.canonical_alias", true)
        {
            return Err(Error::forbidden("You may not delete this alias"));
        }
        let mut batch = Batch::new();
        batch.remove(&self.storage.trees.aliases, alias.as_bytes());
        batch.remove(
            &self.storage.trees.room_aliases,
            &keys::strs(&[room_id.as_str(), alias.as_str()]),
        );
        self.storage.commit(batch)
    }

    /// `DELETE /directory/room/{alias}`: removes the alias and, as Synapse does, takes it
    /// out of the room's `m.room.canonical_alias` (`alias` and `alt_aliases`) in the name
    /// of the user (who has the power to, or the removal is refused), so that the room's
    /// directory entry and its search stop showing it at once.
    pub async fn remove_alias(&self, alias: &RoomAliasId, user: &UserId) -> Result<()> {
        let room_id = self
            .resolve_alias(alias)?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        let guard = self.lock(&room_id).await;
        self.delete_alias(alias, user)?;
        let Some(mut content) = self.state_content(&room_id, "m.room.canonical_alias", "")? else {
            return Ok(());
        };
        let Some(fields) = content.as_object_mut() else {
            return Ok(());
        };
        let mut changed = false;
        if fields.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            fields.remove("alias");
            changed = true;
        }
        if let Some(alt) = fields.get_mut("alt_aliases").and_then(Value::as_array_mut) {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if changed {
            let event = NewEvent::state("m.room.canonical_alias", "", content);
            if let Err(e) = self.send(guard, user, event).await {
                // The alias is gone either way; the state names a dead alias until changed.
                tracing::warn!(%room_id, %alias, "canonical alias not updated: {e}");
            }
        }
        Ok(())
    }

    /// The local aliases of a room.
    pub fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let prefix = keys::strs(&[room_id.as_str()]);
        let mut out = Vec::new();
        for kv in self.storage.trees.room_aliases.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let alias =
                String::from_utf8_lossy(&k[prefix.len()..k.len().saturating_sub(1)]).into_owned();
            if let Ok(a) = OwnedRoomAliasId::try_from(alias) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Adds or removes a room from the public directory.
    pub fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        if public {
            self.storage
                .trees
                .public_rooms
                .insert(room_id.as_bytes(), b"")
        } else {
            self.storage.trees.public_rooms.remove(room_id.as_bytes())
        }
    }

    /// Whether the room is in the public directory.
    pub fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        self.storage.trees.public_rooms.contains(room_id.as_bytes())
    }

    /// A directory entry (`PublicRoomsChunk`) for a room.
    pub fn directory_entry(&self, room_id: &RoomId) -> Result<Value> {
        let text = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(self
                .state_content(room_id, kind, "")?
                .and_then(|c| c.get(field).and_then(Value::as_str).map(str::to_owned)))
        };
        let mut entry = json!({
            "room_id": room_id,
            "num_joined_members": self.members(room_id)?.count(Membership::Join),
            "world_readable": self.history_visibility(room_id)? == "world_readable",
            "guest_can_join": text("m.room.guest_access", "guest_access")?.as_deref() == Some("can_join"),
            "join_rule": text("m.room.join_rules", "join_rule")?.unwrap_or_else(|| "invite".into()),
        });
        for (key, kind, field) in [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
            ("room_type", "m.room.create", "type"),
        ] {
            if let Some(v) = text(kind, field)? {
                entry[key] = json!(v);
            }
        }
        Ok(entry)
    }

    /// The ids of the rooms in the public directory.
    pub fn public_room_ids(&self) -> Result<Vec<OwnedRoomId>> {
        let mut out = Vec::new();
        for kv in self.storage.trees.public_rooms.scan_prefix(&[]) {
            let (k, _) = kv?;
            if let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&k).into_owned()) {
                out.push(room_id);
            }
        }
        Ok(out)
    }

    /// Public rooms matching `search` (name, topic, alias), paginated by offset.
    pub fn public_rooms(
        &self,
        search: Option<&str>,
        since: usize,
        limit: usize,
    ) -> Result<(Vec<Value>, usize)> {
        let needle = search.map(str::to_lowercase).filter(|s| !s.is_empty());
        let mut all = Vec::new();
        for room_id in self.public_room_ids()? {
            let entry = self.directory_entry(&room_id)?;
            if let Some(needle) = &needle {
                let hay = ["name", "topic", "canonical_alias"]
                    .iter()
                    .filter_map(|f| entry[*f].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                if !hay.contains(needle.as_str()) {
                    continue;
                }
            }
            all.push(entry);
        }
        all.sort_by_key(|e| std::cmp::Reverse(e["num_joined_members"].as_u64().unwrap_or(0)));
        let total = all.len();
        let page = all.into_iter().skip(since).take(limit).collect();
        Ok((page, total))
    }
}
