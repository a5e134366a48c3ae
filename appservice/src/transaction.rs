//! The bodies the homeserver sends to an appservice: a transaction of events
//! (`PUT /_matrix/app/v1/transactions/{txnId}`) and a ping (`POST /_matrix/app/v1/ping`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One-time key counts per user, device and algorithm (MSC3202).
pub type OneTimeKeyCounts = BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>;

/// Algorithms with an unused fallback key, per user and device (MSC3202).
pub type UnusedFallbackKeyTypes = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// `PUT /_matrix/app/v1/transactions/{txnId}`: events in stream order, in client format.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// Timeline and state events, oldest first.
    pub events: Vec<Value>,
    /// Ephemeral events (MSC2409), sent only to appservices that asked for them; left out
    /// of the body when empty.
    #[serde(
        rename = "de.sorunome.msc2409.ephemeral",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ephemeral: Vec<Value>,
    /// To-device messages for the appservice's users (MSC2409/MSC4203), each with
    /// `to_user_id` and `to_device_id` besides `sender`, `type` and `content`.
    #[serde(
        rename = "de.sorunome.msc2409.to_device",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub to_device: Vec<Value>,
    /// Users whose devices the appservice must look at again, or may stop tracking
    /// (MSC3202).
    #[serde(
        rename = "org.matrix.msc3202.device_lists",
        default,
        skip_serializing_if = "DeviceLists::is_empty"
    )]
    pub device_lists: DeviceLists,
    /// Unclaimed one-time keys of the appservice's devices whose keys changed (MSC3202).
    #[serde(
        rename = "org.matrix.msc3202.device_one_time_keys_count",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub device_one_time_keys_count: OneTimeKeyCounts,
    /// Unused fallback key types of the same devices (MSC3202).
    #[serde(
        rename = "org.matrix.msc3202.device_unused_fallback_key_types",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub device_unused_fallback_key_types: UnusedFallbackKeyTypes,
}

/// `org.matrix.msc3202.device_lists` (as `device_lists` in `/sync`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLists {
    /// Users whose devices or keys changed, or who newly share a room with the
    /// appservice's users.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Users who no longer share any room with the appservice's users.
    #[serde(default)]
    pub left: Vec<String>,
}

impl DeviceLists {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// `POST /_matrix/app/v1/ping`: the body the homeserver sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingRequest {
    /// The transaction id the client passed to the homeserver's ping endpoint, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: the homeserver's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingResponse {
    /// Milliseconds the appservice took to answer.
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_body_leaves_out_empty_ephemeral() {
        let t = Transaction {
            events: vec![serde_json::json!({"type": "m.room.message"})],
            ..Transaction::default()
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"events": [{"type": "m.room.message"}]})
        );
        let t = Transaction {
            events: vec![],
            ephemeral: vec![serde_json::json!({"type": "m.typing"})],
            ..Transaction::default()
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"events": [], "de.sorunome.msc2409.ephemeral": [{"type": "m.typing"}]})
        );
    }

    #[test]
    fn encryption_fields_use_the_unstable_names_and_stay_out_when_empty() {
        let mut t = Transaction {
            to_device: vec![
                serde_json::json!({"type": "m.room_key_request", "to_user_id": "@a:hs"}),
            ],
            ..Transaction::default()
        };
        t.device_lists.changed.push("@b:hs".into());
        t.device_one_time_keys_count
            .entry("@a:hs".into())
            .or_default()
            .entry("DEV".into())
            .or_default()
            .insert("signed_curve25519".into(), 5);
        t.device_unused_fallback_key_types
            .entry("@a:hs".into())
            .or_default()
            .insert("DEV".into(), vec!["signed_curve25519".into()]);
        let body = serde_json::to_value(&t).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "events": [],
                "de.sorunome.msc2409.to_device": [{"type": "m.room_key_request", "to_user_id": "@a:hs"}],
                "org.matrix.msc3202.device_lists": {"changed": ["@b:hs"], "left": []},
                "org.matrix.msc3202.device_one_time_keys_count": {"@a:hs": {"DEV": {"signed_curve25519": 5}}},
                "org.matrix.msc3202.device_unused_fallback_key_types": {"@a:hs": {"DEV": ["signed_curve25519"]}},
            })
        );
        let back: Transaction = serde_json::from_value(body).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn ping_bodies() {
        let p = PingRequest {
            transaction_id: Some("t1".into()),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"transaction_id": "t1"})
        );
        assert_eq!(
            serde_json::to_value(PingRequest::default()).unwrap(),
            serde_json::json!({})
        );
        assert_eq!(
            serde_json::to_value(PingResponse { duration_ms: 12 }).unwrap(),
            serde_json::json!({"duration_ms": 12})
        );
    }
}
