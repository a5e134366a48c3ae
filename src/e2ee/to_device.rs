//! To-device messages: queued per recipient device at an e2ee stream position, delivered
//! by `/sync`, and deleted once the device syncs with a token past them. Messages for the
//! users of an encrypted appservice (MSC3202) are queued for that appservice instead
//! (see `crate::appservice::e2ee`).

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::E2eeService;
use crate::{
    storage::{keys as skeys, Batch},
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
        self.commit_with_pos(|pos, batch| {
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
                let key = skeys::KeyBuilder::new()
                    .str(user.as_str())
                    .str(device.as_str())
                    .u64(pos)
                    .build();
                let event = json!({ "sender": sender, "type": event_type, "content": content });
                batch.insert_json(&trees.to_device, &key, &event)?;
            }
            batch.insert(&trees.to_device_txns, &txn_key, b"");
            Ok(())
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
        let base = || {
            skeys::KeyBuilder::new()
                .str(user.as_str())
                .str(device.as_str())
        };
        let since = since.unwrap_or(0);
        if since > 0 {
            let mut batch = Batch::new();
            let to = base().u64(since.saturating_add(1)).build();
            for kv in tree.range(&base().u64(0).build(), &to, false) {
                batch.remove(tree, &kv?.0);
            }
            self.storage.commit(batch)?;
        }
        let mut out = ToDeviceBatch::default();
        if upto <= since {
            return Ok(out);
        }
        let from = base().u64(since + 1).build();
        let to = base().u64(upto.saturating_add(1)).build();
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
