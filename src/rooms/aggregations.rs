//! Bundled aggregations other than threads (spec v1.7+, "Server-side aggregation of
//! child events"): on an event served to a user,
//! - `unsigned["m.relations"]["m.replace"]`: the most recent valid replacement (edit) the
//!   user may see, the whole event; the original's content is left as sent;
//! - `unsigned["m.relations"]["m.reference"]`: `{"chunk": [{"event_id"}]}`, the events the
//!   user may see that reference it, oldest first.
//!
//! Both read the relation index (`relation_index.rs`): `add_unsigned` lists an event's
//! relation types with one seek per type (one seek when it has none) and comes here only
//! when there are edits or references, which cost a walk over that type's entries of this
//! one event (bounded below). A redacted edit or reference has no relation
//! any more (a redaction takes it out of the index).

use ruma::{EventId, RoomId, UserId};
use serde_json::{json, Value};

use super::{read::Direction, visibility::Viewer, RoomsService};
use crate::{events::Pdu, Result};

/// The relation type of replacements (edits).
const REPLACE: &str = "m.replace";
/// The relation type of references.
const REFERENCE: &str = "m.reference";

/// The newest edits looked at for a valid one (edits by other senders are not valid and
/// are skipped; past this many the event is served without `m.replace`).
const MAX_EDITS_EXAMINED: usize = 100;
/// The most references listed in one `m.reference` bundle (the oldest ones; `/relations`
/// pages through all of them).
const MAX_REFERENCES: usize = 100;

/// What the validity of a replacement depends on in the original event.
struct Original<'a> {
    sender: &'a str,
    kind: &'a str,
    is_state: bool,
    is_replacement: bool,
    redacted: bool,
}

impl<'a> Original<'a> {
    fn of(event: &'a Value) -> Option<Original<'a>> {
        Some(Original {
            sender: event["sender"].as_str()?,
            kind: event["type"].as_str()?,
            is_state: event.get("state_key").is_some(),
            is_replacement: event["content"]["m.relates_to"]["rel_type"].as_str() == Some(REPLACE),
            redacted: event["unsigned"].get("redacted_because").is_some(),
        })
    }

    /// Whether an original like this can have a bundled replacement at all.
    fn editable(&self) -> bool {
        !self.is_state && !self.is_replacement && !self.redacted
    }

    /// The spec's rules for a replacement of this event ("Validity of replacement
    /// events"): same sender and type, not a state event, and (unless encrypted, when
    /// the server cannot see it) carrying `m.new_content`.
    fn valid_edit(&self, edit: &Pdu) -> bool {
        let kind = edit.kind.to_string();
        if edit.sender.as_str() != self.sender || kind != self.kind || edit.state_key.is_some() {
            return false;
        }
        kind == "m.room.encrypted" || edit.content_value()["m.new_content"].is_object()
    }
}

/// Adds `value` as `unsigned["m.relations"][rel_type]` of `event`.
pub(super) fn bundle(event: &mut Value, rel_type: &str, value: Value) {
    if !event["unsigned"].is_object() {
        event["unsigned"] = json!({});
    }
    if !event["unsigned"]["m.relations"].is_object() {
        event["unsigned"]["m.relations"] = json!({});
    }
    event["unsigned"]["m.relations"][rel_type] = value;
}

impl RoomsService {
    /// `pdu` as bundled with `parent`: in the parent's format (`/sync` leaves out
    /// `room_id`), with the reader's membership like every served event.
    pub(super) fn served_like(
        &self,
        room_id: &RoomId,
        user: &UserId,
        parent: &Value,
        pdu: &Pdu,
    ) -> Result<Value> {
        let mut served = [if parent.get("room_id").is_some() {
            pdu.to_client_event()
        } else {
            pdu.to_sync_event()
        }];
        self.add_memberships(room_id, user, &mut served)?;
        let [served] = served;
        Ok(served)
    }

    /// Adds the `m.replace` and `m.reference` bundles `event` (`id`, whose relation types
    /// are `types`) has for the viewer (part of [`RoomsService::add_unsigned`]).
    pub(super) fn bundle_edits_and_references(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event: &mut Value,
        id: &EventId,
        types: &[String],
        viewer: &Viewer,
    ) -> Result<()> {
        let has_edits = types.iter().any(|t| t == REPLACE);
        let has_references = types.iter().any(|t| t == REFERENCE);
        if !has_edits && !has_references {
            return Ok(());
        }
        let edit = match Original::of(event) {
            Some(original) if has_edits && original.editable() => {
                self.latest_valid_edit(room_id, id, &original, viewer)?
            }
            _ => None,
        };
        if let Some(edit) = edit {
            let served = self.served_like(room_id, user, event, &edit)?;
            bundle(event, REPLACE, served);
        }
        if has_references {
            let references = self.visible_references(room_id, id, viewer)?;
            if !references.is_empty() {
                let chunk: Vec<Value> = references
                    .iter()
                    .map(|id| json!({ "event_id": id }))
                    .collect();
                bundle(event, REFERENCE, json!({ "chunk": chunk }));
            }
        }
        Ok(())
    }

    /// The newest valid replacement of `original` that the viewer may see.
    fn latest_valid_edit(
        &self,
        room_id: &RoomId,
        id: &EventId,
        original: &Original<'_>,
        viewer: &Viewer,
    ) -> Result<Option<std::sync::Arc<Pdu>>> {
        let edits = self
            .relation_range(room_id, id, REPLACE, 0, u64::MAX, Direction::Backward)
            .take(MAX_EDITS_EXAMINED);
        for entry in edits {
            let (pos, edit_id) = entry?;
            if !viewer.sees(pos) {
                continue;
            }
            let Some(edit) = self.get_pdu(&edit_id)? else {
                continue;
            };
            if original.valid_edit(&edit) {
                return Ok(Some(edit));
            }
        }
        Ok(None)
    }

    /// The events referencing `id` that the viewer may see, oldest first.
    fn visible_references(
        &self,
        room_id: &RoomId,
        id: &EventId,
        viewer: &Viewer,
    ) -> Result<Vec<ruma::OwnedEventId>> {
        let mut out = Vec::new();
        for entry in self.relation_range(room_id, id, REFERENCE, 0, u64::MAX, Direction::Forward) {
            let (pos, reference) = entry?;
            if viewer.sees(pos) {
                out.push(reference);
                if out.len() == MAX_REFERENCES {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, room_id, user_id};

    use super::*;

    fn pdu(sender: &UserId, kind: &str, content: Value, state_key: Option<&str>) -> Pdu {
        let mut object = json!({
            "room_id": room_id!("!r:example.org"),
            "sender": sender,
            "type": kind,
            "content": content,
            "origin_server_ts": 1,
        });
        if let Some(key) = state_key {
            object["state_key"] = json!(key);
        }
        Pdu::from_json_bytes(
            event_id!("$edit").to_owned(),
            &serde_json::to_vec(&object).expect("json"),
        )
        .expect("a valid event")
    }

    #[test]
    fn only_the_same_sender_and_type_with_new_content_is_a_valid_edit() {
        let alice = user_id!("@alice:example.org");
        let bob = user_id!("@bob:example.org");
        let original =
            json!({"sender": alice, "type": "m.room.message", "content": {"body": "hi"}});
        let original = Original::of(&original).expect("fields");
        assert!(original.editable());
        let edit = json!({"body": "* hello", "m.new_content": {"body": "hello"},
            "m.relates_to": {"rel_type": REPLACE, "event_id": "$orig"}});
        assert!(original.valid_edit(&pdu(alice, "m.room.message", edit.clone(), None)));
        assert!(!original.valid_edit(&pdu(bob, "m.room.message", edit.clone(), None)));
        assert!(!original.valid_edit(&pdu(alice, "m.sticker", edit.clone(), None)));
        assert!(!original.valid_edit(&pdu(alice, "m.room.message", edit, Some(""))));
        let bare =
            json!({"body": "* hello", "m.relates_to": {"rel_type": REPLACE, "event_id": "$orig"}});
        assert!(!original.valid_edit(&pdu(alice, "m.room.message", bare, None)));

        let redacted = json!({"sender": alice, "type": "m.room.message", "content": {},
            "unsigned": {"redacted_because": {}}});
        assert!(!Original::of(&redacted).expect("fields").editable());
        let an_edit = json!({"sender": alice, "type": "m.room.message",
            "content": {"m.relates_to": {"rel_type": REPLACE, "event_id": "$x"}}});
        assert!(!Original::of(&an_edit).expect("fields").editable());
    }
}
