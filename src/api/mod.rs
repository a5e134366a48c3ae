//! HTTP API: the axum router. Handlers are thin: parse, authorise, call a service, shape
//! the response.

mod admin;
pub mod client;
mod guest;
mod rtc_service;
pub mod ruma;
mod server_keys;

use std::sync::Arc;

use axum::{http::StatusCode, response::IntoResponse, Router};
use tower_http::{
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
    admin::routes(rtc_service::routes(server_keys::routes(client::routes())))
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors)
        // Requests are logged at DEBUG (`RUST_LOG=tower_http=debug`).
        .layer(TraceLayer::new_for_http())
        .with_state(services)
}

async fn unrecognized() -> Error {
    Error::unrecognized()
}

async fn method_not_allowed() -> impl IntoResponse {
    let (_, body) = Error::unrecognized().to_status_and_body();
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}
