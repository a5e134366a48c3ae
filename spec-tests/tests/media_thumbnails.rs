//! Media thumbnails of JPEG, GIF and WebP images, the per-size thumbnail cache, and the
//! legacy `/_matrix/media/{v3,r0}` thumbnail, config, upload and download paths.

use std::{io::Cursor, path::Path};

use image::{DynamicImage, ImageFormat};
use serde_json::Value;
use spec_tests::{Client, TestServer};

/// A `w`×`h` image in `format`; `seed` changes the pixels.
fn encode(w: u32, h: u32, seed: u8, format: ImageFormat) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([
            (x as u8).wrapping_mul(3).wrapping_add(seed),
            (y as u8).wrapping_mul(5),
            seed,
            255,
        ])
    });
    let img = match format {
        // JPEG has no alpha channel
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8()),
        _ => DynamicImage::ImageRgba8(img),
    };
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

/// Uploads through `path` (an upload endpoint); returns `server/media_id`.
async fn upload(c: &Client, path: &str, ctype: &str, data: Vec<u8>) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", c.base))
        .bearer_auth(c.token.as_deref().unwrap_or_default())
        .header("content-type", ctype)
        .body(data)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "upload {path}: {}", r.status());
    let body: Value = r.json().await?;
    Ok(body["content_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("mxc://"))
        .ok_or_else(|| anyhow::anyhow!("no content_uri: {body}"))?
        .to_owned())
}

/// A GET with or without the client's token: status, content type, bytes.
async fn get(c: &Client, path: &str, auth: bool) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut req = reqwest::Client::new().get(format!("{}{path}", c.base));
    if auth {
        req = req.bearer_auth(c.token.as_deref().unwrap_or_default());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, ctype, r.bytes().await?.to_vec()))
}

/// An authenticated thumbnail: checks it is an image of the content type it claims and
/// of the given size; returns its bytes.
async fn thumbnail(
    c: &Client,
    media: &str,
    query: &str,
    want: (u32, u32),
) -> anyhow::Result<Vec<u8>> {
    let (status, ctype, bytes) = get(
        c,
        &format!("/_matrix/client/v1/media/thumbnail/{media}?{query}"),
        true,
    )
    .await?;
    anyhow::ensure!(
        status == 200,
        "thumbnail {query}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    let format = image::guess_format(&bytes)?;
    let named = match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        other => anyhow::bail!("unexpected thumbnail format {other:?}"),
    };
    assert_eq!(ctype, named, "content type of the thumbnail ({query})");
    let img = image::load_from_memory(&bytes)?;
    assert_eq!((img.width(), img.height()), want, "{query}");
    Ok(bytes)
}

#[tokio::test]
async fn jpeg_gif_and_webp_thumbnails() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    for (format, ctype) in [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::WebP, "image/webp"),
    ] {
        let media = upload(
            &alice,
            "/_matrix/media/v3/upload",
            ctype,
            encode(120, 60, 7, format),
        )
        .await?;
        thumbnail(&bob, &media, "width=40&height=40&method=scale", (96, 48)).await?;
        thumbnail(&bob, &media, "width=40&height=40&method=crop", (96, 96)).await?;
        // a box larger than the image: the original is served as it is
        let (status, got_type, bytes) = get(
            &bob,
            &format!(
                "/_matrix/client/v1/media/thumbnail/{media}?width=400&height=400&method=scale"
            ),
            true,
        )
        .await?;
        assert_eq!(status, 200, "{ctype}");
        assert_eq!(got_type, ctype);
        assert_eq!(bytes, encode(120, 60, 7, format), "{ctype}");
    }
    // an image that does not decode gets an error, not a crash
    let broken = upload(
        &alice,
        "/_matrix/media/v3/upload",
        "image/webp",
        b"RIFF\x10\x00\x00\x00WEBPnot really".to_vec(),
    )
    .await?;
    let (status, _, _) = get(
        &bob,
        &format!("/_matrix/client/v1/media/thumbnail/{broken}?width=10&height=10"),
        true,
    )
    .await?;
    assert_eq!(status, 400);
    Ok(())
}

/// The stored file of the original upload: the file under `<data>/media` whose bytes are
/// `data` (files are content-addressed).
fn stored_original(root: &Path, data: &[u8]) -> Option<std::path::PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read(&path).ok().as_deref() == Some(data) {
                return Some(path);
            }
        }
    }
    None
}

#[tokio::test]
async fn thumbnails_are_cached_per_size() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let original = encode(100, 100, 1, ImageFormat::Png);
    let media = upload(
        &alice,
        "/_matrix/media/v3/upload",
        "image/png",
        original.clone(),
    )
    .await?;
    let small = thumbnail(&alice, &media, "width=32&height=32&method=crop", (32, 32)).await?;
    // Replace the stored original with other pixels: a thumbnail generated again would
    // differ, a cached one does not.
    let media_dir = server.data_dir().join("data").join("media");
    let stored = stored_original(&media_dir, &original).expect("the original on disk");
    std::fs::write(&stored, encode(100, 100, 200, ImageFormat::Png))?;
    let again = thumbnail(&alice, &media, "width=32&height=32&method=crop", (32, 32)).await?;
    assert!(again == small, "the same size was generated again");
    // another size (or method) is a thumbnail of its own
    let larger = thumbnail(&alice, &media, "width=48&height=48&method=crop", (96, 96)).await?;
    assert_ne!(larger, small);
    let scaled = thumbnail(&alice, &media, "width=32&height=32&method=scale", (32, 32)).await?;
    assert_ne!(scaled, small, "crop and scale share a cache entry");
    Ok(())
}

#[tokio::test]
async fn legacy_media_paths() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_MEDIA_MAX_UPLOAD_SIZE", "300000"),
        // Media from before the cut-off stays on the unauthenticated legacy paths; a cut-off
        // in the future makes this test's uploads such media.
        (
            "MYELIN_MEDIA_UNAUTHENTICATED_MEDIA_BEFORE_MS",
            "4102444800000",
        ),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let png = encode(64, 32, 3, ImageFormat::Png);
    for version in ["v3", "r0"] {
        // config needs a token, like the authenticated endpoint
        let (status, _, _) =
            get(&alice, &format!("/_matrix/media/{version}/config"), false).await?;
        assert_eq!(status, 401, "{version}/config without a token");
        let (status, _, body) =
            get(&alice, &format!("/_matrix/media/{version}/config"), true).await?;
        assert_eq!(status, 200);
        let cfg: Value = serde_json::from_slice(&body)?;
        assert_eq!(cfg["m.upload.size"], 300_000, "{version}: {cfg}");

        let media = upload(
            &alice,
            &format!("/_matrix/media/{version}/upload"),
            "image/png",
            png.clone(),
        )
        .await?;
        let (status, ctype, bytes) = get(
            &alice,
            &format!("/_matrix/media/{version}/download/{media}"),
            false,
        )
        .await?;
        assert_eq!((status, ctype.as_str()), (200, "image/png"), "{version}");
        assert_eq!(bytes, png);
        // the legacy thumbnail path, without a token
        let (status, ctype, bytes) = get(
            &alice,
            &format!("/_matrix/media/{version}/thumbnail/{media}?width=16&height=16&method=scale"),
            false,
        )
        .await?;
        assert_eq!(status, 200, "{version} thumbnail");
        assert!(ctype.starts_with("image/"), "{ctype}");
        let img = image::load_from_memory(&bytes)?;
        assert_eq!((img.width(), img.height()), (32, 16), "{version}");
        // and it is the same thumbnail the authenticated endpoint serves
        let authed = thumbnail(&alice, &media, "width=16&height=16&method=scale", (32, 16)).await?;
        assert_eq!(authed, bytes);
        // missing or bad parameters
        let (status, _, body) = get(
            &alice,
            &format!("/_matrix/media/{version}/thumbnail/{media}?width=16"),
            false,
        )
        .await?;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        let err: Value = serde_json::from_slice(&body)?;
        assert_eq!(err["errcode"], "M_MISSING_PARAM");
        let (status, _, body) = get(
            &alice,
            &format!(
                "/_matrix/media/{version}/thumbnail/{media}?width=16&height=16&method=stretch"
            ),
            false,
        )
        .await?;
        assert_eq!(status, 400);
        let err: Value = serde_json::from_slice(&body)?;
        assert_eq!(err["errcode"], "M_INVALID_PARAM");
    }
    Ok(())
}
