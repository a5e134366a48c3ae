//! Client-server API handlers, one file per spec section.

mod account;
mod account_data;
mod device;
mod discovery;
mod filter;
mod presence;
mod profile;
mod push_rules;
mod session;

use std::sync::Arc;

use axum::Router;

use crate::services::Services;

/// Every client-server route.
pub(crate) fn routes() -> Router<Arc<Services>> {
    let router = Router::new();
    let router = discovery::routes(router);
    let router = account::routes(router);
    let router = session::routes(router);
    let router = device::routes(router);
    let router = profile::routes(router);
    let router = presence::routes(router);
    let router = account_data::routes(router);
    let router = filter::routes(router);
    push_rules::routes(router)
}
