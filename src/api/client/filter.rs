//! Sync filters: `POST`/`GET /user/{userId}/filter`.

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::api::client::filter::{create_filter, get_filter};
use serde_json::Value;

use crate::{
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router.ruma(create_filter).ruma_json(get_filter)
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
async fn create_filter(
    State(services): State<Arc<Services>>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    if req.sender_user()? != &req.body.user_id {
        return Err(Error::forbidden(
            "You cannot create filters for another user",
        ));
    }
    // Store what the client sent (ruma has already checked its shape).
    let filter = match &req.json_body {
        Some(body) => body.clone(),
        None => serde_json::to_value(&req.body.filter)?,
    };
    let id = services
        .users
        .create_filter(&req.body.user_id, filter)
        .await?;
    Ok(create_filter::v3::Response::new(id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
async fn get_filter(
    State(services): State<Arc<Services>>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<Json<Value>> {
    if req.sender_user()? != &req.body.user_id {
        return Err(Error::forbidden("You cannot read another user's filters"));
    }
    services
        .users
        .get_filter(&req.body.user_id, &req.body.filter_id)?
        .map(Json)
        .ok_or_else(|| Error::not_found("Unknown filter"))
}
