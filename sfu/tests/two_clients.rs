//! Starts the SFU in-process on loopback and drives it with two webrtc-rs clients that
//! speak LiveKit's signalling: one publishes a synthetic audio track and sends a data
//! packet, the other must receive RTP and the relayed packet; then a server-side mute.

#![allow(deprecated)] // UserPacket identity fields: still sent by the SFU for older clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use myelin_sfu::auth::{now_secs, sign_token, Claims, VideoGrant};
use myelin_sfu::{Config, Sfu};
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

const KEY: &str = "testkey";
const SECRET: &str = "test-secret-test-secret-test-secret-0123";
const ADMIN: &str = "admin-secret";
const WAIT: Duration = Duration::from_secs(20);

async fn start_sfu() -> SocketAddr {
    let mut config = Config {
        keys: BTreeMap::from([(KEY.to_owned(), SECRET.to_owned())]),
        ..Config::default()
    };
    config.rtc.bind_ip = Some("127.0.0.1".parse().unwrap());
    config.rtc.udp_port_min = 52000;
    config.rtc.udp_port_max = 52999;
    config.room.empty_timeout_secs = 1;
    config.internal.secret = Some(ADMIN.to_owned());
    config.validate().unwrap();
    let sfu = Sfu::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(myelin_sfu::serve(sfu, listener));
    addr
}

fn token(identity: &str, room: &str) -> String {
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
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
            },
        },
        SECRET,
    )
    .unwrap()
}

/// A minimal HTTP/1.1 request over a raw socket; returns (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn client_api() -> API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

/// What a test client observed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test-only; a few hundred events at most
enum Event {
    Signal(Resp),
    Rtp,
    Data(proto::DataPacket),
}

struct Client {
    join: proto::JoinResponse,
    publisher: Arc<RTCPeerConnection>,
    send: mpsc::UnboundedSender<Req>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Client {
    async fn connect(addr: SocketAddr, identity: &str, room: &str) -> Client {
        let url = format!(
            "ws://{addr}/rtc?access_token={}&protocol=16",
            token(identity, room)
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut ws_tx, mut ws_rx) = ws.split();
        let first = ws_rx.next().await.unwrap().unwrap();
        let join = match proto::SignalResponse::decode(first.into_data().as_ref())
            .unwrap()
            .message
        {
            Some(Resp::Join(join)) => join,
            other => panic!("first message is not a join: {other:?}"),
        };

        let api = client_api();
        let publisher = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .unwrap(),
        );
        let subscriber = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .unwrap(),
        );
        let (send, mut outgoing) = mpsc::unbounded_channel::<Req>();
        let (events_tx, events) = mpsc::unbounded_channel::<Event>();

        tokio::spawn(async move {
            while let Some(req) = outgoing.recv().await {
                let bytes = proto::SignalRequest { message: Some(req) }.encode_to_vec();
                if ws_tx.send(WsMessage::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
        });
        for (pc, target) in [(&publisher, 0), (&subscriber, 1)] {
            let send = send.clone();
            pc.on_ice_candidate(Box::new(move |c| {
                let send = send.clone();
                Box::pin(async move {
                    if let Some(c) = c {
                        let json = serde_json::to_string(&c.to_json().unwrap()).unwrap();
                        let _ = send.send(Req::Trickle(proto::TrickleRequest {
                            candidate_init: json,
                            target,
                            r#final: false,
                        }));
                    }
                })
            }));
        }
        let ev = events_tx.clone();
        subscriber.on_track(Box::new(move |track, _, _| {
            let ev = ev.clone();
            Box::pin(async move {
                tokio::spawn(async move {
                    while track.read_rtp().await.is_ok() {
                        if ev.send(Event::Rtp).is_err() {
                            break;
                        }
                    }
                });
            })
        }));
        let ev = events_tx.clone();
        subscriber.on_data_channel(Box::new(move |dc| {
            let ev = ev.clone();
            Box::pin(async move {
                dc.on_message(Box::new(move |msg| {
                    let ev = ev.clone();
                    Box::pin(async move {
                        if let Ok(packet) = proto::DataPacket::decode(msg.data.as_ref()) {
                            let _ = ev.send(Event::Data(packet));
                        }
                    })
                }));
            })
        }));

        let (pc_pub, pc_sub, send2) = (publisher.clone(), subscriber.clone(), send.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws_rx.next().await {
                let WsMessage::Binary(data) = msg else {
                    continue;
                };
                let Some(resp) = proto::SignalResponse::decode(data.as_ref())
                    .unwrap()
                    .message
                else {
                    continue;
                };
                match &resp {
                    Resp::Offer(offer) => {
                        let desc = RTCSessionDescription::offer(offer.sdp.clone()).unwrap();
                        pc_sub.set_remote_description(desc).await.unwrap();
                        let answer = pc_sub.create_answer(None).await.unwrap();
                        pc_sub.set_local_description(answer.clone()).await.unwrap();
                        let _ = send2.send(Req::Answer(proto::SessionDescription {
                            r#type: "answer".into(),
                            sdp: answer.sdp,
                            id: offer.id,
                            ..Default::default()
                        }));
                    }
                    Resp::Answer(answer) => {
                        let desc = RTCSessionDescription::answer(answer.sdp.clone()).unwrap();
                        pc_pub.set_remote_description(desc).await.unwrap();
                    }
                    Resp::Trickle(t) => {
                        let init: RTCIceCandidateInit =
                            serde_json::from_str(&t.candidate_init).unwrap();
                        let pc = if t.target == 1 { &pc_sub } else { &pc_pub };
                        let _ = pc.add_ice_candidate(init).await;
                    }
                    _ => {}
                }
                if events_tx.send(Event::Signal(resp)).is_err() {
                    break;
                }
            }
        });
        Client {
            join,
            publisher,
            send,
            events,
        }
    }

    /// Waits for an event matching `pred`, skipping others.
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("client closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    async fn negotiate_publisher(&self) {
        let offer = self.publisher.create_offer(None).await.unwrap();
        self.publisher
            .set_local_description(offer.clone())
            .await
            .unwrap();
        self.send
            .send(Req::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: offer.sdp,
                id: 1,
                ..Default::default()
            }))
            .unwrap();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_data_flow_between_two_clients() {
    let addr = start_sfu().await;
    let mut alice = Client::connect(addr, "@alice:localhost:A", "room1").await;
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
    let alice_sid = alice.join.participant.as_ref().unwrap().sid.clone();

    let mut bob = Client::connect(addr, "@bob:localhost:B", "room1").await;
    assert_eq!(bob.join.other_participants.len(), 1);
    assert_eq!(
        bob.join.other_participants[0].identity,
        "@alice:localhost:A"
    );
    // Alice learns of Bob.
    alice
        .wait_for("bob's join", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.identity == "@bob:localhost:B")))
        .await;

    // Someone in another room never hears of either.
    let mut carol = Client::connect(addr, "@carol:localhost:C", "room2").await;
    assert!(carol.join.other_participants.is_empty());

    // Pings, old and new style.
    alice.send.send(Req::Ping(42)).unwrap();
    alice
        .wait_for("pong", |e| matches!(e, Event::Signal(Resp::Pong(_))))
        .await;
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
        .await;

    // Alice publishes audio and opens her data channel.
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
    let dc = alice
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
        .await;
    let Event::Signal(Resp::TrackPublished(published)) = published else {
        unreachable!()
    };
    assert_eq!(published.cid, "cid-audio");
    let track_sid = published.track.unwrap().sid;
    assert!(track_sid.starts_with("TR_"));
    alice.negotiate_publisher().await;

    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<()>();
    dc.on_open(Box::new(move || {
        let _ = open_tx.send(());
        Box::pin(async {})
    }));
    // Synthetic Opus packets every 20 ms.
    let writer = tokio::spawn(async move {
        let mut packet = webrtc::rtp::packet::Packet::default();
        packet.header.version = 2;
        packet.header.payload_type = 111;
        packet.payload = Bytes::from_static(&[0xf8, 0xff, 0xfe]);
        for i in 0..1500u32 {
            packet.header.sequence_number = i as u16;
            packet.header.timestamp = i * 960;
            let _ = track.write_rtp(&packet).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Bob learns of the track, then receives its media.
    bob.wait_for("alice's track", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == track_sid))))
        .await;
    for _ in 0..10 {
        bob.wait_for("rtp", |e| matches!(e, Event::Rtp)).await;
    }

    // A data packet from Alice reaches Bob, stamped with her identity.
    tokio::time::timeout(WAIT, open_rx.recv()).await.unwrap();
    let packet = proto::DataPacket {
        kind: proto::data_packet::Kind::Reliable as i32,
        value: Some(proto::data_packet::Value::User(proto::UserPacket {
            payload: b"hello".to_vec(),
            topic: Some("chat".into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    dc.send(&Bytes::from(packet.encode_to_vec())).await.unwrap();
    let got = bob
        .wait_for("data packet", |e| matches!(e, Event::Data(_)))
        .await;
    let Event::Data(got) = got else {
        unreachable!()
    };
    assert_eq!(got.participant_identity, "@alice:localhost:A");
    assert_eq!(got.participant_sid, alice_sid);
    match got.value {
        Some(proto::data_packet::Value::User(user)) => {
            assert_eq!(user.payload, b"hello");
            assert_eq!(user.participant_identity, "@alice:localhost:A");
        }
        other => panic!("unexpected data value {other:?}"),
    }

    // Server-side mute: Alice is told, Bob sees the track muted.
    let body = r#"{"room":"room1","except":["@bob:localhost:B"]}"#;
    let (status, body) = http(addr, "POST", "/internal/mute_all_audio", Some(ADMIN), body).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("@alice:localhost:A"));
    alice
        .wait_for(
            "server mute",
            |e| matches!(e, Event::Signal(Resp::Mute(m)) if m.sid == track_sid && m.muted),
        )
        .await;
    bob.wait_for("muted track", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == track_sid && t.muted))))
        .await;

    // Carol (other room) heard nothing of room1.
    while let Ok(event) = carol.events.try_recv() {
        if let Event::Signal(Resp::Update(u)) = &event {
            assert!(
                u.participants
                    .iter()
                    .all(|p| p.identity.starts_with("@carol")),
                "leak: {u:?}"
            );
        }
        assert!(!matches!(event, Event::Rtp | Event::Data(_)));
    }

    // Alice leaves: Bob is told promptly.
    alice
        .send
        .send(Req::Leave(proto::LeaveRequest::default()))
        .unwrap();
    bob.wait_for("alice's leave", |e| matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| p.identity == "@alice:localhost:A" && p.state == proto::participant_info::State::Disconnected as i32)))
        .await;
    writer.abort();
}
