//! Matrix events: the PDU model, hashing, signing, event ids, redaction and the spec's
//! authorization rules for the room versions Myelin creates (10 and 11).

pub mod auth;
pub mod builder;
pub mod keys;
mod pdu;
pub mod redaction;
pub mod validate;

pub use pdu::{parse_event_id, Pdu};
use ruma::{room_version_rules::RoomVersionRules, RoomVersionId};

use crate::{Error, Result};

/// The room version new rooms get when the client does not ask for one.
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V11;

/// Room versions this server can create and serve, in the order advertised.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 2] = [RoomVersionId::V10, RoomVersionId::V11];

/// Parses a client-supplied room version, if we support it.
pub fn supported_room_version(version: &str) -> Option<RoomVersionId> {
    SUPPORTED_ROOM_VERSIONS
        .into_iter()
        .find(|v| v.as_str() == version)
}

/// The rules of a room version we support.
pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .filter(|_| SUPPORTED_ROOM_VERSIONS.contains(version))
        .ok_or_else(|| Error::internal(format!("room version {version} is not supported")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_versions() {
        assert_eq!(supported_room_version("10"), Some(RoomVersionId::V10));
        assert_eq!(supported_room_version("11"), Some(RoomVersionId::V11));
        assert_eq!(supported_room_version("9"), None);
        assert_eq!(supported_room_version("bogus"), None);
        assert!(rules_for(&RoomVersionId::V11).is_ok());
        assert!(rules_for(&RoomVersionId::V1).is_err());
    }
}
