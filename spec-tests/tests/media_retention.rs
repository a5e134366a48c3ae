//! Media retention by the admin API: `POST /_synapse/admin/v1/media/delete?before_ts=`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{http_client, Client, TestServer};

async fn upload(client: &Client, body: &[u8]) -> Result<String> {
    let resp = http_client(Duration::from_secs(30))
        .post(format!("{}/_matrix/media/v3/upload", client.base))
        .bearer_auth(client.token.as_deref().unwrap_or_default())
        .header("content-type", "text/plain")
        .body(body.to_vec())
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "upload: {}", resp.status());
    let uri = resp.json::<Value>().await?["content_uri"]
        .as_str()
        .context("content_uri")?
        .to_owned();
    Ok(uri.strip_prefix("mxc://").context("mxc")?.to_owned())
}

async fn download_status(client: &Client, path: &str) -> Result<u16> {
    let resp = http_client(Duration::from_secs(30))
        .get(format!(
            "{}/_matrix/client/v1/media/download/{path}",
            client.base
        ))
        .bearer_auth(client.token.as_deref().unwrap_or_default())
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// Media created before `before_ts` is deleted (404 afterwards); newer media stays; only
/// admins may ask.
#[tokio::test]
async fn admin_deletes_media_created_before_a_time() -> Result<()> {
    let server = TestServer::start().await?;
    // The admin who takes the backup / deletes media.
    let root = server.admin("root").await?;
    let alice = server.register("alice").await?;
    let path = upload(&alice, b"retained for now").await?;
    let media_id = path.rsplit('/').next().context("media id")?.to_owned();
    assert_eq!(download_status(&alice, &path).await?, 200);

    alice
        .request(
            Method::POST,
            "/_synapse/admin/v1/media/delete?before_ts=99999999999999",
            Some(&json!({})),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    root.request(
        Method::POST,
        "/_synapse/admin/v1/media/delete",
        Some(&json!({})),
    )
    .await?
    .expect_error(400, "M_MISSING_PARAM")?;

    // Before the upload: nothing goes.
    let none = root
        .request(
            Method::POST,
            "/_synapse/admin/v1/media/delete?before_ts=1",
            Some(&json!({})),
        )
        .await?
        .ok()?;
    assert_eq!(none, json!({"total": 0, "deleted_media": []}));
    assert_eq!(download_status(&alice, &path).await?, 200);

    // A time in the future: the upload goes.
    let future = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() + 60_000;
    let deleted = root
        .request(
            Method::POST,
            &format!("/_synapse/admin/v1/media/delete?before_ts={future}"),
            Some(&json!({})),
        )
        .await?
        .ok()?;
    assert_eq!(deleted, json!({"total": 1, "deleted_media": [media_id]}));
    assert_eq!(download_status(&alice, &path).await?, 404);
    Ok(())
}
