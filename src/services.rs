//! `Services`: every service, built once in dependency order and passed as axum state.

use std::sync::Arc;

use crate::{
    config::Config,
    events::keys::ServerKeys,
    rooms::RoomsService,
    rtc::{LiveKitKeys, RtcService},
    storage::Storage,
    sync::{notifier::Notifier, SyncService},
    users::UsersService,
    Result,
};

/// All services of a running server.
pub struct Services {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub storage: Arc<Storage>,
    /// The server's signing key.
    pub keys: Arc<ServerKeys>,
    /// Wakes long-polling syncs.
    pub notifier: Arc<Notifier>,
    /// Accounts, devices, tokens, profiles.
    pub users: Arc<UsersService>,
    /// Rooms, events, state, membership.
    pub rooms: Arc<RoomsService>,
    /// `/sync` assembly.
    pub sync: Arc<SyncService>,
    /// MatrixRTC: OpenID, SFU tokens, delayed events.
    pub rtc: Arc<RtcService>,
}

impl Services {
    /// Builds every service on the given storage and signing key (LiveKit keys from the
    /// config, else random).
    pub fn build(config: Config, storage: Storage, keys: ServerKeys) -> Result<Arc<Services>> {
        let livekit = LiveKitKeys::from_config_or_random(&config.rtc);
        Services::build_with(config, storage, keys, livekit)
    }

    /// Builds every service on the given storage, signing key and LiveKit keys.
    pub fn build_with(
        config: Config,
        storage: Storage,
        keys: ServerKeys,
        livekit: LiveKitKeys,
    ) -> Result<Arc<Services>> {
        let config = Arc::new(config);
        let storage = Arc::new(storage);
        let keys = Arc::new(keys);
        let notifier = Arc::new(Notifier::new());
        let users = Arc::new(UsersService::new(config.clone(), storage.clone())?);
        let rooms = Arc::new(RoomsService::new(
            config.clone(),
            storage.clone(),
            keys.clone(),
            notifier.clone(),
        )?);
        let sync = Arc::new(SyncService::new(
            rooms.clone(),
            users.clone(),
            notifier.clone(),
        ));
        let wake = notifier.clone();
        users.set_on_change(Box::new(move |user| wake.notify([user])));
        let rtc = Arc::new(RtcService::new(
            config.clone(),
            storage.clone(),
            rooms.clone(),
            users.clone(),
            livekit,
        )?);
        let weak_rtc = Arc::downgrade(&rtc);
        rooms.set_on_state_written(Box::new(move |room, kind, key, sender| {
            if let Some(rtc) = weak_rtc.upgrade() {
                if let Err(e) = rtc.on_state_written(room, kind, key, sender) {
                    tracing::error!(error = %e, "cancelling superseded delayed events failed");
                }
            }
        }));
        Ok(Arc::new(Services {
            config,
            storage,
            keys,
            notifier,
            users,
            rooms,
            sync,
            rtc,
        }))
    }

    /// Opens the on-disk database and key named by the config and builds the services.
    pub fn open(config: Config) -> Result<Arc<Services>> {
        let storage = Storage::open_sled(&config.data_dir, config.storage.cache_capacity_mb << 20)?;
        let keys = ServerKeys::load_or_generate(&config.data_dir)?;
        let livekit = LiveKitKeys::load_or_generate(&config.rtc, &config.data_dir)?;
        Services::build_with(config, storage, keys, livekit)
    }

    /// Services on the in-memory engine with a fresh key (tests).
    pub fn in_memory(config: Config) -> Result<Arc<Services>> {
        Services::build(config, Storage::in_memory(), ServerKeys::generate()?)
    }
}
