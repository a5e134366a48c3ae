//! Online backup of a running server under a send load, and restore into a new data dir.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::json;
use spec_tests::{enc, server_binary, TestServer};

/// Runs `myelin ARGS` and fails with its output unless it succeeds.
async fn myelin(args: &[&str]) -> Result<std::process::Output> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(server_binary())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .context("myelin CLI did not finish within 60 s")??;
    anyhow::ensure!(
        output.status.success(),
        "myelin {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// A backup taken while messages keep arriving holds every message acknowledged before it
/// started; a server started on the restored data dir serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_during_sends_restores_every_acknowledged_event() -> Result<()> {
    let mut server = TestServer::start().await?;
    // The admin who takes the backup / deletes media.
    let root = server.admin("root").await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;

    // The send load: sequential messages, each recorded once acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender = {
        let (alice, room, acked) = (alice.clone(), room.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..400 {
                let body = format!("message {i}");
                if alice.say(&room, &body).await.is_err() {
                    break;
                }
                acked.lock().unwrap().push(body);
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 20 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the sends are stuck"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let before_backup = acked.lock().unwrap().clone();
    let backups = tempfile::tempdir()?;
    let backup_dir = backups.path().join("backup");
    let token = root.token.clone().context("root has a token")?;
    let backup_path = backup_dir.to_str().context("utf-8 path")?.to_owned();
    myelin(&[
        "backup",
        &backup_path,
        "--url",
        &server.base,
        "--token",
        &token,
    ])
    .await?;
    let sent_during = acked.lock().unwrap().len() - before_backup.len();
    sender.abort();
    server.kill9()?;

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup_dir.join("manifest.json"))?)?;
    assert_eq!(manifest["format"], 1);

    let restored_dir = backups.path().join("restored");
    let restored_path = restored_dir.to_str().context("utf-8 path")?.to_owned();
    myelin(&["restore", &backup_path, "--data-dir", &restored_path]).await?;
    assert!(restored_dir.join("signing.key").exists());

    // `myelin restore` builds a sled data dir, whichever engine the backed-up server used
    // (the suite's PostgreSQL pass backs up a PostgreSQL server).
    let restored = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_DATA_DIR", restored_path.as_str()),
        ("MYELIN_STORAGE_ENGINE", "sled"),
    ])
    .await?;
    let mut alice_again = restored.client();
    alice_again.login("alice", "alice-password").await?;
    let messages = alice_again
        .get(&format!("/rooms/{}/messages?dir=b&limit=1000", enc(&room)))
        .await?
        .ok()?;
    let bodies: Vec<&str> = messages["chunk"]
        .as_array()
        .context("chunk")?
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let missing: Vec<&String> = before_backup
        .iter()
        .filter(|b| !bodies.contains(&b.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing after restore: {missing:?} ({} sent before, {sent_during} during the backup)",
        before_backup.len()
    );
    Ok(())
}

/// Only server admins get a backup.
#[tokio::test]
async fn backup_is_refused_to_non_admins() -> Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    alice
        .request(
            reqwest::Method::POST,
            "/_myelin/admin/backup",
            Some(&json!({})),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    server
        .client()
        .request(
            reqwest::Method::POST,
            "/_myelin/admin/backup",
            Some(&json!({})),
        )
        .await?
        .expect_error(401, "M_MISSING_TOKEN")?;
    Ok(())
}
