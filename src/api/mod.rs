//! HTTP API: the axum router. Handlers are thin: parse, authorise, call a service, shape
//! the response.

mod admin;
pub mod client;
pub mod client_ip;
pub mod error;
mod guest;
mod health;
mod media_admin;
pub mod metrics;
mod ops_backup;
mod rtc_service;
pub mod ruma;
pub mod serve;
mod server_keys;
#[cfg(feature = "test-hooks")]
mod test_hooks;

use std::sync::Arc;

use axum::{
    http::{Method, StatusCode, Uri},
    response::IntoResponse,
    Router,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    trace::TraceLayer,
};

use crate::{services::Services, Error};

/// The whole HTTP application.
pub fn router(services: Arc<Services>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any);
    let routes = admin::routes(rtc_service::routes(server_keys::routes(client::routes())));
    let routes = media_admin::routes(ops_backup::routes(health::routes(routes)));
    let routes = crate::web::routes(routes);
    #[cfg(feature = "test-hooks")]
    let routes = test_hooks::routes(routes);
    let routes = routes
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed);
    // Counted per matched route only when metrics are on (the recorder is installed).
    let routes = if services.config.metrics.listen.is_some() {
        routes.layer(axum::middleware::from_fn(metrics::track_requests))
    } else {
        routes
    };
    routes
        .layer(cors)
        // A panic is our bug: the client still gets a Matrix error, not a dropped
        // connection (the panic itself is logged by the panic hook and here).
        .layer(CatchPanicLayer::custom(panic_response))
        // Requests are logged at DEBUG (`RUST_LOG=tower_http=debug`).
        .layer(TraceLayer::new_for_http())
        .with_state(services)
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    Error::internal(format!("request handler panicked: {what}")).into_response()
}

/// Unknown endpoints are logged (path only, never the query, which may hold a token) so
/// that what a client expects and this server lacks shows up in the log.
async fn unrecognized(method: Method, uri: Uri) -> Error {
    tracing::info!(%method, path = uri.path(), "unrecognized endpoint");
    Error::unrecognized()
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    tracing::info!(%method, path = uri.path(), "method not allowed");
    let body = Error::unrecognized().body();
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}
