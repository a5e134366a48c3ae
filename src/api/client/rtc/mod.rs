//! MatrixRTC client endpoints: OpenID tokens ([`openid`]), RTC transport discovery
//! (MSC4143, [`transports`]), the MSC4195 LiveKit token endpoint ([`tokens`]), delayed
//! events (MSC4140, [`delayed`]), Myelin's call-wide mute ([`mute`]) and meeting recording
//! ([`recording`]).

mod delayed;
mod delegation;
mod mute;
mod openid;
mod recording;
#[cfg(test)]
mod tests;
mod tokens;
mod transports;

use std::{future::Future, sync::Arc};

use axum::{
    extract::State,
    routing::{on, MethodFilter},
    Json, Router,
};
use ruma::api::IncomingRequest;
use serde_json::Value;

pub(super) use self::delayed::schedule_if_delayed;
pub(crate) use self::transports::transports_json;
use self::{
    delayed::{
        get_all_delayed_route, get_delayed_route, send_delayed_event_route,
        update_delayed_v1_route, update_delayed_v2_route,
    },
    mute::{mute_all_route, MUTE_ALL_PATH},
    openid::request_openid_token_route,
    recording::{recording_route, RECORDING_PATH},
    tokens::{get_token_route, GET_TOKEN_V1_PATH},
    transports::transports_route,
};
use crate::{
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    services::Services,
    Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    let router = router
        .ruma(request_openid_token_route)
        .ruma_json(transports_route)
        .ruma_json(get_token_route)
        .ruma(send_delayed_event_route)
        .ruma(get_all_delayed_route)
        .ruma(get_delayed_route)
        .ruma(update_delayed_v1_route)
        .ruma(update_delayed_v2_route);
    let router = router
        .route(MUTE_ALL_PATH, axum::routing::post(mute_all_route))
        .route(RECORDING_PATH, axum::routing::post(recording_route));
    let router = delegation::DELEGATE_PATHS
        .iter()
        .fold(router, |router, path| {
            router.route(
                path,
                axum::routing::post(delegation::delegate_delayed_leave_route),
            )
        });
    route_json_at(router, GET_TOKEN_V1_PATH, get_token_route)
}

/// Registers a ruma-parsed JSON handler at one extra path (a path ruma's metadata lacks).
pub(super) fn route_json_at<Req, F, Fut>(
    router: Router<Arc<Services>>,
    path: &str,
    handler: F,
) -> Router<Arc<Services>>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: 'static,
    F: Fn(State<Arc<Services>>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Json<Value>>> + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).unwrap_or(MethodFilter::GET);
    router.route(
        path,
        on(
            filter,
            move |state: State<Arc<Services>>, req: Ruma<Req>| handler(state, req),
        ),
    )
}
