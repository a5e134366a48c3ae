//! `/sync`.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json, Router};
use serde_json::Value;

use crate::{
    api::ruma::RawJson,
    services::Services,
    sync::{sliding::SlidingRequest, SyncRequest},
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    // `/sync` is read from the query string here rather than through ruma's request
    // type: ruma parses an inline filter on every request, while the sync service keeps
    // each distinct filter parsed once (every long poll of a client repeats it).
    router
        .route("/_matrix/client/v3/sync", axum::routing::get(sync_route))
        .route("/_matrix/client/r0/sync", axum::routing::get(sync_route))
        .route(
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
    mut req: RawJson,
) -> Result<Json<Value>> {
    let timeout = match req.query.get("timeout") {
        Some(t) => Duration::from_millis(
            t.parse()
                .map_err(|_| Error::invalid_param("timeout must be a number of milliseconds"))?,
        ),
        None => Duration::ZERO,
    };
    let full_state = match req.query.get("full_state").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid_param("full_state must be true or false")),
    };
    let set_presence = match req.query.remove("set_presence") {
        None => "online".to_owned(),
        Some(p) if ["online", "offline", "unavailable"].contains(&p.as_str()) => p,
        Some(_) => {
            return Err(Error::invalid_param(
                "set_presence must be online, offline or unavailable",
            ))
        }
    };
    let request = SyncRequest {
        since: req.query.remove("since"),
        timeout,
        full_state,
        filter: req.query.remove("filter"),
        set_presence: Some(set_presence),
    };
    Ok(Json(services.sync.sync(&req.session, request).await?))
}
