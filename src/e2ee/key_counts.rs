//! One-time-key counts and unused fallback key types per device, as `/sync` and the
//! appservice transactions report them, kept in memory between changes.
//!
//! Every change of a device's keys records a new e2ee position for the device (uploads in
//! the same batch, claims right after taking the key) and, once applied, drops the
//! device's entry here and counts a change ([`KeyCountCache::changed`]). A count read
//! across a change is not kept (the change counter moved), so an entry is never older
//! than the stored keys. Another process sharing the database changes keys without us:
//! its change reaches us through the change feed a moment later, so there the device's
//! position is read from storage on every call and an entry is used only while it matches.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};

use super::{E2eeService, KeyCounts};
use crate::{storage::keys as skeys, Result};

/// Key counts per user and device, and a counter of the changes made since the start.
#[derive(Default)]
pub(super) struct KeyCountCache(Mutex<Entries>);

#[derive(Default)]
struct Entries {
    devices: HashMap<OwnedUserId, HashMap<OwnedDeviceId, KeyCounts>>,
    /// Bumped, under the lock, by every change of any device's keys.
    changes: u64,
}

impl KeyCountCache {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept counts of a device, and the change counter to hand to [`Self::insert`]
    /// with counts read from storage after this call.
    pub(super) fn kept(&self, user: &UserId, device: &DeviceId) -> (Option<KeyCounts>, u64) {
        let entries = self.lock();
        let kept = entries
            .devices
            .get(user)
            .and_then(|d| d.get(device))
            .cloned();
        (kept, entries.changes)
    }

    /// Keeps `counts` of a device, read after the change counter was `seen`, unless any
    /// key changed since then (the counts may predate it).
    pub(super) fn insert(&self, user: &UserId, device: &DeviceId, counts: KeyCounts, seen: u64) {
        let mut entries = self.lock();
        if entries.changes == seen {
            let devices = entries.devices.entry(user.to_owned()).or_default();
            devices.insert(device.to_owned(), counts);
        }
    }

    /// The keys of a device changed (and the change is applied): its entry goes.
    pub(super) fn changed(&self, user: &UserId, device: &DeviceId) {
        let mut entries = self.lock();
        entries.changes += 1;
        if let Some(devices) = entries.devices.get_mut(user) {
            devices.remove(device);
            if devices.is_empty() {
                entries.devices.remove(user);
            }
        }
    }

    /// Keys of unknown devices changed: every entry goes.
    pub(super) fn clear(&self) {
        let mut entries = self.lock();
        entries.changes += 1;
        entries.devices.clear();
    }
}

impl E2eeService {
    /// The key counts of a device for `/sync` and appservice transactions, and the
    /// position of their last change (see the module documentation for when they are
    /// read from storage).
    pub fn key_counts(&self, user: &UserId, device: &DeviceId) -> Result<KeyCounts> {
        let (kept, seen) = self.key_counts.kept(user, device);
        let stored_at = match self.storage.is_shared() {
            true => Some(self.key_count_pos(user, device)?),
            false => None,
        };
        if let Some(kept) = kept.filter(|k| stored_at.is_none_or(|at| at == k.changed_at)) {
            return Ok(kept);
        }
        let counts = KeyCounts {
            changed_at: match stored_at {
                Some(at) => at,
                None => self.key_count_pos(user, device)?,
            },
            one_time: self.one_time_key_counts(user, device)?,
            unused_fallback: self.unused_fallback_key_types(user, device)?,
        };
        self.key_counts.insert(user, device, counts.clone(), seen);
        Ok(counts)
    }

    /// The stored position of a device's last key-count change (0: never).
    fn key_count_pos(&self, user: &UserId, device: &DeviceId) -> Result<u64> {
        Ok(self
            .storage
            .trees
            .key_count_changes
            .get(&skeys::strs(&[user.as_str(), device.as_str()]))?
            .and_then(|v| skeys::leading_u64(&v))
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::{device_id, user_id};

    use super::*;

    fn counts(n: u64) -> KeyCounts {
        KeyCounts {
            changed_at: n,
            one_time: BTreeMap::from([("signed_curve25519".to_owned(), n)]),
            unused_fallback: Vec::new(),
        }
    }

    /// Counts read across a change are not kept; a change drops only its device's entry.
    #[test]
    fn counts_read_across_a_change_are_not_kept() {
        let cache = KeyCountCache::default();
        let (alice, bob) = (user_id!("@alice:x"), user_id!("@bob:x"));
        let (d1, d2) = (device_id!("D1"), device_id!("D2"));

        let seen = cache.kept(alice, d1).1;
        cache.insert(alice, d1, counts(1), seen);
        cache.insert(alice, d2, counts(2), seen);
        cache.insert(bob, d1, counts(3), seen);
        assert_eq!(cache.kept(alice, d1).0.unwrap().changed_at, 1);

        // A reader that saw the counter before this change read the keys before it too.
        let before = cache.kept(alice, d1).1;
        cache.changed(alice, d1);
        cache.insert(alice, d1, counts(1), before);
        assert!(cache.kept(alice, d1).0.is_none(), "stale counts were kept");
        assert_eq!(cache.kept(alice, d2).0.unwrap().changed_at, 2);

        let after = cache.kept(alice, d1).1;
        cache.insert(alice, d1, counts(4), after);
        assert_eq!(cache.kept(alice, d1).0.unwrap().changed_at, 4);

        cache.clear();
        cache.insert(bob, d2, counts(5), after);
        assert!(cache.kept(alice, d2).0.is_none() && cache.kept(bob, d1).0.is_none());
        assert!(cache.kept(bob, d2).0.is_none(), "read before the clear");
    }
}
