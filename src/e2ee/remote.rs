//! What other processes sharing the database change in the E2EE service's memory (see
//! [`crate::storage::remote`]): the to-device inbox index and the key-count cache, and
//! the wake-ups a local write makes — the recipients of to-device messages, a device's
//! owner for key-count changes, and everybody tracking a user whose device list changed.

use std::sync::Arc;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::{key_counts::KeyCountCache, to_device::Queued};
use crate::{
    storage::{keys as skeys, Changed, Storage},
    stream::RemoteWakes,
};

/// The in-memory state the handlers keep up to date.
pub(super) struct Watched<'a> {
    /// Newest queued position per device inbox.
    pub queued: &'a Arc<Queued>,
    /// Key counts per device.
    pub key_counts: &'a Arc<KeyCountCache>,
    /// Users to wake once the e2ee position moved.
    pub wakes: &'a Arc<RemoteWakes>,
}

/// Registers the handlers of the E2EE service's trees (before anything they maintain is
/// read). Only for a shared database.
pub(super) fn watch(storage: &Storage, watched: Watched<'_>) {
    let trees = &storage.trees;

    let queued = Arc::downgrade(watched.queued);
    let wakes = Arc::downgrade(watched.wakes);
    storage.on_remote_change(&trees.to_device, move |changed| {
        let (Some(queued), Some(wakes)) = (queued.upgrade(), wakes.upgrade()) else {
            return;
        };
        match changed {
            Changed::Keys(keys) => {
                for key in keys {
                    if let Some((user, pos)) = queued.noted_elsewhere(key) {
                        wakes.user_at(&user, pos);
                    }
                }
            }
            Changed::All => {
                queued.mark_stale();
                wakes.everyone();
            }
        }
    });

    let cache = Arc::downgrade(watched.key_counts);
    let wakes = Arc::downgrade(watched.wakes);
    storage.on_remote_change(&trees.key_count_changes, move |changed| {
        let (Some(cache), Some(wakes)) = (cache.upgrade(), wakes.upgrade()) else {
            return;
        };
        let Changed::Keys(keys) = changed else {
            cache.clear();
            wakes.everyone();
            return;
        };
        for (user, device) in keys.iter().filter_map(|k| device_of(k)) {
            cache.changed(&user, &device);
            wakes.user(&user);
        }
    });

    let wakes = Arc::downgrade(watched.wakes);
    storage.on_remote_change(&trees.device_list_latest, move |changed| {
        let Some(wakes) = wakes.upgrade() else { return };
        match changed {
            Changed::Keys(keys) => {
                for user in keys
                    .iter()
                    .filter_map(|k| std::str::from_utf8(k).ok())
                    .filter_map(|u| UserId::parse(u).ok())
                {
                    wakes.related(&user);
                }
            }
            Changed::All => wakes.everyone(),
        }
    });
}

/// The user and device of a `user, device` key.
fn device_of(key: &[u8]) -> Option<(OwnedUserId, OwnedDeviceId)> {
    let parts = skeys::split_strs(key);
    let user = UserId::parse(*parts.first()?).ok()?;
    Some((user, OwnedDeviceId::from(*parts.get(1)?)))
}
