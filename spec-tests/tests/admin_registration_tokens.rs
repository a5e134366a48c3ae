//! Registration tokens made with the admin API, and registration honouring them
//! (`registration.mode = "token"`): uses, expiry, listing, update and deletion.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{Client, Response, TestServer};

async fn token_server() -> anyhow::Result<(TestServer, Client)> {
    let server = TestServer::start_with(&[("MYELIN_REGISTRATION_MODE", "token")]).await?;
    let admin = server.admin("admin").await?;
    Ok((server, admin))
}

async fn admin_call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Response> {
    c.request(
        method,
        &format!("/_synapse/admin/v1/registration_tokens{path}"),
        body.as_ref(),
    )
    .await
}

/// Registers `name` through the `m.login.registration_token` stage; the final answer.
async fn register_with_token(
    server: &TestServer,
    name: &str,
    token: &str,
) -> anyhow::Result<Response> {
    let client = server.client();
    let body = json!({"username": name, "password": "pw"});
    let first = client.post("/register", body.clone()).await?;
    assert_eq!(first.status, 401, "{}", first.text);
    assert_eq!(
        first.body["flows"],
        json!([{"stages": ["m.login.registration_token"]}])
    );
    let mut second = body;
    second["auth"] = json!({"type": "m.login.registration_token", "token": token,
                            "session": first.body["session"]});
    client.post("/register", second).await
}

async fn validity(server: &TestServer, token: &str) -> anyhow::Result<bool> {
    let body = server
        .client()
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token={token}"
            ),
            None,
        )
        .await?
        .ok()?;
    Ok(body["valid"].as_bool().unwrap())
}

async fn name_is_free(server: &TestServer, name: &str) -> anyhow::Result<bool> {
    Ok(server
        .client()
        .get(&format!("/register/available?username={name}"))
        .await?
        .status
        == 200)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_token_allowed_once_registers_exactly_one_account() -> anyhow::Result<()> {
    let (server, admin) = token_server().await?;
    let created = admin_call(
        &admin,
        Method::POST,
        "/new",
        Some(json!({"token": "once", "uses_allowed": 1})),
    )
    .await?
    .ok()?;
    assert_eq!(
        created,
        json!({"token": "once", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null})
    );
    assert!(validity(&server, "once").await?);
    let alice = register_with_token(&server, "alice", "once").await?.ok()?;
    assert_eq!(alice["user_id"], "@alice:localhost");
    assert_eq!(
        admin_call(&admin, Method::GET, "/once", None).await?.ok()?["completed"],
        1
    );
    assert!(!validity(&server, "once").await?);

    let refused = register_with_token(&server, "bob", "once").await?;
    assert_eq!(
        (refused.status, refused.errcode()),
        (401, "M_FORBIDDEN"),
        "{}",
        refused.text
    );
    assert!(
        name_is_free(&server, "bob").await?,
        "the refusal created no account"
    );
    assert_eq!(
        admin_call(&admin, Method::GET, "/once", None).await?.ok()?["completed"],
        1
    );
    Ok(())
}

#[tokio::test]
async fn registration_without_a_valid_token_is_refused() -> anyhow::Result<()> {
    let (server, _admin) = token_server().await?;
    let refused = register_with_token(&server, "bob", "made-up").await?;
    assert_eq!(
        (refused.status, refused.errcode()),
        (401, "M_FORBIDDEN"),
        "{}",
        refused.text
    );
    let dummy = server
        .client()
        .post(
            "/register",
            json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy"}}),
        )
        .await?;
    assert_eq!(
        (dummy.status, dummy.errcode()),
        (401, "M_UNRECOGNIZED"),
        "{}",
        dummy.text
    );
    assert!(name_is_free(&server, "bob").await?);
    assert!(!validity(&server, "made-up").await?);
    Ok(())
}

#[tokio::test]
async fn an_expired_token_is_refused() -> anyhow::Result<()> {
    let (server, admin) = token_server().await?;
    admin_call(
        &admin,
        Method::POST,
        "/new",
        Some(json!({"token": "past", "expiry_time": 1000})),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    let expiry = now_ms() + 1_000;
    let created = admin_call(
        &admin,
        Method::POST,
        "/new",
        Some(json!({"token": "brief", "expiry_time": expiry})),
    )
    .await?
    .ok()?;
    assert_eq!(created["expiry_time"], expiry);
    // Wait (bounded) until the server's clock passes the expiry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while validity(&server, "brief").await? {
        anyhow::ensure!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = register_with_token(&server, "late", "brief").await?;
    assert_eq!(
        (refused.status, refused.errcode()),
        (401, "M_FORBIDDEN"),
        "{}",
        refused.text
    );
    assert!(name_is_free(&server, "late").await?);
    let invalid = admin_call(&admin, Method::GET, "?valid=false", None)
        .await?
        .ok()?;
    assert_eq!(invalid["registration_tokens"][0]["token"], "brief");
    Ok(())
}

#[tokio::test]
async fn tokens_are_listed_updated_and_deleted() -> anyhow::Result<()> {
    let (server, admin) = token_server().await?;
    let generated = admin_call(&admin, Method::POST, "/new", Some(json!({"length": 8})))
        .await?
        .ok()?;
    let generated = generated["token"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 8);
    admin_call(
        &admin,
        Method::POST,
        "/new",
        Some(json!({"token": "named"})),
    )
    .await?
    .ok()?;
    for bad in [
        json!({"token": "no spaces"}),
        json!({"token": "named"}),
        json!({"uses_allowed": -1}),
        json!({"length": 65}),
    ] {
        admin_call(&admin, Method::POST, "/new", Some(bad))
            .await?
            .expect_error(400, "M_INVALID_PARAM")?;
    }
    let list = |query: &'static str| {
        let admin = admin.clone();
        async move {
            let body = admin_call(&admin, Method::GET, query, None).await?.ok()?;
            let mut tokens: Vec<String> = body["registration_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["token"].as_str().unwrap().to_owned())
                .collect();
            tokens.sort();
            anyhow::Ok(tokens)
        }
    };
    let mut both = vec![generated.clone(), "named".to_owned()];
    both.sort();
    assert_eq!(list("").await?, both);
    assert_eq!(list("?valid=false").await?, Vec::<String>::new());

    let updated = admin_call(
        &admin,
        Method::PUT,
        "/named",
        Some(json!({"uses_allowed": 0})),
    )
    .await?
    .ok()?;
    assert_eq!(updated["uses_allowed"], 0);
    assert_eq!(list("?valid=false").await?, ["named"]);
    assert!(!validity(&server, "named").await?);
    admin_call(
        &admin,
        Method::PUT,
        "/named",
        Some(json!({"uses_allowed": null})),
    )
    .await?
    .ok()?;
    assert!(validity(&server, "named").await?);

    admin_call(&admin, Method::DELETE, "/named", None)
        .await?
        .ok()?;
    admin_call(&admin, Method::GET, "/named", None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    admin_call(&admin, Method::DELETE, "/named", None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    admin_call(
        &admin,
        Method::PUT,
        "/named",
        Some(json!({"uses_allowed": 3})),
    )
    .await?
    .expect_error(404, "M_NOT_FOUND")?;
    assert!(!validity(&server, "named").await?);
    assert_eq!(list("").await?, [generated]);
    Ok(())
}
