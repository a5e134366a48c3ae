//! A persisted stream position: the one allocator behind every stream whose changes are
//! numbered (user data, e2ee, …). A change takes the next position and is committed
//! together with it, so after a restart the counter resumes past everything written;
//! positions become visible to readers in order, only once their batch is applied.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use super::{keys, Batch, Changed, Storage};
use crate::{Error, Result};

/// A stream's last committed position, stored under `key` in the `meta` tree.
pub struct StreamPosition {
    key: &'static [u8],
    /// The last position whose batch is applied: what readers may see. Shared with the
    /// handler that raises it for other processes' commits.
    current: Arc<AtomicU64>,
    /// Serialises "take the next position, commit its batch", and keeps another
    /// process's position from showing before a local commit has run its `committed`.
    lock: Arc<Mutex<()>>,
}

impl StreamPosition {
    /// Reads the persisted position of the stream stored under `key` (0 when new). When
    /// other processes share the database, their commits raise it too — after the
    /// handlers of the caches their batches touched (see [`super::remote`]).
    pub fn load(storage: &Storage, key: &'static [u8]) -> Result<StreamPosition> {
        let current = Arc::new(AtomicU64::new(0));
        let lock = Arc::new(Mutex::new(()));
        if storage.is_shared() {
            let meta = storage.trees.meta.downgrade();
            let raised = current.clone();
            let lock = lock.clone();
            storage.on_remote_position(&storage.trees.meta, move |changed| {
                let touched = match changed {
                    Changed::Keys(keys) => keys.contains(&key),
                    Changed::All => true,
                };
                if !touched {
                    return;
                }
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                match meta.get(key) {
                    Some(Ok(value)) => {
                        let pos = value.as_deref().and_then(keys::leading_u64).unwrap_or(0);
                        raised.fetch_max(pos, Ordering::AcqRel);
                    }
                    Some(Err(e)) => tracing::error!(
                        error = %e,
                        "reading a stream position another process moved"
                    ),
                    None => {}
                }
            });
        }
        let loaded = storage
            .trees
            .meta
            .get(key)?
            .and_then(|v| keys::leading_u64(&v))
            .unwrap_or(0);
        current.fetch_max(loaded, Ordering::AcqRel);
        Ok(StreamPosition { key, current, lock })
    }

    /// Raises the position to `pos` if it is lower: another process's commit at `pos`
    /// was taken in (its indexes are in place).
    pub fn observe(&self, pos: u64) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.current.fetch_max(pos, Ordering::AcqRel);
    }

    /// The newest position readers may see.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Takes the next position, lets `fill` add the writes that use it, and commits them
    /// together with the new position (applied, not yet durable). `committed` runs after
    /// the commit and before the position becomes visible, for in-memory indexes that
    /// readers must find complete. A failing `fill` or commit uses up no position. On a
    /// database shared with other processes the position is drawn in the database, so
    /// every process's positions form one sequence.
    pub fn commit_next(
        &self,
        storage: &Storage,
        fill: impl FnOnce(u64, &mut Batch) -> Result<()>,
        committed: impl FnOnce(u64),
    ) -> Result<u64> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| Error::internal("stream position lock poisoned"))?;
        if storage.is_shared() {
            let next = storage.commit_counted(&storage.trees.meta, self.key, fill)?;
            committed(next);
            self.current.fetch_max(next, Ordering::AcqRel);
            return Ok(next);
        }
        let next = self.current.load(Ordering::Acquire) + 1;
        let mut batch = Batch::new();
        fill(next, &mut batch)?;
        batch.insert(&storage.trees.meta, self.key, &next.to_be_bytes());
        storage.commit(batch)?;
        committed(next);
        self.current.store(next, Ordering::Release);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_each_other_and_survive_a_reload() {
        let storage = Storage::in_memory();
        let pos = StreamPosition::load(&storage, b"test_pos").unwrap();
        assert_eq!(pos.current(), 0);
        let first = pos
            .commit_next(
                &storage,
                |p, b| {
                    b.insert(&storage.trees.meta, b"written", &p.to_be_bytes());
                    Ok(())
                },
                |_| {},
            )
            .unwrap();
        let second = pos.commit_next(&storage, |_, _| Ok(()), |_| {}).unwrap();
        assert_eq!((first, second, pos.current()), (1, 2, 2));
        assert_eq!(
            storage.trees.meta.get(b"written").unwrap(),
            Some(1u64.to_be_bytes().to_vec())
        );
        let reloaded = StreamPosition::load(&storage, b"test_pos").unwrap();
        assert_eq!(reloaded.current(), 2);
    }

    #[test]
    fn a_failed_fill_takes_no_position_and_writes_nothing() {
        let storage = Storage::in_memory();
        let pos = StreamPosition::load(&storage, b"test_pos").unwrap();
        let seen = std::cell::Cell::new(false);
        let err = pos.commit_next(
            &storage,
            |_, b| {
                b.insert(&storage.trees.meta, b"written", b"x");
                Err(Error::bad_request("refused"))
            },
            |_| seen.set(true),
        );
        assert!(err.is_err());
        assert!(!seen.get());
        assert_eq!(pos.current(), 0);
        assert_eq!(storage.trees.meta.get(b"written").unwrap(), None);
        assert_eq!(storage.trees.meta.get(b"test_pos").unwrap(), None);
    }

    #[test]
    fn processes_sharing_a_database_draw_one_sequence() {
        let url = crate::storage::postgres_engine::test_database();
        let a = Arc::new(Storage::open_postgres_shared(&url, 2).unwrap());
        let b = Arc::new(Storage::open_postgres_shared(&url, 2).unwrap());
        let pos_a = Arc::new(StreamPosition::load(&a, b"test_pos").unwrap());
        let pos_b = Arc::new(StreamPosition::load(&b, b"test_pos").unwrap());
        // Two processes, two writers each, 25 positions per writer.
        let writers: Vec<_> = [(&a, &pos_a), (&a, &pos_a), (&b, &pos_b), (&b, &pos_b)]
            .into_iter()
            .map(|(storage, pos)| {
                let (storage, pos) = (storage.clone(), pos.clone());
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| {
                            pos.commit_next(
                                &storage,
                                |p, batch| {
                                    batch.insert(&storage.trees.stream, &p.to_be_bytes(), b"x");
                                    Ok(())
                                },
                                |_| {},
                            )
                            .unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (1..=100).collect::<Vec<u64>>());
        assert_eq!(a.trees.stream.scan_prefix(&[]).count(), 100);
        // A failed fill draws nothing.
        assert!(pos_a
            .commit_next(&a, |_, _| Err(Error::bad_request("no")), |_| {})
            .is_err());
        let next = pos_b.commit_next(&b, |_, _| Ok(()), |_| {}).unwrap();
        assert_eq!(next, 101);
        // Each process learns the other's last position from the change feed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pos_a.current() < 101 {
            assert!(std::time::Instant::now() < deadline, "{}", pos_a.current());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A process started later reads the shared position.
        let c = Storage::open_postgres_shared(&url, 1).unwrap();
        assert_eq!(
            StreamPosition::load(&c, b"test_pos").unwrap().current(),
            101
        );
    }
}
