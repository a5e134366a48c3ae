//! `/sync`.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json, Router};
use ruma::api::client::{filter::FilterDefinition, sync::sync_events};
use serde_json::Value;

use crate::{
    api::ruma::{RawJson, RouterJsonExt, Ruma},
    services::Services,
    sync::{sliding::SlidingRequest, SyncRequest},
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.ruma_json(sync_route).route(
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
        axum::routing::post(sliding_sync_route),
    )
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186)
async fn sliding_sync_route(
    State(services): State<Arc<Services>>,
    req: RawJson,
) -> Result<Json<Value>> {
    let timeout = match req.query.get("timeout") {
        Some(t) => Duration::from_millis(
            t.parse()
                .map_err(|_| Error::invalid_param("timeout must be a number of milliseconds"))?,
        ),
        None => Duration::ZERO,
    };
    let request = SlidingRequest {
        pos: req.query.get("pos").cloned(),
        timeout,
        body: req.body,
    };
    Ok(Json(
        services.sync.sliding_sync(&req.session, request).await?,
    ))
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
