//! Quantization parameters and the scalar reference of every formula in `docs/QUANTIZATION.md`.
//!
//! These functions are the definition; the SIMD kernels in [`super::kernels`] must agree with them bit for bit on
//! every code and reconstructed value.

use half::{bf16, f16};

/// Smallest INT8 code of the symmetric scheme (the range is kept symmetric: -128 is unused).
pub const SYM_QMIN: i32 = -127;
/// Largest INT8 code.
pub const QMAX: i32 = 127;
/// Smallest INT8 code of the asymmetric scheme.
pub const ASYM_QMIN: i32 = -128;
/// Largest finite FP16 value; finite inputs beyond it saturate to it.
pub const FP16_MAX: f32 = 65504.0;
/// Largest finite BF16 value; finite inputs beyond it saturate to it.
pub const BF16_MAX: f32 = f32::from_bits(0x7F7F_0000);

/// Scale and zero point of one quantization group (a tensor or one output channel) with its code range.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QParams {
    /// Step between neighbouring codes, always finite and > 0.
    pub scale: f32,
    /// The code that represents 0.0 (0 for symmetric).
    pub zero_point: i32,
    /// Smallest code.
    pub qmin: i32,
    /// Largest code.
    pub qmax: i32,
}

impl QParams {
    /// Symmetric INT8 from the absolute maximum of the finite values:
    /// `scale = absmax / 127` in f32; 1 when that is 0 (absmax 0, or so small that the division underflows).
    pub fn symmetric(absmax: f32) -> QParams {
        let scale = absmax / QMAX as f32;
        let scale = if scale > 0.0 && scale.is_finite() { scale } else { 1.0 };
        QParams { scale: representable(scale, QMAX), zero_point: 0, qmin: SYM_QMIN, qmax: QMAX }
    }

    /// The static INT8 quantization of a layer's input (W8A8) from its calibrated clip: the scale of
    /// [`QParams::symmetric`] (`clip / 127`), codes saturated to `[-128, 127]`, as compressed-tensors and vLLM
    /// quantize inputs (the negative side reaches `-128 · scale`, one step beyond the clip).
    pub fn static_input(clip: f32) -> QParams {
        QParams { qmin: ASYM_QMIN, ..QParams::symmetric(clip) }
    }

    /// Asymmetric INT8 from the finite min and max: `lo = min(min, 0)`, `hi = max(max, 0)`,
    /// `scale = (hi - lo) / 255` (1 when 0; `hi/255 - lo/255` when `hi - lo` overflows f32),
    /// `zero_point = clamp(round_half_even(-lo / scale) - 128, -128, 127)`.
    pub fn asymmetric(min: f32, max: f32) -> QParams {
        asymmetric_in(min, max, ASYM_QMIN, QMAX)
    }

    /// `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`; NaN maps to the zero point and ±inf
    /// saturate.
    #[inline]
    pub fn quantize(&self, x: f32) -> i8 {
        if x.is_nan() {
            return self.zero_point as i8;
        }
        let v = (x / self.scale).round_ties_even() + self.zero_point as f32;
        v.clamp(self.qmin as f32, self.qmax as f32) as i8
    }

    /// `x_hat = (q - zero_point) * scale`, in f32.
    #[inline]
    pub fn dequantize(&self, q: i8) -> f32 {
        (q as i32 - self.zero_point) as f32 * self.scale
    }
}

/// Smallest INT4 code.
pub const INT4_QMIN: i32 = -8;
/// Largest INT4 code.
pub const INT4_QMAX: i32 = 7;

impl QParams {
    /// Symmetric INT4 of one group from the absolute maximum of its finite values, as GPTQ and llm-compressor
    /// compute it: `scale = absmax / 7.5` in f32 (1 when that is 0 or not finite), codes `-8..=7`. The largest
    /// positive value lands at 7.5 steps and is clamped to code 7: half a step away, no more than any rounding.
    pub fn int4_symmetric(absmax: f32) -> QParams {
        let scale = absmax / 7.5;
        let scale = if scale > 0.0 && scale.is_finite() { scale } else { 1.0 };
        QParams { scale: representable(scale, -INT4_QMIN), zero_point: 0, qmin: INT4_QMIN, qmax: INT4_QMAX }
    }

    /// Asymmetric INT4 of one group from its finite min and max: `lo = min(min, 0)`, `hi = max(max, 0)`,
    /// `scale = (hi - lo) / 15` (1 when 0; `hi/15 - lo/15` when `hi - lo` overflows f32),
    /// `zero_point = clamp(round_half_even(-lo / scale) - 8, -8, 7)`.
    pub fn int4_asymmetric(min: f32, max: f32) -> QParams {
        asymmetric_in(min, max, INT4_QMIN, INT4_QMAX)
    }
}

/// The asymmetric parameters of codes `qmin..=qmax` (INT8 and INT4 alike): `lo = min(min, 0)`, `hi = max(max, 0)`,
/// `scale = (hi - lo) / (qmax - qmin)` (1 when 0; `hi/steps - lo/steps` when `hi - lo` overflows f32),
/// `zero_point = clamp(round_half_even(-lo / scale) + qmin, qmin, qmax)`, the scale lowered until no code overflows.
fn asymmetric_in(min: f32, max: f32, qmin: i32, qmax: i32) -> QParams {
    let steps = (qmax - qmin) as f32;
    let lo = min.min(0.0);
    let hi = max.max(0.0);
    let range = hi - lo;
    let scale = if range.is_finite() { range / steps } else { hi / steps - lo / steps };
    let scale = if scale > 0.0 && scale.is_finite() { scale } else { 1.0 };
    let zero_point = ((-lo / scale).round_ties_even() + qmin as f32).clamp(qmin as f32, qmax as f32) as i32;
    let reach = (qmax - zero_point).max(zero_point - qmin);
    QParams { scale: representable(scale, reach), zero_point, qmin, qmax }
}

/// Lowers `scale` by one ulp at a time until `reach * scale` is finite, so that no code dequantizes to
/// infinity. Only scales within a few ulps of `f32::MAX / reach` (tensors holding values near `f32::MAX`) change.
fn representable(mut scale: f32, reach: i32) -> f32 {
    while (reach as f32 * scale).is_infinite() {
        scale = scale.next_down();
    }
    scale
}

/// FP16 round trip: IEEE round to nearest even; finite values beyond ±65504 saturate to ±65504; NaN and ±inf stay.
#[inline]
pub fn round_fp16(x: f32) -> f32 {
    to_fp16(x).to_f32()
}

/// The FP16 value stored for `x` (see [`round_fp16`]).
#[inline]
pub fn to_fp16(x: f32) -> f16 {
    if x.is_finite() { f16::from_f32(x.clamp(-FP16_MAX, FP16_MAX)) } else { f16::from_f32(x) }
}

/// BF16 round trip: IEEE round to nearest even; finite values beyond the largest BF16 saturate; NaN and ±inf stay.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    to_bf16(x).to_f32()
}

/// The BF16 value stored for `x` (see [`round_bf16`]).
#[inline]
pub fn to_bf16(x: f32) -> bf16 {
    if x.is_finite() { bf16::from_f32(x.clamp(-BF16_MAX, BF16_MAX)) } else { bf16::from_f32(x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_worked_example() {
        let p = QParams::symmetric(2.54);
        assert_eq!(p.scale, 2.54f32 / 127.0);
        assert_eq!(p.quantize(2.54), 127);
        assert_eq!(p.quantize(-2.54), -127);
        assert_eq!(p.quantize(0.0), 0);
        // 0.03 / 0.02 = 1.5 (in f32 slightly below or above): check against the formula, not a guess.
        let expected = (0.03f32 / p.scale).round_ties_even() as i8;
        assert_eq!(p.quantize(0.03), expected);
        assert_eq!(p.dequantize(127), 127.0 * p.scale);
    }

    #[test]
    fn ties_round_to_even() {
        let p = QParams { scale: 1.0, zero_point: 0, qmin: SYM_QMIN, qmax: QMAX };
        assert_eq!(p.quantize(0.5), 0);
        assert_eq!(p.quantize(1.5), 2);
        assert_eq!(p.quantize(2.5), 2);
        assert_eq!(p.quantize(-2.5), -2);
        assert_eq!(p.quantize(-3.5), -4);
    }

    #[test]
    fn zero_and_degenerate_ranges_give_scale_one() {
        assert_eq!(QParams::symmetric(0.0).scale, 1.0);
        assert_eq!(QParams::symmetric(1e-44).scale, 1.0, "absmax/127 underflows to 0");
        let a = QParams::asymmetric(0.0, 0.0);
        assert_eq!((a.scale, a.zero_point), (1.0, -128));
        let huge = QParams::asymmetric(-3e38, 3e38);
        assert!(huge.scale.is_finite() && huge.scale > 0.0);
        for p in
            [QParams::symmetric(f32::MAX), QParams::asymmetric(-f32::MAX, f32::MAX), QParams::asymmetric(0.0, f32::MAX)]
        {
            assert!(p.dequantize(p.qmax as i8).is_finite() && p.dequantize(p.qmin as i8).is_finite(), "{p:?}");
            assert_eq!(p.quantize(f32::MAX) as i32, p.qmax);
        }
        assert_eq!(QParams::symmetric(f32::MAX).scale, (f32::MAX / 127.0).next_down());
    }

    #[test]
    fn asymmetric_keeps_zero_exact() {
        for (min, max) in [(-1.0f32, 3.0f32), (0.5, 2.0), (-4.0, -1.0), (-0.001, 100.0)] {
            let p = QParams::asymmetric(min, max);
            assert_eq!(p.dequantize(p.quantize(0.0)), 0.0, "{min}..{max}");
            assert!(p.zero_point >= ASYM_QMIN && p.zero_point <= QMAX);
        }
        // Positive-only range: lo = 0, so zero point is -128 and codes span the whole range.
        let p = QParams::asymmetric(0.5, 2.55);
        assert_eq!(p.zero_point, -128);
        assert_eq!(p.scale, 2.55f32 / 255.0);
        assert_eq!(p.quantize(2.55), 127);
    }

    #[test]
    fn non_finite_inputs() {
        let p = QParams::symmetric(1.0);
        assert_eq!(p.quantize(f32::NAN), 0);
        assert_eq!(p.quantize(f32::INFINITY), 127);
        assert_eq!(p.quantize(f32::NEG_INFINITY), -127);
        let a = QParams::asymmetric(-1.0, 1.0);
        assert_eq!(a.quantize(f32::NAN) as i32, a.zero_point);
    }

    #[test]
    fn half_precisions_round_to_nearest_even_and_saturate() {
        assert_eq!(round_fp16(1.0 + 2f32.powi(-11)), 1.0, "tie goes to even");
        assert_eq!(round_fp16(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2.0 * 2f32.powi(-10));
        assert_eq!(round_fp16(1e6), FP16_MAX);
        assert_eq!(round_fp16(-1e6), -FP16_MAX);
        assert!(round_fp16(f32::NAN).is_nan());
        assert_eq!(round_fp16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0, "tie goes to even");
        assert_eq!(round_bf16(f32::MAX), BF16_MAX);
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    }
}
