//! Send-to-device messaging.

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{api::client::to_device::send_event_to_device, OwnedUserId};
use serde_json::Value;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router.ruma(send_to_device)
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
async fn send_to_device(
    State(services): State<Arc<Services>>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let session = req.session()?;
    let mut messages: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
    for (user, devices) in &req.body.messages {
        let out = messages.entry(user.clone()).or_default();
        for (device, content) in devices {
            let content: Value = content
                .deserialize_as_unchecked()
                .map_err(|e| Error::bad_json(format!("invalid to-device content: {e}")))?;
            out.insert(device.to_string(), content);
        }
    }
    services.e2ee.send_to_device(
        &session.user_id,
        &session.device_id,
        &req.body.event_type.to_string(),
        req.body.txn_id.as_str(),
        &messages,
    )?;
    services.storage.durable().await?;
    Ok(send_event_to_device::v3::Response::new())
}
