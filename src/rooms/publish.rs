//! Publication of appended events. An event is *applied* under the room lock (readable by
//! id, not yet announced), becomes *durable* with the next group commit, and *visible* to
//! syncs once the pipeline's consumers that readers depend on (push counts, the sync
//! notifier) have handled it. No client is woken for, or shown in a sync, an event that a
//! crash can still lose.
//!
//! Positions are published in order: the durable watermark covers every position up to
//! it. An operation that appends several events which readers must see together (room
//! creation, upgrades) takes a [`PublicationHold`]: nothing from its first position on is
//! published until the hold is dropped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Once, Weak,
    },
};

use tokio::sync::{watch, Notify};

use super::RoomsService;
use crate::{storage::Storage, Error, Result};

/// The applied, durable and visible watermarks of the timeline stream.
pub(super) struct Publication {
    /// The last applied position.
    applied: AtomicU64,
    /// First position of each operation still writing, with how many hold it.
    holds: Mutex<BTreeMap<u64, usize>>,
    /// On a database shared with other processes: positions committed (here or by
    /// another process, as the change feed announced them) beyond `applied`, which
    /// moves only over an unbroken run — a position becomes readable here only once this
    /// process has taken in every event before it.
    ahead: Mutex<BTreeSet<u64>>,
    /// Holds of other processes (their stored `publication_hold` keys): the first
    /// position each keeps unpublished and when it arrived. One whose process died is
    /// dropped after [`REMOTE_HOLD_LIMIT`].
    remote_holds: Mutex<HashMap<Vec<u8>, (u64, std::time::Instant)>>,
    /// Wakes the publisher task.
    wake: Notify,
    /// Every position up to this one is on disk.
    durable: watch::Sender<u64>,
    /// Every position up to this one may be shown to readers.
    visible: watch::Sender<u64>,
    /// The last flush failure (a counter and its message), reported to waiting writers.
    failed: watch::Sender<(u64, Option<String>)>,
    started: Once,
}

/// Keeps positions from `first` on unpublished while it lives.
pub struct PublicationHold {
    publication: Arc<Publication>,
    first: u64,
    /// On a shared database, the stored hold that other processes honour too (its key),
    /// removed with this one.
    stored: Option<(Arc<Storage>, Vec<u8>)>,
}

/// The `meta` key prefix of stored publication holds.
const HOLD_PREFIX: &str = "publication_hold";
/// How long another process's hold is honoured at most (a room creation takes
/// milliseconds; a process that died holding one leaves its key behind).
const REMOTE_HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for PublicationHold {
    fn drop(&mut self) {
        let mut holds = self
            .publication
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = holds.get_mut(&self.first) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.first);
            }
        }
        drop(holds);
        if let Some((storage, key)) = self.stored.take() {
            let mut batch = crate::storage::Batch::new();
            batch.remove(&storage.trees.meta, &key);
            if let Err(e) = storage.commit(batch) {
                tracing::error!(error = %e, "removing a stored publication hold");
            }
        }
        self.publication.wake.notify_one();
    }
}

impl Publication {
    /// Everything up to `last` (read back from storage at start) is durable and visible.
    pub(super) fn new(last: u64) -> Arc<Publication> {
        Arc::new(Publication {
            applied: AtomicU64::new(last),
            holds: Mutex::default(),
            ahead: Mutex::default(),
            remote_holds: Mutex::default(),
            wake: Notify::new(),
            durable: watch::Sender::new(last),
            visible: watch::Sender::new(last),
            failed: watch::Sender::new((0, None)),
            started: Once::new(),
        })
    }

    /// Records a newly applied position (called with the stream lock held, in order).
    pub(super) fn applied(self: &Arc<Self>, pos: u64, storage: &Arc<Storage>) {
        self.applied.store(pos, Ordering::Release);
        self.start(storage);
        self.wake.notify_one();
    }

    /// Records a position committed on a shared database, by this process or another:
    /// `applied` moves over every position known without a gap.
    pub(super) fn committed(self: &Arc<Self>, pos: u64, storage: &Arc<Storage>) {
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        let mut applied = self.applied.load(Ordering::Acquire);
        if pos <= applied {
            return;
        }
        ahead.insert(pos);
        while ahead.remove(&(applied + 1)) {
            applied += 1;
        }
        self.applied.store(applied, Ordering::Release);
        drop(ahead);
        self.start(storage);
        self.wake.notify_one();
    }

    /// Another process stored (`Some(first)`) or removed a publication hold.
    pub(super) fn remote_hold(&self, key: &[u8], first: Option<u64>) {
        let mut remote = self.remote_holds.lock().unwrap_or_else(|e| e.into_inner());
        match first {
            Some(first) => {
                remote.insert(key.to_vec(), (first, std::time::Instant::now()));
            }
            None => {
                remote.remove(key);
            }
        }
        drop(remote);
        self.wake.notify_one();
    }

    /// The highest position that may be published now.
    fn publishable(&self) -> u64 {
        let applied = self.applied.load(Ordering::Acquire);
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = holds.keys().next().copied();
        drop(holds);
        let mut remote = self.remote_holds.lock().unwrap_or_else(|e| e.into_inner());
        remote.retain(|_, (_, since)| {
            let live = since.elapsed() < REMOTE_HOLD_LIMIT;
            if !live {
                tracing::warn!(
                    "dropping another process's publication hold: it outlived its limit"
                );
            }
            live
        });
        if let Some(remote_first) = remote.values().map(|(first, _)| *first).min() {
            first = Some(first.map_or(remote_first, |f| f.min(remote_first)));
        }
        match first {
            Some(first) => applied.min(first.saturating_sub(1)),
            None => applied,
        }
    }

    /// Starts the publisher task once, when a runtime is there to run it.
    fn start(self: &Arc<Self>, storage: &Arc<Storage>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.started.call_once(|| {
            tokio::spawn(publisher(self.clone(), Arc::downgrade(storage)));
        });
    }
}

/// Moves the durable watermark: waits for a flush covering what is publishable, then
/// announces it. Many appends share one flush. Ends with the storage.
async fn publisher(p: Arc<Publication>, storage: Weak<Storage>) {
    loop {
        let wake = p.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let target = p.publishable();
        if target <= *p.durable.borrow() {
            // Woken by every change; the periodic look drops holds of dead processes.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wake).await;
            continue;
        }
        let Some(s) = storage.upgrade() else {
            return;
        };
        let flushed = s.durable().await;
        drop(s);
        match flushed {
            Ok(()) => {
                p.durable.send_if_modified(|d| {
                    let advance = target > *d;
                    if advance {
                        *d = target;
                    }
                    advance
                });
            }
            Err(e) => {
                p.failed
                    .send_modify(|(n, last)| (*n, *last) = (*n + 1, Some(e.to_string())));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

impl RoomsService {
    /// The last timeline position shown to readers: every event up to it is durable and
    /// has been handled by the consumers readers depend on.
    pub fn current_pos(&self) -> u64 {
        *self.publication.visible.borrow()
    }

    /// Whether other processes share the database (and so write to these rooms too).
    pub fn is_shared(&self) -> bool {
        self.storage.is_shared()
    }

    /// Starts publishing (needs a runtime; appends and waits start it too). A process on
    /// a shared database may see only other processes' events: it starts at once.
    pub fn start_publication(&self) {
        self.publication.start(&self.storage);
    }

    /// The last applied timeline position (maybe not yet durable or visible).
    pub fn applied_pos(&self) -> u64 {
        self.publication.applied.load(Ordering::Acquire)
    }

    /// The durable watermark, for the pipeline's consumers.
    pub fn durable_positions(&self) -> watch::Receiver<u64> {
        self.publication.durable.subscribe()
    }

    /// The last durable timeline position.
    pub fn durable_pos(&self) -> u64 {
        *self.publication.durable.borrow()
    }

    /// Lets readers see everything up to `pos` (the pipeline, once the consumers readers
    /// depend on have handled it). Never moves backwards.
    pub fn mark_visible(&self, pos: u64) {
        self.publication.visible.send_if_modified(|v| {
            let advance = pos > *v;
            if advance {
                *v = pos;
            }
            advance
        });
    }

    /// Waits until `pos` is durable and visible; fails when a flush fails meanwhile.
    pub async fn wait_visible(&self, pos: u64) -> Result<()> {
        let mut visible = self.publication.visible.subscribe();
        let mut failed = self.publication.failed.subscribe();
        failed.borrow_and_update();
        self.publication.start(&self.storage);
        tokio::select! {
            r = visible.wait_for(|v| *v >= pos) => {
                r.map(|_| ()).map_err(|e| Error::internal(format!("publication: {e}")))
            }
            r = failed.changed() => {
                let message = match r {
                    Ok(()) => failed.borrow().1.clone().unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                Err(Error::Storage(format!("storage flush failed: {message}")))
            }
        }
    }

    /// Keeps every event appended from now on unpublished until the hold is dropped, so
    /// readers see a multi-event operation whole.
    pub fn hold_publication(&self) -> PublicationHold {
        let last = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = *last + 1;
        let mut stored = None;
        if self.storage.is_shared() {
            // Every position drawn from now on is past the counter; other processes hold
            // them too until this hold's key is gone.
            match self.store_hold() {
                Ok((counter_first, key)) => {
                    first = first.max(counter_first);
                    stored = Some((self.storage.clone(), key));
                }
                Err(e) => tracing::error!(error = %e, "storing a publication hold"),
            }
        }
        *self
            .publication
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(first)
            .or_default() += 1;
        drop(last);
        PublicationHold {
            publication: self.publication.clone(),
            first,
            stored,
        }
    }

    /// Stores a publication hold for other processes: its first position (one past the
    /// timeline counter) and its key.
    fn store_hold(&self) -> Result<(u64, Vec<u8>)> {
        let meta = &self.storage.trees.meta;
        let counter = meta
            .get(super::cluster::TIMELINE_POS)?
            .as_deref()
            .and_then(crate::storage::keys::leading_u64)
            .unwrap_or(0);
        let first = counter + 1;
        let key =
            crate::storage::keys::strs(&[HOLD_PREFIX, &format!("{:016x}", rand::random::<u64>())]);
        meta.insert(&key, &first.to_be_bytes())?;
        Ok((first, key))
    }

    /// Another process stored or removed a publication hold (`key` in `meta`).
    pub(super) fn remote_publication_hold(&self, key: &[u8]) {
        if !key.starts_with(&crate::storage::keys::strs(&[HOLD_PREFIX])) {
            return;
        }
        let first = match self.storage.trees.meta.get(key) {
            Ok(value) => value.as_deref().and_then(crate::storage::keys::leading_u64),
            Err(e) => {
                tracing::error!(error = %e, "reading another process's publication hold");
                return;
            }
        };
        self.publication.remote_hold(key, first);
    }
}
