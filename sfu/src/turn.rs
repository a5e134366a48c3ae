//! TURN for clients that cannot reach the media port: the ICE servers handed out in the
//! join response (coturn's shared-secret scheme: time-limited credentials) and, when
//! `rtc.turn.enabled`, an embedded TURN server (webrtc-rs `turn`) checking the same
//! credentials.

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
/// `turn:<external_ip | relay address>:<udp_port>?transport=udp`.
pub fn urls(rtc: &RtcConfig) -> Vec<String> {
    let turn = &rtc.turn;
    if !turn.urls.is_empty() || !turn.enabled {
        return turn.urls.clone();
    }
    match rtc.external_ip.or(relay_ip(rtc)) {
        Some(ip) => vec![format!(
            "turn:{}?transport=udp",
            SocketAddr::new(ip, turn.udp_port)
        )],
        None => Vec::new(),
    }
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
    /// Binds `rtc.turn.udp_port` (on `rtc.bind_ip` or every IPv4 address) and serves TURN
    /// on it. Needs a tokio runtime.
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
        let realm = turn_config.realm.clone();
        let (close, mut closed) = tokio::sync::watch::channel(false);
        runtime.spawn(async move {
            let socket = match tokio::net::UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "TURN socket");
                    return;
                }
            };
            let server = turn::server::Server::new(turn::server::config::ServerConfig {
                conn_configs: vec![turn::server::config::ConnConfig {
                    conn: Arc::new(socket),
                    relay_addr_generator: Box::new(
                        turn::relay::relay_static::RelayAddressGeneratorStatic {
                            relay_address: relay,
                            address: relay.to_string(),
                            net: Arc::new(webrtc::util::vnet::net::Net::new(None)),
                        },
                    ),
                }],
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
            tracing::info!(%addr, "embedded TURN server listening");
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
        assert_eq!(urls(&rtc), ["turn:10.0.0.5:3478?transport=udp"]);
        rtc.external_ip = Some("203.0.113.7".parse().unwrap());
        assert_eq!(urls(&rtc), ["turn:203.0.113.7:3478?transport=udp"]);
    }
}
