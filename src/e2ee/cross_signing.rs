//! Cross-signing keys (master, self-signing, user-signing) and uploaded signatures on
//! device keys and master keys. Signatures are verified (ed25519) before they are stored;
//! the keys themselves stay opaque.

use std::collections::BTreeMap;

use base64::Engine as _;
use ruma::{CanonicalJsonObject, OwnedUserId, SigningKeyAlgorithm, UserId};
use serde_json::{json, Map, Value};

use super::{object, E2eeService};
use crate::{storage::keys as skeys, Error, Result};

/// The three cross-signing key kinds, as stored and as named in `usage`.
const MASTER: &str = "master";
const SELF_SIGNING: &str = "self_signing";
const USER_SIGNING: &str = "user_signing";

/// 400 `M_INVALID_SIGNATURE`.
fn invalid_signature(message: impl Into<String>) -> Error {
    Error::matrix(crate::ErrorKind::Invalid, "M_INVALID_SIGNATURE", message)
}

/// The single `(key id, public key)` of a cross-signing key.
pub(super) fn public_key(key: &Value) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    Some((id.clone(), value.as_str()?.to_owned()))
}

/// The object without `signatures` and `unsigned`: what a signature covers.
fn signed_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    v
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Whether `signature` (unpadded base64) by the ed25519 `public_key` (unpadded base64)
/// covers `value`.
pub(super) fn verify_ed25519(value: &Value, public_key: &str, signature: &str) -> bool {
    let (Some(key), Some(sig)) = (decode_base64(public_key), decode_base64(signature)) else {
        return false;
    };
    let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(value.clone()) else {
        return false;
    };
    let Ok(canonical) = ruma::signatures::to_canonical_json_string_for_signing(&object) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &key,
        &sig,
        canonical.as_bytes(),
    )
    .is_ok()
}

/// Whether `value` carries a valid signature of `signer` by the key `(key_id, public)`.
fn signed_by(value: &Value, signer: &UserId, key_id: &str, public: &str) -> bool {
    value
        .get("signatures")
        .and_then(|s| s.get(signer.as_str()))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .is_some_and(|sig| verify_ed25519(value, public, sig))
}

/// Checks an uploaded cross-signing key; returns it as stored (without `unsigned`).
fn check_cross_signing_key(user: &UserId, key: &Value, usage: &str) -> Result<Value> {
    let obj = object(key, &format!("{usage} key"))?;
    if obj.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param(format!(
            "{usage} key user_id does not match the authenticated user"
        )));
    }
    let has_usage = obj
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage)));
    if !has_usage {
        return Err(Error::invalid_param(format!(
            "{usage} key must list {usage} in usage"
        )));
    }
    match public_key(key) {
        Some((id, public)) if id == format!("ed25519:{public}") && !public.is_empty() => {}
        _ => {
            return Err(Error::invalid_param(format!(
                "{usage} key must hold exactly one ed25519 key named after itself"
            )))
        }
    }
    let mut stored = obj.clone();
    stored.remove("unsigned");
    Ok(Value::Object(stored))
}

/// A failure entry of `/keys/signatures/upload`.
fn failure(errcode: &str, error: &str) -> Value {
    json!({ "errcode": errcode, "error": error })
}

impl E2eeService {
    /// A stored cross-signing key of `user`.
    fn cross_signing_key(&self, user: &UserId, kind: &str) -> Result<Option<Value>> {
        self.storage
            .trees
            .cross_signing_keys
            .get_json(&skeys::strs(&[user.as_str(), kind]))
    }

    /// A cross-signing key as `viewer` sees it (with the signatures visible to them).
    pub(super) fn cross_signing_key_for(
        &self,
        user: &UserId,
        kind: &str,
        viewer: &UserId,
    ) -> Result<Option<Value>> {
        let Some(mut key) = self.cross_signing_key(user, kind)? else {
            return Ok(None);
        };
        if let Some((_, public)) = public_key(&key) {
            self.merge_signatures(user, &public, viewer, &mut key)?;
        }
        Ok(Some(key))
    }

    /// Whether uploading these cross-signing keys needs user-interactive auth: only when
    /// the user already has a master key and the upload changes something.
    pub fn signing_keys_upload_needs_auth(
        &self,
        user: &UserId,
        keys: [Option<&Value>; 3],
    ) -> Result<bool> {
        if self.cross_signing_key(user, MASTER)?.is_none() {
            return Ok(false);
        }
        for (kind, key) in [MASTER, SELF_SIGNING, USER_SIGNING].into_iter().zip(keys) {
            if let Some(key) = key {
                let stored = self.cross_signing_key(user, kind)?;
                if stored.as_ref().map(signed_part) != Some(signed_part(key)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Checks cross-signing keys for upload without storing them: shape, owner, usage,
    /// and that the self-signing and user-signing keys are signed by the (new or stored)
    /// master key. Returns them as they would be stored.
    pub fn check_signing_keys(
        &self,
        user: &UserId,
        master: Option<&Value>,
        self_signing: Option<&Value>,
        user_signing: Option<&Value>,
    ) -> Result<[Option<Value>; 3]> {
        let master = master
            .map(|k| check_cross_signing_key(user, k, MASTER))
            .transpose()?;
        let self_signing = self_signing
            .map(|k| check_cross_signing_key(user, k, SELF_SIGNING))
            .transpose()?;
        let user_signing = user_signing
            .map(|k| check_cross_signing_key(user, k, USER_SIGNING))
            .transpose()?;
        let effective_master = match &master {
            Some(m) => Some(m.clone()),
            None => self.cross_signing_key(user, MASTER)?,
        };
        for (kind, key) in [(SELF_SIGNING, &self_signing), (USER_SIGNING, &user_signing)] {
            let Some(key) = key else { continue };
            let Some((master_id, master_public)) = effective_master.as_ref().and_then(public_key)
            else {
                return Err(Error::invalid_param(format!(
                    "a {kind} key needs a master key to be signed by"
                )));
            };
            if !signed_by(key, user, &master_id, &master_public) {
                return Err(invalid_signature(format!(
                    "the {kind} key is not signed by the master key"
                )));
            }
        }
        Ok([master, self_signing, user_signing])
    }

    /// `/keys/device_signing/upload`: stores cross-signing keys after checking them (see
    /// [`E2eeService::check_signing_keys`]). Not yet durable.
    #[tracing::instrument(skip_all, fields(user = %user))]
    /// Durable on return.
    pub async fn upload_signing_keys(
        &self,
        user: &UserId,
        master: Option<&Value>,
        self_signing: Option<&Value>,
        user_signing: Option<&Value>,
    ) -> Result<()> {
        self.upload_signing_keys_now(user, master, self_signing, user_signing)?;
        self.storage.durable().await
    }

    /// [`Self::upload_signing_keys`] without waiting for durability.
    pub(crate) fn upload_signing_keys_now(
        &self,
        user: &UserId,
        master: Option<&Value>,
        self_signing: Option<&Value>,
        user_signing: Option<&Value>,
    ) -> Result<()> {
        let [mut master, mut self_signing, mut user_signing] =
            self.check_signing_keys(user, master, self_signing, user_signing)?;
        // Keys identical to the stored ones (signatures aside) are left as they are: an
        // upload without auth must not rewrite their signatures.
        for (kind, key) in [
            (MASTER, &mut master),
            (SELF_SIGNING, &mut self_signing),
            (USER_SIGNING, &mut user_signing),
        ] {
            if let Some(new) = key.as_ref() {
                let stored = self.cross_signing_key(user, kind)?;
                if stored.as_ref().map(signed_part) == Some(signed_part(new)) {
                    *key = None;
                }
            }
        }
        if master.is_none() && self_signing.is_none() && user_signing.is_none() {
            return Ok(());
        }
        let trees = &self.storage.trees;
        self.commit_with_pos(|pos, batch| {
            for (kind, key) in [
                (MASTER, &master),
                (SELF_SIGNING, &self_signing),
                (USER_SIGNING, &user_signing),
            ] {
                if let Some(key) = key {
                    batch.insert_json(
                        &trees.cross_signing_keys,
                        &skeys::strs(&[user.as_str(), kind]),
                        key,
                    )?;
                }
            }
            self.mark_device_list_change(user, pos, batch)
        })?;
        self.notify_trackers(user)
    }

    /// The public key `signer` signs with as `sig_key_id` (`ed25519:NAME`) when signing
    /// `target`'s key: the self-signing key or a device key for their own keys, the
    /// user-signing key for another user's master key.
    fn signer_public_key(
        &self,
        signer: &UserId,
        sig_key_id: &str,
        own_master: bool,
        own: bool,
    ) -> Result<Option<String>> {
        let Some(name) = sig_key_id.strip_prefix("ed25519:") else {
            return Ok(None);
        };
        let kind = if !own {
            USER_SIGNING
        } else if own_master {
            // A device signs its owner's master key.
            let keys: Option<Value> = self
                .storage
                .trees
                .device_keys
                .get_json(&skeys::strs(&[signer.as_str(), name]))?;
            return Ok(keys.and_then(|k| {
                k.get("keys")
                    .and_then(|k| k.get(sig_key_id))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }));
        } else {
            SELF_SIGNING
        };
        Ok(self
            .cross_signing_key(signer, kind)?
            .and_then(|k| public_key(&k))
            .filter(|(_, public)| public == name)
            .map(|(_, public)| public))
    }

    /// `/keys/signatures/upload`: verifies and stores `signer`'s signatures on device keys
    /// and master keys. Returns failures per user and key id; valid signatures are stored
    /// even when others fail. Not yet durable.
    #[tracing::instrument(skip_all, fields(user = %signer))]
    /// Durable on return.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        signed: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Value>>> {
        let value = self.upload_signatures_now(signer, signed)?;
        self.storage.durable().await?;
        Ok(value)
    }

    /// [`Self::upload_signatures`] without waiting for durability.
    pub(crate) fn upload_signatures_now(
        &self,
        signer: &UserId,
        signed: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Value>>> {
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
        let mut writes: Vec<(Vec<u8>, String)> = Vec::new();
        let mut changed_users: Vec<OwnedUserId> = Vec::new();
        for (target, keys) in signed {
            for (key_id, uploaded) in keys {
                match self.check_signature_upload(signer, target, key_id, uploaded) {
                    Ok(new) => {
                        if !new.is_empty() && !changed_users.contains(target) {
                            // The signed user's keys changed: everyone sharing a room with
                            // them hears of it and queries them again; that is how the
                            // signer's other devices see a user-signing signature (visible
                            // to the signer only), as Synapse tells them.
                            changed_users.push(target.clone());
                        }
                        writes.extend(new);
                    }
                    Err(e @ Error::Matrix { .. }) => {
                        let body = e.body();
                        failures.entry(target.clone()).or_default().insert(
                            key_id.clone(),
                            failure(
                                body["errcode"].as_str().unwrap_or("M_UNKNOWN"),
                                body["error"].as_str().unwrap_or_default(),
                            ),
                        );
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        if !writes.is_empty() {
            let trees = &self.storage.trees;
            self.commit_with_pos(|pos, batch| {
                for (key, signature) in &writes {
                    batch.insert_json(&trees.key_signatures, key, signature)?;
                }
                for user in &changed_users {
                    self.mark_device_list_change(user, pos, batch)?;
                }
                Ok(())
            })?;
            for user in &changed_users {
                self.notify_trackers(user)?;
            }
        }
        Ok(failures)
    }

    /// Checks one signed key of a signature upload; returns the `key_signatures` entries
    /// to write.
    fn check_signature_upload(
        &self,
        signer: &UserId,
        target: &UserId,
        key_id: &str,
        uploaded: &Value,
    ) -> Result<Vec<(Vec<u8>, String)>> {
        let own = signer == target;
        let master = self.cross_signing_key(target, MASTER)?;
        let master_public = master.as_ref().and_then(public_key).map(|(_, p)| p);
        let is_master = master_public.as_deref() == Some(key_id);
        let stored = if is_master {
            master
        } else if own {
            self.storage
                .trees
                .device_keys
                .get_json::<Value>(&skeys::strs(&[target.as_str(), key_id]))?
        } else {
            return Err(Error::invalid_param(
                "only the master key of another user can be signed",
            ));
        };
        let Some(stored) = stored else {
            return Err(Error::not_found("Unknown key"));
        };
        if signed_part(&stored) != signed_part(uploaded) {
            return Err(invalid_signature(
                "the signed key does not match the stored key",
            ));
        }
        let Some(signatures) = uploaded
            .get("signatures")
            .and_then(|s| s.get(signer.as_str()))
            .and_then(Value::as_object)
        else {
            return Err(invalid_signature("no signature by the uploader"));
        };
        let existing: Map<String, Value> = stored
            .get("signatures")
            .and_then(|s| s.get(signer.as_str()))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut writes = Vec::new();
        for (sig_key_id, signature) in signatures {
            if existing.get(sig_key_id) == Some(signature) {
                continue;
            }
            let Some(signature) = signature.as_str() else {
                return Err(invalid_signature("signatures must be strings"));
            };
            let Some(public) = self.signer_public_key(signer, sig_key_id, is_master, own)? else {
                return Err(invalid_signature(format!(
                    "{sig_key_id} is not a key that may sign this key"
                )));
            };
            if !verify_ed25519(uploaded, &public, signature) {
                return Err(invalid_signature(format!(
                    "invalid signature by {sig_key_id}"
                )));
            }
            writes.push((
                skeys::strs(&[target.as_str(), key_id, signer.as_str(), sig_key_id]),
                signature.to_owned(),
            ));
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use ruma::{
        signatures::{sign_json, Ed25519KeyPair},
        CanonicalJsonObject, UserId,
    };
    use serde_json::{json, Value};

    use crate::e2ee::tests::{device_keys, login, services};

    struct SigningKey {
        pair: Ed25519KeyPair,
        public: String,
    }

    fn signing_key() -> SigningKey {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "probe".into()).unwrap();
        let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
        SigningKey {
            pair: Ed25519KeyPair::from_der(&der, public.clone()).unwrap(),
            public,
        }
    }

    fn sign(value: &Value, signer: &UserId, key: &Ed25519KeyPair) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
        sign_json(signer.as_str(), key, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }

    fn cross_key(user: &UserId, usage: &str, key: &SigningKey) -> Value {
        json!({ "user_id": user, "usage": [usage],
            "keys": { format!("ed25519:{}", key.public): key.public } })
    }

    #[test]
    fn cross_signing_keys_and_signatures_are_verified() {
        let s = services();
        let (alice, dev) = login(&s, "alice");
        let (bob, _) = login(&s, "bob");
        let (master, ssk, usk) = (signing_key(), signing_key(), signing_key());
        let master_key = sign(&cross_key(&alice, "master", &master), &alice, &master.pair);
        let ssk_key = sign(
            &cross_key(&alice, "self_signing", &ssk),
            &alice,
            &master.pair,
        );
        let usk_key = sign(
            &cross_key(&alice, "user_signing", &usk),
            &alice,
            &master.pair,
        );
        let forged = sign(&cross_key(&alice, "self_signing", &ssk), &alice, &usk.pair);

        assert!(!s
            .e2ee
            .signing_keys_upload_needs_auth(&alice, [Some(&master_key), None, None])
            .unwrap());
        let err = s
            .e2ee
            .upload_signing_keys_now(&alice, Some(&master_key), Some(&forged), None)
            .unwrap_err();
        assert_eq!(err.errcode(), "M_INVALID_SIGNATURE");
        s.e2ee
            .upload_signing_keys_now(&alice, Some(&master_key), Some(&ssk_key), Some(&usk_key))
            .unwrap();
        // Identical re-upload needs no auth; a new master key does.
        assert!(!s
            .e2ee
            .signing_keys_upload_needs_auth(&alice, [Some(&master_key), Some(&ssk_key), None])
            .unwrap());
        let other_master = signing_key();
        let replacement = cross_key(&alice, "master", &other_master);
        assert!(s
            .e2ee
            .signing_keys_upload_needs_auth(&alice, [Some(&replacement), None, None])
            .unwrap());

        // Only alice sees her user-signing key.
        let q = BTreeMap::from([(alice.clone(), vec![])]);
        assert!(s
            .e2ee
            .query_keys(&alice, &q)
            .unwrap()
            .user_signing_keys
            .contains_key(&alice));
        let for_bob = s.e2ee.query_keys(&bob, &q).unwrap();
        assert!(for_bob.user_signing_keys.is_empty());
        assert!(for_bob.master_keys.contains_key(&alice));
        assert!(for_bob.self_signing_keys.contains_key(&alice));

        // Alice signs her device with the self-signing key.
        let keys = device_keys(&alice, &dev, "c");
        s.e2ee
            .upload_keys_now(
                &alice,
                &dev,
                Some(&keys),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .unwrap();
        let signed = sign(&keys, &alice, &ssk.pair);
        let bad = sign(&keys, &alice, &usk.pair);
        let failures = s
            .e2ee
            .upload_signatures_now(
                &alice,
                &BTreeMap::from([(alice.clone(), BTreeMap::from([(dev.to_string(), signed)]))]),
            )
            .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        let q = s.e2ee.query_keys(&bob, &q).unwrap();
        let sigs = &q.device_keys[&alice][&dev]["signatures"][alice.as_str()];
        assert!(
            sigs.get(format!("ed25519:{}", ssk.public)).is_some(),
            "{sigs}"
        );
        assert_eq!(sigs[format!("ed25519:{dev}")], "sig");
        let failures = s
            .e2ee
            .upload_signatures_now(
                &alice,
                &BTreeMap::from([(alice.clone(), BTreeMap::from([(dev.to_string(), bad)]))]),
            )
            .unwrap();
        assert_eq!(
            failures[&alice][dev.as_str()]["errcode"],
            "M_INVALID_SIGNATURE"
        );

        // Bob's master key signed by alice's user-signing key: visible to alice only.
        let bob_master = signing_key();
        let bob_master_key = sign(
            &cross_key(&bob, "master", &bob_master),
            &bob,
            &bob_master.pair,
        );
        s.e2ee
            .upload_signing_keys_now(&bob, Some(&bob_master_key), None, None)
            .unwrap();
        let signed = sign(&bob_master_key, &alice, &usk.pair);
        let failures = s
            .e2ee
            .upload_signatures_now(
                &alice,
                &BTreeMap::from([(
                    bob.clone(),
                    BTreeMap::from([(bob_master.public.clone(), signed)]),
                )]),
            )
            .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        let q = BTreeMap::from([(bob.clone(), vec![])]);
        let seen_by_alice = s.e2ee.query_keys(&alice, &q).unwrap().master_keys[&bob].clone();
        assert!(seen_by_alice["signatures"].get(alice.as_str()).is_some());
        let seen_by_bob = s.e2ee.query_keys(&bob, &q).unwrap().master_keys[&bob].clone();
        assert!(seen_by_bob["signatures"].get(alice.as_str()).is_none());

        // Unknown keys are failures too.
        let failures = s
            .e2ee
            .upload_signatures_now(
                &alice,
                &BTreeMap::from([(
                    alice.clone(),
                    BTreeMap::from([("NODEVICE".to_owned(), json!({}))]),
                )]),
            )
            .unwrap();
        assert_eq!(failures[&alice]["NODEVICE"]["errcode"], "M_NOT_FOUND");
    }
}
