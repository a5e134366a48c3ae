//! The timer: one tokio task that sleeps until the earliest deadline (or the moment a
//! claim goes stale) or until woken by a change, claims what is due and sends it. There is
//! no polling loop.
//!
//! Alone on its database, a process runs it from its start (scheduling an event starts it
//! too). On a database shared by several processes only the leader runs it: its start
//! registers a wake-up for every change other processes make to the deadline index
//! (events scheduled, restarted, cancelled or sent there).

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::sync::Notify;

use super::{
    claim::{Claim, Intent, Stored},
    deadline_key,
};
use crate::{
    rtc::RtcService,
    storage::{keys, Batch},
    users::now_ms,
    Result,
};

/// The earlier of `next` and `at`.
fn earliest(next: Option<u64>, at: u64) -> Option<u64> {
    Some(next.map_or(at, |n| n.min(at)))
}

impl RtcService {
    /// Starts the timer task (once; needs a tokio runtime). Events that came due while
    /// no timer ran fire at once. `serve` calls it at start (admin commands on the same
    /// data dir do not) — on a shared database, the leader only; scheduling an event calls
    /// it too when the database is not shared.
    pub fn start_delayed_events(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.delayed.started.call_once(|| {
            if self.storage.is_shared() {
                // Before the timer's first read, so that no change goes unseen.
                let wake = Arc::downgrade(&self.delayed.wake);
                self.storage.on_remote_position(
                    &self.storage.trees.delayed_by_deadline,
                    move |_| {
                        if let Some(wake) = wake.upgrade() {
                            wake.notify_one();
                        }
                    },
                );
            }
            let weak = Arc::downgrade(self);
            let wake = self.delayed.wake.clone();
            tokio::spawn(run_timer(weak, wake));
        });
    }

    /// Claims and sends every event whose deadline has passed; returns when to look again
    /// (ms since the epoch, `now` or earlier for at once; `None`: when woken).
    pub(super) async fn fire_due(&self, now: u64) -> Result<Option<u64>> {
        let mut due = Vec::new();
        // What was claimed before a failure is sent all the same.
        let next = self.claim_due(now, &mut due);
        let fired = !due.is_empty();
        for claimed in due {
            // Failures are logged in `fire`; the event is gone either way.
            let _ = self.fire(claimed).await;
        }
        let next = next?;
        // More may have come due while sending.
        Ok(if fired { Some(now) } else { next })
    }

    /// Claims the events whose deadline has passed into `due` (marked in flight), mending
    /// the deadline index on the way; returns when to look again, as [`Self::fire_due`].
    fn claim_due(&self, now: u64, due: &mut Vec<Stored>) -> Result<Option<u64>> {
        let trees = &self.storage.trees;
        let mut next = None;
        let mut inflight = self.inflight();
        for kv in trees.delayed_by_deadline.scan_prefix(&[]) {
            let (k, _) = kv?;
            let Some(deadline) = keys::leading_u64(&k) else {
                continue;
            };
            if deadline > now {
                next = earliest(next, deadline);
                break;
            }
            let Some(id) = k
                .get(8..)
                .map(keys::split_strs)
                .and_then(|parts| parts.first().map(|s| (*s).to_owned()))
            else {
                continue;
            };
            if inflight.contains(&id) {
                // This process is sending it: `fire` wakes the timer when done.
                continue;
            }
            let Some(stored) = self.stored(&id)? else {
                // A dangling index entry: drop it so the timer does not spin.
                trees.delayed_by_deadline.remove(&k)?;
                continue;
            };
            let event = &stored.record.event;
            if event.deadline() != deadline {
                // A restart swapped the record but has not moved (or died before
                // moving) this entry: move it as the restart does, and look again.
                let mut batch = Batch::new();
                batch.remove(&trees.delayed_by_deadline, &k);
                batch.insert(
                    &trees.delayed_by_deadline,
                    &deadline_key(event.deadline(), &id),
                    b"",
                );
                self.storage.commit(batch)?;
                next = Some(now);
                continue;
            }
            match stored.record.claim {
                Some(Claim {
                    intent: Intent::Cancel,
                    ..
                }) => {
                    // Cancelled: finish the removal its claimer does (or died before).
                    self.remove_delayed(event)?;
                    continue;
                }
                Some(claim) if !self.is_stale(&claim, now) => {
                    // Another process is sending it; take it over if it never does.
                    next = earliest(
                        next,
                        claim.at.saturating_add(super::claim::CLAIM_TIMEOUT_MS),
                    );
                    continue;
                }
                // Unclaimed, or claimed by a process that died.
                _ => {}
            }
            match self.claim(&stored, Intent::Send, now)? {
                Some(claimed) => {
                    inflight.insert(id);
                    due.push(claimed);
                }
                // Someone else changed it meanwhile: look again.
                None => next = Some(now),
            }
        }
        Ok(next)
    }
}

/// The timer: sleeps until the next deadline or a change, fires what is due.
async fn run_timer(service: Weak<RtcService>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        // Register interest before reading the deadlines so no wake-up is missed.
        notified.as_mut().enable();
        let next = {
            let Some(service) = service.upgrade() else {
                return;
            };
            match service.fire_due(now_ms()).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "delayed events: firing failed");
                    Some(now_ms().saturating_add(1000))
                }
            }
        };
        let now = now_ms();
        match next {
            Some(at) if at <= now => tokio::task::yield_now().await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(at - now)) => {}
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}
