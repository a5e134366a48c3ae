//! Bundled aggregations other than threads, on every read path: `m.replace` (the newest
//! valid edit, whole, the original's content untouched; edits by another sender, redacted
//! edits and edits the reader may not see left out) and `m.reference` (the references the
//! reader may see), also on a thread's newest reply bundled with its root.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, fresh_txn, invite_and_join, Client, TestServer};

fn edit(original: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": format!("* {body}"),
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
}

fn relations(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]
}

async fn read(c: &Client, room: &str, event_id: &str) -> anyhow::Result<Value> {
    c.get(&format!("/rooms/{}/event/{}", enc(room), enc(event_id)))
        .await?
        .ok()
}

async fn redact(c: &Client, room: &str, event_id: &str) -> anyhow::Result<()> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/redact/{}/{}",
        enc(room),
        enc(event_id),
        fresh_txn()
    );
    c.request(Method::PUT, &path, Some(&json!({})))
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test]
async fn edits_and_references_are_bundled_on_every_read_path() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Edits"}))
        .await?;
    invite_and_join(&alice, &bob, &room).await?;

    let original = alice.say(&room, "helo").await?;
    alice
        .send(&room, "m.room.message", edit(&original, "hello"))
        .await?;
    let newest = alice
        .send(&room, "m.room.message", edit(&original, "hello there"))
        .await?;
    // Bob's edit of Alice's message is not valid: it is not bundled, though newer.
    bob.send(&room, "m.room.message", edit(&original, "bob was here"))
        .await?;
    let reference = bob
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "see above",
                "m.relates_to": {"rel_type": "m.reference", "event_id": original}}),
        )
        .await?;
    for reader in [&alice, &bob] {
        for copy in reader.event_everywhere(&room, &original).await? {
            let replace = &relations(&copy)["m.replace"];
            assert_eq!(replace["event_id"], newest.as_str(), "{copy}");
            assert_eq!(replace["sender"], alice.user_id.as_str(), "{copy}");
            assert_eq!(replace["content"]["m.new_content"]["body"], "hello there");
            // The original keeps its own content.
            assert_eq!(copy["content"]["body"], "helo", "{copy}");
            assert_eq!(
                relations(&copy)["m.reference"],
                json!({"chunk": [{"event_id": reference}]}),
                "{copy}"
            );
        }
    }

    // An event edited only by someone else has no `m.replace`.
    let plain = alice.say(&room, "untouched").await?;
    bob.send(&room, "m.room.message", edit(&plain, "touched"))
        .await?;
    let served = read(&bob, &room, &plain).await?;
    assert!(relations(&served).get("m.replace").is_none(), "{served}");

    // The newest edit redacted: the one before it is bundled; the reference redacted:
    // no `m.reference` any more.
    redact(&alice, &room, &newest).await?;
    redact(&bob, &room, &reference).await?;
    let served = read(&bob, &room, &original).await?;
    assert_eq!(
        relations(&served)["m.replace"]["content"]["m.new_content"]["body"],
        "hello",
        "{served}"
    );
    assert!(relations(&served).get("m.reference").is_none(), "{served}");

    // An edit made after Carol left is not hers to see: she reads the message unedited,
    // Alice reads it edited.
    let carol = server.register("carol").await?;
    invite_and_join(&alice, &carol, &room).await?;
    let before_leaving = alice.say(&room, "carol can read this").await?;
    carol
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await?
        .ok()?;
    let later = alice
        .send(
            &room,
            "m.room.message",
            edit(&before_leaving, "edited later"),
        )
        .await?;
    let as_carol = read(&carol, &room, &before_leaving).await?;
    assert_eq!(as_carol["content"]["body"], "carol can read this");
    assert!(
        relations(&as_carol).get("m.replace").is_none(),
        "{as_carol}"
    );
    let as_alice = read(&alice, &room, &before_leaving).await?;
    assert_eq!(
        relations(&as_alice)["m.replace"]["event_id"],
        later.as_str()
    );

    // A thread's newest reply, bundled with its root, carries its own newest edit.
    let root = alice.say(&room, "thread root").await?;
    let answer = bob
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "answr",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await?;
    let fixed = bob
        .send(&room, "m.room.message", edit(&answer, "answer"))
        .await?;
    let served = read(&alice, &room, &root).await?;
    let latest = &relations(&served)["m.thread"]["latest_event"];
    assert_eq!(latest["event_id"], answer.as_str(), "{served}");
    assert_eq!(
        relations(latest)["m.replace"]["event_id"],
        fixed.as_str(),
        "{served}"
    );
    Ok(())
}
