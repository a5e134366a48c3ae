//! Typed configuration: TOML file (optional) plus `MYELIN_*` environment overrides, with
//! defaults that run a working server on `127.0.0.1:8008` as `localhost`.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

mod env;
mod groups;
mod limits;
mod meetings;
mod ops;

use self::env::{boolean, number};
pub use self::{
    groups::GroupsConfig,
    limits::{LimitsConfig, RateLimit, RateLimitsConfig},
    meetings::MeetingsConfig,
    ops::{LogConfig, LogFormat, MetricsConfig},
};

/// The documented default configuration (`config/myelin.toml`), printed by
/// `myelin config generate`.
pub const DEFAULT_TOML: &str = include_str!("../config/myelin.toml");

/// How new accounts may be created.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Only the admin CLI (or the shared-secret API) creates accounts.
    #[default]
    Closed,
    /// Anyone may register (user-interactive auth with `m.login.dummy`).
    Open,
    /// Registration needs a registration token: one of `registration.tokens`, or one an
    /// administrator made with the admin API.
    Token,
}

/// Registration settings (`[registration]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// `closed` (default), `open` or `token`.
    pub mode: RegistrationMode,
    /// Secret for the shared-secret registration admin API; empty disables it.
    pub shared_secret: String,
    /// Registration tokens accepted in `token` mode, without limit (the admin API makes
    /// tokens with uses and expiry).
    pub tokens: Vec<String>,
    /// Whether guests may register with `kind=guest`.
    pub allow_guests: bool,
}

/// TURN relay settings for VoIP (`[voip]`), served by `/voip/turnServer` with
/// time-limited credentials (the coturn `use-auth-secret` scheme).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoipConfig {
    /// TURN URIs, e.g. `turn:turn.example.com:3478?transport=udp`; empty disables TURN.
    pub turn_uris: Vec<String>,
    /// The TURN server's shared secret (`static-auth-secret` in coturn).
    pub turn_shared_secret: String,
    /// Lifetime of issued credentials in seconds.
    pub turn_ttl_secs: u64,
    /// Whether guests get TURN credentials.
    pub turn_allow_guests: bool,
}

impl Default for VoipConfig {
    fn default() -> Self {
        VoipConfig {
            turn_uris: Vec::new(),
            turn_shared_secret: String::new(),
            turn_ttl_secs: 86_400,
            turn_allow_guests: false,
        }
    }
}

/// Media repository settings (`[media]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest upload in bytes.
    pub max_upload_size: u64,
    /// Largest image (width × height) the server decodes to make a thumbnail; larger
    /// images get 413 `M_TOO_LARGE` from the thumbnail endpoints.
    pub max_thumbnail_pixels: u64,
    /// Thumbnails generated at the same time; further requests wait their turn. PDF
    /// previews have as many permits of their own.
    pub max_concurrent_thumbnails: usize,
    /// Largest PDF (bytes) the server renders a preview of; larger ones get 413
    /// `M_TOO_LARGE` from the thumbnail endpoints.
    pub max_pdf_preview_size: u64,
    /// Longest a thumbnail or PDF preview may take (seconds) before the request gets
    /// 400 `M_UNKNOWN`; the render keeps its permit until it really ends.
    pub thumbnail_timeout_secs: u64,
    /// Media created before this time (ms since the Unix epoch) stays available on the
    /// legacy unauthenticated `/_matrix/media/v3/download` and `/thumbnail` paths; newer
    /// media only through authenticated media. 0 = the time this data directory was first
    /// served by a version that knows the setting (recorded on first start).
    pub unauthenticated_media_before_ms: u64,
    /// Local media older than this many days is deleted (checked hourly); 0 keeps media
    /// forever (the default).
    pub retention_days: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_size: 50 * 1024 * 1024,
            max_thumbnail_pixels: 32_000_000,
            max_concurrent_thumbnails: 2,
            max_pdf_preview_size: 20 * 1024 * 1024,
            thumbnail_timeout_secs: 10,
            unauthenticated_media_before_ms: 0,
            retention_days: 0,
        }
    }
}

/// Push settings (`[push]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Address ranges (CIDR, e.g. `10.1.0.0/16`, `127.0.0.1/32`, `::1/128`) that push
    /// gateways may be in although they are not public: loopback, private, link-local,
    /// cloud metadata and similar addresses are refused unless listed here.
    pub gateway_allow_cidrs: Vec<String>,
}

/// Storage settings (`[storage]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The storage engine: `sled` (embedded, in the data dir) or `postgres`.
    pub engine: StorageEngine,
    /// sled page cache size in MiB. sled's resident memory is a few times what it
    /// accounts for here; the OS page cache serves what falls out of it.
    pub cache_capacity_mb: u64,
    /// The PostgreSQL database (`engine = "postgres"`): a libpq URL
    /// (`postgresql://user:password@host:port/dbname`) or key=value string.
    pub postgres_url: String,
    /// Connections to PostgreSQL.
    pub postgres_pool_size: usize,
    /// Several Myelin processes serve this server from one PostgreSQL database (each with
    /// this setting; see README "Scaling out").
    pub postgres_shared: bool,
}

/// The storage engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageEngine {
    /// sled, embedded: one process, nothing else to run.
    #[default]
    Sled,
    /// A PostgreSQL database (or a Postgres-compatible one).
    Postgres,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: StorageEngine::Sled,
            cache_capacity_mb: 16,
            postgres_url: String::new(),
            postgres_pool_size: 8,
            postgres_shared: false,
        }
    }
}

/// MatrixRTC settings (`[rtc]`): the SFU, its LiveKit credentials, the token service and
/// delayed events.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    /// WebSocket URL of the LiveKit-compatible SFU handed to clients with their token.
    pub livekit_url: String,
    /// LiveKit API key; empty = generated on first start and kept in the data dir.
    pub livekit_api_key: String,
    /// LiveKit API secret; empty = generated on first start and kept in the data dir.
    pub livekit_api_secret: String,
    /// Whether `myelin serve` runs the companion SFU in-process.
    pub embedded_sfu: bool,
    /// The embedded SFU's settings: a `myelin-sfu` TOML file (see `config/myelin-sfu.toml`;
    /// its `MYELIN_SFU_*` variables apply too); empty = that file's defaults. Its keys and
    /// internal secret are the homeserver's, whatever the file says.
    pub sfu_config: String,
    /// Secret for the SFU's internal admin API (server-side mute); empty = derived from the
    /// LiveKit API secret, which is what the embedded SFU uses. Set it to the SFU's
    /// `[internal] secret` when the SFU runs separately.
    pub sfu_internal_secret: String,
    /// Public base URL of the token service (`/sfu/get`, `/get_token`) advertised as the
    /// transport's `livekit_service_url`; empty = the homeserver's own base URL.
    pub jwt_service_url: String,
    /// Lifetime of issued SFU tokens in seconds.
    pub token_ttl_secs: u64,
    /// Longest accepted delay of a delayed event (MSC4140) in milliseconds.
    pub max_delay_ms: u64,
    /// Most delayed events one user may have scheduled at once.
    pub max_delayed_per_user: usize,
    /// The `myelin-recorder` program that records meetings (an extra package, see the
    /// README's "Recording"); empty = recording is off.
    pub recorder: String,
    /// Several SFUs behind this token service: each call (room and slot) is placed on one
    /// of them by rendezvous hashing. Empty = the one SFU at `livekit_url`.
    pub sfus: Vec<SfuEntry>,
}

/// One SFU of `rtc.sfus`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SfuEntry {
    /// WebSocket URL handed to clients (`ws://` or `wss://`).
    pub url: String,
    /// Base URL of its internal admin API (`http(s)://host:port`); empty = `url` with
    /// `ws`/`wss` turned into `http`/`https`.
    pub internal_url: String,
    /// A label for the operator (logged with each placement); not used for placement.
    pub region: String,
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            livekit_url: "ws://127.0.0.1:7880".to_owned(),
            livekit_api_key: String::new(),
            livekit_api_secret: String::new(),
            embedded_sfu: true,
            sfu_config: String::new(),
            sfu_internal_secret: String::new(),
            jwt_service_url: String::new(),
            token_ttl_secs: 3600,
            max_delay_ms: 24 * 60 * 60 * 1000,
            max_delayed_per_user: 100,
            recorder: String::new(),
            sfus: Vec::new(),
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server name: the part after `:` in user ids.
    pub server_name: String,
    /// Address and port the client API listens on.
    pub listen: SocketAddr,
    /// Where the database, keys and media live.
    pub data_dir: PathBuf,
    /// Public base URL advertised in `/.well-known/matrix/client`; derived from `listen` when empty.
    pub public_base_url: String,
    /// Largest accepted JSON request body in bytes.
    pub max_request_size: usize,
    /// Seconds without activity after which a user is shown offline.
    pub presence_idle_secs: u64,
    /// Registration settings.
    pub registration: RegistrationConfig,
    /// Storage settings.
    pub storage: StorageConfig,
    /// TURN settings for VoIP calls.
    pub voip: VoipConfig,
    /// Media repository settings.
    pub media: MediaConfig,
    /// Push gateway settings.
    pub push: PushConfig,
    /// MatrixRTC settings.
    pub rtc: RtcConfig,
    /// Rate limits per action.
    pub rate_limits: RateLimitsConfig,
    /// Connection limits.
    pub limits: LimitsConfig,
    /// Group settings.
    pub groups: GroupsConfig,
    /// Meeting settings: join links, temporary participants, external guests.
    pub meetings: MeetingsConfig,
    /// Application-service registration files (YAML), loaded and validated at start.
    pub appservices: Vec<PathBuf>,
    /// The Prometheus metrics listener.
    pub metrics: MetricsConfig,
    /// Log output.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            data_dir: PathBuf::from("./myelin-data"),
            public_base_url: String::new(),
            max_request_size: 1024 * 1024,
            presence_idle_secs: 300,
            registration: RegistrationConfig::default(),
            storage: StorageConfig::default(),
            voip: VoipConfig::default(),
            media: MediaConfig::default(),
            push: PushConfig::default(),
            rtc: RtcConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            limits: LimitsConfig::default(),
            groups: GroupsConfig::default(),
            meetings: MeetingsConfig::default(),
            appservices: Vec::new(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Reads the TOML file (if any), then applies the environment (see [`Config::layered`]).
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Config::layered(text.as_deref(), &vars).map_err(|e| match path {
            Some(path) => anyhow::anyhow!("{}: {e:#}", path.display()),
            None => e,
        })
    }

    /// The configuration in layers, each overriding the one before: the defaults, the TOML
    /// document `file`, then among `vars` (the environment) every `MYELIN_SECTION__KEY`
    /// variable (any key; `__` separates the levels: `MYELIN_RTC__LIVEKIT_URL`,
    /// `MYELIN_RATE_LIMITS__SEND__BURST`), then the historical single-underscore names
    /// (`MYELIN_REGISTRATION_MODE`, … see [`Config::apply_env`]). Then validates.
    pub fn layered(file: Option<&str>, vars: &[(String, String)]) -> anyhow::Result<Config> {
        use figment::{
            providers::{Format, Serialized, Toml},
            Figment,
        };
        let defaults = Config::default();
        // Which keys hold strings: there a value is taken as written (a secret of digits
        // stays a string); elsewhere it is parsed (numbers, booleans, `[a,b]` lists).
        let shape = serde_json::to_value(&defaults)?;
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(text) = file {
            figment = figment.merge(Toml::string(text));
        }
        for (name, value) in vars {
            let Some(path) = name.strip_prefix("MYELIN_").filter(|p| p.contains("__")) else {
                continue;
            };
            let key = path.to_ascii_lowercase().replace("__", ".");
            let pointer = format!("/{}", key.replace('.', "/"));
            let value: figment::value::Value = match shape.pointer(&pointer) {
                Some(serde_json::Value::String(_)) => value.clone().into(),
                _ => value.parse().unwrap_or_else(|e| match e {}),
            };
            figment = figment.merge(Serialized::default(&key, value));
        }
        let mut config: Config = figment.extract().map_err(|e| anyhow::anyhow!("{e}"))?;
        config.apply_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))?;
        config.validate()?;
        Ok(config)
    }

    /// What an operator should know about this configuration (logged at start, printed
    /// by `myelin config check`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.public_base_url.is_empty() && !self.listen.ip().is_loopback() {
            warnings.push(format!(
                "public_base_url is not set while listening on {}: clients are told to use \
                 {}; set public_base_url (MYELIN_PUBLIC_BASE_URL) to the URL clients reach, \
                 e.g. https://matrix.example.org",
                self.listen,
                self.base_url()
            ));
        }
        warnings
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks values no type can: names, URLs, ranges, keys that go together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.storage.engine == StorageEngine::Postgres {
            if self.storage.postgres_url.is_empty() {
                anyhow::bail!(
                    "storage.engine = \"postgres\" needs storage.postgres_url (MYELIN_STORAGE_POSTGRES_URL)"
                );
            }
            if self.storage.postgres_pool_size == 0 {
                anyhow::bail!("storage.postgres_pool_size must be at least 1");
            }
        } else if self.storage.postgres_shared {
            anyhow::bail!("storage.postgres_shared needs storage.engine = \"postgres\"");
        }
        ruma::ServerName::parse(&self.server_name)
            .map_err(|e| anyhow::anyhow!("server_name {:?} is invalid: {e}", self.server_name))?;
        if self.rtc.livekit_api_key.is_empty() != self.rtc.livekit_api_secret.is_empty() {
            anyhow::bail!(
                "rtc.livekit_api_key and rtc.livekit_api_secret must be set together (or both left empty)"
            );
        }
        for (name, url) in [
            ("rtc.livekit_url", &self.rtc.livekit_url),
            ("rtc.jwt_service_url", &self.rtc.jwt_service_url),
        ] {
            if !url.is_empty() && !url.contains("://") {
                anyhow::bail!("{name} {url:?} is not a URL");
            }
        }
        for sfu in &self.rtc.sfus {
            if !(sfu.url.starts_with("ws://") || sfu.url.starts_with("wss://")) {
                anyhow::bail!("rtc.sfus: url {:?} is not a ws:// or wss:// URL", sfu.url);
            }
            let internal_ok = sfu.internal_url.is_empty()
                || sfu.internal_url.starts_with("http://")
                || sfu.internal_url.starts_with("https://");
            if !internal_ok {
                anyhow::bail!(
                    "rtc.sfus: internal_url {:?} is not an http:// or https:// URL",
                    sfu.internal_url
                );
            }
        }
        let mut urls: Vec<&str> = self
            .rtc
            .sfus
            .iter()
            .map(|s| s.url.trim_end_matches('/'))
            .collect();
        urls.sort_unstable();
        if urls.windows(2).any(|w| w[0] == w[1]) {
            anyhow::bail!("rtc.sfus lists an SFU twice");
        }
        for cidr in &self.push.gateway_allow_cidrs {
            crate::push::gateway::Cidr::parse(cidr)
                .map_err(|e| anyhow::anyhow!("push.gateway_allow_cidrs: {e}"))?;
        }
        if self.media.max_concurrent_thumbnails == 0 {
            anyhow::bail!("media.max_concurrent_thumbnails must be positive");
        }
        if self.media.thumbnail_timeout_secs == 0 {
            anyhow::bail!("media.thumbnail_timeout_secs must be positive");
        }
        if self.rtc.token_ttl_secs == 0 {
            anyhow::bail!("rtc.token_ttl_secs must be positive");
        }
        self.rate_limits.validate()?;
        self.groups.validate()?;
        self.meetings.validate()?;
        self.limits.validate()
    }

    /// The public base URL of the SFU token service (`livekit_service_url`).
    pub fn rtc_service_url(&self) -> String {
        if self.rtc.jwt_service_url.is_empty() {
            self.base_url()
        } else {
            self.rtc.jwt_service_url.trim_end_matches('/').to_owned()
        }
    }

    /// The base URL clients should use.
    pub fn base_url(&self) -> String {
        if self.public_base_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_base_url.trim_end_matches('/').to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_on_localhost() {
        let c = Config::default();
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8008");
        assert_eq!(c.registration.mode, RegistrationMode::Closed);
    }

    #[test]
    fn documented_example_parses_with_defaults() {
        let text = include_str!("../config/myelin.toml");
        let c = Config::from_toml(text).expect("config/myelin.toml parses");
        let d = Config::default();
        assert_eq!(c.server_name, d.server_name);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.max_request_size, d.max_request_size);
    }

    #[test]
    fn env_overrides_file() {
        let mut c =
            Config::from_toml("server_name = \"a.example\"\n[registration]\nmode = \"open\"")
                .unwrap();
        c.apply_env(|k| match k {
            "MYELIN_SERVER_NAME" => Some("b.example".into()),
            "MYELIN_REGISTRATION_MODE" => Some("token".into()),
            "MYELIN_REGISTRATION_TOKEN" => Some("t1, t2".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.server_name, "b.example");
        assert_eq!(c.registration.mode, RegistrationMode::Token);
        assert_eq!(c.registration.tokens, vec!["t1", "t2"]);
    }

    #[test]
    fn appservices_from_env() {
        let mut c = Config::from_toml("appservices = [\"/a.yaml\"]").unwrap();
        assert_eq!(c.appservices, vec![PathBuf::from("/a.yaml")]);
        c.apply_env(|k| (k == "MYELIN_APPSERVICES").then(|| " /b.yaml, ,/c.yaml".into()))
            .unwrap();
        assert_eq!(
            c.appservices,
            vec![PathBuf::from("/b.yaml"), PathBuf::from("/c.yaml")]
        );
    }

    #[test]
    fn rtc_defaults_and_env() {
        let text = include_str!("../config/myelin.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.rtc.livekit_url, "ws://127.0.0.1:7880");
        assert!(c.rtc.embedded_sfu);
        assert_eq!(c.rtc.token_ttl_secs, RtcConfig::default().token_ttl_secs);
        assert_eq!(c.rtc_service_url(), "http://127.0.0.1:8008");
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "MYELIN_RTC_LIVEKIT_URL" => Some("wss://sfu.example".into()),
            "MYELIN_RTC_EMBEDDED_SFU" => Some("false".into()),
            "MYELIN_RTC_JWT_SERVICE_URL" => Some("https://rtc.example/".into()),
            "MYELIN_RTC_MAX_DELAY_MS" => Some("5000".into()),
            "MYELIN_RTC_SFU_CONFIG" => Some("/etc/myelin/sfu.toml".into()),
            "MYELIN_RTC_SFU_INTERNAL_SECRET" => Some("s3cret".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.rtc.livekit_url, "wss://sfu.example");
        assert!(!c.rtc.embedded_sfu);
        assert_eq!(c.rtc_service_url(), "https://rtc.example");
        assert_eq!(c.rtc.max_delay_ms, 5000);
        assert_eq!(c.rtc.sfu_config, "/etc/myelin/sfu.toml");
        assert_eq!(c.rtc.sfu_internal_secret, "s3cret");
        assert!(c
            .apply_env(|k| (k == "MYELIN_RTC_EMBEDDED_SFU").then(|| "maybe".into()))
            .is_err());
        c.rtc.livekit_api_key = "key".into();
        assert!(c.validate().is_err(), "key without secret");
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_defaults_file_nested_env_then_historical_env() {
        let file = "server_name = \"file.example\"\n[rtc]\nlivekit_url = \"ws://file:1\"\ntoken_ttl_secs = 60\n";
        let c = Config::layered(
            Some(file),
            &vars(&[
                ("MYELIN_RTC__LIVEKIT_URL", "wss://nested.example"),
                ("MYELIN_RATE_LIMITS__SEND__BURST", "7"),
                ("MYELIN_METRICS__LISTEN", "127.0.0.1:9090"),
                ("MYELIN_RTC__LIVEKIT_API_KEY", "12345"),
                ("MYELIN_RTC__LIVEKIT_API_SECRET", "true"),
                ("MYELIN_LOG__FORMAT", "json"),
                ("MYELIN_REGISTRATION_MODE", "open"),
                ("MYELIN_SFU_LISTEN", "127.0.0.1:1"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server_name, "file.example", "file over defaults");
        assert_eq!(c.rtc.livekit_url, "wss://nested.example", "env over file");
        assert_eq!(c.rtc.token_ttl_secs, 60, "file kept where env is silent");
        assert_eq!(c.rate_limits.send.burst, 7);
        assert_eq!(
            c.rate_limits.send.per_second, 5.0,
            "sibling keys keep defaults"
        );
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.rtc.livekit_api_key, "12345", "digits stay a string");
        assert_eq!(c.rtc.livekit_api_secret, "true");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.registration.mode, RegistrationMode::Open);
        // The historical names win over the nested ones (they are applied last).
        let c = Config::layered(
            None,
            &vars(&[
                ("MYELIN_RTC__LIVEKIT_URL", "ws://nested:1"),
                ("MYELIN_RTC_LIVEKIT_URL", "ws://historical:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rtc.livekit_url, "ws://historical:1");
    }

    #[test]
    fn storage_engine_and_sfus_from_file_and_env() {
        let file = "[storage]\nengine = \"postgres\"\npostgres_url = \"host=db\"\n\n\
                    [[rtc.sfus]]\nurl = \"wss://sfu1.example\"\nregion = \"eu\"\n\n\
                    [[rtc.sfus]]\nurl = \"wss://sfu2.example\"\ninternal_url = \"http://10.0.0.2:7880\"\n";
        let c = Config::layered(Some(file), &[]).unwrap();
        assert_eq!(c.storage.engine, StorageEngine::Postgres);
        assert_eq!(c.storage.postgres_url, "host=db");
        assert_eq!(c.rtc.sfus.len(), 2);
        assert_eq!(c.rtc.sfus[0].region, "eu");
        assert_eq!(c.rtc.sfus[1].internal_url, "http://10.0.0.2:7880");
        let c = Config::layered(
            None,
            &vars(&[
                ("MYELIN_STORAGE_ENGINE", "postgres"),
                ("MYELIN_STORAGE_POSTGRES_URL", "postgresql://db/myelin"),
                ("MYELIN_RTC_SFUS", "ws://a:1, ws://b:2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.storage.engine, StorageEngine::Postgres);
        assert_eq!(c.rtc.sfus.len(), 2);
        assert_eq!(c.rtc.sfus[1].url, "ws://b:2");
        // PostgreSQL without a URL, a non-WebSocket SFU, an SFU listed twice: refused.
        let refused = |v: &[(&str, &str)]| Config::layered(None, &vars(v)).unwrap_err().to_string();
        assert!(refused(&[("MYELIN_STORAGE_ENGINE", "postgres")]).contains("postgres_url"));
        assert!(refused(&[("MYELIN_STORAGE_ENGINE", "mysql")]).contains("sled or postgres"));
        assert!(refused(&[("MYELIN_RTC_SFUS", "http://a:1")]).contains("ws://"));
        assert!(refused(&[("MYELIN_RTC_SFUS", "ws://a:1,ws://a:1/")]).contains("twice"));
    }

    #[test]
    fn layering_rejects_unknown_keys_and_bad_values() {
        let err =
            Config::layered(None, &vars(&[("MYELIN_RTC__LIVEKIT_URLL", "ws://x:1")])).unwrap_err();
        assert!(format!("{err:#}").contains("livekit_urll"), "{err:#}");
        let err = Config::layered(Some("[registration]\nmode = \"sometimes\"\n"), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("sometimes"), "{err:#}");
        let err = Config::layered(None, &vars(&[("MYELIN_LISTEN__", "x")])).unwrap_err();
        assert!(!format!("{err:#}").is_empty());
        assert!(Config::layered(None, &vars(&[("MYELIN_METRICS_LISTEN", "nowhere")])).is_err());
    }

    #[test]
    fn generated_default_parses_back_to_the_defaults() {
        let c = Config::layered(Some(DEFAULT_TOML), &[]).unwrap();
        let d = Config::default();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(&d).unwrap()
        );
    }

    #[test]
    fn warns_when_public_base_url_is_unset_on_a_public_listen() {
        let mut c = Config::default();
        assert!(c.warnings().is_empty(), "loopback needs no base URL");
        c.listen = "0.0.0.0:8008".parse().unwrap();
        assert!(c.warnings()[0].contains("public_base_url"));
        c.public_base_url = "https://matrix.example.org".into();
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn bad_mode_is_rejected() {
        let mut c = Config::default();
        assert!(c
            .apply_env(|k| (k == "MYELIN_REGISTRATION_MODE").then(|| "maybe".into()))
            .is_err());
    }
}
