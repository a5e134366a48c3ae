//! Rooms: creation, membership, state, sending, redaction, history, aliases, directory.

use serde_json::{json, Value};
use spec_tests::{enc, invite_and_join, TestServer};

fn state_of<'a>(state: &'a Value, kind: &str, key: &str) -> Option<&'a Value> {
    state
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == key)
}

#[tokio::test]
async fn create_room_options() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "name": "Lobby",
            "topic": "All hands",
            "room_alias_name": "lobby",
            "visibility": "public",
            "invite": [bob.user_id],
            "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}],
            "power_level_content_override": {"events_default": 10},
            "room_version": "10",
        }))
        .await?;
    assert!(room.starts_with('!'));
    let state = alice
        .get(&format!("/rooms/{}/state", enc(&room)))
        .await?
        .ok()?;
    let create = state_of(&state, "m.room.create", "").expect("create event");
    assert_eq!(create["content"]["room_version"], "10");
    assert_eq!(create["sender"], alice.user_id.as_str());
    assert_eq!(
        state_of(&state, "m.room.name", "").unwrap()["content"]["name"],
        "Lobby"
    );
    assert_eq!(
        state_of(&state, "m.room.topic", "").unwrap()["content"]["topic"],
        "All hands"
    );
    assert_eq!(
        state_of(&state, "m.room.join_rules", "").unwrap()["content"]["join_rule"],
        "public"
    );
    assert_eq!(
        state_of(&state, "m.room.guest_access", "").unwrap()["content"]["guest_access"],
        "can_join"
    );
    let pl = &state_of(&state, "m.room.power_levels", "").unwrap()["content"];
    assert_eq!(pl["events_default"], 10);
    assert_eq!(pl["users"][&alice.user_id], 100);
    assert_eq!(
        state_of(&state, "m.room.member", &bob.user_id).unwrap()["content"]["membership"],
        "invite"
    );
    assert_eq!(
        state_of(&state, "m.room.canonical_alias", "").unwrap()["content"]["alias"],
        "#lobby:localhost"
    );
    // single state lookups
    let name = alice
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(name["name"], "Lobby");
    alice
        .get(&format!("/rooms/{}/state/m.room.nothing/", enc(&room)))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // private_chat: invite-only, trusted_private_chat: invitees are admins; default version 11
    let private = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
        )
        .await?;
    let state = alice
        .get(&format!("/rooms/{}/state", enc(&private)))
        .await?
        .ok()?;
    assert_eq!(
        state_of(&state, "m.room.join_rules", "").unwrap()["content"]["join_rule"],
        "invite"
    );
    assert_eq!(
        state_of(&state, "m.room.create", "").unwrap()["content"]["room_version"],
        "11"
    );
    let pl = &state_of(&state, "m.room.power_levels", "").unwrap()["content"];
    assert_eq!(pl["users"][&bob.user_id], 100);
    let invite = state_of(&state, "m.room.member", &bob.user_id).unwrap();
    assert_eq!(invite["content"]["is_direct"], true);

    // unsupported room version, alias in use
    alice
        .post("/createRoom", json!({"room_version": "1"}))
        .await?
        .expect_error(400, "M_UNSUPPORTED_ROOM_VERSION")?;
    alice
        .post("/createRoom", json!({"room_alias_name": "lobby"}))
        .await?
        .expect_error(400, "M_ROOM_IN_USE")?;
    Ok(())
}

#[tokio::test]
async fn membership_lifecycle() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;

    // invite-only: bob cannot join uninvited
    bob.post(&format!("/join/{}", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    alice.invite(&room, &bob.user_id).await?;
    bob.post(&format!("/rooms/{}/join", enc(&room)), json!({}))
        .await?
        .ok()?;
    let joined = bob.get("/joined_rooms").await?.ok()?;
    assert_eq!(joined["joined_rooms"], json!([room]));
    let jm = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(jm["joined"].as_object().unwrap().len(), 2);

    // bob (power 0) may not invite or kick
    bob.post(
        &format!("/rooms/{}/invite", enc(&room)),
        json!({"user_id": carol.user_id}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;

    // kick, then ban, unban
    alice
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            json!({"user_id": bob.user_id, "reason": "spam"}),
        )
        .await?
        .ok()?;
    let m = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob.user_id)
        ))
        .await?
        .ok()?;
    assert_eq!(m["membership"], "leave");
    assert_eq!(m["reason"], "spam");
    alice
        .post(
            &format!("/rooms/{}/ban", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .ok()?;
    alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    alice
        .post(
            &format!("/rooms/{}/unban", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .ok()?;
    invite_and_join(&alice, &bob, &room).await?;

    // members with filters and `at`
    let before_carol = bob
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)))
        .await?
        .ok()?;
    let at = before_carol["start"].as_str().unwrap().to_string();
    alice.invite(&room, &carol.user_id).await?;
    let members = bob
        .get(&format!("/rooms/{}/members", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 3);
    let invited = bob
        .get(&format!("/rooms/{}/members?membership=invite", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(invited["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(invited["chunk"][0]["state_key"], carol.user_id.as_str());
    let not_joined = bob
        .get(&format!(
            "/rooms/{}/members?not_membership=join",
            enc(&room)
        ))
        .await?
        .ok()?;
    assert_eq!(not_joined["chunk"].as_array().unwrap().len(), 1);
    let then = bob
        .get(&format!("/rooms/{}/members?at={}", enc(&room), enc(&at)))
        .await?
        .ok()?;
    assert_eq!(then["chunk"].as_array().unwrap().len(), 2, "{then}");

    // carol rejects; bob leaves and forgets
    carol
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await?
        .ok()?;
    bob.post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await?
        .ok()?;
    assert_eq!(
        bob.get("/joined_rooms").await?.ok()?["joined_rooms"],
        json!([])
    );
    bob.post(&format!("/rooms/{}/forget", enc(&room)), json!({}))
        .await?
        .ok()?;
    let sync = bob.sync("timeout=0").await?;
    assert!(
        sync["rooms"]["leave"].get(&room).is_none(),
        "forgotten room still synced: {sync}"
    );
    // a non-member cannot read the room
    carol
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn knock_and_public_join() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    alice
        .set_state(
            &room,
            "m.room.join_rules",
            "",
            json!({"join_rule": "knock"}),
        )
        .await?
        .ok()?;
    bob.post(
        &format!("/knock/{}", enc(&room)),
        json!({"reason": "let me in"}),
    )
    .await?
    .ok()?;
    let sync = bob.sync("timeout=0").await?;
    assert!(sync["rooms"]["knock"][&room].is_object(), "{sync}");
    invite_and_join(&alice, &bob, &room).await?;

    let public = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "pub"}))
        .await?;
    let joined = bob.join("#pub:localhost").await?;
    assert_eq!(joined, public);
    Ok(())
}

#[tokio::test]
async fn transaction_ids_deduplicate_per_device() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    let send = |c: &spec_tests::Client, body: &'static str| {
        let (c, room) = (c.clone(), room.clone());
        async move {
            c.send_txn(
                &room,
                "m.room.message",
                "txn1",
                json!({"msgtype": "m.text", "body": body}),
            )
            .await
        }
    };
    let first = send(&alice, "hello").await?;
    assert_eq!(
        send(&alice, "hello").await?,
        first,
        "a retry is the same event"
    );
    assert_ne!(
        send(&bob, "hi").await?,
        first,
        "another device's txn id is its own"
    );
    let ev = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&first)))
        .await?
        .ok()?;
    assert_eq!(ev["content"]["body"], "hello");
    assert_eq!(ev["sender"], alice.user_id.as_str());
    assert!(ev["origin_server_ts"].as_u64().unwrap() > 0, "{ev}");
    bob.get(&format!("/rooms/{}/event/{}", enc(&room), enc("$nope")))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn state_changes_need_power() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    // bob may not change the name (state_default 50)
    bob.set_state(&room, "m.room.name", "", json!({"name": "x"}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let name_id = alice
        .set_state(&room, "m.room.name", "", json!({"name": "Old"}))
        .await?
        .ok()?;
    assert!(name_id["event_id"].is_string(), "{name_id}");
    Ok(())
}

/// A public room with history: Alice's "hello" and Bob's "hi", the name "Old", Alice's
/// messages m0..m29, the name "New", and Alice's redaction of m0.
struct History {
    /// Bind it (`_server`, not `..`): the server stops when it is dropped.
    _server: TestServer,
    bob: spec_tests::Client,
    room: String,
    /// The ids of m0..m29.
    ids: Vec<String>,
}

async fn history() -> anyhow::Result<History> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    alice.say(&room, "hello").await?;
    bob.say(&room, "hi").await?;
    alice
        .set_state(&room, "m.room.name", "", json!({"name": "Old"}))
        .await?
        .ok()?;
    let mut ids = vec![];
    for i in 0..30 {
        ids.push(alice.say(&room, &format!("m{i}")).await?);
    }
    alice
        .set_state(&room, "m.room.name", "", json!({"name": "New"}))
        .await?
        .ok()?;
    let red = alice
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&ids[0])),
            json!({"reason": "oops"}),
        )
        .await?
        .ok()?;
    assert!(red["event_id"].is_string(), "{red}");
    Ok(History {
        _server: server,
        bob,
        room,
        ids,
    })
}

#[tokio::test]
async fn redaction_needs_power_and_strips_content() -> anyhow::Result<()> {
    let History {
        _server,
        bob,
        room,
        ids,
        ..
    } = history().await?;
    bob.put(
        &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&ids[1])),
        json!({"reason": "no"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    let kept = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&ids[1])))
        .await?
        .ok()?;
    assert_eq!(kept["content"]["body"], "m1", "{kept}");
    let redacted = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&ids[0])))
        .await?
        .ok()?;
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert!(
        redacted["unsigned"]["redacted_because"].is_object(),
        "{redacted}"
    );
    Ok(())
}

#[tokio::test]
async fn messages_paginate_both_ways_with_filters_and_bounds() -> anyhow::Result<()> {
    let History {
        _server, bob, room, ..
    } = history().await?;
    // /messages backwards from the end, paginating
    let page = bob
        .get(&format!("/rooms/{}/messages?dir=b&limit=10", enc(&room)))
        .await?
        .ok()?;
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 10);
    assert_eq!(chunk[0]["type"], "m.room.redaction");
    assert_eq!(chunk[1]["type"], "m.room.name");
    assert_eq!(chunk[2]["content"]["body"], "m29");
    let end = page["end"].as_str().unwrap();
    let page2 = bob
        .get(&format!(
            "/rooms/{}/messages?dir=b&limit=10&from={}",
            enc(&room),
            enc(end)
        ))
        .await?
        .ok()?;
    assert_eq!(page2["chunk"][0]["content"]["body"], "m21");
    // forwards from the start with a filter on type
    let filter = enc(&json!({"types": ["m.room.message"]}).to_string());
    let fwd = bob
        .get(&format!(
            "/rooms/{}/messages?dir=f&limit=5&filter={filter}",
            enc(&room)
        ))
        .await?
        .ok()?;
    let bodies: Vec<&str> = fwd["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    // m0 was redacted: still an m.room.message, without a body
    assert_eq!(bodies, ["hello", "hi", "m1", "m2"]);
    assert!(fwd["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["type"] == "m.room.message"));
    assert_eq!(fwd["chunk"].as_array().unwrap().len(), 5);
    // `to` bounds a page
    let start = page["start"].as_str().unwrap();
    let bounded = bob
        .get(&format!(
            "/rooms/{}/messages?dir=b&from={}&to={}",
            enc(&room),
            enc(start),
            enc(end)
        ))
        .await?
        .ok()?;
    assert_eq!(bounded["chunk"].as_array().unwrap().len(), 10);

    Ok(())
}

#[tokio::test]
async fn context_has_neighbours_and_the_state_at_the_event() -> anyhow::Result<()> {
    let History {
        _server,
        bob,
        room,
        ids,
        ..
    } = history().await?;
    // /context: the event, before, after, and the state at the event
    let ctx = bob
        .get(&format!(
            "/rooms/{}/context/{}?limit=4",
            enc(&room),
            enc(&ids[10])
        ))
        .await?
        .ok()?;
    assert_eq!(ctx["event"]["content"]["body"], "m10");
    assert_eq!(ctx["events_before"][0]["content"]["body"], "m9");
    assert_eq!(ctx["events_after"][0]["content"]["body"], "m11");
    let name_then = state_of(&ctx["state"], "m.room.name", "").expect("name in context state");
    assert_eq!(name_then["content"]["name"], "Old");
    Ok(())
}

#[tokio::test]
async fn aliases_and_directory() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Town square"}))
        .await?;

    alice
        .put(
            "/directory/room/%23town%3Alocalhost",
            json!({"room_id": room}),
        )
        .await?
        .ok()?;
    alice
        .put(
            "/directory/room/%23town%3Alocalhost",
            json!({"room_id": room}),
        )
        .await?
        .expect_error(409, "M_UNKNOWN")?;
    let got = bob.get("/directory/room/%23town%3Alocalhost").await?.ok()?;
    assert_eq!(got["room_id"], room.as_str());
    assert_eq!(got["servers"], json!(["localhost"]));
    let list = alice
        .get(&format!("/rooms/{}/aliases", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(list["aliases"], json!(["#town:localhost"]));
    bob.get("/directory/room/%23nothing%3Alocalhost")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    // bob (not creator, not admin) cannot delete alice's alias
    bob.delete("/directory/room/%23town%3Alocalhost", None)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    alice
        .delete("/directory/room/%23town%3Alocalhost", None)
        .await?
        .ok()?;
    bob.get("/directory/room/%23town%3Alocalhost")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // directory visibility and publicRooms
    let vis = alice
        .get(&format!("/directory/list/room/{}", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(vis["visibility"], "private");
    alice
        .put(
            &format!("/directory/list/room/{}", enc(&room)),
            json!({"visibility": "public"}),
        )
        .await?
        .ok()?;
    let other = alice
        .create_room(json!({"preset": "public_chat", "name": "Kitchen", "visibility": "public"}))
        .await?;
    bob.join(&room).await?;
    let anon = server.client();
    let listed = anon.get("/publicRooms").await?.ok()?;
    assert_eq!(listed["chunk"].as_array().unwrap().len(), 2, "{listed}");
    let town = listed["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .unwrap();
    assert_eq!(town["name"], "Town square");
    assert_eq!(town["num_joined_members"], 2);
    let filtered = bob
        .post(
            "/publicRooms",
            json!({"filter": {"generic_search_term": "kitch"}}),
        )
        .await?
        .ok()?;
    assert_eq!(filtered["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["chunk"][0]["room_id"], other.as_str());
    let paged = bob.post("/publicRooms", json!({"limit": 1})).await?.ok()?;
    assert_eq!(paged["chunk"].as_array().unwrap().len(), 1);
    let next = paged["next_batch"].as_str().expect("next_batch");
    let paged2 = bob
        .post("/publicRooms", json!({"limit": 1, "since": next}))
        .await?
        .ok()?;
    assert_eq!(paged2["chunk"].as_array().unwrap().len(), 1);
    assert_ne!(paged2["chunk"][0]["room_id"], paged["chunk"][0]["room_id"]);
    Ok(())
}

#[tokio::test]
async fn upgrade_room_and_invite_profiles() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice
        .put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            json!({"displayname": "x"}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    bob.put(
        &format!("/profile/{}/displayname", enc(&bob.user_id)),
        json!({"displayname": "Bob B"}),
    )
    .await?
    .ok()?;
    let old = alice
        .create_room(
            json!({"preset": "public_chat", "name": "Old", "topic": "t", "room_alias_name": "up",
                            "room_version": "10", "invite": [bob.user_id]}),
        )
        .await?;
    // invites carry the invitee's profile
    let invite = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&old),
            enc(&bob.user_id)
        ))
        .await?
        .ok()?;
    assert_eq!(invite["displayname"], "Bob B");
    bob.join(&old).await?;
    // bob (power 0) may not upgrade
    bob.post(
        &format!("/rooms/{}/upgrade", enc(&old)),
        json!({"new_version": "11"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    alice
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            json!({"new_version": "1"}),
        )
        .await?
        .expect_error(400, "M_UNSUPPORTED_ROOM_VERSION")?;
    let up = alice
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            json!({"new_version": "11"}),
        )
        .await?
        .ok()?;
    let new = up["replacement_room"].as_str().unwrap().to_string();
    let tomb = alice
        .get(&format!("/rooms/{}/state/m.room.tombstone/", enc(&old)))
        .await?
        .ok()?;
    assert_eq!(tomb["replacement_room"], new.as_str());
    let create = alice
        .get(&format!("/rooms/{}/state/m.room.create/", enc(&new)))
        .await?
        .ok()?;
    assert_eq!(create["room_version"], "11");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    let name = alice
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&new)))
        .await?
        .ok()?;
    assert_eq!(name["name"], "Old");
    let rules = alice
        .get(&format!("/rooms/{}/state/m.room.join_rules/", enc(&new)))
        .await?
        .ok()?;
    assert_eq!(rules["join_rule"], "public");
    // the alias now points at the new room, and bob can follow
    let alias = bob.get("/directory/room/%23up%3Alocalhost").await?.ok()?;
    assert_eq!(alias["room_id"], new.as_str());
    bob.join(&new).await?;
    // the old room is restricted: bob can no longer talk there
    bob.put(
        &format!("/rooms/{}/send/m.room.message/late", enc(&old)),
        json!({"body": "late"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn room_summary_previews() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let public = alice
        .create_room(json!({"preset": "public_chat", "name": "Open house", "topic": "all welcome", "room_alias_name": "open"}))
        .await?;
    let private = alice
        .create_room(json!({"preset": "private_chat", "name": "Secret"}))
        .await?;
    let summary = |c: spec_tests::Client, room: String| async move {
        c.request(
            reqwest::Method::GET,
            &format!("/_matrix/client/v1/room_summary/{}", enc(&room)),
            None,
        )
        .await
    };
    let s = summary(bob.clone(), "#open:localhost".into()).await?.ok()?;
    assert_eq!(s["room_id"], public.as_str());
    assert_eq!(s["name"], "Open house");
    assert_eq!(s["join_rule"], "public");
    assert_eq!(s["num_joined_members"], 1);
    assert_eq!(s["room_version"], "11");
    assert!(s.get("membership").is_none());
    // without a token too
    let anon = summary(server.client(), public.clone()).await?.ok()?;
    assert_eq!(anon["room_id"], public.as_str(), "{anon}");
    assert_eq!(anon["name"], "Open house", "{anon}");
    assert_eq!(anon["num_joined_members"], 1, "{anon}");
    assert!(anon.get("membership").is_none(), "{anon}");
    // a private room is hidden from non-members, shown to members and invitees
    summary(bob.clone(), private.clone())
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice.invite(&private, &bob.user_id).await?;
    let s = summary(bob.clone(), private.clone()).await?.ok()?;
    assert_eq!(s["membership"], "invite");
    assert_eq!(s["name"], "Secret");
    summary(bob, "!nope:localhost".into())
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}
