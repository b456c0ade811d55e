//! Where images come from: a uint8 (N, H, W, C) buffer (owned, memory-mapped `.npy`, or
//! borrowed from a numpy array) or a list of JPEG/PNG files.

use std::any::Any;
use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::decode::{decode_file, decode_file_into, DecodeScratch};

/// A read-only byte buffer that stays valid while the source lives.
pub enum Bytes {
    /// An owned buffer (the unit tests build sources from these).
    #[cfg_attr(not(test), allow(dead_code))]
    Owned(Vec<u8>),
    Mapped {
        map: Mmap,
        offset: usize,
        len: usize,
    },
    /// Memory owned elsewhere (a numpy array); `owner` keeps it alive.
    External {
        ptr: *const u8,
        len: usize,
        _owner: Box<dyn Any + Send + Sync>,
    },
}

// SAFETY: the external memory is only read, and `_owner` keeps it alive; the caller of
// `Bytes::external` promises nobody writes to it while the source exists.
unsafe impl Send for Bytes {}
unsafe impl Sync for Bytes {}

impl Bytes {
    /// Borrow `len` bytes at `ptr` kept alive by `owner`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid and unmodified for as long as `owner` lives.
    pub unsafe fn external(ptr: *const u8, len: usize, owner: Box<dyn Any + Send + Sync>) -> Self {
        Bytes::External {
            ptr,
            len,
            _owner: owner,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            // SAFETY: see `Bytes::external`.
            Bytes::External { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

/// The header of a `.npy` file that holds uint8 data.
#[derive(Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

/// Parse a `.npy` header; only C-order uint8 arrays are accepted.
pub fn parse_npy_header(b: &[u8]) -> Result<NpyHeader, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic bytes)".into());
    }
    let major = b[6];
    let (hlen, start) = match major {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    if b.len() < start + hlen {
        return Err("truncated .npy header".into());
    }
    let text = std::str::from_utf8(&b[start..start + hlen])
        .map_err(|_| "the .npy header is not text".to_string())?;
    let descr = dict_value(text, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    if !matches!(descr, "|u1" | "<u1" | ">u1" | "=u1" | "u1") {
        return Err(format!(
            "only uint8 .npy images are supported, got dtype {descr:?}; convert with (x * 255).round().astype(np.uint8)"
        ));
    }
    let fortran =
        dict_value(text, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("Fortran-order .npy arrays are not supported; save a C-order array".into());
    }
    let shape_txt = dict_value(text, "shape").ok_or("the .npy header has no 'shape'")?;
    let inner = shape_txt
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {shape_txt:?} in .npy header"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad shape {shape_txt:?} in .npy header"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        shape,
        data_offset: start + hlen,
    })
}

/// The raw text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let pos = text.find(&pat1).or_else(|| text.find(&pat2))?;
    let rest = &text[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Images of the loader.
pub enum Source {
    /// (N, H, W, C) uint8, C-contiguous.
    Array {
        bytes: Bytes,
        n: usize,
        h: usize,
        w: usize,
        c: usize,
    },
    /// Files decoded to RGB on demand.
    Files { paths: Vec<PathBuf> },
}

/// One sample's pixels, channels-last.
pub struct SampleImage<'a> {
    pub data: Cow<'a, [u8]>,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Source {
    /// Wrap a buffer, checking its size against the shape.
    pub fn array(bytes: Bytes, shape: &[usize]) -> Result<Self, String> {
        let (n, h, w, c) = match *shape {
            [n, h, w] => (n, h, w, 1),
            [n, h, w, c] => (n, h, w, c),
            _ => {
                return Err(format!(
                    "images must have shape (N, H, W, C) or (N, H, W), got {shape:?}"
                ))
            }
        };
        if n == 0 || h == 0 || w == 0 || c == 0 {
            return Err(format!("images must be non-empty, got shape {shape:?}"));
        }
        let need = h
            .checked_mul(w)
            .and_then(|x| x.checked_mul(c))
            .and_then(|x| x.checked_mul(n))
            .ok_or_else(|| format!("shape {shape:?} is too large"))?;
        if bytes.as_slice().len() < need {
            return Err(format!(
                "images buffer holds {} bytes but shape {shape:?} needs {need}",
                bytes.as_slice().len()
            ));
        }
        Ok(Source::Array { bytes, n, h, w, c })
    }

    /// Memory-map a uint8 `.npy` file (the data is not read up front).
    pub fn npy(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: the file is opened read-only; like numpy's mmap_mode="r", we assume nobody
        // truncates it while it is mapped.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| format!("cannot memory-map {}: {e}", path.display()))?;
        let header = parse_npy_header(&map).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = map.len() - header.data_offset.min(map.len());
        let bytes = Bytes::Mapped {
            offset: header.data_offset,
            len,
            map,
        };
        Source::array(bytes, &header.shape).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        match self {
            Source::Array { n, .. } => *n,
            Source::Files { paths } => paths.len(),
        }
    }

    /// Channels of every sample (files are decoded as RGB).
    pub fn channels(&self) -> usize {
        match self {
            Source::Array { c, .. } => *c,
            Source::Files { .. } => 3,
        }
    }

    /// Native (H, W) of array samples; `None` for files (sizes vary).
    pub fn fixed_size(&self) -> Option<(usize, usize)> {
        match self {
            Source::Array { h, w, .. } => Some((*h, *w)),
            Source::Files { .. } => None,
        }
    }

    /// Sample `i` (borrowed for arrays, decoded for files).
    pub fn get(&self, i: usize) -> Result<SampleImage<'_>, String> {
        match self {
            Source::Array { .. } => self.array_sample(i),
            Source::Files { paths } => {
                let d = decode_file(&paths[i])?;
                Ok(SampleImage {
                    data: Cow::Owned(d.data),
                    h: d.h,
                    w: d.w,
                    c: 3,
                })
            }
        }
    }

    /// Sample `i` like [`Source::get`], but files are decoded into `scratch` (reused across
    /// calls on one thread) and borrowed from it.
    ///
    /// `rows_needed(h, w)` is called once with the sample's full size and answers how many
    /// top rows the caller reads; a file may then come back with fewer rows than `h` (at
    /// least that many, bit-identical to a full decode).
    pub fn get_with<'a>(
        &'a self,
        i: usize,
        scratch: &'a mut DecodeScratch,
        rows_needed: impl FnOnce(usize, usize) -> usize,
    ) -> Result<SampleImage<'a>, String> {
        match self {
            Source::Array { h, w, .. } => {
                rows_needed(*h, *w);
                self.array_sample(i)
            }
            Source::Files { paths } => {
                let (h, w) = decode_file_into(&paths[i], scratch, rows_needed)?;
                Ok(SampleImage {
                    data: Cow::Borrowed(&scratch.pixels[..h * w * 3]),
                    h,
                    w,
                    c: 3,
                })
            }
        }
    }

    fn array_sample(&self, i: usize) -> Result<SampleImage<'_>, String> {
        match self {
            Source::Array { bytes, h, w, c, .. } => {
                let sz = h * w * c;
                Ok(SampleImage {
                    data: Cow::Borrowed(&bytes.as_slice()[i * sz..(i + 1) * sz]),
                    h: *h,
                    w: *w,
                    c: *c,
                })
            }
            Source::Files { .. } => Err("internal error: not an array source".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        let total = 10 + h.len() + 1;
        let pad = (64 - total % 64) % 64;
        h.push_str(&" ".repeat(pad));
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_good_header() {
        let b = npy_bytes(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 3, 1), }",
            &[0; 18],
        );
        let h = parse_npy_header(&b).unwrap();
        assert_eq!(h.shape, vec![2, 3, 3, 1]);
        assert_eq!(h.data_offset % 64, 0);
        let b = npy_bytes(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (5,), }",
            &[0; 5],
        );
        assert_eq!(parse_npy_header(&b).unwrap().shape, vec![5]);
    }

    #[test]
    fn rejects_bad_headers() {
        let f32h = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }",
            &[],
        );
        assert!(parse_npy_header(&f32h).unwrap_err().contains("uint8"));
        let fort = npy_bytes(
            "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 2, 2), }",
            &[],
        );
        assert!(parse_npy_header(&fort).unwrap_err().contains("Fortran"));
        assert!(parse_npy_header(b"PK\x03\x04 not npy").is_err());
        let cut = npy_bytes(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }",
            &[],
        );
        assert!(parse_npy_header(&cut[..20]).is_err());
    }

    #[test]
    fn npy_file_is_mapped_and_read() {
        let data: Vec<u8> = (0..2 * 2 * 2 * 3).map(|v| v as u8).collect();
        let b = npy_bytes(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2, 2, 3), }",
            &data,
        );
        let dir = std::env::temp_dir().join(format!("mimir_npy_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        std::fs::write(&path, &b).unwrap();
        let src = Source::npy(&path).unwrap();
        assert_eq!(src.len(), 2);
        assert_eq!(src.channels(), 3);
        assert_eq!(&*src.get(1).unwrap().data, &data[12..24]);
        // A file shorter than its shape says is rejected with the path in the message.
        std::fs::write(&path, &b[..b.len() - 1]).unwrap();
        let err = Source::npy(&path).err().unwrap();
        assert!(err.contains("x.npy") && err.contains("needs"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn array_shape_checks() {
        assert!(Source::array(Bytes::Owned(vec![0; 8]), &[2, 2, 2]).is_ok());
        assert!(Source::array(Bytes::Owned(vec![0; 7]), &[2, 2, 2]).is_err());
        assert!(Source::array(Bytes::Owned(vec![0; 8]), &[8]).is_err());
        assert!(Source::array(Bytes::Owned(vec![]), &[0, 2, 2]).is_err());
    }
}
