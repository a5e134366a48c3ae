//! The SFU load scenario behind `myelin-sfu-load`: P webrtc-rs publishers send synthetic
//! audio and/or video RTP into one room, S subscribers receive every track; the report
//! gives forwarded packets/s, loss, added latency and the SFU's CPU per forwarded packet.
//!
//! Loss and latency come from a stamp at the end of every payload (see [`synth`]):
//! publishers mark the packets sent during the measuring window, subscribers count each
//! marked packet once and record receive time − send time (one process, one clock).

pub mod synth;
pub mod tally;
pub mod target;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt};
use livekit_protocol::TrackType;
use myelin_sfu::client::{self, Client, ConnectOptions};
use serde_json::{json, Value};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

use synth::{AudioSource, VideoSource};
use tally::{Tally, Totals};
use target::{RunningSfu, Target};

/// Limits that keep a run bounded.
pub const MAX_PUBLISHERS: usize = 64;
pub const MAX_SUBSCRIBERS: usize = 500;
pub const MAX_DURATION: Duration = Duration::from_secs(600);
pub const MAX_VIDEO_PPS: u32 = 5000;
/// Largest payload written (stays below a 1500-byte MTU with RTP/SRTP overhead).
pub const MAX_PACKET: usize = 1200;
/// Joins in flight at once.
const CONNECT_CONCURRENCY: usize = 8;
/// Time after the window for the last packets (and retransmissions) to arrive.
const DRAIN: Duration = Duration::from_millis(1500);

/// Publisher phases, shared with the sender tasks.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub publishers: usize,
    pub subscribers: usize,
    /// Length of the measuring window.
    pub duration: Duration,
    /// An Opus-like track per publisher (50 packets/s).
    pub audio: bool,
    pub audio_bytes: usize,
    /// Packets/s of a VP8-like track per publisher; 0 for none.
    pub video_pps: u32,
    pub video_bytes: usize,
    pub video_fps: u32,
    /// How long to wait for every subscriber to receive every track before measuring.
    pub ready_timeout: Duration,
    /// Print a progress line on stderr.
    pub progress: bool,
}

impl Options {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_PUBLISHERS).contains(&self.publishers) {
            bail!("--publishers must be 1..={MAX_PUBLISHERS}");
        }
        if !(1..=MAX_SUBSCRIBERS).contains(&self.subscribers) {
            bail!("--subscribers must be 1..={MAX_SUBSCRIBERS}");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!("--duration must be above 0 and at most {MAX_DURATION:?}");
        }
        if !self.audio && self.video_pps == 0 {
            bail!("nothing to send: enable audio or give --video-pps");
        }
        if self.video_pps > MAX_VIDEO_PPS {
            bail!("--video-pps must be at most {MAX_VIDEO_PPS}");
        }
        if self.audio_bytes > MAX_PACKET || self.video_bytes > MAX_PACKET {
            bail!("packet sizes must be at most {MAX_PACKET} bytes");
        }
        if self.ready_timeout > Duration::from_secs(300) {
            bail!("--ready-timeout must be at most 300 s");
        }
        Ok(())
    }

    fn tracks_per_publisher(&self) -> usize {
        usize::from(self.audio) + usize::from(self.video_pps > 0)
    }
}

/// A publisher's track and the counters its sender task keeps.
struct SentTrack {
    measured: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the scenario and returns the report (one JSON object).
pub async fn run(options: &Options) -> Result<Value> {
    options.validate()?;
    let host = host_info();
    let sfu = RunningSfu::start(&options.target).await?;
    let result = run_against(options, &sfu).await;
    match result {
        Ok(mut report) => {
            report["sfu"] = json!({"mode": sfu.mode, "url": sfu.url});
            report["host"] = host;
            Ok(report)
        }
        Err(e) => {
            let log = sfu.log_tail();
            if log.is_empty() {
                Err(e)
            } else {
                Err(e.context(format!("SFU log:\n{log}")))
            }
        }
    }
}

async fn run_against(options: &Options, sfu: &RunningSfu) -> Result<Value> {
    let epoch = Instant::now();
    let now_ns = move || epoch.elapsed().as_nanos() as u64;
    let room = format!("load-{:08x}", rand::random::<u32>());
    let tracks = options.publishers * options.tracks_per_publisher();
    let token =
        |identity: &str| client::mint_token(&sfu.api_key, &sfu.api_secret, identity, &room, 3600);

    // Subscribers first: every track published afterwards reaches all of them.
    progress(options, "connecting subscribers");
    let tallies: Vec<Arc<Tally>> = (0..options.subscribers)
        .map(|_| Arc::new(Tally::new(tracks)))
        .collect();
    let mut subscribers = Vec::with_capacity(options.subscribers);
    let mut joins = stream::iter(tallies.iter().enumerate().map(|(i, tally)| {
        let tally = tally.clone();
        let token = token(&format!("sub-{i}"));
        async move {
            let on_rtp: client::RtpCallback =
                Arc::new(move |_: &str, packet: &webrtc::rtp::packet::Packet| {
                    tally.record(&packet.payload, now_ns())
                });
            Client::connect_with(
                &sfu.url,
                &token?,
                ConnectOptions {
                    on_rtp: Some(on_rtp),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("subscriber {i}"))
        }
    }))
    .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some(client) = joins.next().await {
        subscribers.push(client?);
    }
    drop(joins);

    progress(options, "connecting publishers");
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut publishers = Vec::with_capacity(options.publishers);
    let mut sent: Vec<SentTrack> = Vec::with_capacity(tracks);
    for p in 0..options.publishers {
        let mut client = Client::connect_with(
            &sfu.url,
            &token(&format!("pub-{p}"))?,
            ConnectOptions {
                query: "&auto_subscribe=0".into(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("publisher {p}"))?;
        let mut index = p * options.tracks_per_publisher();
        let mut writers = Vec::new();
        if options.audio {
            let track = Arc::new(TrackLocalStaticRTP::new(
                client::opus(),
                format!("pub{p}-audio"),
                format!("pub{p}"),
            ));
            client
                .announce_track(track.clone(), TrackType::Audio)
                .await?;
            let source = AudioSource::new(index as u16, options.audio_bytes);
            writers.push((track, None, Source::Audio(source)));
            index += 1;
        }
        if options.video_pps > 0 {
            let track = Arc::new(TrackLocalStaticRTP::new(
                client::vp8(),
                format!("pub{p}-video"),
                format!("pub{p}"),
            ));
            let (_, sender) = client
                .announce_track(track.clone(), TrackType::Video)
                .await?;
            let fps = options.video_fps.clamp(1, options.video_pps);
            let source =
                VideoSource::new(index as u16, options.video_pps, options.video_bytes, fps);
            writers.push((track, Some(sender), Source::Video(source)));
        }
        client.negotiate_publisher().await?;
        client.wait_publisher_connected().await?;
        for (track, sender, source) in writers {
            sent.push(spawn_sender(track, sender, source, phase.clone(), now_ns));
        }
        publishers.push(client);
    }

    progress(
        options,
        "waiting for every subscriber to receive every track",
    );
    let deadline = Instant::now() + options.ready_timeout;
    loop {
        let ready = tallies.iter().filter(|t| t.has_all_tracks()).count();
        if ready == tallies.len() {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = tallies
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.has_all_tracks())
                .map(|(i, t)| format!("sub-{i} lacks tracks {:?}", t.missing_tracks()))
                .collect();
            bail!(
                "only {ready} of {} subscribers received all {tracks} tracks within {:?} ({})",
                tallies.len(),
                options.ready_timeout,
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The measuring window.
    let cpu0 = sfu.cpu_secs();
    let client_cpu0 = sfu.client_cpu_secs();
    let start = Instant::now();
    phase.store(MEASURE, Ordering::SeqCst);
    let mut last = (start, 0u64);
    while start.elapsed() < options.duration {
        let left = options.duration.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if options.progress {
            let forwarded: u64 = tallies.iter().map(|t| t.measured()).sum();
            let rate = (forwarded - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), forwarded);
            eprint!(
                "\r[sfu-load] {:>4.0}/{} s  forwarded {forwarded:>10}  {rate:>9.0} pkt/s ",
                start.elapsed().as_secs_f64(),
                options.duration.as_secs_f64()
            );
        }
    }
    phase.store(STOP, Ordering::SeqCst);
    let window = start.elapsed().as_secs_f64();
    let cpu1 = sfu.cpu_secs();
    let client_cpu1 = sfu.client_cpu_secs();
    if options.progress {
        eprintln!();
    }
    tokio::time::sleep(DRAIN).await;

    let packets_sent: u64 = sent.iter().map(|t| t.measured.load(Ordering::SeqCst)).sum();
    let mut totals = Totals::default();
    for tally in &tallies {
        tally.add_to(&mut totals);
    }
    for track in &sent {
        track.task.abort();
    }
    progress(options, "leaving");
    let leaving = publishers.into_iter().chain(subscribers).map(Client::close);
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        stream::iter(leaving)
            .buffer_unordered(32)
            .collect::<Vec<()>>(),
    )
    .await;

    Ok(report(
        options,
        Measured {
            window,
            packets_sent,
            totals,
            sfu_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
            client_cpu: client_cpu0.zip(client_cpu1).map(|(a, b)| b - a),
        },
    ))
}

enum Source {
    Audio(AudioSource),
    Video(VideoSource),
}

/// Writes the track's packets at its rate until the phase is [`STOP`]; asks for a
/// keyframe on the next frame when the SFU sends PLI or FIR.
fn spawn_sender(
    track: Arc<TrackLocalStaticRTP>,
    sender: Option<Arc<RTCRtpSender>>,
    mut source: Source,
    phase: Arc<AtomicU8>,
    now_ns: impl Fn() -> u64 + Send + Copy + 'static,
) -> SentTrack {
    let measured = Arc::new(AtomicU64::new(0));
    let keyframe = Arc::new(AtomicBool::new(true));
    if let Some(sender) = sender {
        let keyframe = keyframe.clone();
        tokio::spawn(async move {
            while let Ok((packets, _)) = sender.read_rtcp().await {
                if packets
                    .iter()
                    .any(|p| myelin_sfu::media::wants_keyframe(p.as_ref()))
                {
                    keyframe.store(true, Ordering::Relaxed);
                }
            }
        });
    }
    let counter = measured.clone();
    let task = tokio::spawn(async move {
        let period = match &source {
            Source::Audio(_) => Duration::from_millis(20),
            Source::Video(v) => Duration::from_secs(1) / v.fps(),
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            let now_phase = phase.load(Ordering::Relaxed);
            if now_phase >= STOP {
                break;
            }
            let in_window = now_phase == MEASURE;
            let mut written = 0;
            match &mut source {
                Source::Audio(audio) => {
                    if track
                        .write_rtp(&audio.next(in_window, now_ns()))
                        .await
                        .is_ok()
                    {
                        written += 1;
                    }
                }
                Source::Video(video) => {
                    let key = keyframe.swap(false, Ordering::Relaxed);
                    for packet in video.next_frame(key, in_window, now_ns) {
                        if track.write_rtp(&packet).await.is_ok() {
                            written += 1;
                        }
                    }
                }
            }
            if in_window {
                counter.fetch_add(written, Ordering::Relaxed);
            }
        }
    });
    SentTrack { measured, task }
}

/// Raw figures of one run.
struct Measured {
    window: f64,
    packets_sent: u64,
    totals: Totals,
    sfu_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

fn report(options: &Options, m: Measured) -> Value {
    let expected = m.packets_sent * options.subscribers as u64;
    let forwarded = m.totals.measured;
    let lost = expected.saturating_sub(forwarded);
    let lost_percent = if expected > 0 {
        lost as f64 * 100.0 / expected as f64
    } else {
        0.0
    };
    let forwarded_pps = forwarded as f64 / m.window;
    let ms = |q: f64| {
        m.totals
            .latency_us
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| round3(h.value_at_quantile(q) as f64 / 1000.0))
    };
    let max_ms = m
        .totals
        .latency_us
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| round3(h.max() as f64 / 1000.0));
    let sfu_cores = m.sfu_cpu.map(|c| c / m.window);
    json!({
        "publishers": options.publishers,
        "subscribers": options.subscribers,
        "duration_secs": round3(m.window),
        "tracks": {
            "audio": options.audio,
            "audio_bytes": options.audio_bytes,
            "video_pps": options.video_pps,
            "video_bytes": options.video_bytes,
            "video_fps": options.video_fps.clamp(1, options.video_pps.max(1)),
        },
        "packets_sent": m.packets_sent,
        "packets_expected": expected,
        "packets_forwarded": forwarded,
        "duplicates": m.totals.duplicates,
        "forwarded_pps": round3(forwarded_pps),
        "lost_percent": round3(lost_percent),
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": max_ms},
        "sfu_cpu_secs": m.sfu_cpu.map(round3),
        "sfu_cpu_cores": sfu_cores.map(round3),
        "sfu_cores_per_10k_pps": sfu_cores
            .filter(|_| forwarded_pps > 0.0)
            .map(|c| round3(c / (forwarded_pps / 10_000.0))),
        "forwarded_pps_per_core": m.sfu_cpu
            .filter(|c| *c > 0.0)
            .map(|c| round3(forwarded as f64 / c)),
        "client_cpu_secs": m.client_cpu.map(round3),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn progress(options: &Options, what: &str) {
    if options.progress {
        eprintln!("[sfu-load] {what}");
    }
}

/// CPUs and load average before the run, so figures can be read in context.
fn host_info() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    json!({"cpus": cpus, "loadavg_before": loadavg})
}

/// A human-readable table of a report.
pub fn pretty(report: &Value) -> String {
    let get = |path: &str| {
        let mut v = report;
        for part in path.split('.') {
            v = &v[part];
        }
        match v {
            Value::Null => "–".to_owned(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let rows = [
        ("SFU", "sfu.mode"),
        ("publishers", "publishers"),
        ("subscribers", "subscribers"),
        ("window (s)", "duration_secs"),
        ("video pkt/s per publisher", "tracks.video_pps"),
        ("packets sent", "packets_sent"),
        ("packets expected", "packets_expected"),
        ("packets forwarded", "packets_forwarded"),
        ("forwarded pkt/s", "forwarded_pps"),
        ("lost %", "lost_percent"),
        ("latency p50 (ms)", "latency_ms.p50"),
        ("latency p99 (ms)", "latency_ms.p99"),
        ("latency max (ms)", "latency_ms.max"),
        ("SFU CPU (s)", "sfu_cpu_secs"),
        ("SFU cores busy", "sfu_cpu_cores"),
        ("SFU cores per 10k pkt/s", "sfu_cores_per_10k_pps"),
        ("forwarded pkt/s per core", "forwarded_pps_per_core"),
        ("client CPU (s)", "client_cpu_secs"),
    ];
    let mut out = String::new();
    for (label, path) in rows {
        out.push_str(&format!("{label:<28} {}\n", get(path)));
    }
    out
}
