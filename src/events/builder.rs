//! Finishing a new event: choosing its auth events, content hash, signature and event id.

use ruma::{
    canonical_json::CanonicalJsonObject,
    events::{StateEventType, TimelineEventType},
    signatures::{hash_and_sign_event, reference_hash, JsonError},
    OwnedEventId, RoomVersionId, ServerName, UserId,
};
use serde_json::value::RawValue;

use super::{keys::ServerKeys, rules_for};
use crate::{Error, Result};

/// The largest PDU the spec allows, in bytes of canonical JSON: the complete event in the
/// federation format, signatures and hashes included.
pub const MAX_PDU_BYTES: usize = 65_536;

/// The ids of the current state events that authorise an event, per the spec's
/// "auth events selection"; `lookup` maps (type, state key) to the current event id.
pub fn auth_events_for(
    kind: &str,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawValue,
    version: &RoomVersionId,
    lookup: impl Fn(&StateEventType, &str) -> Option<OwnedEventId>,
) -> Result<Vec<OwnedEventId>> {
    let rules = rules_for(version)?;
    let kind = TimelineEventType::from(kind);
    let types = ruma::state_res::auth_types_for_event(
        &kind,
        sender,
        state_key,
        content,
        &rules.authorization,
    )
    .map_err(Error::bad_json)?;
    let mut ids: Vec<OwnedEventId> = Vec::with_capacity(types.len());
    for (kind, key) in types {
        if let Some(id) = lookup(&kind, &key) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// Adds the content hash and our signature, then derives the event id (reference hash).
/// A signed PDU over [`MAX_PDU_BYTES`] is refused with 413 `M_TOO_LARGE`.
pub fn finalize_event(
    keys: &ServerKeys,
    server_name: &ServerName,
    version: &RoomVersionId,
    mut object: CanonicalJsonObject,
) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let rules = rules_for(version)?;
    object.remove("event_id");
    object.remove("signatures");
    object.remove("hashes");
    // Cheap early refusal: signing only adds bytes.
    let unsigned_size = serde_json::to_vec(&object)?.len();
    if unsigned_size > MAX_PDU_BYTES {
        return Err(Error::too_large(format!(
            "Event is over {unsigned_size} bytes; the limit is {MAX_PDU_BYTES}"
        )));
    }
    hash_and_sign_event(
        server_name.as_str(),
        keys.pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(map_json_error)?;
    let hash = reference_hash(&object, &rules).map_err(map_json_error)?;
    let event_id = OwnedEventId::try_from(format!("${hash}"))
        .map_err(|e| Error::internal(format!("derived event id: {e}")))?;
    let size = serde_json::to_vec(&object)?.len();
    if size > MAX_PDU_BYTES {
        return Err(Error::too_large(format!(
            "Event is {size} bytes; the limit is {MAX_PDU_BYTES}"
        )));
    }
    Ok((event_id, object))
}

fn map_json_error(e: JsonError) -> Error {
    match e {
        JsonError::PduTooLarge => Error::too_large(format!(
            "Event is over {MAX_PDU_BYTES} bytes; the limit is {MAX_PDU_BYTES}"
        )),
        other => Error::bad_json(format!("event cannot be signed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use ruma::{server_name, CanonicalJsonValue};
    use serde_json::json;

    use super::*;
    use crate::events::keys::ServerKeys;

    fn spec_keys() -> ServerKeys {
        let seed =
            crate::events::keys::lenient_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
                .unwrap();
        ServerKeys::from_seed(&seed.try_into().unwrap(), "1").unwrap()
    }

    fn canon(v: serde_json::Value) -> CanonicalJsonObject {
        match CanonicalJsonValue::try_from(v).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        }
    }

    /// The spec's "Signing Events" vector: minimal event → known hash and signature.
    #[test]
    fn spec_event_signing_vector() {
        let mut o = canon(json!({
            "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
            "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
            "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
            "unsigned": { "age_ts": 1000000 }
        }));
        o.remove("signatures");
        o.remove("hashes");
        let rules = RoomVersionId::V10.rules().unwrap();
        hash_and_sign_event("domain", spec_keys().pair(), &mut o, &rules.redaction).unwrap();
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(
            v["hashes"]["sha256"],
            "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
        );
        assert_eq!(
            v["signatures"]["domain"]["ed25519:1"],
            "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        );
    }

    #[test]
    fn event_id_is_url_safe_reference_hash_and_stable() {
        let keys = spec_keys();
        let o = canon(json!({
            "room_id": "!x:domain", "sender": "@a:domain", "origin_server_ts": 1,
            "type": "m.room.message", "content": { "body": "hi" },
            "prev_events": [], "auth_events": [], "depth": 1
        }));
        let (id1, signed) = finalize_event(
            &keys,
            server_name!("domain"),
            &RoomVersionId::V11,
            o.clone(),
        )
        .unwrap();
        let (id2, _) =
            finalize_event(&keys, server_name!("domain"), &RoomVersionId::V11, o).unwrap();
        assert_eq!(id1, id2);
        assert!(id1.as_str().starts_with('$'));
        assert_eq!(id1.as_str().len(), 44);
        assert!(!id1.as_str().contains('+') && !id1.as_str().contains('/'));
        // The reference hash ignores `unsigned` and `signatures`.
        let mut with_unsigned = signed.clone();
        with_unsigned.insert(
            "unsigned".into(),
            CanonicalJsonValue::Object(Default::default()),
        );
        let rules = RoomVersionId::V11.rules().unwrap();
        assert_eq!(
            format!("${}", reference_hash(&with_unsigned, &rules).unwrap()),
            id1.as_str()
        );
        // Verifies with our public key.
        let mut keyset = ruma::signatures::PublicKeyMap::new();
        keyset.insert(
            "domain".into(),
            [(
                "ed25519:1".to_owned(),
                ruma::serde::Base64::parse(keys.public_key_base64()).unwrap(),
            )]
            .into(),
        );
        ruma::signatures::verify_event(&keyset, &signed, &rules).unwrap();
    }

    #[test]
    fn oversize_event_is_too_large() {
        let o = canon(json!({
            "room_id": "!x:domain", "sender": "@a:domain", "origin_server_ts": 1,
            "type": "m.room.message", "content": { "body": "x".repeat(70_000) },
            "prev_events": [], "auth_events": [], "depth": 1
        }));
        let err = finalize_event(&spec_keys(), server_name!("domain"), &RoomVersionId::V11, o)
            .unwrap_err();
        assert_eq!(err.errcode(), "M_TOO_LARGE");
    }

    /// The limit applies to the signed PDU, and 65,536 bytes are allowed.
    #[test]
    fn signed_pdu_of_exactly_the_limit_is_accepted() {
        let event = |len: usize| {
            canon(json!({
                "room_id": "!x:domain", "sender": "@a:domain", "origin_server_ts": 1,
                "type": "m.room.message", "content": { "body": "x".repeat(len) },
                "prev_events": [], "auth_events": [], "depth": 1
            }))
        };
        let keys = spec_keys();
        let finish = |len| {
            finalize_event(
                &keys,
                server_name!("domain"),
                &RoomVersionId::V11,
                event(len),
            )
        };
        let (_, signed) = finish(1000).unwrap();
        let overhead = serde_json::to_vec(&signed).unwrap().len() - 1000;
        let (_, signed) = finish(MAX_PDU_BYTES - overhead).unwrap();
        assert_eq!(serde_json::to_vec(&signed).unwrap().len(), MAX_PDU_BYTES);
        let err = finish(MAX_PDU_BYTES - overhead + 1).unwrap_err();
        assert_eq!(err.errcode(), "M_TOO_LARGE");
    }
}
