//! `initial-sync`: a user in many rooms, initial /sync time.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::{
    hs::{register_many, Hs},
    report::{histogram, latency_json, progress},
};

pub(crate) async fn scenario_initial_sync(
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
