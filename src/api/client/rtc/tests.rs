//! Unit tests of the RTC endpoints through the router.

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
    // Delegation is offered: a request without its fields is a bad request.
    assert_eq!(status, StatusCode::BAD_REQUEST);
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

const CALL_MEMBER_KEY: &str = "_@alice:localhost_D_m.call";

/// Registers alice, creates a room and schedules her call membership in 60 s; returns
/// `(token, room, delay_id)`.
async fn scheduled_call_member(app: &Router) -> (String, String, String) {
    let token = register_user(app, "alice").await;
    let room = create_room(app, &token).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{CALL_MEMBER_KEY}?org.matrix.msc4140.delay=60000"
    );
    let (status, body) = call(app, "PUT", &path, Some(&token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("event_id").is_none(), "{body}");
    let delay_id = body["delay_id"].as_str().unwrap().to_owned();
    (token, room, delay_id)
}

fn update_path(delay_id: &str) -> String {
    format!("/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}")
}

#[tokio::test]
async fn delayed_state_is_scheduled_and_listed() {
    let app = app();
    let (token, _, delay_id) = scheduled_call_member(&app).await;
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
    assert_eq!(list[0]["state_key"], CALL_MEMBER_KEY);
}

#[tokio::test]
async fn delayed_event_restarts_and_refuses_unknown_actions() {
    let app = app();
    let (token, _, delay_id) = scheduled_call_member(&app).await;
    let update = update_path(&delay_id);
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
}

#[tokio::test]
async fn delayed_event_sent_by_its_id_without_a_token_is_then_gone() {
    let app = app();
    let (token, room, delay_id) = scheduled_call_member(&app).await;
    let update = update_path(&delay_id);
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
        &format!(
            "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{CALL_MEMBER_KEY}"
        ),
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
}

#[tokio::test]
async fn delayed_message_is_scheduled_and_a_negative_delay_refused() {
    let app = app();
    let token = register_user(&app, "alice").await;
    let room = create_room(&app, &token).await;
    let (status, body) = call(
        &app,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/t1?org.matrix.msc4140.delay=1000"
        ),
        Some(&token),
        Some(json!({"msgtype": "m.text", "body": "soon"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["delay_id"].is_string());
    let (status, _) = call(
        &app,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/t2?org.matrix.msc4140.delay=-5"
        ),
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
