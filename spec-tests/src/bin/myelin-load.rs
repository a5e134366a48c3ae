//! `myelin-load`: a load generator that speaks only the standard Matrix client-server API,
//! so it drives any homeserver (Myelin, Synapse, ...) for side-by-side figures.
//!
//! Every scenario prints one JSON object on stdout (a table too with `--pretty`) and a
//! progress line on stderr while it runs. Loops are bounded by counts or durations.
//! One scenario is Myelin's own: `meetings` times `GET …/io.myelin/meetings`.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "myelin-load", about = "Matrix homeserver load generator")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// Homeserver base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8008")]
    url: String,
    /// Print a human-readable table after the JSON.
    #[arg(long, global = true)]
    pretty: bool,
    /// PID of the server process, to report its RSS from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Register with this registration token instead of m.login.dummy.
    #[arg(long, global = true)]
    registration_token: Option<String>,
    /// Register through the shared-secret admin API with this secret.
    #[arg(long, global = true)]
    shared_secret: Option<String>,
    /// Prefix of generated user names (make it unique per run against one server).
    #[arg(long, global = true, default_value = "load")]
    prefix: String,
    /// Concurrent requests during setup phases.
    #[arg(long, global = true, default_value_t = 8)]
    setup_concurrency: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// Register users, create rooms, join users; save the state to a file.
    Setup {
        #[arg(long, default_value_t = 10)]
        users: usize,
        #[arg(long, default_value_t = 2)]
        rooms: usize,
        #[arg(long)]
        state: String,
    },
    /// C clients send messages for T seconds: throughput and latency.
    Send {
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rooms the clients spread over (1: everyone in one room).
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Reuse users and rooms from a `setup` state file.
        #[arg(long)]
        state: Option<String>,
    },
    /// S users long-poll /sync in one room while one user sends M messages at a rate:
    /// delivery and send latency; with `--late-joiners J`, J more users then join the full
    /// room at once (joins/s into a big room).
    Fanout {
        #[arg(long, default_value_t = 20)]
        syncers: usize,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Users who join the room at once after the messages.
        #[arg(long, default_value_t = 0)]
        late_joiners: usize,
    },
    /// A user in R rooms with K messages each: initial /sync time.
    InitialSync {
        #[arg(long, default_value_t = 50)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        repeats: usize,
    },
    /// U users join one room at once: joins/s, then /members time.
    JoinStorm {
        #[arg(long, default_value_t = 100)]
        users: usize,
    },
    /// Myelin only: a user in R rooms, every `call-every`th with a live call and every
    /// `schedule-every`th with a future meeting schedule; times Q requests of
    /// `GET /_matrix/client/unstable/io.myelin/meetings`.
    Meetings {
        #[arg(long, default_value_t = 500)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        call_every: usize,
        #[arg(long, default_value_t = 5)]
        schedule_every: usize,
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
}

/// A logged-in user.
#[derive(Clone, Serialize, Deserialize)]
struct User {
    user_id: String,
    token: String,
}

#[derive(Serialize, Deserialize)]
struct State {
    url: String,
    users: Vec<User>,
    rooms: Vec<String>,
}

/// HTTP client with retry on 429 and counters.
struct Hs {
    http: reqwest::Client,
    base: String,
    retries: AtomicU64,
    common: Common,
}

fn enc(s: &str) -> String {
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
    fn new(common: &Common) -> Result<Hs> {
        Ok(Hs {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(2048)
                .timeout(Duration::from_secs(120))
                .build()?,
            base: common.url.trim_end_matches('/').to_owned(),
            retries: AtomicU64::new(0),
            common: common.clone(),
        })
    }

    /// One request; 429s are retried after `retry_after_ms` (bounded).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        for _ in 0..50 {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
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
                self.retries.fetch_add(1, Ordering::Relaxed);
                let wait = value["retry_after_ms"].as_u64().unwrap_or(500).min(10_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            return Ok((status, value));
        }
        bail!("{path}: still rate limited after 50 retries")
    }

    async fn ok(
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

    async fn register(&self, name: &str) -> Result<User> {
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

    async fn create_room(&self, user: &User, public: bool) -> Result<String> {
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

    async fn join(&self, user: &User, room: &str) -> Result<()> {
        self.ok(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(&user.token),
            Some(&json!({})),
        )
        .await?;
        Ok(())
    }

    async fn send(&self, user: &User, room: &str, txn: &str, content: &Value) -> Result<()> {
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
async fn register_many(hs: &Arc<Hs>, n: usize, tag: &str) -> Result<Vec<User>> {
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

fn progress(line: &str) {
    eprint!("\r\x1b[2K{line}");
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

fn rss(pid: Option<u32>) -> Value {
    let Some(pid) = pid else { return Value::Null };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Value::Null;
    };
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb / 1024)
    };
    json!({ "rss_mib": field("VmRSS:"), "peak_rss_mib": field("VmHWM:") })
}

async fn scenario_setup(hs: &Arc<Hs>, users: usize, rooms: usize, state: &str) -> Result<Value> {
    let start = Instant::now();
    let all = register_many(hs, users.max(1), "s").await?;
    let mut room_ids = Vec::new();
    for _ in 0..rooms {
        room_ids.push(hs.create_room(&all[0], true).await?);
    }
    for user in &all[1..] {
        for room in &room_ids {
            hs.join(user, room).await?;
        }
    }
    let saved = State {
        url: hs.base.clone(),
        users: all,
        rooms: room_ids,
    };
    std::fs::write(state, serde_json::to_vec_pretty(&saved)?)?;
    Ok(
        json!({"users": users, "rooms": rooms, "seconds": start.elapsed().as_secs_f64(), "state": state}),
    )
}

async fn scenario_send(
    hs: &Arc<Hs>,
    clients: usize,
    seconds: u64,
    rooms: usize,
    state: Option<&str>,
) -> Result<Value> {
    let (users, room_ids) = match state {
        Some(path) => {
            let s: State = serde_json::from_slice(&std::fs::read(path)?)?;
            (s.users, s.rooms)
        }
        None => {
            let users = register_many(hs, clients, "send").await?;
            let mut room_ids = Vec::new();
            for _ in 0..rooms.max(1) {
                room_ids.push(hs.create_room(&users[0], true).await?);
            }
            for (i, u) in users.iter().enumerate().skip(1) {
                hs.join(u, &room_ids[i % room_ids.len()]).await?;
            }
            (users, room_ids)
        }
    };
    if users.is_empty() || room_ids.is_empty() {
        bail!("no users or rooms");
    }
    let hist = Arc::new(Mutex::new(histogram()));
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let user = users[c % users.len()].clone();
        // The first user (the creator) is in every room; others in their own.
        let room = room_ids[c % room_ids.len()].clone();
        let (hs, hist, sent, errors) = (hs.clone(), hist.clone(), sent.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let content = json!({"msgtype": "m.text", "body": format!("load {c} {i}")});
                match hs
                    .send(
                        &user,
                        &room,
                        &format!("l{}-{c}-{i}", std::process::id()),
                        &content,
                    )
                    .await
                {
                    Ok(()) => {
                        let us = t0.elapsed().as_micros() as u64;
                        hist.lock().expect("lock").record(us.max(1)).ok();
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("\nsend error: {e:#}");
                        }
                    }
                }
                i += 1;
            }
        }));
    }
    let ticker = {
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = sent.load(Ordering::Relaxed);
                progress(&format!(
                    "send: {n} messages, {:.0}/s",
                    n as f64 / start.elapsed().as_secs_f64()
                ));
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    ticker.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let n = sent.load(Ordering::Relaxed);
    let h = hist.lock().expect("lock").clone();
    Ok(json!({
        "clients": clients,
        "rooms": room_ids.len(),
        "seconds": elapsed,
        "messages": n,
        "messages_per_sec": (n as f64 / elapsed * 10.0).round() / 10.0,
        "errors": errors.load(Ordering::Relaxed),
        "latency": latency_json(&h),
    }))
}

/// Users join a room, `concurrency` at a time: joins per second.
async fn join_all(hs: &Arc<Hs>, users: &[User], room: &str, concurrency: usize) -> Result<f64> {
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

async fn scenario_fanout(
    hs: &Arc<Hs>,
    syncers: usize,
    messages: usize,
    rate: f64,
    late_joiners: usize,
) -> Result<Value> {
    let mut users = register_many(hs, syncers + late_joiners + 1, "fan").await?;
    let sender = users.remove(0);
    let late = users.split_off(syncers);
    let room = hs.create_room(&sender, true).await?;
    let setup_joins_per_sec = join_all(hs, &users, &room, hs.common.setup_concurrency).await?;
    let filter = enc(&json!({"room": {"rooms": [room], "timeline": {"limit": 100}, "state": {"lazy_load_members": true}},
                             "presence": {"types": []}, "account_data": {"types": []}}).to_string());
    // Initial syncs, so every syncer starts from "now".
    let mut sinces = Vec::new();
    for u in &users {
        let v = hs
            .ok(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                Some(&u.token),
                None,
            )
            .await?;
        sinces.push(v["next_batch"].as_str().unwrap_or_default().to_owned());
    }
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let hist = Arc::new(Mutex::new(histogram()));
    let mut send_hist = histogram();
    let duplicates = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (u, since) in users.iter().cloned().zip(sinces) {
        let (hs, sent_at, hist, duplicates, finished, filter) = (
            hs.clone(),
            sent_at.clone(),
            hist.clone(),
            duplicates.clone(),
            finished.clone(),
            filter.clone(),
        );
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut since = since;
            let mut seen: HashSet<u64> = HashSet::new();
            // Bounded: stops once every message is seen or the sender finished and a
            // grace period passed.
            let mut grace_until: Option<Instant> = None;
            while seen.len() < messages {
                if finished.load(Ordering::Relaxed) {
                    let until = *grace_until
                        .get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
                    if Instant::now() > until {
                        break;
                    }
                }
                let path = format!(
                    "/_matrix/client/v3/sync?timeout=5000&since={}&filter={filter}",
                    enc(&since)
                );
                let v = match hs
                    .ok(reqwest::Method::GET, &path, Some(&u.token), None)
                    .await
                {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let now = Instant::now();
                since = v["next_batch"].as_str().unwrap_or(&since).to_owned();
                for e in v["rooms"]["join"][&room]["timeline"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let Some(seq) = e["content"]["seq"].as_u64() else {
                        continue;
                    };
                    if !seen.insert(seq) {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if let Some(t0) = sent_at.lock().expect("lock").get(&seq) {
                        let us = now.duration_since(*t0).as_micros() as u64;
                        hist.lock().expect("lock").record(us.max(1)).ok();
                    }
                }
            }
            seen.len() as u64
        }));
    }
    // Let every syncer reach its long poll first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    for seq in 0..messages as u64 {
        let due = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        let t0 = Instant::now();
        sent_at.lock().expect("lock").insert(seq, t0);
        let content = json!({"msgtype": "m.text", "body": format!("fanout {seq}"), "seq": seq});
        hs.send(
            &sender,
            &room,
            &format!("f{}-{seq}", std::process::id()),
            &content,
        )
        .await?;
        send_hist
            .record((t0.elapsed().as_micros() as u64).max(1))
            .ok();
        progress(&format!("fanout: sent {}/{messages}", seq + 1));
    }
    finished.store(true, Ordering::Relaxed);
    let mut received = 0;
    for t in tasks {
        received += t.await?;
    }
    let expected = (messages * syncers) as u64;
    let h = hist.lock().expect("lock").clone();
    // Joins into the room now that it is big (every member has been online).
    let late_joins_per_sec = if late.is_empty() {
        None
    } else {
        Some(join_all(hs, &late, &room, late.len().min(200)).await?)
    };
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(json!({
        "syncers": syncers,
        "messages": messages,
        "rate_per_sec": rate,
        "deliveries": received,
        "lost": expected.saturating_sub(received),
        "duplicated": duplicates.load(Ordering::Relaxed),
        "delivery_latency": latency_json(&h),
        "send_latency": latency_json(&send_hist),
        "setup_joins_per_sec": round(setup_joins_per_sec),
        "late_joiners": late.len(),
        "late_joins_per_sec": late_joins_per_sec.map(round),
    }))
}

async fn scenario_initial_sync(
    hs: &Arc<Hs>,
    rooms: usize,
    messages: usize,
    repeats: usize,
) -> Result<Value> {
    let users = register_many(hs, 1, "init").await?;
    let user = users[0].clone();
    let mut room_ids = Vec::new();
    for r in 0..rooms {
        room_ids.push(hs.create_room(&user, false).await?);
        progress(&format!("created {}/{rooms} rooms", r + 1));
    }
    let total = rooms * messages;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..hs.common.setup_concurrency.max(1) {
        let (hs, next, user, room_ids) = (hs.clone(), next.clone(), user.clone(), room_ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let room = &room_ids[i % room_ids.len()];
                let content = json!({"msgtype": "m.text", "body": format!("history {i}")});
                hs.send(
                    &user,
                    room,
                    &format!("i{}-{i}", std::process::id()),
                    &content,
                )
                .await?;
                if i.is_multiple_of(50) {
                    progress(&format!("filled {i}/{total} messages"));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut hist = histogram();
    for i in 0..repeats {
        // Synapse answers a repeated identical /sync from a response cache (2 minutes by
        // default); a filter that differs per repeat, and excludes nothing that exists,
        // makes every repeat a real initial sync.
        let filter = format!(
            "%7B%22account_data%22%3A%7B%22not_types%22%3A%5B%22io.myelin.bench.{i}%22%5D%7D%7D"
        );
        let t0 = Instant::now();
        let v = hs
            .ok(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                Some(&user.token),
                None,
            )
            .await?;
        hist.record((t0.elapsed().as_micros() as u64).max(1)).ok();
        let joined = v["rooms"]["join"].as_object().map_or(0, |m| m.len());
        if joined != rooms {
            bail!("initial sync returned {joined} rooms, expected {rooms}");
        }
        progress(&format!("initial sync {}/{repeats}", i + 1));
    }
    Ok(
        json!({"rooms": rooms, "messages_per_room": messages, "repeats": repeats, "initial_sync": latency_json(&hist)}),
    )
}

async fn scenario_join_storm(hs: &Arc<Hs>, users: usize) -> Result<Value> {
    let mut all = register_many(hs, users + 1, "join").await?;
    let owner = all.remove(0);
    let room = hs.create_room(&owner, true).await?;
    let hist = Arc::new(Mutex::new(histogram()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for u in all {
        let (hs, hist, room) = (hs.clone(), hist.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            hs.join(&u, &room).await?;
            hist.lock()
                .expect("lock")
                .record((t0.elapsed().as_micros() as u64).max(1))
                .ok();
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut errors = 0;
    for t in tasks {
        if t.await?.is_err() {
            errors += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let members = hs
        .ok(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/members", enc(&room)),
            Some(&owner.token),
            None,
        )
        .await?;
    let members_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let count = members["chunk"].as_array().map_or(0, Vec::len);
    let h = hist.lock().expect("lock").clone();
    Ok(json!({
        "users": users,
        "seconds": elapsed,
        "joins_per_sec": ((users - errors) as f64 / elapsed * 10.0).round() / 10.0,
        "errors": errors,
        "join_latency": latency_json(&h),
        "members_ms": (members_ms * 100.0).round() / 100.0,
        "members": count,
    }))
}

async fn scenario_meetings(
    hs: &Arc<Hs>,
    rooms: usize,
    call_every: usize,
    schedule_every: usize,
    requests: usize,
) -> Result<Value> {
    let (call_every, schedule_every) = (call_every.max(1), schedule_every.max(1));
    let users = register_many(hs, 1, "meet").await?;
    let user = users[0].clone();
    let whoami = hs
        .ok(
            reqwest::Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(&user.token),
            None,
        )
        .await?;
    let device = whoami["device_id"].as_str().unwrap_or("LOAD").to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..hs.common.setup_concurrency.max(1) {
        let (hs, next, user, device) = (hs.clone(), next.clone(), user.clone(), device.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= rooms {
                    return Ok::<_, anyhow::Error>(());
                }
                let room = hs.create_room(&user, false).await?;
                let state = |kind: &str, key: &str| {
                    format!(
                        "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                        enc(&room),
                        enc(key)
                    )
                };
                if i.is_multiple_of(call_every) {
                    let key = format!("_{}_{device}_m.call", user.user_id);
                    let content = json!({"application": "m.call", "call_id": "",
                        "scope": "m.room", "device_id": device, "expires": 3_600_000});
                    hs.ok(
                        reqwest::Method::PUT,
                        &state("org.matrix.msc3401.call.member", &key),
                        Some(&user.token),
                        Some(&content),
                    )
                    .await?;
                }
                if i.is_multiple_of(schedule_every) {
                    let start = now + 3_600_000 + i as u64 * 60_000;
                    let content = json!({"title": format!("Meeting {i}"), "start_ts": start,
                        "end_ts": start + 1_800_000, "rrule": "FREQ=WEEKLY"});
                    hs.ok(
                        reqwest::Method::PUT,
                        &state("io.myelin.meeting.schedule", ""),
                        Some(&user.token),
                        Some(&content),
                    )
                    .await?;
                }
                if i.is_multiple_of(50) {
                    progress(&format!("prepared {i}/{rooms} rooms"));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let expect_ongoing = rooms.div_ceil(call_every);
    // Every schedule is in the future, so a room with a live call too is in both lists.
    let expect_scheduled = rooms.div_ceil(schedule_every);
    let mut hist = histogram();
    for i in 0..requests {
        let t0 = Instant::now();
        let v = hs
            .ok(
                reqwest::Method::GET,
                "/_matrix/client/unstable/io.myelin/meetings",
                Some(&user.token),
                None,
            )
            .await?;
        hist.record((t0.elapsed().as_micros() as u64).max(1)).ok();
        let ongoing = v["ongoing"].as_array().map_or(0, Vec::len);
        let scheduled = v["scheduled"].as_array().map_or(0, Vec::len);
        if ongoing != expect_ongoing || scheduled != expect_scheduled {
            bail!(
                "meetings list has {ongoing} ongoing and {scheduled} scheduled, expected \
                 {expect_ongoing} and {expect_scheduled}"
            );
        }
        if i.is_multiple_of(20) {
            progress(&format!("meetings list {}/{requests}", i + 1));
        }
    }
    Ok(json!({
        "rooms": rooms,
        "ongoing": expect_ongoing,
        "scheduled": expect_scheduled,
        "requests": requests,
        "meetings_list": latency_json(&hist),
    }))
}

fn print_table(v: &Value, prefix: &str) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if val.is_object() {
                print_table(val, &key);
            } else {
                println!("  {key:<32} {val}");
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let hs = Arc::new(Hs::new(&cli.common)?);
    let idle = rss(cli.common.server_pid);
    let (name, mut result) = match cli.scenario {
        Scenario::Setup {
            users,
            rooms,
            state,
        } => ("setup", scenario_setup(&hs, users, rooms, &state).await?),
        Scenario::Send {
            clients,
            seconds,
            rooms,
            state,
        } => (
            "send",
            scenario_send(&hs, clients, seconds, rooms, state.as_deref()).await?,
        ),
        Scenario::Fanout {
            syncers,
            messages,
            rate,
            late_joiners,
        } => (
            "fanout",
            scenario_fanout(&hs, syncers, messages, rate, late_joiners).await?,
        ),
        Scenario::InitialSync {
            rooms,
            messages,
            repeats,
        } => (
            "initial-sync",
            scenario_initial_sync(&hs, rooms, messages, repeats).await?,
        ),
        Scenario::JoinStorm { users } => ("join-storm", scenario_join_storm(&hs, users).await?),
        Scenario::Meetings {
            rooms,
            call_every,
            schedule_every,
            requests,
        } => (
            "meetings",
            scenario_meetings(&hs, rooms, call_every, schedule_every, requests).await?,
        ),
    };
    eprintln!();
    result["scenario"] = json!(name);
    result["server"] = json!(hs.base);
    result["rate_limit_retries"] = json!(hs.retries.load(Ordering::Relaxed));
    if cli.common.server_pid.is_some() {
        result["server_memory"] = json!({ "before": idle, "after": rss(cli.common.server_pid) });
    }
    println!("{}", serde_json::to_string(&result)?);
    if cli.common.pretty {
        println!("{name}:");
        print_table(&result, "");
    }
    Ok(())
}
