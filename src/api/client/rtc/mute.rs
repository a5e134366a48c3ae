//! Myelin's call-wide mute for moderators.

use std::sync::Arc;

use axum::{extract::State, Json};
use serde_json::{json, Value};

use crate::{api::ruma::RawJson, services::Services, Error, Result};

/// Myelin's "mute for all" for call moderators (not in the spec: Myelin's virtual rooms).
pub(super) const MUTE_ALL_PATH: &str =
    "/_matrix/client/unstable/io.myelin/rooms/{room_id}/rtc/mute_all";

/// `POST /_matrix/client/unstable/io.myelin/rooms/{roomId}/rtc/mute_all`: a moderator
/// (power ≥ 50) has the SFU mute the published audio of everyone else in the room's call.
/// Answers `{"muted": [identity…]}`.
pub(super) async fn mute_all_route(
    State(services): State<Arc<Services>>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id = ruma::RoomId::parse(&room_id)
        .map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    let muted = services
        .rtc
        .mute_call_for_all(&room_id, &req.session.user_id)
        .await?;
    Ok(Json(json!({ "muted": muted })))
}
