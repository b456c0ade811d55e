//! JPEG/PNG decoding to RGB uint8 (H, W, 3) with errors that name the file.

use std::path::Path;

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

/// Walk the PNG chunks and require the IEND chunk (a truncated file lacks it).
pub fn check_png_complete(b: &[u8]) -> Result<(), String> {
    let mut i = 8;
    while i + 8 <= b.len() {
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let kind = &b[i + 4..i + 8];
        let end = i
            .checked_add(12)
            .and_then(|v| v.checked_add(len))
            .ok_or("corrupt PNG (chunk length overflows)")?;
        if end > b.len() {
            return Err("truncated PNG (a chunk is cut off)".into());
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i = end;
    }
    Err("truncated PNG (no IEND chunk)".into())
}

/// The index of the first 0xFF byte of `b` at or after `from` (`b.len()` when none), eight
/// bytes at a time: scan data is most of a JPEG file.
fn find_ff(b: &[u8], from: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = from.min(b.len());
    for chunk in b[i..].chunks_exact(8) {
        // A byte of `!v` is zero exactly where `v` has 0xFF (the classic has-zero-byte test).
        let v = !u64::from_le_bytes(chunk.try_into().unwrap());
        if v.wrapping_sub(LO) & !v & HI != 0 {
            break;
        }
        i += 8;
    }
    while i < b.len() && b[i] != 0xFF {
        i += 1;
    }
    i
}

/// What a JPEG's frame header says, and whether its top rows can be decoded alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegFrame {
    pub height: usize,
    pub width: usize,
    /// Offset of the 16-bit height field in the file.
    height_at: usize,
    /// Rows per MCU row (8 times the largest vertical sampling factor).
    mcu_rows: usize,
    /// Sequential Huffman coding with one scan holding every component: the entropy-coded
    /// data is a single pass of MCU rows from the top, so a shorter height stops early.
    rows_truncatable: bool,
}

impl JpegFrame {
    /// How many rows to decode so that the top `needed` ones equal a full decode: whole MCU
    /// rows plus one more (chroma upsampling looks one row ahead), never more than `height`.
    pub fn rows_to_decode(&self, needed: usize) -> usize {
        if !self.rows_truncatable || needed >= self.height {
            return self.height;
        }
        let m = self.mcu_rows;
        (needed.div_ceil(m) * m + m).min(self.height)
    }
}

/// Walk the JPEG marker segments, require an EOI marker after the last scan, and return the
/// frame header (None when there is none before the first scan).
///
/// The decoder in use is lenient and fills missing data with gray, so a truncated file
/// would otherwise decode "successfully". Entropy-coded data stuffs every 0xFF with 0x00,
/// so a marker inside a scan can only be RSTn or the next real marker.
pub fn check_jpeg_complete(b: &[u8]) -> Result<Option<JpegFrame>, String> {
    let n = b.len();
    let mut i = 2; // after SOI
    let mut frame: Option<JpegFrame> = None;
    let mut components = 0usize;
    let mut scans = 0usize;
    loop {
        // Skip fill bytes before a marker.
        while i < n && b[i] != 0xFF {
            i += 1; // tolerate junk between segments as lenient decoders do
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return Err("truncated JPEG (no end-of-image marker)".into());
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => {
                if scans > 1 {
                    if let Some(f) = frame.as_mut() {
                        f.rows_truncatable = false;
                    }
                }
                return Ok(frame);
            }
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        if i + 2 > n {
            return Err("truncated JPEG (segment header cut off)".into());
        }
        let len = usize::from(b[i]) << 8 | usize::from(b[i + 1]);
        if len < 2 || i + len > n {
            return Err("truncated JPEG (segment cut off)".into());
        }
        let seg = &b[i + 2..i + len];
        let is_sof = matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if is_sof && frame.is_none() && seg.len() >= 6 {
            components = usize::from(seg[5]);
            let max_v = (0..components)
                .filter_map(|k| seg.get(6 + 3 * k + 1))
                .map(|&hv| usize::from(hv & 0x0F))
                .max()
                .unwrap_or(1);
            frame = Some(JpegFrame {
                height: usize::from(seg[1]) << 8 | usize::from(seg[2]),
                width: usize::from(seg[3]) << 8 | usize::from(seg[4]),
                height_at: i + 3,
                mcu_rows: 8 * max_v.clamp(1, 4),
                rows_truncatable: matches!(marker, 0xC0 | 0xC1) && seg.len() == 6 + 3 * components,
            });
        }
        if marker == 0xDA {
            scans += 1;
            if scans == 1 && seg.first().map(|&ns| usize::from(ns)) != Some(components) {
                if let Some(f) = frame.as_mut() {
                    f.rows_truncatable = false;
                }
            }
        }
        i += len;
        if marker == 0xDA {
            // Scan data: find the next marker that is not a stuffed byte or RSTn.
            loop {
                i = find_ff(b, i);
                if i + 1 >= n {
                    return Err("truncated JPEG (scan data cut off before end-of-image)".into());
                }
                let next = b[i + 1];
                if next == 0x00 || (0xD0..=0xD7).contains(&next) || next == 0xFF {
                    i += if next == 0xFF { 1 } else { 2 };
                    continue;
                }
                break;
            }
        }
    }
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
    fn find_ff_matches_a_plain_scan() {
        let mut b: Vec<u8> = (0..300u32).map(|v| (v * 7 % 255) as u8).collect();
        for pos in [0usize, 1, 7, 8, 9, 63, 64, 150, 298, 299] {
            let mut c = b.clone();
            c[pos] = 0xFF;
            for from in [0usize, 1, 5, 8, 100, 299, 300, 400] {
                let want = (from.min(c.len())..c.len())
                    .find(|&k| c[k] == 0xFF)
                    .unwrap_or(c.len());
                assert_eq!(find_ff(&c, from), want, "pos {pos} from {from}");
            }
        }
        b.retain(|&v| v != 0xFF);
        assert_eq!(find_ff(&b, 0), b.len());
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
