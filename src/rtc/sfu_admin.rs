//! Client of the SFU's internal admin API, used for the moderators' "mute for all".
//!
//! `myelin-sfu` serves it next to its signalling endpoint (the SFU's WebSocket URL with
//! `ws`/`wss` replaced by `http`/`https`); every call carries
//! `Authorization: Bearer <secret>` with the secret shared by both sides
//! (`rtc.sfu_internal_secret`, or one derived from the LiveKit API secret when unset,
//! which is what the embedded SFU uses):
//!
//! - `POST /internal/mute_all_audio` `{"room", "except": [identity…]}` →
//!   `{"muted": [identity…]}`; 404 when the SFU has no such room (nobody is in the call).
//! - `GET /internal/rooms` → `{"rooms": [{"name", "participants": [identity…]}]}`: who
//!   is connected (delegated delayed leaves watch it);
//! - `POST /internal/close_room` `{"room"}` → `{"disconnected": [identity…]}`: everyone
//!   is told to leave without reconnecting and the room is closed; 404 for no such room.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::keys::LiveKitKeys;
use crate::{Error, Result};

/// The internal-API secret both sides derive from the LiveKit API secret when none is
/// configured: hex HMAC-SHA256 keyed with the API secret over a fixed label.
pub fn derived_internal_secret(keys: &LiveKitKeys) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(keys.api_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(b"myelin-sfu-internal-api");
    hex::encode(mac.finalize().into_bytes())
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

#[derive(Deserialize)]
struct MuteAllResponse {
    #[serde(default)]
    muted: Vec<String>,
}

/// The client.
pub struct SfuAdmin {
    base: String,
    secret: String,
    http: reqwest::Client,
}

impl SfuAdmin {
    /// A client for the SFU at `livekit_url` using the internal-API `secret`.
    pub fn new(livekit_url: &str, secret: String) -> Result<SfuAdmin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::internal(format!("SFU admin client: {e}")))?;
        Ok(SfuAdmin {
            base: http_base(livekit_url),
            secret,
            http,
        })
    }

    /// Mutes the published audio of every participant of the LiveKit room `room` whose
    /// identity is not in `keep` ("mute for all"); returns the identities muted. A room
    /// the SFU does not know has nobody to mute.
    pub async fn mute_all_audio_except(&self, room: &str, keep: &[String]) -> Result<Vec<String>> {
        let url = format!("{}/internal/mute_all_audio", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .json(&json!({ "room": room, "except": keep }))
            .send()
            .await
            .map_err(|e| sfu_unavailable(format!("mute_all_audio: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(sfu_unavailable(format!("mute_all_audio: {status}: {body}")));
        }
        let parsed: MuteAllResponse = response
            .json()
            .await
            .map_err(|e| sfu_unavailable(format!("mute_all_audio: bad response: {e}")))?;
        Ok(parsed.muted)
    }
}

impl SfuAdmin {
    /// Disconnects `user`'s participants from the LiveKit room `room` and has the SFU refuse
    /// the tokens issued to them until now; returns the identities disconnected.
    pub async fn remove_user(&self, room: &str, user: &str) -> Result<Vec<String>> {
        let url = format!("{}/internal/remove_participant", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .json(&json!({ "room": room, "user": user }))
            .send()
            .await
            .map_err(|e| sfu_unavailable(format!("remove_participant: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(sfu_unavailable(format!(
                "remove_participant: {status}: {body}"
            )));
        }
        let parsed: CloseRoomResponse = response
            .json()
            .await
            .map_err(|e| sfu_unavailable(format!("remove_participant: bad response: {e}")))?;
        Ok(parsed.disconnected)
    }
}

#[derive(Deserialize)]
struct CloseRoomResponse {
    #[serde(default)]
    disconnected: Vec<String>,
}

impl SfuAdmin {
    /// Closes the LiveKit room `room`, disconnecting its participants; returns their
    /// identities. A room the SFU does not know has nobody to disconnect.
    pub async fn close_room(&self, room: &str) -> Result<Vec<String>> {
        let url = format!("{}/internal/close_room", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .json(&json!({ "room": room }))
            .send()
            .await
            .map_err(|e| sfu_unavailable(format!("close_room: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(sfu_unavailable(format!("close_room: {status}: {body}")));
        }
        let parsed: CloseRoomResponse = response
            .json()
            .await
            .map_err(|e| sfu_unavailable(format!("close_room: bad response: {e}")))?;
        Ok(parsed.disconnected)
    }
}

#[derive(Deserialize)]
struct RoomsResponse {
    #[serde(default)]
    rooms: Vec<RoomEntry>,
}

#[derive(Deserialize)]
struct RoomEntry {
    name: String,
    #[serde(default)]
    participants: Vec<String>,
}

impl SfuAdmin {
    /// The identities connected to the LiveKit room `room` (`GET /internal/rooms`);
    /// empty when the SFU does not know the room.
    pub async fn participants(&self, room: &str) -> Result<Vec<String>> {
        let url = format!("{}/internal/rooms", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|e| Error::internal(format!("SFU rooms: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::internal(format!("SFU rooms: {}", response.status())));
        }
        let parsed: RoomsResponse = response
            .json()
            .await
            .map_err(|e| Error::internal(format!("SFU rooms: bad response: {e}")))?;
        Ok(parsed
            .rooms
            .into_iter()
            .find(|r| r.name == room)
            .map(|r| r.participants)
            .unwrap_or_default())
    }
}

fn sfu_unavailable(detail: String) -> Error {
    tracing::warn!(%detail, "SFU admin API call failed");
    Error::matrix(
        crate::ErrorKind::Upstream,
        "M_UNKNOWN",
        "The SFU did not accept the request",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{
        extract::State, http::StatusCode, response::IntoResponse, routing::post, Json, Router,
    };
    use serde_json::Value;

    use super::*;

    #[test]
    fn base_url_and_derived_secret() {
        assert_eq!(http_base("ws://127.0.0.1:7880/"), "http://127.0.0.1:7880");
        assert_eq!(http_base("wss://sfu.example"), "https://sfu.example");
        let a = LiveKitKeys::generate();
        let b = LiveKitKeys::generate();
        assert_eq!(derived_internal_secret(&a), derived_internal_secret(&a));
        assert_ne!(derived_internal_secret(&a), derived_internal_secret(&b));
        assert_eq!(derived_internal_secret(&a).len(), 64);
    }

    type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

    async fn fake_sfu(seen: Seen) -> String {
        let app = Router::new()
            .route(
                "/internal/mute_all_audio",
                post(
                    |State(seen): State<Seen>,
                     headers: http::HeaderMap,
                     Json(body): Json<Value>| async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock().unwrap().push((auth.clone(), body.clone()));
                        if auth.as_deref() != Some("Bearer s3cret") {
                            return (StatusCode::UNAUTHORIZED, Json(json!({}))).into_response();
                        }
                        if body["room"] == "nobody-here" {
                            return (StatusCode::NOT_FOUND, Json(json!({}))).into_response();
                        }
                        let keep: Vec<String> =
                            serde_json::from_value(body["except"].clone()).unwrap();
                        let muted: Vec<&str> = ["@a:x:DEV", "@b:x:DEV"]
                            .into_iter()
                            .filter(|i| !keep.iter().any(|k| k == i))
                            .collect();
                        (StatusCode::OK, Json(json!({ "muted": muted }))).into_response()
                    },
                ),
            )
            .with_state(seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("ws://{addr}")
    }

    #[tokio::test]
    async fn mute_for_all_against_a_fake_sfu() {
        let seen: Seen = Arc::default();
        let url = fake_sfu(seen.clone()).await;
        let admin = SfuAdmin::new(&url, "s3cret".to_owned()).unwrap();
        let muted = admin
            .mute_all_audio_except("room1", &["@a:x:DEV".to_owned()])
            .await
            .unwrap();
        assert_eq!(muted, vec!["@b:x:DEV".to_owned()]);
        let calls = seen.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, json!({"room": "room1", "except": ["@a:x:DEV"]}));

        // No such room at the SFU: nobody to mute.
        assert!(admin
            .mute_all_audio_except("nobody-here", &[])
            .await
            .unwrap()
            .is_empty());

        // A wrong secret is refused by the SFU and reported as a gateway error.
        let wrong = SfuAdmin::new(&url, "nope".to_owned()).unwrap();
        let err = wrong.mute_all_audio_except("room1", &[]).await.unwrap_err();
        assert_eq!(err.kind(), Some(crate::ErrorKind::Upstream));
    }

    #[tokio::test]
    async fn unreachable_sfu_is_a_gateway_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let admin = SfuAdmin::new(&format!("ws://{addr}"), "s".to_owned()).unwrap();
        let err = admin.mute_all_audio_except("r", &[]).await.unwrap_err();
        assert_eq!(err.kind(), Some(crate::ErrorKind::Upstream));
    }
}
