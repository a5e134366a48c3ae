//! HTTP surface: LiveKit signalling (`/rtc`, `/rtc/validate`, 404 on `/rtc/v1…` so
//! clients fall back to the two-connection protocol; all with CORS for browsers) and the
//! internal admin API.
//!
//! # Internal API
//!
//! Enabled when `[internal] secret` is set; every call needs
//! `Authorization: Bearer <secret>` (401 otherwise) and a JSON body.
//!
//! * `POST /internal/mute` `{"room", "identity", "muted": bool, "kind"?: "audio"|"video"}`
//!   mutes (stops forwarding) or unmutes that participant's tracks of `kind` (all when
//!   absent). The owner gets `SignalResponse.mute`, everyone an updated `TrackInfo.muted`.
//!   Answers `{"tracks": n}`; 404 when the room or identity is not there.
//! * `POST /internal/mute_all_audio` `{"room", "except"?: [identity…]}` mutes the audio of
//!   every participant not listed. Answers `{"muted": [identity…]}`; 404 for no such room.
//! * `POST /internal/close_room` `{"room"}` tells every participant to leave without
//!   reconnecting (reason `ROOM_DELETED`) and closes the room. Answers
//!   `{"disconnected": [identity…]}`; 404 for no such room.
//! * `GET /internal/rooms` answers `{"rooms": [{"name", "participants": [identity…],
//!   "hidden": [identity…], "recording": bool}]}` (`participants` are the visible ones).
//!
//! Metrics (rooms, participants, tracks, RTP packets/bytes in and out, relayed data
//! packets) go to the process's Prometheus recorder: `myelin serve`'s `/metrics` for the
//! embedded SFU, [`metrics_app`] on `metrics_listen` for the standalone one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use livekit_protocol as proto;
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

use crate::auth::validate_token;
use crate::room::Sfu;

/// Largest signalling message accepted (SDP with many tracks stays far below).
const MAX_SIGNAL_MESSAGE: usize = 1 << 20;

/// The SFU's router.
pub fn app(sfu: Arc<Sfu>) -> Router {
    // Browsers reach the signalling endpoints from the app's origin (Element Call's page),
    // never the SFU's own, so these answer with CORS headers: without them livekit-client
    // cannot read `/rtc/v1/validate`'s 404, takes the SFU for unreachable and never falls
    // back to `/rtc`. The internal API stays without CORS.
    let signalling = Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", any(not_found))
        .route("/rtc/v1/{*rest}", any(not_found))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::OPTIONS])
                .allow_headers(Any),
        );
    Router::new()
        .merge(signalling)
        .route("/internal/mute", post(mute))
        .route("/internal/mute_all_audio", post(mute_all_audio))
        .route("/internal/remove_participant", post(remove_participant))
        .route("/internal/close_room", post(close_room))
        .route("/internal/rooms", get(rooms))
        .route("/", get(|| async { "OK" }))
        .with_state(sfu)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// `GET /rtc?access_token=…` — upgrades to the signalling WebSocket (protobuf, or JSON
/// with `format=json`, see [`crate::wire`]).
async fn rtc(
    State(sfu): State<Arc<Sfu>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let token = query.get("access_token").map(String::as_str).unwrap_or("");
    let grant = match validate_token(token, &sfu.config.keys) {
        Ok(grant) => grant,
        Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    // Someone the homeserver removed from the room's calls cannot come back with a token
    // issued before; a new one (after they rejoin) works.
    if sfu.was_removed(&grant.room, &grant.identity, grant.issued_at) {
        return (
            StatusCode::FORBIDDEN,
            "removed from this room; ask for a new token",
        )
            .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // This server cannot resume sessions: ask the client for a full reconnect.
    let auto_subscribe = query
        .get("auto_subscribe")
        .is_none_or(|v| v != "0" && v != "false");
    let resume = query
        .get("reconnect")
        .is_some_and(|v| v == "1" || v == "true");
    let wire = crate::wire::Wire::from_query(query.get("format").map(String::as_str));
    upgrade
        .max_message_size(MAX_SIGNAL_MESSAGE)
        .on_upgrade(move |socket| async move {
            if resume {
                refuse_resume(socket, wire).await;
            } else {
                crate::signal::run(sfu, grant, auto_subscribe, wire, socket).await;
            }
        })
}

async fn refuse_resume(mut socket: axum::extract::ws::WebSocket, wire: crate::wire::Wire) {
    let leave = proto::SignalResponse {
        message: Some(proto::signal_response::Message::Leave(
            proto::LeaveRequest {
                can_reconnect: true,
                reason: proto::DisconnectReason::StateMismatch as i32,
                action: proto::leave_request::Action::Reconnect as i32,
                regions: None,
            },
        )),
    };
    let _ = socket.send(wire.encode(&leave)).await;
    let _ = socket.send(axum::extract::ws::Message::Close(None)).await;
}

/// `GET /rtc/validate?access_token=…` — 200 for a usable token, 401 otherwise.
async fn validate(
    State(sfu): State<Arc<Sfu>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let token = query.get("access_token").map(String::as_str).unwrap_or("");
    match validate_token(token, &sfu.config.keys) {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err(e) => (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}

/// `None` when the request carries the internal secret, else the response refusing it.
fn refusal(sfu: &Sfu, headers: &HeaderMap) -> Option<Response> {
    let Some(secret) = sfu.config.internal.secret.as_deref() else {
        return Some(not_found_json());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        None
    } else {
        Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "bad or missing bearer token"})),
            )
                .into_response(),
        )
    }
}

/// An internal-API request's JSON body, once the request carries the internal secret;
/// else the response refusing it (401, or 400 for a body that does not parse).
fn internal_request<T>(
    sfu: &Sfu,
    headers: &HeaderMap,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Box<Response>> {
    if let Some(refused) = refusal(sfu, headers) {
        return Err(Box::new(refused));
    }
    body.map(|Json(body)| body).map_err(|e| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.body_text()})),
            )
                .into_response(),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found_json() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))).into_response()
}

#[derive(Deserialize)]
struct MuteBody {
    room: String,
    identity: String,
    muted: bool,
    #[serde(default)]
    kind: Option<String>,
}

/// `POST /internal/mute`
async fn mute(
    State(sfu): State<Arc<Sfu>>,
    headers: HeaderMap,
    body: Result<Json<MuteBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match internal_request(&sfu, &headers, body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let kind = match body.kind.as_deref() {
        None => None,
        Some("audio") => Some(proto::TrackType::Audio),
        Some("video") => Some(proto::TrackType::Video),
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "kind must be \"audio\" or \"video\""})),
            )
                .into_response()
        }
    };
    let Some(room) = sfu.find_room(&body.room) else {
        return not_found_json();
    };
    match room.mute_identity(&body.identity, kind, body.muted).await {
        Some(n) => Json(json!({"tracks": n})).into_response(),
        None => not_found_json(),
    }
}

#[derive(Deserialize)]
struct RemoveBody {
    room: String,
    user: String,
}

/// `POST /internal/remove_participant` `{room, user}`: disconnects `user`'s participants
/// (identities `{user}:{device}`) from `room` and refuses the tokens issued to them until
/// now; answers `{"disconnected": [identity…]}` (also for a room with nobody in it).
async fn remove_participant(
    State(sfu): State<Arc<Sfu>>,
    headers: HeaderMap,
    body: Result<Json<RemoveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match internal_request(&sfu, &headers, body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let disconnected = sfu.remove_user(&body.room, &body.user);
    Json(json!({ "disconnected": disconnected })).into_response()
}

#[derive(Deserialize)]
struct MuteAllBody {
    room: String,
    #[serde(default)]
    except: Vec<String>,
}

/// `POST /internal/mute_all_audio`
async fn mute_all_audio(
    State(sfu): State<Arc<Sfu>>,
    headers: HeaderMap,
    body: Result<Json<MuteAllBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match internal_request(&sfu, &headers, body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let Some(room) = sfu.find_room(&body.room) else {
        return not_found_json();
    };
    let mut muted = Vec::new();
    for identity in room.identities() {
        if body.except.contains(&identity) {
            continue;
        }
        if room
            .mute_identity(&identity, Some(proto::TrackType::Audio), true)
            .await
            .is_some()
        {
            muted.push(identity);
        }
    }
    Json(json!({"muted": muted})).into_response()
}

#[derive(Deserialize)]
struct CloseRoomBody {
    room: String,
}

/// `POST /internal/close_room`
async fn close_room(
    State(sfu): State<Arc<Sfu>>,
    headers: HeaderMap,
    body: Result<Json<CloseRoomBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match internal_request(&sfu, &headers, body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    match sfu
        .close_room(&body.room, proto::DisconnectReason::RoomDeleted)
        .await
    {
        Some(disconnected) => Json(json!({"disconnected": disconnected})).into_response(),
        None => not_found_json(),
    }
}

/// `GET /internal/rooms`
async fn rooms(State(sfu): State<Arc<Sfu>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&sfu, &headers) {
        return r;
    }
    let rooms: Vec<_> = sfu
        .room_names()
        .into_iter()
        .filter_map(|name| sfu.find_room(&name))
        .map(|room| {
            json!({
                "name": room.name,
                "participants": room.identities(),
                "hidden": room.hidden_identities(),
                "recording": room.is_recording(),
            })
        })
        .collect();
    Json(json!({"rooms": rooms})).into_response()
}

/// The standalone SFU's metrics listener: `GET /metrics` in Prometheus text, with the
/// room gauges taken at scrape time.
pub fn metrics_app(sfu: Arc<Sfu>, handle: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let (sfu, handle) = (sfu.clone(), handle.clone());
            async move {
                sfu.gauges().publish();
                handle.run_upkeep();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}
