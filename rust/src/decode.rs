//! JPEG/PNG decoding to RGB uint8 (H, W, 3) with errors that name the file.

use std::path::Path;

use crate::markers::{check_jpeg_complete, check_png_complete};

/// The largest image side and pixel count decoded (a header may claim anything).
const MAX_SIDE: usize = 1 << 16;
const MAX_PIXELS: usize = 1 << 28;

/// A decoded image, channels-last.
pub struct Decoded {
    pub data: Vec<u8>,
    pub h: usize,
    pub w: usize,
}

/// Per-thread buffers reused from one file to the next.
#[derive(Default)]
pub struct DecodeScratch {
    /// The file's bytes.
    file: Vec<u8>,
    /// The decoded `(h, w, 3)` pixels (only the first `h * w * 3` bytes are meaningful).
    pub pixels: Vec<u8>,
}

/// Read and decode one file; every failure message starts with the path.
pub fn decode_file(path: &Path) -> Result<Decoded, String> {
    let mut scratch = DecodeScratch::default();
    let (h, w) = decode_file_into(path, &mut scratch, |h, _| h)?;
    scratch.pixels.truncate(h * w * 3);
    Ok(Decoded {
        data: scratch.pixels,
        h,
        w,
    })
}

/// Read and decode one file into `scratch.pixels` (RGB), reusing its buffers; returns the
/// decoded `(h, w)`. Every failure message starts with the path.
///
/// `rows_needed(h, w)` is told the image's full size and answers how many top rows the
/// caller will read. A sequential JPEG is then decoded only down to the MCU row after those
/// rows (the rows above it are bit-identical to a full decode), so fewer than `h` rows may
/// come back; every other file is decoded whole.
pub fn decode_file_into(
    path: &Path,
    scratch: &mut DecodeScratch,
    rows_needed: impl FnOnce(usize, usize) -> usize,
) -> Result<(usize, usize), String> {
    read_into(path, &mut scratch.file)
        .map_err(|e| format!("cannot read image {}: {e}", path.display()))?;
    decode_top_rows_into(&mut scratch.file, &mut scratch.pixels, rows_needed)
        .map_err(|e| format!("cannot decode image {}: {e}", path.display()))
}

/// [`decode_file_into`] on bytes in memory; a sequential JPEG's header is rewritten in place
/// to the shorter height when fewer rows are decoded.
pub fn decode_top_rows_into(
    bytes: &mut [u8],
    out: &mut Vec<u8>,
    rows_needed: impl FnOnce(usize, usize) -> usize,
) -> Result<(usize, usize), String> {
    let frame = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        check_jpeg_complete(bytes)?
    } else {
        None
    };
    let Some(frame) = frame.filter(|f| f.height > 0 && f.width > 0) else {
        // Not a JPEG, or its height is defined later (DNL): decoded whole.
        let (h, w) = decode_complete_into(bytes, out)?;
        rows_needed(h, w);
        return Ok((h, w));
    };
    let (h, w) = (frame.height, frame.width);
    let rows = frame.rows_to_decode(rows_needed(h, w));
    if rows < h {
        bytes[frame.height_at..frame.height_at + 2].copy_from_slice(&(rows as u16).to_be_bytes());
    }
    let decoded = decode_complete_into(bytes, out);
    if rows < h {
        bytes[frame.height_at..frame.height_at + 2].copy_from_slice(&(h as u16).to_be_bytes());
    }
    let (dh, dw) = decoded?;
    if (dh, dw) != (rows, w) {
        return Err(format!(
            "decoded {dh}x{dw} pixels, the header says {rows}x{w}"
        ));
    }
    Ok((dh, dw))
}

fn read_into(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    buf.clear();
    if let Ok(m) = f.metadata() {
        buf.reserve(usize::try_from(m.len()).unwrap_or(0).saturating_add(1));
    }
    f.read_to_end(buf)?;
    Ok(())
}

/// Decode JPEG or PNG bytes (format from the magic bytes) to RGB.
#[cfg_attr(not(test), allow(dead_code))]
pub fn decode_bytes(bytes: &[u8]) -> Result<Decoded, String> {
    let mut data = Vec::new();
    let (h, w) = decode_bytes_into(bytes, &mut data)?;
    data.truncate(h * w * 3);
    Ok(Decoded { data, h, w })
}

/// Decode JPEG or PNG bytes to RGB into `out` (grown as needed, never shrunk); returns
/// `(h, w)`: the pixels are `out[..h * w * 3]`.
pub fn decode_bytes_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        check_jpeg_complete(bytes)?;
    }
    decode_complete_into(bytes, out)
}

/// [`decode_bytes_into`] for bytes whose JPEG structure is already checked.
fn decode_complete_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), String> {
    let format = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        if let Some(hw) = decode_jpeg_rgb_into(bytes, out)? {
            return Ok(hw);
        }
        image::ImageFormat::Jpeg
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        check_png_complete(bytes)?;
        image::ImageFormat::Png
    } else if bytes.is_empty() {
        return Err("the file is empty".into());
    } else {
        return Err("not a JPEG or PNG file (unknown magic bytes)".into());
    };
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| e.to_string())?;
    let rgb = img.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err("image has zero width or height".into());
    }
    *out = rgb.into_raw();
    Ok((h, w))
}

/// Decode a colour JPEG straight into `out` with zune-jpeg (the decoder the `image` crate
/// wraps, with the same options), skipping the `image` crate's copies of the input and its
/// zero-filled output. `Ok(None)` for gray or alpha JPEGs, which take the `image` path.
fn decode_jpeg_rgb_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<Option<(usize, usize)>, String> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    dec.decode_headers().map_err(|e| e.to_string())?;
    let Some(cs) = dec.input_colorspace() else {
        return Ok(None);
    };
    if matches!(cs, ColorSpace::Luma | ColorSpace::LumaA | ColorSpace::RGBA) {
        return Ok(None);
    }
    let (Some((w, h)), Some(n)) = (dec.dimensions(), dec.output_buffer_size()) else {
        return Ok(None);
    };
    if w == 0 || h == 0 {
        return Err("image has zero width or height".into());
    }
    if w.saturating_mul(h) > MAX_PIXELS {
        return Err(format!(
            "image claims {w}x{h} pixels, more than the {MAX_PIXELS} allowed (a corrupt or hostile header?)"
        ));
    }
    if n != h * w * 3 {
        return Ok(None);
    }
    if out.len() < n {
        out.resize(n, 0);
    }
    dec.decode_into(&mut out[..n]).map_err(|e| e.to_string())?;
    Ok(Some((h, w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};
    use std::io::Cursor;

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(37, 23, |x, y| {
            Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
        });
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn decodes_png_exactly() {
        let d = decode_bytes(&encoded(image::ImageFormat::Png)).unwrap();
        assert_eq!((d.h, d.w), (23, 37));
        assert_eq!(&d.data[..3], &[0, 0, 0]);
        let (x, y) = (5usize, 4usize);
        assert_eq!(&d.data[(y * 37 + x) * 3..][..3], &[35, 44, 27]);
    }

    #[test]
    fn decodes_jpeg() {
        let bytes = encoded(image::ImageFormat::Jpeg);
        check_jpeg_complete(&bytes).unwrap();
        let d = decode_bytes(&bytes).unwrap();
        assert_eq!((d.h, d.w), (23, 37));
    }

    #[test]
    fn truncated_and_corrupt_files_fail() {
        for fmt in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let bytes = encoded(fmt);
            for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 3] {
                assert!(decode_bytes(&bytes[..cut]).is_err(), "{fmt:?} cut at {cut}");
            }
        }
        assert!(decode_bytes(b"").is_err());
        assert!(decode_bytes(b"GIF89a....").is_err());
        let mut png = encoded(image::ImageFormat::Png);
        let mid = png.len() / 2;
        for b in &mut png[mid..mid + 16] {
            *b ^= 0x5A;
        }
        assert!(decode_bytes(&png).is_err());
    }

    #[test]
    fn top_rows_equal_a_full_decode() {
        // 4:2:2 from the `image` encoder at several sizes, and a 4:2:0 file (chroma is
        // upsampled vertically there, so the MCU row after the needed rows matters).
        let mut files = vec![include_bytes!("../testdata/yuv420_52x45.jpg").to_vec()];
        for (w, h) in [(37u32, 23u32), (64, 64), (61, 130), (200, 17)] {
            let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(w, h, |x, y| {
                let v = (x * 31 + y * 17 + (x * y) % 23) as u8;
                Rgb([v, v.wrapping_mul(3), 255 - v])
            });
            let mut buf = Cursor::new(Vec::new());
            img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
            files.push(buf.into_inner());
        }
        for original in files {
            let mut bytes = original.clone();
            let full = decode_bytes(&bytes).unwrap();
            let (h, w) = (full.h, full.w);
            let frame = check_jpeg_complete(&bytes).unwrap().unwrap();
            assert!(frame.rows_truncatable && (frame.height, frame.width) == (h, w));
            for needed in 0..=h + 2 {
                let mut asked = None;
                let mut out = Vec::new();
                let (dh, dw) = decode_top_rows_into(&mut bytes, &mut out, |fh, fw| {
                    asked = Some((fh, fw));
                    needed
                })
                .unwrap();
                assert_eq!(asked, Some((h, w)));
                assert_eq!(bytes, original, "the header is restored");
                assert_eq!((dh, dw), (frame.rows_to_decode(needed), w));
                assert!(dh >= needed.min(h) && dh <= h, "{dh} rows for {needed}");
                let n = needed.min(h) * w * 3;
                assert_eq!(out[..n], full.data[..n], "{w}x{h}, {needed} rows");
            }
            assert!(frame.rows_to_decode(1) < h, "{w}x{h} is decoded in part");
        }
        // PNG is decoded whole.
        let mut png = encoded(image::ImageFormat::Png);
        let mut out = Vec::new();
        assert_eq!(
            decode_top_rows_into(&mut png, &mut out, |_, _| 1).unwrap(),
            (23, 37)
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = decode_file(Path::new("/nonexistent/dir/x.jpg"))
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/dir/x.jpg"), "{err}");
    }
}
