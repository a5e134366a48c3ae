//! Third-party networks: `GET /thirdparty/protocols`, `/thirdparty/protocol/{protocol}`,
//! `/thirdparty/location[/{protocol}]`, `/thirdparty/user[/{protocol}]`.
//!
//! Protocols are what the registered application services (bridges) declare; the
//! metadata and the lookups come from the bridges themselves, asked at request time and
//! merged (see `appservice::thirdparty`). Answers a bridge gives that do not have the
//! spec's shape are left out. Without bridges the list is empty, a named protocol is
//! unknown (404) and lookups find nothing; Element asks for the list at startup.

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, Router};
use ruma::{
    api::client::thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
        get_user_for_protocol, get_user_for_user_id,
    },
    thirdparty::Protocol,
};

use serde_json::Value;

use crate::{
    api::ruma::{RouterExt, Ruma},
    appservice::thirdparty::Lookup,
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

/// Parses what the bridges answered into the spec's types, leaving out what does not fit.
fn parsed<T: serde::de::DeserializeOwned>(values: Vec<Value>) -> Vec<T> {
    values
        .into_iter()
        .filter_map(|v| match serde_json::from_value(v) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "a bridge's third-party answer does not fit the spec");
                None
            }
        })
        .collect()
}

/// The protocols (all, or the one named) with their metadata.
async fn protocols(services: &Services, only: Option<&str>) -> BTreeMap<String, Protocol> {
    services
        .appservices
        .thirdparty_protocols(only)
        .await
        .into_iter()
        .filter_map(|(name, info)| parsed::<Protocol>(vec![info]).pop().map(|p| (name, p)))
        .collect()
}

/// The protocol named `name`, or 404.
async fn protocol(services: &Services, name: &str) -> Result<Protocol> {
    protocols(services, Some(name))
        .await
        .remove(name)
        .ok_or_else(|| Error::not_found(format!("Unknown third-party protocol {name:?}")))
}

/// Whether a bridge declares `name` (lookups on an unknown protocol are 404).
fn declared(services: &Services, name: &str) -> Result<()> {
    if services
        .appservices
        .registrations()
        .iter()
        .any(|r| r.protocols.iter().any(|p| p == name))
    {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "Unknown third-party protocol {name:?}"
        )))
    }
}

fn pairs(fields: &BTreeMap<String, String>) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `GET /_matrix/client/v3/thirdparty/protocols`
async fn get_protocols_route(
    State(services): State<Arc<Services>>,
    _: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(
        protocols(&services, None).await,
    ))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
async fn get_protocol_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_protocol::v3::Request>,
) -> Result<get_protocol::v3::Response> {
    Ok(get_protocol::v3::Response::new(
        protocol(&services, &req.body.protocol).await?,
    ))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
async fn get_location_for_protocol_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response> {
    declared(&services, &req.body.protocol)?;
    let found = services
        .appservices
        .thirdparty_lookup(
            Lookup::Location,
            Some(&req.body.protocol),
            &pairs(&req.body.fields),
        )
        .await;
    Ok(get_location_for_protocol::v3::Response::new(parsed(found)))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=...`
async fn get_location_for_room_alias_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response> {
    let query = [("alias".to_owned(), req.body.alias.to_string())];
    let found = services
        .appservices
        .thirdparty_lookup(Lookup::Location, None, &query)
        .await;
    Ok(get_location_for_room_alias::v3::Response::new(parsed(
        found,
    )))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
async fn get_user_for_protocol_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response> {
    declared(&services, &req.body.protocol)?;
    let found = services
        .appservices
        .thirdparty_lookup(
            Lookup::User,
            Some(&req.body.protocol),
            &pairs(&req.body.fields),
        )
        .await;
    Ok(get_user_for_protocol::v3::Response::new(parsed(found)))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=...`
async fn get_user_for_user_id_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response> {
    let query = [("userid".to_owned(), req.body.userid.to_string())];
    let found = services
        .appservices
        .thirdparty_lookup(Lookup::User, None, &query)
        .await;
    Ok(get_user_for_user_id::v3::Response::new(parsed(found)))
}
