//! Simplified sliding sync (MSC4186) list filters (`is_encrypted`, `room_types`,
//! `not_room_types`), ranges that cut a list in bump order, `required_state` wildcards,
//! and `M_UNKNOWN_POS` for a position handed out before a restart.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response, TestServer};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn ss(c: &Client, pos: Option<&str>, body: Value) -> anyhow::Result<Response> {
    let mut path = format!("{PATH}?timeout=0");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    c.request(Method::POST, &path, Some(&body)).await
}

/// The ids of the rooms in a response.
fn room_ids(resp: &Value) -> BTreeSet<String> {
    resp["rooms"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn set<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

#[tokio::test]
async fn encryption_and_room_type_filters() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let plain = alice.create_room(json!({"name": "plain"})).await?;
    let encrypted = alice
        .create_room(json!({"name": "encrypted", "initial_state": [
            {"type": "m.room.encryption", "state_key": "",
             "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}))
        .await?;
    let space = alice
        .create_room(json!({"name": "space", "creation_content": {"type": "m.space"}}))
        .await?;
    let custom = alice
        .create_room(json!({"name": "custom", "creation_content": {"type": "org.example.kind"}}))
        .await?;
    // a room that becomes encrypted later is encrypted too
    let later = alice.create_room(json!({"name": "later"})).await?;
    alice
        .set_state(
            &later,
            "m.room.encryption",
            "",
            json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        )
        .await?
        .ok()?;

    let list =
        |filters: Value| json!({"ranges": [[0, 20]], "timeline_limit": 0, "filters": filters});
    let cases = [
        (json!({"is_encrypted": true}), set([&encrypted, &later])),
        (
            json!({"is_encrypted": false}),
            set([&plain, &space, &custom]),
        ),
        (json!({"room_types": ["m.space"]}), set([&space])),
        (
            json!({"not_room_types": ["m.space"]}),
            set([&plain, &encrypted, &custom, &later]),
        ),
        // null stands for "no room type"
        (
            json!({"room_types": [null]}),
            set([&plain, &encrypted, &later]),
        ),
        (
            json!({"room_types": [null, "org.example.kind"]}),
            set([&plain, &encrypted, &later, &custom]),
        ),
        (json!({"not_room_types": [null, "m.space"]}), set([&custom])),
        // filters combine with AND
        (
            json!({"is_encrypted": false, "room_types": [null]}),
            set([&plain]),
        ),
        (
            json!({}),
            set([&plain, &encrypted, &space, &custom, &later]),
        ),
    ];
    for (filters, want) in cases {
        let resp = ss(&alice, None, json!({"lists": {"l": list(filters.clone())}}))
            .await?
            .ok()?;
        assert_eq!(room_ids(&resp), want, "filters {filters}: {resp}");
        assert_eq!(resp["lists"]["l"]["count"], want.len(), "filters {filters}");
    }

    // several lists in one request: each counts its own rooms, rooms are sent once
    let resp = ss(
        &alice,
        None,
        json!({"lists": {
            "enc": list(json!({"is_encrypted": true})),
            "spaces": list(json!({"room_types": ["m.space"]})),
        }}),
    )
    .await?
    .ok()?;
    assert_eq!(resp["lists"]["enc"]["count"], 2);
    assert_eq!(resp["lists"]["spaces"]["count"], 1);
    assert_eq!(room_ids(&resp), set([&encrypted, &later, &space]));
    Ok(())
}

#[tokio::test]
async fn ranges_cut_the_list_in_bump_order() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let mut rooms = Vec::new();
    for i in 0..5 {
        rooms.push(alice.create_room(json!({"name": format!("r{i}")})).await?);
    }
    // activity order, oldest first: r3, r1, r4, r0, r2 (so the list is r2 r0 r4 r1 r3)
    for i in [3, 1, 4, 0, 2] {
        alice.say(&rooms[i], &format!("bump r{i}")).await?;
    }
    // a state change is not activity: it does not move r3 up
    alice
        .set_state(&rooms[3], "m.room.topic", "", json!({"topic": "quiet"}))
        .await?
        .ok()?;
    let order = [2, 0, 4, 1, 3].map(|i| &rooms[i]);

    let with_ranges =
        |ranges: Value| json!({"lists": {"l": {"ranges": ranges, "timeline_limit": 1}}});
    let resp = ss(&alice, None, with_ranges(json!([[0, 1]]))).await?.ok()?;
    assert_eq!(resp["lists"]["l"]["count"], 5, "{resp}");
    assert_eq!(room_ids(&resp), set([order[0], order[1]]), "{resp}");
    let stamp = |id: &String| resp["rooms"][id]["bump_stamp"].as_u64().unwrap();
    assert!(stamp(order[0]) > stamp(order[1]));
    assert_eq!(
        resp["rooms"][order[0]]["timeline"][0]["content"]["body"],
        "bump r2"
    );

    let resp = ss(&alice, None, with_ranges(json!([[1, 2]]))).await?.ok()?;
    assert_eq!(room_ids(&resp), set([order[1], order[2]]), "{resp}");
    let resp = ss(&alice, None, with_ranges(json!([[0, 0], [3, 4]])))
        .await?
        .ok()?;
    assert_eq!(
        room_ids(&resp),
        set([order[0], order[3], order[4]]),
        "{resp}"
    );
    // a range past the end is cut at the end
    let resp = ss(&alice, None, with_ranges(json!([[4, 10]])))
        .await?
        .ok()?;
    assert_eq!(room_ids(&resp), set([order[4]]), "{resp}");

    // new activity moves a room into the window on the same connection
    let resp = ss(&alice, None, with_ranges(json!([[0, 1]]))).await?.ok()?;
    let pos = resp["pos"].as_str().unwrap().to_owned();
    alice.say(order[4], "wake up r3").await?;
    let next = ss(&alice, Some(&pos), with_ranges(json!([[0, 1]])))
        .await?
        .ok()?;
    assert!(
        room_ids(&next).contains(order[4]),
        "the bumped room enters the window: {next}"
    );
    assert_eq!(
        next["rooms"][order[4]]["timeline"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["content"]["body"],
        "wake up r3"
    );
    Ok(())
}

/// `(type, state_key)` of a list of state events.
fn pairs(events: &Value) -> BTreeSet<(String, String)> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The `(type, state_key)` pairs sent for `room` on a new connection asking for `rs`.
async fn required(c: &Client, room: &str, rs: Value) -> anyhow::Result<BTreeSet<(String, String)>> {
    let resp = ss(
        c,
        None,
        json!({"room_subscriptions": {(room): {"timeline_limit": 0, "required_state": rs}}}),
    )
    .await?
    .ok()?;
    Ok(pairs(&resp["rooms"][room]["required_state"]))
}

#[tokio::test]
async fn required_state_wildcards() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Wild", "topic": "cards"}))
        .await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    alice
        .set_state(&room, "org.example.keyed", "k1", json!({"v": 1}))
        .await?
        .ok()?;
    let full = pairs(
        &alice
            .get(&format!("/rooms/{}/state", enc(&room)))
            .await?
            .ok()?,
    );
    assert!(full.len() >= 10, "{full:?}");

    // everything
    assert_eq!(required(&alice, &room, json!([["*", "*"]])).await?, full);
    // every member
    let members: BTreeSet<_> = [&alice, &bob, &carol]
        .iter()
        .map(|c| ("m.room.member".to_owned(), c.user_id.clone()))
        .collect();
    assert_eq!(
        required(&alice, &room, json!([["m.room.member", "*"]])).await?,
        members
    );
    // every state event with an empty state key (no members, not the keyed one)
    let empty_key: BTreeSet<_> = full.iter().filter(|(_, k)| k.is_empty()).cloned().collect();
    assert!(empty_key.contains(&("m.room.topic".into(), String::new())));
    assert_eq!(
        required(&alice, &room, json!([["*", ""]])).await?,
        empty_key
    );
    // any type with that key
    assert_eq!(
        required(&alice, &room, json!([["*", "k1"]])).await?,
        [("org.example.keyed".to_owned(), "k1".to_owned())].into()
    );
    // wildcards combine with exact pairs
    let mut both = members.clone();
    both.insert(("m.room.name".into(), String::new()));
    assert_eq!(
        required(
            &alice,
            &room,
            json!([["m.room.member", "*"], ["m.room.name", ""]])
        )
        .await?,
        both
    );
    Ok(())
}

#[tokio::test]
async fn positions_from_before_a_restart_are_unknown() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"name": "R"})).await?;
    let body = json!({"lists": {"l": {"ranges": [[0, 5]], "timeline_limit": 1}}});
    let first = ss(&alice, None, body.clone()).await?.ok()?;
    let old = first["pos"].as_str().unwrap().to_owned();
    // the position works before the restart
    let second = ss(&alice, Some(&old), body.clone()).await?.ok()?;
    let old_second = second["pos"].as_str().unwrap().to_owned();

    server.restart().await?;
    ss(&alice, Some(&old), body.clone())
        .await?
        .expect_error(400, "M_UNKNOWN_POS")?;
    // a new connection starts over and is sent everything again
    let fresh = ss(&alice, None, body.clone()).await?.ok()?;
    assert_eq!(fresh["rooms"][&room]["initial"], true, "{fresh}");
    let pos = fresh["pos"].as_str().unwrap().to_owned();
    alice.say(&room, "after").await?;
    let next = ss(&alice, Some(&pos), body.clone()).await?.ok()?;
    assert_eq!(
        next["rooms"][&room]["timeline"][0]["content"]["body"],
        "after"
    );
    // Positions of the new connection never repeat the old ones: the old positions stay
    // unknown however far the new connection gets.
    let mut pos = next["pos"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        pos = ss(&alice, Some(&pos), body.clone()).await?.ok()?["pos"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    for stale in [&old, &old_second] {
        ss(&alice, Some(stale), body.clone())
            .await?
            .expect_error(400, "M_UNKNOWN_POS")?;
    }
    ss(&alice, Some(&pos), body).await?.ok()?;
    Ok(())
}
