//! The event pipeline, black box: no client sees an event a crash can lose, derived
//! records (unread counts, notifications) survive a crash between the event write and
//! their consumer, and a new room is published whole. Uses the server's test hooks
//! (`/_myelin/test/...`, built with the `test-hooks` feature) to hold the flush and the
//! consumers at failpoints.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{bodies, enc, timeline, Client, TestServer};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn hook(client: &Client, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let resp = client
        .request(method, &format!("/_myelin/test/{path}"), body.as_ref())
        .await?;
    if resp.status != 200 {
        bail!(
            "test hook {path}: {} {} (is the server built with --features test-hooks?)",
            resp.status,
            resp.text
        );
    }
    Ok(resp.body)
}

async fn set_failpoint(client: &Client, name: &str, actions: &str) -> Result<()> {
    hook(
        client,
        Method::PUT,
        &format!("failpoints/{name}"),
        Some(json!({ "actions": actions })),
    )
    .await
    .map(drop)
}

async fn remove_failpoint(client: &Client, name: &str) -> Result<()> {
    hook(client, Method::DELETE, &format!("failpoints/{name}"), None)
        .await
        .map(drop)
}

async fn positions(client: &Client) -> Result<Value> {
    hook(client, Method::GET, "positions", None).await
}

/// Polls the server's stream positions until `done` holds (bounded).
async fn wait_positions(
    client: &Client,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = positions(client).await?;
        if done(&p) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("positions never reached {what}: {p}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `user` has a long-poll parked on the server (bounded).
async fn wait_parked(client: &Client, user: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = hook(client, Method::GET, &format!("parked/{}", enc(user)), None).await?;
        if p["parked"].as_u64() >= Some(1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the long-poll of {user} never parked");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn next_batch(sync: &Value) -> Result<String> {
    match sync["next_batch"].as_str() {
        Some(s) => Ok(s.to_owned()),
        None => bail!("no next_batch: {sync}"),
    }
}

/// Alice and Bob in a private room, Bob's sync token after the setup.
async fn two_in_a_room(server: &TestServer) -> Result<(Client, Client, String, String)> {
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await?;
    bob.join(&room).await?;
    let since = next_batch(&bob.sync("timeout=0").await?)?;
    Ok((alice, bob, room, since))
}

#[tokio::test]
async fn a_waiting_sync_is_woken_only_once_the_event_is_durable() -> Result<()> {
    let server = TestServer::start().await?;
    let (alice, bob, room, since) = two_in_a_room(&server).await?;
    let hooks = server.client();

    let poll = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move { bob.sync(&format!("since={since}&timeout=30000")).await })
    };
    wait_parked(&hooks, &bob.user_id).await?;

    set_failpoint(&hooks, "storage.flush", "pause").await?;
    let send = {
        let alice = alice.clone();
        let room = room.clone();
        tokio::spawn(async move { alice.say(&room, "held").await })
    };
    // The event is written but no flush can complete.
    let held = wait_positions(&hooks, "an applied, undurable event", |p| {
        p["applied"].as_u64() > p["durable"].as_u64()
    })
    .await;
    let checks = async {
        let held = held?;
        // Readers do not see it: neither an immediate sync nor sliding sync...
        let now = bob.sync(&format!("since={since}&timeout=0")).await?;
        let shown = now["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| !events.is_empty());
        if shown {
            bail!("a sync returned an event that is not durable yet: {now} ({held})");
        }
        let sliding = bob
            .request(
                Method::POST,
                &format!("{SLIDING}?timeout=0"),
                Some(&json!({
                    "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5}}
                })),
            )
            .await?
            .ok()?;
        let shown = sliding["rooms"][&room]["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == "held");
        if shown {
            bail!("sliding sync returned an event that is not durable yet: {sliding}");
        }
        // ...and the parked long-poll was not woken for it.
        if poll.is_finished() {
            bail!("the long-poll returned while the flush was held");
        }
        hook(
            &hooks,
            Method::GET,
            &format!("parked/{}", enc(&bob.user_id)),
            None,
        )
        .await
        .and_then(|p| match p["parked"].as_u64() {
            Some(1) => Ok(()),
            _ => bail!("the long-poll is no longer parked: {p}"),
        })
    }
    .await;
    // Release in any case, so a failure does not leave the server stuck.
    remove_failpoint(&hooks, "storage.flush").await?;
    checks?;

    let woken = tokio::time::timeout(Duration::from_secs(20), poll).await???;
    assert_eq!(bodies(&timeline(&woken, &room)), ["held"], "{woken}");
    tokio::time::timeout(Duration::from_secs(20), send).await???;
    Ok(())
}

#[tokio::test]
async fn unread_counts_survive_a_crash_before_the_push_consumer() -> Result<()> {
    let mut server = TestServer::start().await?;
    let (alice, bob, room, _) = two_in_a_room(&server).await?;
    let hooks = server.client();
    alice.say(&room, "before").await?;
    let unread = |sync: &Value| {
        sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"].as_u64()
    };
    let before = bob.sync("timeout=0").await?;
    let Some(counted) = unread(&before) else {
        bail!("no unread count: {before}");
    };

    // The push consumer fails every batch from now on: the event below is durable, but
    // its notification record is not written (and the send is never acknowledged, as the
    // event never becomes visible).
    set_failpoint(&hooks, "pipeline.push", "return").await?;
    let send = {
        let alice = alice.clone();
        let room = room.clone();
        tokio::spawn(async move { alice.say(&room, "during").await })
    };
    let p = wait_positions(
        &hooks,
        "a durable event the push consumer has not handled",
        |p| {
            let durable = p["durable"].as_u64().unwrap_or(0);
            durable > 0
                && p["applied"].as_u64() == Some(durable)
                && p["consumers"]["push"].as_u64().is_some_and(|c| c < durable)
        },
    )
    .await?;
    assert!(
        p["visible"].as_u64() < p["durable"].as_u64(),
        "an event the push consumer has not handled is visible: {p}"
    );
    server.kill9()?;
    let _ = send.await;
    server.start_again().await?;

    // The consumer resumes from its durable position: the count and the notifications
    // include the event, once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sync = loop {
        let sync = bob.sync("timeout=0").await?;
        if bodies(&timeline(&sync, &room)).contains(&"during".to_owned())
            && unread(&sync) == Some(counted + 1)
        {
            break sync;
        }
        if Instant::now() > deadline {
            bail!(
                "after the restart bob's sync never counted {} unread: {sync}",
                counted + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let notifications = bob.get("/notifications").await?.ok()?;
    let listed: Vec<&str> = notifications["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["event"]["content"]["body"].as_str())
        .collect();
    assert_eq!(listed, ["during", "before"], "{notifications}\n{sync}");
    Ok(())
}

#[tokio::test]
async fn a_new_encrypted_room_is_never_seen_without_its_encryption() -> Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let encryption = json!({
        "type": "m.room.encryption", "state_key": "",
        "content": {"algorithm": "m.megolm.v1.aes-sha2"}
    });
    const ROOMS: usize = 8;

    // Alice's sliding sync long-polls while she creates encrypted DMs: every response
    // that shows one of them must carry its encryption state.
    let body = json!({
        "lists": {"all": {
            "ranges": [[0, 49]], "timeline_limit": 10,
            "required_state": [["m.room.encryption", ""], ["m.room.create", ""]]
        }}
    });
    let first = alice
        .request(Method::POST, &format!("{SLIDING}?timeout=0"), Some(&body))
        .await?
        .ok()?;
    let watcher = {
        let alice = alice.clone();
        let mut pos = first["pos"].as_str().unwrap_or_default().to_owned();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < ROOMS && Instant::now() < deadline {
                let resp = alice
                    .request(
                        Method::POST,
                        &format!("{SLIDING}?timeout=10000&pos={pos}"),
                        Some(&body),
                    )
                    .await?
                    .ok()?;
                pos = resp["pos"].as_str().unwrap_or_default().to_owned();
                for (room, entry) in resp["rooms"].as_object().into_iter().flatten() {
                    if seen.contains(room) {
                        continue;
                    }
                    let state = entry["required_state"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let has = |kind: &str| state.iter().any(|e| e["type"] == kind);
                    if !has("m.room.create") {
                        // An update of a room announced before is fine.
                        continue;
                    }
                    if !has("m.room.encryption") {
                        bail!("room {room} shown without its encryption state: {entry}");
                    }
                    seen.insert(room.clone());
                }
            }
            Ok::<_, anyhow::Error>(seen.len())
        })
    };
    // The server pauses after each creator's join: long enough for a flush and a wake-up
    // in between, were the room published event by event.
    set_failpoint(
        &server.client(),
        "rooms.create_room.after_join",
        "return(150)",
    )
    .await?;
    for _ in 0..ROOMS {
        alice
            .create_room(json!({
                "preset": "trusted_private_chat", "is_direct": true,
                "invite": [bob.user_id], "initial_state": [encryption]
            }))
            .await?;
    }
    let seen = tokio::time::timeout(Duration::from_secs(90), watcher).await???;
    assert_eq!(seen, ROOMS, "every new room was shown");

    // Bob, invited to each, sees the encryption in every invite's stripped state.
    let sync = bob.sync("timeout=0").await?;
    let invites = sync["rooms"]["invite"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(invites.len(), ROOMS, "{sync}");
    for (room, invite) in &invites {
        let encrypted = invite["invite_state"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.room.encryption");
        assert!(encrypted, "invite to {room} without encryption: {invite}");
    }
    Ok(())
}
