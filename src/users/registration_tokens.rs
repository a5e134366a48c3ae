//! Registration tokens (the `m.login.registration_token` stage): the tokens in the config
//! (unlimited) and the ones administrators manage through the admin API, stored in the
//! `registration_tokens` tree with how often they may be used and until when.
//!
//! A token is used up when an account is created with it, not when the UIA stage passes:
//! the use is counted with a compare-and-swap just before the account is written and
//! given back if that write fails, so `uses_allowed` holds under concurrent
//! registrations and nothing is ever pending between two requests (`pending` is 0).

use rand::{distributions::Alphanumeric, Rng};
use serde::{Deserialize, Serialize};

use super::{now_ms, UsersService};
use crate::{Error, Result};

/// Longest token, in characters (as Synapse).
const MAX_TOKEN_LEN: usize = 64;
/// Length of a generated token when none is asked for.
const DEFAULT_GENERATED_LEN: usize = 16;

/// A stored registration token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationToken {
    /// The token itself (the tree key; filled in when read).
    #[serde(skip)]
    pub token: String,
    /// How many accounts may be created with it; `None`: unlimited.
    pub uses_allowed: Option<u64>,
    /// How many accounts were created with it.
    pub completed: u64,
    /// When it stops being valid, ms since the epoch; `None`: never.
    pub expiry_time: Option<u64>,
}

impl RegistrationToken {
    /// Whether a registration may use it now.
    pub fn is_valid(&self, now: u64) -> bool {
        self.expiry_time.is_none_or(|t| t > now)
            && self.uses_allowed.is_none_or(|max| self.completed < max)
    }
}

/// What an administrator asks for when creating a token.
#[derive(Clone, Debug, Default)]
pub struct NewRegistrationToken {
    /// The token; generated (of `length` characters) when `None`.
    pub token: Option<String>,
    /// Length of a generated token (1 to 64, default 16).
    pub length: Option<u64>,
    /// How many accounts may be created with it; `None`: unlimited.
    pub uses_allowed: Option<u64>,
    /// When it stops being valid, ms since the epoch; `None`: never.
    pub expiry_time: Option<u64>,
}

fn check_token_text(token: &str) -> Result<()> {
    if token.is_empty() || token.chars().count() > MAX_TOKEN_LEN {
        return Err(Error::invalid_param(format!(
            "token must be 1 to {MAX_TOKEN_LEN} characters"
        )));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
    {
        return Err(Error::invalid_param(
            "token may only contain A-Z a-z 0-9 . _ ~ -",
        ));
    }
    Ok(())
}

fn check_expiry(expiry_time: Option<u64>) -> Result<()> {
    if expiry_time.is_some_and(|t| t < now_ms()) {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok(())
}

impl UsersService {
    fn read_registration_token(&self, token: &str) -> Result<Option<RegistrationToken>> {
        let stored: Option<RegistrationToken> = self
            .storage
            .trees
            .registration_tokens
            .get_json(token.as_bytes())?;
        Ok(stored.map(|t| RegistrationToken {
            token: token.to_owned(),
            ..t
        }))
    }

    /// Creates a token (400 `M_INVALID_PARAM` for a bad or taken one); durable on return.
    pub async fn create_registration_token(
        &self,
        new: NewRegistrationToken,
    ) -> Result<RegistrationToken> {
        check_expiry(new.expiry_time)?;
        let token = match new.token {
            Some(token) => {
                if new.length.is_some() {
                    return Err(Error::invalid_param(
                        "give either token or length, not both",
                    ));
                }
                check_token_text(&token)?;
                token
            }
            None => {
                let length = new.length.unwrap_or(DEFAULT_GENERATED_LEN as u64);
                if length == 0 || length > MAX_TOKEN_LEN as u64 {
                    return Err(Error::invalid_param(format!(
                        "length must be 1 to {MAX_TOKEN_LEN}"
                    )));
                }
                rand::thread_rng()
                    .sample_iter(&Alphanumeric)
                    .take(length as usize)
                    .map(char::from)
                    .collect()
            }
        };
        let record = RegistrationToken {
            token: token.clone(),
            uses_allowed: new.uses_allowed,
            completed: 0,
            expiry_time: new.expiry_time,
        };
        let created = self.storage.trees.registration_tokens.compare_and_swap(
            token.as_bytes(),
            None,
            Some(serde_json::to_vec(&record)?),
        )?;
        if !created {
            return Err(Error::invalid_param(format!(
                "Token already exists: {token}"
            )));
        }
        self.storage.durable().await?;
        Ok(record)
    }

    /// Every stored token, by token; with `valid`, only the valid (or invalid) ones.
    pub fn list_registration_tokens(&self, valid: Option<bool>) -> Result<Vec<RegistrationToken>> {
        let now = now_ms();
        let mut out = Vec::new();
        for entry in self.storage.trees.registration_tokens.scan_prefix(&[]) {
            let (key, value) = entry?;
            let mut token: RegistrationToken = serde_json::from_slice(&value)?;
            token.token = String::from_utf8_lossy(&key).into_owned();
            if valid.is_none_or(|v| token.is_valid(now) == v) {
                out.push(token);
            }
        }
        Ok(out)
    }

    /// One stored token (404 `M_NOT_FOUND`).
    pub fn registration_token(&self, token: &str) -> Result<RegistrationToken> {
        self.read_registration_token(token)?
            .ok_or_else(|| Error::not_found(format!("No such registration token: {token}")))
    }

    /// Changes a token's limits: `Some(None)` clears one, `None` keeps it; durable on
    /// return.
    pub async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<Option<u64>>,
        expiry_time: Option<Option<u64>>,
    ) -> Result<RegistrationToken> {
        if let Some(expiry) = expiry_time {
            check_expiry(expiry)?;
        }
        loop {
            let old = self.registration_token(token)?;
            let mut new = old.clone();
            if let Some(uses) = uses_allowed {
                new.uses_allowed = uses;
            }
            if let Some(expiry) = expiry_time {
                new.expiry_time = expiry;
            }
            if self.swap_registration_token(&old, &new)? {
                self.storage.durable().await?;
                return Ok(new);
            }
        }
    }

    /// Deletes a token (404 `M_NOT_FOUND` when there is none); durable on return.
    pub async fn delete_registration_token(&self, token: &str) -> Result<()> {
        let tree = &self.storage.trees.registration_tokens;
        if !tree.contains(token.as_bytes())? {
            return Err(Error::not_found(format!(
                "No such registration token: {token}"
            )));
        }
        tree.remove(token.as_bytes())?;
        self.storage.durable().await
    }

    /// Whether `token` lets a registration through now: a token of the config, or a
    /// stored one that has not expired nor been used up.
    pub fn registration_token_valid(&self, token: &str) -> Result<bool> {
        if token.is_empty() {
            return Ok(false);
        }
        if self.config.registration.tokens.iter().any(|t| t == token) {
            return Ok(true);
        }
        Ok(self
            .read_registration_token(token)?
            .is_some_and(|t| t.is_valid(now_ms())))
    }

    /// Counts one use of `token` for an account about to be created: 403 `M_FORBIDDEN`
    /// when it became invalid meanwhile (another registration used it up).
    pub fn use_registration_token(&self, token: &str) -> Result<()> {
        if self.config.registration.tokens.iter().any(|t| t == token) {
            return Ok(());
        }
        loop {
            let old = self
                .read_registration_token(token)?
                .filter(|t| t.is_valid(now_ms()))
                .ok_or_else(|| Error::forbidden("Registration token is no longer valid"))?;
            let new = RegistrationToken {
                completed: old.completed + 1,
                ..old.clone()
            };
            if self.swap_registration_token(&old, &new)? {
                return Ok(());
            }
        }
    }

    /// Gives back a use counted by [`UsersService::use_registration_token`] when the
    /// account could not be created after all.
    pub fn release_registration_token(&self, token: &str) -> Result<()> {
        loop {
            let Some(old) = self.read_registration_token(token)? else {
                return Ok(());
            };
            let new = RegistrationToken {
                completed: old.completed.saturating_sub(1),
                ..old.clone()
            };
            if old == new || self.swap_registration_token(&old, &new)? {
                return Ok(());
            }
        }
    }

    fn swap_registration_token(
        &self,
        old: &RegistrationToken,
        new: &RegistrationToken,
    ) -> Result<bool> {
        self.storage.trees.registration_tokens.compare_and_swap(
            old.token.as_bytes(),
            Some(&serde_json::to_vec(old)?),
            Some(serde_json::to_vec(new)?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::test_support::{service, service_with};

    fn named(token: &str, uses: Option<u64>, expiry: Option<u64>) -> NewRegistrationToken {
        NewRegistrationToken {
            token: Some(token.into()),
            uses_allowed: uses,
            expiry_time: expiry,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_token_is_used_up_after_its_allowed_uses() {
        let s = service();
        s.create_registration_token(named("once", Some(1), None))
            .await
            .unwrap();
        assert!(s.registration_token_valid("once").unwrap());
        s.use_registration_token("once").unwrap();
        assert!(!s.registration_token_valid("once").unwrap());
        assert_eq!(
            s.use_registration_token("once").unwrap_err().errcode(),
            "M_FORBIDDEN"
        );
        s.release_registration_token("once").unwrap();
        assert!(s.registration_token_valid("once").unwrap());
        assert_eq!(s.registration_token("once").unwrap().completed, 0);
    }

    #[tokio::test]
    async fn concurrent_registrations_use_a_token_once() {
        let s = std::sync::Arc::new(service());
        s.create_registration_token(named("race", Some(1), None))
            .await
            .unwrap();
        let wins: usize = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || s.use_registration_token("race").is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(wins, 1);
        assert_eq!(s.registration_token("race").unwrap().completed, 1);
    }

    #[tokio::test]
    async fn creation_checks_its_input_and_writes_nothing_when_refused() {
        let s = service();
        for bad in [
            named("has space", None, None),
            named("", None, None),
            named(&"a".repeat(65), None, None),
            named("past", None, Some(1)),
            NewRegistrationToken {
                length: Some(0),
                ..Default::default()
            },
        ] {
            assert_eq!(
                s.create_registration_token(bad)
                    .await
                    .unwrap_err()
                    .errcode(),
                "M_INVALID_PARAM"
            );
        }
        assert!(s.list_registration_tokens(None).unwrap().is_empty());
        let generated = s
            .create_registration_token(NewRegistrationToken {
                length: Some(20),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(generated.token.len(), 20);
        assert_eq!(
            s.create_registration_token(named(&generated.token, None, None))
                .await
                .unwrap_err()
                .errcode(),
            "M_INVALID_PARAM"
        );
    }

    #[tokio::test]
    async fn expired_tokens_are_invalid_and_listed_as_such() {
        let s = service_with(|c| c.registration.tokens = vec!["config".into()]);
        s.create_registration_token(named("later", None, Some(now_ms() + 60_000)))
            .await
            .unwrap();
        s.create_registration_token(named("soon", None, Some(now_ms() + 60_000)))
            .await
            .unwrap();
        // Expire one by rewriting its record (creation refuses a past expiry).
        let soon = s.registration_token("soon").unwrap();
        let expired = RegistrationToken {
            expiry_time: Some(1),
            ..soon.clone()
        };
        assert!(s.swap_registration_token(&soon, &expired).unwrap());
        assert!(!s.registration_token_valid("soon").unwrap());
        assert!(s.registration_token_valid("later").unwrap());
        assert!(s.registration_token_valid("config").unwrap());
        let names = |v| -> Vec<String> {
            s.list_registration_tokens(v)
                .unwrap()
                .into_iter()
                .map(|t| t.token)
                .collect()
        };
        assert_eq!(names(Some(true)), ["later"]);
        assert_eq!(names(Some(false)), ["soon"]);
        let updated = s
            .update_registration_token("soon", Some(Some(3)), Some(None))
            .await
            .unwrap();
        assert_eq!((updated.uses_allowed, updated.expiry_time), (Some(3), None));
        assert!(s.registration_token_valid("soon").unwrap());
        s.delete_registration_token("soon").await.unwrap();
        assert_eq!(
            s.delete_registration_token("soon")
                .await
                .unwrap_err()
                .errcode(),
            "M_NOT_FOUND"
        );
    }
}
