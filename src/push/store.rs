//! The notification records: one per notifying event (the `event_push` tree, keyed by
//! room and position), naming its recipients grouped by actions; the move of earlier
//! versions' per-recipient records; and the write of evaluated events' records.

use std::collections::BTreeMap;

use ruma::{push::Action, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::{evaluate::Evaluated, PushService};
use crate::{
    storage::{keys, Batch},
    Result,
};

/// A notification of one event for one user. Stored this way (one record per recipient)
/// by earlier versions, which [`PushService::migrate_records`] moves into [`EventPush`]
/// records; now the per-user view of an [`EventPush`]. Short one-letter keys, with the
/// long names of still earlier records as aliases.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushRecord {
    /// The event.
    #[serde(rename = "e", alias = "event_id")]
    pub event_id: String,
    /// Whether a `highlight` tweak applied.
    #[serde(
        rename = "h",
        alias = "highlight",
        default,
        skip_serializing_if = "is_false"
    )]
    pub highlight: bool,
    /// The actions of the matching rule.
    #[serde(
        rename = "a",
        alias = "actions",
        default = "notify_only",
        skip_serializing_if = "is_notify_only"
    )]
    pub actions: Vec<Action>,
    /// When it was recorded (ms since the epoch).
    #[serde(rename = "t", alias = "ts")]
    pub ts: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn notify_only() -> Vec<Action> {
    vec![Action::Notify]
}

fn is_notify_only(actions: &[Action]) -> bool {
    matches!(actions, [Action::Notify])
}

/// Who one notifying event notifies (the `event_push` tree, keyed by room and position).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct EventPush {
    #[serde(rename = "e")]
    pub(super) event_id: String,
    /// When it was recorded (ms since the epoch).
    #[serde(rename = "t")]
    pub(super) ts: u64,
    /// Recipients grouped by the actions that applied to them.
    #[serde(rename = "g")]
    pub(super) groups: Vec<PushGroup>,
}

/// Users an event notifies with the same actions.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PushGroup {
    #[serde(
        rename = "a",
        default = "notify_only",
        skip_serializing_if = "is_notify_only"
    )]
    pub(super) actions: Vec<Action>,
    #[serde(rename = "u")]
    pub(super) users: Vec<String>,
}

impl EventPush {
    /// Adds a recipient to the group of its actions.
    pub(super) fn add(&mut self, user: &UserId, actions: &[Action]) {
        let key = |a: &[Action]| serde_json::to_string(a).unwrap_or_default();
        let wanted = (!is_notify_only(actions)).then(|| key(actions));
        let group = self.groups.iter_mut().find(|g| match &wanted {
            None => is_notify_only(&g.actions),
            Some(k) => !is_notify_only(&g.actions) && key(&g.actions) == *k,
        });
        match group {
            Some(g) => g.users.push(user.as_str().to_owned()),
            None => self.groups.push(PushGroup {
                actions: actions.to_vec(),
                users: vec![user.as_str().to_owned()],
            }),
        }
    }

    /// Adds recipients that share the same actions.
    pub(super) fn add_all(&mut self, users: &[&UserId], actions: &[Action]) {
        let Some((first, rest)) = users.split_first() else {
            return;
        };
        self.add(first, actions);
        let key = |a: &[Action]| serde_json::to_string(a).unwrap_or_default();
        let wanted = (!is_notify_only(actions)).then(|| key(actions));
        if let Some(group) = self.groups.iter_mut().find(|g| match &wanted {
            None => is_notify_only(&g.actions),
            Some(k) => !is_notify_only(&g.actions) && key(&g.actions) == *k,
        }) {
            group
                .users
                .extend(rest.iter().map(|u| u.as_str().to_owned()));
        }
    }

    /// The notification of `user`, if the event notifies them.
    pub(super) fn for_user(&self, user: &UserId) -> Option<PushRecord> {
        let group = self
            .groups
            .iter()
            .find(|g| g.users.iter().any(|u| u == user.as_str()))?;
        Some(PushRecord {
            event_id: self.event_id.clone(),
            highlight: group.actions.iter().any(Action::is_highlight),
            actions: group.actions.clone(),
            ts: self.ts,
        })
    }
}

/// Reads the record of `user` from a stored [`EventPush`]. Most stored records do not
/// name a given user, so the raw bytes are searched for the quoted user ID before
/// anything is parsed (IDs needing JSON escapes are always parsed).
pub(super) fn record_for(raw: &[u8], user: &UserId) -> Option<PushRecord> {
    let id = user.as_str();
    if !id.contains(['"', '\\']) {
        let quoted = format!("\"{id}\"");
        memchr::memmem::find(raw, quoted.as_bytes())?;
    }
    serde_json::from_slice::<EventPush>(raw)
        .ok()?
        .for_user(user)
}

pub(super) fn record_key(room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuilder::new().str(room.as_str()).u64(pos).build()
}

impl PushService {
    /// Moves the per-recipient records of earlier versions (`push_actions`) into one
    /// `event_push` record per event (call once at start, before serving).
    pub fn migrate_records(&self) -> Result<()> {
        let trees = &self.storage.trees;
        let mut merged: BTreeMap<Vec<u8>, EventPush> = BTreeMap::new();
        let mut batch = Batch::new();
        for kv in trees.push_actions.scan_prefix(&[]) {
            let (k, v) = kv?;
            batch.remove(&trees.push_actions, &k);
            let parts = keys::split_strs(&k);
            let (Some(user), Some(room), Some(pos)) = (
                parts.first().and_then(|u| <&UserId>::try_from(*u).ok()),
                parts.get(1).and_then(|r| <&RoomId>::try_from(*r).ok()),
                keys::trailing_u64(&k),
            ) else {
                continue;
            };
            let Ok(old) = serde_json::from_slice::<PushRecord>(&v) else {
                continue;
            };
            let key = record_key(room, pos);
            let entry = match merged.get_mut(&key) {
                Some(e) => e,
                None => {
                    let existing = trees.event_push.get_json::<EventPush>(&key)?;
                    merged.entry(key).or_insert(existing.unwrap_or(EventPush {
                        event_id: old.event_id.clone(),
                        ts: old.ts,
                        groups: Vec::new(),
                    }))
                }
            };
            if entry.for_user(user).is_none() {
                entry.add(user, &old.actions);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let count = merged.len();
        for (key, record) in &merged {
            batch.insert_json(&trees.event_push, key, record)?;
        }
        self.storage.commit(batch)?;
        self.storage.flush()?;
        tracing::info!(events = count, "push records moved to one record per event");
        Ok(())
    }

    /// Writes the notification records of evaluated events in `batch` (with whatever else
    /// it holds) and counts them in the cached unread counts, atomically with respect to
    /// counts being computed.
    pub(super) fn record(&self, evaluated: &[Evaluated], mut batch: Batch) -> Result<()> {
        for e in evaluated {
            batch.insert_json(
                &self.storage.trees.event_push,
                &record_key(&e.pdu.room_id, e.pos),
                &e.record,
            )?;
        }
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        self.storage.commit(batch)?;
        for e in evaluated {
            for (user, highlight) in &e.pushes {
                if let Some(counts) = unread
                    .get_mut(&e.pdu.room_id)
                    .and_then(|room| room.get_mut(user))
                {
                    counts.1 += 1;
                    counts.2 += u64::from(*highlight);
                }
            }
        }
        Ok(())
    }
}
