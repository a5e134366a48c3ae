//! Group commit: writers apply their batch, then wait for a flush that started after it.
//! One background task runs flushes back to back, so N concurrent writers cost one fsync.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::sync::{watch, Notify};

use super::engine::Engine;
use crate::{Error, Result};

/// The flushed generation and whether that flush failed.
type Flushed = (u64, Option<String>);

pub(super) struct GroupCommit {
    engine: Arc<dyn Engine>,
    requested: Arc<AtomicU64>,
    wake: Arc<Notify>,
    flushed: watch::Receiver<Flushed>,
    flushed_tx: Arc<watch::Sender<Flushed>>,
    started: std::sync::Once,
}

impl GroupCommit {
    pub(super) fn new(engine: Arc<dyn Engine>) -> GroupCommit {
        let (tx, rx) = watch::channel((0, None));
        GroupCommit {
            engine,
            requested: Arc::new(AtomicU64::new(0)),
            wake: Arc::new(Notify::new()),
            flushed: rx,
            flushed_tx: Arc::new(tx),
            started: std::sync::Once::new(),
        }
    }

    fn start(&self) {
        self.started.call_once(|| {
            // Weak: the flusher must not keep the database open once storage is dropped.
            let engine = Arc::downgrade(&self.engine);
            let requested = self.requested.clone();
            let wake = self.wake.clone();
            let tx = self.flushed_tx.clone();
            tokio::spawn(async move {
                let mut done = 0;
                loop {
                    let target = requested.load(Ordering::Acquire);
                    if target == done {
                        wake.notified().await;
                        continue;
                    }
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    let started = std::time::Instant::now();
                    let result = tokio::task::spawn_blocking(move || {
                        // Tests hold every flush here (`pause`) to see what readers see
                        // of writes that are not yet durable.
                        fail::fail_point!("storage.flush");
                        engine.flush()
                    })
                    .await
                    .map_err(|e| Error::internal(e.to_string()))
                    .and_then(|r| r);
                    metrics::histogram!(crate::metrics::STORAGE_FLUSH_DURATION)
                        .record(started.elapsed().as_secs_f64());
                    let failure = result.err().map(|e| {
                        tracing::error!(error = %e, "storage flush failed");
                        e.to_string()
                    });
                    done = target;
                    if tx.send((target, failure)).is_err() {
                        return;
                    }
                }
            });
        });
    }

    /// Returns once a flush that began after this call has completed.
    pub(super) async fn wait(&self) -> Result<()> {
        self.start();
        let target = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        let mut rx = self.flushed.clone();
        let state = rx
            .wait_for(|(gen, _)| *gen >= target)
            .await
            .map_err(|_| Error::Storage("flusher stopped".into()))?;
        match &state.1 {
            Some(e) => Err(Error::Storage(format!("flush failed: {e}"))),
            None => Ok(()),
        }
    }
}
