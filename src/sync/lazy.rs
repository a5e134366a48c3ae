//! Which lazy-loaded member events each device was sent, so an incremental `/sync` sends a
//! timeline sender's member event the first time it is needed and not again (unless the
//! filter asks for `include_redundant_members`).
//!
//! Per device and room, the member event id sent for a user and the timeline position of
//! the response that carried it. A request whose `since` is before that position did not
//! get (or lost) that response, so the member is sent again. Memory only and bounded: a
//! device that forgets (restart, too many entries) is sent members again, which clients
//! accept.

use std::{collections::HashMap, sync::Mutex};

use ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};

/// Member entries kept per device before its record starts over.
const MAX_PER_DEVICE: usize = 2048;
/// Devices tracked before the oldest half is dropped.
const MAX_DEVICES: usize = 4096;

#[derive(Default)]
struct Sent {
    /// `room → member → (member event id, timeline position of the response)`.
    members: HashMap<OwnedRoomId, HashMap<OwnedUserId, (OwnedEventId, u64)>>,
    /// Entries in `members`.
    count: usize,
    /// Last use, for eviction (a counter, not a clock).
    used: u64,
}

/// Per user and device (nested, so that a lookup borrows instead of building keys).
#[derive(Default)]
struct Devices {
    by_user: HashMap<OwnedUserId, HashMap<OwnedDeviceId, Sent>>,
    /// Devices in `by_user`.
    count: usize,
    /// Use counter.
    clock: u64,
}

/// The member events sent to each device.
#[derive(Default)]
pub(super) struct LazyMembers {
    inner: Mutex<Devices>,
}

impl LazyMembers {
    /// Whether the client syncing from timeline position `since` already has `event_id`
    /// as the member event of `member` in `room`.
    pub(super) fn has(
        &self,
        device: &(&UserId, &OwnedDeviceId),
        room: &RoomId,
        member: &UserId,
        event_id: &EventId,
        since: u64,
    ) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_user
            .get(device.0)
            .and_then(|d| d.get(device.1.as_ref() as &DeviceId))
            .and_then(|s| s.members.get(room))
            .and_then(|m| m.get(member))
            .is_some_and(|(id, at)| id == event_id && since >= *at)
    }

    /// Records member events sent in a response whose timeline position is `at`.
    pub(super) fn record<'a>(
        &self,
        device: &(&UserId, &OwnedDeviceId),
        room: &RoomId,
        sent: impl IntoIterator<Item = (&'a UserId, &'a EventId)>,
        at: u64,
    ) {
        let mut sent = sent.into_iter().peekable();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let devices = &mut *guard;
        devices.clock += 1;
        let now = devices.clock;
        if sent.peek().is_none() {
            // Nothing new: only the device's last use, without building keys.
            if let Some(s) = devices
                .by_user
                .get_mut(device.0)
                .and_then(|d| d.get_mut(device.1.as_ref() as &DeviceId))
            {
                s.used = now;
            }
            return;
        }
        let known = devices
            .by_user
            .get(device.0)
            .is_some_and(|d| d.contains_key(device.1.as_ref() as &DeviceId));
        if !known && devices.count >= MAX_DEVICES {
            let mut uses: Vec<u64> = devices
                .by_user
                .values()
                .flat_map(|d| d.values().map(|s| s.used))
                .collect();
            uses.sort_unstable();
            let cut = uses[uses.len() / 2];
            for d in devices.by_user.values_mut() {
                d.retain(|_, s| s.used > cut);
            }
            devices.by_user.retain(|_, d| !d.is_empty());
            devices.count = devices.by_user.values().map(HashMap::len).sum();
        }
        if !known {
            devices.count += 1;
        }
        let entry = devices
            .by_user
            .entry(device.0.to_owned())
            .or_default()
            .entry(device.1.clone())
            .or_default();
        entry.used = now;
        for (member, event_id) in sent {
            if entry.count >= MAX_PER_DEVICE {
                entry.members.clear();
                entry.count = 0;
            }
            let in_room = entry.members.entry(room.to_owned()).or_default();
            if in_room
                .insert(member.to_owned(), (event_id.to_owned(), at))
                .is_none()
            {
                entry.count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_known_once_its_response_was_acknowledged() {
        let lazy = LazyMembers::default();
        let user = <&UserId>::try_from("@alice:localhost").unwrap();
        let device: OwnedDeviceId = "DEV".into();
        let dev = (user, &device);
        let room = <&RoomId>::try_from("!r:localhost").unwrap();
        let carol = <&UserId>::try_from("@carol:localhost").unwrap();
        let join = <&EventId>::try_from("$join").unwrap();
        let rename = <&EventId>::try_from("$rename").unwrap();
        assert!(!lazy.has(&dev, room, carol, join, 10));
        lazy.record(&dev, room, [(carol, join)], 12);
        // a retry from before the response that carried it gets it again
        assert!(!lazy.has(&dev, room, carol, join, 10));
        assert!(lazy.has(&dev, room, carol, join, 12));
        // a newer member event is new to the client
        assert!(!lazy.has(&dev, room, carol, rename, 20));
        // other devices know nothing
        let other: OwnedDeviceId = "OTHER".into();
        assert!(!lazy.has(&(user, &other), room, carol, join, 20));
    }
}
