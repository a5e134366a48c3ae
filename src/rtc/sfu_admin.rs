//! Client of the SFU's room-admin API, used for the moderators' "mute for all".
//!
//! The API is LiveKit's `RoomService` over Twirp with JSON bodies, so the homeserver
//! works with Myelin's SFU and with a LiveKit server alike. It is served on the SFU's
//! URL with `ws`/`wss` replaced by `http`/`https`; each call carries
//! `Authorization: Bearer <JWT>` signed with the shared LiveKit API secret and granting
//! `roomAdmin` for the one room concerned:
//!
//! - `POST /twirp/livekit.RoomService/ListParticipants` `{"room"}` →
//!   `{"participants": [{"sid", "identity", "tracks": [{"sid", "type", "muted"}]}]}`
//!   (`type` is `"AUDIO"`, `"VIDEO"` or `"DATA"`; absent means `AUDIO`, protobuf's zero value)
//! - `POST /twirp/livekit.RoomService/MutePublishedTrack`
//!   `{"room", "identity", "track_sid", "muted"}` → `{"track": {...}}`

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    keys::LiveKitKeys,
    token::{self, Claims, VideoGrant},
};
use crate::{users::now_ms, Error, Result};

/// Lifetime of the admin tokens the client signs.
const ADMIN_TOKEN_TTL_SECS: u64 = 60;

/// A published track as the SFU lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TrackInfo {
    /// Track id (`TR_…`).
    pub sid: String,
    /// `AUDIO`, `VIDEO` or `DATA` (or the enum number).
    #[serde(default, rename = "type")]
    pub kind: Option<Value>,
    /// Whether it is muted.
    #[serde(default)]
    pub muted: bool,
}

impl TrackInfo {
    /// Whether this is an audio track (protobuf omits the zero value `AUDIO`).
    pub fn is_audio(&self) -> bool {
        match &self.kind {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s == "AUDIO",
            Some(Value::Number(n)) => n.as_u64() == Some(0),
            Some(_) => false,
        }
    }
}

/// A participant as the SFU lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Participant id (`PA_…`).
    #[serde(default)]
    pub sid: String,
    /// `"{userId}:{deviceId}"`.
    pub identity: String,
    /// Published tracks.
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
}

#[derive(Deserialize)]
struct ListParticipantsResponse {
    #[serde(default)]
    participants: Vec<ParticipantInfo>,
}

/// The HTTP base URL of an SFU given by its WebSocket URL.
pub fn http_base(livekit_url: &str) -> String {
    let url = livekit_url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        url.to_owned()
    }
}

/// The client.
pub struct SfuAdmin {
    base: String,
    keys: LiveKitKeys,
    http: reqwest::Client,
}

impl SfuAdmin {
    /// A client for the SFU at `livekit_url`.
    pub fn new(livekit_url: &str, keys: LiveKitKeys) -> Result<SfuAdmin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::internal(format!("SFU admin client: {e}")))?;
        Ok(SfuAdmin {
            base: http_base(livekit_url),
            keys,
            http,
        })
    }

    /// A short-lived token granting `roomAdmin` on `room`.
    pub fn admin_token(&self, room: &str) -> Result<String> {
        let now = now_ms() / 1000;
        let claims = Claims {
            exp: now + ADMIN_TOKEN_TTL_SECS,
            nbf: now,
            iss: self.keys.api_key.clone(),
            sub: format!("myelin-admin-{}", self.keys.api_key),
            video: VideoGrant {
                room: room.to_owned(),
                room_admin: true,
                ..VideoGrant::default()
            },
        };
        token::encode(&claims, &self.keys)
    }

    async fn call(&self, method: &str, room: &str, body: Value) -> Result<Value> {
        let url = format!("{}/twirp/livekit.RoomService/{method}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(self.admin_token(room)?)
            .json(&body)
            .send()
            .await
            .map_err(|e| sfu_unavailable(format!("{method}: {e}")))?;
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .map_err(|e| sfu_unavailable(format!("{method}: bad response: {e}")))?;
        if !status.is_success() {
            return Err(sfu_unavailable(format!("{method}: {status}: {value}")));
        }
        Ok(value)
    }

    /// The participants of a LiveKit room.
    pub async fn list_participants(&self, room: &str) -> Result<Vec<ParticipantInfo>> {
        let value = self
            .call("ListParticipants", room, json!({ "room": room }))
            .await?;
        let parsed: ListParticipantsResponse = serde_json::from_value(value)
            .map_err(|e| sfu_unavailable(format!("ListParticipants: {e}")))?;
        Ok(parsed.participants)
    }

    /// Mutes or unmutes one published track.
    pub async fn mute_published_track(
        &self,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<()> {
        self.call(
            "MutePublishedTrack",
            room,
            json!({ "room": room, "identity": identity, "track_sid": track_sid, "muted": muted }),
        )
        .await
        .map(|_| ())
    }

    /// Mutes every unmuted published audio track in the room except those of `keep`
    /// identities ("mute for all"); returns how many tracks were muted.
    pub async fn mute_all_audio_except(&self, room: &str, keep: &[String]) -> Result<usize> {
        let mut muted = 0;
        for participant in self.list_participants(room).await? {
            if keep.contains(&participant.identity) {
                continue;
            }
            for track in participant
                .tracks
                .iter()
                .filter(|t| t.is_audio() && !t.muted)
            {
                self.mute_published_track(room, &participant.identity, &track.sid, true)
                    .await?;
                muted += 1;
            }
        }
        Ok(muted)
    }
}

fn sfu_unavailable(detail: String) -> Error {
    tracing::warn!(%detail, "SFU admin API call failed");
    Error::matrix(
        http::StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "The SFU did not accept the request",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{extract::State, routing::post, Json, Router};

    use super::*;

    #[test]
    fn base_url_and_track_kinds() {
        assert_eq!(http_base("ws://127.0.0.1:7880/"), "http://127.0.0.1:7880");
        assert_eq!(http_base("wss://sfu.example"), "https://sfu.example");
        let t = |v: Value| serde_json::from_value::<TrackInfo>(v).unwrap().is_audio();
        assert!(t(json!({"sid": "TR_a"})));
        assert!(t(json!({"sid": "TR_a", "type": "AUDIO"})));
        assert!(!t(json!({"sid": "TR_a", "type": "VIDEO"})));
        assert!(!t(json!({"sid": "TR_a", "type": 1})));
    }

    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    #[tokio::test]
    async fn mute_for_all_against_a_fake_sfu() {
        let keys = LiveKitKeys::generate();
        let seen: Seen = Arc::default();
        let check_keys = keys.clone();
        let handler = move |method: &'static str| {
            let keys = check_keys.clone();
            move |State(seen): State<Seen>, headers: http::HeaderMap, Json(body): Json<Value>| {
                let keys = keys.clone();
                async move {
                    let auth = headers["authorization"].to_str().unwrap();
                    let claims = token::verify(auth.strip_prefix("Bearer ").unwrap(), &keys)
                        .expect("admin token verifies");
                    assert!(claims.video.room_admin);
                    assert_eq!(claims.video.room, body["room"].as_str().unwrap());
                    seen.lock().unwrap().push((method.to_owned(), body));
                    Json(match method {
                        "ListParticipants" => json!({"participants": [
                            {"sid": "PA_1", "identity": "@mod:x:D", "tracks": [{"sid": "TR_m"}]},
                            {"sid": "PA_2", "identity": "@a:x:D", "tracks": [
                                {"sid": "TR_a1"}, {"sid": "TR_v", "type": "VIDEO"},
                                {"sid": "TR_a2", "type": "AUDIO", "muted": true}]},
                        ]}),
                        _ => json!({"track": {}}),
                    })
                }
            }
        };
        let app = Router::new()
            .route(
                "/twirp/livekit.RoomService/ListParticipants",
                post(handler("ListParticipants")),
            )
            .route(
                "/twirp/livekit.RoomService/MutePublishedTrack",
                post(handler("MutePublishedTrack")),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let admin = SfuAdmin::new(&format!("ws://{addr}"), keys).unwrap();
        let muted = admin
            .mute_all_audio_except("ROOM", &["@mod:x:D".to_owned()])
            .await
            .unwrap();
        assert_eq!(muted, 1);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[1],
            (
                "MutePublishedTrack".to_owned(),
                json!({"room": "ROOM", "identity": "@a:x:D", "track_sid": "TR_a1", "muted": true})
            )
        );
    }

    #[tokio::test]
    async fn unreachable_sfu_is_a_gateway_error() {
        let admin = SfuAdmin::new("ws://127.0.0.1:9", LiveKitKeys::generate()).unwrap();
        let err = admin.list_participants("ROOM").await.unwrap_err();
        assert_eq!(err.to_status_and_body().0, http::StatusCode::BAD_GATEWAY);
    }
}
