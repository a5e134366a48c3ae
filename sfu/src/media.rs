//! The media plane: webrtc-rs peer connections, one receiver per published track fanning
//! out to one down-track per subscriber, simulcast layer selection and keyframe requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
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
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

use crate::config::RtcConfig;
use crate::forward::{is_keyframe, layer_rank, Rewriter};

/// A layer that sent nothing for this long no longer counts as available.
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// Minimum spacing of keyframe requests we generate for one down-track.
const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// Builds the webrtc-rs API object shared by every peer connection.
pub fn build_api(config: &RtcConfig) -> Result<API, webrtc::Error> {
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
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: webrtc::sdp::extmap::SDES_MID_URI.to_owned(),
        },
        RTPCodecType::Audio,
        None,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;

    let mut settings = SettingEngine::default();
    let udp = EphemeralUDP::new(config.udp_port_min, config.udp_port_max)
        .map_err(|e| webrtc::Error::new(e.to_string()))?;
    settings.set_udp_network(UDPNetwork::Ephemeral(udp));
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

    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

/// A new peer connection without ICE servers (the SFU is reachable directly).
pub async fn new_peer_connection(api: &API) -> Result<Arc<RTCPeerConnection>, webrtc::Error> {
    Ok(Arc::new(
        api.new_peer_connection(RTCConfiguration::default()).await?,
    ))
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
    pub local: Arc<TrackLocalStaticRTP>,
    pub sender: Arc<RTCRtpSender>,
    state: Mutex<DownState>,
}

#[derive(Default)]
struct DownState {
    /// SSRC of the layer being forwarded.
    current: Option<u32>,
    rewriter: Rewriter,
    last_out: Option<Instant>,
    last_pli: Option<Instant>,
    /// Subscriber asked for no media (UpdateTrackSettings.disabled).
    paused: bool,
}

impl DownTrack {
    pub fn new(local: Arc<TrackLocalStaticRTP>, sender: Arc<RTCRtpSender>) -> DownTrack {
        DownTrack {
            local,
            sender,
            state: Mutex::new(DownState::default()),
        }
    }

    /// Stops or resumes forwarding to this subscriber; resuming waits for a keyframe.
    pub fn set_paused(&self, paused: bool) {
        if let Ok(mut st) = self.state.lock() {
            st.paused = paused;
            if !paused {
                st.current = None;
            }
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
    publisher: Weak<RTCPeerConnection>,
    muted: AtomicBool,
    layers: Mutex<Vec<Layer>>,
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
    ) -> PublishedTrack {
        PublishedTrack {
            sid,
            owner,
            kind,
            codec,
            publisher: Arc::downgrade(publisher),
            muted: AtomicBool::new(muted),
            layers: Mutex::new(Vec::new()),
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
                down.set_paused(false);
            }
        }
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

    /// Marks `ssrc` as alive and returns the best available layer's SSRC.
    fn note_packet(&self, ssrc: u32, now: Instant) -> Option<u32> {
        let mut layers = self.layers.lock().ok()?;
        if let Some(layer) = layers.iter_mut().find(|l| l.ssrc == ssrc) {
            layer.last_seen = now;
        }
        layers
            .iter()
            .filter(|l| now.duration_since(l.last_seen) < LAYER_IDLE)
            .max_by_key(|l| layer_rank(&l.rid))
            .map(|l| l.ssrc)
    }

    /// Forwards one RTP packet of layer `ssrc` to every subscriber.
    pub async fn forward(&self, packet: &webrtc::rtp::packet::Packet, ssrc: u32) {
        let now = Instant::now();
        let best = self.note_packet(ssrc, now).unwrap_or(ssrc);
        if self.is_muted() {
            return;
        }
        let keyframe = if self.kind == RTPCodecType::Video {
            is_keyframe(&self.codec.mime_type, &packet.payload)
        } else {
            None
        };
        let clock_rate = self.codec.clock_rate.max(1);
        let mut request_keyframe: Option<u32> = None;
        for down in self.down_tracks() {
            let verdict = match down.state.lock() {
                Ok(mut st) => decide(
                    &mut st,
                    ssrc,
                    (packet.header.sequence_number, packet.header.timestamp),
                    best,
                    keyframe,
                    clock_rate,
                    now,
                    &mut request_keyframe,
                ),
                Err(_) => Verdict::Drop,
            };
            if let Verdict::Forward(seq, ts) = verdict {
                let mut out = packet.clone();
                out.header.sequence_number = seq;
                out.header.timestamp = ts;
                // The publisher's extension ids mean nothing on the subscriber's connection.
                out.header.extension = false;
                out.header.extensions.clear();
                out.header.extension_profile = 0;
                if let Err(e) = down.local.write_rtp(&out).await {
                    tracing::trace!(track = %self.sid, error = %e, "write to down-track failed");
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
            .or_else(|| self.note_packet(0, Instant::now()));
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

/// Whether an RTCP packet from a subscriber asks for a keyframe.
pub fn wants_keyframe(packet: &(dyn webrtc::rtcp::packet::Packet + Send + Sync)) -> bool {
    let any = packet.as_any();
    any.downcast_ref::<PictureLossIndication>().is_some()
        || any.downcast_ref::<FullIntraRequest>().is_some()
}
