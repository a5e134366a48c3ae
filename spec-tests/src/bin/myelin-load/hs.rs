//! The HTTP side: a homeserver client with retries on 429, users, registration, joins.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{report::progress, Common};

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) user_id: String,
    pub(crate) token: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) url: String,
    pub(crate) users: Vec<User>,
    pub(crate) rooms: Vec<String>,
}

/// HTTP client with retry on 429 and counters.
pub(crate) struct Hs {
    pub(crate) http: reqwest::Client,
    /// The base URLs of the processes serving the homeserver (usually one).
    pub(crate) bases: Vec<String>,
    /// Turns of the requests without an access token.
    turn: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) common: Common,
}

/// Tries of a rate-limited request before giving up.
pub(crate) const RATE_LIMIT_TRIES: usize = 50;

pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Hs {
    pub(crate) fn new(common: &Common) -> Result<Hs> {
        if common.url.split(',').all(|u| u.trim().is_empty()) {
            bail!("--url names no homeserver");
        }
        Ok(Hs {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(2048)
                .timeout(Duration::from_secs(120))
                .build()?,
            bases: common
                .url
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            turn: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            common: common.clone(),
        })
    }

    /// The process a request goes to: a user's (by access token) always the same one, as
    /// behind a load balancer with per-user affinity; the others in turn.
    pub(crate) fn base(&self, token: Option<&str>) -> &str {
        let n = self.bases.len().max(1) as u64;
        let i = match token {
            Some(t) => {
                t.bytes()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
                    % n
            }
            None => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        };
        &self.bases[i as usize]
    }

    /// One request; 429s are retried after `retry_after_ms` (bounded).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        for _ in 0..RATE_LIMIT_TRIES {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base(token)));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.with_context(|| path.to_owned())?;
            let status = resp.status().as_u16();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if status == 429 {
                self.rate_limited(&value).await;
                continue;
            }
            return Ok((status, value));
        }
        bail!("{path}: still rate limited after {RATE_LIMIT_TRIES} tries")
    }

    /// After a 429 answer: counts the retry and waits the time the server asks for
    /// (bounded).
    pub(crate) async fn rate_limited(&self, answer: &Value) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let wait = answer["retry_after_ms"].as_u64().unwrap_or(500).min(10_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }

    /// Stores `filter` for `user` and returns its id (as clients do: Element sends the id
    /// on every sync rather than the definition).
    pub(crate) async fn upload_filter(&self, user: &User, filter: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/user/{}/filter", enc(&user.user_id));
        let v = self
            .ok(
                reqwest::Method::POST,
                &path,
                Some(&user.token),
                Some(filter),
            )
            .await?;
        Ok(v["filter_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no filter_id: {v}"))?
            .to_owned())
    }

    pub(crate) async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, value) = self.call(method, path, token, body).await?;
        if status != 200 {
            bail!("{path}: HTTP {status}: {value}");
        }
        Ok(value)
    }

    pub(crate) async fn register(&self, name: &str) -> Result<User> {
        let password = format!("{name}-Pass-1234");
        let value = if let Some(secret) = &self.common.shared_secret {
            use hmac::{Hmac, Mac};
            let path = "/_synapse/admin/v1/register";
            let nonce = self.ok(reqwest::Method::GET, path, None, None).await?["nonce"]
                .as_str()
                .ok_or_else(|| anyhow!("no nonce"))?
                .to_owned();
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())?;
            mac.update(format!("{nonce}\0{name}\0{password}\0notadmin").as_bytes());
            let mac = hex::encode(mac.finalize().into_bytes());
            let body = json!({"nonce": nonce, "username": name, "password": password, "admin": false, "mac": mac});
            self.ok(reqwest::Method::POST, path, None, Some(&body))
                .await?
        } else {
            let path = "/_matrix/client/v3/register";
            let first = json!({"username": name, "password": password});
            let (_, uia) = self
                .call(reqwest::Method::POST, path, None, Some(&first))
                .await?;
            let session = uia["session"].as_str().unwrap_or_default();
            let auth = match &self.common.registration_token {
                Some(t) => {
                    json!({"type": "m.login.registration_token", "token": t, "session": session})
                }
                None => json!({"type": "m.login.dummy", "session": session}),
            };
            let body = json!({"username": name, "password": password, "auth": auth});
            self.ok(reqwest::Method::POST, path, None, Some(&body))
                .await?
        };
        Ok(User {
            user_id: value["user_id"]
                .as_str()
                .ok_or_else(|| anyhow!("no user_id: {value}"))?
                .to_owned(),
            token: value["access_token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token: {value}"))?
                .to_owned(),
        })
    }

    pub(crate) async fn create_room(&self, user: &User, public: bool) -> Result<String> {
        let body = json!({"preset": if public { "public_chat" } else { "private_chat" }});
        let v = self
            .ok(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&user.token),
                Some(&body),
            )
            .await?;
        Ok(v["room_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no room_id"))?
            .to_owned())
    }

    pub(crate) async fn join(&self, user: &User, room: &str) -> Result<()> {
        self.ok(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(&user.token),
            Some(&json!({})),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn send(
        &self,
        user: &User,
        room: &str,
        txn: &str,
        content: &Value,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room),
            enc(txn)
        );
        self.ok(
            reqwest::Method::PUT,
            &path,
            Some(&user.token),
            Some(content),
        )
        .await?;
        Ok(())
    }
}

/// Registers `n` users concurrently.
pub(crate) async fn register_many(hs: &Arc<Hs>, n: usize, tag: &str) -> Result<Vec<User>> {
    let run = format!("{}{}{}", hs.common.prefix, tag, std::process::id());
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..hs.common.setup_concurrency.max(1) {
        let (hs, next, out, run) = (hs.clone(), next.clone(), out.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let user = hs.register(&format!("{run}_{i}")).await?;
                out.lock().expect("lock").push(user);
                progress(&format!("registered {}/{n}", i + 1));
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let users = std::mem::take(&mut *out.lock().expect("lock"));
    Ok(users)
}

/// Users join a room, `concurrency` at a time: joins per second.
pub(crate) async fn join_all(
    hs: &Arc<Hs>,
    users: &[User],
    room: &str,
    concurrency: usize,
) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let users = Arc::new(users.to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (hs, next, users, room) = (hs.clone(), next.clone(), users.clone(), room.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(u) = users.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                hs.join(u, &room).await?;
                if (i + 1).is_multiple_of(100) {
                    progress(&format!("joined {}/{}", i + 1, users.len()));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(users.len() as f64 / start.elapsed().as_secs_f64())
}
