//! Test-only endpoints, compiled with the `test-hooks` feature (never in release builds):
//! the black-box tests use them to know that a long-poll is parked and to hold the server
//! at a failpoint.
//!
//! - `GET /_myelin/test/parked/{userId}` → `{"parked": n}`: long-polls of the user waiting
//!   for a wake-up right now.
//! - `GET /_myelin/test/positions` → `{"applied", "durable", "visible", "consumers":
//!   {name: position}}`: where the timeline stream and each pipeline consumer are.
//! - `GET /_myelin/test/media_waiting/{mediaId}` → `{"waiting": n}`: downloads waiting
//!   (`timeout_ms`) for the asynchronous upload of a local media id right now.
//! - `GET /_myelin/test/room_keys/{roomId}` → `{"total": n, "trees": {name: n}}`: the
//!   entries of every tree whose key or value mentions the room id (a purge leaves 0).
//! - `PUT /_myelin/test/failpoints/{name}` with `{"actions": "pause"}` (the `fail` crate's
//!   action syntax) configures a failpoint; `DELETE` removes it (a paused thread resumes).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    routing::{get, put},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{services::Services, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_myelin/test/parked/{user_id}", get(parked))
        .route("/_myelin/test/positions", get(positions))
        .route("/_myelin/test/media_waiting/{media_id}", get(media_waiting))
        .route("/_myelin/test/room_keys/{room_id}", get(room_keys))
        .route(
            "/_myelin/test/failpoints/{name}",
            put(set_failpoint).delete(remove_failpoint),
        )
}

/// `GET /_myelin/test/parked/{userId}`
async fn parked(
    State(services): State<Arc<Services>>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user = ruma::UserId::parse(user_id.as_str())
        .map_err(|e| Error::invalid_param(format!("user id: {e}")))?;
    Ok(Json(json!({ "parked": services.notifier.parked(&user) })))
}

/// `GET /_myelin/test/positions`
async fn positions(State(services): State<Arc<Services>>) -> Json<Value> {
    let consumers: serde_json::Map<String, Value> = services
        .pipeline
        .positions()
        .into_iter()
        .map(|(name, pos)| (name.to_owned(), json!(pos)))
        .collect();
    Json(json!({
        "applied": services.rooms.applied_pos(),
        "durable": services.rooms.durable_pos(),
        "visible": services.rooms.current_pos(),
        "consumers": consumers,
    }))
}

/// `GET /_myelin/test/media_waiting/{mediaId}`
async fn media_waiting(
    State(services): State<Arc<Services>>,
    Path(media_id): Path<String>,
) -> Json<Value> {
    Json(json!({ "waiting": services.media.waiting_downloads(&media_id) }))
}

/// `GET /_myelin/test/room_keys/{roomId}`
async fn room_keys(
    State(services): State<Arc<Services>>,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room = ruma::RoomId::parse(room_id.as_str())
        .map_err(|e| Error::invalid_param(format!("room id: {e}")))?;
    let trees = services.storage_entries_mentioning(room.as_bytes())?;
    let total: usize = trees.values().sum();
    Ok(Json(json!({ "total": total, "trees": trees })))
}

#[derive(Deserialize)]
struct FailpointBody {
    actions: String,
}

/// `PUT /_myelin/test/failpoints/{name}`
async fn set_failpoint(
    Path(name): Path<String>,
    Json(body): Json<FailpointBody>,
) -> Result<Json<Value>> {
    fail::cfg(name, &body.actions).map_err(Error::invalid_param)?;
    Ok(Json(json!({})))
}

/// `DELETE /_myelin/test/failpoints/{name}`
async fn remove_failpoint(Path(name): Path<String>) -> Json<Value> {
    fail::remove(name);
    Json(json!({}))
}
