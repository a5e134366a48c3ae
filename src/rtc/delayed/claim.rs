//! Claims: the decision to send or cancel a scheduled event is a compare-and-swap of its
//! stored record, so that of several processes sharing the database (the leader's timer,
//! another process serving a client's `send`, `cancel` or `restart`) exactly one acts.
//!
//! A claim swaps the record, byte for byte as it was read, for the same record marked
//! claimed — to send or to cancel, with the time of the claim. Whoever loses the swap
//! reads the event as gone (404 to a client, nothing to do for the timer), as if it had
//! been sent already. A claim to send is committed before the event is sent; the record
//! and its indexes are removed in one batch after it. A restart swaps the record for the
//! restarted one the same way, then moves its deadline entry.
//!
//! A process that dies between its claim and the removal leaves the claimed record
//! behind, still in the deadline index, so the event is never lost: the timer takes over
//! a claim to send once it is stale (at once when no other process shares the database —
//! the claimer is gone —, [`CLAIM_TIMEOUT_MS`] after the claim otherwise) and sends the
//! event then; it finishes a claim to cancel whenever it meets one. As before claims
//! existed, a crash after the send and before the removal sends the event again.
//!
//! The in-memory `inflight` set stays the fast path within a process: an event this
//! process is sending is not read, claimed or taken over by its own timer.

use serde::{Deserialize, Serialize};

use super::DelayedEvent;
use crate::{rooms::NewEvent, rtc::RtcService, storage::Batch, Result};

/// How long a claim to send stands, on a shared database, before the leader's timer takes
/// it for the claim of a process that died and sends the event itself. A sender still
/// alive that long after its claim (waiting for the room) checks its claim under the
/// room's lock and stands down.
pub(super) const CLAIM_TIMEOUT_MS: u64 = 30_000;

/// What a claim is for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum Intent {
    /// The claimer sends the event, then removes it.
    Send,
    /// The claimer removes the event.
    Cancel,
}

/// The mark of a claimed record.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Claim {
    /// What the claimer does with the event.
    pub(super) intent: Intent,
    /// When it claimed it (ms since the epoch).
    pub(super) at: u64,
}

/// A scheduled event as stored: the event, and the claim on it if there is one. An
/// unclaimed record is stored exactly as a [`DelayedEvent`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct Record {
    /// The event.
    #[serde(flatten)]
    pub(super) event: DelayedEvent,
    /// Set once a process took the event to send or cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) claim: Option<Claim>,
}

/// A record as read: decoded, and the exact bytes a swap compares against.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    /// The decoded record.
    pub(super) record: Record,
    /// The stored bytes.
    raw: Vec<u8>,
}

impl RtcService {
    /// Reads a scheduled event's record, claimed or not.
    pub(super) fn stored(&self, delay_id: &str) -> Result<Option<Stored>> {
        let Some(raw) = self.storage.trees.delayed_events.get(delay_id.as_bytes())? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&raw)?;
        Ok(Some(Stored { record, raw }))
    }

    /// Replaces the record `stored` was read as with `new`, if nobody changed it since
    /// (on every process sharing the database); returns the new record when it did.
    pub(super) fn swap(&self, stored: &Stored, new: Record) -> Result<Option<Stored>> {
        let raw = serde_json::to_vec(&new)?;
        let won = self.storage.trees.delayed_events.compare_and_swap(
            stored.record.event.delay_id.as_bytes(),
            Some(&stored.raw),
            Some(raw.clone()),
        )?;
        Ok(won.then_some(Stored { record: new, raw }))
    }

    /// Claims the event `stored` was read as for `intent`, at `now`; `None` when the
    /// record changed since it was read (claimed, restarted or removed by someone else).
    pub(super) fn claim(
        &self,
        stored: &Stored,
        intent: Intent,
        now: u64,
    ) -> Result<Option<Stored>> {
        let claimed = Record {
            event: stored.record.event.clone(),
            claim: Some(Claim { intent, at: now }),
        };
        self.swap(stored, claimed)
    }

    /// Whether a claim to send that this process is not working on was left by a process
    /// that died: always when no other process shares the database, otherwise once it
    /// is [`CLAIM_TIMEOUT_MS`] old.
    pub(super) fn is_stale(&self, claim: &Claim, now: u64) -> bool {
        !self.storage.is_shared() || claim.at.saturating_add(CLAIM_TIMEOUT_MS) <= now
    }

    /// Removes a scheduled event and its indexes at once.
    pub(super) fn remove_delayed(&self, event: &DelayedEvent) -> Result<()> {
        let mut batch = Batch::new();
        self.remove_delayed_into(event, &mut batch);
        self.storage.commit(batch)
    }

    /// Forgets that this process is sending `delay_id` and lets the timer look again.
    fn release(&self, delay_id: &str) {
        self.inflight().remove(delay_id);
        self.delayed.wake.notify_one();
    }

    /// Sends an event this process claimed (and marked in flight), then removes it. A
    /// failure to send (the user left, power levels changed) drops the event, as Synapse
    /// does. When the claim is no longer this process's by the time it holds the room's
    /// lock (taken over as stale, or the room purged), it sends nothing.
    pub(super) async fn fire(&self, claimed: Stored) -> Result<()> {
        let event = &claimed.record.event;
        let new_event = match &event.state_key {
            Some(key) => NewEvent::state(event.kind.clone(), key.clone(), event.content.clone()),
            None => NewEvent::message(event.kind.clone(), event.content.clone()),
        };
        let guard = self.rooms.lock(&event.room_id).await;
        let current = self
            .storage
            .trees
            .delayed_events
            .get(event.delay_id.as_bytes());
        let result = match current {
            Ok(Some(raw)) if raw == claimed.raw => {
                self.rooms.send(guard, &event.user_id, new_event).await
            }
            Ok(_) => {
                drop(guard);
                tracing::debug!(delay_id = %event.delay_id, "delayed event no longer ours to send");
                self.release(&event.delay_id);
                return Ok(());
            }
            Err(e) => {
                // The claim stays: the timer takes it over once stale.
                drop(guard);
                self.release(&event.delay_id);
                return Err(e);
            }
        };
        #[cfg(test)]
        if result.is_ok() {
            self.delayed
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut batch = Batch::new();
        self.remove_delayed_into(event, &mut batch);
        let removed = self.storage.commit_durable(batch).await;
        self.release(&event.delay_id);
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
}
