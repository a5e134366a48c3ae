//! Message ticks: a sync that delivers a message records an `io.myelin.delivered` receipt
//! that the other members see in `m.receipt`; the sender reads sent / delivered / read from
//! `GET .../io.myelin/rooms/{roomId}/event/{eventId}/ticks`; users in privacy mode never
//! appear.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, ephemeral, Client, TestServer};

fn ticks_path(room: &str, event: &str) -> String {
    format!(
        "/_matrix/client/unstable/io.myelin/rooms/{}/event/{}/ticks",
        enc(room),
        enc(event)
    )
}

async fn ticks(client: &Client, room: &str, event: &str) -> anyhow::Result<Value> {
    client
        .request(Method::GET, &ticks_path(room, event), None)
        .await?
        .ok()
}

/// Polls the ticks (delivered receipts are written a moment after the sync) until `done`
/// holds, for at most 10 s.
async fn ticks_until(
    client: &Client,
    room: &str,
    event: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    for _ in 0..200 {
        let t = ticks(client, room, event).await?;
        if done(&t) {
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "ticks never got there: {}",
        ticks(client, room, event).await?
    )
}

fn lists(t: &Value, key: &str, user: &str) -> bool {
    t[key].as_array().unwrap().iter().any(|u| u == user)
}

#[tokio::test]
async fn delivered_then_read_and_never_for_private_users() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    carol
        .put(
            &format!(
                "/user/{}/account_data/io.myelin.privacy",
                enc(&carol.user_id)
            ),
            json!({"receipts": false}),
        )
        .await?
        .ok()?;
    // Both sync before the message, so the message is new to them later.
    bob.sync("timeout=0").await?;
    carol.sync("timeout=0").await?;

    let msg = alice.say(&room, "hello").await?;
    let t = ticks(&alice, &room, &msg).await?;
    assert_eq!(t, json!({"sent": true, "delivered": [], "read": []}));
    // Only the sender sees the ticks; unknown events are 404.
    bob.request(Method::GET, &ticks_path(&room, &msg), None)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    alice
        .request(Method::GET, &ticks_path(&room, "$nope:localhost"), None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // Alice long-polls: the delivered receipt wakes her, the sender.
    let alice_since = spec_tests::next_batch(&alice.sync("timeout=0").await?);
    let alice_poll = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .sync(&format!("since={alice_since}&timeout=20000"))
                .await
        })
    };
    server.wait_parked(&alice.user_id, 1).await?;

    // Carol (privacy) then Bob receive it through /sync.
    let s = carol.sync("timeout=0").await?;
    assert!(s["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_id"] == msg.as_str()));
    bob.sync("timeout=0").await?;
    let t = ticks_until(&alice, &room, &msg, |t| lists(t, "delivered", &bob.user_id)).await?;
    assert!(!lists(&t, "delivered", &carol.user_id), "{t}");
    assert!(!lists(&t, "read", &bob.user_id), "{t}");

    // Alice's long-poll returns (woken by it, or by anything earlier; then she polls on)
    // with Bob's delivered receipt in m.receipt, in the shape of m.read.
    let mut s = alice_poll.await??;
    for _ in 0..10 {
        if ephemeral(&s, &room, "m.receipt").is_some() {
            break;
        }
        let since = spec_tests::next_batch(&s);
        s = alice.sync(&format!("since={since}&timeout=20000")).await?;
    }
    let receipt = ephemeral(&s, &room, "m.receipt").unwrap_or_else(|| panic!("{s}"));
    assert!(
        receipt["content"][&msg]["io.myelin.delivered"][&bob.user_id]["ts"].is_u64(),
        "{receipt}"
    );
    assert!(
        receipt["content"][&msg]["io.myelin.delivered"]
            .get(&carol.user_id)
            .is_none(),
        "{receipt}"
    );

    // Reading: Bob is read (and still delivered); Carol's read stays private.
    for reader in [&bob, &carol] {
        reader
            .post(
                &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&msg)),
                json!({}),
            )
            .await?
            .ok()?;
    }
    let t = ticks(&alice, &room, &msg).await?;
    assert_eq!(
        t,
        json!({"sent": true, "delivered": [bob.user_id], "read": [bob.user_id]})
    );

    // A later message is delivered to Bob by a long-poll woken by it, too.
    let since = spec_tests::next_batch(&bob.sync("timeout=0").await?);
    let bob_poll = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.sync(&format!("since={since}&timeout=10000")).await })
    };
    server.wait_parked(&bob.user_id, 1).await?;
    let second = alice.say(&room, "again").await?;
    bob_poll.await??;
    ticks_until(&alice, &room, &second, |t| {
        lists(t, "delivered", &bob.user_id)
    })
    .await?;
    Ok(())
}
