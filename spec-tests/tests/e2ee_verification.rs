//! Interactive verification as the server sees it: after SAS or QR verification each
//! side signs the other's master key with its user-signing key
//! (`/keys/signatures/upload`); `/keys/query` must give each signer its signature, and
//! everyone sharing a room with the signed user (the signer's other devices included)
//! must be told in `device_lists.changed` to query them again. The verification messages
//! themselves travel as to-device and in-room events.

use base64::Engine as _;
use ruma::{
    signatures::{sign_json, Ed25519KeyPair},
    CanonicalJsonObject,
};
use serde_json::{json, Value};
use spec_tests::{enc, invite_and_join, next_batch, Client, TestServer};

struct Key {
    pair: Ed25519KeyPair,
    public: String,
}

fn key() -> Key {
    let der = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&der, "probe".into()).expect("the key parses");
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
    Key {
        pair: Ed25519KeyPair::from_der(&der, public.clone()).expect("the key parses"),
        public,
    }
}

fn sign(value: &Value, user: &str, key: &Key) -> Value {
    let mut object: CanonicalJsonObject =
        serde_json::from_value(value.clone()).expect("a canonical object");
    sign_json(user, &key.pair, &mut object).expect("signing works");
    serde_json::to_value(object).expect("JSON")
}

fn cross_key(user: &str, usage: &str, key: &Key) -> Value {
    json!({ "user_id": user, "usage": [usage],
        "keys": { format!("ed25519:{}", key.public): key.public } })
}

/// A user's cross-signing keys, uploaded (the first upload needs no UIA).
struct Identity {
    master: Key,
    user_signing: Key,
    master_key: Value,
}

async fn upload_identity(c: &Client) -> anyhow::Result<Identity> {
    let (master, self_signing, user_signing) = (key(), key(), key());
    let master_key = sign(
        &cross_key(&c.user_id, "master", &master),
        &c.user_id,
        &master,
    );
    let body = json!({
        "master_key": master_key,
        "self_signing_key": sign(&cross_key(&c.user_id, "self_signing", &self_signing), &c.user_id, &master),
        "user_signing_key": sign(&cross_key(&c.user_id, "user_signing", &user_signing), &c.user_id, &master),
    });
    c.post("/keys/device_signing/upload", body).await?.ok()?;
    Ok(Identity {
        master,
        user_signing,
        master_key,
    })
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

/// `signer` signs `target`'s master key with its user-signing key.
async fn sign_other(
    signer: &Client,
    signer_id: &Identity,
    target: &Client,
    target_id: &Identity,
) -> anyhow::Result<()> {
    let mut unsigned = target_id.master_key.clone();
    if let Some(o) = unsigned.as_object_mut() {
        o.remove("signatures");
    }
    let signed = sign(&unsigned, &signer.user_id, &signer_id.user_signing);
    let res = signer
        .post(
            "/keys/signatures/upload",
            json!({ (target.user_id.clone()): { (target_id.master.public.clone()): signed } }),
        )
        .await?
        .ok()?;
    assert_eq!(res["failures"], json!({}), "{res}");
    Ok(())
}

fn changed(sync: &Value) -> Vec<String> {
    sync["device_lists"]["changed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The signatures `viewer` sees on `target`'s master key.
async fn master_signatures(viewer: &Client, target: &str) -> anyhow::Result<Value> {
    let q = viewer
        .post("/keys/query", json!({"device_keys": { target: [] }}))
        .await?
        .ok()?;
    Ok(q["master_keys"][target]["signatures"].clone())
}

#[tokio::test]
async fn mutual_user_signing_reaches_both_sides_and_every_room_sharer() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    // Alice's second device (another client of hers) must learn of her verification.
    let mut alice2 = server.client();
    alice2.login("alice", "alice-password").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Verify"}))
        .await?;
    invite_and_join(&alice, &bob, &room).await?;
    invite_and_join(&alice, &carol, &room).await?;
    for c in [&alice, &alice2, &bob, &carol] {
        c.post("/keys/upload", json!({"device_keys": device_keys(c)}))
            .await?
            .ok()?;
    }
    let alice_id = upload_identity(&alice).await?;
    let bob_id = upload_identity(&bob).await?;

    // The verification request goes in the room, the SAS messages to-device.
    let request = alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.key.verification.request", "body": "verify?",
                "to": bob.user_id, "from_device": alice.device_id,
                "methods": ["m.sas.v1"]}),
        )
        .await?;
    let bob_since = next_batch(&bob.sync("timeout=0").await?);
    alice
        .put(
            &format!("/sendToDevice/m.key.verification.start/{}", spec_tests::fresh_txn()),
            json!({"messages": {(bob.user_id.clone()): {"*": {
                "transaction_id": "sas1", "from_device": alice.device_id,
                "method": "m.sas.v1", "m.relates_to": {"rel_type": "m.reference", "event_id": request},
            }}}}),
        )
        .await?
        .ok()?;
    let s = bob
        .sync(&format!("since={}&timeout=10000", enc(&bob_since)))
        .await?;
    let to_device = s["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        to_device
            .iter()
            .any(|e| e["type"] == "m.key.verification.start"
                && e["sender"] == alice.user_id.as_str()
                && e["content"]["transaction_id"] == "sas1"),
        "{s}"
    );

    // Both confirm: each signs the other's master key.
    let since = |c: &Client| {
        let c = c.clone();
        async move { anyhow::Ok(next_batch(&c.sync("timeout=0").await?)) }
    };
    let (a2_since, carol_since, bob_since) = (
        since(&alice2).await?,
        since(&carol).await?,
        since(&bob).await?,
    );
    sign_other(&alice, &alice_id, &bob, &bob_id).await?;

    // device_lists.changed: the signed user, to everyone sharing a room with them —
    // Alice's other device learns that Bob's keys changed (so it sees him verified).
    let s = alice2
        .sync(&format!("since={}&timeout=10000", enc(&a2_since)))
        .await?;
    assert!(changed(&s).contains(&bob.user_id), "{s}");
    let a2_since = next_batch(&s);
    let s = carol
        .sync(&format!("since={}&timeout=10000", enc(&carol_since)))
        .await?;
    assert!(changed(&s).contains(&bob.user_id), "{s}");
    let carol_since = next_batch(&s);

    sign_other(&bob, &bob_id, &alice, &alice_id).await?;
    for (c, since) in [
        (&alice2, &a2_since),
        (&carol, &carol_since),
        (&bob, &bob_since),
    ] {
        let s = c
            .sync(&format!("since={}&timeout=10000", enc(since)))
            .await?;
        assert!(changed(&s).contains(&alice.user_id), "{s}");
    }

    // Each signer sees its signature on the other's master key; the owner's own
    // signature stays.
    let on_bob = master_signatures(&alice, &bob.user_id).await?;
    assert!(
        on_bob[&alice.user_id][format!("ed25519:{}", alice_id.user_signing.public)].is_string(),
        "{on_bob}"
    );
    assert!(on_bob[&bob.user_id][format!("ed25519:{}", bob_id.master.public)].is_string());
    let on_alice = master_signatures(&bob, &alice.user_id).await?;
    assert!(
        on_alice[&bob.user_id][format!("ed25519:{}", bob_id.user_signing.public)].is_string(),
        "{on_alice}"
    );
    // The same query from Alice's other device shows her signature too.
    let on_bob = master_signatures(&alice2, &bob.user_id).await?;
    assert!(on_bob[&alice.user_id].is_object(), "{on_bob}");

    Ok(())
}
