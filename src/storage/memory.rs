//! An in-memory [`Engine`] for tests: the same semantics as sled, nothing on disk.

use std::{collections::BTreeMap, ops::Bound, sync::RwLock};

use super::engine::{Engine, KvIter, RawBatch};
use crate::{Error, Result};

/// A `BTreeMap` behind a lock.
#[derive(Default)]
pub struct MemoryEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryEngine {
    /// A new, empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Storage("memory engine lock poisoned".into())
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().map_err(poisoned)?.get(key).cloned())
    }

    fn range<'a>(
        &'a self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
    ) -> KvIter<'a> {
        let items: Vec<_> = match self.map.read() {
            Ok(map) => map
                .range((start, end))
                .map(|(k, v)| Ok((k.clone(), v.clone())))
                .collect(),
            Err(e) => vec![Err(poisoned(e))],
        };
        if reverse {
            Box::new(items.into_iter().rev())
        } else {
            Box::new(items.into_iter())
        }
    }

    fn apply(&self, batch: RawBatch) -> Result<()> {
        let mut map = self.map.write().map_err(poisoned)?;
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn snapshot(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let map = self.map.read().map_err(poisoned)?;
        for (k, v) in map.iter() {
            visit(k, v)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let mut map = self.map.write().map_err(poisoned)?;
        if map.get(key).map(Vec::as_slice) != old {
            return Ok(false);
        }
        match new {
            Some(v) => map.insert(key.to_vec(), v),
            None => map.remove(key),
        };
        Ok(true)
    }
}
