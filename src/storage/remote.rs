//! Changes made by other processes sharing the database (several `myelin serve` processes
//! on one PostgreSQL database). The engine announces each batch another process committed
//! as the keys it wrote; services register, per tree, what such a change does to their
//! in-memory state (drop a cached entry, re-read a position, wake a long poll).
//!
//! A notice is handled in two phases: first every handler that updates a cache or an
//! index, then every handler that moves a stream position (and so lets readers look for
//! what the first phase made findable), whatever the trees' order in the notice.
//!
//! Register a handler before reading what it guards: a change committed between the read
//! and the registration would otherwise go unseen. Handlers run on the engine's listener
//! thread, one notice at a time in commit order: they must be quick and must not block
//! on the database or on async work (hand that to a task).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        RwLock,
    },
};

/// What another process changed, as the engine received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteChange {
    /// These keys (each with its tree's prefix byte first) were inserted, replaced or
    /// removed by one committed batch.
    Keys(Vec<Vec<u8>>),
    /// Something under these tree prefixes changed: the batch's keys did not fit the
    /// notice.
    Trees(Vec<u8>),
    /// Anything may have changed: notices may have been missed (the listener lost its
    /// connection and is back).
    Everything,
}

/// What a tree's handler is told.
#[derive(Clone, Copy, Debug)]
pub enum Changed<'a> {
    /// These keys of the tree (without the prefix byte) changed.
    Keys(&'a [&'a [u8]]),
    /// Any key of the tree may have changed: drop or re-read everything derived from it.
    All,
}

type Handler = Box<dyn Fn(Changed<'_>) + Send + Sync>;

/// When a handler runs within a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Caches and indexes: before any position moves.
    Caches,
    /// Stream positions and wake-ups: after every cache of the notice is up to date.
    Positions,
}

/// The handlers of every tree, called for other processes' changes.
#[derive(Default)]
pub struct RemoteChanges {
    handlers: RwLock<HashMap<(Phase, u8), Vec<Handler>>>,
    /// Notices received so far (tests and metrics).
    received: AtomicU64,
}

impl RemoteChanges {
    /// Calls `handler`, in `phase`, for every change another process makes under `prefix`.
    pub(super) fn on(&self, phase: Phase, prefix: u8, handler: Handler) {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((phase, prefix))
            .or_default()
            .push(handler);
    }

    /// How many notices arrived from other processes.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Hands one notice to the handlers of the trees it touches.
    pub(super) fn dispatch(&self, change: &RemoteChange) {
        // Counted on arrival, before any handler runs: whoever a handler wakes sees it.
        self.received.fetch_add(1, Ordering::AcqRel);
        let handlers = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        let mut by_tree: HashMap<u8, Vec<&[u8]>> = HashMap::new();
        if let RemoteChange::Keys(keys) = change {
            for key in keys {
                if let Some((&prefix, rest)) = key.split_first() {
                    by_tree.entry(prefix).or_default().push(rest);
                }
            }
        }
        for phase in [Phase::Caches, Phase::Positions] {
            match change {
                RemoteChange::Keys(_) => {
                    for (prefix, keys) in &by_tree {
                        for handler in handlers.get(&(phase, *prefix)).into_iter().flatten() {
                            handler(Changed::Keys(keys));
                        }
                    }
                }
                RemoteChange::Trees(prefixes) => {
                    for prefix in prefixes {
                        for handler in handlers.get(&(phase, *prefix)).into_iter().flatten() {
                            handler(Changed::All);
                        }
                    }
                }
                RemoteChange::Everything => {
                    for ((p, _), list) in handlers.iter() {
                        if *p == phase {
                            for handler in list {
                                handler(Changed::All);
                            }
                        }
                    }
                }
            }
        }
        drop(handlers);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Seen = Arc<Mutex<Vec<(u8, Option<Vec<Vec<u8>>>)>>>;

    fn recorder(seen: &Seen, prefix: u8) -> Handler {
        let seen = seen.clone();
        Box::new(move |changed| {
            let keys = match changed {
                Changed::Keys(keys) => Some(keys.iter().map(|k| k.to_vec()).collect()),
                Changed::All => None,
            };
            seen.lock().unwrap().push((prefix, keys));
        })
    }

    #[test]
    fn keys_reach_their_trees_handlers_without_the_prefix() {
        let changes = RemoteChanges::default();
        let seen = Seen::default();
        changes.on(Phase::Caches, 1, recorder(&seen, 1));
        changes.on(Phase::Caches, 2, recorder(&seen, 2));
        changes.dispatch(&RemoteChange::Keys(vec![
            b"\x01a".to_vec(),
            b"\x03c".to_vec(),
            b"\x01b".to_vec(),
        ]));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, Some(vec![b"a".to_vec(), b"b".to_vec()]))]
        );
        seen.lock().unwrap().clear();
        changes.dispatch(&RemoteChange::Trees(vec![2, 3]));
        assert_eq!(*seen.lock().unwrap(), vec![(2, None)]);
        seen.lock().unwrap().clear();
        changes.dispatch(&RemoteChange::Everything);
        let mut all = seen.lock().unwrap().clone();
        all.sort();
        assert_eq!(all, vec![(1, None), (2, None)]);
        assert_eq!(changes.received(), 3);
    }

    #[test]
    fn positions_move_after_every_cache_of_the_notice() {
        let changes = RemoteChanges::default();
        let seen = Seen::default();
        // The position handler is registered first and its tree comes first in the notice.
        changes.on(Phase::Positions, 1, recorder(&seen, 1));
        changes.on(Phase::Caches, 9, recorder(&seen, 9));
        changes.dispatch(&RemoteChange::Keys(vec![
            b"\x01p".to_vec(),
            b"\x09c".to_vec(),
        ]));
        changes.dispatch(&RemoteChange::Everything);
        let order: Vec<u8> = seen.lock().unwrap().iter().map(|(p, _)| *p).collect();
        assert_eq!(order, vec![9, 1, 9, 1]);
    }
}
