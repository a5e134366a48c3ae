//! The example webhook bridge (`appservice/examples/webhook_bridge.rs`) end to end against
//! Myelin: a hook posts as a puppet it registers and joins, and messages of others in the
//! bridged room reach the forward URL. `spec-tests/run` builds it and sets
//! `MYELIN_WEBHOOK_BRIDGE_BIN`; without it this test fails rather than skipping.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use spec_tests::{
    enc,
    fake_appservice::{write_registration, FakeAppservice},
    TestServer,
};

/// A free loopback port for the bridge (the registration must name it before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_webhook_bridge_posts_as_puppets_and_forwards_messages() {
    let bin = std::env::var("MYELIN_WEBHOOK_BRIDGE_BIN").expect(
        "MYELIN_WEBHOOK_BRIDGE_BIN is not set: run the tests with spec-tests/run, which builds \
         the example bridge",
    );
    let mut forward = FakeAppservice::start(Box::new(|_| 200)).await.unwrap();
    let port = free_port();
    let bridge_url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let reg = write_registration(dir.path(), "hook", Some(&bridge_url)).unwrap();
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_APPSERVICES", reg.display().to_string().as_str()),
    ])
    .await
    .unwrap();
    let _bridge = tokio::process::Command::new(bin)
        .args([
            "--registration",
            &reg.display().to_string(),
            "--homeserver",
            &server.base,
            "--server-name",
            "localhost",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--forward",
            &format!("{}/incoming", forward.url),
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let alice = server.register("alice").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Webhooks"}))
        .await
        .unwrap();

    // The hook, once the bridge listens: Carol's text appears as @hook_carol.
    let http = reqwest::Client::new();
    let hook = format!("{bridge_url}/hook/{}", enc(&room));
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match http
            .post(&hook)
            .json(&json!({"user": "Carol", "text": "hello from the hook"}))
            .send()
            .await
        {
            Ok(resp) => break resp,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the bridge never answered: {e}"),
        }
    };
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    let event_id = answer["event_id"].as_str().expect("event_id").to_owned();
    let event = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&event_id)))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(event["sender"], "@hook_carol:localhost");
    assert_eq!(event["content"]["body"], "hello from the hook");

    // Bad input is refused and posts nothing.
    let bad = http
        .post(&hook)
        .json(&json!({"user": "no spaces", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Alice's message in the bridged room reaches the forward URL; the puppet's does not.
    alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "hi bridge"}),
        )
        .await
        .unwrap();
    let got = forward
        .collect_until(Duration::from_secs(30), |r| r.body["body"] == "hi bridge")
        .await
        .unwrap();
    let last = got.last().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, "/incoming");
    assert_eq!(last.body["room_id"], room.as_str());
    assert_eq!(last.body["sender"], alice.user_id.as_str());
    assert!(
        got.iter()
            .all(|r| r.body["sender"] != "@hook_carol:localhost"),
        "the bridge's own puppet is not forwarded: {got:#?}"
    );
}
