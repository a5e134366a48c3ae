//! Push rules and notifications: every new room event is evaluated against the push rules
//! of each joined member (ruma's evaluator, the spec's default ruleset); a notifying event
//! gets one record naming everyone it notifies, grouped by the actions that applied. The
//! records feed `unread_notifications`, `/notifications` and the HTTP pushers
//! ([`gateway`]). One record per event rather than one per recipient: in a room of 1,000
//! members a message is one storage write instead of 1,000.
//!
//! A user's rules live in their `m.push_rules` global account data (content
//! `{"global": ruleset}`), as clients expect to read them from `/sync`; users who never
//! changed a rule get the server default.

mod consumer;
pub mod gateway;
mod purge;
mod unread;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

pub use self::consumer::PushConsumer;

use futures_util::FutureExt;
use ruma::{
    api::client::push::{Pusher, PusherKind},
    int,
    power_levels::NotificationPowerLevels,
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
    Int, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    events::Pdu,
    rooms::{Membership, RoomsService},
    storage::{keys, Batch, Storage},
    users::UsersService,
    Result,
};

/// The account-data type holding a user's rules.
pub const PUSH_RULES_TYPE: &str = "m.push_rules";

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
struct EventPush {
    #[serde(rename = "e")]
    event_id: String,
    /// When it was recorded (ms since the epoch).
    #[serde(rename = "t")]
    ts: u64,
    /// Recipients grouped by the actions that applied to them.
    #[serde(rename = "g")]
    groups: Vec<PushGroup>,
}

/// Users an event notifies with the same actions.
#[derive(Debug, Serialize, Deserialize)]
struct PushGroup {
    #[serde(
        rename = "a",
        default = "notify_only",
        skip_serializing_if = "is_notify_only"
    )]
    actions: Vec<Action>,
    #[serde(rename = "u")]
    users: Vec<String>,
}

impl EventPush {
    /// Adds a recipient to the group of its actions.
    fn add(&mut self, user: &UserId, actions: &[Action]) {
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
    fn add_all(&mut self, users: &[&UserId], actions: &[Action]) {
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
    fn for_user(&self, user: &UserId) -> Option<PushRecord> {
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
fn record_for(raw: &[u8], user: &UserId) -> Option<PushRecord> {
    let id = user.as_str();
    if !id.contains(['"', '\\']) {
        let quoted = format!("\"{id}\"");
        memchr::memmem::find(raw, quoted.as_bytes())?;
    }
    serde_json::from_slice::<EventPush>(raw)
        .ok()?
        .for_user(user)
}

/// An event's evaluation: whom it notifies, waiting to be recorded and pushed.
struct Evaluated {
    pdu: Arc<Pdu>,
    pos: u64,
    event_json: Value,
    record: EventPush,
    /// `(recipient, highlighted)`.
    pushes: Vec<(OwnedUserId, bool)>,
}

/// A page of `/notifications`.
pub struct NotificationsPage {
    /// `(room_id, pos, record, read)` newest first.
    pub items: Vec<(String, u64, PushRecord, bool)>,
    /// Token for the next page.
    pub next: Option<u64>,
}

/// The push service.
pub struct PushService {
    storage: Arc<Storage>,
    rooms: Arc<RoomsService>,
    users: Arc<UsersService>,
    /// Each user's own rules once read: `None` for the server default.
    rules: Mutex<HashMap<OwnedUserId, Option<Arc<Ruleset>>>>,
    /// A user id no event names (random per start): the default rules evaluated for it
    /// give every member they do not single out the same actions.
    nobody: OwnedUserId,
    /// Unread counts per (user, room) as of a read position: `(read_pos, notify,
    /// highlight)`. Kept up to date as records are written (under this lock, so a count
    /// being computed and a record being added cannot miss or double-count each other);
    /// recomputed when the user's read position moved.
    unread: Mutex<HashMap<(OwnedUserId, OwnedRoomId), (u64, u64, u64)>>,
    /// Users who have (or recently had) a pusher: the others are skipped without a
    /// lookup when an event is pushed. Only grows while running; rebuilt at start.
    with_pushers: Mutex<HashSet<OwnedUserId>>,
    /// Display names per (room, member), dropped at the member's next membership event.
    names: Mutex<HashMap<OwnedRoomId, HashMap<OwnedUserId, String>>>,
    gateway: gateway::Gateway,
}

/// A user id of this server that no event names: random, and with a localpart users cannot
/// register.
fn nobody(server: &ruma::ServerName) -> OwnedUserId {
    use rand::Rng;
    let nonce: u64 = rand::thread_rng().gen();
    UserId::parse(format!("@_myelin_push_nobody_{nonce:016x}:{server}"))
        .unwrap_or_else(|_| UserId::parse("@_myelin_push_nobody:localhost").expect("a valid id"))
}

fn record_key(room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuilder::new().str(room.as_str()).u64(pos).build()
}

impl PushService {
    /// Builds the service; pushes are delivered by a background task on the runtime.
    pub fn new(
        storage: Arc<Storage>,
        rooms: Arc<RoomsService>,
        users: Arc<UsersService>,
        gateway_policy: gateway::AddressPolicy,
    ) -> PushService {
        let server = rooms.server_name().to_owned();
        PushService {
            storage,
            rooms,
            users,
            rules: Mutex::new(HashMap::new()),
            nobody: nobody(&server),
            unread: Mutex::new(HashMap::new()),
            with_pushers: Mutex::new(HashSet::new()),
            names: Mutex::new(HashMap::new()),
            gateway: gateway::Gateway::new(gateway_policy),
        }
    }

    /// Reads who has pushers (call once at start).
    pub fn load_pushers(&self) -> Result<()> {
        let mut users = HashSet::new();
        for kv in self.storage.trees.pushers.scan_prefix(&[]) {
            let (k, _) = kv?;
            if let Some(user) = keys::split_strs(&k)
                .first()
                .and_then(|u| OwnedUserId::try_from(*u).ok())
            {
                users.insert(user);
            }
        }
        *self.with_pushers.lock().unwrap_or_else(|e| e.into_inner()) = users;
        Ok(())
    }

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

    fn may_have_pushers(&self, user: &UserId) -> bool {
        self.with_pushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(user)
    }

    /// A user's push rules.
    pub fn ruleset(&self, user: &UserId) -> Result<Arc<Ruleset>> {
        Ok(self
            .custom_ruleset(user)?
            .unwrap_or_else(|| Arc::new(Ruleset::server_default(user))))
    }

    /// The user's own rules, `None` when they use the server default.
    fn custom_ruleset(&self, user: &UserId) -> Result<Option<Arc<Ruleset>>> {
        if let Some(r) = self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return Ok(r.clone());
        }
        let stored = self
            .users
            .get_account_data(user, None, PUSH_RULES_TYPE)?
            .and_then(|c| serde_json::from_value::<Ruleset>(c["global"].clone()).ok())
            .map(Arc::new);
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), stored.clone());
        Ok(stored)
    }

    /// The `m.push_rules` account-data content of a user (for `/sync`).
    pub fn rules_content(&self, user: &UserId) -> Result<Value> {
        Ok(json!({ "global": *self.ruleset(user)? }))
    }

    /// Stores a changed ruleset (durable when this returns).
    pub async fn save_ruleset(&self, user: &UserId, ruleset: Ruleset) -> Result<()> {
        let content = json!({ "global": ruleset });
        self.users
            .set_account_data(user, None, PUSH_RULES_TYPE, content)
            .await?;
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), Some(Arc::new(ruleset)));
        Ok(())
    }

    /// Evaluates the push rules of every member an event concerns (the joined members
    /// but the sender, and the invitee of an invite): who it notifies, with which actions.
    fn evaluate(&self, pdu: &Arc<Pdu>, pos: u64) -> Result<Option<Evaluated>> {
        let room_id = &pdu.room_id;
        let members = self.rooms.members(room_id)?;
        let mut joined: Vec<&UserId> = members.joined().filter(|u| *u != pdu.sender).collect();
        // The invitee of an invite is not joined yet but is notified of it.
        if pdu.kind.to_string() == "m.room.member" {
            if let Some(target) = pdu
                .state_key
                .as_deref()
                .and_then(|k| <&UserId>::try_from(k).ok())
            {
                // A membership event may change the display name.
                if let Some(room) = self
                    .names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(room_id)
                {
                    room.remove(target);
                }
                if members.get(target) == Some(Membership::Invite) && target != pdu.sender {
                    joined.push(target);
                }
            }
        }
        if joined.is_empty() {
            return Ok(None);
        }
        let event_json = pdu.to_client_event();
        let raw: Raw<Value> = Raw::from_json(serde_json::value::to_raw_value(&event_json)?);
        // Flattened once for every recipient (ruma's get_actions flattens per call).
        let flattened = FlattenedJson::from_raw(&raw);
        let power_levels = self.power_levels_ctx(room_id)?;
        let member_count =
            UInt::try_from(members.count(Membership::Join) as u64).unwrap_or(UInt::MAX);
        let ctx_for = |user: &UserId, display_name: String| {
            PushConditionRoomCtx::new(room_id.clone(), member_count, user.to_owned(), display_name)
                .with_power_levels(power_levels.clone())
        };
        // Members on the server's default rules whom the event does not name get the same
        // actions: evaluated once, for a user nobody names. The rest (own rules, or named
        // by id, localpart or display name anywhere in the content, or the target of a
        // membership change) are evaluated one by one. In a big room a message costs a
        // substring search per member, not a rule evaluation.
        let content = pdu.content.get();
        let content_lower = content.to_lowercase();
        let names = |user: &UserId, display_name: &str| {
            content.contains(user.as_str())
                || content_lower.contains(&user.localpart().to_lowercase())
                || content_lower.contains(&display_name.to_lowercase())
                || pdu.state_key.as_deref() == Some(user.as_str())
        };
        let mut generic: Option<Vec<Action>> = None;
        let mut generic_users = Vec::new();
        let mut record = EventPush {
            event_id: pdu.event_id.to_string(),
            ts: crate::users::now_ms(),
            groups: Vec::new(),
        };
        let mut pushes = Vec::new();
        for user in joined {
            let display_name = self.display_name(room_id, user)?;
            let custom = self.custom_ruleset(user)?;
            if custom.is_none() && !names(user, &display_name) {
                let actions = match &generic {
                    Some(a) => a,
                    None => {
                        let ruleset = Ruleset::server_default(&self.nobody);
                        let ctx = ctx_for(&self.nobody, self.nobody.localpart().to_owned());
                        let actions = matching_actions(&ruleset, &flattened, &ctx)
                            .map(<[Action]>::to_vec)
                            .unwrap_or_default();
                        generic.insert(actions)
                    }
                };
                if actions.iter().any(Action::should_notify) {
                    generic_users.push(user);
                    pushes.push((user.to_owned(), actions.iter().any(Action::is_highlight)));
                }
                continue;
            }
            let ruleset = custom.unwrap_or_else(|| Arc::new(Ruleset::server_default(user)));
            let ctx = ctx_for(user, display_name);
            let Some(actions) = matching_actions(&ruleset, &flattened, &ctx) else {
                continue;
            };
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            record.add(user, actions);
            pushes.push((user.to_owned(), actions.iter().any(Action::is_highlight)));
        }
        if let Some(actions) = &generic {
            record.add_all(&generic_users, actions);
        }
        if pushes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Evaluated {
            pdu: pdu.clone(),
            pos,
            event_json,
            record,
            pushes,
        }))
    }

    /// Writes the notification records of evaluated events in `batch` (with whatever else
    /// it holds) and counts them in the cached unread counts, atomically with respect to
    /// counts being computed.
    fn record(&self, evaluated: &[Evaluated], mut batch: Batch) -> Result<()> {
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
                if let Some(counts) = unread.get_mut(&(user.clone(), e.pdu.room_id.clone())) {
                    counts.1 += 1;
                    counts.2 += u64::from(*highlight);
                }
            }
        }
        Ok(())
    }

    /// Queues the pushes of recorded (and durable) events to the users' push gateways.
    fn deliver(&self, e: &Evaluated) -> Result<()> {
        let room_id = &e.pdu.room_id;
        for (user, _) in &e.pushes {
            if !self.may_have_pushers(user) {
                continue;
            }
            let pushers = self.pushers(user)?;
            if pushers.is_empty() {
                continue;
            }
            // The user's own view of the event's record, for the push payload.
            let Some(record) = e.record.for_user(user) else {
                continue;
            };
            let unread = self.total_unread(user)?;
            let room_name = self
                .rooms
                .state_content(room_id, "m.room.name", "")?
                .and_then(|c| c["name"].as_str().map(str::to_owned));
            let sender_name = self.display_name(room_id, &e.pdu.sender).ok();
            for pusher in pushers {
                self.gateway.queue(gateway::Job::new(
                    user,
                    pusher,
                    &e.event_json,
                    &record,
                    unread,
                    room_name.as_deref(),
                    sender_name.as_deref(),
                ));
            }
        }
        Ok(())
    }

    fn power_levels_ctx(&self, room_id: &RoomId) -> Result<PushConditionPowerLevelsCtx> {
        let content = self
            .rooms
            .state_content(room_id, "m.room.power_levels", "")?
            .unwrap_or_else(|| json!({}));
        let to_int = |v: &Value| -> Option<Int> {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .and_then(|n| Int::try_from(n).ok())
        };
        let users: BTreeMap<OwnedUserId, Int> = content["users"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| {
                        Some((OwnedUserId::try_from(k.as_str()).ok()?, to_int(v)?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let users_default = to_int(&content["users_default"]).unwrap_or(int!(0));
        let notifications: NotificationPowerLevels = serde_json::from_value(
            content
                .get("notifications")
                .cloned()
                .unwrap_or_else(|| json!({})),
        )
        .unwrap_or_else(|_| serde_json::from_value(json!({})).expect("defaults parse"));
        let version = self.rooms.room_version(room_id)?;
        let rules = crate::events::rules_for(&version)?;
        Ok(PushConditionPowerLevelsCtx::new(
            users,
            users_default,
            notifications,
            RoomPowerLevelsRules::new(&rules.authorization, std::iter::empty()),
        ))
    }

    /// The member's display name in the room (for the `contains_display_name`
    /// condition), cached until their next membership event.
    fn display_name(&self, room_id: &RoomId, user: &UserId) -> Result<String> {
        if let Some(name) = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
            .and_then(|room| room.get(user))
        {
            return Ok(name.clone());
        }
        let name = self
            .rooms
            .state_content(room_id, "m.room.member", user.as_str())?
            .and_then(|c| c["displayname"].as_str().map(str::to_owned))
            .unwrap_or_else(|| user.localpart().to_owned());
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room_id.to_owned())
            .or_default()
            .insert(user.to_owned(), name.clone());
        Ok(name)
    }

    /// `(notification_count, highlight_count)` of a room: notifying events after the
    /// user's read receipt.
    pub fn unread_counts(&self, user: &UserId, room_id: &RoomId) -> Result<(u64, u64)> {
        let read = self.rooms.own_read_pos(room_id, user)?.unwrap_or(0);
        let key = (user.to_owned(), room_id.to_owned());
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(at, notify, highlight)) = unread.get(&key) {
            if at == read {
                return Ok((notify, highlight));
            }
        }
        let (notify, highlight) = self.count_unread(user, room_id, read)?;
        unread.insert(key, (read, notify, highlight));
        Ok((notify, highlight))
    }

    /// Counts the stored records naming `user` after the read position `read`.
    fn count_unread(&self, user: &UserId, room_id: &RoomId, read: u64) -> Result<(u64, u64)> {
        let from = record_key(room_id, read.saturating_add(1));
        let to = record_key(room_id, u64::MAX);
        let (mut notify, mut highlight) = (0, 0);
        for kv in self.storage.trees.event_push.range(&from, &to, false) {
            let (_, v) = kv?;
            if let Some(record) = record_for(&v, user) {
                notify += 1;
                highlight += u64::from(record.highlight);
            }
        }
        Ok((notify, highlight))
    }

    fn total_unread(&self, user: &UserId) -> Result<u64> {
        let mut total = 0;
        for room in self.rooms.joined_rooms(user)? {
            total += self.unread_counts(user, &room)?.0;
        }
        Ok(total)
    }

    /// `/notifications`: newest first, before position `from`, at most `limit`. The
    /// newest records of each of the user's rooms, merged.
    pub fn notifications(
        &self,
        user: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<NotificationsPage> {
        let before = from.unwrap_or(u64::MAX);
        let mut found: Vec<(u64, OwnedRoomId, PushRecord)> = Vec::new();
        for (room_id, _, _) in self.rooms.user_rooms(user)? {
            let lo = record_key(&room_id, 0);
            let hi = record_key(&room_id, before);
            let mut taken = 0;
            for kv in self.storage.trees.event_push.range(&lo, &hi, true) {
                let (k, v) = kv?;
                let Some(record) = record_for(&v, user) else {
                    continue;
                };
                if only_highlight && !record.highlight {
                    continue;
                }
                found.push((keys::trailing_u64(&k).unwrap_or(0), room_id.clone(), record));
                taken += 1;
                if taken > limit {
                    break;
                }
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let next = (found.len() > limit).then(|| found[limit - 1].0);
        found.truncate(limit);
        let mut read_pos: HashMap<OwnedRoomId, u64> = HashMap::new();
        let mut items = Vec::with_capacity(found.len());
        for (pos, room_id, record) in found {
            let read = match read_pos.get(&room_id) {
                Some(p) => *p,
                None => {
                    let p = self.rooms.own_read_pos(&room_id, user)?.unwrap_or(0);
                    read_pos.insert(room_id.clone(), p);
                    p
                }
            };
            items.push((room_id.to_string(), pos, record, pos <= read));
        }
        Ok(NotificationsPage { items, next })
    }

    // ---- pushers ----

    fn pusher_key(user: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
        keys::strs(&[user.as_str(), app_id, pushkey])
    }

    /// A user's pushers.
    pub fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>> {
        let mut out = Vec::new();
        for kv in self
            .storage
            .trees
            .pushers
            .scan_prefix(&keys::strs(&[user.as_str()]))
        {
            let (_, v) = kv?;
            if let Ok(p) = serde_json::from_slice::<Pusher>(&v) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Creates or replaces a pusher. Unless `append`, pushers of other users with the same
    /// app id and push key are removed (the spec's rule). Durable when this returns.
    pub async fn set_pusher(&self, user: &UserId, pusher: Pusher, append: bool) -> Result<()> {
        if let PusherKind::Http(http) = &pusher.kind {
            self.gateway.check_url(&http.url)?;
        }
        let app_id = pusher.ids.app_id.clone();
        let pushkey = pusher.ids.pushkey.clone();
        let mut batch = Batch::new();
        if !append {
            for kv in self.storage.trees.pushers.scan_prefix(&[]) {
                let (k, v) = kv?;
                if let Ok(p) = serde_json::from_slice::<Pusher>(&v) {
                    if p.ids.app_id == app_id && p.ids.pushkey == pushkey {
                        batch.remove(&self.storage.trees.pushers, &k);
                    }
                }
            }
        }
        batch.insert_json(
            &self.storage.trees.pushers,
            &Self::pusher_key(user, &app_id, &pushkey),
            &pusher,
        )?;
        // Known before the pusher is visible, so no event between misses it.
        self.with_pushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned());
        self.storage.commit(batch)?;
        self.storage.durable().await
    }

    /// Deletes a pusher (no error when absent). Durable when this returns.
    pub async fn delete_pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        let mut batch = Batch::new();
        batch.remove(
            &self.storage.trees.pushers,
            &Self::pusher_key(user, app_id, pushkey),
        );
        self.storage.commit(batch)?;
        self.storage.durable().await
    }

    /// Removes every pusher of a user (deactivation).
    pub fn delete_all_pushers(&self, user: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        for kv in self
            .storage
            .trees
            .pushers
            .scan_prefix(&keys::strs(&[user.as_str()]))
        {
            batch.remove(&self.storage.trees.pushers, &kv?.0);
        }
        self.storage.commit(batch)
    }

    /// Starts delivering queued pushes (call once from inside the runtime).
    pub fn start_delivery(self: &Arc<Self>) {
        // Weak: the delivery task must not keep the service (and the database) alive.
        let this = Arc::downgrade(self);
        self.gateway
            .start(move |user: &str, app_id: &str, pushkey: &str| {
                let Some(this) = this.upgrade() else {
                    return;
                };
                if let Ok(user) = <&UserId>::try_from(user) {
                    let mut batch = Batch::new();
                    batch.remove(
                        &this.storage.trees.pushers,
                        &Self::pusher_key(user, app_id, pushkey),
                    );
                    if let Err(e) = this.storage.commit(batch) {
                        tracing::warn!(error = %e, "could not remove rejected pusher");
                    }
                }
            });
    }
}

/// The actions of the first rule of `ruleset` that applies to the event (none when no rule
/// applies), as ruma's `Ruleset::get_actions` decides, on an event flattened once for all
/// recipients. The sender is never a recipient here. `None` if a condition needed an
/// asynchronous lookup: ruma awaits only thread-subscription lookups, which we do not
/// install, so that does not happen.
fn matching_actions<'a>(
    ruleset: &'a Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<&'a [Action]> {
    for rule in ruleset {
        if rule.applies(event, ctx).now_or_never()? {
            return Some(rule.actions());
        }
    }
    Some(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:x")).unwrap()
    }

    /// What full evaluation gives each member: the reference the shortcut must match.
    fn evaluated_one_by_one(push: &PushService, pdu: &Pdu) -> BTreeMap<String, Value> {
        let members = push.rooms.members(&pdu.room_id).unwrap();
        let raw: Raw<Value> =
            Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event()).unwrap());
        let flattened = FlattenedJson::from_raw(&raw);
        let count = UInt::try_from(members.count(Membership::Join) as u64).unwrap();
        let mut out = BTreeMap::new();
        for user in members.joined().filter(|u| *u != pdu.sender) {
            let ctx = PushConditionRoomCtx::new(
                pdu.room_id.clone(),
                count,
                user.to_owned(),
                push.display_name(&pdu.room_id, user).unwrap(),
            )
            .with_power_levels(push.power_levels_ctx(&pdu.room_id).unwrap());
            let ruleset = push.ruleset(user).unwrap();
            let actions = matching_actions(&ruleset, &flattened, &ctx)
                .unwrap()
                .to_vec();
            if actions.iter().any(Action::should_notify) {
                out.insert(user.to_string(), json!(actions));
            }
        }
        out
    }

    #[tokio::test]
    async fn members_on_default_rules_share_one_evaluation_with_the_same_result() {
        use crate::rooms::{CreateRoom, MemberProfile, NewEvent};
        let s = crate::services::Services::in_memory(crate::config::Config::default()).unwrap();
        let user = |n: &str| UserId::parse(format!("@{n}:localhost")).unwrap();
        let (alice, bob, carol, dave, erin) = (
            user("alice"),
            user("bob"),
            user("carol"),
            user("dave"),
            user("erin"),
        );
        let room = s
            .rooms
            .create_room(
                &alice,
                CreateRoom {
                    preset: Some("public_chat".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for (u, name) in [
            (&bob, "Bobby Tables"),
            (&carol, "carol"),
            (&dave, "D"),
            (&erin, "Erin"),
        ] {
            let profile = MemberProfile {
                displayname: Some(name.into()),
                avatar_url: None,
            };
            s.rooms.join(&room, u, &profile, None).await.unwrap();
        }
        // Erin has rules of her own: everything from alice highlights.
        let mut custom = Ruleset::server_default(&erin);
        custom
            .insert(
                ruma::push::NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
                    "from_alice".into(),
                    vec![ruma::push::PushCondition::EventMatch(
                        ruma::push::EventMatchConditionData::new(
                            "sender".into(),
                            alice.to_string(),
                        ),
                    )],
                    vec![
                        Action::Notify,
                        Action::SetTweak(ruma::push::Tweak::Highlight(
                            ruma::push::HighlightTweakValue::Yes,
                        )),
                    ],
                )),
                None,
                None,
            )
            .unwrap();
        s.push.save_ruleset(&erin, custom).await.unwrap();

        let contents = [
            json!({"msgtype": "m.text", "body": "plain words"}),
            json!({"msgtype": "m.text", "body": "hey Bobby Tables!"}),
            json!({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [carol.as_str()]}}),
            json!({"msgtype": "m.notice", "body": "a notice for dave"}),
            json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}}),
        ];
        for content in contents {
            let guard = s.rooms.lock(&room).await;
            let (id, pos) = s
                .rooms
                .send(
                    guard,
                    &alice,
                    NewEvent::message("m.room.message", content.clone()),
                )
                .await
                .unwrap();
            let pdu = s.rooms.get_pdu(&id).unwrap().unwrap();
            let expected = evaluated_one_by_one(&s.push, &pdu);
            let got: BTreeMap<String, Value> = match s.push.evaluate(&pdu, pos).unwrap() {
                Some(e) => e
                    .record
                    .groups
                    .iter()
                    .flat_map(|g| g.users.iter().map(|u| (u.clone(), json!(g.actions))))
                    .collect(),
                None => BTreeMap::new(),
            };
            assert_eq!(got, expected, "for {content}");
        }
    }

    #[test]
    fn one_record_per_event_groups_recipients_by_their_actions() {
        let mut record = EventPush {
            event_id: "$e".into(),
            ts: 5,
            groups: Vec::new(),
        };
        let loud = [
            Action::Notify,
            Action::SetTweak(ruma::push::Tweak::Highlight(true.into())),
        ];
        record.add(&uid("alice"), &[Action::Notify]);
        record.add(&uid("bob"), &loud);
        record.add(&uid("carol"), &[Action::Notify]);
        record.add(&uid("dan"), &loud);
        let raw = serde_json::to_vec(&record).unwrap();
        let stored: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(stored["g"][0], json!({"u": ["@alice:x", "@carol:x"]}));
        assert_eq!(stored["g"][1]["u"], json!(["@bob:x", "@dan:x"]));
        assert_eq!(stored["g"].as_array().unwrap().len(), 2);

        let alice = record_for(&raw, &uid("alice")).unwrap();
        assert_eq!((alice.event_id.as_str(), alice.ts), ("$e", 5));
        assert!(!alice.highlight);
        assert!(record_for(&raw, &uid("dan")).unwrap().highlight);
        assert_eq!(record_for(&raw, &uid("dan")).unwrap().actions.len(), 2);
        // Not named (a prefix of a named ID does not count).
        assert!(record_for(&raw, &uid("eve")).is_none());
        assert!(record_for(&raw, &uid("ali")).is_none());
    }

    #[tokio::test]
    async fn per_recipient_records_of_earlier_versions_are_moved_at_start() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let room: OwnedRoomId = "!r:x".try_into().unwrap();
        {
            let s = crate::services::Services::open(config.clone()).unwrap();
            let mut batch = Batch::new();
            let old = |user: &str, pos: u64| {
                keys::KeyBuilder::new()
                    .str(user)
                    .str(room.as_str())
                    .u64(pos)
                    .build()
            };
            let t = &s.storage.trees.push_actions;
            batch.insert_json(t, &old("@alice:x", 3), &json!({"e": "$a", "t": 1}))?;
            batch.insert_json(t, &old("@bob:x", 3), &json!({"e": "$a", "t": 1}))?;
            batch.insert_json(
                t,
                &old("@alice:x", 7),
                &json!({"event_id": "$b", "highlight": true, "ts": 2,
                        "actions": ["notify", {"set_tweak": "highlight"}]}),
            )?;
            s.storage.commit(batch)?;
            s.storage.flush()?;
        }
        let s = crate::services::Services::open(config).unwrap();
        assert!(s
            .storage
            .trees
            .push_actions
            .scan_prefix(&[])
            .next()
            .is_none());
        let alice = uid("alice");
        let page = s.push.notifications(&alice, None, 10, false)?;
        // Alice is in no room here, so the listing (which walks her rooms) is empty; the
        // counts read the records directly.
        assert!(page.items.is_empty());
        assert_eq!(s.push.count_unread(&alice, &room, 0)?, (2, 1));
        assert_eq!(s.push.count_unread(&alice, &room, 3)?, (1, 1));
        assert_eq!(s.push.count_unread(&uid("bob"), &room, 0)?, (1, 0));
        assert_eq!(s.push.count_unread(&uid("carol"), &room, 0)?, (0, 0));
        Ok(())
    }

    #[test]
    fn records_are_stored_short_and_old_records_still_read() {
        let plain = PushRecord {
            event_id: "$e".into(),
            highlight: false,
            actions: vec![Action::Notify],
            ts: 7,
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"e": "$e", "t": 7})
        );
        let loud = PushRecord {
            highlight: true,
            actions: vec![
                Action::Notify,
                Action::SetTweak(ruma::push::Tweak::Sound("default".into())),
            ],
            ..plain.clone()
        };
        let back: PushRecord = serde_json::from_slice(&serde_json::to_vec(&loud).unwrap()).unwrap();
        assert!(back.highlight);
        assert_eq!(back.actions.len(), 2);
        let back: PushRecord = serde_json::from_value(json!({"e": "$e", "t": 7})).unwrap();
        assert!(!back.highlight);
        assert!(matches!(back.actions.as_slice(), [Action::Notify]));
        // The long form written by earlier versions.
        let old: PushRecord = serde_json::from_value(json!({
            "event_id": "$old", "highlight": true, "actions": ["notify"], "ts": 9
        }))
        .unwrap();
        assert_eq!(
            (old.event_id.as_str(), old.highlight, old.ts),
            ("$old", true, 9)
        );
    }
}
