//! Downloads waiting for an asynchronous upload (`create`, then `upload_to`), per media
//! id: woken by the upload, made here or — on a database shared with other processes —
//! by another process (its media record changed).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use crate::storage::{keys, Changed, Storage};

/// The wake-up handle of every media id somebody waits for.
#[derive(Default)]
pub(super) struct Waiting {
    ids: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // Every change is one call: the map stays consistent if a holder panicked.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the downloads of every media id another process uploads to. Only for a
    /// shared database.
    pub(super) fn watch(self: &Arc<Self>, storage: &Storage) {
        let waiting = Arc::downgrade(self);
        storage.on_remote_position(&storage.trees.media, move |changed| {
            let Some(waiting) = waiting.upgrade() else {
                return;
            };
            match changed {
                Changed::Keys(keys) => {
                    for key in keys {
                        if let Some(id) = keys::split_strs(key).first() {
                            waiting.uploaded(id);
                        }
                    }
                }
                Changed::All => {
                    for (_, notify) in waiting.lock().drain() {
                        notify.notify_waiters();
                    }
                }
            }
        });
    }

    /// The wake-up handle of `media_id`: create the `notified()` future and `enable()`
    /// it before reading the record, so an upload in between is not missed.
    pub(super) fn handle(&self, media_id: &str) -> Arc<Notify> {
        self.lock().entry(media_id.to_owned()).or_default().clone()
    }

    /// Wakes the downloads waiting for `media_id`: its record changed.
    pub(super) fn uploaded(&self, media_id: &str) {
        if let Some(notify) = self.lock().remove(media_id) {
            notify.notify_waiters();
        }
    }

    /// Forgets `media_id`: a download found its content.
    pub(super) fn found(&self, media_id: &str) {
        self.lock().remove(media_id);
    }

    /// How many downloads wait for `media_id` right now (each holds a clone of its
    /// handle while it waits; the map holds the other one).
    pub(super) fn count(&self, media_id: &str) -> usize {
        self.lock()
            .get(media_id)
            .map_or(0, |n| Arc::strong_count(n) - 1)
    }
}
