//! Access tokens: issued per device at login or registration, stored only as SHA-256
//! hashes in the `tokens` tree; the device record remembers its token's hash so the
//! token dies with the device.

use rand::{distributions::Alphanumeric, Rng};
use ruma::{DeviceId, OwnedDeviceId, UserId};

use super::{devices::Device, now_ms, token_key, DeviceChange, Session, UsersService};
use crate::{
    storage::{keys, Batch},
    Error, Result,
};

/// A new random access token.
fn generate_token() -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("myl_{body}")
}

/// A new random device id: ten uppercase letters.
fn generate_device_id() -> OwnedDeviceId {
    let id: String = (0..10)
        .map(|_| char::from(rand::thread_rng().gen_range(b'A'..=b'Z')))
        .collect();
    OwnedDeviceId::from(id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl UsersService {
    /// Issues an access token on `device_id` (reusing that device, and dropping its old
    /// token, when it exists; a new random device otherwise). Returns the token and the
    /// device id; durable on return.
    pub async fn create_session(
        &self,
        user: &UserId,
        device_id: Option<&DeviceId>,
        display_name: Option<String>,
    ) -> Result<(String, OwnedDeviceId)> {
        let session = self.create_session_now(user, device_id, display_name)?;
        self.storage.durable().await?;
        Ok(session)
    }

    /// [`Self::create_session`] without waiting for durability (composed operations and
    /// unit tests).
    pub(crate) fn create_session_now(
        &self,
        user: &UserId,
        device_id: Option<&DeviceId>,
        display_name: Option<String>,
    ) -> Result<(String, OwnedDeviceId)> {
        super::devices::check_new_device(device_id, display_name.as_deref())?;
        let account = self
            .account(user)?
            .ok_or_else(|| Error::forbidden("Unknown user"))?;
        if account.deactivated {
            return Err(Error::user_deactivated());
        }
        let device_id = device_id
            .map(ToOwned::to_owned)
            .unwrap_or_else(generate_device_id);
        let trees = &self.storage.trees;
        let key = keys::strs(&[user.as_str(), device_id.as_str()]);
        let mut batch = Batch::new();
        let existing = trees.devices.get_json::<Device>(&key)?;
        let is_new = existing.is_none();
        let mut device = match existing {
            Some(old) => {
                self.revoke_token_into(&old, &mut batch);
                old
            }
            None => Device::new(device_id.clone()),
        };
        if display_name.is_some() {
            device.display_name = display_name;
        }
        let token = generate_token();
        let hash = token_key(&token);
        device.token_hash = Some(hex(&hash));
        device.last_seen_ts = Some(now_ms());
        let session = Session {
            user_id: user.to_owned(),
            device_id: device_id.clone(),
            is_guest: account.guest,
            rate_limit_exempt: false,
            appservice: None,
        };
        batch.insert_json(&trees.tokens, &hash, &session)?;
        batch.insert_json(&trees.devices, &key, &device)?;
        self.storage.commit(batch)?;
        if is_new {
            self.devices_changed(user, std::slice::from_ref(&device_id), DeviceChange::Added)?;
        }
        Ok((token, device_id))
    }

    /// Adds to `batch` the removal of a device's token, which stops working (also from
    /// the cache) once the batch is applied.
    fn revoke_token_into(&self, device: &Device, batch: &mut Batch) {
        let Some(hash) = device.token_hash.as_deref().and_then(unhex) else {
            return;
        };
        if let Ok(key) = <[u8; 32]>::try_from(hash.as_slice()) {
            batch.hold(self.token_cache.revoke(key));
        }
        batch.remove(&self.storage.trees.tokens, &hash);
    }

    /// Adds to `batch` the removal of one device and its token.
    pub(super) fn remove_device_into(&self, user: &UserId, device: &Device, batch: &mut Batch) {
        let trees = &self.storage.trees;
        self.revoke_token_into(device, batch);
        batch.remove(
            &trees.devices,
            &keys::strs(&[user.as_str(), device.device_id.as_str()]),
        );
        // E2EE: the device's keys go in the `on_devices_changed` callback after commit.
    }

    /// Adds to `batch` the removal of every device (and token) of `user` but `except`;
    /// returns the ids of the devices removed.
    pub(super) fn remove_all_devices_into(
        &self,
        user: &UserId,
        except: Option<&DeviceId>,
        batch: &mut Batch,
    ) -> Result<Vec<OwnedDeviceId>> {
        let mut removed = Vec::new();
        for device in self.list_devices(user)? {
            if Some(device.device_id.as_ref()) != except {
                self.remove_device_into(user, &device, batch);
                removed.push(device.device_id);
            }
        }
        Ok(removed)
    }

    /// Logs out one session: its token and its device go; durable on return.
    pub async fn logout(&self, session: &Session) -> Result<()> {
        self.remove_device_now(&session.user_id, &session.device_id)?;
        self.storage.durable().await
    }

    /// Logs out every session of `user`; durable on return.
    pub async fn logout_all(&self, user: &UserId) -> Result<()> {
        self.logout_all_now(user)?;
        self.storage.durable().await
    }

    /// [`Self::logout_all`] without waiting for durability.
    pub(crate) fn logout_all_now(&self, user: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        let removed = self.remove_all_devices_into(user, None, &mut batch)?;
        self.storage.commit(batch)?;
        self.devices_changed(user, &removed, DeviceChange::Removed)
    }

    /// Logs out every session of `user` except `keep`'s device; durable on return.
    pub async fn logout_others(&self, user: &UserId, keep: &DeviceId) -> Result<()> {
        let mut batch = Batch::new();
        let removed = self.remove_all_devices_into(user, Some(keep), &mut batch)?;
        self.storage.commit(batch)?;
        self.devices_changed(user, &removed, DeviceChange::Removed)?;
        self.storage.durable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::test_support::service;

    #[test]
    fn tokens_authenticate_until_logout() {
        let s = service();
        let alice = s.create_user("alice", Some("pw"), false).unwrap();
        let (token, device) = s
            .create_session_now(&alice, None, Some("phone".into()))
            .unwrap();
        let session = s.authenticate(&token).unwrap();
        assert_eq!(session.user_id, alice);
        assert_eq!(session.device_id, device);
        assert!(!session.is_guest);
        assert!(
            s.storage
                .trees
                .tokens
                .get(token.as_bytes())
                .unwrap()
                .is_none(),
            "stored hashed"
        );

        // Re-login on the same device replaces the token and keeps the device.
        let (token2, device2) = s.create_session_now(&alice, Some(&device), None).unwrap();
        assert_eq!(device2, device);
        assert_eq!(
            s.authenticate(&token).unwrap_err().errcode(),
            "M_UNKNOWN_TOKEN"
        );
        assert_eq!(
            s.list_devices(&alice).unwrap()[0].display_name.as_deref(),
            Some("phone")
        );

        let (token3, _) = s.create_session_now(&alice, None, None).unwrap();
        let session2 = s.authenticate(&token2).unwrap();
        s.remove_device_now(&session2.user_id, &session2.device_id)
            .unwrap();
        assert!(s.authenticate(&token2).is_err());
        assert!(s.authenticate(&token3).is_ok());
        s.logout_all_now(&alice).unwrap();
        assert!(s.authenticate(&token3).is_err());
        assert!(s.list_devices(&alice).unwrap().is_empty());
    }

    #[test]
    fn a_revoked_token_stays_revoked_under_concurrent_lookups() {
        let s = service();
        let alice = s.create_user("alice", Some("pw"), false).unwrap();
        for _ in 0..50 {
            let (token, device) = s.create_session_now(&alice, None, None).unwrap();
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = s.authenticate(&token);
                        }
                    });
                }
                let cached = s.authenticate(&token);
                let removed = s.remove_device_now(&alice, &device);
                let after = s.authenticate(&token);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                cached.unwrap();
                removed.unwrap();
                assert_eq!(after.unwrap_err().errcode(), "M_UNKNOWN_TOKEN");
            });
            assert!(s.authenticate(&token).is_err());
        }
    }

    #[test]
    fn deactivation_kills_tokens() {
        let s = service();
        let alice = s.create_user("alice", Some("pw"), false).unwrap();
        let (token, _) = s.create_session_now(&alice, None, None).unwrap();
        // Looked up once, so the session is served from memory until revoked.
        s.authenticate(&token).unwrap();
        s.deactivate(&alice).unwrap();
        assert!(s.authenticate(&token).is_err());
        assert_eq!(
            s.create_session_now(&alice, None, None)
                .unwrap_err()
                .errcode(),
            "M_USER_DEACTIVATED"
        );
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("abc").is_none());
    }
}
