//! Who may use the admin API: server administrators and the operator token only; every
//! route refuses everyone else before doing anything.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, TestServer};

/// Every admin route with a body that would change something if it were accepted.
fn routes(room: &str, alice: &str) -> Vec<(Method, String, Value)> {
    let victim = enc("@victim:localhost");
    let alice = enc(alice);
    let room = enc(room);
    vec![
        (Method::GET, "/v2/users".into(), json!({})),
        (Method::GET, format!("/v2/users/{alice}"), json!({})),
        (
            Method::PUT,
            format!("/v2/users/{victim}"),
            json!({"password": "pw", "admin": true}),
        ),
        (
            Method::POST,
            format!("/v1/deactivate/{alice}"),
            json!({"erase": true}),
        ),
        (
            Method::POST,
            format!("/v1/reset_password/{alice}"),
            json!({"new_password": "owned"}),
        ),
        (Method::GET, format!("/v1/whois/{alice}"), json!({})),
        (Method::GET, format!("/v1/users/{alice}/admin"), json!({})),
        (
            Method::PUT,
            format!("/v1/users/{alice}/admin"),
            json!({"admin": true}),
        ),
        (Method::GET, "/v1/rooms".into(), json!({})),
        (Method::GET, format!("/v1/rooms/{room}"), json!({})),
        (Method::GET, format!("/v1/rooms/{room}/members"), json!({})),
        (Method::GET, format!("/v1/rooms/{room}/state"), json!({})),
        (Method::GET, format!("/v1/rooms/{room}/block"), json!({})),
        (
            Method::PUT,
            format!("/v1/rooms/{room}/block"),
            json!({"block": true}),
        ),
        (Method::GET, "/v1/registration_tokens".into(), json!({})),
        (
            Method::POST,
            "/v1/registration_tokens/new".into(),
            json!({"token": "sneaky"}),
        ),
        (
            Method::GET,
            "/v1/registration_tokens/sneaky".into(),
            json!({}),
        ),
        (
            Method::PUT,
            "/v1/registration_tokens/sneaky".into(),
            json!({"uses_allowed": 1}),
        ),
        (
            Method::DELETE,
            "/v1/registration_tokens/sneaky".into(),
            json!({}),
        ),
        (Method::GET, "/v1/event_reports".into(), json!({})),
        (Method::GET, "/v1/event_reports/1".into(), json!({})),
        (Method::DELETE, "/v1/event_reports/1".into(), json!({})),
        (Method::GET, "/v1/server_version".into(), json!({})),
    ]
}

#[tokio::test]
async fn every_admin_route_refuses_non_admins_and_writes_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    let anonymous = server.client();
    let mut stranger = server.client();
    stranger.token = Some("not-a-token".into());
    for (method, path, body) in routes(&room, &alice.user_id) {
        let path = format!("/_synapse/admin{path}");
        let as_alice = alice.request(method.clone(), &path, Some(&body)).await?;
        as_alice
            .expect_error(403, "M_FORBIDDEN")
            .map_err(|e| e.context(format!("{method} {path} as a user")))?;
        let anon = anonymous
            .request(method.clone(), &path, Some(&body))
            .await?;
        anon.expect_error(401, "M_MISSING_TOKEN")
            .map_err(|e| e.context(format!("{method} {path} without a token")))?;
        let bad = stranger.request(method.clone(), &path, Some(&body)).await?;
        bad.expect_error(401, "M_UNKNOWN_TOKEN")
            .map_err(|e| e.context(format!("{method} {path} with a bad token")))?;
    }
    // Nothing those requests asked for happened.
    let get = |path: String| {
        let admin = admin.clone();
        async move {
            admin
                .request(Method::GET, &format!("/_synapse/admin{path}"), None)
                .await
        }
    };
    get(format!("/v2/users/{}", enc("@victim:localhost")))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let alice_record = get(format!("/v2/users/{}", enc(&alice.user_id)))
        .await?
        .ok()?;
    assert_eq!(
        (
            alice_record["admin"].clone(),
            alice_record["deactivated"].clone()
        ),
        (json!(false), json!(false))
    );
    alice.get("/account/whoami").await?.ok()?;
    assert_eq!(
        get(format!("/v1/rooms/{}/block", enc(&room))).await?.ok()?,
        json!({"block": false})
    );
    assert_eq!(
        get("/v1/registration_tokens".into()).await?.ok()?,
        json!({"registration_tokens": []})
    );
    Ok(())
}

#[tokio::test]
async fn the_operator_token_works_on_the_admin_api_only() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut operator = server.client();
    operator.token = Some(server.operator_token()?);
    let version = operator
        .request(Method::GET, "/_synapse/admin/v1/server_version", None)
        .await?
        .ok()?;
    assert!(
        version["server_version"]
            .as_str()
            .unwrap()
            .starts_with("myelin "),
        "{version}"
    );
    operator
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    Ok(())
}

#[tokio::test]
async fn a_restart_replaces_the_operator_token() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let old = server.operator_token()?;
    server.restart().await?;
    let new = server.operator_token()?;
    assert_ne!(old, new);
    let mut client: Client = server.client();
    client.token = Some(old);
    client
        .request(Method::GET, "/_synapse/admin/v1/server_version", None)
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    client.token = Some(new);
    client
        .request(Method::GET, "/_synapse/admin/v1/server_version", None)
        .await?
        .ok()?;
    Ok(())
}
