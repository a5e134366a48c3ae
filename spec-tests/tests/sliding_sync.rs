//! Simplified sliding sync (MSC4186): lists, ranges, filters, room subscriptions,
//! required_state, incremental updates over a connection, long-polling and extensions.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response, TestServer};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn ss(c: &Client, pos: Option<&str>, timeout: u64, body: Value) -> anyhow::Result<Response> {
    let mut path = format!("{PATH}?timeout={timeout}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    c.request(Method::POST, &path, Some(&body)).await
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn lists_rooms_and_incremental_updates() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let named = alice
        .create_room(json!({"name": "Named", "preset": "public_chat"}))
        .await?;
    let dm = bob
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [alice.user_id], "is_direct": true}),
        )
        .await?;
    alice.join(&dm).await?;
    alice
        .put(
            &format!("/user/{}/account_data/m.direct", enc(&alice.user_id)),
            json!({ (bob.user_id.clone()): [dm] }),
        )
        .await?
        .ok()?;
    let invited = bob
        .create_room(json!({"name": "Invite me", "invite": [alice.user_id]}))
        .await?;
    bob.join(&named).await?;
    alice.say(&named, "older").await?;
    bob.say(&dm, "latest in dm").await?;

    let body = json!({
        "lists": {
            "all": {"ranges": [[0, 9]], "timeline_limit": 1,
                    "required_state": [["m.room.name", ""], ["m.room.member", "$ME"], ["m.room.create", ""]]},
            "dms": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_dm": true}},
            "invites": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_invite": true}},
        },
        "extensions": {"account_data": {"enabled": true}},
    });
    let first = ss(&alice, None, 0, body.clone()).await?.ok()?;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    assert_eq!(first["lists"]["dms"]["count"], 1);
    assert_eq!(first["lists"]["invites"]["count"], 1);
    let rooms = &first["rooms"];
    // the named room: name, one timeline event, limited, my member event in required_state
    let r = &rooms[&named];
    assert_eq!(r["initial"], true);
    assert_eq!(r["name"], "Named");
    assert_eq!(bodies(r), ["older"]);
    assert_eq!(r["limited"], true);
    assert_eq!(r["joined_count"], 2);
    let req_state = r["required_state"].as_array().unwrap();
    assert!(req_state
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()));
    assert!(req_state.iter().any(|e| e["type"] == "m.room.create"));
    assert!(!req_state
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));
    // the DM: no name, so heroes; is_dm; the newest activity bumps it above the named room
    let d = &rooms[&dm];
    assert_eq!(d["is_dm"], true);
    assert!(d.get("name").is_none());
    assert_eq!(d["heroes"][0]["user_id"], bob.user_id.as_str());
    assert!(d["bump_stamp"].as_u64().unwrap() > r["bump_stamp"].as_u64().unwrap());
    // the invite: stripped state
    let i = &rooms[&invited];
    assert!(i["invite_state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.name"));
    // account data: m.direct and the default push rules
    let global = first["extensions"]["account_data"]["global"]
        .as_array()
        .unwrap();
    assert!(global.iter().any(|e| e["type"] == "m.direct"));
    assert!(global.iter().any(|e| e["type"] == "m.push_rules"));
    let pos = first["pos"].as_str().unwrap().to_string();

    // nothing new: a long poll waits, then a message wakes it with only the new event
    let alice2 = alice.clone();
    let body2 = body.clone();
    let pos2 = pos.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let r = ss(&alice2, Some(&pos2), 20000, body2).await;
        (start.elapsed(), r)
    });
    server.wait_parked(&alice.user_id, 1).await?;
    bob.say(&named, "fresh").await?;
    let (elapsed, r) = waiter.await?;
    let next = r?.ok()?;
    assert!(elapsed < Duration::from_secs(15));
    let r = &next["rooms"][&named];
    assert_eq!(r["initial"], false, "{next}");
    assert_eq!(bodies(r), ["fresh"]);
    assert_eq!(r["num_live"], 1);
    assert!(
        next["rooms"].get(&dm).is_none(),
        "unchanged room resent: {next}"
    );
    assert!(next["rooms"].get(&invited).is_none());

    // an empty incremental request with timeout 0 answers at once with no rooms
    let pos3 = next["pos"].as_str().unwrap().to_string();
    let quiet = ss(&alice, Some(&pos3), 0, body.clone()).await?.ok()?;
    assert!(quiet["rooms"].as_object().unwrap().is_empty(), "{quiet}");

    // accepting the invite moves the room out of the invites list
    alice.join(&invited).await?;
    let after = ss(
        &alice,
        Some(quiet["pos"].as_str().unwrap()),
        5000,
        body.clone(),
    )
    .await?
    .ok()?;
    assert_eq!(after["lists"]["invites"]["count"], 0, "{after}");
    // and into "all": with its newest event (my join) and my member event as required
    let joined = &after["rooms"][&invited];
    let my_join = |e: &Value| {
        e["type"] == "m.room.member"
            && e["state_key"] == alice.user_id.as_str()
            && e["content"]["membership"] == "join"
    };
    let tl = joined["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline: {after}"));
    assert!(tl.last().is_some_and(my_join), "{after}");
    let req_state = joined["required_state"]
        .as_array()
        .unwrap_or_else(|| panic!("no required_state: {after}"));
    assert!(req_state.iter().any(my_join), "{after}");

    // an unknown pos is refused with M_UNKNOWN_POS
    ss(&alice, Some("999999"), 0, body.clone())
        .await?
        .expect_error(400, "M_UNKNOWN_POS")?;
    ss(&alice, Some("garbage"), 0, body)
        .await?
        .expect_error(400, "M_UNKNOWN_POS")?;
    Ok(())
}

#[tokio::test]
async fn subscriptions_lazy_members_and_extensions() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    for i in 0..12 {
        bob.say(&room, &format!("m{i}")).await?;
    }
    let body = json!({
        "room_subscriptions": {
            (room.clone()): {"timeline_limit": 5, "required_state": [["m.room.member", "$LAZY"], ["m.room.power_levels", ""]]}
        },
        "extensions": {"receipts": {"enabled": true}, "typing": {"enabled": true}},
    });
    let first = ss(&alice, None, 0, body.clone()).await?.ok()?;
    let r = &first["rooms"][&room];
    assert_eq!(bodies(r), ["m7", "m8", "m9", "m10", "m11"], "{first}");
    assert_eq!(r["limited"], true);
    let members: Vec<&str> = r["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(
        members,
        [bob.user_id.as_str()],
        "lazy members = timeline senders: {r}"
    );
    assert!(r["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.power_levels"));
    // prev_batch continues with /messages
    let prev = r["prev_batch"].as_str().unwrap();
    let older = alice
        .get(&format!(
            "/rooms/{}/messages?dir=b&limit=2&from={}",
            enc(&room),
            enc(prev)
        ))
        .await?
        .ok()?;
    assert_eq!(older["chunk"][0]["content"]["body"], "m6");

    // typing and receipts arrive through the extensions
    let pos = first["pos"].as_str().unwrap().to_string();
    let last = bob.say(&room, "read me").await?;
    let next = ss(&alice, Some(&pos), 5000, body.clone()).await?.ok()?;
    assert_eq!(bodies(&next["rooms"][&room]), ["read me"]);
    let pos = next["pos"].as_str().unwrap().to_string();
    carol
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            json!({}),
        )
        .await?
        .ok()?;
    bob.put(
        &format!("/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
        json!({"typing": true, "timeout": 10000}),
    )
    .await?
    .ok()?;
    let mut receipts = None;
    let mut typing = None;
    let mut pos = pos;
    for _ in 0..3 {
        let r = ss(&alice, Some(&pos), 5000, body.clone()).await?.ok()?;
        pos = r["pos"].as_str().unwrap().to_string();
        if let Some(x) = r["extensions"]["receipts"]["rooms"].get(&room) {
            receipts = Some(x.clone());
        }
        if let Some(x) = r["extensions"]["typing"]["rooms"].get(&room) {
            typing = Some(x.clone());
        }
        if receipts.is_some() && typing.is_some() {
            break;
        }
    }
    let receipts = receipts.expect("receipts extension");
    assert!(
        receipts["content"][&last]["m.read"][&carol.user_id].is_object(),
        "{receipts}"
    );
    assert_eq!(
        typing.expect("typing extension")["content"]["user_ids"],
        json!([bob.user_id])
    );

    // a room the user cannot see is not sent
    let private = carol.create_room(json!({"preset": "private_chat"})).await?;
    let r = ss(
        &alice,
        None,
        0,
        json!({"room_subscriptions": {(private.clone()): {"timeline_limit": 5}}}),
    )
    .await?
    .ok()?;
    assert!(r["rooms"].get(&private).is_none());
    Ok(())
}

#[tokio::test]
async fn unread_counts_follow_receipts() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Counts"}))
        .await?;
    bob.join(&room).await?;
    let body = json!({"lists": {"all": {"ranges": [[0, 5]], "timeline_limit": 1}}});
    let first = ss(&alice, None, 0, body.clone()).await?.ok()?;
    let pos = first["pos"].as_str().unwrap().to_string();
    let msg = bob.say(&room, "count me").await?;
    let next = ss(&alice, Some(&pos), 5000, body.clone()).await?.ok()?;
    assert_eq!(next["rooms"][&room]["notification_count"], 1, "{next}");
    assert_eq!(next["rooms"][&room]["name"], "Counts");
    let pos = next["pos"].as_str().unwrap().to_string();
    // reading on another device drops the count; the room is resent with 0
    let mut phone = server.client();
    phone.login("alice", "alice-password").await?;
    phone
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&msg)),
            json!({}),
        )
        .await?
        .ok()?;
    let after = ss(&alice, Some(&pos), 5000, body).await?.ok()?;
    assert_eq!(after["rooms"][&room]["notification_count"], 0, "{after}");
    assert_eq!(bodies(&after["rooms"][&room]), Vec::<String>::new());
    Ok(())
}
