//! Helpers shared by the room-kind tests (`room_kinds_*.rs`): creating groups and virtual
//! rooms, reading and changing power levels, and the `io.myelin` endpoints.

// Each test file uses some of these.
#![allow(dead_code)]

use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response};

/// `m.room.create` type of a group.
pub const GROUP: &str = "io.myelin.group";
/// `m.room.create` type of a virtual room.
pub const VIRTUAL_ROOM: &str = "io.myelin.virtual_room";

/// A path under `/_matrix/client/unstable/io.myelin`.
pub fn myelin(path: &str) -> String {
    format!("/_matrix/client/unstable/io.myelin{path}")
}

/// Creates a group; `extra` is merged into the createRoom body.
pub async fn create_group(c: &Client, extra: Value) -> Result<String> {
    let mut body = json!({"creation_content": {"type": GROUP}});
    merge(&mut body, extra);
    c.create_room(body).await
}

/// Creates a virtual room named `name`; `extra` is merged into the createRoom body.
pub async fn create_virtual_room(c: &Client, name: &str, extra: Value) -> Result<String> {
    let mut body = json!({"name": name, "creation_content": {"type": VIRTUAL_ROOM}});
    merge(&mut body, extra);
    c.create_room(body).await
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
}

/// The room's current `m.room.power_levels` content.
pub async fn power_levels(c: &Client, room: &str) -> Result<Value> {
    c.get(&format!("/rooms/{}/state/m.room.power_levels/", enc(room)))
        .await?
        .ok()
}

/// Sets one user's level the way Element does: the current content with that entry
/// changed, sent whole.
pub async fn set_level(c: &Client, room: &str, user: &str, level: i64) -> Result<Response> {
    let mut pl = power_levels(c, room).await?;
    pl["users"][user] = json!(level);
    c.set_state(room, "m.room.power_levels", "", pl).await
}

/// `GET …/rooms/{roomId}/roles`.
pub async fn roles(c: &Client, room: &str) -> Result<Response> {
    c.request(
        Method::GET,
        &myelin(&format!("/rooms/{}/roles", enc(room))),
        None,
    )
    .await
}

/// `PUT …/rooms/{roomId}/text_mute`.
pub async fn text_mute(c: &Client, room: &str, muted: bool) -> Result<Response> {
    c.request(
        Method::PUT,
        &myelin(&format!("/rooms/{}/text_mute", enc(room))),
        Some(&json!({ "muted": muted })),
    )
    .await
}

/// `GET …/unread`.
pub async fn unread(c: &Client) -> Result<Value> {
    c.request(Method::GET, &myelin("/unread"), None).await?.ok()
}

/// `POST /rooms/{roomId}/leave`.
pub async fn leave(c: &Client, room: &str) -> Result<Response> {
    c.post(&format!("/rooms/{}/leave", enc(room)), json!({}))
        .await
}

/// `POST /rooms/{roomId}/{action}` (`invite`, `kick`, `ban`) on `user`.
pub async fn member_action(c: &Client, room: &str, action: &str, user: &str) -> Result<Response> {
    c.post(
        &format!("/rooms/{}/{action}", enc(room)),
        json!({ "user_id": user }),
    )
    .await
}

/// Sends a text message, returning the raw response (for refusals).
pub async fn say_response(c: &Client, room: &str, text: &str) -> Result<Response> {
    c.put(
        &format!(
            "/rooms/{}/send/m.room.message/{}",
            enc(room),
            spec_tests::fresh_txn()
        ),
        json!({"msgtype": "m.text", "body": text}),
    )
    .await
}

/// Fails unless `resp` is 403 `M_FORBIDDEN` with an error text containing `words`.
#[track_caller]
pub fn forbidden(resp: &Response, words: &str) -> Result<()> {
    let at = std::panic::Location::caller();
    if resp.status != 403 || resp.errcode() != "M_FORBIDDEN" {
        bail!(
            "{at}: expected 403 M_FORBIDDEN, got {}: {}",
            resp.status,
            resp.text
        );
    }
    let error = resp.body["error"].as_str().unwrap_or("");
    if !error.contains(words) {
        bail!("{at}: the refusal {error:?} does not say {words:?}");
    }
    Ok(())
}

/// Fails unless the event of `(kind, key)` in `room` is still `expected` (a refusal wrote
/// nothing).
pub async fn state_is(
    c: &Client,
    room: &str,
    kind: &str,
    key: &str,
    expected: &Value,
) -> Result<()> {
    let now = c
        .get(&format!(
            "/rooms/{}/state/{}/{}",
            enc(room),
            enc(kind),
            enc(key)
        ))
        .await?
        .ok()?;
    if &now != expected {
        bail!("{kind} changed: {now} instead of {expected}");
    }
    Ok(())
}
