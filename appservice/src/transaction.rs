//! The bodies the homeserver sends to an appservice: a transaction of events
//! (`PUT /_matrix/app/v1/transactions/{txnId}`) and a ping (`POST /_matrix/app/v1/ping`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
            ephemeral: vec![],
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"events": [{"type": "m.room.message"}]})
        );
        let t = Transaction {
            events: vec![],
            ephemeral: vec![serde_json::json!({"type": "m.typing"})],
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"events": [], "de.sorunome.msc2409.ephemeral": [{"type": "m.typing"}]})
        );
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
