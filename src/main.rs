//! The `myelin` command: `serve` runs the homeserver; `user` administers the accounts of
//! the running server through its admin API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use myelin::{config::Config, services::Services};
use tracing_subscriber::EnvFilter;

mod admin_cli;

#[derive(Parser)]
#[command(
    name = "myelin",
    version,
    about = "A fast, single-binary Matrix homeserver"
)]
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
    /// Application-service registrations.
    Appservice {
        #[command(subcommand)]
        action: AppserviceCommand,
    },
    /// Administer accounts of the running server through its admin API.
    User {
        /// Base URL of the server (default: the configured `listen` address on loopback).
        #[arg(long, env = "MYELIN_ADMIN_URL")]
        url: Option<String>,
        #[command(subcommand)]
        action: UserCommand,
    },
}

#[derive(Subcommand)]
enum AppserviceCommand {
    /// Validate registration files (each alone, then together) without starting the server.
    Check {
        /// Registration YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Create {
        /// Localpart (`alice`) or full user id (`@alice:server`).
        name: String,
        /// Make the account a server administrator.
        #[arg(long)]
        admin: bool,
        /// The password; prompted for when omitted and stdin is a terminal.
        #[arg(long)]
        password: Option<String>,
    },
    /// Set an account's password (and log out its sessions).
    Passwd {
        /// Localpart (`alice`) or full user id (`@alice:server`).
        name: String,
        /// The new password; prompted for when omitted and stdin is a terminal.
        #[arg(long)]
        password: Option<String>,
        /// Keep the account's sessions logged in.
        #[arg(long)]
        keep_sessions: bool,
    },
    /// List accounts.
    List {
        /// Include deactivated accounts.
        #[arg(long)]
        deactivated: bool,
    },
    /// Deactivate an account: it leaves its rooms and loses its sessions and profile.
    Deactivate {
        /// Localpart (`alice`) or full user id (`@alice:server`).
        name: String,
        /// Also mark the account as erased.
        #[arg(long)]
        erase: bool,
    },
}

/// jemalloc: glibc's malloc spent a quarter of the server's CPU under sync fan-out
/// (arena locking, consolidation) and held freed memory; jemalloc halves delivery latency
/// with 1,000 syncers and returns freed pages on its own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start-up (the prefixed build's `malloc_conf`). A
/// background thread returns freed pages to the kernel after a second even when the
/// server goes idle; without it dirty pages stayed resident until the next allocation
/// burst.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    if let Command::Appservice {
        action: AppserviceCommand::Check { files },
    } = &cli.command
    {
        let regs = myelin::appservice::load_registrations(files, &config.server_name)?;
        for reg in regs {
            println!("{}: ok (id {:?})", reg.file, reg.id);
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve => runtime.block_on(serve(config)),
        Command::Appservice { .. } => Ok(()),
        Command::User { url, action } => runtime.block_on(admin_cli::run(&config, url, action)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Test builds read failpoints from `FAILPOINTS` (`name=action;...`) at start.
    #[cfg(feature = "test-hooks")]
    let _failpoints = {
        tracing::warn!("built with test hooks (failpoints, /_myelin/test): not for production");
        fail::FailScenario::setup()
    };
    // Refused here, before the data dir is opened, with the file and field at fault.
    myelin::appservice::load_registrations(&config.appservices, &config.server_name)
        .context("appservice registrations")?;
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let services = Services::open(config).context("opening the data dir")?;
    services
        .users
        .install_operator_token(&data_dir)
        .context("writing the operator token")?;
    services.start_background();
    let sfu = if services.config.rtc.embedded_sfu {
        let config = myelin::rtc::embedded::sfu_config(
            &services.config.rtc,
            services.rtc.livekit_keys(),
            &services.rtc.sfu_internal_secret(),
            |name| std::env::var(name).ok(),
        )
        .context("configuring the embedded SFU")?;
        Some(myelin::rtc::embedded::start(config).await?)
    } else {
        None
    };
    let app = myelin::api::router(services.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, server_name = %services.config.server_name, "myelin listening");
    myelin::api::serve::serve(listener, app, &services.config.limits, shutdown_signal()).await?;
    if let Some(sfu) = sfu {
        sfu.shutdown();
    }
    services.storage.flush()?;
    tracing::info!("myelin stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
