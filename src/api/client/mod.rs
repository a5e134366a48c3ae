//! Client-server API handlers, one file per spec section.

mod account;
mod account_data;
mod appservice;
mod backup;
mod capabilities;
mod dehydrated_device;
mod device;
mod directory;
mod discovery;
mod ephemeral;
mod filter;
mod keys;
mod kinds;
mod media;
mod meetings;
mod membership;
mod myelin_rooms;
mod presence;
mod profile;
pub(crate) mod push_rules;
mod relations;
mod report;
mod room;
mod rtc;
mod session;
mod sync;
mod thirdparty;
mod thread_subscriptions;
mod thread_updates;
mod to_device;
mod user_directory;
mod voip;
mod wipe;

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
    let router = account::routes(router);
    let router = session::routes(router);
    let router = device::routes(router);
    let router = dehydrated_device::routes(router);
    let router = profile::routes(router);
    let router = presence::routes(router);
    let router = account_data::routes(router);
    let router = filter::routes(router);
    let router = push_rules::routes(router);
    let router = keys::routes(router);
    let router = to_device::routes(router);
    let router = backup::routes(router);
    let router = voip::routes(router);
    let router = media::routes(router);
    let router = user_directory::routes(router);
    let router = rtc::routes(router);
    let router = kinds::routes(router);
    let router = wipe::routes(router);
    let router = myelin_rooms::routes(router);
    let router = meetings::routes(router);
    let router = thirdparty::routes(router);
    let router = report::routes(router);
    let router = relations::routes(router);
    let router = thread_subscriptions::routes(router);
    let router = thread_updates::routes(router);
    let router = appservice::routes(router);
    sync::routes(router)
}
