//! The `myelin` command: `serve` runs the homeserver; `user` administers accounts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use myelin::{config::Config, services::Services};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "myelin", version, about = "A fast, single-binary Matrix homeserver")]
struct Cli {
    /// TOML configuration file (see config/myelin.toml); defaults apply without one.
    #[arg(long, short, global = true, env = "MYELIN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve => runtime.block_on(serve(config)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let services = Services::open(config).context("opening the data dir")?;
    let app = myelin::api::router(services.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, server_name = %services.config.server_name, "myelin listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    services.storage.flush()?;
    tracing::info!("myelin stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
