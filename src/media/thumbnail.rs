//! Thumbnail generation with the `image` crate: `scale` keeps the aspect ratio and fits
//! inside the requested box, `crop` fills the box exactly and cuts the overflow.

use std::io::Cursor;

use image::{
    imageops::FilterType, DynamicImage, GenericImageView, ImageFormat, ImageReader, Limits,
};

use crate::{Error, Result};

/// The thumbnail sizes served (edge of the bounding square), as other servers do: any
/// request is snapped up to the next one (or the largest), so a client asking for 100
/// sizes makes at most 5 thumbnails per method.
pub const SIZES: [u32; 5] = [32, 96, 320, 640, 800];

/// How to fit the image into the requested box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThumbnailMethod {
    /// Fit inside, keeping the aspect ratio.
    Scale,
    /// Fill exactly, cropping the overflow.
    Crop,
}

/// A requested thumbnail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThumbnailSpec {
    /// Desired width.
    pub width: u32,
    /// Desired height.
    pub height: u32,
    /// Fitting method.
    pub method: ThumbnailMethod,
}

impl ThumbnailSpec {
    /// A checked spec, snapped to a square of one of [`SIZES`]: the smallest at least as
    /// large as the requested box, else the largest. `scale` fits inside the square
    /// (at least the requested size, as the spec asks); `crop` fills it.
    pub fn new(width: u32, height: u32, method: ThumbnailMethod) -> Result<ThumbnailSpec> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("width and height must be positive"));
        }
        let want = width.max(height);
        let edge = SIZES
            .iter()
            .copied()
            .find(|s| *s >= want)
            .unwrap_or(SIZES[SIZES.len() - 1]);
        Ok(ThumbnailSpec {
            width: edge,
            height: edge,
            method,
        })
    }

    /// Key for the thumbnail cache.
    pub fn cache_key(&self) -> String {
        let m = match self.method {
            ThumbnailMethod::Scale => "scale",
            ThumbnailMethod::Crop => "crop",
        };
        format!("{}x{}-{m}", self.width, self.height)
    }
}

fn format_of(content_type: &str) -> Option<ImageFormat> {
    match content_type.split(';').next()?.trim() {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Whether thumbnails can be made for a content type.
pub fn can_thumbnail(content_type: &str) -> bool {
    format_of(content_type).is_some()
}

fn undecodable(e: image::ImageError) -> Error {
    Error::matrix(
        crate::ErrorKind::Invalid,
        "M_UNKNOWN",
        format!("cannot decode the image: {e}"),
    )
}

fn too_many_pixels(width: u32, height: u32, max_pixels: u64) -> Error {
    Error::too_large(format!(
        "The image is {width}x{height} pixels; images over {max_pixels} pixels are not thumbnailed"
    ))
}

/// Decodes an image of at most `max_pixels` pixels. The dimensions are read from the
/// header first, so an image that would be too large is refused (413 `M_TOO_LARGE`) before
/// its pixels are allocated; the decoder is held to those dimensions and an allocation
/// budget of four bytes per pixel (plus slack for the decoder's own buffers) as well.
fn decode_limited(data: &[u8], format: ImageFormat, max_pixels: u64) -> Result<DynamicImage> {
    let (width, height) = ImageReader::with_format(Cursor::new(data), format)
        .into_dimensions()
        .map_err(undecodable)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(too_many_pixels(width, height, max_pixels));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(16 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_many_pixels(width, height, max_pixels),
        other => undecodable(other),
    })
}

/// Makes the thumbnail: `Ok(None)` when the image already fits (serve the original).
/// Images over `max_pixels` pixels are refused with 413 `M_TOO_LARGE` without being
/// decoded. Images with alpha become PNG, others JPEG.
pub fn generate(
    data: &[u8],
    content_type: &str,
    spec: ThumbnailSpec,
    max_pixels: u64,
) -> Result<Option<(Vec<u8>, &'static str)>> {
    let format = format_of(content_type)
        .ok_or_else(|| Error::invalid_param("not a supported image type"))?;
    let image = decode_limited(data, format, max_pixels)?;
    let (w, h) = image.dimensions();
    let thumb: DynamicImage = match spec.method {
        ThumbnailMethod::Scale => {
            if w <= spec.width && h <= spec.height {
                return Ok(None);
            }
            image.resize(spec.width, spec.height, FilterType::Triangle)
        }
        ThumbnailMethod::Crop => {
            if w == spec.width && h == spec.height {
                return Ok(None);
            }
            image.resize_to_fill(spec.width, spec.height, FilterType::Triangle)
        }
    };
    let mut out = Cursor::new(Vec::new());
    let content_type = if thumb.color().has_alpha() {
        thumb
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| Error::internal(format!("encoding thumbnail: {e}")))?;
        "image/png"
    } else {
        DynamicImage::ImageRgb8(thumb.to_rgb8())
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|e| Error::internal(format!("encoding thumbnail: {e}")))?;
        "image/jpeg"
    };
    Ok(Some((out.into_inner(), content_type)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 0, 255]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    const MAX: u64 = 1_000_000;

    fn dims(data: &[u8]) -> (u32, u32) {
        image::load_from_memory(data).unwrap().dimensions()
    }

    #[test]
    fn scale_keeps_aspect_and_crop_fills() {
        let src = png(200, 100);
        // 50 snaps to 96.
        let spec = ThumbnailSpec::new(50, 50, ThumbnailMethod::Scale).unwrap();
        let (out, _) = generate(&src, "image/png", spec, MAX).unwrap().unwrap();
        assert_eq!(dims(&out), (96, 48));
        let spec = ThumbnailSpec::new(50, 20, ThumbnailMethod::Crop).unwrap();
        let (out, _) = generate(&src, "image/png", spec, MAX).unwrap().unwrap();
        assert_eq!(dims(&out), (96, 96));
        // already small enough: serve the original
        let spec = ThumbnailSpec::new(300, 300, ThumbnailMethod::Scale).unwrap();
        assert!(generate(&src, "image/png", spec, MAX).unwrap().is_none());
    }

    #[test]
    fn requests_snap_to_five_sizes_per_method() {
        for method in [ThumbnailMethod::Scale, ThumbnailMethod::Crop] {
            let keys: std::collections::HashSet<String> = (1..=2000)
                .flat_map(|w| [(w, 1), (1, w), (w, w / 2 + 1)])
                .map(|(w, h)| ThumbnailSpec::new(w, h, method).unwrap().cache_key())
                .collect();
            assert_eq!(keys.len(), SIZES.len(), "{keys:?}");
        }
        let spec = ThumbnailSpec::new(33, 10, ThumbnailMethod::Scale).unwrap();
        assert_eq!((spec.width, spec.height), (96, 96));
        let spec = ThumbnailSpec::new(5000, 5000, ThumbnailMethod::Crop).unwrap();
        assert_eq!((spec.width, spec.height), (800, 800));
        let spec = ThumbnailSpec::new(32, 32, ThumbnailMethod::Crop).unwrap();
        assert_eq!((spec.width, spec.height), (32, 32));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let spec = ThumbnailSpec::new(10, 10, ThumbnailMethod::Scale).unwrap();
        assert!(generate(b"not an image", "image/png", spec, MAX).is_err());
        assert!(ThumbnailSpec::new(0, 10, ThumbnailMethod::Crop).is_err());
        assert!(!can_thumbnail("image/svg+xml"));
        assert!(!can_thumbnail("text/html"));
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let src = png(200, 100);
        let spec = ThumbnailSpec::new(50, 50, ThumbnailMethod::Scale).unwrap();
        let err = generate(&src, "image/png", spec, 200 * 100 - 1).unwrap_err();
        assert_eq!(err.errcode(), "M_TOO_LARGE");
        assert!(generate(&src, "image/png", spec, 200 * 100).is_ok());
    }
}
