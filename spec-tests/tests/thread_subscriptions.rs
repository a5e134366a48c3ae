//! Thread subscriptions (MSC4306, `io.element.msc4306`) and their feed (MSC4308): manual
//! and automatic subscriptions, unsubscribing, the conflict rule, who may subscribe, the
//! sliding-sync extension (`io.element.msc4308.thread_subscriptions`, with `prev_batch`
//! when the limit cuts it) and the companion endpoint, and a long-polling sliding sync
//! woken by a change.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response, TestServer};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const EXT: &str = "io.element.msc4308.thread_subscriptions";
const FEED: &str = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions";

fn path(room: &str, root: &str) -> String {
    format!(
        "/_matrix/client/unstable/io.element.msc4306/rooms/{}/thread/{}/subscription",
        enc(room),
        enc(root)
    )
}

async fn put(c: &Client, room: &str, root: &str, body: Value) -> anyhow::Result<Response> {
    c.request(Method::PUT, &path(room, root), Some(&body)).await
}

async fn get(c: &Client, room: &str, root: &str) -> anyhow::Result<Response> {
    c.request(Method::GET, &path(room, root), None).await
}

async fn delete(c: &Client, room: &str, root: &str) -> anyhow::Result<Response> {
    c.request(Method::DELETE, &path(room, root), None).await
}

async fn reply(c: &Client, room: &str, root: &str, body: &str) -> anyhow::Result<String> {
    c.send(
        room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await
}

async fn sliding(c: &Client, pos: Option<&str>, timeout: u64, limit: u64) -> anyhow::Result<Value> {
    let mut url = format!("{SS}?timeout={timeout}");
    if let Some(p) = pos {
        url.push_str(&format!("&pos={}", enc(p)));
    }
    let mut extensions = serde_json::Map::new();
    extensions.insert(EXT.into(), json!({"enabled": true, "limit": limit}));
    let body = json!({ "extensions": extensions });
    c.request(Method::POST, &url, Some(&body)).await?.ok()
}

#[tokio::test]
async fn subscriptions_follow_msc4306() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let eve = server.register("eve").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await?;
    bob.join(&room).await?;

    let versions = server
        .client()
        .request(Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4306"], true);
    assert_eq!(versions["unstable_features"]["org.matrix.msc4308"], true);

    let root = alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "Plan?"}),
        )
        .await?;
    let first = reply(&bob, &room, &root, "Tuesday").await?;
    let elsewhere = bob
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "off-thread"}),
        )
        .await?;

    // Not subscribed by default.
    let none = get(&alice, &room, &root).await?;
    assert_eq!(none.status, 404, "{}", none.text);
    assert_eq!(none.body["errcode"], "M_NOT_FOUND");

    // Manual; an automatic one afterwards leaves it manual.
    put(&alice, &room, &root, json!({})).await?.ok()?;
    assert_eq!(
        get(&alice, &room, &root).await?.ok()?,
        json!({"automatic": false})
    );
    put(&alice, &room, &root, json!({"automatic": first}))
        .await?
        .ok()?;
    assert_eq!(
        get(&alice, &room, &root).await?.ok()?,
        json!({"automatic": false})
    );

    // Unsubscribe (twice: idempotent); an automatic subscription caused by an event the
    // user had seen is refused, one caused by a newer reply goes through.
    delete(&alice, &room, &root).await?.ok()?;
    delete(&alice, &room, &root).await?.ok()?;
    assert_eq!(get(&alice, &room, &root).await?.status, 404);
    let late = put(&alice, &room, &root, json!({"automatic": first})).await?;
    assert_eq!(late.status, 409, "{}", late.text);
    assert_eq!(
        late.body["errcode"],
        "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION"
    );
    assert_eq!(get(&alice, &room, &root).await?.status, 404);
    let newer = reply(&bob, &room, &root, "Wednesday then").await?;
    put(&alice, &room, &root, json!({"automatic": newer}))
        .await?
        .ok()?;
    assert_eq!(
        get(&alice, &room, &root).await?.ok()?,
        json!({"automatic": true})
    );
    // The root itself counts as in the thread.
    put(&bob, &room, &root, json!({"automatic": root}))
        .await?
        .ok()?;
    assert_eq!(
        get(&bob, &room, &root).await?.ok()?,
        json!({"automatic": true})
    );

    // A cause outside the thread, or not an event id: 400.
    let outside = put(&alice, &room, &root, json!({"automatic": elsewhere})).await?;
    assert_eq!(outside.status, 400, "{}", outside.text);
    assert_eq!(
        outside.body["errcode"],
        "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD"
    );
    let bad = put(&alice, &room, &root, json!({"automatic": 5})).await?;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["errcode"], "M_BAD_JSON");

    // Someone outside the room, an unknown event, a bad room id.
    for response in [
        put(&eve, &room, &root, json!({})).await?,
        get(&eve, &room, &root).await?,
        delete(&eve, &room, &root).await?,
        put(&alice, &room, "$nothing:localhost", json!({})).await?,
    ] {
        assert_eq!(response.status, 404, "{}", response.text);
        assert_eq!(response.body["errcode"], "M_NOT_FOUND");
    }
    let bad_room = put(&alice, "not-a-room", &root, json!({})).await?;
    assert_eq!(bad_room.status, 400, "{}", bad_room.text);
    // Nothing changed for eve, and bob's subscription is his own.
    assert_eq!(
        get(&bob, &room, &root).await?.ok()?,
        json!({"automatic": true})
    );
    Ok(())
}

#[tokio::test]
async fn the_sliding_sync_extension_and_the_feed_carry_the_changes() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let mut roots = Vec::new();
    for body in ["one", "two", "three"] {
        roots.push(
            alice
                .send(
                    &room,
                    "m.room.message",
                    json!({"msgtype": "m.text", "body": body}),
                )
                .await?,
        );
    }
    for root in &roots {
        put(&alice, &room, root, json!({})).await?.ok()?;
    }
    delete(&alice, &room, &roots[0]).await?.ok()?;

    // Initial sync with a limit of 2: the two newest changes, and `prev_batch`.
    let first = sliding(&alice, None, 0, 2).await?;
    let ext = &first["extensions"][EXT];
    assert!(
        ext["unsubscribed"][&room][&roots[0]]["bump_stamp"].is_u64(),
        "{ext}"
    );
    assert_eq!(
        ext["subscribed"][&room][&roots[2]]["automatic"], false,
        "{ext}"
    );
    assert!(ext["subscribed"][&room].get(&roots[1]).is_none(), "{ext}");
    let prev = ext["prev_batch"].as_str().expect("prev_batch").to_owned();
    let newest = ext["unsubscribed"][&room][&roots[0]]["bump_stamp"]
        .as_u64()
        .unwrap();
    let older = ext["subscribed"][&room][&roots[2]]["bump_stamp"]
        .as_u64()
        .unwrap();
    assert!(newest > older);

    // The companion endpoint from there: the rest, and no `end`.
    let feed = alice
        .request(
            Method::GET,
            &format!("{FEED}?dir=b&from={}", enc(&prev)),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(
        feed["subscribed"][&room][&roots[1]]["automatic"], false,
        "{feed}"
    );
    assert!(feed.get("end").is_none(), "{feed}");
    assert!(feed.get("unsubscribed").is_none(), "{feed}");
    // Page by page with limit=1: three pages, newest first.
    let mut from: Option<String> = None;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let url = match &from {
            Some(f) => format!("{FEED}?dir=b&limit=1&from={}", enc(f)),
            None => format!("{FEED}?dir=b&limit=1"),
        };
        let page = alice.request(Method::GET, &url, None).await?.ok()?;
        for kind in ["subscribed", "unsubscribed"] {
            if let Some(map) = page[kind][&room].as_object() {
                seen.extend(map.keys().cloned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [roots[0].clone(), roots[2].clone(), roots[1].clone()]);
    // `to` bounds it: nothing at or below the initial sync's position.
    let pos = first["pos"].as_str().expect("pos").to_owned();
    let bounded = alice
        .request(Method::GET, &format!("{FEED}?dir=b&to={}", enc(&pos)), None)
        .await?
        .ok()?;
    assert_eq!(bounded, json!({}));
    let forward = alice
        .request(Method::GET, &format!("{FEED}?dir=f"), None)
        .await?;
    assert_eq!(forward.status, 400);

    // Nothing new: the extension is left out.
    let quiet = sliding(&alice, Some(&pos), 0, 10).await?;
    assert!(quiet["extensions"].get(EXT).is_none(), "{quiet}");

    // A long poll is woken by a change on another device and carries it.
    let waiting = {
        let alice = alice.clone();
        let pos = pos.clone();
        tokio::spawn(async move { sliding(&alice, Some(&pos), 20_000, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    delete(&alice, &room, &roots[1]).await?.ok()?;
    let woken = waiting.await??;
    assert!(started.elapsed() < Duration::from_secs(10), "not woken");
    let ext = &woken["extensions"][EXT];
    assert!(
        ext["unsubscribed"][&room][&roots[1]]["bump_stamp"]
            .as_u64()
            .unwrap()
            > newest
    );
    assert!(ext.get("prev_batch").is_none(), "{ext}");

    // The feed walked down to that `pos` finds just the change made after it.
    let bounded = alice
        .request(Method::GET, &format!("{FEED}?dir=b&to={}", enc(&pos)), None)
        .await?
        .ok()?;
    assert!(bounded.get("subscribed").is_none(), "{bounded}");
    let rooms = bounded["unsubscribed"].as_object().expect("unsubscribed");
    assert_eq!(rooms.len(), 1, "{bounded}");
    assert_eq!(
        rooms[&room]
            .as_object()
            .map(|m| m.keys().collect::<Vec<_>>()),
        Some(vec![&roots[1]]),
        "{bounded}"
    );
    Ok(())
}
