//! Meetings (`io.myelin`, not in the spec): join links, the lobby a link shows, joining
//! by link, the meetings list, a scheduled meeting's `.ics` and personal meeting rooms.
//! The rules live in `crate::meetings`; these handlers only parse and answer.

use std::sync::Arc;

use axum::{
    extract::{Path, Request, State},
    http::header,
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use ruma::{OwnedRoomId, RoomId};
use serde_json::{json, Value};

use crate::{
    api::{client_ip::ClientIp, ruma::RawJson},
    ratelimit::Action,
    services::Services,
    Error, Result,
};

const JOIN_LINK_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/join_link";
const JOIN_PATH: &str = "/_matrix/client/unstable/io.myelin/join/{token}";
const MEETINGS_PATH: &str = "/_matrix/client/unstable/io.myelin/meetings";
const ICS_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/meeting.ics";
const PERSONAL_ROOM_PATH: &str = "/_matrix/client/unstable/io.myelin/personal_room";

/// The profile field of a personal meeting link, under every profile prefix (extended
/// profiles: stable, r0 and MSC4133's unstable one).
const MEETING_LINK_PATHS: &[&str] = &[
    "/_matrix/client/v3/profile/{user_id}/io.myelin.meeting_link",
    "/_matrix/client/r0/profile/{user_id}/io.myelin.meeting_link",
    "/_matrix/client/unstable/uk.tcpip.msc4133/profile/{user_id}/io.myelin.meeting_link",
];

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    let router = MEETING_LINK_PATHS.iter().fold(router, |router, path| {
        router.route(path, get(meeting_link_field_route))
    });
    router
        .route(
            JOIN_LINK_PATH,
            post(create_join_link_route).delete(revoke_join_link_route),
        )
        .route(JOIN_PATH, get(lobby_route).post(join_route))
        .route(MEETINGS_PATH, get(meetings_route))
        .route(ICS_PATH, get(ics_route))
        .route(PERSONAL_ROOM_PATH, post(personal_room_route))
}

fn room_id(raw: &str) -> Result<OwnedRoomId> {
    RoomId::parse(raw).map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))
}

/// `POST /_matrix/client/unstable/io.myelin/rooms/{roomId}/join_link`: a moderator gets
/// the room's join link `{"token", "url"}` (the current one, else a new one).
async fn create_join_link_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let link = services
        .meetings
        .join_link(&room_id(&room)?, &req.session.user_id)
        .await?;
    Ok(Json(serde_json::to_value(link)?))
}

/// `DELETE /_matrix/client/unstable/io.myelin/rooms/{roomId}/join_link`: a moderator
/// revokes the link (its token then answers 404). Answers `{}`.
async fn revoke_join_link_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    services
        .meetings
        .revoke_link(&room_id(&room)?, &req.session.user_id)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/unstable/io.myelin/join/{token}` (no authentication, rate
/// limited per address): `{room_id, name, topic, avatar_url, kind, call: {active,
/// participants}}`.
async fn lobby_route(
    State(services): State<Arc<Services>>,
    Path(token): Path<String>,
    req: Request,
) -> Result<Json<Value>> {
    let (parts, _) = req.into_parts();
    let ip = ClientIp::of(&parts, services.rate_limits.trusted_proxies()).0;
    services.rate_limits.check_ip(Action::JoinByLink, ip)?;
    Ok(Json(services.meetings.lobby(&token)?))
}

/// `POST /_matrix/client/unstable/io.myelin/join/{token}` `{"display_name"?}`: the
/// caller (a local user or a guest) joins the link's room as a temporary participant.
/// Answers `{"room_id"}`.
async fn join_route(
    State(services): State<Arc<Services>>,
    Path(token): Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    services
        .rate_limits
        .check_session(Action::JoinByLink, &req.session)?;
    let display_name = match req.body.get("display_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.as_str()),
        Some(_) => return Err(Error::bad_json("`display_name` must be a string")),
    };
    let room_id = services
        .meetings
        .join_by_link(&token, &req.session, display_name)
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `GET /_matrix/client/unstable/io.myelin/meetings`: `{"ongoing": [...], "scheduled":
/// [...]}` over the caller's rooms (member or invitee).
async fn meetings_route(
    State(services): State<Arc<Services>>,
    req: RawJson,
) -> Result<Json<Value>> {
    let list = services.meetings.meetings(&req.session.user_id)?;
    Ok(Json(serde_json::to_value(list)?))
}

/// `GET /_matrix/client/unstable/io.myelin/rooms/{roomId}/meeting.ics`: the room's
/// scheduled meeting as `text/calendar` (members and invitees).
async fn ics_route(
    State(services): State<Arc<Services>>,
    Path(room): Path<String>,
    req: RawJson,
) -> Result<impl IntoResponse> {
    let text = services
        .meetings
        .meeting_ics(&room_id(&room)?, &req.session.user_id)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/calendar; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"meeting.ics\"",
            ),
        ],
        text,
    ))
}

/// `GET /_matrix/client/v3/profile/{userId}/io.myelin.meeting_link` (no authentication,
/// like the rest of a profile): `{"io.myelin.meeting_link": url}`, 404 when the user has
/// no personal meeting room.
async fn meeting_link_field_route(
    State(services): State<Arc<Services>>,
    Path(user): Path<String>,
) -> Result<Json<Value>> {
    let user = ruma::UserId::parse(user)
        .map_err(|e| Error::invalid_param(format!("invalid user id: {e}")))?;
    let link = services
        .meetings
        .personal_link(&user)?
        .ok_or_else(|| Error::not_found("This user has no personal meeting room"))?;
    Ok(Json(json!({ crate::meetings::MEETING_LINK_FIELD: link })))
}

/// `POST /_matrix/client/unstable/io.myelin/personal_room`: the caller's personal meeting
/// room `{"room_id", "token", "url"}`, created on the first call.
async fn personal_room_route(
    State(services): State<Arc<Services>>,
    req: RawJson,
) -> Result<Json<Value>> {
    let (room_id, link) = services
        .meetings
        .personal_room(&req.session.user_id)
        .await?;
    Ok(Json(
        json!({ "room_id": room_id, "token": link.token, "url": link.url }),
    ))
}
