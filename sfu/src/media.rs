//! The media plane: webrtc-rs peer connections, one receiver per published track fanning
//! out to one down-track per subscriber, simulcast layer selection and keyframe requests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;

use crate::config::RtcConfig;
use crate::forward::{layer_rank, Codec, Rewriter, Vp8Munger};
use crate::metrics::Metrics;
use crate::out_track::OutTrack;
use crate::speakers::LevelMeter;

/// A layer that sent nothing for this long no longer counts as available.
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// Minimum spacing of keyframe requests we generate for one down-track.
const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// Builds the webrtc-rs API object shared by every peer connection, and the UDP mux its
/// peer connections share when `config.udp_port` is set (close it on shutdown).
pub fn build_api(config: &RtcConfig) -> Result<(API, Option<Arc<UDPMuxDefault>>), webrtc::Error> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    // Simulcast needs the MID and RID header extensions to demultiplex layers.
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
        webrtc::sdp::extmap::SDES_REPAIR_RTP_STREAM_ID_URI,
    ] {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RTPCodecType::Video,
            None,
        )?;
    }
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::AUDIO_LEVEL_URI,
    ] {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RTPCodecType::Audio,
            None,
        )?;
    }
    // Before the default NACK responder, so it only sees the NACKs within budget.
    let mut registry = Registry::new();
    registry.add(Box::new(crate::nack_limit::NackLimitBuilder));
    let registry = register_default_interceptors(registry, &mut media)?;

    let mut settings = SettingEngine::default();
    let mut mux = None;
    if config.udp_port == 0 {
        let udp = EphemeralUDP::new(config.udp_port_min, config.udp_port_max)
            .map_err(|e| webrtc::Error::new(e.to_string()))?;
        settings.set_udp_network(UDPNetwork::Ephemeral(udp));
    } else {
        let socket = bind_mux_socket(config)?;
        // The socket is of one address family: candidates of the other could not be reached.
        settings.set_network_types(vec![if config.bind_ip.is_none_or(|ip| ip.is_ipv4()) {
            NetworkType::Udp4
        } else {
            NetworkType::Udp6
        }]);
        let udp_mux = UDPMuxDefault::new(UDPMuxParams::new(socket));
        settings.set_udp_network(UDPNetwork::Muxed(udp_mux.clone()));
        mux = Some(udp_mux);
    }
    if let Some(bind) = config.bind_ip {
        settings.set_ip_filter(Box::new(move |ip| ip == bind));
        if bind.is_loopback() {
            settings.set_include_loopback_candidate(true);
        }
    }
    if let Some(external) = config.external_ip {
        settings.set_nat_1to1_ips(vec![external.to_string()], RTCIceCandidateType::Host);
    }
    // mDNS candidates from browsers cannot be resolved by an SFU on another host.
    settings.set_ice_multicast_dns_mode(webrtc::ice::mdns::MulticastDnsMode::Disabled);

    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    Ok((api, mux))
}

/// Binds the muxed media socket: `bind_ip` (or every IPv4 address) on `udp_port`. Needs a
/// tokio runtime (the mux reads on a task of its own).
fn bind_mux_socket(config: &RtcConfig) -> Result<tokio::net::UdpSocket, webrtc::Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(webrtc::Error::new(
            "the UDP mux must be started inside a tokio runtime".into(),
        ));
    }
    let ip = config
        .bind_ip
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, config.udp_port);
    let socket = std::net::UdpSocket::bind(addr)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(tokio::net::UdpSocket::from_std)
        .map_err(|e| webrtc::Error::new(format!("binding the media port udp/{addr}: {e}")))?;
    Ok(socket)
}

/// A new peer connection without ICE servers (the SFU is reachable directly).
pub async fn new_peer_connection(api: &API) -> Result<Arc<RTCPeerConnection>, webrtc::Error> {
    Ok(Arc::new(
        api.new_peer_connection(RTCConfiguration::default()).await?,
    ))
}

/// What a client's offer says it will send on the publisher connection: for each media
/// section the client sends on (`sendrecv`/`sendonly`, not rejected, not data), its mid and
/// how many encodings it declared — simulcast RIDs (`a=rid:… send`) or primary SSRCs
/// (`a=ssrc` minus the repair SSRCs of `a=ssrc-group:FID`), whichever is more. Sections
/// that declare neither are left out: their streams are found from the packets.
pub fn sent_encodings(sdp: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for section in sending_sections(sdp) {
        let primaries = section
            .ssrcs
            .iter()
            .filter(|s| !section.repairs.contains(s))
            .count();
        let encodings = section.rids.max(primaries);
        if let (Some(mid), 1..) = (section.mid, encodings) {
            out.insert(mid, encodings);
        }
    }
    out
}

/// Whether a client's offer declares `ssrc` (`a=ssrc:`) in a media section it sends on.
pub fn sends_ssrc(sdp: &str, ssrc: u32) -> bool {
    let ssrc = ssrc.to_string();
    sending_sections(sdp)
        .iter()
        .any(|section| section.ssrcs.contains(&ssrc.as_str()))
}

/// A media section of an offer that its sender sends on.
struct SendingSection<'a> {
    mid: Option<String>,
    /// Simulcast RIDs it sends.
    rids: usize,
    /// Every SSRC of its `a=ssrc` lines, once each.
    ssrcs: Vec<&'a str>,
    /// The repair SSRCs of its `a=ssrc-group:FID` lines.
    repairs: Vec<&'a str>,
}

/// The media sections of `sdp` that its sender sends on (`sendrecv`, the default, or
/// `sendonly`; not rejected, not data).
fn sending_sections(sdp: &str) -> Vec<SendingSection<'_>> {
    let mut out = Vec::new();
    for section in sdp.split("\nm=").skip(1) {
        let mut lines = section.lines().map(str::trim_end);
        let media_line = lines.next().unwrap_or_default();
        let mut fields = media_line.split_whitespace();
        let (kind, port) = (fields.next(), fields.next());
        if kind == Some("application") || port == Some("0") {
            continue;
        }
        let mut sends = true; // sendrecv is the default
        let mut found = SendingSection {
            mid: None,
            rids: 0,
            ssrcs: Vec::new(),
            repairs: Vec::new(),
        };
        for line in lines {
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            match attr {
                "recvonly" | "inactive" => sends = false,
                "sendrecv" | "sendonly" => sends = true,
                _ => {}
            }
            if let Some(value) = attr.strip_prefix("mid:") {
                found.mid = Some(value.trim().to_owned());
            } else if let Some(value) = attr.strip_prefix("rid:") {
                if value.split_whitespace().nth(1) == Some("send") {
                    found.rids += 1;
                }
            } else if let Some(value) = attr.strip_prefix("ssrc-group:FID ") {
                found.repairs.extend(value.split_whitespace().skip(1));
            } else if let Some(value) = attr.strip_prefix("ssrc:") {
                if let Some(ssrc) = value.split_whitespace().next() {
                    if !found.ssrcs.contains(&ssrc) {
                        found.ssrcs.push(ssrc);
                    }
                }
            }
        }
        if sends {
            out.push(found);
        }
    }
    out
}

/// One simulcast layer (or the only layer) of a published track.
#[derive(Debug)]
struct Layer {
    rid: String,
    ssrc: u32,
    last_seen: Instant,
}

/// What one subscriber receives of a published track.
pub struct DownTrack {
    pub local: Arc<OutTrack>,
    pub sender: Arc<RTCRtpSender>,
    state: Mutex<DownState>,
}

struct DownState {
    /// SSRC of the layer being forwarded.
    current: Option<u32>,
    rewriter: Rewriter,
    vp8: Vp8Munger,
    last_out: Option<Instant>,
    last_pli: Option<Instant>,
    /// Subscriber asked for no media (UpdateTrackSettings.disabled).
    paused: bool,
    /// Best simulcast layer rank this subscriber wants (see [`layer_rank`]).
    max_rank: u8,
}

impl Default for DownState {
    fn default() -> Self {
        DownState {
            current: None,
            rewriter: Rewriter::default(),
            vp8: Vp8Munger::default(),
            last_out: None,
            last_pli: None,
            paused: false,
            max_rank: u8::MAX,
        }
    }
}

impl DownState {
    fn resync(&mut self) {
        self.current = None;
        self.rewriter.resync();
        self.vp8.resync();
    }
}

impl DownTrack {
    pub fn new(local: Arc<OutTrack>, sender: Arc<RTCRtpSender>) -> DownTrack {
        DownTrack {
            local,
            sender,
            state: Mutex::new(DownState::default()),
        }
    }

    /// Stops or resumes forwarding to this subscriber; resuming waits for a keyframe.
    pub fn set_paused(&self, paused: bool) {
        if let Ok(mut st) = self.state.lock() {
            let resume = st.paused && !paused;
            st.paused = paused;
            if resume {
                st.resync();
            }
        }
    }

    /// Restarts forwarding after packets were withheld: waits for a keyframe and continues
    /// the numbering without a gap.
    fn resync(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.resync();
        }
    }

    /// Limits the simulcast layers forwarded to this subscriber to rank `max_rank`.
    pub fn set_max_rank(&self, max_rank: u8) {
        if let Ok(mut st) = self.state.lock() {
            st.max_rank = max_rank;
        }
    }

    fn current(&self) -> Option<u32> {
        self.state.lock().ok().and_then(|st| st.current)
    }
}

/// A published track: its layers, mute state and subscribers.
pub struct PublishedTrack {
    pub sid: String,
    /// Sid of the publishing participant.
    pub owner: String,
    pub kind: RTPCodecType,
    pub codec: RTCRtpCodecCapability,
    /// What the forwarder knows of `codec`'s payload format.
    payload_format: Codec,
    publisher: Weak<RTCPeerConnection>,
    muted: AtomicBool,
    layers: Mutex<Vec<Layer>>,
    /// Announced simulcast layers as (rank, width, height).
    pub announced: Vec<(u8, u32, u32)>,
    /// Negotiated id of the audio-level header extension, for audio tracks.
    audio_level_ext: Option<u8>,
    meter: Mutex<LevelMeter>,
    metrics: Arc<Metrics>,
    downs: Mutex<HashMap<String, Arc<DownTrack>>>,
}

/// What a forwarding decision needs done besides writing the packet.
enum Verdict {
    Drop,
    Forward(u16, u32),
}

impl PublishedTrack {
    pub fn new(
        sid: String,
        owner: String,
        kind: RTPCodecType,
        codec: RTCRtpCodecCapability,
        publisher: &Arc<RTCPeerConnection>,
        muted: bool,
        announced: Vec<(u8, u32, u32)>,
        audio_level_ext: Option<u8>,
        metrics: Arc<Metrics>,
    ) -> PublishedTrack {
        PublishedTrack {
            sid,
            owner,
            kind,
            payload_format: Codec::from_mime(&codec.mime_type),
            codec,
            publisher: Arc::downgrade(publisher),
            muted: AtomicBool::new(muted),
            layers: Mutex::new(Vec::new()),
            announced,
            audio_level_ext,
            meter: Mutex::new(LevelMeter::default()),
            metrics,
            downs: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a layer (by RID; `""` without simulcast) arriving with `ssrc`.
    pub fn add_layer(&self, rid: &str, ssrc: u32) {
        if let Ok(mut layers) = self.layers.lock() {
            layers.retain(|l| l.rid != rid);
            layers.push(Layer {
                rid: rid.to_owned(),
                ssrc,
                last_seen: Instant::now(),
            });
        }
    }

    /// Forgets a layer whose stream ended; returns whether any layer is left.
    pub fn remove_layer(&self, ssrc: u32) -> bool {
        match self.layers.lock() {
            Ok(mut layers) => {
                layers.retain(|l| l.ssrc != ssrc);
                !layers.is_empty()
            }
            Err(_) => false,
        }
    }

    pub fn is_muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Mutes (stops forwarding) or unmutes; unmuting video waits for a fresh keyframe.
    pub fn set_muted(&self, muted: bool) {
        let was = self.muted.swap(muted, Ordering::Relaxed);
        if was && !muted {
            for down in self.down_tracks() {
                down.resync();
            }
        }
    }

    /// Ends the audio-level window: the speaking level, or `None` when silent or muted.
    pub fn take_level(&self) -> Option<f32> {
        let level = self.meter.lock().ok()?.take();
        level.filter(|_| !self.is_muted())
    }

    pub fn add_down_track(&self, subscriber: &str, down: Arc<DownTrack>) {
        if let Ok(mut downs) = self.downs.lock() {
            downs.insert(subscriber.to_owned(), down);
        }
    }

    pub fn remove_down_track(&self, subscriber: &str) -> Option<Arc<DownTrack>> {
        self.downs
            .lock()
            .ok()
            .and_then(|mut d| d.remove(subscriber))
    }

    pub fn down_track(&self, subscriber: &str) -> Option<Arc<DownTrack>> {
        self.downs
            .lock()
            .ok()
            .and_then(|d| d.get(subscriber).cloned())
    }

    pub fn down_tracks(&self) -> Vec<Arc<DownTrack>> {
        self.downs
            .lock()
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Marks `ssrc` as alive and returns the available layers as (rank, ssrc).
    fn note_packet(&self, ssrc: u32, now: Instant) -> Vec<(u8, u32)> {
        let Ok(mut layers) = self.layers.lock() else {
            return Vec::new();
        };
        if let Some(layer) = layers.iter_mut().find(|l| l.ssrc == ssrc) {
            layer.last_seen = now;
        }
        layers
            .iter()
            .filter(|l| now.duration_since(l.last_seen) < LAYER_IDLE)
            .map(|l| (layer_rank(&l.rid), l.ssrc))
            .collect()
    }

    /// Forwards one RTP packet of layer `ssrc` to every subscriber.
    pub async fn forward(&self, packet: &webrtc::rtp::packet::Packet, ssrc: u32) {
        let now = Instant::now();
        let active = self.note_packet(ssrc, now);
        Metrics::add(&self.metrics.rtp_in, 1);
        if self.is_muted() {
            return;
        }
        if let Some(level) = self
            .audio_level_ext
            .and_then(|id| packet.header.get_extension(id))
            .and_then(|ext| ext.first().copied())
        {
            if let Ok(mut meter) = self.meter.lock() {
                meter.add(level);
            }
        }
        let keyframe = self.payload_format.is_keyframe(&packet.payload);
        let clock_rate = self.codec.clock_rate.max(1);
        let is_vp8 = self.payload_format == Codec::Vp8;
        // What every subscriber gets, before its own numbering.
        let template = subscriber_template(packet);
        let mut request_keyframe: Option<u32> = None;
        for down in self.down_tracks() {
            let (verdict, munged) = match down.state.lock() {
                Ok(mut st) => {
                    let best = pick_layer(&active, st.max_rank).unwrap_or(ssrc);
                    let verdict = decide(
                        &mut st,
                        ssrc,
                        (packet.header.sequence_number, packet.header.timestamp),
                        best,
                        keyframe,
                        clock_rate,
                        now,
                        &mut request_keyframe,
                    );
                    let munged = match verdict {
                        Verdict::Forward(..) if is_vp8 => st.vp8.munge(ssrc, &packet.payload),
                        _ => None,
                    };
                    (verdict, munged)
                }
                Err(_) => (Verdict::Drop, None),
            };
            if let Verdict::Forward(seq, ts) = verdict {
                let mut out = renumbered(&template, seq, ts, munged);
                let bytes = out.payload.len() as u64;
                match down.local.write(&mut out).await {
                    Ok(true) => {
                        Metrics::add(&self.metrics.rtp_out, 1);
                        Metrics::add(&self.metrics.rtp_out_bytes, bytes);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::trace!(track = %self.sid, error = %e, "write to down-track failed")
                    }
                }
            }
        }
        if let Some(ssrc) = request_keyframe {
            self.send_pli(ssrc).await;
        }
    }

    /// Asks the publisher for a keyframe on the layer a subscriber receives (or the best).
    pub async fn request_keyframe_for(&self, subscriber: &str) {
        if self.kind != RTPCodecType::Video {
            return;
        }
        let ssrc = self
            .down_track(subscriber)
            .and_then(|d| d.current())
            .or_else(|| pick_layer(&self.note_packet(0, Instant::now()), u8::MAX));
        if let Some(ssrc) = ssrc {
            self.send_pli(ssrc).await;
        }
    }

    async fn send_pli(&self, media_ssrc: u32) {
        let Some(pc) = self.publisher.upgrade() else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if let Err(e) = pc.write_rtcp(&[Box::new(pli)]).await {
            tracing::debug!(track = %self.sid, error = %e, "sending PLI failed");
        }
    }
}

/// A published packet as every subscriber gets it, before its own numbering: without the
/// publisher's header extensions (their ids mean nothing on the subscriber's connection).
/// The extension padding goes too: webrtc-rs counts a stale one when the down-track adds
/// its own extensions, and the packet then fails to marshal ("marshal_to output size N,
/// but expect N+4") and is never sent.
fn subscriber_template(packet: &webrtc::rtp::packet::Packet) -> webrtc::rtp::packet::Packet {
    webrtc::rtp::packet::Packet {
        header: webrtc::rtp::header::Header {
            version: 2,
            padding: false,
            extension: false,
            marker: packet.header.marker,
            payload_type: packet.header.payload_type,
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            ssrc: packet.header.ssrc,
            csrc: packet.header.csrc.clone(),
            extension_profile: 0,
            extensions: Vec::new(),
            extensions_padding: 0,
        },
        payload: packet.payload.clone(),
    }
}

/// One subscriber's copy of `template`: renumbered, with the munged payload if any.
fn renumbered(
    template: &webrtc::rtp::packet::Packet,
    seq: u16,
    ts: u32,
    munged: Option<Vec<u8>>,
) -> webrtc::rtp::packet::Packet {
    let mut out = template.clone();
    out.header.sequence_number = seq;
    out.header.timestamp = ts;
    if let Some(payload) = munged {
        out.payload = payload.into();
    }
    out
}

/// Chooses what to do with a packet of layer `ssrc` for one subscriber.
#[allow(clippy::too_many_arguments)]
fn decide(
    st: &mut DownState,
    ssrc: u32,
    rtp: (u16, u32),
    best: u32,
    keyframe: Option<bool>,
    clock_rate: u32,
    now: Instant,
    request_keyframe: &mut Option<u32>,
) -> Verdict {
    if st.paused {
        return Verdict::Drop;
    }
    let mut want_pli = |st: &mut DownState, target: u32| {
        if st
            .last_pli
            .is_none_or(|t| now.duration_since(t) >= PLI_INTERVAL)
        {
            st.last_pli = Some(now);
            *request_keyframe = Some(target);
        }
    };
    if st.current == Some(ssrc) {
        if best != ssrc {
            // A better (or the only remaining) layer exists: ask for a keyframe on it.
            want_pli(st, best);
        }
    } else if ssrc == best {
        if keyframe == Some(false) {
            want_pli(st, ssrc);
            return Verdict::Drop;
        }
        st.current = Some(ssrc);
    } else {
        return Verdict::Drop;
    }
    let gap = st
        .last_out
        .map(|t| {
            let ms = now.duration_since(t).as_millis().min(10_000) as u64;
            (ms * u64::from(clock_rate) / 1000) as u32
        })
        .unwrap_or(1);
    st.last_out = Some(now);
    let (seq, ts) = st.rewriter.rewrite(ssrc, rtp.0, rtp.1, gap);
    Verdict::Forward(seq, ts)
}

/// The layer to forward from the available `(rank, ssrc)` layers: the best one not above
/// `max_rank`, or the lowest one when all are above it.
pub fn pick_layer(active: &[(u8, u32)], max_rank: u8) -> Option<u32> {
    active
        .iter()
        .filter(|(rank, _)| *rank <= max_rank)
        .max_by_key(|(rank, _)| *rank)
        .or_else(|| active.iter().min_by_key(|(rank, _)| *rank))
        .map(|(_, ssrc)| *ssrc)
}

/// The highest layer rank worth sending to a subscriber asking for `settings`, given the
/// track's announced layers: the smallest layer at least as wide/high as the requested
/// size, or the requested quality.
pub fn max_rank_for(
    settings: &livekit_protocol::UpdateTrackSettings,
    layers: &[(u8, u32, u32)],
) -> u8 {
    if settings.width > 0 || settings.height > 0 {
        let mut sorted: Vec<&(u8, u32, u32)> = layers.iter().collect();
        sorted.sort_by_key(|(rank, _, _)| *rank);
        return sorted
            .iter()
            .find(|(_, w, h)| *w >= settings.width && *h >= settings.height)
            .or(sorted.last())
            .map(|(rank, _, _)| *rank)
            .unwrap_or(u8::MAX);
    }
    match settings.quality {
        0 => 1, // LOW
        1 => 2, // MEDIUM
        _ => u8::MAX,
    }
}

/// Whether an RTCP packet from a subscriber asks for a keyframe.
pub fn wants_keyframe(packet: &(dyn webrtc::rtcp::packet::Packet + Send + Sync)) -> bool {
    let any = packet.as_any();
    any.downcast_ref::<PictureLossIndication>().is_some()
        || any.downcast_ref::<FullIntraRequest>().is_some()
}

#[cfg(test)]
mod tests;
