//! JPEG/PNG decoding to RGB uint8 (H, W, 3) with errors that name the file.

use std::path::Path;

/// A decoded image, channels-last.
pub struct Decoded {
    pub data: Vec<u8>,
    pub h: usize,
    pub w: usize,
}

/// Read and decode one file; every failure message starts with the path.
pub fn decode_file(path: &Path) -> Result<Decoded, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))?;
    decode_bytes(&bytes).map_err(|e| format!("cannot decode image {}: {e}", path.display()))
}

/// Decode JPEG or PNG bytes (format from the magic bytes) to RGB.
pub fn decode_bytes(bytes: &[u8]) -> Result<Decoded, String> {
    let format = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        check_jpeg_complete(bytes)?;
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
    Ok(Decoded {
        data: rgb.into_raw(),
        h,
        w,
    })
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

/// Walk the JPEG marker segments and require an EOI marker after the last scan.
///
/// The decoder in use is lenient and fills missing data with gray, so a truncated file
/// would otherwise decode "successfully". Entropy-coded data stuffs every 0xFF with 0x00,
/// so a marker inside a scan can only be RSTn or the next real marker.
pub fn check_jpeg_complete(b: &[u8]) -> Result<(), String> {
    let n = b.len();
    let mut i = 2; // after SOI
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
            0xD9 => return Ok(()),
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
        i += len;
        if marker == 0xDA {
            // Scan data: find the next marker that is not a stuffed byte or RSTn.
            loop {
                while i < n && b[i] != 0xFF {
                    i += 1;
                }
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
    fn missing_file_names_the_path() {
        let err = decode_file(Path::new("/nonexistent/dir/x.jpg"))
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/dir/x.jpg"), "{err}");
    }
}
