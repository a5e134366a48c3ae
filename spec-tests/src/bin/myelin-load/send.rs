//! `setup` and `send`: users sending into rooms, messages/s and latency.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::{
    hs::{register_many, Hs, State},
    report::{histogram, latency_json, progress},
};

pub(crate) async fn scenario_setup(
    hs: &Arc<Hs>,
    users: usize,
    rooms: usize,
    state: &str,
) -> Result<Value> {
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
        url: hs.bases.join(","),
        users: all,
        rooms: room_ids,
    };
    std::fs::write(state, serde_json::to_vec_pretty(&saved)?)?;
    Ok(
        json!({"users": users, "rooms": rooms, "seconds": start.elapsed().as_secs_f64(), "state": state}),
    )
}

pub(crate) async fn scenario_send(
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
