//! Dehydrated devices (MSC3814): each user may keep one device without an access token
//! whose encrypted `device_data` a client of theirs stores and later rehydrates, so that
//! room keys sent while all their devices were offline still reach them. It is an
//! ordinary device record (with `dehydrated` set): it has keys, is listed, and to-device
//! messages queue for it until the rehydrating client fetches them.

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde_json::Value;

use super::{check_new_device, Device, DeviceChange, UsersService};
use crate::{
    storage::{keys, Batch},
    Error, Result,
};

impl UsersService {
    /// The user's dehydrated device, if any.
    pub fn dehydrated_device(&self, user: &UserId) -> Result<Option<Device>> {
        Ok(self
            .list_devices(user)?
            .into_iter()
            .find(|d| d.dehydrated.is_some()))
    }

    /// Stores `device_id` as the user's dehydrated device, replacing the previous one
    /// (which goes with its keys and queued messages). A device id already used by a
    /// device that is not dehydrated is refused (400 `M_INVALID_PARAM`). Not yet durable:
    /// `E2eeService::put_dehydrated_device` stores it with its keys and waits once.
    pub(crate) fn put_dehydrated_device_now(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
        data: Value,
    ) -> Result<()> {
        check_new_device(Some(device_id), display_name.as_deref())?;
        if !data.is_object() {
            return Err(Error::bad_json("device_data must be a JSON object"));
        }
        if self
            .device(user, device_id)?
            .is_some_and(|d| d.dehydrated.is_none())
        {
            return Err(Error::invalid_param(
                "This device id belongs to a device that is not dehydrated",
            ));
        }
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for old in self.list_devices(user)? {
            if old.dehydrated.is_some() {
                self.remove_device_into(user, &old, &mut batch);
                removed.push(old.device_id);
            }
        }
        let mut device = Device::new(device_id.to_owned());
        device.display_name = display_name;
        device.dehydrated = Some(data);
        batch.insert_json(
            &self.storage.trees.devices,
            &keys::strs(&[user.as_str(), device_id.as_str()]),
            &device,
        )?;
        self.storage.commit(batch)?;
        self.devices_changed(user, &removed, DeviceChange::Removed)?;
        self.devices_changed(user, &[device_id.to_owned()], DeviceChange::Added)
    }

    /// Deletes the user's dehydrated device (404 `M_NOT_FOUND` when there is none);
    /// returns its id. Durable on return.
    pub async fn delete_dehydrated_device(&self, user: &UserId) -> Result<OwnedDeviceId> {
        let device = self
            .dehydrated_device(user)?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        self.remove_device(user, &device.device_id).await?;
        Ok(device.device_id)
    }
}
