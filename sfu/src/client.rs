//! A webrtc-rs client speaking LiveKit's signalling, for tests and the load tool (feature
//! `client`): one signalling WebSocket, two peer connections (publisher: we offer;
//! subscriber: the SFU offers and we answer), trickle ICE both ways, pings.
//!
//! Everything the client observes arrives as an [`Event`] on [`Client::events`]; RTP of
//! subscribed tracks can instead go to a callback ([`ConnectOptions::on_rtp`]) when the
//! packet rate is too high to queue every packet.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_remote::TrackRemote;

use crate::auth::{now_secs, sign_token, Claims, VideoGrant};

/// How long [`Client::wait_for`] and the connection helpers wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// Why the client could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("signalling socket: {0}")]
    Socket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    #[error("token: {0}")]
    Token(#[from] crate::auth::AuthError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection closed while waiting for {0}")]
    Closed(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::Socket(Box::new(e))
    }
}

/// Mints a LiveKit access token (HS256) granting `identity` to join, publish, subscribe
/// and send data in `room` for `ttl_secs`.
pub fn mint_token(
    api_key: &str,
    api_secret: &str,
    identity: &str,
    room: &str,
    ttl_secs: u64,
) -> Result<String, ClientError> {
    let now = now_secs();
    Ok(sign_token(
        &Claims {
            iss: api_key.into(),
            sub: identity.into(),
            exp: now + ttl_secs,
            nbf: Some(now),
            name: None,
            metadata: None,
            video: VideoGrant {
                room_join: true,
                room: room.into(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                ..Default::default()
            },
        },
        api_secret,
    )?)
}

/// The webrtc-rs API for clients: default codecs, the MID/RID and audio-level header
/// extensions, default interceptors (NACK, reports, TWCC), loopback candidates only.
pub fn client_api() -> Result<API, ClientError> {
    client_api_with(false, false)
}

/// [`client_api`], optionally without SRTP replay protection, so that packets received
/// twice (an SFU's NACK answers) reach the application, and optionally gathering
/// candidates on every interface rather than loopback only.
fn client_api_with(keep_duplicates: bool, any_interface: bool) -> Result<API, ClientError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
    ] {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RTPCodecType::Video,
            None,
        )?;
    }
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: webrtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
        },
        RTPCodecType::Audio,
        None,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    if !any_interface {
        settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    }
    settings.disable_srtp_replay_protection(keep_duplicates);
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

/// Called with the id of the subscribed track and each RTP packet read from it.
pub type RtpCallback = Arc<dyn Fn(&str, &webrtc::rtp::packet::Packet) + Send + Sync>;

/// Called with each subscribed remote track, which the callee then reads itself.
pub type TrackCallback = Arc<dyn Fn(Arc<TrackRemote>) + Send + Sync>;

/// How to connect.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Extra query parameters for `/rtc`, e.g. `&auto_subscribe=0`.
    pub query: String,
    /// Receives subscriber RTP instead of the event queue.
    pub on_rtp: Option<RtpCallback>,
    /// Receives each subscribed track instead of the client reading it (takes precedence
    /// over `on_rtp`).
    pub on_track: Option<TrackCallback>,
    /// Gather ICE candidates on every interface, not only loopback (a client reaching an
    /// SFU on another address).
    pub any_interface: bool,
    /// Only relayed candidates (ICE transport policy `relay`): media must go through a
    /// TURN server of the join response.
    pub relay_only: bool,
    /// Deliver RTP packets received twice (no SRTP replay protection), e.g. to see
    /// retransmissions.
    pub keep_duplicates: bool,
}

/// What the client observed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few hundred events at most; RTP can bypass them
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
    /// The signalling socket closed (the last event of a session).
    SocketClosed,
}

/// A connected LiveKit participant.
pub struct Client {
    pub join: proto::JoinResponse,
    pub publisher: Arc<RTCPeerConnection>,
    pub subscriber: Arc<RTCPeerConnection>,
    /// Signalling requests to send.
    pub send: mpsc::UnboundedSender<Req>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Events received but not yet matched by a `wait_for`, in arrival order.
    backlog: VecDeque<Event>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    next_offer_id: u32,
}

impl Client {
    /// Connects to `ws://{addr}/rtc` with `token` (see [`mint_token`]).
    pub async fn connect(base_url: &str, token: &str) -> Result<Client, ClientError> {
        Self::connect_with(base_url, token, ConnectOptions::default()).await
    }

    /// Connects with options. `base_url` is the SFU's `ws://host:port` (no path).
    pub async fn connect_with(
        base_url: &str,
        token: &str,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let url = format!(
            "{}/rtc?access_token={token}&protocol=16{}",
            base_url.trim_end_matches('/'),
            options.query
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut ws_tx, mut ws_rx) = ws.split();
        let first = tokio::time::timeout(WAIT, ws_rx.next())
            .await
            .map_err(|_| ClientError::Timeout("the join response".into()))?
            .ok_or_else(|| ClientError::Closed("the join response".into()))??;
        let join = match proto::SignalResponse::decode(first.into_data().as_ref())
            .map_err(|e| ClientError::Protocol(format!("undecodable first message: {e}")))?
            .message
        {
            Some(Resp::Join(join)) => join,
            other => {
                return Err(ClientError::Protocol(format!(
                    "first message is not a join: {other:?}"
                )))
            }
        };

        let api = client_api_with(options.keep_duplicates, options.any_interface)?;
        // Like livekit-client: the join response's ICE servers.
        let rtc_config = || RTCConfiguration {
            ice_servers: join
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            ice_transport_policy: if options.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            ..Default::default()
        };
        let publisher = Arc::new(api.new_peer_connection(rtc_config()).await?);
        let subscriber = Arc::new(api.new_peer_connection(rtc_config()).await?);
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
        let ping_every = Duration::from_secs(u64::from(join.ping_interval.clamp(1, 60) as u32));
        let ping_send = send.clone();
        let pinger = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ping_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                if ping_send.send(Req::Ping(now_ms)).is_err() {
                    break;
                }
            }
        });
        for (pc, target) in [(&publisher, 0), (&subscriber, 1)] {
            let send = send.clone();
            pc.on_ice_candidate(Box::new(move |c| {
                let send = send.clone();
                Box::pin(async move {
                    let Some(json) = c
                        .and_then(|c| c.to_json().ok())
                        .and_then(|init| serde_json::to_string(&init).ok())
                    else {
                        return;
                    };
                    let _ = send.send(Req::Trickle(proto::TrickleRequest {
                        candidate_init: json,
                        target,
                        r#final: false,
                    }));
                })
            }));
        }
        let ev = events_tx.clone();
        let on_rtp = options.on_rtp.clone();
        let on_track = options.on_track.clone();
        subscriber.on_track(Box::new(move |track, _, _| {
            let ev = ev.clone();
            let on_rtp = on_rtp.clone();
            if let Some(on_track) = &on_track {
                on_track(track);
                return Box::pin(async {});
            }
            Box::pin(async move {
                tokio::spawn(async move {
                    let (track_id, stream_id) = (track.id(), track.stream_id());
                    while let Ok((packet, _)) = track.read_rtp().await {
                        if let Some(on_rtp) = &on_rtp {
                            on_rtp(&track_id, &packet);
                            continue;
                        }
                        let event = Event::Rtp {
                            track_id: track_id.clone(),
                            stream_id: stream_id.clone(),
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
                let Ok(proto::SignalResponse {
                    message: Some(resp),
                }) = proto::SignalResponse::decode(data.as_ref())
                else {
                    continue;
                };
                let handled = match &resp {
                    Resp::Offer(offer) => answer_offer(&pc_sub, offer, &send2).await,
                    Resp::Answer(answer) => match RTCSessionDescription::answer(answer.sdp.clone())
                    {
                        Ok(desc) => pc_pub.set_remote_description(desc).await,
                        Err(e) => Err(e),
                    },
                    Resp::Trickle(t) => {
                        if let Ok(init) =
                            serde_json::from_str::<RTCIceCandidateInit>(&t.candidate_init)
                        {
                            let pc = if t.target == 1 { &pc_sub } else { &pc_pub };
                            let _ = pc.add_ice_candidate(init).await;
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = handled {
                    tracing::warn!(error = %e, "client: applying a signalling message failed");
                }
                if events_tx.send(Event::Signal(resp)).is_err() {
                    break;
                }
            }
            let _ = events_tx.send(Event::SocketClosed);
        });
        Ok(Client {
            join,
            publisher,
            subscriber,
            send,
            events,
            backlog: VecDeque::new(),
            tasks: vec![writer, reader, pinger],
            next_offer_id: 1,
        })
    }

    /// This participant's sid (`PA_…`).
    pub fn sid(&self) -> &str {
        self.join
            .participant
            .as_ref()
            .map(|p| p.sid.as_str())
            .unwrap_or_default()
    }

    /// Drops the signalling socket without a leave, as a crashed client would.
    pub fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Leaves politely: sends `LeaveRequest`, closes both peer connections and the socket.
    pub async fn close(self) {
        let _ = self.send.send(Req::Leave(proto::LeaveRequest {
            can_reconnect: false,
            reason: proto::DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        }));
        // Let the writer flush the leave.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.publisher.close().await;
        let _ = self.subscriber.close().await;
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
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            if let Some(event) = self.backlog.remove(i) {
                return Ok(event);
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => return Ok(event),
                Ok(Some(event)) => self.backlog.push_back(event),
                Ok(None) => return Err(ClientError::Closed(what.into())),
                Err(_) => return Err(ClientError::Timeout(what.into())),
            }
        }
    }

    /// Adds `track` to the publisher connection and announces it (`AddTrackRequest` with
    /// the track's id as `cid`); returns the track sid and the sender (whose RTCP carries
    /// the SFU's keyframe requests). Call [`Client::negotiate_publisher`] afterwards.
    pub async fn announce_track(
        &mut self,
        track: Arc<TrackLocalStaticRTP>,
        kind: proto::TrackType,
    ) -> Result<(String, Arc<RTCRtpSender>), ClientError> {
        let cid = webrtc::track::track_local::TrackLocal::id(track.as_ref()).to_owned();
        let sender = self.publisher.add_track(track).await?;
        self.send
            .send(Req::AddTrack(proto::AddTrackRequest {
                cid: cid.clone(),
                r#type: kind as i32,
                ..Default::default()
            }))
            .map_err(|_| ClientError::Closed("track published".into()))?;
        let published = self
            .wait_for(
                "track published",
                |e| matches!(e, Event::Signal(Resp::TrackPublished(p)) if p.cid == cid),
            )
            .await?;
        let Event::Signal(Resp::TrackPublished(published)) = published else {
            return Err(ClientError::Protocol("unexpected event".into()));
        };
        let sid = published
            .track
            .map(|t| t.sid)
            .ok_or_else(|| ClientError::Protocol("TrackPublished without a track".into()))?;
        Ok((sid, sender))
    }

    /// Publishes an Opus track (synthetic packets every 20 ms, for about 30 s) and returns
    /// its track sid and the writer task.
    pub async fn publish_audio(
        &mut self,
        cid: &str,
    ) -> Result<(String, tokio::task::JoinHandle<()>), ClientError> {
        let track = Arc::new(TrackLocalStaticRTP::new(
            opus(),
            cid.into(),
            format!("stream-{cid}"),
        ));
        let (sid, _) = self
            .announce_track(track.clone(), proto::TrackType::Audio)
            .await?;
        self.negotiate_publisher().await?;
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
        Ok((sid, writer))
    }

    /// Like livekit-client after joining: opens the publisher connection with just the
    /// data channels, and waits until it is connected. Tracks are then added by
    /// renegotiation.
    pub async fn connect_publisher(&mut self) -> Result<(), ClientError> {
        self.publisher
            .create_data_channel("_reliable", None)
            .await?;
        self.negotiate_publisher().await?;
        self.wait_publisher_connected().await
    }

    /// Waits until the publisher connection is connected.
    pub async fn wait_publisher_connected(&self) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.publisher.connection_state() != RTCPeerConnectionState::Connected {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout("the publisher connection".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Sends a new publisher offer; the answer is applied when it arrives.
    pub async fn negotiate_publisher(&mut self) -> Result<(), ClientError> {
        let offer = self.publisher.create_offer(None).await?;
        self.publisher.set_local_description(offer.clone()).await?;
        let id = self.next_offer_id;
        self.next_offer_id += 1;
        self.send
            .send(Req::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: offer.sdp,
                id,
                ..Default::default()
            }))
            .map_err(|_| ClientError::Closed("sending the offer".into()))
    }
}

/// Opus at 48 kHz, stereo, as browsers offer it.
pub fn opus() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: "audio/opus".into(),
        clock_rate: 48000,
        channels: 2,
        ..Default::default()
    }
}

/// VP8 at 90 kHz.
pub fn vp8() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: "video/VP8".into(),
        clock_rate: 90000,
        ..Default::default()
    }
}

/// How long an answer waits for webrtc-rs to start its receivers (seconds under load:
/// 2 s were too short for 29 peer connections on 2 CPUs, and a track whose first packets
/// beat its receiver never plays).
const RECEIVERS_WAIT: Duration = Duration::from_secs(10);

/// Whether every transceiver that receives has its remote track set up.
async fn receivers_started(pc: &RTCPeerConnection) -> bool {
    for t in pc.get_transceivers().await {
        if t.mid().is_none() || !t.current_direction().has_recv() {
            continue;
        }
        if t.receiver().await.tracks().await.is_empty() {
            return false;
        }
    }
    true
}

/// Applies the SFU's subscriber offer and sends our answer.
async fn answer_offer(
    pc: &RTCPeerConnection,
    offer: &proto::SessionDescription,
    send: &mpsc::UnboundedSender<Req>,
) -> Result<(), webrtc::Error> {
    let renegotiation = pc.current_local_description().await.is_some();
    pc.set_remote_description(RTCSessionDescription::offer(offer.sdp.clone())?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer.clone()).await?;
    // webrtc-rs starts its receivers in a queued task after set_local_description
    // returns; media that arrives before that is lost for good (a browser applies the
    // description at once). Answer only once every receiving transceiver has its track.
    // (On the first negotiation they start only once ICE and DTLS are up, which needs
    // the answer: waiting would only delay it.)
    let deadline = tokio::time::Instant::now() + RECEIVERS_WAIT;
    while renegotiation && !receivers_started(pc).await && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = send.send(Req::Answer(proto::SessionDescription {
        r#type: "answer".into(),
        sdp: answer.sdp,
        id: offer.id,
        ..Default::default()
    }));
    Ok(())
}
