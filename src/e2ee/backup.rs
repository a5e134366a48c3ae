//! Server-side key backup: versions with an opaque `auth_data`, and per room and session
//! encrypted key data replaced only by better keys (verified, then lower first message
//! index, then lower forwarded count).

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{object, E2eeService};
use crate::{
    storage::{keys as skeys, Batch},
    Error, Result,
};

/// A stored backup version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackupVersion {
    /// The version number.
    pub version: u64,
    /// The backup algorithm.
    pub algorithm: String,
    /// Algorithm-specific data (public key, signatures), opaque to the server.
    pub auth_data: Value,
    /// Changes whenever the stored keys change.
    pub etag: u64,
    /// Number of stored keys.
    pub count: u64,
    /// Deleted versions stay as tombstones so version numbers are never reused.
    #[serde(default)]
    pub deleted: bool,
}

/// `{etag, count}` of a backup after a key operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCounts {
    /// The backup's etag.
    pub etag: String,
    /// Number of keys in the backup.
    pub count: u64,
}

/// The fields of backed-up key data that decide which of two keys is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyRank {
    is_verified: bool,
    first_message_index: u64,
    forwarded_count: u64,
}

impl KeyRank {
    /// Reads and checks key backup data.
    fn of(data: &Value) -> Result<KeyRank> {
        let obj = object(data, "key backup data")?;
        let uint = |name: &str| {
            obj.get(name).and_then(Value::as_u64).ok_or_else(|| {
                Error::bad_json(format!(
                    "key backup data needs a non-negative integer {name}"
                ))
            })
        };
        let rank = KeyRank {
            first_message_index: uint("first_message_index")?,
            forwarded_count: uint("forwarded_count")?,
            is_verified: obj
                .get("is_verified")
                .and_then(Value::as_bool)
                .ok_or_else(|| Error::bad_json("key backup data needs a boolean is_verified"))?,
        };
        if !obj.get("session_data").is_some_and(Value::is_object) {
            return Err(Error::bad_json(
                "key backup data needs a session_data object",
            ));
        }
        Ok(rank)
    }

    /// Whether a key ranked `self` replaces a stored key ranked `old`.
    fn replaces(self, old: KeyRank) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

fn no_backup() -> Error {
    Error::not_found("Unknown backup version")
}

fn parse_version(version: &str) -> Result<u64> {
    version.parse::<u64>().map_err(|_| no_backup())
}

fn check_algorithm(body: &Value) -> Result<(String, Value)> {
    let obj = object(body, "backup version")?;
    let algorithm = obj
        .get("algorithm")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::bad_json("algorithm must be a non-empty string"))?;
    let auth_data = obj
        .get("auth_data")
        .filter(|a| a.is_object())
        .ok_or_else(|| Error::bad_json("auth_data must be a JSON object"))?;
    Ok((algorithm.to_owned(), auth_data.clone()))
}

impl E2eeService {
    fn version_key(user: &UserId, version: u64) -> Vec<u8> {
        skeys::KeyBuilder::new()
            .str(user.as_str())
            .u64(version)
            .build()
    }

    fn keys_prefix(user: &UserId, version: u64, room: Option<&RoomId>) -> Vec<u8> {
        let key = skeys::KeyBuilder::new().str(user.as_str()).u64(version);
        match room {
            Some(room) => key.str(room.as_str()).build(),
            None => key.build(),
        }
    }

    fn backup_guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.backup_lock
            .lock()
            .map_err(|_| Error::internal("e2ee: backup lock poisoned"))
    }

    /// The newest version ever created for `user` (deleted or not).
    fn last_version(&self, user: &UserId) -> Result<Option<BackupVersion>> {
        let prefix = skeys::strs(&[user.as_str()]);
        match self
            .storage
            .trees
            .backup_versions
            .scan_prefix_dir(&prefix, true)
            .next()
        {
            Some(kv) => Ok(Some(serde_json::from_slice(&kv?.1)?)),
            None => Ok(None),
        }
    }

    /// The current (newest not deleted) backup version.
    pub fn current_backup(&self, user: &UserId) -> Result<Option<BackupVersion>> {
        let prefix = skeys::strs(&[user.as_str()]);
        for kv in self
            .storage
            .trees
            .backup_versions
            .scan_prefix_dir(&prefix, true)
        {
            let v: BackupVersion = serde_json::from_slice(&kv?.1)?;
            if !v.deleted {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// One backup version, `M_NOT_FOUND` if unknown or deleted.
    pub fn backup(&self, user: &UserId, version: &str) -> Result<BackupVersion> {
        let version = parse_version(version)?;
        self.storage
            .trees
            .backup_versions
            .get_json::<BackupVersion>(&Self::version_key(user, version))?
            .filter(|v| !v.deleted)
            .ok_or_else(no_backup)
    }

    /// [`Self::create_backup_now`], durable on return.
    pub async fn create_backup(&self, user: &UserId, body: &Value) -> Result<String> {
        let version = self.create_backup_now(user, body)?;
        self.storage.durable().await?;
        Ok(version)
    }

    /// [`Self::update_backup_now`], durable on return.
    pub async fn update_backup(&self, user: &UserId, version: &str, body: &Value) -> Result<()> {
        self.update_backup_now(user, version, body)?;
        self.storage.durable().await
    }

    /// [`Self::delete_backup_now`], durable on return.
    pub async fn delete_backup(&self, user: &UserId, version: &str) -> Result<()> {
        self.delete_backup_now(user, version)?;
        self.storage.durable().await
    }

    /// [`Self::put_backup_keys_now`], durable on return.
    pub async fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        rooms: &BTreeMap<OwnedRoomId, BTreeMap<String, Value>>,
    ) -> Result<BackupCounts> {
        let counts = self.put_backup_keys_now(user, version, rooms)?;
        self.storage.durable().await?;
        Ok(counts)
    }

    /// [`Self::delete_backup_keys_now`], durable on return.
    pub async fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&RoomId>,
        session: Option<&str>,
    ) -> Result<BackupCounts> {
        let counts = self.delete_backup_keys_now(user, version, room, session)?;
        self.storage.durable().await?;
        Ok(counts)
    }

    /// `POST /room_keys/version`: creates a new backup version from `{algorithm,
    /// auth_data}`; it becomes the current one.
    fn create_backup_now(&self, user: &UserId, body: &Value) -> Result<String> {
        let (algorithm, auth_data) = check_algorithm(body)?;
        let _guard = self.backup_guard()?;
        let version = self.last_version(user)?.map_or(1, |v| v.version + 1);
        let record = BackupVersion {
            version,
            algorithm,
            auth_data,
            etag: 0,
            count: 0,
            deleted: false,
        };
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.backup_versions,
            &Self::version_key(user, version),
            &record,
        )?;
        self.storage.commit(batch)?;
        Ok(version.to_string())
    }

    /// `PUT /room_keys/version/{version}`: replaces `auth_data`; the algorithm cannot
    /// change.
    fn update_backup_now(&self, user: &UserId, version: &str, body: &Value) -> Result<()> {
        let (algorithm, auth_data) = check_algorithm(body)?;
        if let Some(claimed) = body.get("version") {
            if claimed.as_str() != Some(version) {
                return Err(Error::invalid_param(
                    "version in the body does not match the path",
                ));
            }
        }
        let _guard = self.backup_guard()?;
        let mut record = self.backup(user, version)?;
        if record.algorithm != algorithm {
            return Err(Error::invalid_param(
                "the algorithm of a backup version cannot change",
            ));
        }
        record.auth_data = auth_data;
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.backup_versions,
            &Self::version_key(user, record.version),
            &record,
        )?;
        self.storage.commit(batch)
    }

    /// `DELETE /room_keys/version/{version}`: deletes a version and its keys.
    fn delete_backup_now(&self, user: &UserId, version: &str) -> Result<()> {
        let _guard = self.backup_guard()?;
        let mut record = self.backup(user, version)?;
        let trees = &self.storage.trees;
        let mut batch = Batch::new();
        for kv in trees
            .backup_keys
            .scan_prefix(&Self::keys_prefix(user, record.version, None))
        {
            batch.remove(&trees.backup_keys, &kv?.0);
        }
        record.deleted = true;
        record.count = 0;
        batch.insert_json(
            &trees.backup_versions,
            &Self::version_key(user, record.version),
            &record,
        )?;
        self.storage.commit(batch)
    }

    /// `PUT /room_keys/keys…`: stores room → session → key data in the current version,
    /// keeping the better of an old and a new key. `M_WRONG_ROOM_KEYS_VERSION` when
    /// `version` is not the current one.
    fn put_backup_keys_now(
        &self,
        user: &UserId,
        version: &str,
        rooms: &BTreeMap<OwnedRoomId, BTreeMap<String, Value>>,
    ) -> Result<BackupCounts> {
        let mut ranked = Vec::new();
        for (room, sessions) in rooms {
            for (session, data) in sessions {
                ranked.push((room, session, data, KeyRank::of(data)?));
            }
        }
        let _guard = self.backup_guard()?;
        let mut record = self.current_backup(user)?.ok_or_else(no_backup)?;
        if version.parse::<u64>().ok() != Some(record.version) {
            return Err(Error::matrix(
                crate::ErrorKind::Forbidden,
                "M_WRONG_ROOM_KEYS_VERSION",
                "Wrong backup version",
            )
            .with_field("current_version", json!(record.version.to_string())));
        }
        let tree = &self.storage.trees.backup_keys;
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, session, data, rank) in ranked {
            let key = skeys::KeyBuilder::new()
                .str(user.as_str())
                .u64(record.version)
                .str(room.as_str())
                .str(session)
                .build();
            let replace = match tree.get_json::<Value>(&key)? {
                None => {
                    record.count += 1;
                    true
                }
                Some(old) => KeyRank::of(&old).map_or(true, |old| rank.replaces(old)),
            };
            if replace {
                batch.insert_json(tree, &key, data)?;
                changed = true;
            }
        }
        if changed {
            record.etag += 1;
            batch.insert_json(
                &self.storage.trees.backup_versions,
                &Self::version_key(user, record.version),
                &record,
            )?;
            self.storage.commit(batch)?;
        }
        Ok(BackupCounts {
            etag: record.etag.to_string(),
            count: record.count,
        })
    }

    /// `GET /room_keys/keys…`: room → session → key data of a version, optionally of one
    /// room or one session.
    pub fn get_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&RoomId>,
        session: Option<&str>,
    ) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, Value>>> {
        let record = self.backup(user, version)?;
        let prefix = Self::keys_prefix(user, record.version, room);
        let base = Self::keys_prefix(user, record.version, None).len();
        let mut out: BTreeMap<OwnedRoomId, BTreeMap<String, Value>> = BTreeMap::new();
        for kv in self.storage.trees.backup_keys.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let parts = skeys::split_strs(&k[base..]);
            let [room_id, session_id] = parts[..] else {
                continue;
            };
            if session.is_some_and(|s| s != session_id) {
                continue;
            }
            let Ok(room_id) = OwnedRoomId::try_from(room_id) else {
                continue;
            };
            out.entry(room_id)
                .or_default()
                .insert(session_id.to_owned(), serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// `DELETE /room_keys/keys…`: removes keys of a version (all, one room or one
    /// session).
    fn delete_backup_keys_now(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&RoomId>,
        session: Option<&str>,
    ) -> Result<BackupCounts> {
        let _guard = self.backup_guard()?;
        let mut record = self.backup(user, version)?;
        let tree = &self.storage.trees.backup_keys;
        let mut batch = Batch::new();
        let mut removed = 0;
        let prefix = match (room, session) {
            (Some(room), Some(session)) => skeys::KeyBuilder::new()
                .str(user.as_str())
                .u64(record.version)
                .str(room.as_str())
                .str(session)
                .build(),
            (room, _) => Self::keys_prefix(user, record.version, room),
        };
        for kv in tree.scan_prefix(&prefix) {
            batch.remove(tree, &kv?.0);
            removed += 1;
        }
        if removed > 0 {
            record.count = record.count.saturating_sub(removed);
            record.etag += 1;
            batch.insert_json(
                &self.storage.trees.backup_versions,
                &Self::version_key(user, record.version),
                &record,
            )?;
            self.storage.commit(batch)?;
        }
        Ok(BackupCounts {
            etag: record.etag.to_string(),
            count: record.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::OwnedRoomId;
    use serde_json::{json, Value};

    use crate::e2ee::tests::{login, map, services};

    #[test]
    fn replace_rules_rank_verified_then_index_then_forwards() {
        let rank = |is_verified, first_message_index, forwarded_count| super::KeyRank {
            is_verified,
            first_message_index,
            forwarded_count,
        };
        assert!(rank(true, 9, 9).replaces(rank(false, 0, 0)));
        assert!(!rank(false, 0, 0).replaces(rank(true, 9, 9)));
        assert!(rank(false, 1, 9).replaces(rank(false, 2, 0)));
        assert!(rank(false, 1, 0).replaces(rank(false, 1, 1)));
        assert!(
            !rank(false, 1, 1).replaces(rank(false, 1, 1)),
            "ties keep the old key"
        );
    }

    #[test]
    fn backup_keys_follow_the_replace_rules() {
        let s = services();
        let (alice, _) = login(&s, "alice");
        let algorithm = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": { "public_key": "pk", "signatures": {} } });
        assert_eq!(
            s.e2ee
                .put_backup_keys_now(&alice, "1", &BTreeMap::new())
                .unwrap_err()
                .errcode(),
            "M_NOT_FOUND"
        );
        let v1 = s.e2ee.create_backup_now(&alice, &algorithm).unwrap();
        assert_eq!(v1, "1");
        let room: OwnedRoomId = "!r:localhost".try_into().unwrap();
        let key = |verified: bool, index: u64, forwarded: u64, tag: &str| {
            json!({ "first_message_index": index, "forwarded_count": forwarded,
                "is_verified": verified, "session_data": { "tag": tag } })
        };
        let put = |data: Value| {
            let rooms = BTreeMap::from([(room.clone(), map(json!({ "s1": data })))]);
            s.e2ee.put_backup_keys_now(&alice, &v1, &rooms).unwrap()
        };
        let stored = || {
            s.e2ee
                .get_backup_keys(&alice, &v1, Some(&room), Some("s1"))
                .unwrap()[&room]["s1"]["session_data"]["tag"]
                .clone()
        };
        let c = put(key(false, 5, 1, "first"));
        assert_eq!((c.count, c.etag.as_str()), (1, "1"));
        // Worse: higher index — kept the old one, etag unchanged.
        let c = put(key(false, 9, 0, "worse"));
        assert_eq!((c.count, c.etag.as_str()), (1, "1"));
        assert_eq!(stored(), "first");
        // Lower forwarded count at the same index wins.
        put(key(false, 5, 0, "fewer-forwards"));
        assert_eq!(stored(), "fewer-forwards");
        // Lower index wins.
        put(key(false, 2, 3, "lower-index"));
        assert_eq!(stored(), "lower-index");
        // Verified wins over everything.
        let c = put(key(true, 10, 10, "verified"));
        assert_eq!(stored(), "verified");
        assert_eq!(c.count, 1);
        // Unverified never replaces verified.
        put(key(false, 0, 0, "unverified"));
        assert_eq!(stored(), "verified");

        // Invalid key data is refused.
        let rooms = BTreeMap::from([(room.clone(), map(json!({ "s2": { "is_verified": true } })))]);
        assert_eq!(
            s.e2ee
                .put_backup_keys_now(&alice, &v1, &rooms)
                .unwrap_err()
                .errcode(),
            "M_BAD_JSON"
        );

        // A new version makes the old one stale for writes.
        let v2 = s.e2ee.create_backup_now(&alice, &algorithm).unwrap();
        assert_eq!(v2, "2");
        let rooms = BTreeMap::from([(room.clone(), map(json!({ "s2": key(false, 0, 0, "x") })))]);
        let err = s.e2ee.put_backup_keys_now(&alice, &v1, &rooms).unwrap_err();
        assert_eq!(err.errcode(), "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(err.body()["current_version"], "2");
        assert_eq!(s.e2ee.current_backup(&alice).unwrap().unwrap().version, 2);

        // Deleting keys and versions.
        let c = s
            .e2ee
            .delete_backup_keys_now(&alice, &v1, Some(&room), Some("s1"))
            .unwrap();
        assert_eq!(c.count, 0);
        s.e2ee.delete_backup_now(&alice, &v2).unwrap();
        assert_eq!(s.e2ee.current_backup(&alice).unwrap().unwrap().version, 1);
        assert_eq!(
            s.e2ee.backup(&alice, &v2).unwrap_err().errcode(),
            "M_NOT_FOUND"
        );
        assert_eq!(s.e2ee.create_backup_now(&alice, &algorithm).unwrap(), "3");
        // The algorithm of a version cannot change.
        let other = json!({ "algorithm": "other", "auth_data": {} });
        assert_eq!(
            s.e2ee
                .update_backup_now(&alice, "3", &other)
                .unwrap_err()
                .errcode(),
            "M_INVALID_PARAM"
        );
    }
}
