//! Deleting a room (`io.myelin`, not in the spec): the owner of a group or virtual room
//! deletes it for everyone. The rules and the purge live in `purge`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    routing::delete,
    Json, Router,
};
use ruma::RoomId;
use serde_json::{json, Value};

use crate::{api::ruma::RawJson, services::Services, Error, Result};

const ROOM_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route(ROOM_PATH, delete(delete_room_route))
}

/// `DELETE /_matrix/client/unstable/io.myelin/rooms/{roomId}`: the owner deletes the
/// room; every member sees it move to `leave`, its call ends, then it is purged.
/// Answers `{}`.
async fn delete_room_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id =
        RoomId::parse(room).map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    services
        .purge
        .delete_room(&room_id, &req.session.user_id)
        .await?;
    Ok(Json(json!({})))
}
