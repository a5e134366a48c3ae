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
    sync::Arc,
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{SyncService, SyncToken, MAX_TIMEOUT};
use crate::{
    e2ee::{DeviceListChanges, StreamPoint},
    events::Pdu,
    push::PUSH_RULES_TYPE,
    rooms::{Direction, Membership},
    users::Session,
    Error, Result,
};

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

/// A room the user may see in lists.
struct Candidate {
    room_id: OwnedRoomId,
    membership: Membership,
    /// Position of the membership event.
    membership_pos: u64,
    bump: u64,
}

fn unknown_pos() -> Error {
    Error::matrix(
        http::StatusCode::BAD_REQUEST,
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

    /// The position of the latest event that bumps the room in the list.
    fn bump_stamp(&self, room_id: &RoomId, cap: u64, fallback: u64) -> Result<u64> {
        let (events, _) =
            self.rooms
                .timeline_range(room_id, 0, cap, Direction::Backward, BUMP_SCAN, None)?;
        for (pos, pdu) in &events {
            if BUMP_TYPES.contains(&pdu.kind.to_string().as_str()) {
                return Ok(*pos);
            }
        }
        Ok(events
            .last()
            .map_or(fallback, |(p, _)| *p)
            .max(fallback.min(cap)))
    }

    fn dm_rooms(&self, user: &UserId) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        if let Some(direct) = self.users.get_account_data(user, None, "m.direct")? {
            if let Some(map) = direct.as_object() {
                for rooms in map.values() {
                    for r in rooms.as_array().into_iter().flatten() {
                        if let Some(r) = r.as_str() {
                            out.insert(r.to_owned());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn is_dm(
        &self,
        dms: &HashSet<String>,
        room_id: &RoomId,
        user: &UserId,
        m: Membership,
    ) -> Result<bool> {
        if dms.contains(room_id.as_str()) {
            return Ok(true);
        }
        if m == Membership::Invite {
            let content = self
                .rooms
                .state_content(room_id, "m.room.member", user.as_str())?;
            return Ok(content.is_some_and(|c| c["is_direct"] == true));
        }
        Ok(false)
    }

    fn passes_filters(
        &self,
        filters: &Value,
        c: &Candidate,
        dms: &HashSet<String>,
        user: &UserId,
    ) -> Result<bool> {
        if !filters.is_object() {
            return Ok(true);
        }
        if let Some(want) = filters["is_dm"].as_bool() {
            if self.is_dm(dms, &c.room_id, user, c.membership)? != want {
                return Ok(false);
            }
        }
        if let Some(want) = filters["is_encrypted"].as_bool() {
            let enc = self
                .rooms
                .state_event_str(&c.room_id, "m.room.encryption", "")?
                .is_some();
            if enc != want {
                return Ok(false);
            }
        }
        if let Some(want) = filters["is_invite"].as_bool() {
            if (c.membership == Membership::Invite) != want {
                return Ok(false);
            }
        }
        let room_type = self.rooms.room(&c.room_id).ok().and_then(|r| r.room_type);
        let type_matches = |list: &Value| -> Option<bool> {
            let arr = list.as_array()?;
            Some(arr.iter().any(|t| match t.as_str() {
                None => room_type.is_none(),
                Some(t) => room_type.as_deref() == Some(t),
            }))
        };
        if filters["room_types"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && type_matches(&filters["room_types"]) == Some(false)
        {
            return Ok(false);
        }
        if type_matches(&filters["not_room_types"]) == Some(true) {
            return Ok(false);
        }
        Ok(true)
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
        for (room_id, membership, mpos) in self.rooms.user_rooms(user)? {
            if mpos > now.timeline {
                continue;
            }
            let keep = match membership {
                Membership::Join | Membership::Invite | Membership::Knock => true,
                Membership::Leave | Membership::Ban => {
                    prev.is_some_and(|p| mpos > p.token.timeline && p.rooms.contains_key(&room_id))
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
            let bump = self.bump_stamp(&room_id, cap, mpos)?;
            candidates.push(Candidate {
                room_id,
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

        let (extensions, ext_changed) =
            self.sliding_extensions(session, body, since, now, &configs)?;
        let changed =
            !rooms.is_empty() || ext_changed || prev.is_none_or(|p| p.list_counts != list_counts);
        let response = json!({
            "lists": lists,
            "rooms": rooms,
            "extensions": extensions,
        });
        Ok((response, changed, state))
    }

    #[allow(clippy::too_many_arguments)]
    fn sliding_room(
        &self,
        user: &UserId,
        room_id: &RoomId,
        candidate: Option<&Candidate>,
        config: &RoomConfig,
        sent: Option<&SentRoom>,
        since: Option<SyncToken>,
        now: SyncToken,
        dms: &HashSet<String>,
        counts: &mut (u64, u64),
    ) -> Result<Option<Value>> {
        let membership = candidate.map(|c| c.membership);
        let initial = sent.is_none_or(|s| s.config != config.hash());
        let mut entry = Map::new();

        if matches!(membership, Some(Membership::Invite | Membership::Knock)) {
            let c = candidate.expect("membership implies a candidate");
            if !initial && sent.is_some_and(|s| s.timeline >= c.membership_pos) {
                return Ok(None);
            }
            let stripped = self.stripped_state(room_id, user)?;
            let field = if c.membership == Membership::Invite {
                "invite_state"
            } else {
                "knock_state"
            };
            entry.insert(field.into(), json!(stripped));
            entry.insert("initial".into(), json!(true));
            entry.insert("bump_stamp".into(), json!(c.bump));
            if c.membership == Membership::Invite && self.is_dm(dms, room_id, user, c.membership)? {
                entry.insert("is_dm".into(), json!(true));
            }
            if let Some(name) = stripped
                .iter()
                .find(|e| e["type"] == "m.room.name")
                .and_then(|e| e["content"]["name"].as_str())
            {
                entry.insert("name".into(), json!(name));
            }
            return Ok(Some(Value::Object(entry)));
        }

        // Joined (or left since the previous position, or a readable subscription).
        // How far the user may read: everything while joined (or when the room is world
        // readable), else up to their leave; state and timeline both stop there.
        let until = match candidate {
            Some(c) if c.membership != Membership::Join => c.membership_pos,
            _ => self.rooms.visible_until(room_id, user)?,
        };
        let live = until == u64::MAX;
        let cap = until.min(now.timeline);
        let from = if initial {
            0
        } else {
            sent.map_or(0, |s| s.timeline)
        };
        let limit = config.timeline_limit;
        let (mut events, limited) = if limit == 0 {
            (Vec::new(), from < cap && !initial)
        } else {
            self.rooms.visible_timeline(
                room_id,
                user,
                from,
                cap,
                Direction::Backward,
                limit,
                None,
            )?
        };
        events.reverse();

        // Required state: all matching visible state when initial; otherwise the matching
        // state that changed since the room was last sent.
        let state_now = if live {
            self.rooms.current_state(room_id)?
        } else {
            self.rooms.state_at(room_id, until)?
        };
        let mut required: Vec<Arc<Pdu>> = Vec::new();
        let lazy_senders: BTreeSet<String> = if config.wants_lazy_members() {
            events.iter().map(|(_, p)| p.sender.to_string()).collect()
        } else {
            BTreeSet::new()
        };
        let before = if initial {
            None
        } else {
            Some(self.rooms.state_at(room_id, from.min(until))?)
        };
        for ((kind, key), event_id) in &state_now {
            let wanted = config.wants(kind, key, user)
                || (kind == "m.room.member" && lazy_senders.contains(key.as_str()));
            if !wanted {
                continue;
            }
            let changed = before
                .as_ref()
                .is_none_or(|b| b.get(&(kind.clone(), key.clone())) != Some(event_id));
            // Lazy members are resent with timelines that mention them in the first
            // response, and when their member event changed.
            if changed || (initial && lazy_senders.contains(key.as_str())) {
                if let Some(pdu) = self.rooms.get_pdu(event_id)? {
                    required.push(pdu);
                }
            }
        }

        let (notification_count, highlight_count) = self.push.unread_counts(user, room_id)?;
        *counts = (notification_count, highlight_count);
        if !initial
            && events.is_empty()
            && required.is_empty()
            && sent.is_some_and(|s| s.counts == *counts)
        {
            return Ok(None);
        }
        let members = if live {
            self.rooms.members(room_id)?
        } else {
            Arc::new(self.rooms.members_in(&state_now)?)
        };
        let first_pos = events.first().map(|(p, _)| *p);
        let prev_batch = crate::rooms::Token(first_pos.map_or(cap, |p| p - 1));
        let num_live = if initial {
            0
        } else {
            events
                .iter()
                .filter(|(p, _)| since.is_some_and(|s| *p > s.timeline))
                .count()
        };
        entry.insert("initial".into(), json!(initial));
        entry.insert(
            "timeline".into(),
            json!(events
                .iter()
                .map(|(_, p)| p.to_sync_event())
                .collect::<Vec<_>>()),
        );
        entry.insert(
            "required_state".into(),
            json!(required
                .iter()
                .map(|p| p.to_sync_event())
                .collect::<Vec<_>>()),
        );
        entry.insert("prev_batch".into(), json!(prev_batch.to_string()));
        entry.insert("limited".into(), json!(limited));
        entry.insert("num_live".into(), json!(num_live));
        entry.insert(
            "joined_count".into(),
            json!(members.count(Membership::Join)),
        );
        entry.insert(
            "invited_count".into(),
            json!(members.count(Membership::Invite)),
        );
        entry.insert("notification_count".into(), json!(notification_count));
        entry.insert("highlight_count".into(), json!(highlight_count));
        if let Some(c) = candidate {
            entry.insert("bump_stamp".into(), json!(c.bump));
            if self.is_dm(dms, room_id, user, c.membership)? {
                entry.insert("is_dm".into(), json!(true));
            }
        }
        self.display_fields(&state_now, user, &members, &mut entry)?;
        Ok(Some(Value::Object(entry)))
    }

    /// `name`, `avatar` and, for rooms without a name, `heroes` (up to five other
    /// members with their profiles), from the state the user may see.
    fn display_fields(
        &self,
        state: &crate::rooms::StateMap,
        user: &UserId,
        members: &crate::rooms::RoomMembers,
        entry: &mut Map<String, Value>,
    ) -> Result<()> {
        let name = self
            .rooms
            .content_in(state, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned))
            .filter(|n| !n.is_empty());
        if let Some(name) = &name {
            entry.insert("name".into(), json!(name));
        }
        if let Some(avatar) = self
            .rooms
            .content_in(state, "m.room.avatar", "")?
            .and_then(|c| c["url"].as_str().map(str::to_owned))
        {
            entry.insert("avatar".into(), json!(avatar));
        }
        if name.is_none() {
            let mut heroes = Vec::new();
            for (member, m) in members.all() {
                if member == user || !matches!(m, Membership::Join | Membership::Invite) {
                    continue;
                }
                let content = self
                    .rooms
                    .content_in(state, "m.room.member", member.as_str())?
                    .unwrap_or_default();
                let mut hero = json!({ "user_id": member });
                if let Some(n) = content["displayname"].as_str() {
                    hero["displayname"] = json!(n);
                }
                if let Some(a) = content["avatar_url"].as_str() {
                    hero["avatar_url"] = json!(a);
                }
                heroes.push(hero);
                if heroes.len() >= 5 {
                    break;
                }
            }
            entry.insert("heroes".into(), json!(heroes));
        }
        Ok(())
    }

    /// Rooms an extension applies to: the `rooms`/`lists` it names, else every room of
    /// the response's lists and subscriptions.
    fn extension_rooms<'a>(
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
    fn sliding_extensions(
        &self,
        session: &Session,
        body: &Value,
        since: Option<SyncToken>,
        now: SyncToken,
        configs: &BTreeMap<OwnedRoomId, RoomConfig>,
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
            let counts = self.e2ee.key_counts(user, device)?;
            let (lists, counts_changed) = match since {
                Some(s) => {
                    let from = StreamPoint {
                        timeline: s.timeline,
                        e2ee: s.e2ee,
                    };
                    let to = StreamPoint {
                        timeline: now.timeline,
                        e2ee: now.e2ee,
                    };
                    (
                        self.e2ee.device_list_changes(user, from, to)?,
                        counts.changed_at > s.e2ee,
                    )
                }
                None => (DeviceListChanges::default(), false),
            };
            changed |= !lists.is_empty() || counts_changed;
            out.insert(
                "e2ee".into(),
                json!({
                    "device_lists": { "changed": lists.changed, "left": lists.left },
                    "device_one_time_keys_count": counts.one_time,
                    "device_unused_fallback_key_types": counts.unused_fallback,
                }),
            );
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
                out.insert(
                    "account_data".into(),
                    json!({ "global": global, "rooms": per_room }),
                );
            }
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
