//! `/sync`.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json, Router};
use ruma::api::client::{filter::FilterDefinition, sync::sync_events};
use serde_json::Value;

use crate::{
    api::ruma::{RouterJsonExt, Ruma},
    services::Services,
    sync::SyncRequest,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.ruma_json(sync_route)
}

/// `GET /_matrix/client/v3/sync`
async fn sync_route(
    State(services): State<Arc<Services>>,
    req: Ruma<sync_events::v3::Request>,
) -> Result<Json<Value>> {
    let session = req.session()?.clone();
    let body = req.body;
    let filter = match body.filter {
        None => Value::Object(Default::default()),
        Some(sync_events::v3::Filter::FilterDefinition(def)) => serde_json::to_value(&def)?,
        Some(sync_events::v3::Filter::FilterId(id)) => {
            match services.users.get_filter(&session.user_id, &id)? {
                Some(v) => v,
                None => return Err(Error::not_found("Unknown filter")),
            }
        }
        Some(_) => serde_json::to_value(FilterDefinition::default())?,
    };
    let request = SyncRequest {
        since: body.since,
        timeout: body.timeout.unwrap_or(Duration::ZERO),
        full_state: body.full_state,
        filter,
        set_presence: Some(body.set_presence.as_str().to_owned()),
    };
    Ok(Json(services.sync.sync(&session, request).await?))
}
