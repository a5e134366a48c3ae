//! The `myelin` command: `serve` runs the homeserver; `user` administers the accounts of
//! the running server through its admin API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use myelin::{
    config::{Config, LogFormat},
    services::Services,
};
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
    /// Write or check configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Ask the running server for a consistent backup (database and keys) into DIR.
    Backup {
        /// An empty or new directory.
        dir: PathBuf,
        /// The server's URL; default: its `listen` address.
        #[arg(long)]
        url: Option<String>,
        /// An access token of a server admin.
        #[arg(long, env = "MYELIN_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Copy a stopped server's database from one storage engine to another (the target
    /// must be empty): `--from sled --to postgres` reads `<data_dir>/db` and writes to
    /// `storage.postgres_url`. Keys and media stay in the data dir.
    Migrate {
        /// The engine the data is in now.
        #[arg(long, value_parser = ["sled", "postgres"])]
        from: String,
        /// The engine to copy it to.
        #[arg(long, value_parser = ["sled", "postgres"])]
        to: String,
    },
    /// Build a new data dir from a backup (offline; media is copied separately).
    Restore {
        /// The backup directory written by `myelin backup`.
        dir: PathBuf,
        /// The new data dir: absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration as commented TOML.
    Generate,
    /// Validate the configuration (file and environment); exit status 1 on an error.
    Check,
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
    let cli = Cli::parse();
    if let Command::Config { action } = &cli.command {
        return config_command(cli.config.as_deref(), action);
    }
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
    init_logging(config.log.format);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = match cli.command {
        Command::Serve => runtime.block_on(serve(config)),
        Command::Appservice { .. } => Ok(()),
        Command::User { url, action } => runtime.block_on(admin_cli::run(&config, url, action)),
        Command::Backup { dir, url, token } => {
            runtime.block_on(backup_command(&config, &dir, url, &token))
        }
        Command::Restore { dir, data_dir } => restore_command(&dir, &data_dir),
        Command::Migrate { from, to } => migrate_command(&config, &from, &to),
        Command::Config { .. } => Ok(()),
    };
    // Tasks still running (a connection cut at the end of the grace period, a blocking
    // job) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Logs to stderr, filtered by `RUST_LOG`, as text or one JSON object per line.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// `myelin config generate` prints the documented defaults; `myelin config check` loads
/// the file and environment as `serve` would and reports.
fn config_command(path: Option<&std::path::Path>, action: &ConfigCommand) -> anyhow::Result<()> {
    match action {
        ConfigCommand::Generate => {
            print!("{}", myelin::config::DEFAULT_TOML);
            Ok(())
        }
        ConfigCommand::Check => match Config::load(path) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "configuration OK: server_name {}, listening on {}, data in {}",
                    config.server_name,
                    config.listen,
                    config.data_dir.display()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("configuration error: {e:#}");
                std::process::exit(1);
            }
        },
    }
}

/// `myelin backup DIR`: streams the running server's backup into `DIR`, then writes the
/// manifest that marks it complete.
async fn backup_command(
    config: &Config,
    dir: &std::path::Path,
    url: Option<String>,
    token: &str,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{} is not empty", dir.display());
    }
    std::fs::create_dir_all(dir)?;
    let base = url.unwrap_or_else(|| {
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    });
    let url = format!("{}/_myelin/admin/backup", base.trim_end_matches('/'));
    let mut resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .with_context(|| format!("asking {url} for a backup"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("the server refused the backup ({status}): {body}");
    }
    let download = dir.join(".download");
    let mut file = tokio::fs::File::create(&download).await?;
    while let Some(chunk) = resp.chunk().await? {
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    let files = myelin::backup::unpack(
        &mut std::io::BufReader::new(std::fs::File::open(&download)?),
        dir,
    )?;
    std::fs::remove_file(&download)?;
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let manifest = serde_json::json!({
        "format": 1,
        "server_name": config.server_name,
        "created_ms": created_ms,
        "files": files.iter().map(|(name, len)| serde_json::json!({"name": name, "bytes": len})).collect::<Vec<_>>(),
    });
    let manifest_path = dir.join(myelin::backup::MANIFEST_FILE);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::File::open(&manifest_path)?.sync_all()?;
    myelin::backup::sync_dir(dir)?;
    println!(
        "backup written to {} ({} files)",
        dir.display(),
        files.len() + 1
    );
    Ok(())
}

/// `myelin restore DIR --data-dir NEW`.
/// `myelin migrate --from ENGINE --to ENGINE`.
fn migrate_command(config: &Config, from: &str, to: &str) -> anyhow::Result<()> {
    use myelin::{
        config::StorageEngine,
        storage::migrate::{migrate, Endpoint},
    };
    let engine = |name: &str| match name {
        "postgres" => StorageEngine::Postgres,
        _ => StorageEngine::Sled,
    };
    let end = |name: &str| Endpoint {
        engine: engine(name),
        data_dir: &config.data_dir,
        postgres_url: &config.storage.postgres_url,
    };
    let copied = migrate(&end(from), &end(to)).context("migrating the database")?;
    println!(
        "copied {copied} records from {from} to {to}; start the server with storage.engine = \"{to}\" (keys and media stay in {})",
        config.data_dir.display()
    );
    Ok(())
}

fn restore_command(dir: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let pairs = myelin::backup::restore(dir, data_dir)?;
    println!(
        "restored {pairs} records into {}; copy the media directory (<data_dir>/media) too",
        data_dir.display()
    );
    Ok(())
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
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    // The recorder before anything records (the SFU binds its counters when built).
    let metrics = match config.metrics.listen {
        Some(addr) => Some((addr, myelin::metrics::install()?)),
        None => None,
    };
    let services = Services::open(config).context("opening the data dir")?;
    services
        .users
        .install_operator_token(&data_dir)
        .context("writing the operator token")?;
    // Bound before any background work starts: a port in use fails the start at once,
    // with its own message, before this process takes leases or leads a cluster.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
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
    let metrics_task = match metrics {
        Some((addr, handle)) => Some(serve_metrics(addr, handle, &services, sfu.as_ref()).await?),
        None => None,
    };
    let app = myelin::api::router(services.clone());
    tracing::info!(%listen, server_name = %services.config.server_name, "myelin listening");
    let notifier = services.notifier.clone();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, answering waiting syncs");
        // Parked long-polls answer now, so their connections can close.
        notifier.close();
    };
    myelin::api::serve::serve(listener, app, &services.config.limits, shutdown).await?;
    if let Some(sfu) = sfu {
        sfu.shutdown();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    services.flush_storage()?;
    tracing::info!("myelin stopped");
    Ok(())
}

/// Starts the metrics listener (`GET /metrics`); the gauges read at scrape time are the
/// parked syncs and the embedded SFU's rooms.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    services: &std::sync::Arc<Services>,
    sfu: Option<&myelin::rtc::embedded::EmbeddedSfu>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics.listen {addr}"))?;
    let notifier = services.notifier.clone();
    let sfu = sfu.map(|s| s.sfu.clone());
    let refresh = std::sync::Arc::new(move || {
        metrics::gauge!(myelin::metrics::SYNCS_PARKED).set(notifier.parked_total() as f64);
        if let Some(sfu) = &sfu {
            sfu.gauges().publish();
        }
    });
    let app = myelin::api::metrics::exporter(handle, refresh);
    tracing::info!(%addr, "metrics listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
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
