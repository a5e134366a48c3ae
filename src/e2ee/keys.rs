//! Device keys, one-time keys and fallback keys: upload, query and claim.

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{object, E2eeService};
use crate::{storage::keys as skeys, Error, Result};

/// Algorithm whose one-time-key count is always reported, even at zero.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// A stored fallback key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct FallbackKey {
    /// `algorithm:key_id`.
    key_id: String,
    /// The key as uploaded.
    key: Value,
    /// Whether it was handed out by `/keys/claim`.
    used: bool,
}

/// The answer to `/keys/query`, as JSON values.
#[derive(Clone, Debug, Default)]
pub struct KeyQuery {
    /// user → device → device keys (with `unsigned.device_display_name`).
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    /// user → master key.
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    /// user → self-signing key.
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// The requester's own user-signing key.
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// server name → why its users could not be queried.
    pub failures: BTreeMap<String, Value>,
}

/// user → device → `algorithm:key_id` → key: what `/keys/claim` handed out.
pub type ClaimedKeys = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<String, Value>>>;

/// Splits `algorithm:key_id`, both parts non-empty.
fn split_key_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once(':') {
        Some((alg, key)) if !alg.is_empty() && !key.is_empty() => Ok((alg, key)),
        _ => Err(Error::invalid_param(format!(
            "invalid key id {id:?}: expected algorithm:key_id"
        ))),
    }
}

/// A one-time or fallback key is an unpadded base64 string or an object with `key`.
fn check_key_value(id: &str, value: &Value) -> Result<()> {
    let ok = match value {
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => o.get("key").is_some_and(Value::is_string),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::bad_json(format!(
            "key {id:?} must be a string or an object with a string key"
        )))
    }
}

/// Checks uploaded device keys against the uploading device; returns them as stored
/// (without `unsigned`).
fn check_device_keys(user: &UserId, device: &DeviceId, keys: &Value) -> Result<Value> {
    let obj = object(keys, "device_keys")?;
    if obj.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.user_id does not match the authenticated user",
        ));
    }
    if obj.get("device_id").and_then(Value::as_str) != Some(device.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.device_id does not match the authenticated device",
        ));
    }
    let algorithms_ok = obj
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_string));
    let keys_ok = obj
        .get("keys")
        .and_then(Value::as_object)
        .is_some_and(|k| k.iter().all(|(id, v)| id.contains(':') && v.is_string()));
    let signatures_ok = obj
        .get("signatures")
        .and_then(Value::as_object)
        .is_some_and(|s| s.values().all(Value::is_object));
    if !(algorithms_ok && keys_ok && signatures_ok) {
        return Err(Error::bad_json(
            "device_keys needs algorithms (strings), keys (algorithm:id → string) and signatures",
        ));
    }
    let mut stored = obj.clone();
    stored.remove("unsigned");
    Ok(Value::Object(stored))
}

impl E2eeService {
    /// Stores `device_id` as `user`'s dehydrated device (MSC3814; replacing the previous
    /// one) with its device, one-time and fallback keys, all checked before anything is
    /// written. Durable on return.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_dehydrated_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
        device_data: Value,
        device_keys: &Value,
        one_time_keys: &BTreeMap<String, Value>,
        fallback_keys: &BTreeMap<String, Value>,
    ) -> Result<()> {
        self.check_upload(user, device_id, device_keys, one_time_keys, fallback_keys)?;
        self.users
            .put_dehydrated_device_now(user, device_id, display_name, device_data)?;
        self.upload_keys_now(
            user,
            device_id,
            Some(device_keys),
            one_time_keys,
            fallback_keys,
        )?;
        self.storage.durable().await
    }

    /// Checks an upload of keys for `device` without storing anything: the same checks
    /// as [`E2eeService::upload_keys`] makes (for uploads that write other records first).
    fn check_upload(
        &self,
        user: &UserId,
        device: &DeviceId,
        device_keys: &Value,
        one_time_keys: &BTreeMap<String, Value>,
        fallback_keys: &BTreeMap<String, Value>,
    ) -> Result<()> {
        check_device_keys(user, device, device_keys)?;
        for (id, value) in one_time_keys.iter().chain(fallback_keys) {
            split_key_id(id)?;
            check_key_value(id, value)?;
        }
        Ok(())
    }

    /// `/keys/upload`: stores the device's identity keys, new one-time keys and fallback
    /// keys after checking all of them (nothing is written when any is bad). Returns the
    /// device's one-time-key counts. Not yet durable.
    #[tracing::instrument(skip_all, fields(user = %user, device = %device))]
    /// Durable on return.
    pub async fn upload_keys(
        &self,
        user: &UserId,
        device: &DeviceId,
        device_keys: Option<&Value>,
        one_time_keys: &BTreeMap<String, Value>,
        fallback_keys: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, u64>> {
        let value =
            self.upload_keys_now(user, device, device_keys, one_time_keys, fallback_keys)?;
        self.storage.durable().await?;
        Ok(value)
    }

    /// [`Self::upload_keys`] without waiting for durability.
    pub(crate) fn upload_keys_now(
        &self,
        user: &UserId,
        device: &DeviceId,
        device_keys: Option<&Value>,
        one_time_keys: &BTreeMap<String, Value>,
        fallback_keys: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, u64>> {
        let trees = &self.storage.trees;
        let device_key = skeys::strs(&[user.as_str(), device.as_str()]);

        let mut replaced_device_keys = false;
        let new_device_keys = match device_keys {
            Some(keys) => {
                let stored = check_device_keys(user, device, keys)?;
                let old: Option<Value> = trees.device_keys.get_json(&device_key)?;
                replaced_device_keys = old.is_some();
                (old.as_ref() != Some(&stored)).then_some(stored)
            }
            None => None,
        };

        let mut new_otks = Vec::new();
        for (id, value) in one_time_keys {
            split_key_id(id)?;
            check_key_value(id, value)?;
            let key = skeys::KeyBuilder::new()
                .str(user.as_str())
                .str(device.as_str())
                .str(id)
                .build();
            match trees.one_time_keys.get_json::<Value>(&key)? {
                Some(old) if &old == value => {}
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "one-time key {id} already exists with different content"
                    )))
                }
                None => new_otks.push((key, value)),
            }
        }

        let mut new_fallbacks: BTreeMap<&str, FallbackKey> = BTreeMap::new();
        for (id, value) in fallback_keys {
            let (alg, _) = split_key_id(id)?;
            check_key_value(id, value)?;
            let fresh = FallbackKey {
                key_id: id.clone(),
                key: value.clone(),
                used: false,
            };
            if new_fallbacks.insert(alg, fresh).is_some() {
                return Err(Error::invalid_param(format!(
                    "more than one fallback key for {alg}"
                )));
            }
        }
        let mut fallback_writes = Vec::new();
        for (alg, fresh) in new_fallbacks {
            let key = skeys::strs(&[user.as_str(), device.as_str(), alg]);
            let old: Option<FallbackKey> = trees.fallback_keys.get_json(&key)?;
            // Re-uploading the same key keeps its `used` flag.
            if old
                .as_ref()
                .is_some_and(|o| o.key_id == fresh.key_id && o.key == fresh.key)
            {
                continue;
            }
            fallback_writes.push((key, fresh));
        }

        let counts_changed = !new_otks.is_empty() || !fallback_writes.is_empty();
        if new_device_keys.is_some() || counts_changed {
            self.commit_with_pos(|pos, batch| {
                if let Some(keys) = &new_device_keys {
                    if replaced_device_keys {
                        // Signatures made over the old keys do not cover the new ones.
                        for kv in trees.key_signatures.scan_prefix(&device_key) {
                            batch.remove(&trees.key_signatures, &kv?.0);
                        }
                    }
                    batch.insert_json(&trees.device_keys, &device_key, keys)?;
                    self.mark_device_list_change(user, pos, batch)?;
                }
                for (key, value) in &new_otks {
                    batch.insert_json(&trees.one_time_keys, key, value)?;
                }
                for (key, fallback) in &fallback_writes {
                    batch.insert_json(&trees.fallback_keys, key, fallback)?;
                }
                if counts_changed {
                    self.mark_key_count_change(user, device, pos, batch);
                }
                Ok(())
            })?;
            if counts_changed {
                self.key_counts.changed(user, device);
            }
            if new_device_keys.is_some() {
                self.notify_trackers(user)?;
            } else {
                self.notifier.notify_user(user);
            }
        }
        self.one_time_key_counts(user, device)
    }

    /// Unclaimed one-time keys of a device per algorithm (`signed_curve25519` always
    /// present).
    pub fn one_time_key_counts(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let prefix = skeys::strs(&[user.as_str(), device.as_str()]);
        let mut counts = BTreeMap::new();
        counts.insert(SIGNED_CURVE25519.to_owned(), 0);
        for kv in self.storage.trees.one_time_keys.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = skeys::split_strs(&k[prefix.len()..]).into_iter().next();
            if let Some((alg, _)) = id.and_then(|id| id.split_once(':')) {
                *counts.entry(alg.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Algorithms for which the device has a fallback key that was not handed out yet.
    pub fn unused_fallback_key_types(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Vec<String>> {
        let prefix = skeys::strs(&[user.as_str(), device.as_str()]);
        let mut out = Vec::new();
        for kv in self.storage.trees.fallback_keys.scan_prefix(&prefix) {
            let (_, v) = kv?;
            let key: FallbackKey = serde_json::from_slice(&v)?;
            if !key.used {
                if let Ok((alg, _)) = split_key_id(&key.key_id) {
                    out.push(alg.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Adds to `value["signatures"]` the stored signatures on `key_id` of `target` that
    /// `viewer` may see: the target's own and the viewer's.
    pub(super) fn merge_signatures(
        &self,
        target: &UserId,
        key_id: &str,
        viewer: &UserId,
        value: &mut Value,
    ) -> Result<()> {
        let prefix = skeys::strs(&[target.as_str(), key_id]);
        for kv in self.storage.trees.key_signatures.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let parts = skeys::split_strs(&k[prefix.len()..]);
            let [signer, signer_key] = parts[..] else {
                continue;
            };
            if signer != target.as_str() && signer != viewer.as_str() {
                continue;
            }
            let signature: Value = serde_json::from_slice(&v)?;
            if !value.get("signatures").is_some_and(Value::is_object) {
                value["signatures"] = json!({});
            }
            let signatures = &mut value["signatures"];
            if !signatures.get(signer).is_some_and(Value::is_object) {
                signatures[signer] = json!({});
            }
            signatures[signer][signer_key] = signature;
        }
        Ok(())
    }

    /// The stored device keys of one device, as `viewer` sees them (display name and
    /// visible signatures added), if the device exists and uploaded keys.
    fn device_keys_for(
        &self,
        user: &UserId,
        device: &DeviceId,
        viewer: &UserId,
    ) -> Result<Option<Value>> {
        let key = skeys::strs(&[user.as_str(), device.as_str()]);
        let Some(mut keys) = self.storage.trees.device_keys.get_json::<Value>(&key)? else {
            return Ok(None);
        };
        let Some(record) = self.users.device(user, device)? else {
            return Ok(None);
        };
        self.merge_signatures(user, device.as_str(), viewer, &mut keys)?;
        if let Some(name) = record.display_name {
            keys["unsigned"] = json!({ "device_display_name": name });
        }
        Ok(Some(keys))
    }

    /// `/keys/query`: device keys of the requested users (an empty device list means every
    /// device) and their cross-signing keys; the user-signing key only of the requester.
    #[tracing::instrument(skip_all, fields(user = %requester))]
    pub fn query_keys(
        &self,
        requester: &UserId,
        request: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<KeyQuery> {
        let mut out = KeyQuery::default();
        for (user, devices) in request {
            if user.server_name().as_str() != self.users.server_name() {
                out.failures.insert(
                    user.server_name().to_string(),
                    json!({ "errcode": "M_UNKNOWN", "error": "Federation is not available" }),
                );
                continue;
            }
            let entry = out.device_keys.entry(user.clone()).or_default();
            let ids: Vec<OwnedDeviceId> = if devices.is_empty() {
                let prefix = skeys::strs(&[user.as_str()]);
                let mut ids = Vec::new();
                for kv in self.storage.trees.device_keys.scan_prefix(&prefix) {
                    let (k, _) = kv?;
                    if let Some(id) = skeys::split_strs(&k[prefix.len()..]).first() {
                        ids.push(OwnedDeviceId::from(*id));
                    }
                }
                ids
            } else {
                devices.clone()
            };
            for id in ids {
                if let Some(keys) = self.device_keys_for(user, &id, requester)? {
                    entry.insert(id, keys);
                }
            }
            for (kind, map) in [
                ("master", &mut out.master_keys),
                ("self_signing", &mut out.self_signing_keys),
                ("user_signing", &mut out.user_signing_keys),
            ] {
                if kind == "user_signing" && user != requester {
                    continue;
                }
                if let Some(key) = self.cross_signing_key_for(user, kind, requester)? {
                    map.insert(user.clone(), key);
                }
            }
        }
        Ok(out)
    }

    /// `/keys/claim`: takes one one-time key per requested device and algorithm, removing
    /// it; when none is left, hands out the fallback key (marking it used). Not yet
    /// durable.
    #[tracing::instrument(skip_all)]
    /// Durable on return.
    pub async fn claim_keys(
        &self,
        request: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<(ClaimedKeys, BTreeMap<String, Value>)> {
        let value = self.claim_keys_now(request)?;
        self.storage.durable().await?;
        Ok(value)
    }

    /// [`Self::claim_keys`] without waiting for durability.
    pub(crate) fn claim_keys_now(
        &self,
        request: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<(ClaimedKeys, BTreeMap<String, Value>)> {
        let mut claimed = ClaimedKeys::new();
        let mut failures = BTreeMap::new();
        for (user, devices) in request {
            if user.server_name().as_str() != self.users.server_name() {
                failures.insert(
                    user.server_name().to_string(),
                    json!({ "errcode": "M_UNKNOWN", "error": "Federation is not available" }),
                );
                continue;
            }
            for (device, algorithm) in devices {
                let got = match self.take_one_time_key(user, device, algorithm)? {
                    Some(found) => Some(found),
                    None => self.use_fallback_key(user, device, algorithm)?,
                };
                let Some((id, key)) = got else { continue };
                claimed
                    .entry(user.clone())
                    .or_default()
                    .entry(device.clone())
                    .or_default()
                    .insert(id, key);
                let marked = self.commit_with_pos(|pos, batch| {
                    self.mark_key_count_change(user, device, pos, batch);
                    Ok(())
                });
                // The key is taken even if recording the change failed.
                self.key_counts.changed(user, device);
                marked?;
                self.notifier.notify_user(user);
            }
        }
        Ok((claimed, failures))
    }

    /// Atomically removes and returns one one-time key of `algorithm`.
    fn take_one_time_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, Value)>> {
        let tree = &self.storage.trees.one_time_keys;
        let prefix = skeys::KeyBuilder::new()
            .str(user.as_str())
            .str(device.as_str())
            .str_start(&format!("{algorithm}:"))
            .build();
        // Each failed swap means a concurrent claim took that key, so this ends.
        loop {
            let Some(kv) = tree.scan_prefix(&prefix).next() else {
                return Ok(None);
            };
            let (k, v) = kv?;
            // Only the claim that removes the key gets it.
            if tree.compare_and_swap(&k, Some(&v), None)? {
                let base = skeys::strs(&[user.as_str(), device.as_str()]).len();
                let id = skeys::split_strs(&k[base..])
                    .first()
                    .map(|s| (*s).to_owned())
                    .unwrap_or_default();
                return Ok(Some((id, serde_json::from_slice(&v)?)));
            }
        }
    }

    /// The fallback key of `algorithm`, marked used.
    fn use_fallback_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, Value)>> {
        let tree = &self.storage.trees.fallback_keys;
        let key = skeys::strs(&[user.as_str(), device.as_str(), algorithm]);
        let Some(mut fallback) = tree.get_json::<FallbackKey>(&key)? else {
            return Ok(None);
        };
        if !fallback.used {
            fallback.used = true;
            tree.insert(&key, &serde_json::to_vec(&fallback)?)?;
        }
        Ok(Some((fallback.key_id, fallback.key)))
    }
}
