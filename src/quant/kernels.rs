//! The inner loops: the scan (pass 1: range, counts, moments), the measure (pass 2: round trip, error sum,
//! histograms) and INT8 code generation. (FP8 E4M3 codes are generated in [`super::fp8`], whose 8-lane rounding the
//! measure pass shares.)
//!
//! Each has an AVX2 path chosen at run time and a portable path. Both give bit-identical results: element `i` of
//! a slice is accumulated into lane `i % 8` of eight f64 accumulators, with a multiply and an add rounded
//! separately, and every per-element formula is the one of [`super::params`]. (The AVX2 path fuses the squares
//! of f32 values, `x²` and `e²`, into their sums with an FMA: such a product is exact in f64, so the fused and the
//! separate forms round identically. `(x - k)²` is an f64 product and is not fused.)

use super::fp8::{self, E4M3_SATURATION_THRESHOLD};
use super::params::{BF16_MAX, FP16_MAX, QParams};
use crate::stats::HIST_BINS;

/// Accumulator lanes (one AVX2 register of f32).
pub const LANES: usize = 8;
/// Independent copies of each histogram, one per lane, so that equal bins of nearby elements do not serialise on
/// one counter.
const COPIES: usize = 8;

/// A run of elements the scan and the measure read in place: f32, or BF16 widened exactly to f32 as it is loaded
/// (so a BF16 tensor is never copied into an f32 buffer).
#[derive(Clone, Copy, Debug)]
pub enum Elements<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// BF16 values.
    Bf16(&'a [half::bf16]),
}

impl<'a> From<&'a [f32]> for Elements<'a> {
    fn from(x: &'a [f32]) -> Self {
        Elements::F32(x)
    }
}

impl<'a> From<&'a Vec<f32>> for Elements<'a> {
    fn from(x: &'a Vec<f32>) -> Self {
        Elements::F32(x)
    }
}

impl<'a> From<&'a [half::bf16]> for Elements<'a> {
    fn from(x: &'a [half::bf16]) -> Self {
        Elements::Bf16(x)
    }
}

impl<'a> From<&'a Vec<half::bf16>> for Elements<'a> {
    fn from(x: &'a Vec<half::bf16>) -> Self {
        Elements::Bf16(x)
    }
}

/// The element types of [`Elements`].
pub trait Element: Copy + Send + Sync + 'static {
    /// Whether the element is a BF16 bit pattern (the upper half of an f32).
    const IS_BF16: bool;
    /// The value as f32 (exact for both types).
    fn to_f32(self) -> f32;
    /// A slice of them as [`Elements`].
    fn elements(x: &[Self]) -> Elements<'_>;
}

impl Element for f32 {
    const IS_BF16: bool = false;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    fn elements(x: &[Self]) -> Elements<'_> {
        Elements::F32(x)
    }
}

impl Element for half::bf16 {
    const IS_BF16: bool = true;
    #[inline]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    fn elements(x: &[Self]) -> Elements<'_> {
        Elements::Bf16(x)
    }
}

/// Totals of the scan over a slice: finite range, moments and counts of non-finite elements.
///
/// Moments are taken about a shift `k` (the tensor's first finite value): `sum (x - k)` and `sum (x - k)^2`,
/// with `x - k` exact in f64, so that the variance `S2/n - (S1/n)^2` does not cancel catastrophically (a
/// constant tensor gives exactly 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanAcc {
    /// Smallest finite value (+inf when none).
    pub min: f32,
    /// Largest finite value (-inf when none).
    pub max: f32,
    /// Sum of `x - k` over finite values, per lane.
    pub sum_shifted: [f64; LANES],
    /// Sum of `(x - k)^2` over finite values, per lane.
    pub sum_sq_shifted: [f64; LANES],
    /// Sum of `x^2` over finite values, per lane (the signal power of the SQNR).
    pub sum_sq: [f64; LANES],
    /// Finite elements.
    pub finite: u64,
    /// NaN elements.
    pub nan: u64,
    /// ±inf elements.
    pub inf: u64,
}

impl Default for ScanAcc {
    fn default() -> Self {
        ScanAcc {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sum_shifted: [0.0; LANES],
            sum_sq_shifted: [0.0; LANES],
            sum_sq: [0.0; LANES],
            finite: 0,
            nan: 0,
            inf: 0,
        }
    }
}

impl ScanAcc {
    /// Adds another accumulator's totals (lane by lane).
    pub fn merge(&mut self, other: &ScanAcc) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        for lane in 0..LANES {
            self.sum_shifted[lane] += other.sum_shifted[lane];
            self.sum_sq_shifted[lane] += other.sum_sq_shifted[lane];
            self.sum_sq[lane] += other.sum_sq[lane];
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
    /// FP8 E4M3 quantize-dequantize with this scale (finite, > 0): `x_hat = f32(e4m3(clamp(x / scale, ±448))) ·
    /// scale` ([`fp8::quantize_dequantize`]); saturated when `|x / scale| > 464`, where the clamp changes the code
    /// ([`fp8::E4M3_SATURATION_THRESHOLD`]).
    Fp8 {
        /// The group's scale (`fp8::fp8_scale(absmax)`).
        scale: f32,
    },
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
///
/// Non-finite elements are counted in bin 0 of both histograms (which keeps the inner loop free of a trash
/// slot); the pass subtracts the scan's non-finite count from bin 0 afterwards.
#[derive(Clone, Debug)]
pub struct MeasureAcc {
    /// Sum of `(x - x_hat)^2` over finite elements, per lane.
    pub sum_sq_error: [f64; LANES],
    /// Largest `|x - x_hat|`.
    pub max_abs_error: f32,
    /// Finite elements outside the precision's range (INT8 codes clamped, FP16/BF16/FP8 saturated).
    pub saturated: u64,
    value_hist: [[u32; HIST_BINS]; COPIES],
    error_hist: [[u32; HIST_BINS]; COPIES],
}

impl Default for MeasureAcc {
    fn default() -> Self {
        MeasureAcc {
            sum_sq_error: [0.0; LANES],
            max_abs_error: 0.0,
            saturated: 0,
            value_hist: [[0; HIST_BINS]; COPIES],
            error_hist: [[0; HIST_BINS]; COPIES],
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

    /// Adds the histogram counts into `value` and `error` and zeroes them here (the u32 counters are drained
    /// long before they could reach 2^32).
    pub fn drain_histograms_into(&mut self, value: &mut [u64; HIST_BINS], error: &mut [u64; HIST_BINS]) {
        self.add_histograms_to(value, error);
        self.value_hist = [[0; HIST_BINS]; COPIES];
        self.error_hist = [[0; HIST_BINS]; COPIES];
    }

    /// The error sums, maximum and saturation count so far, zeroed here (the histograms are left as they are).
    pub fn take_sums(&mut self) -> MeasureSums {
        let sums = MeasureSums {
            sum_sq_error: self.sum_sq_error,
            max_abs_error: self.max_abs_error,
            saturated: self.saturated,
        };
        self.sum_sq_error = [0.0; LANES];
        self.max_abs_error = 0.0;
        self.saturated = 0;
        sums
    }
}

/// The sums of the measure pass over a slice, without its histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeasureSums {
    /// Sum of `(x - x_hat)^2` over finite elements, per lane.
    pub sum_sq_error: [f64; LANES],
    /// Largest `|x - x_hat|`.
    pub max_abs_error: f32,
    /// Finite elements outside the precision's range.
    pub saturated: u64,
}

impl MeasureSums {
    /// Adds another slice's sums (lane by lane), maximum and saturation count.
    pub fn merge(&mut self, other: &MeasureSums) {
        for lane in 0..LANES {
            self.sum_sq_error[lane] += other.sum_sq_error[lane];
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
    /// Whether the tensor is known to hold no NaN or ±inf (lets the fast path skip the finite mask).
    pub all_finite: bool,
    /// Whether to count the histograms (the table's figures need only the sums; the bins are then unused).
    pub histograms: bool,
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

/// Pass 1 over `x` into `acc`, moments about `shift`.
///
/// The kernels are instantiated here, behind a plain function, whichever crate calls.
pub fn scan<'a>(x: impl Into<Elements<'a>>, shift: f64, acc: &mut ScanAcc) {
    scan_elements(x.into(), shift, acc);
}

fn scan_elements(x: Elements, shift: f64, acc: &mut ScanAcc) {
    match x {
        Elements::F32(x) => scan_slice(x, shift, acc),
        Elements::Bf16(x) => scan_slice(x, shift, acc),
    }
}

fn scan_slice<E: Element>(x: &[E], shift: f64, acc: &mut ScanAcc) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { avx2::scan(x, shift, acc) };
        return;
    }
    scan_tail(x, 0, shift, acc);
}

/// Pass 2 over `x` into `acc`.
///
/// The kernels are instantiated here, behind a plain function, whichever crate calls.
pub fn measure<'a>(x: impl Into<Elements<'a>>, spec: &MeasureSpec, acc: &mut MeasureAcc) {
    measure_elements(x.into(), spec, acc);
}

fn measure_elements(x: Elements, spec: &MeasureSpec, acc: &mut MeasureAcc) {
    match x {
        Elements::F32(x) => measure_slice(x, spec, acc),
        Elements::Bf16(x) => measure_slice(x, spec, acc),
    }
}

fn measure_slice<E: Element>(x: &[E], spec: &MeasureSpec, acc: &mut MeasureAcc) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `scan`.
        unsafe { avx2::measure(x, spec, acc) };
        return;
    }
    measure_tail(x, 0, spec, acc);
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
pub fn scan_portable<'a>(x: impl Into<Elements<'a>>, shift: f64, acc: &mut ScanAcc) {
    match x.into() {
        Elements::F32(x) => scan_tail(x, 0, shift, acc),
        Elements::Bf16(x) => scan_tail(x, 0, shift, acc),
    }
}

fn scan_tail<E: Element>(x: &[E], first_lane: usize, shift: f64, acc: &mut ScanAcc) {
    for (i, v) in x.iter().enumerate() {
        let v = v.to_f32();
        if v.is_finite() {
            let lane = (first_lane + i) % LANES;
            acc.min = acc.min.min(v);
            acc.max = acc.max.max(v);
            let d = v as f64 - shift;
            acc.sum_shifted[lane] += d;
            acc.sum_sq_shifted[lane] += d * d;
            acc.sum_sq[lane] += v as f64 * v as f64;
            acc.finite += 1;
        } else if v.is_nan() {
            acc.nan += 1;
        } else {
            acc.inf += 1;
        }
    }
}

/// The portable measure, also used for the tails of the AVX2 one.
pub fn measure_portable<'a>(x: impl Into<Elements<'a>>, spec: &MeasureSpec, acc: &mut MeasureAcc) {
    match x.into() {
        Elements::F32(x) => measure_tail(x, 0, spec, acc),
        Elements::Bf16(x) => measure_tail(x, 0, spec, acc),
    }
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
        Rounding::Fp8 { scale } => (fp8::quantize_dequantize(v, *scale), (v / scale).abs() > E4M3_SATURATION_THRESHOLD),
        Rounding::Identity => (v, false),
    }
}

fn measure_tail<E: Element>(x: &[E], first_lane: usize, spec: &MeasureSpec, acc: &mut MeasureAcc) {
    for (i, v) in x.iter().enumerate() {
        let v = v.to_f32();
        let lane = (first_lane + i) % LANES;
        let copy = lane % COPIES;
        if !v.is_finite() {
            if spec.histograms {
                acc.value_hist[copy][0] += 1;
                acc.error_hist[copy][0] += 1;
            }
            continue;
        }
        let (x_hat, saturated) = round_trip(v, &spec.rounding);
        let e = v - x_hat;
        acc.saturated += saturated as u64;
        acc.max_abs_error = acc.max_abs_error.max(e.abs());
        acc.sum_sq_error[lane] += e as f64 * e as f64;
        if spec.histograms {
            acc.value_hist[copy][spec.value_bins.bin(v)] += 1;
            acc.error_hist[copy][spec.error_bins.bin(e)] += 1;
        }
    }
}

/// [`measure`] of values whose round trip is given (`x_hat`, as long as `x`) instead of computed per value:
/// llama.cpp's block formats, where a value's rounding depends on its whole block ([`super::ggml`]). Their scales
/// come from the block's own range, so nothing saturates. `spec.rounding` is not used.
pub fn measure_given(x: &[f32], x_hat: &[f32], spec: &MeasureSpec, acc: &mut MeasureAcc) {
    assert_eq!(x.len(), x_hat.len(), "round trip must match the input");
    for (i, (&v, &h)) in x.iter().zip(x_hat).enumerate() {
        let lane = i % LANES;
        let copy = lane % COPIES;
        if !v.is_finite() {
            if spec.histograms {
                acc.value_hist[copy][0] += 1;
                acc.error_hist[copy][0] += 1;
            }
            continue;
        }
        let e = v - h;
        acc.max_abs_error = acc.max_abs_error.max(e.abs());
        acc.sum_sq_error[lane] += e as f64 * e as f64;
        if spec.histograms {
            acc.value_hist[copy][spec.value_bins.bin(v)] += 1;
            acc.error_hist[copy][spec.error_bins.bin(e)] += 1;
        }
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

    /// Adds the squares of the 8 f32 lanes of `v` (widened to f64; each square is exact, so the FMA rounds as a
    /// multiply then an add would) to two f64 accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn add_squares(v: __m256, lo: &mut __m256d, hi: &mut __m256d) {
        let v_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        let v_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
        *lo = _mm256_fmadd_pd(v_lo, v_lo, *lo);
        *hi = _mm256_fmadd_pd(v_hi, v_hi, *hi);
    }

    /// 8 f64 lanes as two vectors (lanes 0-3, 4-7).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_lanes(lanes: &[f64; LANES]) -> [__m256d; 2] {
        // SAFETY: `lanes` holds 8 f64.
        unsafe { [_mm256_loadu_pd(lanes.as_ptr()), _mm256_loadu_pd(lanes.as_ptr().add(4))] }
    }

    /// Two vectors back into 8 f64 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store_lanes(lanes: &mut [f64; LANES], halves: [__m256d; 2]) {
        // SAFETY: `lanes` holds 8 f64.
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), halves[0]);
            _mm256_storeu_pd(lanes.as_mut_ptr().add(4), halves[1]);
        }
    }

    /// Adds one vector's moments, as two f64 halves (lanes 0-3, 4-7), about the shift: `S1 += d`, `S2 += d²`,
    /// `Sq += x²`, with `d = x - k` (masked by the caller when some lanes must not count). `x²` is exact in f64, so
    /// it is fused into its sum; `d²` is not exact and is rounded before it is added, as in the portable path.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn add_moments(
        x: [__m256d; 2],
        d: [__m256d; 2],
        s1: &mut [__m256d; 2],
        s2: &mut [__m256d; 2],
        sq: &mut [__m256d; 2],
    ) {
        for half in 0..2 {
            s1[half] = _mm256_add_pd(s1[half], d[half]);
            s2[half] = _mm256_add_pd(s2[half], _mm256_mul_pd(d[half], d[half]));
            sq[half] = _mm256_fmadd_pd(x[half], x[half], sq[half]);
        }
    }

    /// The 8 elements of `x` from `i` as f32 (BF16 widened by a shift).
    ///
    /// # Safety
    /// `i + 8 <= x.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<E: Element>(x: &[E], i: usize) -> __m256 {
        // SAFETY: the caller keeps the 8 elements in bounds; both types are read unaligned.
        unsafe {
            if E::IS_BF16 {
                let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(x.as_ptr().add(i).cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
            } else {
                _mm256_loadu_ps(x.as_ptr().add(i).cast())
            }
        }
    }

    /// How far ahead of its reads the scan asks for data. Hardware prefetch alone leaves one thread's scan
    /// waiting on memory: from a 64 MB slice, 0.43 ns an element without, 0.33 with (8 to 32 KB ahead all gave
    /// the same); the whole F32 pass gained 6-11% in the same process. The measure pass, bound by its
    /// histograms, gained nothing from it.
    const PREFETCH_BYTES: usize = 8192;

    /// Asks for the cache line `PREFETCH_BYTES` past element `i` of `x`, once per line (`i` a multiple of 8).
    /// A prefetch past the end of the data is harmless: it never faults.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn prefetch_ahead<E: Element>(x: &[E], i: usize) {
        let offset = i * size_of::<E>();
        if offset.is_multiple_of(64) {
            let ahead = x.as_ptr().cast::<i8>().wrapping_add(offset + PREFETCH_BYTES);
            // A prefetch reads nothing the program sees, and the address is only a hint.
            _mm_prefetch::<_MM_HINT_T0>(ahead);
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

    /// Widens the 8 f32 lanes of `v` to two f64 vectors (lanes 0-3, 4-7).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen(v: __m256) -> (__m256d, __m256d) {
        (_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)))
    }

    /// The scan: first a loop that assumes every value finite (no masks) and only notes whether one was not; if
    /// one was, the slice is scanned again from the same totals by the masked loop. Both give the same bits on a
    /// finite slice (the masks keep every finite lane as it is).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scan<E: Element>(x: &[E], shift: f64, acc: &mut ScanAcc) {
        let before = *acc;
        // SAFETY: the caller's guarantee.
        if !unsafe { scan_finite(x, shift, acc) } {
            *acc = before;
            // SAFETY: as above.
            unsafe { scan_masked(x, shift, acc) };
        }
    }

    /// The scan of a slice assumed finite; returns false (and leaves `acc` to be discarded) if it was not.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scan_finite<E: Element>(x: &[E], shift: f64, acc: &mut ScanAcc) -> bool {
        let full = x.len() / LANES * LANES;
        let abs = abs_mask();
        let inf = _mm256_set1_ps(f32::INFINITY);
        let k = _mm256_set1_pd(shift);
        let mut min = inf;
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        let (mut s1, mut s2, mut sq) =
            (load_lanes(&acc.sum_shifted), load_lanes(&acc.sum_sq_shifted), load_lanes(&acc.sum_sq));
        // Lanes that were not finite (`!(|v| < inf)`: NaN and ±inf).
        let mut not_finite = _mm256_setzero_ps();
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 <= full <= x.len().
            prefetch_ahead(x, i);
            let v = unsafe { load8(x, i) };
            not_finite = _mm256_or_ps(not_finite, _mm256_cmp_ps::<_CMP_NLT_UQ>(_mm256_and_ps(v, abs), inf));
            min = _mm256_min_ps(min, v);
            max = _mm256_max_ps(max, v);
            let (x_lo, x_hi) = widen(v);
            let d = [_mm256_sub_pd(x_lo, k), _mm256_sub_pd(x_hi, k)];
            add_moments([x_lo, x_hi], d, &mut s1, &mut s2, &mut sq);
        }
        if _mm256_movemask_ps(not_finite) != 0 || x[full..].iter().any(|v| !v.to_f32().is_finite()) {
            return false;
        }
        store_lanes(&mut acc.sum_shifted, s1);
        store_lanes(&mut acc.sum_sq_shifted, s2);
        store_lanes(&mut acc.sum_sq, sq);
        acc.min = acc.min.min(reduce(min, f32::min));
        acc.max = acc.max.max(reduce(max, f32::max));
        acc.finite += full as u64;
        scan_tail(&x[full..], full % LANES, shift, acc);
        true
    }

    /// The scan of a slice that may hold NaN and ±inf: every non-finite lane masked out of the range and the sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scan_masked<E: Element>(x: &[E], shift: f64, acc: &mut ScanAcc) {
        let full = x.len() / LANES * LANES;
        let abs = abs_mask();
        let inf = _mm256_set1_ps(f32::INFINITY);
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let k = _mm256_set1_pd(shift);
        let mut min = inf;
        let mut max = neg_inf;
        let (mut s1, mut s2, mut sq) =
            (load_lanes(&acc.sum_shifted), load_lanes(&acc.sum_sq_shifted), load_lanes(&acc.sum_sq));
        // Per-lane counts as negated masks (a true mask is -1).
        let mut finite_count = _mm256_setzero_si256();
        let mut nan_count = _mm256_setzero_si256();
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 <= full <= x.len().
            prefetch_ahead(x, i);
            let v = unsafe { load8(x, i) };
            let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs), inf);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            min = _mm256_min_ps(min, _mm256_blendv_ps(inf, v, finite));
            max = _mm256_max_ps(max, _mm256_blendv_ps(neg_inf, v, finite));
            finite_count = _mm256_sub_epi32(finite_count, _mm256_castps_si256(finite));
            nan_count = _mm256_sub_epi32(nan_count, _mm256_castps_si256(nan));
            let (x_lo, x_hi) = widen(_mm256_and_ps(v, finite));
            let (f_lo, f_hi) = (
                _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(_mm256_castps_si256(finite)))),
                _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(_mm256_castps_si256(finite)))),
            );
            let d = [_mm256_and_pd(_mm256_sub_pd(x_lo, k), f_lo), _mm256_and_pd(_mm256_sub_pd(x_hi, k), f_hi)];
            add_moments([x_lo, x_hi], d, &mut s1, &mut s2, &mut sq);
        }
        store_lanes(&mut acc.sum_shifted, s1);
        store_lanes(&mut acc.sum_sq_shifted, s2);
        store_lanes(&mut acc.sum_sq, sq);
        let (finite_total, nan_total) = (horizontal_count(finite_count), horizontal_count(nan_count));
        acc.min = acc.min.min(reduce(min, f32::min));
        acc.max = acc.max.max(reduce(max, f32::max));
        acc.finite += finite_total;
        acc.nan += nan_total;
        acc.inf += full as u64 - finite_total - nan_total;
        scan_tail(&x[full..], full % LANES, shift, acc);
    }

    /// Sum of 8 per-lane u32 counters.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn horizontal_count(counts: __m256i) -> u64 {
        let mut lanes = [0u32; LANES];
        // SAFETY: `lanes` holds 8 u32.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), counts) };
        lanes.iter().map(|&c| c as u64).sum()
    }

    /// Steps of the measure loop between storing a step's bins and counting them.
    const LAG: usize = 2;
    /// Slots of the ring of stored bins.
    const RING: usize = 4;

    /// Bins of the last `RING` steps of the measure loop.
    #[repr(C, align(32))]
    struct Ring([[u16; 2 * LANES]; RING]);

    /// Counts one step's bins: lane `l` into copy `l % COPIES`. Bins are in 0..=255 by construction; `as u8`
    /// lets the compiler drop the bounds checks.
    #[inline(always)]
    fn count_bins(
        bins: &[u16; 2 * LANES],
        value_hist: &mut [[u32; HIST_BINS]; COPIES],
        error_hist: &mut [[u32; HIST_BINS]; COPIES],
    ) {
        for lane in 0..4 {
            value_hist[lane % COPIES][bins[lane] as u8 as usize] += 1;
            error_hist[lane % COPIES][bins[4 + lane] as u8 as usize] += 1;
            value_hist[(4 + lane) % COPIES][bins[8 + lane] as u8 as usize] += 1;
            error_hist[(4 + lane) % COPIES][bins[12 + lane] as u8 as usize] += 1;
        }
    }

    /// Rounding kinds of the monomorphic measure loops.
    const INT8_SYM: u8 = 0;
    const INT8_ASYM: u8 = 1;
    const FP16: u8 = 2;
    const BF16: u8 = 3;
    const IDENTITY: u8 = 4;
    const FP8: u8 = 5;

    /// Constants of one rounding, broadcast once per slice.
    struct RoundConsts {
        scale: __m256,
        zero_point: __m256,
        qmin: __m256,
        qmax: __m256,
    }

    /// The rounding of [`round_trip`], 8 lanes at a time. Returns `x_hat` and the saturated lanes (finite
    /// lanes only matter). For the symmetric INT8 kind the zero point is 0 and its add/subtract are skipped:
    /// that can only flip the sign of a zero `x_hat`, which changes neither the error nor a code.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn round_trip8<const KIND: u8>(v: __m256, c: &RoundConsts) -> (__m256, __m256) {
        match KIND {
            INT8_SYM | INT8_ASYM => {
                let mut q = _mm256_round_ps::<ROUND_NEAREST>(_mm256_div_ps(v, c.scale));
                if KIND == INT8_ASYM {
                    q = _mm256_add_ps(q, c.zero_point);
                }
                let clamped = _mm256_min_ps(_mm256_max_ps(q, c.qmin), c.qmax);
                let saturated = _mm256_cmp_ps::<_CMP_NEQ_OQ>(q, clamped);
                let q = if KIND == INT8_ASYM { _mm256_sub_ps(clamped, c.zero_point) } else { clamped };
                (_mm256_mul_ps(q, c.scale), saturated)
            }
            FP16 => {
                let limit = _mm256_set1_ps(FP16_MAX);
                let clamped = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-FP16_MAX)), limit);
                let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(clamped);
                (_mm256_cvtph_ps(half), _mm256_cmp_ps::<_CMP_NEQ_OQ>(v, clamped))
            }
            BF16 => {
                let limit = _mm256_set1_ps(BF16_MAX);
                let clamped = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-BF16_MAX)), limit);
                let bits = _mm256_castps_si256(clamped);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
                let bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF));
                let rounded = _mm256_and_si256(_mm256_add_epi32(bits, bias), _mm256_set1_epi32(0xFFFF_0000u32 as i32));
                (_mm256_castsi256_ps(rounded), _mm256_cmp_ps::<_CMP_NEQ_OQ>(v, clamped))
            }
            FP8 => {
                let scaled = _mm256_div_ps(v, c.scale);
                let saturated = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_and_ps(scaled, abs_mask()),
                    _mm256_set1_ps(E4M3_SATURATION_THRESHOLD),
                );
                (_mm256_mul_ps(fp8::avx2::round_e4m3(scaled), c.scale), saturated)
            }
            _ => (v, _mm256_setzero_ps()),
        }
    }

    /// Histogram bins of 8 values as [`BinMap::bin`], except that a negative `t` is left negative: the caller's
    /// unsigned saturating pack makes it 0, which is the clamp at 0 for one instruction less (non-finite lanes
    /// are masked to bin 0 by the caller).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn bins8(v: __m256, lo: __m256, bins_per_unit: __m256) -> __m256i {
        let t = _mm256_mul_ps(_mm256_sub_ps(v, lo), bins_per_unit);
        _mm256_cvttps_epi32(_mm256_min_ps(t, _mm256_set1_ps((HIST_BINS - 1) as f32)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn measure<E: Element>(x: &[E], spec: &MeasureSpec, acc: &mut MeasureAcc) {
        // One monomorphic loop per rounding (and per finiteness) keeps every branch out of the loop.
        macro_rules! dispatch {
            ($kind:expr) => {
                match (spec.all_finite, spec.histograms) {
                    (true, true) => unsafe { measure_loop::<E, { $kind }, true, true>(x, spec, acc) },
                    (false, true) => unsafe { measure_loop::<E, { $kind }, false, true>(x, spec, acc) },
                    (true, false) => unsafe { measure_loop::<E, { $kind }, true, false>(x, spec, acc) },
                    (false, false) => unsafe { measure_loop::<E, { $kind }, false, false>(x, spec, acc) },
                }
            };
        }
        match spec.rounding {
            Rounding::Int8(p) if p.zero_point == 0 => dispatch!(INT8_SYM),
            Rounding::Int8(_) => dispatch!(INT8_ASYM),
            Rounding::Fp16 => dispatch!(FP16),
            Rounding::Bf16 => dispatch!(BF16),
            Rounding::Fp8 { .. } => dispatch!(FP8),
            Rounding::Identity => dispatch!(IDENTITY),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn measure_loop<E: Element, const KIND: u8, const ALL_FINITE: bool, const HISTOGRAMS: bool>(
        x: &[E],
        spec: &MeasureSpec,
        acc: &mut MeasureAcc,
    ) {
        let full = x.len() / LANES * LANES;
        let abs = abs_mask();
        let inf = _mm256_set1_ps(f32::INFINITY);
        let all_ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let consts = match spec.rounding {
            Rounding::Int8(p) => RoundConsts {
                scale: _mm256_set1_ps(p.scale),
                zero_point: _mm256_set1_ps(p.zero_point as f32),
                qmin: _mm256_set1_ps(p.qmin as f32),
                qmax: _mm256_set1_ps(p.qmax as f32),
            },
            Rounding::Fp8 { scale } => RoundConsts {
                scale: _mm256_set1_ps(scale),
                zero_point: _mm256_setzero_ps(),
                qmin: _mm256_setzero_ps(),
                qmax: _mm256_setzero_ps(),
            },
            _ => RoundConsts {
                scale: _mm256_set1_ps(1.0),
                zero_point: _mm256_setzero_ps(),
                qmin: _mm256_setzero_ps(),
                qmax: _mm256_setzero_ps(),
            },
        };
        let (value_lo, value_scale) =
            (_mm256_set1_ps(spec.value_bins.lo), _mm256_set1_ps(spec.value_bins.bins_per_unit));
        let (error_lo, error_scale) =
            (_mm256_set1_ps(spec.error_bins.lo), _mm256_set1_ps(spec.error_bins.bins_per_unit));
        let [mut err_lo, mut err_hi] = load_lanes(&acc.sum_sq_error);
        let mut max_err = _mm256_setzero_ps();
        let mut saturated = _mm256_setzero_si256();
        let mut ring = Ring([[0; 2 * LANES]; RING]);
        let MeasureAcc { value_hist, error_hist, .. } = acc;
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 <= full <= x.len().
            let v = unsafe { load8(x, i) };
            let finite = if ALL_FINITE { all_ones } else { _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs), inf) };
            let (x_hat, sat) = round_trip8::<KIND>(v, &consts);
            let sat = if ALL_FINITE { sat } else { _mm256_and_ps(sat, finite) };
            saturated = _mm256_sub_epi32(saturated, _mm256_castps_si256(sat));
            let e = _mm256_sub_ps(v, x_hat);
            let e = if ALL_FINITE { e } else { _mm256_and_ps(e, finite) };
            max_err = _mm256_max_ps(max_err, _mm256_and_ps(e, abs));
            add_squares(e, &mut err_lo, &mut err_hi);
            if !HISTOGRAMS {
                continue;
            }
            let mut value_bins = bins8(v, value_lo, value_scale);
            let mut error_bins = bins8(e, error_lo, error_scale);
            if !ALL_FINITE {
                value_bins = _mm256_and_si256(value_bins, _mm256_castps_si256(finite));
                error_bins = _mm256_and_si256(error_bins, _mm256_castps_si256(finite));
            }
            // Both bins of the 8 lanes as 16 u16 (per 128-bit half: 4 value bins, then 4 error bins), stored in
            // the ring and counted two steps later, once the store has reached the cache.
            let packed = _mm256_packus_epi32(value_bins, error_bins);
            let step = i / LANES;
            // SAFETY: the ring holds RING slots of 16 u16, each 32-byte aligned.
            unsafe { _mm256_store_si256(ring.0[step % RING].as_mut_ptr().cast(), packed) };
            if step >= LAG {
                count_bins(&ring.0[(step - LAG) % RING], value_hist, error_hist);
            }
        }
        if HISTOGRAMS {
            for step in (full / LANES).saturating_sub(LAG)..full / LANES {
                count_bins(&ring.0[step % RING], value_hist, error_hist);
            }
        }
        store_lanes(&mut acc.sum_sq_error, [err_lo, err_hi]);
        acc.max_abs_error = acc.max_abs_error.max(reduce(max_err, f32::max));
        acc.saturated += horizontal_count(saturated);
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
            let v = unsafe { load8(x, i) };
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
        let mut rng = crate::seeded::XorShift64::from_state(0x2545_F491_4F6C_DD1D);
        // Midpoints between neighbouring FP8 E4M3 values (ties of `Rounding::Fp8 { scale: 1.0 }`), both signs.
        let e4m3_ties: Vec<f32> = (0..0x7Eu8)
            .flat_map(|c| {
                let mid = (fp8::e4m3_to_f32(c) + fp8::e4m3_to_f32(c + 1)) / 2.0;
                [mid, -mid]
            })
            .collect();
        (0..n)
            .map(|i| {
                let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                match i % 97 {
                    8..=15 => e4m3_ties[(i / 97 * 8 + i % 97 - 8) % e4m3_ties.len()],
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
            // Values to ±2 against 448 · scale: 1 (most values subnormal or zero in E4M3, none saturated),
            // 0.5 / 448 (the range of most values; the outliers saturate) and 1e-6 (everything finite saturates).
            Rounding::Fp8 { scale: 1.0 },
            Rounding::Fp8 { scale: 0.5 / 448.0 },
            Rounding::Fp8 { scale: 1e-6 },
            Rounding::Identity,
        ];
        roundings
            .into_iter()
            .flat_map(|rounding| [true, false].map(|all_finite| (rounding, all_finite)))
            .map(|(rounding, all_finite)| MeasureSpec {
                rounding,
                all_finite,
                histograms: true,
                value_bins: BinMap::new(-2.0, 2.0),
                error_bins: BinMap::new(-0.01, 0.01),
            })
            .collect()
    }

    fn assert_same_measure(a: &MeasureAcc, b: &MeasureAcc, what: &str) {
        assert_eq!(a.sum_sq_error.map(f64::to_bits), b.sum_sq_error.map(f64::to_bits), "{what}");
        assert_eq!(a.max_abs_error.to_bits(), b.max_abs_error.to_bits(), "{what}");
        assert_eq!(a.saturated, b.saturated, "{what}");
        assert_eq!(a.value_hist, b.value_hist, "{what}");
        assert_eq!(a.error_hist, b.error_hist, "{what}");
    }

    #[test]
    fn bf16_read_in_place_gives_the_totals_of_its_f32_values() {
        for len in [0, 1, 7, 8, 9, 63, 1000, 4099] {
            let bf16: Vec<half::bf16> =
                awkward_values(len).iter().map(|v| half::bf16::from_bits((v.to_bits() >> 16) as u16)).collect();
            let widened: Vec<f32> = bf16.iter().map(|v| v.to_f32()).collect();
            let finite_bf16: Vec<half::bf16> = bf16.iter().copied().filter(|v| v.is_finite()).collect();
            let finite_widened: Vec<f32> = finite_bf16.iter().map(|v| v.to_f32()).collect();
            for (bf16, widened) in [(&bf16, &widened), (&finite_bf16, &finite_widened)] {
                let mut totals = [ScanAcc::default(); 4];
                scan(bf16, 0.25, &mut totals[0]);
                scan_portable(bf16, 0.25, &mut totals[1]);
                scan(widened, 0.25, &mut totals[2]);
                scan_portable(widened, 0.25, &mut totals[3]);
                assert!(totals.iter().all(|t| *t == totals[0]), "scan len {len}");
            }
            for spec in specs() {
                let (bf16, widened) = if spec.all_finite { (&finite_bf16, &finite_widened) } else { (&bf16, &widened) };
                let mut from_widened = MeasureAcc::default();
                measure_portable(widened, &spec, &mut from_widened);
                for dispatched in [true, false] {
                    let mut from_bf16 = MeasureAcc::default();
                    if dispatched {
                        measure(bf16, &spec, &mut from_bf16);
                    } else {
                        measure_portable(bf16, &spec, &mut from_bf16);
                    }
                    assert_same_measure(&from_bf16, &from_widened, &format!("{spec:?} len {len}"));
                }
            }
        }
    }

    #[test]
    fn dispatched_kernels_match_portable_bit_for_bit() {
        for len in [0, 1, 7, 8, 9, 63, 1000, 4099] {
            let x = awkward_values(len);
            let (mut fast, mut portable) = (ScanAcc::default(), ScanAcc::default());
            scan(&x, 0.25, &mut fast);
            scan_portable(&x, 0.25, &mut portable);
            assert_eq!(fast, portable, "scan len {len}");
            let finite_only: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
            // Finite slices take the unmasked loop; one non-finite value anywhere (the tail too) sends the slice
            // to the masked one from the same totals.
            let mut tail_nan = finite_only.clone();
            tail_nan.push(f32::NAN);
            let mut first_inf = finite_only.clone();
            first_inf.insert(0, f32::NEG_INFINITY);
            for x in [&finite_only, &tail_nan, &first_inf] {
                let (mut fast, mut portable) = (ScanAcc::default(), ScanAcc::default());
                for _ in 0..2 {
                    scan(x, 0.25, &mut fast);
                    scan_portable(x, 0.25, &mut portable);
                }
                assert_eq!(fast, portable, "scan len {}", x.len());
            }
            for spec in specs() {
                // `all_finite` is a promise about the data: keep it.
                let x = if spec.all_finite { &finite_only } else { &x };
                let (mut fast, mut portable) = (MeasureAcc::default(), MeasureAcc::default());
                measure(x, &spec, &mut fast);
                measure_portable(x, &spec, &mut portable);
                assert_same_measure(&fast, &portable, &format!("{spec:?}"));
            }
            for p in [QParams::symmetric(2.0), QParams::asymmetric(-0.3, 1.7), QParams::symmetric(1e-3)] {
                let (mut fast, mut portable) = (vec![0i8; len], vec![0i8; len]);
                quantize_codes(&x, &p, &mut fast);
                quantize_codes_portable(&x, &p, &mut portable);
                assert_eq!(fast, portable, "codes len {len}");
            }
        }
    }

    fn assert_same_sums(a: MeasureSums, b: MeasureSums, what: &str) {
        assert_eq!(a.sum_sq_error.map(f64::to_bits), b.sum_sq_error.map(f64::to_bits), "{what}");
        assert_eq!(a.max_abs_error.to_bits(), b.max_abs_error.to_bits(), "{what}");
        assert_eq!(a.saturated, b.saturated, "{what}");
    }

    #[test]
    fn measure_without_histograms_gives_the_same_sums_and_counts_nothing() {
        for len in [0, 1, 7, 8, 9, 63, 1000, 4099] {
            let x = awkward_values(len);
            let finite_only: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
            let bf16: Vec<half::bf16> = x.iter().map(|v| half::bf16::from_bits((v.to_bits() >> 16) as u16)).collect();
            for spec in specs() {
                let x = if spec.all_finite { &finite_only } else { &x };
                let plain = MeasureSpec { histograms: false, ..spec };
                for dispatched in [true, false] {
                    let (mut with, mut without) = (MeasureAcc::default(), MeasureAcc::default());
                    if dispatched {
                        measure(x, &spec, &mut with);
                        measure(x, &plain, &mut without);
                    } else {
                        measure_portable(x, &spec, &mut with);
                        measure_portable(x, &plain, &mut without);
                    }
                    assert_same_sums(with.take_sums(), without.take_sums(), &format!("{spec:?} len {len}"));
                    assert_same_measure(&without, &MeasureAcc::default(), "no counts");
                }
                if !spec.all_finite {
                    let (mut with, mut without) = (MeasureAcc::default(), MeasureAcc::default());
                    measure(&bf16, &spec, &mut with);
                    measure(&bf16, &plain, &mut without);
                    assert_same_sums(with.take_sums(), without.take_sums(), &format!("bf16 {spec:?} len {len}"));
                }
            }
        }
    }

    /// The error figures of `round_trip` over the finite values of `x`, written out plainly: the sum of squared
    /// errors (f64), the largest absolute error, and how many values `saturates` says the clamp changed.
    fn reference_error(x: &[f32], round_trip: impl Fn(f32) -> f32, saturates: impl Fn(f32) -> bool) -> (f64, f32, u64) {
        let (mut sum_e2, mut max_e, mut saturated) = (0f64, 0f32, 0);
        for &v in x.iter().filter(|v| v.is_finite()) {
            let e = v - round_trip(v);
            sum_e2 += (e as f64).powi(2);
            max_e = max_e.max(e.abs());
            saturated += saturates(v) as u64;
        }
        (sum_e2, max_e, saturated)
    }

    #[test]
    fn measure_agrees_with_the_reference_formulas() {
        let x = awkward_values(1000);
        let p = QParams::symmetric(2.0);
        let spec = MeasureSpec {
            rounding: Rounding::Int8(p),
            all_finite: false,
            histograms: true,
            value_bins: BinMap::new(-2.0, 2.0),
            error_bins: BinMap::new(-1.0, 1.0),
        };
        let mut acc = MeasureAcc::default();
        measure(&x, &spec, &mut acc);
        let (sum_e2, max_e, saturated) =
            reference_error(&x, |v| p.dequantize(p.quantize(v)), |v| (v / p.scale).round_ties_even().abs() > 127.0);
        let got = lane_sum(&acc.sum_sq_error);
        assert!((got - sum_e2).abs() <= 1e-12 * sum_e2, "{got} vs {sum_e2}");
        assert_eq!(acc.max_abs_error, max_e);
        assert_eq!(acc.saturated, saturated);
        let (mut value, mut error) = ([0u64; HIST_BINS], [0u64; HIST_BINS]);
        acc.add_histograms_to(&mut value, &mut error);
        // Non-finite elements sit in bin 0 until the pass removes them.
        assert_eq!(value.iter().sum::<u64>(), x.len() as u64);
        assert_eq!(error.iter().sum::<u64>(), x.len() as u64);
    }

    #[test]
    fn fp8_measure_agrees_with_the_scalar_definition() {
        let x = awkward_values(1000);
        for scale in [1.0, 0.5 / 448.0, 1e-6] {
            let spec = MeasureSpec {
                rounding: Rounding::Fp8 { scale },
                all_finite: false,
                histograms: true,
                value_bins: BinMap::new(-2.0, 2.0),
                error_bins: BinMap::new(-1.0, 1.0),
            };
            let mut acc = MeasureAcc::default();
            measure(&x, &spec, &mut acc);
            // Saturated: the clamp changed the code, i.e. without it `v / scale` would have rounded to 480 or
            // beyond: it is nearer to 480 than to 448 (a tie goes to 448, the even mantissa).
            let (sum_e2, max_e, saturated) = reference_error(
                &x,
                |v| fp8::quantize_dequantize(v, scale),
                |v| {
                    let a = (v / scale).abs() as f64;
                    a - 448.0 > 480.0 - a
                },
            );
            let got = lane_sum(&acc.sum_sq_error);
            assert!((got - sum_e2).abs() <= 1e-12 * sum_e2, "scale {scale}: {got} vs {sum_e2}");
            assert_eq!(acc.max_abs_error, max_e, "scale {scale}");
            assert_eq!(acc.saturated, saturated, "scale {scale}");
            assert!(saturated > 0 || scale == 1.0, "the case must saturate something");
        }
    }

    #[test]
    fn fp8_saturation_counts_only_values_the_clamp_changes() {
        let edge = [448.0, 448f32.next_up(), 464.0, 464f32.next_up(), -464f32.next_up(), 1e30, f32::INFINITY];
        let x: Vec<f32> = edge.iter().cycle().take(3 * edge.len()).copied().collect();
        let spec = MeasureSpec {
            rounding: Rounding::Fp8 { scale: 1.0 },
            all_finite: false,
            histograms: true,
            value_bins: BinMap::new(-2.0, 2.0),
            error_bins: BinMap::new(-1.0, 1.0),
        };
        let (mut fast, mut portable) = (MeasureAcc::default(), MeasureAcc::default());
        measure(&x, &spec, &mut fast);
        measure_portable(&x, &spec, &mut portable);
        assert_same_measure(&fast, &portable, "edges");
        // Per copy of `edge`: 464+ulp, -(464+ulp) and 1e30 (inf is not finite).
        assert_eq!(fast.saturated, 3 * 3);
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
