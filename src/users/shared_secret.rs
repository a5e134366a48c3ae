//! Shared-secret registration, compatible with Synapse's
//! `/_synapse/admin/v1/register`: a client fetches a one-time nonce, then proves knowledge
//! of `registration.shared_secret` with
//! `hex(HMAC-SHA1(secret, nonce \0 username \0 password \0 "admin"|"notadmin"))`.
//! Tools such as `register_new_matrix_user` and load generators use it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::{distributions::Alphanumeric, Rng};
use sha1::Sha1;

use super::{now_ms, UsersService};
use crate::{Error, Result};

/// How long a nonce stays valid.
const NONCE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding nonces kept (oldest dropped first); bounds storage under abuse.
const MAX_NONCES: usize = 10_000;

fn is_expired(issued_ms: u64, now: u64) -> bool {
    now.saturating_sub(issued_ms) >= NONCE_TTL.as_millis() as u64
}

fn issued_ms(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

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

    /// Issues a one-time nonce for shared-secret registration. Nonces are stored, so the
    /// registration may reach any process sharing the database; expired ones are dropped
    /// here, and the oldest when too many are outstanding.
    pub async fn issue_registration_nonce(&self) -> Result<String> {
        self.shared_secret()?;
        let nonce: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let tree = &self.storage.trees.registration_nonces;
        let now = now_ms();
        let mut live = Vec::new();
        for entry in tree.scan_prefix(&[]) {
            let (key, value) = entry?;
            let issued = issued_ms(&value);
            if is_expired(issued, now) {
                tree.compare_and_swap(&key, Some(&value), None)?;
            } else {
                live.push((issued, key));
            }
        }
        if live.len() >= MAX_NONCES {
            live.sort();
            for (_, key) in &live[..=live.len() - MAX_NONCES] {
                tree.remove(key)?;
            }
        }
        tree.insert(nonce.as_bytes(), &now.to_be_bytes())?;
        self.storage.durable().await?;
        Ok(nonce)
    }

    /// Checks a shared-secret registration request and consumes its nonce. The nonce is
    /// used up even when the MAC is wrong, so it cannot be brute-forced; of two requests
    /// with one nonce (on any processes) at most one gets past this.
    pub fn check_shared_secret_registration(
        &self,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac_hex: &str,
    ) -> Result<()> {
        let secret = self.shared_secret()?;
        let tree = &self.storage.trees.registration_nonces;
        let unrecognised =
            || Error::matrix(crate::ErrorKind::Invalid, "M_UNKNOWN", "unrecognised nonce");
        let issued = tree.get(nonce.as_bytes())?.ok_or_else(unrecognised)?;
        if !tree.compare_and_swap(nonce.as_bytes(), Some(&issued), None)?
            || is_expired(issued_ms(&issued), now_ms())
        {
            return Err(unrecognised());
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

    #[tokio::test]
    async fn nonce_and_mac_round_trip_once() {
        let s = service_with(|c| c.registration.shared_secret = "s3cret".into());
        let nonce = s.issue_registration_nonce().await.unwrap();
        let mac = hex::encode(registration_mac("s3cret", &nonce, "bob", "pw", false).unwrap());
        // wrong admin flag: refused, and the nonce is gone
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", true, &mac)
            .is_err());
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .is_err());
        let nonce = s.issue_registration_nonce().await.unwrap();
        let mac = hex::encode(registration_mac("s3cret", &nonce, "bob", "pw", false).unwrap());
        s.check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .unwrap();
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .is_err());
    }

    #[tokio::test]
    async fn expired_nonces_are_refused_and_dropped() {
        let s = service_with(|c| c.registration.shared_secret = "s3cret".into());
        let tree = &s.storage.trees.registration_nonces;
        let old = now_ms() - NONCE_TTL.as_millis() as u64 - 1;
        tree.insert(b"stale", &old.to_be_bytes()).unwrap();
        let mac = hex::encode(registration_mac("s3cret", "stale", "bob", "pw", false).unwrap());
        assert!(s
            .check_shared_secret_registration("stale", "bob", "pw", false, &mac)
            .is_err());
        tree.insert(b"stale", &old.to_be_bytes()).unwrap();
        let fresh = s.issue_registration_nonce().await.unwrap();
        assert_eq!(
            tree.get(b"stale").unwrap(),
            None,
            "issuing drops expired nonces"
        );
        assert!(tree.get(fresh.as_bytes()).unwrap().is_some());
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

    #[tokio::test]
    async fn disabled_without_secret() {
        let s = service_with(|_| {});
        assert!(s.issue_registration_nonce().await.is_err());
    }
}
