//! Typed SFU configuration: TOML file plus `MYELIN_SFU_*` environment overrides.
//!
//! Every key has a default that runs on one box, except the API keys: a token service and
//! the SFU must share at least one key/secret pair, so the SFU refuses to start without one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

/// The whole SFU configuration (see `config/myelin-sfu.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP/WebSocket listener (signalling and internal API).
    pub listen: SocketAddr,
    /// LiveKit API key → secret. A JWT's `iss` names the key, the secret checks its signature.
    pub keys: BTreeMap<String, String>,
    /// Media (ICE/UDP) settings.
    pub rtc: RtcConfig,
    /// Room lifecycle settings.
    pub room: RoomConfig,
    /// The internal admin API (server-side mute).
    pub internal: InternalConfig,
    /// Where the standalone `myelin-sfu` answers `GET /metrics` (Prometheus); unset = no
    /// metrics listener. The embedded SFU reports through `myelin serve`'s metrics.
    pub metrics_listen: Option<SocketAddr>,
}

/// Media transport settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    /// The one UDP port every peer connection's ICE and media share (UDP mux); 0 = a port
    /// of `udp_port_min..=udp_port_max` per peer connection instead.
    pub udp_port: u16,
    /// Lowest UDP port used for ICE/media when `udp_port` is 0.
    pub udp_port_min: u16,
    /// Highest UDP port used for ICE/media when `udp_port` is 0.
    pub udp_port_max: u16,
    /// Only gather ICE candidates on this local address (unset: every interface).
    pub bind_ip: Option<IpAddr>,
    /// Address advertised to clients instead of the local one (1:1 NAT, e.g. a cloud VM's
    /// public address).
    pub external_ip: Option<IpAddr>,
    /// Seconds between the client's pings, told to the client in the join response.
    pub ping_interval_secs: u32,
    /// Seconds without any message after which a participant is dropped.
    pub ping_timeout_secs: u32,
    /// TURN servers handed to clients, and the embedded one.
    pub turn: TurnConfig,
}

/// TURN: an external server (coturn with `use-auth-secret`) and/or the embedded one.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the embedded TURN server (UDP `udp_port`, TCP `tcp_port`).
    pub enabled: bool,
    /// The embedded server's UDP port.
    pub udp_port: u16,
    /// The embedded server's TCP port (TURN over TCP, RFC 8656 framing); 0 = no TCP
    /// listener.
    pub tcp_port: u16,
    /// TURN URLs handed to clients in the join response (e.g. an external coturn's
    /// `turn:` / `turns:` URLs, or the embedded server behind a TLS proxy). Empty with
    /// `enabled`: the embedded server at `external_ip` (else the relay address).
    pub urls: Vec<String>,
    /// The shared secret credentials are derived from (coturn's `static-auth-secret`).
    pub secret: Option<String>,
    /// Seconds a handed-out credential stays valid.
    pub credential_ttl_secs: u64,
    /// The embedded server's realm.
    pub realm: String,
    /// Address of the embedded server's relayed candidates and relay sockets (default
    /// `rtc.bind_ip`): one the SFU's media socket reaches directly.
    pub relay_ip: Option<IpAddr>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: false,
            udp_port: 3478,
            tcp_port: 3478,
            urls: Vec::new(),
            secret: None,
            credential_ttl_secs: 86400,
            realm: "myelin".into(),
            relay_ip: None,
        }
    }
}

/// Room lifecycle settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomConfig {
    /// Seconds an empty room is kept before it is closed.
    pub empty_timeout_secs: u64,
}

/// Internal admin API settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InternalConfig {
    /// Shared secret expected as `Authorization: Bearer <secret>`; unset disables the API.
    pub secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7880)),
            keys: BTreeMap::new(),
            rtc: RtcConfig::default(),
            room: RoomConfig::default(),
            internal: InternalConfig::default(),
            metrics_listen: None,
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            udp_port: 7882,
            udp_port_min: 50000,
            udp_port_max: 60000,
            bind_ip: None,
            external_ip: None,
            ping_interval_secs: 5,
            ping_timeout_secs: 15,
            turn: TurnConfig::default(),
        }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            empty_timeout_secs: 300,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid value for {var}: {value:?}")]
    Env { var: &'static str, value: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (or the defaults when `None`), then applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Config::from_toml(&text)?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document; missing keys keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Applies `MYELIN_SFU_*` overrides read through `lookup`.
    ///
    /// `MYELIN_SFU_KEYS` is `key:secret[,key:secret…]` and replaces the file's keys.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, value: String) -> Result<T, ConfigError> {
            value
                .trim()
                .parse()
                .map_err(|_| ConfigError::Env { var, value })
        }
        if let Some(v) = lookup("MYELIN_SFU_LISTEN") {
            self.listen = parse("MYELIN_SFU_LISTEN", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_KEYS") {
            let mut keys = BTreeMap::new();
            for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((key, secret)) = pair.split_once(':') else {
                    return Err(ConfigError::Env {
                        var: "MYELIN_SFU_KEYS",
                        value: v.clone(),
                    });
                };
                keys.insert(key.trim().to_owned(), secret.trim().to_owned());
            }
            self.keys = keys;
        }
        if let Some(v) = lookup("MYELIN_SFU_UDP_PORT") {
            self.rtc.udp_port = parse("MYELIN_SFU_UDP_PORT", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_UDP_PORT_MIN") {
            self.rtc.udp_port_min = parse("MYELIN_SFU_UDP_PORT_MIN", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_UDP_PORT_MAX") {
            self.rtc.udp_port_max = parse("MYELIN_SFU_UDP_PORT_MAX", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_BIND_IP") {
            self.rtc.bind_ip = Some(parse("MYELIN_SFU_BIND_IP", v)?);
        }
        if let Some(v) = lookup("MYELIN_SFU_EXTERNAL_IP") {
            self.rtc.external_ip = Some(parse("MYELIN_SFU_EXTERNAL_IP", v)?);
        }
        if let Some(v) = lookup("MYELIN_SFU_TURN_ENABLED") {
            self.rtc.turn.enabled = parse("MYELIN_SFU_TURN_ENABLED", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_TURN_UDP_PORT") {
            self.rtc.turn.udp_port = parse("MYELIN_SFU_TURN_UDP_PORT", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_TURN_TCP_PORT") {
            self.rtc.turn.tcp_port = parse("MYELIN_SFU_TURN_TCP_PORT", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_TURN_URLS") {
            self.rtc.turn.urls = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = lookup("MYELIN_SFU_TURN_SECRET") {
            self.rtc.turn.secret = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = lookup("MYELIN_SFU_TURN_RELAY_IP") {
            self.rtc.turn.relay_ip = Some(parse("MYELIN_SFU_TURN_RELAY_IP", v)?);
        }
        if let Some(v) = lookup("MYELIN_SFU_EMPTY_TIMEOUT_SECS") {
            self.room.empty_timeout_secs = parse("MYELIN_SFU_EMPTY_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = lookup("MYELIN_SFU_METRICS_LISTEN") {
            self.metrics_listen = if v.trim().is_empty() {
                None
            } else {
                Some(parse("MYELIN_SFU_METRICS_LISTEN", v)?)
            };
        }
        if let Some(v) = lookup("MYELIN_SFU_INTERNAL_SECRET") {
            self.internal.secret = Some(v).filter(|s| !s.is_empty());
        }
        Ok(())
    }

    /// Checks the values that have no safe default.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::Invalid(
                "no API keys: set [keys] in the config file or MYELIN_SFU_KEYS".into(),
            ));
        }
        if let Some((key, _)) = self.keys.iter().find(|(_, s)| s.len() < 32) {
            return Err(ConfigError::Invalid(format!(
                "the secret of API key {key:?} is shorter than 32 characters"
            )));
        }
        if self.rtc.udp_port == 0
            && (self.rtc.udp_port_min == 0 || self.rtc.udp_port_min > self.rtc.udp_port_max)
        {
            return Err(ConfigError::Invalid(
                "rtc.udp_port_min must be non-zero and not above rtc.udp_port_max".into(),
            ));
        }
        let turn = &self.rtc.turn;
        if (turn.enabled || !turn.urls.is_empty()) && turn.secret.is_none() {
            return Err(ConfigError::Invalid(
                "rtc.turn needs rtc.turn.secret (the shared secret of its credentials)".into(),
            ));
        }
        if turn.enabled && turn.relay_ip.or(self.rtc.bind_ip).is_none() {
            return Err(ConfigError::Invalid(
                "rtc.turn.enabled needs rtc.turn.relay_ip or rtc.bind_ip (the relay address)"
                    .into(),
            ));
        }
        if self.rtc.ping_interval_secs == 0
            || self.rtc.ping_timeout_secs <= self.rtc.ping_interval_secs
        {
            return Err(ConfigError::Invalid(
                "rtc.ping_timeout_secs must exceed a non-zero rtc.ping_interval_secs".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_listen_on_loopback_7880() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:7880".parse().unwrap());
        assert_eq!(config.room.empty_timeout_secs, 300);
        assert_eq!(config.rtc.udp_port, 7882, "one muxed UDP port by default");
        assert!(config.validate().is_err(), "no keys must be refused");
    }

    #[test]
    fn toml_and_env_overrides() {
        let mut config = Config::from_toml(&format!(
            "listen = \"0.0.0.0:7000\"\n[keys]\nfile = \"{SECRET}\"\n[rtc]\nudp_port_min = 40000\nudp_port_max = 40100\n"
        ))
        .unwrap();
        assert_eq!(config.rtc.udp_port_min, 40000);
        config
            .apply_env(|name| match name {
                "MYELIN_SFU_KEYS" => Some(format!("envkey:{SECRET}")),
                "MYELIN_SFU_EXTERNAL_IP" => Some("203.0.113.7".into()),
                "MYELIN_SFU_INTERNAL_SECRET" => Some("admin".into()),
                "MYELIN_SFU_UDP_PORT" => Some("0".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.keys.len(), 1);
        assert_eq!(config.keys["envkey"], SECRET);
        assert_eq!(config.rtc.external_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(config.internal.secret.as_deref(), Some("admin"));
        assert_eq!(config.rtc.udp_port, 0, "0 selects the port range");
        config.validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::from_toml("nonsense = 1").is_err());
        let mut config = Config::default();
        assert!(config
            .apply_env(|n| (n == "MYELIN_SFU_LISTEN").then(|| "nope".into()))
            .is_err());
        config.keys.insert("k".into(), "short".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn turn_settings() {
        let mut config = Config::from_toml(&format!(
            "[keys]\nk = \"{SECRET}\"\n[rtc.turn]\nenabled = true\nsecret = \"t\"\n"
        ))
        .unwrap();
        assert_eq!(config.rtc.turn.udp_port, 3478);
        assert_eq!(
            config.rtc.turn.tcp_port, 3478,
            "TURN over TCP on by default"
        );
        assert!(
            config.validate().is_err(),
            "the embedded server needs a relay address"
        );
        config
            .apply_env(|name| match name {
                "MYELIN_SFU_TURN_RELAY_IP" => Some("127.0.0.1".into()),
                "MYELIN_SFU_TURN_URLS" => Some("turn:a:3478, turns:a:443?transport=tcp".into()),
                "MYELIN_SFU_TURN_TCP_PORT" => Some("0".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.rtc.turn.urls.len(), 2);
        assert_eq!(config.rtc.turn.tcp_port, 0, "0 turns the TCP listener off");
        config.validate().unwrap();
        config.rtc.turn.secret = None;
        assert!(config.validate().is_err(), "URLs without a secret");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config/myelin-sfu.toml");
        Config::from_toml(text).unwrap();
    }
}
