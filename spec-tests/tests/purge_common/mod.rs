//! Helpers shared by the purge and delete tests (`room_purge.rs`, `room_delete.rs`): the
//! test hooks (a room's storage keys, failpoints), deleting, and reading a room's leave
//! in `/sync` and sliding sync.

// Each test file uses some of these.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response};

/// Sliding sync's path.
pub const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn hook(client: &Client, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let resp = client
        .request(method, &format!("/_myelin/test/{path}"), body.as_ref())
        .await?;
    if resp.status != 200 {
        bail!(
            "test hook {path}: {} {} (is the server built with --features test-hooks?)",
            resp.status,
            resp.text
        );
    }
    Ok(resp.body)
}

/// Entries of every storage tree mentioning the room: `{"total", "trees"}`.
pub async fn room_keys(c: &Client, room: &str) -> Result<Value> {
    hook(c, Method::GET, &format!("room_keys/{}", enc(room)), None).await
}

/// Waits (up to 20 s) until no storage entry mentions the room.
pub async fn wait_room_keys_gone(c: &Client, room: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = room_keys(c, room).await?;
        if keys["total"] == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the room's keys are still there after 20 s: {keys}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Configures a failpoint (`pause`, `return`, …).
pub async fn set_failpoint(c: &Client, name: &str, actions: &str) -> Result<()> {
    hook(
        c,
        Method::PUT,
        &format!("failpoints/{name}"),
        Some(json!({ "actions": actions })),
    )
    .await
    .map(drop)
}

/// Removes a failpoint (a paused thread resumes).
pub async fn remove_failpoint(c: &Client, name: &str) -> Result<()> {
    hook(c, Method::DELETE, &format!("failpoints/{name}"), None)
        .await
        .map(drop)
}

/// `DELETE /_matrix/client/unstable/io.myelin/rooms/{roomId}`.
pub async fn delete_room(c: &Client, room: &str) -> Result<Response> {
    c.request(
        Method::DELETE,
        &format!("/_matrix/client/unstable/io.myelin/rooms/{}", enc(room)),
        None,
    )
    .await
}

/// The events of `room` in the `leave` section of a `/sync` response.
pub fn left_events<'a>(sync: &'a Value, room: &str) -> Option<&'a Vec<Value>> {
    sync["rooms"]["leave"][room]["timeline"]["events"].as_array()
}

/// Incremental `/sync` from `since` until `room` is in its `leave` section (bounded);
/// the room's leave timeline.
pub async fn wait_sync_leave(c: &Client, since: &str, room: &str) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let sync = c
            .sync(&format!("since={}&timeout=2000", enc(&since)))
            .await?;
        if let Some(events) = left_events(&sync, room) {
            return Ok(events.clone());
        }
        if Instant::now() > deadline {
            bail!("{} never saw {room} in leave: {sync}", c.user_id);
        }
        since = spec_tests::next_batch(&sync);
    }
}

/// A sliding sync request over every room; `pos` continues a connection.
pub async fn sliding(c: &Client, pos: Option<&str>, timeout_ms: u64) -> Result<Value> {
    let mut path = format!("{SLIDING}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    let body = json!({"lists": {"all": {"ranges": [[0, 50]], "timeline_limit": 10}}});
    c.request(Method::POST, &path, Some(&body)).await?.ok()
}

/// Sliding sync from `pos` until `room` shows the user's own `leave` member event
/// (bounded).
pub async fn wait_sliding_leave(c: &Client, pos: &str, room: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pos = pos.to_owned();
    loop {
        let resp = sliding(c, Some(&pos), 2000).await?;
        let left = resp["rooms"][room]["timeline"]
            .as_array()
            .is_some_and(|tl| {
                tl.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == c.user_id.as_str()
                        && e["content"]["membership"] == "leave"
                })
            });
        if left {
            return Ok(resp);
        }
        if Instant::now() > deadline {
            bail!(
                "{}'s sliding sync never showed leaving {room}: {resp}",
                c.user_id
            );
        }
        pos = resp["pos"].as_str().unwrap_or_default().to_owned();
    }
}

/// Fails unless the room answers 404 `M_NOT_FOUND` to join, `/state` and `/messages`.
pub async fn room_is_gone(c: &Client, room: &str) -> Result<()> {
    c.post(&format!("/join/{}", enc(room)), json!({}))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    c.get(&format!("/rooms/{}/state", enc(room)))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    c.get(&format!("/rooms/{}/messages?dir=b", enc(room)))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let joined = c.get("/joined_rooms").await?.ok()?;
    if joined["joined_rooms"]
        .as_array()
        .is_some_and(|rooms| rooms.iter().any(|r| r == room))
    {
        bail!("{room} is still in {}'s joined rooms: {joined}", c.user_id);
    }
    Ok(())
}
