//! Myelin's per-message endpoints (`io.myelin`, not in the spec): the ticks of a message
//! (`GET .../rooms/{roomId}/event/{eventId}/ticks`, rules in `rooms::delivered`) and
//! wiping a room's history for oneself (`POST .../rooms/{roomId}/wipe_history`, rules in
//! `rooms::wipe`).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    routing::{get, post},
    Json, Router,
};
use ruma::{EventId, RoomId};
use serde_json::{json, Value};

use crate::{api::ruma::RawJson, services::Services, Error, Result};

const WIPE_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/wipe_history";
const TICKS_PATH: &str =
    "/_matrix/client/unstable/io.myelin/rooms/{room_id}/event/{event_id}/ticks";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route(WIPE_PATH, post(wipe_route))
        .route(TICKS_PATH, get(ticks_route))
}

/// `{"sent": true, "delivered": [user…], "read": [user…]}` for the event's sender (403
/// for anybody else); users in privacy mode never appear.
async fn ticks_route(
    State(services): State<Arc<Services>>,
    Path((room, event)): Path<(String, String)>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id =
        RoomId::parse(&room).map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    let event_id = EventId::parse(&event)
        .map_err(|e| Error::invalid_param(format!("invalid event id: {e}")))?;
    let user = &req.session.user_id;
    let (delivered, read) = services.rooms.ticks(&room_id, user, &event_id, |u| {
        services.users.sends_acknowledgements(u)
    })?;
    Ok(Json(
        json!({ "sent": true, "delivered": delivered, "read": read }),
    ))
}

/// Answers `{}` once the wipe is durable.
async fn wipe_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id =
        RoomId::parse(&room).map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    services
        .rooms
        .wipe_history(&room_id, &req.session.user_id)
        .await?;
    Ok(Json(json!({})))
}
