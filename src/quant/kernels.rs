//! The inner loops: the scan (pass 1: range, counts, sum), the measure (pass 2: round trip, error sums,
//! histograms) and INT8 code generation.
//!
//! Each has an AVX2 path chosen at run time and a portable path. Both give bit-identical results: element `i` of
//! a slice is accumulated into lane `i % 8` of eight f64 accumulators, with a multiply and an add rounded
//! separately (no FMA), and every per-element formula is the one of [`super::params`].

use super::params::{BF16_MAX, FP16_MAX, QParams};

/// Accumulator lanes (one AVX2 register of f32).
pub const LANES: usize = 8;
/// Bins of every histogram.
pub const HIST_BINS: usize = 256;
/// Histogram slots: the bins plus one slot that swallows non-finite elements.
const SLOTS: usize = HIST_BINS + 1;
const TRASH_SLOT: usize = HIST_BINS;
/// Independent copies of each histogram, so that neighbouring equal bins do not serialise on one counter.
const COPIES: usize = 4;

/// Totals of the scan over a slice: finite range and sum, and counts of non-finite elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanAcc {
    /// Smallest finite value (+inf when none).
    pub min: f32,
    /// Largest finite value (-inf when none).
    pub max: f32,
    /// Sum of finite values, per lane.
    pub sum: [f64; LANES],
    /// Finite elements.
    pub finite: u64,
    /// NaN elements.
    pub nan: u64,
    /// ±inf elements.
    pub inf: u64,
}

impl Default for ScanAcc {
    fn default() -> Self {
        ScanAcc { min: f32::INFINITY, max: f32::NEG_INFINITY, sum: [0.0; LANES], finite: 0, nan: 0, inf: 0 }
    }
}

impl ScanAcc {
    /// Adds another accumulator's totals (lane by lane).
    pub fn merge(&mut self, other: &ScanAcc) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        for (a, b) in self.sum.iter_mut().zip(other.sum) {
            *a += b;
        }
        self.finite += other.finite;
        self.nan += other.nan;
        self.inf += other.inf;
    }
}

/// Sum of lanes in a fixed order.
pub fn lane_sum(lanes: &[f64; LANES]) -> f64 {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// How pass 2 rounds each value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rounding {
    /// INT8 quantize-dequantize with these parameters.
    Int8(QParams),
    /// FP16 round trip.
    Fp16,
    /// BF16 round trip.
    Bf16,
    /// No rounding (statistics only; the error is zero).
    Identity,
}

/// Maps a value to a histogram bin: `clamp((x - lo) * bins_per_unit, 0, 255)` truncated, each operation rounded
/// in f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinMap {
    /// Left edge of the first bin.
    pub lo: f32,
    /// Bins per unit of value.
    pub bins_per_unit: f32,
}

impl BinMap {
    /// The map of `HIST_BINS` equal bins over `[lo, hi]` (`hi > lo`).
    pub fn new(lo: f64, hi: f64) -> BinMap {
        BinMap { lo: lo as f32, bins_per_unit: (HIST_BINS as f64 / (hi - lo)) as f32 }
    }

    /// The bin of a finite value.
    #[inline]
    pub fn bin(&self, x: f32) -> usize {
        ((x - self.lo) * self.bins_per_unit).clamp(0.0, (HIST_BINS - 1) as f32) as usize
    }
}

/// Totals of the measure pass over a slice.
#[derive(Clone, Debug)]
pub struct MeasureAcc {
    /// Sum of `x^2` over finite elements, per lane.
    pub sum_sq_signal: [f64; LANES],
    /// Sum of `(x - x_hat)^2`, per lane.
    pub sum_sq_error: [f64; LANES],
    /// Sum of `(x - mean)^2`, per lane (for the standard deviation).
    pub sum_sq_deviation: [f64; LANES],
    /// Largest `|x - x_hat|`.
    pub max_abs_error: f32,
    /// Finite elements outside the precision's range (INT8 codes clamped, FP16/BF16 saturated).
    pub saturated: u64,
    value_hist: [[u32; SLOTS]; COPIES],
    error_hist: [[u32; SLOTS]; COPIES],
}

impl Default for MeasureAcc {
    fn default() -> Self {
        MeasureAcc {
            sum_sq_signal: [0.0; LANES],
            sum_sq_error: [0.0; LANES],
            sum_sq_deviation: [0.0; LANES],
            max_abs_error: 0.0,
            saturated: 0,
            value_hist: [[0; SLOTS]; COPIES],
            error_hist: [[0; SLOTS]; COPIES],
        }
    }
}

impl MeasureAcc {
    /// Adds this accumulator's histogram counts into `value` and `error`.
    pub fn add_histograms_to(&self, value: &mut [u64; HIST_BINS], error: &mut [u64; HIST_BINS]) {
        for copy in 0..COPIES {
            for bin in 0..HIST_BINS {
                value[bin] += self.value_hist[copy][bin] as u64;
                error[bin] += self.error_hist[copy][bin] as u64;
            }
        }
    }

    /// Adds another accumulator's sums (lane by lane), maximum and saturation count; histograms are collected
    /// with [`MeasureAcc::add_histograms_to`] (their u32 counters are per block, which stays far below 2^32).
    pub fn merge_sums(&mut self, other: &MeasureAcc) {
        for lane in 0..LANES {
            self.sum_sq_signal[lane] += other.sum_sq_signal[lane];
            self.sum_sq_error[lane] += other.sum_sq_error[lane];
            self.sum_sq_deviation[lane] += other.sum_sq_deviation[lane];
        }
        self.max_abs_error = self.max_abs_error.max(other.max_abs_error);
        self.saturated += other.saturated;
    }
}

/// Everything pass 2 needs besides the data.
#[derive(Clone, Copy, Debug)]
pub struct MeasureSpec {
    /// How values are rounded.
    pub rounding: Rounding,
    /// Mean of the finite values (from pass 1), for the deviation sum.
    pub mean: f32,
    /// Bins of the value histogram.
    pub value_bins: BinMap,
    /// Bins of the error histogram.
    pub error_bins: BinMap,
}

fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which implementation the dispatching functions use on this machine ("avx2" or "portable").
pub fn implementation_name() -> &'static str {
    if use_avx2() { "avx2" } else { "portable" }
}

/// Pass 1 over `x` into `acc`.
pub fn scan(x: &[f32], acc: &mut ScanAcc) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { avx2::scan(x, acc) };
        return;
    }
    scan_portable(x, acc);
}

/// Pass 2 over `x` into `acc`.
pub fn measure(x: &[f32], spec: &MeasureSpec, acc: &mut MeasureAcc) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `scan`.
        unsafe { avx2::measure(x, spec, acc) };
        return;
    }
    measure_portable(x, spec, acc);
}

/// INT8 codes of `x` into `out` (same length).
pub fn quantize_codes(x: &[f32], params: &QParams, out: &mut [i8]) {
    assert_eq!(x.len(), out.len(), "codes buffer must match the input");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `scan`.
        unsafe { avx2::quantize_codes(x, params, out) };
        return;
    }
    quantize_codes_portable(x, params, out);
}

/// The portable scan, also used for the tails of the AVX2 one.
pub fn scan_portable(x: &[f32], acc: &mut ScanAcc) {
    scan_tail(x, 0, acc);
}

fn scan_tail(x: &[f32], first_lane: usize, acc: &mut ScanAcc) {
    for (i, &v) in x.iter().enumerate() {
        if v.is_finite() {
            acc.min = acc.min.min(v);
            acc.max = acc.max.max(v);
            acc.sum[(first_lane + i) % LANES] += v as f64;
            acc.finite += 1;
        } else if v.is_nan() {
            acc.nan += 1;
        } else {
            acc.inf += 1;
        }
    }
}

/// The portable measure, also used for the tails of the AVX2 one.
pub fn measure_portable(x: &[f32], spec: &MeasureSpec, acc: &mut MeasureAcc) {
    measure_tail(x, 0, spec, acc);
}

/// The round trip of one value and whether it was saturated, exactly as the AVX2 path computes it.
#[inline]
fn round_trip(v: f32, rounding: &Rounding) -> (f32, bool) {
    match rounding {
        Rounding::Int8(p) => {
            let zp = p.zero_point as f32;
            let q = (v / p.scale).round_ties_even() + zp;
            let saturated = q < p.qmin as f32 || q > p.qmax as f32;
            let q = q.max(p.qmin as f32).min(p.qmax as f32);
            ((q - zp) * p.scale, saturated)
        }
        Rounding::Fp16 => (super::params::round_fp16(v), v.abs() > FP16_MAX),
        Rounding::Bf16 => (super::params::round_bf16(v), v.abs() > BF16_MAX),
        Rounding::Identity => (v, false),
    }
}

fn measure_tail(x: &[f32], first_lane: usize, spec: &MeasureSpec, acc: &mut MeasureAcc) {
    for (i, &v) in x.iter().enumerate() {
        let lane = (first_lane + i) % LANES;
        let copy = lane % COPIES;
        if !v.is_finite() {
            acc.value_hist[copy][TRASH_SLOT] += 1;
            acc.error_hist[copy][TRASH_SLOT] += 1;
            continue;
        }
        let (x_hat, saturated) = round_trip(v, &spec.rounding);
        let e = v - x_hat;
        acc.saturated += saturated as u64;
        acc.max_abs_error = acc.max_abs_error.max(e.abs());
        acc.sum_sq_error[lane] += e as f64 * e as f64;
        acc.sum_sq_signal[lane] += v as f64 * v as f64;
        let d = v - spec.mean;
        acc.sum_sq_deviation[lane] += d as f64 * d as f64;
        acc.value_hist[copy][spec.value_bins.bin(v)] += 1;
        acc.error_hist[copy][spec.error_bins.bin(e)] += 1;
    }
}

/// The portable code generation.
pub fn quantize_codes_portable(x: &[f32], params: &QParams, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = params.quantize(v);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    #[target_feature(enable = "avx2,fma,f16c")]
    fn abs_mask() -> __m256 {
        _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn popcount(mask: __m256) -> u64 {
        _mm256_movemask_ps(mask).count_ones() as u64
    }

    /// Adds the squares of the 8 f32 lanes of `v` (widened to f64) to two f64 accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn add_squares(v: __m256, lo: &mut __m256d, hi: &mut __m256d) {
        let v_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        let v_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
        *lo = _mm256_add_pd(*lo, _mm256_mul_pd(v_lo, v_lo));
        *hi = _mm256_add_pd(*hi, _mm256_mul_pd(v_hi, v_hi));
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_lanes(lanes: &[f64; LANES]) -> (__m256d, __m256d) {
        // SAFETY: `lanes` holds 8 f64.
        unsafe { (_mm256_loadu_pd(lanes.as_ptr()), _mm256_loadu_pd(lanes.as_ptr().add(4))) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_lanes(lanes: &mut [f64; LANES], lo: __m256d, hi: __m256d) {
        // SAFETY: `lanes` holds 8 f64.
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), lo);
            _mm256_storeu_pd(lanes.as_mut_ptr().add(4), hi);
        }
    }

    /// Horizontal min or max of 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce(v: __m256, pick: fn(f32, f32) -> f32) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.into_iter().reduce(pick).unwrap_or(f32::NAN)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scan(x: &[f32], acc: &mut ScanAcc) {
        let full = x.len() / LANES * LANES;
        let abs = abs_mask();
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut min = _mm256_set1_ps(f32::INFINITY);
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        // SAFETY: reads and writes 8 f64 of `acc.sum`.
        let (mut sum_lo, mut sum_hi) = unsafe { load_lanes(&acc.sum) };
        let (mut finite_count, mut nan_count) = (0u64, 0u64);
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 <= full <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs), inf);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            min = _mm256_min_ps(min, _mm256_blendv_ps(inf, v, finite));
            max = _mm256_max_ps(max, _mm256_blendv_ps(_mm256_sub_ps(_mm256_setzero_ps(), inf), v, finite));
            let kept = _mm256_and_ps(v, finite);
            sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(kept)));
            sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(kept)));
            finite_count += popcount(finite);
            nan_count += popcount(nan);
        }
        // SAFETY: as above.
        unsafe { store_lanes(&mut acc.sum, sum_lo, sum_hi) };
        acc.min = acc.min.min(reduce(min, f32::min));
        acc.max = acc.max.max(reduce(max, f32::max));
        acc.finite += finite_count;
        acc.nan += nan_count;
        acc.inf += full as u64 - finite_count - nan_count;
        scan_tail(&x[full..], full % LANES, acc);
    }

    /// The rounding of [`round_trip`], 8 lanes at a time. Returns `x_hat` and the saturated lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round_trip8(v: __m256, rounding: &Rounding) -> (__m256, __m256) {
        match rounding {
            Rounding::Int8(p) => {
                let scale = _mm256_set1_ps(p.scale);
                let zp = _mm256_set1_ps(p.zero_point as f32);
                let qmin = _mm256_set1_ps(p.qmin as f32);
                let qmax = _mm256_set1_ps(p.qmax as f32);
                let q = _mm256_add_ps(_mm256_round_ps::<ROUND_NEAREST>(_mm256_div_ps(v, scale)), zp);
                let saturated =
                    _mm256_or_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(q, qmin), _mm256_cmp_ps::<_CMP_GT_OQ>(q, qmax));
                let q = _mm256_min_ps(_mm256_max_ps(q, qmin), qmax);
                (_mm256_mul_ps(_mm256_sub_ps(q, zp), scale), saturated)
            }
            Rounding::Fp16 => {
                let limit = _mm256_set1_ps(FP16_MAX);
                let clamped = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-FP16_MAX)), limit);
                let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(clamped);
                (_mm256_cvtph_ps(half), _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_and_ps(v, abs_mask()), limit))
            }
            Rounding::Bf16 => {
                let limit = _mm256_set1_ps(BF16_MAX);
                let clamped = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-BF16_MAX)), limit);
                let bits = _mm256_castps_si256(clamped);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
                let bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF));
                let rounded = _mm256_and_si256(_mm256_add_epi32(bits, bias), _mm256_set1_epi32(0xFFFF_0000u32 as i32));
                (_mm256_castsi256_ps(rounded), _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_and_ps(v, abs_mask()), limit))
            }
            Rounding::Identity => (v, _mm256_setzero_ps()),
        }
    }

    /// Histogram slots of 8 values as [`BinMap::bin`], or the trash slot where not finite.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bins8(v: __m256, map: &BinMap, finite: __m256) -> __m256i {
        let t = _mm256_mul_ps(_mm256_sub_ps(v, _mm256_set1_ps(map.lo)), _mm256_set1_ps(map.bins_per_unit));
        let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps((HIST_BINS - 1) as f32));
        let bins = _mm256_cvttps_epi32(t);
        _mm256_blendv_epi8(_mm256_set1_epi32(TRASH_SLOT as i32), bins, _mm256_castps_si256(finite))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn measure(x: &[f32], spec: &MeasureSpec, acc: &mut MeasureAcc) {
        // One monomorphic loop per rounding keeps the match out of the loop.
        match spec.rounding {
            Rounding::Int8(_) => unsafe { measure_loop::<0>(x, spec, acc) },
            Rounding::Fp16 => unsafe { measure_loop::<1>(x, spec, acc) },
            Rounding::Bf16 => unsafe { measure_loop::<2>(x, spec, acc) },
            Rounding::Identity => unsafe { measure_loop::<3>(x, spec, acc) },
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn measure_loop<const KIND: u8>(x: &[f32], spec: &MeasureSpec, acc: &mut MeasureAcc) {
        let full = x.len() / LANES * LANES;
        let abs = abs_mask();
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mean = _mm256_set1_ps(spec.mean);
        // SAFETY: each reads 8 f64.
        let (mut sig_lo, mut sig_hi) = unsafe { load_lanes(&acc.sum_sq_signal) };
        let (mut err_lo, mut err_hi) = unsafe { load_lanes(&acc.sum_sq_error) };
        let (mut dev_lo, mut dev_hi) = unsafe { load_lanes(&acc.sum_sq_deviation) };
        let mut max_err = _mm256_setzero_ps();
        let mut saturated = 0u64;
        let mut value_slots = [0i32; LANES];
        let mut error_slots = [0i32; LANES];
        let rounding = match KIND {
            0 => spec.rounding,
            1 => Rounding::Fp16,
            2 => Rounding::Bf16,
            _ => Rounding::Identity,
        };
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 <= full <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs), inf);
            let (x_hat, sat) = round_trip8(v, &rounding);
            saturated += popcount(_mm256_and_ps(sat, finite));
            let e = _mm256_and_ps(_mm256_sub_ps(v, x_hat), finite);
            max_err = _mm256_max_ps(max_err, _mm256_and_ps(e, abs));
            add_squares(e, &mut err_lo, &mut err_hi);
            add_squares(_mm256_and_ps(v, finite), &mut sig_lo, &mut sig_hi);
            add_squares(_mm256_and_ps(_mm256_sub_ps(v, mean), finite), &mut dev_lo, &mut dev_hi);
            // SAFETY: each slot array holds 8 i32.
            unsafe {
                _mm256_storeu_si256(value_slots.as_mut_ptr().cast(), bins8(v, &spec.value_bins, finite));
                _mm256_storeu_si256(error_slots.as_mut_ptr().cast(), bins8(e, &spec.error_bins, finite));
            }
            for lane in 0..LANES {
                acc.value_hist[lane % COPIES][value_slots[lane] as usize] += 1;
                acc.error_hist[lane % COPIES][error_slots[lane] as usize] += 1;
            }
        }
        // SAFETY: each writes 8 f64.
        unsafe {
            store_lanes(&mut acc.sum_sq_signal, sig_lo, sig_hi);
            store_lanes(&mut acc.sum_sq_error, err_lo, err_hi);
            store_lanes(&mut acc.sum_sq_deviation, dev_lo, dev_hi);
        }
        acc.max_abs_error = acc.max_abs_error.max(reduce(max_err, f32::max));
        acc.saturated += saturated;
        measure_tail(&x[full..], full % LANES, spec, acc);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_codes(x: &[f32], p: &QParams, out: &mut [i8]) {
        let full = x.len() / LANES * LANES;
        let scale = _mm256_set1_ps(p.scale);
        let zp = _mm256_set1_ps(p.zero_point as f32);
        let qmin = _mm256_set1_ps(p.qmin as f32);
        let qmax = _mm256_set1_ps(p.qmax as f32);
        let mut codes = [0i32; LANES];
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 <= full <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let q = _mm256_add_ps(_mm256_round_ps::<ROUND_NEAREST>(_mm256_div_ps(v, scale)), zp);
            let q = _mm256_min_ps(_mm256_max_ps(q, qmin), qmax);
            let q = _mm256_blendv_ps(q, zp, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            // SAFETY: `codes` holds 8 i32.
            unsafe { _mm256_storeu_si256(codes.as_mut_ptr().cast(), _mm256_cvtps_epi32(q)) };
            for (o, c) in out[i..i + LANES].iter_mut().zip(codes) {
                *o = c as i8;
            }
        }
        quantize_codes_portable(&x[full..], p, &mut out[full..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic mix of ordinary, tiny, huge, tie and non-finite values.
    fn awkward_values(n: usize) -> Vec<f32> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                match i % 97 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3 => 1e6,
                    4 => 1e-40,
                    5 => 0.5,
                    6 => -2.5,
                    7 => 3.4e38,
                    _ => u * 4.0,
                }
            })
            .collect()
    }

    fn specs() -> Vec<MeasureSpec> {
        let roundings = [
            Rounding::Int8(QParams::symmetric(2.0)),
            Rounding::Int8(QParams::asymmetric(-0.7, 2.0)),
            Rounding::Int8(QParams { scale: 1.0, zero_point: 0, qmin: -127, qmax: 127 }),
            Rounding::Fp16,
            Rounding::Bf16,
            Rounding::Identity,
        ];
        roundings
            .into_iter()
            .map(|rounding| MeasureSpec {
                rounding,
                mean: 0.1,
                value_bins: BinMap::new(-2.0, 2.0),
                error_bins: BinMap::new(-0.01, 0.01),
            })
            .collect()
    }

    #[test]
    fn dispatched_kernels_match_portable_bit_for_bit() {
        for len in [0, 1, 7, 8, 9, 63, 1000, 4099] {
            let x = awkward_values(len);
            let (mut fast, mut portable) = (ScanAcc::default(), ScanAcc::default());
            scan(&x, &mut fast);
            scan_portable(&x, &mut portable);
            assert_eq!(fast, portable, "scan len {len}");
            for spec in specs() {
                let (mut fast, mut portable) = (MeasureAcc::default(), MeasureAcc::default());
                measure(&x, &spec, &mut fast);
                measure_portable(&x, &spec, &mut portable);
                assert_eq!(fast.sum_sq_error.map(f64::to_bits), portable.sum_sq_error.map(f64::to_bits), "{spec:?}");
                assert_eq!(fast.sum_sq_signal.map(f64::to_bits), portable.sum_sq_signal.map(f64::to_bits));
                assert_eq!(fast.sum_sq_deviation.map(f64::to_bits), portable.sum_sq_deviation.map(f64::to_bits));
                assert_eq!(fast.max_abs_error.to_bits(), portable.max_abs_error.to_bits(), "{spec:?}");
                assert_eq!(fast.saturated, portable.saturated, "{spec:?}");
                assert_eq!(fast.value_hist, portable.value_hist, "{spec:?}");
                assert_eq!(fast.error_hist, portable.error_hist, "{spec:?}");
            }
            for p in [QParams::symmetric(2.0), QParams::asymmetric(-0.3, 1.7), QParams::symmetric(1e-3)] {
                let (mut fast, mut portable) = (vec![0i8; len], vec![0i8; len]);
                quantize_codes(&x, &p, &mut fast);
                quantize_codes_portable(&x, &p, &mut portable);
                assert_eq!(fast, portable, "codes len {len}");
            }
        }
    }

    #[test]
    fn measure_agrees_with_the_reference_formulas() {
        let x = awkward_values(1000);
        let p = QParams::symmetric(2.0);
        let spec = MeasureSpec {
            rounding: Rounding::Int8(p),
            mean: 0.0,
            value_bins: BinMap::new(-2.0, 2.0),
            error_bins: BinMap::new(-1.0, 1.0),
        };
        let mut acc = MeasureAcc::default();
        measure(&x, &spec, &mut acc);
        let (mut sum_e2, mut max_e, mut saturated) = (0f64, 0f32, 0);
        for &v in x.iter().filter(|v| v.is_finite()) {
            let e = v - p.dequantize(p.quantize(v));
            sum_e2 += (e as f64).powi(2);
            max_e = max_e.max(e.abs());
            saturated += ((v / p.scale).round_ties_even().abs() > 127.0) as u64;
        }
        let got = lane_sum(&acc.sum_sq_error);
        assert!((got - sum_e2).abs() <= 1e-12 * sum_e2, "{got} vs {sum_e2}");
        assert_eq!(acc.max_abs_error, max_e);
        assert_eq!(acc.saturated, saturated);
        let (mut value, mut error) = ([0u64; HIST_BINS], [0u64; HIST_BINS]);
        acc.add_histograms_to(&mut value, &mut error);
        let finite = x.iter().filter(|v| v.is_finite()).count() as u64;
        assert_eq!(value.iter().sum::<u64>(), finite);
        assert_eq!(error.iter().sum::<u64>(), finite);
    }

    #[test]
    fn codes_follow_params_quantize() {
        let x = awkward_values(777);
        let p = QParams::asymmetric(-1.0, 1.5);
        let mut codes = vec![0i8; x.len()];
        quantize_codes(&x, &p, &mut codes);
        for (v, c) in x.iter().zip(&codes) {
            assert_eq!(*c, p.quantize(*v), "x = {v}");
        }
    }
}
