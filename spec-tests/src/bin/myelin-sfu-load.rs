//! `myelin-sfu-load`: loads a LiveKit-compatible SFU on loopback with webrtc-rs publishers
//! sending synthetic RTP to subscribers in one room. Prints one JSON object on stdout
//! (with `--pretty`, also a table on stderr) and progress on stderr.
//!
//! The SFU is Myelin's, in this process (default) or spawned from `--sfu-bin` (then its
//! CPU time is read from `/proc/<pid>/stat`), or an external one at `--url`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use spec_tests::sfu_load::{self, target::Target, Options};

#[derive(Parser)]
#[command(
    name = "myelin-sfu-load",
    about = "SFU load generator: forwarded packets/s, loss, added latency, CPU (loopback only)"
)]
struct Cli {
    /// Spawn this `myelin-sfu` binary with a generated config and measure its CPU.
    #[arg(long, conflicts_with = "url")]
    sfu_bin: Option<PathBuf>,
    /// Load an SFU that is already running (`ws://127.0.0.1:7880`); needs --api-key and
    /// --api-secret.
    #[arg(long, requires_all = ["api_key", "api_secret"])]
    url: Option<String>,
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long)]
    api_secret: Option<String>,
    /// The spawned SFU takes all media on one UDP port (`rtc.udp_port`) instead of a
    /// port per peer connection.
    #[arg(long, requires = "sfu_bin")]
    udp_mux: bool,
    /// PID of the external SFU, for its CPU figures.
    #[arg(long, requires = "url")]
    sfu_pid: Option<u32>,
    /// Worker threads of the in-process SFU (default: all CPUs).
    #[arg(long)]
    sfu_threads: Option<usize>,
    #[arg(short, long, default_value_t = 1)]
    publishers: usize,
    #[arg(short, long, default_value_t = 2)]
    subscribers: usize,
    /// Seconds of the measuring window.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// No Opus-like audio track (50 packets/s per publisher).
    #[arg(long)]
    no_audio: bool,
    /// Payload bytes of an audio packet.
    #[arg(long, default_value_t = 100)]
    audio_bytes: usize,
    /// Packets/s of the VP8-like video track per publisher (0: no video).
    #[arg(long, default_value_t = 0)]
    video_pps: u32,
    /// Payload bytes of a video packet.
    #[arg(long, default_value_t = 1000)]
    video_bytes: usize,
    /// Video frames per second (a frame's packets are sent back to back).
    #[arg(long, default_value_t = 30)]
    video_fps: u32,
    /// Seconds to wait for every subscriber to receive every track.
    #[arg(long, default_value_t = 60.0)]
    ready_timeout: f64,
    /// Also print a human-readable table on stderr.
    #[arg(long)]
    pretty: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match options(&cli) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("myelin-sfu-load: {e:#}");
            return ExitCode::from(2);
        }
    };
    match sfu_load::run(&options).await {
        Ok(report) => {
            if cli.pretty {
                eprint!("{}", sfu_load::pretty(&report));
            }
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("myelin-sfu-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(cli: &Cli) -> anyhow::Result<Options> {
    let secs = |what: &str, s: f64| {
        Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("{what}: not a duration"))
    };
    let target = match (&cli.url, &cli.sfu_bin) {
        (Some(url), _) => Target::External {
            url: url.clone(),
            api_key: cli.api_key.clone().unwrap_or_default(),
            api_secret: cli.api_secret.clone().unwrap_or_default(),
            pid: cli.sfu_pid,
        },
        (None, Some(bin)) => Target::Spawn {
            bin: bin.clone(),
            udp_mux: cli.udp_mux,
        },
        (None, None) => Target::InProcess {
            threads: cli
                .sfu_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        },
    };
    Ok(Options {
        target,
        publishers: cli.publishers,
        subscribers: cli.subscribers,
        duration: secs("--duration", cli.duration)?,
        audio: !cli.no_audio,
        audio_bytes: cli.audio_bytes,
        video_pps: cli.video_pps,
        video_bytes: cli.video_bytes,
        video_fps: cli.video_fps,
        ready_timeout: secs("--ready-timeout", cli.ready_timeout)?,
        progress: !cli.quiet,
    })
}
