//! Admin API, rooms: list (search, order, pages), details, members, state and blocking
//! (Synapse's `/_synapse/admin/v1/rooms...` shapes).

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use super::AdminRequest;
use crate::{
    rooms::{Membership, RoomOrder, RoomQuery},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_synapse/admin/v1/rooms", get(list_rooms))
        .route("/_synapse/admin/v1/rooms/{room_id}", get(room_details))
        .route("/_synapse/admin/v1/rooms/{room_id}/members", get(members))
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(state))
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/block",
            get(get_block).put(put_block),
        )
}

/// `GET /_synapse/admin/v1/rooms`
async fn list_rooms(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let query = RoomQuery {
        search_term: req
            .query("search_term")
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        order: req
            .query("order_by")
            .map(RoomOrder::parse)
            .transpose()?
            .unwrap_or_default(),
        backwards: req.backwards()?,
    };
    let rooms = services.rooms.list_room_summaries(&query)?;
    let total = rooms.len();
    let from = req.query_u64("from")?.unwrap_or(0);
    let (page, next) = req.page(rooms)?;
    let mut body = json!({
        "rooms": page,
        "offset": from,
        "total_rooms": total,
    });
    if let Some(next) = next {
        body["next_batch"] = json!(next);
    }
    if from > 0 {
        let limit = req.query_u64("limit")?.unwrap_or(100);
        body["prev_batch"] = json!(from.saturating_sub(limit));
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`
async fn room_details(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    let summary = services.rooms.room_summary(&room_id)?;
    let mut body = serde_json::to_value(&summary)?;
    body["blocked"] = json!(services.rooms.room_block(&room_id)?.is_some());
    Ok(Json(body))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`: the joined members.
async fn members(State(services): State<Arc<Services>>, req: AdminRequest) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found("Room not found"));
    }
    let members = services.rooms.members(&room_id)?;
    let mut joined: Vec<String> = members
        .with(Membership::Join)
        .map(|u| u.to_string())
        .collect();
    joined.sort();
    Ok(Json(json!({ "total": joined.len(), "members": joined })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the current state events.
async fn state(State(services): State<Arc<Services>>, req: AdminRequest) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    if !services.rooms.exists(&room_id)? {
        return Err(Error::not_found("Room not found"));
    }
    let map = services.rooms.current_state(&room_id)?;
    let events: Vec<Value> = services
        .rooms
        .state_events(&map)?
        .iter()
        .map(|pdu| pdu.to_client_event())
        .collect();
    Ok(Json(json!({ "state": events })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`
async fn get_block(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    Ok(Json(match services.rooms.room_block(&room_id)? {
        Some(block) => match block.user_id {
            Some(user) => json!({ "block": true, "user_id": user }),
            None => json!({ "block": true }),
        },
        None => json!({ "block": false }),
    }))
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block` with `{"block": bool}`.
async fn put_block(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let room_id = req.room_id(0)?;
    let block = req
        .body_bool("block")?
        .ok_or_else(|| Error::missing_param("block is required"))?;
    services
        .rooms
        .set_room_blocked(&room_id, block, req.caller.user())
        .await?;
    Ok(Json(json!({ "block": block })))
}
