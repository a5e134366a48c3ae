//! A persisted stream position: the one allocator behind every stream whose changes are
//! numbered (user data, e2ee, …). A change takes the next position and is committed
//! together with it, so after a restart the counter resumes past everything written;
//! positions become visible to readers in order, only once their batch is applied.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use super::{keys, Batch, Storage};
use crate::{Error, Result};

/// A stream's last committed position, stored under `key` in the `meta` tree.
pub struct StreamPosition {
    key: &'static [u8],
    /// The last position whose batch is applied: what readers may see.
    current: AtomicU64,
    /// Serialises "take the next position, commit its batch".
    lock: Mutex<()>,
}

impl StreamPosition {
    /// Reads the persisted position of the stream stored under `key` (0 when new).
    pub fn load(storage: &Storage, key: &'static [u8]) -> Result<StreamPosition> {
        let current = storage
            .trees
            .meta
            .get(key)?
            .and_then(|v| keys::leading_u64(&v))
            .unwrap_or(0);
        Ok(StreamPosition {
            key,
            current: AtomicU64::new(current),
            lock: Mutex::new(()),
        })
    }

    /// The newest position readers may see.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Takes the next position, lets `fill` add the writes that use it, and commits them
    /// together with the new position (applied, not yet durable). `committed` runs after
    /// the commit and before the position becomes visible, for in-memory indexes that
    /// readers must find complete. A failing `fill` or commit uses up no position.
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
}
