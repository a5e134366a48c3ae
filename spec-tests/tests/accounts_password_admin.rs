//! Password changes with and without `logout_devices`, and the admin flag (admin CLI and
//! shared-secret registration).

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{shared_secret_mac, Client, TestServer};

/// Changes alice's password with user-interactive auth; `extra` is merged into the body.
async fn change_password(c: &Client, old: &str, new: &str, extra: Value) -> anyhow::Result<()> {
    let mut body = json!({"new_password": new});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let first = c.post("/account/password", body.clone()).await?;
    anyhow::ensure!(first.status == 401, "{}", first.text);
    body["auth"] = json!({"type": "m.login.password", "session": first.body["session"],
                          "identifier": {"type": "m.id.user", "user": "alice"}, "password": old});
    c.post("/account/password", body).await?.ok()?;
    Ok(())
}

async fn device_ids(c: &Client) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = c.get("/devices").await?.ok()?["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["device_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn password_change_keeps_or_logs_out_other_devices() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let mut phone = server.client();
    phone.login("alice", "alice-password").await?;
    let mut tablet = server.client();
    tablet.login("alice", "alice-password").await?;
    let all = device_ids(&alice).await?;
    assert_eq!(all.len(), 3);

    // logout_devices: false keeps every session
    change_password(
        &alice,
        "alice-password",
        "second-password",
        json!({"logout_devices": false}),
    )
    .await?;
    phone.get("/account/whoami").await?.ok()?;
    tablet.get("/account/whoami").await?.ok()?;
    alice.get("/account/whoami").await?.ok()?;
    assert_eq!(device_ids(&alice).await?, all);
    let mut check = server.client();
    check
        .login_response("alice", "alice-password")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    check.login("alice", "second-password").await?;

    // the default logs out (and removes) every other device, and keeps the caller's
    change_password(&phone, "second-password", "third-password", json!({})).await?;
    phone.get("/account/whoami").await?.ok()?;
    for other in [&alice, &tablet, &check] {
        other
            .get("/account/whoami")
            .await?
            .expect_error(401, "M_UNKNOWN_TOKEN")?;
    }
    assert_eq!(device_ids(&phone).await?, [phone.device_id.clone()]);
    let mut again = server.client();
    again.login("alice", "third-password").await?;
    Ok(())
}

#[tokio::test]
async fn the_admin_flag_is_bound_by_the_shared_secret_and_set_by_the_cli() -> anyhow::Result<()> {
    let server =
        TestServer::start_with(&[("MYELIN_REGISTRATION_SHARED_SECRET", "hunter2")]).await?;
    let anon = server.client();
    let path = "/_synapse/admin/v1/register";
    let nonce = || async {
        anyhow::Ok(
            anon.request(Method::GET, path, None).await?.ok()?["nonce"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    // the admin flag is part of the MAC: it cannot be flipped either way
    for (claimed, signed) in [(true, false), (false, true)] {
        let n = nonce().await?;
        anon.request(
            Method::POST,
            path,
            Some(
                &json!({"nonce": n, "username": "ops", "password": "ops-password",
                         "admin": claimed,
                         "mac": shared_secret_mac("hunter2", &n, "ops", "ops-password", signed)}),
            ),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    }
    // nothing was created by those
    anon.get("/register/available?username=ops").await?.ok()?;
    let n = nonce().await?;
    let ok = anon
        .request(
            Method::POST,
            path,
            Some(
                &json!({"nonce": n, "username": "ops", "password": "ops-password",
                         "admin": true,
                         "mac": shared_secret_mac("hunter2", &n, "ops", "ops-password", true)}),
            ),
        )
        .await?
        .ok()?;
    assert_eq!(ok["user_id"], "@ops:localhost");

    // the CLI (against the running server) says which accounts it made administrators
    let out = server.run_cli(&[
        "user",
        "create",
        "root",
        "--admin",
        "--password",
        "root-password",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "created @root:localhost (admin)"
    );
    let out = server.run_cli(&["user", "create", "plain", "--password", "plain-password"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "created @plain:localhost"
    );
    let mut root = server.client();
    root.login("root", "root-password").await?;
    let mut plain = server.client();
    plain.login("plain", "plain-password").await?;
    Ok(())
}
