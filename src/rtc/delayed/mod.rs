//! Delayed events (MSC4140): events a client schedules now for the server to send later,
//! unless the client restarts the timer, sends them early or cancels them. MatrixRTC
//! clients schedule their own "leave" this way so a crashed client leaves no ghost in a
//! call.
//!
//! Every scheduled event is stored (so it fires after a restart too) with three indexes:
//! by deadline (the timer), by owner (listing) and by room state key (cancellation when
//! another user writes that state, as Synapse does). One tokio task sleeps until the
//! earliest deadline or until woken by a change; there is no polling loop (see [`timer`]).
//! Sending, cancelling and restarting are decided by a swap of the stored record, so that
//! processes sharing the database act on an event exactly once (see [`claim`]).

mod claim;
mod consumer;
mod timer;

pub use self::consumer::DelayedEventsConsumer;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use self::claim::{Intent, Record, Stored};
use super::RtcService;
use crate::{
    rooms::Membership,
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

/// The timer task's wake-up and the set of events this process is sending right now.
pub(super) struct Scheduler {
    wake: Arc<Notify>,
    /// Delay ids taken by this process's sender; actions on them answer 404, as for sent
    /// events, without reading the database.
    inflight: Mutex<HashSet<String>>,
    started: std::sync::Once,
    /// Events this process sent (tests: who sent what, however the room looks).
    #[cfg(test)]
    sent: std::sync::atomic::AtomicUsize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            wake: Arc::default(),
            inflight: Mutex::default(),
            started: std::sync::Once::new(),
            #[cfg(test)]
            sent: Default::default(),
        }
    }
}

/// How many times an action re-reads a record that changed under it before giving up.
const MAX_SWAPS: usize = 8;

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

    /// Reads one scheduled event; `None` once it is sent, cancelled, or taken to be (by
    /// any process sharing the database).
    pub fn delayed_event(&self, delay_id: &str) -> Result<Option<DelayedEvent>> {
        Ok(self
            .stored(delay_id)?
            .filter(|s| s.record.claim.is_none())
            .map(|s| s.record.event))
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
        // On a shared database only the leader runs the timer; the change wakes it.
        if !self.storage.is_shared() {
            self.start_delayed_events();
        }
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
    /// delay id is the authorisation (the newer MSC4140 per-action endpoints). Of the
    /// processes sharing the database, whoever swaps the record first acts; the others
    /// answer 404, as for an event already sent.
    #[tracing::instrument(skip(self))]
    pub async fn update_delayed(
        self: &Arc<Self>,
        delay_id: &str,
        action: DelayedAction,
        requester: Option<&UserId>,
    ) -> Result<()> {
        let (before, after) = {
            let mut inflight = self.inflight();
            if inflight.contains(delay_id) {
                return Err(not_found());
            }
            let swapped = self.swap_for(delay_id, action, requester)?;
            if action == DelayedAction::Send {
                inflight.insert(delay_id.to_owned());
            }
            swapped
        };
        let trees = &self.storage.trees;
        match action {
            DelayedAction::Cancel => self.remove_delayed(&after.record.event)?,
            DelayedAction::Restart => {
                let mut batch = Batch::new();
                batch.remove(
                    &trees.delayed_by_deadline,
                    &deadline_key(before.record.event.deadline(), delay_id),
                );
                batch.insert(
                    &trees.delayed_by_deadline,
                    &deadline_key(after.record.event.deadline(), delay_id),
                    b"",
                );
                self.storage.commit(batch)?;
            }
            DelayedAction::Send => {}
        }
        self.delayed.wake.notify_one();
        match action {
            DelayedAction::Send => self.fire(after).await,
            _ => self.storage.durable().await,
        }
    }

    /// Swaps the unclaimed record of `delay_id` for what `action` makes of it — claimed to
    /// send or to cancel, or restarted — reading it again when someone else changed it in
    /// between; returns the record before and after. 404 when there is none (or none of
    /// `requester`'s), or it is claimed.
    fn swap_for(
        &self,
        delay_id: &str,
        action: DelayedAction,
        requester: Option<&UserId>,
    ) -> Result<(Stored, Stored)> {
        for _ in 0..MAX_SWAPS {
            let stored = self
                .stored(delay_id)?
                .filter(|s| s.record.claim.is_none())
                .ok_or_else(not_found)?;
            if requester.is_some_and(|r| r != stored.record.event.user_id) {
                return Err(not_found());
            }
            let now = now_ms();
            let swapped = match action {
                DelayedAction::Cancel => self.claim(&stored, Intent::Cancel, now)?,
                DelayedAction::Send => self.claim(&stored, Intent::Send, now)?,
                DelayedAction::Restart => {
                    let restarted = Record {
                        event: DelayedEvent {
                            running_since: now,
                            ..stored.record.event.clone()
                        },
                        claim: None,
                    };
                    self.swap(&stored, restarted)?
                }
            };
            if let Some(after) = swapped {
                return Ok((stored, after));
            }
        }
        Err(Error::internal(format!(
            "delayed event {delay_id} kept changing while being updated"
        )))
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
            // Not a claim (the removal commits with the consumer's position): when a
            // process claims the event first, it finds its record gone under the room's
            // lock and sends nothing, or has sent it already; once either way.
            match self.stored(&id)?.map(|s| s.record) {
                // Being sent (or cancelled) by a process: as one in flight here.
                Some(Record { claim: Some(_), .. }) => {}
                Some(Record { event, .. }) if event.user_id != sender => {
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

#[cfg(test)]
mod tests;
