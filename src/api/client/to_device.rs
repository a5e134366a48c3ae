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
    services
        .e2ee
        .send_to_device(
            &session.user_id,
            &session.device_id,
            &req.body.event_type.to_string(),
            req.body.txn_id.as_str(),
            &messages,
        )
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use crate::api::client::account::tests::{app, call, register_user};

    #[tokio::test]
    async fn send_to_device_reaches_sync_once() {
        let app = app();
        let alice = register_user(&app, "alice").await;
        let bob = register_user(&app, "bob").await;
        let (_, who) = call(
            &app,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(&bob),
            None,
        )
        .await;
        let bob_id = who["user_id"].as_str().unwrap().to_owned();
        let (_, first) = call(&app, "GET", "/_matrix/client/v3/sync", Some(&bob), None).await;
        let since = first["next_batch"].as_str().unwrap().to_owned();
        let body = json!({ "messages": { &bob_id: { "*": { "hello": "world" } } } });
        for _ in 0..2 {
            let (status, res) = call(
                &app,
                "PUT",
                "/_matrix/client/v3/sendToDevice/m.test/txn1",
                Some(&alice),
                Some(body.clone()),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{res}");
            assert_eq!(res, json!({}));
        }
        let path = format!("/_matrix/client/v3/sync?since={since}");
        let (_, res) = call(&app, "GET", &path, Some(&bob), None).await;
        let events = res["to_device"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{res}");
        assert_eq!(events[0]["type"], "m.test");
        assert_eq!(events[0]["content"]["hello"], "world");
        let next = res["next_batch"].as_str().unwrap().to_owned();
        let path = format!("/_matrix/client/v3/sync?since={next}");
        let (_, res) = call(&app, "GET", &path, Some(&bob), None).await;
        assert_eq!(res["to_device"]["events"], json!([]));
        // An old three-part token is still accepted.
        let (status, _) = call(
            &app,
            "GET",
            "/_matrix/client/v3/sync?since=s0_0_0",
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
}
