//! End to end: an in-process SFU on loopback, webrtc-rs publishers sending real Opus (a
//! tone encoded with libopus) and real VP8 (frames ffmpeg's libvpx encoded from its test
//! pattern), and the `myelin-recorder` binary recording them until SIGTERM; `ffprobe`
//! then checks the file. Needs `ffmpeg`/`ffprobe` (Debian's ffmpeg; `spec-tests/run`
//! installs it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use livekit_protocol as proto;
use myelin_sfu::auth::{now_secs, sign_token, Claims, VideoGrant};
use myelin_sfu::client::{mint_token, opus as opus_codec, vp8, Client};
use myelin_sfu::{Config, Sfu};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::codecs::vp8::Vp8Payloader;
use webrtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use webrtc::rtp::extension::HeaderExtension;
use webrtc::rtp::packetizer::Payloader;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

const KEY: &str = "reckey";
const SECRET: &str = "recorder-test-secret-recorder-test-secret";
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FPS: u32 = 15;

async fn start_sfu() -> SocketAddr {
    let mut config = Config {
        keys: BTreeMap::from([(KEY.to_owned(), SECRET.to_owned())]),
        ..Config::default()
    };
    config.rtc.bind_ip = Some("127.0.0.1".parse().unwrap());
    config.rtc.udp_port = 0;
    config.rtc.udp_port_min = 55000;
    config.rtc.udp_port_max = 55999;
    config.room.empty_timeout_secs = 5;
    config.validate().unwrap();
    let sfu = Sfu::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(myelin_sfu::serve(sfu, listener));
    addr
}

/// The recorder's token: hidden, a recorder, subscribe only.
fn recorder_token(room: &str) -> String {
    let now = now_secs();
    sign_token(
        &Claims {
            iss: KEY.into(),
            sub: "myelin-recorder".into(),
            exp: now + 600,
            nbf: Some(now),
            name: None,
            metadata: None,
            video: VideoGrant {
                room_join: true,
                room: room.into(),
                can_publish: Some(false),
                can_subscribe: Some(true),
                can_publish_data: Some(false),
                hidden: true,
                recorder: true,
            },
        },
        SECRET,
    )
    .unwrap()
}

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: install Debian's ffmpeg (spec-tests/run does)"
    );
    path
}

/// VP8 frames of ffmpeg's test pattern (`seconds` long, a key frame every second), from
/// an IVF file.
fn vp8_frames(dir: &Path, seconds: u32) -> Vec<Bytes> {
    let ivf = dir.join("pattern.ivf");
    let status = std::process::Command::new(tool("ffmpeg"))
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}"))
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libvpx",
            "-g",
            &FPS.to_string(),
        ])
        .args(["-deadline", "realtime", "-b:v", "300k", "-f", "ivf"])
        .arg(&ivf)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg could not encode VP8");
    let data = std::fs::read(&ivf).unwrap();
    assert_eq!(&data[..4], b"DKIF");
    let mut at = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut frames = Vec::new();
    while at + 12 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 12;
        frames.push(Bytes::copy_from_slice(&data[at..at + len]));
        at += len;
    }
    assert!(frames.len() >= (seconds * FPS) as usize - 1);
    frames
}

/// A publishing participant: its client and the tasks sending its media.
struct Publisher {
    client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    async fn leave(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.client.close().await;
    }
}

/// Joins `room` as `identity` and publishes a tone of `freq` Hz (Opus, 20 ms frames,
/// marked as speech with the audio-level extension) and, when given, the VP8 frames in
/// a loop at 15 fps.
async fn publish(
    addr: SocketAddr,
    room: &str,
    identity: &str,
    freq: f64,
    video: Option<Arc<Vec<Bytes>>>,
) -> Publisher {
    let token = mint_token(KEY, SECRET, identity, room, 600).unwrap();
    let mut client = Client::connect(&format!("ws://{addr}"), &token)
        .await
        .unwrap();
    client.connect_publisher().await.unwrap();
    let audio = Arc::new(TrackLocalStaticRTP::new(
        opus_codec(),
        format!("{identity}-mic"),
        format!("{identity}-stream"),
    ));
    client
        .announce_track(audio.clone(), proto::TrackType::Audio)
        .await
        .unwrap();
    let camera = video.as_ref().map(|_| {
        Arc::new(TrackLocalStaticRTP::new(
            vp8(),
            format!("{identity}-cam"),
            format!("{identity}-stream"),
        ))
    });
    let wanted = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    if let Some(camera) = &camera {
        let (_, sender) = client
            .announce_track(camera.clone(), proto::TrackType::Video)
            .await
            .unwrap();
        // Like a browser: a picture loss indication makes the next frame a key frame.
        let wanted = wanted.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((packets, _)) = sender.read_rtcp().await {
                if packets
                    .iter()
                    .any(|p| p.as_any().downcast_ref::<PictureLossIndication>().is_some())
                {
                    wanted.store(true, Ordering::Relaxed);
                }
            }
        }));
    }
    client.negotiate_publisher().await.unwrap();
    tasks.push(tokio::spawn(send_tone(audio, freq)));
    if let (Some(camera), Some(frames)) = (camera, video) {
        tasks.push(tokio::spawn(send_video(camera, frames, wanted)));
    }
    Publisher { client, tasks }
}

async fn send_tone(track: Arc<TrackLocalStaticRTP>, freq: f64) {
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
    let mut buf = [0u8; 1500];
    let mut packet = webrtc::rtp::packet::Packet::default();
    packet.header.version = 2;
    packet.header.payload_type = 111;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0u32.. {
        tick.tick().await;
        let pcm: Vec<i16> = (0..960u32)
            .map(|n| {
                let t = f64::from(i * 960 + n) / 48_000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
            })
            .collect();
        let len = encoder.encode(&pcm, &mut buf).unwrap();
        packet.header.sequence_number = i as u16;
        packet.header.timestamp = i.wrapping_mul(960);
        packet.payload = Bytes::copy_from_slice(&buf[..len]);
        let level = HeaderExtension::AudioLevel(AudioLevelExtension {
            level: 20,
            voice: true,
        });
        let _ = track.write_rtp_with_extensions(&packet, &[level]).await;
    }
}

async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    frames: Arc<Vec<Bytes>>,
    keyframe_wanted: Arc<AtomicBool>,
) {
    let mut payloader = Vp8Payloader::default();
    let mut packet = webrtc::rtp::packet::Packet::default();
    packet.header.version = 2;
    packet.header.payload_type = 96;
    let mut seq = 0u16;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / u64::from(FPS)));
    let mut next = 0usize;
    for i in 0u32.. {
        tick.tick().await;
        if keyframe_wanted.swap(false, Ordering::Relaxed) {
            next = 0; // the pattern's first frame is a key frame
        }
        let frame = &frames[next % frames.len()];
        next += 1;
        let payloads = payloader.payload(1200, frame).unwrap();
        let last = payloads.len().saturating_sub(1);
        for (k, payload) in payloads.into_iter().enumerate() {
            packet.header.sequence_number = seq;
            seq = seq.wrapping_add(1);
            packet.header.timestamp = i.wrapping_mul(90_000 / FPS);
            packet.header.marker = k == last;
            packet.payload = payload;
            let _ =
                webrtc::track::track_local::TrackLocalWriter::write_rtp(track.as_ref(), &packet)
                    .await;
        }
    }
}

/// A running recorder process.
struct Recording {
    child: tokio::process::Child,
    started: Instant,
}

/// Starts the recorder; with `debug`, its debug log (per-source packet counts, source
/// switches) goes to stderr, for the failure messages.
fn start_recorder(addr: SocketAddr, room: &str, out: &Path, debug: bool) -> Recording {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_myelin-recorder"));
    if debug {
        command.env("MYELIN_RECORDER_LOG", "myelin_recorder=debug");
    } else {
        command.env_remove("MYELIN_RECORDER_LOG");
    }
    let child = command
        .arg("--url")
        .arg(format!("ws://{addr}"))
        .arg("--out")
        .arg(out)
        .env("MYELIN_RECORDER_TOKEN", recorder_token(room))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Recording {
        child,
        started: Instant::now(),
    }
}

/// Stops the recorder with SIGTERM; returns its exit code, stdout line, stderr and how
/// long it ran.
async fn stop_recorder(rec: Recording) -> (i32, String, String, Duration) {
    let pid = rec.child.id().unwrap();
    let ran = rec.started.elapsed();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(30), rec.child.wait_with_output())
        .await
        .expect("the recorder exits within 30 s of SIGTERM")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stdout, stderr, ran)
}

/// `ffprobe`'s streams and format of `path`.
fn probe(path: &Path) -> Value {
    let out = std::process::Command::new(tool("ffprobe"))
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The decoded audio's mean volume (dBFS) and the number of decoded video frames; fails
/// on any decoding error.
fn decode(path: &Path) -> (f64, u64) {
    let out = std::process::Command::new(tool("ffmpeg"))
        .args(["-hide_banner", "-nostats", "-v", "info", "-i"])
        .arg(path)
        .args(["-af", "volumedetect", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg could not decode: {log}");
    assert!(
        !log.lines().any(|l| l.contains("rror")),
        "decoding errors: {log}"
    );
    let mean = log
        .lines()
        .find_map(|l| l.split("mean_volume: ").nth(1))
        .and_then(|v| v.trim_end_matches(" dB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no mean volume in {log}"));
    let probe = std::process::Command::new(tool("ffprobe"))
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let frames = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (mean, frames)
}

/// Checks the file against the summary and the expectations; returns the summary.
fn check_file(path: &Path, stdout: &str, recorded: Duration) -> Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line: {stdout:?}");
    let summary: Value = serde_json::from_str(lines[0]).unwrap();
    let probe = probe(path);
    let streams = probe["streams"].as_array().unwrap();
    let video: Vec<&Value> = streams
        .iter()
        .filter(|s| s["codec_type"] == "video")
        .collect();
    let audio: Vec<&Value> = streams
        .iter()
        .filter(|s| s["codec_type"] == "audio")
        .collect();
    assert_eq!(video.len(), 1, "{probe}");
    assert_eq!(audio.len(), 1, "{probe}");
    assert_eq!(video[0]["codec_name"], "vp8");
    assert_eq!(video[0]["width"], WIDTH);
    assert_eq!(video[0]["height"], HEIGHT);
    assert_eq!(audio[0]["codec_name"], "opus");
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - recorded.as_secs_f64()).abs() <= 2.0,
        "file lasts {duration} s, recorded for {recorded:?}"
    );
    // The summary describes the file.
    assert_eq!(summary["size"], std::fs::metadata(path).unwrap().len());
    assert_eq!(summary["width"], WIDTH);
    assert_eq!(summary["height"], HEIGHT);
    let summary_secs = summary["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (summary_secs - duration).abs() < 0.5,
        "summary {summary_secs} s, file {duration} s"
    );
    summary
}

/// Waits until the recorder's join shows in the others' room (`RoomUpdate` with
/// `active_recording`), so that recording time is measured from a known point.
async fn wait_recording_announced(client: &mut Client) {
    client
        .wait_for("active_recording", |e| {
            matches!(e, myelin_sfu::client::Event::Signal(
                proto::signal_response::Message::RoomUpdate(u))
                if u.room.as_ref().is_some_and(|r| r.active_recording))
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_two_publishers_into_one_webm() {
    let dir = tempfile::tempdir().unwrap();
    let frames = Arc::new(vp8_frames(dir.path(), 2));
    let addr = start_sfu().await;
    let mut alice = publish(addr, "meeting", "alice", 440.0, Some(frames.clone())).await;
    let bob = publish(addr, "meeting", "bob", 660.0, Some(frames)).await;
    let out = dir.path().join("meeting.webm");
    let rec = start_recorder(addr, "meeting", &out, true);
    wait_recording_announced(&mut alice.client).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (code, stdout, stderr, ran) = stop_recorder(rec).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    let summary = check_file(&out, &stdout, ran);
    assert_eq!(summary["audio_sources"], 2, "{summary}\n{stderr}");
    // Both 8000-amplitude tones are in the mix: -12.2 dBFS (one alone: -15.3).
    let (volume, frames) = decode(&out);
    assert!(
        volume > -14.0,
        "mean volume {volume} dB: a source is missing; {stderr}"
    );
    // 15 frames/s were sent; most reach the file.
    assert!(
        frames as f64 >= f64::from(FPS) * (ran.as_secs_f64() - 2.0),
        "{frames} video frames in {ran:?}"
    );
    let video_sources = summary["video_sources"].as_u64().unwrap();
    assert!((1..=2).contains(&video_sources), "{summary}\n{stderr}");
    alice.leave().await;
    bob.leave().await;
}

/// Bob (the only camera) leaves and rejoins while recording: the recording goes on,
/// picks up his new tracks, and the file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_leaving_and_rejoining_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let frames = Arc::new(vp8_frames(dir.path(), 2));
    let addr = start_sfu().await;
    let mut alice = publish(addr, "rejoin", "alice", 440.0, None).await;
    let bob = publish(addr, "rejoin", "bob", 660.0, Some(frames.clone())).await;
    let out = dir.path().join("rejoin.webm");
    let rec = start_recorder(addr, "rejoin", &out, true);
    wait_recording_announced(&mut alice.client).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    bob.leave().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bob = publish(addr, "rejoin", "bob", 660.0, Some(frames)).await;
    // Long enough for the new subscription to connect on a busy machine and for a key
    // frame (one a second) to switch to it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (code, stdout, stderr, ran) = stop_recorder(rec).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    let summary = check_file(&out, &stdout, ran);
    // Alice, Bob, and Bob again (a rejoin publishes new tracks).
    assert_eq!(summary["audio_sources"], 3, "{summary}\n{stderr}");
    assert_eq!(summary["video_sources"], 2, "{summary}\n{stderr}");
    let (volume, frames) = decode(&out);
    assert!(volume > -16.0, "mean volume {volume} dB\n{stderr}");
    assert!(
        frames >= u64::from(FPS) * 3,
        "{frames} video frames\n{stderr}"
    );
    alice.leave().await;
    bob.leave().await;
}

/// Nobody publishes: exit code 3, a reason on stderr, no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_record_exits_3_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_sfu().await;
    let token = mint_token(KEY, SECRET, "carol", "empty", 600).unwrap();
    let mut carol = Client::connect(&format!("ws://{addr}"), &token)
        .await
        .unwrap();
    let out = dir.path().join("empty.webm");
    let rec = start_recorder(addr, "empty", &out, false);
    wait_recording_announced(&mut carol).await;
    let (code, stdout, stderr, _) = stop_recorder(rec).await;
    assert_eq!(code, 3, "stdout: {stdout} stderr: {stderr}");
    assert!(stdout.is_empty());
    // Exactly one line: the reason.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("myelin-recorder: ") && stderr.contains("nothing was recorded"),
        "{stderr}"
    );
    assert!(!out.exists());
    // The recorder left: recording is over for the room.
    carol
        .wait_for("recording over", |e| {
            matches!(e, myelin_sfu::client::Event::Signal(
                proto::signal_response::Message::RoomUpdate(u))
                if u.room.as_ref().is_some_and(|r| !r.active_recording))
        })
        .await
        .unwrap();
    carol.close().await;
}

/// Stdin reaching its end stops the recorder like SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_stdin_stops_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let frames = Arc::new(vp8_frames(dir.path(), 1));
    let addr = start_sfu().await;
    let mut alice = publish(addr, "stdin", "alice", 440.0, Some(frames)).await;
    let out = dir.path().join("stdin.webm");
    let mut rec = start_recorder(addr, "stdin", &out, true);
    wait_recording_announced(&mut alice.client).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ran = rec.started.elapsed();
    drop(rec.child.stdin.take());
    let mut stdout = tokio::io::BufReader::new(rec.child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("a summary within 30 s of closing stdin")
        .unwrap()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), rec.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    check_file(&out, &line, ran);
    alice.leave().await;
}

/// A token the SFU refuses: exit code 1 and the reason on one stderr line, no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_sfu().await;
    let out = dir.path().join("refused.webm");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_myelin-recorder"))
        .arg("--url")
        .arg(format!("ws://{addr}"))
        .arg("--out")
        .arg(&out)
        .env("MYELIN_RECORDER_TOKEN", "not-a-token")
        .env_remove("MYELIN_RECORDER_LOG")
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the recorder gives up within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!out.exists());
}
