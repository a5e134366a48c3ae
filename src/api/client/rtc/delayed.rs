//! Delayed events, MSC4140.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json};
use ruma::{
    api::client::delayed_events::{
        get_all_delayed_events, get_delayed_event, send_delayed_event, update_delayed_event,
        DelayedEventData,
    },
    events::TimelineEventType,
    serde::Raw,
    MilliSecondsSinceUnixEpoch, UInt,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::Ruma,
    rtc::{DelayedAction, DelayedEvent},
    services::Services,
    Error, Result,
};

/// A scheduled event as MSC4140 lists it.
fn delayed_data(event: &DelayedEvent) -> Result<DelayedEventData> {
    Ok(DelayedEventData::new(
        event.delay_id.clone(),
        event.room_id.clone(),
        TimelineEventType::from(event.kind.as_str()),
        event.state_key.clone(),
        Raw::from_json(serde_json::value::to_raw_value(&event.content)?),
        Duration::from_millis(event.delay_ms),
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(event.running_since)),
    ))
}

/// `PUT /_matrix/client/unstable/org.matrix.msc4140/rooms/{roomId}/delayed_event/{eventType}/{txnId}`
pub(super) async fn send_delayed_event_route(
    State(services): State<Arc<Services>>,
    req: Ruma<send_delayed_event::unstable::Request>,
) -> Result<send_delayed_event::unstable::Response> {
    let session = req.session()?;
    let body = &req.body;
    let content: Value = serde_json::from_str(body.content.json().get())?;
    let delay_ms = u64::try_from(body.delay.as_millis()).unwrap_or(u64::MAX);
    let delay_id = services
        .rtc
        .schedule_delayed(
            &session.user_id,
            &session.device_id,
            &body.room_id,
            &body.event_type.to_string(),
            body.state_key.as_deref(),
            content,
            delay_ms,
            Some(body.txn_id.as_str()),
        )
        .await?;
    Ok(send_delayed_event::unstable::Response::new(delay_id))
}

/// Schedules the event of a `send` or `state` request that carries
/// `org.matrix.msc4140.delay`; `None` when the request has no delay (send it now).
pub(in crate::api::client) async fn schedule_if_delayed<T>(
    services: &Arc<Services>,
    req: &Ruma<T>,
    room_id: &ruma::RoomId,
    kind: &str,
    state_key: Option<&str>,
    content: &Value,
    txn: Option<&str>,
) -> Result<Option<Json<Value>>> {
    let Some(delay) = req.query_param("org.matrix.msc4140.delay") else {
        return Ok(None);
    };
    let delay_ms: u64 = delay.parse().map_err(|_| {
        Error::invalid_param("org.matrix.msc4140.delay must be a non-negative integer")
    })?;
    let session = req.session()?;
    let delay_id = services
        .rtc
        .schedule_delayed(
            &session.user_id,
            &session.device_id,
            room_id,
            kind,
            state_key,
            content.clone(),
            delay_ms,
            txn,
        )
        .await?;
    Ok(Some(Json(json!({ "delay_id": delay_id }))))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`
pub(super) async fn get_all_delayed_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_all_delayed_events::unstable::Request>,
) -> Result<get_all_delayed_events::unstable::Response> {
    let user = req.sender_user()?;
    let list = services
        .rtc
        .list_delayed(user)?
        .iter()
        .map(delayed_data)
        .collect::<Result<Vec<_>>>()?;
    Ok(get_all_delayed_events::unstable::Response::new(list))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}`
pub(super) async fn get_delayed_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_delayed_event::unstable::Request>,
) -> Result<get_delayed_event::unstable::Response> {
    let user = req.sender_user()?;
    match services.rtc.delayed_event(&req.body.delay_id)? {
        Some(event) if event.user_id == *user => Ok(delayed_data(&event)?.into()),
        _ => Err(Error::not_found("Delayed event not found")),
    }
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}` with
/// `{"action": "restart" | "send" | "cancel"}`
pub(super) async fn update_delayed_v1_route(
    State(services): State<Arc<Services>>,
    req: Ruma<update_delayed_event::unstable_v1::Request>,
) -> Result<update_delayed_event::unstable_v1::Response> {
    let user = req.sender_user()?;
    let action = DelayedAction::parse(req.body.action.as_str())?;
    services
        .rtc
        .update_delayed(&req.body.delay_id, action, Some(user))
        .await?;
    Ok(update_delayed_event::unstable_v1::Response::new())
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/{action}`
///
/// Needs no access token: the unguessable delay id authorises (MSC4140), so a call's
/// focus may keep a participant's delayed leave alive.
pub(super) async fn update_delayed_v2_route(
    State(services): State<Arc<Services>>,
    req: Ruma<update_delayed_event::unstable_v2::Request>,
) -> Result<update_delayed_event::unstable_v2::Response> {
    let action = DelayedAction::parse(req.body.action.as_str())?;
    services
        .rtc
        .update_delayed(&req.body.delay_id, action, None)
        .await?;
    Ok(update_delayed_event::unstable_v2::Response::new())
}
