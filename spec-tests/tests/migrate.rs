//! `myelin migrate --from sled --to postgres`: a stopped server's data dir with rooms,
//! messages, media, device keys, receipts and push rules is copied into an empty
//! PostgreSQL database; the server started on PostgreSQL serves the same `/sync`, the same
//! media and keys. A running server's database and a non-empty target are refused.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use spec_tests::{enc, http_client, invite_and_join, postgres_test_database, Client, TestServer};

/// The parts of an initial `/sync` that must survive: each joined room's timeline event
/// ids and state types, the receipts, the global account data types and push rules.
fn essentials(sync: &Value) -> Value {
    let mut rooms = serde_json::Map::new();
    for (room, body) in sync["rooms"]["join"].as_object().into_iter().flatten() {
        let ids: Vec<&Value> = body["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["event_id"])
            .collect();
        // Read receipts; delivery ticks (`io.myelin.delivered`) are made by the syncs
        // themselves, so they are left out.
        let mut receipts = Vec::new();
        for event in body["ephemeral"]["events"].as_array().into_iter().flatten() {
            if event["type"] != "m.receipt" {
                continue;
            }
            for (event_id, kinds) in event["content"].as_object().into_iter().flatten() {
                if let Some(read) = kinds.get("m.read") {
                    receipts.push(json!({"event_id": event_id, "m.read": read}));
                }
            }
        }
        rooms.insert(
            room.clone(),
            json!({"timeline": ids, "receipts": receipts,
                   "unread": body["unread_notifications"]}),
        );
    }
    let push_rules = sync["account_data"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.push_rules")
        .cloned()
        .unwrap_or(Value::Null);
    json!({"rooms": rooms, "push_rules": push_rules})
}

async fn full_sync(c: &Client) -> Result<Value> {
    c.sync("timeout=0&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A50%7D%7D%7D")
        .await
}

#[tokio::test]
async fn a_sled_data_dir_moves_to_postgres_and_serves_the_same() -> Result<()> {
    let mut server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        // This test chooses the engines itself.
        ("MYELIN_STORAGE_ENGINE", "sled"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"name": "Migrating"})).await?;
    invite_and_join(&alice, &bob, &room).await?;
    let mut last = String::new();
    for i in 0..12 {
        last = alice.say(&room, &format!("message {i}")).await?;
    }
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
        json!({}),
    )
    .await?
    .ok()?;
    alice
        .put(
            "/pushrules/global/content/migrated",
            json!({"pattern": "lunch", "actions": ["notify"]}),
        )
        .await?
        .ok()?;
    let keys = json!({"device_keys": {
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {format!("curve25519:{}", alice.device_id): "Q2FmZWJhYmVjYWZlYmFiZWNhZmViYWJlY2FmZWJhYmU"},
        "signatures": {}}});
    alice.post("/keys/upload", keys).await?.ok()?;
    let media = http_client(Duration::from_secs(30))
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(alice.token.as_deref().context("token")?)
        .header("content-type", "text/plain")
        .body("a file that moves along")
        .send()
        .await?
        .json::<Value>()
        .await?;
    let mxc = media["content_uri"]
        .as_str()
        .context("content_uri")?
        .to_owned();

    // A first round of syncs delivers everything (delivery ticks are receipts too), so the
    // state compared below no longer changes by being read.
    full_sync(&alice).await?;
    full_sync(&bob).await?;
    let before_alice = essentials(&full_sync(&alice).await?);
    let before_bob = essentials(&full_sync(&bob).await?);
    assert!(
        before_alice["rooms"][&room]["timeline"]
            .as_array()
            .is_some_and(|t| t.len() > 12),
        "{before_alice}"
    );
    assert_eq!(
        before_alice["rooms"][&room]["receipts"][0]["event_id"],
        last.as_str(),
        "bob's read receipt: {before_alice}"
    );

    // A running server's database is refused.
    let url = postgres_test_database().await?;
    server.set_env("MYELIN_STORAGE_POSTGRES_URL", &url);
    let busy = server.run_cli(&["migrate", "--from", "sled", "--to", "postgres"])?;
    assert!(!busy.status.success(), "migrated a running server's data");

    server.stop().await?;
    let out = server.run_cli(&["migrate", "--from", "sled", "--to", "postgres"])?;
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("copied"), "{said}");
    // Migrating into the now full database again is refused.
    let again = server.run_cli(&["migrate", "--from", "sled", "--to", "postgres"])?;
    assert!(
        !again.status.success(),
        "migrated into a non-empty database"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // On PostgreSQL now: the sled files are out of the way, so nothing can come from them.
    std::fs::rename(
        server.data_dir().join("data/db"),
        server.data_dir().join("data/db.sled-before-migration"),
    )?;
    server.set_env("MYELIN_STORAGE_ENGINE", "postgres");
    server.start_again().await?;
    for (who, client, before) in [("alice", &alice, &before_alice), ("bob", &bob, &before_bob)] {
        let after = essentials(&full_sync(client).await?);
        assert_eq!(
            after["push_rules"], before["push_rules"],
            "{who}'s push rules"
        );
        for part in ["timeline", "receipts", "unread"] {
            assert_eq!(
                after["rooms"][&room][part], before["rooms"][&room][part],
                "{who}'s {part}"
            );
        }
        assert_eq!(after, *before, "{who}'s sync");
    }
    let file = bob
        .request(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v1/media/download/{}",
                mxc.trim_start_matches("mxc://")
            ),
            None,
        )
        .await?;
    assert_eq!(file.text, "a file that moves along");
    let query = bob
        .post(
            "/keys/query",
            json!({"device_keys": {alice.user_id.as_str(): []}}),
        )
        .await?
        .ok()?;
    assert!(
        query["device_keys"][alice.user_id.as_str()][alice.device_id.as_str()].is_object(),
        "{query}"
    );
    // And it keeps working: a new message arrives.
    alice.say(&room, "after the move").await?;
    let sync = full_sync(&bob).await?;
    assert!(
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["content"]["body"] == "after the move")),
        "{sync}"
    );
    Ok(())
}
