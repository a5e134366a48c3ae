//! Reporting content: `POST /rooms/{roomId}/report/{eventId}` and
//! `POST /rooms/{roomId}/report`.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::room::{report_content, report_room};
use serde_json::Value;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router.ruma(report_event).ruma(report_room_route)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report` (spec v1.13, MSC4151): `reason`.
async fn report_room_route(
    State(services): State<Arc<Services>>,
    req: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let user = req.sender_user()?;
    services
        .rooms
        .report_room(&req.body.room_id, user, req.body.reason.clone())
        .await?;
    Ok(report_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`: `reason` and the optional
/// `score` (-100 to 0) ruma does not model.
async fn report_event(
    State(services): State<Arc<Services>>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let user = req.sender_user()?;
    let score = match req.json_body.as_ref().and_then(|b| b.get("score")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| Error::invalid_param("score must be an integer"))?,
        ),
    };
    services
        .rooms
        .report_event(
            &req.body.room_id,
            &req.body.event_id,
            user,
            req.body.reason.clone(),
            score,
        )
        .await?;
    Ok(report_content::v3::Response::new())
}
