//! Push rules, minimal: `GET /pushrules/` answers the server-default ruleset until the
//! push service stores per-user rules.

use std::sync::Arc;

use axum::extract::State;
use ruma::{api::client::push::get_pushrules_all, push::Ruleset};

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router.ruma(get_pushrules_all)
}

/// `GET /_matrix/client/v3/pushrules/`
async fn get_pushrules_all(
    State(_services): State<Arc<Services>>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    Ok(get_pushrules_all::v3::Response::new(
        Ruleset::server_default(req.sender_user()?),
    ))
}
