//! Evaluation of an event against the push rules of every member it concerns, with the
//! shortcut that members on the default rules whom the event does not name share one
//! evaluation.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use futures_util::FutureExt;
use ruma::{
    int,
    power_levels::NotificationPowerLevels,
    push::{
        Action, AnyPushRuleRef, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx,
        Ruleset,
    },
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
    Int, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use super::{store::EventPush, PushService};
use crate::{events::Pdu, rooms::Membership, Result};

/// Names per (room, member) as the naming rules look for them, dropped at the member's
/// next membership event.
#[derive(Default)]
pub(super) struct NameCache {
    pub(super) rooms: HashMap<OwnedRoomId, HashMap<OwnedUserId, Arc<MemberName>>>,
    /// Entries dropped so far because another process changed a membership: names read
    /// before a drop are not cached (they may be the old ones).
    dropped: u64,
}

impl NameCache {
    /// Drops the name of `user` in `room` (`None`: every name) after another process
    /// changed their membership.
    pub(super) fn changed_elsewhere(&mut self, member: Option<(&RoomId, &UserId)>) {
        match member {
            Some((room, user)) => {
                if let Some(names) = self.rooms.get_mut(room) {
                    names.remove(user);
                }
            }
            None => self.rooms.clear(),
        }
        self.dropped += 1;
    }
}

/// An event's evaluation: whom it notifies, waiting to be recorded and pushed.
pub(super) struct Evaluated {
    pub(super) pdu: Arc<Pdu>,
    pub(super) pos: u64,
    pub(super) event_json: Value,
    pub(super) record: EventPush,
    /// `(recipient, highlighted)`.
    pub(super) pushes: Vec<(OwnedUserId, bool)>,
}

impl PushService {
    /// Evaluates the push rules of every member an event concerns (the joined members
    /// but the sender, and the invitee of an invite): who it notifies, with which actions.
    pub(super) fn evaluate(&self, pdu: &Arc<Pdu>, pos: u64) -> Result<Option<Evaluated>> {
        let room_id = &pdu.room_id;
        let members = self.rooms.members(room_id)?;
        // The invitee of an invite is not joined yet but is notified of it.
        let mut invitee = None;
        if pdu.kind.to_string() == "m.room.member" {
            if let Some(target) = pdu
                .state_key
                .as_deref()
                .and_then(|k| <&UserId>::try_from(k).ok())
            {
                self.note_member(room_id, target)?;
                // A membership event may change the display name.
                if let Some(room) = self
                    .names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rooms
                    .get_mut(room_id)
                {
                    room.remove(target);
                }
                if members.get(target) == Some(Membership::Invite) && target != pdu.sender {
                    invitee = Some(target);
                }
            }
        }
        if invitee.is_none() && members.joined().all(|u| *u == pdu.sender) {
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
        // Members on the server's default rules whom the event does not single out get the
        // same actions: evaluated once, for a user nobody names. The rest (own rules, the
        // event's state key, or named in the content by id — or by localpart or display
        // name if the default rules look for those) are evaluated one by one. In a big
        // room a message costs a substring search per member, not a rule evaluation, and
        // an event the shared evaluation settles before the naming rules (a membership
        // change) not even that.
        let content = pdu.content.get();
        let content_lower = if self.default_names {
            content.to_lowercase()
        } else {
            String::new()
        };
        let state_key = pdu.state_key.as_deref();
        // Whether the event names a member in its content: by user id, or (for rules that
        // look for them) by localpart or display name.
        let names = |user: &UserId, name: Option<&MemberName>| {
            content.contains(user.as_str())
                || name.is_some_and(|n| {
                    content_lower.contains(&n.localpart_lower)
                        || content_lower.contains(&n.display_lower)
                })
        };
        // A reply in a thread is evaluated per subscription state (MSC4306's
        // `thread_subscription` condition): the shared evaluation is made once for
        // subscribers and once for the others, and each recipient's state is one point
        // lookup. Other events match no such condition.
        let thread_root = thread_root_of(&event_json);
        let subscribed = |user: &UserId| -> Result<bool> {
            match &thread_root {
                Some(root) => Ok(self
                    .users
                    .thread_subscription(user, room_id, root)?
                    .is_some()),
                None => Ok(false),
            }
        };
        let with_subscription = |ctx: PushConditionRoomCtx, subscribed: bool| {
            ctx.with_has_thread_subscription_fn(move |_| Box::pin(std::future::ready(subscribed)))
        };
        // The shared evaluation for each subscription state: its actions, and whether it
        // stopped before the first rule that looks for the reader's id or names (then
        // nobody's names need looking at).
        let ruleset = Ruleset::server_default(&self.nobody);
        let shared_for = |sub: bool| {
            let ctx = with_subscription(
                ctx_for(&self.nobody, self.nobody.localpart().to_owned()),
                sub,
            );
            match first_match(&ruleset, &flattened, &ctx) {
                Some((at, actions)) => (actions.to_vec(), at < self.naming_from),
                None => (Vec::new(), false),
            }
        };
        let unsubscribed = shared_for(false);
        // An event outside threads that the server default settles for every member it
        // does not single out, without notifying them (a membership change), concerns
        // only the members with rules of their own and its state key: the others are
        // not looked at. Otherwise every member is.
        let settled_quietly = thread_root.is_none()
            && unsubscribed.1
            && !unsubscribed.0.iter().any(Action::should_notify);
        let concerned = |u: &UserId| {
            (u != pdu.sender && members.get(u) == Some(Membership::Join)) || invitee == Some(u)
        };
        let own_rules;
        let joined: Vec<&UserId> = if settled_quietly {
            own_rules = self.members_with_own_rules(room_id, &members)?;
            let mut picked: Vec<&UserId> = own_rules
                .iter()
                .map(|u| u.as_ref())
                .chain(state_key.and_then(|k| <&UserId>::try_from(k).ok()))
                .filter(|u| concerned(u))
                .collect();
            picked.sort_unstable();
            picked.dedup();
            picked
        } else {
            members
                .joined()
                .filter(|u| *u != pdu.sender)
                .chain(invitee)
                .collect()
        };
        let customs = self.custom_rulesets(&joined)?;
        let subs = joined
            .iter()
            .map(|u| subscribed(u))
            .collect::<Result<Vec<bool>>>()?;
        let generic = [
            Some(unsubscribed),
            subs.contains(&true).then(|| shared_for(true)),
        ];
        let shared = |sub: bool| {
            generic[usize::from(sub)]
                .as_ref()
                .map_or((&[][..], false), |(a, b)| (&a[..], *b))
        };
        // Names are looked up for members on their own rules (their evaluation needs the
        // display name), and for the others only if the server default looks for names
        // and the shared evaluation did not end before the naming rules.
        let (wanted_at, wanted): (Vec<usize>, Vec<&UserId>) = joined
            .iter()
            .zip(customs.iter().zip(&subs))
            .enumerate()
            .filter(|(_, (_, (custom, sub)))| {
                custom.is_some() || (self.default_names && !shared(**sub).1)
            })
            .map(|(at, (user, _))| (at, *user))
            .unzip();
        let mut names_of: Vec<Option<Arc<MemberName>>> = vec![None; joined.len()];
        for (at, name) in wanted_at
            .into_iter()
            .zip(self.member_names(room_id, &wanted)?)
        {
            names_of[at] = Some(name);
        }
        let mut generic_users: [Vec<&UserId>; 2] = [Vec::new(), Vec::new()];
        let mut record = EventPush {
            event_id: pdu.event_id.to_string(),
            ts: crate::users::now_ms(),
            groups: Vec::new(),
        };
        let mut pushes = Vec::new();
        for (((user, custom), sub), name) in
            joined.iter().copied().zip(customs).zip(subs).zip(names_of)
        {
            let (actions, before_naming) = shared(sub);
            // Members on the server's default rules whom the event does not single out get
            // the shared actions: the event's state key is never one of them, and the
            // others only if the shared evaluation ended before the naming rules or the
            // event names them nowhere in its content.
            let singled_out = state_key == Some(user.as_str())
                || (!before_naming && names(user, name.as_deref()));
            if custom.is_none() && !singled_out {
                if actions.iter().any(Action::should_notify) {
                    generic_users[usize::from(sub)].push(user);
                    pushes.push((user.to_owned(), actions.iter().any(Action::is_highlight)));
                }
                continue;
            }
            let display_name = match name {
                Some(n) => n.display.clone(),
                None => self.member_names(room_id, &[user])?[0].display.clone(),
            };
            let ruleset = custom.unwrap_or_else(|| Arc::new(Ruleset::server_default(user)));
            let ctx = with_subscription(ctx_for(user, display_name), sub);
            let Some(actions) = matching_actions(&ruleset, &flattened, &ctx) else {
                continue;
            };
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            record.add(user, actions);
            pushes.push((user.to_owned(), actions.iter().any(Action::is_highlight)));
        }
        for (slot, users) in generic.iter().zip(&generic_users) {
            if let Some((actions, _)) = slot {
                record.add_all(users, actions);
            }
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

    pub(super) fn power_levels_ctx(&self, room_id: &RoomId) -> Result<PushConditionPowerLevelsCtx> {
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

    /// The member's display name in the room (their localpart without one), cached
    /// until their next membership event.
    pub(super) fn display_name(&self, room_id: &RoomId, user: &UserId) -> Result<String> {
        Ok(self.member_names(room_id, &[user])?[0].display.clone())
    }

    /// The names of each of `users` in the room, in order: one lock for the members
    /// already cached, the room state for the others.
    pub(super) fn member_names(
        &self,
        room_id: &RoomId,
        users: &[&UserId],
    ) -> Result<Vec<Arc<MemberName>>> {
        let mut found: Vec<Option<Arc<MemberName>>> = Vec::with_capacity(users.len());
        let dropped = {
            let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            let room = names.rooms.get(room_id);
            found.extend(users.iter().map(|u| room.and_then(|r| r.get(*u)).cloned()));
            names.dropped
        };
        let mut out = Vec::with_capacity(users.len());
        for (user, cached) in users.iter().zip(found) {
            if let Some(name) = cached {
                out.push(name);
                continue;
            }
            let display = self
                .rooms
                .state_content(room_id, "m.room.member", user.as_str())?
                .and_then(|c| c["displayname"].as_str().map(str::to_owned))
                .unwrap_or_else(|| user.localpart().to_owned());
            let name = Arc::new(MemberName::new(user, display));
            let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            // Read while another process changed a membership: used once, not kept.
            if names.dropped == dropped {
                names
                    .rooms
                    .entry(room_id.to_owned())
                    .or_default()
                    .insert((*user).to_owned(), name.clone());
            }
            out.push(name);
        }
        Ok(out)
    }
}

/// A member's names as the naming rules look for them: the display name
/// (`contains_display_name`) and the localpart (`.m.rule.contains_user_name`), lower-cased
/// once for the substring tests that decide whether an event names them.
pub(super) struct MemberName {
    display: String,
    display_lower: String,
    localpart_lower: String,
}

impl MemberName {
    fn new(user: &UserId, display: String) -> MemberName {
        MemberName {
            display_lower: display.to_lowercase(),
            localpart_lower: user.localpart().to_lowercase(),
            display,
        }
    }
}

/// What a rule of the server default looks at in the reader, in evaluation order.
struct RuleReader {
    /// Its definition depends on the user it is made for.
    per_user: bool,
    /// That dependence is only the state key of an invite (`.m.rule.invite_for_me`).
    state_key_only: bool,
    /// That dependence is only the user id (`.m.rule.is_user_mention`).
    id_only: bool,
    /// It looks for the display name.
    display_name: bool,
}

/// The rules of the server default as `RuleReader`s: each rule made for two users and
/// compared.
fn default_rule_readers() -> Vec<RuleReader> {
    let (a, b) = (
        <&UserId>::try_from("@a:example.org").expect("a valid id"),
        <&UserId>::try_from("@b:example.org").expect("a valid id"),
    );
    let (for_a, for_b) = (Ruleset::server_default(a), Ruleset::server_default(b));
    for_a
        .iter()
        .zip(for_b.iter())
        .map(|(rule_a, rule_b)| {
            let (json_a, json_b) = (rule_json(rule_a), rule_json(rule_b));
            RuleReader {
                per_user: json_a != json_b,
                state_key_only: json_a["rule_id"] == ".m.rule.invite_for_me",
                id_only: json_a.to_string().contains(a.as_str()),
                display_name: json_a["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["kind"] == "contains_display_name"),
            }
        })
        .collect()
}

/// The position in evaluation order of the first rule of the server default that looks
/// for the reader in an event's content: one whose definition depends on the user it is
/// made for (`.m.rule.is_user_mention`, `.m.rule.contains_user_name`) or that looks for
/// the display name. `.m.rule.invite_for_me` depends on the user too, but only through
/// the event's state key, which is compared for every member: it does not count.
pub(super) fn first_naming_rule() -> usize {
    default_rule_readers()
        .iter()
        .position(|r| r.display_name || (r.per_user && !r.state_key_only))
        .unwrap_or(usize::MAX)
}

/// Whether the server default has a rule that looks for a reader's display name or
/// localpart in the content (the legacy mention rules): when it has not, a member on the
/// default rules is singled out only by their user id or as the event's state key.
pub(super) fn default_rules_look_for_names() -> bool {
    default_rule_readers()
        .iter()
        .any(|r| r.display_name || (r.per_user && !r.state_key_only && !r.id_only))
}

/// A rule of any kind as its JSON (for comparing definitions).
fn rule_json(rule: AnyPushRuleRef<'_>) -> Value {
    let json = match rule {
        AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => serde_json::to_value(r),
        AnyPushRuleRef::PostContent(r) => serde_json::to_value(r),
        AnyPushRuleRef::Content(r) => serde_json::to_value(r),
        AnyPushRuleRef::Room(r) => serde_json::to_value(r),
        AnyPushRuleRef::Sender(r) => serde_json::to_value(r),
        // A kind this server does not know: treated as looking at the reader.
        _ => Ok(json!({ "unknown": rule.rule_id() })),
    };
    json.unwrap_or(Value::Null)
}

/// The position and actions of the first rule of `ruleset` that applies to the event
/// (`None` when no rule applies, or a condition needed an asynchronous lookup).
pub(super) fn first_match<'a>(
    ruleset: &'a Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<(usize, &'a [Action])> {
    for (at, rule) in ruleset.iter().enumerate() {
        if rule.applies(event, ctx).now_or_never()? {
            return Some((at, rule.actions()));
        }
    }
    None
}

/// The actions of the first rule of `ruleset` that applies to the event (none when no rule
/// applies), as ruma's `Ruleset::get_actions` decides, on an event flattened once for all
/// recipients. The sender is never a recipient here. `None` if a condition needed an
/// asynchronous lookup: ruma awaits only the thread-subscription lookup, which is given
/// as a ready value, so that does not happen.
pub(super) fn matching_actions<'a>(
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

/// The thread root of a client-format event that is a reply in a thread (`m.relates_to`
/// with `rel_type` `m.thread`), as the `thread_subscription` condition reads it.
fn thread_root_of(event: &Value) -> Option<OwnedEventId> {
    let relates = &event["content"]["m.relates_to"];
    if relates["rel_type"].as_str() != Some("m.thread") {
        return None;
    }
    relates["event_id"]
        .as_str()
        .and_then(|id| OwnedEventId::try_from(id).ok())
}
