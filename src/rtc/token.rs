//! LiveKit access tokens (HS256 JWTs) as lk-jwt-service issues them, and the LiveKit room
//! name a Matrix room and MatrixRTC slot map to.

use base64::{
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
    Engine,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::LiveKitKeys;
use crate::{Error, Result};

/// The slot of Element Call's room-wide call (`/sfu/get` and legacy clients).
pub const ROOM_CALL_SLOT: &str = "m.call#ROOM";

/// The LiveKit identity of the meeting recorder (no Matrix user id starts like this).
pub const RECORDER_IDENTITY: &str = "io.myelin.recorder";

/// The video grant of a LiveKit token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    /// May join `room`.
    #[serde(default)]
    pub room_join: bool,
    /// The LiveKit room name.
    #[serde(default)]
    pub room: String,
    /// May publish tracks.
    #[serde(default)]
    pub can_publish: bool,
    /// May subscribe to tracks.
    #[serde(default)]
    pub can_subscribe: bool,
    /// May send data packets.
    #[serde(default)]
    pub can_publish_data: bool,
    /// May administer the room (server-side APIs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_admin: bool,
    /// Not shown to the other participants (the meeting recorder).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// Records the room: the room is `activeRecording` while it is connected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorder: bool,
}

/// The claims of a LiveKit token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    pub nbf: u64,
    /// The API key.
    pub iss: String,
    /// The participant identity.
    pub sub: String,
    /// The grant.
    pub video: VideoGrant,
}

/// JSON the way Go's `encoding/json` writes it for a list of strings (`<`, `>` and `&`
/// escaped, as are U+2028 and U+2029): lk-jwt-service hashes exactly those bytes.
fn go_json_strings(items: &[&str]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let json = serde_json::Value::String((*item).to_owned()).to_string();
        for c in json.chars() {
            match c {
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
        }
    }
    out.push(']');
    out
}

/// The LiveKit room of a Matrix room's slot: unpadded standard base64 of the SHA-256 of
/// the JSON array `[room_id, slot]`.
pub fn livekit_room_name(room_id: &str, slot: &str) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(go_json_strings(&[room_id, slot]).as_bytes()))
}

/// The participant identity Element Call matches call members by.
pub fn identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

/// JSON with every character that could put `-` or `_` into its base64url form escaped.
///
/// Element Call decodes the payload with `atob()`, which rejects both. In base64 a 6-bit
/// group is 62 or 63 only when it takes the low six bits of a byte ending in `111110` or
/// `111111`; in ASCII that is `>`, `?`, `~` and DEL, and any byte of a multi-byte UTF-8
/// sequence can also produce one. JSON allows `\uXXXX` for all of them inside strings (the
/// only place they can occur), so escaping them changes nothing a decoder sees.
fn atob_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !matches!(c, '>' | '?' | '~' | '\u{7f}') {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Signs claims into a compact HS256 JWT whose segments are `atob()`-safe.
pub fn encode(claims: &Claims, keys: &LiveKitKeys) -> Result<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(atob_safe_json(&serde_json::to_string(claims)?));
    let message = format!("{header}.{payload}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(keys.api_secret.as_bytes()),
        Algorithm::HS256,
    )
    .map_err(|e| Error::internal(format!("signing LiveKit token: {e}")))?;
    Ok(format!("{message}.{signature}"))
}

/// Verifies a LiveKit token's signature, issuer and lifetime; returns its claims.
pub fn verify(jwt: &str, keys: &LiveKitKeys) -> Result<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[&keys.api_key]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    jsonwebtoken::decode::<Claims>(
        jwt,
        &DecodingKey::from_secret(keys.api_secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| {
        crate::Error::matrix(
            crate::ErrorKind::Unauthenticated,
            "M_UNKNOWN_TOKEN",
            format!("invalid LiveKit token: {e}"),
        )
    })
}

/// The claims of a participant token: join, publish, subscribe and send data in `room`.
pub fn participant_claims(
    keys: &LiveKitKeys,
    identity: String,
    room: String,
    now_secs: u64,
    ttl_secs: u64,
) -> Claims {
    Claims {
        exp: now_secs + ttl_secs,
        nbf: now_secs,
        iss: keys.api_key.clone(),
        sub: identity,
        video: VideoGrant {
            room_join: true,
            room,
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            room_admin: false,
            hidden: false,
            recorder: false,
        },
    }
}

/// The claims of the meeting recorder's token: a hidden participant of `room` that only
/// subscribes.
pub fn recorder_claims(keys: &LiveKitKeys, room: String, now_secs: u64, ttl_secs: u64) -> Claims {
    Claims {
        exp: now_secs + ttl_secs,
        nbf: now_secs,
        iss: keys.api_key.clone(),
        sub: RECORDER_IDENTITY.to_owned(),
        video: VideoGrant {
            room_join: true,
            room,
            can_publish: false,
            can_subscribe: true,
            can_publish_data: false,
            room_admin: false,
            hidden: true,
            recorder: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> LiveKitKeys {
        LiveKitKeys {
            api_key: "APIkey".into(),
            api_secret: "a-very-secret-secret-of-some-length".into(),
        }
    }

    fn now() -> u64 {
        crate::users::now_ms() / 1000
    }

    #[test]
    fn room_name_matches_lk_jwt_service() {
        // sha256(`["!abc:example.org","m.call#ROOM"]`), unpadded standard base64.
        assert_eq!(
            livekit_room_name("!abc:example.org", ROOM_CALL_SLOT),
            "9YzbCxM8P0fwObUtiQ9m/ujMP9ruNMxS7SOsugBEaxA"
        );
        // Go escapes HTML characters before hashing.
        assert_eq!(
            go_json_strings(&["a<b>&c", "\"q\""]),
            r#"["a\u003cb\u003e\u0026c","\"q\""]"#
        );
    }

    #[test]
    fn issue_and_verify_round_trip() {
        let keys = keys();
        let claims = participant_claims(
            &keys,
            identity("@alice:example.org", "DEVICE"),
            livekit_room_name("!r:example.org", ROOM_CALL_SLOT),
            now(),
            3600,
        );
        let jwt = encode(&claims, &keys).unwrap();
        let back = verify(&jwt, &keys).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.sub, "@alice:example.org:DEVICE");
        assert_eq!(back.iss, "APIkey");
        assert!(back.video.room_join && back.video.can_publish && back.video.can_subscribe);

        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["video"]["roomJoin"], true);
        assert_eq!(payload["video"]["canPublishData"], true);
        assert!(payload["video"].get("roomAdmin").is_none());

        let other = LiveKitKeys {
            api_secret: "other".into(),
            ..keys.clone()
        };
        assert!(verify(&jwt, &other).is_err(), "wrong secret");
        let expired = Claims {
            exp: now() - 120,
            nbf: now() - 4000,
            ..claims
        };
        assert!(verify(&encode(&expired, &keys).unwrap(), &keys).is_err());
    }

    #[test]
    fn payload_is_atob_safe_whatever_the_identity() {
        let keys = keys();
        for user in ["@a>b?c~d:x", "@ünï☃:x", "@😀:x", "@plain:x"] {
            for device in ["D", ">>", "~?~", "ÄÖÜ"] {
                let claims = participant_claims(
                    &keys,
                    identity(user, device),
                    livekit_room_name("!r:x", ROOM_CALL_SLOT),
                    now(),
                    3600,
                );
                let jwt = encode(&claims, &keys).unwrap();
                let payload = jwt.split('.').nth(1).unwrap();
                assert!(
                    !payload.contains('-') && !payload.contains('_'),
                    "{user} {device}: {payload}"
                );
                assert_eq!(verify(&jwt, &keys).unwrap().sub, identity(user, device));
            }
        }
    }
}
