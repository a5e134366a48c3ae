//! The sled implementation of [`Engine`]: one sled tree holds every logical tree, each
//! under its own prefix byte, so a batch over several logical trees is one engine batch.
//! A batch's writes reach sled one by one (a sled batch seals sled's log buffer twice); a
//! write-ahead log of our own beside sled's directory ([`wal`]) makes batches atomic and
//! durable across crashes, and a lock makes them atomic for readers.

use std::{
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use super::{
    engine::{Engine, KvIter, RawBatch},
    wal::{self, Wal},
};
use crate::{Error, Result};

/// The key (outside every logical tree's prefix) where each batch records its number in
/// the write-ahead log: after a crash it says which logged batches sled holds.
const APPLIED_KEY: &[u8] = b"\x00wal-applied";

/// Log size past which sled is flushed and the log started afresh (bounds replay at open).
const CHECKPOINT_BYTES: u64 = 32 << 20;

/// sled-backed engine.
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    wal: Arc<Wal>,
    /// A batch is applied under it alone; reads (and each step of an iteration) share it,
    /// so they see no batch half-applied.
    batch: RwLock<()>,
    /// Writes share it; a snapshot takes it alone, so it sees no batch half-applied (sled
    /// iterators are not snapshots) while reads go on.
    gate: RwLock<()>,
}

impl SledEngine {
    /// Opens (or creates) the database in `path` with the given page cache, and its
    /// write-ahead log in `<path>-wal`, applying what the log holds and sled not yet.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledEngine> {
        SledEngine::open_with(path, cache_capacity_bytes, CHECKPOINT_BYTES)
    }

    fn open_with(
        path: &Path,
        cache_capacity_bytes: u64,
        checkpoint_bytes: u64,
    ) -> Result<SledEngine> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            // Durable through the write-ahead log; sled is flushed at checkpoints.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("myelin")?;
        let applied = match tree.get(APPLIED_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                Error::Storage("the write-ahead log position in sled is malformed".into())
            })?),
            None => 0,
        };
        let wal = Wal::open(
            &wal_dir(path),
            checkpoint_bytes,
            applied,
            // A replay cut short is done again at the next open: its records stay
            // until the checkpoint after it.
            &mut |number, changes| apply_changes(&tree, number, &changes),
            &mut || {
                db.flush()?;
                Ok(())
            },
        )?;
        Ok(SledEngine {
            db,
            tree,
            wal: Arc::new(wal),
            batch: RwLock::new(()),
            gate: RwLock::new(()),
        })
    }
}

/// Where the write-ahead log of the sled database in `path` lives.
fn wal_dir(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-wal");
    path.with_file_name(name)
}

/// Applies logged batch `number` to sled write by write, its number last.
fn apply_changes(tree: &sled::Tree, number: u64, changes: &[wal::Change]) -> Result<()> {
    for (k, v) in changes {
        match v {
            Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
            None => tree.remove(k.as_slice())?,
        };
    }
    tree.insert(APPLIED_KEY, &number.to_be_bytes()[..])?;
    Ok(())
}

/// A sled iterator whose every step shares the engine's batch lock.
struct Gated<'a, I> {
    lock: &'a RwLock<()>,
    inner: I,
}

impl<I: Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>> Iterator for Gated<'_, I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let _reading = self.lock.read().unwrap_or_else(|e| e.into_inner());
        self.inner.by_ref().find(visible)
    }
}

/// Whether a stored pair is one of ours rather than the engine's own bookkeeping.
fn visible(r: &Result<(Vec<u8>, Vec<u8>)>) -> bool {
    !matches!(r, Ok((k, _)) if k.as_slice() == APPLIED_KEY)
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _reading = self.batch.read().unwrap_or_else(|e| e.into_inner());
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn range<'a>(
        &'a self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
    ) -> KvIter<'a> {
        let iter = self.tree.range::<Vec<u8>, _>((start, end));
        let map = |r: sled::Result<(sled::IVec, sled::IVec)>| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(Error::from)
        };
        let lock = &self.batch;
        if reverse {
            Box::new(Gated {
                lock,
                inner: iter.rev().map(map),
            })
        } else {
            Box::new(Gated {
                lock,
                inner: iter.map(map),
            })
        }
    }

    fn apply(&self, batch: RawBatch) -> Result<()> {
        let _writing = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let _alone = self.batch.write().unwrap_or_else(|e| e.into_inner());
        let mut log = self.wal.appender()?;
        let number = log.log(&batch.ops)?;
        log.applied(apply_changes(&self.tree, number, &batch.ops))
    }

    fn snapshot(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let _alone = self.gate.write().unwrap_or_else(|e| e.into_inner());
        for pair in self.tree.iter() {
            let (k, v) = pair?;
            if k != APPLIED_KEY {
                visit(&k, &v)?;
            }
        }
        Ok(())
    }

    /// Syncs the write-ahead log; when it has grown past the checkpoint size, a thread
    /// flushes sled and then drops the log files that flush covers.
    fn flush(&self) -> Result<()> {
        let Some(covered) = self.wal.sync()? else {
            return Ok(());
        };
        let db = self.db.clone();
        let log = self.wal.clone();
        let checkpoint = move || {
            let flushed = db.flush().map(|_| ()).map_err(Error::from);
            log.checkpointed(covered, flushed);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("myelin-checkpoint".into())
            .spawn(checkpoint)
        {
            // The log is kept until a later checkpoint can run.
            tracing::warn!(error = %e, "could not start a storage checkpoint");
            self.wal.checkpointed(covered, Err(e.into()));
        }
        Ok(())
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let _writing = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let _alone = self.batch.write().unwrap_or_else(|e| e.into_inner());
        if self.tree.get(key)?.as_deref() != old {
            return Ok(false);
        }
        let changes = [(key.to_vec(), new)];
        let mut log = self.wal.appender()?;
        let number = log.log(&changes)?;
        log.applied(apply_changes(&self.tree, number, &changes))?;
        Ok(true)
    }
}

/// The engine's failures reach the rest of the server as [`crate::Error::Storage`]: only
/// this module names sled.
impl From<sled::Error> for crate::Error {
    fn from(e: sled::Error) -> Self {
        crate::Error::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    /// What a `kill -9` leaves: the files as the running process has written them.
    fn crash_image(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                crash_image(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    fn all(engine: &SledEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
        engine
            .range(Bound::Unbounded, Bound::Unbounded, false)
            .map(|r| r.unwrap())
            .collect()
    }

    fn batch(ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> RawBatch {
        RawBatch { ops }
    }

    #[test]
    fn synced_batches_survive_a_crash_that_sled_never_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live").join("db");
        let engine = SledEngine::open(&db, 8 << 20).unwrap();
        for i in 0..200 {
            let key = format!("k{i:03}");
            engine
                .apply(batch(vec![put(&key, &i.to_string()), put("last", &key)]))
                .unwrap();
        }
        engine
            .apply(batch(vec![
                (b"k000".to_vec(), None),
                put("k001", "changed"),
            ]))
            .unwrap();
        assert!(engine
            .compare_and_swap(b"k002", Some(b"2"), Some(b"swapped".to_vec()))
            .unwrap());
        assert!(!engine
            .compare_and_swap(b"k003", Some(b"wrong"), None)
            .unwrap());
        engine.flush().unwrap();
        let expected = all(&engine);
        assert_eq!(expected.len(), 200);
        assert!(expected.iter().all(|(k, _)| k.as_slice() != APPLIED_KEY));

        crash_image(&dir.path().join("live"), &dir.path().join("crashed"));
        let reopened = SledEngine::open(&dir.path().join("crashed").join("db"), 8 << 20).unwrap();
        assert_eq!(all(&reopened), expected);
        assert_eq!(
            reopened.get(b"k002").unwrap().as_deref(),
            Some(&b"swapped"[..])
        );
        assert_eq!(reopened.get(b"k000").unwrap(), None);
        // Opening again after the replay's checkpoint finds the same and applies nothing.
        drop(reopened);
        let again = SledEngine::open(&dir.path().join("crashed").join("db"), 8 << 20).unwrap();
        assert_eq!(all(&again), expected);
        drop(engine);
    }

    #[test]
    fn checkpoints_flush_sled_and_drop_the_log_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live").join("db");
        let engine = SledEngine::open_with(&db, 8 << 20, 4 << 10).unwrap();
        let logs = || std::fs::read_dir(wal_dir(&db)).unwrap().count();
        for round in 0..20 {
            for i in 0..10 {
                let value = format!("{round}-{}", "v".repeat(100));
                engine
                    .apply(batch(vec![put(&format!("k{i}"), &value)]))
                    .unwrap();
            }
            engine.flush().unwrap();
        }
        // A checkpoint runs in the background; wait for the last one to drop its files.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while (logs() > 2 || engine.wal.checkpointing()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(logs() <= 2, "{} log files left", logs());
        let expected = all(&engine);
        crash_image(&dir.path().join("live"), &dir.path().join("crashed"));
        let reopened = SledEngine::open(&dir.path().join("crashed").join("db"), 8 << 20).unwrap();
        assert_eq!(all(&reopened), expected);
        assert!(expected.iter().all(|(_, v)| v.starts_with(b"19-")));
    }

    #[test]
    fn readers_never_see_a_batch_half_applied() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(SledEngine::open(&dir.path().join("db"), 8 << 20).unwrap());
        engine
            .apply(batch(vec![put("a", "0"), put("b", "0")]))
            .unwrap();
        let writer = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 1..2000 {
                    let v = i.to_string();
                    engine
                        .apply(batch(vec![put("a", &v), put("b", &v)]))
                        .unwrap();
                }
            })
        };
        let read = |k: &[u8]| -> u64 {
            let v = engine.get(k).unwrap().unwrap();
            std::str::from_utf8(&v).unwrap().parse().unwrap()
        };
        // Each batch writes a, then b: once a read sees a batch's a, b is there too.
        while !writer.is_finished() {
            let a = read(b"a");
            let b = read(b"b");
            assert!(
                b >= a,
                "read a = {a} and then b = {b}: a batch half applied"
            );
        }
        writer.join().unwrap();
    }
}
