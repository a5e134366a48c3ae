//! End-to-end-encryption key relay: key upload/claim/query, to-device messages, device-list
//! changes in /sync and sliding sync, key backup, and durability of all of it.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, next_batch, Client, TestServer};

fn device_keys(c: &Client) -> Value {
    json!({
        "user_id": c.user_id, "device_id": c.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", c.device_id): "curvekeycurvekeycurvekeycurvekeycurvekey0",
            format!("ed25519:{}", c.device_id): "edkeyedkeyedkeyedkeyedkeyedkeyedkeyedkey00",
        },
        "signatures": { (c.user_id.clone()): { format!("ed25519:{}", c.device_id): "sig" } },
    })
}

#[tokio::test]
async fn keys_claim_query_and_counts() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let up = alice
        .post(
            "/keys/upload",
            json!({
                "device_keys": device_keys(&alice),
                "one_time_keys": {"signed_curve25519:AAAA": {"key": "k1"}, "signed_curve25519:AAAB": {"key": "k2"}},
                "fallback_keys": {"signed_curve25519:FFFF": {"key": "fb", "fallback": true}},
            }),
        )
        .await?
        .ok()?;
    assert_eq!(up["one_time_key_counts"]["signed_curve25519"], 2);
    // someone else's device keys are refused and nothing is stored
    let mut wrong = device_keys(&alice);
    wrong["device_id"] = json!("OTHERDEV");
    bob.post("/keys/upload", json!({"device_keys": wrong}))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;

    let q = bob
        .post(
            "/keys/query",
            json!({"device_keys": {(alice.user_id.clone()): []}}),
        )
        .await?
        .ok()?;
    let dk = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(dk["device_id"], alice.device_id.as_str());
    assert_eq!(dk["keys"], device_keys(&alice)["keys"]);
    assert_eq!(q["failures"], json!({}));

    let claim = |c: Client, target: String, dev: String| async move {
        c.post(
            "/keys/claim",
            json!({"one_time_keys": {(target.clone()): {(dev.clone()): "signed_curve25519"}}}),
        )
        .await?
        .ok()
    };
    let mut got = vec![];
    for _ in 0..3 {
        let r = claim(bob.clone(), alice.user_id.clone(), alice.device_id.clone()).await?;
        let keys = r["one_time_keys"][&alice.user_id][&alice.device_id]
            .as_object()
            .unwrap()
            .clone();
        got.push(keys.keys().next().unwrap().clone());
    }
    assert_eq!(
        got[..2]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "{got:?}"
    );
    assert_eq!(
        got[2], "signed_curve25519:FFFF",
        "fallback after one-time keys run out"
    );
    let s = alice.sync("timeout=0").await?;
    // all claimed: the count says 0 rather than leaving the algorithm out
    assert_eq!(
        s["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{s}"
    );
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));
    // 4-part sync tokens
    assert_eq!(next_batch(&s).split('_').count(), 4);
    Ok(())
}

#[tokio::test]
async fn to_device_and_device_lists() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    let since = next_batch(&alice.sync("timeout=0").await?);
    bob.join(&room).await?;
    bob.post("/keys/upload", json!({"device_keys": device_keys(&bob)}))
        .await?
        .ok()?;
    let s = alice.sync(&format!("since={since}&timeout=0")).await?;
    assert!(
        s["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == bob.user_id.as_str()),
        "{s}"
    );
    let changes = alice
        .get(&format!(
            "/keys/changes?from={}&to={}",
            enc(&since),
            enc(&next_batch(&s))
        ))
        .await?
        .ok()?;
    assert!(changes["changed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u == bob.user_id.as_str()));

    // to-device: idempotent per txn, delivered once, acknowledged by the next since
    let bob_since = next_batch(&bob.sync("timeout=0").await?);
    let msg =
        json!({"messages": {(bob.user_id.clone()): {(bob.device_id.clone()): {"hello": "bob"}}}});
    alice
        .put("/sendToDevice/org.example.ping/t1", msg.clone())
        .await?
        .ok()?;
    alice
        .put("/sendToDevice/org.example.ping/t1", msg)
        .await?
        .ok()?;
    // the acknowledged send survives a crash
    server.kill9()?;
    server.start_again().await?;
    let s = bob.sync(&format!("since={bob_since}&timeout=5000")).await?;
    let events = s["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{s}");
    assert_eq!(events[0]["sender"], alice.user_id.as_str());
    assert_eq!(events[0]["content"]["hello"], "bob");
    let again = bob.sync(&format!("since={bob_since}&timeout=0")).await?;
    assert_eq!(
        again["to_device"]["events"].as_array().unwrap().len(),
        1,
        "redelivered until acknowledged"
    );
    let next = next_batch(&s);
    let after = bob.sync(&format!("since={next}&timeout=0")).await?;
    assert!(after["to_device"]["events"].as_array().unwrap().is_empty());

    // the same through sliding sync's to_device and e2ee extensions
    alice
        .put(
            "/sendToDevice/org.example.ping/t2",
            json!({"messages": {(bob.user_id.clone()): {"*": {"n": 2}}}}),
        )
        .await?
        .ok()?;
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0";
    let body = json!({"lists": {}, "extensions": {"to_device": {"enabled": true}, "e2ee": {"enabled": true}}});
    let r = bob.request(Method::POST, path, Some(&body)).await?.ok()?;
    let td = &r["extensions"]["to_device"];
    assert_eq!(td["events"][0]["content"]["n"], 2, "{r}");
    assert!(r["extensions"]["e2ee"]["device_one_time_keys_count"].is_object());
    let mut body2 = body.clone();
    body2["extensions"]["to_device"]["since"] = td["next_batch"].clone();
    let r2 = bob
        .request(
            Method::POST,
            &format!("{path}&pos={}", r["pos"].as_str().unwrap()),
            Some(&body2),
        )
        .await?
        .ok()?;
    assert!(
        r2["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{r2}"
    );
    Ok(())
}

#[tokio::test]
async fn key_backup_versions_and_keys() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    alice
        .get("/room_keys/version")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let v = alice
        .post("/room_keys/version", json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}}))
        .await?
        .ok()?;
    let version = v["version"].as_str().unwrap().to_string();
    let key = |index: u64, verified: bool| json!({"first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": {"ciphertext": format!("c{index}")}});
    let put = alice
        .put(
            &format!("/room_keys/keys/%21r%3Alocalhost/sess1?version={version}"),
            key(5, false),
        )
        .await?
        .ok()?;
    assert_eq!(put["count"], 1);
    let etag = put["etag"].clone();
    // a worse key (higher index) does not replace it
    let worse = alice
        .put(
            &format!("/room_keys/keys/%21r%3Alocalhost/sess1?version={version}"),
            key(9, false),
        )
        .await?
        .ok()?;
    assert_eq!(worse["etag"], etag);
    // a verified one does
    alice
        .put(
            &format!("/room_keys/keys/%21r%3Alocalhost/sess1?version={version}"),
            key(9, true),
        )
        .await?
        .ok()?;
    let got = alice
        .get(&format!(
            "/room_keys/keys/%21r%3Alocalhost/sess1?version={version}"
        ))
        .await?
        .ok()?;
    assert_eq!(got["first_message_index"], 9);
    // a newer version makes the old one stale
    alice
        .post(
            "/room_keys/version",
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}}),
        )
        .await?
        .ok()?;
    let stale = alice
        .put(
            &format!("/room_keys/keys/%21r%3Alocalhost/sess1?version={version}"),
            key(1, true),
        )
        .await?;
    stale.expect_error(403, "M_WRONG_ROOM_KEYS_VERSION")?;
    Ok(())
}
