//! Hostile input: every endpoint answers malformed bodies with a Matrix error (never a
//! panic, a dropped connection or a 500), `/login` without a `type` included, and the
//! validation of ids, devices, registration kinds, state content, filters, sliding-sync
//! ranges and the PDU size limit refuses bad input with 400/413 and writes nothing.

use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response, TestServer};

/// Fails unless the response is a 2xx, a 4xx with a JSON `errcode`, or a
/// user-interactive-auth 401 (`flows`).
fn assert_matrix_answer(what: &str, r: &Response) {
    assert!(
        r.status < 500,
        "{what}: server error {}: {}",
        r.status,
        r.text
    );
    let uia = r.status == 401 && r.body["flows"].is_array();
    if r.status >= 400 && !uia {
        assert!(
            r.body["errcode"].is_string(),
            "{what}: {} without a Matrix errcode: {}",
            r.status,
            r.text
        );
    }
}

/// The first number in an error message (the event sizes the server reports).
fn number_in(text: &str) -> usize {
    let digits: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {text}"))
}

#[tokio::test]
async fn login_without_type_is_an_error_not_a_panic() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    server.register("alice").await?;
    let anon = server.client();
    for body in [
        json!({}),
        json!({"identifier": {"type": "m.id.user", "user": "alice"}, "password": "alice-password"}),
        json!({"type": 7, "user": "alice", "password": "alice-password"}),
        json!({"type": null}),
    ] {
        let r = anon.post("/login", body.clone()).await?;
        r.expect_error(400, "M_BAD_JSON")
            .map_err(|e| anyhow::anyhow!("{body}: {e}"))?;
    }
    // the server is still there, and logging in properly still works
    let mut again = server.client();
    again.login("alice", "alice-password").await?;
    assert!(!server.log().contains("panicked"), "{}", server.log());
    Ok(())
}

/// A random JSON value from a vocabulary of Matrix field names and awkward values.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    const KEYS: &[&str] = &[
        "type",
        "user",
        "password",
        "identifier",
        "device_id",
        "initial_device_display_name",
        "room_id",
        "user_id",
        "content",
        "body",
        "msgtype",
        "membership",
        "filter",
        "limit",
        "timeout",
        "visibility",
        "preset",
        "invite",
        "initial_state",
        "auth",
        "session",
        "pushkey",
        "kind",
        "app_id",
        "data",
        "url",
        "lists",
        "ranges",
        "one_time_keys",
        "device_keys",
        "fallback_keys",
        "presence",
        "displayname",
        "avatar_url",
        "new_password",
        "reason",
        "room_version",
        "event_id",
        "ts",
        "m.read",
        "actions",
        "conditions",
        "pattern",
        "rooms",
        "sessions",
        "join_rule",
        "users",
        "events",
        "ban",
        "state_default",
        "search_term",
        "messages",
        "algorithm",
        "auth_data",
        "version",
        "username",
        "inhibit_login",
        "creation_content",
        "power_level_content_override",
        "is_direct",
        "name",
        "topic",
        "room_alias_name",
        "new_version",
        "typing",
        "keys",
        "master_key",
        "self_signing_key",
        "user_signing_key",
        "devices",
        "room_subscriptions",
        "extensions",
        "required_state",
        "timeline_limit",
        "token",
        "delay",
        "action",
    ];
    match rng.gen_range(0..if depth == 0 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen::<i64>()),
        3 => [
            json!(-1),
            json!(0),
            json!(u64::MAX),
            json!(1e300),
            json!(-0.5),
        ][rng.gen_range(0..5)]
        .clone(),
        4 => json!(KEYS[rng.gen_range(0..KEYS.len())]),
        5 => json!(
            [
                "",
                "@alice:localhost",
                "!nope:localhost",
                "$x",
                "\u{0}\u{ffff}",
                "💥"
            ][rng.gen_range(0..6)]
        ),
        6 => json!("x".repeat(rng.gen_range(0..600))),
        7 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.gen_range(0..6))
                .map(|_| {
                    (
                        KEYS[rng.gen_range(0..KEYS.len())].to_owned(),
                        random_json(rng, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Bodies every endpoint is fed: empty, not JSON, not an object, `{}`, common fields of
/// the wrong type, and random objects.
fn hostile_bodies(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"{".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        b"[]".to_vec(),
        b"\"text\"".to_vec(),
        b"42".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        // custom and duplicate discriminators (ruma's hand-written deserializers)
        br#"{"type": "org.custom", "auth": {"type": "org.custom", "session": 1}}"#.to_vec(),
        br#"{"type": "m.login.password", "type": "m.login.token", "join_rule": "x", "join_rule": 1}"#
            .to_vec(),
    ];
    // common fields with the wrong types
    let wrong_types = r#"{
        "type": 1, "user": [], "password": {}, "identifier": "x", "device_id": 5,
        "room_id": 3, "user_id": {}, "content": "x", "body": {}, "membership": 7,
        "filter": 3, "limit": -1, "timeout": "x", "visibility": 9, "preset": [],
        "invite": "x", "initial_state": {}, "auth": "x", "pushkey": 1, "kind": 3,
        "app_id": [], "data": 1, "lists": [], "one_time_keys": [], "device_keys": 3,
        "presence": 5, "displayname": {}, "avatar_url": 1, "new_password": [],
        "reason": 5, "room_version": 1, "event_id": 1, "ts": "x", "m.read": 1,
        "actions": "x", "conditions": 1, "rooms": 3, "join_rule": [], "users": 2,
        "username": 0, "messages": "x", "creation_content": 1, "keys": "x",
        "room_subscriptions": [], "extensions": 1, "timeline_limit": -5, "is_direct": "yes"
    }"#;
    bodies.push(wrong_types.as_bytes().to_vec());
    bodies.push(
        serde_json::to_vec(
            &json!({"lists": {"a": {"ranges": [[0, u64::MAX]], "timeline_limit": u64::MAX}}}),
        )
        .unwrap_or_default(),
    );
    for _ in 0..6 {
        let mut v = random_json(rng, 3);
        if !v.is_object() {
            v = json!({ "value": v });
        }
        bodies.push(serde_json::to_vec(&v).unwrap_or_default());
    }
    bodies
}

/// Client-server endpoints, with `{room}`, `{user}`, `{event}`, `{device}` placeholders.
/// Endpoints that end the session or strip the tester's power come last.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/_matrix/client/versions"),
    ("GET", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/r0/login"),
    ("POST", "/_matrix/client/v3/register"),
    ("POST", "/_matrix/client/v3/register?kind=guest"),
    ("POST", "/_matrix/client/v3/register?kind=x"),
    ("GET", "/_matrix/client/v3/register/available?username=_x"),
    ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=x"),
    ("POST", "/_synapse/admin/v1/register"),
    ("GET", "/_matrix/client/v3/account/whoami"),
    ("POST", "/_matrix/client/v3/account/password"),
    ("POST", "/_matrix/client/v3/account/deactivate"),
    ("GET", "/_matrix/client/v3/account/3pid"),
    ("GET", "/_matrix/client/v3/capabilities"),
    ("POST", "/_matrix/client/v3/createRoom"),
    ("POST", "/_matrix/client/v3/rooms/{room}/join"),
    ("POST", "/_matrix/client/v3/join/{room}"),
    ("POST", "/_matrix/client/v3/knock/{room}"),
    ("POST", "/_matrix/client/v3/rooms/{room}/invite"),
    ("POST", "/_matrix/client/v3/rooms/{room}/kick"),
    ("POST", "/_matrix/client/v3/rooms/{room}/ban"),
    ("POST", "/_matrix/client/v3/rooms/{room}/unban"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/send/m.room.redaction/{txn}"),
    ("PUT", "/_matrix/client/unstable/org.matrix.msc4140/rooms/{room}/send/m.x/{txn}"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay=-1"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.member/nobody"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.join_rules/"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/_{user}_D"),
    ("GET", "/_matrix/client/v3/rooms/{room}/state"),
    ("GET", "/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
    ("GET", "/_matrix/client/v3/rooms/{room}/messages?dir=x&limit=-5"),
    ("GET", "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=18446744073709551615&filter=%7B%22limit%22%3A-1%7D"),
    ("GET", "/_matrix/client/v3/rooms/{room}/members?at=garbage"),
    ("GET", "/_matrix/client/v3/rooms/{room}/joined_members"),
    ("GET", "/_matrix/client/v3/rooms/{room}/context/{event}?limit=-1"),
    ("GET", "/_matrix/client/v3/rooms/{room}/event/{event}"),
    ("GET", "/_matrix/client/v3/rooms/{room}/aliases"),
    ("GET", "/_matrix/client/v1/rooms/{room}/relations/{event}"),
    ("GET", "/_matrix/client/v1/rooms/{room}/threads?include=nope&from=garbage&limit=-1"),
    ("GET", "/_matrix/client/v1/rooms/{room}/hierarchy"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/redact/{event}/{txn}"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/typing/{user}"),
    ("POST", "/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
    ("POST", "/_matrix/client/v3/rooms/{room}/receipt/m.nope/{event}"),
    ("POST", "/_matrix/client/v3/rooms/{room}/read_markers"),
    ("POST", "/_matrix/client/v3/rooms/{room}/report/{event}"),
    ("GET", "/_matrix/client/v3/joined_rooms"),
    ("GET", "/_matrix/client/v3/sync"),
    ("GET", "/_matrix/client/v3/sync?since=garbage&timeout=abc"),
    ("GET", "/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A-1%7D%7D%7D"),
    ("GET", "/_matrix/client/v3/sync?filter=%7Bnot-json&set_presence=x"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos=garbage&timeout=-1"),
    ("POST", "/_matrix/client/v3/user/{user}/filter"),
    ("GET", "/_matrix/client/v3/user/{user}/filter/nope"),
    ("PUT", "/_matrix/client/v3/user/{user}/account_data/m.x"),
    ("GET", "/_matrix/client/v3/user/{user}/account_data/m.x"),
    ("PUT", "/_matrix/client/v3/user/{user}/account_data/m.fully_read"),
    ("PUT", "/_matrix/client/v3/user/{user}/rooms/{room}/account_data/m.x"),
    ("PUT", "/_matrix/client/v3/user/{user}/rooms/{room}/tags/u.x"),
    ("GET", "/_matrix/client/v3/user/{user}/rooms/{room}/tags"),
    ("POST", "/_matrix/client/v3/user/{user}/openid/request_token"),
    ("GET", "/_matrix/client/v3/profile/{user}"),
    ("PUT", "/_matrix/client/v3/profile/{user}/displayname"),
    ("PUT", "/_matrix/client/v3/profile/{user}/avatar_url"),
    ("GET", "/_matrix/client/v3/profile/{user}/displayname"),
    ("GET", "/_matrix/client/v3/devices"),
    ("GET", "/_matrix/client/v3/devices/{device}"),
    ("PUT", "/_matrix/client/v3/devices/{device}"),
    ("DELETE", "/_matrix/client/v3/devices/{device}"),
    ("POST", "/_matrix/client/v3/delete_devices"),
    ("POST", "/_matrix/client/v3/keys/upload"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("POST", "/_matrix/client/v3/keys/claim"),
    ("GET", "/_matrix/client/v3/keys/changes?from=x&to=y"),
    ("POST", "/_matrix/client/v3/keys/device_signing/upload"),
    ("POST", "/_matrix/client/v3/keys/signatures/upload"),
    ("PUT", "/_matrix/client/v3/sendToDevice/m.x/{txn}"),
    ("GET", "/_matrix/client/v3/pushrules/"),
    ("GET", "/_matrix/client/v3/pushrules/global/override/x"),
    ("PUT", "/_matrix/client/v3/pushrules/global/override/x?before=y"),
    ("PUT", "/_matrix/client/v3/pushrules/global/content/x"),
    ("PUT", "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled"),
    ("PUT", "/_matrix/client/v3/pushrules/global/override/.m.rule.master/actions"),
    ("DELETE", "/_matrix/client/v3/pushrules/global/override/x"),
    ("GET", "/_matrix/client/v3/pushers"),
    ("POST", "/_matrix/client/v3/pushers/set"),
    ("GET", "/_matrix/client/v3/notifications?limit=-1&from=x"),
    ("PUT", "/_matrix/client/v3/presence/{user}/status"),
    ("GET", "/_matrix/client/v3/presence/{user}/status"),
    ("GET", "/_matrix/client/v3/room_keys/version"),
    ("POST", "/_matrix/client/v3/room_keys/version"),
    ("PUT", "/_matrix/client/v3/room_keys/version/1"),
    ("GET", "/_matrix/client/v3/room_keys/keys?version=x"),
    ("PUT", "/_matrix/client/v3/room_keys/keys?version=1"),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{room}/s?version=1"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys?version=1"),
    ("GET", "/_matrix/client/v3/publicRooms?limit=-1&since=x"),
    ("POST", "/_matrix/client/v3/publicRooms"),
    ("PUT", "/_matrix/client/v3/directory/list/room/{room}"),
    ("PUT", "/_matrix/client/v3/directory/room/%23fuzz:localhost"),
    ("GET", "/_matrix/client/v3/directory/room/%23fuzz:localhost"),
    ("DELETE", "/_matrix/client/v3/directory/room/%23fuzz:localhost"),
    ("POST", "/_matrix/client/v3/user_directory/search"),
    ("GET", "/_matrix/client/v3/voip/turnServer"),
    ("GET", "/_matrix/client/v3/thirdparty/protocols"),
    ("GET", "/_matrix/client/v3/admin/whois/{user}"),
    ("POST", "/_matrix/client/v3/rooms/{room}/report/{event}"),
    ("POST", "/_matrix/media/v3/upload?filename=x"),
    ("POST", "/_matrix/media/v1/create"),
    ("GET", "/_matrix/client/v1/media/config"),
    ("GET", "/_matrix/client/v1/media/download/localhost/nope?timeout_ms=0"),
    ("GET", "/_matrix/client/v1/media/thumbnail/localhost/nope?width=-1&height=x"),
    ("GET", "/_matrix/media/v3/download/localhost/nope"),
    ("GET", "/_matrix/media/v3/thumbnail/localhost/nope?width=10&height=10&method=x"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/nope"),
    ("GET", "/_matrix/client/v1/rtc/transports"),
    ("POST", "/sfu/get"),
    ("POST", "/get_token"),
    ("POST", "/_matrix/client/v3/rooms/{room}/upgrade"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
    ("POST", "/_matrix/client/v3/rooms/{room}/leave"),
    ("POST", "/_matrix/client/v3/rooms/{room}/forget"),
    ("POST", "/_matrix/client/v3/logout"),
    ("POST", "/_matrix/client/v3/logout/all"),
];

#[tokio::test]
async fn every_endpoint_answers_hostile_bodies_with_matrix_errors() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let anon = server.client();
    let room = alice.create_room(json!({"name": "fuzz"})).await?;
    let event = alice.say(&room, "target").await?;
    let mut rng = StdRng::seed_from_u64(18);
    let mut txn = 0u32;
    let mut requests = 0u32;
    for (method, template) in ENDPOINTS {
        let method = Method::from_bytes(method.as_bytes())?;
        for body in hostile_bodies(&mut rng) {
            for client in [&alice, &anon] {
                txn += 1;
                let path = template
                    .replace("{room}", &enc(&room))
                    .replace("{user}", &enc(&alice.user_id))
                    .replace("{event}", &enc(&event))
                    .replace("{device}", &enc(&alice.device_id))
                    .replace("{txn}", &format!("fuzz{txn}"));
                let what = format!(
                    "{method} {path} (token: {}) body {}",
                    client.token.is_some(),
                    String::from_utf8_lossy(&body)
                );
                let r = client
                    .request_raw(method.clone(), &path, body.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("{what}: no HTTP response: {e}"))?;
                assert_matrix_answer(&what, &r);
                requests += 1;
            }
        }
    }
    assert!(requests > 2000, "{requests}");
    // still healthy: answers, registers and serves a new user
    let bob = server.register("bob").await?;
    bob.get("/account/whoami").await?.ok()?;
    let log = server.log();
    assert!(!log.contains("panicked"), "a handler panicked:\n{log}");
    Ok(())
}

async fn state_of(c: &Client, room: &str, kind: &str) -> anyhow::Result<Value> {
    c.get(&format!("/rooms/{}/state/{kind}/", enc(room)))
        .await?
        .ok()
}

/// A server with `alice` in a private room.
async fn room_setup() -> anyhow::Result<(TestServer, Client, String)> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    Ok((server, alice, room))
}

#[tokio::test]
async fn event_type_and_state_key_over_255_bytes_are_refused() -> anyhow::Result<()> {
    let (_server, alice, room) = room_setup().await?;
    let r = enc(&room);
    let long = "x".repeat(256);
    // event type and state key over 255 bytes; 255 is fine
    alice
        .put(&format!("/rooms/{r}/send/{long}/t1"), json!({"body": "x"}))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    alice
        .put(&format!("/rooms/{r}/state/{long}/"), json!({}))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    alice
        .put(&format!("/rooms/{r}/state/m.x/{long}"), json!({}))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    let ok = "y".repeat(255);
    alice
        .put(&format!("/rooms/{r}/send/{ok}/t2"), json!({}))
        .await?
        .ok()?;
    let state = alice.get(&format!("/rooms/{r}/state")).await?.ok()?;
    let state = state.as_array().cloned().unwrap_or_default();
    assert!(
        state
            .iter()
            .all(|e| e["type"] != long.as_str() && e["state_key"] != long.as_str()),
        "nothing written: {state:?}"
    );
    Ok(())
}

#[tokio::test]
async fn empty_body_on_send_and_state_is_not_json() -> anyhow::Result<()> {
    let (_server, alice, room) = room_setup().await?;
    let r = enc(&room);
    // an empty body on PUT /send is not an empty event
    let path = format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/empty1");
    alice
        .request_raw(Method::PUT, &path, Vec::new())
        .await?
        .expect_error(400, "M_NOT_JSON")?;
    let path = format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/");
    alice
        .request_raw(Method::PUT, &path, Vec::new())
        .await?
        .expect_error(400, "M_NOT_JSON")?;
    let messages = alice
        .get(&format!("/rooms/{r}/messages?dir=b&limit=50"))
        .await?
        .ok()?;
    let chunk = messages["chunk"].as_array().cloned().unwrap_or_default();
    assert!(
        chunk
            .iter()
            .all(|e| e["type"] != "m.room.message" && e["type"] != "m.room.topic"),
        "{chunk:?}"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_power_levels_are_bad_json_not_forbidden() -> anyhow::Result<()> {
    let (_server, alice, room) = room_setup().await?;
    // malformed power levels: 400, not 403, and the levels are unchanged
    let before = state_of(&alice, &room, "m.room.power_levels").await?;
    for content in [
        json!({"ban": "fifty"}),
        json!({"users": {"not-a-user": 100}}),
        json!({"users": {(alice.user_id.as_str()): 100.5}}),
        json!({"events": []}),
    ] {
        alice
            .set_state(&room, "m.room.power_levels", "", content.clone())
            .await?
            .expect_error(400, "M_BAD_JSON")
            .map_err(|e| anyhow::anyhow!("{content}: {e}"))?;
    }
    assert_eq!(
        state_of(&alice, &room, "m.room.power_levels").await?,
        before
    );
    Ok(())
}

#[tokio::test]
async fn member_events_need_a_user_id_state_key_and_membership() -> anyhow::Result<()> {
    let (_server, alice, room) = room_setup().await?;
    // member events need a user id as state key and a membership
    alice
        .set_state(
            &room,
            "m.room.member",
            "not-a-user",
            json!({"membership": "join"}),
        )
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    alice
        .set_state(
            &room,
            "m.room.member",
            &alice.user_id,
            json!({"membership": 5}),
        )
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    Ok(())
}

#[tokio::test]
async fn unknown_join_rules_are_refused() -> anyhow::Result<()> {
    let (_server, alice, room) = room_setup().await?;
    // unknown join rules
    let before = state_of(&alice, &room, "m.room.join_rules").await?;
    alice
        .set_state(
            &room,
            "m.room.join_rules",
            "",
            json!({"join_rule": "everyone"}),
        )
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    assert_eq!(state_of(&alice, &room, "m.room.join_rules").await?, before);
    alice
        .set_state(
            &room,
            "m.room.join_rules",
            "",
            json!({"join_rule": "invite"}),
        )
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test]
async fn inline_filter_with_negative_limit_is_bad_json() -> anyhow::Result<()> {
    let (_server, alice, _room) = room_setup().await?;
    // an inline filter with a negative limit is a bad filter, not an unknown filter id
    let filter = enc(r#"{"room":{"timeline":{"limit":-1}}}"#);
    let r = alice.get(&format!("/sync?filter={filter}")).await?;
    r.expect_error(400, "M_BAD_JSON")?;
    let r = alice.get("/sync?filter=%7Bnot%20json").await?;
    r.expect_error(400, "M_NOT_JSON")?;
    Ok(())
}

#[tokio::test]
async fn largest_sliding_sync_range_end_does_not_overflow() -> anyhow::Result<()> {
    let (_server, alice, _room) = room_setup().await?;
    // the largest sliding-sync range end
    let r = alice
        .request(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(&json!({"lists": {"all": {"ranges": [[0, u64::MAX]], "timeline_limit": 1}}})),
        )
        .await?;
    let body = r.ok()?;
    assert_eq!(body["lists"]["all"]["count"], 1, "{body}");
    Ok(())
}

#[tokio::test]
async fn long_device_ids_and_names_are_refused_and_not_written() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let anon = server.client();
    let login = |device: Value, name: Value| {
        json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "alice-password",
            "device_id": device,
            "initial_device_display_name": name,
        })
    };
    let long_id = "D".repeat(300);
    anon.post("/login", login(json!(long_id), Value::Null))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    anon.post("/login", login(json!("NEWDEV"), json!("n".repeat(10_000))))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    let devices = alice.get("/devices").await?.ok()?;
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(1),
        "no device was created: {devices}"
    );
    alice
        .put(
            &format!("/devices/{}", enc(&alice.device_id)),
            json!({"display_name": "n".repeat(10_000)}),
        )
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;

    // registration: device checks come before the account is created
    anon.post("/register", dummy("bob", &long_id))
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    let available = anon.get("/register/available?username=bob").await?.ok()?;
    assert_eq!(available["available"], true);
    Ok(())
}

/// A registration body completing UIA with `m.login.dummy`.
fn dummy(name: &str, device: &str) -> Value {
    json!({"username": name, "password": "pw-123456", "device_id": device,
           "auth": {"type": "m.login.dummy"}})
}

#[tokio::test]
async fn only_user_and_guest_registration_kinds_exist() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let anon = server.client();
    // only `user` and `guest` kinds exist
    for kind in ["admin", "bot", ""] {
        anon.post(&format!("/register?kind={kind}"), dummy("carol", "C1"))
            .await?
            .expect_error(400, "M_INVALID_PARAM")
            .map_err(|e| anyhow::anyhow!("kind={kind}: {e}"))?;
    }
    let available = anon.get("/register/available?username=carol").await?.ok()?;
    assert_eq!(available["available"], true);
    Ok(())
}

#[tokio::test]
async fn underscore_localparts_are_reserved() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let anon = server.client();
    // `_` localparts belong to application services
    anon.post("/register", dummy("_bridge", "B1"))
        .await?
        .expect_error(400, "M_INVALID_USERNAME")?;
    anon.get("/register/available?username=_bridge")
        .await?
        .expect_error(400, "M_INVALID_USERNAME")?;
    Ok(())
}

#[tokio::test]
async fn signed_pdu_of_65536_bytes_is_accepted_and_one_more_refused() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let send = |len: usize, txn: &'static str| {
        let alice = alice.clone();
        let room = room.clone();
        async move {
            alice
                .put(
                    &format!("/rooms/{}/send/m.room.message/{txn}", enc(&room)),
                    json!({"msgtype": "m.text", "body": "x".repeat(len)}),
                )
                .await
        }
    };
    // Calibrate from the sizes the server reports: first the event before signing...
    let r = send(70_000, "c1").await?;
    r.expect_error(413, "M_TOO_LARGE")?;
    let overhead_unsigned = number_in(r.body["error"].as_str().unwrap_or("")) - 70_000;
    // ...then signed (the unsigned event fits, the signed one does not).
    let len = 65_536 - overhead_unsigned - 100;
    let r = send(len, "c2").await?;
    r.expect_error(413, "M_TOO_LARGE")?;
    let signed = number_in(r.body["error"].as_str().unwrap_or(""));
    assert!(signed > 65_536 && signed <= 65_536 + 400, "{}", r.text);
    let exact = len - (signed - 65_536);
    let r = send(exact + 1, "c3").await?;
    r.expect_error(413, "M_TOO_LARGE")?;
    assert_eq!(
        number_in(r.body["error"].as_str().unwrap_or("")),
        65_537,
        "{}",
        r.text
    );
    send(exact, "c4").await?.ok()?;
    Ok(())
}
