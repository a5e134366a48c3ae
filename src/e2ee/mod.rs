//! End-to-end encryption key relay: device keys, one-time and fallback keys, cross-signing
//! keys and signatures, to-device messages, device-list tracking and server-side key
//! backup. The server stores and relays opaque key material; it never decrypts.
//!
//! One stream position (the 4th component of a sync token) orders to-device messages,
//! device-list changes and one-time-key count changes.

mod backup;
#[cfg(test)]
mod cluster_tests;
mod cross_signing;
mod key_counts;
mod keys;
mod remote;
mod to_device;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use myelin_appservice::Registration;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::Value;

pub use self::{
    backup::{BackupCounts, BackupVersion},
    keys::{ClaimedKeys, KeyQuery},
    to_device::ToDeviceBatch,
};
use crate::{
    rooms::{Direction, EventFilter, Membership, RoomsService},
    storage::{keys as skeys, Batch, Storage, StreamPosition},
    stream::{Notifier, RemoteWakes},
    users::{DeviceChange, UsersService},
    Error, Result,
};

/// Key of the e2ee stream position in the `meta` tree.
const E2EE_POS_KEY: &[u8] = b"e2ee_pos";

/// Most membership events looked at per room when computing device-list changes.
const MEMBER_SCAN_LIMIT: usize = 10_000;

/// A point on the streams a device-list change computation looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamPoint {
    /// Timeline stream position (membership changes).
    pub timeline: u64,
    /// E2EE stream position (device-list changes).
    pub e2ee: u64,
}

/// Users whose device lists a client must refresh, or may stop tracking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceListChanges {
    /// Users sharing a room with the requester whose devices or keys changed, or who
    /// newly share a room with the requester.
    pub changed: Vec<OwnedUserId>,
    /// Users who no longer share any room with the requester.
    pub left: Vec<OwnedUserId>,
}

impl DeviceListChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// The E2EE service.
pub struct E2eeService {
    storage: Arc<Storage>,
    users: Arc<UsersService>,
    rooms: Arc<RoomsService>,
    notifier: Arc<Notifier>,
    /// The e2ee stream position.
    pos: StreamPosition,
    /// Serialises read-modify-write of key backups (counts and etags stay exact).
    backup_lock: Mutex<()>,
    /// Key counts per device between changes (see [`key_counts`]).
    key_counts: Arc<key_counts::KeyCountCache>,
    /// Newest queued to-device position per device inbox (see [`to_device::Queued`]).
    to_device_queued: Arc<to_device::Queued>,
    /// Users to wake for other processes' changes (a shared database, see [`remote`]);
    /// the handlers hold it weakly.
    _remote_wakes: Arc<RemoteWakes>,
    /// The appservices that do encryption for their users (MSC3202, with a URL): to-device
    /// messages and key-count changes of the users they own exclusively go to them.
    encrypted_appservices: Vec<Arc<Registration>>,
}

/// A device's one-time-key counts and unused fallback key types, as of the position of
/// its last key-count change.
#[derive(Clone, Debug)]
pub struct KeyCounts {
    /// E2EE stream position of the last change (0: never).
    pub changed_at: u64,
    /// Unclaimed one-time keys per algorithm.
    pub one_time: BTreeMap<String, u64>,
    /// Algorithms with a fallback key not handed out yet.
    pub unused_fallback: Vec<String>,
}

impl E2eeService {
    /// Builds the service, reading the persisted stream position. `appservices` are the
    /// registered appservices; those with a URL and `org.matrix.msc3202` receive their
    /// users' to-device messages and key counts.
    pub fn new(
        storage: Arc<Storage>,
        users: Arc<UsersService>,
        rooms: Arc<RoomsService>,
        notifier: Arc<Notifier>,
        appservices: &[Arc<Registration>],
    ) -> Result<E2eeService> {
        let to_device_queued = Arc::<to_device::Queued>::default();
        let key_counts = Arc::default();
        let remote_wakes = Arc::<RemoteWakes>::default();
        if storage.is_shared() {
            remote::watch(
                &storage,
                remote::Watched {
                    queued: &to_device_queued,
                    key_counts: &key_counts,
                    wakes: &remote_wakes,
                },
            );
        }
        let pos = StreamPosition::load(&storage, E2EE_POS_KEY)?;
        to_device_queued.read_stored(&storage)?;
        if storage.is_shared() {
            // A device-list change wakes everybody who tracks the user, as here.
            let rooms = Arc::downgrade(&rooms);
            let trackers: crate::stream::Related = Box::new(move |user| match rooms.upgrade() {
                Some(rooms) => shared_users(&rooms, user),
                None => Ok(BTreeSet::new()),
            });
            remote_wakes.register(
                &storage,
                E2EE_POS_KEY,
                pos.current(),
                &notifier,
                Some(trackers),
            );
        }
        Ok(E2eeService {
            to_device_queued,
            storage,
            users,
            rooms,
            notifier,
            pos,
            backup_lock: Mutex::new(()),
            key_counts,
            _remote_wakes: remote_wakes,
            encrypted_appservices: appservices
                .iter()
                .filter(|r| r.msc3202 && r.url.is_some())
                .cloned()
                .collect(),
        })
    }

    /// The encrypted appservice (MSC3202) that owns `user` exclusively, if any: it, not
    /// the device inboxes, receives the user's to-device messages.
    fn encrypted_appservice(&self, user: &UserId) -> Option<&Registration> {
        self.encrypted_appservices
            .iter()
            .find(|r| r.owns_exclusively(user.as_str(), self.users.server_name()))
            .map(|r| r.as_ref())
    }

    /// The newest e2ee stream position.
    pub fn current_pos(&self) -> u64 {
        self.pos.current()
    }

    /// Allocates the next stream position, lets `fill` add writes that use it, and commits
    /// them together with the new position. Positions become visible in order. Not yet
    /// durable.
    fn commit_with_pos(&self, fill: impl FnOnce(u64, &mut Batch) -> Result<()>) -> Result<u64> {
        self.pos.commit_next(&self.storage, fill, |_| {})
    }

    /// Adds to `batch` a device-list change of `user` at `pos` (replacing the older entry).
    fn mark_device_list_change(&self, user: &UserId, pos: u64, batch: &mut Batch) -> Result<()> {
        let trees = &self.storage.trees;
        if let Some(old) = trees.device_list_latest.get(user.as_bytes())? {
            batch.remove(&trees.device_list_log, &old);
        }
        batch.insert(&trees.device_list_log, &pos.to_be_bytes(), user.as_bytes());
        batch.insert(
            &trees.device_list_latest,
            user.as_bytes(),
            &pos.to_be_bytes(),
        );
        Ok(())
    }

    /// Adds to `batch` a change of the one-time/fallback keys of one device at `pos`.
    /// For a user of an encrypted appservice, also marks the device for its next
    /// transaction.
    fn mark_key_count_change(&self, user: &UserId, device: &DeviceId, pos: u64, batch: &mut Batch) {
        batch.insert(
            &self.storage.trees.key_count_changes,
            &skeys::strs(&[user.as_str(), device.as_str()]),
            &pos.to_be_bytes(),
        );
        if let Some(reg) = self.encrypted_appservice(user) {
            batch.insert(
                &self.storage.trees.appservice_key_counts,
                &skeys::strs(&[reg.id.as_str(), user.as_str(), device.as_str()]),
                &pos.to_be_bytes(),
            );
        }
    }

    /// Users sharing a joined room with `user`, and `user`.
    pub fn shared_users(&self, user: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        shared_users(&self.rooms, user)
    }

    /// Wakes the syncs of everybody who tracks `user`'s devices.
    fn notify_trackers(&self, user: &UserId) -> Result<()> {
        let users = self.shared_users(user)?;
        self.notifier.notify(users.iter().map(|u| u.as_ref()));
        Ok(())
    }

    /// Called after devices were created or deleted: deleted devices lose their keys and
    /// inbox; either way the user's device list changed. Not yet durable.
    pub fn devices_changed(
        &self,
        user: &UserId,
        devices: &[OwnedDeviceId],
        change: DeviceChange,
    ) -> Result<()> {
        let trees = &self.storage.trees;
        self.commit_with_pos(|pos, batch| {
            if change == DeviceChange::Removed {
                let appservice = self.encrypted_appservice(user);
                for device in devices {
                    let key = skeys::strs(&[user.as_str(), device.as_str()]);
                    batch.remove(&trees.device_keys, &key);
                    batch.remove(&trees.key_count_changes, &key);
                    if let Some(reg) = appservice {
                        batch.remove(
                            &trees.appservice_key_counts,
                            &skeys::strs(&[reg.id.as_str(), user.as_str(), device.as_str()]),
                        );
                    }
                    for tree in [
                        &trees.one_time_keys,
                        &trees.fallback_keys,
                        &trees.to_device,
                        &trees.key_signatures,
                    ] {
                        for kv in tree.scan_prefix(&key) {
                            batch.remove(tree, &kv?.0);
                        }
                    }
                }
            }
            self.mark_device_list_change(user, pos, batch)
        })?;
        if change == DeviceChange::Removed {
            for device in devices {
                self.to_device_queued.forget(user, device);
                self.key_counts.changed(user, device);
            }
        }
        self.notify_trackers(user)
    }

    /// Users whose latest device-list change is after e2ee position `from` and not after
    /// `to`, in the order of their changes.
    pub fn device_lists_changed_between(&self, from: u64, to: u64) -> Result<Vec<OwnedUserId>> {
        let mut out = Vec::new();
        if to <= from {
            return Ok(out);
        }
        let lo = from.saturating_add(1).to_be_bytes();
        let hi = to.saturating_add(1).to_be_bytes();
        for kv in self.storage.trees.device_list_log.range(&lo, &hi, false) {
            let (_, v) = kv?;
            if let Ok(u) = UserId::parse(String::from_utf8_lossy(&v).as_ref()) {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// The device-list changes `user` must hear about between `from` and `to`: users whose
    /// keys changed and who share a room with `user` now, users who started sharing a room
    /// (`changed`), and users who no longer share any (`left`).
    pub fn device_list_changes(
        &self,
        user: &UserId,
        from: StreamPoint,
        to: StreamPoint,
    ) -> Result<DeviceListChanges> {
        let mut changed: BTreeSet<OwnedUserId> = BTreeSet::new();
        // Users whose membership (or ours) changed: newly sharing a room, or maybe gone.
        let mut joined: BTreeSet<OwnedUserId> = BTreeSet::new();
        let mut gone: BTreeSet<OwnedUserId> = BTreeSet::new();

        changed.extend(self.device_lists_changed_between(from.e2ee, to.e2ee)?);

        if to.timeline > from.timeline {
            // Built when a room's member events are to be read (most syncs read none).
            let mut member_filter: Option<EventFilter> = None;
            for &(ref room, membership, mpos) in self.rooms.user_rooms(user)?.iter() {
                let own_change = mpos > from.timeline && mpos <= to.timeline;
                if !own_change && membership != Membership::Join {
                    // Left long ago: nothing to report, and no member list to load.
                    continue;
                }
                if !own_change && !self.rooms.members_changed_since(room, from.timeline) {
                    // No member event in the room since `from`: nothing to read.
                    continue;
                }
                let members = self.rooms.members(room)?;
                if own_change {
                    // My own membership changed: everybody in the room is new or gone.
                    let set = if membership == Membership::Join {
                        &mut joined
                    } else {
                        &mut gone
                    };
                    set.extend(members.joined().map(ToOwned::to_owned));
                    continue;
                }
                let (events, _) = self.rooms.timeline_range(
                    room,
                    from.timeline,
                    to.timeline,
                    Direction::Forward,
                    MEMBER_SCAN_LIMIT,
                    Some(member_filter.get_or_insert_with(|| {
                        EventFilter::from_json(&serde_json::json!({ "types": ["m.room.member"] }))
                    })),
                )?;
                for (_, pdu) in events {
                    let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
                    else {
                        continue;
                    };
                    if members.get(&target) == Some(Membership::Join) {
                        joined.insert(target);
                    } else {
                        gone.insert(target);
                    }
                }
            }
        }

        // Our own keys did not change because we joined something.
        joined.remove(user);
        changed.extend(joined);
        if changed.is_empty() && gone.is_empty() {
            // The common case of an incremental sync: no need for the shared users.
            return Ok(DeviceListChanges::default());
        }
        let shared = self.shared_users(user)?;
        changed.retain(|u| shared.contains(u));
        let left = gone
            .into_iter()
            .filter(|u| !shared.contains(u) && u != user)
            .collect();
        Ok(DeviceListChanges {
            changed: changed.into_iter().collect(),
            left,
        })
    }
}

/// Users sharing a joined room with `user`, and `user`.
fn shared_users(rooms: &RoomsService, user: &UserId) -> Result<BTreeSet<OwnedUserId>> {
    let mut out = BTreeSet::new();
    out.insert(user.to_owned());
    for room in rooms.joined_rooms(user)? {
        out.extend(rooms.members(&room)?.joined().map(ToOwned::to_owned));
    }
    Ok(out)
}

/// A JSON object or `M_BAD_JSON`.
fn object<'a>(v: &'a Value, what: &str) -> Result<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::bad_json(format!("{what} must be a JSON object")))
}

#[cfg(test)]
pub(crate) mod tests;
