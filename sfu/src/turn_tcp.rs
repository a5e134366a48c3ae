//! TURN over TCP for the embedded TURN server (RFC 8656 §3.1, RFC 5766 §2.1).
//!
//! The `turn` crate's server reads and writes datagrams through webrtc-util's [`Conn`]
//! (`recv_from` / `send_to`) and has no TCP listener of its own. [`TcpTurnConn`] is that
//! `Conn` over the accepted TCP connections: each connection is one peer address, whose
//! byte stream is cut back into TURN messages — STUN messages are self-delimiting (20-byte
//! header plus the length field), ChannelData messages are their 4-byte header plus the
//! length field, padded to a multiple of 4 over TCP. `recv_from` yields one whole message
//! with the connection's remote address; `send_to(addr)` queues a message to the
//! connection with that remote address (dropped, like a UDP datagram, when the queue is
//! full or the connection is gone).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (more are closed at once); a connection
//! that sends nothing for [`IDLE_TIMEOUT`] or stops reading for [`WRITE_TIMEOUT`] is
//! closed; a connection sending anything but STUN or ChannelData is closed; messages longer
//! than [`MAX_MESSAGE`] are skipped; every queue is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use webrtc::util::{self, Conn};

/// The longest message handed to the TURN server: the size of its read buffer (the `turn`
/// crate reads into 1500 bytes). Longer messages are skipped; media over TURN stays below.
pub const MAX_MESSAGE: usize = 1500;
/// Open TCP connections at most; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends nothing for this long is closed (a live ICE session sends a
/// consent check every few seconds; TURN refreshes come within minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A connection whose peer does not take a queued message within this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued to one connection at most (then dropped, as UDP would).
const OUTBOUND_QUEUE: usize = 256;
/// Messages queued from all connections to the TURN server at most (then the readers wait:
/// TCP's own flow control holds the clients back).
const INBOUND_QUEUE: usize = 1024;

const STUN_HEADER: usize = 20;
const FRAME_HEADER: usize = 4;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Where a STUN header's magic cookie ends.
const STUN_COOKIE_END: usize = 8;

/// Why a connection's bytes are not TURN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A message starting with this byte is neither STUN (top bits 00) nor ChannelData (01).
    NotTurn(u8),
    /// A STUN header whose length is not a multiple of 4 or whose magic cookie is wrong.
    BadStun,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::NotTurn(b) => {
                write!(f, "neither STUN nor ChannelData (first byte {b:#04x})")
            }
            FrameError::BadStun => f.write_str("malformed STUN header"),
        }
    }
}

/// The length of the message a 4-byte header starts, and how many bytes it takes on a TCP
/// stream (ChannelData is padded to a multiple of 4 there).
fn frame_len(header: &[u8; FRAME_HEADER]) -> Result<(usize, usize), FrameError> {
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] >> 6 {
        0 if length % 4 == 0 => Ok((STUN_HEADER + length, STUN_HEADER + length)),
        0 => Err(FrameError::BadStun),
        1 => {
            let message = FRAME_HEADER + length;
            Ok((message, message.next_multiple_of(4)))
        }
        _ => Err(FrameError::NotTurn(header[0])),
    }
}

/// A message ready for a TCP stream: ChannelData padded to a multiple of 4 bytes.
pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    if message.first().is_some_and(|b| b >> 6 == 1) {
        out.resize(message.len().next_multiple_of(4), 0);
    }
    out
}

/// Cuts one connection's byte stream into TURN messages.
#[derive(Debug, Default)]
pub struct Deframer {
    /// The message being read (never longer than [`MAX_MESSAGE`] plus its padding).
    pending: Vec<u8>,
    /// Bytes of an over-long message still to skip.
    skip: usize,
    /// Over-long messages skipped so far.
    pub skipped: u64,
}

impl Deframer {
    /// Takes the next bytes read from the stream; every message they complete is appended
    /// to `out` (without ChannelData padding). An error means the stream is not TURN: the
    /// connection should be closed.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
            }
            if data.is_empty() {
                return Ok(());
            }
            // The header first, then the rest of the message it announces.
            if self.pending.len() < FRAME_HEADER {
                let n = (FRAME_HEADER - self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.pending.len() < FRAME_HEADER {
                    return Ok(());
                }
            }
            let mut header = [0u8; FRAME_HEADER];
            header.copy_from_slice(&self.pending[..FRAME_HEADER]);
            let (message, wire) = frame_len(&header)?;
            // A STUN message's magic cookie tells it from other bytes before its length
            // is trusted (TLS or DTLS records also start with 00 bits).
            if header[0] >> 6 == 0 {
                if self.pending.len() < STUN_COOKIE_END {
                    let n = (STUN_COOKIE_END - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.pending.len() < STUN_COOKIE_END {
                        return Ok(());
                    }
                }
                if self.pending[FRAME_HEADER..STUN_COOKIE_END] != MAGIC_COOKIE {
                    return Err(FrameError::BadStun);
                }
            }
            if message > MAX_MESSAGE {
                self.skip = wire - self.pending.len();
                self.pending.clear();
                self.skipped += 1;
                continue;
            }
            let n = (wire - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() < wire {
                return Ok(());
            }
            self.pending.truncate(message);
            out.push(std::mem::take(&mut self.pending));
        }
    }
}

/// How many connections, and how long a silent or stuck one is kept.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    idle: Duration,
    write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: MAX_CONNECTIONS,
            idle: IDLE_TIMEOUT,
            write: WRITE_TIMEOUT,
        }
    }
}

/// Per remote address, the queue of the connection's writer.
type Peers = Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>;

/// The TURN server's socket over all TCP connections of one listener.
pub struct TcpTurnConn {
    local: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    peers: Arc<Peers>,
}

impl TcpTurnConn {
    /// Serves `listener` until `closed` turns true: accepts connections and hands their
    /// messages to whoever reads the returned `Conn`. Needs a tokio runtime.
    pub fn serve(
        listener: TcpListener,
        closed: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<TcpTurnConn>> {
        TcpTurnConn::serve_with(listener, closed, Limits::default())
    }

    /// [`TcpTurnConn::serve`] with other limits (tests).
    fn serve_with(
        listener: TcpListener,
        closed: watch::Receiver<bool>,
        limits: Limits,
    ) -> std::io::Result<Arc<TcpTurnConn>> {
        let local = listener.local_addr()?;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let peers: Arc<Peers> = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(accept_loop(
            listener,
            inbound_tx,
            Arc::clone(&peers),
            closed,
            limits,
        ));
        Ok(Arc::new(TcpTurnConn {
            local,
            inbound: tokio::sync::Mutex::new(inbound_rx),
            peers,
        }))
    }

    /// Open connections right now.
    pub fn connections(&self) -> usize {
        lock(&self.peers).len()
    }
}

fn lock(peers: &Peers) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
    peers.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    peers: Arc<Peers>,
    mut closed: watch::Receiver<bool>,
    limits: Limits,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "TURN/TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut closed) => return,
        };
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        {
            let mut peers = lock(&peers);
            if peers.len() >= limits.connections {
                tracing::debug!(%peer, "TURN/TCP connection refused: {} open", peers.len());
                continue;
            }
            peers.insert(peer, tx);
        }
        let _ = stream.set_nodelay(true);
        tracing::debug!(%peer, "TURN/TCP connection");
        let inbound = inbound.clone();
        let peers = Arc::clone(&peers);
        let closed = closed.clone();
        tokio::spawn(async move {
            let reason = connection(stream, peer, inbound, rx, closed, limits).await;
            lock(&peers).remove(&peer);
            tracing::debug!(%peer, reason, "TURN/TCP connection closed");
        });
    }
}

/// Resolves once `closed` turns true (or its sender is gone).
async fn stopped(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|c| *c).await;
}

/// Reads and writes one connection until it closes; returns why it closed.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    mut closed: watch::Receiver<bool>,
    limits: Limits,
) -> &'static str {
    let (mut read, mut write) = stream.into_split();
    let mut deframer = Deframer::default();
    let mut chunk = vec![0u8; 4096];
    let mut messages = Vec::new();
    let mut idle_until = Instant::now() + limits.idle;
    loop {
        tokio::select! {
            n = read.read(&mut chunk) => {
                let n = match n {
                    Ok(0) => return "closed by the client",
                    Ok(n) => n,
                    Err(_) => return "read error",
                };
                idle_until = Instant::now() + limits.idle;
                if let Err(e) = deframer.push(&chunk[..n], &mut messages) {
                    tracing::debug!(%peer, error = %e, "TURN/TCP garbage");
                    return "not TURN";
                }
                for message in messages.drain(..) {
                    if inbound.send((message, peer)).await.is_err() {
                        return "server closed";
                    }
                }
            }
            message = outbound.recv() => {
                let Some(message) = message else { return "server closed" };
                match tokio::time::timeout(limits.write, write.write_all(&message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "write error",
                    Err(_) => return "client stopped reading",
                }
            }
            _ = tokio::time::sleep_until(idle_until) => return "idle",
            () = stopped(&mut closed) => return "server closed",
        }
    }
}

#[async_trait::async_trait]
impl Conn for TcpTurnConn {
    async fn connect(&self, _addr: SocketAddr) -> util::Result<()> {
        Err(util::Error::Other(
            "a TURN/TCP listener does not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> util::Result<(usize, SocketAddr)> {
        let mut inbound = self.inbound.lock().await;
        loop {
            let Some((message, peer)) = inbound.recv().await else {
                return Err(util::Error::ErrUseClosedNetworkConn);
            };
            // The deframer already skips messages longer than the server's buffer.
            if let Some(dst) = buf.get_mut(..message.len()) {
                dst.copy_from_slice(&message);
                return Ok((message.len(), peer));
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> util::Result<usize> {
        Err(util::Error::Other(
            "a TURN/TCP listener sends with send_to".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
        let queue = lock(&self.peers).get(&target).cloned();
        match queue {
            // A full queue or a connection gone loses the message, as UDP would.
            Some(queue) => {
                if queue.try_send(framed(buf)).is_err() {
                    tracing::trace!(%target, "TURN/TCP message dropped");
                }
            }
            None => tracing::trace!(%target, "TURN/TCP message to a closed connection"),
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Nothing: every allocation closes the server's socket when it ends, and this one is
    /// shared; the listener stops with the `closed` signal given to [`TcpTurnConn::serve`].
    async fn close(&self) -> util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(body_len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body_len as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7u8; 12]);
        m.extend(std::iter::repeat_n(fill, body_len));
        m
    }

    fn channel_data(len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![0x40, 0x01];
        m.extend_from_slice(&(len as u16).to_be_bytes());
        m.extend(std::iter::repeat_n(fill, len));
        m
    }

    fn deframe_in(chunks: &[&[u8]]) -> (Result<(), FrameError>, Vec<Vec<u8>>) {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            if let Err(e) = d.push(chunk, &mut out) {
                return (Err(e), out);
            }
        }
        (Ok(()), out)
    }

    #[test]
    fn channel_data_is_padded_on_the_stream_and_not_in_the_message() {
        let m = channel_data(5, 0xaa);
        let wire = framed(&m);
        assert_eq!(wire.len(), 12, "4 + 5 padded to 12");
        assert_eq!(&wire[..9], &m[..]);
        assert_eq!(&wire[9..], &[0, 0, 0]);
        assert_eq!(framed(&channel_data(8, 1)).len(), 12, "already aligned");
        assert_eq!(framed(&stun(8, 1)), stun(8, 1), "STUN is never padded");

        // Two padded ChannelData and a STUN message in one read come out whole, unpadded.
        let mut stream = framed(&channel_data(5, 0xaa));
        stream.extend(framed(&channel_data(1, 0xbb)));
        stream.extend(stun(4, 0xcc));
        let (result, out) = deframe_in(&[&stream]);
        assert_eq!(result, Ok(()));
        assert_eq!(
            out,
            vec![channel_data(5, 0xaa), channel_data(1, 0xbb), stun(4, 0xcc)]
        );
    }

    #[test]
    fn split_reads_make_the_same_messages() {
        let mut stream = stun(8, 1);
        stream.extend(framed(&channel_data(7, 2)));
        stream.extend(framed(&channel_data(0, 3)));
        stream.extend(stun(0, 4));
        let expected = vec![
            stun(8, 1),
            channel_data(7, 2),
            channel_data(0, 3),
            stun(0, 4),
        ];
        // Every split point, and byte by byte.
        for at in 0..=stream.len() {
            let (result, out) = deframe_in(&[&stream[..at], &stream[at..]]);
            assert_eq!(result, Ok(()), "split at {at}");
            assert_eq!(out, expected, "split at {at}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(deframe_in(&bytes).1, expected);
    }

    #[test]
    fn garbage_closes_the_connection() {
        // DTLS / RTP-looking bytes (top bits 10 and 11) are not TURN.
        assert_eq!(
            deframe_in(&[&[0x80, 0x60, 0, 1]]).0,
            Err(FrameError::NotTurn(0x80))
        );
        assert_eq!(
            deframe_in(&[&[0, 1, 0, 3]]).0,
            Err(FrameError::BadStun),
            "odd STUN length"
        );
        // A TLS/DTLS record header has 00 top bits but no STUN cookie, even split.
        let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        assert_eq!(
            deframe_in(&[&tls[..5], &tls[5..]]).0,
            Err(FrameError::BadStun)
        );
        let mut bad_cookie = stun(4, 0);
        bad_cookie[4] = 0;
        assert_eq!(deframe_in(&[&bad_cookie]).0, Err(FrameError::BadStun));
        // A good message before the garbage is still delivered.
        let mut stream = stun(4, 9);
        stream.extend_from_slice(&[0xc0, 1, 2, 3]);
        let (result, out) = deframe_in(&[&stream]);
        assert_eq!(result, Err(FrameError::NotTurn(0xc0)));
        assert_eq!(out, vec![stun(4, 9)]);
        // Text starting with 0x40-0x7f reads as a ChannelData header ("GET " is channel
        // 0x4745 with 21536 bytes): skipped as over-long, never delivered.
        let mut d = Deframer::default();
        let mut out = Vec::new();
        d.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(d.skipped, 1);
        // Random bytes never panic.
        let mut x: u32 = 0x9e37_79b9;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for chunk in noise.chunks(997) {
            let _ = deframe_in(&[chunk]);
        }
    }

    #[tokio::test]
    async fn connections_are_peers_of_one_conn() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (close, closed) = watch::channel(false);
        let conn = TcpTurnConn::serve(listener, closed).unwrap();
        let addr = conn.local_addr().unwrap();
        let wait = Duration::from_secs(10);

        // Two clients; one sends its message in two pieces.
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        let message = stun(8, 1);
        a.write_all(&message[..10]).await.unwrap();
        b.write_all(&framed(&channel_data(3, 2))).await.unwrap();
        a.write_all(&message[10..]).await.unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut got = HashMap::new();
        for _ in 0..2 {
            let (n, from) = tokio::time::timeout(wait, conn.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            got.insert(from, buf[..n].to_vec());
        }
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_eq!(got[&a_addr], message);
        assert_eq!(got[&b_addr], channel_data(3, 2));
        assert_eq!(conn.connections(), 2);

        // send_to reaches the connection of that address only, ChannelData padded.
        conn.send_to(&channel_data(5, 3), b_addr).await.unwrap();
        let mut reply = [0u8; 12];
        tokio::time::timeout(wait, b.read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.to_vec(), framed(&channel_data(5, 3)));
        // An address without a connection loses the message, as UDP would.
        conn.send_to(&stun(0, 0), "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap();

        // Garbage closes that connection and no other.
        // (A TLS ClientHello: someone speaking turns: to the plain port.)
        a.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(wait, a.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "the server closes a non-TURN connection"
        );
        let deadline = Instant::now() + wait;
        while conn.connections() != 1 {
            assert!(Instant::now() < deadline, "closed connection not forgotten");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        b.write_all(&stun(4, 4)).await.unwrap();
        let (n, from) = tokio::time::timeout(wait, conn.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((from, buf[..n].to_vec()), (b_addr, stun(4, 4)));

        // Closing ends the listener, the connections and the reads.
        conn.close().await.unwrap();
        assert_eq!(
            conn.connections(),
            1,
            "close() alone (as allocations call it) keeps serving"
        );
        close.send(true).unwrap();
        let read = tokio::time::timeout(wait, conn.recv_from(&mut buf))
            .await
            .unwrap();
        assert!(read.is_err(), "reads end when the listener closes");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(wait, b.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
    }

    /// Reads until the server closes `stream` (or 10 s pass: a failure).
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
        matches!(read.await, Ok(Ok(_) | Err(_)))
    }

    async fn wait_connections(conn: &TcpTurnConn, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.connections() != n {
            assert!(Instant::now() < deadline, "{n} connections expected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn connection_count_and_idle_time_are_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_close, closed) = watch::channel(false);
        let limits = Limits {
            connections: 2,
            idle: Duration::from_millis(500),
            write: WRITE_TIMEOUT,
        };
        let conn = TcpTurnConn::serve_with(listener, closed, limits).unwrap();
        let addr = conn.local_addr().unwrap();
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        wait_connections(&conn, 2).await;
        // A third is closed at once.
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_server(&mut c).await,
            "a connection over the limit is closed"
        );
        assert_eq!(conn.connections(), 2);

        // b keeps talking, a stays silent: a goes after the idle time, b stays.
        let b_addr = b.local_addr().unwrap();
        let talking = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let talk = tokio::spawn({
            let talking = Arc::clone(&talking);
            async move {
                while talking.load(std::sync::atomic::Ordering::Relaxed) {
                    b.write_all(&stun(0, 0)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        assert!(
            closed_by_server(&mut a).await,
            "an idle connection is closed"
        );
        wait_connections(&conn, 1).await;
        let mut buf = vec![0u8; MAX_MESSAGE];
        for _ in 0..3 {
            let (_, from) = conn.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, b_addr, "the talking connection stays");
        }
        talking.store(false, std::sync::atomic::Ordering::Relaxed);
        talk.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_close, closed) = watch::channel(false);
        let limits = Limits {
            write: Duration::from_millis(300),
            ..Limits::default()
        };
        let conn = TcpTurnConn::serve_with(listener, closed, limits).unwrap();
        let mut client = TcpStream::connect(conn.local_addr().unwrap())
            .await
            .unwrap();
        wait_connections(&conn, 1).await;
        // The client never reads: once the socket buffers are full, writes stall and the
        // connection is closed rather than held.
        let to = client.local_addr().unwrap();
        let big = channel_data(1200, 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while conn.connections() == 1 {
            assert!(Instant::now() < deadline, "a stuck reader is closed");
            for _ in 0..64 {
                conn.send_to(&big, to).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(closed_by_server(&mut client).await);
    }

    #[test]
    fn oversize_messages_are_skipped_and_the_stream_goes_on() {
        let big = channel_data(MAX_MESSAGE, 5); // 4 + 1500 > MAX_MESSAGE
        let mut stream = framed(&big);
        stream.extend(framed(&channel_data(3, 6)));
        stream.extend(stun(MAX_MESSAGE, 7)); // 20 + 1500
        stream.extend(stun(4, 8));
        let mut d = Deframer::default();
        let mut out = Vec::new();
        for chunk in stream.chunks(333) {
            d.push(chunk, &mut out).unwrap();
        }
        assert_eq!(out, vec![channel_data(3, 6), stun(4, 8)]);
        assert_eq!(d.skipped, 2);
        assert!(
            d.pending.capacity() <= 2 * MAX_MESSAGE,
            "no buffer grows with the skipped bytes"
        );
        // The largest message that is kept.
        let (result, out) = deframe_in(&[&framed(&channel_data(MAX_MESSAGE - 4, 1))]);
        assert_eq!((result, out.len()), (Ok(()), 1));
    }
}
