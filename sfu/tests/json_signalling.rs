//! The JSON form of the signalling protocol (`/rtc?format=json`, for the meeting page): a
//! session in text frames joins the same room as a protobuf LiveKit client, and each side
//! sees the other; pings and leave work in JSON.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message of the session (every frame of a JSON session is text).
async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a signal response in time")
            .expect("the socket stays open")
            .expect("a readable frame");
        match frame {
            WsMessage::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            WsMessage::Binary(_) => panic!("a binary frame on a JSON session"),
            _ => continue,
        }
    }
}

/// Reads until a message with the field `key` arrives.
async fn next_with(ws: &mut Socket, key: &str) -> Value {
    for _ in 0..50 {
        let message = next_json(ws).await;
        if message.get(key).is_some() {
            return message;
        }
    }
    panic!("no {key:?} message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_session_joins_the_room_of_a_protobuf_client() {
    let addr = start_sfu().await;
    let url = format!(
        "ws://{addr}/rtc?access_token={}&format=json",
        token("alice", "meet")
    );
    let (mut alice, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let join = next_with(&mut alice, "join").await;
    assert_eq!(join["join"]["participant"]["identity"], "alice", "{join}");
    assert_eq!(join["join"]["room"]["name"], "meet", "{join}");
    let alice_sid = join["join"]["participant"]["sid"]
        .as_str()
        .expect("a participant sid")
        .to_owned();

    // A LiveKit (protobuf) client in the same room sees the JSON participant, and the
    // JSON session is told about it.
    let bob = connect(addr, "bob", "meet").await;
    assert!(
        bob.join
            .other_participants
            .iter()
            .any(|p| p.identity == "alice" && p.sid == alice_sid),
        "{:?}",
        bob.join.other_participants
    );
    let update = next_with(&mut alice, "update").await;
    let names: Vec<&str> = update["update"]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p["identity"].as_str())
        .collect();
    assert!(names.contains(&"bob"), "{update}");

    // Requests in JSON: a ping is answered with a pong (64-bit integers as strings).
    alice
        .send(WsMessage::Text(json!({"ping": "42"}).to_string().into()))
        .await
        .unwrap();
    let pong = next_with(&mut alice, "pong").await;
    let ms: u64 = pong["pong"]
        .as_str()
        .expect("a pong as a string")
        .parse()
        .unwrap();
    assert!(ms > 1_600_000_000_000, "{pong}");

    // A protobuf frame on a JSON session is refused without ending it.
    alice
        .send(WsMessage::Binary(vec![0x42, 0x00].into()))
        .await
        .unwrap();
    alice
        .send(WsMessage::Text(json!({"ping": "43"}).to_string().into()))
        .await
        .unwrap();
    next_with(&mut alice, "pong").await;

    // Leave in JSON: the session ends.
    alice
        .send(WsMessage::Text(
            json!({"leave": {"reason": "CLIENT_INITIATED"}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = alice.next().await {
            if matches!(frame, WsMessage::Close(_)) {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the session did not end after a JSON leave");
}
