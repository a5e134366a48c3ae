//! Rate limits: a login brute force, a registration flood and a send flood get 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms` (and `Retry-After`) once the burst is spent,
//! per address or per user as configured, and a failed login of an unknown user costs
//! what one of a real user does (no user enumeration by timing).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spec_tests::{Client, TestServer};

/// Limits on, every action effectively unlimited except those `tight` sets.
async fn server_with(tight: &[(&str, &str)]) -> anyhow::Result<TestServer> {
    let mut env = vec![
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_REGISTRATION_ALLOW_GUESTS", "true"),
        ("MYELIN_RATE_LIMITS_ENABLED", "true"),
    ];
    for action in [
        "LOGIN",
        "LOGIN_ACCOUNT",
        "REGISTER",
        "SEND",
        "CREATE_ROOM",
        "UPLOAD",
        "THUMBNAIL",
    ] {
        let key: &'static str = Box::leak(format!("MYELIN_RATE_LIMITS_{action}_PER_SECOND").into());
        if !tight.iter().any(|(k, _)| *k == key) {
            env.push((key, "0"));
        }
    }
    env.extend_from_slice(tight);
    TestServer::start_with(&env).await
}

fn password_login(user: &str, password: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    })
}

/// POSTs `body` to `path` and returns status, `Retry-After` header and JSON body.
async fn post_raw(
    server: &TestServer,
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Option<String>, Value)> {
    let resp = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3{path}", server.base))
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    ))
}

/// Asserts a 429 `M_LIMIT_EXCEEDED` with a positive `retry_after_ms` and a `Retry-After`
/// header in whole seconds that covers it.
fn assert_limited(what: &str, status: u16, retry_after: Option<&str>, body: &Value) {
    assert_eq!(status, 429, "{what}: {body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
    let ms = body["retry_after_ms"].as_u64().unwrap_or(0);
    assert!(ms > 0, "{what}: retry_after_ms missing: {body}");
    let secs: u64 = retry_after
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no Retry-After header"));
    assert!(secs * 1000 >= ms, "{what}: Retry-After {secs} s < {ms} ms");
}

#[tokio::test]
async fn login_brute_force_is_limited_per_address_and_per_account() -> anyhow::Result<()> {
    let server = server_with(&[
        ("MYELIN_RATE_LIMITS_LOGIN_PER_SECOND", "0.01"),
        ("MYELIN_RATE_LIMITS_LOGIN_BURST", "5"),
    ])
    .await?;
    server.register("alice").await?;
    for i in 0..5 {
        let (status, _, body) = post_raw(
            &server,
            "/login",
            &password_login("alice", &format!("guess{i}")),
        )
        .await?;
        assert_eq!(status, 403, "attempt {i} within the burst: {body}");
    }
    let (status, retry_after, body) =
        post_raw(&server, "/login", &password_login("alice", "guess5")).await?;
    assert_limited("6th wrong password", status, retry_after.as_deref(), &body);
    // The right password does not get through either: the attacker learns nothing more.
    let (status, retry_after, body) = post_raw(
        &server,
        "/login",
        &password_login("alice", "alice-password"),
    )
    .await?;
    assert_limited(
        "right password after the burst",
        status,
        retry_after.as_deref(),
        &body,
    );
    // Other endpoints are not affected.
    let versions = reqwest::get(format!("{}/_matrix/client/versions", server.base)).await?;
    assert_eq!(versions.status(), 200);

    // Per account: attempts at one account from anywhere share a bucket.
    let server = server_with(&[
        ("MYELIN_RATE_LIMITS_LOGIN_ACCOUNT_PER_SECOND", "0.01"),
        ("MYELIN_RATE_LIMITS_LOGIN_ACCOUNT_BURST", "3"),
    ])
    .await?;
    server.register("alice").await?;
    server.register("bob").await?;
    for i in 0..3 {
        let (status, _, body) = post_raw(
            &server,
            "/login",
            &password_login("alice", &format!("guess{i}")),
        )
        .await?;
        assert_eq!(status, 403, "{body}");
    }
    let (status, retry_after, body) =
        post_raw(&server, "/login", &password_login("alice", "guess3")).await?;
    assert_limited("alice's 4th attempt", status, retry_after.as_deref(), &body);
    let mut bob = server.client();
    bob.login("bob", "bob-password").await?;
    Ok(())
}

#[tokio::test]
async fn registration_flood_is_limited() -> anyhow::Result<()> {
    let server = server_with(&[
        ("MYELIN_RATE_LIMITS_REGISTER_PER_SECOND", "0.01"),
        ("MYELIN_RATE_LIMITS_REGISTER_BURST", "3"),
    ])
    .await?;
    let guest = json!({});
    for i in 0..3 {
        let (status, _, body) = post_raw(&server, "/register?kind=guest", &guest).await?;
        assert_eq!(status, 200, "guest {i}: {body}");
    }
    let (status, retry_after, body) = post_raw(&server, "/register?kind=guest", &guest).await?;
    assert_limited("4th guest", status, retry_after.as_deref(), &body);
    let user = json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let (status, retry_after, body) = post_raw(&server, "/register", &user).await?;
    assert_limited("user registration", status, retry_after.as_deref(), &body);
    Ok(())
}

#[tokio::test]
async fn send_flood_is_limited_per_user() -> anyhow::Result<()> {
    let server = server_with(&[
        ("MYELIN_RATE_LIMITS_SEND_PER_SECOND", "0.01"),
        ("MYELIN_RATE_LIMITS_SEND_BURST", "5"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    for i in 0..5 {
        alice.say(&room, &format!("message {i}")).await?;
    }
    let path = format!(
        "/rooms/{}/send/m.room.message/flood",
        spec_tests::enc(&room)
    );
    let r = alice
        .put(&path, json!({"msgtype": "m.text", "body": "one too many"}))
        .await?;
    r.expect_error(429, "M_LIMIT_EXCEEDED")?;
    assert!(
        r.body["retry_after_ms"].as_u64().unwrap_or(0) > 0,
        "{}",
        r.text
    );
    // Bob's bucket is his own.
    bob.say(&room, "hello").await?;
    Ok(())
}

/// Median of the durations of `n` runs of a failed login.
async fn failed_login_time(server: &TestServer, user: &str) -> anyhow::Result<Duration> {
    let client: Client = server.client();
    let start = Instant::now();
    let r = client
        .post("/login", password_login(user, "wrong password"))
        .await?;
    let took = start.elapsed();
    r.expect_error(403, "M_FORBIDDEN")?;
    Ok(took)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test]
async fn unknown_user_login_fails_as_slowly_as_a_real_one() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    server.register("alice").await?;
    // Warm up (the dummy hash is made on first use).
    failed_login_time(&server, "nobody").await?;
    failed_login_time(&server, "alice").await?;
    let (mut real, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        real.push(failed_login_time(&server, "alice").await?);
        unknown.push(failed_login_time(&server, "nobody").await?);
    }
    let (real, unknown) = (median(real), median(unknown));
    let ratio = real.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (1.0 / 3.0..=3.0).contains(&ratio),
        "a real user's failed login took {real:?}, an unknown user's {unknown:?}"
    );
    Ok(())
}
