//! The sled implementation of [`Engine`]: one sled tree holds every logical tree, each
//! under its own prefix byte, so a batch over several logical trees is one atomic sled batch.

use std::{ops::Bound, path::Path, sync::RwLock};

use super::engine::{Engine, KvIter, RawBatch};
use crate::{Error, Result};

/// sled-backed engine.
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    /// Writes share it; a snapshot takes it alone, so it sees no batch half-applied (sled
    /// iterators are not snapshots).
    gate: RwLock<()>,
}

impl SledEngine {
    /// Opens (or creates) the database in `path` with the given page cache.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledEngine> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            // We flush explicitly (group commit); no background flusher.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("myelin")?;
        Ok(SledEngine {
            db,
            tree,
            gate: RwLock::new(()),
        })
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
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
        if reverse {
            Box::new(iter.rev().map(map))
        } else {
            Box::new(iter.map(map))
        }
    }

    fn apply(&self, batch: RawBatch) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        let _writing = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.tree.apply_batch(b)?;
        Ok(())
    }

    fn snapshot(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let _alone = self.gate.write().unwrap_or_else(|e| e.into_inner());
        for pair in self.tree.iter() {
            let (k, v) = pair?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let _writing = self.gate.read().unwrap_or_else(|e| e.into_inner());
        Ok(self.tree.compare_and_swap(key, old, new)?.is_ok())
    }
}

/// The engine's failures reach the rest of the server as [`crate::Error::Storage`]: only
/// this module names sled.
impl From<sled::Error> for crate::Error {
    fn from(e: sled::Error) -> Self {
        crate::Error::Storage(e.to_string())
    }
}
