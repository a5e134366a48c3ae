//! `/sync`: initial and incremental, long-poll wake-ups, filters, limited timelines, lazy
//! loading, room sections, ephemeral events, account data, presence, notification counts.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spec_tests::{bodies, enc, ephemeral, next_batch, timeline, Client, TestServer};

#[tokio::test]
async fn initial_and_incremental_sync() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "R"}))
        .await?;
    bob.join(&room).await?;
    alice.say(&room, "one").await?;

    let initial = bob.sync("timeout=0").await?;
    let joined = &initial["rooms"]["join"][&room];
    assert!(joined.is_object(), "{initial}");
    assert_eq!(bodies(&timeline(&initial, &room)), ["one"]);
    let state_and_timeline: Vec<&Value> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .collect();
    assert!(state_and_timeline
        .iter()
        .any(|e| e["type"] == "m.room.name"));
    assert!(state_and_timeline
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    assert!(joined["unread_notifications"].is_object());
    let since = next_batch(&initial);

    // nothing new: an empty incremental sync
    let empty = bob.sync(&format!("since={since}&timeout=0")).await?;
    assert!(empty["rooms"]["join"]
        .get(&room)
        .is_none_or(|r| timeline(&empty, &room).is_empty()
            && r["state"]["events"].as_array().is_none_or(|a| a.is_empty())));

    alice.say(&room, "two").await?;
    let inc = bob.sync(&format!("since={since}&timeout=0")).await?;
    assert_eq!(bodies(&timeline(&inc, &room)), ["two"]);
    assert_eq!(inc["rooms"]["join"][&room]["timeline"]["limited"], false);
    // unread count for bob: "one" and "two" from alice
    let count = inc["rooms"]["join"][&room]["unread_notifications"]["notification_count"].as_u64();
    assert_eq!(count, Some(2), "{inc}");

    // full_state brings the whole state again
    let full = bob
        .sync(&format!(
            "since={}&timeout=0&full_state=true",
            next_batch(&inc)
        ))
        .await?;
    let st = full["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap();
    assert!(st.iter().any(|e| e["type"] == "m.room.create"), "{full}");
    Ok(())
}

#[tokio::test]
async fn long_poll_wakes_only_the_affected_user() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    let bob_since = next_batch(&bob.sync("timeout=0").await?);
    let carol_since = next_batch(&carol.sync("timeout=0").await?);

    let bob2 = bob.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let r = bob2.sync(&format!("since={bob_since}&timeout=20000")).await;
        (start.elapsed(), r)
    });
    let carol2 = carol.clone();
    let carol_waiter = tokio::spawn(async move {
        let start = Instant::now();
        let r = carol2
            .sync(&format!("since={carol_since}&timeout=3000"))
            .await;
        (start.elapsed(), r)
    });
    // both long-polls wait before anything happens
    server.wait_parked(&bob.user_id, 1).await?;
    server.wait_parked(&carol.user_id, 1).await?;
    alice.say(&room, "wake up").await?;
    let (elapsed, r) = waiter.await?;
    let r = r?;
    assert_eq!(bodies(&timeline(&r, &room)), ["wake up"]);
    assert!(
        elapsed < Duration::from_secs(15),
        "woke only at the timeout"
    );
    // carol is not in the room: her long poll runs to its timeout with nothing
    let (elapsed, r) = carol_waiter.await?;
    let r = r?;
    assert!(
        elapsed >= Duration::from_millis(2900),
        "carol woke early: {r}"
    );
    assert!(r["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()));
    Ok(())
}

#[tokio::test]
async fn filters_limited_and_lazy_members() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    for i in 0..8 {
        alice.say(&room, &format!("m{i}")).await?;
    }
    // inline filter: limit 3 → limited with prev_batch, which /messages continues from
    let filter = enc(&json!({"room": {"timeline": {"limit": 3}}}).to_string());
    let s = bob.sync(&format!("timeout=0&filter={filter}")).await?;
    let tl = &s["rooms"]["join"][&room]["timeline"];
    assert_eq!(tl["limited"], true);
    assert_eq!(bodies(&timeline(&s, &room)), ["m5", "m6", "m7"]);
    let prev = tl["prev_batch"].as_str().unwrap();
    let older = bob
        .get(&format!(
            "/rooms/{}/messages?dir=b&limit=2&from={}",
            enc(&room),
            enc(prev)
        ))
        .await?
        .ok()?;
    let older_bodies: Vec<&str> = older["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(older_bodies, ["m4", "m3"]);

    // stored filter with lazy-loaded members: only the senders of the timeline (and me)
    let created = bob
        .post(
            &format!("/user/{}/filter", enc(&bob.user_id)),
            json!({"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": true}}}),
        )
        .await?
        .ok()?;
    let filter_id = created["filter_id"].as_str().unwrap();
    let stored = bob
        .get(&format!("/user/{}/filter/{}", enc(&bob.user_id), filter_id))
        .await?
        .ok()?;
    assert_eq!(stored["room"]["timeline"]["limit"], 2);
    let s = bob.sync(&format!("timeout=0&filter={filter_id}")).await?;
    let members: Vec<&str> = s["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(members.contains(&"@alice:localhost"), "{s}");
    assert!(
        !members.contains(&"@carol:localhost"),
        "carol is not a timeline sender: {s}"
    );
    // a filter that excludes the room's events
    let none = enc(&json!({"room": {"rooms": []}}).to_string());
    let s = bob.sync(&format!("timeout=0&filter={none}")).await?;
    assert!(
        s["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()),
        "{s}"
    );
    bob.get(&format!("/user/{}/filter/999999", enc(&bob.user_id)))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn invite_leave_and_knock_sections() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Secret"}))
        .await?;
    let since = next_batch(&bob.sync("timeout=0").await?);
    alice.invite(&room, &bob.user_id).await?;
    let s = bob.sync(&format!("since={since}&timeout=5000")).await?;
    let invite = &s["rooms"]["invite"][&room]["invite_state"]["events"];
    let arr = invite.as_array().expect("invite_state");
    assert!(
        arr.iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"),
        "{s}"
    );
    assert!(arr
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));
    let since = next_batch(&s);
    bob.join(&room).await?;
    alice.say(&room, "welcome").await?;
    let s = bob.sync(&format!("since={since}&timeout=0")).await?;
    assert!(
        bodies(&timeline(&s, &room)).contains(&"welcome".to_string()),
        "{s}"
    );
    let since = next_batch(&s);
    alice
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .ok()?;
    let s = bob.sync(&format!("since={since}&timeout=5000")).await?;
    let left = &s["rooms"]["leave"][&room];
    assert!(left.is_object(), "{s}");
    assert!(left["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "leave"));
    Ok(())
}

/// Alice's public room that Bob joined, with one message of Alice's in it.
struct TwoInARoom {
    /// Bind it (`_server`, not `..`): the server stops when it is dropped.
    _server: TestServer,
    alice: Client,
    bob: Client,
    room: String,
    msg: String,
}

async fn two_in_a_room() -> anyhow::Result<TwoInARoom> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    let msg = alice.say(&room, "read me").await?;
    Ok(TwoInARoom {
        _server: server,
        alice,
        bob,
        room,
        msg,
    })
}

#[tokio::test]
async fn typing_reaches_members_and_only_for_oneself() -> anyhow::Result<()> {
    let TwoInARoom {
        _server,
        alice,
        bob,
        room,
        ..
    } = two_in_a_room().await?;
    let since = next_batch(&bob.sync("timeout=0").await?);
    alice
        .put(
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            json!({"typing": true, "timeout": 10000}),
        )
        .await?
        .ok()?;
    alice
        .put(
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
            json!({"typing": true, "timeout": 1000}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let s = bob.sync(&format!("since={since}&timeout=5000")).await?;
    let typing = ephemeral(&s, &room, "m.typing").unwrap_or_else(|| panic!("no m.typing: {s}"));
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]), "{s}");
    Ok(())
}

#[tokio::test]
async fn receipts_public_shared_private_only_with_owner() -> anyhow::Result<()> {
    let TwoInARoom {
        _server,
        alice,
        bob,
        room,
        msg,
    } = two_in_a_room().await?;
    let since = next_batch(&bob.sync("timeout=0").await?);
    // a threaded public receipt is accepted too
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&msg)),
        json!({"thread_id": "main"}),
    )
    .await?
    .ok()?;
    bob.post(
        &format!("/rooms/{}/receipt/m.read.private/{}", enc(&room), enc(&msg)),
        json!({}),
    )
    .await?
    .ok()?;
    let s = alice.sync("timeout=0").await?;
    let receipt = ephemeral(&s, &room, "m.receipt").unwrap_or_else(|| panic!("no receipt: {s}"));
    assert!(
        receipt["content"][&msg]["m.read"][&bob.user_id]["ts"].is_u64(),
        "{receipt}"
    );
    assert!(
        receipt["content"][&msg].get("m.read.private").is_none(),
        "private receipt leaked: {receipt}"
    );
    let s = bob.sync(&format!("since={since}&timeout=0")).await?;
    let mine = ephemeral(&s, &room, "m.receipt").unwrap_or_else(|| panic!("no own receipts: {s}"));
    assert!(
        mine["content"][&msg]["m.read.private"][&bob.user_id].is_object(),
        "{mine}"
    );
    // having read it, bob's unread count is 0
    assert_eq!(
        s["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0,
        "{s}"
    );
    Ok(())
}

#[tokio::test]
async fn account_data_tags_and_read_markers_reach_sync() -> anyhow::Result<()> {
    let TwoInARoom {
        _server,
        alice,
        bob,
        room,
        msg,
    } = two_in_a_room().await?;
    let since = next_batch(&bob.sync("timeout=0").await?);
    // read markers set m.fully_read room account data
    bob.post(
        &format!("/rooms/{}/read_markers", enc(&room)),
        json!({"m.fully_read": msg, "m.read": msg}),
    )
    .await?
    .ok()?;
    // account data, global and per room, and tags
    let settings = format!(
        "/user/{}/account_data/org.example.settings",
        enc(&bob.user_id)
    );
    let tags = format!("/user/{}/rooms/{}/tags", enc(&bob.user_id), enc(&room));
    bob.put(&settings, json!({"theme": "dark"})).await?.ok()?;
    bob.put(
        &format!(
            "/user/{}/rooms/{}/account_data/org.example.room",
            enc(&bob.user_id),
            enc(&room)
        ),
        json!({"pinned": true}),
    )
    .await?
    .ok()?;
    bob.put(&format!("{tags}/m.favourite"), json!({"order": 0.5}))
        .await?
        .ok()?;
    assert_eq!(bob.get(&settings).await?.ok()?["theme"], "dark");
    alice
        .get(&settings)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let got = bob.get(&tags).await?.ok()?;
    assert_eq!(got["tags"]["m.favourite"]["order"], 0.5, "{got}");
    let s = bob.sync(&format!("since={since}&timeout=0")).await?;
    let global = s["account_data"]["events"]
        .as_array()
        .expect("account_data");
    assert!(
        global
            .iter()
            .any(|e| e["type"] == "org.example.settings" && e["content"]["theme"] == "dark"),
        "{s}"
    );
    let room_ad = s["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no room account data: {s}"));
    assert!(
        room_ad.iter().any(|e| e["type"] == "org.example.room"),
        "{s}"
    );
    assert!(room_ad.iter().any(|e| e["type"] == "m.tag"), "{s}");
    assert!(
        room_ad
            .iter()
            .any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == msg.as_str()),
        "{s}"
    );
    bob.delete(&format!("{tags}/m.favourite"), None)
        .await?
        .ok()?;
    assert_eq!(bob.get(&tags).await?.ok()?["tags"], json!({}));
    Ok(())
}

#[tokio::test]
async fn presence_status_reaches_room_peers() -> anyhow::Result<()> {
    let TwoInARoom {
        _server,
        alice,
        bob,
        room,
        ..
    } = two_in_a_room().await?;
    let status = |u: &str| format!("/presence/{}/status", enc(u));
    bob.put(
        &status(&bob.user_id),
        json!({"presence": "online", "status_msg": "coding"}),
    )
    .await?
    .ok()?;
    let p = alice.get(&status(&bob.user_id)).await?.ok()?;
    assert_eq!(p["presence"], "online", "{p}");
    assert_eq!(p["status_msg"], "coding", "{p}");
    let s = alice.sync("timeout=0").await?;
    let pres = s["presence"]["events"].as_array().expect("presence");
    assert!(
        pres.iter()
            .any(|e| e["sender"] == bob.user_id.as_str() && e["content"]["presence"] == "online"),
        "{s}"
    );
    bob.put(&status(&alice.user_id), json!({"presence": "online"}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // the one-time key counts are always there, signed_curve25519 included
    assert_eq!(
        s["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{s}"
    );
    assert!(s["rooms"]["join"][&room].is_object(), "{s}");
    Ok(())
}

#[tokio::test]
async fn sync_set_presence_offline_leaves_presence_and_unavailable_sets_it() -> anyhow::Result<()> {
    let TwoInARoom {
        _server,
        alice,
        bob,
        ..
    } = two_in_a_room().await?;
    let status = format!("/presence/{}/status", enc(&bob.user_id));
    bob.put(
        &status,
        json!({"presence": "online", "status_msg": "coding"}),
    )
    .await?
    .ok()?;
    let s = bob.sync("timeout=0&set_presence=offline").await?;
    next_batch(&s);
    let p = alice.get(&status).await?.ok()?;
    assert_eq!(
        p["presence"], "online",
        "offline sync changed presence: {p}"
    );
    assert_eq!(p["status_msg"], "coding", "{p}");
    bob.sync("timeout=0&set_presence=unavailable").await?;
    let p = alice.get(&status).await?.ok()?;
    assert_eq!(p["presence"], "unavailable", "{p}");
    assert_eq!(p["status_msg"], "coding", "{p}");
    Ok(())
}

#[tokio::test]
async fn incremental_presence_only_from_users_sharing_a_room() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    let status = |u: &str| format!("/presence/{}/status", enc(u));
    let since = next_batch(&alice.sync("timeout=0").await?);

    // Carol shares no room with Alice: her change is not Alice's business.
    carol
        .put(&status(&carol.user_id), json!({"presence": "unavailable"}))
        .await?
        .ok()?;
    bob.put(
        &status(&bob.user_id),
        json!({"presence": "unavailable", "status_msg": "lunch"}),
    )
    .await?
    .ok()?;
    let s = alice.sync(&format!("timeout=0&since={since}")).await?;
    let senders: Vec<&str> = s["presence"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["sender"].as_str())
        .collect();
    assert_eq!(senders, [bob.user_id.as_str()], "{s}");
    assert_eq!(s["presence"]["events"][0]["content"]["status_msg"], "lunch");

    // Once Carol joins, her next change reaches Alice; nothing is repeated.
    carol.join(&room).await?;
    let since = next_batch(&s);
    carol
        .put(&status(&carol.user_id), json!({"presence": "online"}))
        .await?
        .ok()?;
    let s = alice.sync(&format!("timeout=0&since={since}")).await?;
    let senders: Vec<&str> = s["presence"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["sender"].as_str())
        .collect();
    assert_eq!(senders, [carol.user_id.as_str()], "{s}");
    Ok(())
}

#[tokio::test]
async fn profile_changes_reach_member_events() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    alice
        .put(
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            json!({"displayname": "Alice A."}),
        )
        .await?
        .ok()?;
    alice
        .put(
            &format!("/profile/{}/avatar_url", enc(&alice.user_id)),
            json!({"avatar_url": "mxc://localhost/abc"}),
        )
        .await?
        .ok()?;
    let profile = bob
        .get(&format!("/profile/{}", enc(&alice.user_id)))
        .await?
        .ok()?;
    assert_eq!(profile["displayname"], "Alice A.");
    assert_eq!(profile["avatar_url"], "mxc://localhost/abc");
    let name = bob
        .get(&format!("/profile/{}/displayname", enc(&alice.user_id)))
        .await?
        .ok()?;
    assert_eq!(name["displayname"], "Alice A.");
    let member = bob
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&alice.user_id)
        ))
        .await?
        .ok()?;
    assert_eq!(member["displayname"], "Alice A.");
    assert_eq!(member["avatar_url"], "mxc://localhost/abc");
    bob.put(
        &format!("/profile/{}/displayname", enc(&alice.user_id)),
        json!({"displayname": "x"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    bob.get("/profile/%40nobody%3Alocalhost")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn transaction_id_only_for_the_sending_device() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let mut other_device = server.client();
    other_device.login("alice", "alice-password").await?;
    let room = alice.create_room(json!({})).await?;
    let id = alice
        .send_txn(
            &room,
            "m.room.message",
            "my-txn-1",
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await?;
    let find = |s: &Value| -> Value {
        timeline(s, &room)
            .into_iter()
            .find(|e| e["event_id"] == id.as_str())
            .cloned()
            .expect("event in timeline")
    };
    let mine = alice.sync("timeout=0").await?;
    assert_eq!(
        find(&mine)["unsigned"]["transaction_id"],
        "my-txn-1",
        "{mine}"
    );
    let theirs = other_device.sync("timeout=0").await?;
    assert!(find(&theirs)["unsigned"].get("transaction_id").is_none());
    let page = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(page["chunk"][0]["unsigned"]["transaction_id"], "my-txn-1");
    Ok(())
}
