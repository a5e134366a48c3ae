//! Room state: current state, state at any stream position, and event lookup.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ruma::{events::StateEventType, EventId, OwnedEventId, RoomId, UserId};
use serde_json::Value;

use super::{
    append::{parse_event_id, StoredPdu},
    RoomsService,
};
use crate::{events::Pdu, storage::keys, Error, Result};

/// `(type, state_key)` → event id.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// The parts of `m.room.power_levels` the service itself needs.
#[derive(Clone, Debug)]
pub struct PowerLevels {
    users: HashMap<String, i64>,
    users_default: i64,
    events: HashMap<String, i64>,
    events_default: i64,
    state_default: i64,
    /// Level needed to invite.
    pub invite: i64,
    /// Level needed to kick.
    pub kick: i64,
    /// Level needed to ban.
    pub ban: i64,
    /// Level needed to redact others' events.
    pub redact: i64,
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl PowerLevels {
    /// Reads power levels content; `creator` gets 100 when there is no power levels event.
    pub fn from_content(content: Option<&Value>, creator: Option<&UserId>) -> PowerLevels {
        let get = |k: &str, d: i64| content.and_then(|c| c.get(k)).and_then(int).unwrap_or(d);
        let map = |k: &str| -> HashMap<String, i64> {
            content
                .and_then(|c| c.get(k))
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), int(v)?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut users = map("users");
        if content.is_none() {
            if let Some(c) = creator {
                users.insert(c.to_string(), 100);
            }
        }
        PowerLevels {
            users,
            users_default: get("users_default", 0),
            events: map("events"),
            events_default: get("events_default", 0),
            state_default: get("state_default", if content.is_some() { 50 } else { 0 }),
            invite: get("invite", 0),
            kick: get("kick", 50),
            ban: get("ban", 50),
            redact: get("redact", 50),
        }
    }

    /// A user's power level.
    pub fn user_level(&self, user: &UserId) -> i64 {
        self.users
            .get(user.as_str())
            .copied()
            .unwrap_or(self.users_default)
    }

    /// The level needed to send an event of `kind`.
    pub fn event_level(&self, kind: &str, is_state: bool) -> i64 {
        self.events.get(kind).copied().unwrap_or(if is_state {
            self.state_default
        } else {
            self.events_default
        })
    }
}

impl RoomsService {
    /// Reads a stored event.
    pub fn get_pdu(&self, event_id: &EventId) -> Result<Option<Arc<Pdu>>> {
        Ok(self.get_pdu_with_pos(event_id)?.map(|(_, p)| p))
    }

    /// Reads a stored event with its stream position.
    pub fn get_pdu_with_pos(&self, event_id: &EventId) -> Result<Option<(u64, Arc<Pdu>)>> {
        if let Some(hit) = self.pdu_cache_get(event_id) {
            return Ok(Some(hit));
        }
        let Some(stored) = self
            .storage
            .trees
            .pdus
            .get_json::<StoredPdu>(event_id.as_bytes())?
        else {
            return Ok(None);
        };
        let pdu = Arc::new(Pdu::from_canonical(event_id.to_owned(), stored.pdu)?);
        self.pdu_cache_put(event_id, stored.pos, pdu.clone());
        Ok(Some((stored.pos, pdu)))
    }

    /// The stream position of an event.
    pub fn event_pos(&self, event_id: &EventId) -> Result<Option<u64>> {
        Ok(self.get_pdu_with_pos(event_id)?.map(|(pos, _)| pos))
    }

    /// The current state event id for `(kind, state_key)`.
    pub fn state_event_id(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let key = keys::strs(&[room_id.as_str(), kind, state_key]);
        self.storage
            .trees
            .room_state
            .get(&key)?
            .map(|v| parse_event_id(&v))
            .transpose()
    }

    /// The current state event for `(kind, state_key)`.
    pub fn state_event(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        self.state_event_str(room_id, &kind.to_string(), state_key)
    }

    /// Like [`RoomsService::state_event`] with the type as a string.
    pub fn state_event_str(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        match self.state_event_id(room_id, kind, state_key)? {
            Some(id) => self.get_pdu(&id),
            None => Ok(None),
        }
    }

    /// The content of a current state event.
    pub fn state_content(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<Value>> {
        match self.state_event_str(room_id, kind, state_key)? {
            Some(pdu) => Ok(Some(serde_json::from_str(pdu.content.get())?)),
            None => Ok(None),
        }
    }

    /// The whole current state.
    pub fn current_state(&self, room_id: &RoomId) -> Result<StateMap> {
        let prefix = keys::strs(&[room_id.as_str()]);
        let mut map = StateMap::new();
        for kv in self.storage.trees.room_state.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let parts = split_state_key(&k[prefix.len()..]);
            if let Some((kind, key)) = parts {
                map.insert((kind, key), parse_event_id(&v)?);
            }
        }
        Ok(map)
    }

    /// The current state events of one type (every state key), read by a prefix scan of
    /// that type only: cheap when a room has many members.
    pub fn state_events_of_type(&self, room_id: &RoomId, kind: &str) -> Result<Vec<Arc<Pdu>>> {
        let prefix = keys::strs(&[room_id.as_str(), kind]);
        let mut out = Vec::new();
        for kv in self.storage.trees.room_state.scan_prefix(&prefix) {
            let (_, v) = kv?;
            if let Some(pdu) = self.get_pdu(&parse_event_id(&v)?)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    /// The state as it was right after stream position `pos` (historical state).
    pub fn state_at(&self, room_id: &RoomId, pos: u64) -> Result<StateMap> {
        let prefix = keys::strs(&[room_id.as_str()]);
        let mut map = StateMap::new();
        for kv in self.storage.trees.room_state_history.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let Some(event_pos) = keys::trailing_u64(&k) else {
                continue;
            };
            if event_pos > pos {
                continue;
            }
            // History keys sort by (type, state_key, pos): a later entry of the same
            // pair overwrites an earlier one.
            if let Some(pair) = split_state_key(&k[prefix.len()..k.len() - 8]) {
                map.insert(pair, parse_event_id(&v)?);
            }
        }
        Ok(map)
    }

    /// Every value `(kind, state_key)` had, oldest first: `(position, event id)` pairs.
    pub(super) fn state_history(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Vec<(u64, OwnedEventId)>> {
        let prefix = keys::strs(&[room_id.as_str(), kind, state_key]);
        let mut out = Vec::new();
        for kv in self.storage.trees.room_state_history.scan_prefix(&prefix) {
            let (k, v) = kv?;
            if let Some(pos) = keys::trailing_u64(&k) {
                out.push((pos, parse_event_id(&v)?));
            }
        }
        Ok(out)
    }

    /// The content of one event of a state map (e.g. the state as a user left it).
    pub fn content_in(&self, map: &StateMap, kind: &str, state_key: &str) -> Result<Option<Value>> {
        match map.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(id) => match self.get_pdu(id)? {
                Some(pdu) => Ok(Some(serde_json::from_str(pdu.content.get())?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Loads the events of a state map.
    pub fn state_events(&self, map: &StateMap) -> Result<Vec<Arc<Pdu>>> {
        let mut out = Vec::with_capacity(map.len());
        for id in map.values() {
            if let Some(pdu) = self.get_pdu(id)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    /// The room's power levels.
    pub fn power_levels(&self, room_id: &RoomId) -> Result<PowerLevels> {
        let content = self.state_content(room_id, "m.room.power_levels", "")?;
        let creator = match &content {
            Some(_) => None,
            None => self
                .state_event_str(room_id, "m.room.create", "")?
                .map(|p| p.sender.clone()),
        };
        Ok(PowerLevels::from_content(
            content.as_ref(),
            creator.as_deref(),
        ))
    }

    /// Fails with 403 unless the user can see the room's current state (a member, or
    /// the room is world readable); 404 for a room not known here (never created, or
    /// purged), as `/messages` answers.
    pub fn check_can_see_state(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        if !self.exists(room_id)? {
            return Err(Error::not_found("No known room with that id"));
        }
        if self.members(room_id)?.get(user) == Some(super::Membership::Join) {
            return Ok(());
        }
        if self.history_visibility(room_id)? == "world_readable" {
            return Ok(());
        }
        Err(Error::forbidden("You are not in this room"))
    }

    /// `m.room.history_visibility` (default `shared`).
    pub fn history_visibility(&self, room_id: &RoomId) -> Result<String> {
        Ok(self
            .state_content(room_id, "m.room.history_visibility", "")?
            .and_then(|c| {
                c.get("history_visibility")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "shared".to_owned()))
    }
}

/// Splits `type 0xFF state_key 0xFF` into its two parts.
fn split_state_key(rest: &[u8]) -> Option<(String, String)> {
    let rest = rest.strip_suffix(&[keys::SEP])?;
    let sep = rest.iter().position(|b| *b == keys::SEP)?;
    let kind = std::str::from_utf8(&rest[..sep]).ok()?;
    let key = std::str::from_utf8(&rest[sep + 1..]).ok()?;
    Some((kind.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_key_parts_split() {
        let k = keys::strs(&["m.room.member", "@a:x"]);
        assert_eq!(
            split_state_key(&k),
            Some(("m.room.member".into(), "@a:x".into()))
        );
        let k = keys::strs(&["m.room.name", ""]);
        assert_eq!(split_state_key(&k), Some(("m.room.name".into(), "".into())));
    }

    #[test]
    fn power_level_defaults() {
        let creator: ruma::OwnedUserId = "@c:x".try_into().unwrap();
        let pl = PowerLevels::from_content(None, Some(&creator));
        assert_eq!(pl.user_level(&creator), 100);
        let content = serde_json::json!({"users": {"@a:x": 50}, "events": {"m.room.name": 75}});
        let pl = PowerLevels::from_content(Some(&content), None);
        let a: ruma::OwnedUserId = "@a:x".try_into().unwrap();
        assert_eq!(pl.user_level(&a), 50);
        assert_eq!(pl.event_level("m.room.name", true), 75);
        assert_eq!(pl.event_level("m.room.topic", true), 50);
        assert_eq!(pl.event_level("m.room.message", false), 0);
        assert_eq!(pl.redact, 50);
    }
}
