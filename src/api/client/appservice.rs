//! The client-server endpoints that only an application service calls.

use std::{sync::Arc, time::Duration};

use axum::extract::State;
use ruma::api::client::appservice::request_ping;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router.ruma(ping)
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`
///
/// Only the appservice itself (its `as_token`) may ping it; the homeserver calls
/// `POST {url}/_matrix/app/v1/ping` and answers how long that took.
async fn ping(
    State(services): State<Arc<Services>>,
    req: Ruma<request_ping::v1::Request>,
) -> Result<request_ping::v1::Response> {
    let own = req.session()?.appservice.as_deref();
    let reg = match services.appservices.by_id(&req.body.appservice_id) {
        Some(reg) if own == Some(reg.id.as_str()) => reg.clone(),
        _ => {
            return Err(Error::forbidden(
                "This access token is not the application service's",
            ))
        }
    };
    let txn = req.body.transaction_id.as_ref().map(|t| t.to_string());
    let ms = services.appservices.ping(&reg, txn).await?;
    Ok(request_ping::v1::Response::new(Duration::from_millis(ms)))
}
