//! `GET /_matrix/client/v3/capabilities`

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, Router};
use ruma::{
    api::client::discovery::get_capabilities::{
        self,
        v3::{Capabilities, RoomVersionStability, RoomVersionsCapability},
    },
    RoomVersionId,
};

use crate::{
    api::ruma::{RouterExt, Ruma},
    events::{DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS},
    services::Services,
    Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.ruma(get_capabilities_route)
}

/// What this server lets clients do.
async fn get_capabilities_route(
    _: State<Arc<Services>>,
    _: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    let available: BTreeMap<RoomVersionId, RoomVersionStability> = SUPPORTED_ROOM_VERSIONS
        .into_iter()
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    let mut capabilities = Capabilities::new();
    capabilities.room_versions = RoomVersionsCapability::new(DEFAULT_ROOM_VERSION, available);
    Ok(get_capabilities::v3::Response::new(capabilities))
}
