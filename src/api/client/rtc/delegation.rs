//! MSC4195's delegated delayed leave: `POST /_matrix/client/v1/rtc/livekit/delegate_delayed_leave`
//! (and Element Call's `unstable/io.element.msc4195` path). The watching lives in
//! `rtc::delegation`.

use std::sync::Arc;

use axum::{extract::State, Json};
use serde_json::{json, Value};

use crate::{
    api::ruma::RawJson, rtc::delegation::DelegationRequest, services::Services, Error, Result,
};

/// The stable and unstable paths of the endpoint.
pub(super) const DELEGATE_PATHS: &[&str] = &[
    "/_matrix/client/v1/rtc/livekit/delegate_delayed_leave",
    "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave",
];

fn field<'a>(body: &'a Value, key: &str) -> Result<&'a str> {
    body.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json(format!("`{key}` must be a string")))
}

/// `POST /_matrix/client/v1/rtc/livekit/delegate_delayed_leave` `{url, room_id, slot_id,
/// member_id, delay_id}`: the server restarts the delayed leave while the caller's
/// device is connected to the SFU and sends it when it disconnects. Answers `{}`.
pub(super) async fn delegate_delayed_leave_route(
    State(services): State<Arc<Services>>,
    req: RawJson,
) -> Result<Json<Value>> {
    let body = &req.body;
    let room_id = ruma::RoomId::parse(field(body, "room_id")?)
        .map_err(|e| Error::invalid_param(format!("invalid room_id: {e}")))?;
    services.rtc.delegate_delayed_leave(
        &req.session.user_id,
        req.session.device_id.as_str(),
        DelegationRequest {
            url: field(body, "url")?,
            room_id: &room_id,
            slot_id: field(body, "slot_id")?,
            member_id: field(body, "member_id")?,
            delay_id: field(body, "delay_id")?,
        },
    )?;
    Ok(Json(json!({})))
}
