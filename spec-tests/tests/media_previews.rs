//! Previews before download: the first page of a PDF as a PNG thumbnail (authenticated
//! and legacy paths), the spec's error for what cannot be previewed, and hostile files (a
//! truncated PDF, a 20,000×20,000 PNG, a PDF whose stream inflates to 300 MiB) that get
//! errors while the server keeps answering.

use std::io::Write;

use image::{ImageFormat, RgbImage};
use serde_json::Value;
use spec_tests::{Client, TestServer};

/// A stream object: `dict` entries besides `/Length`, then `data`.
fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\nendstream");
    out
}

/// A one-page 200×100 pt PDF drawing a red square on the left half and "Hi" in blue
/// Helvetica on the right, objects in writers' order (content first, catalog last), then
/// `extra` objects, with a correct cross-reference table.
fn pdf(extra: Vec<Vec<u8>>) -> Vec<u8> {
    let content = b"1 0 0 rg 0 0 100 100 re f\nBT 0 0 1 rg /F1 40 Tf 110 35 Td (Hi) Tj ET";
    let mut objects = vec![
        stream("", content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        b"<< /Type /Page /Parent 4 0 R /MediaBox [0 0 200 100] /Contents 1 0 R \
          /Resources << /Font << /F1 2 0 R >> >> >>"
            .to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Catalog /Pages 4 0 R >>".to_vec(),
    ];
    objects.extend(extra);
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    let size = objects.len() + 1;
    out.extend_from_slice(format!("xref\n0 {size}\n0000000000 65535 f \n").as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {size} /Root 5 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes(),
    );
    out
}

/// `bytes` of zeros, zlib-compressed.
fn zeros_compressed(bytes: usize) -> Vec<u8> {
    let chunk = vec![0u8; 1 << 20];
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        z.write_all(&chunk[..n]).expect("compress");
        left -= n;
    }
    z.finish().expect("compress")
}

/// A valid 20,000×20,000 one-bit greyscale PNG of zeros: 400 million pixels in a ~50 KB
/// file (its IDAT inflates to 50 MB, a decoder's image to 400 MB).
fn png_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let (w, h) = (20_000u32, 20_000u32);
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]); // 1 bit, greyscale, deflate, no filter, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    // each row: filter byte 0 and w/8 bytes of pixels, all zero
    chunk(
        &mut out,
        b"IDAT",
        &zeros_compressed((1 + w as usize / 8) * h as usize),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

async fn upload(c: &Client, ctype: &str, data: Vec<u8>) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", c.base))
        .bearer_auth(c.token.as_deref().unwrap_or_default())
        .header("content-type", ctype)
        .body(data)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "upload: {}", r.status());
    let body: Value = r.json().await?;
    Ok(body["content_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("mxc://"))
        .ok_or_else(|| anyhow::anyhow!("no content_uri: {body}"))?
        .to_owned())
}

/// A thumbnail through the authenticated endpoint (or the legacy one without a token):
/// status, content type, bytes.
async fn thumbnail(
    c: &Client,
    media: &str,
    query: &str,
    legacy: bool,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let http = reqwest::Client::new();
    let r = if legacy {
        http.get(format!(
            "{}/_matrix/media/v3/thumbnail/{media}?{query}",
            c.base
        ))
    } else {
        http.get(format!(
            "{}/_matrix/client/v1/media/thumbnail/{media}?{query}",
            c.base
        ))
        .bearer_auth(c.token.as_deref().unwrap_or_default())
    }
    .send()
    .await?;
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, ctype, r.bytes().await?.to_vec()))
}

/// Fails unless the answer is the JSON error `status` `errcode` (never an image).
fn expect_error(got: &(u16, String, Vec<u8>), status: u16, errcode: &str) {
    let (got_status, ctype, bytes) = got;
    let text = String::from_utf8_lossy(bytes);
    assert_eq!(*got_status, status, "{text}");
    assert!(ctype.starts_with("application/json"), "{ctype}: {text}");
    let body: Value = serde_json::from_slice(bytes).expect("a JSON error body");
    assert_eq!(body["errcode"], errcode, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

/// A PNG thumbnail of the drawing, `want` pixels: red where the square is, blue text on
/// the right, white paper around it.
fn check_drawing(got: &(u16, String, Vec<u8>), want: (u32, u32)) -> RgbImage {
    let (status, ctype, bytes) = got;
    assert_eq!(*status, 200, "{}", String::from_utf8_lossy(bytes));
    assert_eq!(ctype, "image/png");
    let img = image::load_from_memory_with_format(bytes, ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8();
    assert_eq!(img.dimensions(), want);
    let (w, h) = want;
    // the square fills the left half of the page (scaled) or of the crop's width
    let [r, g, b] = img.get_pixel(w / 5, h / 2).0;
    assert!(r > 200 && g < 60 && b < 60, "not red: {:?}", [r, g, b]);
    let blue = (w * 11 / 20..w)
        .flat_map(|x| (0..h).map(move |y| (x, y)))
        .filter(|&(x, y)| {
            let [r, _, b] = img.get_pixel(x, y).0;
            b > 150 && r < 120
        })
        .count();
    assert!(blue > 10, "no text drawn ({blue} blue pixels)");
    img
}

#[tokio::test]
async fn pdf_first_page_becomes_a_png_thumbnail() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        // a cut-off in the future keeps this test's uploads on the legacy paths too
        (
            "MYELIN_MEDIA_UNAUTHENTICATED_MEDIA_BEFORE_MS",
            "4102444800000",
        ),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let media = upload(&alice, "application/pdf", pdf(Vec::new())).await?;

    let scaled = thumbnail(&bob, &media, "width=96&height=96&method=scale", false).await?;
    let img = check_drawing(&scaled, (96, 48));
    assert_eq!(img.get_pixel(95, 0).0, [255, 255, 255], "paper is white");
    // crop fills the square (the page's height, centred across): still the drawing
    let cropped = thumbnail(&bob, &media, "width=300&height=200&method=crop", false).await?;
    check_drawing(&cropped, (320, 320));
    // the legacy unauthenticated path serves the same thumbnail
    let legacy = thumbnail(&bob, &media, "width=96&height=96&method=scale", true).await?;
    check_drawing(&legacy, (96, 48));
    assert_eq!(legacy.2, scaled.2);

    // an upload without a declared type is previewed by its content
    let untyped = upload(&alice, "application/octet-stream", pdf(Vec::new())).await?;
    let got = thumbnail(&bob, &untyped, "width=32&height=32&method=scale", false).await?;
    let (status, ctype, _) = &got;
    assert_eq!((*status, ctype.as_str()), (200, "image/png"));

    // what cannot be previewed gets the spec's error, not an image
    let text = upload(&alice, "text/plain", b"plain words".to_vec()).await?;
    let got = thumbnail(&bob, &text, "width=32&height=32&method=scale", false).await?;
    expect_error(&got, 400, "M_UNKNOWN");
    let fake = upload(&alice, "application/octet-stream", b"not a pdf".to_vec()).await?;
    let got = thumbnail(&bob, &fake, "width=32&height=32&method=scale", false).await?;
    expect_error(&got, 400, "M_UNKNOWN");
    Ok(())
}

/// The server still answers `/versions` and renders a thumbnail of `good` (`query`: a
/// size not asked before, so it is rendered now and not read from the cache).
async fn still_serving(c: &Client, good: &str, query: &str) -> anyhow::Result<()> {
    let versions = c
        .request(reqwest::Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    anyhow::ensure!(versions["versions"].is_array(), "{versions}");
    let got = thumbnail(c, good, query, false).await?;
    anyhow::ensure!(got.0 == 200 && got.1 == "image/png", "{query}: {}", got.0);
    Ok(())
}

#[tokio::test]
async fn hostile_files_get_errors_and_the_server_keeps_answering() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let good_pdf = pdf(Vec::new());
    let good = upload(&alice, "application/pdf", good_pdf.clone()).await?;

    // a PDF cut off halfway (the page tree and catalog are gone)
    let truncated = upload(
        &alice,
        "application/pdf",
        good_pdf[..good_pdf.len() / 2].to_vec(),
    )
    .await?;
    let got = thumbnail(&alice, &truncated, "width=96&height=96&method=scale", false).await?;
    expect_error(&got, 400, "M_UNKNOWN");
    still_serving(&alice, &good, "width=640&height=640&method=scale").await?;

    // a 20,000 x 20,000 PNG: refused from its header, never decoded
    let bomb = png_bomb();
    assert!(bomb.len() < 200_000, "the bomb is {} bytes", bomb.len());
    let png = upload(&alice, "image/png", bomb).await?;
    for query in [
        "width=96&height=96&method=scale",
        "width=32&height=32&method=crop",
    ] {
        let got = thumbnail(&alice, &png, query, false).await?;
        expect_error(&got, 413, "M_TOO_LARGE");
    }
    still_serving(&alice, &good, "width=800&height=800&method=crop").await?;

    // a PDF carrying a stream that inflates to 300 MiB: measured, refused, not rendered
    let inflating = pdf(vec![stream(
        "/Filter /FlateDecode",
        &zeros_compressed(300 << 20),
    )]);
    let bomb_pdf = upload(&alice, "application/pdf", inflating).await?;
    let got = thumbnail(&alice, &bomb_pdf, "width=96&height=96&method=scale", false).await?;
    expect_error(&got, 413, "M_TOO_LARGE");

    // over media.max_pdf_preview_size is refused before reading
    let mut padded = pdf(Vec::new());
    padded.extend(std::iter::repeat_n(b'%', 21 << 20));
    let large = upload(&alice, "application/pdf", padded).await?;
    let got = thumbnail(&alice, &large, "width=96&height=96&method=scale", false).await?;
    expect_error(&got, 413, "M_TOO_LARGE");

    still_serving(&alice, &good, "width=320&height=320&method=scale").await?;
    Ok(())
}
