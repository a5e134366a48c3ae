//! Acknowledged writes survive `kill -9`: each write below is followed at once by SIGKILL
//! (no shutdown, no final flush) and a restart on the same data dir, then read back.
//! The server is configured without sled's background flush, so a write whose handler
//! answers before it is durable is lost here.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, TestServer};

/// SIGKILL, then start again on the same data dir.
async fn crash(server: &mut TestServer) -> anyhow::Result<()> {
    server.kill9()?;
    server.start_again().await
}

/// Uploads bytes to the legacy upload endpoint; returns `server/media_id`.
async fn upload(c: &Client, ctype: &str, data: Vec<u8>) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", c.base))
        .bearer_auth(c.token.as_deref().unwrap_or_default())
        .header("content-type", ctype)
        .body(data)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "upload: {}", r.status());
    let body: Value = r.json().await?;
    Ok(body["content_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("mxc://"))
        .ok_or_else(|| anyhow::anyhow!("no content_uri: {body}"))?
        .to_owned())
}

async fn download(c: &Client, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v1/media/download/{path}",
            c.base
        ))
        .bearer_auth(c.token.as_deref().unwrap_or_default())
        .send()
        .await?;
    Ok((r.status().as_u16(), r.bytes().await?.to_vec()))
}

#[tokio::test]
async fn kill9_keeps_uploaded_media() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let path = upload(&alice, "application/octet-stream", data.clone()).await?;
    crash(&mut server).await?;
    assert_eq!(download(&alice, &path).await?, (200, data));

    // create + asynchronous upload: the upload's acknowledgement is durable too
    let created = alice
        .request(Method::POST, "/_matrix/media/v1/create", None)
        .await?
        .ok()?;
    let later = created["content_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("mxc://"))
        .unwrap()
        .to_owned();
    let r = reqwest::Client::new()
        .put(format!("{}/_matrix/media/v3/upload/{later}", alice.base))
        .bearer_auth(alice.token.as_deref().unwrap_or_default())
        .header("content-type", "text/plain")
        .body("uploaded later")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    crash(&mut server).await?;
    assert_eq!(
        download(&alice, &later).await?,
        (200, b"uploaded later".to_vec())
    );
    Ok(())
}

#[tokio::test]
async fn kill9_keeps_state_and_account_data() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;

    let topic = alice
        .set_state(&room, "m.room.topic", "", json!({"topic": "durable topic"}))
        .await?
        .ok()?;
    crash(&mut server).await?;
    assert_eq!(
        alice
            .get(&format!("/rooms/{}/state/m.room.topic/", enc(&room)))
            .await?
            .ok()?,
        json!({"topic": "durable topic"})
    );
    let state = alice
        .get(&format!("/rooms/{}/state", enc(&room)))
        .await?
        .ok()?;
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_id"] == topic["event_id"]),
        "{state}"
    );

    let global = format!(
        "/user/{}/account_data/org.example.global",
        enc(&alice.user_id)
    );
    alice.put(&global, json!({"n": 1})).await?.ok()?;
    crash(&mut server).await?;
    assert_eq!(alice.get(&global).await?.ok()?, json!({"n": 1}));

    let in_room = format!(
        "/user/{}/rooms/{}/account_data/org.example.room",
        enc(&alice.user_id),
        enc(&room)
    );
    alice.put(&in_room, json!({"n": 2})).await?.ok()?;
    crash(&mut server).await?;
    assert_eq!(alice.get(&in_room).await?.ok()?, json!({"n": 2}));
    // and both reach a fresh sync
    let s = alice.sync("timeout=0").await?;
    assert!(s["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "org.example.global" && e["content"]["n"] == 1));
    assert!(s["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "org.example.room" && e["content"]["n"] == 2));
    Ok(())
}

#[tokio::test]
async fn kill9_keeps_receipts() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    let msg = alice.say(&room, "read me").await?;
    assert_eq!(
        bob.sync("timeout=0").await?["rooms"]["join"][&room]["unread_notifications"]
            ["notification_count"],
        1
    );
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&msg)),
        json!({}),
    )
    .await?
    .ok()?;
    crash(&mut server).await?;
    // the other member still sees the receipt, and bob's count stays read
    let s = alice.sync("timeout=0").await?;
    let receipts: Vec<&Value> = s["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["type"] == "m.receipt").collect())
        .unwrap_or_default();
    assert!(
        receipts
            .iter()
            .any(|r| r["content"][&msg]["m.read"][&bob.user_id].is_object()),
        "receipt lost by kill -9: {s}"
    );
    assert_eq!(
        bob.sync("timeout=0").await?["rooms"]["join"][&room]["unread_notifications"]
            ["notification_count"],
        0
    );

    // the fully-read marker and a private receipt set through /read_markers
    let next = alice.say(&room, "mark me").await?;
    bob.post(
        &format!("/rooms/{}/read_markers", enc(&room)),
        json!({"m.fully_read": next, "m.read.private": next}),
    )
    .await?
    .ok()?;
    crash(&mut server).await?;
    let marker = bob
        .get(&format!(
            "/user/{}/rooms/{}/account_data/m.fully_read",
            enc(&bob.user_id),
            enc(&room)
        ))
        .await?
        .ok()?;
    assert_eq!(marker["event_id"], next.as_str());
    assert_eq!(
        bob.sync("timeout=0").await?["rooms"]["join"][&room]["unread_notifications"]
            ["notification_count"],
        0,
        "the private receipt was lost"
    );
    Ok(())
}

#[tokio::test]
async fn kill9_keeps_push_rules() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    alice
        .put(
            "/pushrules/global/content/durable",
            json!({"pattern": "durable*", "actions": ["notify"]}),
        )
        .await?
        .ok()?;
    crash(&mut server).await?;
    let rule = alice.get("/pushrules/global/content/durable").await?.ok()?;
    assert_eq!(rule["pattern"], "durable*");
    assert_eq!(rule["enabled"], true);

    alice
        .put(
            "/pushrules/global/content/durable/enabled",
            json!({"enabled": false}),
        )
        .await?
        .ok()?;
    crash(&mut server).await?;
    assert_eq!(
        alice
            .get("/pushrules/global/content/durable/enabled")
            .await?
            .ok()?["enabled"],
        false
    );
    Ok(())
}

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

/// The one-time key count of the caller's device, as `/keys/upload` reports it.
async fn otk_count(c: &Client) -> anyhow::Result<u64> {
    let r = c.post("/keys/upload", json!({})).await?.ok()?;
    Ok(r["one_time_key_counts"]["signed_curve25519"]
        .as_u64()
        .unwrap_or(0))
}

#[tokio::test]
async fn kill9_keeps_e2ee_keys_and_backup() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice
        .post(
            "/keys/upload",
            json!({
                "device_keys": device_keys(&alice),
                "one_time_keys": {"signed_curve25519:AAAA": {"key": "k1"}, "signed_curve25519:AAAB": {"key": "k2"}},
            }),
        )
        .await?
        .ok()?;
    crash(&mut server).await?;
    let q = bob
        .post(
            "/keys/query",
            json!({"device_keys": {(alice.user_id.clone()): []}}),
        )
        .await?
        .ok()?;
    assert_eq!(
        q["device_keys"][&alice.user_id][&alice.device_id]["keys"],
        device_keys(&alice)["keys"],
        "{q}"
    );
    assert_eq!(otk_count(&alice).await?, 2);

    // a claimed one-time key stays claimed: it is never handed out twice
    let claim = json!({"one_time_keys": {(alice.user_id.clone()): {(alice.device_id.clone()): "signed_curve25519"}}});
    let first = bob.post("/keys/claim", claim.clone()).await?.ok()?;
    let first_key = first["one_time_keys"][&alice.user_id][&alice.device_id]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .expect("a claimed key");
    crash(&mut server).await?;
    assert_eq!(otk_count(&alice).await?, 1);
    let second = bob.post("/keys/claim", claim).await?.ok()?;
    let second_key = second["one_time_keys"][&alice.user_id][&alice.device_id]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .expect("a second key");
    assert_ne!(first_key, second_key);

    // key backup: the version and a stored session key
    let version = alice
        .post(
            "/room_keys/version",
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}}),
        )
        .await?
        .ok()?["version"]
        .as_str()
        .unwrap()
        .to_owned();
    crash(&mut server).await?;
    let current = alice.get("/room_keys/version").await?.ok()?;
    assert_eq!(current["version"], version.as_str());
    assert_eq!(current["auth_data"]["public_key"], "abc");

    let key_path = format!("/room_keys/keys/%21r%3Alocalhost/sess1?version={version}");
    let session = json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": true,
                         "session_data": {"ciphertext": "c", "ephemeral": "e", "mac": "m"}});
    alice.put(&key_path, session.clone()).await?.ok()?;
    crash(&mut server).await?;
    assert_eq!(alice.get(&key_path).await?.ok()?, session);
    assert_eq!(
        alice.get("/room_keys/version").await?.ok()?["count"],
        1,
        "backup count after the crash"
    );
    Ok(())
}
