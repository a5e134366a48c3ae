//! Evaluation of an event against the push rules of every member it concerns, with the
//! shortcut that members on the default rules whom the event does not name share one
//! evaluation.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::FutureExt;
use ruma::{
    int,
    power_levels::NotificationPowerLevels,
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
    Int, OwnedEventId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use super::{store::EventPush, PushService};
use crate::{events::Pdu, rooms::Membership, Result};

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
        // Indexed by whether the recipient is subscribed to the event's thread.
        let mut generic: [Option<Vec<Action>>; 2] = [None, None];
        let mut generic_users: [Vec<&UserId>; 2] = [Vec::new(), Vec::new()];
        let mut record = EventPush {
            event_id: pdu.event_id.to_string(),
            ts: crate::users::now_ms(),
            groups: Vec::new(),
        };
        let mut pushes = Vec::new();
        for user in joined {
            let display_name = self.display_name(room_id, user)?;
            let custom = self.custom_ruleset(user)?;
            let sub = subscribed(user)?;
            if custom.is_none() && !names(user, &display_name) {
                let actions = match &mut generic[usize::from(sub)] {
                    Some(a) => a,
                    slot @ None => {
                        let ruleset = Ruleset::server_default(&self.nobody);
                        let ctx = with_subscription(
                            ctx_for(&self.nobody, self.nobody.localpart().to_owned()),
                            sub,
                        );
                        let actions = matching_actions(&ruleset, &flattened, &ctx)
                            .map(<[Action]>::to_vec)
                            .unwrap_or_default();
                        slot.insert(actions)
                    }
                };
                if actions.iter().any(Action::should_notify) {
                    generic_users[usize::from(sub)].push(user);
                    pushes.push((user.to_owned(), actions.iter().any(Action::is_highlight)));
                }
                continue;
            }
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
        for (actions, users) in generic.iter().zip(&generic_users) {
            if let Some(actions) = actions {
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

    /// The member's display name in the room (for the `contains_display_name`
    /// condition), cached until their next membership event.
    pub(super) fn display_name(&self, room_id: &RoomId, user: &UserId) -> Result<String> {
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
