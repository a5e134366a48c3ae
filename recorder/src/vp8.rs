//! VP8 frames: reassembling them from RTP (webrtc-rs' VP8 depacketizer in a sample
//! builder, which also puts reordered packets back in order) and reading the frame
//! header (RFC 6386 §9.1): key or inter frame, and a key frame's size.

use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::rtp::codecs::vp8::Vp8Packet;
use webrtc::rtp::packet::Packet;

/// Packets a frame may wait for a missing one before the builder gives up on it.
const MAX_LATE_PACKETS: u16 = 128;
/// The VP8 RTP clock.
pub const CLOCK_RATE: u32 = 90_000;

/// A complete VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: bytes::Bytes,
    /// RTP timestamp (90 kHz).
    pub rtp_ts: u32,
    pub keyframe: bool,
}

/// Reassembles one track's frames.
pub struct Depacketizer {
    builder: SampleBuilder<Vp8Packet>,
}

impl Default for Depacketizer {
    fn default() -> Self {
        Depacketizer {
            builder: SampleBuilder::new(MAX_LATE_PACKETS, Vp8Packet::default(), CLOCK_RATE),
        }
    }
}

impl Depacketizer {
    /// Adds a packet; returns the frames it completed, in order.
    pub fn push(&mut self, packet: Packet) -> Vec<Frame> {
        self.builder.push(packet);
        let mut frames = Vec::new();
        while let Some(sample) = self.builder.pop() {
            if sample.data.is_empty() {
                continue;
            }
            frames.push(Frame {
                keyframe: is_keyframe(&sample.data),
                data: sample.data,
                rtp_ts: sample.packet_timestamp,
            });
        }
        frames
    }
}

/// Whether a VP8 frame is a key frame: bit 0 of the frame tag is 0, and the start code
/// follows the three-byte tag.
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.len() >= 10 && frame[0] & 1 == 0 && frame[3..6] == [0x9d, 0x01, 0x2a]
}

/// A key frame's width and height in pixels (the low 14 bits of each; the top two are
/// the upscaling mode); `None` for inter frames and malformed data.
pub fn keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if !is_keyframe(frame) {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    (width > 0 && height > 0).then_some((width, height))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The first bytes of a key frame of `width`×`height` (tag, start code, size).
    pub fn keyframe_header(width: u16, height: u16) -> Vec<u8> {
        let mut frame = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        frame.extend_from_slice(&width.to_le_bytes());
        frame.extend_from_slice(&height.to_le_bytes());
        frame.extend_from_slice(&[0u8; 6]);
        frame
    }

    #[test]
    fn reads_a_keyframe_size() {
        let frame = keyframe_header(640, 360);
        assert!(is_keyframe(&frame));
        assert_eq!(keyframe_size(&frame), Some((640, 360)));
        // The scaling bits are not part of the size.
        let mut scaled = keyframe_header(320, 240);
        scaled[7] |= 0x40;
        scaled[9] |= 0x80;
        assert_eq!(keyframe_size(&scaled), Some((320, 240)));
    }

    #[test]
    fn inter_frames_and_garbage_have_no_size() {
        let mut inter = keyframe_header(640, 360);
        inter[0] |= 1;
        assert!(!is_keyframe(&inter));
        assert_eq!(keyframe_size(&inter), None);
        assert_eq!(keyframe_size(&[0x10, 0x02]), None);
        let mut no_start_code = keyframe_header(640, 360);
        no_start_code[4] = 0;
        assert_eq!(keyframe_size(&no_start_code), None);
        assert_eq!(keyframe_size(&keyframe_header(0, 360)), None);
    }

    /// A frame split over RTP packets with VP8 payload descriptors comes back whole,
    /// even when its packets arrive out of order.
    #[test]
    fn reassembles_frames_from_rtp() {
        let mut frame = keyframe_header(176, 144);
        frame.extend((0..3000u32).map(|i| (i % 251) as u8));
        let chunks: Vec<&[u8]> = frame.chunks(1000).collect();
        let mut packets = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut payload = vec![if i == 0 { 0x10 } else { 0x00 }];
            payload.extend_from_slice(chunk);
            let mut p = Packet::default();
            p.header.version = 2;
            p.header.sequence_number = 100 + i as u16;
            p.header.timestamp = 9000;
            p.header.marker = i == chunks.len() - 1;
            p.payload = payload.into();
            packets.push(p);
        }
        // The next frame's first packet completes the previous one.
        let mut next = Packet::default();
        next.header.version = 2;
        next.header.sequence_number = 100 + chunks.len() as u16;
        next.header.timestamp = 12000;
        next.header.marker = true;
        next.payload = vec![0x10, 0x01, 0, 0].into();
        packets.swap(1, 2);
        let mut d = Depacketizer::default();
        let mut out = Vec::new();
        for p in packets {
            out.extend(d.push(p));
        }
        out.extend(d.push(next));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.as_ref(), frame.as_slice());
        assert!(out[0].keyframe);
        assert_eq!(out[0].rtp_ts, 9000);
    }
}
