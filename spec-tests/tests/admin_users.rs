//! Admin API, users, driven as synapse-admin does: list, create with PUT, deactivate,
//! reset password, whois and the admin flag.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, Response, TestServer};

async fn admin_get(c: &Client, path: &str) -> anyhow::Result<Response> {
    c.request(Method::GET, &format!("/_synapse/admin{path}"), None)
        .await
}

async fn admin_call(
    c: &Client,
    method: Method,
    path: &str,
    body: Value,
) -> anyhow::Result<Response> {
    c.request(method, &format!("/_synapse/admin{path}"), Some(&body))
        .await
}

fn names(list: &Value) -> Vec<&str> {
    list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn users_are_listed_in_pages_filtered_and_ordered() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    for name in ["alice", "bob", "carol"] {
        server.register(name).await?;
    }
    let first = admin_get(&admin, "/v2/users?limit=2").await?.ok()?;
    assert_eq!(names(&first), ["@admin:localhost", "@alice:localhost"]);
    assert_eq!(first["total"], 4);
    assert_eq!(first["next_token"], "2");
    let rest = admin_get(&admin, "/v2/users?from=2&limit=2").await?.ok()?;
    assert_eq!(names(&rest), ["@bob:localhost", "@carol:localhost"]);
    assert!(rest.get("next_token").is_none(), "{rest}");

    let alice = &first["users"][1];
    assert_eq!(alice["admin"], false);
    assert_eq!(alice["deactivated"], false);
    assert_eq!(alice["is_guest"], false);
    assert_eq!(alice["displayname"], "alice");
    assert!(alice["creation_ts"].as_u64().unwrap() > 0);

    let search = admin_get(&admin, "/v2/users?name=AR").await?.ok()?;
    assert_eq!(names(&search), ["@carol:localhost"]);
    // synapse-admin sends every filter, empty ones too.
    let search = admin_get(&admin, "/v2/users?name=&user_id=bo&guests=false")
        .await?
        .ok()?;
    assert_eq!(names(&search), ["@bob:localhost"]);
    let reversed = admin_get(&admin, "/v2/users?order_by=name&dir=b")
        .await?
        .ok()?;
    assert_eq!(
        names(&reversed),
        [
            "@carol:localhost",
            "@bob:localhost",
            "@alice:localhost",
            "@admin:localhost"
        ]
    );
    let admins_first = admin_get(&admin, "/v2/users?order_by=admin&dir=b&limit=1")
        .await?
        .ok()?;
    assert_eq!(names(&admins_first), ["@admin:localhost"]);
    admin_get(&admin, "/v2/users?order_by=password")
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;

    admin_call(
        &admin,
        Method::POST,
        &format!("/v1/deactivate/{}", enc("@carol:localhost")),
        json!({}),
    )
    .await?
    .ok()?;
    let active = admin_get(&admin, "/v2/users").await?.ok()?;
    assert_eq!(active["total"], 3);
    assert!(!names(&active).contains(&"@carol:localhost"));
    let all = admin_get(&admin, "/v2/users?deactivated=true")
        .await?
        .ok()?;
    assert_eq!(all["total"], 4);
    assert_eq!(all["users"][3]["deactivated"], true);
    Ok(())
}

#[tokio::test]
async fn a_user_created_with_put_logs_in_and_deactivation_ends_their_sessions() -> anyhow::Result<()>
{
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let path = format!("/v2/users/{}", enc("@dave:localhost"));
    admin_get(&admin, &path)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let created = admin_call(
        &admin,
        Method::PUT,
        &path,
        json!({"password": "dave-pw", "displayname": "Dave"}),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["name"], "@dave:localhost");
    assert_eq!(created.body["displayname"], "Dave");
    assert_eq!(created.body["admin"], false);

    let mut dave = server.client();
    dave.login("dave", "dave-pw").await?;
    let room = dave.create_room(json!({"preset": "public_chat"})).await?;
    // Modifying answers 200 and changes only what is given.
    let changed = admin_call(&admin, Method::PUT, &path, json!({"displayname": "David"}))
        .await?
        .ok()?;
    assert_eq!(changed["displayname"], "David");
    dave.get("/account/whoami").await?.ok()?;

    let done = admin_call(
        &admin,
        Method::POST,
        &format!("/v1/deactivate/{}", enc("@dave:localhost")),
        json!({"erase": true}),
    )
    .await?
    .ok()?;
    assert_eq!(done["id_server_unbind_result"], "success");
    dave.get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    server
        .client()
        .login_response("dave", "dave-pw")
        .await?
        .expect_error(403, "M_USER_DEACTIVATED")?;
    let record = admin_get(&admin, &path).await?.ok()?;
    assert_eq!(
        (record["deactivated"].clone(), record["erased"].clone()),
        (json!(true), json!(true))
    );
    let members = admin_get(&admin, &format!("/v1/rooms/{}/members", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(
        members["total"], 0,
        "the deactivated account left its rooms: {members}"
    );
    Ok(())
}

#[tokio::test]
async fn put_refuses_bad_fields_and_creates_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let path = format!("/v2/users/{}", enc("@eve:localhost"));
    for (body, errcode) in [
        (json!({"password": 5}), "M_INVALID_PARAM"),
        (json!({"password": "pw", "admin": "yes"}), "M_INVALID_PARAM"),
        (
            json!({"password": "pw", "displayname": "x".repeat(300)}),
            "M_INVALID_PARAM",
        ),
        (json!({"password": ""}), "M_WEAK_PASSWORD"),
        (
            json!({"password": "pw", "threepids": [{"medium": "email", "address": "e@x"}]}),
            "M_INVALID_PARAM",
        ),
    ] {
        admin_call(&admin, Method::PUT, &path, body)
            .await?
            .expect_error(400, errcode)?;
    }
    admin_get(&admin, &path)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    admin_call(
        &admin,
        Method::PUT,
        &format!("/v2/users/{}", enc("@eve:elsewhere")),
        json!({}),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    // Reactivating needs a password; the refusal leaves the account deactivated.
    let carol = server.register("carol").await?;
    let carol_path = format!("/v2/users/{}", enc(&carol.user_id));
    admin_call(
        &admin,
        Method::PUT,
        &carol_path,
        json!({"deactivated": true}),
    )
    .await?
    .ok()?;
    admin_call(
        &admin,
        Method::PUT,
        &carol_path,
        json!({"deactivated": false}),
    )
    .await?
    .expect_error(400, "M_MISSING_PARAM")?;
    assert_eq!(
        admin_get(&admin, &carol_path).await?.ok()?["deactivated"],
        true
    );
    admin_call(
        &admin,
        Method::PUT,
        &carol_path,
        json!({"deactivated": false, "password": "back"}),
    )
    .await?
    .ok()?;
    server.client().login("carol", "back").await?;
    Ok(())
}

#[tokio::test]
async fn reset_password_keeps_sessions_only_when_asked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let path = format!("/v1/reset_password/{}", enc(&alice.user_id));
    admin_call(
        &admin,
        Method::POST,
        &path,
        json!({"new_password": "second", "logout_devices": false}),
    )
    .await?
    .ok()?;
    alice.get("/account/whoami").await?.ok()?;
    server
        .client()
        .login_response("alice", "alice-password")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let mut phone = server.client();
    phone.login("alice", "second").await?;

    admin_call(
        &admin,
        Method::POST,
        &path,
        json!({"new_password": "third"}),
    )
    .await?
    .ok()?;
    for old in [&alice, &phone] {
        old.get("/account/whoami")
            .await?
            .expect_error(401, "M_UNKNOWN_TOKEN")?;
    }
    server.client().login("alice", "third").await?;
    admin_call(&admin, Method::POST, &path, json!({}))
        .await?
        .expect_error(400, "M_MISSING_PARAM")?;
    admin_call(
        &admin,
        Method::POST,
        &format!("/v1/reset_password/{}", enc("@nobody:localhost")),
        json!({"new_password": "x"}),
    )
    .await?
    .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn whois_lists_the_devices_on_both_apis() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let who = admin_get(&admin, &format!("/v1/whois/{}", enc(&alice.user_id)))
        .await?
        .ok()?;
    assert_eq!(who["user_id"], alice.user_id);
    let devices: Vec<&String> = who["devices"].as_object().unwrap().keys().collect();
    assert_eq!(devices, [&alice.device_id]);
    let sessions = &who["devices"][&alice.device_id]["sessions"];
    assert!(
        sessions[0]["connections"][0]["last_seen"]
            .as_u64()
            .is_some(),
        "{who}"
    );

    let client_path = format!("/admin/whois/{}", enc(&alice.user_id));
    assert_eq!(admin.get(&client_path).await?.ok()?, who);
    assert_eq!(
        alice.get(&client_path).await?.ok()?,
        who,
        "one may look oneself up"
    );
    bob.get(&client_path)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    admin_get(&admin, &format!("/v1/whois/{}", enc("@nobody:localhost")))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn the_admin_flag_is_read_set_and_not_self_revoked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let path = format!("/v1/users/{}/admin", enc(&alice.user_id));
    assert_eq!(
        admin_get(&admin, &path).await?.ok()?,
        json!({"admin": false})
    );
    admin_get(&alice, "/v2/users")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    admin_call(&admin, Method::PUT, &path, json!({"admin": true}))
        .await?
        .ok()?;
    assert_eq!(
        admin_get(&admin, &path).await?.ok()?,
        json!({"admin": true})
    );
    admin_get(&alice, "/v2/users").await?.ok()?;

    admin_call(&alice, Method::PUT, &path, json!({"admin": false}))
        .await?
        .expect_error(400, "M_UNKNOWN")?;
    assert_eq!(
        admin_get(&admin, &path).await?.ok()?,
        json!({"admin": true})
    );
    admin_call(&admin, Method::PUT, &path, json!({"admin": false}))
        .await?
        .ok()?;
    admin_get(&alice, "/v2/users")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn a_users_joined_rooms_and_devices_are_listed() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let left = alice.create_room(json!({})).await?;
    alice
        .post(&format!("/rooms/{}/leave", enc(&left)), json!({}))
        .await?
        .ok()?;
    let user = enc(&alice.user_id);
    let rooms = admin_get(&admin, &format!("/v1/users/{user}/joined_rooms"))
        .await?
        .ok()?;
    assert_eq!(rooms, json!({"total": 1, "joined_rooms": [room]}));
    let devices = admin_get(&admin, &format!("/v2/users/{user}/devices"))
        .await?
        .ok()?;
    assert_eq!(devices["total"], 1);
    assert_eq!(devices["devices"][0]["device_id"], alice.device_id);
    assert_eq!(devices["devices"][0]["user_id"], alice.user_id);
    for path in ["/v1/users/{}/joined_rooms", "/v2/users/{}/devices"] {
        admin_get(&admin, &path.replace("{}", &enc("@nobody:localhost")))
            .await?
            .expect_error(404, "M_NOT_FOUND")?;
    }
    Ok(())
}
