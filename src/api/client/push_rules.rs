//! Push rules (`/pushrules/...` CRUD over ruma's `Ruleset`), `/notifications` and pushers
//! (`/pushers`, `/pushers/set`).

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher,
        set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::{AnyPushRule, InsertPushRuleError, NewPushRule, RemovePushRuleError, RuleKind, Ruleset},
    serde::Raw,
    MilliSecondsSinceUnixEpoch, RoomId, UInt,
};

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma(get_pushrules_all)
        .ruma(get_pushrules_global)
        .ruma(get_rule)
        .ruma(set_rule)
        .ruma(delete_rule)
        .ruma(get_enabled)
        .ruma(set_enabled)
        .ruma(get_actions)
        .ruma(set_actions)
        .ruma(notifications)
        .ruma(get_pushers_route)
        .ruma(set_pusher_route)
}

/// MSC4306: clients may not create rules of the `postcontent` kind (yet).
pub(crate) fn postcontent_refused() -> Error {
    Error::invalid_param("user-defined rules using `postcontent` are not accepted")
}

fn rule_not_found() -> Error {
    Error::not_found("Push rule not found")
}

/// The kind a path names. MSC4306's `postcontent` rules are served under the kind
/// `postcontent` (as Synapse names it) and under ruma's unstable
/// `io.element.msc4306.postcontent`.
fn kind(kind: &RuleKind) -> RuleKind {
    match kind.as_str() {
        POSTCONTENT => RuleKind::PostContent,
        _ => kind.clone(),
    }
}

/// The kind name of MSC4306's rules in Synapse's paths.
pub(crate) const POSTCONTENT: &str = "postcontent";

fn find(ruleset: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<AnyPushRule> {
    ruleset
        .get(kind.clone(), rule_id)
        .map(|r| r.to_owned())
        .ok_or_else(rule_not_found)
}

/// `GET /_matrix/client/v3/pushrules/`
async fn get_pushrules_all(
    State(services): State<Arc<Services>>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let ruleset = services.push.ruleset(req.sender_user()?)?;
    Ok(get_pushrules_all::v3::Response::new((*ruleset).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/`
async fn get_pushrules_global(
    State(services): State<Arc<Services>>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let ruleset = services.push.ruleset(req.sender_user()?)?;
    Ok(get_pushrules_global_scope::v3::Response::new(
        (*ruleset).clone(),
    ))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
async fn get_rule(
    State(services): State<Arc<Services>>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let ruleset = services.push.ruleset(req.sender_user()?)?;
    let rule = find(&ruleset, &kind(&req.body.kind), &req.body.rule_id)?;
    // ruma's conversion of a rule of any kind does not know `postcontent` (it panics):
    // those rules are conditional rules like `override` ones.
    let rule = match rule {
        AnyPushRule::PostContent(r) => r.into(),
        other => other.into(),
    };
    Ok(get_pushrule::v3::Response::new(rule))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
async fn set_rule(
    State(services): State<Arc<Services>>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let user = req.sender_user()?;
    if matches!(req.body.rule, NewPushRule::PostContent(_)) {
        return Err(postcontent_refused());
    }
    let mut ruleset = (*services.push.ruleset(user)?).clone();
    ruleset
        .insert(
            req.body.rule.clone(),
            req.body.after.as_deref(),
            req.body.before.as_deref(),
        )
        .map_err(|e| match e {
            InsertPushRuleError::UnknownRuleId
            | InsertPushRuleError::RelativeToServerDefaultRule => {
                Error::matrix(crate::ErrorKind::Invalid, "M_UNKNOWN", e.to_string())
            }
            InsertPushRuleError::BeforeHigherThanAfter => {
                Error::matrix(crate::ErrorKind::Invalid, "M_UNKNOWN", e.to_string())
            }
            _ => Error::invalid_param(e.to_string()),
        })?;
    services.push.save_ruleset(user, ruleset).await?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
async fn delete_rule(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let user = req.sender_user()?;
    let mut ruleset = (*services.push.ruleset(user)?).clone();
    ruleset
        .remove(kind(&req.body.kind), &req.body.rule_id)
        .map_err(|e| match e {
            RemovePushRuleError::ServerDefault => Error::matrix(
                crate::ErrorKind::Invalid,
                "M_UNKNOWN",
                "Server-default rules cannot be deleted",
            ),
            _ => rule_not_found(),
        })?;
    services.push.save_ruleset(user, ruleset).await?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET .../{kind}/{ruleId}/enabled`
async fn get_enabled(
    State(services): State<Arc<Services>>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let ruleset = services.push.ruleset(req.sender_user()?)?;
    let enabled = ruleset
        .get(kind(&req.body.kind), &req.body.rule_id)
        .map(|r| r.enabled())
        .ok_or_else(rule_not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(enabled))
}

/// `PUT .../{kind}/{ruleId}/enabled`
async fn set_enabled(
    State(services): State<Arc<Services>>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let user = req.sender_user()?;
    let mut ruleset = (*services.push.ruleset(user)?).clone();
    ruleset
        .set_enabled(kind(&req.body.kind), &req.body.rule_id, req.body.enabled)
        .map_err(|_| rule_not_found())?;
    services.push.save_ruleset(user, ruleset).await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET .../{kind}/{ruleId}/actions`
async fn get_actions(
    State(services): State<Arc<Services>>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let ruleset = services.push.ruleset(req.sender_user()?)?;
    let actions = ruleset
        .get(kind(&req.body.kind), &req.body.rule_id)
        .map(|r| r.actions().to_vec())
        .ok_or_else(rule_not_found)?;
    Ok(get_pushrule_actions::v3::Response::new(actions))
}

/// `PUT .../{kind}/{ruleId}/actions`
async fn set_actions(
    State(services): State<Arc<Services>>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let user = req.sender_user()?;
    let mut ruleset = (*services.push.ruleset(user)?).clone();
    ruleset
        .set_actions(
            kind(&req.body.kind),
            &req.body.rule_id,
            req.body.actions.clone(),
        )
        .map_err(|_| rule_not_found())?;
    services.push.save_ruleset(user, ruleset).await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// `GET /_matrix/client/v3/notifications`
async fn notifications(
    State(services): State<Arc<Services>>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let user = req.sender_user()?;
    let from = match req.body.from.as_deref() {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| Error::invalid_param("Invalid from token"))?,
        ),
        None => None,
    };
    let limit = req
        .body
        .limit
        .map_or(20, |l| u64::from(l).clamp(1, 100) as usize);
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    let page = services
        .push
        .notifications(user, from, limit, only_highlight)?;
    let mut out = Vec::new();
    for (room, _pos, record, read) in page.items {
        let Ok(room_id) = <&RoomId>::try_from(room.as_str()) else {
            continue;
        };
        let Ok(event_id) = ruma::EventId::parse(&record.event_id) else {
            continue;
        };
        let Some(pdu) = services.rooms.get_pdu(&event_id)? else {
            continue;
        };
        let event = Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event())?);
        let ts = MilliSecondsSinceUnixEpoch(UInt::try_from(record.ts).unwrap_or_default());
        out.push(get_notifications::v3::Notification::new(
            record.actions,
            event,
            read,
            room_id.to_owned(),
            ts,
        ));
    }
    let mut response = get_notifications::v3::Response::new(out);
    response.next_token = page.next.map(|p| p.to_string());
    Ok(response)
}

/// `GET /_matrix/client/v3/pushers`
async fn get_pushers_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response> {
    let pushers = services.push.pushers(req.sender_user()?)?;
    Ok(get_pushers::v3::Response::new(pushers))
}

/// `POST /_matrix/client/v3/pushers/set`
async fn set_pusher_route(
    State(services): State<Arc<Services>>,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response> {
    let user = req.sender_user()?;
    match &req.body.action {
        set_pusher::v3::PusherAction::Post(data) => {
            services
                .push
                .set_pusher(user, data.pusher.clone(), data.append)
                .await?
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            services
                .push
                .delete_pusher(user, &ids.app_id, &ids.pushkey)
                .await?
        }
        _ => return Err(Error::bad_json("Unknown pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}
