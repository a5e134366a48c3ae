//! The SFU under load: started in this process on its own runtime, spawned as a separate
//! `myelin-sfu` process, or an external one; and how much CPU it used (from `/proc`).

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;

/// Linux reports `/proc/*/stat` CPU times in USER_HZ ticks, 100 on every mainstream
/// architecture.
const TICKS_PER_SEC: f64 = 100.0;
/// Names of the in-process SFU's threads start with this (at most 15 bytes in `comm`).
const THREAD_PREFIX: &str = "sfu-";

/// Which SFU to load.
#[derive(Debug, Clone)]
pub enum Target {
    /// The SFU library on a runtime of its own in this process, with `threads` workers.
    InProcess { threads: usize },
    /// The `myelin-sfu` binary at this path, started with a generated config: media on one
    /// UDP port (`udp_mux`, `rtc.udp_port`) or on a port range.
    Spawn { bin: PathBuf, udp_mux: bool },
    /// An SFU already running at `url` (`ws://host:port`); `pid` for its CPU figures.
    External {
        url: String,
        api_key: String,
        api_secret: String,
        pid: Option<u32>,
    },
}

/// Where a CPU figure comes from.
enum Cpu {
    Process(u32),
    /// This process's threads named [`THREAD_PREFIX`]….
    Threads,
    Unknown,
}

/// A started (or found) SFU.
pub struct RunningSfu {
    /// `ws://127.0.0.1:port`.
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    /// `in-process`, `spawned` or `external`.
    pub mode: &'static str,
    cpu: Cpu,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningSfu {
    pub async fn start(target: &Target) -> Result<RunningSfu> {
        match target {
            Target::InProcess { threads } => start_in_process(*threads).await,
            Target::Spawn { bin, udp_mux } => spawn(bin, *udp_mux).await,
            Target::External {
                url,
                api_key,
                api_secret,
                pid,
            } => {
                check_loopback(url)?;
                Ok(RunningSfu {
                    url: url.trim_end_matches('/').to_owned(),
                    api_key: api_key.clone(),
                    api_secret: api_secret.clone(),
                    mode: "external",
                    cpu: pid.map_or(Cpu::Unknown, Cpu::Process),
                    child: None,
                    dir: None,
                    shutdown: None,
                })
            }
        }
    }

    /// CPU seconds the SFU has used so far, when known.
    pub fn cpu_secs(&self) -> Option<f64> {
        match self.cpu {
            Cpu::Process(pid) => process_cpu_secs(&format!("/proc/{pid}/stat")),
            Cpu::Threads => Some(threads_cpu_secs(true)),
            Cpu::Unknown => None,
        }
    }

    /// CPU seconds this process has used outside the in-process SFU (the load clients).
    pub fn client_cpu_secs(&self) -> Option<f64> {
        let all = process_cpu_secs("/proc/self/stat")?;
        match self.cpu {
            Cpu::Threads => Some(all - threads_cpu_secs(true)),
            _ => Some(all),
        }
    }

    /// The end of the spawned SFU's log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let log = std::fs::read_to_string(dir.path().join("sfu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether a spawned SFU is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for RunningSfu {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Refuses URLs whose host is not a loopback address.
pub fn check_loopback(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .with_context(|| format!("{url}: expected ws://host:port"))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the load tool only targets loopback addresses");
    }
    Ok(())
}

fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
}

/// A UDP port range of 2000 ports for the SFU's ICE candidates, away from the usual
/// ephemeral range.
fn udp_ports() -> (u16, u16) {
    let min = rand::thread_rng().gen_range(20..29u16) * 2000;
    (min, min + 1999)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_in_process(threads: usize) -> Result<RunningSfu> {
    let (key, secret) = ("load".to_owned(), random_secret());
    let mut config = myelin_sfu::Config::default();
    config.keys.insert(key.clone(), secret.clone());
    config.rtc.bind_ip = Some(IpAddr::from([127, 0, 0, 1]));
    // The port range: a port per peer connection (the figures' baseline).
    config.rtc.udp_port = 0;
    (config.rtc.udp_port_min, config.rtc.udp_port_max) = udp_ports();
    config.room.empty_timeout_secs = 1;
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(format!("{THREAD_PREFIX}rt"))
        .enable_all()
        .build()?;
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<std::io::Result<SocketAddr>>();
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}main"))
        .spawn(move || {
            runtime.block_on(async move {
                let sfu = match myelin_sfu::Sfu::new(config) {
                    Ok(sfu) => sfu,
                    Err(e) => {
                        let _ = addr_tx.send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                };
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr());
                tokio::select! {
                    _ = myelin_sfu::serve(sfu.clone(), listener) => {}
                    _ = stop => sfu.shutdown(),
                }
            });
        })?;
    let addr = addr_rx.await.context("the SFU thread ended")??;
    Ok(RunningSfu {
        url: format!("ws://{addr}"),
        api_key: key,
        api_secret: secret,
        mode: "in-process",
        cpu: Cpu::Threads,
        child: None,
        dir: None,
        shutdown: Some(shutdown),
    })
}

async fn spawn(bin: &Path, udp_mux: bool) -> Result<RunningSfu> {
    if !bin.exists() {
        bail!(
            "SFU binary {} not found: build it with `cargo build -p myelin-sfu`",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let (key, secret) = ("load".to_owned(), random_secret());
    let port = free_port()?;
    let (udp_min, udp_max) = udp_ports();
    let udp_port = if udp_mux {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        0
    };
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\n[keys]\n{key} = \"{secret}\"\n\n[rtc]\nbind_ip = \"127.0.0.1\"\nudp_port = {udp_port}\nudp_port_min = {udp_min}\nudp_port_max = {udp_max}\n\n[room]\nempty_timeout_secs = 1\n"
    );
    let config_path = dir.path().join("sfu.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("sfu.log"))?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .env_remove("MYELIN_SFU_KEYS")
        .env_remove("MYELIN_SFU_LISTEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let mut sfu = RunningSfu {
        url: format!("ws://127.0.0.1:{port}"),
        api_key: key,
        api_secret: secret,
        mode: "spawned",
        cpu: Cpu::Process(pid),
        child: Some(child),
        dir: Some(dir),
        shutdown: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !sfu.alive() {
            bail!("the SFU exited during start:\n{}", sfu.log_tail());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(sfu);
        }
        if Instant::now() > deadline {
            bail!("the SFU did not listen within 20 s:\n{}", sfu.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// utime + stime of a `/proc/…/stat` file, in seconds.
fn process_cpu_secs(path: &str) -> Option<f64> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    parse_stat(&text).map(|(_, ticks)| ticks as f64 / TICKS_PER_SEC)
}

/// CPU seconds of this process's threads whose name starts (or not, when `matching` is
/// false) with [`THREAD_PREFIX`]. Threads that already ended are not counted.
fn threads_cpu_secs(matching: bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((comm, t)) = parse_stat(&text) {
            if comm.starts_with(THREAD_PREFIX) == matching {
                ticks += t;
            }
        }
    }
    ticks as f64 / TICKS_PER_SEC
}

/// (comm, utime + stime ticks) from a `stat` line: `pid (comm) state ppid … utime stime`.
fn parse_stat(text: &str) -> Option<(&str, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of the line; the slice starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line =
            "4242 (sfu-rt (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 56 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("sfu-rt (x)", 1290)));
        assert_eq!(parse_stat("garbage"), None);
        assert!(process_cpu_secs("/proc/self/stat").is_some());
    }

    #[test]
    fn only_loopback_urls() {
        assert!(check_loopback("ws://127.0.0.1:7880").is_ok());
        assert!(check_loopback("ws://localhost:7880/").is_ok());
        assert!(check_loopback("ws://[::1]:7880").is_ok());
        assert!(check_loopback("ws://10.0.0.1:7880").is_err());
        assert!(check_loopback("ws://example.org").is_err());
        assert!(check_loopback("http://127.0.0.1:7880").is_err());
    }
}
