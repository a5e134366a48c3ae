//! Delayed events (MSC4140): events a client schedules now for the server to send later,
//! unless the client restarts the timer, sends them early or cancels them. MatrixRTC
//! clients schedule their own "leave" this way so a crashed client leaves no ghost in a
//! call.
//!
//! Every scheduled event is stored (so it fires after a restart too) with three indexes:
//! by deadline (the timer), by owner (listing) and by room state key (cancellation when
//! another user writes that state, as Synapse does). One tokio task sleeps until the
//! earliest deadline or until woken by a change; there is no polling loop.

mod consumer;

pub use self::consumer::DelayedEventsConsumer;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use super::RtcService;
use crate::{
    rooms::{Membership, NewEvent},
    storage::{keys, Batch},
    users::now_ms,
    Error, Result,
};

/// One scheduled event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DelayedEvent {
    /// The id the owner manages it by.
    pub delay_id: String,
    /// Who scheduled it (and will send it).
    pub user_id: OwnedUserId,
    /// The device that scheduled it.
    pub device_id: OwnedDeviceId,
    /// Target room.
    pub room_id: OwnedRoomId,
    /// Event type.
    pub kind: String,
    /// State key for state events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    /// Event content as submitted.
    pub content: Value,
    /// The delay in milliseconds.
    pub delay_ms: u64,
    /// When the timer was started or last restarted (ms since the epoch).
    pub running_since: u64,
}

impl DelayedEvent {
    /// When the event fires.
    pub fn deadline(&self) -> u64 {
        self.running_since.saturating_add(self.delay_ms)
    }
}

/// What a client asks of a scheduled event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayedAction {
    /// Start the timer again from now.
    Restart,
    /// Send it now.
    Send,
    /// Drop it.
    Cancel,
}

impl DelayedAction {
    /// Parses `restart`, `send` or `cancel`.
    pub fn parse(s: &str) -> Result<DelayedAction> {
        match s {
            "restart" => Ok(DelayedAction::Restart),
            "send" => Ok(DelayedAction::Send),
            "cancel" => Ok(DelayedAction::Cancel),
            other => Err(Error::invalid_param(format!(
                "unknown action {other:?}: expected restart, send or cancel"
            ))),
        }
    }
}

/// The timer task's wake-up and the set of events being sent right now.
pub(super) struct Scheduler {
    wake: Arc<Notify>,
    /// Delay ids taken by the sender; actions on them answer 404, as for sent events.
    inflight: Mutex<HashSet<String>>,
    started: std::sync::Once,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            wake: Arc::default(),
            inflight: Mutex::default(),
            started: std::sync::Once::new(),
        }
    }
}

fn not_found() -> Error {
    Error::not_found("Delayed event not found")
}

fn deadline_key(deadline: u64, delay_id: &str) -> Vec<u8> {
    keys::KeyBuilder::new().u64(deadline).str(delay_id).build()
}

fn user_key(user: &UserId, delay_id: &str) -> Vec<u8> {
    keys::strs(&[user.as_str(), delay_id])
}

fn state_key_prefix(room: &RoomId, kind: &str, state_key: &str) -> Vec<u8> {
    keys::strs(&[room.as_str(), kind, state_key])
}

impl RtcService {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.delayed
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the timer task (once; needs a tokio runtime). Events that came due while
    /// the server was down fire at once. `serve` calls it at start (admin commands on the
    /// same data dir do not); scheduling an event calls it too.
    pub fn start_delayed_events(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.delayed.started.call_once(|| {
            let weak = Arc::downgrade(self);
            let wake = self.delayed.wake.clone();
            tokio::spawn(run_timer(weak, wake));
        });
    }

    /// Reads one scheduled event.
    pub fn delayed_event(&self, delay_id: &str) -> Result<Option<DelayedEvent>> {
        self.storage
            .trees
            .delayed_events
            .get_json(delay_id.as_bytes())
    }

    /// Schedules an event; returns its delay id once it is durable. A repeated transaction
    /// (`txn` of the same device) returns the first delay id and schedules nothing.
    #[tracing::instrument(skip(self, content), fields(user = %user, room = %room_id))]
    #[allow(clippy::too_many_arguments)]
    pub async fn schedule_delayed(
        self: &Arc<Self>,
        user: &UserId,
        device: &ruma::DeviceId,
        room_id: &RoomId,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        delay_ms: u64,
        txn: Option<&str>,
    ) -> Result<String> {
        let txn_key = txn.map(|t| keys::strs(&[user.as_str(), device.as_str(), t]));
        if let Some(k) = &txn_key {
            if let Some(id) = self.storage.trees.delayed_txns.get(k)? {
                return Ok(String::from_utf8_lossy(&id).into_owned());
            }
        }
        let max = self.config.rtc.max_delay_ms;
        if delay_ms > max {
            return Err(Error::matrix(
                crate::ErrorKind::Invalid,
                "M_MAX_DELAY_EXCEEDED",
                format!("The requested delay exceeds the allowed maximum of {max} ms"),
            )
            .with_field("org.matrix.msc4140.max_delay", max.into()));
        }
        if !content.is_object() {
            return Err(Error::bad_json("event content must be a JSON object"));
        }
        if kind.is_empty() {
            return Err(Error::invalid_param("event type must not be empty"));
        }
        if !self.rooms.exists(room_id)? {
            return Err(Error::not_found("Unknown room"));
        }
        if self.rooms.membership(room_id, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let power = self.rooms.power_levels(room_id)?;
        if power.user_level(user) < power.event_level(kind, state_key.is_some()) {
            return Err(Error::forbidden(format!(
                "You may not send {kind} events in this room"
            )));
        }
        let limit = self.config.rtc.max_delayed_per_user;
        let pending = self
            .storage
            .trees
            .delayed_by_user
            .scan_prefix(&keys::strs(&[user.as_str()]))
            .take(limit)
            .count();
        if pending >= limit {
            return Err(Error::matrix(
                crate::ErrorKind::Invalid,
                "M_LIMIT_EXCEEDED",
                format!("At most {limit} delayed events may be scheduled at once"),
            ));
        }
        let delay_id: String = format!(
            "myl{}",
            rand::thread_rng()
                .sample_iter(&Alphanumeric)
                .take(24)
                .map(char::from)
                .collect::<String>()
        );
        let event = DelayedEvent {
            delay_id: delay_id.clone(),
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            room_id: room_id.to_owned(),
            kind: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            content,
            delay_ms,
            running_since: now_ms(),
        };
        let trees = &self.storage.trees;
        let mut batch = Batch::new();
        batch.insert_json(&trees.delayed_events, delay_id.as_bytes(), &event)?;
        batch.insert(
            &trees.delayed_by_deadline,
            &deadline_key(event.deadline(), &delay_id),
            b"",
        );
        batch.insert(&trees.delayed_by_user, &user_key(user, &delay_id), b"");
        if let Some(k) = &txn_key {
            batch.insert(&trees.delayed_txns, k, delay_id.as_bytes());
        }
        if let Some(key) = state_key {
            let mut k = state_key_prefix(room_id, kind, key);
            k.extend_from_slice(&keys::strs(&[&delay_id]));
            batch.insert(&trees.delayed_by_state, &k, b"");
        }
        self.storage.commit_durable(batch).await?;
        self.start_delayed_events();
        self.delayed.wake.notify_one();
        Ok(delay_id)
    }

    /// Adds the removal of a scheduled event and its indexes to `batch`.
    fn remove_delayed_into(&self, event: &DelayedEvent, batch: &mut Batch) {
        let trees = &self.storage.trees;
        batch.remove(&trees.delayed_events, event.delay_id.as_bytes());
        batch.remove(
            &trees.delayed_by_deadline,
            &deadline_key(event.deadline(), &event.delay_id),
        );
        batch.remove(
            &trees.delayed_by_user,
            &user_key(&event.user_id, &event.delay_id),
        );
        if let Some(key) = &event.state_key {
            let mut k = state_key_prefix(&event.room_id, &event.kind, key);
            k.extend_from_slice(&keys::strs(&[&event.delay_id]));
            batch.remove(&trees.delayed_by_state, &k);
        }
    }

    /// Restarts, sends or cancels a scheduled event. When `requester` is given (the
    /// authenticated endpoints), only its owner may act on it; otherwise the unguessable
    /// delay id is the authorisation (the newer MSC4140 per-action endpoints).
    #[tracing::instrument(skip(self))]
    pub async fn update_delayed(
        self: &Arc<Self>,
        delay_id: &str,
        action: DelayedAction,
        requester: Option<&UserId>,
    ) -> Result<()> {
        let event = {
            let mut inflight = self.inflight();
            if inflight.contains(delay_id) {
                return Err(not_found());
            }
            let event = self.delayed_event(delay_id)?.ok_or_else(not_found)?;
            if requester.is_some_and(|r| r != event.user_id) {
                return Err(not_found());
            }
            let mut batch = Batch::new();
            match action {
                DelayedAction::Cancel => self.remove_delayed_into(&event, &mut batch),
                DelayedAction::Restart => {
                    let trees = &self.storage.trees;
                    batch.remove(
                        &trees.delayed_by_deadline,
                        &deadline_key(event.deadline(), delay_id),
                    );
                    let restarted = DelayedEvent {
                        running_since: now_ms(),
                        ..event.clone()
                    };
                    batch.insert_json(&trees.delayed_events, delay_id.as_bytes(), &restarted)?;
                    batch.insert(
                        &trees.delayed_by_deadline,
                        &deadline_key(restarted.deadline(), delay_id),
                        b"",
                    );
                }
                DelayedAction::Send => {
                    inflight.insert(delay_id.to_owned());
                }
            }
            self.storage.commit(batch)?;
            event
        };
        self.delayed.wake.notify_one();
        match action {
            DelayedAction::Send => self.fire(event).await,
            _ => self.storage.durable().await,
        }
    }

    /// Sends a scheduled event that is marked in flight, then forgets it. A failure to
    /// send (the user left, power levels changed) drops the event, as Synapse does.
    async fn fire(&self, event: DelayedEvent) -> Result<()> {
        let new_event = match &event.state_key {
            Some(key) => NewEvent::state(event.kind.clone(), key.clone(), event.content.clone()),
            None => NewEvent::message(event.kind.clone(), event.content.clone()),
        };
        let result = {
            let guard = self.rooms.lock(&event.room_id).await;
            self.rooms.send(guard, &event.user_id, new_event).await
        };
        let mut batch = Batch::new();
        self.remove_delayed_into(&event, &mut batch);
        let removed = self.storage.commit_durable(batch).await;
        self.inflight().remove(&event.delay_id);
        match result {
            Ok((event_id, _)) => {
                tracing::debug!(delay_id = %event.delay_id, %event_id, "delayed event sent");
                removed
            }
            Err(e) => {
                tracing::warn!(delay_id = %event.delay_id, error = %e, "delayed event could not be sent");
                removed.and(Err(e))
            }
        }
    }

    /// The earliest deadline of any scheduled event.
    fn next_deadline(&self) -> Result<Option<u64>> {
        Ok(self
            .storage
            .trees
            .delayed_by_deadline
            .scan_prefix(&[])
            .next()
            .transpose()?
            .and_then(|(k, _)| keys::leading_u64(&k)))
    }

    /// Sends every event whose deadline has passed.
    async fn fire_due(&self, now: u64) -> Result<()> {
        let mut due = Vec::new();
        {
            let mut inflight = self.inflight();
            let end = (now + 1).to_be_bytes();
            for kv in self
                .storage
                .trees
                .delayed_by_deadline
                .range(&[], &end, false)
            {
                let (k, _) = kv?;
                let Some(id) = k.get(8..).map(keys::split_strs) else {
                    continue;
                };
                let Some(id) = id.first().map(|s| (*s).to_owned()) else {
                    continue;
                };
                if inflight.contains(&id) {
                    continue;
                }
                match self.delayed_event(&id)? {
                    Some(event) => {
                        inflight.insert(id);
                        due.push(event);
                    }
                    None => {
                        // A dangling index entry: drop it so the timer does not spin.
                        self.storage.trees.delayed_by_deadline.remove(&k)?;
                    }
                }
            }
        }
        for event in due {
            // Failures are logged in `fire`; the event is gone either way.
            let _ = self.fire(event).await;
        }
        Ok(())
    }

    /// The user's scheduled events.
    pub fn list_delayed(&self, user: &UserId) -> Result<Vec<DelayedEvent>> {
        let prefix = keys::strs(&[user.as_str()]);
        let mut out = Vec::new();
        for kv in self.storage.trees.delayed_by_user.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let Some(id) = keys::split_strs(&k).get(1).map(|s| (*s).to_owned()) else {
                continue;
            };
            if self.inflight().contains(&id) {
                continue;
            }
            if let Some(event) = self.delayed_event(&id)? {
                out.push(event);
            }
        }
        out.sort_by_key(DelayedEvent::deadline);
        Ok(out)
    }

    /// Drops every scheduled event of a purged room with its indexes. Idempotent.
    pub fn purge_room_delayed(&self, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::new();
        for kv in self.storage.trees.delayed_events.scan_prefix(&[]) {
            let (_, v) = kv?;
            match serde_json::from_slice::<DelayedEvent>(&v) {
                Ok(event) if event.room_id == room_id => {
                    self.remove_delayed_into(&event, &mut batch)
                }
                _ => {}
            }
        }
        // Index entries left behind by an interrupted removal.
        let prefix = keys::strs(&[room_id.as_str()]);
        for kv in self.storage.trees.delayed_by_state.scan_prefix(&prefix) {
            batch.remove(&self.storage.trees.delayed_by_state, &kv?.0);
        }
        self.storage.commit(batch)?;
        self.delayed.wake.notify_one();
        Ok(())
    }

    /// After `sender` wrote state `(kind, state_key)` in `room_id`: other users'
    /// scheduled events for that state are cancelled (Synapse's rule: the newer state wins
    /// over someone else's pending change; the writer's own pending ones stay). The
    /// removals go into `batch`; returns whether there are any.
    pub(crate) fn cancel_superseded(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
        sender: &UserId,
        batch: &mut Batch,
    ) -> Result<bool> {
        let prefix = state_key_prefix(room_id, kind, state_key);
        let inflight = self.inflight();
        let mut cancelled = false;
        for kv in self.storage.trees.delayed_by_state.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let Some(id) = keys::split_strs(&k[prefix.len()..])
                .first()
                .map(|s| (*s).to_owned())
            else {
                continue;
            };
            if inflight.contains(&id) {
                continue;
            }
            match self.delayed_event(&id)? {
                Some(event) if event.user_id != sender => {
                    tracing::debug!(delay_id = %id, "delayed state event superseded");
                    self.remove_delayed_into(&event, batch);
                    cancelled = true;
                }
                Some(_) => {}
                None => batch.remove(&self.storage.trees.delayed_by_state, &k),
            }
        }
        Ok(cancelled)
    }

    /// Commits the cancellations of [`Self::cancel_superseded`] and re-arms the timer.
    pub(crate) fn commit_cancellations(&self, batch: Batch, cancelled: bool) -> Result<()> {
        self.storage.commit(batch)?;
        if cancelled {
            self.delayed.wake.notify_one();
        }
        Ok(())
    }
}

/// The timer: sleeps until the earliest deadline or a change, fires what is due.
async fn run_timer(service: Weak<RtcService>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        // Register interest before reading the deadline so no wake-up is missed.
        notified.as_mut().enable();
        let next = {
            let Some(service) = service.upgrade() else {
                return;
            };
            let now = now_ms();
            match service.next_deadline() {
                Ok(Some(deadline)) if deadline <= now => {
                    if let Err(e) = service.fire_due(now).await {
                        tracing::error!(error = %e, "delayed events: firing failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
                Ok(next) => next.map(|d| d - now),
                Err(e) => {
                    tracing::error!(error = %e, "delayed events: reading deadlines failed");
                    Some(1000)
                }
            }
        };
        match next {
            Some(ms) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests;
