//! A webhook bridge: the smallest useful application service.
//!
//! - `POST /hook/{room}` with `{"user": "...", "text": "..."}` posts `text` in `{room}` (a
//!   room id or alias) as the puppet `@hook_{user}:{server}`, which it registers and joins
//!   first when needed (the room must let it join: public, or invited).
//! - Every `m.room.message` the homeserver hands it (in rooms where one of its users is
//!   joined, from anyone but its own users) is forwarded as
//!   `POST {forward} {"room_id", "sender", "body"}`.
//!
//! ```text
//! cargo run -p myelin-appservice --example webhook-bridge -- \
//!     --registration webhook.yaml --homeserver http://127.0.0.1:8008 \
//!     --listen 127.0.0.1:9000 --forward http://127.0.0.1:9100/incoming
//! ```
//!
//! The registration's `url` must point at `--listen`; its user namespace must hold
//! `@hook_.*` (and its `sender_localpart`).

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use clap::Parser;
use myelin_appservice::{NamespaceKind, Registration};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "webhook-bridge",
    about = "A webhook bridge for Myelin (or any homeserver)"
)]
struct Args {
    /// The bridge's registration file (the one the homeserver loads).
    #[arg(long)]
    registration: PathBuf,
    /// The homeserver's client-server API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    homeserver: String,
    /// The homeserver's server name (the part after `:` in user ids).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Where the bridge listens (the registration's `url`).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Where messages from bridged rooms are posted.
    #[arg(long)]
    forward: Option<String>,
}

struct Bridge {
    reg: Registration,
    homeserver: String,
    server_name: String,
    forward: Option<String>,
    http: reqwest::Client,
    /// Transactions already handled (the homeserver resends one until it is answered).
    seen: Mutex<HashSet<String>>,
    next_txn: AtomicU64,
}

/// An error answered to a webhook caller or to the homeserver.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let errcode = match self.0 {
            StatusCode::FORBIDDEN => "M_FORBIDDEN",
            StatusCode::BAD_REQUEST => "M_BAD_JSON",
            _ => "M_UNKNOWN",
        };
        (self.0, Json(json!({"errcode": errcode, "error": self.1}))).into_response()
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Bridge {
    /// A client-server request as the bridge (as `user`, when given).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Value,
    ) -> Result<(StatusCode, Value), Failure> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match user {
            Some(user) => format!(
                "{}/_matrix/client/v3{path}{sep}user_id={}",
                self.homeserver,
                enc(user)
            ),
            None => format!("{}/_matrix/client/v3{path}", self.homeserver),
        };
        let resp = self
            .http
            .request(method, url)
            .bearer_auth(&self.reg.as_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure(StatusCode::BAD_GATEWAY, format!("homeserver: {e}")))?;
        let status = StatusCode::from_u16(resp.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Registers the puppet unless it exists.
    async fn ensure_puppet(&self, localpart: &str) -> Result<(), Failure> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/register",
                None,
                json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true}),
            )
            .await?;
        if status.is_success() || body["errcode"] == "M_USER_IN_USE" {
            Ok(())
        } else {
            Err(Failure(
                StatusCode::BAD_GATEWAY,
                format!("registering {localpart}: {status} {body}"),
            ))
        }
    }

    /// Posts `text` in `room` as `@hook_{user}`; the event id.
    async fn post_as(&self, room: &str, user: &str, text: &str) -> Result<String, Failure> {
        let localpart = format!("hook_{}", user.to_lowercase());
        let puppet = format!("@{localpart}:{}", self.server_name);
        self.ensure_puppet(&localpart).await?;
        let (status, joined) = self
            .call(
                reqwest::Method::POST,
                &format!("/join/{}", enc(room)),
                Some(&puppet),
                json!({}),
            )
            .await?;
        if !status.is_success() {
            return Err(Failure(
                StatusCode::BAD_GATEWAY,
                format!("{puppet} cannot join {room}: {status} {joined}"),
            ));
        }
        let room_id = joined["room_id"].as_str().unwrap_or(room).to_owned();
        let txn = self.next_txn.fetch_add(1, Ordering::Relaxed);
        let (status, sent) = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/rooms/{}/send/m.room.message/hook{}-{txn}",
                    enc(&room_id),
                    std::process::id()
                ),
                Some(&puppet),
                json!({"msgtype": "m.text", "body": text}),
            )
            .await?;
        match sent["event_id"].as_str() {
            Some(id) if status.is_success() => Ok(id.to_owned()),
            _ => Err(Failure(
                StatusCode::BAD_GATEWAY,
                format!("sending as {puppet}: {status} {sent}"),
            )),
        }
    }

    fn check_hs_token(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(self.reg.hs_token.as_str()) {
            Ok(())
        } else {
            Err(Failure(StatusCode::FORBIDDEN, "bad hs_token".into()))
        }
    }
}

/// `POST /hook/{room}` `{"user", "text"}`
async fn hook(
    State(bridge): State<Arc<Bridge>>,
    Path(room): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, Failure> {
    let (Some(user), Some(text)) = (body["user"].as_str(), body["text"].as_str()) else {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "`user` and `text` are required strings".into(),
        ));
    };
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._=-".contains(&b));
    if !valid {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "`user` may hold letters, digits and . _ = - only".into(),
        ));
    }
    let event_id = bridge.post_as(&room, user, text).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /_matrix/app/v1/transactions/{txnId}`: forwards the messages of others.
async fn transaction(
    State(bridge): State<Arc<Bridge>>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, Failure> {
    bridge.check_hs_token(&headers)?;
    if bridge
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&txn)
    {
        return Ok(Json(json!({})));
    }
    for event in body["events"].as_array().into_iter().flatten() {
        let sender = event["sender"].as_str().unwrap_or_default();
        let ours = bridge.reg.matches(NamespaceKind::Users, sender)
            || sender == bridge.reg.sender(&bridge.server_name);
        if event["type"] != "m.room.message" || ours {
            continue;
        }
        let Some(forward) = &bridge.forward else {
            continue;
        };
        let message = json!({
            "room_id": event["room_id"],
            "sender": sender,
            "body": event["content"]["body"],
        });
        // Not answered 2xx: the homeserver sends the transaction again later.
        let sent = bridge.http.post(forward).json(&message).send().await;
        if !sent.is_ok_and(|r| r.status().is_success()) {
            return Err(Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the forward target did not take the message".into(),
            ));
        }
    }
    bridge
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(txn);
    Ok(Json(json!({})))
}

/// `GET /_matrix/app/v1/users/{userId}` and `/rooms/{alias}`: this bridge creates
/// puppets when a hook names them, never on a query.
async fn not_here() -> Failure {
    Failure(StatusCode::NOT_FOUND, "not bridged".into())
}

/// `POST /_matrix/app/v1/ping`
async fn ping(
    State(bridge): State<Arc<Bridge>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    bridge.check_hs_token(&headers)?;
    Ok(Json(json!({})))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let reg = Registration::from_file(&args.registration)?;
    let bridge = Arc::new(Bridge {
        reg,
        homeserver: args.homeserver.trim_end_matches('/').to_owned(),
        server_name: args.server_name,
        forward: args.forward,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        seen: Mutex::default(),
        next_txn: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/hook/{room}", post(hook))
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/_matrix/app/v1/users/{user}", get(not_here))
        .route("/_matrix/app/v1/rooms/{alias}", get(not_here))
        .route("/_matrix/app/v1/ping", post(ping))
        .with_state(bridge);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("webhook bridge listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
