//! Account data, global and per room. Each write takes a user-data stream position;
//! `account_data_log` indexes the latest position of every `(room, type)` so `/sync`
//! reads only what changed since its token.

use std::collections::{BTreeMap, HashMap};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::UsersService;
use crate::{
    storage::keys::{self, KeyBuilder, SEP},
    Error, Result,
};

/// Longest accepted account-data type in bytes.
const MAX_TYPE_LEN: usize = 255;

/// The stored value: the content and the position of its last change.
#[derive(Serialize, Deserialize)]
struct Stored {
    pos: u64,
    content: Value,
}

/// Global and per-room account data, each as `(type, content)` pairs.
pub type AccountDataChanges = (
    Vec<(String, Value)>,
    BTreeMap<OwnedRoomId, Vec<(String, Value)>>,
);

/// Position of each user's newest account-data change since a start position, so a sync
/// of a user whose account data did not change reads nothing.
#[derive(Default)]
pub(super) struct ChangeIndex {
    /// No account data changed after this position except what `changes` lists.
    started: u64,
    /// The newest change of each user after `started`.
    changes: HashMap<OwnedUserId, u64>,
}

impl ChangeIndex {
    /// Notes a change of `user` at `pos` (unless a newer one is known).
    pub(super) fn record(&mut self, user: &UserId, pos: u64) {
        let newest = self.changes.entry(user.to_owned()).or_default();
        *newest = (*newest).max(pos);
    }

    /// The position of the newest change of `user` there may be.
    fn last_change(&self, user: &UserId) -> u64 {
        self.changes.get(user).copied().unwrap_or(self.started)
    }

    /// Anybody's account data may have changed up to `pos` (the position at start, or
    /// when other processes' changes may have gone unannounced): only newer changes
    /// stay listed.
    pub(super) fn restart_at(&mut self, pos: u64) {
        self.started = self.started.max(pos);
        let started = self.started;
        self.changes.retain(|_, newest| *newest > started);
    }
}

fn data_key(user: &UserId, room: Option<&RoomId>, kind: &str) -> Vec<u8> {
    keys::strs(&[user.as_str(), room.map_or("", |r| r.as_str()), kind])
}

fn log_key(user: &UserId, pos: u64) -> Vec<u8> {
    KeyBuilder::new().str(user.as_str()).u64(pos).build()
}

/// The user and position of a `user, pos` log key (account data, thread subscriptions).
pub(super) fn split_log_key(key: &[u8]) -> Option<(OwnedUserId, u64)> {
    let pos = keys::trailing_u64(key)?;
    let user = key.get(..key.len().checked_sub(9)?)?;
    if key.get(user.len()) != Some(&SEP) {
        return None;
    }
    let user = UserId::parse(std::str::from_utf8(user).ok()?).ok()?;
    Some((user, pos))
}

/// Splits `room 0xFF type 0xFF` (room possibly empty) into its parts.
fn split_room_kind(bytes: &[u8]) -> Option<(&str, &str)> {
    let sep = bytes.iter().position(|b| *b == SEP)?;
    let room = std::str::from_utf8(&bytes[..sep]).ok()?;
    let rest = &bytes[sep + 1..];
    let kind = std::str::from_utf8(rest.strip_suffix(&[SEP]).unwrap_or(rest)).ok()?;
    Some((room, kind))
}

fn add_change(out: &mut AccountDataChanges, room: &str, kind: &str, content: Value) {
    if room.is_empty() {
        out.0.push((kind.to_owned(), content));
    } else if let Ok(room) = RoomId::parse(room) {
        out.1
            .entry(room)
            .or_default()
            .push((kind.to_owned(), content));
    }
}

impl UsersService {
    /// Stores account data and waits until it is durable.
    pub async fn set_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        self.write_account_data(user, room, kind, content)?;
        self.storage.durable().await
    }

    /// Stores room account data (read markers, tags) without waiting for durability.
    pub fn set_room_account_data(
        &self,
        user: &UserId,
        room: &RoomId,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        self.write_account_data(user, Some(room), kind, content)
    }

    fn write_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        if kind.is_empty() || kind.len() > MAX_TYPE_LEN || kind.as_bytes().contains(&SEP) {
            return Err(Error::invalid_param("Invalid account data type"));
        }
        if !content.is_object() {
            return Err(Error::bad_json(
                "Account data content must be a JSON object",
            ));
        }
        let trees = &self.storage.trees;
        let key = data_key(user, room, kind);
        let fill = |pos, batch: &mut crate::storage::Batch| {
            if let Some(old) = trees.account_data.get_json::<Stored>(&key)? {
                batch.remove(&trees.account_data_log, &log_key(user, old.pos));
            }
            batch.insert_json(&trees.account_data, &key, &Stored { pos, content })?;
            batch.insert(
                &trees.account_data_log,
                &log_key(user, pos),
                &keys::strs(&[room.map_or("", |r| r.as_str()), kind]),
            );
            Ok(())
        };
        // Indexed before the position becomes visible: a sync that sees the position
        // also sees the change.
        self.commit_with_pos_then(fill, |pos| {
            self.account_data_changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(user, pos);
        })?;
        self.changed(user);
        Ok(())
    }

    /// One account-data content, global (`room` = `None`) or for a room.
    pub fn get_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Value>> {
        Ok(self
            .storage
            .trees
            .account_data
            .get_json::<Stored>(&data_key(user, room, kind))?
            .map(|s| s.content))
    }

    /// Account data of `user` changed after `since` (0: all of it), global and per room.
    pub fn account_data_since(&self, user: &UserId, since: u64) -> Result<AccountDataChanges> {
        let trees = &self.storage.trees;
        let mut out = AccountDataChanges::default();
        if since == 0 {
            let prefix = keys::strs(&[user.as_str()]);
            for entry in trees.account_data.scan_prefix(&prefix) {
                let (key, value) = entry?;
                let Some((room, kind)) = split_room_kind(&key[prefix.len()..]) else {
                    continue;
                };
                let stored: Stored = serde_json::from_slice(&value)?;
                add_change(&mut out, room, kind, stored.content);
            }
            return Ok(out);
        }
        let last_change = self
            .account_data_changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_change(user);
        if last_change <= since {
            return Ok(out);
        }
        let from = log_key(user, since.saturating_add(1));
        let to = log_key(user, u64::MAX);
        for entry in trees.account_data_log.range(&from, &to, false) {
            let (_, value) = entry?;
            let Some((room, kind)) = split_room_kind(&value) else {
                continue;
            };
            let room_id = if room.is_empty() {
                None
            } else {
                RoomId::parse(room).ok()
            };
            if !room.is_empty() && room_id.is_none() {
                continue;
            }
            if let Some(content) = self.get_account_data(user, room_id.as_deref(), kind)? {
                add_change(&mut out, room, kind, content);
            }
        }
        Ok(out)
    }
}

impl UsersService {
    /// Drops the room account data `users` hold for a purged room (and its sync log
    /// entries). Idempotent.
    pub fn purge_room_account_data(
        &self,
        room_id: &RoomId,
        users: &[ruma::OwnedUserId],
    ) -> Result<()> {
        let trees = &self.storage.trees;
        for user in users {
            let mut batch = crate::storage::Batch::new();
            let prefix = keys::strs(&[user.as_str(), room_id.as_str()]);
            for kv in trees.account_data.scan_prefix(&prefix) {
                let (k, v) = kv?;
                if let Ok(stored) = serde_json::from_slice::<Stored>(&v) {
                    batch.remove(&trees.account_data_log, &log_key(user, stored.pos));
                }
                batch.remove(&trees.account_data, &k);
            }
            self.storage.commit(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use futures_util::FutureExt;
    use ruma::{room_id, UserId};
    use serde_json::json;

    use crate::users::{test_support::service, UsersService};

    /// Whether `write` wakes `user`'s waiting syncs.
    async fn wakes(s: &UsersService, user: &UserId, write: impl Future<Output = ()>) -> bool {
        let handle = s.notifier.handle(user);
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        write.await;
        notified.now_or_never().is_some()
    }

    #[tokio::test]
    async fn since_returns_only_later_changes() {
        let s = service();
        let alice = s.create_user("alice", None, false).unwrap();
        let bob = s.create_user("bob", None, false).unwrap();
        let room = room_id!("!r:localhost");

        assert!(
            wakes(&s, &alice, async {
                s.set_account_data(&alice, None, "m.direct", json!({"a": 1}))
                    .await
                    .unwrap();
            })
            .await
        );
        assert!(
            wakes(&s, &alice, async {
                s.set_room_account_data(&alice, room, "m.tag", json!({"tags": {}}))
                    .unwrap();
            })
            .await
        );
        assert!(
            !wakes(&s, &alice, async {
                s.set_account_data(&bob, None, "m.direct", json!({"b": 1}))
                    .await
                    .unwrap();
            })
            .await,
            "bob's change wakes only bob"
        );
        let mark = s.current_userdata_pos();
        assert_eq!(mark, 3);

        let (global, rooms) = s.account_data_since(&alice, 0).unwrap();
        assert_eq!(global, vec![("m.direct".to_owned(), json!({"a": 1}))]);
        assert_eq!(rooms[room], vec![("m.tag".to_owned(), json!({"tags": {}}))]);
        let (global, rooms) = s.account_data_since(&alice, mark).unwrap();
        assert!(global.is_empty() && rooms.is_empty());

        s.set_account_data(&alice, None, "m.direct", json!({"a": 2}))
            .await
            .unwrap();
        s.set_account_data(&alice, None, "m.direct", json!({"a": 3}))
            .await
            .unwrap();
        let (global, rooms) = s.account_data_since(&alice, mark).unwrap();
        assert_eq!(
            global,
            vec![("m.direct".to_owned(), json!({"a": 3}))],
            "one entry per type"
        );
        assert!(rooms.is_empty());
        assert_eq!(
            s.storage.trees.account_data_log.scan_prefix(&[]).count(),
            3,
            "old log entries removed"
        );
        assert_eq!(
            s.get_account_data(&alice, None, "m.direct").unwrap(),
            Some(json!({"a": 3}))
        );
        assert_eq!(
            s.get_account_data(&alice, Some(room), "m.direct").unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn purge_drops_one_rooms_account_data() {
        let s = service();
        let alice = s.create_user("alice", None, false).unwrap();
        let (gone, kept) = (room_id!("!gone:localhost"), room_id!("!kept:localhost"));
        s.set_room_account_data(&alice, gone, "m.tag", json!({"tags": {}}))
            .unwrap();
        s.set_room_account_data(&alice, kept, "m.tag", json!({"tags": {}}))
            .unwrap();
        s.set_account_data(&alice, None, "m.direct", json!({}))
            .await
            .unwrap();
        s.purge_room_account_data(gone, std::slice::from_ref(&alice))
            .unwrap();
        assert_eq!(
            s.get_account_data(&alice, Some(gone), "m.tag").unwrap(),
            None
        );
        assert!(s
            .get_account_data(&alice, Some(kept), "m.tag")
            .unwrap()
            .is_some());
        let (global, rooms) = s.account_data_since(&alice, 0).unwrap();
        assert_eq!(global.len(), 1);
        assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![kept]);
        assert_eq!(s.storage.trees.account_data_log.scan_prefix(&[]).count(), 2);
    }

    #[tokio::test]
    async fn bad_content_writes_nothing_and_position_survives_restart() {
        let s = service();
        let alice = s.create_user("alice", None, false).unwrap();
        assert_eq!(
            s.set_account_data(&alice, None, "x", json!([1]))
                .await
                .unwrap_err()
                .errcode(),
            "M_BAD_JSON"
        );
        assert_eq!(
            s.set_account_data(&alice, None, "", json!({}))
                .await
                .unwrap_err()
                .errcode(),
            "M_INVALID_PARAM"
        );
        assert_eq!(s.current_userdata_pos(), 0);
        s.set_account_data(&alice, None, "x", json!({}))
            .await
            .unwrap();
        s.set_account_data(&alice, None, "y", json!({"v": 2}))
            .await
            .unwrap();
        let again = crate::users::UsersService::new(
            s.config.clone(),
            s.storage.clone(),
            s.notifier.clone(),
        )
        .unwrap();
        assert_eq!(again.current_userdata_pos(), 2);
        // Changes from before the restart are found for older tokens (the in-memory
        // change index starts empty).
        let (global, _) = again.account_data_since(&alice, 1).unwrap();
        assert_eq!(global, vec![("y".to_owned(), json!({"v": 2}))]);
        assert!(again.account_data_since(&alice, 2).unwrap().0.is_empty());
        // And changes after it, for tokens from before or after it.
        let bob = again.create_user("bob", None, false).unwrap();
        again
            .set_account_data(&bob, None, "z", json!({}))
            .await
            .unwrap();
        assert_eq!(again.account_data_since(&bob, 2).unwrap().0.len(), 1);
        assert_eq!(again.account_data_since(&bob, 1).unwrap().0.len(), 1);
        assert!(again.account_data_since(&bob, 3).unwrap().0.is_empty());
        assert!(again.account_data_since(&alice, 2).unwrap().0.is_empty());
    }
}
