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
        // ruma reads an inline filter it cannot parse as a filter id: say what is wrong
        // with it rather than that no such id exists.
        Some(sync_events::v3::Filter::FilterId(id)) if id.trim_start().starts_with('{') => {
            return Err(inline_filter_error(&id));
        }
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

/// The error for an inline filter that is not a valid filter definition.
fn inline_filter_error(text: &str) -> Error {
    match serde_json::from_str::<FilterDefinition>(text) {
        Err(e) if e.is_syntax() || e.is_eof() => {
            Error::not_json(format!("The inline filter is not JSON: {e}"))
        }
        Err(e) => Error::bad_json(format!("The inline filter is invalid: {e}")),
        Ok(_) => Error::bad_json("The inline filter is invalid"),
    }
}
