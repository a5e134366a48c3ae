//! The load tool runs every scenario against a real server at tiny sizes and reports sane
//! figures (no timing assertions: those belong to the benchmark).

use serde_json::Value;
use spec_tests::{enc, TestServer};

/// Runs `myelin-load` against `base` and parses its JSON line.
fn run(base: &str, args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_myelin-load"))
        .args(["--url", base, "--shared-secret", "load-secret"])
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "myelin-load {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(stdout.lines().next().unwrap_or(""))?)
}

#[tokio::test]
async fn every_scenario_runs() -> anyhow::Result<()> {
    // Registration closed: the tool registers through the shared-secret API.
    let server =
        TestServer::start_with(&[("MYELIN_REGISTRATION_SHARED_SECRET", "load-secret")]).await?;
    let dir = tempfile::tempdir()?;
    let state_path = dir.path().join("state.json");
    let state = state_path.to_str().unwrap().to_owned();
    let base = server.base.clone();
    let [setup, send, fanout, initial, join, meetings]: [Value; 6] =
        tokio::task::spawn_blocking(move || -> anyhow::Result<[Value; 6]> {
            Ok([
                run(
                    &base,
                    &["setup", "--users", "3", "--rooms", "2", "--state", &state],
                )?,
                run(
                    &base,
                    &[
                        "send",
                        "--clients",
                        "3",
                        "--seconds",
                        "1",
                        "--state",
                        &state,
                    ],
                )?,
                run(
                    &base,
                    &[
                        "--prefix",
                        "f",
                        "fanout",
                        "--syncers",
                        "3",
                        "--messages",
                        "10",
                        "--rate",
                        "50",
                    ],
                )?,
                run(
                    &base,
                    &[
                        "--prefix",
                        "i",
                        "initial-sync",
                        "--rooms",
                        "2",
                        "--messages",
                        "3",
                        "--repeats",
                        "2",
                    ],
                )?,
                run(&base, &["--prefix", "j", "join-storm", "--users", "4"])?,
                run(
                    &base,
                    &[
                        "--prefix",
                        "m",
                        "meetings",
                        "--rooms",
                        "6",
                        "--call-every",
                        "3",
                        "--schedule-every",
                        "2",
                        "--requests",
                        "3",
                    ],
                )?,
            ])
        })
        .await??;
    // What setup saved is what the server has: three users, each in both rooms.
    let saved: Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
    let rooms: Vec<&str> = saved["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(rooms.len(), 2, "{setup} {saved}");
    let users = saved["users"].as_array().expect("users");
    assert_eq!(users.len(), 3, "{saved}");
    let mut first = None;
    for user in users {
        let mut client = server.client();
        client.token = Some(user["token"].as_str().expect("token").to_owned());
        let who = client.get("/account/whoami").await?.ok()?;
        assert_eq!(who["user_id"], user["user_id"], "{who}");
        let mut joined: Vec<String> = client.get("/joined_rooms").await?.ok()?["joined_rooms"]
            .as_array()
            .expect("joined_rooms")
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        joined.retain(|r| rooms.contains(&r.as_str()));
        assert_eq!(joined.len(), 2, "{} is not in both rooms", user["user_id"]);
        first.get_or_insert(client);
    }
    // Every message the tool counted as sent is in the rooms, and no other.
    let counted = send["messages"].as_u64().expect("messages");
    assert!(counted > 0, "{send}");
    assert_eq!(send["errors"], 0, "{send}");
    let reader = first.expect("a user");
    let mut stored = 0;
    for room in &rooms {
        let mut from = String::new();
        loop {
            let page = reader
                .get(&format!(
                    "/rooms/{}/messages?dir=b&limit=100{from}",
                    enc(room)
                ))
                .await?
                .ok()?;
            let chunk = page["chunk"].as_array().expect("chunk");
            stored += chunk
                .iter()
                .filter(|e| {
                    e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.starts_with("load "))
                })
                .count() as u64;
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = format!("&from={}", enc(end)),
                _ => break,
            }
        }
    }
    assert_eq!(
        stored, counted,
        "the tool's count differs from the rooms: {send}"
    );
    assert!(send["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(fanout["deliveries"], 30, "{fanout}");
    assert_eq!(fanout["lost"], 0);
    assert_eq!(fanout["duplicated"], 0);
    // two timed initial syncs, each of which took some time
    assert_eq!(initial["initial_sync"]["count"], 2, "{initial}");
    assert!(
        initial["initial_sync"]["p50_ms"].as_f64().unwrap_or(0.0) > 0.0,
        "{initial}"
    );
    // the room's member list, read back from the server: its creator and the four joiners
    assert_eq!(join["members"], 5, "{join}");
    assert_eq!(join["errors"], 0);
    // six rooms: calls in rooms 0 and 3, schedules in 0, 2 and 4; three timed lists
    assert_eq!(meetings["ongoing"], 2, "{meetings}");
    assert_eq!(meetings["scheduled"], 3, "{meetings}");
    assert_eq!(meetings["meetings_list"]["count"], 3, "{meetings}");
    Ok(())
}
