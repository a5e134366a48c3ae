//! The local track behind one down-track: what a subscriber's RTP sender sends.
//!
//! webrtc-rs's `TrackLocalStaticRTP` serves any number of bindings, so every write clones
//! the packet, takes an async lock, copies the binding list and builds a header-extension
//! map. A down-track belongs to exactly one sender, so [`OutTrack`] keeps its one binding
//! behind a plain mutex and writes the caller's packet straight into the sender's
//! interceptor chain. Codec negotiation (`bind`/`unbind`) is delegated to an inner
//! `TrackLocalStaticRTP`, so it matches exactly what webrtc-rs does.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use webrtc::interceptor::Attributes;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalContext, TrackLocalWriter};

/// Where packets go once the sender has negotiated.
struct Binding {
    id: String,
    ssrc: u32,
    payload_type: u8,
    /// The sender's MID header extension (id, value), when negotiated.
    mid: Option<(u8, bytes::Bytes)>,
    /// Whether the sender is paused (its flag's type is webrtc-rs's own atomic).
    paused: Box<dyn Fn() -> bool + Send + Sync>,
    write_stream: Arc<dyn TrackLocalWriter + Send + Sync>,
}

/// A local track bound to (at most) one RTP sender.
pub struct OutTrack {
    inner: TrackLocalStaticRTP,
    binding: Mutex<Option<Arc<Binding>>>,
    /// The subscriber has answered an offer that carries this track. webrtc-rs starts
    /// (binds) every sender when *an* answer arrives, also one added after that offer was
    /// made; RTP on an SSRC the subscriber has not been told of yet makes its stack give
    /// the SSRC up (webrtc-rs: "failed Simulcast probing"), and the track never plays.
    negotiated: AtomicBool,
}

impl OutTrack {
    pub fn new(codec: RTCRtpCodecCapability, id: String, stream_id: String) -> OutTrack {
        OutTrack {
            inner: TrackLocalStaticRTP::new(codec, id, stream_id),
            binding: Mutex::new(None),
            negotiated: AtomicBool::new(false),
        }
    }

    /// The subscriber answered an offer carrying this track: packets may flow.
    pub fn set_negotiated(&self) {
        self.negotiated.store(true, Ordering::Release);
    }

    /// Sends `packet` (its SSRC and payload type are overwritten with the negotiated ones).
    /// Before negotiation, or while the sender is paused, the packet is dropped: `Ok(false)`.
    pub async fn write(&self, packet: &mut Packet) -> Result<bool, webrtc::Error> {
        if !self.negotiated.load(Ordering::Acquire) {
            return Ok(false);
        }
        let binding = match self.binding.lock() {
            Ok(binding) => binding.clone(),
            Err(_) => None,
        };
        let Some(binding) = binding.filter(|b| !(b.paused)()) else {
            return Ok(false);
        };
        packet.header.ssrc = binding.ssrc;
        packet.header.payload_type = binding.payload_type;
        if let Some((id, mid)) = &binding.mid {
            packet.header.set_extension(*id, mid.clone())?;
        }
        binding
            .write_stream
            .write_rtp_with_attributes(packet, &Attributes::new())
            .await?;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl TrackLocal for OutTrack {
    async fn bind(&self, t: &TrackLocalContext) -> webrtc::error::Result<RTCRtpCodecParameters> {
        let codec = self.inner.bind(t).await?;
        let mid = t
            .header_extensions()
            .iter()
            .find(|e| e.uri == webrtc::sdp::extmap::SDES_MID_URI)
            .and_then(|e| u8::try_from(e.id).ok())
            .zip(t.mid())
            .map(|(id, mid)| (id, bytes::Bytes::copy_from_slice(mid.as_bytes())));
        let binding = Arc::new(Binding {
            id: t.id(),
            ssrc: t.ssrc(),
            payload_type: codec.payload_type,
            mid,
            paused: {
                let paused = t.paused();
                Box::new(move || paused.load(Ordering::Relaxed))
            },
            write_stream: t.write_stream(),
        });
        if let Ok(mut slot) = self.binding.lock() {
            *slot = Some(binding);
        }
        Ok(codec)
    }

    async fn unbind(&self, t: &TrackLocalContext) -> webrtc::error::Result<()> {
        if let Ok(mut slot) = self.binding.lock() {
            if slot.as_ref().is_some_and(|b| b.id == t.id()) {
                *slot = None;
            }
        }
        self.inner.unbind(t).await
    }

    fn id(&self) -> &str {
        self.inner.id()
    }

    fn rid(&self) -> Option<&str> {
        None
    }

    fn stream_id(&self) -> &str {
        self.inner.stream_id()
    }

    fn kind(&self) -> RTPCodecType {
        self.inner.kind()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drops_packets_until_bound() {
        let track = OutTrack::new(
            RTCRtpCodecCapability {
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                ..Default::default()
            },
            "TR_x".into(),
            "PA_y|TR_x".into(),
        );
        assert_eq!(track.id(), "TR_x");
        assert_eq!(track.stream_id(), "PA_y|TR_x");
        assert_eq!(track.kind(), RTPCodecType::Audio);
        let mut packet = Packet::default();
        assert!(!track.write(&mut packet).await.unwrap());
        // Negotiated but not bound yet: still dropped.
        track.set_negotiated();
        assert!(!track.write(&mut packet).await.unwrap());
    }
}
