//! A long-polling client for the syncers: one HTTP/1 connection per syncer, kept open, with
//! requests built from a path (no URL parsing, connection pool or proxy lookup per poll).
//! With thousands of syncers on the machine that runs the server, reqwest's per-request
//! work was a fifth of the load tool's CPU, taken from the cores the server runs on.

use std::{sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{client::conn::http1, header, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::hs::{Hs, RATE_LIMIT_TRIES};

/// Longest a poll may take (the syncers ask for 5 s long polls).
const POLL_LIMIT: Duration = Duration::from_secs(120);

pub(crate) struct Poller {
    /// The client whose rate-limit handling (and retry count) the poller shares.
    hs: Arc<Hs>,
    /// `host:port` of the server.
    addr: String,
    authorization: String,
    conn: Option<http1::SendRequest<Empty<Bytes>>>,
}

impl Poller {
    /// A poller for `token`'s server (which must be plain HTTP: `http://host:port`).
    pub(crate) fn new(hs: &Arc<Hs>, token: &str) -> Result<Poller> {
        let base = hs.base(Some(token));
        let addr = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("the syncers poll plain-HTTP servers only, not {base}"))?
            .trim_end_matches('/');
        Ok(Poller {
            hs: hs.clone(),
            addr: addr.to_owned(),
            authorization: format!("Bearer {token}"),
            conn: None,
        })
    }

    async fn connect(&self) -> Result<http1::SendRequest<Empty<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the poller is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// GETs `path` and parses the answer into `T`; a 429 is retried as [`Hs::call`] does,
    /// a broken connection is opened again on the next call.
    pub(crate) async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T> {
        for _ in 0..RATE_LIMIT_TRIES {
            let mut sender = match self.conn.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            let request = Request::get(path)
                .header(header::HOST, &self.addr)
                .header(header::AUTHORIZATION, &self.authorization)
                .body(Empty::new())?;
            let answer = tokio::time::timeout(POLL_LIMIT, async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
            .await
            .map_err(|_| anyhow!("{path}: no answer within {POLL_LIMIT:?}"))?
            .with_context(|| path.to_owned())?;
            self.conn = Some(sender);
            let (status, body) = answer;
            if status == 429 {
                let answer = serde_json::from_slice(&body).unwrap_or_default();
                self.hs.rate_limited(&answer).await;
                continue;
            }
            if status != 200 {
                bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
            }
            return serde_json::from_slice(&body).with_context(|| path.to_owned());
        }
        bail!("{path}: still rate limited after {RATE_LIMIT_TRIES} tries")
    }
}
