//! Myelin's room-kind endpoints (`io.myelin`, not in the spec): text mute for all, a
//! room's kind and roles, and unread totals per kind. The rules themselves live in
//! `rooms::kinds`; these handlers only parse and answer.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    routing::{get, put},
    Json, Router,
};
use ruma::{OwnedRoomId, RoomId};
use serde_json::{json, Value};

use crate::{api::ruma::RawJson, services::Services, Error, Result};

const TEXT_MUTE_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/text_mute";
const ROLES_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/roles";
const UNREAD_PATH: &str = "/_matrix/client/unstable/io.myelin/unread";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route(TEXT_MUTE_PATH, put(text_mute_route))
        .route(ROLES_PATH, get(roles_route))
        .route(UNREAD_PATH, get(unread_route))
}

fn room_id(raw: &str) -> Result<OwnedRoomId> {
    RoomId::parse(raw).map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))
}

/// `PUT /_matrix/client/unstable/io.myelin/rooms/{roomId}/text_mute` `{"muted": bool}`:
/// a moderator mutes (or unmutes) messages for everyone below moderator. Answers
/// `{"muted": bool}`.
async fn text_mute_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    let muted = req.body["muted"]
        .as_bool()
        .ok_or_else(|| Error::bad_json("`muted` must be true or false"))?;
    services
        .rooms
        .set_text_mute(&room_id, &req.session.user_id, muted)
        .await?;
    Ok(Json(json!({ "muted": muted })))
}

/// `GET /_matrix/client/unstable/io.myelin/rooms/{roomId}/roles`: `{"kind", "owner",
/// "moderators", "members", "invited", "max_members"}` for a joined member.
async fn roles_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    let roles = services.rooms.roles(
        &room_id,
        &req.session.user_id,
        services.config.groups.max_members,
    )?;
    Ok(Json(serde_json::to_value(roles)?))
}

/// `GET /_matrix/client/unstable/io.myelin/unread`: `{"conversations": {"rooms",
/// "notifications", "highlights"}, "groups": {…}, "virtual_rooms": {…}}`.
async fn unread_route(State(services): State<Arc<Services>>, req: RawJson) -> Result<Json<Value>> {
    let totals = services.push.unread_by_kind(&req.session.user_id)?;
    Ok(Json(serde_json::to_value(totals)?))
}
