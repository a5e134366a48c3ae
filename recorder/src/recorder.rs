//! One recording: the session's events drive the audio mixer and the video switcher,
//! whose frames go through the interleaver into the WebM file.
//!
//! Time: the recording starts with the first media packet (t0); every frame's timestamp
//! is media time since then. Audio packets and video frames are placed by their RTP
//! timestamps, anchored at their source's first arrival; mixed audio is produced by the
//! wall clock, [`JITTER_DELAY`] behind it, one 20 ms Opus frame at a time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::mixer::{Mixer, OpusDecoder, FRAME, RATE};
use crate::session::{Kind, Session, SessionEvent};
use crate::switcher::{Action, Switcher};
use crate::vp8;
use crate::webm_out::{Interleaver, OutError, OutFrame, WebmOut};

/// How far behind real time audio is mixed, so that jittered packets are in time.
const JITTER_DELAY: Duration = Duration::from_millis(120);
/// A video source is re-anchored when a frame's RTP time and its arrival differ by more.
const VIDEO_REANCHOR_NS: i64 = 500_000_000;
/// How often unanswered key-frame requests are looked at.
const SWITCH_TICK: Duration = Duration::from_millis(250);
/// Opus bitrate of the mix.
const AUDIO_BITRATE: i32 = 48_000;

/// The JSON line printed when the recording is finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub duration_ms: u64,
    pub size: u64,
    pub width: u32,
    pub height: u32,
    pub audio_sources: u32,
    pub video_sources: u32,
}

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Join(#[from] crate::session::JoinError),
    #[error("no media arrived: nothing was recorded")]
    NothingRecorded,
    #[error("{0}")]
    Output(OutError),
    #[error("opus: {0}")]
    Opus(String),
}

impl From<OutError> for RecordError {
    fn from(e: OutError) -> Self {
        match e {
            OutError::Empty => RecordError::NothingRecorded,
            other => RecordError::Output(other),
        }
    }
}

struct VideoSource {
    depacketizer: vp8::Depacketizer,
    /// (RTP timestamp, media time in ns) of the anchor frame.
    anchor: Option<(u32, i64)>,
}

impl VideoSource {
    /// The media time of a frame with RTP timestamp `rtp_ts` arriving at `arrival` ns.
    fn place(&mut self, rtp_ts: u32, arrival: i64) -> i64 {
        if let Some((rtp0, ns0)) = self.anchor {
            let delta = i64::from(rtp_ts.wrapping_sub(rtp0) as i32);
            let ns = ns0 + delta * 1_000_000_000 / i64::from(vp8::CLOCK_RATE);
            if (ns - arrival).abs() <= VIDEO_REANCHOR_NS {
                return ns;
            }
        }
        self.anchor = Some((rtp_ts, arrival));
        arrival
    }
}

/// The recording's state.
struct Engine {
    started: Instant,
    t0: Option<Instant>,
    mixer: Mixer,
    encoder: opus::Encoder,
    audio_tracks: HashSet<String>,
    video: HashMap<String, VideoSource>,
    switcher: Switcher,
    last_video_ns: Option<u64>,
    video_written: HashSet<String>,
    interleaver: Interleaver,
    out: WebmOut,
}

impl Engine {
    fn new(out: &Path) -> Result<Engine, RecordError> {
        let opus_err = |e: opus::Error| RecordError::Opus(e.to_string());
        let mut encoder = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio)
            .map_err(opus_err)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(AUDIO_BITRATE))
            .map_err(opus_err)?;
        let pre_skip = encoder.get_lookahead().map_err(opus_err)?;
        Ok(Engine {
            started: Instant::now(),
            t0: None,
            mixer: Mixer::default(),
            encoder,
            audio_tracks: HashSet::new(),
            video: HashMap::new(),
            switcher: Switcher::default(),
            last_video_ns: None,
            video_written: HashSet::new(),
            interleaver: Interleaver::default(),
            out: WebmOut::new(out, u16::try_from(pre_skip).unwrap_or(0)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn handle(&mut self, event: SessionEvent) -> Result<Vec<Action>, RecordError> {
        let now_ms = self.now_ms();
        let actions = match event {
            SessionEvent::Track { track, owner, kind } => match kind {
                Kind::Audio => {
                    let decoder = OpusDecoder::new().map_err(RecordError::Opus)?;
                    self.mixer.add_source(&track, Box::new(decoder));
                    self.audio_tracks.insert(track);
                    Vec::new()
                }
                Kind::Video => {
                    self.video.insert(
                        track.clone(),
                        VideoSource {
                            depacketizer: vp8::Depacketizer::default(),
                            anchor: None,
                        },
                    );
                    self.switcher.add_track(&track, &owner, now_ms)
                }
            },
            SessionEvent::Rtp { track, packet, at } => {
                self.media(&track, packet, at)?;
                Vec::new()
            }
            SessionEvent::TrackEnded { track } => {
                tracing::info!(%track, "track ended");
                self.audio_tracks.remove(&track);
                self.mixer.remove_source(&track);
                if self.video.remove(&track).is_some() {
                    self.switcher.remove_track(&track, now_ms)
                } else {
                    Vec::new()
                }
            }
            SessionEvent::Speakers(changes) => self.switcher.speakers_changed(&changes, now_ms),
            SessionEvent::Ended(_) => Vec::new(),
        };
        Ok(actions)
    }

    fn media(
        &mut self,
        track: &str,
        packet: webrtc::rtp::packet::Packet,
        at: Instant,
    ) -> Result<(), RecordError> {
        if packet.payload.is_empty() {
            return Ok(()); // padding
        }
        let t0 = *self.t0.get_or_insert(at);
        let arrival = at.saturating_duration_since(t0);
        if self.audio_tracks.contains(track) {
            let samples = (arrival.as_micros() * u128::from(RATE) / 1_000_000) as i64;
            self.mixer
                .push(track, packet.header.timestamp, packet.payload, samples);
            return Ok(());
        }
        let Some(source) = self.video.get_mut(track) else {
            return Ok(());
        };
        let arrival_ns = arrival.as_nanos() as i64;
        for frame in source.depacketizer.push(packet) {
            let placed = source.place(frame.rtp_ts, arrival_ns).max(0) as u64;
            if !self.switcher.on_frame(track, frame.keyframe) {
                continue;
            }
            // One stream of frames whatever the source: never back in time.
            let ts = match self.last_video_ns {
                Some(last) => placed.max(last + 1_000_000),
                None => placed,
            };
            self.last_video_ns = Some(ts);
            if self.video_written.insert(track.to_owned()) {
                tracing::info!(%track, "video source shown");
            }
            self.interleaver.push(OutFrame {
                video: true,
                ts_ns: ts,
                data: frame.data.to_vec(),
                keyframe: frame.keyframe,
            });
        }
        self.write_ready()
    }

    /// Mixes and encodes every audio window that is due (all of them at the end).
    fn mix_due(&mut self, all: bool) -> Result<(), RecordError> {
        let Some(t0) = self.t0 else {
            return Ok(());
        };
        let mut elapsed = t0.elapsed();
        if !all {
            elapsed = elapsed.saturating_sub(JITTER_DELAY);
        }
        let due = (elapsed.as_micros() * u128::from(RATE) / 1_000_000) as i64;
        let mut buf = [0u8; 4000];
        while self.mixer.cursor() + FRAME as i64 <= due {
            let start = self.mixer.cursor();
            let pcm = self.mixer.mix();
            let n = self
                .encoder
                .encode(&pcm, &mut buf)
                .map_err(|e| RecordError::Opus(e.to_string()))?;
            self.interleaver.push(OutFrame {
                video: false,
                ts_ns: (start as u64) * 1_000_000_000 / u64::from(RATE),
                data: buf[..n].to_vec(),
                keyframe: true,
            });
        }
        self.write_ready()
    }

    fn write_ready(&mut self) -> Result<(), RecordError> {
        for frame in self.interleaver.ready() {
            self.out.push(frame)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Summary, RecordError> {
        if self.t0.is_none() {
            return Err(RecordError::NothingRecorded);
        }
        let result = self.mix_due(true).and_then(|()| {
            for frame in self.interleaver.flush() {
                self.out.push(frame)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.out.discard();
            return Err(e);
        }
        if self.out.dropped_video > 0 {
            tracing::warn!(
                frames = self.out.dropped_video,
                "video came too late for the file"
            );
        }
        self.mixer.log_stats();
        if self.mixer.late_packets > 0 {
            tracing::info!(
                packets = self.mixer.late_packets,
                "late audio packets dropped"
            );
        }
        let done = self.out.finish()?;
        Ok(Summary {
            duration_ms: done.duration_ms,
            size: done.size,
            width: done.width,
            height: done.height,
            audio_sources: self.mixer.sources_heard() as u32,
            video_sources: if done.width > 0 {
                self.video_written.len() as u32
            } else {
                0
            },
        })
    }
}

/// Joins the room at `url` with `token` and records into `out` until `stop` resolves (to
/// the reason) or the SFU ends the session; then finishes the file.
pub async fn record(
    url: &str,
    token: &str,
    out: &Path,
    stop: impl Future<Output = String>,
) -> Result<Summary, RecordError> {
    let mut engine = Engine::new(out)?;
    let (session, mut events) = Session::join(url, token).await?;
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut switch_tick = tokio::time::interval(SWITCH_TICK);
    tokio::pin!(stop);
    let outcome: Result<String, RecordError> = loop {
        let actions = tokio::select! {
            reason = &mut stop => break Ok(reason),
            event = events.recv() => match event {
                None => break Ok("the session ended".into()),
                Some(SessionEvent::Ended(reason)) => break Ok(reason),
                Some(event) => match engine.handle(event) {
                    Ok(actions) => actions,
                    Err(e) => break Err(e),
                },
            },
            _ = audio_tick.tick() => match engine.mix_due(false) {
                Ok(()) => Vec::new(),
                Err(e) => break Err(e),
            },
            _ = switch_tick.tick() => {
                let now = engine.now_ms();
                engine.switcher.tick(now)
            }
        };
        for Action::RequestKeyframe(track) in actions {
            tracing::info!(%track, "key frame requested");
            session.request_keyframe(&track).await;
        }
    };
    session.close().await;
    match outcome {
        Ok(reason) => {
            tracing::info!(%reason, "recording stopped");
            engine.finish()
        }
        Err(e) => {
            engine.out.discard();
            Err(e)
        }
    }
}
