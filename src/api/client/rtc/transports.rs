//! RTC transport (focus) discovery, MSC4143.

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::api::client::rtc::transports;
use serde_json::{json, Value};

use crate::{api::ruma::Ruma, services::Services, Result};

/// The RTC transports (foci) this server offers.
pub(crate) fn transports_json(services: &Services) -> Value {
    json!([{ "type": "livekit", "livekit_service_url": services.rtc.service_url() }])
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`
///
/// The list goes under both `rtc_transports` and `transports`: MSC4143 revisions differ.
pub(super) async fn transports_route(
    State(services): State<Arc<Services>>,
    req: Ruma<transports::v1::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let list = transports_json(&services);
    Ok(Json(json!({ "rtc_transports": list, "transports": list })))
}
