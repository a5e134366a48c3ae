//! The server's ed25519 signing key: generated on first start, stored in the data dir.

use std::{fs, io::Write, path::Path};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::{
    serde::Base64,
    signatures::{sign_json, Ed25519KeyPair, KeyPair},
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, ServerName,
};
use serde_json::{json, Value};

use crate::{Error, Result};

/// The PKCS#8 v1 DER prefix of an ed25519 private key; the 32-byte seed follows it.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Name of the key file inside the data dir.
pub const KEY_FILE: &str = "signing.key";

/// The server's signing key pair.
pub struct ServerKeys {
    pair: Ed25519KeyPair,
    version: String,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl ServerKeys {
    /// A key pair from a 32-byte seed and key version (`ed25519:<version>`).
    pub fn from_seed(seed: &[u8; 32], version: &str) -> Result<ServerKeys> {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(seed);
        let pair = Ed25519KeyPair::from_der(&der, version.to_owned())
            .map_err(|e| Error::internal(format!("signing key: {e}")))?;
        Ok(ServerKeys {
            pair,
            version: version.to_owned(),
        })
    }

    /// A fresh random key pair.
    pub fn generate() -> Result<ServerKeys> {
        let seed: [u8; 32] = rand::random();
        let version = format!("a_{}", random_alnum(4));
        ServerKeys::from_seed(&seed, &version)
    }

    /// Loads `signing.key` from the data dir, creating it on first start.
    /// The file holds one line: `ed25519 <version> <unpadded base64 seed>` (Synapse's format).
    pub fn load_or_generate(data_dir: &Path) -> Result<ServerKeys> {
        let path = data_dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let parts: Vec<&str> = text.split_whitespace().collect();
                let [alg, version, seed] = parts[..] else {
                    return Err(Error::internal(format!(
                        "{}: expected `ed25519 <version> <seed>`",
                        path.display()
                    )));
                };
                if alg != "ed25519" {
                    return Err(Error::internal(format!(
                        "{}: unsupported algorithm {alg}",
                        path.display()
                    )));
                }
                let seed = lenient_base64(seed)
                    .and_then(|s| <[u8; 32]>::try_from(s).ok())
                    .ok_or_else(|| {
                        Error::internal(format!(
                            "{}: the seed is not 32 bytes of base64",
                            path.display()
                        ))
                    })?;
                ServerKeys::from_seed(&seed, version)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir)?;
                let seed: [u8; 32] = rand::random();
                let version = format!("a_{}", random_alnum(4));
                let keys = ServerKeys::from_seed(&seed, &version)?;
                let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
                {
                    let mut file = private_file(&tmp)?;
                    writeln!(file, "ed25519 {version} {}", STANDARD_NO_PAD.encode(seed))?;
                    file.sync_all()?;
                }
                fs::rename(&tmp, &path)?;
                tracing::info!(key_id = %keys.key_id(), "generated a new server signing key");
                Ok(keys)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The key id, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    /// The ed25519 key pair (for ruma's signing functions).
    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// The public key, unpadded base64.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    /// Signs a JSON object in place as `server_name`.
    pub fn sign_json(
        &self,
        server_name: &ServerName,
        object: &mut CanonicalJsonObject,
    ) -> Result<()> {
        sign_json(server_name.as_str(), &self.pair, object)
            .map_err(|e| Error::internal(format!("signing: {e}")))
    }

    /// Signs raw bytes (detached ed25519 signature).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Base64 {
        Base64::new(self.pair.sign(bytes).as_bytes().to_vec())
    }

    /// The signed `/_matrix/key/v2/server` response.
    pub fn server_key_response(
        &self,
        server_name: &ServerName,
        valid_until: MilliSecondsSinceUnixEpoch,
    ) -> Result<Value> {
        let body = json!({
            "server_name": server_name,
            "valid_until_ts": valid_until,
            "verify_keys": { self.key_id(): { "key": self.public_key_base64() } },
            "old_verify_keys": {},
        });
        let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(body)
            .map_err(|e| Error::internal(format!("key response: {e}")))?
        else {
            return Err(Error::internal("key response is not an object"));
        };
        self.sign_json(server_name, &mut object)?;
        Ok(serde_json::to_value(object)?)
    }
}

/// Decodes unpadded base64, tolerating non-zero trailing bits (the spec's test seed has them).
pub fn lenient_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine.decode(s).ok()
}

fn random_alnum(len: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use ruma::server_name;

    use super::*;

    /// The seed of the spec's signing test vectors (appendices, "Signing Key").
    pub(crate) fn spec_keys() -> ServerKeys {
        let seed =
            crate::events::keys::lenient_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
                .unwrap();
        ServerKeys::from_seed(&seed.try_into().unwrap(), "1").unwrap()
    }

    fn canon(v: Value) -> CanonicalJsonObject {
        match CanonicalJsonValue::try_from(v).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn spec_vector_empty_object() {
        let mut o = canon(json!({}));
        spec_keys()
            .sign_json(server_name!("domain"), &mut o)
            .unwrap();
        assert_eq!(
            serde_json::to_value(&o).unwrap()["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
    }

    #[test]
    fn spec_vector_data() {
        let mut o = canon(json!({ "one": 1, "two": "Two" }));
        spec_keys()
            .sign_json(server_name!("domain"), &mut o)
            .unwrap();
        assert_eq!(
            serde_json::to_value(&o).unwrap()["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn key_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerKeys::load_or_generate(dir.path()).unwrap();
        let b = ServerKeys::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.public_key_base64(), b.public_key_base64());
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        assert!(ServerKeys::load_or_generate(dir.path()).is_err());
    }

    #[test]
    fn key_response_is_signed() {
        let keys = spec_keys();
        let v = keys
            .server_key_response(
                server_name!("domain"),
                MilliSecondsSinceUnixEpoch(1u32.into()),
            )
            .unwrap();
        assert_eq!(
            v["verify_keys"]["ed25519:1"]["key"],
            keys.public_key_base64()
        );
        assert!(v["signatures"]["domain"]["ed25519:1"].is_string());
    }
}
