//! The SFU token service (lk-jwt-service compatible: `POST /sfu/get` and `/get_token`,
//! with CORS) and `GET /_matrix/federation/v1/openid/userinfo`. The token service lives
//! at the homeserver's root so the default `livekit_service_url` is the homeserver itself.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use ruma::RoomId;
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};

use crate::{rtc::token::ROOM_CALL_SLOT, services::Services, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/sfu/get", post(sfu_get).options(preflight))
        .route("/get_token", post(get_token).options(preflight))
        .route(
            "/delegate_delayed_leave",
            post(delegate_delayed_leave).options(preflight),
        )
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(openid_userinfo),
        )
}

/// `OPTIONS` on the token endpoints: 200 (the CORS layer adds the headers).
async fn preflight() -> StatusCode {
    StatusCode::OK
}

/// The `openid_token` object of a token request.
#[derive(Deserialize)]
struct OpenIdToken {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    matrix_server_name: String,
}

/// `POST /sfu/get` body (Element Call's legacy request).
#[derive(Deserialize)]
struct LegacyRequest {
    #[serde(default)]
    room: String,
    openid_token: OpenIdToken,
    #[serde(default)]
    device_id: String,
}

/// `member` of a `/get_token` body.
#[derive(Deserialize, Default)]
struct Member {
    #[serde(default)]
    claimed_user_id: String,
    #[serde(default)]
    claimed_device_id: String,
}

/// `POST /get_token` body.
#[derive(Deserialize)]
struct TokenRequest {
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    openid_token: OpenIdToken,
    #[serde(default)]
    member: Member,
}

fn parse_body<T: DeserializeOwned>(services: &Services, body: &Bytes) -> Result<T> {
    if body.len() > services.config.max_request_size {
        return Err(Error::too_large("request body too large"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::not_json(format!("request body is not valid JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| Error::bad_json(format!("invalid request: {e}")))
}

fn room_id(s: &str) -> Result<&RoomId> {
    if s.is_empty() {
        return Err(Error::bad_json("missing room id"));
    }
    <&RoomId>::try_from(s).map_err(|e| Error::bad_json(format!("invalid room id: {e}")))
}

fn check_openid(token: &OpenIdToken) -> Result<()> {
    if token.access_token.is_empty() || token.matrix_server_name.is_empty() {
        return Err(Error::bad_json(
            "openid_token needs access_token and matrix_server_name",
        ));
    }
    Ok(())
}

/// `POST /sfu/get`: `{room, openid_token, device_id}` → `{url, jwt}` for the room's call.
async fn sfu_get(State(services): State<Arc<Services>>, body: Bytes) -> Result<Json<Value>> {
    let req: LegacyRequest = parse_body(&services, &body)?;
    check_openid(&req.openid_token)?;
    let room = room_id(&req.room)?;
    let grant = services.rtc.sfu_token_for_openid(
        &req.openid_token.access_token,
        &req.openid_token.matrix_server_name,
        room,
        ROOM_CALL_SLOT,
        Some(&req.device_id),
        None,
    )?;
    Ok(Json(json!({ "url": grant.url, "jwt": grant.jwt })))
}

/// `POST /get_token`: `{room_id, slot_id, openid_token, member}` → `{url, jwt}`.
async fn get_token(State(services): State<Arc<Services>>, body: Bytes) -> Result<Json<Value>> {
    let req: TokenRequest = parse_body(&services, &body)?;
    check_openid(&req.openid_token)?;
    let room = room_id(&req.room_id)?;
    if req.slot_id.is_empty() {
        return Err(Error::bad_json("missing slot_id"));
    }
    if req.member.claimed_user_id.is_empty() || req.member.claimed_device_id.is_empty() {
        return Err(Error::bad_json(
            "member needs claimed_user_id and claimed_device_id",
        ));
    }
    let grant = services.rtc.sfu_token_for_openid(
        &req.openid_token.access_token,
        &req.openid_token.matrix_server_name,
        room,
        &req.slot_id,
        Some(&req.member.claimed_device_id),
        Some(&req.member.claimed_user_id),
    )?;
    Ok(Json(json!({ "url": grant.url, "jwt": grant.jwt })))
}

/// `member` of a `/delegate_delayed_leave` body.
#[derive(Deserialize, Default)]
struct DelegatedMember {
    #[serde(default)]
    id: String,
    #[serde(default)]
    claimed_user_id: String,
    #[serde(default)]
    claimed_device_id: String,
}

/// `POST /delegate_delayed_leave` body (lk-jwt-service's).
#[derive(Deserialize)]
struct DelegateRequest {
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    openid_token: OpenIdToken,
    #[serde(default)]
    member: DelegatedMember,
    #[serde(default)]
    delay_id: String,
}

/// `POST /delegate_delayed_leave` (lk-jwt-service): `{room_id, slot_id, openid_token,
/// member, delay_id, delay_timeout, delay_cs_api_url}`: the homeserver (which is this
/// token service) takes over the member's delayed leave, as with MSC4195's endpoint.
/// `delay_cs_api_url` is not called: the delayed event must be one of this server's.
async fn delegate_delayed_leave(
    State(services): State<Arc<Services>>,
    body: Bytes,
) -> Result<Json<Value>> {
    let req: DelegateRequest = parse_body(&services, &body)?;
    check_openid(&req.openid_token)?;
    let room = room_id(&req.room_id)?;
    if req.slot_id.is_empty() || req.member.id.is_empty() || req.delay_id.is_empty() {
        return Err(Error::bad_json(
            "the request needs slot_id, member.id and delay_id",
        ));
    }
    if req.openid_token.matrix_server_name != services.rooms.server_name().as_str() {
        return Err(Error::forbidden(format!(
            "This token service only serves users of {}",
            services.rooms.server_name()
        )));
    }
    let grant = services.rtc.openid_grant(&req.openid_token.access_token)?;
    if !req.member.claimed_user_id.is_empty()
        && req.member.claimed_user_id != grant.user_id.as_str()
    {
        return Err(Error::matrix(
            crate::ErrorKind::Unauthenticated,
            "M_UNAUTHORIZED",
            "member.claimed_user_id does not match the OpenID token",
        ));
    }
    let device = if req.member.claimed_device_id.is_empty() {
        grant.device_id.to_string()
    } else {
        req.member.claimed_device_id.clone()
    };
    let url = services.rtc.sfu_url(room, &req.slot_id).to_owned();
    services.rtc.delegate_delayed_leave(
        &grant.user_id,
        &device,
        crate::rtc::delegation::DelegationRequest {
            url: &url,
            room_id: room,
            slot_id: &req.slot_id,
            member_id: &req.member.id,
            delay_id: &req.delay_id,
        },
    )?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct UserInfoQuery {
    #[serde(default)]
    access_token: String,
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=` → `{"sub": user}`.
async fn openid_userinfo(
    State(services): State<Arc<Services>>,
    query: std::result::Result<Query<UserInfoQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>> {
    let token = query.map(|Query(q)| q.access_token).unwrap_or_default();
    let grant = services.rtc.openid_grant(&token)?;
    Ok(Json(json!({ "sub": grant.user_id })))
}
