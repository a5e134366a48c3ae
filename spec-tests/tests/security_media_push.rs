//! Resource and network abuse: decompression-bomb thumbnails are refused from the image
//! header, new media is served only as authenticated media, and pushers cannot make the
//! server post to loopback, private or metadata addresses. Nothing here contacts an
//! address outside loopback: refused pusher URLs are refused before any connection.

use std::{io::Cursor, time::Duration};

use serde_json::{json, Value};
use spec_tests::{Client, TestServer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A small PNG that claims to be `w`×`h` 8-bit RGBA: decoding it would allocate
/// `w * h * 4` bytes before finding that the pixel data is missing.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // an empty zlib stream: the rows are "truncated"
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .unwrap_or_default();
    out.into_inner()
}

async fn get(c: &Client, path: &str, auth: bool) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new().get(format!("{}{path}", c.base));
    if auth {
        req = req.bearer_auth(c.token.as_deref().unwrap_or_default());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn upload(c: &Client, ctype: &str, data: Vec<u8>) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", c.base))
        .bearer_auth(c.token.as_deref().unwrap_or_default())
        .header("content-type", ctype)
        .body(data)
        .send()
        .await?;
    let body: Value = r.json().await?;
    let uri = body["content_uri"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no content_uri: {body}"))?;
    Ok(uri.trim_start_matches("mxc://").to_owned())
}

#[tokio::test]
async fn thumbnail_bombs_are_refused_from_the_header() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bomb = png_bomb(11_000, 11_000);
    assert!(bomb.len() < 100, "the bomb itself is tiny");
    let id = upload(&alice, "image/png", bomb).await?;
    let path = format!("/_matrix/client/v1/media/thumbnail/{id}?width=64&height=64");
    // several at once: all refused, none decoded
    let answers = futures_util::future::join_all((0..6).map(|_| get(&alice, &path, true))).await;
    for answer in answers {
        let (status, body) = answer?;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["errcode"], "M_TOO_LARGE", "{body}");
    }
    // the server is fine and still makes ordinary thumbnails
    let small = upload(&alice, "image/png", png(120, 60)).await?;
    let (status, _) = get(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/{small}?width=40&height=40"),
        true,
    )
    .await?;
    assert_eq!(status, 200);
    alice.get("/account/whoami").await?.ok()?;
    Ok(())
}

#[tokio::test]
async fn thumbnail_pixel_cap_is_configurable() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_MEDIA_MAX_THUMBNAIL_PIXELS", "10000"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let over = upload(&alice, "image/png", png(200, 100)).await?;
    let (status, body) = get(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/{over}?width=32&height=32"),
        true,
    )
    .await?;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (413, Some("M_TOO_LARGE")),
        "{body}"
    );
    let under = upload(&alice, "image/png", png(100, 100)).await?;
    let (status, body) = get(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/{under}?width=32&height=32"),
        true,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn new_media_is_served_only_as_authenticated_media() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let id = upload(&alice, "image/png", png(120, 60)).await?;
    let legacy = [
        format!("/_matrix/media/v3/download/{id}"),
        format!("/_matrix/media/r0/download/{id}/name.png"),
        format!("/_matrix/media/v3/thumbnail/{id}?width=32&height=32"),
    ];
    for path in &legacy {
        let (status, body) = get(&alice, path, false).await?;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{path}"
        );
    }
    let (status, _) = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/{id}"),
        true,
    )
    .await?;
    assert_eq!(status, 200);
    // the cut-off recorded at the first start stays put across restarts
    server.restart().await?;
    let (status, _) = get(&alice, &legacy[0], false).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn media_before_the_cutoff_stays_on_the_legacy_paths() -> anyhow::Result<()> {
    // a cut-off in the future: everything counts as legacy media
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        (
            "MYELIN_MEDIA_UNAUTHENTICATED_MEDIA_BEFORE_MS",
            "32503680000000",
        ),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let id = upload(&alice, "image/png", png(120, 60)).await?;
    let r = reqwest::get(format!(
        "{}/_matrix/media/v3/download/{id}/x.png",
        alice.base
    ))
    .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "inline; filename*=utf-8''x.png"
    );
    let (status, _) = get(
        &alice,
        &format!("/_matrix/media/v3/thumbnail/{id}?width=32&height=32"),
        false,
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}

/// A loopback HTTP listener that reports every request it receives.
async fn listener() -> anyhow::Result<(u16, mpsc::UnboundedReceiver<String>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let reply = "HTTP/1.1 200 OK\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"rejected\":[]}";
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    Ok((port, rx))
}

fn pusher(url: &str) -> Value {
    json!({"kind": "http", "app_id": "org.example.app", "pushkey": "k1",
           "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
           "data": {"url": url}})
}

#[tokio::test]
async fn pushers_may_not_target_internal_addresses() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bob = server.register("bob").await?;
    let (port, mut hits) = listener().await?;
    for url in [
        format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"),
        format!("http://localhost:{port}/_matrix/push/v1/notify"),
        format!("http://[::1]:{port}/_matrix/push/v1/notify"),
        format!("http://[::ffff:127.0.0.1]:{port}/_matrix/push/v1/notify"),
        "http://169.254.169.254/_matrix/push/v1/notify".to_owned(),
        "http://10.0.0.1/_matrix/push/v1/notify".to_owned(),
        "http://0.0.0.0/_matrix/push/v1/notify".to_owned(),
        "http://[fd00:ec2::254]/_matrix/push/v1/notify".to_owned(),
    ] {
        bob.post("/pushers/set", pusher(&url))
            .await?
            .expect_error(400, "M_INVALID_PARAM")
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    }
    assert_eq!(bob.get("/pushers").await?.ok()?["pushers"], json!([]));
    assert!(hits.try_recv().is_err(), "nothing was contacted");
    Ok(())
}

#[tokio::test]
async fn names_resolving_to_refused_addresses_get_no_pushes() -> anyhow::Result<()> {
    // Only ::1 is allowed: `localhost` may be set (it can resolve to ::1), but the
    // gateway listens on 127.0.0.1, which delivery must not connect to.
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_PUSH_GATEWAY_ALLOW_CIDRS", "::1/128"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let (port, mut hits) = listener().await?;
    bob.post(
        "/pushers/set",
        pusher(&format!("http://127.0.0.1:{port}/_matrix/push/v1/notify")),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    bob.post(
        "/pushers/set",
        pusher(&format!("http://localhost:{port}/_matrix/push/v1/notify")),
    )
    .await?
    .ok()?;
    let room = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
        )
        .await?;
    bob.join(&room).await?;
    alice.say(&room, "ping").await?;
    let hit = tokio::time::timeout(Duration::from_secs(4), hits.recv()).await;
    assert!(
        hit.is_err(),
        "the gateway on 127.0.0.1 was contacted: {hit:?}"
    );
    Ok(())
}
