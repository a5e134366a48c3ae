//! Admin API, deleting rooms (Synapse's shapes): `DELETE /_synapse/admin/v1/rooms/{roomId}`
//! runs at once and answers what it did; `DELETE /_synapse/admin/v2/rooms/{roomId}` answers
//! a `delete_id` whose status (`complete` once done: Myelin runs it before answering) the
//! status endpoints read back while the server runs.

use std::sync::Arc;

use axum::{
    extract::State,
    routing::{delete, get},
    Json, Router,
};
use serde_json::{json, Value};

use super::AdminRequest;
use crate::{purge::DeleteOutcome, services::Services, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_synapse/admin/v1/rooms/{room_id}", delete(delete_v1))
        .route("/_synapse/admin/v2/rooms/{room_id}", delete(delete_v2))
        .route(
            "/_synapse/admin/v2/rooms/{room_id}/delete_status",
            get(room_delete_status),
        )
        .route(
            "/_synapse/admin/v2/rooms/delete_status/{delete_id}",
            get(delete_status),
        )
}

/// `block` (default false) and `purge` (default true) from the body; a replacement room
/// (`new_room_user_id`) is not offered.
fn options(req: &AdminRequest) -> Result<(bool, bool)> {
    if req.body_str("new_room_user_id")?.is_some() {
        return Err(Error::invalid_param(
            "new_room_user_id is not supported: members are removed without a replacement room",
        ));
    }
    Ok((
        req.body_bool("block")?.unwrap_or(false),
        req.body_bool("purge")?.unwrap_or(true),
    ))
}

fn shutdown_json(outcome: &DeleteOutcome) -> Value {
    json!({
        "kicked_users": outcome.kicked_users,
        "failed_to_kick_users": outcome.failed_to_kick_users,
        "local_aliases": outcome.local_aliases,
        "new_room_id": null,
    })
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}` `{"block"?, "purge"?}`
async fn delete_v1(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    let (block, purge) = options(&req)?;
    let outcome = services
        .purge
        .admin_delete(&room_id, req.caller.user(), block, purge)
        .await?;
    Ok(Json(shutdown_json(&outcome)))
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}` `{"block"?, "purge"?}` → `{"delete_id"}`
async fn delete_v2(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    let (block, purge) = options(&req)?;
    let delete_id = services
        .purge
        .admin_delete_recorded(&room_id, req.caller.user(), block, purge)
        .await?;
    Ok(Json(json!({ "delete_id": delete_id })))
}

fn status_json(delete_id: &str, room_id: &ruma::RoomId, outcome: &DeleteOutcome) -> Value {
    json!({
        "delete_id": delete_id,
        "room_id": room_id,
        "status": "complete",
        "shutdown_room": shutdown_json(outcome),
    })
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status` → `{"results": [...]}`
async fn room_delete_status(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    let results: Vec<Value> = services
        .purge
        .delete_statuses(None, Some(&room_id))?
        .iter()
        .map(|(id, room, outcome)| status_json(id, room, outcome))
        .collect();
    if results.is_empty() {
        return Err(Error::not_found("No delete task for this room"));
    }
    Ok(Json(json!({ "results": results })))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`
async fn delete_status(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let delete_id = req.text_param(0)?;
    match services
        .purge
        .delete_statuses(Some(delete_id), None)?
        .first()
    {
        Some((id, room, outcome)) => Ok(Json(status_json(id, room, outcome))),
        None => Err(Error::not_found("No such delete task")),
    }
}
