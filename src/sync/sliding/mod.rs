//! Simplified sliding sync (MSC4186,
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`), as Element X and
//! matrix-rust-sdk use it.
//!
//! Requests are not sticky: every request carries its lists, subscriptions and extension
//! settings. The server keeps per-connection state (keyed by user, device and `conn_id`):
//! for each `pos` it handed out, the stream positions and, per room, how far that room's
//! timeline was sent and with which `required_state`. A room already sent on the connection
//! gets only what is new; a room seen for the first time (or with a changed
//! `required_state`) is sent whole with `initial: true`. Connection state lives in memory:
//! after a restart clients get `M_UNKNOWN_POS` and start a new connection, as the MSC
//! allows.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    time::Duration,
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

mod extensions;
mod lists;
mod room;

use self::lists::Candidate;
use super::{SyncService, SyncToken, MAX_TIMEOUT};
use crate::{rooms::Membership, users::Session, Error, Result};

/// Positions kept per connection (the client may retry the previous one).
const KEPT_POSITIONS: usize = 4;
/// Connections kept per device.
const MAX_CONNECTIONS_PER_DEVICE: usize = 16;
/// Largest timeline a request may ask for per room.
const MAX_TIMELINE_LIMIT: usize = 100;
/// Events scanned backwards for the latest "bump" event of a room.
const BUMP_SCAN: usize = 50;
/// Event types that move a room up the room list (what Synapse uses).
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// What a connection has been sent for one room.
#[derive(Clone, Debug)]
struct SentRoom {
    /// Timeline position up to which events were sent.
    timeline: u64,
    /// Hash of the `required_state` the room was sent with.
    config: u64,
    /// `(notification_count, highlight_count)` last sent: a change (a receipt from
    /// another device, say) resends the room.
    counts: (u64, u64),
}

/// The server side of one `pos`.
#[derive(Clone, Debug, Default)]
struct ConnState {
    token: SyncToken,
    rooms: HashMap<OwnedRoomId, SentRoom>,
    list_counts: BTreeMap<String, usize>,
}

/// One sliding sync connection.
#[derive(Default)]
pub(super) struct Connection {
    next_pos: u64,
    positions: VecDeque<(u64, ConnState)>,
    last_used: u64,
}

/// Connections by `(user, device, conn_id)`.
pub(super) type Connections = std::sync::Mutex<HashMap<(OwnedUserId, String, String), Connection>>;

/// A sliding sync request as the handler received it.
pub struct SlidingRequest {
    /// `pos` query parameter.
    pub pos: Option<String>,
    /// `timeout` in ms (0 when absent).
    pub timeout: Duration,
    /// The JSON body.
    pub body: Value,
}

/// Per-room settings merged from the lists and subscriptions that include the room.
#[derive(Clone, Debug, Default)]
struct RoomConfig {
    required_state: BTreeSet<(String, String)>,
    timeline_limit: usize,
}

impl RoomConfig {
    fn merge(&mut self, details: &Value) {
        if let Some(rs) = details["required_state"].as_array() {
            for pair in rs {
                if let (Some(t), Some(k)) = (pair[0].as_str(), pair[1].as_str()) {
                    self.required_state.insert((t.to_owned(), k.to_owned()));
                }
            }
        }
        let limit = details["timeline_limit"].as_u64().unwrap_or(0) as usize;
        self.timeline_limit = self.timeline_limit.max(limit.min(MAX_TIMELINE_LIMIT));
    }

    fn hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.required_state.hash(&mut h);
        h.finish()
    }

    fn wants_lazy_members(&self) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| t == "m.room.member" && k == "$LAZY")
    }

    /// Whether a state event `(kind, key)` is asked for.
    fn wants(&self, kind: &str, key: &str, me: &UserId) -> bool {
        self.required_state.iter().any(|(t, k)| {
            let type_ok = t == "*" || t == kind;
            let key_ok = k == "*" || k == key || (k == "$ME" && key == me.as_str());
            type_ok && key_ok
        })
    }
}

fn unknown_pos() -> Error {
    Error::matrix(
        crate::ErrorKind::Invalid,
        "M_UNKNOWN_POS",
        "Unknown or expired position; start a new connection",
    )
}

fn now_ms() -> u64 {
    crate::users::now_ms()
}

impl SyncService {
    /// Answers a simplified sliding sync request, long-polling when nothing is new.
    #[tracing::instrument(skip(self, session, req), fields(user = %session.user_id))]
    pub async fn sliding_sync(&self, session: &Session, req: SlidingRequest) -> Result<Value> {
        let user = &session.user_id;
        let conn_id = req.body["conn_id"].as_str().unwrap_or("").to_owned();
        let key = (user.clone(), session.device_id.to_string(), conn_id);
        let prev: Option<ConnState> = match req.pos.as_deref() {
            None => None,
            Some(p) => {
                let wanted: u64 = p.parse().map_err(|_| unknown_pos())?;
                let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
                let conn = conns.get(&key).ok_or_else(unknown_pos)?;
                let state = conn
                    .positions
                    .iter()
                    .find(|(id, _)| *id == wanted)
                    .map(|(_, s)| s.clone())
                    .ok_or_else(unknown_pos)?;
                Some(state)
            }
        };
        if let Some(presence) = req.body["set_presence"].as_str() {
            if presence != "offline" {
                self.users.touch_presence(user, Some(presence))?;
            }
        } else {
            self.users.touch_presence(user, None)?;
        }
        let deadline = tokio::time::Instant::now() + req.timeout.min(MAX_TIMEOUT);
        let handle = self.notifier.handle(user);
        loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (mut response, changed, state) =
                self.sliding_build(session, prev.as_ref(), &req.body)?;
            let timed_out = tokio::time::Instant::now() >= deadline;
            if changed || prev.is_none() || timed_out {
                let pos = self.store_position(key, state);
                response["pos"] = json!(pos.to_string());
                if let Some(txn) = req.body.get("txn_id") {
                    response["txn_id"] = txn.clone();
                }
                return Ok(response);
            }
            let _parked = self.notifier.park(user);
            tokio::select! {
                _ = &mut notified => continue,
                _ = tokio::time::sleep_until(deadline) => continue,
            }
        }
    }

    /// The stream positions behind a sliding-sync `pos` of one of the device's connections
    /// (companion endpoints take a `pos` as the end of a backward walk); `None` when it is
    /// unknown or expired.
    pub fn sliding_pos_token(&self, session: &Session, pos: &str) -> Option<SyncToken> {
        let wanted: u64 = pos.parse().ok()?;
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .iter()
            .filter(|(k, _)| k.0 == session.user_id && k.1 == session.device_id.as_str())
            .flat_map(|(_, conn)| conn.positions.iter())
            .find(|(id, _)| *id == wanted)
            .map(|(_, state)| state.token)
    }

    fn store_position(&self, key: (OwnedUserId, String, String), state: ConnState) -> u64 {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the connections a device may hold: drop its least recently used.
        let same_device = conns
            .keys()
            .filter(|k| k.0 == key.0 && k.1 == key.1)
            .count();
        if !conns.contains_key(&key) && same_device >= MAX_CONNECTIONS_PER_DEVICE {
            if let Some(oldest) = conns
                .iter()
                .filter(|(k, _)| k.0 == key.0 && k.1 == key.1)
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            {
                conns.remove(&oldest);
            }
        }
        // A new connection numbers its positions from the clock (×1000), so they never
        // repeat those of an earlier connection, before a restart included: a stale `pos`
        // stays unknown instead of naming another connection's state.
        let conn = conns.entry(key).or_insert_with(|| Connection {
            next_pos: now_ms().saturating_mul(1000),
            ..Connection::default()
        });
        conn.next_pos += 1;
        let pos = conn.next_pos;
        conn.positions.push_back((pos, state));
        while conn.positions.len() > KEPT_POSITIONS {
            conn.positions.pop_front();
        }
        conn.last_used = now_ms();
        pos
    }

    fn sliding_build(
        &self,
        session: &Session,
        prev: Option<&ConnState>,
        body: &Value,
    ) -> Result<(Value, bool, ConnState)> {
        let user = &session.user_id;
        let now = SyncToken {
            timeline: self.rooms.current_pos(),
            ephemeral: self.rooms.current_ephemeral_pos(),
            userdata: self.users.current_userdata_pos(),
            e2ee: self.e2ee.current_pos(),
        };
        let since = prev.map(|p| p.token);

        // Rooms the user is in, invited to or knocking on; rooms left since the previous
        // position (and sent before) so the client sees the leave.
        let mut candidates = Vec::new();
        for &(ref room_id, membership, mpos) in self.rooms.user_rooms(user)?.iter() {
            if mpos > now.timeline {
                continue;
            }
            let keep = match membership {
                Membership::Join | Membership::Invite | Membership::Knock => true,
                Membership::Leave | Membership::Ban => {
                    prev.is_some_and(|p| mpos > p.token.timeline && p.rooms.contains_key(room_id))
                }
            };
            if !keep {
                continue;
            }
            let cap = if membership == Membership::Join {
                now.timeline
            } else {
                mpos
            };
            let bump = self.bump_stamp(room_id, cap, mpos)?;
            candidates.push(Candidate {
                room_id: room_id.clone(),
                membership,
                membership_pos: mpos,
                bump,
            });
        }
        candidates.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
        let dms = self.dm_rooms(user)?;

        let mut configs: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
        let mut lists = Map::new();
        let mut list_counts = BTreeMap::new();
        if let Some(req_lists) = body["lists"].as_object() {
            for (name, list) in req_lists {
                let mut members = Vec::new();
                for c in &candidates {
                    if self.passes_filters(&list["filters"], c, &dms, user)? {
                        members.push(c);
                    }
                }
                let count = members.len();
                for range in list["ranges"].as_array().into_iter().flatten() {
                    let (Some(lo), Some(hi)) = (range[0].as_u64(), range[1].as_u64()) else {
                        return Err(Error::invalid_param(
                            "list ranges must be [start, end] pairs",
                        ));
                    };
                    if lo > hi {
                        return Err(Error::invalid_param("list range start is after its end"));
                    }
                    // Ranges are inclusive and may end anywhere up to u64::MAX.
                    let skip = usize::try_from(lo).unwrap_or(usize::MAX);
                    let take = usize::try_from(hi - lo)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1);
                    for c in members.iter().skip(skip).take(take) {
                        configs.entry(c.room_id.clone()).or_default().merge(list);
                    }
                }
                lists.insert(name.clone(), json!({ "count": count }));
                list_counts.insert(name.clone(), count);
            }
        }
        let by_id: HashMap<&str, &Candidate> =
            candidates.iter().map(|c| (c.room_id.as_str(), c)).collect();
        if let Some(subs) = body["room_subscriptions"].as_object() {
            for (room, details) in subs {
                let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                    return Err(Error::invalid_param(format!("invalid room id {room}")));
                };
                // Only rooms the user has a membership in (or may read) are sent.
                if by_id.contains_key(room_id.as_str())
                    || self.rooms.visible_until(&room_id, user).is_ok()
                {
                    configs.entry(room_id).or_default().merge(details);
                }
            }
        }

        let mut state = ConnState {
            token: now,
            rooms: prev.map(|p| p.rooms.clone()).unwrap_or_default(),
            list_counts: list_counts.clone(),
        };
        let mut rooms = Map::new();
        for (room_id, config) in &configs {
            let candidate = by_id.get(room_id.as_str()).copied();
            let sent = prev.and_then(|p| p.rooms.get(room_id));
            let mut counts = sent.map_or((0, 0), |s| s.counts);
            if let Some(mut entry) = self.sliding_room(
                user,
                room_id,
                candidate,
                config,
                sent,
                since,
                now,
                &dms,
                &mut counts,
            )? {
                if let Some(events) = entry.get_mut("timeline").and_then(Value::as_array_mut) {
                    self.rooms
                        .add_transaction_ids(events, user, &session.device_id)?;
                    self.rooms.add_unsigned(room_id, user, events)?;
                }
                rooms.insert(room_id.to_string(), entry);
            }
            state.rooms.insert(
                room_id.clone(),
                SentRoom {
                    timeline: now.timeline,
                    config: config.hash(),
                    counts,
                },
            );
        }

        // The events this response's timelines carry (the threads extension leaves out
        // threads whose news they already are).
        let served: HashSet<OwnedEventId> = rooms
            .values()
            .filter_map(|entry| entry["timeline"].as_array())
            .flatten()
            .filter_map(|e| e["event_id"].as_str())
            .filter_map(|id| OwnedEventId::try_from(id).ok())
            .collect();
        let (extensions, ext_changed) =
            self.sliding_extensions(session, body, since, now, &configs, &served)?;
        let changed =
            !rooms.is_empty() || ext_changed || prev.is_none_or(|p| p.list_counts != list_counts);
        let response = json!({
            "lists": lists,
            "rooms": rooms,
            "extensions": extensions,
        });
        Ok((response, changed, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rs: Value) -> RoomConfig {
        let mut c = RoomConfig::default();
        c.merge(&json!({ "required_state": rs, "timeline_limit": 5 }));
        c
    }

    #[test]
    fn required_state_wildcards_and_me() {
        let me = <&UserId>::try_from("@me:x").unwrap();
        let c = config(json!([
            ["m.room.name", ""],
            ["m.room.member", "$ME"],
            ["org.x", "*"]
        ]));
        assert!(c.wants("m.room.name", "", me));
        assert!(!c.wants("m.room.topic", "", me));
        assert!(c.wants("m.room.member", "@me:x", me));
        assert!(!c.wants("m.room.member", "@other:x", me));
        assert!(c.wants("org.x", "anything", me));
        let all = config(json!([["*", "*"]]));
        assert!(all.wants("m.room.topic", "", me));
        let lazy = config(json!([["m.room.member", "$LAZY"]]));
        assert!(lazy.wants_lazy_members());
        assert!(!lazy.wants("m.room.member", "@other:x", me));
    }

    #[test]
    fn merged_configs_take_the_larger_timeline_and_union_of_state() {
        let mut c = config(json!([["a", ""]]));
        c.merge(&json!({ "required_state": [["b", ""]], "timeline_limit": 20 }));
        assert_eq!(c.timeline_limit, 20);
        assert_eq!(c.required_state.len(), 2);
        c.merge(&json!({ "timeline_limit": 100000 }));
        assert_eq!(c.timeline_limit, MAX_TIMELINE_LIMIT);
    }

    #[test]
    fn config_hash_ignores_timeline_limit() {
        let a = config(json!([["a", ""]]));
        let mut b = config(json!([["a", ""]]));
        b.merge(&json!({ "timeline_limit": 50 }));
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), config(json!([["b", ""]])).hash());
    }
}
