//! Third-party networks: `GET /thirdparty/protocols`, `/thirdparty/protocol/{protocol}`,
//! `/thirdparty/location[/{protocol}]`, `/thirdparty/user[/{protocol}]`.
//!
//! Protocols are what application services (bridges) declare; asking the registered
//! bridges for their protocol metadata and lookups is not implemented yet, so the server
//! knows no protocol: the list is empty, a named protocol is unknown (404), and a lookup by
//! alias or user id finds nothing. Element asks for the list at startup and does without
//! bridges when it is empty.

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, Router};
use ruma::{
    api::client::thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
        get_user_for_protocol, get_user_for_user_id,
    },
    thirdparty::Protocol,
};

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(get_protocols_route)
        .ruma(get_protocol_route)
        .ruma(get_location_for_protocol_route)
        .ruma(get_location_for_room_alias_route)
        .ruma(get_user_for_protocol_route)
        .ruma(get_user_for_user_id_route)
}

/// The protocols bridged by this server's application services: none yet (not asked).
fn protocols() -> BTreeMap<String, Protocol> {
    BTreeMap::new()
}

/// The protocol named `name`, or 404.
fn protocol(name: &str) -> Result<Protocol> {
    protocols()
        .remove(name)
        .ok_or_else(|| Error::not_found(format!("Unknown third-party protocol {name:?}")))
}

/// `GET /_matrix/client/v3/thirdparty/protocols`
async fn get_protocols_route(
    _: State<Arc<Services>>,
    _: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(protocols()))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
async fn get_protocol_route(
    _: State<Arc<Services>>,
    req: Ruma<get_protocol::v3::Request>,
) -> Result<get_protocol::v3::Response> {
    Ok(get_protocol::v3::Response::new(protocol(
        &req.body.protocol,
    )?))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
async fn get_location_for_protocol_route(
    _: State<Arc<Services>>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response> {
    protocol(&req.body.protocol)?;
    Ok(get_location_for_protocol::v3::Response::new(Vec::new()))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=...`
async fn get_location_for_room_alias_route(
    _: State<Arc<Services>>,
    _: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response> {
    Ok(get_location_for_room_alias::v3::Response::new(Vec::new()))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
async fn get_user_for_protocol_route(
    _: State<Arc<Services>>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response> {
    protocol(&req.body.protocol)?;
    Ok(get_user_for_protocol::v3::Response::new(Vec::new()))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=...`
async fn get_user_for_user_id_route(
    _: State<Arc<Services>>,
    _: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response> {
    Ok(get_user_for_user_id::v3::Response::new(Vec::new()))
}
