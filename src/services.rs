//! `Services`: every service, built once in dependency order and passed as axum state.

use std::sync::Arc;

use crate::{
    accounts::AccountsService,
    appservice::{AppserviceConsumer, AppserviceService},
    config::{Config, StorageEngine},
    e2ee::E2eeService,
    events::keys::ServerKeys,
    media::MediaService,
    meetings::{MeetingsConsumer, MeetingsService, SchedulePolicy},
    pipeline::{Pipeline, SyncNotifier},
    purge::{GroupDissolution, PurgeService},
    push::{PushConsumer, PushService},
    ratelimit::RateLimiter,
    rooms::RoomsService,
    rtc::{delayed::DelayedEventsConsumer, recording::RecordingService, LiveKitKeys, RtcService},
    storage::Storage,
    stream::Notifier,
    sync::SyncService,
    users::UsersService,
    Result,
};

/// All services of a running server.
pub struct Services {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database: only the services (each given its handle at build time) write to
    /// it; handlers reach it through the methods below, never directly.
    storage: Arc<Storage>,
    /// The server's signing key.
    pub keys: Arc<ServerKeys>,
    /// Wakes long-polling syncs.
    pub notifier: Arc<Notifier>,
    /// Accounts, devices, tokens, profiles.
    pub users: Arc<UsersService>,
    /// Rooms, events, state, membership.
    pub rooms: Arc<RoomsService>,
    /// E2EE key relay: device keys, to-device messages, device lists, key backup.
    pub e2ee: Arc<E2eeService>,
    /// `/sync` assembly.
    pub sync: Arc<SyncService>,
    /// Push rules, notification counts, pushers.
    pub push: Arc<PushService>,
    /// The media repository.
    pub media: Arc<MediaService>,
    /// MatrixRTC: OpenID, SFU tokens, delayed events.
    pub rtc: Arc<RtcService>,
    /// Room purges: dissolved groups, deleted rooms.
    pub purge: Arc<PurgeService>,
    /// The consumers that follow every durable event.
    pub pipeline: Arc<Pipeline>,
    /// Per-address and per-user rate limits.
    pub rate_limits: Arc<RateLimiter>,
    /// Registered application services.
    pub appservices: Arc<AppserviceService>,
    /// Meetings: join links, temporary participants, schedules.
    pub meetings: Arc<MeetingsService>,
    /// Meeting recording with the `myelin-recorder` extra package.
    pub recording: Arc<RecordingService>,
    /// Account operations spanning users, rooms and push.
    pub accounts: Arc<AccountsService>,
}

impl Services {
    /// `Ok` when the database answers a read (health checks).
    pub fn check_storage_readable(&self) -> Result<()> {
        self.storage.check_readable()
    }

    /// A consistent online backup of the database and media (see [`crate::backup`]).
    pub async fn take_backup(&self) -> Result<Vec<crate::backup::BackupPart>> {
        crate::backup::take(self.storage.clone(), self.config.data_dir.clone()).await
    }

    /// Makes everything written so far durable (at shutdown).
    pub fn flush_storage(&self) -> Result<()> {
        self.storage.flush()
    }

    /// How many entries of each tree mention `needle` (test hooks and unit tests: what a
    /// purge left behind).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn storage_entries_mentioning(
        &self,
        needle: &[u8],
    ) -> Result<std::collections::BTreeMap<&'static str, usize>> {
        self.storage.entries_mentioning(needle)
    }

    /// The database, for unit tests that look under the services.
    #[cfg(test)]
    pub(crate) fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

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
        let users = Arc::new(UsersService::new(
            config.clone(),
            storage.clone(),
            notifier.clone(),
        )?);
        // Room policies: rooms an administrator blocked, then the room kinds' rules.
        let mut policies: Vec<Arc<dyn crate::rooms::RoomPolicy>> =
            vec![Arc::new(crate::rooms::BlockedRoomPolicy)];
        policies.extend(crate::rooms::kind_policies(config.groups.max_members));
        policies.push(Arc::new(SchedulePolicy));
        let rooms = Arc::new(RoomsService::new(
            config.clone(),
            storage.clone(),
            keys.clone(),
            notifier.clone(),
            policies,
        )?);
        rooms.follow_other_processes()?;
        rooms.build_relation_index()?;
        let registrations: Vec<_> =
            crate::appservice::load_registrations(&config.appservices, &config.server_name)
                .map_err(|e| crate::Error::internal(e.to_string()))?
                .into_iter()
                .map(Arc::new)
                .collect();
        let e2ee = Arc::new(E2eeService::new(
            storage.clone(),
            users.clone(),
            rooms.clone(),
            notifier.clone(),
            &registrations,
        )?);
        let push = Arc::new(PushService::new(
            storage.clone(),
            rooms.clone(),
            users.clone(),
            crate::push::gateway::AddressPolicy::new(&config.push.gateway_allow_cidrs)
                .map_err(|e| crate::Error::internal(format!("push.gateway_allow_cidrs: {e}")))?,
        ));
        push.migrate_records()?;
        push.load_pushers()?;
        let sync = Arc::new(SyncService::new(
            rooms.clone(),
            users.clone(),
            e2ee.clone(),
            notifier.clone(),
            push.clone(),
        ));
        let media = Arc::new(MediaService::new(config.clone(), storage.clone())?);
        // Weak: the users service must not keep the e2ee service (which holds it) alive.
        let weak_e2ee = Arc::downgrade(&e2ee);
        users.set_on_devices_changed(Box::new(move |user, devices, change| {
            match weak_e2ee.upgrade() {
                Some(e2ee) => e2ee.devices_changed(user, devices, change),
                None => Ok(()),
            }
        }));
        let rtc = Arc::new(RtcService::new(
            config.clone(),
            storage.clone(),
            rooms.clone(),
            users.clone(),
            livekit,
        )?);
        let recording = Arc::new(RecordingService::new(
            config.clone(),
            &storage,
            rooms.clone(),
            media.clone(),
            rtc.clone(),
        ));
        let meetings = Arc::new(MeetingsService::new(
            config.clone(),
            storage.clone(),
            rooms.clone(),
            users.clone(),
            rtc.clone(),
        ));
        let purge = Arc::new(PurgeService::new(
            storage.clone(),
            rooms.clone(),
            push.clone(),
            users.clone(),
            rtc.clone(),
        ));
        let appservices = Arc::new(AppserviceService::new(
            registrations,
            &config.server_name,
            storage.clone(),
            users.clone(),
            rooms.clone(),
            e2ee.clone(),
        )?);
        // The consumers, in order. Readers see an event once the sync notifier has handled
        // it, so a woken sync finds its unread counts and cancellations done.
        let pipeline = Pipeline::builder(storage.clone(), rooms.clone())
            .consumer(Arc::new(PushConsumer::new(push.clone())), None)?
            .consumer(
                Arc::new(DelayedEventsConsumer::new(rtc.clone())),
                Some("push"),
            )?
            .consumer(
                Arc::new(SyncNotifier::new(rooms.clone(), notifier.clone())),
                Some("delayed_events"),
            )?
            // Groups dissolve once their last leave is visible to the members.
            .consumer(
                Arc::new(GroupDissolution::new(storage.clone(), purge.clone())),
                Some("sync_notifier"),
            )?
            // Whoever leaves a room (or is kicked or banned) leaves its call on the SFU.
            .consumer(
                Arc::new(crate::rtc::removal::CallRemovalConsumer::new(
                    storage.clone(),
                    rtc.clone(),
                )),
                Some("sync_notifier"),
            )?
            // New virtual rooms get their join link.
            .consumer(
                Arc::new(MeetingsConsumer::new(storage.clone(), meetings.clone())),
                Some("sync_notifier"),
            )?;
        // One consumer per appservice, waiting for nobody and waited for by nobody.
        let mut pipeline = pipeline;
        for consumer in AppserviceConsumer::all(&appservices) {
            pipeline = pipeline.consumer(consumer, None)?;
        }
        let pipeline = pipeline.build();
        pipeline.start();
        let rate_limits = Arc::new(RateLimiter::new(&config.rate_limits));
        let accounts = Arc::new(AccountsService::new(
            storage.clone(),
            users.clone(),
            rooms.clone(),
            push.clone(),
        ));
        Ok(Arc::new(Services {
            config,
            storage,
            keys,
            notifier,
            users,
            rooms,
            e2ee,
            sync,
            push,
            media,
            rtc,
            purge,
            pipeline,
            rate_limits,
            appservices,
            meetings,
            recording,
            accounts,
        }))
    }

    /// Starts the background tasks (push delivery, delayed events that came due while
    /// the server was down); call once inside the runtime. On a database shared with
    /// other processes, the work done once for the cluster (the pipeline's cluster
    /// consumers and every task below) runs on the holder of the `leader` lease: this
    /// process waits for it, and should it ever lose the lease (its renewals failed for
    /// longer than the lease lasts), it exits rather than run that work twice.
    pub fn start_background(self: &Arc<Self>) {
        self.rooms.start_publication();
        self.pipeline.start();
        if !self.storage.is_shared() {
            self.start_cluster_work();
            return;
        }
        let services = self.clone();
        tokio::spawn(async move {
            let leases = Arc::new(crate::storage::lease::Leases::new(
                services.storage.clone(),
                LEADER_LEASE,
                false,
            ));
            let guard = loop {
                match leases.hold("leader").await {
                    Ok(guard) => break guard,
                    Err(e) => {
                        tracing::error!(error = %e, "waiting for the leader lease");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            };
            tracing::info!("this process leads: it runs the cluster's background work");
            if let Err(e) = services.pipeline.start_cluster() {
                tracing::error!(error = %e, "starting the pipeline's cluster consumers");
                std::process::exit(1);
            }
            services.start_cluster_work();
            // An error means the renewal task is gone without losing the lease: the
            // runtime is shutting down (e.g. the start failed), and the process is
            // ending with its own error, which an exit here would hide.
            if guard.lost().wait_for(|lost| *lost).await.is_ok() {
                tracing::error!("the leader lease was lost: exiting so that one process leads");
                std::process::exit(1);
            }
        });
    }

    /// The background work that runs once for the cluster (every time on one process).
    fn start_cluster_work(&self) {
        self.push.start_delivery();
        self.rtc.start_delayed_events();
        match self.rtc.sweep_delegations() {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "forgot delegated leaves of ended delayed events"
            ),
            Err(e) => tracing::warn!(error = %e, "could not sweep delegated leaves"),
        }
        self.media.start_retention();
        self.meetings.start_sweeper();
        self.appservices.start_ephemeral();
        self.appservices.start_e2ee();
        let recording = self.recording.clone();
        tokio::spawn(recording.recover_lost());
        let purge = self.purge.clone();
        tokio::spawn(async move {
            if let Err(e) = purge.resume().await {
                tracing::error!(error = %e, "could not finish an interrupted room purge");
            }
        });
    }

    /// Opens the on-disk database and key named by the config and builds the services.
    pub fn open(config: Config) -> Result<Arc<Services>> {
        let storage = match config.storage.engine {
            StorageEngine::Sled => {
                Storage::open_sled(&config.data_dir, config.storage.cache_capacity_mb << 20)?
            }
            StorageEngine::Postgres if config.storage.postgres_shared => {
                Storage::open_postgres_shared(
                    &config.storage.postgres_url,
                    config.storage.postgres_pool_size,
                )?
            }
            StorageEngine::Postgres => Storage::open_postgres(
                &config.storage.postgres_url,
                config.storage.postgres_pool_size,
            )?,
        };
        // Processes sharing the database start one at a time, so that what a start writes
        // (the timeline counter's seed, an index rebuilt after an upgrade, a key generated
        // in a shared data dir) is written once, by one process.
        let starting = if storage.is_shared() {
            Some(storage.lock(STARTUP_LOCK)?)
        } else {
            None
        };
        let keys = ServerKeys::load_or_generate(&config.data_dir)?;
        let livekit = LiveKitKeys::load_or_generate(&config.rtc, &config.data_dir)?;
        let services = Services::build_with(config, storage, keys, livekit);
        drop(starting);
        services
    }

    /// Opens the services on a data dir that an instance just dropped in this process
    /// still holds (tests): its background tasks let go of the database, and sled of its
    /// file lock, on their own schedule, so retry on the lock error within a bound.
    #[cfg(test)]
    pub async fn reopen(config: Config) -> Result<Arc<Services>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Services::open(config.clone()) {
                Err(e)
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Services on the in-memory engine with a fresh key (tests).
    pub fn in_memory(config: Config) -> Result<Arc<Services>> {
        Services::build(config, Storage::in_memory(), ServerKeys::generate()?)
    }
}

/// How long the leader's lease lasts without renewal (renewed every third of it): how
/// long the cluster's background work waits after its leader dies.
const LEADER_LEASE: std::time::Duration = std::time::Duration::from_secs(6);

/// The database lock a process sharing the database holds while it starts ("mstart" in
/// ASCII: apart from the process lock and from rooms' locks, which are negative).
const STARTUP_LOCK: i64 = 0x6d73_7461_7274;

/// The services of two processes sharing one new database on the test PostgreSQL server,
/// both started as `myelin serve` starts them (one of them leads).
#[cfg(test)]
pub(crate) fn two_processes() -> (Arc<Services>, Arc<Services>) {
    let url = crate::storage::test_database();
    let open = || {
        let storage = Storage::open_postgres_shared(&url, 4).unwrap();
        let services =
            Services::build(Config::default(), storage, ServerKeys::generate().unwrap()).unwrap();
        services.start_background();
        services
    };
    (open(), open())
}
