//! Bounds the retransmissions subscribers can ask for.
//!
//! webrtc-rs's NACK responder spawns a task per received NACK and resends every listed
//! packet, however often it is asked: an overloaded subscriber (or one that loses much)
//! NACKs more, the resends add load, and queues grow without bound. This interceptor,
//! registered before the responder, thins the NACKs it reads: a packet is resent at most
//! once per [`REPEAT`] and each stream gets at most [`RATE`] resends per second (bursts of
//! [`BURST`]); what is left over is dropped (the subscriber's decoder then asks for a
//! keyframe instead).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use webrtc::interceptor::stream_info::StreamInfo;

type IResult<T> = Result<T, webrtc::interceptor::Error>;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};

/// A packet is resent at most once in this window.
pub const REPEAT: Duration = Duration::from_millis(100);
/// Resends per second per stream.
pub const RATE: f64 = 200.0;
/// Resends a stream may take at once.
pub const BURST: f64 = 64.0;

/// One stream's budget.
struct StreamBudget {
    tokens: f64,
    refilled: Instant,
    /// Sequence numbers resent within [`REPEAT`], with when.
    recent: HashMap<u16, Instant>,
}

/// The resend budgets of one peer connection's streams, by media SSRC.
#[derive(Default)]
pub struct NackBudget {
    streams: HashMap<u32, StreamBudget>,
}

impl NackBudget {
    /// Which of `seqs` (asked for on `ssrc` at `now`) may be resent.
    pub fn admit(&mut self, ssrc: u32, seqs: &[u16], now: Instant) -> Vec<u16> {
        let stream = self.streams.entry(ssrc).or_insert_with(|| StreamBudget {
            tokens: BURST,
            refilled: now,
            recent: HashMap::new(),
        });
        let elapsed = now.saturating_duration_since(stream.refilled).as_secs_f64();
        stream.tokens = (stream.tokens + elapsed * RATE).min(BURST);
        stream.refilled = now;
        stream
            .recent
            .retain(|_, at| now.saturating_duration_since(*at) < REPEAT);
        let mut admitted = Vec::new();
        for &seq in seqs {
            if stream.tokens < 1.0 {
                break;
            }
            if stream.recent.contains_key(&seq) {
                continue;
            }
            stream.recent.insert(seq, now);
            stream.tokens -= 1.0;
            admitted.push(seq);
        }
        admitted
    }

    fn forget(&mut self, ssrc: u32) {
        self.streams.remove(&ssrc);
    }
}

/// Builds a [`NackLimit`] per peer connection.
pub struct NackLimitBuilder;

impl InterceptorBuilder for NackLimitBuilder {
    fn build(&self, _id: &str) -> IResult<Arc<dyn Interceptor + Send + Sync>> {
        Ok(Arc::new(NackLimit {
            budget: Arc::new(Mutex::new(NackBudget::default())),
        }))
    }
}

/// The interceptor: filters received NACKs through a [`NackBudget`].
pub struct NackLimit {
    budget: Arc<Mutex<NackBudget>>,
}

struct LimitedReader {
    parent: Arc<dyn RTCPReader + Send + Sync>,
    budget: Arc<Mutex<NackBudget>>,
}

#[async_trait]
impl RTCPReader for LimitedReader {
    async fn read(
        &self,
        buf: &mut [u8],
        a: &Attributes,
    ) -> IResult<(
        Vec<Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>>,
        Attributes,
    )> {
        let (packets, attributes) = self.parent.read(buf, a).await?;
        if !packets
            .iter()
            .any(|p| p.as_any().is::<TransportLayerNack>())
        {
            return Ok((packets, attributes));
        }
        let now = Instant::now();
        let mut out: Vec<Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>> =
            Vec::with_capacity(packets.len());
        for packet in packets {
            let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() else {
                out.push(packet);
                continue;
            };
            let asked: Vec<u16> = nack.nacks.iter().flat_map(|n| n.packet_list()).collect();
            let admitted = match self.budget.lock() {
                Ok(mut budget) => budget.admit(nack.media_ssrc, &asked, now),
                Err(_) => Vec::new(),
            };
            if !admitted.is_empty() {
                out.push(Box::new(TransportLayerNack {
                    sender_ssrc: nack.sender_ssrc,
                    media_ssrc: nack.media_ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&admitted),
                }));
            }
        }
        Ok((out, attributes))
    }
}

#[async_trait]
impl Interceptor for NackLimit {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        Arc::new(LimitedReader {
            parent: reader,
            budget: self.budget.clone(),
        })
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        _info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        writer
    }

    async fn unbind_local_stream(&self, info: &StreamInfo) {
        if let Ok(mut budget) = self.budget.lock() {
            budget.forget(info.ssrc);
        }
    }

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> IResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_resent_once_per_window() {
        let mut budget = NackBudget::default();
        let t0 = Instant::now();
        assert_eq!(budget.admit(1, &[10, 11], t0), [10, 11]);
        assert!(budget
            .admit(1, &[10, 11], t0 + Duration::from_millis(50))
            .is_empty());
        assert_eq!(budget.admit(2, &[10], t0), [10], "streams are apart");
        assert_eq!(budget.admit(1, &[10], t0 + REPEAT), [10]);
    }

    #[test]
    fn resends_per_stream_are_rate_limited() {
        let mut budget = NackBudget::default();
        let t0 = Instant::now();
        let asked: Vec<u16> = (0..1000).collect();
        assert_eq!(budget.admit(1, &asked, t0).len(), BURST as usize);
        assert!(budget.admit(1, &asked, t0).is_empty(), "the burst is spent");
        // 50 ms refill RATE / 20; the packets resent a moment ago are skipped.
        let later = budget.admit(1, &asked, t0 + Duration::from_millis(50));
        assert_eq!(later.len(), (0.05 * RATE) as usize);
        assert!(
            later.iter().all(|s| *s >= BURST as u16),
            "already resent ones skipped"
        );
        // Over ten seconds no more than the rate (plus one burst) gets through.
        let mut total = 0;
        for i in 1..=100u64 {
            let seqs: Vec<u16> = (0..1000).map(|s| (s + i * 1000) as u16).collect();
            total += budget
                .admit(1, &seqs, t0 + Duration::from_millis(200 + i * 100))
                .len();
        }
        assert!(total as f64 <= RATE * 10.0 + BURST, "{total}");
        assert!(total as f64 >= RATE * 9.0, "{total}");
    }
}
