//! Security regressions: restricted joins are checked by the server, history visibility is
//! enforced on every read path, and users who left or were banned stop seeing the room's
//! state and timeline at their departure in sliding sync too.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{bodies, enc, timeline, Client, TestServer};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Message bodies of a list of client events.
fn texts(events: &Value) -> Vec<String> {
    bodies(
        &events
            .as_array()
            .map(|a| a.iter().collect::<Vec<_>>())
            .unwrap_or_default(),
    )
}

/// A sliding sync request with one room subscription.
async fn subscribe(c: &Client, room: &str, pos: Option<&str>) -> anyhow::Result<Value> {
    let mut path = format!("{SLIDING}?timeout=0");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    let body = json!({
        "room_subscriptions": { room: {
            "timeline_limit": 50,
            "required_state": [["m.room.topic", ""], ["m.room.name", ""], ["m.room.member", "*"]],
        }},
    });
    c.request(Method::POST, &path, Some(&body)).await?.ok()
}

/// The message bodies `c` reads in `room` through `/messages`, an initial `/sync`, sliding
/// sync and `/context` around `anchor` (an event `c` may see); each in timeline order.
async fn read_everywhere(c: &Client, room: &str, anchor: &str) -> anyhow::Result<[Vec<String>; 4]> {
    let messages = c
        .get(&format!("/rooms/{}/messages?dir=b&limit=100", enc(room)))
        .await?
        .ok()?;
    let mut from_messages = texts(&messages["chunk"]);
    from_messages.reverse();

    let filter = enc(&json!({"room": {"timeline": {"limit": 100}}}).to_string());
    let sync = c.sync(&format!("timeout=0&filter={filter}")).await?;
    let from_sync = bodies(&timeline(&sync, room));

    let sliding = subscribe(c, room, None).await?;
    let from_sliding = texts(&sliding["rooms"][room]["timeline"]);

    let context = c
        .get(&format!(
            "/rooms/{}/context/{}?limit=100",
            enc(room),
            enc(anchor)
        ))
        .await?
        .ok()?;
    let mut from_context = texts(&context["events_before"]);
    from_context.reverse();
    from_context.extend(texts(&json!([context["event"]])));
    from_context.extend(texts(&context["events_after"]));
    Ok([from_messages, from_sync, from_sliding, from_context])
}

/// Fails unless every read path shows exactly `expected` and `/event` and `/context`
/// refuse the `hidden` events; the message names every path that got it wrong.
async fn assert_reads(
    c: &Client,
    room: &str,
    anchor: &str,
    expected: &[&str],
    hidden: &[&str],
) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    let paths = ["/messages", "/sync", "sliding sync", "/context"];
    for (path, seen) in paths.iter().zip(read_everywhere(c, room, anchor).await?) {
        if seen != expected {
            wrong.push(format!("{path} showed {seen:?}"));
        }
    }
    for event in hidden {
        for path in ["event", "context"] {
            let res = c
                .get(&format!("/rooms/{}/{path}/{}", enc(room), enc(event)))
                .await?;
            if res.status != 404 || res.errcode() != "M_NOT_FOUND" {
                let text: String = res.text.chars().take(160).collect();
                wrong.push(format!("/{path} of a hidden event: {} {text}", res.status));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} expected {expected:?}:\n{}",
        c.user_id,
        wrong.join("\n")
    );
    Ok(())
}

async fn room_with_visibility(alice: &Client, visibility: &str) -> anyhow::Result<String> {
    alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": visibility}}],
        }))
        .await
}

#[tokio::test]
async fn history_joined_hides_what_came_before_the_join() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = room_with_visibility(&alice, "joined").await?;
    let secret = alice.say(&room, "before bob").await?;
    alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .ok()?;
    let invited = alice.say(&room, "while bob is invited").await?;
    bob.join(&room).await?;
    let hello = alice.say(&room, "after bob joined").await?;
    assert_reads(
        &bob,
        &room,
        &hello,
        &["after bob joined"],
        &[&secret, &invited],
    )
    .await?;
    // The room's members read everything.
    assert_reads(
        &alice,
        &room,
        &hello,
        &["before bob", "while bob is invited", "after bob joined"],
        &[],
    )
    .await
}

#[tokio::test]
async fn history_invited_shows_from_the_invite() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = room_with_visibility(&alice, "invited").await?;
    let secret = alice.say(&room, "before the invite").await?;
    alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .ok()?;
    alice.say(&room, "while bob is invited").await?;
    bob.join(&room).await?;
    let hello = alice.say(&room, "after bob joined").await?;
    assert_reads(
        &bob,
        &room,
        &hello,
        &["while bob is invited", "after bob joined"],
        &[&secret],
    )
    .await
}

#[tokio::test]
async fn history_shared_shows_everything_to_members_only() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = room_with_visibility(&alice, "shared").await?;
    let old = alice.say(&room, "before bob").await?;
    bob.join(&room).await?;
    let hello = alice.say(&room, "after bob joined").await?;
    assert_reads(
        &bob,
        &room,
        &hello,
        &["before bob", "after bob joined"],
        &[],
    )
    .await?;
    // Someone who never joined reads nothing.
    carol
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    carol
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&old)))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn history_world_readable_is_open_to_everyone() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = room_with_visibility(&alice, "world_readable").await?;
    let old = alice.say(&room, "before bob").await?;
    bob.join(&room).await?;
    let hello = alice.say(&room, "after bob joined").await?;
    assert_reads(
        &bob,
        &room,
        &hello,
        &["before bob", "after bob joined"],
        &[],
    )
    .await?;
    // A non-member peeks.
    let page = carol
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(texts(&page["chunk"]), ["after bob joined", "before bob"]);
    carol
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&old)))
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test]
async fn history_visibility_is_taken_at_each_event() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = room_with_visibility(&alice, "shared").await?;
    alice.say(&room, "shared era").await?;
    let set = |v: &str| {
        alice.set_state(
            &room,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": v}),
        )
    };
    set("joined").await?.ok()?;
    let secret = alice.say(&room, "joined era").await?;
    set("world_readable").await?.ok()?;
    alice.say(&room, "open era").await?;
    set("joined").await?.ok()?;
    let secret2 = alice.say(&room, "closed again").await?;
    bob.join(&room).await?;
    let hello = alice.say(&room, "after bob joined").await?;
    assert_reads(
        &bob,
        &room,
        &hello,
        &["shared era", "open era", "after bob joined"],
        &[&secret, &secret2],
    )
    .await?;
    // While the room is `joined` nobody outside may read it at all.
    carol
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn departed_users_keep_only_what_they_could_see() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = room_with_visibility(&alice, "joined").await?;
    alice.say(&room, "before bob").await?;
    bob.join(&room).await?;
    alice.say(&room, "with bob").await?;
    bob.post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await?
        .ok()?;
    alice.say(&room, "after bob left").await?;
    let page = bob
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(texts(&page["chunk"]), ["with bob"]);
    // The left room in an initial sync with include_leave shows the same.
    let filter = enc(&json!({"room": {"include_leave": true}}).to_string());
    let sync = bob.sync(&format!("timeout=0&filter={filter}")).await?;
    let left = &sync["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(texts(left), ["with bob"], "{sync}");
    // Lazy-loaded members come from the room as bob left it, not from later changes.
    alice
        .put(
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            json!({"displayname": "Alice Renamed"}),
        )
        .await?
        .ok()?;
    let filter = enc(&json!({"lazy_load_members": true}).to_string());
    let page = bob
        .get(&format!(
            "/rooms/{}/messages?dir=b&filter={filter}",
            enc(&room)
        ))
        .await?
        .ok()?;
    let senders: Vec<&Value> = page["state"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert!(
        senders
            .iter()
            .any(|m| m["state_key"] == alice.user_id.as_str()),
        "{page}"
    );
    assert!(!page.to_string().contains("Alice Renamed"), "{page}");
    Ok(())
}

/// Sets up a room where `bob` was a member, then left (or was banned), after which the
/// room's topic and name changed and alice spoke; returns the room.
async fn room_changed_after_departure(
    alice: &Client,
    bob: &Client,
    ban: bool,
) -> anyhow::Result<String> {
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Old name", "topic": "old topic"}))
        .await?;
    bob.join(&room).await?;
    alice.say(&room, "while bob was here").await?;
    if ban {
        alice
            .post(
                &format!("/rooms/{}/ban", enc(&room)),
                json!({"user_id": bob.user_id}),
            )
            .await?
            .ok()?;
    } else {
        bob.post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
            .await?
            .ok()?;
    }
    Ok(room)
}

async fn change_room(alice: &Client, room: &str) -> anyhow::Result<()> {
    alice
        .set_state(room, "m.room.topic", "", json!({"topic": "new topic"}))
        .await?
        .ok()?;
    alice
        .set_state(room, "m.room.name", "", json!({"name": "New name"}))
        .await?
        .ok()?;
    alice.say(room, "after bob was gone").await?;
    Ok(())
}

fn state_content<'a>(room: &'a Value, kind: &str) -> Option<&'a Value> {
    room["required_state"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
        .map(|e| &e["content"])
}

/// Fails if a sliding sync response shows bob anything from after his departure.
fn assert_stops_at_departure(response: &Value, room: &str) {
    let text = response.to_string();
    assert!(!text.contains("new topic"), "new topic leaked: {text}");
    assert!(!text.contains("New name"), "new name leaked: {text}");
    assert!(
        !text.contains("after bob was gone"),
        "message leaked: {text}"
    );
    if let Some(r) = response["rooms"].get(room) {
        if let Some(topic) = state_content(r, "m.room.topic") {
            assert_eq!(topic["topic"], "old topic");
        }
    }
}

async fn sliding_state_stops_at_departure(ban: bool) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = room_changed_after_departure(&alice, &bob, ban).await?;
    // A connection opened before the change, continued after it.
    let first = subscribe(&bob, &room, None).await?;
    assert_stops_at_departure(&first, &room);
    let pos = first["pos"].as_str().unwrap_or_default().to_owned();
    change_room(&alice, &room).await?;
    let next = subscribe(&bob, &room, Some(&pos)).await?;
    assert_stops_at_departure(&next, &room);
    // A fresh connection after the change: the room as bob left it.
    let fresh = subscribe(&bob, &room, None).await?;
    assert_stops_at_departure(&fresh, &room);
    let r = &fresh["rooms"][&room];
    assert_eq!(
        state_content(r, "m.room.topic").map(|c| c["topic"].clone()),
        Some(json!("old topic")),
        "{fresh}"
    );
    assert_eq!(r["name"], "Old name", "{fresh}");
    assert_eq!(
        texts(&r["timeline"]).last().map(String::as_str),
        Some("while bob was here")
    );
    Ok(())
}

#[tokio::test]
async fn sliding_sync_state_stops_at_leave() -> anyhow::Result<()> {
    sliding_state_stops_at_departure(false).await
}

#[tokio::test]
async fn sliding_sync_state_stops_at_ban() -> anyhow::Result<()> {
    sliding_state_stops_at_departure(true).await
}

/// Creates a restricted room (join rule `rule`) that members of `allowed` may join.
async fn restricted_room(alice: &Client, allowed: &str, rule: &str) -> anyhow::Result<String> {
    alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": rule,
                "allow": [{"type": "m.room_membership", "room_id": allowed}],
            }}],
        }))
        .await
}

#[tokio::test]
async fn restricted_join_needs_membership_of_an_allowed_room() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let frank = server.register("frank").await?;
    let eve = server.register("eve").await?;
    let carol = server.register("carol").await?;
    let space = alice.create_room(json!({"preset": "public_chat"})).await?;
    let room = restricted_room(&alice, &space, "restricted").await?;
    alice.say(&room, "members only").await?;

    // Outsiders are refused, however they ask.
    eve.post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    eve.post(&format!("/join/{}", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    eve.set_state(
        &room,
        "m.room.member",
        &eve.user_id,
        json!({"membership": "join", "join_authorised_via_users_server": alice.user_id}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    eve.get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    // Members of the allowed room join through either endpoint; the server names the
    // member who authorised the join.
    bob.join(&space).await?;
    frank.join(&space).await?;
    bob.post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .ok()?;
    frank.join(&room).await?;
    let member = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob.user_id)
        ))
        .await?
        .ok()?;
    assert_eq!(member["membership"], "join");
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice.user_id.as_str()
    );
    let page = bob
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .ok()?;
    assert!(texts(&page["chunk"]).contains(&"members only".to_owned()));

    // An invite still lets an outsider in.
    alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": carol.user_id}),
        )
        .await?
        .ok()?;
    carol.join(&room).await?;

    // Leaving the allowed room takes the right away.
    frank
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await?
        .ok()?;
    frank
        .post(&format!("/rooms/{}/leave", enc(&space)), json!({}))
        .await?
        .ok()?;
    frank
        .post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn restricted_join_refuses_a_named_authoriser_without_invite_power() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let space = alice.create_room(json!({"preset": "public_chat"})).await?;
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "power_level_content_override": {"invite": 50},
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": space}],
            }}],
        }))
        .await?;
    bob.join(&space).await?;
    carol.join(&space).await?;
    carol.join(&room).await?;
    // Carol is joined but may not invite: she cannot vouch for bob.
    bob.set_state(
        &room,
        "m.room.member",
        &bob.user_id,
        json!({"membership": "join", "join_authorised_via_users_server": carol.user_id}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    // Naming a member who may invite works.
    bob.set_state(
        &room,
        "m.room.member",
        &bob.user_id,
        json!({"membership": "join", "join_authorised_via_users_server": alice.user_id}),
    )
    .await?
    .ok()?;
    Ok(())
}

#[tokio::test]
async fn knock_restricted_lets_allowed_users_join_and_others_knock() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let eve = server.register("eve").await?;
    let space = alice.create_room(json!({"preset": "public_chat"})).await?;
    let room = restricted_room(&alice, &space, "knock_restricted").await?;
    eve.post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    eve.post(&format!("/knock/{}", enc(&room)), json!({}))
        .await?
        .ok()?;
    // A pending knock is no way around the allow list either.
    eve.post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    bob.join(&space).await?;
    bob.post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .ok()?;
    Ok(())
}
