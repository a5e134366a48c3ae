//! `myelin-sfu`: runs the SFU with a config file and `MYELIN_SFU_*` overrides.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Myelin's LiveKit-compatible SFU")]
struct Cli {
    /// Path of the TOML config file (see config/myelin-sfu.toml).
    #[arg(short, long, env = "MYELIN_SFU_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,webrtc=warn,webrtc_ice=warn".into()),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin-sfu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = myelin_sfu::Config::load(cli.config.as_deref())?;
    let listen = config.listen;
    let metrics_listen = config.metrics_listen;
    // The recorder first: the SFU's counters bind to it when it is built.
    let metrics = match metrics_listen {
        Some(_) => Some(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?),
        None => None,
    };
    let sfu = myelin_sfu::Sfu::new(config)?;
    if let (Some(addr), Some(handle)) = (metrics_listen, metrics) {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "myelin-sfu metrics listening");
        let app = myelin_sfu::http::metrics_app(sfu.clone(), handle);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics listener stopped");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "myelin-sfu listening");
    tokio::select! {
        served = myelin_sfu::serve(sfu.clone(), listener) => served?,
        _ = shutdown_signal() => {
            tracing::info!("shutting down: telling participants");
            sfu.shutdown();
            // Let the sessions flush their leave messages.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
