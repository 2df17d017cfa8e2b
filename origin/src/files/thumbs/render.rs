//! Thumbnails of one image: decode within limits, shrink, encode. Pure and blocking (the worker
//! runs it on `spawn_blocking`); the same bytes and settings always give the same thumbnails.
//!
//! **Limits.** The header is read first and the image refused, before any pixel is decoded,
//! when a side is over `max_side`, it has more than `max_pixels`, or its pixels would need more
//! than `max_alloc` bytes; the decoders are given the same limits for what they allocate on the
//! way. So a small file that claims to be 100,000 × 100,000 (a decompression bomb) costs a few
//! bytes of header, not 40 GB.
//!
//! **Sizes.** For each size, smallest first, the image is scaled so that its longer side is
//! that size, the aspect ratio kept (each side rounded to the nearest pixel, at least 1). An
//! image is never enlarged: the first size that holds it whole gets it at its own dimensions,
//! and the larger sizes are skipped (they would be the same picture).
//!
//! **Formats.** PNG, JPEG, GIF and WebP are read (the first frame of an animation), a JPEG's
//! EXIF orientation applied. A thumbnail is a JPEG, or a PNG when the image has transparent
//! pixels, which JPEG cannot keep.

use std::io::Cursor;

use image::{
    codecs::{
        jpeg::JpegEncoder,
        png::{CompressionType, FilterType, PngEncoder},
    },
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader,
};

/// JPEG quality of thumbnails: small files, no visible blocks at these sizes.
const JPEG_QUALITY: u8 = 82;

/// What an image may be, to be decoded at all.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Widest and tallest, in pixels.
    pub max_side: u32,
    /// Most pixels.
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate, its pixels included.
    pub max_alloc: u64,
}

/// One thumbnail, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendition {
    /// The box it was made for.
    pub size: u32,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
    /// The encoded file.
    pub bytes: Vec<u8>,
}

/// Why an image gets no thumbnails. Each is final: the same bytes would fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not one of the four formats read.
    #[error("not a PNG, JPEG, GIF or WebP image")]
    Format,
    /// Over the limits, by its header or while decoding.
    #[error("over the thumbnail limits: {0}")]
    TooBig(String),
    /// Broken or unsupported inside.
    #[error("cannot decode it: {0}")]
    Decode(String),
    /// An encoder failed (not expected for a decoded image).
    #[error("cannot encode a thumbnail: {0}")]
    Encode(String),
}

fn refusal(e: ImageError) -> Refusal {
    match e {
        ImageError::Limits(l) => Refusal::TooBig(l.to_string()),
        ImageError::Unsupported(u) => Refusal::Decode(u.to_string()),
        other => Refusal::Decode(other.to_string()),
    }
}

/// The thumbnails' dimensions for an image of `width` × `height`: `(size, width, height)` for
/// each size it gets (see the module's documentation). `sizes` must be ascending.
pub fn plan(width: u32, height: u32, sizes: &[u32]) -> Vec<(u32, u32, u32)> {
    let long = width.max(height);
    let mut out = Vec::with_capacity(sizes.len());
    if width == 0 || height == 0 {
        return out;
    }
    for &size in sizes {
        if long <= size {
            out.push((size, width, height));
            break;
        }
        // Rounded to the nearest pixel, in integers: x · size / long + ½.
        let scale = |x: u32| {
            let scaled = (u64::from(x) * u64::from(size) * 2 + u64::from(long)) / (2 * u64::from(long));
            (scaled as u32).max(1)
        };
        out.push((size, scale(width), scale(height)));
    }
    out
}

/// Decodes `bytes` within `limits` and makes its thumbnails for `sizes` (ascending), smallest
/// first.
pub fn render(bytes: &[u8], sizes: &[u32], limits: &Limits) -> Result<Vec<Rendition>, Refusal> {
    let image = decode(bytes, limits)?;
    let plan = plan(image.width(), image.height(), sizes);
    // Largest first, each from the one before: every step shrinks, by area averaging.
    let mut shrunk: Vec<(u32, DynamicImage)> = Vec::with_capacity(plan.len());
    for &(size, width, height) in plan.iter().rev() {
        let source = shrunk.last().map_or(&image, |(_, previous)| previous);
        let thumb = if (width, height) == (source.width(), source.height()) {
            source.clone()
        } else {
            source.thumbnail_exact(width, height)
        };
        shrunk.push((size, thumb));
    }
    drop(image);
    // One type for every size of an image, decided on the largest.
    let png = shrunk.first().is_some_and(|(_, largest)| transparent(largest));
    let mut out = Vec::with_capacity(shrunk.len());
    for (size, thumb) in shrunk.into_iter().rev() {
        let (width, height) = (thumb.width(), thumb.height());
        let mut encoded = Vec::new();
        let content_type = if png {
            let rgba = thumb.to_rgba8();
            PngEncoder::new_with_quality(&mut encoded, CompressionType::Default, FilterType::Adaptive)
                .write_image(rgba.as_raw(), width, height, ExtendedColorType::Rgba8)
                .map_err(|e| Refusal::Encode(e.to_string()))?;
            "image/png"
        } else {
            let rgb = thumb.to_rgb8();
            JpegEncoder::new_with_quality(&mut encoded, JPEG_QUALITY)
                .encode_image(&rgb)
                .map_err(|e| Refusal::Encode(e.to_string()))?;
            "image/jpeg"
        };
        out.push(Rendition { size, width, height, content_type, bytes: encoded });
    }
    Ok(out)
}

/// Reads the header, checks it against `limits`, then decodes the pixels (the first frame)
/// upright.
fn decode(bytes: &[u8], limits: &Limits) -> Result<DynamicImage, Refusal> {
    let mut reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| Refusal::Decode(e.to_string()))?;
    if !matches!(reader.format(), Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) {
        return Err(Refusal::Format);
    }
    let mut decoding = image::Limits::default();
    decoding.max_image_width = Some(limits.max_side);
    decoding.max_image_height = Some(limits.max_side);
    decoding.max_alloc = Some(limits.max_alloc);
    reader.limits(decoding.clone());
    let mut decoder = reader.into_decoder().map_err(refusal)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(Refusal::Decode("it has no pixels".into()));
    }
    if width > limits.max_side || height > limits.max_side || u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(Refusal::TooBig(format!(
            "{width} × {height} pixels (at most {} a side, {} in all)",
            limits.max_side, limits.max_pixels
        )));
    }
    decoding.reserve(decoder.total_bytes()).map_err(refusal)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(refusal)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Whether any pixel is less than opaque.
fn transparent(image: &DynamicImage) -> bool {
    image.color().has_alpha() && image.to_rgba8().pixels().any(|p| p.0[3] < u8::MAX)
}

#[cfg(test)]
mod tests {
    use image::{ImageBuffer, Rgb, Rgba};

    use super::*;

    const LIMITS: Limits = Limits { max_side: 12_000, max_pixels: 50_000_000, max_alloc: 256 << 20 };

    fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let image = ImageBuffer::from_fn(width, height, |x, y| {
            Rgba([(x % 256) as u8, (y % 256) as u8, 90, if alpha && x < width / 2 { 0 } else { 255 }])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(image).write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = ImageBuffer::from_fn(width, height, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 40]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image).write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn plans_keep_the_aspect_and_never_enlarge() {
        let sizes = [360, 1024];
        assert_eq!(plan(1600, 900, &sizes), [(360, 360, 203), (1024, 1024, 576)]);
        assert_eq!(plan(900, 1200, &sizes), [(360, 270, 360), (1024, 768, 1024)]);
        assert_eq!(plan(1000, 700, &sizes), [(360, 360, 252), (1024, 1000, 700)], "whole at 1024");
        assert_eq!(plan(200, 120, &sizes), [(360, 200, 120)], "small: once, as it is");
        assert_eq!(plan(360, 10, &sizes), [(360, 360, 10)]);
        assert_eq!(plan(5000, 2, &sizes), [(360, 360, 1), (1024, 1024, 1)], "never below a pixel");
        assert!(plan(0, 5, &sizes).is_empty());
    }

    #[test]
    fn opaque_images_become_jpegs_and_transparent_ones_pngs() {
        let made = render(&jpeg(900, 1200), &[360, 1024], &LIMITS).unwrap();
        let dims: Vec<_> = made.iter().map(|r| (r.size, r.width, r.height, r.content_type)).collect();
        assert_eq!(dims, [(360, 270, 360, "image/jpeg"), (1024, 768, 1024, "image/jpeg")]);
        for r in &made {
            let back = image::load_from_memory(&r.bytes).unwrap();
            assert_eq!((back.width(), back.height()), (r.width, r.height));
        }
        let made = render(&png(1600, 900, true), &[360, 1024], &LIMITS).unwrap();
        assert!(made.iter().all(|r| r.content_type == "image/png"));
        let made = render(&png(300, 100, false), &[360, 1024], &LIMITS).unwrap();
        assert_eq!(made.len(), 1);
        assert_eq!((made[0].width, made[0].height, made[0].content_type), (300, 100, "image/jpeg"));
    }

    #[test]
    fn the_same_image_gives_the_same_bytes() {
        let source = png(700, 500, true);
        assert_eq!(render(&source, &[360], &LIMITS).unwrap(), render(&source, &[360], &LIMITS).unwrap());
    }

    #[test]
    fn limits_and_garbage_are_refused_before_decoding() {
        let big = png(400, 300, false);
        let tight = Limits { max_side: 399, ..LIMITS };
        assert!(matches!(render(&big, &[360], &tight), Err(Refusal::TooBig(_))));
        let few = Limits { max_pixels: 400 * 300 - 1, ..LIMITS };
        assert!(matches!(render(&big, &[360], &few), Err(Refusal::TooBig(_))));
        let small = Limits { max_alloc: 1000, ..LIMITS };
        assert!(matches!(render(&big, &[360], &small), Err(Refusal::TooBig(_))));
        assert!(matches!(render(b"%PDF-1.7 not an image", &[360], &LIMITS), Err(Refusal::Format)));
        assert!(matches!(render(&bomb(100_000, 100_000), &[360], &LIMITS), Err(Refusal::TooBig(_))));
        assert!(render(&bomb(10, 10), &[360], &LIMITS).is_err(), "a PNG without its pixels is refused");
    }

    /// A PNG whose header claims `width` × `height` RGBA pixels, with an empty image stream.
    fn bomb(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&[8, 6, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &header);
        chunk(&mut out, b"IDAT", &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}
