//! Threads: the `m.thread` summary (`unsigned.m.relations.m.thread`) on thread roots on
//! every read path, per reader; `/relations` pages read from the relation index; the
//! `/threads` list; redactions and restarts keep all of it right.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, invite_and_join, Client, TestServer};

fn reply(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
}

fn thread_of(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]["m.thread"]
}

/// Checks a served root's summary: count, newest reply and participation.
#[track_caller]
fn check_summary(event: &Value, count: u64, latest: &str, latest_body: &str, participated: bool) {
    let thread = thread_of(event);
    assert_eq!(thread["count"], count, "{event}");
    assert_eq!(thread["latest_event"]["event_id"], latest, "{event}");
    assert_eq!(
        thread["latest_event"]["content"]["body"], latest_body,
        "{event}"
    );
    assert_eq!(thread["latest_event"]["type"], "m.room.message", "{event}");
    assert_eq!(thread["current_user_participated"], participated, "{event}");
}

async fn v1(c: &Client, path: &str) -> anyhow::Result<Value> {
    c.request(Method::GET, &format!("/_matrix/client/v1{path}"), None)
        .await?
        .ok()
}

#[tokio::test]
async fn thread_roots_carry_their_summary_for_each_reader_on_every_read_path() -> anyhow::Result<()>
{
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Threads"}))
        .await?;
    invite_and_join(&alice, &bob, &room).await?;
    invite_and_join(&alice, &carol, &room).await?;
    let root = alice.say(&room, "root").await?;
    let plain = alice.say(&room, "plain").await?;
    bob.send(&room, "m.room.message", reply(&root, "b1"))
        .await?;
    let a1 = alice
        .send(&room, "m.room.message", reply(&root, "a1"))
        .await?;
    let b2 = bob
        .send(&room, "m.room.message", reply(&root, "b2"))
        .await?;

    for (reader, participated) in [(&alice, true), (&bob, true), (&carol, false)] {
        for copy in reader.event_everywhere(&room, &root).await? {
            check_summary(&copy, 3, &b2, "b2", participated);
            assert_eq!(
                thread_of(&copy)["latest_event"]["unsigned"]["membership"],
                "join"
            );
        }
        let plain_event = reader
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&plain)))
            .await?
            .ok()?;
        assert!(
            plain_event["unsigned"].get("m.relations").is_none(),
            "{plain_event}"
        );
    }

    // /relations pages read from the index, newest first, without gaps.
    let path = |from: Option<&str>| {
        let mut p = format!(
            "/rooms/{}/relations/{}/m.thread?limit=2",
            enc(&room),
            enc(&root)
        );
        if let Some(f) = from {
            p.push_str(&format!("&from={}", enc(f)));
        }
        p
    };
    let first = v1(&carol, &path(None)).await?;
    let bodies = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["content"]["body"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(bodies(&first), ["b2", "a1"], "{first}");
    let next = first["next_batch"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = v1(&carol, &path(Some(&next))).await?;
    assert_eq!(bodies(&second), ["b1"], "{second}");
    assert!(second.get("next_batch").is_none(), "{second}");

    // Bob's newest reply redacted: the one before is the newest; he still took part.
    bob.request(
        Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{}",
            enc(&room),
            enc(&b2),
            spec_tests::fresh_txn()
        ),
        Some(&json!({})),
    )
    .await?
    .ok()?;
    for (reader, participated) in [(&alice, true), (&bob, true), (&carol, false)] {
        let event = reader
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root)))
            .await?
            .ok()?;
        check_summary(&event, 2, &a1, "a1", participated);
    }

    // A restart keeps the index and the summaries.
    server.restart().await?;
    let event = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root)))
        .await?
        .ok()?;
    check_summary(&event, 2, &a1, "a1", true);
    let all = v1(
        &alice,
        &format!("/rooms/{}/relations/{}", enc(&room), enc(&root)),
    )
    .await?;
    assert_eq!(bodies(&all), ["a1", "b1"], "{all}");
    Ok(())
}

#[tokio::test]
async fn threads_list_newest_activity_first_with_pages_and_participation() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Threads"}))
        .await?;
    invite_and_join(&alice, &bob, &room).await?;
    let first = alice.say(&room, "first").await?;
    let second = bob.say(&room, "second").await?;
    alice.say(&room, "no replies").await?;
    bob.send(&room, "m.room.message", reply(&second, "s1"))
        .await?;
    bob.send(&room, "m.room.message", reply(&first, "f1"))
        .await?;
    let threads = |c: &Client, query: &str| {
        let c = c.clone();
        let path = format!("/rooms/{}/threads?{query}", enc(&room));
        async move { v1(&c, &path).await }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap_or_else(|| panic!("no chunk in {page}"))
            .iter()
            .map(|e| e["event_id"].as_str().unwrap_or("?").to_owned())
            .collect()
    };

    let all = threads(&alice, "").await?;
    assert_eq!(ids(&all), [first.as_str(), second.as_str()], "{all}");
    assert!(all.get("next_batch").is_none(), "{all}");
    let chunk = all["chunk"].as_array().unwrap();
    for (root, body, participated) in [(&chunk[0], "f1", true), (&chunk[1], "s1", false)] {
        let thread = thread_of(root);
        assert_eq!(thread["count"], 1, "{root}");
        assert_eq!(thread["latest_event"]["content"]["body"], body, "{root}");
        assert_eq!(thread["current_user_participated"], participated, "{root}");
    }

    let mine = threads(&alice, "include=participated").await?;
    assert_eq!(ids(&mine), [first.as_str()], "{mine}");
    let page = threads(&bob, "limit=1").await?;
    assert_eq!(ids(&page), [first.as_str()], "{page}");
    let next = page["next_batch"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let rest = threads(&bob, &format!("limit=1&from={}", enc(&next))).await?;
    assert_eq!(ids(&rest), [second.as_str()], "{rest}");
    assert!(rest.get("next_batch").is_none(), "{rest}");

    // A new reply brings its thread to the front.
    alice
        .send(&room, "m.room.message", reply(&second, "s2"))
        .await?;
    let all = threads(&alice, "include=all").await?;
    assert_eq!(ids(&all), [second.as_str(), first.as_str()], "{all}");

    // Not for someone outside the room.
    carol
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)),
            None,
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}
