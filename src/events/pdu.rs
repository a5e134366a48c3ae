//! [`Pdu`]: a stored room event with its fields parsed for fast access.

use ruma::{
    events::TimelineEventType, CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Map, Value};

use crate::{Error, Result};

/// A persistent data unit: one room event as stored.
#[derive(Clone, Debug)]
pub struct Pdu {
    /// The reference-hash event id.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The sender.
    pub sender: OwnedUserId,
    /// The event type.
    pub kind: TimelineEventType,
    /// Present on state events.
    pub state_key: Option<String>,
    /// The content, as sent.
    pub content: Box<RawValue>,
    /// When the origin server received it.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The events this one follows.
    pub prev_events: Vec<OwnedEventId>,
    /// The state events that authorise this one.
    pub auth_events: Vec<OwnedEventId>,
    /// Depth in the room DAG.
    pub depth: u64,
    /// For redactions: the redacted event (top level before v11, in content since).
    pub redacts: Option<OwnedEventId>,
    /// Server-added data not covered by hashes or signatures.
    pub unsigned: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Fields {
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    state_key: Option<String>,
    content: Box<RawValue>,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(default)]
    prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    auth_events: Vec<OwnedEventId>,
    #[serde(default)]
    depth: u64,
    redacts: Option<OwnedEventId>,
    unsigned: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct ContentRedacts {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a stored or freshly built event.
    pub fn from_canonical(event_id: OwnedEventId, object: CanonicalJsonObject) -> Result<Pdu> {
        let text = serde_json::to_string(&object)?;
        Pdu::from_json_bytes(event_id, text.as_bytes())
    }

    /// Parses an event from its JSON bytes.
    pub fn from_json_bytes(event_id: OwnedEventId, bytes: &[u8]) -> Result<Pdu> {
        let f: Fields = serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("malformed stored event {event_id}: {e}")))?;
        let redacts = match f.redacts {
            Some(id) => Some(id),
            None if f.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<ContentRedacts>(f.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Pdu {
            event_id,
            room_id: f.room_id,
            sender: f.sender,
            kind: f.kind,
            state_key: f.state_key,
            content: f.content,
            origin_server_ts: f.origin_server_ts,
            prev_events: f.prev_events,
            auth_events: f.auth_events,
            depth: f.depth,
            redacts,
            unsigned: f.unsigned,
        })
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Map::new()))
    }

    /// The client-server API format (`ClientEvent`).
    pub fn to_client_event(&self) -> Value {
        let mut v = self.to_sync_event();
        v["room_id"] = json!(self.room_id);
        v
    }

    /// The format used inside `/sync` rooms (`ClientEventWithoutRoomID`).
    pub fn to_sync_event(&self) -> Value {
        let mut v = json!({
            "event_id": self.event_id,
            "sender": self.sender,
            "type": self.kind,
            "content": self.content_value(),
            "origin_server_ts": self.origin_server_ts,
        });
        if let Some(key) = &self.state_key {
            v["state_key"] = json!(key);
        }
        if let Some(redacts) = &self.redacts {
            // Clients of every version read the top-level field.
            v["redacts"] = json!(redacts);
        }
        if let Some(unsigned) = &self.unsigned {
            if !unsigned.is_empty() {
                v["unsigned"] = Value::Object(unsigned.clone());
            }
        }
        v
    }

    /// Stripped state, as shown for invites and knocks.
    pub fn to_stripped_state(&self) -> Value {
        json!({
            "type": self.kind,
            "state_key": self.state_key.as_deref().unwrap_or(""),
            "content": self.content_value(),
            "sender": self.sender,
        })
    }

    /// Whether this is a state event of the given type.
    pub fn is_state(&self, kind: &str) -> bool {
        self.state_key.is_some() && self.kind.to_string() == kind
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        Some(&self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

/// Whether `id` is a well-formed event id (for callers parsing stored bytes).
pub fn parse_event_id(s: &str) -> Result<OwnedEventId> {
    EventId::parse(s).map_err(|e| Error::invalid_param(format!("invalid event id: {e}")))
}
