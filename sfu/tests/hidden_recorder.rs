//! A hidden recorder in a room: the others never see it and it cannot publish, but it
//! receives their media; while it is there the room is recorded (`active_recording` in the
//! join response and a `RoomUpdate` to everyone on each change).

mod common;

use common::*;
use livekit_protocol as proto;
use myelin_sfu::auth::{now_secs, sign_token, Claims, VideoGrant};
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

fn recorder_token(identity: &str, room: &str) -> String {
    let now = now_secs();
    sign_token(
        &Claims {
            iss: KEY.into(),
            sub: identity.into(),
            exp: now + 600,
            nbf: Some(now),
            name: None,
            metadata: None,
            video: VideoGrant {
                room_join: true,
                room: room.into(),
                hidden: true,
                recorder: true,
                ..Default::default()
            },
        },
        SECRET,
    )
    .unwrap()
}

fn recording(event: &Event, active: bool) -> bool {
    matches!(event, Event::Signal(Resp::RoomUpdate(u))
        if u.room.as_ref().is_some_and(|r| r.active_recording == active))
}

/// No participant update or listing the others received mentions `identity`.
fn never_mentioned(client: &mut Client, identity: &str) {
    for event in client.drain() {
        if let Event::Signal(Resp::Update(u)) = &event {
            assert!(
                u.participants.iter().all(|p| p.identity != identity),
                "leak: {u:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_recorder_is_invisible_and_makes_the_room_recorded() {
    let addr = start_sfu().await;
    let mut alice = connect(addr, "alice", "rec-room").await;
    assert!(!alice.join.room.as_ref().unwrap().active_recording);

    let mut rec = Client::connect(&format!("ws://{addr}"), &recorder_token("rec", "rec-room"))
        .await
        .unwrap();
    let room = rec.join.room.clone().unwrap();
    assert!(room.active_recording);
    assert_eq!(room.num_participants, 1, "the hidden one is not counted");
    let me = rec.join.participant.clone().unwrap();
    let permission = me.permission.unwrap();
    assert!(permission.hidden && !permission.can_publish && !permission.can_publish_data);
    assert_eq!(me.kind, proto::participant_info::Kind::Egress as i32);
    assert_eq!(rec.join.other_participants.len(), 1);
    alice
        .wait_for("recording started", |e| recording(e, true))
        .await
        .unwrap();

    // A later joiner sees Alice only, in a recorded room.
    let mut bob = connect(addr, "bob", "rec-room").await;
    let others: Vec<&str> = bob
        .join
        .other_participants
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(others, vec!["alice"]);
    assert!(bob.join.room.as_ref().unwrap().active_recording);

    // The recorder is subscribed to what Alice publishes.
    alice.connect_publisher().await.unwrap();
    let (_, writer) = alice.publish_audio("alice-mic").await.unwrap();
    rec.wait_for("alice's audio", |e| matches!(e, Event::Rtp { .. }))
        .await
        .unwrap();

    // Its own track is refused: the SFU answers requests in order, and the pong to a ping
    // sent after the request comes without a TrackPublished before it.
    rec.send
        .send(Req::AddTrack(proto::AddTrackRequest {
            cid: "rec-mic".into(),
            r#type: proto::TrackType::Audio as i32,
            ..Default::default()
        }))
        .unwrap();
    rec.send.send(Req::Ping(1)).unwrap();
    let answer = rec
        .wait_for("pong", |e| {
            matches!(
                e,
                Event::Signal(Resp::Pong(_)) | Event::Signal(Resp::TrackPublished(_))
            )
        })
        .await
        .unwrap();
    assert!(matches!(answer, Event::Signal(Resp::Pong(_))), "{answer:?}");

    // The internal API lists it apart.
    let (status, body) = http(addr, "GET", "/internal/rooms", Some(ADMIN), "").await;
    assert_eq!(status, 200);
    let rooms: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = &rooms["rooms"][0];
    let mut visible: Vec<&str> = entry["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    visible.sort();
    assert_eq!(visible, vec!["alice", "bob"]);
    assert_eq!(entry["hidden"], serde_json::json!(["rec"]));
    assert_eq!(entry["recording"], true);

    // It leaves: recording is over, and nobody was ever told about it.
    rec.close().await;
    alice
        .wait_for("recording stopped", |e| recording(e, false))
        .await
        .unwrap();
    bob.wait_for("recording stopped", |e| recording(e, false))
        .await
        .unwrap();
    never_mentioned(&mut alice, "rec");
    never_mentioned(&mut bob, "rec");
    writer.abort();
}
