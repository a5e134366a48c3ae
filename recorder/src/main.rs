//! `myelin-recorder --url <SFU URL> --out <file.webm>`: records a meeting of Myelin's SFU
//! into one WebM file (the active speaker's VP8 video, everyone's audio mixed into one
//! Opus track). The LiveKit token comes from `MYELIN_RECORDER_TOKEN`. Recording stops on
//! SIGTERM, SIGINT or end of stdin; the summary is one JSON line on stdout. Exit codes:
//! 0 done, 1 failure, 2 bad usage, 3 nothing recorded (no file left).
//!
//! Modules: [`session`] (signalling and media in), [`mixer`] (audio), [`vp8`] and
//! [`switcher`] (video), [`webm_out`] (the file), [`recorder`] (ties them together).

mod mixer;
mod recorder;
mod session;
mod switcher;
mod vp8;
mod webm_out;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The environment variable holding the LiveKit access token.
const TOKEN_VAR: &str = "MYELIN_RECORDER_TOKEN";

#[derive(Parser)]
#[command(
    name = "myelin-recorder",
    version,
    about = "Records a Myelin SFU meeting into one WebM file",
    after_help = "The LiveKit access token is read from MYELIN_RECORDER_TOKEN. Recording stops on \
                  SIGTERM, SIGINT or end of stdin; a JSON summary line is printed on stdout."
)]
struct Args {
    /// The SFU's signalling URL (ws:// or wss://).
    #[arg(long)]
    url: String,
    /// The WebM file to write.
    #[arg(long)]
    out: PathBuf,
}

fn fail(code: u8, reason: impl std::fmt::Display) -> ExitCode {
    let reason = reason.to_string().replace('\n', " ");
    eprintln!("myelin-recorder: {reason}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Logs only when asked for (MYELIN_RECORDER_LOG=info): stderr is otherwise the
    // one-line failure reason.
    if let Ok(filter) = std::env::var("MYELIN_RECORDER_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let token = match std::env::var(TOKEN_VAR) {
        Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
        _ => return fail(2, format!("{TOKEN_VAR} is not set")),
    };
    if !(args.url.starts_with("ws://") || args.url.starts_with("wss://")) {
        return fail(2, "--url must be a ws:// or wss:// URL");
    }
    // Fail before joining when the file cannot be written.
    if let Err(e) = std::fs::File::create(&args.out) {
        return fail(1, format!("cannot write {}: {e}", args.out.display()));
    }
    let _ = std::fs::remove_file(&args.out);
    // rustls (wss://) needs a process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, format!("starting the runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let stop = stop_signal();
        recorder::record(&args.url, &token, &args.out, stop).await
    });
    // The stdin reader may still block; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(summary) => match serde_json::to_string(&summary) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Err(recorder::RecordError::NothingRecorded) => {
            fail(3, "no media arrived: nothing was recorded")
        }
        Err(e) => fail(1, e),
    }
}

/// A future resolving, with the reason, on SIGTERM, SIGINT or end of stdin. The handlers
/// are installed at once, so a signal during the join is not lost (nor fatal).
fn stop_signal() -> impl std::future::Future<Output = String> {
    use tokio::signal::unix::{signal, SignalKind};
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = eof_tx.send(());
    });
    let handlers = signal(SignalKind::terminate())
        .and_then(|term| signal(SignalKind::interrupt()).map(|int| (term, int)));
    async move {
        let Ok((mut term, mut int)) = handlers else {
            // Without signal handlers only stdin can stop the recording.
            let _ = eof_rx.await;
            return "end of stdin".into();
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM".into(),
            _ = int.recv() => "SIGINT".into(),
            _ = eof_rx => "end of stdin".into(),
        }
    }
}
