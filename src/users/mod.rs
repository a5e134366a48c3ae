//! Accounts, devices, access tokens, profiles, presence, account data and filters.
//!
//! One [`UsersService`] owns the user-scoped trees; its methods are split by concern
//! across the files of this module.

mod account_data;
mod accounts;
mod admin;
#[cfg(test)]
mod cluster_tests;
mod dehydrated;
mod devices;
mod filters;
mod operator;
mod presence;
mod privacy;
mod profile;
mod registration_tokens;
mod remote;
mod shared_secret;
mod thread_subscriptions;
mod token_cache;
mod tokens;
mod uia;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::{
    account_data::AccountDataChanges,
    accounts::{check_password_policy, validate_localpart, Account},
    admin::{AccountOrder, AccountQuery, AccountSummary},
    devices::{check_new_device, Device},
    operator::OPERATOR_TOKEN_FILE,
    presence::PresenceRecord,
    privacy::PRIVACY_ACCOUNT_DATA,
    profile::check_profile,
    registration_tokens::{NewRegistrationToken, RegistrationToken},
    shared_secret::registration_mac,
    thread_subscriptions::{
        Subscription, ThreadChange, ThreadChanges, CONFLICTING_UNSUBSCRIPTION, DEFAULT_FEED_LIMIT,
    },
    uia::{Stage, UiaFlows},
};
use crate::{
    config::Config,
    storage::{Batch, Storage, StreamPosition},
    stream::{Notifier, RemoteWakes},
    Error, Result,
};

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
    /// Whether requests of this session skip per-user rate limits: the exemption point
    /// for application services that ask for it (`rate_limited: false` in their
    /// registration), set when such a session is built; never stored, so a user's token
    /// cannot carry it.
    #[serde(skip)]
    pub rate_limit_exempt: bool,
    /// The id of the application service acting through this session (its `as_token`);
    /// never stored.
    #[serde(skip)]
    pub appservice: Option<String>,
}

/// What happened to a user's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    /// New devices were created.
    Added,
    /// Devices were deleted (logout, deletion, deactivation).
    Removed,
}

/// A callback run after devices were created or deleted (E2EE key cleanup, device lists).
pub type OnDevicesChanged =
    Box<dyn Fn(&UserId, &[OwnedDeviceId], DeviceChange) -> Result<()> + Send + Sync>;

/// Key of the user-data stream position in the `meta` tree.
const USERDATA_POS_KEY: &[u8] = b"userdata_pos";

/// The users service.
pub struct UsersService {
    config: Arc<Config>,
    storage: Arc<Storage>,
    /// The user-data stream position.
    pos: StreamPosition,
    /// Wakes a user's long-polling syncs after their account data or presence changed.
    notifier: Arc<Notifier>,
    on_devices_changed: OnceLock<OnDevicesChanged>,
    /// Who changed presence at which user-data position (newest change per user), so a
    /// sync finds the changes since its token without reading everyone's record.
    presence_changes: Arc<Mutex<presence::ChangeIndex>>,
    /// Position of each user's newest account-data change since the start, so a sync of
    /// a user whose account data did not change reads nothing.
    account_data_changes: Arc<Mutex<account_data::ChangeIndex>>,
    /// Hash of this run's operator token (see [`operator`]), once installed.
    operator_token: OnceLock<Vec<u8>>,
    /// Sessions of access tokens in use (see [`token_cache`]).
    token_cache: Arc<token_cache::TokenCache>,
    /// Users to wake for other processes' changes (a shared database, see [`remote`]);
    /// the handlers hold it weakly.
    _remote_wakes: Arc<RemoteWakes>,
}

/// Tokens are stored hashed: a stolen database does not yield usable tokens.
pub fn token_key(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl UsersService {
    /// Builds the service, reading the persisted stream position.
    pub fn new(
        config: Arc<Config>,
        storage: Arc<Storage>,
        notifier: Arc<Notifier>,
    ) -> Result<UsersService> {
        let presence_changes = Arc::default();
        let token_cache = Arc::default();
        let remote_wakes = Arc::default();
        // The change index starts at the loaded position; other processes' changes are
        // noted from before the load on.
        let account_data_changes = Arc::new(Mutex::new(account_data::ChangeIndex::default()));
        if storage.is_shared() {
            remote::watch(
                &storage,
                remote::Watched {
                    token_cache: &token_cache,
                    account_data: &account_data_changes,
                    presence: &presence_changes,
                    wakes: &remote_wakes,
                },
            );
        }
        let pos = StreamPosition::load(&storage, USERDATA_POS_KEY)?;
        account_data_changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart_at(pos.current());
        if storage.is_shared() {
            remote_wakes.register(&storage, USERDATA_POS_KEY, pos.current(), &notifier, None);
        }
        let service = UsersService {
            config,
            storage,
            pos,
            notifier,
            on_devices_changed: OnceLock::new(),
            presence_changes,
            account_data_changes,
            operator_token: OnceLock::new(),
            token_cache,
            _remote_wakes: remote_wakes,
        };
        service.purge_expired_uia()?;
        service.load_presence_changes()?;
        Ok(service)
    }

    /// The configuration this service runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The server name user ids of this server end in.
    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// Installs the callback run after devices were created or deleted. Only the first
    /// call takes effect.
    pub fn set_on_devices_changed(&self, f: OnDevicesChanged) {
        if self.on_devices_changed.set(f).is_err() {
            tracing::warn!("users: on_devices_changed callback already set");
        }
    }

    fn devices_changed(
        &self,
        user: &UserId,
        devices: &[OwnedDeviceId],
        change: DeviceChange,
    ) -> Result<()> {
        match self.on_devices_changed.get() {
            Some(f) if !devices.is_empty() => f(user, devices, change),
            _ => Ok(()),
        }
    }

    fn changed(&self, user: &UserId) {
        self.notifier.notify_user(user);
    }

    /// The newest user-data stream position (account data and presence changes).
    pub fn current_userdata_pos(&self) -> u64 {
        self.pos.current()
    }

    /// Allocates the next stream position, lets `fill` add writes that use it, and commits
    /// them together with the new position; runs `committed` after the commit and before
    /// the position becomes visible (for in-memory indexes readers must find complete).
    /// Positions become visible in order.
    fn commit_with_pos_then(
        &self,
        fill: impl FnOnce(u64, &mut Batch) -> Result<()>,
        committed: impl FnOnce(u64),
    ) -> Result<u64> {
        self.pos.commit_next(&self.storage, fill, committed)
    }

    /// Resolves an access token to its session, or `M_UNKNOWN_TOKEN`.
    pub fn authenticate(&self, token: &str) -> Result<Session> {
        let hash: token_cache::TokenHash = Sha256::digest(token.as_bytes()).into();
        let ended = match self.token_cache.get(&hash) {
            token_cache::Lookup::Hit(session) => return Ok(session),
            token_cache::Lookup::Miss { ended } => ended,
        };
        let session = self
            .storage
            .trees
            .tokens
            .get_json::<Session>(&hash)?
            .ok_or_else(Error::unknown_token)?;
        self.token_cache.insert(hash, &session, ended);
        Ok(session)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A service on in-memory storage with the given config tweaks.
    pub fn service_with(tweak: impl FnOnce(&mut Config)) -> UsersService {
        let mut config = Config::default();
        tweak(&mut config);
        UsersService::new(
            Arc::new(config),
            Arc::new(Storage::in_memory()),
            Arc::new(Notifier::new()),
        )
        .unwrap()
    }

    /// A service on in-memory storage with the default config.
    pub fn service() -> UsersService {
        service_with(|_| {})
    }
}
