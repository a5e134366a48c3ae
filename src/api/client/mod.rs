//! Client-server API handlers, one file per spec section.

mod discovery;

use std::sync::Arc;

use axum::Router;

use crate::services::Services;

/// Every client-server route.
pub(crate) fn routes() -> Router<Arc<Services>> {
    let router = Router::new();
    discovery::routes(router)
}
