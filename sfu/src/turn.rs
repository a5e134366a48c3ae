//! TURN for clients that cannot reach the media port: the ICE servers handed out in the
//! join response (coturn's shared-secret scheme: time-limited credentials) and, when
//! `rtc.turn.enabled`, an embedded TURN server (webrtc-rs `turn`) checking the same
//! credentials, on UDP and on TCP ([`crate::turn_tcp`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use livekit_protocol as proto;
use sha1::Sha1;
use webrtc::turn;

use crate::config::{RtcConfig, TurnConfig};

/// The TURN REST credential of `username` (coturn's `use-auth-secret`):
/// base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Username and credential for `identity`, valid until `now + ttl`: the username is
/// `expiry:identity` (expiry in Unix seconds).
pub fn credentials(
    secret: &str,
    identity: &str,
    now: SystemTime,
    ttl: Duration,
) -> (String, String) {
    let expiry = (now + ttl)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let username = format!("{expiry}:{identity}");
    let credential = credential(secret, &username);
    (username, credential)
}

/// Whether `username` (`expiry:…`) with `password` is a credential of `secret` that has
/// not expired at `now`.
pub fn valid(secret: &str, username: &str, password: &str, now: SystemTime) -> bool {
    let Some(expiry) = username
        .split(':')
        .next()
        .and_then(|e| e.parse::<u64>().ok())
    else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    expiry >= now && credential(secret, username) == password
}

/// The URLs clients get for the TURN server: `rtc.turn.urls`, or for the embedded server
/// `turn:<external_ip | relay address>:<udp_port>?transport=udp` and, with a TCP listener,
/// `turn:<same>:<tcp_port>?transport=tcp`.
pub fn urls(rtc: &RtcConfig) -> Vec<String> {
    let turn = &rtc.turn;
    if !turn.urls.is_empty() || !turn.enabled {
        return turn.urls.clone();
    }
    let Some(ip) = rtc.external_ip.or(relay_ip(rtc)) else {
        return Vec::new();
    };
    let mut urls = vec![format!(
        "turn:{}?transport=udp",
        SocketAddr::new(ip, turn.udp_port)
    )];
    if turn.tcp_port != 0 {
        urls.push(format!(
            "turn:{}?transport=tcp",
            SocketAddr::new(ip, turn.tcp_port)
        ));
    }
    urls
}

/// The ICE servers of `identity`'s join response (none without a TURN secret and URL).
pub fn ice_servers(rtc: &RtcConfig, identity: &str) -> Vec<proto::IceServer> {
    let urls = urls(rtc);
    let Some(secret) = rtc.turn.secret.as_deref().filter(|_| !urls.is_empty()) else {
        return Vec::new();
    };
    let ttl = Duration::from_secs(rtc.turn.credential_ttl_secs);
    let (username, credential) = credentials(secret, identity, SystemTime::now(), ttl);
    vec![proto::IceServer {
        urls,
        username,
        credential,
    }]
}

/// The address relayed candidates carry and relay sockets bind: `rtc.turn.relay_ip`, else
/// `rtc.bind_ip`. It must be one the SFU's media socket reaches (and is reached from).
pub fn relay_ip(rtc: &RtcConfig) -> Option<IpAddr> {
    rtc.turn.relay_ip.or(rtc.bind_ip)
}

/// Checks TURN long-term credentials against the shared secret.
struct SharedSecretAuth {
    secret: String,
}

impl turn::auth::AuthHandler for SharedSecretAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let password = credential(&self.secret, username);
        if !valid(&self.secret, username, &password, SystemTime::now()) {
            return Err(turn::Error::Other(format!(
                "expired or malformed TURN username {username:?}"
            )));
        }
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }
}

/// The embedded TURN server, running until [`EmbeddedTurn::close`].
pub struct EmbeddedTurn {
    close: tokio::sync::watch::Sender<bool>,
}

impl EmbeddedTurn {
    /// Binds `rtc.turn.udp_port` and `rtc.turn.tcp_port` (unless 0) on `rtc.bind_ip` or
    /// every IPv4 address and serves TURN on them. Needs a tokio runtime.
    pub fn start(rtc: &RtcConfig) -> Result<EmbeddedTurn, String> {
        let turn_config: &TurnConfig = &rtc.turn;
        let secret = turn_config
            .secret
            .clone()
            .ok_or("rtc.turn.enabled needs rtc.turn.secret")?;
        let relay =
            relay_ip(rtc).ok_or("rtc.turn.enabled needs rtc.turn.relay_ip or rtc.bind_ip")?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the TURN server must be started inside a tokio runtime")?;
        let ip = rtc
            .bind_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let addr = SocketAddr::new(ip, turn_config.udp_port);
        let socket = std::net::UdpSocket::bind(addr)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| format!("binding the TURN port udp/{addr}: {e}"))?;
        let tcp_addr = SocketAddr::new(ip, turn_config.tcp_port);
        let tcp = match turn_config.tcp_port {
            0 => None,
            _ => Some(
                std::net::TcpListener::bind(tcp_addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| format!("binding the TURN port tcp/{tcp_addr}: {e}"))?,
            ),
        };
        let realm = turn_config.realm.clone();
        let (close, mut closed) = tokio::sync::watch::channel(false);
        let tcp_closed = closed.clone();
        runtime.spawn(async move {
            let relay_conf = |conn: Arc<dyn webrtc::util::Conn + Send + Sync>| {
                turn::server::config::ConnConfig {
                    conn,
                    relay_addr_generator: Box::new(
                        turn::relay::relay_static::RelayAddressGeneratorStatic {
                            relay_address: relay,
                            address: relay.to_string(),
                            net: Arc::new(webrtc::util::vnet::net::Net::new(None)),
                        },
                    ),
                }
            };
            let mut conn_configs = Vec::new();
            match tokio::net::UdpSocket::from_std(socket) {
                Ok(s) => conn_configs.push(relay_conf(Arc::new(s))),
                Err(e) => {
                    tracing::error!(error = %e, "TURN socket");
                    return;
                }
            }
            if let Some(tcp) = tcp {
                let conn = tokio::net::TcpListener::from_std(tcp)
                    .and_then(|l| crate::turn_tcp::TcpTurnConn::serve(l, tcp_closed));
                match conn {
                    Ok(conn) => conn_configs.push(relay_conf(conn)),
                    Err(e) => {
                        tracing::error!(error = %e, "TURN TCP listener");
                        return;
                    }
                }
            }
            let server = turn::server::Server::new(turn::server::config::ServerConfig {
                conn_configs,
                realm,
                auth_handler: Arc::new(SharedSecretAuth { secret }),
                channel_bind_timeout: Duration::from_secs(0),
                alloc_close_notify: None,
            })
            .await;
            let server = match server {
                Ok(server) => server,
                Err(e) => {
                    tracing::error!(error = %e, "starting the TURN server failed");
                    return;
                }
            };
            match tcp_addr.port() {
                0 => tracing::info!(udp = %addr, "embedded TURN server listening"),
                _ => tracing::info!(udp = %addr, tcp = %tcp_addr, "embedded TURN server listening"),
            }
            let _ = closed.wait_for(|c| *c).await;
            let _ = server.close().await;
        });
        Ok(EmbeddedTurn { close })
    }

    /// Stops the server.
    pub fn close(&self) {
        let _ = self.close.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_coturns_hmac_sha1() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog") is the RFC 2104
        // example de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9.
        assert_eq!(
            credential("key", "The quick brown fox jumps over the lazy dog"),
            "3nybhbi3iqa8ino29wqQcBydtNk="
        );
    }

    #[test]
    fn credentials_expire_and_bind_the_secret() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (user, pass) = credentials(
            "s3cret",
            "@alice:example.org",
            now,
            Duration::from_secs(3600),
        );
        assert_eq!(user, "1700003600:@alice:example.org");
        assert_eq!(pass, credential("s3cret", &user));
        assert!(valid("s3cret", &user, &pass, now));
        assert!(valid(
            "s3cret",
            &user,
            &pass,
            now + Duration::from_secs(3600)
        ));
        assert!(
            !valid("s3cret", &user, &pass, now + Duration::from_secs(3601)),
            "expired"
        );
        assert!(!valid("other", &user, &pass, now), "another secret");
        assert!(
            !valid("s3cret", "1700003600:@mallory:example.org", &pass, now),
            "another user"
        );
        assert!(
            !valid("s3cret", "@alice:example.org", &pass, now),
            "no expiry"
        );
    }

    /// The client side of TURN over TCP for the test: one connection to the server.
    struct TcpClientConn {
        server: SocketAddr,
        write: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
        inbound: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    }

    impl TcpClientConn {
        async fn connect(server: SocketAddr) -> TcpClientConn {
            use tokio::io::AsyncReadExt as _;
            let stream = tokio::net::TcpStream::connect(server).await.unwrap();
            let (mut read, write) = stream.into_split();
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(async move {
                let mut deframer = crate::turn_tcp::Deframer::default();
                let mut chunk = vec![0u8; 4096];
                let mut messages = Vec::new();
                while let Ok(n @ 1..) = read.read(&mut chunk).await {
                    deframer.push(&chunk[..n], &mut messages).unwrap();
                    for m in messages.drain(..) {
                        let _ = tx.send(m).await;
                    }
                }
            });
            TcpClientConn {
                server,
                write: tokio::sync::Mutex::new(write),
                inbound: tokio::sync::Mutex::new(rx),
            }
        }
    }

    #[async_trait::async_trait]
    impl webrtc::util::Conn for TcpClientConn {
        async fn connect(&self, _: SocketAddr) -> webrtc::util::Result<()> {
            Ok(())
        }
        async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
            Ok(self.recv_from(buf).await?.0)
        }
        async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
            let m = self.inbound.lock().await.recv().await;
            let m = m.ok_or(webrtc::util::Error::ErrUseClosedNetworkConn)?;
            buf[..m.len()].copy_from_slice(&m);
            Ok((m.len(), self.server))
        }
        async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
            self.send_to(buf, self.server).await
        }
        async fn send_to(&self, buf: &[u8], _: SocketAddr) -> webrtc::util::Result<usize> {
            use tokio::io::AsyncWriteExt as _;
            let framed = crate::turn_tcp::framed(buf);
            self.write.lock().await.write_all(&framed).await?;
            Ok(buf.len())
        }
        fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        }
        fn remote_addr(&self) -> Option<SocketAddr> {
            Some(self.server)
        }
        async fn close(&self) -> webrtc::util::Result<()> {
            Ok(())
        }
        fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
            self
        }
    }

    /// A TURN client (the `turn` crate's) allocates over TCP and exchanges datagrams of
    /// every length modulo 4 with a UDP peer through the relay, both ways: Send/Data
    /// indications first, then ChannelData once the client has bound a channel.
    #[tokio::test]
    async fn relays_over_tcp() {
        use webrtc::util::Conn as _;
        let wait = Duration::from_secs(10);
        let mut rtc = RtcConfig {
            bind_ip: Some("127.0.0.1".parse().unwrap()),
            ..RtcConfig::default()
        };
        rtc.turn.enabled = true;
        rtc.turn.secret = Some("s3cret".into());
        rtc.turn.udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        rtc.turn.tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = EmbeddedTurn::start(&rtc).unwrap();
        let tcp = SocketAddr::from(([127, 0, 0, 1], rtc.turn.tcp_port));
        let conn = tokio::time::timeout(wait, async {
            loop {
                if tokio::net::TcpStream::connect(tcp).await.is_ok() {
                    break TcpClientConn::connect(tcp).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the TURN TCP listener comes up");
        let (username, password) = credentials(
            "s3cret",
            "tester",
            SystemTime::now(),
            Duration::from_secs(60),
        );
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: String::new(),
            turn_serv_addr: tcp.to_string(),
            username,
            password,
            realm: String::new(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(conn),
            vnet: None,
        })
        .await
        .unwrap();
        client.listen().await.unwrap();
        let relay = tokio::time::timeout(wait, client.allocate())
            .await
            .expect("allocation within 10 s")
            .expect("allocation over TCP");
        let relay_addr = relay.local_addr().unwrap();
        assert_eq!(relay_addr.ip(), rtc.bind_ip.unwrap());

        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut buf = vec![0u8; 1500];
        for len in 1..=24usize {
            let out = vec![len as u8; len];
            tokio::time::timeout(wait, relay.send_to(&out, peer_addr))
                .await
                .unwrap()
                .unwrap();
            let (n, from) = tokio::time::timeout(wait, peer.recv_from(&mut buf))
                .await
                .expect("the peer gets the client's datagram")
                .unwrap();
            assert_eq!((from, &buf[..n]), (relay_addr, &out[..]));
            let back = vec![!(len as u8); len + 1];
            peer.send_to(&back, relay_addr).await.unwrap();
            let (n, from) = tokio::time::timeout(wait, relay.recv_from(&mut buf))
                .await
                .expect("the client gets the peer's datagram")
                .unwrap();
            assert_eq!((from, &buf[..n]), (peer_addr, &back[..]));
            // Give the client's channel binding time to complete midway.
            if len == 8 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        client.close().await.unwrap();
        server.close();
    }

    #[test]
    fn join_response_servers() {
        let mut rtc = RtcConfig::default();
        assert!(ice_servers(&rtc, "alice").is_empty(), "no TURN configured");
        rtc.turn.urls = vec!["turns:turn.example.org:443?transport=tcp".into()];
        assert!(
            ice_servers(&rtc, "alice").is_empty(),
            "no secret, no credentials"
        );
        rtc.turn.secret = Some("s3cret".into());
        let servers = ice_servers(&rtc, "alice");
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].urls, rtc.turn.urls);
        assert!(servers[0].username.ends_with(":alice"));
        assert!(valid(
            "s3cret",
            &servers[0].username,
            &servers[0].credential,
            SystemTime::now()
        ));

        // The embedded server's own URL, at the external address.
        let mut rtc = RtcConfig::default();
        rtc.turn.enabled = true;
        rtc.turn.secret = Some("s3cret".into());
        rtc.bind_ip = Some("10.0.0.5".parse().unwrap());
        assert_eq!(
            urls(&rtc),
            [
                "turn:10.0.0.5:3478?transport=udp",
                "turn:10.0.0.5:3478?transport=tcp"
            ]
        );
        rtc.external_ip = Some("203.0.113.7".parse().unwrap());
        rtc.turn.tcp_port = 443;
        assert_eq!(
            urls(&rtc),
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:203.0.113.7:443?transport=tcp"
            ]
        );
        rtc.turn.tcp_port = 0;
        assert_eq!(urls(&rtc), ["turn:203.0.113.7:3478?transport=udp"]);
    }
}
