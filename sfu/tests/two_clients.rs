//! Two webrtc-rs clients in one room: one publishes a synthetic audio track and sends a
//! data packet, the other must receive RTP and the relayed packet; then a server-side
//! mute, room isolation, leave and a dropped socket — one behaviour per test.

#![allow(deprecated)] // UserPacket identity fields: still sent by the SFU for older clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use livekit_protocol as proto;
use myelin_sfu::client::WAIT;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

/// Browsers call the signalling endpoints from the app's origin: livekit-client must be
/// able to read `/rtc/v1/validate`'s 404 (else it never falls back to `/rtc`) and
/// `/rtc/validate`'s verdict. The internal API gets no CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_endpoints_allow_cross_origin_browsers() {
    let addr = start_sfu().await;
    let good = token("alice", "room1");
    let allowed = "access-control-allow-origin: *";
    for (path, expected) in [
        (format!("/rtc/v1/validate?access_token={good}"), 404),
        (format!("/rtc/validate?access_token={good}"), 200),
        ("/rtc/validate?access_token=bad".to_owned(), 401),
    ] {
        let (status, head) = http_from_origin(addr, "GET", &path, "").await;
        assert_eq!(status, expected, "{path}: {head}");
        assert!(head.contains(allowed), "{path}: {head}");
    }
    let (status, head) = http_from_origin(
        addr,
        "OPTIONS",
        "/rtc/validate",
        "Access-Control-Request-Method: GET\r\n",
    )
    .await;
    assert!((200..300).contains(&status), "preflight: {head}");
    assert!(head.contains(allowed), "preflight: {head}");
    let (_, head) = http_from_origin(addr, "GET", "/internal/rooms", "").await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints() {
    let addr = start_sfu().await;
    let good = token("alice", "room1");
    assert_eq!(
        http(
            addr,
            "GET",
            &format!("/rtc/validate?access_token={good}"),
            None,
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        http(addr, "GET", "/rtc/validate?access_token=bad", None, "")
            .await
            .0,
        401
    );
    assert_eq!(
        http(addr, "GET", "/rtc?access_token=bad", None, "").await.0,
        401
    );
    let (status, body) = http(
        addr,
        "GET",
        &format!("/rtc/v1/validate?access_token={good}"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert!(!body.contains("requested room does not exist"));
    assert_eq!(
        http(addr, "GET", "/rtc/v1?access_token=x", None, "")
            .await
            .0,
        404
    );
    let mute = r#"{"room":"room1","identity":"alice","muted":true}"#;
    assert_eq!(
        http(addr, "POST", "/internal/mute", None, mute).await.0,
        401
    );
    assert_eq!(
        http(addr, "POST", "/internal/mute", Some("wrong"), mute)
            .await
            .0,
        401
    );
    assert_eq!(
        http(addr, "POST", "/internal/mute", Some(ADMIN), mute)
            .await
            .0,
        404
    );
    assert_eq!(
        http(addr, "POST", "/internal/mute", Some(ADMIN), "{")
            .await
            .0,
        400
    );
}

/// Alice and Bob in `room1`; Alice publishes a synthetic Opus track (loud speech, a
/// packet every 20 ms) and opens her data channel.
struct Call {
    alice: Client,
    bob: Client,
    alice_sid: String,
    track_sid: String,
    data: Arc<webrtc::data_channel::RTCDataChannel>,
    data_open: mpsc::UnboundedReceiver<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

async fn call_in_room1(addr: std::net::SocketAddr) -> Call {
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    let alice_sid = alice.join.participant.as_ref().unwrap().sid.clone();
    let bob = connect(addr, "@bob:localhost:B", "room1").await;
    alice
        .wait_for("bob's join", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.identity == "@bob:localhost:B")))
        .await.unwrap();

    let track = Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: "audio/opus".into(),
            clock_rate: 48000,
            channels: 2,
            ..Default::default()
        },
        "cid-audio".into(),
        "stream-a".into(),
    ));
    alice.publisher.add_track(track.clone()).await.unwrap();
    let data = alice
        .publisher
        .create_data_channel("_reliable", None)
        .await
        .unwrap();
    alice
        .send
        .send(Req::AddTrack(proto::AddTrackRequest {
            cid: "cid-audio".into(),
            name: "microphone".into(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            ..Default::default()
        }))
        .unwrap();
    let published = alice
        .wait_for("track published", |e| {
            matches!(e, Event::Signal(Resp::TrackPublished(_)))
        })
        .await
        .unwrap();
    let Event::Signal(Resp::TrackPublished(published)) = published else {
        unreachable!()
    };
    assert_eq!(published.cid, "cid-audio");
    let track_sid = published.track.unwrap().sid;
    assert!(track_sid.starts_with("TR_"));
    alice.negotiate_publisher().await.unwrap();

    let (open_tx, data_open) = mpsc::unbounded_channel::<()>();
    data.on_open(Box::new(move || {
        let _ = open_tx.send(());
        Box::pin(async {})
    }));
    let writer = tokio::spawn(async move {
        let mut packet = webrtc::rtp::packet::Packet::default();
        packet.header.version = 2;
        packet.header.payload_type = 111;
        packet.payload = Bytes::from_static(&[0xf8, 0xff, 0xfe]);
        for i in 0..1500u32 {
            packet.header.sequence_number = i as u16;
            packet.header.timestamp = i * 960;
            // Loud speech (10 dBov) with the RFC 6464 extension, for speaker detection.
            let level = webrtc::rtp::extension::HeaderExtension::AudioLevel(
                webrtc::rtp::extension::audio_level_extension::AudioLevelExtension {
                    level: 10,
                    voice: true,
                },
            );
            let _ = track.write_rtp_with_extensions(&packet, &[level]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Call {
        alice,
        bob,
        alice_sid,
        track_sid,
        data,
        data_open,
        writer,
    }
}

impl Call {
    /// Bob learns of the track and receives `packets` RTP packets of it.
    async fn bob_receives_media(&mut self, packets: usize) {
        let track_sid = self.track_sid.clone();
        self.bob
            .wait_for("alice's track", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == track_sid))))
            .await
            .unwrap();
        self.bob_rtp(packets).await;
    }

    /// Bob receives `packets` more RTP packets.
    async fn bob_rtp(&mut self, packets: usize) {
        for _ in 0..packets {
            self.bob
                .wait_for("rtp", |e| matches!(e, Event::Rtp { .. }))
                .await
                .unwrap();
        }
    }

    /// Alice sends "hello" on her data channel once it is open.
    async fn alice_sends_data(&mut self) {
        tokio::time::timeout(WAIT, self.data_open.recv())
            .await
            .unwrap();
        let packet = proto::DataPacket {
            kind: proto::data_packet::Kind::Reliable as i32,
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: b"hello".to_vec(),
                topic: Some("chat".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        self.data
            .send(&Bytes::from(packet.encode_to_vec()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_announces_participants_to_each_other() {
    let addr = start_sfu().await;
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    let server_info = alice.join.server_info.clone().unwrap();
    assert!(!server_info.version.is_empty());
    assert!(alice
        .join
        .participant
        .as_ref()
        .unwrap()
        .sid
        .starts_with("PA_"));
    assert!(alice.join.other_participants.is_empty());

    let bob = connect(addr, "@bob:localhost:B", "room1").await;
    assert_eq!(bob.join.other_participants.len(), 1);
    assert_eq!(
        bob.join.other_participants[0].identity,
        "@alice:localhost:A"
    );
    alice
        .wait_for("bob's join", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.identity == "@bob:localhost:B")))
        .await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_old_and_new_style() {
    let addr = start_sfu().await;
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    alice.send.send(Req::Ping(42)).unwrap();
    alice
        .wait_for("pong", |e| matches!(e, Event::Signal(Resp::Pong(_))))
        .await
        .unwrap();
    alice
        .send
        .send(Req::PingReq(proto::Ping {
            timestamp: 7,
            rtt: 0,
        }))
        .unwrap();
    alice
        .wait_for(
            "pong_resp",
            |e| matches!(e, Event::Signal(Resp::PongResp(p)) if p.last_ping_timestamp == 7),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_audio_reaches_the_subscriber_and_the_publisher_is_told() {
    let addr = start_sfu().await;
    let mut call = call_in_room1(addr).await;
    call.bob_receives_media(0).await;
    let first = call
        .bob
        .wait_for("rtp", |e| matches!(e, Event::Rtp { .. }))
        .await
        .unwrap();
    let Event::Rtp {
        track_id,
        stream_id,
        payload,
        ..
    } = first
    else {
        unreachable!()
    };
    assert_eq!(track_id, call.track_sid);
    assert_eq!(stream_id, format!("{}|{}", call.alice_sid, call.track_sid));
    assert_eq!(payload.as_ref(), &[0xf8, 0xff, 0xfe]);
    let track_sid = call.track_sid.clone();
    call.alice
        .wait_for(
            "track subscribed",
            |e| matches!(e, Event::Signal(Resp::TrackSubscribed(t)) if t.track_sid == track_sid),
        )
        .await
        .unwrap();
    call.bob_rtp(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loud_publisher_is_announced_as_speaking() {
    let addr = start_sfu().await;
    let mut call = call_in_room1(addr).await;
    call.bob_receives_media(1).await;
    let alice_sid = call.alice_sid.clone();
    call.bob
        .wait_for("alice speaking", |e| {
            matches!(e, Event::Signal(Resp::SpeakersChanged(c))
                if c.speakers.iter().any(|s| s.sid == alice_sid && s.active && s.level > 0.2))
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_packets_are_relayed_stamped_with_the_sender() {
    let addr = start_sfu().await;
    let mut call = call_in_room1(addr).await;
    // Bob's subscriber connection (which carries the data channels) is up once media flows.
    call.bob_receives_media(1).await;
    call.alice_sends_data().await;
    let got = call
        .bob
        .wait_for("data packet", |e| matches!(e, Event::Data(_)))
        .await
        .unwrap();
    let Event::Data(got) = got else {
        unreachable!()
    };
    assert_eq!(got.participant_identity, "@alice:localhost:A");
    assert_eq!(got.participant_sid, call.alice_sid);
    match got.value {
        Some(proto::data_packet::Value::User(user)) => {
            assert_eq!(user.payload, b"hello");
            assert_eq!(user.participant_identity, "@alice:localhost:A");
        }
        other => panic!("unexpected data value {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_forwarded_media_and_data() {
    let (addr, sfu) = start_sfu_with_handle().await;
    let mut call = call_in_room1(addr).await;
    call.bob_receives_media(10).await;
    call.alice_sends_data().await;
    call.bob
        .wait_for("data packet", |e| matches!(e, Event::Data(_)))
        .await
        .unwrap();
    sfu.gauges().publish();
    let metrics = metrics_handle().render();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {metrics}"))
    };
    assert!(value("myelin_sfu_rtp_out_packets_total") >= 10);
    assert!(value("myelin_sfu_data_out_packets_total") >= 1);
    assert!(value("myelin_sfu_participants") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mute_is_told_to_the_publisher_and_the_subscriber() {
    let addr = start_sfu().await;
    let mut call = call_in_room1(addr).await;
    call.bob_receives_media(1).await;
    let body = r#"{"room":"room1","except":["@bob:localhost:B"]}"#;
    let (status, body) = http(addr, "POST", "/internal/mute_all_audio", Some(ADMIN), body).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("@alice:localhost:A"));
    let track_sid = call.track_sid.clone();
    call.alice
        .wait_for(
            "server mute",
            |e| matches!(e, Event::Signal(Resp::Mute(m)) if m.sid == track_sid && m.muted),
        )
        .await
        .unwrap();
    call.bob
        .wait_for("muted track", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == track_sid && t.muted))))
        .await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_room_hears_nothing_of_a_call() {
    let addr = start_sfu().await;
    let mut carol = connect(addr, "@carol:localhost:C", "room2").await;
    assert!(carol.join.other_participants.is_empty());
    let mut call = call_in_room1(addr).await;
    call.bob_receives_media(10).await;
    call.alice_sends_data().await;
    call.bob
        .wait_for("data packet", |e| matches!(e, Event::Data(_)))
        .await
        .unwrap();
    for event in carol.drain() {
        if let Event::Signal(Resp::Update(u)) = &event {
            assert!(
                u.participants
                    .iter()
                    .all(|p| p.identity.starts_with("@carol")),
                "leak: {u:?}"
            );
        }
        assert!(!matches!(event, Event::Rtp { .. } | Event::Data(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_is_announced_promptly() {
    let addr = start_sfu().await;
    let mut call = call_in_room1(addr).await;
    call.bob_receives_media(1).await;
    call.alice
        .send
        .send(Req::Leave(proto::LeaveRequest::default()))
        .unwrap();
    call.bob
        .wait_for("alice's leave", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.identity == "@alice:localhost:A" && p.state == proto::participant_info::State::Disconnected as i32)))
        .await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_socket_is_removed_and_empty_room_closes() {
    let addr = start_sfu().await;
    let mut xena = connect(addr, "@xena:localhost:X", "room3").await;
    let yuri = connect(addr, "@yuri:localhost:Y", "room3").await;
    let yuri_sid = yuri.join.participant.as_ref().unwrap().sid.clone();
    yuri.kill();
    let started = std::time::Instant::now();
    xena.wait_for("yuri's removal", |e| {
        matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.sid == yuri_sid
            && p.state == proto::participant_info::State::Disconnected as i32))
    })
    .await.unwrap();
    // On the dropped socket, not at the 15 s ping timeout (with slack for a busy machine).
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "removed only after {:?}",
        started.elapsed()
    );
    let (_, rooms) = http(addr, "GET", "/internal/rooms", Some(ADMIN), "").await;
    assert!(
        rooms.contains("room3") && !rooms.contains("@yuri"),
        "{rooms}"
    );

    // The last one leaves: the room closes after the (1 s) empty timeout.
    xena.send
        .send(Req::Leave(proto::LeaveRequest::default()))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rooms) = http(addr, "GET", "/internal/rooms", Some(ADMIN), "").await;
        if !rooms.contains("room3") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "room3 still open: {rooms}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auto_subscribe_waits_for_an_explicit_subscription() {
    let addr = start_sfu().await;
    let mut erin = connect(addr, "@erin:localhost:E", "room4").await;
    let mut dave = connect_with(addr, "@dave:localhost:D", "room4", "&auto_subscribe=0").await;
    let (track_sid, writer) = erin.publish_audio("cid-erin").await.unwrap();
    dave.wait_for("erin's track", |e| {
        matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == track_sid)))
    })
    .await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for event in dave.drain() {
        assert!(
            !matches!(event, Event::Rtp { .. }),
            "media before subscribing"
        );
    }
    dave.send
        .send(Req::Subscription(proto::UpdateSubscription {
            track_sids: vec![track_sid.clone()],
            subscribe: true,
            participant_tracks: Vec::new(),
        }))
        .unwrap();
    let rtp = dave
        .wait_for("rtp after subscribing", |e| matches!(e, Event::Rtp { .. }))
        .await
        .unwrap();
    let Event::Rtp { track_id, .. } = rtp else {
        unreachable!()
    };
    assert_eq!(track_id, track_sid);
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_participants() {
    let (addr, sfu) = start_sfu_with_handle().await;
    let mut fred = connect(addr, "@fred:localhost:F", "room5").await;
    sfu.shutdown();
    fred.wait_for("server shutdown leave", |e| {
        matches!(e, Event::Signal(Resp::Leave(l))
            if l.reason == proto::DisconnectReason::ServerShutdown as i32 && !l.can_reconnect)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_response_mute_and_duplicate_identity() {
    let addr = start_sfu().await;
    let mut gina = connect(addr, "@gina:localhost:G", "room6").await;
    let join = &gina.join;
    assert!(!join.subscriber_primary);
    assert!(join.ice_servers.is_empty());
    assert_eq!((join.ping_interval, join.ping_timeout), (5, 15));
    let room = join.room.as_ref().unwrap();
    assert_eq!(room.name, "room6");
    assert!(room.sid.starts_with("RM_"));
    let me = join.participant.as_ref().unwrap();
    assert_eq!(me.identity, "@gina:localhost:G");
    let permission = me.permission.as_ref().unwrap();
    assert!(permission.can_publish && permission.can_subscribe && permission.can_publish_data);
    let gina_sid = me.sid.clone();

    let mut hugo = connect(addr, "@hugo:localhost:H", "room6").await;
    let (track_sid, writer) = gina.publish_audio("cid-gina").await.unwrap();
    let mut last_seq = match hugo
        .wait_for("rtp", |e| matches!(e, Event::Rtp { .. }))
        .await
        .unwrap()
    {
        Event::Rtp { seq, .. } => seq,
        _ => unreachable!(),
    };

    // Gina mutes herself: Hugo sees it and the media stops.
    gina.send
        .send(Req::Mute(proto::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: true,
        }))
        .unwrap();
    hugo.wait_for("muted", |e| {
        matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == track_sid && t.muted)))
    })
    .await.unwrap();
    // Packets in flight at the mute may still arrive: wait (bounded) for a quiet stretch
    // of 500 ms, 25 packets of the still-running writer.
    let deadline = std::time::Instant::now() + WAIT;
    let mut quiet_since = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut media = false;
        for event in hugo.drain() {
            if let Event::Rtp { seq, .. } = event {
                last_seq = seq;
                media = true;
            }
        }
        if media {
            quiet_since = std::time::Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "media kept flowing while muted"
        );
    }

    // Unmute: media resumes, numbered right after the last packet before the mute.
    gina.send
        .send(Req::Mute(proto::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: false,
        }))
        .unwrap();
    let seq = match hugo
        .wait_for("rtp after unmute", |e| matches!(e, Event::Rtp { .. }))
        .await
        .unwrap()
    {
        Event::Rtp { seq, .. } => seq,
        _ => unreachable!(),
    };
    // Loopback on a busy machine may lose the odd packet: a gap of a few is tolerated; not
    // rewriting the numbers would leave a gap of the ~25+ packets dropped while muted.
    let gap = seq.wrapping_sub(last_seq);
    assert!(
        (1..=3).contains(&gap),
        "sequence {last_seq} → {seq} after unmute"
    );

    // A second connection with Gina's identity replaces the first.
    let gina2 = connect(addr, "@gina:localhost:G", "room6").await;
    assert_eq!(gina2.join.other_participants.len(), 1);
    gina.wait_for("duplicate identity leave", |e| {
        matches!(e, Event::Signal(Resp::Leave(l)) if l.reason == proto::DisconnectReason::DuplicateIdentity as i32)
    })
    .await.unwrap();
    hugo.wait_for("old gina gone", |e| {
        matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.sid == gina_sid
            && p.state == proto::participant_info::State::Disconnected as i32))
    })
    .await.unwrap();
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_room_disconnects_everyone_and_closes_only_that_room() {
    let addr = start_sfu().await;
    let mut uma = connect(addr, "@uma:localhost:U", "room6").await;
    let mut vic = connect(addr, "@vic:localhost:V", "room6").await;
    let mut walt = connect(addr, "@walt:localhost:W", "room7").await;
    let (status, body) = http(
        addr,
        "POST",
        "/internal/close_room",
        None,
        r#"{"room":"room6"}"#,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/internal/close_room",
        Some(ADMIN),
        r#"{"room":"room6"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("@uma:localhost:U") && body.contains("@vic:localhost:V"),
        "{body}"
    );
    for client in [&mut uma, &mut vic] {
        client
            .wait_for("the room-deleted leave", |e| {
                matches!(e, Event::Signal(Resp::Leave(l))
                    if l.reason == proto::DisconnectReason::RoomDeleted as i32 && !l.can_reconnect)
            })
            .await
            .unwrap();
    }
    let (_, rooms) = http(addr, "GET", "/internal/rooms", Some(ADMIN), "").await;
    assert!(
        !rooms.contains("@uma") && !rooms.contains("@vic"),
        "{rooms}"
    );
    assert!(rooms.contains("@walt:localhost:W"), "{rooms}");
    let (status, _) = http(
        addr,
        "POST",
        "/internal/close_room",
        Some(ADMIN),
        r#"{"room":"room6"}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert!(!walt
        .drain()
        .iter()
        .any(|e| matches!(e, Event::Signal(Resp::Leave(_)))));
}
