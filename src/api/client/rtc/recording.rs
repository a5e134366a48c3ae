//! Myelin's meeting recording for moderators (the `myelin-recorder` extra package).

use std::sync::Arc;

use axum::{extract::State, Json};
use serde_json::Value;

use crate::{
    api::ruma::RawJson, rtc::recording::RecordingAction, services::Services, Error, Result,
};

/// Myelin's recording control (not in the spec).
pub(super) const RECORDING_PATH: &str =
    "/_matrix/client/unstable/io.myelin/rooms/{room_id}/recording";

/// `POST /_matrix/client/unstable/io.myelin/rooms/{roomId}/recording`
/// `{"action": "start"|"stop"}`: a joined moderator (power ≥ 50) starts or stops the
/// recording of the room's call. Both are idempotent; answers the recording's state
/// `{"active", "started_by"?, "started_ts"?}` (the room's `io.myelin.recording` state).
pub(super) async fn recording_route(
    State(services): State<Arc<Services>>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id = ruma::RoomId::parse(&room_id)
        .map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    let action = match req.body.get("action") {
        None => return Err(Error::missing_param("action is required")),
        Some(Value::String(action)) => RecordingAction::parse(action).ok_or_else(|| {
            Error::invalid_param(format!(
                "action must be \"start\" or \"stop\", not {action:?}"
            ))
        })?,
        Some(_) => return Err(Error::bad_json("action must be a string")),
    };
    let state = services
        .recording
        .act(&room_id, &req.session.user_id, action)
        .await?;
    Ok(Json(state))
}
