//! Delegated delayed leave (MSC4195 "optional delegated delayed leave events", and
//! lk-jwt-service's `/delegate_delayed_leave`): a client that scheduled its call
//! membership's delayed leave (MSC4140) hands it to the server, which restarts it while
//! the participant is connected to the SFU and sends it as soon as the participant
//! disconnects — so a crashed browser's call membership ends within seconds instead of
//! at the end of the delay.
//!
//! The SFU's connection state is polled through its internal API (`GET /internal/rooms`)
//! every [`POLL`]; one delegation is kept per (user, room, slot, member id), a newer one
//! replacing it. Which delegation is current is stored (`rtc_delegations`), so a newer one
//! made through another process sharing the database ends the older one's watch. The
//! watches themselves run in the process that took the delegation: after a restart (or
//! when that process dies) the client's own delayed event still ends the membership when
//! its delay runs out.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::{token, DelayedAction, RtcService};
use crate::{
    storage::{keys, Storage},
    Error, Result,
};

/// How often a delegation looks at the SFU.
const POLL: Duration = Duration::from_millis(500);
/// How long a delegation waits for the participant to connect before giving up.
const CONNECT_WAIT: Duration = Duration::from_secs(120);
/// Shortest interval between two restarts of the delegated event.
const MIN_RESTART: Duration = Duration::from_secs(1);

/// What a delegation is keyed by.
type Key = (OwnedUserId, OwnedRoomId, String, String);

/// The stored current delegation of a key.
#[derive(Serialize, Deserialize)]
struct Current {
    delay_id: String,
    /// Random, so that generations of different processes never collide.
    generation: u64,
}

fn record_key((user, room, slot, member): &Key) -> Vec<u8> {
    keys::strs(&[user.as_str(), room.as_str(), slot, member])
}

/// The delegations: which one is current per key (stored) and how many this process
/// watches.
pub struct Delegations {
    storage: Arc<Storage>,
    watching: AtomicUsize,
}

impl Delegations {
    pub(super) fn new(storage: Arc<Storage>) -> Delegations {
        Delegations {
            storage,
            watching: AtomicUsize::new(0),
        }
    }

    /// Records `generation` of `key` as the current delegation.
    fn replace(&self, key: &Key, delay_id: &str, generation: u64) -> Result<()> {
        let current = Current {
            delay_id: delay_id.to_owned(),
            generation,
        };
        let tree = &self.storage.trees.rtc_delegations;
        tree.insert(&record_key(key), &serde_json::to_vec(&current)?)
    }

    /// Whether `generation` is still the key's current delegation. A storage error
    /// answers yes: the watch goes on rather than drop a delegation.
    fn is_current(&self, key: &Key, generation: u64) -> bool {
        match self
            .storage
            .trees
            .rtc_delegations
            .get_json::<Current>(&record_key(key))
        {
            Ok(current) => current.is_some_and(|c| c.generation == generation),
            Err(e) => {
                tracing::warn!(error = %e, "reading a delegated delayed leave");
                true
            }
        }
    }

    /// Forgets the key's delegation if `generation` is still the current one.
    fn finish(&self, key: &Key, generation: u64) {
        let tree = &self.storage.trees.rtc_delegations;
        let rkey = record_key(key);
        let finished = tree.get(&rkey).and_then(|stored| match stored {
            Some(bytes)
                if serde_json::from_slice::<Current>(&bytes)
                    .is_ok_and(|c| c.generation == generation) =>
            {
                tree.compare_and_swap(&rkey, Some(&bytes), None).map(|_| ())
            }
            _ => Ok(()),
        });
        if let Err(e) = finished {
            tracing::warn!(error = %e, "forgetting a delegated delayed leave");
        }
    }

    /// Removes the records of delegations whose delayed event is gone (their watch ended
    /// with a process that stopped). Run by the leader at start.
    pub(super) fn sweep(&self, exists: impl Fn(&str) -> Result<bool>) -> Result<usize> {
        let tree = &self.storage.trees.rtc_delegations;
        let mut removed = 0;
        for entry in tree.scan_prefix(&[]) {
            let (key, bytes) = entry?;
            let delay_id = serde_json::from_slice::<Current>(&bytes).map(|c| c.delay_id);
            if delay_id.is_err() || !exists(&delay_id.unwrap_or_default())? {
                tree.compare_and_swap(&key, Some(&bytes), None)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// How many delegations this process is watching.
    pub fn len(&self) -> usize {
        self.watching.load(Ordering::Relaxed)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One delegation request.
pub struct DelegationRequest<'a> {
    /// The SFU the participant connected to (must be this server's).
    pub url: &'a str,
    /// The room of the call.
    pub room_id: &'a RoomId,
    /// The MatrixRTC slot (`m.call#ROOM` for Element Call's room call).
    pub slot_id: &'a str,
    /// The membership's member id.
    pub member_id: &'a str,
    /// The delayed leave to manage.
    pub delay_id: &'a str,
}

impl RtcService {
    /// Takes over `req.delay_id` for `user` on `device`: checks it (400
    /// `M_INVALID_PARAM` for another SFU, an unknown delayed event or one of another user
    /// or room), then watches the participant on the SFU until they disconnect.
    #[tracing::instrument(skip(self, req), fields(user = %user, room = %req.room_id))]
    pub fn delegate_delayed_leave(
        self: &Arc<Self>,
        user: &UserId,
        device: &str,
        req: DelegationRequest<'_>,
    ) -> Result<()> {
        if req.slot_id.is_empty() || req.member_id.is_empty() || req.delay_id.is_empty() {
            return Err(Error::invalid_param(
                "slot_id, member_id and delay_id must not be empty",
            ));
        }
        let hosting = self.sfu_url(req.room_id, req.slot_id);
        if req.url.trim_end_matches('/') != hosting.trim_end_matches('/') {
            return Err(Error::invalid_param(format!(
                "This server manages delayed leaves on the SFU hosting the call only ({hosting})"
            )));
        }
        let event = self
            .delayed_event(req.delay_id)?
            .filter(|e| e.user_id == user && e.room_id == req.room_id)
            .ok_or_else(|| {
                Error::invalid_param("No delayed event of yours in this room has that delay_id")
            })?;
        let key: Key = (
            user.to_owned(),
            req.room_id.to_owned(),
            req.slot_id.to_owned(),
            req.member_id.to_owned(),
        );
        let generation = rand::random::<u64>();
        self.delegations
            .replace(&key, &event.delay_id, generation)?;
        self.delegations.watching.fetch_add(1, Ordering::Relaxed);
        let watch = Watch {
            rtc: Arc::downgrade(self),
            key,
            generation,
            delay_id: event.delay_id,
            identity: token::identity(user.as_str(), device),
            room: token::livekit_room_name(req.room_id.as_str(), req.slot_id),
            restart_every: Duration::from_millis(event.delay_ms / 3).max(MIN_RESTART),
        };
        tokio::spawn(watch.run());
        Ok(())
    }

    /// The delegations being watched.
    pub fn delegations(&self) -> &Delegations {
        &self.delegations
    }

    /// Forgets delegations whose delayed event is gone (see [`Delegations::sweep`]).
    pub fn sweep_delegations(&self) -> Result<usize> {
        self.delegations
            .sweep(|delay_id| Ok(self.delayed_event(delay_id)?.is_some()))
    }
}

/// The task behind one delegation.
struct Watch {
    rtc: Weak<RtcService>,
    key: Key,
    generation: u64,
    delay_id: String,
    identity: String,
    room: String,
    restart_every: Duration,
}

impl Watch {
    async fn run(self) {
        let started = Instant::now();
        let mut last_restart = Instant::now();
        let mut seen = false;
        loop {
            tokio::time::sleep(POLL).await;
            let Some(rtc) = self.rtc.upgrade() else {
                return;
            };
            if !rtc.delegations.is_current(&self.key, self.generation) {
                break;
            }
            match rtc.delayed_event(&self.delay_id) {
                Ok(Some(_)) => {}
                // Sent, cancelled or unreadable: nothing left to manage.
                _ => break,
            }
            match rtc.sfu_admin(&self.room).participants(&self.room).await {
                Ok(present) if present.contains(&self.identity) => seen = true,
                Ok(_) if seen => {
                    tracing::info!(identity = %self.identity, "participant left the SFU: sending the delegated leave");
                    if let Err(e) = rtc
                        .update_delayed(&self.delay_id, DelayedAction::Send, None)
                        .await
                    {
                        tracing::warn!(error = %e, "could not send a delegated delayed leave");
                    }
                    break;
                }
                Ok(_) if started.elapsed() > CONNECT_WAIT => {
                    tracing::info!(identity = %self.identity, "participant never connected: delegation dropped");
                    break;
                }
                // Not connected yet, or the SFU did not answer: keep the event alive.
                Ok(_) | Err(_) => {}
            }
            if last_restart.elapsed() >= self.restart_every {
                if let Err(e) = rtc
                    .update_delayed(&self.delay_id, DelayedAction::Restart, None)
                    .await
                {
                    tracing::debug!(error = %e, "delegated delayed leave no longer restartable");
                    break;
                }
                last_restart = Instant::now();
            }
        }
        if let Some(rtc) = self.rtc.upgrade() {
            rtc.delegations.finish(&self.key, self.generation);
            rtc.delegations.watching.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
