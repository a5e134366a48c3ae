//! Presence: online while a client syncs, `unavailable` when it says so, offline after
//! `presence_idle_secs` without activity (computed on read, so no timers run).

use std::collections::{BTreeMap, HashMap};

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{now_ms, UsersService};
use crate::{Error, Result};

/// Refresh the stored activity time at most this often while the state is unchanged.
const ACTIVITY_REFRESH_MS: u64 = 60_000;
/// Longest accepted status message in bytes.
const MAX_STATUS_MSG_LEN: usize = 1024;

/// The stored presence of one user.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceRecord {
    /// `online`, `unavailable` or `offline` as last set.
    pub presence: String,
    /// Free-form status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<String>,
    /// Last activity, ms since the epoch.
    pub last_active_ts: u64,
    /// User-data stream position of the last visible change.
    pub pos: u64,
}

impl PresenceRecord {
    /// The presence as others see it at `now`: idle users are offline.
    pub fn effective(&self, idle_ms: u64, now: u64) -> &str {
        if self.presence != "offline" && now.saturating_sub(self.last_active_ts) > idle_ms {
            "offline"
        } else {
            &self.presence
        }
    }
}

/// A sync that finds the same state checked this recently reads nothing (at most a
/// quarter of the idle time, so the activity refresh stays well ahead of going idle).
const TOUCH_RECHECK_MS: u64 = 10_000;

/// The newest presence change of every user, by user-data position.
#[derive(Default)]
pub(super) struct ChangeIndex {
    by_pos: BTreeMap<u64, OwnedUserId>,
    by_user: HashMap<OwnedUserId, u64>,
    /// The last activity check of each user by a sync: the state it asked for, when,
    /// and the user's change position then (a change since makes the check stale).
    touched: HashMap<OwnedUserId, (&'static str, u64, Option<u64>)>,
    /// Changes may be missing (another process's changes went unannounced): read the
    /// stored records again before answering.
    stale: bool,
}

impl ChangeIndex {
    /// Notes a change of `user` at `pos`, unless a newer one is known.
    pub(super) fn record(&mut self, user: &UserId, pos: u64) {
        match self.by_user.get(user) {
            Some(&old) if old >= pos => return,
            Some(&old) => {
                self.by_pos.remove(&old);
            }
            None => {}
        }
        self.by_user.insert(user.to_owned(), pos);
        self.by_pos.insert(pos, user.to_owned());
    }

    /// Notes that changes may be missing: the records are read again before the next
    /// answer, and no recent activity check is trusted.
    pub(super) fn mark_stale(&mut self) {
        self.stale = true;
        self.touched.clear();
    }

    fn since(&self, since: u64) -> impl Iterator<Item = &UserId> {
        self.by_pos
            .range(since.saturating_add(1)..)
            .map(|(_, u)| u.as_ref())
    }
}

fn valid_state(state: &str) -> bool {
    matches!(state, "online" | "unavailable" | "offline")
}

impl UsersService {
    fn idle_ms(&self) -> u64 {
        self.config.presence_idle_secs.saturating_mul(1000)
    }

    /// The stored presence record of `user`.
    pub fn presence_record(&self, user: &UserId) -> Result<Option<PresenceRecord>> {
        self.storage.trees.presence.get_json(user.as_bytes())
    }

    /// Records activity from `/sync`: online, or `unavailable` when `set_presence` says so;
    /// `offline` leaves presence untouched. Writes only when something visible changed or
    /// the activity time is getting stale.
    pub fn touch_presence(&self, user: &UserId, set_presence: Option<&str>) -> Result<()> {
        self.touch_presence_at(user, set_presence, now_ms())
    }

    fn touch_presence_at(&self, user: &UserId, set_presence: Option<&str>, now: u64) -> Result<()> {
        let state = match set_presence {
            Some("offline") => return Ok(()),
            Some("unavailable") => "unavailable",
            _ => "online",
        };
        // Every sync of an active user comes here: skip the read when the same state was
        // checked moments ago and nothing changed the record since.
        let recheck_ms = TOUCH_RECHECK_MS.min(self.idle_ms() / 4);
        let changed_at = {
            let index = self.change_index();
            let changed_at = index.by_user.get(user).copied();
            if let Some((checked, at, seen)) = index.touched.get(user) {
                if *checked == state && now.saturating_sub(*at) < recheck_ms && *seen == changed_at
                {
                    return Ok(());
                }
            }
            changed_at
        };
        self.check_presence(user, state, now)?;
        self.change_index()
            .touched
            .insert(user.to_owned(), (state, now, changed_at));
        Ok(())
    }

    /// Writes presence when `state` is a visible change, or the activity time when it is
    /// getting stale.
    fn check_presence(&self, user: &UserId, state: &'static str, now: u64) -> Result<()> {
        let old = self.presence_record(user)?;
        let visible_change = old
            .as_ref()
            .is_none_or(|r| r.effective(self.idle_ms(), now) != state);
        if visible_change {
            let status_msg = old.and_then(|r| r.status_msg);
            self.write_presence(user, state, status_msg, now)?;
        } else if let Some(mut record) = old {
            if now.saturating_sub(record.last_active_ts) > ACTIVITY_REFRESH_MS {
                record.last_active_ts = now;
                self.storage
                    .trees
                    .presence
                    .insert(user.as_bytes(), &serde_json::to_vec(&record)?)?;
            }
        }
        Ok(())
    }

    /// Sets presence explicitly (`PUT /presence/{userId}/status`). Not yet durable.
    pub fn set_presence(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<String>,
    ) -> Result<()> {
        if !valid_state(state) {
            return Err(Error::invalid_param(
                "presence must be online, unavailable or offline",
            ));
        }
        if status_msg
            .as_ref()
            .is_some_and(|m| m.len() > MAX_STATUS_MSG_LEN)
        {
            return Err(Error::invalid_param("status_msg is too long"));
        }
        self.write_presence(user, state, status_msg, now_ms())
    }

    fn write_presence(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<String>,
        now: u64,
    ) -> Result<()> {
        let tree = &self.storage.trees.presence;
        self.commit_with_pos_then(
            |pos, batch| {
                let record = PresenceRecord {
                    presence: state.to_owned(),
                    status_msg,
                    last_active_ts: now,
                    pos,
                };
                batch.insert_json(tree, user.as_bytes(), &record)
            },
            |pos| self.change_index().record(user, pos),
        )?;
        self.changed(user);
        Ok(())
    }

    /// The `m.presence` event content of `user` now (offline when never seen).
    pub fn presence_content(&self, user: &UserId) -> Result<Value> {
        let now = now_ms();
        Ok(match self.presence_record(user)? {
            Some(r) => self.content_of(&r, now),
            None => json!({ "presence": "offline" }),
        })
    }

    fn content_of(&self, record: &PresenceRecord, now: u64) -> Value {
        let state = record.effective(self.idle_ms(), now);
        let mut content = json!({
            "presence": state,
            "last_active_ago": now.saturating_sub(record.last_active_ts),
            "currently_active": state == "online",
        });
        if let Some(msg) = &record.status_msg {
            content["status_msg"] = json!(msg);
        }
        content
    }

    fn change_index(&self) -> std::sync::MutexGuard<'_, ChangeIndex> {
        self.presence_changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the stored records to the change index (at start, and again when changes
    /// of other processes may have been missed).
    pub(super) fn load_presence_changes(&self) -> Result<()> {
        let mut found = Vec::new();
        for kv in self.storage.trees.presence.scan_prefix(&[]) {
            let (k, v) = kv?;
            let (Ok(user), Ok(record)) = (
                UserId::parse(String::from_utf8_lossy(&k).as_ref()),
                serde_json::from_slice::<PresenceRecord>(&v),
            ) else {
                continue;
            };
            found.push((user, record.pos));
        }
        let mut index = self.change_index();
        for (user, pos) in found {
            index.record(&user, pos);
        }
        Ok(())
    }

    /// Reads the stored records again if changes may be missing from the index.
    fn reload_presence_changes_if_stale(&self) {
        if !std::mem::take(&mut self.change_index().stale) {
            return;
        }
        if let Err(e) = self.load_presence_changes() {
            tracing::error!(error = %e, "reading the presence records again");
            self.change_index().stale = true;
        }
    }

    /// Users whose presence changed after user-data position `since`, oldest change first.
    pub fn presence_changed_since(&self, since: u64) -> Vec<OwnedUserId> {
        self.reload_presence_changes_if_stale();
        self.change_index()
            .since(since)
            .map(ToOwned::to_owned)
            .collect()
    }

    /// `m.presence` events of those `users` whose presence changed after `since`
    /// (`since` 0: everyone with any presence).
    pub fn presence_since(&self, users: &[OwnedUserId], since: u64) -> Result<Vec<Value>> {
        self.presence_since_at(users, since, now_ms())
    }

    fn presence_since_at(&self, users: &[OwnedUserId], since: u64, now: u64) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        for user in users {
            if let Some(record) = self.presence_record(user)? {
                if since == 0 || record.pos > since {
                    events.push(json!({
                        "type": "m.presence",
                        "sender": user,
                        "content": self.content_of(&record, now),
                    }));
                }
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use crate::users::test_support::service_with;

    #[test]
    fn sync_marks_online_and_idle_goes_offline() {
        let s = service_with(|c| c.presence_idle_secs = 300);
        let alice = s.create_user("alice", None, false).unwrap();
        let users = vec![alice.clone()];
        assert!(s.presence_since(&users, 0).unwrap().is_empty());

        let t0 = 1_000_000_000;
        s.touch_presence_at(&alice, None, t0).unwrap();
        let p1 = s.current_userdata_pos();
        assert_eq!(p1, 1);
        let events = s.presence_since_at(&users, 0, t0 + 1000).unwrap();
        assert_eq!(events[0]["type"], "m.presence");
        assert_eq!(events[0]["sender"], "@alice:localhost");
        assert_eq!(events[0]["content"]["presence"], "online");
        assert_eq!(events[0]["content"]["last_active_ago"], 1000);
        assert_eq!(events[0]["content"]["currently_active"], true);

        // Repeated syncs do not produce changes.
        s.touch_presence_at(&alice, None, t0 + 5000).unwrap();
        assert_eq!(s.current_userdata_pos(), p1);
        assert!(s
            .presence_since_at(&users, p1, t0 + 5000)
            .unwrap()
            .is_empty());

        // Idle past the limit: offline on read; the next sync brings the user back.
        let late = t0 + 301_000;
        assert_eq!(
            s.presence_since_at(&users, 0, late).unwrap()[0]["content"]["presence"],
            "offline"
        );
        s.touch_presence_at(&alice, None, late).unwrap();
        assert!(s.current_userdata_pos() > p1);
        assert_eq!(
            s.presence_since_at(&users, p1, late).unwrap()[0]["content"]["presence"],
            "online"
        );

        // set_presence=unavailable and offline.
        s.touch_presence_at(&alice, Some("unavailable"), late + 1)
            .unwrap();
        assert_eq!(
            s.presence_record(&alice).unwrap().unwrap().presence,
            "unavailable"
        );
        let pos = s.current_userdata_pos();
        s.touch_presence_at(&alice, Some("offline"), late + 2)
            .unwrap();
        assert_eq!(s.current_userdata_pos(), pos);

        // Moments after a check the same state reads nothing, but an explicit change in
        // between is seen by the very next sync.
        s.touch_presence_at(&alice, None, late + 3).unwrap();
        assert_eq!(
            s.presence_record(&alice).unwrap().unwrap().presence,
            "online"
        );
        s.set_presence(&alice, "unavailable", None).unwrap();
        s.touch_presence_at(&alice, None, late + 4).unwrap();
        assert_eq!(
            s.presence_record(&alice).unwrap().unwrap().presence,
            "online",
            "a sync right after an explicit change still marks the user online"
        );
    }

    #[test]
    fn change_index_lists_each_user_once_and_survives_a_restart() {
        use crate::{config::Config, storage::Storage, users::UsersService};
        use std::sync::Arc;
        let storage = Arc::new(Storage::in_memory());
        let s = UsersService::new(
            Arc::new(Config::default()),
            storage.clone(),
            std::sync::Arc::new(crate::stream::Notifier::new()),
        )
        .unwrap();
        let alice = s.create_user("alice", None, false).unwrap();
        let bob = s.create_user("bob", None, false).unwrap();
        assert!(s.presence_changed_since(0).is_empty());
        s.set_presence(&alice, "online", None).unwrap();
        let after_alice = s.current_userdata_pos();
        s.set_presence(&bob, "online", None).unwrap();
        assert_eq!(
            s.presence_changed_since(0),
            vec![alice.clone(), bob.clone()]
        );
        assert_eq!(s.presence_changed_since(after_alice), vec![bob.clone()]);
        // A newer change moves the user to the end, once.
        s.set_presence(&alice, "unavailable", None).unwrap();
        assert_eq!(
            s.presence_changed_since(0),
            vec![bob.clone(), alice.clone()]
        );
        assert_eq!(
            s.presence_changed_since(after_alice),
            vec![bob.clone(), alice.clone()]
        );
        assert!(s
            .presence_changed_since(s.current_userdata_pos())
            .is_empty());
        // Rebuilt from storage.
        let again = UsersService::new(
            Arc::new(Config::default()),
            storage,
            std::sync::Arc::new(crate::stream::Notifier::new()),
        )
        .unwrap();
        assert_eq!(again.presence_changed_since(0), vec![bob, alice]);
    }

    #[test]
    fn explicit_presence_keeps_status_and_validates() {
        let s = service_with(|_| {});
        let alice = s.create_user("alice", None, false).unwrap();
        s.set_presence(&alice, "unavailable", Some("lunch".into()))
            .unwrap();
        let c = s.presence_content(&alice).unwrap();
        assert_eq!(c["presence"], "unavailable");
        assert_eq!(c["status_msg"], "lunch");
        assert_eq!(c["currently_active"], false);
        assert_eq!(
            s.set_presence(&alice, "busy", None).unwrap_err().errcode(),
            "M_INVALID_PARAM"
        );
        s.touch_presence(&alice, None).unwrap();
        assert_eq!(s.presence_content(&alice).unwrap()["status_msg"], "lunch");
    }
}
