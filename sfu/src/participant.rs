//! One participant's media session: its two peer connections (publisher: the client
//! offers; subscriber: the SFU offers), trickle ICE, renegotiation, subscriptions and
//! server-side data channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use livekit_protocol as proto;
use proto::signal_response::Message;
use tokio::sync::{mpsc, Notify};
use webrtc::api::API;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;

use crate::auth::Grant;
use crate::media::{
    new_peer_connection, sends_ssrc, sent_encodings, wants_keyframe, DownTrack, PublishedTrack,
};
use crate::out_track::OutTrack;

/// Label of the ordered, reliable data channel.
pub const RELIABLE: &str = "_reliable";
/// Label of the unordered, no-retransmit data channel.
pub const LOSSY: &str = "_lossy";

/// How long an answer waits for webrtc-rs to start the receivers of a renegotiation.
const RECEIVER_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How often it looks.
const RECEIVER_START_POLL: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Default)]
struct Negotiation {
    /// An offer is out and its answer has not come back.
    in_flight: bool,
    /// Something changed while an offer was out: offer again after the answer.
    again: bool,
    /// The down-tracks the offer out carries: their packets flow once it is answered.
    offered: Vec<(Arc<OutTrack>, Weak<PublishedTrack>)>,
}

/// A subscribed track: its sender on the subscriber connection, the local track that
/// feeds it and the published track it comes from.
struct Subscription {
    sender: Arc<RTCRtpSender>,
    local: Arc<OutTrack>,
    track: Weak<PublishedTrack>,
}

/// A connected participant's media and outgoing signalling.
pub struct Participant {
    pub sid: String,
    pub grant: Grant,
    /// Subscribe to every track automatically (`auto_subscribe` query parameter, default
    /// true); otherwise only what `UpdateSubscription` asks for.
    pub auto_subscribe: bool,
    tx: mpsc::UnboundedSender<proto::SignalResponse>,
    pub publisher: Arc<RTCPeerConnection>,
    pub subscriber: Arc<RTCPeerConnection>,
    reliable: Arc<RTCDataChannel>,
    lossy: Arc<RTCDataChannel>,
    negotiation: tokio::sync::Mutex<Negotiation>,
    /// Remote candidates that arrived before the remote description: [publisher, subscriber].
    early_candidates: Mutex<[Vec<RTCIceCandidateInit>; 2]>,
    next_offer_id: AtomicU32,
    /// Track sid → its subscription on the subscriber connection.
    subscriptions: tokio::sync::Mutex<HashMap<String, Subscription>>,
    /// Woken when the participant must be dropped (connection failed, replaced, kicked).
    pub disconnect: Notify,
}

impl Participant {
    /// Creates both peer connections and the SFU's data channels on the subscriber side.
    pub async fn new(
        api: &API,
        sid: String,
        grant: Grant,
        auto_subscribe: bool,
        tx: mpsc::UnboundedSender<proto::SignalResponse>,
    ) -> Result<Arc<Participant>, webrtc::Error> {
        let publisher = new_peer_connection(api).await?;
        let subscriber = new_peer_connection(api).await?;
        let reliable = subscriber
            .create_data_channel(
                RELIABLE,
                Some(RTCDataChannelInit {
                    ordered: Some(true),
                    ..Default::default()
                }),
            )
            .await?;
        let lossy = subscriber
            .create_data_channel(
                LOSSY,
                Some(RTCDataChannelInit {
                    ordered: Some(false),
                    max_retransmits: Some(0),
                    ..Default::default()
                }),
            )
            .await?;
        let participant = Arc::new(Participant {
            sid,
            grant,
            auto_subscribe,
            tx,
            publisher,
            subscriber,
            reliable,
            lossy,
            negotiation: tokio::sync::Mutex::new(Negotiation::default()),
            early_candidates: Mutex::new([Vec::new(), Vec::new()]),
            next_offer_id: AtomicU32::new(1),
            subscriptions: tokio::sync::Mutex::new(HashMap::new()),
            disconnect: Notify::new(),
        });
        participant.wire_candidates();
        Ok(participant)
    }

    /// Sends a signalling message to this participant's socket.
    pub fn send(&self, message: Message) {
        // A closed channel means the session is ending; nothing left to tell.
        let _ = self.tx.send(proto::SignalResponse {
            message: Some(message),
        });
    }

    fn wire_candidates(self: &Arc<Self>) {
        for (pc, target) in [
            (&self.publisher, proto::SignalTarget::Publisher),
            (&self.subscriber, proto::SignalTarget::Subscriber),
        ] {
            let tx = self.tx.clone();
            pc.on_ice_candidate(Box::new(move |candidate| {
                let tx = tx.clone();
                Box::pin(async move {
                    let Some(candidate) = candidate else {
                        return;
                    };
                    let Ok(init) = candidate.to_json() else {
                        return;
                    };
                    let Ok(json) = serde_json::to_string(&init) else {
                        return;
                    };
                    let _ = tx.send(proto::SignalResponse {
                        message: Some(Message::Trickle(proto::TrickleRequest {
                            candidate_init: json,
                            target: target as i32,
                            r#final: false,
                        })),
                    });
                })
            }));
            let weak = Arc::downgrade(self);
            pc.on_peer_connection_state_change(Box::new(move |state| {
                let weak = weak.clone();
                Box::pin(async move {
                    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
                    if state == S::Failed {
                        if let Some(p) = weak.upgrade() {
                            tracing::info!(participant = %p.sid, ?target, "peer connection failed");
                            p.disconnect.notify_one();
                        }
                    }
                })
            }));
        }
    }

    /// Answers the client's offer on the publisher connection.
    pub async fn handle_offer(
        &self,
        offer: proto::SessionDescription,
    ) -> Result<(), webrtc::Error> {
        let renegotiation = self.publisher.current_local_description().await.is_some();
        let expected = sent_encodings(&offer.sdp);
        let desc = RTCSessionDescription::offer(offer.sdp)?;
        self.publisher.set_remote_description(desc).await?;
        self.flush_candidates(proto::SignalTarget::Publisher).await;
        let answer = self.publisher.create_answer(None).await?;
        self.publisher.set_local_description(answer).await?;
        if renegotiation {
            // webrtc-rs starts the receivers for the new offer in a queued task after
            // set_local_description returns. Media that a browser sends as soon as it has our
            // answer and that arrives before then is taken for an undeclared stream: webrtc-rs
            // probes it, fails, and closes the very SRTP stream the receiver then reads, so
            // the track ends at once (or, for simulcast, a layer is lost). Answer only once
            // the receivers are up. (On the first negotiation they start only after ICE and
            // DTLS, which need the answer; livekit-client publishes by renegotiation.)
            self.await_receivers(&expected).await;
        }
        let Some(local) = self.publisher.local_description().await else {
            return Err(webrtc::Error::new("no local description".into()));
        };
        self.send(Message::Answer(proto::SessionDescription {
            r#type: "answer".into(),
            sdp: local.sdp,
            id: offer.id,
            ..Default::default()
        }));
        Ok(())
    }

    /// Waits (at most [`RECEIVER_START_LIMIT`]) until the publisher connection's receivers
    /// have a track for every encoding the client's offer declared (see [`sent_encodings`]).
    async fn await_receivers(&self, expected: &HashMap<String, usize>) {
        let deadline = tokio::time::Instant::now() + RECEIVER_START_LIMIT;
        loop {
            let mut missing = Vec::new();
            for t in self.publisher.get_transceivers().await {
                let Some(mid) = t.mid() else { continue };
                let Some(&wanted) = expected.get(mid.as_str()) else {
                    continue;
                };
                if t.receiver().await.tracks().await.len() < wanted {
                    missing.push(mid);
                }
            }
            if missing.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(participant = %self.sid, ?missing, "receivers not started in time; answering anyway");
                return;
            }
            tokio::time::sleep(RECEIVER_START_POLL).await;
        }
    }

    /// Applies the client's answer to our subscriber offer; offers again if needed.
    pub async fn handle_answer(
        self: &Arc<Self>,
        answer: proto::SessionDescription,
    ) -> Result<(), webrtc::Error> {
        let desc = RTCSessionDescription::answer(answer.sdp)?;
        let result = self.subscriber.set_remote_description(desc).await;
        self.flush_candidates(proto::SignalTarget::Subscriber).await;
        let (again, offered) = {
            let mut neg = self.negotiation.lock().await;
            neg.in_flight = false;
            (
                std::mem::take(&mut neg.again),
                std::mem::take(&mut neg.offered),
            )
        };
        if result.is_ok() {
            // The subscriber knows these tracks now: let them flow, from a key frame.
            for (local, track) in offered {
                local.set_negotiated();
                if let Some(track) = track.upgrade() {
                    track.request_keyframe_for(&self.sid).await;
                }
            }
        }
        if again {
            self.negotiate().await;
        }
        result
    }

    /// Sends a new subscriber offer (or remembers to, when one is already out).
    pub async fn negotiate(&self) {
        let mut neg = self.negotiation.lock().await;
        if neg.in_flight {
            neg.again = true;
            return;
        }
        // Every down-track added so far is in the offer made next (one added meanwhile
        // waits for the offer after).
        let offered: Vec<_> = self
            .subscriptions
            .lock()
            .await
            .values()
            .map(|s| (s.local.clone(), s.track.clone()))
            .collect();
        match self.make_offer().await {
            Ok(offer) => {
                neg.in_flight = true;
                neg.offered = offered;
                self.send(Message::Offer(offer));
            }
            Err(e) => {
                tracing::warn!(participant = %self.sid, error = %e, "subscriber offer failed")
            }
        }
    }

    async fn make_offer(&self) -> Result<proto::SessionDescription, webrtc::Error> {
        let offer = self.subscriber.create_offer(None).await?;
        self.subscriber.set_local_description(offer).await?;
        let Some(local) = self.subscriber.local_description().await else {
            return Err(webrtc::Error::new("no local description".into()));
        };
        Ok(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: local.sdp,
            id: self.next_offer_id.fetch_add(1, Ordering::Relaxed),
            ..Default::default()
        })
    }

    /// Adds a client's trickled candidate (JSON `RTCIceCandidateInit`).
    pub async fn handle_trickle(&self, trickle: &proto::TrickleRequest) {
        let Ok(init) = serde_json::from_str::<RTCIceCandidateInit>(&trickle.candidate_init) else {
            tracing::debug!(participant = %self.sid, "unparsable ICE candidate");
            return;
        };
        let (pc, index) = if trickle.target == proto::SignalTarget::Subscriber as i32 {
            (&self.subscriber, 1)
        } else {
            (&self.publisher, 0)
        };
        if pc.remote_description().await.is_none() {
            if let Ok(mut early) = self.early_candidates.lock() {
                early[index].push(init);
            }
            return;
        }
        if let Err(e) = pc.add_ice_candidate(init).await {
            tracing::debug!(participant = %self.sid, error = %e, "add_ice_candidate failed");
        }
    }

    async fn flush_candidates(&self, target: proto::SignalTarget) {
        let (pc, index) = match target {
            proto::SignalTarget::Subscriber => (&self.subscriber, 1),
            proto::SignalTarget::Publisher => (&self.publisher, 0),
        };
        let pending = match self.early_candidates.lock() {
            Ok(mut early) => std::mem::take(&mut early[index]),
            Err(_) => Vec::new(),
        };
        for init in pending {
            if let Err(e) = pc.add_ice_candidate(init).await {
                tracing::debug!(participant = %self.sid, error = %e, "add_ice_candidate failed");
            }
        }
    }

    /// Starts receiving `track`: adds a down-track to the subscriber connection (stream id
    /// `{publisher sid}|{track sid}`, track id = track sid) and renegotiates. Returns
    /// whether a new subscription was made.
    pub async fn subscribe(self: &Arc<Self>, track: &Arc<PublishedTrack>) -> bool {
        if !self.grant.can_subscribe || track.owner == self.sid {
            return false;
        }
        let mut subs = self.subscriptions.lock().await;
        if subs.contains_key(&track.sid) {
            return false;
        }
        let local = Arc::new(OutTrack::new(
            track.codec.clone(),
            track.sid.clone(),
            format!("{}|{}", track.owner, track.sid),
        ));
        let sender = match self.subscriber.add_track(local.clone()).await {
            Ok(sender) => sender,
            Err(e) => {
                tracing::warn!(participant = %self.sid, track = %track.sid, error = %e, "add_track failed");
                return false;
            }
        };
        subs.insert(
            track.sid.clone(),
            Subscription {
                sender: sender.clone(),
                local: local.clone(),
                track: Arc::downgrade(track),
            },
        );
        drop(subs);
        track.add_down_track(&self.sid, Arc::new(DownTrack::new(local, sender.clone())));
        // Subscriber RTCP: keyframe requests go upstream; reading also drives the
        // interceptors (NACK responder, reports).
        let weak_track = Arc::downgrade(track);
        let subscriber_sid = self.sid.clone();
        tokio::spawn(async move {
            while let Ok((packets, _)) = sender.read_rtcp().await {
                if packets.iter().any(|p| wants_keyframe(p.as_ref())) {
                    let Some(track) = weak_track.upgrade() else {
                        break;
                    };
                    track.request_keyframe_for(&subscriber_sid).await;
                }
            }
        });
        self.negotiate().await;
        track.request_keyframe_for(&self.sid).await;
        true
    }

    /// Stops receiving a track and renegotiates.
    pub async fn unsubscribe(&self, track_sid: &str) {
        let subscription = self.subscriptions.lock().await.remove(track_sid);
        if let Some(Subscription { sender, .. }) = subscription {
            if let Err(e) = self.subscriber.remove_track(&sender).await {
                tracing::debug!(participant = %self.sid, error = %e, "remove_track failed");
            }
            self.negotiate().await;
        }
    }

    /// Sends an encoded `DataPacket` on the SFU's data channel of that kind.
    pub async fn send_data(&self, lossy: bool, data: &Bytes) {
        let channel = if lossy { &self.lossy } else { &self.reliable };
        if let Err(e) = channel.send(data).await {
            tracing::debug!(participant = %self.sid, error = %e, "data channel send failed");
        }
    }

    /// Tells the client to leave with `reason` (its session then ends); with `reconnect`,
    /// to join again at once (LiveKit's `RECONNECT` action).
    pub fn tell_to_leave(&self, reason: proto::DisconnectReason, reconnect: bool) {
        let action = if reconnect {
            proto::leave_request::Action::Reconnect
        } else {
            proto::leave_request::Action::Disconnect
        };
        self.send(Message::Leave(proto::LeaveRequest {
            can_reconnect: reconnect,
            reason: reason as i32,
            action: action as i32,
            regions: None,
        }));
    }

    /// Whether the client still sends `ssrc` on its publisher connection as far as the
    /// SFU can tell: the connection is up and the client's latest offer declares the SSRC
    /// in a section it sends on. A published stream whose reading ended although this
    /// holds was lost on our side, not unpublished (a client unpublishes by renegotiating
    /// the SSRC away, and a leaving client's connection closes).
    pub async fn still_sends(&self, ssrc: u32) -> bool {
        use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
        if self.publisher.connection_state() != S::Connected {
            return false;
        }
        self.publisher
            .current_remote_description()
            .await
            .is_some_and(|offer| sends_ssrc(&offer.sdp, ssrc))
    }

    /// Closes both peer connections.
    pub async fn close(&self) {
        let _ = self.publisher.close().await;
        let _ = self.subscriber.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RtcConfig;
    use std::time::Duration;
    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
    use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;

    async fn offer(p: &Participant, offer: RTCSessionDescription) {
        p.handle_offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.sdp,
            id: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    }

    /// Applies `p`'s answer on `client` and relays candidates both ways, until connected
    /// when asked to.
    async fn finish(
        client: &Arc<RTCPeerConnection>,
        p: &Participant,
        from_sfu: &mut mpsc::UnboundedReceiver<proto::SignalResponse>,
        from_client: &mut mpsc::UnboundedReceiver<String>,
        until_connected: bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut answered = false;
        loop {
            while let Ok(msg) = from_sfu.try_recv() {
                match msg.message {
                    Some(Message::Answer(answer)) => {
                        let desc = RTCSessionDescription::answer(answer.sdp).unwrap();
                        client.set_remote_description(desc).await.unwrap();
                        answered = true;
                    }
                    Some(Message::Trickle(t)) => {
                        let init = serde_json::from_str(&t.candidate_init).unwrap();
                        client.add_ice_candidate(init).await.unwrap();
                    }
                    _ => {}
                }
            }
            while let Ok(candidate_init) = from_client.try_recv() {
                p.handle_trickle(&proto::TrickleRequest {
                    candidate_init,
                    target: proto::SignalTarget::Publisher as i32,
                    r#final: false,
                })
                .await;
            }
            let connected = client.connection_state() == RTCPeerConnectionState::Connected;
            if answered && (connected || !until_connected) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// When a renegotiation adds a track, the answer goes out only once webrtc-rs has
    /// started the receiver for it: a browser sends media as soon as it has the answer.
    /// Single-threaded, so webrtc-rs's queued start cannot sneak in unless `handle_offer`
    /// waits for it.
    #[tokio::test(flavor = "current_thread")]
    async fn renegotiation_answer_waits_for_the_receivers() {
        let config = RtcConfig {
            udp_port: 0,
            udp_port_min: 53000,
            udp_port_max: 53999,
            bind_ip: Some("127.0.0.1".parse().unwrap()),
            ..RtcConfig::default()
        };
        let (api, _) = crate::media::build_api(&config).unwrap();
        let (tx, mut from_sfu) = mpsc::unbounded_channel();
        let grant = Grant {
            identity: "alice".into(),
            issued_at: 0,
            name: String::new(),
            metadata: String::new(),
            room: "room".into(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            hidden: false,
            recorder: false,
        };
        let p = Participant::new(&api, "PA_test".into(), grant, true, tx)
            .await
            .unwrap();

        // The client: like livekit-client, first a connection with only a data channel.
        let client = new_peer_connection(&api).await.unwrap();
        let (candidates, mut from_client) = mpsc::unbounded_channel();
        client.on_ice_candidate(Box::new(move |c| {
            if let Some(json) = c
                .and_then(|c| c.to_json().ok())
                .and_then(|init| serde_json::to_string(&init).ok())
            {
                let _ = candidates.send(json);
            }
            Box::pin(async {})
        }));
        client.create_data_channel(RELIABLE, None).await.unwrap();
        let first = client.create_offer(None).await.unwrap();
        client.set_local_description(first.clone()).await.unwrap();
        offer(&p, first).await;
        finish(&client, &p, &mut from_sfu, &mut from_client, true).await;

        // Then a microphone, by renegotiation.
        let track = Arc::new(
            webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP::new(
                RTCRtpCodecCapability {
                    mime_type: "audio/opus".into(),
                    clock_rate: 48000,
                    channels: 2,
                    ..Default::default()
                },
                "mic".into(),
                "stream".into(),
            ),
        );
        client.add_track(track).await.unwrap();
        let second = client.create_offer(None).await.unwrap();
        client.set_local_description(second.clone()).await.unwrap();
        let audio_mid = sent_encodings(&second.sdp)
            .into_keys()
            .next()
            .expect("the offer declares the microphone");
        offer(&p, second).await;
        // The answer is out (in `from_sfu`); nothing else has run since.
        let mut started = false;
        for t in p.publisher.get_transceivers().await {
            if t.mid().as_deref() == Some(audio_mid.as_str()) {
                started = !t.receiver().await.tracks().await.is_empty();
            }
        }
        assert!(started, "answer sent before the receiver was started");
        finish(&client, &p, &mut from_sfu, &mut from_client, false).await;
        client.close().await.unwrap();
        p.close().await;
    }
}
