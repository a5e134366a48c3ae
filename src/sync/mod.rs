//! `/sync`: stream positions and response assembly. A sync token
//! is `s{timeline}_{ephemeral}_{userdata}_{e2ee}`: one position per stream (tokens with
//! fewer parts, from older servers, read the missing ones as 0).

mod e2ee;
mod filters;
mod lazy;
pub mod sliding;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    e2ee::{E2eeService, StreamPoint},
    events::Pdu,
    push::{PushService, PUSH_RULES_TYPE},
    rooms::{Direction, EventFilter, Membership, RoomsService, Token},
    users::{Session, UsersService},
    Error, Result,
};

/// Positions of every stream a sync token covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncToken {
    /// Timeline stream.
    pub timeline: u64,
    /// Receipts and typing.
    pub ephemeral: u64,
    /// Account data and presence.
    pub userdata: u64,
    /// To-device messages, device-list and one-time-key changes.
    pub e2ee: u64,
}

impl SyncToken {
    /// Parses `s{t}_{e}_{u}_{d}` (trailing parts optional).
    pub fn parse(s: &str) -> Result<SyncToken> {
        let bad = || Error::invalid_param(format!("invalid sync token {s:?}"));
        let rest = s.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = rest.split('_').map(|p| p.parse::<u64>().map_err(|_| bad()));
        Ok(SyncToken {
            timeline: parts.next().ok_or_else(bad)??,
            ephemeral: parts.next().transpose()?.unwrap_or(0),
            userdata: parts.next().transpose()?.unwrap_or(0),
            e2ee: match parts.next().transpose()? {
                Some(d) if parts.next().is_none() => d,
                Some(_) => return Err(bad()),
                None => 0,
            },
        })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s{}_{}_{}_{}",
            self.timeline, self.ephemeral, self.userdata, self.e2ee
        )
    }
}

/// The E2EE parts of one `/sync` response.
struct E2eeSections {
    /// Whether any of them is news for the client.
    changed: bool,
    to_device: Vec<Value>,
    device_keys: e2ee::DeviceKeys,
    /// The token to hand out (stops early when to-device messages are left over).
    next: SyncToken,
}

/// The parts of a sync filter that shape the response.
#[derive(Clone, Debug, Default)]
pub struct SyncFilter {
    timeline: EventFilter,
    state: EventFilter,
    ephemeral_enabled: bool,
    room_account_data_enabled: bool,
    account_data_enabled: bool,
    presence_enabled: bool,
    include_leave: bool,
    rooms: EventFilter,
}

impl SyncFilter {
    /// Reads a filter definition (an empty object means defaults).
    pub fn from_json(v: &Value) -> SyncFilter {
        let room = v.get("room").cloned().unwrap_or(Value::Null);
        let not_empty_types = |f: Option<&Value>| {
            f.and_then(|f| f.get("types"))
                .and_then(Value::as_array)
                .is_none_or(|a| !a.is_empty())
                && f.and_then(|f| f.get("limit")).and_then(Value::as_u64) != Some(0)
        };
        SyncFilter {
            timeline: EventFilter::from_json(room.get("timeline").unwrap_or(&Value::Null)),
            state: EventFilter::from_json(room.get("state").unwrap_or(&Value::Null)),
            ephemeral_enabled: not_empty_types(room.get("ephemeral")),
            room_account_data_enabled: not_empty_types(room.get("account_data")),
            account_data_enabled: not_empty_types(v.get("account_data")),
            presence_enabled: not_empty_types(v.get("presence")),
            include_leave: room
                .get("include_leave")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            rooms: EventFilter::from_json(&room),
        }
    }
}

/// A `/sync` request after parsing.
#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    /// `since` token.
    pub since: Option<String>,
    /// Long-poll timeout.
    pub timeout: Duration,
    /// Send full state of every room.
    pub full_state: bool,
    /// The `filter` parameter: an inline definition or a stored filter's id.
    pub filter: Option<String>,
    /// `set_presence`.
    pub set_presence: Option<String>,
}

/// The sync service.
pub struct SyncService {
    rooms: Arc<RoomsService>,
    users: Arc<UsersService>,
    e2ee: Arc<E2eeService>,
    notifier: Arc<crate::stream::Notifier>,
    push: Arc<PushService>,
    /// Sliding sync connections.
    connections: sliding::Connections,
    /// Lazy-loaded member events sent to each device.
    lazy_members: lazy::LazyMembers,
    /// Filters already parsed.
    filters: filters::Filters,
}

/// Default timeline events per room.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Longest long-poll we honour.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a sync waits for this process to reach a token from another process.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Types shown to invitees and knockers.
const STRIPPED_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

impl SyncService {
    /// Notes the delivery of the newest of `events` sent by someone else to `user` (a
    /// delivered receipt, see `rooms::delivered`), unless the user is in privacy mode.
    fn note_delivered(
        &self,
        room_id: &RoomId,
        user: &UserId,
        events: &[(u64, Arc<crate::events::Pdu>)],
    ) -> Result<()> {
        let Some((pos, pdu)) = events.iter().rev().find(|(_, p)| p.sender != user) else {
            return Ok(());
        };
        // The room's size first: it is in memory, the user's privacy setting is not.
        if !self.rooms.records_deliveries(room_id)? || !self.users.sends_acknowledgements(user)? {
            return Ok(());
        }
        self.rooms
            .note_delivered(room_id, user, *pos, &pdu.event_id, &pdu.sender)
    }

    /// Builds the service.
    pub fn new(
        rooms: Arc<RoomsService>,
        users: Arc<UsersService>,
        e2ee: Arc<E2eeService>,
        notifier: Arc<crate::stream::Notifier>,
        push: Arc<PushService>,
    ) -> SyncService {
        SyncService {
            rooms,
            users,
            e2ee,
            notifier,
            push,
            connections: Default::default(),
            lazy_members: Default::default(),
            filters: Default::default(),
        }
    }

    /// Answers `/sync`, waiting up to the timeout for something new.
    #[tracing::instrument(skip(self, session, req), fields(user = %session.user_id))]
    pub async fn sync(&self, session: &Session, req: SyncRequest) -> Result<Value> {
        let user = &session.user_id;
        let since = req.since.as_deref().map(SyncToken::parse).transpose()?;
        let filter = self
            .filters
            .resolve(&self.users, user, req.filter.as_deref())?;
        if req.set_presence.as_deref() != Some("offline") {
            self.users
                .touch_presence(user, req.set_presence.as_deref())?;
        }
        let deadline = tokio::time::Instant::now() + req.timeout.min(MAX_TIMEOUT);
        if let Some(since) = since {
            self.catch_up(since).await;
        }
        let handle = self.notifier.handle(user);
        loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A client that is up to date on every stream has nothing new: wait without
            // building (the common case of a long-poll right after a delivery).
            // At shutdown nothing waits: the client gets what there is and syncs again
            // against the restarted server.
            let closing = self.notifier.is_closing();
            if since.is_some_and(|s| s == self.current_token()) && !req.full_state && !closing {
                let _parked = self.notifier.park(user);
                tokio::select! {
                    _ = &mut notified => continue,
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            let (response, changed) = self.build(session, since, &filter, req.full_state)?;
            if changed || since.is_none() || req.full_state || closing {
                return Ok(response);
            }
            let _parked = self.notifier.park(user);
            tokio::select! {
                _ = &mut notified => continue,
                _ = tokio::time::sleep_until(deadline) => return Ok(response),
            }
        }
    }

    /// On a database shared with other processes, a token may come from a process that is
    /// ahead of this one (its last sync went there): wait until this process has taken in
    /// what the token covers — the other processes' commits arrive within milliseconds —
    /// so that the answer does not go back in time or hand out messages again. Gives up
    /// after [`CATCH_UP`].
    async fn catch_up(&self, since: SyncToken) {
        if !self.rooms.is_shared() {
            return;
        }
        let ahead = |now: SyncToken| {
            since.timeline > now.timeline
                || since.ephemeral > now.ephemeral
                || since.userdata > now.userdata
                || since.e2ee > now.e2ee
        };
        let until = tokio::time::Instant::now() + CATCH_UP;
        while ahead(self.current_token()) {
            if tokio::time::Instant::now() >= until {
                tracing::warn!(token = %since, "a sync token ahead of this process");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The positions of every stream now.
    fn current_token(&self) -> SyncToken {
        SyncToken {
            timeline: self.rooms.current_pos(),
            ephemeral: self.rooms.current_ephemeral_pos(),
            userdata: self.users.current_userdata_pos(),
            e2ee: self.e2ee.current_pos(),
        }
    }

    fn build(
        &self,
        session: &Session,
        since: Option<SyncToken>,
        filter: &SyncFilter,
        full_state: bool,
    ) -> Result<(Value, bool)> {
        let user = &session.user_id;
        let now = self.current_token();
        let since_tl = since.map(|s| s.timeline);
        let (global_data, room_data) = self
            .users
            .account_data_since(user, since.map_or(0, |s| s.userdata))?;

        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        let mut knock = Map::new();
        // Initial sync: presence of everyone sharing a room. Otherwise only those whose
        // presence changed since the token, kept when they share a room: a sync costs the
        // changes, not the size of the user's rooms.
        let since_userdata = since.map_or(0, |s| s.userdata);
        let presence_candidates = match since {
            Some(_) if filter.presence_enabled => {
                Some(self.users.presence_changed_since(since_userdata))
            }
            _ => None,
        };
        let mut shared_users: BTreeSet<OwnedUserId> = BTreeSet::new();
        let mut joined_rooms = Vec::new();
        for &(ref room_id, membership, mpos) in self.rooms.user_rooms(user)?.iter() {
            if !filter.rooms.allows_room(room_id) || mpos > now.timeline {
                continue;
            }
            let fresh = since_tl.is_none_or(|s| mpos > s);
            match membership {
                Membership::Join => {
                    if filter.presence_enabled && since.is_none() {
                        shared_users
                            .extend(self.rooms.members(room_id)?.joined().map(ToOwned::to_owned));
                    }
                    joined_rooms.push(room_id.clone());
                    let data = room_data.get(room_id.as_str());
                    if let Some(mut entry) = self.joined_room(
                        session, room_id, since, now, fresh, full_state, filter, data,
                    )? {
                        if let Some(events) = entry
                            .get_mut("timeline")
                            .and_then(|t| t.get_mut("events"))
                            .and_then(Value::as_array_mut)
                        {
                            self.rooms
                                .add_transaction_ids(events, user, &session.device_id)?;
                            self.rooms.add_unsigned(room_id, user, events)?;
                        }
                        join.insert(room_id.to_string(), entry);
                    }
                }
                Membership::Invite if fresh => {
                    invite.insert(room_id.to_string(), json!({ "invite_state": { "events": self.stripped_state(room_id, user)? } }));
                }
                Membership::Knock if fresh => {
                    knock.insert(
                        room_id.to_string(),
                        json!({ "knock_state": { "events": self.stripped_state(room_id, user)? } }),
                    );
                }
                Membership::Leave | Membership::Ban
                    if (since.is_some() && fresh || since.is_none() && filter.include_leave)
                        && !self.rooms.is_forgotten(room_id, user)? =>
                {
                    let mut entry = self.left_room(user, room_id, since, mpos, filter)?;
                    if let Some(events) = entry
                        .get_mut("timeline")
                        .and_then(|t| t.get_mut("events"))
                        .and_then(Value::as_array_mut)
                    {
                        self.rooms.add_unsigned(room_id, user, events)?;
                    }
                    leave.insert(room_id.to_string(), entry);
                }
                _ => {}
            }
        }

        let presence = if filter.presence_enabled {
            let users: Vec<OwnedUserId> = match presence_candidates {
                Some(changed) => {
                    let mut visible = Vec::new();
                    for other in changed {
                        if other == *user || self.shares_a_room(&joined_rooms, &other)? {
                            visible.push(other);
                        }
                    }
                    visible
                }
                None => {
                    shared_users.insert(user.clone());
                    shared_users.into_iter().collect()
                }
            };
            self.users.presence_since(&users, since_userdata)?
        } else {
            Vec::new()
        };
        let account_data: Vec<Value> = if filter.account_data_enabled {
            let mut events: Vec<Value> = global_data
                .into_iter()
                .map(|(kind, content)| json!({ "type": kind, "content": content }))
                .collect();
            // Clients read push rules from account data; users who never changed theirs
            // get the server default in every initial sync.
            if since.is_none() && !events.iter().any(|e| e["type"] == PUSH_RULES_TYPE) {
                events.push(
                    json!({ "type": PUSH_RULES_TYPE, "content": self.push.rules_content(user)? }),
                );
            }
            events
        } else {
            Vec::new()
        };

        let e2ee = self.e2ee_sections(session, since, now)?;
        let changed = !join.is_empty()
            || !invite.is_empty()
            || !leave.is_empty()
            || !knock.is_empty()
            || !presence.is_empty()
            || !account_data.is_empty()
            || e2ee.changed;
        let mut response = json!({
            "next_batch": e2ee.next.to_string(),
            "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
            "presence": { "events": presence },
            "account_data": { "events": account_data },
            "to_device": { "events": e2ee.to_device },
        });
        if let Some(fields) = response.as_object_mut() {
            fields.extend(e2ee.device_keys.fields(true));
        }
        Ok((response, changed))
    }

    /// Whether `other` is joined to any of `rooms`.
    fn shares_a_room(&self, rooms: &[ruma::OwnedRoomId], other: &UserId) -> Result<bool> {
        for room in rooms {
            if self.rooms.members(room)?.get(other) == Some(Membership::Join) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// To-device messages (acknowledging those up to `since`), device-list changes and
    /// key counts of the syncing device.
    fn e2ee_sections(
        &self,
        session: &Session,
        since: Option<SyncToken>,
        now: SyncToken,
    ) -> Result<E2eeSections> {
        let (user, device) = (&session.user_id, &session.device_id);
        let since_e2ee = since.map(|s| s.e2ee).filter(|&d| d <= now.e2ee);
        let to_device = self
            .e2ee
            .to_device_for_sync(user, device, since_e2ee, now.e2ee)?;
        let mut next = now;
        if let Some(pos) = to_device.limited_at {
            next.e2ee = pos;
        }
        let between = since.map(|s| {
            let from = StreamPoint {
                timeline: s.timeline,
                e2ee: since_e2ee.unwrap_or(0),
            };
            let to = StreamPoint {
                timeline: now.timeline,
                e2ee: next.e2ee,
            };
            (from, to)
        });
        let device_keys = self.device_keys(user, device, between)?;
        Ok(E2eeSections {
            changed: !to_device.events.is_empty() || device_keys.changed,
            to_device: to_device.events,
            device_keys,
            next,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn joined_room(
        &self,
        session: &Session,
        room_id: &RoomId,
        since: Option<SyncToken>,
        now: SyncToken,
        fresh: bool,
        full_state: bool,
        filter: &SyncFilter,
        room_data: Option<&Vec<(String, Value)>>,
    ) -> Result<Option<Value>> {
        let user: &UserId = &session.user_id;
        let since_tl = since.map_or(0, |s| s.timeline);
        let limit = filter
            .timeline
            .limit
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .max(1);
        // A room new to this client gets its latest events and full state; otherwise
        // only what came after `since`.
        let send_full_state = fresh || full_state;
        let lo = if fresh { 0 } else { since_tl };
        let (mut events, limited) = self.rooms.visible_timeline(
            room_id,
            user,
            lo,
            now.timeline,
            Direction::Backward,
            limit,
            Some(&filter.timeline),
        )?;
        events.reverse();
        self.note_delivered(room_id, user, &events)?;

        let ephemeral = if filter.ephemeral_enabled {
            self.ephemeral(room_id, user, since)?
        } else {
            Vec::new()
        };
        let account_data: Vec<Value> = if filter.room_account_data_enabled {
            room_data
                .map(|d| {
                    d.iter()
                        .map(|(k, c)| json!({ "type": k, "content": c }))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if !send_full_state && events.is_empty() && ephemeral.is_empty() && account_data.is_empty()
        {
            return Ok(None);
        }

        let first_pos = events.first().map(|(p, _)| *p);
        let state_pos = first_pos.map_or(now.timeline, |p| p - 1);
        // With lazy loading only the timeline senders' and the user's own member events
        // are sent: the others are left out before any event is read (a big room's full
        // state is mostly member events, more than the event cache holds).
        let senders: Option<BTreeSet<&str>> = filter.state.lazy_load_members.then(|| {
            events
                .iter()
                .map(|(_, p)| p.sender.as_str())
                .chain([user.as_str()])
                .collect()
        });
        let lazy_cut = |map: &mut crate::rooms::StateMap| {
            if let Some(senders) = &senders {
                map.retain(|(kind, key), _| kind != "m.room.member" || senders.contains(&**key));
            }
        };
        let mut state: Vec<Arc<Pdu>> = if send_full_state {
            let mut at = self.rooms.state_at(room_id, state_pos)?;
            lazy_cut(&mut at);
            self.rooms.state_events(&at)?
        } else if limited {
            // Gap between `since` and the timeline: send the state that changed in it.
            let before = self.rooms.state_at(room_id, since_tl)?;
            let at = self.rooms.state_at(room_id, state_pos)?;
            let mut changed: BTreeMap<_, _> = at
                .into_iter()
                .filter(|(k, v)| before.get(k) != Some(v))
                .collect();
            lazy_cut(&mut changed);
            self.rooms.state_events(&changed)?
        } else {
            Vec::new()
        };
        state.retain(|p| filter.state.allows(p));
        if filter.state.lazy_load_members {
            self.add_lazy_members(session, room_id, &events, &mut state, since, now, filter)?;
        }

        let prev_batch = Token(first_pos.map_or(now.timeline, |p| p - 1));
        let members = self.rooms.members(room_id)?;
        let (notification_count, highlight_count) = self.push.unread_counts(user, room_id)?;
        let mut entry = json!({
            "timeline": {
                "events": events.iter().map(|(_, p)| p.to_sync_event()).collect::<Vec<_>>(),
                "limited": limited,
                "prev_batch": prev_batch.to_string(),
            },
            "state": { "events": state.iter().map(|p| p.to_sync_event()).collect::<Vec<_>>() },
            "ephemeral": { "events": ephemeral },
            "account_data": { "events": account_data },
            "unread_notifications": { "notification_count": notification_count, "highlight_count": highlight_count },
            "summary": {
                "m.joined_member_count": members.count(Membership::Join),
                "m.invited_member_count": members.count(Membership::Invite),
            },
        });
        if send_full_state {
            let heroes: Vec<&str> = members
                .joined()
                .chain(members.with(Membership::Invite))
                .filter(|u| *u != user)
                .map(UserId::as_str)
                .take(5)
                .collect();
            entry["summary"]["m.heroes"] = json!(heroes);
        }
        Ok(Some(entry))
    }

    /// Lazy loading in an incremental sync: adds the member events of timeline senders
    /// the device was not sent yet (all of them with `include_redundant_members`), and
    /// remembers the member events this response carries.
    #[allow(clippy::too_many_arguments)]
    fn add_lazy_members(
        &self,
        session: &Session,
        room_id: &RoomId,
        events: &[(u64, Arc<Pdu>)],
        state: &mut Vec<Arc<Pdu>>,
        since: Option<SyncToken>,
        now: SyncToken,
        filter: &SyncFilter,
    ) -> Result<()> {
        let device = (&*session.user_id, &session.device_id);
        let is_member = |p: &Pdu| p.kind.to_string() == "m.room.member";
        if let Some(since) = since {
            let known: BTreeSet<&str> = events
                .iter()
                .map(|(_, p)| p)
                .chain(state.iter())
                .filter(|p| is_member(p))
                .filter_map(|p| p.state_key.as_deref())
                .collect();
            let senders: BTreeSet<&UserId> = events
                .iter()
                .map(|(_, p)| &*p.sender)
                .filter(|s| !known.contains(s.as_str()))
                .collect();
            let mut extra = Vec::new();
            for sender in senders {
                // The member event's id says whether the device has it; the event itself
                // is read only when it is to be sent.
                let Some(member_id) =
                    self.rooms
                        .state_event_id(room_id, "m.room.member", sender.as_str())?
                else {
                    continue;
                };
                let known = !filter.state.include_redundant_members
                    && self
                        .lazy_members
                        .has(&device, room_id, sender, &member_id, since.timeline);
                if !known {
                    extra.extend(self.rooms.get_pdu(&member_id)?);
                }
            }
            state.extend(extra);
        }
        let sent: Vec<(&UserId, &ruma::EventId)> = events
            .iter()
            .map(|(_, p)| p)
            .chain(state.iter())
            .filter(|p| is_member(p))
            .filter_map(|p| {
                let key = <&UserId>::try_from(p.state_key.as_deref()?).ok()?;
                Some((key, &*p.event_id))
            })
            .collect();
        self.lazy_members
            .record(&device, room_id, sent, now.timeline);
        Ok(())
    }

    fn left_room(
        &self,
        user: &UserId,
        room_id: &RoomId,
        since: Option<SyncToken>,
        left_at: u64,
        filter: &SyncFilter,
    ) -> Result<Value> {
        let since_tl = since.map_or(0, |s| s.timeline);
        let limit = filter
            .timeline
            .limit
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .max(1);
        let (mut events, limited) = self.rooms.visible_timeline(
            room_id,
            user,
            since_tl,
            left_at,
            Direction::Backward,
            limit,
            Some(&filter.timeline),
        )?;
        events.reverse();
        let first = events.first().map_or(left_at, |(p, _)| p - 1);
        let state = if limited || since.is_none() {
            self.rooms
                .state_events(&self.rooms.state_at(room_id, first)?)?
        } else {
            Vec::new()
        };
        Ok(json!({
            "timeline": {
                "events": events.iter().map(|(_, p)| p.to_sync_event()).collect::<Vec<_>>(),
                "limited": limited,
                "prev_batch": Token(first).to_string(),
            },
            "state": { "events": state.iter().map(|p| p.to_sync_event()).collect::<Vec<_>>() },
            "account_data": { "events": [] },
        }))
    }

    fn ephemeral(
        &self,
        room_id: &RoomId,
        user: &UserId,
        since: Option<SyncToken>,
    ) -> Result<Vec<Value>> {
        let since_eph = since.map_or(0, |s| s.ephemeral);
        let mut out = Vec::new();
        if let Some(typing) = self.rooms.typing_since(room_id, since_eph) {
            out.push(json!({ "type": "m.typing", "content": { "user_ids": typing } }));
        }
        if let Some(content) = self.rooms.receipts_since(room_id, since_eph, user)? {
            out.push(json!({ "type": "m.receipt", "content": content }));
        }
        Ok(out)
    }

    fn stripped_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for kind in STRIPPED_TYPES {
            if let Some(p) = self.rooms.state_event_str(room_id, kind, "")? {
                out.push(p.to_stripped_state());
            }
        }
        if let Some(p) = self
            .rooms
            .state_event_str(room_id, "m.room.member", user.as_str())?
        {
            if let Some(sender_member) =
                self.rooms
                    .state_event_str(room_id, "m.room.member", p.sender.as_str())?
            {
                if sender_member.sender != user {
                    out.push(sender_member.to_stripped_state());
                }
            }
            out.push(p.to_stripped_state());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_tokens_round_trip() {
        let t = SyncToken {
            timeline: 5,
            ephemeral: 7,
            userdata: 9,
            e2ee: 11,
        };
        assert_eq!(t.to_string(), "s5_7_9_11");
        assert_eq!(SyncToken::parse(&t.to_string()).unwrap(), t);
        let old = SyncToken::parse("s5_7_9").unwrap();
        assert_eq!((old.userdata, old.e2ee), (9, 0));
        assert!(SyncToken::parse("s5_7_9_11_13").is_err());
        assert_eq!(SyncToken::parse("s5").unwrap().timeline, 5);
        assert!(SyncToken::parse("t5").is_err());
        assert!(SyncToken::parse("s5_x").is_err());
    }
}
