//! Server discovery: `/versions`, `/.well-known/matrix/client` (with the MatrixRTC foci).

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, routing::get, Json, Router};
use ruma::api::client::discovery::get_supported_versions;
use serde_json::{json, Value};

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(get_versions)
        .route("/.well-known/matrix/client", get(well_known_client))
}

/// The spec versions Myelin implements.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11",
];

/// Unstable features that work end to end (each proven by a test with a real client).
pub const UNSTABLE_FEATURES: &[&str] = &[
    // Simplified sliding sync (MSC4186), which Element X requires.
    "org.matrix.simplified_msc3575",
    // Delayed events, used by MatrixRTC clients for their delayed leave.
    "org.matrix.msc4140",
    // Dehydrated devices.
    "org.matrix.msc3814",
    // Thread subscriptions, and their sliding-sync extension.
    "org.matrix.msc4306",
    "org.matrix.msc4308",
];

/// `GET /_matrix/client/versions`
async fn get_versions(
    _: State<Arc<Services>>,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(
        SPEC_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
    );
    response.unstable_features = UNSTABLE_FEATURES
        .iter()
        .map(|f| ((*f).to_owned(), true))
        .collect::<BTreeMap<_, _>>();
    Ok(response)
}

/// `GET /.well-known/matrix/client`
async fn well_known_client(State(services): State<Arc<Services>>) -> Json<Value> {
    Json(json!({
        "m.homeserver": { "base_url": services.config.base_url() },
        "org.matrix.msc4143.rtc_foci": super::rtc::transports_json(&services),
    }))
}
