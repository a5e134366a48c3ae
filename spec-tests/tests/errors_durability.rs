//! Bad input gets the right Matrix error and changes nothing; acknowledged writes survive
//! restarts and `kill -9`.

use reqwest::Method;
use serde_json::json;
use spec_tests::{bodies, enc, timeline, TestServer};

#[tokio::test]
async fn bad_input_errors() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"name": "R"})).await?;
    let before = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=100", enc(&room)))
        .await?
        .ok()?;

    // malformed JSON and wrong shapes
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/bad1",
        enc(&room)
    );
    alice
        .request_raw(Method::PUT, &path, b"{not json".to_vec())
        .await?
        .expect_error(400, "M_NOT_JSON")?;
    alice
        .request_raw(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            br#"{"preset": 42}"#.to_vec(),
        )
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    alice
        .request_raw(Method::PUT, &path, b"[1,2,3]".to_vec())
        .await?
        .expect_error(400, "M_BAD_JSON")?;

    // tokens
    let anon = server.client();
    anon.get("/account/whoami")
        .await?
        .expect_error(401, "M_MISSING_TOKEN")?;
    let mut bogus = server.client();
    bogus.token = Some("nope".into());
    bogus
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    let q = anon
        .request(
            Method::GET,
            "/_matrix/client/v3/account/whoami?access_token=nope",
            None,
        )
        .await?;
    q.expect_error(401, "M_UNKNOWN_TOKEN")?;

    // malformed ids
    alice
        .get("/rooms/not-a-room-id/state")
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    // an id inside a body fails body parsing
    let r = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": "bob"}),
        )
        .await?;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        ["M_INVALID_PARAM", "M_BAD_JSON"].contains(&r.errcode()),
        "{}",
        r.text
    );
    alice
        .get("/profile/not-a-user")
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;

    // unknown room / event
    alice
        .get("/rooms/%21nope%3Alocalhost/event/%24nope")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .get(&format!("/rooms/{}/event/%24nope", enc(&room)))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .get("/rooms/%21nope%3Alocalhost/messages?dir=b")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .post("/join/%21nope%3Alocalhost", json!({}))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // forbidden with a reason
    let bob = server.register("bob").await?;
    let r = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/x", enc(&room)),
            json!({"body": "hi"}),
        )
        .await?;
    r.expect_error(403, "M_FORBIDDEN")?;
    assert!(!r.body["error"].as_str().unwrap().is_empty());

    // oversized body: > 1 MiB
    let big = json!({"msgtype": "m.text", "body": "x".repeat(1_100_000)})
        .to_string()
        .into_bytes();
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/big1",
        enc(&room)
    );
    alice
        .request_raw(Method::PUT, &path, big)
        .await?
        .expect_error(413, "M_TOO_LARGE")?;
    // an event over 64 KiB is refused too
    let r = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/big2", enc(&room)),
            json!({"body": "y".repeat(70_000)}),
        )
        .await?;
    r.expect_error(413, "M_TOO_LARGE")?;

    // unknown endpoint
    alice
        .get("/no/such/endpoint")
        .await?
        .expect_error(404, "M_UNRECOGNIZED")?;
    anon.request(Method::GET, "/_matrix/nothing", None)
        .await?
        .expect_error(404, "M_UNRECOGNIZED")?;

    // none of that wrote anything
    let after = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=100", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(before["chunk"], after["chunk"]);
    // and the server is still up
    alice.get("/account/whoami").await?.ok()?;
    Ok(())
}

#[tokio::test]
async fn restart_keeps_everything() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(
            json!({"preset": "public_chat", "name": "Durable", "room_alias_name": "durable"}),
        )
        .await?;
    bob.join(&room).await?;
    alice.say(&room, "before restart").await?;
    bob.put(
        &format!("/user/{}/account_data/org.example", enc(&bob.user_id)),
        json!({"k": 1}),
    )
    .await?
    .ok()?;
    let since = bob.sync("timeout=0").await?["next_batch"]
        .as_str()
        .unwrap()
        .to_string();

    server.restart().await?;
    // tokens, rooms, aliases, events, account data are all still there
    bob.get("/account/whoami").await?.ok()?;
    assert_eq!(
        bob.get("/directory/room/%23durable%3Alocalhost")
            .await?
            .ok()?["room_id"],
        room.as_str()
    );
    let s = bob.sync("timeout=0").await?;
    assert_eq!(bodies(&timeline(&s, &room)), ["before restart"]);
    assert!(s["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "org.example"));
    // an old sync token still works and new events arrive
    alice.say(&room, "after restart").await?;
    let inc = bob.sync(&format!("since={since}&timeout=0")).await?;
    assert_eq!(bodies(&timeline(&inc, &room)), ["after restart"]);
    // the txn id map survived: resending the same txn gives the same event
    let a = alice
        .send_txn(&room, "m.room.message", "same", json!({"body": "once"}))
        .await?;
    server.restart().await?;
    let b = alice
        .send_txn(&room, "m.room.message", "same", json!({"body": "once"}))
        .await?;
    assert_eq!(a, b);
    Ok(())
}

#[tokio::test]
async fn kill9_after_acknowledged_send() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    // a burst of concurrent sends, all acknowledged, then SIGKILL at once
    let mut tasks = vec![];
    for i in 0..20 {
        let c = alice.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            c.say(&room, &format!("durable {i}")).await
        }));
    }
    let mut acked = vec![];
    for t in tasks {
        acked.push(t.await??);
    }
    let last = alice.say(&room, "last word").await?;
    server.kill9()?;
    server.start_again().await?;
    for id in acked.iter().chain([&last]) {
        let ev = alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(id)))
            .await?
            .ok()?;
        assert_eq!(ev["event_id"], id.as_str());
    }
    let page = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(page["chunk"][0]["content"]["body"], "last word");
    // registration acknowledged right before a kill survives too
    let _bob = server.register("bob").await?;
    server.kill9()?;
    server.start_again().await?;
    let mut bob = server.client();
    bob.login("bob", "bob-password").await?;
    Ok(())
}
