//! Typed configuration: TOML file (optional) plus `MYELIN_*` environment overrides, with
//! defaults that run a working server on `127.0.0.1:8008` as `localhost`.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// How new accounts may be created.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Only the admin CLI (or the shared-secret API) creates accounts.
    #[default]
    Closed,
    /// Anyone may register (user-interactive auth with `m.login.dummy`).
    Open,
    /// Registration needs one of the configured registration tokens.
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
    /// Registration tokens accepted in `token` mode.
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
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_size: 50 * 1024 * 1024,
        }
    }
}

/// Storage settings (`[storage]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// sled page cache size in MiB.
    pub cache_capacity_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity_mb: 64,
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
        }
    }
}

impl Config {
    /// Reads the TOML file (if any), then applies `MYELIN_*` overrides from the environment.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                Self::from_toml(&text)?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Applies environment overrides; `lookup` returns a variable's value.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_SERVER_NAME") {
            self.server_name = v;
        }
        if let Some(v) = lookup("MYELIN_LISTEN") {
            self.listen = v
                .parse()
                .map_err(|e| anyhow::anyhow!("MYELIN_LISTEN={v}: {e}"))?;
        }
        if let Some(v) = lookup("MYELIN_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = lookup("MYELIN_PUBLIC_BASE_URL") {
            self.public_base_url = v;
        }
        if let Some(v) = lookup("MYELIN_MAX_REQUEST_SIZE") {
            self.max_request_size = v
                .parse()
                .map_err(|e| anyhow::anyhow!("MYELIN_MAX_REQUEST_SIZE={v}: {e}"))?;
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_MODE") {
            self.registration.mode = match v.as_str() {
                "closed" => RegistrationMode::Closed,
                "open" => RegistrationMode::Open,
                "token" => RegistrationMode::Token,
                other => anyhow::bail!(
                    "MYELIN_REGISTRATION_MODE={other}: expected closed, open or token"
                ),
            };
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_SHARED_SECRET") {
            self.registration.shared_secret = v;
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_TOKEN") {
            self.registration.tokens = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = lookup("MYELIN_MEDIA_MAX_UPLOAD_SIZE") {
            self.media.max_upload_size = v
                .parse()
                .map_err(|e| anyhow::anyhow!("MYELIN_MEDIA_MAX_UPLOAD_SIZE={v}: {e}"))?;
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_ALLOW_GUESTS") {
            self.registration.allow_guests = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => anyhow::bail!(
                    "MYELIN_REGISTRATION_ALLOW_GUESTS={other}: expected true or false"
                ),
            };
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        ruma::ServerName::parse(&self.server_name)
            .map_err(|e| anyhow::anyhow!("server_name {:?} is invalid: {e}", self.server_name))?;
        if self.registration.mode == RegistrationMode::Token && self.registration.tokens.is_empty()
        {
            anyhow::bail!(
                "registration.mode = \"token\" needs at least one registration.tokens entry"
            );
        }
        Ok(())
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
    fn bad_mode_is_rejected() {
        let mut c = Config::default();
        assert!(c
            .apply_env(|k| (k == "MYELIN_REGISTRATION_MODE").then(|| "maybe".into()))
            .is_err());
    }
}
