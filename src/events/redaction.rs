//! The redaction algorithm of the room's version.

use ruma::{CanonicalJsonObject, RoomVersionId};

use super::rules_for;
use crate::{Error, Result};

/// Strips an event down to what its room version keeps on redaction.
pub fn redact(
    object: &CanonicalJsonObject,
    version: &RoomVersionId,
) -> Result<CanonicalJsonObject> {
    let rules = rules_for(version)?;
    ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|e| Error::internal(format!("redaction: {e}")))
}

#[cfg(test)]
mod tests {
    use ruma::CanonicalJsonValue;
    use serde_json::json;

    use super::*;

    fn canon(v: serde_json::Value) -> CanonicalJsonObject {
        match CanonicalJsonValue::try_from(v).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn message_content_is_removed() {
        let o = canon(json!({
            "event_id": "$a", "room_id": "!r:x", "sender": "@a:x", "type": "m.room.message",
            "content": { "body": "secret" }, "origin_server_ts": 1, "depth": 2,
            "prev_events": [], "auth_events": [], "hashes": { "sha256": "x" }, "signatures": {},
            "unsigned": { "age": 1 }, "extra": true
        }));
        let r = serde_json::to_value(redact(&o, &RoomVersionId::V11).unwrap()).unwrap();
        assert_eq!(r["content"], json!({}));
        assert!(r.get("extra").is_none());
        assert!(r.get("unsigned").is_none());
        assert_eq!(r["sender"], "@a:x");
        assert_eq!(r["hashes"]["sha256"], "x");
    }

    #[test]
    fn membership_and_power_levels_keep_their_keys() {
        let member = canon(json!({
            "type": "m.room.member", "state_key": "@a:x", "sender": "@a:x", "room_id": "!r:x",
            "content": { "membership": "join", "displayname": "A", "join_authorised_via_users_server": "@b:x" }
        }));
        let r = serde_json::to_value(redact(&member, &RoomVersionId::V11).unwrap()).unwrap();
        assert_eq!(
            r["content"],
            json!({ "membership": "join", "join_authorised_via_users_server": "@b:x" })
        );

        let pl = canon(json!({
            "type": "m.room.power_levels", "state_key": "", "sender": "@a:x", "room_id": "!r:x",
            "content": { "ban": 50, "invite": 0, "users": { "@a:x": 100 }, "notifications": { "room": 50 } }
        }));
        let v10 = serde_json::to_value(redact(&pl, &RoomVersionId::V10).unwrap()).unwrap();
        assert!(v10["content"].get("invite").is_none(), "v10 drops invite");
        let v11 = serde_json::to_value(redact(&pl, &RoomVersionId::V11).unwrap()).unwrap();
        assert_eq!(v11["content"]["invite"], 0, "v11 keeps invite");
        assert!(v11["content"].get("notifications").is_none());
    }

    #[test]
    fn v11_create_keeps_all_content() {
        let create = canon(json!({
            "type": "m.room.create", "state_key": "", "sender": "@a:x", "room_id": "!r:x",
            "content": { "room_version": "11", "custom": 1 }
        }));
        let r = serde_json::to_value(redact(&create, &RoomVersionId::V11).unwrap()).unwrap();
        assert_eq!(r["content"]["custom"], 1);
        let r10 = serde_json::to_value(redact(&create, &RoomVersionId::V10).unwrap()).unwrap();
        assert!(r10["content"].get("custom").is_none());
    }
}
