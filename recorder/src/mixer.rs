//! The audio mix: every source's Opus decoded to 48 kHz mono PCM, placed on one common
//! timeline and summed (with clipping) 20 ms at a time.
//!
//! The timeline counts samples since the recording's first media. A source's packets are
//! placed by their RTP timestamp, anchored at the arrival time of its first packet, so
//! network jitter does not move them; a source whose timestamps stray more than
//! [`REANCHOR_SAMPLES`] from their arrival times (a clock jump, a long drift) is
//! re-anchored. Packets wait in a per-source queue until their window is mixed: late
//! ones (their window already mixed) are dropped, short gaps are concealed by the decoder
//! (packet loss concealment), a source that stops simply contributes silence. The caller
//! paces the windows by the wall clock (a fixed delay behind it, for jitter), so the mix
//! never drifts from real time.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

/// Samples per second.
pub const RATE: u32 = 48_000;
/// Samples per mixed frame (20 ms).
pub const FRAME: usize = 960;
/// A gap up to this long (60 ms) before a packet is concealed; longer gaps are silence.
const MAX_CONCEALED: i64 = 3 * FRAME as i64;
/// A source is re-anchored when a packet's place and its arrival differ by more (200 ms).
pub const REANCHOR_SAMPLES: i64 = RATE as i64 / 5;
/// Late packets in a row after which a source is re-anchored at its arrivals.
const LATE_RUN_REANCHOR: u32 = 3;
/// Packets queued per source at most (10 s of 20 ms packets); older ones are dropped.
const MAX_QUEUED: usize = 500;
/// The largest Opus frame (120 ms).
const MAX_DECODED: usize = 5760;

/// An audio decoder: Opus in the recorder, raw PCM in tests.
pub trait Decoder: Send {
    /// Decodes one packet into `out` (mono); returns the samples written.
    fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, String>;
    /// Conceals a lost stretch of `out.len()` samples; returns the samples written.
    fn conceal(&mut self, out: &mut [i16]) -> Result<usize, String>;
}

/// libopus, decoding to 48 kHz mono.
pub struct OpusDecoder(opus::Decoder);

impl OpusDecoder {
    pub fn new() -> Result<OpusDecoder, String> {
        opus::Decoder::new(RATE, opus::Channels::Mono)
            .map(OpusDecoder)
            .map_err(|e| e.to_string())
    }
}

impl Decoder for OpusDecoder {
    fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, String> {
        self.0.decode(packet, out, false).map_err(|e| e.to_string())
    }

    fn conceal(&mut self, out: &mut [i16]) -> Result<usize, String> {
        // Opus conceals in multiples of 2.5 ms.
        let len = out.len() / 120 * 120;
        self.0
            .decode(&[], &mut out[..len], false)
            .map_err(|e| e.to_string())
    }
}

struct Source {
    decoder: Box<dyn Decoder>,
    /// (RTP timestamp, timeline position) of the anchor packet.
    anchor: Option<(u32, i64)>,
    /// Packets not yet decoded, by timeline position.
    queue: BTreeMap<i64, Bytes>,
    /// Decoded samples starting at timeline position `pcm_start`.
    pcm: VecDeque<i16>,
    pcm_start: i64,
    /// Where the last decoded packet ended.
    next_pos: Option<i64>,
    /// Packets queued, dropped as late, decoded.
    stats: [u64; 3],
    /// Late packets in a row.
    late_run: u32,
}

impl Source {
    fn place(&mut self, rtp_ts: u32, arrival: i64) -> i64 {
        if let Some((rtp0, pos0)) = self.anchor {
            let pos = pos0 + i64::from(rtp_ts.wrapping_sub(rtp0) as i32);
            if (pos - arrival).abs() <= REANCHOR_SAMPLES {
                return pos;
            }
        }
        self.anchor = Some((rtp_ts, arrival));
        self.next_pos = None;
        arrival
    }

    /// Writes `samples` at timeline position `pos` (the part before `pcm_start` is lost).
    fn write(&mut self, pos: i64, samples: &[i16]) {
        if self.pcm.is_empty() {
            self.pcm_start = pos;
        }
        let skip = (self.pcm_start - pos).max(0) as usize;
        let Some(samples) = samples.get(skip..) else {
            return;
        };
        let at = (pos + skip as i64 - self.pcm_start) as usize;
        if self.pcm.len() < at + samples.len() {
            self.pcm.resize(at + samples.len(), 0);
        }
        for (i, s) in samples.iter().enumerate() {
            self.pcm[at + i] = *s;
        }
    }

    /// Decodes what is due before `end`, then adds the window `[start, end)` to `mix`.
    fn mix_into(&mut self, start: i64, mix: &mut [i32]) -> bool {
        let end = start + mix.len() as i64;
        let mut heard = false;
        let mut buf = [0i16; MAX_DECODED];
        while let Some(entry) = self.queue.first_entry() {
            let pos = *entry.key();
            if pos >= end {
                break;
            }
            let packet = entry.remove();
            if pos < start {
                continue;
            }
            if let Some(gap_start) = self.next_pos {
                let gap = pos - gap_start;
                if gap > 0 && gap <= MAX_CONCEALED {
                    if let Ok(n) = self.decoder.conceal(&mut buf[..gap as usize]) {
                        let n = n.min(gap as usize);
                        self.write(gap_start, &buf[..n]);
                    }
                }
            }
            match self.decoder.decode(&packet, &mut buf) {
                Ok(n) => {
                    self.stats[2] += 1;
                    let n = n.min(buf.len());
                    self.write(pos, &buf[..n]);
                    self.next_pos = Some(pos + n as i64);
                    heard = true;
                }
                Err(e) => tracing::debug!(error = %e, "undecodable audio packet"),
            }
        }
        // A packet is missing in this window but the source goes on (a later one is
        // queued): conceal the hole now, before the window is mixed.
        if let (Some(np), Some((&next, _))) = (self.next_pos, self.queue.first_key_value()) {
            if np < end && next > np && next - np <= MAX_CONCEALED {
                let len = (end.min(next) - np) as usize;
                if let Ok(n) = self.decoder.conceal(&mut buf[..len]) {
                    let n = n.min(len);
                    self.write(np, &buf[..n]);
                    self.next_pos = Some(np + n as i64);
                }
            }
        }
        // Samples before the window can no longer be used.
        let stale = (start - self.pcm_start).clamp(0, self.pcm.len() as i64) as usize;
        self.pcm.drain(..stale);
        self.pcm_start += stale as i64;
        if self.pcm.is_empty() {
            self.pcm_start = start;
        }
        let offset = (self.pcm_start - start).max(0) as usize;
        for (i, slot) in mix.iter_mut().enumerate().skip(offset) {
            match self.pcm.get(i - offset) {
                Some(s) => *slot += i32::from(*s),
                None => break,
            }
        }
        let used = (end - self.pcm_start).clamp(0, self.pcm.len() as i64) as usize;
        self.pcm.drain(..used);
        self.pcm_start += used as i64;
        heard
    }
}

fn log_stats(id: &str, source: &Source) {
    let [queued, late, decoded] = source.stats;
    tracing::debug!(source = %id, queued, late, decoded, "audio source");
}

/// The mixer: sources by id, and the start of the next window to mix.
#[derive(Default)]
pub struct Mixer {
    sources: HashMap<String, Source>,
    cursor: i64,
    /// Sources that contributed decoded audio at least once.
    heard: std::collections::HashSet<String>,
    /// Packets dropped for arriving after their window was mixed.
    pub late_packets: u64,
}

impl Mixer {
    /// Adds a source (a subscribed audio track).
    pub fn add_source(&mut self, id: &str, decoder: Box<dyn Decoder>) {
        self.sources.insert(
            id.to_owned(),
            Source {
                decoder,
                anchor: None,
                queue: BTreeMap::new(),
                pcm: VecDeque::new(),
                pcm_start: 0,
                next_pos: None,
                stats: [0; 3],
                late_run: 0,
            },
        );
    }

    /// Removes a source (its track ended); what it had queued is dropped.
    pub fn remove_source(&mut self, id: &str) {
        if let Some(source) = self.sources.remove(id) {
            log_stats(id, &source);
        }
    }

    /// Logs each source's packet counts (at the end of the recording).
    pub fn log_stats(&self) {
        for (id, source) in &self.sources {
            log_stats(id, source);
        }
    }

    /// Queues a packet of source `id` with RTP timestamp `rtp_ts` (48 kHz) that arrived
    /// at timeline position `arrival` (samples since the recording's start).
    pub fn push(&mut self, id: &str, rtp_ts: u32, payload: Bytes, arrival: i64) {
        let Some(source) = self.sources.get_mut(id) else {
            return;
        };
        let mut pos = source.place(rtp_ts, arrival);
        if pos < self.cursor {
            source.late_run += 1;
            if source.late_run < LATE_RUN_REANCHOR || arrival < self.cursor {
                self.late_packets += 1;
                source.stats[1] += 1;
                return;
            }
            // The source keeps arriving after its windows were mixed (it is delayed more
            // than the mix waits): move its timeline to its arrivals.
            source.anchor = Some((rtp_ts, arrival));
            source.next_pos = None;
            pos = arrival;
        }
        source.late_run = 0;
        source.stats[0] += 1;
        if source.queue.len() >= MAX_QUEUED {
            source.queue.pop_first();
        }
        source.queue.insert(pos, payload);
    }

    /// The timeline position of the next window.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// How many sources have been heard.
    pub fn sources_heard(&self) -> usize {
        self.heard.len()
    }

    /// Mixes the next 20 ms window.
    pub fn mix(&mut self) -> Vec<i16> {
        let mut acc = vec![0i32; FRAME];
        let start = self.cursor;
        for (id, source) in &mut self.sources {
            if source.mix_into(start, &mut acc) && !self.heard.contains(id) {
                self.heard.insert(id.clone());
            }
        }
        self.cursor += FRAME as i64;
        acc.into_iter()
            .map(|s| s.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets are raw little-endian PCM; concealment repeats nothing (silence marked -1).
    struct Pcm;

    impl Decoder for Pcm {
        fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, String> {
            let n = packet.len() / 2;
            for (i, pair) in packet.chunks_exact(2).enumerate() {
                out[i] = i16::from_le_bytes([pair[0], pair[1]]);
            }
            Ok(n)
        }

        fn conceal(&mut self, out: &mut [i16]) -> Result<usize, String> {
            out.fill(-1);
            Ok(out.len())
        }
    }

    fn pcm_packet(samples: &[i16]) -> Bytes {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn sine(freq: f64, amplitude: f64, from: usize, len: usize) -> Vec<i16> {
        (from..from + len)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / RATE as f64).sin())
                    as i16
            })
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn two_sources_are_summed_with_clipping() {
        let mut m = Mixer::default();
        m.add_source("a", Box::new(Pcm));
        m.add_source("b", Box::new(Pcm));
        m.push("a", 1000, pcm_packet(&[100; FRAME]), 0);
        m.push("b", 5000, pcm_packet(&[250; FRAME]), 0);
        assert_eq!(m.mix(), vec![350; FRAME]);
        m.push("a", 1960, pcm_packet(&[30000; FRAME]), 960);
        m.push("b", 5960, pcm_packet(&[30000; FRAME]), 960);
        assert_eq!(m.mix(), vec![i16::MAX; FRAME]);
        m.push("a", 2920, pcm_packet(&[-30000; FRAME]), 1920);
        m.push("b", 6920, pcm_packet(&[-30000; FRAME]), 1920);
        assert_eq!(m.mix(), vec![i16::MIN; FRAME]);
        assert_eq!(m.sources_heard(), 2);
    }

    /// Two sines through real Opus: the mix carries both (its level is that of two
    /// uncorrelated tones, √2 times one), and is silent before and after.
    #[test]
    fn two_opus_sines_mix_to_the_summed_level() {
        let mut m = Mixer::default();
        m.add_source("a", Box::new(OpusDecoder::new().unwrap()));
        m.add_source("b", Box::new(OpusDecoder::new().unwrap()));
        let mut enc_a =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio).unwrap();
        let mut enc_b =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4000];
        for k in 0..50usize {
            let pos = (k * FRAME) as i64;
            let n = enc_a
                .encode(&sine(440.0, 8000.0, k * FRAME, FRAME), &mut buf)
                .unwrap();
            m.push(
                "a",
                777 + pos as u32,
                Bytes::copy_from_slice(&buf[..n]),
                pos + 37,
            );
            let n = enc_b
                .encode(&sine(660.0, 8000.0, k * FRAME, FRAME), &mut buf)
                .unwrap();
            m.push(
                "b",
                9 + pos as u32,
                Bytes::copy_from_slice(&buf[..n]),
                pos + 500,
            );
            out.extend(m.mix());
        }
        // Skip the codec's start-up; one 8000-amplitude sine has an RMS of 5657.
        let level = rms(&out[10 * FRAME..]);
        let expected = 8000.0 / 2f64.sqrt() * 2f64.sqrt();
        assert!(
            (level - expected).abs() < expected * 0.2,
            "mixed rms {level}"
        );
        // Source b stops: the mix falls to one sine's level, then silence.
        m.remove_source("b");
        let mut single = Vec::new();
        for k in 50..70usize {
            let pos = (k * FRAME) as i64;
            let n = enc_a
                .encode(&sine(440.0, 8000.0, k * FRAME, FRAME), &mut buf)
                .unwrap();
            m.push(
                "a",
                777 + pos as u32,
                Bytes::copy_from_slice(&buf[..n]),
                pos,
            );
            single.extend(m.mix());
        }
        let level = rms(&single[5 * FRAME..]);
        assert!((level - 5657.0).abs() < 5657.0 * 0.2, "single rms {level}");
        let silent: Vec<i16> = (0..5).flat_map(|_| m.mix()).collect();
        assert!(rms(&silent[2 * FRAME..]) < 50.0);
    }

    /// Packets land by RTP timestamp, not by arrival: jittered and reordered arrivals of a
    /// source started at another RTP offset still line up sample for sample.
    #[test]
    fn sources_are_aligned_by_rtp_timestamp() {
        let mut m = Mixer::default();
        m.add_source("a", Box::new(Pcm));
        // First packet arrives 300 samples into the timeline: that is its place.
        const BASE: u32 = u32::MAX - 1500;
        m.push("a", BASE, pcm_packet(&[1; FRAME]), 300);
        // The next one (20 ms later in RTP time) arrives early, jittered: placed by RTP.
        m.push(
            "a",
            BASE.wrapping_add(FRAME as u32),
            pcm_packet(&[2; FRAME]),
            1000,
        );
        let first = m.mix();
        assert!(first[..300].iter().all(|s| *s == 0));
        assert!(first[300..].iter().all(|s| *s == 1));
        let second = m.mix();
        assert!(second[..300].iter().all(|s| *s == 1));
        assert!(second[300..].iter().all(|s| *s == 2));
        // The third arrives after the fourth (reordered, and across the RTP wrap).
        let third = BASE.wrapping_add(2 * FRAME as u32);
        m.push(
            "a",
            third.wrapping_add(FRAME as u32),
            pcm_packet(&[4; FRAME]),
            2300,
        );
        m.push("a", third, pcm_packet(&[3; FRAME]), 2400);
        let out = m.mix();
        assert!(out[..300].iter().all(|s| *s == 2) && out[300..].iter().all(|s| *s == 3));
        let out = m.mix();
        assert!(out[..300].iter().all(|s| *s == 3) && out[300..].iter().all(|s| *s == 4));
    }

    #[test]
    fn late_and_lost_packets() {
        let mut m = Mixer::default();
        m.add_source("a", Box::new(Pcm));
        m.push("a", 0, pcm_packet(&[5; FRAME]), 0);
        assert_eq!(m.mix(), vec![5; FRAME]);
        // Packet 2 (rtp 960) is lost; packet 3 arrives: the gap is concealed.
        m.push(
            "a",
            2 * FRAME as u32,
            pcm_packet(&[7; FRAME]),
            2 * FRAME as i64,
        );
        assert_eq!(m.mix(), vec![-1; FRAME]);
        assert_eq!(m.mix(), vec![7; FRAME]);
        // Packet 2 finally arrives: its window is gone, it is dropped.
        m.push("a", FRAME as u32, pcm_packet(&[6; FRAME]), 3 * FRAME as i64);
        assert_eq!(m.late_packets, 1);
        assert_eq!(m.mix(), vec![0; FRAME]);
    }

    /// A source whose packets come later than the mix waits (a delay that appeared after
    /// its first packet) loses a few packets, then is moved to its arrival times.
    #[test]
    fn a_persistently_late_source_is_reanchored() {
        let mut m = Mixer::default();
        m.add_source("a", Box::new(Pcm));
        m.push("a", 0, pcm_packet(&[1; FRAME]), 0);
        assert_eq!(m.mix(), vec![1; FRAME]);
        // From now on each packet arrives 2.5 windows after its place (50 ms, less than
        // the re-anchoring distance for strays), i.e. after its window was mixed.
        let mut heard = Vec::new();
        for k in 1..12u32 {
            let arrival = i64::from(k) * 960 + 2400;
            while m.cursor() + (FRAME as i64) <= arrival - 960 {
                heard.push(m.mix()[0]);
            }
            m.push("a", k * 960, pcm_packet(&[1; FRAME]), arrival);
        }
        while m.cursor() < 14 * 960 {
            heard.push(m.mix()[0]);
        }
        assert_eq!(m.late_packets, 2, "two dropped before the third re-anchors");
        // Silence while late, then the source is heard again, without further loss.
        assert!(heard.contains(&0));
        let back = heard.iter().position(|s| *s == 1).unwrap();
        assert!(
            heard[back..heard.len() - 1].iter().all(|s| *s != 0),
            "{heard:?}"
        );
    }

    #[test]
    fn a_stopped_source_is_silence_and_a_jump_reanchors() {
        let mut m = Mixer::default();
        m.add_source("a", Box::new(Pcm));
        m.add_source("b", Box::new(Pcm));
        for k in 0..3u32 {
            m.push("a", k * 960, pcm_packet(&[10; FRAME]), i64::from(k) * 960);
            m.push("b", k * 960, pcm_packet(&[20; FRAME]), i64::from(k) * 960);
            assert_eq!(m.mix(), vec![30; FRAME]);
        }
        // b stops sending; a goes on alone.
        for k in 3..6u32 {
            m.push("a", k * 960, pcm_packet(&[10; FRAME]), i64::from(k) * 960);
            assert_eq!(m.mix(), vec![10; FRAME]);
        }
        // b comes back with a timestamp jump (a restarted sender): placed at its arrival.
        let now = m.cursor();
        m.push("b", 123_456_789, pcm_packet(&[20; FRAME]), now);
        m.push("a", 6 * 960, pcm_packet(&[10; FRAME]), now);
        assert_eq!(m.mix(), vec![30; FRAME]);
        // Without a gap concealed between the old and new b.
        assert_eq!(m.late_packets, 0);
    }
}
