//! The structure of encoded files: a walk over PNG chunks and JPEG marker segments that
//! tells a whole file from a cut one, and reads a JPEG's frame header (size, sampling, and
//! whether its top rows can be decoded alone).

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
    pub(crate) height_at: usize,
    /// Image components (channels) of the frame.
    components: usize,
    /// Rows per MCU row (8 times the largest vertical sampling factor).
    mcu_rows: usize,
    /// Sequential Huffman coding with one scan holding every component: the entropy-coded
    /// data is a single pass of MCU rows from the top, so a shorter height stops early.
    pub(crate) rows_truncatable: bool,
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

    /// Read a frame header (SOFn) segment of at least 6 bytes, whose height field is at
    /// `height_at` in the file.
    fn read(marker: u8, seg: &[u8], height_at: usize) -> Self {
        let components = usize::from(seg[5]);
        let max_v = (0..components)
            .filter_map(|k| seg.get(6 + 3 * k + 1))
            .map(|&hv| usize::from(hv & 0x0F))
            .max()
            .unwrap_or(1);
        JpegFrame {
            height: usize::from(seg[1]) << 8 | usize::from(seg[2]),
            width: usize::from(seg[3]) << 8 | usize::from(seg[4]),
            height_at,
            components,
            mcu_rows: 8 * max_v.clamp(1, 4),
            rows_truncatable: matches!(marker, 0xC0 | 0xC1) && seg.len() == 6 + 3 * components,
        }
    }
}

/// Walk the JPEG marker segments, require an EOI marker after the last scan, and return the
/// frame header (None when there is none before the first scan).
///
/// The decoder in use is lenient and fills missing data with gray, so a truncated file
/// would otherwise decode "successfully". Entropy-coded data stuffs every 0xFF with 0x00,
/// so a marker inside a scan can only be RSTn or the next real marker.
pub fn check_jpeg_complete(b: &[u8]) -> Result<Option<JpegFrame>, String> {
    let mut i = 2; // after SOI
    let mut frame: Option<JpegFrame> = None;
    let mut scans = 0usize;
    loop {
        let (marker, after) = next_marker(b, i)?;
        i = after;
        match marker {
            0xD9 => {
                if let Some(f) = frame.as_mut().filter(|_| scans > 1) {
                    f.rows_truncatable = false;
                }
                return Ok(frame);
            }
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let (seg, end) = segment(b, i)?;
        let is_sof = matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if is_sof && frame.is_none() && seg.len() >= 6 {
            frame = Some(JpegFrame::read(marker, seg, i + 3));
        }
        i = end;
        if marker == 0xDA {
            scans += 1;
            let all_components =
                |f: &JpegFrame| seg.first().map(|&ns| usize::from(ns)) == Some(f.components);
            if let Some(f) = frame.as_mut().filter(|f| scans == 1 && !all_components(f)) {
                f.rows_truncatable = false;
            }
            i = skip_scan_data(b, i)?;
        }
    }
}

/// The next marker at or after `i` (junk and fill bytes before it skipped, as lenient
/// decoders do) and the index just past it.
fn next_marker(b: &[u8], mut i: usize) -> Result<(u8, usize), String> {
    let n = b.len();
    while i < n && b[i] != 0xFF {
        i += 1;
    }
    while i < n && b[i] == 0xFF {
        i += 1;
    }
    if i >= n {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    Ok((b[i], i + 1))
}

/// The payload of the marker segment whose length field is at `i`, and the index past it.
fn segment(b: &[u8], i: usize) -> Result<(&[u8], usize), String> {
    if i + 2 > b.len() {
        return Err("truncated JPEG (segment header cut off)".into());
    }
    let len = usize::from(b[i]) << 8 | usize::from(b[i + 1]);
    if len < 2 || i + len > b.len() {
        return Err("truncated JPEG (segment cut off)".into());
    }
    Ok((&b[i + 2..i + len], i + len))
}

/// The index of the marker that ends the entropy-coded data starting at `i`: the first 0xFF
/// that is not a stuffed byte, an RSTn marker or a fill byte.
fn skip_scan_data(b: &[u8], mut i: usize) -> Result<usize, String> {
    loop {
        i = find_ff(b, i);
        if i + 1 >= b.len() {
            return Err("truncated JPEG (scan data cut off before end-of-image)".into());
        }
        let next = b[i + 1];
        if next == 0x00 || (0xD0..=0xD7).contains(&next) || next == 0xFF {
            i += if next == 0xFF { 1 } else { 2 };
            continue;
        }
        return Ok(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
