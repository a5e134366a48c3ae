//! Presence: `GET`/`PUT /presence/{userId}/status`.

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::api::client::presence::{get_presence, set_presence};
use serde_json::Value;

use crate::{
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router.ruma_json(get_presence).ruma(set_presence)
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
async fn get_presence(
    State(services): State<Arc<Services>>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    if !services.users.exists(&req.body.user_id)? {
        return Err(Error::not_found("Unknown user"));
    }
    Ok(Json(services.users.presence_content(&req.body.user_id)?))
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
async fn set_presence(
    State(services): State<Arc<Services>>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    if req.sender_user()? != &req.body.user_id {
        return Err(Error::forbidden("You cannot set another user's presence"));
    }
    services.users.set_presence(
        &req.body.user_id,
        req.body.presence.as_str(),
        req.body.status_msg.clone(),
    )?;
    Ok(set_presence::v3::Response::new())
}
