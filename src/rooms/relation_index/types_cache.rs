//! The cache of events' relation types in front of the relation index.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use ruma::{EventId, OwnedEventId};

/// Events' relation types as last read from the index: every read path asks for the
/// types of every event it serves (most have none), and a message delivered to a room of
/// thousands is served thousands of times. Entries go when a relation of theirs is added
/// or removed; a read that raced such a change does not store what it read (the
/// generation moved).
#[derive(Default)]
pub(in crate::rooms) struct TypesCache {
    entries: Mutex<HashMap<OwnedEventId, Vec<String>>>,
    generation: AtomicU64,
}

/// Events whose relation types are kept before the cache is cleared.
const TYPES_CACHE_SIZE: usize = 16_384;

impl TypesCache {
    /// The generation to pass to [`TypesCache::put`] for a read starting now.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn get(&self, parent: &EventId) -> Option<Vec<String>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(parent)
            .cloned()
    }

    pub(super) fn put(&self, parent: &EventId, types: &[String], generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= TYPES_CACHE_SIZE {
            entries.clear();
        }
        entries.insert(parent.to_owned(), types.to_vec());
    }

    /// Forgets these parents (their relations changed and are committed).
    pub(in crate::rooms) fn forget(&self, parents: &[OwnedEventId]) {
        if parents.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        for parent in parents {
            entries.remove(parent);
        }
    }

    /// Forgets everything (a purge or a rebuild of the index).
    pub(in crate::rooms) fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}
