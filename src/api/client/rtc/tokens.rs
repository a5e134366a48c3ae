//! The MSC4195 LiveKit token endpoint.

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::api::client::rtc::livekit::get_token;
use serde_json::{json, Value};

use crate::{api::ruma::Ruma, services::Services, Error, Result};

/// Path of the stable form of the MSC4195 token endpoint (ruma knows only the unstable one).
pub(super) const GET_TOKEN_V1_PATH: &str = "/_matrix/client/v1/rtc/livekit/get_token";

/// `POST /_matrix/client/v1/rtc/livekit/get_token` (also the
/// `unstable/io.element.msc4195` path): a LiveKit token for the authenticated device.
pub(super) async fn get_token_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_token::v1::Request>,
) -> Result<Json<Value>> {
    let session = req.session()?;
    let body = &req.body;
    if body
        .server_name
        .as_deref()
        .is_some_and(|s| s != services.rooms.server_name())
    {
        return Err(Error::forbidden(format!(
            "This server issues tokens for its own SFU only ({})",
            services.rooms.server_name()
        )));
    }
    let grant = services.rtc.sfu_token(
        &session.user_id,
        session.device_id.as_str(),
        &body.room_id,
        &body.slot_id,
    )?;
    Ok(Json(json!({ "jwt": grant.jwt, "url": grant.url })))
}
