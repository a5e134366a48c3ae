//! The HTTP side of the harness: a client with an access token speaking the
//! client-server API, its responses, and helpers to read `/sync` answers.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body as JSON.
    pub body: Value,
    /// The raw body.
    pub text: String,
}

impl Response {
    /// The `errcode` of an error body.
    pub fn errcode(&self) -> &str {
        self.body["errcode"].as_str().unwrap_or("")
    }

    /// Fails unless the status is 200, with the body and the caller's line in the message.
    #[track_caller]
    pub fn ok(self) -> Result<Value> {
        if self.status != 200 {
            let at = std::panic::Location::caller();
            bail!("{at}: expected 200, got {}: {}", self.status, self.text);
        }
        Ok(self.body)
    }

    /// Fails unless status and errcode are as given.
    #[track_caller]
    pub fn expect_error(&self, status: u16, errcode: &str) -> Result<()> {
        if self.status != status || self.errcode() != errcode {
            let at = std::panic::Location::caller();
            bail!(
                "{at}: expected {status} {errcode}, got {}: {}",
                self.status,
                self.text
            );
        }
        if self.body["error"].as_str().is_none() {
            bail!("error body without `error` text: {}", self.text);
        }
        Ok(())
    }
}

/// A client-server API client, optionally logged in.
#[derive(Clone)]
pub struct Client {
    /// Server base URL.
    pub base: String,
    pub(crate) http: reqwest::Client,
    /// Access token.
    pub token: Option<String>,
    /// Logged-in user id.
    pub user_id: String,
    /// Logged-in device id.
    pub device_id: String,
}

/// Percent-encodes a path segment (ids contain `!`, `#`, `:`, `@`, `$`).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Client {
    /// Sends a request; `path` starts with `/` and may carry a query.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| url.clone())?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Response { status, body, text })
    }

    /// Sends a raw body with a content type.
    pub async fn request_raw(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Response { status, body, text })
    }

    /// GET under `/_matrix/client/v3`.
    pub async fn get(&self, path: &str) -> Result<Response> {
        self.request(Method::GET, &format!("/_matrix/client/v3{path}"), None)
            .await
    }

    /// POST under `/_matrix/client/v3`.
    pub async fn post(&self, path: &str, body: Value) -> Result<Response> {
        self.request(
            Method::POST,
            &format!("/_matrix/client/v3{path}"),
            Some(&body),
        )
        .await
    }

    /// PUT under `/_matrix/client/v3`.
    pub async fn put(&self, path: &str, body: Value) -> Result<Response> {
        self.request(
            Method::PUT,
            &format!("/_matrix/client/v3{path}"),
            Some(&body),
        )
        .await
    }

    /// DELETE under `/_matrix/client/v3`.
    pub async fn delete(&self, path: &str, body: Option<Value>) -> Result<Response> {
        self.request(
            Method::DELETE,
            &format!("/_matrix/client/v3{path}"),
            body.as_ref(),
        )
        .await
    }

    /// Registers with UIA `m.login.dummy` and keeps the session.
    pub async fn register(&mut self, name: &str, password: &str) -> Result<()> {
        let first = self
            .post("/register", json!({"username": name, "password": password}))
            .await?;
        if first.status != 401 {
            bail!("register without auth: expected 401, got {}", first.text);
        }
        let session = first.body["session"]
            .as_str()
            .ok_or_else(|| anyhow!("no UIA session: {}", first.text))?
            .to_string();
        let done = self
            .post(
                "/register",
                json!({
                    "username": name,
                    "password": password,
                    "auth": {"type": "m.login.dummy", "session": session},
                }),
            )
            .await?
            .ok()?;
        self.adopt(&done)
    }

    /// Logs in with a password.
    pub async fn login(&mut self, name: &str, password: &str) -> Result<()> {
        let body = self
            .post(
                "/login",
                json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": name},
                    "password": password,
                }),
            )
            .await?
            .ok()?;
        self.adopt(&body)
    }

    fn adopt(&mut self, body: &Value) -> Result<()> {
        self.token = Some(
            body["access_token"]
                .as_str()
                .ok_or_else(|| anyhow!("no access_token: {body}"))?
                .to_string(),
        );
        self.user_id = body["user_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no user_id: {body}"))?
            .to_string();
        self.device_id = body["device_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no device_id: {body}"))?
            .to_string();
        Ok(())
    }

    /// `POST /login` with a password, returning the raw response (for refusals).
    pub async fn login_response(&self, name: &str, password: &str) -> Result<Response> {
        self.post(
            "/login",
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
            }),
        )
        .await
    }

    /// Invites `user_id` to a room.
    pub async fn invite(&self, room: &str, user_id: &str) -> Result<()> {
        self.post(
            &format!("/rooms/{}/invite", enc(room)),
            json!({ "user_id": user_id }),
        )
        .await?
        .ok()?;
        Ok(())
    }

    /// An OpenID token of this user (`/user/{userId}/openid/request_token`).
    pub async fn openid_token(&self) -> Result<Value> {
        let token = self
            .post(
                &format!("/user/{}/openid/request_token", enc(&self.user_id)),
                json!({}),
            )
            .await?
            .ok()?;
        if !token["access_token"].is_string() {
            bail!("no access_token in the OpenID token: {token}");
        }
        Ok(token)
    }

    /// Creates a room; returns its id.
    pub async fn create_room(&self, body: Value) -> Result<String> {
        let body = self.post("/createRoom", body).await?.ok()?;
        Ok(body["room_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no room_id: {body}"))?
            .to_string())
    }

    /// Joins a room by id or alias.
    pub async fn join(&self, room: &str) -> Result<String> {
        let body = self
            .post(&format!("/join/{}", enc(room)), json!({}))
            .await?
            .ok()?;
        Ok(body["room_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no room_id: {body}"))?
            .to_string())
    }

    /// Sends an event with a fresh transaction id; returns the event id.
    pub async fn send(&self, room: &str, kind: &str, content: Value) -> Result<String> {
        self.send_txn(room, kind, &fresh_txn(), content).await
    }

    /// Sends an event with the given transaction id.
    pub async fn send_txn(
        &self,
        room: &str,
        kind: &str,
        txn: &str,
        content: Value,
    ) -> Result<String> {
        let body = self
            .put(
                &format!("/rooms/{}/send/{}/{}", enc(room), enc(kind), enc(txn)),
                content,
            )
            .await?
            .ok()?;
        Ok(body["event_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no event_id: {body}"))?
            .to_string())
    }

    /// Sends a text message.
    pub async fn say(&self, room: &str, text: &str) -> Result<String> {
        self.send(
            room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": text}),
        )
        .await
    }

    /// Sets a state event; returns its id.
    pub async fn set_state(
        &self,
        room: &str,
        kind: &str,
        key: &str,
        content: Value,
    ) -> Result<Response> {
        self.put(
            &format!("/rooms/{}/state/{}/{}", enc(room), enc(kind), enc(key)),
            content,
        )
        .await
    }

    /// Announces this device's call membership in `room` (`org.matrix.msc3401.call.member`,
    /// as Element Call does before it joins the SFU), with the LiveKit service at
    /// `service_url`, expiring `expires_ms` after now.
    pub async fn join_call(&self, room: &str, service_url: &str, expires_ms: u64) -> Result<()> {
        let key = format!("_{}_{}_m.call", self.user_id, self.device_id);
        self.set_state(
            room,
            "org.matrix.msc3401.call.member",
            &key,
            json!({
                "application": "m.call",
                "call_id": "",
                "scope": "m.room",
                "device_id": self.device_id,
                "expires": expires_ms,
                "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
                "foci_preferred": [{
                    "type": "livekit",
                    "livekit_alias": room,
                    "livekit_service_url": service_url,
                }],
            }),
        )
        .await?
        .ok()?;
        Ok(())
    }

    /// `/sync` with a query string (e.g. `since=...&timeout=0`).
    pub async fn sync(&self, query: &str) -> Result<Value> {
        self.get(&format!("/sync?{query}")).await?.ok()
    }

    /// An event as this client reads it on `/messages`, `/event`, `/context`, `/sync` and
    /// sliding sync: all five copies (for what `unsigned` carries on every read path).
    pub async fn event_everywhere(&self, room: &str, event_id: &str) -> Result<Vec<Value>> {
        let r = enc(room);
        let mut copies = Vec::new();
        let page = self
            .get(&format!("/rooms/{r}/messages?dir=b&limit=50"))
            .await?
            .ok()?;
        copies.push(find_event(&page["chunk"], event_id)?.clone());
        copies.push(
            self.get(&format!("/rooms/{r}/event/{}", enc(event_id)))
                .await?
                .ok()?,
        );
        let context = self
            .get(&format!("/rooms/{r}/context/{}?limit=10", enc(event_id)))
            .await?
            .ok()?;
        copies.push(context["event"].clone());
        let filter = enc(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
        let sync = self.sync(&format!("timeout=0&filter={filter}")).await?;
        copies.push(
            find_event(&sync["rooms"]["join"][room]["timeline"]["events"], event_id)?.clone(),
        );
        let ss = self
            .request(
                Method::POST,
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0",
                Some(&json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 50}}})),
            )
            .await?
            .ok()?;
        copies.push(find_event(&ss["rooms"][room]["timeline"], event_id)?.clone());
        Ok(copies)
    }
}

/// The event with `event_id` in a JSON array of events.
fn find_event<'a>(events: &'a Value, event_id: &str) -> Result<&'a Value> {
    events
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == event_id))
        .ok_or_else(|| anyhow!("no {event_id} in {events}"))
}

/// A transaction id no other request of this test process uses (concurrent sends must
/// not collide: the server would take the second for a retry of the first).
pub fn fresh_txn() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `next_batch` of a sync response; panics with the body when there is none.
#[track_caller]
pub fn next_batch(sync: &Value) -> String {
    match sync["next_batch"].as_str() {
        Some(token) => token.to_owned(),
        None => panic!("sync response without next_batch: {sync}"),
    }
}

/// The timeline events of a joined room in a sync response; panics with the body when the
/// room is not among the joined rooms or has no timeline events array.
#[track_caller]
pub fn timeline<'a>(sync: &'a Value, room: &str) -> Vec<&'a Value> {
    match sync["rooms"]["join"][room]["timeline"]["events"].as_array() {
        Some(events) => events.iter().collect(),
        None => panic!("no timeline of joined room {room} in: {sync}"),
    }
}

/// The ephemeral event of type `kind` of a joined room in a sync response, if any.
pub fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

/// `inviter` invites `invitee` to a room and `invitee` joins it.
pub async fn invite_and_join(inviter: &Client, invitee: &Client, room: &str) -> Result<()> {
    inviter.invite(room, &invitee.user_id).await?;
    invitee.join(room).await?;
    Ok(())
}

/// The bodies of the `m.room.message` events of a list.
pub fn bodies(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_string))
        .collect()
}
