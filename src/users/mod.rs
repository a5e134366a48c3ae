//! Accounts, devices, access tokens, profiles, presence, account data and filters.

use std::sync::Arc;

use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{config::Config, storage::Storage, Error, Result};


/// Who a request's access token belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token was issued to.
    pub device_id: OwnedDeviceId,
    /// Whether the account is a guest.
    #[serde(default)]
    pub is_guest: bool,
}

/// The users service.
pub struct UsersService {
    config: Arc<Config>,
    storage: Arc<Storage>,
}

/// Tokens are stored hashed: a stolen database does not yield usable tokens.
pub fn token_key(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl UsersService {
    /// Builds the service.
    pub fn new(config: Arc<Config>, storage: Arc<Storage>) -> Result<UsersService> {
        Ok(UsersService { config, storage })
    }

    /// The configuration this service runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Resolves an access token to its session, or `M_UNKNOWN_TOKEN`.
    pub fn authenticate(&self, token: &str) -> Result<Session> {
        self.storage
            .trees
            .tokens
            .get_json::<Session>(&token_key(token))?
            .ok_or_else(Error::unknown_token)
    }
}
