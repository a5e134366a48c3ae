//! Dehydrated devices (MSC3814): a user keeps one tokenless device whose keys others
//! claim and whose to-device messages queue until a client of the user rehydrates it.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, fresh_txn, Client, Response, TestServer};

const BASE: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

async fn call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Response> {
    c.request(method, &format!("{BASE}{path}"), body.as_ref())
        .await
}

fn put_body(user: &str, device: &str) -> Value {
    json!({
        "device_id": device,
        "initial_device_display_name": "Dehydrated",
        "device_data": {"algorithm": "org.matrix.msc3814.v2", "device_pickle": "encrypted", "nonce": "n"},
        "device_keys": {
            "user_id": user, "device_id": device, "dehydrated": true,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{device}"): "curvekeycurvekeycurvekeycurvekeycurvekey0",
                format!("ed25519:{device}"): "edkeyedkeyedkeyedkeyedkeyedkeyedkeyedkey00",
            },
            "signatures": { user: { format!("ed25519:{device}"): "sig" } },
        },
        "one_time_keys": {"signed_curve25519:AAAA": {"key": "otk", "signatures": {}}},
        "fallback_keys": {"signed_curve25519:FFFF": {"key": "fb", "fallback": true, "signatures": {}}},
    })
}

#[tokio::test]
async fn a_dehydrated_device_is_stored_claimed_fed_and_replaced() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let versions = server
        .client()
        .request(Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    assert_eq!(versions["unstable_features"]["org.matrix.msc3814"], true);
    call(&alice, Method::GET, "", None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    let put = call(
        &alice,
        Method::PUT,
        "",
        Some(put_body(&alice.user_id, "DEHYDRATED1")),
    )
    .await?
    .ok()?;
    assert_eq!(put["device_id"], "DEHYDRATED1");
    let got = call(&alice, Method::GET, "", None).await?.ok()?;
    assert_eq!(got["device_id"], "DEHYDRATED1");
    assert_eq!(got["device_data"]["device_pickle"], "encrypted");

    // Others see its keys and claim its one-time key.
    let q = bob
        .post(
            "/keys/query",
            json!({"device_keys": {(alice.user_id.clone()): []}}),
        )
        .await?
        .ok()?;
    assert_eq!(
        q["device_keys"][&alice.user_id]["DEHYDRATED1"]["dehydrated"], true,
        "{q}"
    );
    let claim = bob
        .post(
            "/keys/claim",
            json!({"one_time_keys": {(alice.user_id.clone()): {"DEHYDRATED1": "signed_curve25519"}}}),
        )
        .await?
        .ok()?;
    assert_eq!(
        claim["one_time_keys"][&alice.user_id]["DEHYDRATED1"]["signed_curve25519:AAAA"]["key"],
        "otk",
        "{claim}"
    );

    // Messages sent to it while nobody is online wait for the rehydrating client.
    for i in 0..3 {
        bob.put(
            &format!("/sendToDevice/m.room.encrypted/{}", fresh_txn()),
            json!({"messages": {(alice.user_id.clone()): {"DEHYDRATED1": {"n": i}}}}),
        )
        .await?
        .ok()?;
    }
    let events_path = format!("/{}/events", enc("DEHYDRATED1"));
    let page = call(&alice, Method::POST, &events_path, Some(json!({})))
        .await?
        .ok()?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 3, "{page}");
    assert!(events
        .iter()
        .all(|e| e["sender"] == bob.user_id.as_str() && e["type"] == "m.room.encrypted"));
    assert_eq!(events[0]["content"]["n"], 0);
    let next = page["next_batch"].as_str().expect("next_batch").to_owned();
    let page = call(
        &alice,
        Method::POST,
        &events_path,
        Some(json!({"next_batch": next})),
    )
    .await?
    .ok()?;
    assert_eq!(page["events"], json!([]), "{page}");
    // Only for the user's own dehydrated device.
    call(
        &alice,
        Method::POST,
        &format!("/{}/events", enc(&alice.device_id)),
        Some(json!({})),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    call(&bob, Method::POST, &events_path, Some(json!({})))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    // Bad input changes nothing: keys of another user, a live device's id.
    let mut bad = put_body(&alice.user_id, "DEHYDRATED9");
    bad["device_keys"]["user_id"] = json!(bob.user_id);
    call(&alice, Method::PUT, "", Some(bad))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    let mut bad = put_body(&alice.user_id, "DEHYDRATED9");
    bad["one_time_keys"] = json!({"signed_curve25519:BBBB": 5});
    call(&alice, Method::PUT, "", Some(bad))
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    call(
        &alice,
        Method::PUT,
        "",
        Some(put_body(&alice.user_id, &alice.device_id)),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    let got = call(&alice, Method::GET, "", None).await?.ok()?;
    assert_eq!(got["device_id"], "DEHYDRATED1");

    // A new dehydrated device replaces the old one, keys and all.
    call(
        &alice,
        Method::PUT,
        "",
        Some(put_body(&alice.user_id, "DEHYDRATED2")),
    )
    .await?
    .ok()?;
    let got = call(&alice, Method::GET, "", None).await?.ok()?;
    assert_eq!(got["device_id"], "DEHYDRATED2");
    let q = bob
        .post(
            "/keys/query",
            json!({"device_keys": {(alice.user_id.clone()): []}}),
        )
        .await?
        .ok()?;
    let devices = &q["device_keys"][&alice.user_id];
    assert!(devices.get("DEHYDRATED1").is_none(), "{q}");
    assert!(devices.get("DEHYDRATED2").is_some(), "{q}");

    let deleted = call(&alice, Method::DELETE, "", None).await?.ok()?;
    assert_eq!(deleted["device_id"], "DEHYDRATED2");
    call(&alice, Method::GET, "", None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}
