//! Black-box test harness: starts the real `myelin` binary on a free loopback port with a
//! temporary data dir and talks to it over HTTP, as a client would.
//!
//! The binary is `$MYELIN_BIN`, or `target/debug/myelin` of this workspace (build it first:
//! `spec-tests/run` does). A missing binary fails the test; nothing is skipped.
//!
//! [`sfu_load`] is the SFU load scenario behind the `myelin-sfu-load` binary.

pub mod client;
pub mod sfu_load;

pub use client::{
    bodies, enc, ephemeral, fresh_txn, invite_and_join, next_batch, timeline, Client, Response,
};

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

/// Where the server binary is.
pub fn server_binary() -> PathBuf {
    workspace_binary("MYELIN_BIN", "myelin")
}

/// A binary of the workspace: the path in `env_var` if set, else the debug build `name`.
pub fn workspace_binary(env_var: &str, name: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env_var) {
        return PathBuf::from(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("spec-tests lives in the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join(name)
}

/// A new, empty database on the test PostgreSQL server (`MYELIN_TEST_POSTGRES_URL`, a
/// key=value connection string without `dbname`); its connection string.
pub async fn postgres_test_database() -> Result<String> {
    let base = std::env::var("MYELIN_TEST_POSTGRES_URL").context(
        "MYELIN_TEST_POSTGRES_URL is not set: spec-tests/run starts a PostgreSQL server and sets it",
    )?;
    let (client, connection) =
        tokio_postgres::connect(&format!("{base} dbname=postgres"), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to the test PostgreSQL server {base}"))?;
    let connection = tokio::spawn(connection);
    let name = format!(
        "myelin_spec_{}_{}",
        std::process::id(),
        rand::random::<u64>()
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .context("creating a test database")?;
    drop(client);
    let _ = connection.await;
    Ok(format!("{base} dbname={name}"))
}

/// The MAC of a shared-secret registration (`/_synapse/admin/v1/register`):
/// `hex(HMAC-SHA1(secret, nonce \0 user \0 password \0 "admin"|"notadmin"))`.
pub fn shared_secret_mac(
    secret: &str,
    nonce: &str,
    user: &str,
    password: &str,
    admin: bool,
) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(
        format!(
            "{nonce}\0{user}\0{password}\0{}",
            if admin { "admin" } else { "notadmin" }
        )
        .as_bytes(),
    );
    hex::encode(mac.finalize().into_bytes())
}

/// A loopback TCP port that was free a moment ago. Another test may take it before the
/// server binds it: [`TestServer::start_with`] retries with a fresh port when that happens.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A TCP port free on `ip` a moment ago (see [`free_port`]).
pub fn free_port_on(ip: std::net::IpAddr) -> Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A UDP port free on loopback right now (the embedded SFU's media port).
pub fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How often a server start is tried with fresh ports when a port was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// Whether a failed start was a port taken by someone else between [`free_port`] and the bind.
fn port_taken(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("Address already in use")
}

/// An HTTP client for talking to servers and helpers outside [`Client`]: every request
/// fails after `timeout` instead of hanging the test.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("a reqwest client with rustls builds")
}

/// A running server with its own data dir; killed when dropped.
pub struct TestServer {
    child: Option<Child>,
    data: tempfile::TempDir,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server name (`localhost` unless overridden).
    pub server_name: String,
    http: reqwest::Client,
}

impl TestServer {
    /// Starts a server with open registration.
    pub async fn start() -> Result<TestServer> {
        TestServer::start_with(&[("MYELIN_REGISTRATION_MODE", "open")]).await
    }

    /// Starts a server with the given extra environment (e.g. registration mode).
    ///
    /// With `MYELIN_TEST_STORAGE_ENGINE=postgres` (and `MYELIN_TEST_POSTGRES_URL`, a
    /// key=value connection string without `dbname`) every server gets a new database on
    /// that PostgreSQL server instead of sled; `spec-tests/run` runs part of the suite so.
    pub async fn start_with(env: &[(&str, &str)]) -> Result<TestServer> {
        TestServer::start_on(std::net::Ipv4Addr::LOCALHOST.into(), env).await
    }

    /// Starts a server listening on `ip` (loopback, or an address on an interface the test
    /// created) with the given extra environment.
    pub async fn start_on(ip: std::net::IpAddr, env: &[(&str, &str)]) -> Result<TestServer> {
        let data = tempfile::tempdir()?;
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if std::env::var("MYELIN_TEST_STORAGE_ENGINE").as_deref() == Ok("postgres")
            && !env.iter().any(|(k, _)| k == "MYELIN_STORAGE_ENGINE")
        {
            env.push(("MYELIN_STORAGE_ENGINE".into(), "postgres".into()));
            env.push((
                "MYELIN_STORAGE_POSTGRES_URL".into(),
                postgres_test_database().await?,
            ));
        }
        let server_name = env
            .iter()
            .find(|(k, _)| k == "MYELIN_SERVER_NAME")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "localhost".into());
        let addr = SocketAddr::new(ip, free_port_on(ip)?);
        let mut server = TestServer {
            child: None,
            data,
            addr,
            env,
            base: format!("http://{addr}"),
            server_name,
            http: http_client(Duration::from_secs(60)),
        };
        let mut attempt = 1;
        loop {
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < START_ATTEMPTS && port_taken(&e) => {
                    attempt += 1;
                    server.addr = SocketAddr::new(ip, free_port_on(ip)?);
                    server.base = format!("http://{}", server.addr);
                    // The next attempt's log starts afresh.
                    std::fs::remove_file(server.log_path())?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a server with open registration and the embedded SFU on a port of its own
    /// (plus `extra` environment); returns it and the SFU's `ws://` URL.
    pub async fn start_with_sfu(extra: &[(&str, &str)]) -> Result<(TestServer, String)> {
        let mut attempt = 1;
        loop {
            let sfu = format!("ws://127.0.0.1:{}", free_port()?);
            let media_port = free_udp_port()?.to_string();
            let mut env = vec![
                ("MYELIN_REGISTRATION_MODE", "open"),
                ("MYELIN_RTC_EMBEDDED_SFU", "true"),
                ("MYELIN_RTC_LIVEKIT_URL", sfu.as_str()),
                ("MYELIN_SFU_BIND_IP", "127.0.0.1"),
                ("MYELIN_SFU_UDP_PORT", media_port.as_str()),
            ];
            env.extend_from_slice(extra);
            match TestServer::start_with(&env).await {
                Ok(server) => return Ok((server, sfu)),
                Err(e) if attempt < START_ATTEMPTS && port_taken(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("server.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) -> Result<()> {
        let bin = server_binary();
        if !bin.exists() {
            bail!(
                "server binary {} not found: build it with `cargo build --bins` (spec-tests/run does)",
                bin.display()
            );
        }
        // Where this run's part of the (appended) log starts.
        let log_start = std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .env("MYELIN_LISTEN", self.addr.to_string())
            .env("MYELIN_DATA_DIR", self.data.path().join("data"))
            .env("MYELIN_PUBLIC_BASE_URL", &self.base)
            // `MYELIN_TEST_SERVER_LOG` replaces the servers' log filter when chasing a
            // failure (e.g. `info,webrtc=debug`).
            .env(
                "RUST_LOG",
                std::env::var("MYELIN_TEST_SERVER_LOG")
                    .unwrap_or_else(|_| "info,ruma_state_res=warn".to_owned()),
            )
            // Tests run many servers at once: each would take the SFU's default port.
            // Call tests turn it back on with a port of their own.
            .env("MYELIN_RTC_EMBEDDED_SFU", "false")
            // Tests register many users and send bursts from one address; the tests of
            // the limits turn them back on with tight values.
            .env("MYELIN_RATE_LIMITS_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("server exited with {status} during start:\n{}", self.log());
                }
            }
            // Only our own child logs that it listens: a server of another test that took
            // the port meanwhile would answer the request too.
            if self
                .log()
                .get(log_start..)
                .is_some_and(|run| run.contains("myelin listening"))
            {
                let url = format!("{}/_matrix/client/versions", self.base);
                if let Ok(resp) = self.http.get(&url).send().await {
                    if resp.status().is_success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("server did not answer within 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no flush) and waits for it to die.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM), waiting up to 10 s, then SIGKILL.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits (up to 30 s, then SIGKILL and an error) for the server to
    /// exit; returns its exit status and how long it took after the signal.
    pub async fn terminate(&mut self) -> Result<(std::process::ExitStatus, Duration)> {
        let Some(mut child) = self.child.take() else {
            bail!("the server is not running");
        };
        let pid = child.id().to_string();
        let signalled = Instant::now();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = signalled + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, signalled.elapsed()));
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("server still running 30 s after SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same port and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    /// How many long-polls (`/sync`, sliding sync) of `user_id` are parked right now,
    /// waiting for something to happen (the test-hooks endpoint).
    pub async fn parked(&self, user_id: &str) -> Result<u64> {
        let body = self
            .client()
            .request(
                Method::GET,
                &format!("/_myelin/test/parked/{}", enc(user_id)),
                None,
            )
            .await?
            .ok()?;
        body["parked"]
            .as_u64()
            .ok_or_else(|| anyhow!("no parked count: {body}"))
    }

    /// Waits (up to 10 s) until at least `n` long-polls of `user_id` are parked, so that
    /// what the test does next happens while they wait, not before they started.
    pub async fn wait_parked(&self, user_id: &str, n: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let parked = self.parked(user_id).await?;
            if parked >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{parked} long-polls of {user_id} parked after 10 s, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets (or replaces) an environment variable of the server's later starts and CLI runs.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the server again after a crash.
    pub async fn start_again(&mut self) -> Result<()> {
        self.spawn().await
    }

    /// Runs the binary with other arguments (admin CLI) against this data dir.
    pub fn run_cli(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = Command::new(server_binary());
        cmd.args(args)
            .env("MYELIN_DATA_DIR", self.data.path().join("data"))
            .env("MYELIN_LISTEN", self.addr.to_string())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Ok(cmd.output()?)
    }

    /// An anonymous client.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            http: self.http.clone(),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// Registers `name` with password `name-password` (open registration, m.login.dummy).
    pub async fn register(&self, name: &str) -> Result<Client> {
        let mut client = self.client();
        client.register(name, &format!("{name}-password")).await?;
        Ok(client)
    }

    /// Full user id of a localpart.
    pub fn user_id(&self, name: &str) -> String {
        format!("@{name}:{}", self.server_name)
    }

    /// The operator token the running server wrote to `<data_dir>/admin_token`.
    pub fn operator_token(&self) -> Result<String> {
        let path = self.data.path().join("data").join("admin_token");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| path.display().to_string())?
            .trim()
            .to_owned())
    }

    /// Creates `name` (password `name-password`) as a server administrator through the
    /// admin API with the operator token, and logs in as them.
    pub async fn admin(&self, name: &str) -> Result<Client> {
        let mut operator = self.client();
        operator.token = Some(self.operator_token()?);
        let path = format!("/_synapse/admin/v2/users/{}", enc(&self.user_id(name)));
        let body = json!({"password": format!("{name}-password"), "admin": true});
        let created = operator.request(Method::PUT, &path, Some(&body)).await?;
        if created.status != 201 {
            bail!("creating admin {name}: expected 201, got {}", created.text);
        }
        let mut admin = self.client();
        admin.login(name, &format!("{name}-password")).await?;
        Ok(admin)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Node.js that runs the browser drivers: the one `spec-tests/run` installs for the
/// js-sdk test (`MYELIN_JS_NODE`) when set, else `node` from `PATH`.
pub fn js_node() -> String {
    std::env::var("MYELIN_JS_NODE").unwrap_or_else(|_| "node".into())
}

/// Debian's Chromium that `spec-tests/run` installs (`MYELIN_CHROMIUM`); an error, not a
/// skip, when it is missing.
pub fn chromium() -> Result<PathBuf> {
    let path = PathBuf::from(
        std::env::var("MYELIN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if !path.exists() {
        bail!(
            "Chromium not found at {}: run the tests with spec-tests/run, which installs it",
            path.display()
        );
    }
    Ok(path)
}

/// What a helper program printed and how it ended.
#[derive(Debug)]
pub struct ProgramOutput {
    /// The exit status.
    pub status: std::process::ExitStatus,
    /// Its stdout, lossily decoded.
    pub stdout: String,
    /// Its stderr, lossily decoded.
    pub stderr: String,
}

/// Runs one of the matrix-js-sdk scripts in `spec-tests/js` (`node SCRIPT BASE_URL`)
/// against `server` and checks that it printed `LABEL: ok`. `spec-tests/run` installs the
/// SDK and its Node.js and sets `MYELIN_JS_NODE`; without it this fails rather than
/// skipping.
pub async fn run_js_script(server: &TestServer, script: &str, label: &str) -> Result<()> {
    let node = std::env::var("MYELIN_JS_NODE").map_err(|_| {
        anyhow!("MYELIN_JS_NODE is not set: run the tests with spec-tests/run, which installs matrix-js-sdk")
    })?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("js")
        .join(script);
    let mut cmd = Command::new(node);
    cmd.arg(path).arg(&server.base);
    let out = run_program(cmd, Duration::from_secs(180)).await?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    if !out.status.success() || !stdout.contains(&format!("{label}: ok")) {
        bail!(
            "{script} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
            out.status,
            server.log()
        );
    }
    Ok(())
}

/// `spec-tests/call`, where the browser drivers live, once `spec-tests/run` has installed
/// their packages (livekit-client, playwright-core); an error, not a skip, otherwise.
pub fn browser_driver_dir() -> Result<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("call");
    for package in ["livekit-client", "playwright-core"] {
        if !dir.join("node_modules").join(package).exists() {
            bail!(
                "{package} is not installed in {}: run the tests with spec-tests/run (npm ci)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Runs the browser driver `spec-tests/call/SCRIPT` with Node.js, its JSON config in the
/// environment variable `config_var`, and returns its summary (the last stdout line) once
/// the driver exited 0 and the summary says `ok`; otherwise an error with what the driver
/// printed and `server`'s log. `what` names the test in that error.
pub async fn run_browser_driver(
    server: &TestServer,
    script: &str,
    config_var: &str,
    config: &Value,
    what: &str,
) -> Result<Value> {
    let path = browser_driver_dir()?.join(script);
    let mut driver = Command::new(js_node());
    driver.arg(path).env(config_var, config.to_string());
    let out = run_program(driver, Duration::from_secs(300))
        .await
        .with_context(|| {
            format!(
                "running the {what} driver with Node.js (MYELIN_JS_NODE or node)\nserver log:\n{}",
                server.log()
            )
        })?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    let failure = || {
        format!(
            "{what} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
            out.status,
            server.log()
        )
    };
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .with_context(failure)?;
    if !out.status.success() || summary["ok"] != true {
        bail!("{}", failure());
    }
    Ok(summary)
}

/// Runs a helper program (an interop client, the browser driver) with null stdin in a
/// process group of its own and waits for it. Past `limit` it kills the whole group (so
/// that no browser it started survives) and fails with what it printed so far.
pub async fn run_program(mut cmd: Command, limit: Duration) -> Result<ProgramOutput> {
    use std::{io::Read, os::unix::process::CommandExt};
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(status) = status else {
        // Not reaped yet, so the group id is still its own: the group's other members
        // (e.g. a browser) go too.
        let _ = Command::new("kill")
            .args(["-KILL", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        let join = |t: std::thread::JoinHandle<String>| t.join().unwrap_or_default();
        let (stdout, stderr) = (join(stdout), join(stderr));
        bail!(
            "{what} did not finish within {limit:?}; killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
    let join = |t: std::thread::JoinHandle<String>| t.join().unwrap_or_default();
    let (stdout, stderr) = (join(stdout), join(stderr));
    Ok(ProgramOutput {
        status,
        stdout,
        stderr,
    })
}

// ---------------------------------------------------------------------------------------
// Helpers for the behaviour tests of issue 20 (push delivery, presence, durability, ...).
// ---------------------------------------------------------------------------------------

pub mod fake_appservice;
pub mod gateway;
