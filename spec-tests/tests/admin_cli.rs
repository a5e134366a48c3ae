//! `myelin user …` against the running server (its operator token from the data dir):
//! the first administrator is made without stopping it, even with registration closed.

use reqwest::Method;
use spec_tests::TestServer;

/// Runs `myelin ARGS`, failing unless it succeeds; answers its standard output.
fn cli(server: &TestServer, args: &[&str]) -> anyhow::Result<String> {
    let out = server.run_cli(args)?;
    anyhow::ensure!(
        out.status.success(),
        "myelin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn user_create_makes_the_first_admin_on_a_running_closed_server() -> anyhow::Result<()> {
    // Default registration mode: closed.
    let server = TestServer::start_with(&[]).await?;
    let out = cli(
        &server,
        &["user", "create", "root", "--admin", "--password", "root-pw"],
    )?;
    assert_eq!(out.trim(), "created @root:localhost (admin)");
    let mut root = server.client();
    root.login("root", "root-pw").await?;
    root.request(Method::GET, "/_synapse/admin/v2/users", None)
        .await?
        .ok()?;
    let again = server.run_cli(&["user", "create", "root", "--password", "x"])?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    Ok(())
}

#[tokio::test]
async fn user_passwd_list_and_deactivate_work_on_the_running_server() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[]).await?;
    cli(
        &server,
        &["user", "create", "root", "--admin", "--password", "root-pw"],
    )?;
    cli(
        &server,
        &["user", "create", "plain", "--password", "plain-pw"],
    )?;
    let mut plain = server.client();
    plain.login("plain", "plain-pw").await?;

    let out = cli(
        &server,
        &["user", "passwd", "@plain:localhost", "--password", "new-pw"],
    )?;
    assert_eq!(out.trim(), "password of @plain:localhost changed");
    plain
        .get("/account/whoami")
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    server
        .client()
        .login_response("plain", "plain-pw")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    server.client().login("plain", "new-pw").await?;

    let list = cli(&server, &["user", "list"])?;
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        ["@plain:localhost", "@root:localhost (admin)"]
    );
    let out = cli(&server, &["user", "deactivate", "plain"])?;
    assert_eq!(out.trim(), "deactivated @plain:localhost");
    server
        .client()
        .login_response("plain", "new-pw")
        .await?
        .expect_error(403, "M_USER_DEACTIVATED")?;
    assert_eq!(
        cli(&server, &["user", "list"])?.trim(),
        "@root:localhost (admin)"
    );
    let everyone = cli(&server, &["user", "list", "--deactivated"])?;
    assert_eq!(
        everyone.lines().collect::<Vec<_>>(),
        ["@plain:localhost (deactivated)", "@root:localhost (admin)"]
    );
    Ok(())
}

#[tokio::test]
async fn the_cli_says_so_when_no_server_is_running() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(&[]).await?;
    server.stop().await?;
    let out = server.run_cli(&["user", "create", "root", "--password", "pw"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is it running?"), "{stderr}");
    Ok(())
}
