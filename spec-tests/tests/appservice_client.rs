//! Appservice → homeserver: `as_token` sessions and `?user_id=` masquerading, registration
//! and login of namespace users, exclusive namespaces, `ts`, and the ping endpoint.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use spec_tests::{
    enc,
    fake_appservice::{write_registration, FakeAppservice},
    Client, TestServer,
};

async fn start(regs: &[std::path::PathBuf]) -> TestServer {
    let list: Vec<String> = regs.iter().map(|p| p.display().to_string()).collect();
    TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_APPSERVICES", list.join(",").as_str()),
    ])
    .await
    .unwrap()
}

fn bridge(server: &TestServer, token: &str) -> Client {
    let mut c = server.client();
    c.token = Some(token.into());
    c
}

async fn register_puppet(bridge: &Client, name: &str) -> spec_tests::Response {
    bridge
        .post(
            "/register",
            json!({"type": "m.login.application_service", "username": name}),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn masquerading_registration_and_login() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&[write_registration(dir.path(), "br", None).unwrap()]).await;
    let br = bridge(&server, "br_as");
    let _alice = server.register("alice").await.unwrap();

    // The appservice's own user exists from the start.
    let me = br.get("/account/whoami").await.unwrap().ok().unwrap();
    assert_eq!(me["user_id"], server.user_id("br_bot"));

    register_puppet(&br, "br_alice").await.ok().unwrap();
    // As bridge frameworks send it (mautrix): `?user_id=` naming the user being
    // registered, who does not exist yet.
    let pending = server.user_id("br_carol");
    br.post(
        &format!("/register?user_id={}", enc(&pending)),
        json!({"type": "m.login.application_service", "username": "br_carol"}),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    let puppet = server.user_id("br_alice");
    let me = br
        .get(&format!("/account/whoami?user_id={}", enc(&puppet)))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(me["user_id"], puppet.as_str());
    // Outside the namespace, or not registered: refused.
    for user in [server.user_id("alice"), server.user_id("br_nobody")] {
        br.get(&format!("/account/whoami?user_id={}", enc(&user)))
            .await
            .unwrap()
            .expect_error(403, "M_FORBIDDEN")
            .unwrap();
    }
    // Registration: outside the namespace, taken, without the appservice's token.
    register_puppet(&br, "alice2")
        .await
        .expect_error(400, "M_EXCLUSIVE")
        .unwrap();
    register_puppet(&br, "br_alice")
        .await
        .expect_error(400, "M_USER_IN_USE")
        .unwrap();
    register_puppet(&server.client(), "br_x")
        .await
        .expect_error(401, "M_MISSING_TOKEN")
        .unwrap();
    // A normal user cannot take a name in the exclusive namespace.
    server
        .client()
        .post(
        "/register",
        json!({"username": "br_eve", "password": "pw-long-enough-1", "auth": {"type": "m.login.dummy"}}),
    )
    .await
    .unwrap()
    .expect_error(400, "M_EXCLUSIVE")
    .unwrap();

    // Login as a namespace user, without password.
    let login = br
        .post(
            "/login",
            json!({"type": "m.login.application_service",
                   "identifier": {"type": "m.id.user", "user": "br_alice"}}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(login["user_id"], puppet.as_str());
    let mut as_puppet = server.client();
    as_puppet.token = Some(login["access_token"].as_str().unwrap().to_owned());
    let me = as_puppet
        .get("/account/whoami")
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(me["user_id"], puppet.as_str());
    br.post(
        "/login",
        json!({"type": "m.login.application_service",
               "identifier": {"type": "m.id.user", "user": "alice"}}),
    )
    .await
    .unwrap()
    .expect_error(403, "M_FORBIDDEN")
    .unwrap();
}

#[tokio::test]
async fn exclusive_aliases_and_timestamp_massaging() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&[write_registration(dir.path(), "br", None).unwrap()]).await;
    let br = bridge(&server, "br_as");
    let alice = server.register("alice").await.unwrap();

    alice
        .post("/createRoom", json!({"room_alias_name": "br_room"}))
        .await
        .unwrap()
        .expect_error(400, "M_EXCLUSIVE")
        .unwrap();
    let room = alice.create_room(json!({})).await.unwrap();
    let alias = format!("#br_lobby:{}", server.server_name);
    alice
        .put(
            &format!("/directory/room/{}", enc(&alias)),
            json!({"room_id": room}),
        )
        .await
        .unwrap()
        .expect_error(400, "M_EXCLUSIVE")
        .unwrap();
    // The appservice itself may.
    let bridged = br
        .create_room(json!({"room_alias_name": "br_room"}))
        .await
        .unwrap();
    let resolved = alice
        .get(&format!(
            "/directory/room/{}",
            enc(&format!("#br_room:{}", server.server_name))
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(resolved["room_id"], bridged.as_str());

    // `ts` sets origin_server_ts for an appservice, and only for one.
    let sent = br
        .put(
            &format!("/rooms/{}/send/m.room.message/t1?ts=1234567", enc(&bridged)),
            json!({"msgtype": "m.text", "body": "old"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let event_id = sent["event_id"].as_str().unwrap();
    let event = br
        .get(&format!("/rooms/{}/event/{}", enc(&bridged), enc(event_id)))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(event["origin_server_ts"], 1234567);
    let state = br
        .put(
            &format!("/rooms/{}/state/m.room.topic/?ts=2345678", enc(&bridged)),
            json!({"topic": "t"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let event = br
        .get(&format!(
            "/rooms/{}/event/{}",
            enc(&bridged),
            enc(state["event_id"].as_str().unwrap())
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(event["origin_server_ts"], 2345678);
    let mine = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/t2?ts=1234567", enc(&room)),
            json!({"msgtype": "m.text", "body": "now"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let event = alice
        .get(&format!(
            "/rooms/{}/event/{}",
            enc(&room),
            enc(mine["event_id"].as_str().unwrap())
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        event["origin_server_ts"].as_u64().unwrap() > 1_700_000_000_000,
        "{event}"
    );
}

#[tokio::test]
async fn ping_reaches_the_appservice_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = FakeAppservice::start(Box::new(|_| 200)).await.unwrap();
    let failing = FakeAppservice::start(Box::new(|_| 500)).await.unwrap();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let regs = [
        write_registration(dir.path(), "up", Some(&up.url)).unwrap(),
        write_registration(dir.path(), "bad", Some(&failing.url)).unwrap(),
        write_registration(dir.path(), "down", Some(&closed)).unwrap(),
        write_registration(dir.path(), "nourl", None).unwrap(),
    ];
    let server = start(&regs).await;
    let ping = |token: &str, id: &str| {
        let c = bridge(&server, token);
        let id = id.to_owned();
        async move {
            c.request(
                Method::POST,
                &format!("/_matrix/client/v1/appservice/{id}/ping"),
                Some(&json!({"transaction_id": "p1"})),
            )
            .await
            .unwrap()
        }
    };
    let ok = ping("up_as", "up").await.ok().unwrap();
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    let got = up.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/_matrix/app/v1/ping")
    );
    assert_eq!(got.authorization.as_deref(), Some("Bearer up_hs"));
    assert_eq!(got.body, json!({"transaction_id": "p1"}));

    ping("bad_as", "bad")
        .await
        .expect_error(502, "M_BAD_STATUS")
        .unwrap();
    ping("down_as", "down")
        .await
        .expect_error(502, "M_CONNECTION_FAILED")
        .unwrap();
    ping("nourl_as", "nourl")
        .await
        .expect_error(400, "M_URL_NOT_SET")
        .unwrap();
    // Only the appservice's own token.
    ping("bad_as", "up")
        .await
        .expect_error(403, "M_FORBIDDEN")
        .unwrap();
    let alice = server.register("alice").await.unwrap();
    let r = alice
        .request(
            Method::POST,
            "/_matrix/client/v1/appservice/up/ping",
            Some(&json!({})),
        )
        .await
        .unwrap();
    r.expect_error(403, "M_FORBIDDEN").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_alias_queries_let_the_appservice_create_them_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    // The fake appservice reports each query, then waits until the test has created the
    // puppet or room (as a bridge would) before answering 200; other paths get 404.
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<String>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let mut fake = FakeAppservice::start(Box::new(move |r| {
        if r.method == "GET" && r.path.starts_with("/_matrix/app/v1/") {
            let _ = seen_tx.send(r.path.clone());
            let waited = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
            return if waited.is_ok() { 200 } else { 404 };
        }
        200
    }))
    .await
    .unwrap();
    let server = start(&[write_registration(dir.path(), "br", Some(&fake.url)).unwrap()]).await;
    let alice = server.register("alice").await.unwrap();
    let br = bridge(&server, "br_as");
    let seen_rx = std::sync::Arc::new(std::sync::Mutex::new(seen_rx));
    let next_query = || {
        let rx = seen_rx.clone();
        tokio::task::spawn_blocking(move || {
            rx.lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
        })
    };

    // Unknown user inside the namespace: the appservice is asked and creates it.
    let puppet = server.user_id("br_new");
    let seen = next_query();
    let lookup = {
        let alice = alice.clone();
        let path = format!("/profile/{}", enc(&puppet));
        tokio::spawn(async move { alice.get(&path).await.unwrap() })
    };
    assert_eq!(
        seen.await.unwrap(),
        format!("/_matrix/app/v1/users/{puppet}")
    );
    register_puppet(&br, "br_new").await.ok().unwrap();
    go_tx.send(()).unwrap();
    let profile = lookup.await.unwrap().ok().unwrap();
    assert_eq!(profile["displayname"], "br_new");
    let query = fake
        .collect_until(Duration::from_secs(5), |r| r.method == "GET")
        .await
        .unwrap();
    assert_eq!(
        query.last().unwrap().authorization.as_deref(),
        Some("Bearer br_hs")
    );

    // Unknown alias inside the namespace: the appservice creates the room with it.
    let alias = format!("#br_chan:{}", server.server_name);
    let seen = next_query();
    let lookup = {
        let alice = alice.clone();
        let path = format!("/directory/room/{}", enc(&alias));
        tokio::spawn(async move { alice.get(&path).await.unwrap() })
    };
    assert_eq!(
        seen.await.unwrap(),
        format!("/_matrix/app/v1/rooms/%23br_chan:{}", server.server_name)
    );
    let room = br
        .create_room(json!({"room_alias_name": "br_chan"}))
        .await
        .unwrap();
    go_tx.send(()).unwrap();
    let resolved = lookup.await.unwrap().ok().unwrap();
    assert_eq!(resolved["room_id"], room.as_str());

    // Outside every namespace nobody is asked.
    alice
        .get(&format!("/profile/{}", enc(&server.user_id("nobody"))))
        .await
        .unwrap()
        .expect_error(404, "M_NOT_FOUND")
        .unwrap();
    let later: Vec<String> = fake
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| format!("{} {}", r.path, r.status))
        .collect();
    assert_eq!(
        later,
        [format!(
            "/_matrix/app/v1/rooms/%23br_chan:{} 200",
            server.server_name
        )]
    );
}

/// MSC4190: an appservice with `io.element.msc4190: true` creates its users' devices with
/// `PUT /devices/{deviceId}` and deletes them without user-interactive auth; one without it
/// (and any ordinary user) cannot create devices that way and must authenticate deletes.
#[tokio::test]
async fn device_management_for_appservices() {
    let dir = tempfile::tempdir().unwrap();
    let managed = write_registration(dir.path(), "dm", None).unwrap();
    let text = std::fs::read_to_string(&managed).unwrap();
    std::fs::write(&managed, format!("{text}io.element.msc4190: true\n")).unwrap();
    let plain = write_registration(dir.path(), "pl", None).unwrap();
    let server = start(&[managed, plain]).await;
    let dm = bridge(&server, "dm_as");
    let pl = bridge(&server, "pl_as");
    register_puppet(&dm, "dm_bob").await.ok().unwrap();
    register_puppet(&pl, "pl_bob").await.ok().unwrap();
    let as_user = |user: &str| format!("user_id={}", enc(&server.user_id(user)));

    // Created on demand, listed with its name, without an access token of its own.
    let q = as_user("dm_bob");
    dm.request(
        Method::PUT,
        &format!("/_matrix/client/v3/devices/BRIDGEDEV?{q}"),
        Some(&json!({"display_name": "Bridge"})),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    let devices = dm
        .get(&format!("/devices?{q}"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    let found = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "BRIDGEDEV")
        .cloned()
        .expect("the new device is listed");
    assert_eq!(found["display_name"], "Bridge");
    // Putting it again renames it and creates nothing new.
    dm.request(
        Method::PUT,
        &format!("/_matrix/client/v3/devices/BRIDGEDEV?{q}"),
        Some(&json!({"display_name": "Renamed"})),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    let devices = dm
        .get(&format!("/devices?{q}"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    let named: Vec<_> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["device_id"] == "BRIDGEDEV")
        .map(|d| d["display_name"].clone())
        .collect();
    assert_eq!(named, vec![json!("Renamed")]);
    // Deleted without user-interactive auth.
    dm.request(
        Method::DELETE,
        &format!("/_matrix/client/v3/devices/BRIDGEDEV?{q}"),
        Some(&json!({})),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    dm.get(&format!("/devices/BRIDGEDEV?{q}"))
        .await
        .unwrap()
        .expect_error(404, "M_NOT_FOUND")
        .unwrap();

    // Without device management: no creation, deletes need auth.
    let q = as_user("pl_bob");
    pl.request(
        Method::PUT,
        &format!("/_matrix/client/v3/devices/NEWDEV?{q}"),
        Some(&json!({"display_name": "x"})),
    )
    .await
    .unwrap()
    .expect_error(404, "M_NOT_FOUND")
    .unwrap();
    let login = pl
        .post(
            "/login",
            json!({
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": server.user_id("pl_bob")},
            }),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let device = login["device_id"].as_str().unwrap().to_owned();
    let resp = pl
        .request(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}?{q}", enc(&device)),
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 401, "a delete without auth asks for it");
    pl.get(&format!("/devices/{}?{q}", enc(&device)))
        .await
        .unwrap()
        .ok()
        .unwrap();

    // An ordinary user cannot create a device this way either.
    let alice = server.register("alice").await.unwrap();
    alice
        .request(
            Method::PUT,
            "/_matrix/client/v3/devices/MADEUP",
            Some(&json!({"display_name": "x"})),
        )
        .await
        .unwrap()
        .expect_error(404, "M_NOT_FOUND")
        .unwrap();
}
