//! Server administration of rooms: every room's summary as the Synapse-compatible admin
//! API lists it, searched and sorted.

use std::cmp::Ordering;

use ruma::{OwnedRoomId, RoomId};
use serde::Serialize;
use serde_json::Value;

use super::{members::Membership, RoomsService};
use crate::{Error, Result};

/// One room as the admin API describes it (Synapse's field names).
#[derive(Clone, Debug, Serialize)]
pub struct RoomSummary {
    /// The room id.
    pub room_id: OwnedRoomId,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// `m.room.avatar`'s URL.
    pub avatar: Option<String>,
    /// `m.room.canonical_alias`.
    pub canonical_alias: Option<String>,
    /// Joined members.
    pub joined_members: usize,
    /// Joined members of this server (every member, without federation).
    pub joined_local_members: usize,
    /// The room version.
    pub version: String,
    /// The creator.
    pub creator: Option<String>,
    /// `m.room.encryption`'s algorithm.
    pub encryption: Option<String>,
    /// `m.federate` of the create event (default true).
    pub federatable: bool,
    /// Listed in the public room directory.
    pub public: bool,
    /// `m.room.join_rules`.
    pub join_rules: Option<String>,
    /// `m.room.guest_access`.
    pub guest_access: Option<String>,
    /// `m.room.history_visibility`.
    pub history_visibility: Option<String>,
    /// Number of current state events.
    pub state_events: usize,
    /// The room type from the create event.
    pub room_type: Option<String>,
}

/// What a room listing sorts by (Synapse's `order_by` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoomOrder {
    /// The room name (default; rooms without one last).
    #[default]
    Name,
    /// The canonical alias.
    CanonicalAlias,
    /// Joined members, most first.
    JoinedMembers,
    /// Joined local members, most first.
    JoinedLocalMembers,
    /// Room version.
    Version,
    /// Creator.
    Creator,
    /// Encryption algorithm.
    Encryption,
    /// Federatable.
    Federatable,
    /// In the public directory.
    Public,
    /// Join rule.
    JoinRules,
    /// Guest access.
    GuestAccess,
    /// History visibility.
    HistoryVisibility,
    /// Number of state events, most first.
    StateEvents,
}

impl RoomOrder {
    /// Parses an `order_by` value (400 `M_INVALID_PARAM` for an unknown one).
    pub fn parse(s: &str) -> Result<RoomOrder> {
        Ok(match s {
            "name" => RoomOrder::Name,
            "canonical_alias" => RoomOrder::CanonicalAlias,
            "joined_members" | "size" => RoomOrder::JoinedMembers,
            "joined_local_members" => RoomOrder::JoinedLocalMembers,
            "version" => RoomOrder::Version,
            "creator" => RoomOrder::Creator,
            "encryption" => RoomOrder::Encryption,
            "federatable" => RoomOrder::Federatable,
            "public" => RoomOrder::Public,
            "join_rules" => RoomOrder::JoinRules,
            "guest_access" => RoomOrder::GuestAccess,
            "history_visibility" => RoomOrder::HistoryVisibility,
            "state_events" => RoomOrder::StateEvents,
            other => {
                return Err(Error::invalid_param(format!(
                    "Unknown value for order_by: {other}"
                )))
            }
        })
    }

    /// Compares in the forward (`dir=f`) order: text ascending with missing values
    /// last, counts largest first (as Synapse).
    fn compare(self, a: &RoomSummary, b: &RoomSummary) -> Ordering {
        fn text(a: &Option<String>, b: &Option<String>) -> Ordering {
            match (a, b) {
                (Some(a), Some(b)) => a.to_lowercase().cmp(&b.to_lowercase()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        }
        let by = match self {
            RoomOrder::Name => text(&a.name, &b.name),
            RoomOrder::CanonicalAlias => text(&a.canonical_alias, &b.canonical_alias),
            RoomOrder::JoinedMembers => b.joined_members.cmp(&a.joined_members),
            RoomOrder::JoinedLocalMembers => b.joined_local_members.cmp(&a.joined_local_members),
            RoomOrder::Version => a.version.cmp(&b.version),
            RoomOrder::Creator => text(&a.creator, &b.creator),
            RoomOrder::Encryption => text(&a.encryption, &b.encryption),
            RoomOrder::Federatable => b.federatable.cmp(&a.federatable),
            RoomOrder::Public => b.public.cmp(&a.public),
            RoomOrder::JoinRules => text(&a.join_rules, &b.join_rules),
            RoomOrder::GuestAccess => text(&a.guest_access, &b.guest_access),
            RoomOrder::HistoryVisibility => text(&a.history_visibility, &b.history_visibility),
            RoomOrder::StateEvents => b.state_events.cmp(&a.state_events),
        };
        by.then_with(|| a.room_id.cmp(&b.room_id))
    }
}

/// Which rooms a listing returns and in what order.
#[derive(Clone, Debug, Default)]
pub struct RoomQuery {
    /// Only rooms whose name, canonical alias or id contains this (case-insensitive).
    pub search_term: Option<String>,
    /// Sort key.
    pub order: RoomOrder,
    /// The reverse order (`dir=b`).
    pub backwards: bool,
}

impl RoomsService {
    /// The admin API's description of a room (404 `M_NOT_FOUND` when unknown).
    pub fn room_summary(&self, room_id: &RoomId) -> Result<RoomSummary> {
        let record = self
            .storage
            .trees
            .rooms
            .get_json::<super::RoomRecord>(room_id.as_bytes())?
            .ok_or_else(|| Error::not_found("Room not found"))?;
        let field = |kind: &str, name: &str| -> Result<Option<String>> {
            Ok(self
                .state_content(room_id, kind, "")?
                .and_then(|c| c.get(name).and_then(Value::as_str).map(str::to_owned)))
        };
        let create = self.state_event_str(room_id, "m.room.create", "")?;
        let create_content: Option<Value> = match &create {
            Some(pdu) => Some(serde_json::from_str(pdu.content.get())?),
            None => None,
        };
        let joined = self.members(room_id)?.count(Membership::Join);
        Ok(RoomSummary {
            room_id: room_id.to_owned(),
            name: field("m.room.name", "name")?,
            topic: field("m.room.topic", "topic")?,
            avatar: field("m.room.avatar", "url")?,
            canonical_alias: field("m.room.canonical_alias", "alias")?,
            joined_members: joined,
            joined_local_members: joined,
            version: record.version.to_string(),
            creator: create.as_ref().map(|p| p.sender.to_string()),
            encryption: field("m.room.encryption", "algorithm")?,
            federatable: create_content
                .as_ref()
                .and_then(|c| c.get("m.federate"))
                .and_then(Value::as_bool)
                .unwrap_or(true),
            public: self.is_public(room_id)?,
            join_rules: field("m.room.join_rules", "join_rule")?,
            guest_access: field("m.room.guest_access", "guest_access")?,
            history_visibility: field("m.room.history_visibility", "history_visibility")?,
            state_events: self.current_state(room_id)?.len(),
            room_type: record.room_type,
        })
    }

    /// Every room matching `query`, sorted: the admin API pages through it.
    pub fn list_room_summaries(&self, query: &RoomQuery) -> Result<Vec<RoomSummary>> {
        let needle = query.search_term.as_ref().map(|t| t.to_lowercase());
        let mut out = Vec::new();
        for entry in self.storage.trees.rooms.scan_prefix(&[]) {
            let (key, _) = entry?;
            let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&key).as_ref()) else {
                continue;
            };
            let summary = self.room_summary(&room_id)?;
            if let Some(needle) = &needle {
                let hit = [
                    summary.name.as_deref(),
                    summary.canonical_alias.as_deref(),
                    Some(summary.room_id.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|text| text.to_lowercase().contains(needle));
                if !hit {
                    continue;
                }
            }
            out.push(summary);
        }
        out.sort_by(|a, b| query.order.compare(a, b));
        if query.backwards {
            out.reverse();
        }
        Ok(out)
    }
}
