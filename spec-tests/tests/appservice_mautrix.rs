//! A real bridge framework against Myelin: mautrix-python's AppService
//! (`spec-tests/appservice/mautrix_bridge.py`) registers its bot and a puppet, joins the
//! puppet to a room and sends as it, and receives a user's message in a transaction.
//! `spec-tests/run` installs mautrix and sets `MYELIN_MAUTRIX_PYTHON`; without it this
//! test fails rather than skipping.

use std::{process::Stdio, time::Duration};

use serde_json::{json, Value};
use spec_tests::{enc, fake_appservice::write_registration, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

type Out = Lines<BufReader<tokio::process::ChildStdout>>;

/// The bridge's next JSON line, within `within`.
async fn next_line(out: &mut Out, within: Duration) -> Value {
    let line = tokio::time::timeout(within, out.next_line())
        .await
        .expect("the mautrix bridge said nothing in time")
        .unwrap()
        .expect("the mautrix bridge stopped");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test]
async fn a_mautrix_bridge_sends_as_its_puppet_and_receives_transactions() {
    let python = std::env::var("MYELIN_MAUTRIX_PYTHON").expect(
        "MYELIN_MAUTRIX_PYTHON is not set: run the tests with spec-tests/run, which installs \
         mautrix",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/appservice/mautrix_bridge.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let reg =
        write_registration(dir.path(), "mx", Some(&format!("http://127.0.0.1:{port}"))).unwrap();
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_APPSERVICES", reg.display().to_string().as_str()),
    ])
    .await
    .unwrap();
    let alice = server.register("alice").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat"}))
        .await
        .unwrap();

    let mut bridge = tokio::process::Command::new(python)
        .args([
            script,
            "--homeserver",
            &server.base,
            "--domain",
            "localhost",
            "--port",
            &port.to_string(),
            "--room",
            &room,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(bridge.stdout.take().unwrap()).lines();

    // Bridge → Myelin: the puppet registered, joined and sent.
    let sent = next_line(&mut out, Duration::from_secs(60)).await;
    let event_id = sent["sent"].as_str().unwrap_or_else(|| panic!("{sent}"));
    assert_eq!(sent["puppet"], "@mx_puppet:localhost");
    let event = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(event_id)))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(event["sender"], "@mx_puppet:localhost");
    assert_eq!(event["content"]["body"], "hello from mautrix");
    let members = alice
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        members["joined"].get("@mx_puppet:localhost").is_some(),
        "{members}"
    );

    // Myelin → bridge: Alice's message arrives in a transaction mautrix accepts.
    alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "hi mautrix"}),
        )
        .await
        .unwrap();
    let received = next_line(&mut out, Duration::from_secs(60)).await;
    assert_eq!(received["body"], "hi mautrix", "{received}");
    assert_eq!(received["sender"], alice.user_id.as_str());
    assert_eq!(received["room"], room.as_str());
    let status = tokio::time::timeout(Duration::from_secs(30), bridge.wait())
        .await
        .expect("the bridge exits once the message arrived")
        .unwrap();
    assert!(status.success());
}
