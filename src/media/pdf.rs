//! PDF previews: the first page of a PDF rendered with `hayro` (pure Rust) straight into
//! the snapped thumbnail size, so the rendered page is never larger than the thumbnail.
//!
//! A PDF is a container of compressed streams, so before anything is rendered every
//! stream is checked: images may declare at most `max_pixels` pixels, FlateDecode streams
//! are inflated into a counter (nothing kept) and all streams together may decode to at
//! most [`MAX_DECODED_BYTES`]; other expanding filters count at their worst-case ratio.
//! A document over those limits is refused before the renderer allocates for it. The
//! time limit, the concurrency bound and the `catch_unwind` that makes a panic in the
//! third-party renderer an error are `jobs::run_limited`'s.

use std::{
    io::{Cursor, Read},
    sync::Arc,
};

use hayro::{
    hayro_interpret::InterpreterSettings,
    hayro_interpret::TransformExt,
    hayro_syntax::{object::Name, object::Object, Filter, LoadPdfError, Pdf},
    kurbo::Affine,
    vello_cpu::{
        color::palette::css::TRANSPARENT, Pixmap, RasterizerSettings, RenderContext, Resources,
        TargetInit,
    },
    RenderCache, RenderSettings,
};
use image::{ImageFormat, RgbImage};

use super::thumbnail::{ThumbnailMethod, ThumbnailSpec};
use crate::{Error, Result};

/// Bytes all the streams of one document may decode to before it is refused.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;
/// The worst-case expansion counted for LZW and RunLength streams (not measured).
const WORST_EXPANSION: u64 = 1500;

/// Whether `head` (the first bytes of a file) looks like a PDF: `%PDF-` within the first
/// 1024 bytes, as readers accept.
pub fn sniff(head: &[u8]) -> bool {
    head[..head.len().min(1024)]
        .windows(5)
        .any(|w| w == b"%PDF-")
}

fn unrenderable(why: &str) -> Error {
    Error::matrix(
        crate::ErrorKind::Invalid,
        "M_UNKNOWN",
        format!("Cannot generate a preview of this PDF: {why}"),
    )
}

/// Renders the first page of `data` as a PNG thumbnail of `spec`. Run it through
/// `jobs::run_limited`, which turns a panic in the renderer into an error.
pub fn render_first_page(data: Vec<u8>, spec: ThumbnailSpec, max_pixels: u64) -> Result<Vec<u8>> {
    if !sniff(&data) {
        return Err(unrenderable("not a PDF"));
    }
    let pdf = Pdf::new(Arc::new(data)).map_err(|e| match e {
        LoadPdfError::Decryption(_) => unrenderable("the document is encrypted"),
        LoadPdfError::Invalid => unrenderable("the document cannot be read"),
    })?;
    check_streams(&pdf, max_pixels)?;
    let page = pdf
        .pages()
        .first()
        .ok_or_else(|| unrenderable("the document has no pages"))?;
    let (page_w, page_h) = page.render_dimensions();
    let (width, height, fit) = layout(page_w, page_h, spec)?;
    let mut ctx = RenderContext::new(width, height);
    let cache = RenderCache::new();
    hayro::render_into(
        page,
        &cache,
        &InterpreterSettings::default(),
        &RenderSettings::default(),
        &mut ctx,
        fit * page.initial_transform(true).to_kurbo(),
    );
    ctx.flush();
    let mut pixmap = Pixmap::new(width, height);
    ctx.render_with(
        &mut pixmap,
        &mut Resources::default(),
        RasterizerSettings {
            target_init: TargetInit::Clear(TRANSPARENT),
            ..Default::default()
        },
    );
    // Paper is white: composite the premultiplied pixels over it.
    let mut rgb = RgbImage::new(u32::from(width), u32::from(height));
    for (out, p) in rgb.pixels_mut().zip(pixmap.data()) {
        let paper = 255 - p.a;
        out.0 = [
            p.r.saturating_add(paper),
            p.g.saturating_add(paper),
            p.b.saturating_add(paper),
        ];
    }
    let mut png = Cursor::new(Vec::new());
    rgb.write_to(&mut png, ImageFormat::Png)
        .map_err(|e| Error::internal(format!("encoding the PDF preview: {e}")))?;
    Ok(png.into_inner())
}

/// The rendered size and the transform from page space (after the page's own initial
/// transform, in points with the origin top left) into it. `scale` fits the page inside
/// the square; `crop` fills it, centred across and from the top of the page down (where
/// a document's title is). Either way the render has at most `edge`² pixels.
fn layout(page_w: f32, page_h: f32, spec: ThumbnailSpec) -> Result<(u16, u16, Affine)> {
    let (w, h) = (f64::from(page_w), f64::from(page_h));
    if !(w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0) {
        return Err(unrenderable("the page has no size"));
    }
    let edge = f64::from(spec.width.min(spec.height));
    let px = |v: f64| v.round().clamp(1.0, edge) as u16;
    Ok(match spec.method {
        ThumbnailMethod::Scale => {
            let s = edge / w.max(h);
            (px(w * s), px(h * s), Affine::scale(s))
        }
        ThumbnailMethod::Crop => {
            let s = edge / w.min(h);
            let dx = (w * s - edge) / 2.0;
            (
                px(edge),
                px(edge),
                Affine::translate((-dx, 0.0)) * Affine::scale(s),
            )
        }
    })
}

fn too_large(why: String) -> Error {
    Error::too_large(format!("The PDF is too large to preview: {why}"))
}

/// Refuses documents whose streams would decode to too much: see the module doc.
fn check_streams(pdf: &Pdf, max_pixels: u64) -> Result<()> {
    let mut decoded = 0u64;
    for object in pdf.objects() {
        let Object::Stream(stream) = object else {
            continue;
        };
        let dict = stream.dict();
        if dict
            .get::<Name<'_>>(b"Subtype")
            .is_some_and(|n| &*n == b"Image")
        {
            let w = u64::from(dict.get::<u32>(b"Width").unwrap_or(0));
            let h = u64::from(dict.get::<u32>(b"Height").unwrap_or(0));
            if w * h > max_pixels {
                return Err(too_large(format!(
                    "it holds a {w}x{h} image (over {max_pixels} pixels)"
                )));
            }
        }
        let filters = stream.filters();
        let raw = stream.raw_data();
        if filters.contains(&Filter::DctDecode) {
            // The JPEG's own header may declare more than the dictionary.
            let jpeg = image::ImageReader::with_format(Cursor::new(&*raw), ImageFormat::Jpeg);
            if let Ok((w, h)) = jpeg.into_dimensions() {
                if u64::from(w) * u64::from(h) > max_pixels {
                    return Err(too_large(format!(
                        "it holds a {w}x{h} JPEG (over {max_pixels} pixels)"
                    )));
                }
            }
        }
        let expanding = filters
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Filter::FlateDecode | Filter::LzwDecode | Filter::RunLengthDecode
                )
            })
            .count();
        let size = match (expanding, filters.first()) {
            (0, _) => raw.len() as u64,
            (1, Some(Filter::FlateDecode)) => {
                inflated_size(&raw, MAX_DECODED_BYTES.saturating_sub(decoded))
            }
            (n, _) => (raw.len() as u64).saturating_mul(WORST_EXPANSION.saturating_pow(n as u32)),
        };
        decoded = decoded.saturating_add(size);
        if decoded > MAX_DECODED_BYTES {
            return Err(too_large(format!(
                "its streams decode to over {MAX_DECODED_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// How many bytes a zlib (or raw deflate) stream inflates to, counting at most
/// `budget + 1` (enough to know it is over). Nothing is kept. A stream that does not
/// inflate cleanly counts at the worst-case ratio: the renderer's lenient decoder may
/// still get data out of it.
fn inflated_size(raw: &[u8], budget: u64) -> u64 {
    let limit = budget.saturating_add(1);
    let count =
        |reader: &mut dyn Read| std::io::copy(&mut reader.take(limit), &mut std::io::sink());
    match count(&mut flate2::read::ZlibDecoder::new(raw)) {
        Ok(n) if n > 0 => n,
        _ => match count(&mut flate2::read::DeflateDecoder::new(raw)) {
            Ok(n) if n > 0 => n,
            _ => (raw.len() as u64).saturating_mul(WORST_EXPANSION),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A stream object: `dict` entries besides `/Length`, then `data`.
    fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\nendstream");
        out
    }

    /// A one-page PDF (`width`×`height` points) with `content` as its content stream,
    /// Helvetica as `/F1`, the objects ordered as writers do (content first, the catalog
    /// last), then `extra` objects (numbered from 6, unreferenced), and a correct
    /// cross-reference table.
    fn pdf_with(width: u32, height: u32, content: &[u8], extra: Vec<Vec<u8>>) -> Vec<u8> {
        let mut objects: Vec<Vec<u8>> = vec![stream("", content)];
        objects.push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec());
        objects.push(
            format!(
                "<< /Type /Page /Parent 4 0 R /MediaBox [0 0 {width} {height}] /Contents 1 0 R \
                 /Resources << /Font << /F1 2 0 R >> >> >>"
            )
            .into_bytes(),
        );
        objects.push(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec());
        objects.push(b"<< /Type /Catalog /Pages 4 0 R >>".to_vec());
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
        out.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for o in offsets {
            out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 5 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    fn one_page_pdf(width: u32, height: u32, content: &[u8]) -> Vec<u8> {
        pdf_with(width, height, content, Vec::new())
    }

    /// A red square on the left half, blue text on the right.
    const DRAWING: &[u8] = b"1 0 0 rg 0 0 100 100 re f\nBT 0 0 1 rg /F1 40 Tf 110 35 Td (Hi) Tj ET";

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(png, ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    const MAX: u64 = 32_000_000;

    #[test]
    fn renders_the_first_page_into_the_snapped_size() {
        let pdf = one_page_pdf(200, 100, DRAWING);
        let spec = ThumbnailSpec::new(96, 96, ThumbnailMethod::Scale).unwrap();
        let started = Instant::now();
        let png = render_first_page(pdf.clone(), spec, MAX).unwrap();
        println!(
            "one-page PDF to a 96 px PNG preview: {:?}",
            started.elapsed()
        );
        let img = decode(&png);
        assert_eq!(img.dimensions(), (96, 48));
        // the red square (page y is up, image y is down)
        let [r, g, b] = img.get_pixel(20, 24).0;
        assert!(r > 200 && g < 60 && b < 60, "{:?}", [r, g, b]);
        // the blue text: some blue pixels right of the square, white paper elsewhere
        let blue = (50..96)
            .flat_map(|x| (0..48).map(move |y| (x, y)))
            .filter(|&(x, y)| {
                let [r, _, b] = img.get_pixel(x, y).0;
                b > 150 && r < 120
            })
            .count();
        assert!(blue > 10, "no text drawn ({blue} blue pixels)");
        assert_eq!(img.get_pixel(95, 0).0, [255, 255, 255]);

        let crop = ThumbnailSpec::new(300, 300, ThumbnailMethod::Crop).unwrap();
        let started = Instant::now();
        let img = decode(&render_first_page(pdf, crop, MAX).unwrap());
        println!(
            "one-page PDF to a 320 px cropped PNG preview: {:?}",
            started.elapsed()
        );
        assert_eq!(img.dimensions(), (320, 320));
    }

    #[test]
    fn a_page_of_text_renders_in_milliseconds() {
        // US Letter, 60 lines of 10 pt Helvetica: a typical page of a document
        let mut content = b"BT /F1 10 Tf 12 TL 50 740 Td".to_vec();
        for i in 0..60 {
            content.extend_from_slice(
                format!(" (Line {i}: the quick brown fox jumps over the lazy dog, 0123456789.) '")
                    .as_bytes(),
            );
        }
        content.extend_from_slice(b" ET");
        let pdf = one_page_pdf(612, 792, &content);
        for (edge, method) in [(320, ThumbnailMethod::Scale), (800, ThumbnailMethod::Crop)] {
            let spec = ThumbnailSpec::new(edge, edge, method).unwrap();
            let started = Instant::now();
            let img = decode(&render_first_page(pdf.clone(), spec, MAX).unwrap());
            println!(
                "a page of text ({} KB PDF) to a {edge} px {method:?} PNG preview: {:?}",
                pdf.len() / 1024,
                started.elapsed()
            );
            assert_eq!(img.dimensions().1, edge);
            let ink = img.pixels().filter(|p| p.0[0] < 128).count();
            assert!(ink > 1000, "{ink} dark pixels");
        }
    }

    #[test]
    fn renders_never_exceed_the_thumbnail() {
        for method in [ThumbnailMethod::Scale, ThumbnailMethod::Crop] {
            let spec = ThumbnailSpec::new(800, 800, method).unwrap();
            for (w, h) in [(1.0, 14_400.0), (14_400.0, 1.0), (1e30, 1e30), (0.5, 0.5)] {
                let (pw, ph, _) = layout(w, h, spec).unwrap();
                assert!(
                    pw >= 1 && ph >= 1 && pw <= 800 && ph <= 800,
                    "{w}x{h}: {pw}x{ph}"
                );
            }
            assert!(layout(f32::NAN, 10.0, spec).is_err());
            assert!(layout(0.0, 10.0, spec).is_err());
        }
        // an elongated page, cropped: the render is the square, not the whole page
        let crop = ThumbnailSpec::new(32, 32, ThumbnailMethod::Crop).unwrap();
        let img = decode(&render_first_page(one_page_pdf(10, 5000, DRAWING), crop, MAX).unwrap());
        assert_eq!(img.dimensions(), (32, 32));
    }

    #[test]
    fn bombs_and_broken_documents_are_errors() {
        let spec = ThumbnailSpec::new(32, 32, ThumbnailMethod::Scale).unwrap();
        let pdf = one_page_pdf(200, 100, DRAWING);
        for cut in [20, pdf.len() / 3, pdf.len() / 2] {
            let err = render_first_page(pdf[..cut].to_vec(), spec, MAX).unwrap_err();
            assert_eq!(err.errcode(), "M_UNKNOWN", "cut at {cut}");
        }
        assert!(render_first_page(b"GIF89a".to_vec(), spec, MAX).is_err());
        // an image XObject declaring 20,000 x 20,000 pixels
        let image = stream(
            "/Type /XObject /Subtype /Image /Width 20000 /Height 20000 \
             /ColorSpace /DeviceRGB /BitsPerComponent 8",
            b"",
        );
        let err =
            render_first_page(pdf_with(200, 100, DRAWING, vec![image]), spec, MAX).unwrap_err();
        assert_eq!(err.errcode(), "M_TOO_LARGE");
        // a stream that inflates past the budget (300 MiB of zeros in 300 KiB) is
        // measured, never held in memory
        let zeros = vec![0u8; 1 << 20];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..300 {
            std::io::Write::write_all(&mut z, &zeros).unwrap();
        }
        let bomb = z.finish().unwrap();
        assert_eq!(inflated_size(&bomb, 1 << 20), (1 << 20) + 1);
        assert_eq!(inflated_size(&bomb, u64::MAX - 1), 300 << 20);
        let flate = stream("/Filter /FlateDecode", &bomb);
        let err =
            render_first_page(pdf_with(200, 100, DRAWING, vec![flate]), spec, MAX).unwrap_err();
        assert_eq!(err.errcode(), "M_TOO_LARGE");
        // the same document without the bomb renders
        let fine = stream("/Filter /FlateDecode", &bomb[..0]);
        assert!(render_first_page(pdf_with(200, 100, DRAWING, vec![fine]), spec, MAX).is_ok());
    }

    #[test]
    fn pdfs_are_sniffed() {
        assert!(sniff(b"\n\n%PDF-1.7"));
        assert!(!sniff(b"%PNG"));
    }
}
