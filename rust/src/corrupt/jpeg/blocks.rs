//! The per-block half of the JPEG round trip: libjpeg's integer forward DCT ("islow"),
//! quantisation and dequantisation, and integer inverse DCT, on eight blocks at a time (one a
//! lane of each vector, so the passes need no transposes).

use std::ops::{Add, Mul, Sub};

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

    #[inline(always)]
    fn quantize(self, t: i32) -> i32 {
        let q = (((t.unsigned_abs() + self.corr) * self.recip) >> self.shift) as i32;
        if t < 0 {
            -q
        } else {
            q
        }
    }
}

/// One component's tables: the divisors of the DCT outputs and the dequantisation factors.
pub(super) struct Quant {
    divisors: [Divisor; 64],
    factors: [i32; 64],
}

impl Quant {
    pub(super) fn new(table: [i32; 64]) -> Self {
        Quant {
            divisors: table.map(|q| Divisor::new(8 * q as u32)),
            factors: table,
        }
    }
}

/// Eight lanes of `i32`: one row (or column) of a block, worked on element-wise.
#[derive(Clone, Copy, Default)]
struct V([i32; 8]);

impl Add for V {
    type Output = V;
    #[inline(always)]
    fn add(self, o: V) -> V {
        let mut v = self.0;
        for (x, y) in v.iter_mut().zip(o.0) {
            *x += y;
        }
        V(v)
    }
}

impl Sub for V {
    type Output = V;
    #[inline(always)]
    fn sub(self, o: V) -> V {
        let mut v = self.0;
        for (x, y) in v.iter_mut().zip(o.0) {
            *x -= y;
        }
        V(v)
    }
}

impl Mul<i32> for V {
    type Output = V;
    #[inline(always)]
    fn mul(self, c: i32) -> V {
        let mut v = self.0;
        for x in &mut v {
            *x *= c;
        }
        V(v)
    }
}

impl V {
    /// `x << n`.
    #[inline(always)]
    fn up(self, n: u32) -> V {
        let mut v = self.0;
        for x in &mut v {
            *x <<= n;
        }
        V(v)
    }
    /// `x / 2^n` rounded (half up), libjpeg's DESCALE.
    #[inline(always)]
    fn descale(self, n: u32) -> V {
        let mut v = self.0;
        for x in &mut v {
            *x = (*x + (1 << (n - 1))) >> n;
        }
        V(v)
    }
}

/// Eight values along one axis of an 8x8 block, for eight blocks at once (one a lane).
type Line = [V; 8];

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
fn odd_part(a: V, b: V, c: V, d: V) -> [V; 4] {
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

/// One pass of the forward DCT along a line (the first pass over rows, the second over
/// columns).
#[inline(always)]
fn fdct_pass(d: &mut Line, first: bool) {
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

/// One pass of the inverse DCT along a line (the first over columns, the second over rows,
/// which also removes the 8x scale of the pair).
#[inline(always)]
fn idct_pass(d: &mut Line, first: bool) {
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

/// libjpeg's output range limit after the IDCT: `x + 128` clamped to 0..=255 for
/// `|x| <= 512`, wrapping (mod 1024) beyond, as its lookup table does.
#[inline(always)]
fn range_limit(x: i32) -> u8 {
    let i = x & 1023;
    (if i < 512 {
        (i + 128).min(255)
    } else {
        (i - 896).max(0)
    }) as u8
}

/// Eight 8x8 blocks, `[row][column]`, one a lane.
type Blocks = [Line; 8];

/// Apply a pass of the forward (`forward`) or inverse DCT, the first or second (`first`), to
/// every row (`rows`) or every column of `b`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // k indexes rows and columns alike
fn each_line(b: &mut Blocks, rows: bool, (forward, first): (bool, bool)) {
    for k in 0..8 {
        let mut line: Line = [V::default(); 8];
        for (i, v) in line.iter_mut().enumerate() {
            *v = if rows { b[k][i] } else { b[i][k] };
        }
        if forward {
            fdct_pass(&mut line, first);
        } else {
            idct_pass(&mut line, first);
        }
        for (i, v) in line.into_iter().enumerate() {
            if rows {
                b[k][i] = v;
            } else {
                b[i][k] = v;
            }
        }
    }
}

/// Code eight 8x8 blocks of `plane` (`stride` wide), at the top-left `corners`, in place:
/// DCT, quantise, dequantise, IDCT. A corner may repeat (it is coded the same each time).
#[inline(always)]
fn code_blocks(plane: &mut [u8], stride: usize, corners: &[usize; 8], quant: &Quant) {
    let mut b: Blocks = [[V::default(); 8]; 8];
    for (lane, &corner) in corners.iter().enumerate() {
        for (r, row) in b.iter_mut().enumerate() {
            let src = &plane[corner + r * stride..][..8];
            for (v, &p) in row.iter_mut().zip(src) {
                v.0[lane] = i32::from(p) - 128;
            }
        }
    }
    each_line(&mut b, true, (true, true));
    each_line(&mut b, false, (true, false));
    let mut ac = V::default(); // the OR of every AC coefficient, per lane
    for (v, row) in b.iter_mut().enumerate() {
        for (u, x) in row.iter_mut().enumerate() {
            let (d, f) = (quant.divisors[v * 8 + u], quant.factors[v * 8 + u]);
            for t in &mut x.0 {
                *t = d.quantize(*t) * f;
            }
            if v + u > 0 {
                for (a, &c) in ac.0.iter_mut().zip(&x.0) {
                    *a |= c;
                }
            }
        }
    }
    if ac.0 == [0; 8] {
        // DC only (common at low quality): the IDCT is the DC descaled, everywhere.
        for (lane, &corner) in corners.iter().enumerate() {
            let value = range_limit((b[0][0].0[lane] * 4 + 16) >> 5);
            for r in 0..8 {
                plane[corner + r * stride..][..8].fill(value);
            }
        }
        return;
    }
    each_line(&mut b, false, (false, true));
    each_line(&mut b, true, (false, false));
    for (lane, &corner) in corners.iter().enumerate() {
        for (r, row) in b.iter().enumerate() {
            let dst = &mut plane[corner + r * stride..][..8];
            for (o, v) in dst.iter_mut().zip(row) {
                *o = range_limit(v.0[lane]);
            }
        }
    }
}

/// Code every block of an `(h, w)` plane whose sides are multiples of 8 (blocks wholly
/// below `rows` or right of `cols` skipped: they hold only padding), eight at a time.
#[inline(always)]
pub(super) fn code_plane(
    plane: &mut [u8],
    (h, w): (usize, usize),
    (rows, cols): (usize, usize),
    quant: &Quant,
) {
    let tops = (0..h.min(rows.div_ceil(8) * 8)).step_by(8);
    let lefts = (0..w.min(cols.div_ceil(8) * 8)).step_by(8);
    let corners: Vec<usize> = tops
        .flat_map(|t| lefts.clone().map(move |l| t * w + l))
        .collect();
    for group in corners.chunks(8) {
        let mut eight = [group[0]; 8];
        eight[..group.len()].copy_from_slice(group);
        code_blocks(plane, w, &eight, quant);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
