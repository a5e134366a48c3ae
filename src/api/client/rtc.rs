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
    api::ruma::{RawJson, RouterExt, RouterJsonExt, Ruma},
    rtc::{DelayedAction, DelayedEvent},
    services::Services,
    Error, Result,
};

/// Myelin's "mute for all" for call moderators (not in the spec: Myelin's virtual rooms).
const MUTE_ALL_PATH: &str = "/_matrix/client/unstable/io.myelin/rooms/{room_id}/rtc/mute_all";

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
    let router = router.route(MUTE_ALL_PATH, axum::routing::post(mute_all_route));
    route_json_at(router, GET_TOKEN_V1_PATH, get_token_route)
}

/// `POST /_matrix/client/unstable/io.myelin/rooms/{roomId}/rtc/mute_all`: a moderator
/// (power ≥ 50) has the SFU mute the published audio of everyone else in the room's call.
/// Answers `{"muted": [identity…]}`.
async fn mute_all_route(
    State(services): State<Arc<Services>>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    req: RawJson,
) -> Result<Json<Value>> {
    let room_id = ruma::RoomId::parse(&room_id)
        .map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    let muted = services
        .rtc
        .mute_call_for_all(&room_id, &req.session.user_id)
        .await?;
    Ok(Json(json!({ "muted": muted })))
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use serde_json::json;
    use tower::ServiceExt;

    use super::*;
    use crate::api::client::account::tests::{app, call, register_user};

    async fn whoami(app: &Router, token: &str) -> (String, String) {
        let (_, body) = call(
            app,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(token),
            None,
        )
        .await;
        (
            body["user_id"].as_str().unwrap().to_owned(),
            body["device_id"].as_str().unwrap().to_owned(),
        )
    }

    async fn create_room(app: &Router, token: &str) -> String {
        let (status, body) = call(
            app,
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(token),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    async fn openid(app: &Router, token: &str, user: &str) -> (StatusCode, Value) {
        call(
            app,
            "POST",
            &format!("/_matrix/client/v3/user/{user}/openid/request_token"),
            Some(token),
            Some(json!({})),
        )
        .await
    }

    #[tokio::test]
    async fn openid_token_and_userinfo() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let (status, body) = openid(&app, &token, "@alice:localhost").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["matrix_server_name"], "localhost");
        assert_eq!(body["expires_in"], 3600);
        let access = body["access_token"].as_str().unwrap();
        let (status, body) = call(
            &app,
            "GET",
            &format!("/_matrix/federation/v1/openid/userinfo?access_token={access}"),
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"sub": "@alice:localhost"}))
        );
        for uri in [
            "/_matrix/federation/v1/openid/userinfo?access_token=wrong",
            "/_matrix/federation/v1/openid/userinfo",
        ] {
            let (status, body) = call(&app, "GET", uri, None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        }
        let (status, body) = openid(&app, &token, "@bob:localhost").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (status, _) = openid(&app, "bad", "@alice:localhost").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn discovery_advertises_rtc() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let expected = json!([{"type": "livekit", "livekit_service_url": "http://127.0.0.1:8008"}]);
        assert_eq!(body["rtc_transports"], expected);
        assert_eq!(body["transports"], expected);
        let (status, _) = call(
            &app,
            "GET",
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (_, body) = call(&app, "GET", "/.well-known/matrix/client", None, None).await;
        assert_eq!(body["org.matrix.msc4143.rtc_foci"], expected);
        let (_, body) = call(&app, "GET", "/_matrix/client/versions", None, None).await;
        assert_eq!(body["unstable_features"]["org.matrix.msc4140"], true);
        // Element Call probes leave delegation; 404 tells it to keep its own delayed leave.
        let (status, _) = call(
            &app,
            "POST",
            "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave",
            Some(&token),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn token_service_issues_jwts_to_joined_users_only() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let bob = register_user(&app, "bob").await;
        let room = create_room(&app, &token).await;
        let (_, device) = whoami(&app, &token).await;
        let (_, body) = openid(&app, &token, "@alice:localhost").await;
        let openid_token = body.clone();

        let (status, body) = call(
            &app,
            "POST",
            "/sfu/get",
            None,
            Some(json!({"room": room, "openid_token": openid_token, "device_id": device})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["url"], "ws://127.0.0.1:7880");
        let jwt = body["jwt"].as_str().unwrap();
        assert_eq!(jwt.split('.').count(), 3);

        let (status, body) = call(
            &app,
            "POST",
            "/get_token",
            None,
            Some(json!({"room_id": room, "slot_id": "m.call#ROOM", "openid_token": openid_token,
                "member": {"id": "m1", "claimed_user_id": "@alice:localhost", "claimed_device_id": device}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let (_, bob_openid) = openid(&app, &bob, "@bob:localhost").await;
        let (status, body) = call(
            &app,
            "POST",
            "/sfu/get",
            None,
            Some(json!({"room": room, "openid_token": bob_openid, "device_id": "X"})),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );

        for bad in [
            json!({"room": room}),
            json!({"room": "not a room", "openid_token": openid_token}),
            json!({"openid_token": openid_token}),
        ] {
            let (status, body) = call(&app, "POST", "/sfu/get", None, Some(bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
        let req = Request::builder()
            .method("POST")
            .uri("/sfu/get")
            .body(Body::from("{not json"))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);

        // MSC4195: the Matrix access token authenticates.
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v1/rtc/livekit/get_token",
            Some(&token),
            Some(json!({"room_id": room, "slot_id": "m.call#ROOM", "member_id": "m1", "url": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["jwt"].is_string());
        let (status, _) = call(
            &app,
            "POST",
            "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token",
            Some(&bob),
            Some(json!({"room_id": room, "slot_id": "m.call#ROOM", "member_id": "m1", "url": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn token_endpoints_answer_cors_preflight() {
        let app = app();
        for path in ["/sfu/get", "/get_token"] {
            let req = Request::builder()
                .method("OPTIONS")
                .uri(path)
                .header("origin", "https://call.example")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .body(Body::empty())
                .unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(res.headers()["access-control-allow-origin"], "*");
            let plain = Request::builder()
                .method("OPTIONS")
                .uri(path)
                .body(Body::empty())
                .unwrap();
            assert_eq!(
                app.clone().oneshot(plain).await.unwrap().status(),
                StatusCode::OK
            );
        }
    }

    #[tokio::test]
    async fn delayed_state_over_http() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let room = create_room(&app, &token).await;
        let key = "_@alice:localhost_D_m.call";
        let path = format!(
            "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{key}?org.matrix.msc4140.delay=60000"
        );
        let (status, body) = call(&app, "PUT", &path, Some(&token), Some(json!({}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let delay_id = body["delay_id"].as_str().unwrap().to_owned();
        assert!(body.get("event_id").is_none());

        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let list = body["delayed_events"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["delay_id"], delay_id.as_str());
        assert_eq!(list[0]["delay"], 60000);
        assert_eq!(list[0]["state_key"], key);

        let update =
            format!("/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}");
        let (status, body) = call(
            &app,
            "POST",
            &update,
            Some(&token),
            Some(json!({"action": "restart"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(
            &app,
            "POST",
            &update,
            Some(&token),
            Some(json!({"action": "dance"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = call(
            &app,
            "POST",
            &format!("{update}/restart"),
            None,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(
            &app,
            "POST",
            &format!("{update}/send"),
            None,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(
            &app,
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{key}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!((status, body), (StatusCode::OK, json!({})));
        let (status, body) = call(
            &app,
            "POST",
            &format!("{update}/cancel"),
            None,
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );

        // A delayed message, and a bad delay.
        let (status, body) = call(
            &app,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1?org.matrix.msc4140.delay=1000"),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": "soon"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["delay_id"].is_string());
        let (status, _) = call(
            &app,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t2?org.matrix.msc4140.delay=-5"),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Without a delay the usual answer.
        let (status, body) = call(
            &app,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t3"),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": "now"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["event_id"].is_string());
    }
}
