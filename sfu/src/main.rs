//! `myelin-sfu`: runs the SFU with a config file and `MYELIN_SFU_*` overrides.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Myelin's LiveKit-compatible SFU")]
struct Cli {
    /// Path of the TOML config file (see config/myelin-sfu.toml).
    #[arg(short, long, env = "MYELIN_SFU_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,webrtc=warn,webrtc_ice=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = myelin_sfu::Config::load(cli.config.as_deref())?;
    let listen = config.listen;
    let sfu = myelin_sfu::Sfu::new(config)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "myelin-sfu listening");
    myelin_sfu::serve(sfu, listener).await?;
    Ok(())
}
