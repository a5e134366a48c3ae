//! `Services`: every service, built once in dependency order and passed as axum state.

use std::sync::Arc;

use crate::{config::Config, storage::Storage, users::UsersService, Result};

/// All services of a running server.
pub struct Services {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub storage: Arc<Storage>,
    /// Accounts, devices, tokens, profiles.
    pub users: Arc<UsersService>,
}

impl Services {
    /// Builds every service on the given storage.
    pub fn build(config: Config, storage: Storage) -> Result<Arc<Services>> {
        let config = Arc::new(config);
        let storage = Arc::new(storage);
        let users = Arc::new(UsersService::new(config.clone(), storage.clone())?);
        Ok(Arc::new(Services {
            config,
            storage,
            users,
        }))
    }

    /// Opens the on-disk database named by the config and builds the services.
    pub fn open(config: Config) -> Result<Arc<Services>> {
        let storage = Storage::open_sled(&config.data_dir, config.storage.cache_capacity_mb << 20)?;
        Services::build(config, storage)
    }
}
