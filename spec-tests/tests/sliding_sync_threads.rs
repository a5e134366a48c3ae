//! Sliding sync's threads extension (MSC4360, `io.element.msc4360.threads`) and its
//! companion endpoint `/thread_updates`: threads with new replies in the user's joined
//! rooms since the last `pos`, one entry per thread, newest first; `prev_batch` per thread
//! (for `/relations`) when it had more than one new reply, and for the list when the limit
//! cut it; threads whose replies the response's timelines carry are left out unless
//! `include_roots`; rooms the user is not in never show.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, TestServer};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const EXT: &str = "io.element.msc4360.threads";
const UPDATES: &str = "/_matrix/client/unstable/io.element.msc4360/thread_updates";

async fn reply(c: &Client, room: &str, root: &str, body: &str) -> anyhow::Result<String> {
    c.send(
        room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await
}

/// One sliding sync request with the extension (`ext` is its settings); `lists` as given.
async fn sync(c: &Client, pos: Option<&str>, lists: Value, ext: Value) -> anyhow::Result<Value> {
    let mut url = format!("{SS}?timeout=0");
    if let Some(p) = pos {
        url.push_str(&format!("&pos={}", enc(p)));
    }
    let mut settings = ext;
    settings["enabled"] = json!(true);
    let body = json!({ "lists": lists, "extensions": { EXT: settings } });
    c.request(Method::POST, &url, Some(&body)).await?.ok()
}

fn pos(response: &Value) -> String {
    response["pos"].as_str().expect("pos").to_owned()
}

fn updates(response: &Value) -> &Value {
    &response["extensions"][EXT]["updates"]
}

#[tokio::test]
async fn threads_extension_reports_thread_updates() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    let elsewhere = alice.create_room(json!({"preset": "private_chat"})).await?;

    let root = alice.say(&room, "Trip?").await?;
    reply(&alice, &room, &root, "Saturday").await?;
    let hidden_root = alice.say(&elsewhere, "not for bob").await?;
    reply(&alice, &elsewhere, &hidden_root, "secret").await?;

    // First request: every thread with replies in Bob's rooms; not the room he is not in.
    let first = sync(&bob, None, json!({}), json!({})).await?;
    assert_eq!(
        first["extensions"][EXT],
        json!({"updates": {(room.clone()): {(root.clone()): {}}}}),
        "{first}"
    );
    // Nothing new: the extension is left out.
    let quiet = sync(&bob, Some(&pos(&first)), json!({}), json!({})).await?;
    assert!(quiet["extensions"].get(EXT).is_none(), "{quiet}");

    // Two new replies: one entry, with a `/relations` token at the one before the newest.
    let second_reply = reply(&bob, &room, &root, "Sunday?").await?;
    reply(&alice, &room, &root, "Sunday it is").await?;
    let next = sync(&bob, Some(&pos(&quiet)), json!({}), json!({})).await?;
    let entry = &updates(&next)[&room][&root];
    assert!(entry.get("thread_root").is_none(), "{next}");
    let prev = entry["prev_batch"].as_str().expect("prev_batch");
    let older = bob
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}/m.thread?dir=b&from={}",
                enc(&room),
                enc(&root),
                enc(prev)
            ),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(
        older["chunk"][0]["event_id"],
        second_reply.as_str(),
        "{older}"
    );

    // A reply the response's timeline carries is not repeated in the extension...
    let list = json!({"all": {"ranges": [[0, 10]], "timeline_limit": 10}});
    let latest = reply(&alice, &room, &root, "Bring snacks").await?;
    let seen = sync(&bob, Some(&pos(&next)), list.clone(), json!({})).await?;
    assert!(seen["extensions"].get(EXT).is_none(), "{seen}");
    // ...unless the client asks for the roots: then the root comes with its summary.
    reply(&alice, &room, &root, "And water").await?;
    let with_roots = sync(
        &bob,
        Some(&pos(&seen)),
        list,
        json!({"include_roots": true}),
    )
    .await?;
    let served_root = &updates(&with_roots)[&room][&root]["thread_root"];
    assert_eq!(served_root["event_id"], root.as_str(), "{with_roots}");
    assert_eq!(
        served_root["unsigned"]["m.relations"]["m.thread"]["latest_event"]["content"]["body"],
        "And water"
    );
    assert_ne!(latest, served_root["event_id"]);

    // Three threads with news and a limit of two: the newest two, and `prev_batch` for
    // the companion endpoint, which pages back to the request's `pos`.
    let since = pos(&with_roots);
    let mut roots = Vec::new();
    for n in 0..3 {
        let r = alice.say(&room, &format!("topic {n}")).await?;
        reply(&alice, &room, &r, "first").await?;
        roots.push(r);
    }
    let limited = sync(&bob, Some(&since), json!({}), json!({"limit": 2})).await?;
    let got: Vec<&String> = updates(&limited)[&room]
        .as_object()
        .expect("updates")
        .keys()
        .collect();
    assert_eq!(got.len(), 2, "{limited}");
    assert!(
        got.contains(&&roots[2]) && got.contains(&&roots[1]),
        "{limited}"
    );
    let from = limited["extensions"][EXT]["prev_batch"]
        .as_str()
        .expect("prev_batch");
    let page = bob
        .request(
            Method::GET,
            &format!("{UPDATES}?dir=b&from={}&to={}", enc(from), enc(&since)),
            None,
        )
        .await?
        .ok()?;
    let chunk = page["chunk"][&room].as_object().expect("chunk");
    assert_eq!(chunk.keys().collect::<Vec<_>>(), [&roots[0]], "{page}");
    assert_eq!(
        chunk[&roots[0]]["thread_root"]["content"]["body"],
        "topic 0"
    );
    assert!(page.get("next_batch").is_none(), "{page}");
    // Without `to`, the walk goes on to the older threads, page by page.
    let all = bob
        .request(Method::GET, &format!("{UPDATES}?dir=b&limit=3"), None)
        .await?
        .ok()?;
    assert_eq!(all["chunk"][&room].as_object().map(|o| o.len()), Some(3));
    let rest = all["next_batch"].as_str().expect("next_batch");
    let last = bob
        .request(
            Method::GET,
            &format!("{UPDATES}?dir=b&from={}", enc(rest)),
            None,
        )
        .await?
        .ok()?;
    assert!(last["chunk"][&room].get(&root).is_some(), "{last}");
    assert!(last["chunk"].get(&elsewhere).is_none(), "{last}");
    let refused = bob.request(Method::GET, UPDATES, None).await?;
    assert_eq!(refused.status, 400, "{}", refused.text);
    Ok(())
}
