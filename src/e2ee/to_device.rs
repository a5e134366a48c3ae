//! To-device messages: queued per recipient device at an e2ee stream position, delivered
//! by `/sync`, and deleted once the device syncs with a token past them. Messages for the
//! users of an encrypted appservice (MSC3202) are queued for that appservice instead
//! (see `crate::appservice::e2ee`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::E2eeService;
use crate::{
    storage::{keys as skeys, Batch, Storage},
    Error, Result,
};

/// Most to-device messages delivered by one `/sync`.
pub const TO_DEVICE_LIMIT: usize = 100;
/// The device id addressing every device of a user.
const ALL_DEVICES: &str = "*";

/// The to-device messages one `/sync` delivers.
#[derive(Clone, Debug, Default)]
pub struct ToDeviceBatch {
    /// `{sender, type, content}` events, oldest first.
    pub events: Vec<Value>,
    /// Position of the last event when more are waiting (the next token must stop there).
    pub limited_at: Option<u64>,
}

/// The inbox and the position of a message's key in the `to_device` tree.
fn split_message_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let pos = skeys::trailing_u64(key)?;
    Some((&key[..key.len().checked_sub(8)?], pos))
}

/// The key prefix of a device's inbox in the `to_device` tree.
fn inbox(user: &UserId, device: &DeviceId) -> Vec<u8> {
    skeys::KeyBuilder::new()
        .str(user.as_str())
        .str(device.as_str())
        .build()
}

/// The newest queued position of every device inbox that may hold messages, so a sync of
/// a device with an empty inbox (nearly every sync) reads no storage for it. An entry is
/// added when a message is committed, before its position becomes visible, and dropped
/// once a sync acknowledged everything up to it.
#[derive(Default)]
pub(super) struct Queued {
    newest: Mutex<HashMap<Vec<u8>, u64>>,
    /// Messages may be missing (other processes' sends went unannounced): read the
    /// inboxes again before the next sync looks.
    stale: AtomicBool,
}

impl Queued {
    /// Adds the inboxes that hold messages (at start, and again when other processes'
    /// messages may have been missed).
    pub(super) fn read_stored(&self, storage: &Storage) -> Result<()> {
        let mut newest: HashMap<Vec<u8>, u64> = HashMap::new();
        for kv in storage.trees.to_device.scan_prefix(&[]) {
            let key = kv?.0;
            if let Some((inbox, pos)) = split_message_key(&key) {
                let entry = newest.entry(inbox.to_vec()).or_default();
                *entry = (*entry).max(pos);
            }
        }
        let mut map = self.lock();
        for (inbox, pos) in newest {
            let entry = map.entry(inbox).or_default();
            *entry = (*entry).max(pos);
        }
        Ok(())
    }

    /// Notes that messages may be missing: the inboxes are read again before the next
    /// sync looks.
    pub(super) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Reads the inboxes again if messages may be missing.
    fn load_if_stale(&self, storage: &Storage) -> Result<()> {
        if !self.stale.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.read_stored(storage).inspect_err(|_| self.mark_stale())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, u64>> {
        self.newest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest position queued for an inbox, if it may hold messages.
    fn newest(&self, inbox: &[u8]) -> Option<u64> {
        self.lock().get(inbox).copied()
    }

    /// Notes a message another process queued (or removed: an inbox noted needlessly
    /// costs one read) under `key` of the `to_device` tree; returns its inbox's user and
    /// position.
    pub(super) fn noted_elsewhere(&self, key: &[u8]) -> Option<(OwnedUserId, u64)> {
        let (inbox, pos) = split_message_key(key)?;
        self.queued(&[inbox.to_vec()], pos);
        let user = skeys::split_strs(inbox).first().copied()?;
        Some((UserId::parse(user).ok()?, pos))
    }

    /// Notes messages committed at `pos` for these inboxes.
    fn queued(&self, inboxes: &[Vec<u8>], pos: u64) {
        let mut map = self.lock();
        for inbox in inboxes {
            let entry = map.entry(inbox.clone()).or_default();
            *entry = (*entry).max(pos);
        }
    }

    /// Drops an inbox whose messages up to `newest` were all acknowledged, unless more
    /// were queued meanwhile.
    fn emptied(&self, inbox: &[u8], newest: u64) {
        let mut map = self.lock();
        if map.get(inbox) == Some(&newest) {
            map.remove(inbox);
        }
    }

    /// Drops a removed device's inbox (its messages went with it).
    pub(super) fn forget(&self, user: &UserId, device: &DeviceId) {
        self.lock().remove(&inbox(user, device));
    }
}

impl E2eeService {
    /// `PUT /sendToDevice/{type}/{txn}`: queues `messages` (user → device id or `*` →
    /// content) for local devices. Idempotent per sending device and transaction id.
    /// Unknown users and devices are skipped. Durable on return.
    #[tracing::instrument(skip_all, fields(user = %sender, kind = event_type))]
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        event_type: &str,
        txn_id: &str,
        messages: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<()> {
        self.send_to_device_now(sender, sender_device, event_type, txn_id, messages)?;
        self.storage.durable().await
    }

    /// [`Self::send_to_device`] without waiting for durability.
    pub(crate) fn send_to_device_now(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        event_type: &str,
        txn_id: &str,
        messages: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<()> {
        let trees = &self.storage.trees;
        let txn_key = skeys::strs(&[sender.as_str(), sender_device.as_str(), txn_id]);
        if trees.to_device_txns.contains(&txn_key)? {
            return Ok(());
        }
        if event_type.is_empty() {
            return Err(Error::invalid_param("event type must not be empty"));
        }
        for devices in messages.values() {
            if devices.values().any(|c| !c.is_object()) {
                return Err(Error::bad_json("to-device content must be a JSON object"));
            }
        }
        // Explicitly addressed devices win over `*` for the same device.
        let mut deliveries: BTreeMap<(OwnedUserId, OwnedDeviceId), &Value> = BTreeMap::new();
        for (user, devices) in messages {
            if user.server_name().as_str() != self.users.server_name() {
                tracing::debug!(user = %user, "to-device message for a remote user dropped");
                continue;
            }
            if let Some(content) = devices.get(ALL_DEVICES) {
                for device in self.users.list_devices(user)? {
                    deliveries.insert((user.clone(), device.device_id), content);
                }
            }
            for (device, content) in devices {
                if device == ALL_DEVICES {
                    continue;
                }
                let device = OwnedDeviceId::from(device.as_str());
                if self.users.device(user, &device)?.is_some() {
                    deliveries.insert((user.clone(), device), content);
                }
            }
        }
        let inboxes: Vec<Vec<u8>> = deliveries
            .keys()
            .filter(|(user, _)| self.encrypted_appservice(user).is_none())
            .map(|(user, device)| inbox(user, device))
            .collect();
        let fill = |pos: u64, batch: &mut Batch| {
            for ((user, device), content) in &deliveries {
                if let Some(reg) = self.encrypted_appservice(user) {
                    // The appservice's transactions carry it (MSC3202), not a sync.
                    let key = skeys::KeyBuilder::new()
                        .str(&reg.id)
                        .u64(pos)
                        .str(user.as_str())
                        .str(device.as_str())
                        .build();
                    let event = json!({
                        "sender": sender, "type": event_type, "content": content,
                        "to_user_id": user, "to_device_id": device,
                    });
                    batch.insert_json(&trees.appservice_to_device, &key, &event)?;
                    continue;
                }
                let mut key = inbox(user, device);
                key.extend_from_slice(&pos.to_be_bytes());
                let event = json!({ "sender": sender, "type": event_type, "content": content });
                batch.insert_json(&trees.to_device, &key, &event)?;
            }
            batch.insert(&trees.to_device_txns, &txn_key, b"");
            Ok(())
        };
        // The inboxes are noted before the position becomes visible: a sync that may
        // return these messages finds them.
        self.pos.commit_next(&self.storage, fill, |pos| {
            self.to_device_queued.queued(&inboxes, pos)
        })?;
        let mut recipients: Vec<&UserId> = deliveries.keys().map(|(u, _)| u.as_ref()).collect();
        recipients.dedup();
        self.notifier.notify(recipients);
        Ok(())
    }

    /// The to-device messages of a device for `/sync`: those up to `since` are
    /// acknowledged and deleted, then up to [`TO_DEVICE_LIMIT`] after it and not after
    /// `upto` are returned.
    pub fn to_device_for_sync(
        &self,
        user: &UserId,
        device: &DeviceId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<ToDeviceBatch> {
        let tree = &self.storage.trees.to_device;
        let inbox = inbox(user, device);
        let at = |pos: u64| {
            let mut key = inbox.clone();
            key.extend_from_slice(&pos.to_be_bytes());
            key
        };
        let mut out = ToDeviceBatch::default();
        self.to_device_queued.load_if_stale(&self.storage)?;
        let Some(newest) = self.to_device_queued.newest(&inbox) else {
            return Ok(out);
        };
        let since = since.unwrap_or(0);
        if since > 0 {
            let mut batch = Batch::new();
            let to = at(since.saturating_add(1));
            for kv in tree.range(&at(0), &to, false) {
                batch.remove(tree, &kv?.0);
            }
            self.storage.commit(batch)?;
            if newest <= since {
                self.to_device_queued.emptied(&inbox, newest);
                return Ok(out);
            }
        }
        if upto <= since {
            return Ok(out);
        }
        let from = at(since + 1);
        let to = at(upto.saturating_add(1));
        let mut last = None;
        for kv in tree.range(&from, &to, false) {
            let (k, v) = kv?;
            if out.events.len() >= TO_DEVICE_LIMIT {
                out.limited_at = last;
                break;
            }
            last = skeys::trailing_u64(&k);
            out.events.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::{inbox, Queued};
    use crate::e2ee::tests::{login, services};

    #[test]
    fn inboxes_with_messages_are_tracked_and_found_again_after_a_restart() {
        let s = services();
        let (alice, adev) = login(&s, "alice");
        let (bob, b1) = login(&s, "bob");
        let bob_inbox = inbox(&bob, &b1);
        let reloaded = || {
            let queued = Queued::default();
            queued.read_stored(&s.e2ee.storage).unwrap();
            queued.newest(&bob_inbox)
        };
        assert_eq!(s.e2ee.to_device_queued.newest(&bob_inbox), None);
        let send = |txn: &str| {
            let messages = BTreeMap::from([(
                bob.clone(),
                BTreeMap::from([(b1.to_string(), json!({ "n": txn }))]),
            )]);
            s.e2ee
                .send_to_device_now(&alice, &adev, "m.test", txn, &messages)
                .unwrap();
            s.e2ee.current_pos()
        };

        let first = send("1");
        assert_eq!(s.e2ee.to_device_queued.newest(&bob_inbox), Some(first));
        assert_eq!(
            reloaded(),
            Some(first),
            "a restart finds the queued message"
        );
        let second = send("2");
        assert_eq!(reloaded(), Some(second));

        // Acknowledging the first keeps the inbox; acknowledging both empties it.
        let got = s
            .e2ee
            .to_device_for_sync(&bob, &b1, Some(first), second)
            .unwrap();
        assert_eq!(got.events.len(), 1);
        assert_eq!(got.events[0]["content"]["n"], "2");
        let got = s
            .e2ee
            .to_device_for_sync(&bob, &b1, Some(second), second)
            .unwrap();
        assert!(got.events.is_empty());
        assert_eq!(s.e2ee.to_device_queued.newest(&bob_inbox), None);
        assert_eq!(reloaded(), None, "acknowledged messages are deleted");

        // A message after that is delivered again.
        let third = send("3");
        let got = s
            .e2ee
            .to_device_for_sync(&bob, &b1, Some(second), third)
            .unwrap();
        assert_eq!(got.events.len(), 1);
        assert_eq!(got.events[0]["content"]["n"], "3");

        // A removed device's inbox goes with it.
        s.users
            .remove_devices_now(&bob, std::slice::from_ref(&b1))
            .unwrap();
        assert_eq!(s.e2ee.to_device_queued.newest(&bob_inbox), None);
        assert_eq!(reloaded(), None);
    }
}
