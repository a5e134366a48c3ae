//! Discovery endpoints and accounts: registration, login, logout, whoami, devices, passwords.

use reqwest::Method;
use serde_json::json;
use spec_tests::{enc, shared_secret_mac, TestServer};

#[tokio::test]
async fn discovery_endpoints() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let anon = server.client();
    let versions = anon
        .request(Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    let list: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(list.contains(&"v1.11"), "{versions}");
    assert!(versions["unstable_features"].is_object(), "{versions}");

    let wk = anon
        .request(Method::GET, "/.well-known/matrix/client", None)
        .await?
        .ok()?;
    assert_eq!(wk["m.homeserver"]["base_url"], server.base.as_str());

    let keys = anon
        .request(Method::GET, "/_matrix/key/v2/server", None)
        .await?
        .ok()?;
    assert_eq!(keys["server_name"], "localhost");
    let verify = keys["verify_keys"].as_object().unwrap();
    assert_eq!(verify.len(), 1);
    let key_id = verify.keys().next().unwrap().clone();
    assert!(key_id.starts_with("ed25519:"));
    assert!(keys["signatures"]["localhost"][&key_id].is_string());

    let alice = server.register("alice").await?;
    let caps = alice.get("/capabilities").await?.ok()?;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "11");
    assert_eq!(
        caps["capabilities"]["m.room_versions"]["available"]["10"],
        "stable"
    );
    // absent means enabled
    assert_ne!(caps["capabilities"]["m.change_password"]["enabled"], false);

    // the server key survives a restart unchanged
    let mut server = server;
    server.restart().await?;
    let again = server
        .client()
        .request(Method::GET, "/_matrix/key/v2/server", None)
        .await?
        .ok()?;
    assert_eq!(again["verify_keys"], keys["verify_keys"]);
    Ok(())
}

#[tokio::test]
async fn register_login_logout_whoami() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let anon = server.client();
    let avail = anon.get("/register/available?username=alice").await?.ok()?;
    assert_eq!(avail["available"], true);

    let mut alice = server.register("alice").await?;
    assert_eq!(alice.user_id, "@alice:localhost");
    assert!(!alice.device_id.is_empty());
    anon.get("/register/available?username=alice")
        .await?
        .expect_error(400, "M_USER_IN_USE")?;
    // registering the same name again fails
    anon.post(
        "/register",
        json!({"username": "alice", "password": "x-password-long"}),
    )
    .await?
    .expect_error(400, "M_USER_IN_USE")?;

    let who = alice.get("/account/whoami").await?.ok()?;
    assert_eq!(who["user_id"], "@alice:localhost");
    assert_eq!(who["device_id"], alice.device_id.as_str());

    let flows = anon.get("/login").await?.ok()?;
    assert!(flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["type"] == "m.login.password"));

    // login with identifier and with the legacy `user` field
    let mut second = server.client();
    second.login("alice", "alice-password").await?;
    assert_ne!(second.token, alice.token);
    let legacy = anon
        .post(
            "/login",
            json!({"type": "m.login.password", "user": "@alice:localhost", "password": "alice-password"}),
        )
        .await?
        .ok()?;
    assert_eq!(legacy["user_id"], "@alice:localhost");
    anon.post(
        "/login",
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;

    // logout invalidates only that token
    second.post("/logout", json!({})).await?.ok()?;
    second
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    alice.get("/account/whoami").await?.ok()?;

    // logout/all invalidates every token
    let mut third = server.client();
    third.login("alice", "alice-password").await?;
    alice.post("/logout/all", json!({})).await?.ok()?;
    third
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    alice
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    alice.login("alice", "alice-password").await?;
    alice.get("/account/whoami").await?.ok()?;

    // r0 alias still answers
    let r0 = alice
        .request(Method::GET, "/_matrix/client/r0/account/whoami", None)
        .await?
        .ok()?;
    assert_eq!(r0["user_id"], "@alice:localhost");
    Ok(())
}

#[tokio::test]
async fn registration_modes() -> anyhow::Result<()> {
    // closed by default
    let closed = TestServer::start_with(&[]).await?;
    closed
        .client()
        .post(
            "/register",
            json!({"username": "bob", "password": "bob-password"}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // the admin CLI still creates accounts, through the running server's admin API
    let out = closed.run_cli(&[
        "user",
        "create",
        "admin",
        "--admin",
        "--password",
        "admin-password",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = closed.run_cli(&["user", "passwd", "admin", "--password", "new-password-1"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut admin = closed.client();
    admin
        .login_response("admin", "admin-password")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    admin.login("admin", "new-password-1").await?;

    // token mode needs m.login.registration_token
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "token"),
        ("MYELIN_REGISTRATION_TOKEN", "sesame"),
    ])
    .await?;
    let anon = server.client();
    let first = anon
        .post(
            "/register",
            json!({"username": "carol", "password": "carol-password"}),
        )
        .await?;
    assert_eq!(first.status, 401);
    assert!(first.body["flows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["stages"][0] == "m.login.registration_token"));
    let session = first.body["session"].as_str().unwrap();
    let validity = anon
        .request(
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=sesame",
            None,
        )
        .await?
        .ok()?;
    assert_eq!(validity["valid"], true);
    let bad = anon
        .post(
            "/register",
            json!({"username": "carol", "password": "carol-password",
                   "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}}),
        )
        .await?;
    assert_eq!(bad.status, 401, "{}", bad.text);
    let dummy = anon
        .post(
            "/register",
            json!({"username": "carol", "password": "carol-password",
                   "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await?;
    assert_eq!(
        dummy.status, 401,
        "dummy must not pass token mode: {}",
        dummy.text
    );
    let ok = anon
        .post(
            "/register",
            json!({"username": "carol", "password": "carol-password",
                   "auth": {"type": "m.login.registration_token", "token": "sesame", "session": session}}),
        )
        .await?
        .ok()?;
    assert_eq!(ok["user_id"], "@carol:localhost");
    Ok(())
}

#[tokio::test]
async fn devices_password_deactivate() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let mut phone = server.client();
    phone.login("alice", "alice-password").await?;

    let devices = alice.get("/devices").await?.ok()?;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    alice
        .put(
            &format!("/devices/{}", enc(&phone.device_id)),
            json!({"display_name": "Phone"}),
        )
        .await?
        .ok()?;
    let one = alice
        .get(&format!("/devices/{}", enc(&phone.device_id)))
        .await?
        .ok()?;
    assert_eq!(one["display_name"], "Phone");
    alice
        .get("/devices/NOSUCH")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // deleting a device needs UIA with the password; it logs that device out
    let first = alice
        .delete(
            &format!("/devices/{}", enc(&phone.device_id)),
            Some(json!({})),
        )
        .await?;
    assert_eq!(first.status, 401, "{}", first.text);
    let session = first.body["session"].as_str().unwrap().to_string();
    alice
        .delete(
            &format!("/devices/{}", enc(&phone.device_id)),
            Some(json!({"auth": {"type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": "alice"}, "password": "alice-password"}})),
        )
        .await?
        .ok()?;
    phone
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    assert_eq!(
        alice.get("/devices").await?.ok()?["devices"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // password change with UIA; other devices are logged out unless asked otherwise
    let mut tablet = server.client();
    tablet.login("alice", "alice-password").await?;
    let first = alice
        .post(
            "/account/password",
            json!({"new_password": "alice-new-password"}),
        )
        .await?;
    assert_eq!(first.status, 401);
    let session = first.body["session"].as_str().unwrap().to_string();
    alice
        .post(
            "/account/password",
            json!({"new_password": "alice-new-password",
                   "auth": {"type": "m.login.password", "session": session,
                            "identifier": {"type": "m.id.user", "user": "alice"}, "password": "alice-password"}}),
        )
        .await?
        .ok()?;
    tablet
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    alice.get("/account/whoami").await?.ok()?;
    let mut check = server.client();
    check
        .login_response("alice", "alice-password")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    check.login("alice", "alice-new-password").await?;

    // deactivate: tokens die, login fails, the name stays taken
    let first = alice.post("/account/deactivate", json!({})).await?;
    assert_eq!(first.status, 401);
    let session = first.body["session"].as_str().unwrap().to_string();
    alice
        .post(
            "/account/deactivate",
            json!({"auth": {"type": "m.login.password", "session": session,
                            "identifier": {"type": "m.id.user", "user": "alice"}, "password": "alice-new-password"}}),
        )
        .await?
        .ok()?;
    alice
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    server
        .client()
        .login_response("alice", "alice-new-password")
        .await?
        .expect_error(403, "M_USER_DEACTIVATED")?;
    server
        .client()
        .get("/register/available?username=alice")
        .await?
        .expect_error(400, "M_USER_IN_USE")?;
    Ok(())
}

#[tokio::test]
async fn shared_secret_registration() -> anyhow::Result<()> {
    // registration closed, shared secret set: only the secret's holder can register
    let server =
        TestServer::start_with(&[("MYELIN_REGISTRATION_SHARED_SECRET", "hunter2")]).await?;
    let anon = server.client();
    let path = "/_synapse/admin/v1/register";
    let nonce = anon.request(Method::GET, path, None).await?.ok()?["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = anon
        .request(
            Method::POST,
            path,
            Some(&json!({"nonce": nonce, "username": "ops", "password": "ops-password", "admin": false,
                         "mac": shared_secret_mac("wrong", &nonce, "ops", "ops-password", false)})),
        )
        .await?;
    bad.expect_error(403, "M_FORBIDDEN")?;
    // the nonce was used up by the failed attempt
    let reuse = anon
        .request(
            Method::POST,
            path,
            Some(&json!({"nonce": nonce, "username": "ops", "password": "ops-password", "admin": false,
                         "mac": shared_secret_mac("hunter2", &nonce, "ops", "ops-password", false)})),
        )
        .await?;
    assert_eq!(reuse.status, 400, "{}", reuse.text);
    let nonce = anon.request(Method::GET, path, None).await?.ok()?["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = anon
        .request(
            Method::POST,
            path,
            Some(&json!({"nonce": nonce, "username": "ops", "password": "ops-password", "admin": true,
                         "mac": shared_secret_mac("hunter2", &nonce, "ops", "ops-password", true)})),
        )
        .await?
        .ok()?;
    assert_eq!(ok["user_id"], "@ops:localhost");
    let mut ops = server.client();
    ops.token = ok["access_token"].as_str().map(str::to_string);
    assert_eq!(
        ops.get("/account/whoami").await?.ok()?["user_id"],
        "@ops:localhost"
    );

    // without a configured secret the endpoint refuses
    let plain = TestServer::start().await?;
    plain
        .client()
        .request(Method::GET, path, None)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn guests_get_only_guest_rights() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_REGISTRATION_ALLOW_GUESTS", "true"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let open = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}]}))
        .await?;
    let closed = alice.create_room(json!({"preset": "public_chat"})).await?;
    let reg = server
        .client()
        .post("/register?kind=guest", json!({}))
        .await?
        .ok()?;
    let mut guest = server.client();
    guest.token = reg["access_token"].as_str().map(str::to_string);
    let who = guest.get("/account/whoami").await?.ok()?;
    assert_eq!(who["is_guest"], true);
    guest.join(&open).await?;
    guest
        .post(&format!("/join/{}", enc(&closed)), json!({}))
        .await?
        .expect_error(403, "M_GUEST_ACCESS_FORBIDDEN")?;
    guest.say(&open, "hi from a guest").await?;
    guest
        .put(
            &format!("/rooms/{}/send/m.reaction/t1", enc(&open)),
            json!({}),
        )
        .await?
        .expect_error(403, "M_GUEST_ACCESS_FORBIDDEN")?;
    guest
        .post("/createRoom", json!({}))
        .await?
        .expect_error(403, "M_GUEST_ACCESS_FORBIDDEN")?;
    guest
        .set_state(&open, "m.room.topic", "", json!({"topic": "x"}))
        .await?
        .expect_error(403, "M_GUEST_ACCESS_FORBIDDEN")?;
    let s = guest.sync("timeout=0").await?;
    assert!(s["rooms"]["join"][&open].is_object());
    Ok(())
}
