//! Shared-secret registration, compatible with Synapse's
//! `/_synapse/admin/v1/register`: a client fetches a one-time nonce, then proves knowledge
//! of `registration.shared_secret` with
//! `hex(HMAC-SHA1(secret, nonce \0 username \0 password \0 "admin"|"notadmin"))`.
//! Tools such as `register_new_matrix_user` and load generators use it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use rand::{distributions::Alphanumeric, Rng};
use sha1::Sha1;

use super::UsersService;
use crate::{Error, Result};

/// How long a nonce stays valid.
const NONCE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding nonces kept (oldest dropped first); bounds memory under abuse.
const MAX_NONCES: usize = 10_000;

/// Outstanding nonces with their issue time.
#[derive(Default)]
pub(super) struct Nonces(HashMap<String, Instant>);

fn keyed_mac(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
) -> Result<Hmac<Sha1>> {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes())
        .map_err(|_| Error::internal("invalid HMAC key"))?;
    for part in [nonce, "\0", username, "\0", password, "\0"] {
        mac.update(part.as_bytes());
    }
    mac.update(if admin {
        b"admin" as &[u8]
    } else {
        b"notadmin"
    });
    Ok(mac)
}

/// The MAC a client must send for these fields.
pub fn registration_mac(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
) -> Result<Vec<u8>> {
    Ok(keyed_mac(secret, nonce, username, password, admin)?
        .finalize()
        .into_bytes()
        .to_vec())
}

impl UsersService {
    fn shared_secret(&self) -> Result<&str> {
        let secret = self.config.registration.shared_secret.as_str();
        if secret.is_empty() {
            return Err(Error::forbidden(
                "Shared secret registration is not enabled",
            ));
        }
        Ok(secret)
    }

    /// Issues a one-time nonce for shared-secret registration.
    pub fn issue_registration_nonce(&self) -> Result<String> {
        self.shared_secret()?;
        let nonce: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let mut nonces = self
            .nonces
            .lock()
            .map_err(|_| Error::internal("nonce lock poisoned"))?;
        let now = Instant::now();
        nonces
            .0
            .retain(|_, issued| now.duration_since(*issued) < NONCE_TTL);
        if nonces.0.len() >= MAX_NONCES {
            if let Some(oldest) = nonces
                .0
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                nonces.0.remove(&oldest);
            }
        }
        nonces.0.insert(nonce.clone(), now);
        Ok(nonce)
    }

    /// Checks a shared-secret registration request and consumes its nonce. The nonce is
    /// used up even when the MAC is wrong, so it cannot be brute-forced.
    pub fn check_shared_secret_registration(
        &self,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac_hex: &str,
    ) -> Result<()> {
        let secret = self.shared_secret()?;
        let issued = self
            .nonces
            .lock()
            .map_err(|_| Error::internal("nonce lock poisoned"))?
            .0
            .remove(nonce);
        if issued.is_none_or(|t| t.elapsed() >= NONCE_TTL) {
            return Err(Error::matrix(
                crate::ErrorKind::Invalid,
                "M_UNKNOWN",
                "unrecognised nonce",
            ));
        }
        let given = hex::decode(mac_hex).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        let mac = keyed_mac(secret, nonce, username, password, admin)?;
        mac.verify_slice(&given)
            .map_err(|_| Error::forbidden("HMAC incorrect"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::test_support::service_with;

    #[test]
    fn nonce_and_mac_round_trip_once() {
        let s = service_with(|c| c.registration.shared_secret = "s3cret".into());
        let nonce = s.issue_registration_nonce().unwrap();
        let mac = hex::encode(registration_mac("s3cret", &nonce, "bob", "pw", false).unwrap());
        // wrong admin flag: refused, and the nonce is gone
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", true, &mac)
            .is_err());
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .is_err());
        let nonce = s.issue_registration_nonce().unwrap();
        let mac = hex::encode(registration_mac("s3cret", &nonce, "bob", "pw", false).unwrap());
        s.check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .unwrap();
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .is_err());
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog")
        let mut mac = Hmac::<Sha1>::new_from_slice(b"key").unwrap();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
        );
    }

    #[test]
    fn disabled_without_secret() {
        let s = service_with(|_| {});
        assert!(s.issue_registration_nonce().is_err());
    }
}
