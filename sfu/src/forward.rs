//! Pure forwarding helpers: RTP sequence-number/timestamp rewriting across simulcast layer
//! switches, keyframe detection, and simulcast layer ranking.

/// Keeps one subscriber's outgoing RTP stream continuous while its source changes.
///
/// Each source (a simulcast layer's SSRC) has its own sequence-number and timestamp space.
/// A subscriber sees one stream, so on a switch the rewriter picks offsets that make the new
/// source's first packet follow the last one sent: sequence +1, timestamp + `ts_gap`.
/// Packets of the same source keep their relative order and spacing (including reordering).
#[derive(Debug, Default, Clone)]
pub struct Rewriter {
    state: Option<RewriteState>,
}

#[derive(Debug, Clone)]
struct RewriteState {
    /// `None` after [`Rewriter::resync`]: the next packet starts a new run.
    source_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    /// Highest sequence number sent (in output space).
    max_seq: u16,
    /// Timestamp of the packet carrying `max_seq` (in output space).
    max_ts: u32,
}

impl Rewriter {
    /// Rewrites a packet of source `ssrc`. `ts_gap` is the timestamp distance (in the
    /// codec's clock) to put between the last packet sent and the first packet of a new
    /// source; it is ignored while the source stays the same.
    pub fn rewrite(&mut self, ssrc: u32, seq: u16, ts: u32, ts_gap: u32) -> (u16, u32) {
        let state = match &mut self.state {
            Some(state) if state.source_ssrc == Some(ssrc) => state,
            Some(state) => {
                // Switch: continue right after the highest packet sent so far.
                state.seq_offset = state.max_seq.wrapping_add(1).wrapping_sub(seq);
                state.ts_offset = state.max_ts.wrapping_add(ts_gap.max(1)).wrapping_sub(ts);
                state.source_ssrc = Some(ssrc);
                state.max_seq = seq.wrapping_add(state.seq_offset).wrapping_sub(1);
                state.max_ts = ts.wrapping_add(state.ts_offset);
                state
            }
            None => self.state.insert(RewriteState {
                source_ssrc: Some(ssrc),
                seq_offset: 0,
                ts_offset: 0,
                max_seq: seq.wrapping_sub(1),
                max_ts: ts,
            }),
        };
        let out_seq = seq.wrapping_add(state.seq_offset);
        let out_ts = ts.wrapping_add(state.ts_offset);
        if seq_newer(out_seq, state.max_seq) {
            state.max_seq = out_seq;
            state.max_ts = out_ts;
        }
        (out_seq, out_ts)
    }

    /// The SSRC of the source currently forwarded, if any.
    pub fn source(&self) -> Option<u32> {
        self.state.as_ref().and_then(|s| s.source_ssrc)
    }

    /// Makes the next packet continue the output right after the last one sent, even from
    /// the same source: used after packets were deliberately dropped (pause, mute), so the
    /// subscriber sees no gap to ask retransmissions for.
    pub fn resync(&mut self) {
        if let Some(state) = &mut self.state {
            state.source_ssrc = None;
        }
    }
}

/// Keeps VP8 picture ids and TL0PICIDX continuous across simulcast layer switches.
///
/// Each layer numbers its pictures independently; a receiver that sees the picture id jump
/// backwards on a switch may take the new frames for stale ones. Like [`Rewriter`], the
/// munger shifts a new source's numbering to continue right after the last one sent.
#[derive(Debug, Default, Clone)]
pub struct Vp8Munger {
    source: Option<u32>,
    pic_offset: u16,
    tl0_offset: u8,
    last_pic: Option<u16>,
    last_tl0: Option<u8>,
    started: bool,
}

/// Where the rewritable fields of a VP8 payload descriptor are.
struct Vp8Fields {
    /// Offset of the picture id and whether it is 15 bits (else 7).
    picture_id: Option<(usize, bool)>,
    tl0picidx: Option<usize>,
}

fn vp8_fields(payload: &[u8]) -> Option<Vp8Fields> {
    let first = *payload.first()?;
    let mut fields = Vp8Fields {
        picture_id: None,
        tl0picidx: None,
    };
    if first & 0x80 == 0 {
        return Some(fields);
    }
    let x = *payload.get(1)?;
    let mut i = 2;
    if x & 0x80 != 0 {
        let long = payload.get(i)? & 0x80 != 0;
        if long {
            payload.get(i + 1)?;
        }
        fields.picture_id = Some((i, long));
        i += if long { 2 } else { 1 };
    }
    if x & 0x40 != 0 {
        payload.get(i)?;
        fields.tl0picidx = Some(i);
    }
    Some(fields)
}

impl Vp8Munger {
    /// Rewrites a VP8 payload of source `ssrc`; returns `None` when nothing needs changing
    /// (the payload is then forwarded as is).
    pub fn munge(&mut self, ssrc: u32, payload: &[u8]) -> Option<Vec<u8>> {
        let fields = vp8_fields(payload)?;
        let pic = fields.picture_id.map(|(at, long)| {
            if long {
                u16::from_be_bytes([payload[at] & 0x7f, payload[at + 1]])
            } else {
                u16::from(payload[at] & 0x7f)
            }
        });
        let tl0 = fields.tl0picidx.map(|at| payload[at]);
        if self.source != Some(ssrc) {
            // Switch (or first packet): continue after the last values sent.
            self.pic_offset = match (pic, self.last_pic) {
                (Some(p), Some(last)) if self.started => last.wrapping_add(1).wrapping_sub(p),
                _ => 0,
            };
            self.tl0_offset = match (tl0, self.last_tl0) {
                (Some(t), Some(last)) if self.started => last.wrapping_add(1).wrapping_sub(t),
                _ => 0,
            };
            self.source = Some(ssrc);
            self.started = true;
        }
        let out_pic = pic.map(|p| p.wrapping_add(self.pic_offset) & 0x7fff);
        let out_tl0 = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        if let Some(p) = out_pic {
            let newer = self
                .last_pic
                .is_none_or(|last| p != last && p.wrapping_sub(last) & 0x7fff < 0x4000);
            if newer {
                self.last_pic = Some(p);
            }
        }
        if out_tl0.is_some() {
            self.last_tl0 = out_tl0;
        }
        if self.pic_offset == 0 && self.tl0_offset == 0 {
            return None;
        }
        let mut out = payload.to_vec();
        if let (Some((at, long)), Some(p)) = (fields.picture_id, out_pic) {
            if long {
                out[at] = 0x80 | ((p >> 8) as u8 & 0x7f);
                out[at + 1] = p as u8;
            } else {
                out[at] = p as u8 & 0x7f;
            }
        }
        if let (Some(at), Some(t)) = (fields.tl0picidx, out_tl0) {
            out[at] = t;
        }
        Some(out)
    }

    /// Forces the next packet to continue the numbering (see [`Rewriter::resync`]).
    pub fn resync(&mut self) {
        self.source = None;
    }
}

/// Whether sequence number `a` is after `b`, with wrap-around (RFC 3550 style).
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// Rank of a simulcast layer by its RID (LiveKit uses `q`, `h`, `f`); higher is better.
/// A track without simulcast has the single layer `""`.
pub fn layer_rank(rid: &str) -> u8 {
    match rid {
        "q" | "0" | "l" | "low" => 1,
        "h" | "1" | "m" | "mid" => 2,
        "f" | "2" | "hi" | "high" => 3,
        _ => 0,
    }
}

/// The codecs whose payload formats the forwarder looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    Vp9,
    H264,
    Av1,
    /// Audio and anything else: forwarded without looking inside.
    Other,
}

impl Codec {
    /// The codec of a MIME type such as `video/VP8` (case-insensitive).
    pub fn from_mime(mime_type: &str) -> Codec {
        let is = |name: &str| mime_type.eq_ignore_ascii_case(name);
        if is("video/vp8") {
            Codec::Vp8
        } else if is("video/vp9") {
            Codec::Vp9
        } else if is("video/h264") {
            Codec::H264
        } else if is("video/av1") {
            Codec::Av1
        } else {
            Codec::Other
        }
    }

    /// Whether an RTP payload starts a keyframe, for codecs whose payload format makes that
    /// visible; `None` when the codec is not understood (the caller then switches at once).
    pub fn is_keyframe(self, payload: &[u8]) -> Option<bool> {
        match self {
            Codec::Vp8 => Some(vp8_keyframe(payload)),
            Codec::Vp9 => Some(vp9_keyframe(payload)),
            Codec::H264 => Some(h264_keyframe(payload)),
            Codec::Av1 => Some(payload.first().is_some_and(|b| b & 0x08 != 0)),
            Codec::Other => None,
        }
    }
}

/// Whether an RTP payload of `mime_type` starts a keyframe (see [`Codec::is_keyframe`]).
pub fn is_keyframe(mime_type: &str, payload: &[u8]) -> Option<bool> {
    Codec::from_mime(mime_type).is_keyframe(payload)
}

fn vp8_keyframe(payload: &[u8]) -> bool {
    // RFC 7741 payload descriptor, then the VP8 frame header whose first bit P is 0 for
    // keyframes. Only the first packet of a partition 0 (S=1, PID=0) carries it.
    let Some(&first) = payload.first() else {
        return false;
    };
    let start = first & 0x10 != 0;
    let pid = first & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&x) = payload.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID, one or two bytes.
            let Some(&p) = payload.get(i) else {
                return false;
            };
            i += if p & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/KEYIDX
        }
    }
    payload.get(i).is_some_and(|b| b & 0x01 == 0)
}

fn vp9_keyframe(payload: &[u8]) -> bool {
    // RFC 9628: I|P|L|F|B|E|V|Z; a frame start (B) that is not inter-predicted (P=0).
    payload
        .first()
        .is_some_and(|b| b & 0x08 != 0 && b & 0x40 == 0)
}

fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    let is_key_nal = |nal_type: u8| matches!(nal_type, 5 | 7);
    match header & 0x1f {
        // STAP-A: a list of 16-bit size + NAL unit.
        24 => {
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[i], payload[i + 1]]));
                if is_key_nal(payload[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        // FU-A: start bit and the fragmented unit's type.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key_nal(fu & 0x1f)),
        t => is_key_nal(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_source_passes_through() {
        let mut r = Rewriter::default();
        assert_eq!(r.rewrite(1, 100, 9000, 3000), (100, 9000));
        assert_eq!(r.rewrite(1, 101, 12000, 3000), (101, 12000));
        // Reordered and retransmitted packets keep their numbers.
        assert_eq!(r.rewrite(1, 99, 6000, 3000), (99, 6000));
        assert_eq!(r.rewrite(1, 102, 15000, 3000), (102, 15000));
    }

    #[test]
    fn switch_continues_the_stream() {
        let mut r = Rewriter::default();
        r.rewrite(1, 100, 9000, 3000);
        r.rewrite(1, 101, 12000, 3000);
        // New layer with unrelated numbering.
        assert_eq!(r.rewrite(2, 5000, 777, 3000), (102, 15000));
        assert_eq!(r.rewrite(2, 5001, 777 + 3000, 3000), (103, 18000));
        assert_eq!(r.source(), Some(2));
        // And back again.
        assert_eq!(r.rewrite(1, 400, 50, 90), (104, 18090));
    }

    #[test]
    fn resync_closes_the_gap_of_dropped_packets() {
        let mut r = Rewriter::default();
        r.rewrite(1, 100, 1000, 10);
        r.resync();
        assert_eq!(r.source(), None);
        // Packets 101..=199 were dropped while paused.
        assert_eq!(r.rewrite(1, 200, 50000, 10), (101, 1010));
        assert_eq!(r.rewrite(1, 201, 50100, 10), (102, 1110));
    }

    #[test]
    fn wraps_around() {
        let mut r = Rewriter::default();
        assert_eq!(
            r.rewrite(1, 65535, u32::MAX - 10, 1),
            (65535, u32::MAX - 10)
        );
        assert_eq!(r.rewrite(2, 7, 100, 20), (0, 9));
        assert_eq!(r.rewrite(2, 8, 120, 20), (1, 29));
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
    }

    #[test]
    fn switch_after_reordering_uses_highest_sent() {
        let mut r = Rewriter::default();
        r.rewrite(1, 10, 1000, 1);
        r.rewrite(1, 12, 1200, 1);
        r.rewrite(1, 11, 1100, 1);
        assert_eq!(r.rewrite(2, 0, 0, 100), (13, 1300));
    }

    /// VP8 descriptor with X, I (15-bit picture id) and L (TL0PICIDX), then a header byte.
    fn vp8(pic: u16, tl0: u8) -> Vec<u8> {
        vec![0x90, 0xc0, 0x80 | (pic >> 8) as u8, pic as u8, tl0, 0x00]
    }

    fn pic_of(payload: &[u8]) -> (u16, u8) {
        (
            u16::from_be_bytes([payload[2] & 0x7f, payload[3]]),
            payload[4],
        )
    }

    #[test]
    fn vp8_munger_continues_picture_ids() {
        let mut m = Vp8Munger::default();
        // The first source passes through unchanged.
        assert_eq!(m.munge(1, &vp8(100, 7)), None);
        assert_eq!(m.munge(1, &vp8(101, 8)), None);
        // A switch to a layer with other numbering continues at 102 / 9.
        let out = m.munge(2, &vp8(5000, 200)).unwrap();
        assert_eq!(pic_of(&out), (102, 9));
        assert_eq!(out[5], 0x00, "the VP8 header is untouched");
        let out = m.munge(2, &vp8(5001, 201)).unwrap();
        assert_eq!(pic_of(&out), (103, 10));
        // 15-bit wrap.
        let mut m = Vp8Munger::default();
        m.munge(1, &vp8(0x7fff, 0));
        let out = m.munge(2, &vp8(10, 0)).unwrap();
        assert_eq!(pic_of(&out), (0, 1));
        // Resync after a pause on the same source closes the gap.
        let mut m = Vp8Munger::default();
        m.munge(1, &vp8(10, 1));
        m.resync();
        let out = m.munge(1, &vp8(50, 9)).unwrap();
        assert_eq!(pic_of(&out), (11, 2));
    }

    #[test]
    fn vp8_munger_handles_short_and_bare_descriptors() {
        let mut m = Vp8Munger::default();
        // 7-bit picture id, no TL0PICIDX.
        assert_eq!(m.munge(1, &[0x90, 0x80, 0x05, 0x00]), None);
        let out = m.munge(2, &[0x90, 0x80, 0x40, 0x00]).unwrap();
        assert_eq!(out, vec![0x90, 0x80, 0x06, 0x00]);
        // No extension: nothing to rewrite; truncated input is left alone.
        assert_eq!(m.munge(3, &[0x10, 0x00]), None);
        assert_eq!(m.munge(4, &[0x90]), None);
        assert_eq!(m.munge(4, &[0x90, 0x80, 0x80]), None);
        assert_eq!(m.munge(4, &[]), None);
    }

    #[test]
    fn layer_ranks() {
        assert!(layer_rank("f") > layer_rank("h"));
        assert!(layer_rank("h") > layer_rank("q"));
        assert!(layer_rank("q") > layer_rank(""));
    }

    #[test]
    fn keyframes() {
        // VP8: X=0, S=1, PID=0; frame header P bit 0 → key.
        assert_eq!(is_keyframe("video/VP8", &[0x10, 0x00]), Some(true));
        assert_eq!(is_keyframe("video/VP8", &[0x10, 0x01]), Some(false));
        // VP8 with X, I (15-bit picture id): 0x90, 0x80, 0x81, 0x23, header.
        assert_eq!(
            is_keyframe("video/VP8", &[0x90, 0x80, 0x81, 0x23, 0x00]),
            Some(true)
        );
        assert_eq!(is_keyframe("video/VP8", &[0x00, 0x00]), Some(false));
        assert_eq!(is_keyframe("video/VP8", &[]), Some(false));
        // H264: IDR, SPS in STAP-A, FU-A start of IDR, non-IDR slice.
        assert_eq!(is_keyframe("video/H264", &[0x65]), Some(true));
        assert_eq!(
            is_keyframe("video/H264", &[0x78, 0x00, 0x02, 0x67, 0x42]),
            Some(true)
        );
        assert_eq!(is_keyframe("video/H264", &[0x7c, 0x85]), Some(true));
        assert_eq!(is_keyframe("video/H264", &[0x41]), Some(false));
        // Truncated STAP-A must not panic.
        assert_eq!(is_keyframe("video/H264", &[0x78, 0xff, 0xff]), Some(false));
        assert_eq!(is_keyframe("video/VP9", &[0x08]), Some(true));
        assert_eq!(is_keyframe("video/VP9", &[0x48]), Some(false));
        assert_eq!(is_keyframe("audio/opus", &[1]), None);
    }
}
