//! Several processes serving one server from one PostgreSQL database
//! (`storage.postgres_shared`): two `myelin serve` processes on two loopback ports share
//! a database and a data dir (signing key); users on either chat in one room, a long poll
//! on one wakes for a send on the other, appends from both never fork a room, and after
//! a `kill -9` of one the other keeps serving every acknowledged event; delayed events
//! fire once, also after the process that led dies.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spec_tests::{enc, postgres_test_database, shared_secret_mac, Client, TestServer};

/// Two processes on one new database; the second uses the first's data dir.
async fn cluster() -> anyhow::Result<(TestServer, TestServer)> {
    cluster_with(&[]).await
}

/// [`cluster`] with more environment for both processes.
async fn cluster_with(extra: &[(&str, &str)]) -> anyhow::Result<(TestServer, TestServer)> {
    let url = postgres_test_database().await?;
    let mut shared = vec![
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_STORAGE_ENGINE", "postgres"),
        ("MYELIN_STORAGE_POSTGRES_URL", url.as_str()),
        ("MYELIN_STORAGE_POSTGRES_SHARED", "true"),
        ("MYELIN_REGISTRATION_SHARED_SECRET", "hunter2"),
    ];
    shared.extend_from_slice(extra);
    let a = TestServer::start_with(&shared).await?;
    let data = a.data_dir().join("data");
    let data = data.to_str().expect("a UTF-8 temp path");
    let mut env = shared.clone();
    env.push(("MYELIN_DATA_DIR", data));
    let b = TestServer::start_with(&env).await?;
    Ok((a, b))
}

/// The bodies of the room's `m.room.message` events in a sync response, in order.
fn bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Every message body of the room, oldest first, as `c` reads it on `/messages`.
async fn history(c: &Client, room: &str) -> anyhow::Result<Vec<String>> {
    let page = c
        .get(&format!("/rooms/{}/messages?dir=f&limit=1000", enc(room)))
        .await?
        .ok()?;
    Ok(page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect())
}

/// Runs `act` while `c` long-polls `/sync`, then syncs on until the room's ephemeral
/// events in one response satisfy `found` (within 15 s): other ephemeral changes (such as
/// delivered receipts) may end a long poll first.
async fn ephemeral_after(
    c: &Client,
    room: &str,
    act: impl std::future::Future<Output = anyhow::Result<()>>,
    found: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<()> {
    let now = c.sync("timeout=0").await?;
    let since = now["next_batch"].as_str().unwrap_or_default().to_owned();
    let poll = {
        let c = c.clone();
        tokio::spawn(async move { c.sync(&format!("since={since}&timeout=20000")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    act.await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sync = tokio::time::timeout(Duration::from_secs(15), poll).await???;
    loop {
        let events = sync["rooms"]["join"][room]["ephemeral"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if found(&events) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "never seen; last sync: {sync}");
        let since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
        sync = c.sync(&format!("since={since}&timeout=5000")).await?;
    }
}

/// Schedules `body` as a message `c` sends into `room` after `delay_ms` (MSC4140).
async fn schedule(c: &Client, room: &str, body: &str, delay_ms: u64) -> anyhow::Result<()> {
    let path = format!(
        "/rooms/{}/send/m.room.message/{}?org.matrix.msc4140.delay={delay_ms}",
        enc(room),
        enc(&body.replace(' ', "-"))
    );
    let sent = c
        .put(&path, json!({"msgtype": "m.text", "body": body}))
        .await?
        .ok()?;
    anyhow::ensure!(sent["delay_id"].is_string(), "not delayed: {sent}");
    Ok(())
}

#[tokio::test]
async fn two_processes_serve_one_server() -> anyhow::Result<()> {
    let (mut a, b) = cluster().await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    // An account made on one process logs in on the other.
    let mut bob_on_a = a.client();
    bob_on_a.login("bob", "bob-password").await?;
    assert_eq!(bob_on_a.user_id, bob.user_id);

    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await?;
    bob.join(&room).await?;

    // A long poll on B wakes for a send on A.
    let first = bob.sync("timeout=0").await?;
    let mut since = first["next_batch"].as_str().unwrap_or_default().to_owned();
    let mut woken = Vec::new();
    for i in 0..5 {
        let poll = {
            let bob = bob.clone();
            let since = since.clone();
            tokio::spawn(async move { bob.sync(&format!("since={since}&timeout=20000")).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice
            .send(
                &room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("hello {i}")}),
            )
            .await?;
        let sent = Instant::now();
        let sync = tokio::time::timeout(Duration::from_secs(15), poll)
            .await
            .map_err(|_| anyhow::anyhow!("B's long poll not woken; B's log:\n{}", b.log()))???;
        woken.push(sent.elapsed());
        assert_eq!(bodies(&sync, &room), vec![format!("hello {i}")], "{sync}");
        since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    }
    woken.sort();
    println!("long poll on B woken after a send on A: {woken:?}");
    assert!(woken[woken.len() / 2] < Duration::from_secs(2), "{woken:?}");

    // Both processes append to the room at once: one history, the same on both.
    let sends: Vec<_> = (0..20)
        .flat_map(|i| {
            let alice = alice.clone();
            let bob = bob.clone();
            let room = room.clone();
            let room2 = room.clone();
            [
                tokio::spawn(async move {
                    alice
                        .send(
                            &room,
                            "m.room.message",
                            json!({"msgtype": "m.text", "body": format!("a{i}")}),
                        )
                        .await
                }),
                tokio::spawn(async move {
                    bob.send(
                        &room2,
                        "m.room.message",
                        json!({"msgtype": "m.text", "body": format!("b{i}")}),
                    )
                    .await
                }),
            ]
        })
        .collect();
    for send in sends {
        send.await??;
    }
    let on_a = history(&alice, &room).await?;
    let on_b = history(&bob, &room).await?;
    assert_eq!(on_a.len(), 45, "{on_a:?}");
    assert_eq!(on_a, on_b);
    // No fork: every event but the first of the room has exactly one earlier event as
    // parent, the one before it.
    let page = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=5", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(page["chunk"].as_array().map(Vec::len), Some(5));

    // Bob's incremental sync on B caught every message, in the same order.
    let caught = bob.sync(&format!("since={since}&timeout=0")).await?;
    let mut seen = bodies(&caught, &room);
    if caught["rooms"]["join"][&room]["timeline"]["limited"] == true {
        seen = on_b[5..].to_vec();
    }
    assert_eq!(seen, on_b[5..].to_vec());

    // One device whose syncs alternate between the processes (no sticky routing): each
    // message arrives once, in order, and tokens never go back.
    let mut bob_via_a = bob.clone();
    bob_via_a.base = a.base.clone();
    let mut token = bob.sync("timeout=0").await?["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut received = Vec::new();
    let mut syncs = 0;
    for i in 0..6 {
        let sender = if i % 2 == 0 { &alice } else { &bob };
        sender
            .send(
                &room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("x{i}")}),
            )
            .await?;
        // A long poll may end for another change first (a delivered receipt): sync on,
        // switching process every time, until the message came.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !received.contains(&format!("x{i}")) {
            anyhow::ensure!(Instant::now() < deadline, "x{i} never came: {received:?}");
            let syncer = if syncs % 2 == 0 { &bob } else { &bob_via_a };
            syncs += 1;
            let sync = syncer.sync(&format!("since={token}&timeout=5000")).await?;
            received.extend(bodies(&sync, &room));
            token = sync["next_batch"].as_str().unwrap_or_default().to_owned();
        }
    }
    let expected: Vec<String> = (0..6).map(|i| format!("x{i}")).collect();
    assert_eq!(received, expected);

    // Typing on A and a read receipt on B reach the other process's long polls.
    let typing_path = format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    ephemeral_after(
        &bob,
        &room,
        async {
            alice
                .put(&typing_path, json!({"typing": true, "timeout": 30000}))
                .await?
                .ok()?;
            Ok(())
        },
        |events| {
            events.iter().any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .to_string()
                        .contains(&alice.user_id)
            })
        },
    )
    .await?;
    let latest = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)))
        .await?
        .ok()?;
    let latest = latest["chunk"][0]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let receipt_path = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&latest));
    ephemeral_after(
        &alice,
        &room,
        async {
            bob.post(&receipt_path, json!({})).await?.ok()?;
            Ok(())
        },
        |events| {
            events.iter().any(|e| {
                e["type"] == "m.receipt"
                    && e["content"][&latest]["m.read"][&bob.user_id].is_object()
            })
        },
    )
    .await?;

    // Delayed events (MSC4140) scheduled through either process fire once, on the leader.
    for (c, body) in [(&alice, "delayed via A"), (&bob, "delayed via B")] {
        schedule(c, &room, body, 500).await?;
    }
    let fired = |h: &[String], body: &str| h.iter().filter(|b| *b == body).count();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = history(&bob, &room).await?;
        if fired(&h, "delayed via A") > 0 && fired(&h, "delayed via B") > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "delayed events never fired: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = history(&alice, &room).await?;
    assert_eq!(fired(&h, "delayed via A"), 1, "{h:?}");
    assert_eq!(fired(&h, "delayed via B"), 1, "{h:?}");

    // kill -9 of A: B serves every acknowledged event and keeps serving, and a delayed
    // event scheduled through A fires once B has taken the lead.
    schedule(&alice, &room, "delayed past the kill", 2000).await?;
    let acknowledged = history(&alice, &room).await?;
    a.kill9()?;
    assert_eq!(history(&bob, &room).await?, acknowledged);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fired(&history(&bob, &room).await?, "delayed past the kill") == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the delayed event never fired on B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.send(
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "after"}),
    )
    .await?;
    let last = history(&bob, &room).await?;
    assert_eq!(last.last().map(String::as_str), Some("after"));
    Ok(())
}

/// Requests that belong together need not reach the same process: a shared-secret
/// registration's nonce fetched from A is accepted once by B, the operator token in the
/// shared data dir (written by B, which started last) works on A, and the status of a
/// room delete run through A is read on B.
#[tokio::test]
async fn related_requests_may_reach_either_process() -> anyhow::Result<()> {
    let (a, b) = cluster().await?;
    let path = "/_synapse/admin/v1/register";
    let nonce = a
        .client()
        .request(reqwest::Method::GET, path, None)
        .await?
        .ok()?["nonce"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = json!({"nonce": nonce, "username": "ops", "password": "ops-password",
        "admin": false, "mac": shared_secret_mac("hunter2", &nonce, "ops", "ops-password", false)});
    let registered = b
        .client()
        .request(reqwest::Method::POST, path, Some(&body))
        .await?
        .ok()?;
    assert_eq!(registered["user_id"], "@ops:localhost");
    for s in [&a, &b] {
        let again = s
            .client()
            .request(reqwest::Method::POST, path, Some(&body))
            .await?;
        assert_eq!(again.status, 400, "a used nonce is refused: {}", again.text);
    }

    let admin = a.admin("root").await?;
    let alice = b.register("alice").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    let started = admin
        .request(
            reqwest::Method::DELETE,
            &format!("/_synapse/admin/v2/rooms/{}", enc(&room)),
            Some(&json!({})),
        )
        .await?
        .ok()?;
    let id = started["delete_id"].as_str().unwrap_or_default();
    let mut admin_on_b = b.client();
    admin_on_b.token = admin.token.clone();
    let status = admin_on_b
        .request(
            reqwest::Method::GET,
            &format!("/_synapse/admin/v2/rooms/delete_status/{}", enc(id)),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(status["status"], "complete", "{status}");
    let by_room = admin_on_b
        .request(
            reqwest::Method::GET,
            &format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&room)),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(by_room["results"][0]["delete_id"], id, "{by_room}");
    Ok(())
}

/// Polls `path` (bounded) until `found` finds something in what `c` reads there.
async fn wait_for(
    c: &Client,
    what: &str,
    path: &str,
    found: impl Fn(&Value) -> Option<Value>,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = c.get(path).await?;
        if got.status == 200 {
            if let Some(v) = found(&got.body) {
                return Ok(v);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: never; last {}",
            got.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A recording runs on the process that started it; a start through the other process
/// finds it running, a stop through the other process ends it (the file is posted), and
/// when the recording's process is killed the leader closes its state.
#[tokio::test]
async fn a_recording_is_controlled_through_either_process() -> anyhow::Result<()> {
    let notes = tempfile::tempdir()?;
    std::fs::write(notes.path().join("mode"), "normal")?;
    let recorder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-recorder");
    let notes_path = notes.path().to_str().unwrap_or_default();
    let (a, mut b) = cluster_with(&[
        ("MYELIN_RTC_RECORDER", recorder.to_str().unwrap_or_default()),
        ("FAKE_RECORDER_DIR", notes_path),
    ])
    .await?;
    let alice = a.register("alice").await?;
    let mut alice_on_b = b.client();
    alice_on_b.login("alice", "alice-password").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    let control = format!(
        "/_matrix/client/unstable/io.myelin/rooms/{}/recording",
        enc(&room)
    );
    let act = |c: &Client, action: &str| {
        let (c, control, body) = (c.clone(), control.clone(), json!({"action": action}));
        async move {
            c.request(reqwest::Method::POST, &control, Some(&body))
                .await?
                .ok()
        }
    };
    let starts = || {
        std::fs::read_to_string(notes.path().join("starts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let state_path = format!("/rooms/{}/state/io.myelin.recording/", enc(&room));
    let messages = format!("/rooms/{}/messages?dir=b&limit=20", enc(&room));

    let started = act(&alice, "start").await?;
    assert_eq!(started["active"], true, "{started}");
    let again = act(&alice_on_b, "start").await?;
    assert_eq!(again["active"], true, "{again}");
    assert_eq!(again["started_ts"], started["started_ts"], "one recording");
    let stopped = act(&alice_on_b, "stop").await?;
    assert_eq!(stopped["active"], false, "{stopped}");
    let video = wait_for(&alice, "the recording posted", &messages, |page| {
        page["chunk"]
            .as_array()?
            .iter()
            .find(|e| e["content"]["msgtype"] == "m.video")
            .cloned()
    })
    .await?;
    assert_eq!(video["sender"], alice.user_id.as_str(), "{video}");
    assert_eq!(starts(), 1, "the recorder ran once");
    let state = alice.get(&state_path).await?.ok()?;
    assert_eq!(state["stopped_by"], alice.user_id.as_str(), "{state}");
    assert!(state.get("error").is_none(), "{state}");

    // A recording on B, then B dies: A (the leader) closes the lost recording's state.
    let on_b = act(&alice_on_b, "start").await?;
    assert_eq!(on_b["active"], true, "{on_b}");
    b.kill9()?;
    let closed = wait_for(&alice, "the lost recording closed", &state_path, |state| {
        (state["active"] == false).then(|| state.clone())
    })
    .await?;
    assert_eq!(closed["started_ts"], on_b["started_ts"], "{closed}");
    assert_eq!(
        closed["error"], "The server stopped during the recording",
        "{closed}"
    );
    Ok(())
}

/// A process whose port is taken stops with the bind error before it takes part in the
/// cluster: it leads nothing, and no lease task's exit hides the error (the test
/// harness retries on another port when it reads "Address already in use").
#[tokio::test]
async fn a_taken_port_fails_the_start_before_the_process_leads() -> anyhow::Result<()> {
    let url = postgres_test_database().await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let data = tempfile::tempdir()?;
    let output = tokio::process::Command::new(spec_tests::server_binary())
        .arg("serve")
        .env("MYELIN_LISTEN", taken.local_addr()?.to_string())
        .env("MYELIN_DATA_DIR", data.path().join("data"))
        .env("MYELIN_STORAGE_ENGINE", "postgres")
        .env("MYELIN_STORAGE_POSTGRES_URL", &url)
        .env("MYELIN_STORAGE_POSTGRES_SHARED", "true")
        .env("MYELIN_RTC_EMBEDDED_SFU", "false")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await??;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("Address already in use"), "{log}");
    assert!(!log.contains("this process leads"), "{log}");
    assert!(!log.contains("leader lease was lost"), "{log}");
    Ok(())
}
