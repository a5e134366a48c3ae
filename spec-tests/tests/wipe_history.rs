//! Wipe history for oneself (`POST .../io.myelin/rooms/{roomId}/wipe_history`): every
//! earlier event disappears for the caller only, from every read path, across a restart;
//! the room keeps working and later messages show normally.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{bodies, enc, timeline, Client, TestServer};

fn wipe_path(room: &str) -> String {
    format!(
        "/_matrix/client/unstable/io.myelin/rooms/{}/wipe_history",
        enc(room)
    )
}

/// Message bodies of the room's `/messages`, oldest first.
async fn message_bodies(client: &Client, room: &str) -> anyhow::Result<Vec<String>> {
    let page = client
        .get(&format!("/rooms/{}/messages?dir=b&limit=100", enc(room)))
        .await?
        .ok()?;
    let mut out: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    Ok(out)
}

fn unread(sync: &Value, room: &str) -> Value {
    sync["rooms"]["join"][room]["unread_notifications"]["notification_count"].clone()
}

/// What Bob should see after the wipe, and Alice (unaffected) too.
async fn check_wiped(
    alice: &Client,
    bob: &Client,
    room: &str,
    wiped: &[String],
    after: &[&str],
) -> anyhow::Result<()> {
    let s = bob.sync("timeout=0").await?;
    let joined = &s["rooms"]["join"][room];
    assert!(joined.is_object(), "the room still works: {s}");
    assert_eq!(bodies(&timeline(&s, room)), after, "{s}");
    assert_eq!(unread(&s, room), after.len(), "{s}");
    // State still applies: the room's name is there.
    let name = bob
        .get(&format!("/rooms/{}/state/m.room.name/", enc(room)))
        .await?
        .ok()?;
    assert_eq!(name["name"], "Wiped");
    assert_eq!(message_bodies(bob, room).await?, after);
    for id in wiped {
        bob.get(&format!("/rooms/{}/event/{}", enc(room), enc(id)))
            .await?
            .expect_error(404, "M_NOT_FOUND")?;
        bob.get(&format!("/rooms/{}/context/{}", enc(room), enc(id)))
            .await?
            .expect_error(404, "M_NOT_FOUND")?;
        let related = bob
            .get(&format!("/rooms/{}/relations/{}", enc(room), enc(id)))
            .await?;
        assert_eq!(related.status, 404, "relations of a wiped event");
    }
    let notes = bob.get("/notifications").await?.ok()?;
    let listed: Vec<String> = notes["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["event"]["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(listed.iter().rev().cloned().collect::<Vec<_>>(), after);
    // Alice still sees everything.
    let all = message_bodies(alice, room).await?;
    for body in ["one", "two"].iter().chain(after) {
        assert!(all.iter().any(|b| b == body), "{all:?}");
    }
    Ok(())
}

#[tokio::test]
async fn wipe_hides_earlier_events_for_the_caller_only_across_restart() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Wiped"}))
        .await?;
    bob.join(&room).await?;
    let one = alice.say(&room, "one").await?;
    let two = alice.say(&room, "two").await?;
    alice
        .send(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": one, "key": "+1"}}),
        )
        .await?;
    assert_eq!(unread(&bob.sync("timeout=0").await?, &room), 2);

    // Only joined members may wipe; bad room ids are refused.
    carol
        .request(Method::POST, &wipe_path(&room), Some(&json!({})))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    bob.request(Method::POST, &wipe_path("not-a-room"), Some(&json!({})))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    // Clients may post no body at all.
    bob.request(Method::POST, &wipe_path(&room), None)
        .await?
        .ok()?;

    let wiped = [one.clone(), two.clone()];
    check_wiped(&alice, &bob, &room, &wiped, &[]).await?;
    // Alice's own view is untouched.
    let s = alice.sync("timeout=0").await?;
    assert!(
        bodies(&timeline(&s, &room)).contains(&"two".to_owned()),
        "{s}"
    );

    // New messages after the wipe show normally.
    alice.say(&room, "three").await?;
    check_wiped(&alice, &bob, &room, &wiped, &["three"]).await?;

    server.restart().await?;
    check_wiped(&alice, &bob, &room, &wiped, &["three"]).await?;
    // The room keeps working for Bob.
    bob.say(&room, "four").await?;
    assert_eq!(
        message_bodies(&bob, &room).await?,
        ["three".to_owned(), "four".to_owned()]
    );
    Ok(())
}
