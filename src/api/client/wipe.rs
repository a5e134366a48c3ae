//! `POST /_matrix/client/unstable/io.myelin/rooms/{roomId}/wipe_history` (not in the
//! spec): the caller wipes the room's history up to now for themselves only. The rule
//! lives in `rooms::wipe`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    routing::post,
    Json, Router,
};
use ruma::RoomId;
use serde_json::{json, Value};

use crate::{api::ruma::RawJson, services::Services, Error, Result};

const WIPE_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/wipe_history";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route(WIPE_PATH, post(wipe_route))
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
