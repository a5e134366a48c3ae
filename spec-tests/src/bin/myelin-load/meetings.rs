//! `meetings` (Myelin only): the meetings list for a user in many rooms.

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
    hs::{enc, register_many, Hs},
    report::{histogram, latency_json, progress},
};

pub(crate) async fn scenario_meetings(
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
