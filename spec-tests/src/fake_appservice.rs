//! A fake application service on a loopback port: it hands every request the homeserver
//! makes (method, path, `Authorization`, JSON body) to the test and answers with the status
//! the test's script chooses; plus the registration file that points a server at it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// One request the appservice received.
#[derive(Clone, Debug)]
pub struct AsRequest {
    /// `PUT`, `POST`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The JSON body (`Null` when none).
    pub body: Value,
    /// The status the appservice answered with.
    pub status: u16,
}

impl AsRequest {
    /// The transaction id of a `PUT /_matrix/app/v1/transactions/{txnId}`.
    pub fn txn_id(&self) -> Option<&str> {
        self.path.strip_prefix("/_matrix/app/v1/transactions/")
    }

    /// The bodies (`content.body`) of a transaction's events.
    pub fn bodies(&self) -> Vec<String> {
        self.body["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Chooses the status of the answer to a request (the body is `{}`).
pub type AsScript = Box<dyn FnMut(&AsRequest) -> u16 + Send>;

/// Chooses the status and the JSON body of the answer to a request.
pub type AsReply = Box<dyn FnMut(&AsRequest) -> (u16, Value) + Send>;

/// A running fake appservice.
pub struct FakeAppservice {
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    rx: mpsc::UnboundedReceiver<AsRequest>,
}

impl FakeAppservice {
    /// An appservice answering every request with the status `script` picks.
    pub async fn start(script: AsScript) -> Result<FakeAppservice> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        FakeAppservice::serve_on(listener, script)
    }

    /// An appservice answering every request with the status and body `reply` picks.
    pub async fn start_replying(reply: AsReply) -> Result<FakeAppservice> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        FakeAppservice::reply_on(listener, reply)
    }

    /// The same as [`FakeAppservice::start`], on a listener the test bound (to restart on
    /// the same port).
    pub fn serve_on(listener: TcpListener, mut script: AsScript) -> Result<FakeAppservice> {
        FakeAppservice::reply_on(
            listener,
            Box::new(move |req| (script(req), Value::Object(Default::default()))),
        )
    }

    fn reply_on(listener: TcpListener, script: AsReply) -> Result<FakeAppservice> {
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(script));
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let tx = tx.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, tx, script).await;
                });
            }
        });
        Ok(FakeAppservice { url, rx })
    }

    /// The next request, failing after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<AsRequest> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .map_err(|_| anyhow!("no request to the appservice within {within:?}"))?
            .ok_or_else(|| anyhow!("appservice stopped"))
    }

    /// Requests until (and including) the first one `until` accepts, failing after `within`.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        mut until: impl FnMut(&AsRequest) -> bool,
    ) -> Result<Vec<AsRequest>> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let req = self
                .next(left)
                .await
                .map_err(|e| anyhow!("{e}; received so far: {got:#?}"))?;
            let done = until(&req);
            got.push(req);
            if done {
                return Ok(got);
            }
        }
    }

    /// Requests arriving within `quiet` of each other (none: empty).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<AsRequest> {
        let mut got = Vec::new();
        while let Ok(Some(req)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            got.push(req);
        }
        got
    }
}

/// Writes a registration file `<dir>/<id>.yaml` for an appservice at `url` (`None`: null)
/// with tokens `<id>_as` / `<id>_hs`, sender `<id>_bot` and the exclusive user namespace
/// `@<id>_.*` and alias namespace `#<id>_.*`; returns its path.
pub fn write_registration(dir: &Path, id: &str, url: Option<&str>) -> Result<PathBuf> {
    let url = url.map_or("null".to_owned(), |u| format!("\"{u}\""));
    let text = format!(
        "id: {id}\nurl: {url}\nas_token: {id}_as\nhs_token: {id}_hs\nsender_localpart: {id}_bot\n\
         rate_limited: false\nnamespaces:\n  users:\n    - exclusive: true\n      regex: \"@{id}_.*\"\n\
         \x20 aliases:\n    - exclusive: true\n      regex: \"#{id}_.*\"\n  rooms: []\n"
    );
    let path = dir.join(format!("{id}.yaml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Serves requests on one connection (keep-alive) until the peer closes it.
async fn serve(
    mut sock: TcpStream,
    tx: mpsc::UnboundedSender<AsRequest>,
    script: Arc<Mutex<AsReply>>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let (head_end, len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (end, len);
                }
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_owned();
        let path = first.next().unwrap_or_default().to_owned();
        let authorization = lines.find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_owned())
        });
        let body: Value =
            serde_json::from_slice(&buf[head_end + 4..head_end + 4 + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + 4 + len);
        let mut req = AsRequest {
            method,
            path,
            authorization,
            body,
            status: 0,
        };
        let answer = || (script.lock().unwrap_or_else(|e| e.into_inner()))(&req);
        // A script may block (waiting for the test): on a multi-threaded runtime it then
        // hands this worker's queue to another thread instead of starving its tasks.
        let (status, reply) = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(answer),
            _ => answer(),
        };
        req.status = status;
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        sock.write_all(head.as_bytes()).await?;
        let _ = tx.send(req);
    }
}
