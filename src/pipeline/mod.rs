//! The event pipeline: what happens after an event is appended.
//!
//! `append` builds, authorises and checks an event against the room policies under the
//! room lock, then applies it. Once a group commit has made it durable (the rooms
//! service's durable watermark), an ordered list of **consumers** handles it, each in its
//! own task with its own durable position (`pipeline/<name>` in the `meta` tree), so a
//! consumer resumes where it stopped after a crash or restart:
//!
//! 1. `push` — push-rule evaluation, notification records and unread counts, then
//!    deliveries to push gateways (only once its records are durable);
//! 2. `delayed_events` — cancels other users' pending delayed state events that a new
//!    state event supersedes;
//! 3. `sync_notifier` — marks the events visible to readers and wakes the long-polling
//!    syncs of the users they concern;
//! 4. `group_dissolution` (`crate::purge`) — after `sync_notifier`: purges a group whose
//!    last member left, once that leave is visible.
//!
//! A consumer's position is committed with its own writes; a round with nothing to write
//! that is safe to see again skips the commit ([`Checkpoint::skip`]) and the runner stores
//! the position lazily, so a message costs no commit per consumer. The consumers read the
//! stream through one window of the events read last ([`recent`]), so the consumers
//! behind the first read it from memory.
//!
//! A consumer may wait for another (`after`): the sync notifier runs after push and
//! delayed events, so a woken sync already sees the new unread counts. Writers
//! (`RoomsService::send`) return once the event is visible. A consumer that fails is
//! retried with backoff without holding up the consumers that do not depend on it.
//! Consumers that readers do not wait for (application services, delivery receipts) are
//! registered without `after` on the gating chain.
//!
//! When several processes share the database, a consumer's [`Scope`] says where it runs:
//! most run once for the whole cluster, on the process holding the `leader` lease
//! ([`Pipeline::start_cluster`]), and commit their position every round; the sync notifier
//! runs in every process (each wakes its own long polls) from the position where the
//! process started, kept in memory. Another process's consumer positions reach this one
//! through the change feed, so a local consumer that waits for one of them moves on
//! when it does.

mod recent;
mod wake;

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

pub use self::wake::SyncNotifier;
use crate::{
    events::Pdu,
    rooms::RoomsService,
    storage::{keys, Batch, Storage},
    Error, Result,
};

/// An event handed to consumers: its stream position and the event.
#[derive(Clone)]
pub struct Appended {
    /// The event's timeline stream position.
    pub pos: u64,
    /// The event.
    pub pdu: Arc<Pdu>,
}

/// A consumer's new position: a batch that records it, to be committed atomically with
/// the consumer's own writes — or, when the consumer has nothing of its own to write and
/// the events are safe to hand it again, left to the runner ([`Checkpoint::skip`]).
pub struct Checkpoint {
    end: u64,
    batch: Batch,
    skipped: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpoint {
    /// The consumer wrote nothing for these events, and handling them again after a
    /// restart changes nothing (they concern it not, or what it did is idempotent). The
    /// runner then stores the position at most once per [`LAZY_POSITION`] instead of
    /// committing a batch per round: the commit that no reader needs.
    pub fn skip(self) -> Result<()> {
        self.skipped
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The position the consumer will be at: every event up to it is handled.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The batch to add the consumer's own writes to.
    pub fn batch(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// The batch to commit.
    pub fn into_batch(self) -> Batch {
        self.batch
    }
}

/// Where a consumer runs when several processes share the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Once for the cluster, on the leader.
    Cluster,
    /// In every process (its position is not stored).
    Process,
}

/// Work that follows every durable event, in stream order.
pub trait EventConsumer: Send + Sync + 'static {
    /// A stable name: the key of the consumer's durable position.
    fn name(&self) -> &'static str;

    /// Where it runs on a shared database (once for the cluster unless it says so).
    fn scope(&self) -> Scope {
        Scope::Cluster
    }

    /// Handles a batch of events (oldest first, maybe empty when events were purged).
    /// `checkpoint` records the consumer's new position: commit it, atomically with the
    /// consumer's own writes, before returning `Ok`. On `Err` the same events come again.
    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Events handed to a consumer at once, at most.
const BATCH: usize = 256;
/// How often, at most, the runner stores the position of a consumer that skips its
/// checkpoints ([`Checkpoint::skip`]): after a crash it handles at most this much again.
const LAZY_POSITION: Duration = Duration::from_secs(1);
/// Longest pause between retries of a failing consumer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Stage {
    consumer: Arc<dyn EventConsumer>,
    after: Option<usize>,
    progress: watch::Sender<u64>,
}

/// The ordered consumers and their tasks.
pub struct Pipeline {
    storage: Arc<Storage>,
    rooms: Arc<RoomsService>,
    stages: Vec<Stage>,
    /// The stretch of the stream read last, for the consumers behind.
    recent: recent::Recent<Arc<Pdu>>,
    started: std::sync::Once,
    cluster_started: std::sync::Once,
}

/// Builds a [`Pipeline`] in order.
pub struct PipelineBuilder {
    pipeline: Pipeline,
}

impl PipelineBuilder {
    /// Adds a consumer; with `after`, it only handles events that the named (earlier)
    /// consumer has handled.
    pub fn consumer(
        mut self,
        consumer: Arc<dyn EventConsumer>,
        after: Option<&str>,
    ) -> Result<PipelineBuilder> {
        let after = match after {
            Some(name) => Some(
                self.pipeline
                    .stages
                    .iter()
                    .position(|s| s.consumer.name() == name)
                    .ok_or_else(|| Error::internal(format!("pipeline: no consumer {name}")))?,
            ),
            None => None,
        };
        let shared = self.pipeline.storage.is_shared();
        if shared && consumer.scope() == Scope::Cluster {
            // Its progress on the leader, as the leader commits it.
            let key = Pipeline::position_key(consumer.name());
            let meta = self.pipeline.storage.trees.meta.downgrade();
            let progress = watch::Sender::new(0);
            let follow = progress.clone();
            self.pipeline.storage.on_remote_position(
                &self.pipeline.storage.trees.meta,
                move |changed| {
                    let touched = match changed {
                        crate::storage::Changed::Keys(keys) => keys.contains(&key.as_slice()),
                        crate::storage::Changed::All => true,
                    };
                    if let (true, Some(Ok(Some(v)))) = (touched, meta.get(&key)) {
                        if let Some(pos) = keys::leading_u64(&v) {
                            follow.send_if_modified(|p| {
                                let advance = pos > *p;
                                if advance {
                                    *p = pos;
                                }
                                advance
                            });
                        }
                    }
                },
            );
            let start = self.pipeline.load_position(consumer.name())?;
            progress.send_if_modified(|p| {
                let advance = start > *p;
                if advance {
                    *p = start;
                }
                advance
            });
            self.pipeline.stages.push(Stage {
                consumer,
                after,
                progress,
            });
            return Ok(self);
        }
        let start = if shared {
            // Every process starts from what is stored when it starts, all of it visible.
            self.pipeline.rooms.applied_pos()
        } else {
            self.pipeline.load_position(consumer.name())?
        };
        self.pipeline.stages.push(Stage {
            consumer,
            after,
            progress: watch::Sender::new(start),
        });
        Ok(self)
    }

    /// The finished pipeline (not running yet: see [`Pipeline::start`]).
    pub fn build(self) -> Arc<Pipeline> {
        Arc::new(self.pipeline)
    }
}

impl Pipeline {
    /// An empty pipeline over the rooms' event stream.
    pub fn builder(storage: Arc<Storage>, rooms: Arc<RoomsService>) -> PipelineBuilder {
        PipelineBuilder {
            pipeline: Pipeline {
                storage,
                rooms,
                stages: Vec::new(),
                recent: recent::Recent::new(),
                started: std::sync::Once::new(),
                cluster_started: std::sync::Once::new(),
            },
        }
    }

    fn position_key(name: &str) -> Vec<u8> {
        keys::strs(&["pipeline", name])
    }

    /// A consumer's stored position; a consumer seen for the first time starts at the
    /// current end of the stream (it does not replay history).
    fn load_position(&self, name: &str) -> Result<u64> {
        match self.storage.trees.meta.get(&Self::position_key(name))? {
            Some(v) => keys::leading_u64(&v)
                .ok_or_else(|| Error::Storage(format!("pipeline position of {name}"))),
            None => Ok(self.rooms.applied_pos()),
        }
    }

    /// Where each consumer is now: `(name, position)` in pipeline order.
    pub fn positions(&self) -> Vec<(&'static str, u64)> {
        self.stages
            .iter()
            .map(|s| (s.consumer.name(), *s.progress.borrow()))
            .collect()
    }

    /// Starts one task per consumer (once; needs a runtime) — on a shared database, per
    /// process consumers only (see [`Pipeline::start_cluster`]).
    pub fn start(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let shared = self.storage.is_shared();
        self.started.call_once(|| {
            for (index, stage) in self.stages.iter().enumerate() {
                if !shared || stage.consumer.scope() == Scope::Process {
                    tokio::spawn(run_stage(Arc::downgrade(self), index));
                }
            }
        });
    }

    /// On a shared database, starts the consumers that run once for the cluster (once;
    /// the leader calls it): each from its stored position, which an earlier leader may
    /// have moved.
    pub fn start_cluster(self: &Arc<Self>) -> Result<()> {
        if !self.storage.is_shared() || tokio::runtime::Handle::try_current().is_err() {
            return Ok(());
        }
        for stage in &self.stages {
            if stage.consumer.scope() == Scope::Cluster {
                let stored = self.load_position(stage.consumer.name())?;
                stage.progress.send_if_modified(|p| {
                    let advance = stored > *p;
                    if advance {
                        *p = stored;
                    }
                    advance
                });
            }
        }
        self.cluster_started.call_once(|| {
            for (index, stage) in self.stages.iter().enumerate() {
                if stage.consumer.scope() == Scope::Cluster {
                    tokio::spawn(run_stage(Arc::downgrade(self), index));
                }
            }
        });
        Ok(())
    }
}

/// The loop of one consumer: wait for durable events its predecessor has handled, hand
/// them over in batches, record the position, retry on failure.
async fn run_stage(pipeline: std::sync::Weak<Pipeline>, index: usize) {
    let Some(p) = pipeline.upgrade() else {
        return;
    };
    let stage = &p.stages[index];
    let name = stage.consumer.name();
    // On a shared database, other processes wait for a cluster consumer's stored
    // position: store it every round; a per-process consumer's is never stored.
    let (lazy, stores) = match (p.storage.is_shared(), stage.consumer.scope()) {
        (false, _) => (LAZY_POSITION, true),
        (true, Scope::Cluster) => (Duration::ZERO, true),
        (true, Scope::Process) => (Duration::ZERO, false),
    };
    let mut durable = p.rooms.durable_positions();
    let mut before = stage.after.map(|i| p.stages[i].progress.subscribe());
    let mut cursor = *stage.progress.borrow();
    let mut failures = 0u32;
    // The last position stored and when, for skipped checkpoints.
    let mut stored = (cursor, std::time::Instant::now());
    drop(p);
    loop {
        let Some(p) = pipeline.upgrade() else {
            return;
        };
        let stage = &p.stages[index];
        let mut limit = *durable.borrow_and_update();
        if let Some(before) = &mut before {
            limit = limit.min(*before.borrow_and_update());
        }
        if limit <= cursor {
            drop(p);
            let changed = match &mut before {
                Some(before) => tokio::select! {
                    r = durable.changed() => r.is_ok(),
                    r = before.changed() => r.is_ok(),
                },
                None => durable.changed().await.is_ok(),
            };
            if !changed {
                return;
            }
            continue;
        }
        let read = p.recent.read(cursor, limit, BATCH, |after, upto, most| {
            p.rooms.appended_between(after, upto, most)
        });
        let result = match read {
            Ok(events) => {
                let end = match events.last() {
                    Some((last, _)) if events.len() == BATCH => *last,
                    _ => limit,
                };
                let events: Vec<Appended> = events
                    .into_iter()
                    .map(|(pos, pdu)| Appended { pos, pdu })
                    .collect();
                let mut batch = Batch::new();
                batch.insert(
                    &p.storage.trees.meta,
                    &Pipeline::position_key(name),
                    &end.to_be_bytes(),
                );
                let skipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let checkpoint = Checkpoint {
                    end,
                    batch,
                    skipped: skipped.clone(),
                };
                let handled = match failpoint(name) {
                    Ok(()) => stage.consumer.consume(&events, checkpoint).await,
                    Err(e) => Err(e),
                };
                match handled {
                    Ok(()) if skipped.load(std::sync::atomic::Ordering::Acquire) => {
                        if stores && stored.1.elapsed() >= lazy && stored.0 != end {
                            let mut batch = Batch::new();
                            batch.insert(
                                &p.storage.trees.meta,
                                &Pipeline::position_key(name),
                                &end.to_be_bytes(),
                            );
                            p.storage.commit(batch).map(|()| {
                                stored = (end, std::time::Instant::now());
                                end
                            })
                        } else {
                            Ok(end)
                        }
                    }
                    Ok(()) => {
                        stored = (end, std::time::Instant::now());
                        Ok(end)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(end) => {
                cursor = end;
                failures = 0;
                stage.progress.send_replace(end);
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(50 << failures.min(10)).min(MAX_BACKOFF);
                tracing::error!(consumer = name, error = %e, retry_in_ms = pause.as_millis() as u64, "event consumer failed");
                drop(p);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The test hook in front of every consumer: `pipeline.<name>` (`return` fails the batch).
fn failpoint(name: &str) -> Result<()> {
    let point = format!("pipeline.{name}");
    fail::fail_point!(&point, |_| Err(Error::internal(format!(
        "failpoint {point}"
    ))));
    let _ = point;
    Ok(())
}

#[cfg(test)]
mod tests;
