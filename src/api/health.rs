//! `GET /health`: for load balancers and container health checks; no authentication.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, routing::get, Router};

use crate::services::Services;

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route("/health", get(health))
}

/// `GET /health`: `200 OK` when the server can serve (its database answers a read),
/// `503` otherwise.
async fn health(State(services): State<Arc<Services>>) -> (StatusCode, &'static str) {
    match services.check_storage_readable() {
        Ok(()) => (StatusCode::OK, "OK"),
        Err(e) => {
            tracing::error!(error = %e, "health check: storage unreadable");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}
