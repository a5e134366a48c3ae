//! Client-server API handlers, one file per spec section.

mod capabilities;
mod directory;
mod discovery;
mod ephemeral;
mod membership;
mod room;
mod sync;

use std::sync::Arc;

use axum::Router;

use crate::services::Services;

/// Every client-server route.
pub(crate) fn routes() -> Router<Arc<Services>> {
    let router = Router::new();
    let router = discovery::routes(router);
    let router = capabilities::routes(router);
    let router = room::routes(router);
    let router = membership::routes(router);
    let router = directory::routes(router);
    let router = ephemeral::routes(router);
    sync::routes(router)
}
