//! `join-storm`: users joining one room at once, joins/s and /members time.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{
    hs::{enc, register_many, Hs},
    report::{histogram, latency_json},
};

pub(crate) async fn scenario_join_storm(hs: &Arc<Hs>, users: usize) -> Result<Value> {
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
