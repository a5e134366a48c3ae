//! `GET /_matrix/key/v2/server`: the server's signing key, self-signed.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, routing::get, Json, Router};
use ruma::MilliSecondsSinceUnixEpoch;
use serde_json::Value;

use crate::{services::Services, Error, Result};

/// How long other servers may cache our key.
const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_matrix/key/v2/server", get(server_key))
        .route("/_matrix/key/v2/server/{key_id}", get(server_key))
}

async fn server_key(State(services): State<Arc<Services>>) -> Result<Json<Value>> {
    let valid_until =
        MilliSecondsSinceUnixEpoch::from_system_time(std::time::SystemTime::now() + KEY_VALIDITY)
            .ok_or_else(|| Error::internal("clock out of range"))?;
    Ok(Json(services.keys.server_key_response(
        services.rooms.server_name(),
        valid_until,
    )?))
}
