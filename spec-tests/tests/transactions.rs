//! Transaction ids: idempotency is scoped to the device and the endpoint (method and
//! path), so a retry returns the first result while the same id used for another room,
//! another event type or another endpoint is a request of its own.

use serde_json::json;
use spec_tests::{bodies, enc, timeline, TestServer};

#[tokio::test]
async fn a_retry_in_the_same_room_returns_the_first_event() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let content = json!({"msgtype": "m.text", "body": "once"});
    let first = alice
        .send_txn(&room, "m.room.message", "same", content.clone())
        .await?;
    let again = alice
        .send_txn(&room, "m.room.message", "same", content)
        .await?;
    assert_eq!(first, again);
    let sync = alice.sync("timeout=0").await?;
    assert_eq!(bodies(&timeline(&sync, &room)), ["once"], "{sync}");
    Ok(())
}

#[tokio::test]
async fn the_same_txn_id_in_another_room_or_type_is_another_event() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let one = alice.create_room(json!({})).await?;
    let two = alice.create_room(json!({})).await?;
    let in_one = alice
        .send_txn(
            &one,
            "m.room.message",
            "t1",
            json!({"msgtype": "m.text", "body": "first"}),
        )
        .await?;
    let in_two = alice
        .send_txn(
            &two,
            "m.room.message",
            "t1",
            json!({"msgtype": "m.text", "body": "second"}),
        )
        .await?;
    assert_ne!(in_one, in_two, "the message to the second room was dropped");
    let other_type = alice
        .send_txn(&one, "org.example.custom", "t1", json!({"body": "third"}))
        .await?;
    assert_ne!(other_type, in_one, "the event of another type was dropped");

    let sync = alice.sync("timeout=0").await?;
    assert_eq!(bodies(&timeline(&sync, &one)), ["first"], "{sync}");
    assert_eq!(bodies(&timeline(&sync, &two)), ["second"], "{sync}");
    let custom: Vec<_> = timeline(&sync, &one)
        .into_iter()
        .filter(|e| e["type"] == "org.example.custom")
        .collect();
    assert_eq!(custom.len(), 1, "{sync}");
    // Each event carries the client's own transaction id back to the sending device.
    for (room, id) in [(&one, &in_one), (&two, &in_two)] {
        let event = timeline(&sync, room)
            .into_iter()
            .find(|e| e["event_id"] == id.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(event["unsigned"]["transaction_id"], "t1", "{event}");
    }
    Ok(())
}

#[tokio::test]
async fn a_redaction_txn_id_does_not_collide_with_a_send() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let message = alice
        .send_txn(
            &room,
            "m.room.message",
            "t9",
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await?;
    let redaction = alice
        .put(
            &format!("/rooms/{}/redact/{}/t9", enc(&room), enc(&message)),
            json!({"reason": "oops"}),
        )
        .await?
        .ok()?;
    let redaction_id = redaction["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !redaction_id.is_empty() && redaction_id != message,
        "{redaction}"
    );
    // Retrying the redaction returns the same redaction.
    let retry = alice
        .put(
            &format!("/rooms/{}/redact/{}/t9", enc(&room), enc(&message)),
            json!({"reason": "oops"}),
        )
        .await?
        .ok()?;
    assert_eq!(retry["event_id"], redaction_id.as_str());
    let sync = alice.sync("timeout=0").await?;
    let redactions: Vec<_> = timeline(&sync, &room)
        .into_iter()
        .filter(|e| e["type"] == "m.room.redaction")
        .collect();
    assert_eq!(redactions.len(), 1, "{sync}");
    assert_eq!(redactions[0]["unsigned"]["transaction_id"], "t9", "{sync}");
    Ok(())
}

#[tokio::test]
async fn delayed_sends_scope_their_txn_id_to_the_room() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let one = alice.create_room(json!({})).await?;
    let two = alice.create_room(json!({})).await?;
    let mut ids = Vec::new();
    for room in [&one, &two] {
        let resp = alice
            .put(
                &format!(
                    "/rooms/{}/send/m.room.message/d1?org.matrix.msc4140.delay=600000",
                    enc(room)
                ),
                json!({"msgtype": "m.text", "body": "later"}),
            )
            .await?
            .ok()?;
        ids.push(resp["delay_id"].as_str().unwrap_or_default().to_owned());
    }
    assert!(!ids[0].is_empty() && ids[0] != ids[1], "{ids:?}");
    Ok(())
}
