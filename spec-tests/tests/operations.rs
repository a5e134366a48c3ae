//! The operator's toolbox: `/health`, the Prometheus metrics listener, graceful shutdown
//! and the `config` commands.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use reqwest::Method;
use serde_json::json;
use spec_tests::{bodies, free_port, http_client, next_batch, timeline, TestServer};

/// `/health` answers without a token.
#[tokio::test]
async fn health_answers_ok_without_a_token() -> Result<()> {
    let server = TestServer::start().await?;
    let resp = server
        .client()
        .request(Method::GET, "/health", None)
        .await?;
    assert_eq!((resp.status, resp.text.as_str()), (200, "OK"));
    Ok(())
}

/// Scrapes a metrics listener.
async fn scrape(addr: &str) -> Result<String> {
    let resp = http_client(Duration::from_secs(10))
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "metrics answered {}", resp.status());
    Ok(resp.text().await?)
}

/// The value of the first sample whose line starts with `name` and contains every one of
/// `labels` (e.g. `method="PUT"`); `None` when there is none.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// With `MYELIN_METRICS_LISTEN`, `/metrics` counts requests by route template, event
/// appends and flushes, and shows the gauges.
#[tokio::test]
async fn metrics_count_a_send_and_a_sync() -> Result<()> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_METRICS_LISTEN", addr.as_str()),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    let before = scrape(&addr).await?;
    let send_route = [r#"method="PUT""#, "/send/", r#"status="200""#];
    assert_eq!(
        sample(&before, "myelin_http_requests_total", &send_route),
        None,
        "no send yet:\n{before}"
    );
    let appended_before = sample(&before, "myelin_events_appended_total", &[])
        .ok_or_else(|| anyhow!("no myelin_events_appended_total in:\n{before}"))?;

    alice.say(&room, "counted").await?;
    alice.sync("timeout=0").await?;

    let after = scrape(&addr).await?;
    assert_eq!(
        sample(&after, "myelin_http_requests_total", &send_route),
        Some(1.0),
        "{after}"
    );
    let sync_route = [r#"method="GET""#, r#"route="/_matrix/client/v3/sync""#];
    assert_eq!(
        sample(&after, "myelin_http_requests_total", &sync_route),
        Some(1.0),
        "{after}"
    );
    assert!(
        !after.contains(&room) && !after.contains(&room.replace('!', "%21")),
        "raw paths (room ids) must not become labels:\n{after}"
    );
    assert_eq!(
        sample(&after, "myelin_events_appended_total", &[]),
        Some(appended_before + 1.0),
        "{after}"
    );
    let flushes = sample(&after, "myelin_storage_flush_duration_seconds_count", &[])
        .ok_or_else(|| anyhow!("no flush histogram in:\n{after}"))?;
    assert!(flushes >= 1.0, "{after}");
    assert!(
        sample(
            &after,
            "myelin_http_request_duration_seconds_count",
            &send_route[..2]
        )
        .is_some_and(|n| n == 1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "myelin_sync_parked", &[]), Some(0.0));
    assert_eq!(sample(&after, "myelin_push_queue_length", &[]), Some(0.0));
    Ok(())
}

/// Without `metrics.listen` there is no metrics listener, and the client listener has no
/// `/metrics`.
#[tokio::test]
async fn metrics_are_off_by_default() -> Result<()> {
    let port = free_port()?;
    let server = TestServer::start().await?;
    let refused = http_client(Duration::from_secs(5))
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await;
    assert!(refused.is_err(), "something answers on {port}: {refused:?}");
    server
        .client()
        .request(Method::GET, "/metrics", None)
        .await?
        .expect_error(404, "M_UNRECOGNIZED")?;
    Ok(())
}

/// SIGTERM with a long-poll parked: the sync answers, the server exits 0 within 10 s, and
/// what was acknowledged before is there after a restart.
#[tokio::test]
async fn sigterm_answers_parked_syncs_and_exits_cleanly() -> Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({})).await?;
    alice.say(&room, "acknowledged before the signal").await?;
    let since = next_batch(&alice.sync("timeout=0").await?);
    let poller = alice.clone();
    let long_poll = tokio::spawn(async move {
        poller
            .get(&format!("/sync?since={since}&timeout=60000"))
            .await
    });
    server.wait_parked(&alice.user_id, 1).await?;

    let (status, took) = server.terminate().await?;
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let answered = tokio::time::timeout(Duration::from_secs(5), long_poll)
        .await
        .context("the long-poll did not end")??
        .context("the long-poll got no response")?;
    assert_eq!(answered.status, 200, "{}", answered.text);

    server.start_again().await?;
    let sync = alice.sync("timeout=0").await?;
    assert!(
        bodies(&timeline(&sync, &room)).contains(&"acknowledged before the signal".to_owned()),
        "{sync}"
    );
    Ok(())
}

/// `myelin config generate` prints TOML that `config check` accepts as it is.
#[tokio::test]
async fn generated_config_checks_ok() -> Result<()> {
    let server = TestServer::start().await?;
    let generated = server.run_cli(&["config", "generate"])?;
    assert!(generated.status.success());
    let path = server.data_dir().join("generated.toml");
    std::fs::write(&path, &generated.stdout)?;
    let checked = server.run_cli(&["config", "check", "--config", path.to_str().unwrap()])?;
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).starts_with("configuration OK"));
    Ok(())
}

/// `myelin config check` on a bad file exits 1 and names the problem.
#[tokio::test]
async fn config_check_rejects_a_bad_file() -> Result<()> {
    let server = TestServer::start().await?;
    let path = server.data_dir().join("bad.toml");
    std::fs::write(&path, "[registration]\nmode = \"sometimes\"\n")?;
    let checked = server.run_cli(&["config", "check", "--config", path.to_str().unwrap()])?;
    assert_eq!(checked.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        stderr.contains("configuration error") && stderr.contains("sometimes"),
        "{stderr}"
    );
    std::fs::write(&path, "[rtc]\nlivekit_urll = \"ws://x\"\n")?;
    let checked = server.run_cli(&["config", "check", "--config", path.to_str().unwrap()])?;
    assert_eq!(checked.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains("livekit_urll"),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}
