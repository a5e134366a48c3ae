//! A fake push gateway (`POST /_matrix/push/v1/notify`) on a loopback port: it hands every
//! request it receives to the test, with its arrival time, and answers what the test's
//! script says (a status code and a JSON body).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// One request the gateway received.
#[derive(Clone, Debug)]
pub struct Push {
    /// When it arrived.
    pub at: Instant,
    /// The JSON body (`{"notification": ...}`).
    pub body: Value,
    /// The status the gateway answered with.
    pub status: u16,
}

impl Push {
    /// `notification.event_id`.
    pub fn event_id(&self) -> &str {
        self.body["notification"]["event_id"]
            .as_str()
            .unwrap_or_default()
    }

    /// `notification.devices[0].pushkey`.
    pub fn pushkey(&self) -> &str {
        self.body["notification"]["devices"][0]["pushkey"]
            .as_str()
            .unwrap_or_default()
    }
}

/// Decides the answer to a request: `(status, body)`.
pub type Script = Box<dyn FnMut(&Value) -> (u16, Value) + Send>;

/// A running fake gateway.
pub struct FakeGateway {
    /// The notify URL to give a pusher.
    pub url: String,
    rx: mpsc::UnboundedReceiver<Push>,
}

impl FakeGateway {
    /// A gateway that accepts everything (`200 {"rejected": []}`).
    pub async fn accepting() -> Result<FakeGateway> {
        FakeGateway::start(Box::new(|_| (200, json!({"rejected": []})))).await
    }

    /// A gateway answering with `script`.
    pub async fn start(script: Script) -> Result<FakeGateway> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr()?);
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
        Ok(FakeGateway { url, rx })
    }

    /// The next request, failing after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Push> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .map_err(|_| anyhow!("no push within {within:?}"))?
            .ok_or_else(|| anyhow!("gateway stopped"))
    }

    /// Requests until (and including) the first one `until` accepts, failing after `within`.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        mut until: impl FnMut(&Push) -> bool,
    ) -> Result<Vec<Push>> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let push = self
                .next(left)
                .await
                .map_err(|e| anyhow!("{e}; received so far: {got:#?}"))?;
            let done = until(&push);
            got.push(push);
            if done {
                return Ok(got);
            }
        }
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it.
async fn serve(
    mut sock: TcpStream,
    tx: mpsc::UnboundedSender<Push>,
    script: Arc<Mutex<Script>>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // one request: headers, then content-length bytes of body
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
        let body: Value =
            serde_json::from_slice(&buf[head_end + 4..head_end + 4 + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + 4 + len);
        let at = Instant::now();
        let (status, reply) = (script.lock().unwrap_or_else(|e| e.into_inner()))(&body);
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(reply.as_bytes()).await?;
        let _ = tx.send(Push { at, body, status });
    }
}
