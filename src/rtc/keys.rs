//! The LiveKit API key and secret shared by the token service and the SFU: taken from the
//! config, or generated on first start and kept in `<data_dir>/livekit_keys.json`.

use std::{fs, io::Write, path::Path};

use rand::{distributions::Alphanumeric, Rng};
use serde::{Deserialize, Serialize};

use crate::{config::RtcConfig, Error, Result};

/// Name of the key file inside the data dir.
pub const KEY_FILE: &str = "livekit_keys.json";

/// A LiveKit API key pair.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveKitKeys {
    /// The API key (`iss` of every token).
    pub api_key: String,
    /// The HS256 secret.
    pub api_secret: String,
}

impl std::fmt::Debug for LiveKitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKitKeys")
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

fn random_alnum(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl LiveKitKeys {
    /// A fresh random key pair.
    pub fn generate() -> LiveKitKeys {
        LiveKitKeys {
            api_key: format!("API{}", random_alnum(12)),
            api_secret: random_alnum(48),
        }
    }

    /// The configured pair, or in-memory random keys when none is configured (tests).
    pub fn from_config_or_random(config: &RtcConfig) -> LiveKitKeys {
        Self::from_config(config).unwrap_or_else(Self::generate)
    }

    fn from_config(config: &RtcConfig) -> Option<LiveKitKeys> {
        (!config.livekit_api_key.is_empty() && !config.livekit_api_secret.is_empty()).then(|| {
            LiveKitKeys {
                api_key: config.livekit_api_key.clone(),
                api_secret: config.livekit_api_secret.clone(),
            }
        })
    }

    /// The configured pair; else the one in the data dir, created (mode 0600) when absent.
    pub fn load_or_generate(config: &RtcConfig, data_dir: &Path) -> Result<LiveKitKeys> {
        if let Some(keys) = Self::from_config(config) {
            return Ok(keys);
        }
        let path = data_dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let keys: LiveKitKeys = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!("{} is not valid: {e}", path.display()))
                })?;
                if keys.api_key.is_empty() || keys.api_secret.is_empty() {
                    return Err(Error::internal(format!(
                        "{} holds an empty key or secret",
                        path.display()
                    )));
                }
                Ok(keys)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir)?;
                let keys = LiveKitKeys::generate();
                let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
                let mut options = fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(&tmp)?;
                file.write_all(&serde_json::to_vec_pretty(&keys)?)?;
                file.sync_all()?;
                fs::rename(&tmp, &path)?;
                tracing::info!(path = %path.display(), "generated LiveKit API key pair");
                Ok(keys)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let config = RtcConfig::default();
        let first = LiveKitKeys::load_or_generate(&config, dir.path()).unwrap();
        let second = LiveKitKeys::load_or_generate(&config, dir.path()).unwrap();
        assert_eq!(first, second);
        assert!(first.api_key.starts_with("API"));
        assert_eq!(first.api_secret.len(), 48);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key file must not be readable by others");
        }
    }

    #[test]
    fn configured_keys_win() {
        let dir = tempfile::tempdir().unwrap();
        let config = RtcConfig {
            livekit_api_key: "key".into(),
            livekit_api_secret: "secret".into(),
            ..RtcConfig::default()
        };
        let keys = LiveKitKeys::load_or_generate(&config, dir.path()).unwrap();
        assert_eq!(keys.api_key, "key");
        assert!(!dir.path().join(KEY_FILE).exists());
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), b"not json").unwrap();
        assert!(LiveKitKeys::load_or_generate(&RtcConfig::default(), dir.path()).is_err());
    }
}
