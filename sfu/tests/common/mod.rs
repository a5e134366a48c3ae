//! Test helpers: an in-process SFU on loopback and a webrtc-rs client speaking LiveKit's
//! signalling (two peer connections, trickle ICE, answering the SFU's offers).

#![allow(dead_code)] // each test crate uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpHeaderExtensionCapability, RTPCodecType};

pub const KEY: &str = "testkey";
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const ADMIN: &str = "admin-secret";
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn start_sfu() -> SocketAddr {
    start_sfu_with_handle().await.0
}

/// Starts the SFU and also returns it, for tests that drive it directly.
pub async fn start_sfu_with_handle() -> (SocketAddr, Arc<Sfu>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    tokio::spawn(myelin_sfu::serve(sfu.clone(), listener));
    (addr, sfu)
}

pub fn token(identity: &str, room: &str) -> String {
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
pub async fn http(
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

/// A browser-style request from another origin (`extra` is more header lines, each ending
/// in CRLF); returns (status, lower-cased response head).
pub async fn http_from_origin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nOrigin: http://app.example\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let head = response
        .split_once("\r\n\r\n")
        .map_or(response.as_str(), |(h, _)| h)
        .to_ascii_lowercase();
    (status, head)
}

pub fn client_api() -> API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
    ] {
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                RTPCodecType::Video,
                None,
            )
            .unwrap();
    }
    media
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: webrtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
            },
            RTPCodecType::Audio,
            None,
        )
        .unwrap();
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
pub enum Event {
    Signal(Resp),
    /// An RTP packet on the subscriber connection.
    Rtp {
        track_id: String,
        stream_id: String,
        seq: u16,
        ts: u32,
        payload: bytes::Bytes,
    },
    Data(proto::DataPacket),
}

pub struct Client {
    pub join: proto::JoinResponse,
    pub publisher: Arc<RTCPeerConnection>,
    pub send: mpsc::UnboundedSender<Req>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Events received but not yet matched by a `wait_for`, in arrival order.
    backlog: std::collections::VecDeque<Event>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, identity: &str, room: &str) -> Client {
        Self::connect_with(addr, identity, room, "").await
    }

    /// Connects with extra query parameters (e.g. `&auto_subscribe=0`).
    pub async fn connect_with(addr: SocketAddr, identity: &str, room: &str, extra: &str) -> Client {
        let url = format!(
            "ws://{addr}/rtc?access_token={}&protocol=16{extra}",
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

        let writer = tokio::spawn(async move {
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
                    while let Ok((packet, _)) = track.read_rtp().await {
                        let event = Event::Rtp {
                            track_id: track.id(),
                            stream_id: track.stream_id(),
                            seq: packet.header.sequence_number,
                            ts: packet.header.timestamp,
                            payload: packet.payload,
                        };
                        if ev.send(event).is_err() {
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
        let reader = tokio::spawn(async move {
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
                        // webrtc-rs starts its receivers in a queued task after
                        // set_local_description returns; media that arrives before that is
                        // lost for good (a browser applies the description at once). Give the
                        // queue a moment before letting the SFU start sending.
                        tokio::time::sleep(Duration::from_millis(100)).await;
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
            backlog: std::collections::VecDeque::new(),
            tasks: vec![writer, reader],
        }
    }

    /// Drops the signalling socket without a leave, as a crashed client would.
    pub fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Takes every event received so far (queued or not yet matched).
    pub fn drain(&mut self) -> Vec<Event> {
        let mut events: Vec<Event> = self.backlog.drain(..).collect();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }

    /// Waits for the first event matching `pred`; others stay queued for later waits.
    pub async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            if let Some(event) = self.backlog.remove(i) {
                return event;
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(event)) => self.backlog.push_back(event),
                Ok(None) => panic!("client closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Publishes an Opus track (synthetic packets every 20 ms, for about 30 s) and returns
    /// its track sid and the writer task.
    pub async fn publish_audio(&mut self, cid: &str) -> (String, tokio::task::JoinHandle<()>) {
        use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
        use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
        use webrtc::track::track_local::TrackLocalWriter;
        let track = Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                ..Default::default()
            },
            cid.into(),
            format!("stream-{cid}"),
        ));
        self.publisher.add_track(track.clone()).await.unwrap();
        self.send
            .send(Req::AddTrack(proto::AddTrackRequest {
                cid: cid.into(),
                r#type: proto::TrackType::Audio as i32,
                ..Default::default()
            }))
            .unwrap();
        let published = self
            .wait_for("track published", |e| {
                matches!(e, Event::Signal(Resp::TrackPublished(_)))
            })
            .await;
        let Event::Signal(Resp::TrackPublished(published)) = published else {
            unreachable!()
        };
        self.negotiate_publisher().await;
        let writer = tokio::spawn(async move {
            let mut packet = webrtc::rtp::packet::Packet::default();
            packet.header.version = 2;
            packet.header.payload_type = 111;
            packet.payload = bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]);
            for i in 0..1500u32 {
                packet.header.sequence_number = i as u16;
                packet.header.timestamp = i * 960;
                let _ = track.write_rtp(&packet).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (published.track.map(|t| t.sid).unwrap_or_default(), writer)
    }

    /// Like livekit-client after joining: opens the publisher connection with just the
    /// data channels, and waits until it is connected. Tracks are then added by
    /// renegotiation.
    pub async fn connect_publisher(&self) {
        use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
        self.publisher
            .create_data_channel("_reliable", None)
            .await
            .unwrap();
        self.negotiate_publisher().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.publisher.connection_state() != RTCPeerConnectionState::Connected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publisher never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn negotiate_publisher(&self) {
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
