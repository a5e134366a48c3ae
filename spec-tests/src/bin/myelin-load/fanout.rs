//! `fanout`: syncers long-polling one room, delivery latency, lost and duplicated.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    hs::{enc, join_all, register_many, Hs},
    poll::Poller,
    report::{histogram, latency_json, progress},
};

/// The parts of a `/sync` response the syncers read; the rest is skipped unparsed.
#[derive(Deserialize)]
struct SyncResponse {
    next_batch: String,
    #[serde(default)]
    rooms: SyncRooms,
}

#[derive(Default, Deserialize)]
struct SyncRooms {
    #[serde(default)]
    join: HashMap<String, JoinedRoom>,
}

#[derive(Deserialize)]
struct JoinedRoom {
    #[serde(default)]
    timeline: Timeline,
}

#[derive(Default, Deserialize)]
struct Timeline {
    #[serde(default)]
    events: Vec<TimelineEvent>,
}

#[derive(Deserialize)]
struct TimelineEvent {
    #[serde(default)]
    content: SeqContent,
}

/// The `seq` the sender puts in each message's content.
#[derive(Default, Deserialize)]
struct SeqContent {
    seq: Option<u64>,
}

pub(crate) async fn scenario_fanout(
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
    // Each syncer stores its filter and names it by id, as Element does.
    let filter = json!({"room": {"rooms": [room], "timeline": {"limit": 100}, "state": {"lazy_load_members": true}},
                        "presence": {"types": []}, "account_data": {"types": []}});
    // Initial syncs, so every syncer starts from "now".
    let mut starts = Vec::new();
    for u in &users {
        let filter_id = enc(&hs.upload_filter(u, &filter).await?);
        // Each syncer's connection is opened here, one at a time: thousands of connects at
        // the start of the measured phase overflowed the server's accept queue, and the
        // refused ones retried a second later (late first deliveries).
        let mut poller = Poller::new(hs, &u.token)?;
        let v: SyncResponse = poller
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=0&filter={filter_id}"
            ))
            .await?;
        starts.push((v.next_batch, filter_id, poller));
    }
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let hist = Arc::new(Mutex::new(histogram()));
    let mut send_hist = histogram();
    let duplicates = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (since, filter, mut poller) in starts {
        let (sent_at, hist, duplicates, finished) = (
            sent_at.clone(),
            hist.clone(),
            duplicates.clone(),
            finished.clone(),
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
                let v: SyncResponse = match poller.get(&path).await {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let now = Instant::now();
                since = v.next_batch;
                let events = v.rooms.join.into_iter().filter(|(r, _)| *r == room);
                for e in events.flat_map(|(_, r)| r.timeline.events) {
                    let Some(seq) = e.content.seq else {
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
            Ok::<_, anyhow::Error>(seen.len() as u64)
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
        received += t.await??;
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
