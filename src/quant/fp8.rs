//! FP8 E4M3 (OCP "E4M3FN", `torch.float8_e4m3fn`): the scalar definition of the saturating conversion, the table
//! of the 256 codes' values, the per-group scale, and the bulk quantize / fake-quantize loops, with an AVX2 path
//! chosen at run time that gives the same bits as the portable one.
//!
//! The format: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; NaN is `S.1111.111`
//! (codes 0x7F and 0xFF); the largest finite value is 448, the smallest normal 2^-6, the subnormal step 2^-9.
//! The formulas are written down in `docs/QUANTIZATION.md` ("FP8 E4M3").

/// Largest finite E4M3 value (`S.1111.110` = 1.75 · 2^8); finite inputs beyond it saturate to it.
pub const E4M3_MAX: f32 = 448.0;
/// Smallest normal E4M3 value (2^-6); below it the grid is the subnormal one.
pub const E4M3_MIN_NORMAL: f32 = 1.0 / 64.0;
/// Step of the subnormal grid (2^-9), which is also the smallest positive value.
pub const E4M3_SUBNORMAL_STEP: f32 = 1.0 / 512.0;
/// Where the clamp starts to matter: `|v|` above 464 (the midpoint between 448 and 480, the next value an E4M3
/// without the NaN code would have) rounds beyond 448 and is saturated; `|v|` in `(448, 464]` rounds to 448 with or
/// without the clamp (464 is a tie that goes to 448, the even mantissa). The measure pass counts `|x / scale| > 464`
/// as saturated, as INT8 counts codes that rounding put outside the range.
pub const E4M3_SATURATION_THRESHOLD: f32 = 464.0;
/// Elements per parallel task of [`fake_quantize_e4m3_rows`].
const ROWS_TASK_ELEMENTS: usize = 1 << 14;
/// The NaN code with the sign bit clear (0x7F); 0xFF is the NaN with the sign bit set.
pub const E4M3_NAN: u8 = 0x7F;

/// `(biased f32 exponent << 3 | 3 mantissa bits)` of 2^-6 minus its E4M3 code 0x08: `(127 - 7) << 3`.
const NORMAL_CODE_OFFSET: u32 = (127 - 7) << 3;
/// The sign bit of an f32.
const F32_SIGN: u32 = 0x8000_0000;
/// The quiet NaN that codes 0x7F and 0xFF decode to (with their sign).
const QUIET_NAN_BITS: u32 = 0x7FC0_0000;

/// The value of every code, index = code.
static E4M3_VALUES: [f32; 256] = e4m3_table();

const fn e4m3_table() -> [f32; 256] {
    let mut table = [0f32; 256];
    let mut code = 0usize;
    while code < 256 {
        let sign = ((code as u32) & 0x80) << 24;
        let exponent = ((code as u32) >> 3) & 0xF;
        let mantissa = (code as u32) & 0x7;
        let magnitude_bits = if exponent == 0xF && mantissa == 0x7 {
            QUIET_NAN_BITS
        } else if exponent == 0 {
            // m · 2^-9, exact in f32.
            (mantissa as f32 * E4M3_SUBNORMAL_STEP).to_bits()
        } else {
            // (1 + m/8) · 2^(e - 7): the f32 with biased exponent e - 7 + 127 and the mantissa's top 3 bits m.
            ((exponent + 120) << 23) | (mantissa << 20)
        };
        table[code] = f32::from_bits(magnitude_bits | sign);
        code += 1;
    }
    table
}

/// The value of an E4M3 code as f32 (exact; codes 0x7F and 0xFF give a quiet NaN of their sign).
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_VALUES[code as usize]
}

/// The E4M3 code of `v` after saturating it to `[-448, 448]`: `e4m3(clamp(v, -448, 448))`, round to nearest, ties
/// to even, on the whole E4M3 grid (subnormals included). NaN gives the NaN code of its sign (0x7F / 0xFF), ±inf
/// give ±448 (0x7E / 0xFE), and a value that rounds to zero keeps its sign (-0 is 0x80).
///
/// This is the definition; the AVX2 loops and the tests are held to it.
#[inline]
pub fn to_e4m3_saturating(v: f32) -> u8 {
    let sign = ((v.to_bits() >> 24) & 0x80) as u8;
    if v.is_nan() {
        return sign | E4M3_NAN;
    }
    let a = v.abs().min(E4M3_MAX);
    let magnitude = if a < E4M3_MIN_NORMAL {
        // Subnormal grid: a multiple of 2^-9. `a · 2^9` is exact; rounding 7.5 or more up gives 8, the code of
        // 2^-6, which is also the right code.
        (a * 512.0).round_ties_even() as u8
    } else {
        // Normal grid: round the f32 to 3 mantissa bits, ties to even, on its bits. A carry out of the mantissa
        // moves to the next exponent, which is the right value; 448 is on the grid, so nothing rounds past it.
        let bits = a.to_bits();
        let rounded = bits + 0x7_FFFF + ((bits >> 20) & 1);
        ((rounded >> 20) - NORMAL_CODE_OFFSET) as u8
    };
    sign | magnitude
}

/// The scale of one group (a tensor or one output channel) from the absolute maximum of its finite values:
/// `absmax / 448` in f32; 1 when that is 0 or not finite; lowered one ulp at a time while `448 · scale`
/// overflows f32 (only for `absmax` within a few ulps of `f32::MAX`).
pub fn fp8_scale(absmax: f32) -> f32 {
    let scale = absmax / E4M3_MAX;
    let mut scale = if scale > 0.0 && scale.is_finite() { scale } else { 1.0 };
    while (E4M3_MAX * scale).is_infinite() {
        scale = scale.next_down();
    }
    scale
}

/// The largest `|x|` over the finite values of `x` (0 when there are none), in 8 lanes that the compiler
/// vectorises.
pub fn absmax_finite(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut blocks = x.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            // NaN and ±inf fail `a < inf` and are skipped; the comparison form vectorises.
            let a = v.abs();
            *lane = if a > *lane && a < f32::INFINITY { a } else { *lane };
        }
    }
    let tail = blocks.remainder().iter().map(|v| v.abs()).filter(|a| a.is_finite());
    lanes.into_iter().chain(tail).fold(0f32, f32::max)
}

/// The code of `x` with `scale` (finite, > 0): `to_e4m3_saturating(x / scale)`, the division in f32.
#[inline]
pub fn quantize_value(x: f32, scale: f32) -> u8 {
    to_e4m3_saturating(x / scale)
}

/// The round trip of `x` with `scale` (finite, > 0): `f32(e4m3(clamp(x / scale, ±448))) · scale`, in f32.
/// NaN stays NaN, ±inf become `±448 · scale`.
#[inline]
pub fn quantize_dequantize(x: f32, scale: f32) -> f32 {
    e4m3_to_f32(quantize_value(x, scale)) * scale
}

fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The codes of `x` with `scale` (finite, > 0) into `out` (same length), as [`quantize_value`]: what an export
/// writes.
pub fn quantize_e4m3(x: &[f32], scale: f32, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "codes buffer must match the input");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { avx2::quantize(x, scale, out) };
        return;
    }
    quantize_e4m3_portable(x, scale, out);
}

/// The round trips of `x` with `scale` (finite, > 0) into `out` (same length), as [`quantize_dequantize`]: the
/// simulation of FP8 weights (one call per group) and of dynamic FP8 activations (see
/// [`fake_quantize_e4m3_rows`]).
pub fn fake_quantize_e4m3(x: &[f32], scale: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "output buffer must match the input");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `quantize_e4m3`.
        unsafe { avx2::fake_quantize(x, scale, out) };
        return;
    }
    fake_quantize_e4m3_portable(x, scale, out);
}

/// Dynamic per-row (per-token) FP8: each row of `cols` values of `x` gets its own scale,
/// `fp8_scale(absmax_finite(row))`, and is fake-quantized with it into `out` (the scales are not kept).
/// `x.len()` must be a multiple of `cols` (`cols > 0`).
pub fn fake_quantize_e4m3_rows(x: &[f32], cols: usize, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "output buffer must match the input");
    assert!(cols > 0 && x.len().is_multiple_of(cols), "rows must be whole");
    use rayon::prelude::*;
    // Rows are independent: a task takes whole rows, enough of them to be worth a task.
    let rows_per_task = (ROWS_TASK_ELEMENTS / cols).max(1);
    out.par_chunks_mut(rows_per_task * cols).zip(x.par_chunks(rows_per_task * cols)).for_each(|(out, x)| {
        for (row, out_row) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            fake_quantize_e4m3(row, fp8_scale(absmax_finite(row)), out_row);
        }
    });
}

/// The portable [`quantize_e4m3`].
pub fn quantize_e4m3_portable(x: &[f32], scale: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_value(v, scale);
    }
}

/// The portable [`fake_quantize_e4m3`].
pub fn fake_quantize_e4m3_portable(x: &[f32], scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_dequantize(v, scale);
    }
}

/// 8-lane forms of [`to_e4m3_saturating`], shared with the measure kernel.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// `|v|` saturated to 448 (a NaN lane gives 448: `minps` returns its second operand when one is NaN), and the
    /// lanes below 2^-6 (the subnormal grid).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn saturated_magnitude(v: __m256) -> (__m256, __m256) {
        let a = _mm256_min_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0), v), _mm256_set1_ps(E4M3_MAX));
        (a, _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(E4M3_MIN_NORMAL)))
    }

    /// The normal-grid rounding of [`to_e4m3_saturating`] on the bits of `a`: `bits + 0x7FFFF + lsb`, low 20 bits
    /// still to be dropped by the caller.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn round_bits(a: __m256) -> __m256i {
        let bits = _mm256_castps_si256(a);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<20>(bits), _mm256_set1_epi32(1));
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7_FFFF)))
    }

    /// The E4M3 value (as f32, with the sign of `v`) of `to_e4m3_saturating(v)` in every non-NaN lane; NaN lanes
    /// give ±448 and are the caller's to replace or mask.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) fn round_e4m3(v: __m256) -> __m256 {
        let (a, subnormal) = saturated_magnitude(v);
        let normal = _mm256_castsi256_ps(_mm256_and_si256(round_bits(a), _mm256_set1_epi32(0xFFF0_0000u32 as i32)));
        // round(a · 2^9) · 2^-9: both products exact.
        let sub = _mm256_mul_ps(
            _mm256_round_ps::<ROUND_NEAREST>(_mm256_mul_ps(a, _mm256_set1_ps(512.0))),
            _mm256_set1_ps(E4M3_SUBNORMAL_STEP),
        );
        let magnitude = _mm256_blendv_ps(normal, sub, subnormal);
        _mm256_or_ps(magnitude, _mm256_and_ps(v, _mm256_set1_ps(-0.0)))
    }

    /// `to_e4m3_saturating` of 8 lanes, as 8 i32 in 0..=255.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn codes8(v: __m256) -> __m256i {
        let (a, subnormal) = saturated_magnitude(v);
        let normal =
            _mm256_sub_epi32(_mm256_srli_epi32::<20>(round_bits(a)), _mm256_set1_epi32(NORMAL_CODE_OFFSET as i32));
        let sub = _mm256_cvtps_epi32(_mm256_round_ps::<ROUND_NEAREST>(_mm256_mul_ps(a, _mm256_set1_ps(512.0))));
        let magnitude = _mm256_blendv_epi8(normal, sub, _mm256_castps_si256(subnormal));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let magnitude = _mm256_blendv_epi8(magnitude, _mm256_set1_epi32(E4M3_NAN as i32), nan);
        let sign = _mm256_and_si256(_mm256_srli_epi32::<24>(_mm256_castps_si256(v)), _mm256_set1_epi32(0x80));
        _mm256_or_si256(magnitude, sign)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize(x: &[f32], scale: f32, out: &mut [u8]) {
        let full = x.len() / 8 * 8;
        let s = _mm256_set1_ps(scale);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let codes = codes8(_mm256_div_ps(v, s));
            // 8 i32 in 0..=255 -> bytes: each 128-bit half packs its 4 codes into its low 4 bytes; the permute
            // brings the two groups of 4 together in the low 8 bytes.
            let words = _mm256_packus_epi32(codes, codes);
            let bytes = _mm256_packus_epi16(words, words);
            let packed = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
            // SAFETY: i + 8 <= full <= out.len() (same length as `x`); the store is unaligned.
            unsafe { _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm256_castsi256_si128(packed)) };
        }
        quantize_e4m3_portable(&x[full..], scale, &mut out[full..]);
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fake_quantize(x: &[f32], scale: f32, out: &mut [f32]) {
        let full = x.len() / 8 * 8;
        let s = _mm256_set1_ps(scale);
        let quiet_nan = _mm256_castsi256_ps(_mm256_set1_epi32(QUIET_NAN_BITS as i32));
        let sign_bit = _mm256_castsi256_ps(_mm256_set1_epi32(F32_SIGN as i32));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= x.len().
            let v = unsafe { _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(i)), s) };
            // NaN lanes take the value of the NaN code of their sign, as the table gives it.
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            let nan_value = _mm256_or_ps(quiet_nan, _mm256_and_ps(v, sign_bit));
            let grid = _mm256_blendv_ps(round_e4m3(v), nan_value, nan);
            // SAFETY: as above, `out` has the length of `x`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(grid, s)) };
        }
        fake_quantize_e4m3_portable(&x[full..], scale, &mut out[full..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::XorShift64;

    /// The independent definition: the magnitude code (0x00..=0x7E) whose value is nearest to `min(|v|, 448)`,
    /// ties to the even code, found by trying all 127 of them; the sign of `v` on top; NaN to the NaN code.
    /// Distances are taken in f64, where the difference of two nearby f32 values is exact.
    fn nearest_code_slow(v: f32) -> u8 {
        let sign = if v.is_sign_negative() { 0x80 } else { 0 };
        if v.is_nan() {
            return sign | E4M3_NAN;
        }
        let a = (v.abs() as f64).min(448.0);
        let value = |code: u8| -> f64 {
            let (e, m) = ((code >> 3) as i32, (code & 7) as f64);
            if e == 0 { m * 2f64.powi(-9) } else { (1.0 + m / 8.0) * 2f64.powi(e - 7) }
        };
        let mut best = 0u8;
        for code in 1..=0x7Eu8 {
            let (d, d_best) = ((value(code) - a).abs(), (value(best) - a).abs());
            if d < d_best || (d == d_best && code % 2 == 0) {
                best = code;
            }
        }
        sign | best
    }

    /// Every finite magnitude value of the grid, in code order.
    fn grid() -> Vec<f32> {
        (0..=0x7Eu8).map(e4m3_to_f32).collect()
    }

    /// Boundary inputs: each grid value and each midpoint between neighbours (and past 448: 464, the midpoint to
    /// the 480 that E4M3 lacks), each with its neighbouring f32 on both sides, both signs; plus special values.
    fn boundary_values() -> Vec<f32> {
        let g = grid();
        let mut points: Vec<f32> = g.clone();
        points.extend(g.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        points.extend([464.0, 480.0, 512.0, 1e4, 1e30, f32::MAX, f32::MIN_POSITIVE, 1e-45, 1e-40, 2f32.powi(-10)]);
        let mut values = Vec::new();
        for p in points {
            for q in [p.next_down(), p, p.next_up()] {
                values.extend([q, -q]);
            }
        }
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001)]);
        values
    }

    /// Seeded f32 values: random bit patterns (every magnitude, NaN and inf included) and log-uniform magnitudes
    /// over [2^-14, 2^11] (the E4M3 range and past it), both signs.
    fn sample_values(n: usize) -> Vec<f32> {
        let mut rng = XorShift64::new(0xF8E4_3A11);
        (0..n)
            .map(|i| {
                let r = rng.next_u64();
                if i % 2 == 0 {
                    f32::from_bits(r as u32)
                } else {
                    let magnitude = 2f64.powf(-14.0 + 25.0 * rng.next_unit()) as f32;
                    if r & 1 == 1 { -magnitude } else { magnitude }
                }
            })
            .collect()
    }

    #[test]
    fn the_table_matches_the_format() {
        assert_eq!(e4m3_to_f32(0x00).to_bits(), 0);
        assert_eq!(e4m3_to_f32(0x80).to_bits(), 0x8000_0000, "-0");
        assert_eq!(e4m3_to_f32(0x01), E4M3_SUBNORMAL_STEP);
        assert_eq!(e4m3_to_f32(0x07), 7.0 / 512.0);
        assert_eq!(e4m3_to_f32(0x08), E4M3_MIN_NORMAL);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x39), 1.125);
        assert_eq!(e4m3_to_f32(0x7E), E4M3_MAX);
        assert_eq!(e4m3_to_f32(0xFE), -E4M3_MAX);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0x7F).is_sign_positive());
        assert!(e4m3_to_f32(0xFF).is_nan() && e4m3_to_f32(0xFF).is_sign_negative());
        // Strictly increasing over the positive codes, and the negatives mirror them.
        assert!(grid().windows(2).all(|w| w[0] < w[1]));
        for code in 0..=0x7Eu8 {
            assert_eq!(e4m3_to_f32(code | 0x80).to_bits(), e4m3_to_f32(code).to_bits() | F32_SIGN);
        }
    }

    #[test]
    fn every_finite_code_round_trips_and_nan_stays_nan() {
        let mut finite = 0;
        for code in 0..=255u8 {
            let v = e4m3_to_f32(code);
            if v.is_nan() {
                assert_eq!(to_e4m3_saturating(v), code, "NaN code {code:#04x}");
            } else {
                assert_eq!(to_e4m3_saturating(v), code, "code {code:#04x} = {v}");
                finite += 1;
            }
        }
        assert_eq!(finite, 254);
    }

    #[test]
    fn worked_examples() {
        // Ties to even on the normal grid: 1 + 1/16 lies between 1 (0x38) and 1.125 (0x39).
        assert_eq!(to_e4m3_saturating(1.0625), 0x38);
        assert_eq!(to_e4m3_saturating(1.1875), 0x3A);
        // A carry into the exponent: 1.9375 (between 1.875 = 0x3F and 2 = 0x40) goes to the even 0x40.
        assert_eq!(to_e4m3_saturating(1.9375), 0x40);
        // Subnormals: 2^-10 is half a step (to 0, the even code); 3 · 2^-10 to 2 · 2^-9.
        assert_eq!(to_e4m3_saturating(2f32.powi(-10)), 0x00);
        assert_eq!(to_e4m3_saturating(3.0 * 2f32.powi(-10)), 0x02);
        // 7.5 steps is the tie between the largest subnormal (0x07) and 2^-6 (0x08): 0x08 is even.
        assert_eq!(to_e4m3_saturating(7.5 / 512.0), 0x08);
        assert_eq!(to_e4m3_saturating((7.5f32 / 512.0).next_down()), 0x07);
        // Saturation and the specials.
        assert_eq!(to_e4m3_saturating(464.0), 0x7E);
        assert_eq!(to_e4m3_saturating(f32::INFINITY), 0x7E);
        assert_eq!(to_e4m3_saturating(f32::NEG_INFINITY), 0xFE);
        assert_eq!(to_e4m3_saturating(f32::NAN), 0x7F);
        assert_eq!(to_e4m3_saturating(-f32::NAN), 0xFF);
        assert_eq!(to_e4m3_saturating(-0.0), 0x80);
        assert_eq!(to_e4m3_saturating(-1e-30), 0x80);
    }

    #[test]
    fn conversion_agrees_with_the_slow_nearest_code_search() {
        let values: Vec<f32> = boundary_values().into_iter().chain(sample_values(200_000)).collect();
        for v in values {
            assert_eq!(to_e4m3_saturating(v), nearest_code_slow(v), "v = {v:e} ({:#010x})", v.to_bits());
        }
    }

    #[test]
    fn scales_stay_positive_finite_and_keep_448_scale_finite() {
        assert_eq!(fp8_scale(448.0), 1.0);
        assert_eq!(fp8_scale(0.5), 0.5 / 448.0);
        assert_eq!(fp8_scale(0.0), 1.0);
        assert_eq!(fp8_scale(1e-44), 1.0, "absmax / 448 underflows to 0");
        assert_eq!(fp8_scale(f32::NAN), 1.0);
        assert_eq!(fp8_scale(f32::INFINITY), 1.0);
        let s = fp8_scale(f32::MAX);
        assert!((E4M3_MAX * s).is_finite() && !(E4M3_MAX * s.next_up()).is_finite(), "{s}");
        assert_eq!(quantize_value(f32::MAX, s), 0x7E);
        assert!(quantize_dequantize(f32::MAX, s).is_finite());
        assert_eq!(absmax_finite(&[1.0, -3.0, f32::NAN, f32::NEG_INFINITY]), 3.0);
        assert_eq!(absmax_finite(&[f32::NAN]), 0.0);
    }

    /// Bits of a fake-quantized value, with every NaN of one sign mapped to one pattern (the sign of a NaN is kept,
    /// its payload is left to the hardware).
    fn canonical(v: f32) -> u32 {
        if v.is_nan() { QUIET_NAN_BITS | (v.to_bits() & F32_SIGN) } else { v.to_bits() }
    }

    #[test]
    fn bulk_loops_match_the_scalar_definition_bit_for_bit() {
        let mut x = boundary_values();
        x.extend(sample_values(4099));
        for scale in [1.0, 0.5 / 448.0, 3.0 / 448.0, fp8_scale(1e-3), fp8_scale(f32::MAX), 1e-30] {
            let scaled: Vec<f32> = x.iter().map(|v| v * scale).collect();
            for len in [0, 1, 7, 8, 9, 63, scaled.len()] {
                let input = &scaled[..len];
                let (mut codes, mut portable_codes) = (vec![0u8; len], vec![0u8; len]);
                quantize_e4m3(input, scale, &mut codes);
                quantize_e4m3_portable(input, scale, &mut portable_codes);
                assert_eq!(codes, portable_codes, "codes, scale {scale:e}, len {len}");
                let (mut values, mut portable_values) = (vec![0f32; len], vec![0f32; len]);
                fake_quantize_e4m3(input, scale, &mut values);
                fake_quantize_e4m3_portable(input, scale, &mut portable_values);
                for (i, &v) in input.iter().enumerate() {
                    let expected = quantize_dequantize(v, scale);
                    assert_eq!(codes[i], quantize_value(v, scale), "code of {v:e}, scale {scale:e}");
                    assert_eq!(canonical(values[i]), canonical(expected), "value of {v:e}, scale {scale:e}");
                    assert_eq!(canonical(portable_values[i]), canonical(expected), "value of {v:e}");
                }
            }
        }
    }

    #[test]
    fn per_row_scales_are_each_rows_own() {
        let cols = 37;
        let x: Vec<f32> =
            sample_values(5 * cols).iter().enumerate().map(|(i, v)| v.clamp(-1e3, 1e3) * (i / cols) as f32).collect();
        let mut out = vec![0f32; x.len()];
        fake_quantize_e4m3_rows(&x, cols, &mut out);
        for (row, out_row) in x.chunks(cols).zip(out.chunks(cols)) {
            let scale = fp8_scale(absmax_finite(row));
            for (&v, &o) in row.iter().zip(out_row) {
                assert_eq!(canonical(o), canonical(quantize_dequantize(v, scale)));
            }
        }
        // The row of zeros (row 0) stays zero, with scale 1.
        assert!(out[..cols].iter().all(|&v| v == 0.0 || v.is_nan()));
    }
}
