//! MatrixRTC client endpoints: OpenID tokens, RTC transport discovery (MSC4143), the
//! MSC4195 LiveKit token endpoint and delayed events (MSC4140).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    extract::State,
    routing::{on, MethodFilter},
    Json, Router,
};
use ruma::{
    api::{
        client::{
            account::request_openid_token,
            delayed_events::{
                get_all_delayed_events, get_delayed_event, send_delayed_event,
                update_delayed_event, DelayedEventData,
            },
            rtc::{livekit::get_token, transports},
        },
        IncomingRequest,
    },
    authentication::TokenType,
    events::TimelineEventType,
    serde::Raw,
    MilliSecondsSinceUnixEpoch, OwnedServerName, UInt,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    rtc::{DelayedAction, DelayedEvent},
    services::Services,
    Error, Result,
};

/// Path of the stable form of the MSC4195 token endpoint (ruma knows only the unstable one).
const GET_TOKEN_V1_PATH: &str = "/_matrix/client/v1/rtc/livekit/get_token";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    let router = router
        .ruma(request_openid_token_route)
        .ruma_json(transports_route)
        .ruma_json(get_token_route)
        .ruma(send_delayed_event_route)
        .ruma(get_all_delayed_route)
        .ruma(get_delayed_route)
        .ruma(update_delayed_v1_route)
        .ruma(update_delayed_v2_route);
    route_json_at(router, GET_TOKEN_V1_PATH, get_token_route)
}

/// Registers a ruma-parsed JSON handler at one extra path (a path ruma's metadata lacks).
pub(super) fn route_json_at<Req, F, Fut>(
    router: Router<Arc<Services>>,
    path: &str,
    handler: F,
) -> Router<Arc<Services>>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: 'static,
    F: Fn(State<Arc<Services>>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Json<Value>>> + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).unwrap_or(MethodFilter::GET);
    router.route(
        path,
        on(
            filter,
            move |state: State<Arc<Services>>, req: Ruma<Req>| handler(state, req),
        ),
    )
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
async fn request_openid_token_route(
    State(services): State<Arc<Services>>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let session = req.session()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden(
            "You may only request OpenID tokens for yourself",
        ));
    }
    let (token, ttl) = services
        .rtc
        .issue_openid_token(&session.user_id, &session.device_id)?;
    services.storage.durable().await?;
    let server = OwnedServerName::try_from(services.config.server_name.as_str())
        .map_err(|e| Error::internal(format!("server name: {e}")))?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        server,
        Duration::from_secs(ttl),
    ))
}

/// The RTC transports (foci) this server offers.
pub(crate) fn transports_json(services: &Services) -> Value {
    json!([{ "type": "livekit", "livekit_service_url": services.rtc.service_url() }])
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`
///
/// The list goes under both `rtc_transports` and `transports`: MSC4143 revisions differ.
async fn transports_route(
    State(services): State<Arc<Services>>,
    req: Ruma<transports::v1::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let list = transports_json(&services);
    Ok(Json(json!({ "rtc_transports": list, "transports": list })))
}

/// `POST /_matrix/client/v1/rtc/livekit/get_token` (also the
/// `unstable/io.element.msc4195` path): a LiveKit token for the authenticated device.
async fn get_token_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_token::v1::Request>,
) -> Result<Json<Value>> {
    let session = req.session()?;
    let body = &req.body;
    if body
        .server_name
        .as_deref()
        .is_some_and(|s| s != services.rooms.server_name())
    {
        return Err(Error::forbidden(format!(
            "This server issues tokens for its own SFU only ({})",
            services.rooms.server_name()
        )));
    }
    let grant = services.rtc.sfu_token(
        &session.user_id,
        session.device_id.as_str(),
        &body.room_id,
        &body.slot_id,
    )?;
    Ok(Json(json!({ "jwt": grant.jwt, "url": grant.url })))
}

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
async fn send_delayed_event_route(
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
pub(super) async fn schedule_if_delayed<T>(
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
async fn get_all_delayed_route(
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
async fn get_delayed_route(
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
async fn update_delayed_v1_route(
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
async fn update_delayed_v2_route(
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
