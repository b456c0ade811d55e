//! The per-block half of the JPEG round trip: libjpeg's integer forward DCT ("islow"),
//! quantisation and dequantisation, and integer inverse DCT, a block at a time: eight vectors
//! of eight lanes, its rows or (transposed) its columns.

use super::lanes::{range_limit, Lanes, Rates};

/// Rounded division of a DCT output by `8 q` as libjpeg-turbo does it: a multiply by a
/// 16-bit reciprocal with a rounding correction, then a shift.
#[derive(Clone, Copy)]
struct Divisor {
    recip: u32,
    corr: u32,
    shift: u32,
}

impl Divisor {
    fn new(d: u32) -> Self {
        let b = 31 - d.leading_zeros(); // floor(log2 d)
        let mut r = 16 + b;
        let (mut fq, fr) = ((1u64 << r) / u64::from(d), (1u64 << r) % u64::from(d));
        let mut corr = d / 2;
        if fr == 0 {
            fq >>= 1; // d a power of two
            r -= 1;
        } else if fr <= u64::from(d / 2) {
            corr += 1;
        } else {
            fq += 1;
        }
        Divisor {
            recip: fq as u32,
            corr,
            shift: r,
        }
    }
}

/// One component's tables, a [`Rates`] a row of coefficients.
pub(super) struct Quant {
    rows: [Rates; 8],
}

impl Quant {
    pub(super) fn new(table: [i32; 64]) -> Self {
        let rates = |v: usize| {
            let row: [i32; 8] = std::array::from_fn(|u| table[v * 8 + u]);
            let d = row.map(|q| Divisor::new(8 * q as u32));
            Rates {
                recip: d.map(|d| d.recip),
                corr: d.map(|d| d.corr),
                shift: d.map(|d| d.shift),
                factor: row,
            }
        };
        Quant {
            rows: std::array::from_fn(rates),
        }
    }
}

/// One 8x8 block as eight vectors: its rows (a lane a column), or after [`Lanes::transpose`] its
/// columns.
type Block<L> = [L; 8];

// The islow DCT: Loeffler, Ligtenberg & Moschytz's 8-point factorisation with constants
// `round(c * 2^13)`; the first pass keeps PASS1_BITS more bits.
const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const C0_298: i32 = 2446; // 0.298631336
const C0_390: i32 = 3196; // 0.390180644
const C0_541: i32 = 4433; // 0.541196100
const C0_765: i32 = 6270; // 0.765366865
const C0_899: i32 = 7373; // 0.899976223
const C1_175: i32 = 9633; // 1.175875602
const C1_501: i32 = 12299; // 1.501321110
const C1_847: i32 = 15137; // 1.847759065
const C1_961: i32 = 16069; // 1.961570560
const C2_053: i32 = 16819; // 2.053119869
const C2_562: i32 = 20995; // 2.562915447
const C3_072: i32 = 25172; // 3.072711026

/// The odd part shared by both directions: from `(a, b, c, d)` (the inputs at 7, 5, 3, 1
/// of the inverse, or the differences 3-4, 2-5, 1-6, 0-7 of the forward transform) the
/// four rotated sums.
#[inline(always)]
fn odd_part<L: Lanes>(a: L, b: L, c: L, d: L) -> [L; 4] {
    let (z1, z2, z3, z4) = (a + d, b + c, a + c, b + d);
    let z5 = (z3 + z4) * C1_175;
    let (z1, z2) = (z1 * -C0_899, z2 * -C2_562);
    let (z3, z4) = (z3 * -C1_961 + z5, z4 * -C0_390 + z5);
    [
        a * C0_298 + z1 + z3,
        b * C2_053 + z2 + z4,
        c * C3_072 + z2 + z3,
        d * C1_501 + z1 + z4,
    ]
}

/// One pass of the forward DCT across the eight vectors of `d`, in each lane (the first pass
/// over rows, the second over columns).
#[inline(always)]
fn fdct_pass<L: Lanes>(d: &mut Block<L>, first: bool) {
    let (t0, t1, t2, t3) = (d[0] + d[7], d[1] + d[6], d[2] + d[5], d[3] + d[4]);
    let (t7, t6, t5, t4) = (d[0] - d[7], d[1] - d[6], d[2] - d[5], d[3] - d[4]);
    let (t10, t13, t11, t12) = (t0 + t3, t0 - t3, t1 + t2, t1 - t2);
    let n = if first {
        CONST_BITS - PASS1_BITS
    } else {
        CONST_BITS + PASS1_BITS
    };
    if first {
        d[0] = (t10 + t11).up(PASS1_BITS);
        d[4] = (t10 - t11).up(PASS1_BITS);
    } else {
        d[0] = (t10 + t11).descale(PASS1_BITS);
        d[4] = (t10 - t11).descale(PASS1_BITS);
    }
    let z1 = (t12 + t13) * C0_541;
    d[2] = (z1 + t13 * C0_765).descale(n);
    d[6] = (z1 + t12 * -C1_847).descale(n);
    let [o7, o5, o3, o1] = odd_part(t4, t5, t6, t7);
    (d[7], d[5], d[3], d[1]) = (o7.descale(n), o5.descale(n), o3.descale(n), o1.descale(n));
}

/// One pass of the inverse DCT across the eight vectors of `d`, in each lane (the first over
/// columns, the second over rows, which also removes the 8x scale of the pair).
#[inline(always)]
fn idct_pass<L: Lanes>(d: &mut Block<L>, first: bool) {
    let n = if first {
        CONST_BITS - PASS1_BITS
    } else {
        CONST_BITS + PASS1_BITS + 3
    };
    let z1 = (d[2] + d[6]) * C0_541;
    let (t2, t3) = (z1 + d[6] * -C1_847, z1 + d[2] * C0_765);
    let (t0, t1) = ((d[0] + d[4]).up(CONST_BITS), (d[0] - d[4]).up(CONST_BITS));
    let (t10, t13, t11, t12) = (t0 + t3, t0 - t3, t1 + t2, t1 - t2);
    let [o0, o1, o2, o3] = odd_part(d[7], d[5], d[3], d[1]);
    let outputs = [
        t10 + o3,
        t11 + o2,
        t12 + o1,
        t13 + o0,
        t13 - o0,
        t12 - o1,
        t11 - o2,
        t10 - o3,
    ];
    for (out, v) in d.iter_mut().zip(outputs) {
        *out = v.descale(n);
    }
}

/// Code the 8x8 block of `plane` (`stride` wide) whose top-left sample is at `corner`, in
/// place: DCT, quantise, dequantise, IDCT.
#[inline(always)]
fn code_block<L: Lanes>(plane: &mut [u8], stride: usize, corner: usize, quant: &Quant) {
    // Plain loops, no closures: a closure would not inherit the caller's AVX2.
    let mut b: Block<L> = [L::load_centred(&plane[corner..]); 8];
    for (r, row) in b.iter_mut().enumerate().skip(1) {
        *row = L::load_centred(&plane[corner + r * stride..]);
    }
    // The forward DCT over rows, then over columns: b[v] ends as the coefficients of
    // vertical frequency v, a lane a horizontal frequency.
    L::transpose(&mut b);
    fdct_pass(&mut b, true);
    L::transpose(&mut b);
    fdct_pass(&mut b, false);
    for (row, rates) in b.iter_mut().zip(&quant.rows) {
        *row = row.requantize(rates);
    }
    if L::only_dc(&b) {
        // Common at low quality: the IDCT is the DC descaled, everywhere.
        let value = range_limit((b[0].first() * 4 + 16) >> 5);
        for r in 0..8 {
            plane[corner + r * stride..][..8].fill(value);
        }
        return;
    }
    // The inverse DCT over columns, then over rows.
    idct_pass(&mut b, true);
    L::transpose(&mut b);
    idct_pass(&mut b, false);
    L::transpose(&mut b);
    for (r, row) in b.into_iter().enumerate() {
        row.store_limited(&mut plane[corner + r * stride..]);
    }
}

/// Code every block of an `(h, w)` plane whose sides are multiples of 8 (blocks wholly
/// below `rows` or right of `cols` skipped: they hold only padding), with lanes `L`.
#[inline(always)]
pub(super) fn code_plane<L: Lanes>(
    plane: &mut [u8],
    (h, w): (usize, usize),
    (rows, cols): (usize, usize),
    quant: &Quant,
) {
    for top in (0..h.min(rows.div_ceil(8) * 8)).step_by(8) {
        for left in (0..w.min(cols.div_ceil(8) * 8)).step_by(8) {
            code_block::<L>(plane, w, top * w + left, quant);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
