//! Typing notifications that time out or are stopped, threaded receipts through `/sync`,
//! and presence over HTTP: `set_presence` on `/sync`, and idle users shown offline.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spec_tests::{enc, Client, TestServer};

/// Alice and bob joined to a public room.
async fn pair(server: &TestServer) -> anyhow::Result<(Client, Client, String)> {
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    Ok((alice, bob, room))
}

/// The `m.typing` user ids of a room in a sync response, if the response has one.
fn typing(sync: &Value, room: &str) -> Option<Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.typing")
        .map(|e| e["content"]["user_ids"].clone())
}

/// Long-polls incremental syncs from `since` until one carries an `m.typing` for `room`
/// equal to `want`, failing after `within`; returns the next token.
async fn sync_until_typing(
    c: &Client,
    since: &str,
    room: &str,
    want: Value,
    within: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    let mut since = since.to_owned();
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let s = c.sync(&format!("since={since}&timeout=2000")).await?;
        since = s["next_batch"].as_str().unwrap().to_owned();
        if let Some(t) = typing(&s, room) {
            if t == want {
                return Ok(since);
            }
            seen.push(t);
        }
    }
    anyhow::bail!("no m.typing {want} within {within:?}; saw {seen:?}")
}

fn typing_path(room: &str, user: &Client) -> String {
    format!("/rooms/{}/typing/{}", enc(room), enc(&user.user_id))
}

/// Waits until `user` has a long-poll parked on the server.
async fn wait_parked(server: &TestServer, user: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server
            .client()
            .request(
                reqwest::Method::GET,
                &format!("/_myelin/test/parked/{}", enc(&user.user_id)),
                None,
            )
            .await?
            .ok()?;
        if r["parked"].as_u64().unwrap_or(0) > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no long-poll parked for {}",
            user.user_id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn typing_times_out_without_a_stop() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, room) = pair(&server).await?;
    let since = alice.sync("timeout=0").await?["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.put(
        &typing_path(&room, &bob),
        json!({"typing": true, "timeout": 1000}),
    )
    .await?
    .ok()?;
    let started = Instant::now();
    let since = sync_until_typing(
        &alice,
        &since,
        &room,
        json!([bob.user_id]),
        Duration::from_secs(10),
    )
    .await?;
    // no `typing: false` is sent: the server drops bob when his timeout passes
    sync_until_typing(&alice, &since, &room, json!([]), Duration::from_secs(10)).await?;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "typing ended before its timeout: {:?}",
        started.elapsed()
    );
    // a fresh sync does not show bob typing either
    assert_eq!(typing(&alice.sync("timeout=0").await?, &room), None);
    Ok(())
}

#[tokio::test]
async fn typing_false_stops_at_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, room) = pair(&server).await?;
    let since = alice.sync("timeout=0").await?["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.put(
        &typing_path(&room, &bob),
        json!({"typing": true, "timeout": 30000}),
    )
    .await?
    .ok()?;
    let since = sync_until_typing(
        &alice,
        &since,
        &room,
        json!([bob.user_id]),
        Duration::from_secs(10),
    )
    .await?;
    // alice waits in a long-poll; bob stopping wakes it with an empty list
    let waiter = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.sync(&format!("since={since}&timeout=20000")).await })
    };
    wait_parked(&server, &alice).await?;
    let stopped = Instant::now();
    bob.put(&typing_path(&room, &bob), json!({"typing": false}))
        .await?
        .ok()?;
    let s = waiter.await??;
    assert_eq!(typing(&s, &room), Some(json!([])), "{s}");
    assert!(stopped.elapsed() < Duration::from_secs(10));

    // someone else's typing state cannot be set
    bob.put(
        &typing_path(&room, &alice),
        json!({"typing": true, "timeout": 1000}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn threaded_receipts_reach_other_members() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, room) = pair(&server).await?;
    let root = alice.say(&room, "thread root").await?;
    let reply = bob
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "in the thread",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await?;
    let main = alice.say(&room, "main timeline").await?;
    let since = bob.sync("timeout=0").await?["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let receipt = |event: &str, body: Value| {
        let path = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(event));
        let alice = alice.clone();
        async move { alice.post(&path, body).await?.ok() }
    };
    receipt(&reply, json!({"thread_id": root})).await?;
    receipt(&main, json!({"thread_id": "main"})).await?;

    let mut got = serde_json::Map::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut since = since;
    while got.len() < 2 && Instant::now() < deadline {
        let s = bob.sync(&format!("since={since}&timeout=2000")).await?;
        since = s["next_batch"].as_str().unwrap().to_owned();
        for e in s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.receipt")
        {
            for (event, by_type) in e["content"].as_object().unwrap() {
                if let Some(r) = by_type["m.read"].get(&alice.user_id) {
                    got.insert(event.clone(), r.clone());
                }
            }
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[&reply]["thread_id"], root.as_str(), "{got:?}");
    assert!(got[&reply]["ts"].is_u64());
    assert_eq!(got[&main]["thread_id"], "main", "{got:?}");

    // an unthreaded receipt carries no thread id; the thread receipt is still there
    receipt(&main, json!({})).await?;
    let s = bob.sync("timeout=0").await?;
    let content = s["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .map(|e| e["content"].clone())
        .expect("m.receipt in the initial sync");
    let on_main = &content[&main]["m.read"][&alice.user_id];
    assert!(on_main.is_object(), "{content}");
    assert!(on_main.get("thread_id").is_none(), "{content}");
    assert_eq!(
        content[&reply]["m.read"][&alice.user_id]["thread_id"],
        root.as_str(),
        "{content}"
    );
    Ok(())
}

/// Bob's presence as alice sees it through `GET /presence/{userId}/status`.
async fn presence_of(alice: &Client, bob: &Client) -> anyhow::Result<Value> {
    alice
        .get(&format!("/presence/{}/status", enc(&bob.user_id)))
        .await?
        .ok()
}

/// Bob's `m.presence` content in a sync response, if there is one.
fn presence_in(sync: &Value, bob: &Client) -> Option<Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == bob.user_id.as_str())
        .map(|e| e["content"].clone())
}

#[tokio::test]
async fn set_presence_on_sync() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, _room) = pair(&server).await?;
    let mut since = alice.sync("timeout=0").await?["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // offline: syncing does not make bob online
    bob.sync("timeout=0&set_presence=offline").await?;
    assert_eq!(presence_of(&alice, &bob).await?["presence"], "offline");

    // unavailable, then online (the default), each reaching alice's sync
    for (query, want) in [
        ("timeout=0&set_presence=unavailable", "unavailable"),
        ("timeout=0&set_presence=online", "online"),
    ] {
        bob.sync(query).await?;
        assert_eq!(presence_of(&alice, &bob).await?["presence"], want);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = alice.sync(&format!("since={since}&timeout=2000")).await?;
            since = s["next_batch"].as_str().unwrap().to_owned();
            if let Some(p) = presence_in(&s, &bob) {
                assert_eq!(p["presence"], want, "{s}");
                assert_eq!(p["currently_active"], want == "online", "{s}");
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no presence {want} for alice");
        }
    }

    // bob goes offline explicitly; a sync that says offline leaves him offline
    bob.put(
        &format!("/presence/{}/status", enc(&bob.user_id)),
        json!({"presence": "offline"}),
    )
    .await?
    .ok()?;
    bob.sync("timeout=0&set_presence=offline").await?;
    assert_eq!(presence_of(&alice, &bob).await?["presence"], "offline");
    let s = alice.sync("timeout=0").await?;
    assert_eq!(
        presence_in(&s, &bob).expect("bob's presence")["presence"],
        "offline",
        "{s}"
    );
    // a plain sync brings him back online
    bob.sync("timeout=0").await?;
    assert_eq!(presence_of(&alice, &bob).await?["presence"], "online");
    Ok(())
}

#[tokio::test]
async fn idle_users_go_offline() -> anyhow::Result<()> {
    let config = tempfile::tempdir()?;
    let path = config.path().join("myelin.toml");
    std::fs::write(&path, "presence_idle_secs = 1\n")?;
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_CONFIG", path.to_str().unwrap()),
    ])
    .await?;
    let (alice, bob, _room) = pair(&server).await?;
    bob.sync("timeout=0").await?;
    let active = Instant::now();
    let p = presence_of(&alice, &bob).await?;
    if active.elapsed() < Duration::from_millis(900) {
        assert_eq!(p["presence"], "online", "{p}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = presence_of(&alice, &bob).await?;
        if p["presence"] == "offline" {
            assert!(
                active.elapsed() >= Duration::from_millis(900),
                "offline before the idle time: {p}"
            );
            assert_eq!(p["currently_active"], false);
            assert!(p["last_active_ago"].as_u64().unwrap() >= 1000, "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "bob never went offline: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a new sync by alice shows bob offline; bob syncing again makes him online
    let s = alice.sync("timeout=0").await?;
    assert_eq!(
        presence_in(&s, &bob).expect("bob's presence")["presence"],
        "offline"
    );
    bob.sync("timeout=0").await?;
    assert_eq!(presence_of(&alice, &bob).await?["presence"], "online");
    Ok(())
}
