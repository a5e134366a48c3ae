//! Meeting recording, the homeserver's side: `POST …/io.myelin/rooms/{roomId}/recording`
//! `{"action": "start"|"stop"}` for moderators, the `io.myelin.recording` state, the
//! recorder run with a hidden subscribe-only SFU token, the finished file uploaded and
//! posted as `m.video`, and a recorder that fails or a server that dies leaving a clear
//! `{"active": false, "error"}`. The recorder here is `spec-tests/fixtures/fake-recorder`,
//! which speaks `myelin-recorder`'s interface without media; the real recorder in a real
//! call is `recording_browser.rs`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, TestServer};

fn recording_path(room: &str) -> String {
    format!(
        "/_matrix/client/unstable/io.myelin/rooms/{}/recording",
        enc(room)
    )
}

async fn act(c: &Client, room: &str, body: Value) -> Result<spec_tests::Response> {
    c.request(Method::POST, &recording_path(room), Some(&body))
        .await
}

async fn recording_state(c: &Client, room: &str) -> Result<Value> {
    c.get(&format!("/rooms/{}/state/io.myelin.recording/", enc(room)))
        .await?
        .ok()
}

/// Waits (bounded) until the room's recording state satisfies `done`.
async fn wait_state(c: &Client, room: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = recording_state(c, room).await?;
        if done(&state) {
            return Ok(state);
        }
        if Instant::now() > deadline {
            bail!("recording state never reached the expected value; last: {state}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) for an `m.video` message in the room.
async fn wait_video(c: &Client, room: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = c
            .get(&format!("/rooms/{}/messages?dir=b&limit=20", enc(room)))
            .await?
            .ok()?;
        if let Some(video) = page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["msgtype"] == "m.video")
        {
            return Ok(video.clone());
        }
        if Instant::now() > deadline {
            bail!("no m.video message was posted: {page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fake_recorder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-recorder")
}

/// The fake recorder's notes directory, its mode set.
fn notes(dir: &Path, mode: &str) -> Result<()> {
    std::fs::write(dir.join("mode"), mode)?;
    Ok(())
}

fn starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("starts"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits (bounded) until the fake recorder has been started `n` times, then a moment
/// longer to see that it is not started once more.
async fn wait_starts(dir: &Path, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while starts(dir) < n {
        if Instant::now() > deadline {
            bail!("the recorder was started {} times, not {n}", starts(dir));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(starts(dir), n, "the recorder was started too often");
    Ok(())
}

async fn server_with_recorder(notes_dir: &Path) -> Result<TestServer> {
    let recorder = fake_recorder();
    TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_RTC_RECORDER", recorder.to_str().context("path")?),
        ("FAKE_RECORDER_DIR", notes_dir.to_str().context("path")?),
    ])
    .await
}

/// Files left in the server's recordings directory.
fn leftovers(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.data_dir().join("data/recordings"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn recording_is_off_without_a_recorder() -> Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    act(&alice, &room, json!({"action": "start"}))
        .await?
        .expect_error(404, "M_UNRECOGNIZED")?;
    Ok(())
}

#[tokio::test]
async fn moderators_record_and_the_file_is_posted() -> Result<()> {
    let notes_dir = tempfile::tempdir()?;
    notes(notes_dir.path(), "normal")?;
    let server = server_with_recorder(notes_dir.path()).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;

    // Bad requests, members without power and strangers change nothing.
    act(&alice, &room, json!({}))
        .await?
        .expect_error(400, "M_MISSING_PARAM")?;
    act(&alice, &room, json!({"action": "pause"}))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    act(&alice, &room, json!({"action": 1}))
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    act(&bob, &room, json!({"action": "start"}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    act(&carol, &room, json!({"action": "start"}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    assert_eq!(starts(notes_dir.path()), 0);
    alice
        .get(&format!("/rooms/{}/state/io.myelin.recording/", enc(&room)))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // The moderator starts: one recorder with a hidden, subscribe-only token.
    let started = act(&alice, &room, json!({"action": "start"})).await?.ok()?;
    assert_eq!(started["active"], true, "{started}");
    assert_eq!(started["started_by"], alice.user_id.as_str());
    let state = recording_state(&bob, &room).await?;
    assert_eq!(state["active"], true, "{state}");
    assert_eq!(state["started_by"], alice.user_id.as_str());
    assert_eq!(state["started_ts"], started["started_ts"]);
    let again = act(&alice, &room, json!({"action": "start"})).await?.ok()?;
    assert_eq!(
        again["started_ts"], started["started_ts"],
        "starting twice is one recording"
    );
    wait_starts(notes_dir.path(), 1).await?;

    let jwt = std::fs::read_to_string(notes_dir.path().join("token"))?;
    let payload = jwt.trim().split('.').nth(1).context("JWT payload")?;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    assert_eq!(claims["sub"], "io.myelin.recorder", "{claims}");
    let grant = &claims["video"];
    assert_eq!(grant["hidden"], true, "{claims}");
    assert_eq!(grant["recorder"], true, "{claims}");
    assert_eq!(grant["canPublish"], false, "{claims}");
    assert_eq!(grant["canPublishData"], false, "{claims}");
    assert_eq!(grant["canSubscribe"], true, "{claims}");
    assert_eq!(grant["roomJoin"], true, "{claims}");
    assert!(
        !jwt.is_empty()
            && !std::fs::read_to_string(notes_dir.path().join("url"))?
                .trim()
                .is_empty()
    );

    // Only a moderator stops it; then the file is uploaded and posted as m.video.
    act(&bob, &room, json!({"action": "stop"}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let stopped = act(&alice, &room, json!({"action": "stop"})).await?.ok()?;
    assert_eq!(stopped["active"], false, "{stopped}");
    let state = recording_state(&bob, &room).await?;
    assert_eq!(state["active"], false, "{state}");
    assert_eq!(state["stopped_by"], alice.user_id.as_str());
    let video = wait_video(&bob, &room).await?;
    assert_eq!(video["sender"], alice.user_id.as_str(), "{video}");
    let content = &video["content"];
    assert!(
        content["body"]
            .as_str()
            .is_some_and(|b| b.ends_with(".webm")),
        "{content}"
    );
    assert_eq!(content["info"]["mimetype"], "video/webm", "{content}");
    assert_eq!(content["info"]["duration"], 4321, "{content}");
    assert_eq!(content["info"]["size"], 17, "{content}");
    assert_eq!(content["info"]["w"], 640, "{content}");
    assert_eq!(content["info"]["h"], 360, "{content}");
    let mxc = content["url"].as_str().context("url")?;
    let file = bob
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/media/download/{}",
                mxc.trim_start_matches("mxc://")
            ),
            None,
        )
        .await?;
    assert_eq!(file.status, 200, "{}", file.text);
    assert_eq!(file.text, "WEBM-FAKE-CONTENT");
    let state = recording_state(&bob, &room).await?;
    assert!(state.get("error").is_none(), "{state}");

    // Stopping again is harmless; the recorder's files are gone.
    let again = act(&alice, &room, json!({"action": "stop"})).await?.ok()?;
    assert_eq!(again["active"], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leftovers(&server).is_empty() {
        if Instant::now() > deadline {
            bail!("recording files left behind: {:?}", leftovers(&server));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new recording after that is a new recorder.
    let second = act(&alice, &room, json!({"action": "start"})).await?.ok()?;
    assert_eq!(second["active"], true);
    wait_starts(notes_dir.path(), 2).await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_recorder_leaves_a_clear_state() -> Result<()> {
    let notes_dir = tempfile::tempdir()?;
    let server = server_with_recorder(notes_dir.path()).await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;

    // The recorder dies on its own: the state says so.
    notes(notes_dir.path(), "crash")?;
    act(&alice, &room, json!({"action": "start"})).await?.ok()?;
    let state = wait_state(&alice, &room, |s| s["active"] == false).await?;
    let error = state["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped unexpectedly"), "{state}");
    assert!(error.contains("lost the connection to the SFU"), "{state}");
    assert_eq!(state["started_by"], alice.user_id.as_str());

    // Nothing arrived before the stop: no video, a reason.
    notes(notes_dir.path(), "nothing")?;
    act(&alice, &room, json!({"action": "start"})).await?.ok()?;
    act(&alice, &room, json!({"action": "stop"})).await?.ok()?;
    let state = wait_state(&alice, &room, |s| s.get("error").is_some()).await?;
    assert_eq!(state["active"], false);
    assert!(
        state["error"]
            .as_str()
            .is_some_and(|e| e.contains("Nothing was recorded")),
        "{state}"
    );
    Ok(())
}

#[tokio::test]
async fn a_recording_lost_with_the_server_is_closed_at_restart() -> Result<()> {
    let notes_dir = tempfile::tempdir()?;
    notes(notes_dir.path(), "normal")?;
    let mut server = server_with_recorder(notes_dir.path()).await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let started = act(&alice, &room, json!({"action": "start"})).await?.ok()?;
    server.kill9()?;
    server.start_again().await?;
    let state = wait_state(&alice, &room, |s| s["active"] == false).await?;
    assert_eq!(state["started_ts"], started["started_ts"], "{state}");
    assert!(
        state["error"]
            .as_str()
            .is_some_and(|e| e.contains("server stopped")),
        "{state}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leftovers(&server).is_empty() {
        if Instant::now() > deadline {
            bail!("recording files left behind: {:?}", leftovers(&server));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
