//! LiveKit access tokens: HS256 JWTs whose `iss` names an API key and whose `video` claim
//! grants joining one room.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 10;

/// The claims of a LiveKit access token that the SFU reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// API key that signed the token.
    pub iss: String,
    /// Participant identity (Element Call: `{userId}:{deviceId}`).
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Participant metadata (opaque string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Room grants.
    pub video: VideoGrant,
}

/// The `video` claim. Absent permissions default to allowed, as in LiveKit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(default)]
    pub room_join: bool,
    #[serde(default)]
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    /// Never announced to the other participants; may not publish tracks or data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// A recording client: while one is in the room, the room is being recorded
    /// (`Room.active_recording`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorder: bool,
}

/// What a valid token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub identity: String,
    /// When the token was issued (its `nbf`, seconds since the epoch; 0 when absent).
    pub issued_at: u64,
    pub name: String,
    pub metadata: String,
    pub room: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    /// Invisible to the others; `can_publish` and `can_publish_data` are then false.
    pub hidden: bool,
    /// A recorder: the room counts as recorded while it is present.
    pub recorder: bool,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown API key")]
    UnknownKey,
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token does not grant joining a room")]
    NoRoomJoin,
    #[error("token has no identity")]
    NoIdentity,
}

/// Validates `token` against the configured key → secret pairs.
pub fn validate_token(token: &str, keys: &BTreeMap<String, String>) -> Result<Grant, AuthError> {
    // Read `iss` first (unverified) to pick the secret, then verify everything with it.
    let mut peek = Validation::new(Algorithm::HS256);
    peek.insecure_disable_signature_validation();
    peek.validate_exp = false;
    peek.required_spec_claims.clear();
    let unverified = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&[]), &peek)
        .map_err(|_| AuthError::Malformed)?;
    let secret = keys
        .get(&unverified.claims.iss)
        .ok_or(AuthError::UnknownKey)?;

    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation.set_issuer(&[unverified.claims.iss.as_str()]);
    let claims = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Malformed,
        }
    })?
    .claims;

    if !claims.video.room_join || claims.video.room.is_empty() {
        return Err(AuthError::NoRoomJoin);
    }
    if claims.sub.is_empty() {
        return Err(AuthError::NoIdentity);
    }
    // A hidden participant must not be seen, so it may not publish anything either.
    let hidden = claims.video.hidden;
    Ok(Grant {
        name: claims.name.unwrap_or_default(),
        metadata: claims.metadata.unwrap_or_default(),
        room: claims.video.room,
        can_publish: claims.video.can_publish.unwrap_or(true) && !hidden,
        can_subscribe: claims.video.can_subscribe.unwrap_or(true),
        can_publish_data: claims.video.can_publish_data.unwrap_or(true) && !hidden,
        hidden,
        recorder: claims.video.recorder,
        issued_at: claims.nbf.unwrap_or(0),
        identity: claims.sub,
    })
}

/// Signs `claims` with `secret` (HS256); used by tests and tools.
pub fn sign_token(claims: &Claims, secret: &str) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|_| AuthError::Malformed)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([("APIkey".to_owned(), SECRET.to_owned())])
    }

    fn claims() -> Claims {
        let now = now_secs();
        Claims {
            iss: "APIkey".into(),
            sub: "@alice:localhost:DEVICE".into(),
            exp: now + 3600,
            nbf: Some(now - 5),
            name: None,
            metadata: None,
            video: VideoGrant {
                room_join: true,
                room: "roomhash".into(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(false),
                ..Default::default()
            },
        }
    }

    #[test]
    fn accepts_a_good_token() {
        let token = sign_token(&claims(), SECRET).unwrap();
        let grant = validate_token(&token, &keys()).unwrap();
        assert_eq!(grant.identity, "@alice:localhost:DEVICE");
        assert_eq!(grant.room, "roomhash");
        assert!(grant.can_publish && grant.can_subscribe && !grant.can_publish_data);
    }

    #[test]
    fn accepts_the_homeserver_token_shape() {
        // The claims exactly as Myelin's /sfu/get writes them (camelCase grants, iss = key).
        let now = now_secs();
        let json = serde_json::json!({
            "iss": "APIkey", "sub": "@bob:localhost:DEV2", "nbf": now, "exp": now + 3600,
            "video": {"roomJoin": true, "room": "abc", "canPublish": true,
                      "canSubscribe": true, "canPublishData": true}
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &json,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let grant = validate_token(&token, &keys()).unwrap();
        assert_eq!(grant.room, "abc");
        assert!(grant.can_publish_data);
    }

    #[test]
    fn hidden_and_recorder_grants() {
        // As LiveKit writes them: `hidden` and `recorder` booleans in the video grant.
        let now = now_secs();
        let json = serde_json::json!({
            "iss": "APIkey", "sub": "recorder", "nbf": now, "exp": now + 3600,
            "video": {"roomJoin": true, "room": "abc", "canPublish": true,
                      "canPublishData": true, "hidden": true, "recorder": true}
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &json,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let grant = validate_token(&token, &keys()).unwrap();
        assert!(grant.hidden && grant.recorder);
        // Hidden overrides the publish permissions; subscribing stays allowed.
        assert!(!grant.can_publish && !grant.can_publish_data && grant.can_subscribe);
        // Absent means false, and a visible recorder may publish.
        let mut visible = claims();
        visible.video.recorder = true;
        let grant = validate_token(&sign_token(&visible, SECRET).unwrap(), &keys()).unwrap();
        assert!(grant.recorder && !grant.hidden && grant.can_publish);
        let plain = validate_token(&sign_token(&claims(), SECRET).unwrap(), &keys()).unwrap();
        assert!(!plain.hidden && !plain.recorder);
    }

    #[test]
    fn refuses_bad_tokens() {
        let good = claims();
        let cases: Vec<(Claims, &str, AuthError)> = vec![
            (
                good.clone(),
                "wrong-secret-wrong-secret-wrong-secret",
                AuthError::BadSignature,
            ),
            (
                Claims {
                    iss: "other".into(),
                    ..good.clone()
                },
                SECRET,
                AuthError::UnknownKey,
            ),
            (
                Claims {
                    exp: now_secs() - 3600,
                    ..good.clone()
                },
                SECRET,
                AuthError::Expired,
            ),
            (
                Claims {
                    nbf: Some(now_secs() + 3600),
                    ..good.clone()
                },
                SECRET,
                AuthError::NotYetValid,
            ),
            (
                Claims {
                    video: VideoGrant {
                        room_join: false,
                        ..good.video.clone()
                    },
                    ..good.clone()
                },
                SECRET,
                AuthError::NoRoomJoin,
            ),
            (
                Claims {
                    video: VideoGrant {
                        room: String::new(),
                        ..good.video.clone()
                    },
                    ..good.clone()
                },
                SECRET,
                AuthError::NoRoomJoin,
            ),
            (
                Claims {
                    sub: String::new(),
                    ..good.clone()
                },
                SECRET,
                AuthError::NoIdentity,
            ),
        ];
        for (claims, secret, expected) in cases {
            let token = sign_token(&claims, secret).unwrap();
            assert_eq!(validate_token(&token, &keys()), Err(expected));
        }
        assert_eq!(
            validate_token("garbage", &keys()),
            Err(AuthError::Malformed)
        );
        assert_eq!(validate_token("", &keys()), Err(AuthError::Malformed));
    }

    #[test]
    fn refuses_other_algorithms() {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS512),
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(validate_token(&token, &keys()).is_err());
    }
}
