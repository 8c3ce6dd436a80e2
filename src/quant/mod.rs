//! The only code that quantizes: precisions and schemes, quantization parameters, the fused analysis pass, error
//! metrics, and plans (recipes).
//!
//! The formulas are written down in `docs/QUANTIZATION.md`; [`params`] holds the scalar reference of each one and
//! the tests hold the fast kernels to it.

pub mod codes;
pub mod fp8;
pub mod ggml;
pub mod gptq;
pub mod int4;
pub mod kernels;
pub mod metrics;
pub mod params;
pub mod pass;
pub mod plan;

use std::fmt;

pub use codes::{
    Fp8Tensor, Int4Tensor, QuantizedTensor, quantize_tensor, quantize_tensor_fp8, quantize_tensor_int4, row_group,
};
pub use int4::Int4Scheme;
pub use metrics::ErrorMetrics;
pub use params::QParams;
pub use pass::{TensorAnalysis, TensorHistograms, analyze_tensor};
pub use plan::{Plan, Recipe};

/// How the INT8 parameters are shared across a tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale (and zero point) for the whole tensor.
    #[default]
    PerTensor,
    /// One per output channel (axis 0, conv kernels included). 1-D tensors fall back to per tensor.
    PerChannel,
}

/// An INT8 scheme: symmetric or asymmetric, per tensor or per output channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Int8Scheme {
    /// Symmetric (zero point 0, codes -127..=127) or asymmetric (zero point, codes -128..=127).
    #[serde(default = "default_true")]
    pub symmetric: bool,
    /// Per tensor or per output channel.
    #[serde(default)]
    pub granularity: Granularity,
    /// What the layer's input becomes: kept in float (weight-only, W8A16/W8A32), static INT8 (W8A8) or dynamic
    /// per-token INT8 (W8A8-dynamic).
    #[serde(default, skip_serializing_if = "Activations::is_float")]
    pub activations: Activations,
}

/// The precision of a quantized layer's input activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activations {
    /// Kept in float: weight-only INT8 (W8A16 / W8A32).
    #[default]
    Float,
    /// Static per-tensor symmetric INT8 with the calibrated scale (W8A8): `scale = clip / 127`,
    /// `q = clamp(round_half_even(x / scale), -128, 127)`: the symmetric weight scale with the clip as absmax, and
    /// the int8 range compressed-tensors and vLLM saturate inputs to.
    Int8,
    /// Dynamic per-token symmetric INT8 (W8A8-dynamic, llm-compressor's W8A8 preset): each row of the input (one
    /// token) is quantized as it arrives with `scale = absmax(row) / 127`, the weight formulas on that row. Needs no
    /// calibration.
    Int8Dynamic,
}

impl Activations {
    /// Whether the input stays in float (weight-only).
    pub fn is_float(&self) -> bool {
        *self == Activations::Float
    }
}

/// How a layer's input is quantized before its product, as the runtime simulates and deploys it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputQuant {
    /// Static per-tensor symmetric INT8 with these (calibrated) parameters.
    Static(QParams),
    /// Dynamic per-token symmetric INT8: every row with its own `QParams::symmetric(absmax(row))`.
    DynamicInt8,
    /// Dynamic per-token FP8 E4M3: every row with its own `fp8::fp8_scale(absmax(row))`.
    DynamicFp8,
    /// What llama.cpp's CPU product with a weight in this block format makes of the input row: Q8_0 blocks of 32
    /// (Q8_0, Q4_0 weights) or Q8_K blocks of 256 (K-quants) ([`ggml::quantize_activation_row`]).
    Blocks(ggml::BlockFormat),
}

/// An FP8 E4M3 scheme (compressed-tensors `float-quantized`, vLLM's FP8 and FP8_DYNAMIC): `scale = absmax / 448`
/// per tensor or per output channel, values rounded to nearest even on the E4M3 grid with saturation
/// ([`fp8`], `docs/QUANTIZATION.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fp8Scheme {
    /// One scale per tensor or per output channel.
    #[serde(default = "per_channel")]
    pub granularity: Granularity,
    /// What the layer's input becomes: kept in float (weight-only) or dynamic per-token FP8.
    #[serde(default, skip_serializing_if = "Fp8Activations::is_float")]
    pub activations: Fp8Activations,
}

/// The precision of an FP8 layer's input activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fp8Activations {
    /// Kept in float (FP8 weight-only, W8A16).
    #[default]
    Float,
    /// Dynamic per-token E4M3 (FP8_DYNAMIC): each row quantized as it arrives with `scale = absmax(row) / 448`.
    Fp8Dynamic,
}

impl Fp8Activations {
    /// Whether the input stays in float (weight-only).
    pub fn is_float(&self) -> bool {
        *self == Fp8Activations::Float
    }
}

impl Fp8Scheme {
    /// Per-channel FP8 weights, inputs in float.
    pub const fn weights(granularity: Granularity) -> Fp8Scheme {
        Fp8Scheme { granularity, activations: Fp8Activations::Float }
    }

    /// FP8_DYNAMIC as vLLM users deploy it: per-channel weights, dynamic per-token FP8 inputs.
    pub const fn dynamic() -> Fp8Scheme {
        Fp8Scheme { granularity: Granularity::PerChannel, activations: Fp8Activations::Fp8Dynamic }
    }
}

fn per_channel() -> Granularity {
    Granularity::PerChannel
}

impl Int8Scheme {
    /// A weight-only scheme.
    pub const fn weights(symmetric: bool, granularity: Granularity) -> Int8Scheme {
        Int8Scheme { symmetric, granularity, activations: Activations::Float }
    }

    /// The same weights with static INT8 inputs (W8A8).
    pub const fn with_int8_inputs(self) -> Int8Scheme {
        Int8Scheme { activations: Activations::Int8, ..self }
    }

    /// The same weights with dynamic per-token INT8 inputs (W8A8-dynamic).
    pub const fn with_dynamic_int8_inputs(self) -> Int8Scheme {
        Int8Scheme { activations: Activations::Int8Dynamic, ..self }
    }

    /// W8A8-dynamic as vLLM users deploy it: symmetric per-channel weights, dynamic per-token INT8 inputs.
    pub const fn w8a8_dynamic() -> Int8Scheme {
        Int8Scheme::weights(true, Granularity::PerChannel).with_dynamic_int8_inputs()
    }
}

fn default_true() -> bool {
    true
}

impl Default for Int8Scheme {
    fn default() -> Self {
        Int8Scheme::weights(true, Granularity::PerChannel)
    }
}

/// The precision planned for a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "precision", rename_all = "lowercase")]
pub enum Precision {
    /// 8-bit integer weights with a scale (and zero point).
    Int8(Int8Scheme),
    /// FP8 E4M3 weights with a scale.
    Fp8(Fp8Scheme),
    /// 4-bit integer weights with a scale (and zero point) per group of a row ([`int4`]).
    Int4(Int4Scheme),
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
    /// Kept as stored (no change; "FP32" in the window).
    Fp32,
    /// llama.cpp's Q8_0 blocks (32 values, f16 scale, 8-bit codes) on a 2-D weight ([`ggml`]).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// llama.cpp's Q4_0 blocks (32 values, f16 scale, 4-bit codes) on a 2-D weight ([`ggml`]).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// llama.cpp's Q4_K super-blocks (256 values, 6-bit sub-block scales and mins, 4-bit codes) ([`ggml`]).
    #[serde(rename = "q4_k")]
    Q4K,
    /// llama.cpp's Q6_K super-blocks (256 values, 8-bit sub-block scales, 6-bit codes) ([`ggml`]).
    #[serde(rename = "q6_k")]
    Q6K,
}

impl Precision {
    /// Short label: `int8 sym per-channel`, `fp16`, …
    pub fn label(self) -> String {
        self.to_string()
    }

    /// Whether the layer's input needs a calibrated clip (static W8A8).
    pub fn needs_calibration(self) -> bool {
        matches!(self, Precision::Int8(s) if s.activations == Activations::Int8)
    }

    /// Whether the layer's input is quantized too, statically or dynamically. llama.cpp's block formats quantize
    /// the input row of every product (Q8_0 or Q8_K blocks, [`ggml::quantize_activation_row`]).
    pub fn quantizes_inputs(self) -> bool {
        match self {
            Precision::Int8(s) => !s.activations.is_float(),
            Precision::Fp8(s) => !s.activations.is_float(),
            Precision::Q8_0 | Precision::Q4_0 | Precision::Q4K | Precision::Q6K => true,
            _ => false,
        }
    }

    /// Whether only the layer's main tensor is quantized, with codes and scales (INT8, FP8, llama.cpp blocks), as
    /// opposed to a cast of every float tensor (FP16, BF16) or nothing (FP32).
    pub fn has_codes(self) -> bool {
        matches!(self, Precision::Int8(_) | Precision::Fp8(_) | Precision::Int4(_)) || self.block_format().is_some()
    }

    /// How a precision that rounds each row of a 2-D weight on its own, block by block or group by group, does
    /// it: llama.cpp's block formats and group-wise INT4. `None` for the others.
    pub fn row_format(self) -> Option<RowFormat> {
        match self {
            Precision::Int4(scheme) => Some(RowFormat::Int4(scheme)),
            _ => self.block_format().map(RowFormat::Block),
        }
    }

    /// The llama.cpp block format of a block precision.
    pub fn block_format(self) -> Option<ggml::BlockFormat> {
        match self {
            Precision::Q8_0 => Some(ggml::BlockFormat::Q8_0),
            Precision::Q4_0 => Some(ggml::BlockFormat::Q4_0),
            Precision::Q4K => Some(ggml::BlockFormat::Q4K),
            Precision::Q6K => Some(ggml::BlockFormat::Q6K),
            _ => None,
        }
    }

    /// Bytes per element of a tensor stored at this precision (`stored_bytes` for FP32, which keeps the dtype).
    /// Block formats are not a whole number of bytes per element: see [`Precision::tensor_bytes`]; this gives
    /// their bytes per element rounded up.
    pub fn element_bytes(self, stored_bytes: usize) -> usize {
        match self {
            Precision::Int8(_) | Precision::Fp8(_) | Precision::Int4(_) => 1,
            Precision::Fp16 | Precision::Bf16 => 2,
            Precision::Fp32 => stored_bytes,
            Precision::Q8_0 | Precision::Q6K => 2,
            Precision::Q4_0 | Precision::Q4K => 1,
        }
    }

    /// Bytes of a tensor of `elements` values stored at this precision: whole blocks for llama.cpp's formats
    /// (18 bytes per 32 values for Q4_0), `elements × element_bytes` for the others.
    pub fn tensor_bytes(self, elements: usize, stored_bytes: usize) -> usize {
        match self.row_format() {
            Some(format) => format.tensor_bytes(elements),
            None => elements * self.element_bytes(stored_bytes),
        }
    }
}

/// A precision that rounds each row of a 2-D weight on its own, in consecutive runs of values along the input
/// dimension: llama.cpp's blocks, or the groups of group-wise INT4. Plans give these only to 2-D weights whose
/// rows are whole runs ([`RowFormat::fits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowFormat {
    /// One of llama.cpp's block formats.
    Block(ggml::BlockFormat),
    /// Group-wise INT4.
    Int4(Int4Scheme),
}

impl RowFormat {
    /// Values in one block or group.
    pub fn run_values(self) -> usize {
        match self {
            RowFormat::Block(format) => format.block_values(),
            RowFormat::Int4(scheme) => scheme.group_size,
        }
    }

    /// Whether a row of `row_len` values splits into whole blocks or groups.
    pub fn fits(self, row_len: usize) -> bool {
        match self {
            RowFormat::Block(format) => format.fits(row_len),
            RowFormat::Int4(scheme) => scheme.fits(row_len),
        }
    }

    /// Bytes of a tensor of `values` values (rows whole runs) in this format.
    pub fn tensor_bytes(self, values: usize) -> usize {
        match self {
            RowFormat::Block(format) => format.tensor_bytes(values),
            RowFormat::Int4(scheme) => scheme.tensor_bytes(values),
        }
    }

    /// Replaces every row of `rows` (of `row_len` values, which the format fits) by its quantized-then-dequantized
    /// values.
    pub fn fake_quantize_rows(self, rows: &mut [f32], row_len: usize) {
        match self {
            RowFormat::Block(format) => ggml::fake_quantize_rows(format, rows, row_len),
            RowFormat::Int4(scheme) => int4::fake_quantize_rows(scheme, rows, row_len),
        }
    }
}

impl fmt::Display for RowFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowFormat::Block(format) => format.fmt(f),
            RowFormat::Int4(scheme) => Precision::Int4(*scheme).fmt(f),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Int8(s) => write!(
                f,
                "{} {} {}",
                match s.activations {
                    Activations::Float => "int8",
                    Activations::Int8 => "w8a8",
                    Activations::Int8Dynamic => "w8a8-dyn",
                },
                if s.symmetric { "sym" } else { "asym" },
                match s.granularity {
                    Granularity::PerTensor => "per-tensor",
                    Granularity::PerChannel => "per-channel",
                }
            ),
            Precision::Fp8(s) => write!(
                f,
                "{} {}",
                if s.activations.is_float() { "fp8" } else { "fp8-dyn" },
                match s.granularity {
                    Granularity::PerTensor => "per-tensor",
                    Granularity::PerChannel => "per-channel",
                }
            ),
            Precision::Int4(s) => {
                write!(f, "int4 {} g{}", if s.symmetric { "sym" } else { "asym" }, s.group_size)
            }
            Precision::Fp16 => f.write_str("fp16"),
            Precision::Bf16 => f.write_str("bf16"),
            Precision::Fp32 => f.write_str("fp32"),
            Precision::Q8_0 => f.write_str("Q8_0"),
            Precision::Q4_0 => f.write_str("Q4_0"),
            Precision::Q4K => f.write_str("Q4_K"),
            Precision::Q6K => f.write_str("Q6_K"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_json_is_flat_and_tagged() {
        let p = Precision::Int8(Int8Scheme::weights(false, Granularity::PerChannel));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"precision":"int8","symmetric":false,"granularity":"per_channel"}"#);
        assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
        let short: Precision = serde_json::from_str(r#"{"precision":"int8"}"#).unwrap();
        assert_eq!(short, Precision::Int8(Int8Scheme::weights(true, Granularity::PerTensor)));
        let w8a8 = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel).with_int8_inputs());
        let json = serde_json::to_string(&w8a8).unwrap();
        assert_eq!(json, r#"{"precision":"int8","symmetric":true,"granularity":"per_channel","activations":"int8"}"#);
        assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), w8a8);
        assert_eq!(w8a8.to_string(), "w8a8 sym per-channel");
        assert_eq!(serde_json::from_str::<Precision>(r#"{"precision":"bf16"}"#).unwrap(), Precision::Bf16);
        assert_eq!(p.to_string(), "int8 asym per-channel");
        let fp8 = Precision::Fp8(Fp8Scheme::dynamic());
        let json = serde_json::to_string(&fp8).unwrap();
        assert_eq!(json, r#"{"precision":"fp8","granularity":"per_channel","activations":"fp8_dynamic"}"#);
        assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), fp8);
        assert_eq!(fp8.to_string(), "fp8-dyn per-channel");
        let short: Precision = serde_json::from_str(r#"{"precision":"fp8"}"#).unwrap();
        assert_eq!(short, Precision::Fp8(Fp8Scheme::weights(Granularity::PerChannel)));
        let dynamic_int8 = Precision::Int8(Int8Scheme::w8a8_dynamic());
        let json = serde_json::to_string(&dynamic_int8).unwrap();
        assert!(json.ends_with(r#""activations":"int8_dynamic"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), dynamic_int8);
        for (p, name, label) in [
            (Precision::Q8_0, "q8_0", "Q8_0"),
            (Precision::Q4_0, "q4_0", "Q4_0"),
            (Precision::Q4K, "q4_k", "Q4_K"),
            (Precision::Q6K, "q6_k", "Q6_K"),
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!(r#"{{"precision":"{name}"}}"#));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
            assert_eq!(p.to_string(), label);
        }
    }
}
