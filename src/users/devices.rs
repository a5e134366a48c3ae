//! Devices: one per login, listed, renamed and deleted by their owner.

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::{DeviceChange, UsersService};
use crate::{
    storage::{keys, Batch},
    Error, Result,
};

/// The stored device record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    /// The device id.
    pub device_id: OwnedDeviceId,
    /// The name the user gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Last IP address seen using it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ip: Option<String>,
    /// Last time it was used, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ts: Option<u64>,
    /// Hex SHA-256 of its current access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// For the user's dehydrated device (MSC3814, no token): its `device_data`, which
    /// only the user's clients can open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dehydrated: Option<serde_json::Value>,
}

impl Device {
    /// A fresh device record.
    pub fn new(device_id: OwnedDeviceId) -> Device {
        Device {
            device_id,
            display_name: None,
            last_seen_ip: None,
            last_seen_ts: None,
            token_hash: None,
            dehydrated: None,
        }
    }
}

/// Longest accepted device display name in bytes.
const MAX_DISPLAY_NAME_LEN: usize = 256;
/// Longest accepted client-chosen device id in bytes (the spec's limit on identifiers).
const MAX_DEVICE_ID_LEN: usize = 255;

/// Checks what a client asks for at login or registration: a device id of 1 to 255 bytes
/// and a display name of at most 256 bytes (400 `M_INVALID_PARAM` otherwise).
pub fn check_new_device(device_id: Option<&DeviceId>, display_name: Option<&str>) -> Result<()> {
    if let Some(id) = device_id {
        if id.as_str().is_empty() || id.as_str().len() > MAX_DEVICE_ID_LEN {
            return Err(Error::invalid_param(format!(
                "device_id must be 1 to {MAX_DEVICE_ID_LEN} bytes"
            )));
        }
    }
    if display_name.is_some_and(|n| n.len() > MAX_DISPLAY_NAME_LEN) {
        return Err(Error::invalid_param(format!(
            "Device display name is longer than {MAX_DISPLAY_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

impl UsersService {
    /// Every device of `user`, ordered by id.
    pub fn list_devices(&self, user: &UserId) -> Result<Vec<Device>> {
        self.storage
            .trees
            .devices
            .scan_prefix(&keys::strs(&[user.as_str()]))
            .map(|r| Ok(serde_json::from_slice(&r?.1)?))
            .collect()
    }

    /// One device of `user`.
    pub fn device(&self, user: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        self.storage
            .trees
            .devices
            .get_json(&keys::strs(&[user.as_str(), device_id.as_str()]))
    }

    /// Creates a device without an access token (an application service managing its
    /// users' devices, MSC4190): the id is checked like a client's; an existing device is
    /// left as it is. Returns whether it was created. Durable on return.
    pub async fn create_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<bool> {
        check_new_device(Some(device_id), display_name.as_deref())?;
        let mut device = Device::new(device_id.to_owned());
        device.display_name = display_name;
        let created = self.storage.trees.devices.compare_and_swap(
            &keys::strs(&[user.as_str(), device_id.as_str()]),
            None,
            Some(serde_json::to_vec(&device)?),
        )?;
        if created {
            self.devices_changed(user, &[device_id.to_owned()], DeviceChange::Added)?;
        }
        self.storage.durable().await?;
        Ok(created)
    }

    /// Renames a device (`None` clears the name); `M_NOT_FOUND` for unknown devices.
    /// Durable on return.
    pub async fn set_device_display_name(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        name: Option<String>,
    ) -> Result<()> {
        self.set_device_display_name_now(user, device_id, name)?;
        self.storage.durable().await
    }

    /// [`Self::set_device_display_name`] without waiting for durability.
    pub(crate) fn set_device_display_name_now(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        name: Option<String>,
    ) -> Result<()> {
        if name
            .as_ref()
            .is_some_and(|n| n.len() > MAX_DISPLAY_NAME_LEN)
        {
            return Err(Error::invalid_param("Device display name is too long"));
        }
        let mut device = self
            .device(user, device_id)?
            .ok_or_else(|| Error::not_found("Unknown device"))?;
        device.display_name = name;
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.devices,
            &keys::strs(&[user.as_str(), device_id.as_str()]),
            &device,
        )?;
        self.storage.commit(batch)
    }

    /// Deletes a device and its token; unknown devices are ignored. Durable on return.
    pub async fn remove_device(&self, user: &UserId, device_id: &DeviceId) -> Result<()> {
        self.remove_device_now(user, device_id)?;
        self.storage.durable().await
    }

    /// [`Self::remove_device`] without waiting for durability.
    pub(crate) fn remove_device_now(&self, user: &UserId, device_id: &DeviceId) -> Result<()> {
        self.remove_devices_now(user, &[device_id.to_owned()])
    }

    /// Deletes several devices atomically; unknown ones are ignored. Durable on return.
    pub async fn remove_devices(&self, user: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        self.remove_devices_now(user, device_ids)?;
        self.storage.durable().await
    }

    /// [`Self::remove_devices`] without waiting for durability.
    pub(crate) fn remove_devices_now(
        &self,
        user: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<()> {
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for id in device_ids {
            if let Some(device) = self.device(user, id)? {
                self.remove_device_into(user, &device, &mut batch);
                removed.push(device.device_id);
            }
        }
        self.storage.commit(batch)?;
        self.devices_changed(user, &removed, DeviceChange::Removed)
    }
}

#[cfg(test)]
mod tests {
    use ruma::device_id;

    use crate::users::test_support::service;

    #[test]
    fn rename_and_delete_devices() {
        let s = service();
        let alice = s.create_user("alice", Some("pw"), false).unwrap();
        let (t1, d1) = s
            .create_session_now(&alice, Some(device_id!("AAA")), None)
            .unwrap();
        let (_t2, _d2) = s
            .create_session_now(&alice, Some(device_id!("BBB")), None)
            .unwrap();
        s.set_device_display_name_now(&alice, &d1, Some("laptop".into()))
            .unwrap();
        assert_eq!(
            s.device(&alice, &d1)
                .unwrap()
                .unwrap()
                .display_name
                .as_deref(),
            Some("laptop")
        );
        assert_eq!(
            s.set_device_display_name_now(&alice, device_id!("NOPE"), None)
                .unwrap_err()
                .errcode(),
            "M_NOT_FOUND"
        );
        s.remove_devices_now(&alice, &[d1.clone(), device_id!("NOPE").to_owned()])
            .unwrap();
        assert!(s.authenticate(&t1).is_err());
        let left: Vec<_> = s
            .list_devices(&alice)
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(left, vec![device_id!("BBB").to_owned()]);
    }
}
