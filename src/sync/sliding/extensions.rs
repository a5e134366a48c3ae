//! The extensions of a sliding sync response: to-device, e2ee, account data, thread
//! subscriptions, thread updates, receipts and typing.

use std::collections::{BTreeMap, HashSet};

use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{json, Map, Value};

use super::RoomConfig;
use crate::{
    e2ee::StreamPoint,
    push::PUSH_RULES_TYPE,
    rooms::{UpdatesQuery, MAX_THREAD_UPDATES},
    sync::{SyncService, SyncToken},
    users::{Session, DEFAULT_FEED_LIMIT},
    Error, Result,
};

/// The thread-subscriptions extension (MSC4308, unstable name).
const THREAD_SUBSCRIPTIONS: &str = "io.element.msc4308.thread_subscriptions";
/// The thread-updates extension (MSC4360): its unstable name, and the name the MSC gives
/// it once stable.
const THREADS: [&str; 2] = ["io.element.msc4360.threads", "threads"];

impl SyncService {
    /// Rooms an extension applies to: the `rooms`/`lists` it names, else every room of
    /// the response's lists and subscriptions.
    pub(super) fn extension_rooms<'a>(
        ext: &Value,
        configs: &'a BTreeMap<OwnedRoomId, RoomConfig>,
    ) -> Vec<&'a OwnedRoomId> {
        match ext["rooms"].as_array() {
            Some(rooms) if !rooms.iter().any(|r| r == "*") => configs
                .keys()
                .filter(|id| rooms.iter().any(|r| r == id.as_str()))
                .collect(),
            _ => configs.keys().collect(),
        }
    }

    /// The extensions of a response, and whether any carries news.
    pub(super) fn sliding_extensions(
        &self,
        session: &Session,
        body: &Value,
        since: Option<SyncToken>,
        now: SyncToken,
        configs: &BTreeMap<OwnedRoomId, RoomConfig>,
        served: &HashSet<OwnedEventId>,
    ) -> Result<(Value, bool)> {
        let (user, device) = (&session.user_id, &session.device_id);
        let ext = &body["extensions"];
        let mut out = Map::new();
        let mut changed = false;
        let enabled = |name: &str| ext[name]["enabled"] == true;

        if enabled("to_device") {
            // The extension has its own token: the client acknowledges messages by
            // sending back the previous `next_batch` as `since`.
            let since_td = match ext["to_device"]["since"].as_str() {
                Some(t) => Some(
                    t.parse::<u64>()
                        .map_err(|_| Error::invalid_param("invalid to_device since"))?,
                ),
                None => None,
            }
            .filter(|&t| t <= now.e2ee);
            let batch = self
                .e2ee
                .to_device_for_sync(user, device, since_td, now.e2ee)?;
            let next = batch.limited_at.unwrap_or(now.e2ee);
            changed |= !batch.events.is_empty();
            out.insert(
                "to_device".into(),
                json!({ "next_batch": next.to_string(), "events": batch.events }),
            );
        }
        if enabled("e2ee") {
            let between = since.map(|s| {
                let from = StreamPoint {
                    timeline: s.timeline,
                    e2ee: s.e2ee,
                };
                let to = StreamPoint {
                    timeline: now.timeline,
                    e2ee: now.e2ee,
                };
                (from, to)
            });
            let keys = self.device_keys(user, device, between)?;
            changed |= keys.changed;
            out.insert("e2ee".into(), Value::Object(keys.fields(false)));
        }

        if enabled("account_data") {
            let (global, rooms) = self
                .users
                .account_data_since(user, since.map_or(0, |s| s.userdata))?;
            let mut global: Vec<Value> = global
                .into_iter()
                .map(|(kind, content)| json!({ "type": kind, "content": content }))
                .collect();
            if since.is_none() && !global.iter().any(|e| e["type"] == PUSH_RULES_TYPE) {
                global.push(
                    json!({ "type": PUSH_RULES_TYPE, "content": self.push.rules_content(user)? }),
                );
            }
            let wanted: HashSet<&str> = Self::extension_rooms(&ext["account_data"], configs)
                .into_iter()
                .map(|r| r.as_str())
                .collect();
            let mut per_room = Map::new();
            for (room, data) in rooms {
                if !wanted.contains(room.as_str()) {
                    continue;
                }
                per_room.insert(
                    room.to_string(),
                    json!(data
                        .iter()
                        .map(|(k, c)| json!({ "type": k, "content": c }))
                        .collect::<Vec<_>>()),
                );
            }
            if !global.is_empty() || !per_room.is_empty() {
                // News: a long-poll woken by an account-data change (push rules from a
                // notification settings change included) answers with it at once.
                changed = true;
                out.insert(
                    "account_data".into(),
                    json!({ "global": global, "rooms": per_room }),
                );
            }
        }

        if enabled(THREAD_SUBSCRIPTIONS) {
            // What changed since the last response, newest first; older changes cut by
            // the limit are fetched from the companion endpoint, from `prev_batch`.
            let limit = ext[THREAD_SUBSCRIPTIONS]["limit"]
                .as_u64()
                .map_or(DEFAULT_FEED_LIMIT, |l| {
                    (l as usize).clamp(1, DEFAULT_FEED_LIMIT)
                });
            let changes = self.users.thread_subscription_changes(
                user,
                since.map_or(0, |s| s.userdata),
                now.userdata,
                limit,
            )?;
            let mut fields = changes.to_json();
            if let Some(older) = changes.older_from {
                fields.insert("prev_batch".into(), json!(older.to_string()));
            }
            if !fields.is_empty() {
                changed = true;
                out.insert(THREAD_SUBSCRIPTIONS.into(), Value::Object(fields));
            }
        }

        for name in THREADS.into_iter().filter(|n| enabled(n)) {
            // Threads with replies since the last response, newest first (all threads on
            // a first request); without `include_roots`, not those whose replies the
            // client gets in this response's timelines anyway.
            let include_roots = ext[name]["include_roots"] == true;
            let limit = ext[name]["limit"].as_u64().map_or(MAX_THREAD_UPDATES, |l| {
                usize::try_from(l).unwrap_or(MAX_THREAD_UPDATES)
            });
            let page = self.rooms.thread_updates(
                user,
                &UpdatesQuery {
                    after: since.map_or(0, |s| s.timeline),
                    until: now.timeline,
                    limit,
                    served: (!include_roots).then_some(served),
                },
            )?;
            if page.updates.is_empty() {
                continue;
            }
            let updates = self
                .rooms
                .thread_updates_json(user, &page.updates, include_roots)?;
            let mut fields = Map::new();
            fields.insert("updates".into(), Value::Object(updates));
            if let Some(older) = page.older_from {
                fields.insert("prev_batch".into(), json!(older.to_string()));
            }
            changed = true;
            out.insert(name.into(), Value::Object(fields));
        }

        let since_eph = since.map_or(0, |s| s.ephemeral);
        if enabled("receipts") {
            let mut rooms = Map::new();
            for room_id in Self::extension_rooms(&ext["receipts"], configs) {
                if let Some(content) = self.rooms.receipts_since(room_id, since_eph, user)? {
                    rooms.insert(
                        room_id.to_string(),
                        json!({ "type": "m.receipt", "content": content }),
                    );
                }
            }
            if !rooms.is_empty() {
                changed = true;
                out.insert("receipts".into(), json!({ "rooms": rooms }));
            }
        }
        if enabled("typing") {
            let mut rooms = Map::new();
            for room_id in Self::extension_rooms(&ext["typing"], configs) {
                if let Some(typing) = self.rooms.typing_since(room_id, since_eph) {
                    rooms.insert(
                        room_id.to_string(),
                        json!({ "type": "m.typing", "content": { "user_ids": typing } }),
                    );
                }
            }
            if !rooms.is_empty() {
                changed = true;
                out.insert("typing".into(), json!({ "rooms": rooms }));
            }
        }
        Ok((Value::Object(out), changed))
    }
}
