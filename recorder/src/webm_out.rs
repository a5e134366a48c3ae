//! The output file: one WebM (libwebm's muxer through the `webm` crate) with one Opus
//! audio track and, once video has arrived, one VP8 track.
//!
//! libwebm wants every track declared before the first frame and the video size with it,
//! so audio frames are held in memory until the first video key frame (whose header has
//! the size) or until [`MAX_HELD_AUDIO`] of them; after that the file is audio only. The
//! muxer also wants timestamps non-decreasing across tracks: [`Interleaver`] merges the
//! two streams (audio is written a jitter delay after real time, video at once) in
//! timestamp order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use webm::mux::{
    AudioCodecId, AudioTrack, Segment, SegmentBuilder, SegmentMode, VideoCodecId, VideoTrack,
    Writer,
};

use crate::vp8;

/// Audio frames (20 ms) held while waiting for video: ten minutes.
pub const MAX_HELD_AUDIO: usize = 30_000;
/// A frame waits at most this long (ns of media time) for the other stream.
const HOLD_NS: u64 = 1_000_000_000;
/// Nanoseconds per millisecond.
const MS: u64 = 1_000_000;

/// An encoded frame for the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    pub video: bool,
    /// Media time, nanoseconds since the recording's start.
    pub ts_ns: u64,
    pub data: Vec<u8>,
    pub keyframe: bool,
}

/// Merges the audio and video frames (each in order) into one stream in timestamp order.
/// A frame is released once the other stream has reached its time, or once it is
/// [`HOLD_NS`] older than the newest frame (the other stream may have stopped).
#[derive(Debug, Default)]
pub struct Interleaver {
    queues: [VecDeque<OutFrame>; 2],
    /// The newest timestamp pushed per stream.
    newest: [Option<u64>; 2],
}

impl Interleaver {
    pub fn push(&mut self, frame: OutFrame) {
        let i = usize::from(frame.video);
        self.newest[i] = Some(self.newest[i].map_or(frame.ts_ns, |n| n.max(frame.ts_ns)));
        self.queues[i].push_back(frame);
    }

    /// The frames that can be written now, in order.
    pub fn ready(&mut self) -> Vec<OutFrame> {
        let newest = self.newest.iter().flatten().max().copied().unwrap_or(0);
        let mut out = Vec::new();
        loop {
            let heads = [
                self.queues[0].front().map(|f| f.ts_ns),
                self.queues[1].front().map(|f| f.ts_ns),
            ];
            let pick = match heads {
                [Some(a), Some(v)] => Some(usize::from(v < a)),
                [Some(t), None] | [None, Some(t)] => {
                    let i = usize::from(heads[0].is_none());
                    let other_reached = self.newest[1 - i].is_some_and(|n| n >= t);
                    (other_reached || t + HOLD_NS <= newest).then_some(i)
                }
                [None, None] => None,
            };
            match pick.and_then(|i| self.queues[i].pop_front()) {
                Some(frame) => out.push(frame),
                None => break,
            }
        }
        out
    }

    /// Everything left, in order (at the end of the recording).
    pub fn flush(&mut self) -> Vec<OutFrame> {
        let mut all: Vec<OutFrame> = self.queues.iter_mut().flat_map(|q| q.drain(..)).collect();
        all.sort_by_key(|f| f.ts_ns);
        all
    }
}

/// Why the file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error("creating {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("the WebM muxer refused {0}")]
    Mux(String),
    #[error("writing {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("nothing was recorded")]
    Empty,
}

/// What the finished file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub duration_ms: u64,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

struct Open {
    segment: Segment<BufWriter<File>>,
    audio: AudioTrack,
    video: Option<(VideoTrack, u32, u32)>,
    last_ts: u64,
}

/// The file being written.
pub struct WebmOut {
    path: PathBuf,
    /// The Opus encoder's lookahead, samples the player skips.
    pre_skip: u16,
    /// Audio frames held until the video size is known.
    held: Vec<OutFrame>,
    open: Option<Open>,
    /// The end of the last frame written (ns).
    end_ns: u64,
    /// Video frames dropped because the file had been started without video.
    pub dropped_video: u64,
}

/// The Opus identification header (RFC 7845 §5.1) for CodecPrivate: mono, 48 kHz.
fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&crate::mixer::RATE.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family
    head
}

impl WebmOut {
    /// A file to be created at `path` when the first frames are written; `pre_skip` is
    /// the Opus encoder's lookahead.
    pub fn new(path: &Path, pre_skip: u16) -> WebmOut {
        WebmOut {
            path: path.to_owned(),
            pre_skip,
            held: Vec::new(),
            open: None,
            end_ns: 0,
            dropped_video: 0,
        }
    }

    fn start(&mut self, video: Option<(u32, u32)>) -> Result<(), OutError> {
        let file = File::create(&self.path).map_err(|e| OutError::Create(self.path.clone(), e))?;
        let mux = |what: &str| {
            let what = what.to_owned();
            move |e: webm::mux::Error| OutError::Mux(format!("{what}: {e:?}"))
        };
        let builder = SegmentBuilder::new(Writer::new(BufWriter::new(file)))
            .map_err(mux("the segment"))?
            .set_mode(SegmentMode::File)
            .map_err(mux("the mode"))?
            .set_writing_app("myelin-recorder")
            .map_err(mux("the writing app"))?;
        let (builder, video) = match video {
            Some((w, h)) => {
                let (b, track) = builder
                    .add_video_track(w, h, VideoCodecId::VP8, None)
                    .map_err(mux("the video track"))?;
                (b, Some((track, w, h)))
            }
            None => (builder, None),
        };
        let (builder, audio) = builder
            .add_audio_track(crate::mixer::RATE, 1, AudioCodecId::Opus, None)
            .map_err(mux("the audio track"))?;
        let builder = builder
            .set_codec_private(audio, &opus_head(self.pre_skip))
            .map_err(mux("the Opus header"))?;
        self.open = Some(Open {
            segment: builder.build(),
            audio,
            video,
            last_ts: 0,
        });
        for frame in std::mem::take(&mut self.held) {
            self.write(frame)?;
        }
        Ok(())
    }

    /// Writes a frame (frames come in timestamp order).
    pub fn push(&mut self, frame: OutFrame) -> Result<(), OutError> {
        if self.open.is_none() {
            if frame.video {
                match vp8::keyframe_size(&frame.data) {
                    Some(size) => self.start(Some(size))?,
                    // Only a key frame can start the video track.
                    None => return Ok(()),
                }
            } else {
                self.held.push(frame);
                if self.held.len() >= MAX_HELD_AUDIO {
                    tracing::warn!("no video after ten minutes: recording audio only");
                    self.start(None)?;
                }
                return Ok(());
            }
        }
        self.write(frame)
    }

    fn write(&mut self, frame: OutFrame) -> Result<(), OutError> {
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        let track: u64 = match (frame.video, &open.video) {
            (true, Some((track, _, _))) => (*track).into(),
            (true, None) => {
                self.dropped_video += 1;
                return Ok(());
            }
            (false, _) => open.audio.into(),
        };
        let ts = frame.ts_ns.max(open.last_ts);
        open.segment
            .add_frame(track, &frame.data, ts, frame.keyframe || !frame.video)
            .map_err(|e| OutError::Mux(format!("a frame: {e:?}")))?;
        open.last_ts = ts;
        // An audio frame lasts 20 ms; a video frame until the next.
        let end = if frame.video { ts } else { ts + 20 * MS };
        self.end_ns = self.end_ns.max(end);
        Ok(())
    }

    /// Finishes the file: writes what was held, the cues and the duration. A file that
    /// could not be finished is removed.
    pub fn finish(self) -> Result<Finished, OutError> {
        let path = self.path.clone();
        let result = self.finish_file();
        if matches!(&result, Err(e) if !matches!(e, OutError::Empty)) {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    fn finish_file(mut self) -> Result<Finished, OutError> {
        if self.open.is_none() {
            if self.held.is_empty() {
                return Err(OutError::Empty);
            }
            self.start(None)?;
        }
        let Some(open) = self.open.take() else {
            return Err(OutError::Empty);
        };
        let duration_ms = self.end_ns.div_ceil(MS);
        let (width, height) = open.video.map_or((0, 0), |(_, w, h)| (w, h));
        let writer = open
            .segment
            .finalize(Some(duration_ms))
            .map_err(|_| OutError::Mux("finalizing the file".into()))?;
        let mut file = writer.into_inner();
        file.flush()
            .map_err(|e| OutError::Io(self.path.clone(), e))?;
        let file = file
            .into_inner()
            .map_err(|e| OutError::Io(self.path.clone(), e.into_error()))?;
        file.sync_all()
            .map_err(|e| OutError::Io(self.path.clone(), e))?;
        let size = file
            .metadata()
            .map_err(|e| OutError::Io(self.path.clone(), e))?
            .len();
        Ok(Finished {
            duration_ms,
            size,
            width,
            height,
        })
    }

    /// Removes a partly written file (after a failure).
    pub fn discard(self) {
        if self.open.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(video: bool, ms: u64) -> OutFrame {
        OutFrame {
            video,
            ts_ns: ms * MS,
            data: vec![1, 2, 3],
            keyframe: false,
        }
    }

    fn times(frames: &[OutFrame]) -> Vec<(bool, u64)> {
        frames.iter().map(|f| (f.video, f.ts_ns / MS)).collect()
    }

    #[test]
    fn frames_come_out_in_timestamp_order() {
        let mut il = Interleaver::default();
        // Video runs ahead of audio (audio is mixed behind a jitter delay).
        il.push(frame(true, 0));
        il.push(frame(true, 33));
        il.push(frame(true, 66));
        assert!(il.ready().is_empty());
        il.push(frame(false, 0));
        il.push(frame(false, 20));
        il.push(frame(false, 40));
        assert_eq!(
            times(&il.ready()),
            vec![(false, 0), (true, 0), (false, 20), (true, 33), (false, 40)]
        );
        il.push(frame(false, 60));
        il.push(frame(false, 80));
        // Audio at 80 waits: video may still bring a frame before it.
        assert_eq!(times(&il.ready()), vec![(false, 60), (true, 66)]);
        il.push(frame(true, 100));
        assert_eq!(times(&il.ready()), vec![(false, 80)]);
        assert_eq!(times(&il.flush()), vec![(true, 100)]);
    }

    #[test]
    fn a_stopped_stream_does_not_hold_the_other_forever() {
        let mut il = Interleaver::default();
        il.push(frame(false, 0));
        assert!(il.ready().is_empty());
        for ms in (20..=1000).step_by(20) {
            il.push(frame(false, ms));
        }
        // A second of audio with no video: the oldest goes out.
        assert_eq!(times(&il.ready()), vec![(false, 0)]);
        il.push(frame(true, 500));
        il.push(frame(false, 1020));
        let out = il.ready();
        assert_eq!(out.first().map(|f| f.ts_ns / MS), Some(20));
        assert!(out.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
        assert!(out.iter().any(|f| f.video));
        // 52 audio frames and one video frame went in.
        assert_eq!(il.flush().len(), 53 - 1 - out.len());
    }

    #[test]
    fn opus_head_layout() {
        let head = opus_head(312);
        assert_eq!(head.len(), 19);
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!(head[9], 1);
        assert_eq!(u16::from_le_bytes([head[10], head[11]]), 312);
        assert_eq!(
            u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
            48_000
        );
    }

    #[test]
    fn nothing_recorded_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.webm");
        let out = WebmOut::new(&path, 312);
        assert!(matches!(out.finish(), Err(OutError::Empty)));
        assert!(!path.exists());
    }

    #[test]
    fn audio_then_video_makes_a_file_with_both_tracks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.webm");
        let mut out = WebmOut::new(&path, 312);
        out.push(frame(false, 0)).unwrap();
        out.push(frame(false, 20)).unwrap();
        // An inter frame cannot start the video; the key frame does.
        out.push(frame(true, 30)).unwrap();
        assert!(!path.exists());
        let mut key = crate::vp8::tests::keyframe_header(320, 180);
        key.extend_from_slice(&[0; 32]);
        out.push(OutFrame {
            video: true,
            ts_ns: 35 * MS,
            data: key,
            keyframe: true,
        })
        .unwrap();
        out.push(frame(false, 40)).unwrap();
        let done = out.finish().unwrap();
        assert_eq!((done.width, done.height), (320, 180));
        assert_eq!(done.duration_ms, 60);
        assert_eq!(done.size, std::fs::metadata(&path).unwrap().len());
        let bytes = std::fs::read(&path).unwrap();
        // EBML magic, the DocType and both codec ids.
        assert_eq!(&bytes[..4], &[0x1a, 0x45, 0xdf, 0xa3]);
        for needle in [&b"webm"[..], b"V_VP8", b"A_OPUS", b"OpusHead"] {
            assert!(bytes.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn audio_only_when_no_video_came() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audio.webm");
        let mut out = WebmOut::new(&path, 312);
        for ms in (0..200).step_by(20) {
            out.push(frame(false, ms)).unwrap();
        }
        let done = out.finish().unwrap();
        assert_eq!((done.width, done.height, done.duration_ms), (0, 0, 200));
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"V_VP8"));
    }
}
