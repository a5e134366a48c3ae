//! Synthetic media: Opus-like audio and VP8-like video RTP packets whose payload ends in a
//! [`Stamp`] (track, measuring phase, packet counter, send time), so that a subscriber in
//! the same process can count losses and measure the added latency.

use bytes::{BufMut, Bytes, BytesMut};
use webrtc::rtp::packet::Packet;

/// Bytes the stamp takes at the end of every payload.
pub const STAMP_LEN: usize = 16;
/// Smallest payload the video generator writes: VP8 descriptor + header byte + stamp.
pub const MIN_VIDEO_PAYLOAD: usize = 5 + STAMP_LEN;
/// Opus payload type (as browsers offer it); the track rewrites it to the negotiated one.
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// What every synthetic packet carries at the end of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the published track in the run.
    pub track: u16,
    /// Whether the packet was sent inside the measuring window.
    pub measured: bool,
    /// Per-track packet counter, from 0.
    pub counter: u32,
    /// Send time, nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u16(self.track);
        buf.put_u8(u8::from(self.measured));
        buf.put_u8(0x5a); // marker: a stamp, not codec data
        buf.put_u32(self.counter);
        buf.put_u64(self.sent_ns);
    }

    /// Reads the stamp at the end of `payload`; `None` for anything else.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let at = payload.len().checked_sub(STAMP_LEN)?;
        let s = &payload[at..];
        if s[3] != 0x5a || s[2] > 1 {
            return None;
        }
        Some(Stamp {
            track: u16::from_be_bytes([s[0], s[1]]),
            measured: s[2] == 1,
            counter: u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
            sent_ns: u64::from_be_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]),
        })
    }
}

/// Opus-like audio: one packet every 20 ms, timestamps in a 48 kHz clock.
pub struct AudioSource {
    track: u16,
    size: usize,
    seq: u16,
    ts: u32,
    counter: u32,
}

impl AudioSource {
    /// Packets of `size` payload bytes (at least the stamp).
    pub fn new(track: u16, size: usize) -> AudioSource {
        AudioSource {
            track,
            size: size.max(STAMP_LEN + 1),
            seq: rand::random(),
            ts: rand::random(),
            counter: 0,
        }
    }

    /// The next 20 ms packet, stamped now.
    pub fn next(&mut self, measured: bool, sent_ns: u64) -> Packet {
        let mut payload = BytesMut::with_capacity(self.size);
        payload.put_u8(0xfc); // Opus TOC: CELT-only fullband 20 ms, one frame
        payload.resize(self.size - STAMP_LEN, 0);
        self.stamp(measured, sent_ns).put(&mut payload);
        let packet = rtp(OPUS_PT, self.seq, self.ts, true, payload.freeze());
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(960);
        self.counter += 1;
        packet
    }

    fn stamp(&self, measured: bool, sent_ns: u64) -> Stamp {
        Stamp {
            track: self.track,
            measured,
            counter: self.counter,
            sent_ns,
        }
    }
}

/// VP8-like video: frames of several packets with an RFC 7741 payload descriptor
/// (15-bit picture id) so the SFU's keyframe detection and picture-id munging see real
/// structure; a frame is a keyframe when one was asked for.
pub struct VideoSource {
    track: u16,
    size: usize,
    fps: u32,
    seq: u16,
    ts: u32,
    picture_id: u16,
    counter: u32,
    /// Packets per second wanted and the fractional packets carried between frames.
    pps: u32,
    carry: u32,
}

impl VideoSource {
    /// `pps` packets per second of `size` payload bytes, in `fps` frames per second.
    pub fn new(track: u16, pps: u32, size: usize, fps: u32) -> VideoSource {
        VideoSource {
            track,
            size: size.max(MIN_VIDEO_PAYLOAD),
            fps: fps.max(1),
            seq: rand::random(),
            ts: rand::random(),
            picture_id: rand::random::<u16>() & 0x7fff,
            counter: 0,
            pps,
            carry: 0,
        }
    }

    /// Frames per second.
    pub fn fps(&self) -> u32 {
        self.fps
    }

    /// The packets of the next frame (at least one), each stamped with `now()` as it is
    /// built (so build them just before writing).
    pub fn next_frame<'a>(
        &'a mut self,
        keyframe: bool,
        measured: bool,
        mut now: impl FnMut() -> u64 + 'a,
    ) -> impl Iterator<Item = Packet> + 'a {
        self.carry += self.pps;
        let count = (self.carry / self.fps).max(1);
        self.carry = self.carry.saturating_sub(count * self.fps);
        let ts = self.ts;
        self.ts = self.ts.wrapping_add(90_000 / self.fps);
        let picture_id = self.picture_id;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        (0..count).map(move |i| {
            let first = i == 0;
            let mut payload = BytesMut::with_capacity(self.size);
            // X=1, S on the frame's first packet, PID=0; I=1; 15-bit picture id.
            payload.put_u8(if first { 0x90 } else { 0x80 });
            payload.put_u8(0x80);
            payload.put_u16(0x8000 | picture_id);
            // VP8 frame header (first packet only): bit P is 0 for a keyframe.
            payload.put_u8(u8::from(first && !keyframe));
            payload.resize(self.size - STAMP_LEN, 0);
            Stamp {
                track: self.track,
                measured,
                counter: self.counter,
                sent_ns: now(),
            }
            .put(&mut payload);
            let packet = rtp(VP8_PT, self.seq, ts, i + 1 == count, payload.freeze());
            self.seq = self.seq.wrapping_add(1);
            self.counter += 1;
            packet
        })
    }
}

fn rtp(payload_type: u8, seq: u16, ts: u32, marker: bool, payload: Bytes) -> Packet {
    let mut packet = Packet::default();
    packet.header.version = 2;
    packet.header.payload_type = payload_type;
    packet.header.sequence_number = seq;
    packet.header.timestamp = ts;
    packet.header.marker = marker;
    packet.payload = payload;
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_reject_other_payloads() {
        let mut audio = AudioSource::new(3, 100);
        let p = audio.next(true, 123_456_789);
        assert_eq!(p.payload.len(), 100);
        assert_eq!(
            Stamp::read(&p.payload),
            Some(Stamp {
                track: 3,
                measured: true,
                counter: 0,
                sent_ns: 123_456_789
            })
        );
        let p = audio.next(false, 5);
        let s = Stamp::read(&p.payload).unwrap();
        assert_eq!((s.counter, s.measured), (1, false));
        assert_eq!(Stamp::read(&[0; 15]), None);
        assert_eq!(Stamp::read(&[0xff; 40]), None);
    }

    #[test]
    fn video_frames_carry_the_wanted_packet_rate() {
        let mut video = VideoSource::new(1, 100, 1000, 30);
        let mut total = 0;
        let mut counters = Vec::new();
        for frame in 0..30 {
            let packets: Vec<Packet> = video.next_frame(frame == 0, true, || 0).collect();
            assert!(packets.last().unwrap().header.marker);
            assert!(packets[..packets.len() - 1]
                .iter()
                .all(|p| !p.header.marker));
            // The SFU sees a keyframe only on the first packet of the first frame.
            let key = myelin_sfu::forward::is_keyframe("video/VP8", &packets[0].payload);
            assert_eq!(key, Some(frame == 0));
            for p in &packets {
                assert_eq!(p.payload.len(), 1000);
                counters.push(Stamp::read(&p.payload).unwrap().counter);
            }
            total += packets.len();
        }
        assert_eq!(total, 100);
        assert_eq!(counters, (0..100).collect::<Vec<u32>>());
    }
}
