//! Media: upload, authenticated download (new media refused on the legacy paths),
//! create + async upload, size limit, thumbnails, safe-serving headers, persistence.

use std::io::Cursor;

use reqwest::Method;
use serde_json::Value;
use spec_tests::{Client, TestServer};

async fn raw(
    c: &Client,
    method: Method,
    path: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
    auth: bool,
) -> anyhow::Result<reqwest::Response> {
    let mut req = spec_tests::http_client(std::time::Duration::from_secs(60))
        .request(method, format!("{}{}", c.base, path))
        .body(body);
    if let Some(t) = ctype {
        req = req.header("content-type", t);
    }
    if auth {
        req = req.bearer_auth(c.token.as_deref().unwrap_or_default());
    }
    Ok(req.send().await?)
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn media_path(uri: &str) -> String {
    uri.strip_prefix("mxc://").unwrap().to_string()
}

#[tokio::test]
async fn upload_download_thumbnail_and_headers() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_MEDIA_MAX_UPLOAD_SIZE", "200000"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let data = b"hello media \x00\x01\x02".to_vec();
    let r = raw(
        &alice,
        Method::POST,
        "/_matrix/media/v3/upload?filename=note.txt",
        Some("text/plain"),
        data.clone(),
        true,
    )
    .await?;
    assert_eq!(r.status(), 200);
    let uri = r.json::<Value>().await?["content_uri"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(uri.starts_with("mxc://localhost/"));
    let path = media_path(&uri);

    // authenticated download: needs a token, byte-exact, safe headers
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{path}"),
        None,
        vec![],
        false,
    )
    .await?;
    assert_eq!(r.status(), 401);
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{path}"),
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(
        h["content-disposition"],
        "inline; filename*=utf-8''note.txt"
    );
    assert!(h["content-security-policy"].to_str()?.contains("sandbox"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await?.to_vec(), data);
    // download with a file name override
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{path}/other.txt"),
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(
        r.headers()["content-disposition"],
        "inline; filename*=utf-8''other.txt"
    );
    assert_eq!(r.bytes().await?.to_vec(), data);
    // new media is not on the legacy unauthenticated paths (see security_media_push.rs
    // for media from before the cut-off)
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/media/v3/download/{path}/other.txt"),
        None,
        vec![],
        false,
    )
    .await?;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await?["errcode"], "M_NOT_FOUND");

    // HTML and SVG are never inline
    let r = raw(
        &alice,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some("text/html"),
        b"<script>alert(1)</script>".to_vec(),
        true,
    )
    .await?;
    let html = media_path(r.json::<Value>().await?["content_uri"].as_str().unwrap());
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{html}"),
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(r.headers()["content-disposition"], "attachment");

    // size limit and config
    let r = raw(
        &alice,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some("application/octet-stream"),
        vec![7u8; 250_000],
        true,
    )
    .await?;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await?["errcode"], "M_TOO_LARGE");
    let cfg = raw(
        &bob,
        Method::GET,
        "/_matrix/client/v1/media/config",
        None,
        vec![],
        true,
    )
    .await?
    .json::<Value>()
    .await?;
    assert_eq!(cfg["m.upload.size"], 200_000);

    // thumbnails (40 snaps up to 96): scale keeps the aspect ratio, crop fills the box
    let r = raw(
        &alice,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some("image/png"),
        png(120, 60),
        true,
    )
    .await?;
    let img = media_path(r.json::<Value>().await?["content_uri"].as_str().unwrap());
    for (method, want) in [("scale", (96, 48)), ("crop", (96, 96))] {
        let r = raw(
            &bob,
            Method::GET,
            &format!("/_matrix/client/v1/media/thumbnail/{img}?width=40&height=40&method={method}"),
            None,
            vec![],
            true,
        )
        .await?;
        assert_eq!(r.status(), 200, "{method}");
        let bytes = r.bytes().await?;
        let decoded = image::load_from_memory(&bytes)?;
        assert_eq!((decoded.width(), decoded.height()), want, "{method}");
    }
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{path}?width=40&height=40"),
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(r.status(), 400, "text has no thumbnail");
    let r = raw(
        &bob,
        Method::GET,
        "/_matrix/client/v1/media/download/localhost/doesnotexist",
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(r.status(), 404);

    // everything survives a restart
    server.restart().await?;
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{path}"),
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(r.bytes().await?.to_vec(), data);
    Ok(())
}

#[tokio::test]
async fn create_then_async_upload() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let created = raw(
        &alice,
        Method::POST,
        "/_matrix/media/v1/create",
        None,
        vec![],
        true,
    )
    .await?
    .json::<Value>()
    .await?;
    let uri = created["content_uri"].as_str().unwrap().to_string();
    assert!(created["unused_expires_at"].as_u64().unwrap() > 0);
    let path = media_path(&uri);
    // not yet uploaded: a short wait answers 504 M_NOT_YET_UPLOADED
    let r = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{path}?timeout_ms=100"),
        None,
        vec![],
        true,
    )
    .await?;
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<Value>().await?["errcode"], "M_NOT_YET_UPLOADED");
    // a waiting download is woken by the upload
    let bob2 = bob.clone();
    let p2 = path.clone();
    let waiter = tokio::spawn(async move {
        raw(
            &bob2,
            Method::GET,
            &format!("/_matrix/client/v1/media/download/{p2}?timeout_ms=10000"),
            None,
            vec![],
            true,
        )
        .await
    });
    // the download is waiting before anything is uploaded
    let media_id = path.rsplit('/').next().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting = server
            .client()
            .request(
                Method::GET,
                &format!("/_myelin/test/media_waiting/{media_id}"),
                None,
            )
            .await?
            .ok()?;
        if waiting["waiting"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && !waiter.is_finished(),
            "the download never waited: {waiting}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // only the creator may upload, and only once
    let r = raw(
        &bob,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{path}"),
        Some("text/plain"),
        b"mine".to_vec(),
        true,
    )
    .await?;
    assert_eq!(r.status(), 403);
    let r = raw(
        &alice,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{path}"),
        Some("text/plain"),
        b"late bytes".to_vec(),
        true,
    )
    .await?;
    assert_eq!(r.status(), 200);
    let got = waiter.await??;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await?.to_vec(), b"late bytes");
    let r = raw(
        &alice,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{path}"),
        Some("text/plain"),
        b"again".to_vec(),
        true,
    )
    .await?;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await?["errcode"],
        "M_CANNOT_OVERWRITE_MEDIA"
    );
    Ok(())
}
