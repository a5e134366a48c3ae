//! Accounts: creation, localpart rules, argon2 password hashes, deactivation.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use rand::Rng;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{now_ms, UsersService};
use crate::{storage::Batch, Error, Result};

/// Longest accepted password in bytes (argon2 work is bounded by input size).
pub const MAX_PASSWORD_LEN: usize = 512;

/// The stored account record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    /// PHC-formatted argon2 hash; `None` when the account cannot log in with a password.
    pub password_hash: Option<String>,
    /// Server administrator.
    #[serde(default)]
    pub admin: bool,
    /// Guest account.
    #[serde(default)]
    pub guest: bool,
    /// Deactivated: cannot log in, id cannot be reused.
    #[serde(default)]
    pub deactivated: bool,
    /// Erased by an administrator when deactivated (admin API `erase`).
    #[serde(default)]
    pub erased: bool,
    /// Creation time, ms since the epoch.
    #[serde(default)]
    pub created_ts: u64,
}

/// Checks a localpart against the spec's user-id grammar for new accounts: lowercase
/// `a-z 0-9 . _ = - / +`, non-empty, and the whole id at most 255 bytes.
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<()> {
    if localpart.is_empty() {
        return Err(Error::invalid_username(
            "User ID localpart must not be empty",
        ));
    }
    if !localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(Error::invalid_username(
            "User ID may only contain lowercase letters, digits and . _ = - / +",
        ));
    }
    // '@' + localpart + ':' + server_name
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(Error::invalid_username("User ID is longer than 255 bytes"));
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt.
pub(crate) fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("password hashing failed: {e}")))
}

/// Whether `password` matches the PHC-formatted `hash`.
pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of no one's password, made with the same parameters as real ones: checking a
/// password of an unknown account against it costs what checking a real one does, so the
/// answer's timing does not tell whether the account exists.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"no account has this password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Runs argon2 work on the blocking pool, off the async workers.
pub(super) async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("password hashing task failed: {e}")))
}

/// Runs argon2 work from synchronous code called by a request (user-interactive auth): on
/// the multi-threaded runtime the worker hands its other tasks to another thread while it
/// hashes; elsewhere (unit tests, the admin CLI) the work runs inline.
fn blocking_in_place<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Refuses empty (`M_WEAK_PASSWORD`) and overlong passwords.
pub fn check_password_policy(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(Error::weak_password("Password must not be empty"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::invalid_param(format!(
            "Password is longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

impl UsersService {
    /// The user id for a localpart on this server, or for a full `@user:server` id of
    /// this server. Only checks the grammar ruma accepts, not the new-account rules.
    pub fn user_id_from(&self, name: &str) -> Result<OwnedUserId> {
        let parsed = if name.starts_with('@') {
            UserId::parse(name)
        } else {
            UserId::parse(format!("@{}:{}", name.to_lowercase(), self.server_name()))
        };
        let user = parsed.map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))?;
        if user.server_name().as_str() != self.server_name() {
            return Err(Error::invalid_username("User ID is not on this server"));
        }
        Ok(user)
    }

    /// The stored account of `user`.
    pub fn account(&self, user: &UserId) -> Result<Option<Account>> {
        self.storage.trees.users.get_json(user.as_bytes())
    }

    /// Whether `user` has an account here (deactivated accounts still exist).
    pub fn exists(&self, user: &UserId) -> Result<bool> {
        self.storage.trees.users.contains(user.as_bytes())
    }

    /// Whether `user` has been deactivated.
    pub fn is_deactivated(&self, user: &UserId) -> Result<bool> {
        Ok(self.account(user)?.is_some_and(|a| a.deactivated))
    }

    /// Whether `user` is a server administrator.
    pub fn is_admin(&self, user: &UserId) -> Result<bool> {
        Ok(self
            .account(user)?
            .is_some_and(|a| a.admin && !a.deactivated))
    }

    /// Whether `user` is a guest.
    pub fn is_guest(&self, user: &UserId) -> Result<bool> {
        Ok(self.account(user)?.is_some_and(|a| a.guest))
    }

    /// Checks that `localpart` may be registered by a client: valid, not taken, and not
    /// starting with `_` (reserved for application services, as in Synapse).
    pub fn check_available(&self, localpart: &str) -> Result<OwnedUserId> {
        validate_localpart(localpart, self.server_name())?;
        if localpart.starts_with('_') {
            return Err(Error::invalid_username(
                "User IDs starting with _ are reserved for application services",
            ));
        }
        let user = self.user_id_from(localpart)?;
        if self.exists(&user)? {
            return Err(Error::user_in_use());
        }
        Ok(user)
    }

    /// Creates an account. `localpart` may also be a full user id of this server.
    /// Without a password the account cannot log in with one. Not yet durable.
    pub fn create_user(
        &self,
        localpart: &str,
        password: Option<&str>,
        admin: bool,
    ) -> Result<OwnedUserId> {
        self.create_account(localpart, password, admin, false)
    }

    /// Creates a guest account with a generated numeric localpart.
    pub fn create_guest(&self) -> Result<OwnedUserId> {
        for _ in 0..16 {
            let localpart = rand::thread_rng()
                .gen_range(10_000_000u64..100_000_000_000)
                .to_string();
            match self.create_account(&localpart, None, false, true) {
                Err(Error::Matrix {
                    errcode: "M_USER_IN_USE",
                    ..
                }) => continue,
                other => return other,
            }
        }
        Err(Error::internal("could not allocate a guest user id"))
    }

    fn create_account(
        &self,
        name: &str,
        password: Option<&str>,
        admin: bool,
        guest: bool,
    ) -> Result<OwnedUserId> {
        let password_hash = match password {
            Some(p) => {
                check_password_policy(p)?;
                Some(hash_password(p)?)
            }
            None => None,
        };
        self.create_account_hashed(name, password_hash, admin, guest)
    }

    fn create_account_hashed(
        &self,
        name: &str,
        password_hash: Option<String>,
        admin: bool,
        guest: bool,
    ) -> Result<OwnedUserId> {
        let localpart = match name.strip_prefix('@') {
            Some(rest) => rest.split_once(':').map_or(rest, |(l, _)| l),
            None => name,
        };
        validate_localpart(localpart, self.server_name())?;
        let user = self.user_id_from(name)?;
        let account = Account {
            password_hash,
            admin,
            guest,
            deactivated: false,
            erased: false,
            created_ts: now_ms(),
        };
        let value = serde_json::to_vec(&account)?;
        // Compare-and-swap: two concurrent registrations of one name cannot both win.
        if !self
            .storage
            .trees
            .users
            .compare_and_swap(user.as_bytes(), None, Some(value))?
        {
            return Err(Error::user_in_use());
        }
        tracing::info!(user = %user, admin, guest, "account created");
        Ok(user)
    }

    /// [`UsersService::create_user`] with the password hashed on the blocking pool (for
    /// request handlers).
    pub async fn create_user_off_thread(
        &self,
        localpart: &str,
        password: &str,
        admin: bool,
    ) -> Result<OwnedUserId> {
        check_password_policy(password)?;
        let password = password.to_owned();
        let hash = off_thread(move || hash_password(&password)).await??;
        self.create_account_hashed(localpart, Some(hash), admin, false)
    }

    /// Replaces the password of an existing account. Not yet durable.
    pub fn set_password(&self, user: &UserId, password: &str) -> Result<()> {
        check_password_policy(password)?;
        let hash = hash_password(password)?;
        self.store_password_hash(user, hash)
    }

    /// [`UsersService::set_password`] with the password hashed on the blocking pool (for
    /// request handlers). Not yet durable.
    pub async fn set_password_off_thread(&self, user: &UserId, password: &str) -> Result<()> {
        check_password_policy(password)?;
        let password = password.to_owned();
        let hash = off_thread(move || hash_password(&password)).await??;
        self.store_password_hash(user, hash)
    }

    fn store_password_hash(&self, user: &UserId, hash: String) -> Result<()> {
        let mut account = self
            .account(user)?
            .ok_or_else(|| Error::not_found("Unknown user"))?;
        if account.deactivated {
            return Err(Error::user_deactivated());
        }
        account.password_hash = Some(hash);
        let mut batch = Batch::new();
        batch.insert_json(&self.storage.trees.users, user.as_bytes(), &account)?;
        self.storage.commit(batch)
    }

    /// Whether `password` is the password of `user`, checked on the blocking pool. An
    /// unknown (`None`: the name was not even a valid user id), deactivated or
    /// password-less account is checked against a dummy hash and answers false after
    /// the same work, so a failed login does not reveal whether the account exists.
    pub async fn check_password_off_thread(
        &self,
        user: Option<&UserId>,
        password: &str,
    ) -> Result<bool> {
        if password.len() > MAX_PASSWORD_LEN {
            return Ok(false);
        }
        let hash = match user {
            Some(user) => match self.account(user)? {
                Some(Account {
                    password_hash: Some(hash),
                    deactivated: false,
                    ..
                }) => Some(hash),
                _ => None,
            },
            None => None,
        };
        let password = password.to_owned();
        off_thread(move || match hash {
            Some(hash) => verify_password(&hash, &password),
            None => {
                verify_password(dummy_hash(), &password);
                false
            }
        })
        .await
    }

    /// Whether `password` is the password of `user` (false for unknown, deactivated or
    /// password-less accounts). For synchronous callers (user-interactive auth); request
    /// handlers that can await use [`UsersService::check_password_off_thread`].
    pub fn check_password(&self, user: &UserId, password: &str) -> Result<bool> {
        if password.len() > MAX_PASSWORD_LEN {
            return Ok(false);
        }
        Ok(match self.account(user)? {
            Some(Account {
                password_hash: Some(hash),
                deactivated: false,
                ..
            }) => blocking_in_place(|| verify_password(&hash, password)),
            _ => false,
        })
    }

    /// Deactivates `user`: no password, no devices, no tokens, empty profile. The id stays
    /// taken. Not yet durable.
    pub fn deactivate(&self, user: &UserId) -> Result<()> {
        let mut account = self
            .account(user)?
            .ok_or_else(|| Error::not_found("Unknown user"))?;
        account.deactivated = true;
        account.password_hash = None;
        let mut batch = Batch::new();
        batch.insert_json(&self.storage.trees.users, user.as_bytes(), &account)?;
        let removed = self.remove_all_devices_into(user, None, &mut batch)?;
        batch.remove(&self.storage.trees.profiles, user.as_bytes());
        self.storage.commit(batch)?;
        self.devices_changed(user, &removed, super::DeviceChange::Removed)?;
        tracing::info!(user = %user, "account deactivated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::test_support::service;

    #[test]
    fn password_hash_round_trip() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong"));
        assert!(!verify_password("not a hash", "correct horse"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn localpart_rules() {
        for ok in ["alice", "a.b_c=d-e/f+g", "0"] {
            validate_localpart(ok, "localhost").unwrap();
        }
        for bad in ["", "Alice", "al ice", "al:ice", "@alice", "é"] {
            assert_eq!(
                validate_localpart(bad, "localhost").unwrap_err().errcode(),
                "M_INVALID_USERNAME",
                "{bad}"
            );
        }
        let long = "a".repeat(250);
        assert!(validate_localpart(&long, "localhost").is_err());
    }

    #[test]
    fn create_check_and_change_password() {
        let s = service();
        let alice = s.create_user("alice", Some("pw1"), false).unwrap();
        assert_eq!(alice.as_str(), "@alice:localhost");
        assert!(s.exists(&alice).unwrap());
        assert!(s.check_password(&alice, "pw1").unwrap());
        assert!(!s.check_password(&alice, "pw2").unwrap());
        assert_eq!(
            s.create_user("@alice:localhost", None, false)
                .unwrap_err()
                .errcode(),
            "M_USER_IN_USE"
        );
        assert_eq!(
            s.create_user("Bob", None, false).unwrap_err().errcode(),
            "M_INVALID_USERNAME"
        );
        assert!(s.create_user("@bob:elsewhere", None, false).is_err());
        assert_eq!(
            s.create_user("carol", Some(""), false)
                .unwrap_err()
                .errcode(),
            "M_WEAK_PASSWORD"
        );
        assert!(
            !s.exists(&s.user_id_from("carol").unwrap()).unwrap(),
            "bad input writes nothing"
        );
        s.set_password(&alice, "pw2").unwrap();
        assert!(s.check_password(&alice, "pw2").unwrap());
        s.deactivate(&alice).unwrap();
        assert!(s.is_deactivated(&alice).unwrap());
        assert!(!s.check_password(&alice, "pw2").unwrap());
        assert_eq!(
            s.check_available("alice").unwrap_err().errcode(),
            "M_USER_IN_USE"
        );
    }

    #[test]
    fn guests_get_numeric_ids() {
        let s = service();
        let g = s.create_guest().unwrap();
        assert!(g.localpart().bytes().all(|b| b.is_ascii_digit()));
        assert!(s.is_guest(&g).unwrap());
    }
}
