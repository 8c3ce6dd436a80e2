//! Linear layers as every family runs them: the weight transposed to `[inputs, outputs]`, an optional bias, and
//! what happens to the input first: it is shown to a [`Tap`] (calibration observes it there) and, for a W8A8
//! layer, quantized and dequantized with the calibrated static scale or, for W8A8-dynamic, with each row's own
//! scale (simulated INT8 activations).

use std::sync::Arc;

use super::ops;
use super::weights::{Weight, WeightSource};
use crate::error::Result;
use crate::quant::{InputQuant, QParams};

/// Sees the input of every quantizable layer (linear or conv) during a forward pass, by layer name, before any
/// input quantization. The values are the whole input of the call: `[rows, inputs]` for a linear layer,
/// `[batch, C, H, W]` for a convolution.
pub type Tap<'a> = dyn FnMut(&str, &[f32]) + 'a;

/// A tap that looks at nothing.
pub fn no_tap() -> impl FnMut(&str, &[f32]) {
    |_: &str, _: &[f32]| {}
}

/// `x` quantized to INT8 with `params` and dequantized again (`x_hat = (q - zero_point) · scale`), in a new buffer.
/// The codes come from the analysis pass's SIMD kernel, bit-identical to `QParams::quantize`.
pub fn fake_quantize(x: &[f32], params: &QParams) -> Vec<f32> {
    let mut codes = vec![0i8; x.len()];
    crate::quant::kernels::quantize_codes(x, params, &mut codes);
    codes.iter().map(|&q| params.dequantize(q)).collect()
}

/// `x` quantized and dequantized row by row, rows of `row_len` values, each with
/// `QParams::symmetric(absmax of the row's finite values)` (dynamic per-token INT8): the scales of
/// [`super::qgemm::row_scales`], which the deployed product uses too.
pub fn fake_quantize_rows(x: &[f32], row_len: usize) -> Vec<f32> {
    let row_len = if row_len > 0 && x.len().is_multiple_of(row_len) { row_len } else { x.len().max(1) };
    use rayon::prelude::*;
    let scales = super::qgemm::row_scales(x, x.len() / row_len, row_len);
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(row_len).zip(x.par_chunks(row_len)).zip(&scales).for_each_init(
        || vec![0i8; row_len],
        |codes, ((out, row), &scale)| {
            let (qmin, qmax) = (crate::quant::params::SYM_QMIN, crate::quant::params::QMAX);
            let params = QParams { scale, zero_point: 0, qmin, qmax };
            crate::quant::kernels::quantize_codes(row, &params, codes);
            out.iter_mut().zip(codes.iter()).for_each(|(o, &q)| *o = params.dequantize(q));
        },
    );
    out
}

/// The input of a layer after its planned activation quantization (borrowed unchanged when there is none); a
/// dynamic quantization takes each run of `row_len` values (a token, or a sample of a convolution) as one row.
pub fn planned_input<'x>(x: &'x [f32], row_len: usize, quant: Option<&InputQuant>) -> std::borrow::Cow<'x, [f32]> {
    match quant {
        Some(InputQuant::Static(p)) => std::borrow::Cow::Owned(fake_quantize(x, p)),
        Some(InputQuant::DynamicInt8) => std::borrow::Cow::Owned(fake_quantize_rows(x, row_len)),
        Some(InputQuant::DynamicFp8) => {
            let mut out = vec![0.0f32; x.len()];
            let whole_rows = row_len > 0 && x.len().is_multiple_of(row_len);
            crate::quant::fp8::fake_quantize_e4m3_rows(x, if whole_rows { row_len } else { x.len().max(1) }, &mut out);
            std::borrow::Cow::Owned(out)
        }
        Some(InputQuant::Blocks(format)) => {
            use rayon::prelude::*;
            let mut out = x.to_vec();
            let whole_rows = row_len > 0 && x.len().is_multiple_of(row_len);
            let row_len = if whole_rows { row_len } else { x.len().max(1) };
            out.par_chunks_mut(row_len).for_each(|row| crate::quant::ggml::quantize_activation_row(*format, row));
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(x),
    }
}

/// `y = x wᵀ + b`, ready to run.
#[derive(Debug)]
pub struct Linear {
    /// The model layers whose input this is: one, or several fused side by side (BERT's query, key and value).
    pub layers: Vec<String>,
    /// The weight tensor's name (names joined by " + " when fused).
    name: String,
    inputs: usize,
    outputs: usize,
    weights: Weights,
    bias: Option<Arc<Weight>>,
    input_quant: Option<InputQuant>,
}

/// How a linear layer holds its weights and multiplies.
#[derive(Debug)]
enum Weights {
    /// f32 values (as stored, or simulated), transposed to `[inputs, outputs]`.
    F32(Arc<Weight>),
    /// Deployed FP16, BF16 or INT8 (weight-only) weights, converted tile by tile as they multiply.
    Compact(super::wgemm::PackedWeights),
    /// Deployed W8A8: INT8 codes and integer products.
    Int8(Int8Weights),
}

/// A deployed W8A8 layer's weights: packed codes, the scales by which the product's sums are multiplied per output
/// column, and how its input is quantized.
#[derive(Debug)]
struct Int8Weights {
    packed: super::qgemm::PackedInt8,
    /// Static inputs: `input scale · weight scale`; dynamic inputs: the weight scale (the row's scale comes first).
    scales: Vec<f32>,
    input: InputQuant,
}

impl Int8Weights {
    /// From packed codes, the weight scale of each output and the input's quantization.
    fn new((packed, w_scales, input): super::weights::Int8Linear) -> Int8Weights {
        let scales = match input {
            InputQuant::Static(params) => w_scales.iter().map(|s| params.scale * s).collect(),
            _ => w_scales,
        };
        Int8Weights { packed, scales, input }
    }
}

impl Linear {
    /// Binds `{name}.weight` (`[outputs, inputs]`) and, when `bias` is set, `{name}.bias` (`[outputs]`).
    pub fn load(w: &WeightSource, name: &str, outputs: usize, inputs: usize, bias: bool) -> Result<Linear> {
        let bias = if bias { Some(w.get(&format!("{name}.bias"), Some(&[outputs]))?) } else { None };
        Self::load_tensors(w, &format!("{name}.weight"), bias, outputs, inputs)
    }

    /// Binds weight tensor `weight` (`[outputs, inputs]`) with an already bound bias.
    pub fn load_tensors(
        w: &WeightSource,
        weight: &str,
        bias: Option<Arc<Weight>>,
        outputs: usize,
        inputs: usize,
    ) -> Result<Linear> {
        let weights = if let Some(int8) = w.int8_linear(weight, outputs, inputs)? {
            Weights::Int8(Int8Weights::new(int8))
        } else if let Some(packed) = w.compact_linear(weight, outputs, inputs)? {
            Weights::Compact(packed)
        } else {
            Weights::F32(w.get_linear(weight, outputs, inputs)?)
        };
        Ok(Linear {
            layers: vec![w.layer_name(weight)],
            name: weight.to_owned(),
            inputs,
            outputs,
            weights,
            bias,
            input_quant: w.input_quant(weight),
        })
    }

    /// Layers of `[outputs, inputs]` reading the same input (BERT's query, key and value), as one product when
    /// they can be (their INT8 codes stacked into one integer product, or their f32 weights side by side: see
    /// [`Linear::fuse`]), else the parts.
    pub fn load_side_by_side(
        w: &WeightSource,
        names: &[String],
        outputs: usize,
        inputs: usize,
        bias: bool,
    ) -> Result<std::result::Result<Linear, Vec<Linear>>> {
        let weights: Vec<String> = names.iter().map(|n| format!("{n}.weight")).collect();
        let refs: Vec<&str> = weights.iter().map(String::as_str).collect();
        if let Some(int8) = w.int8_linear_stacked(&refs, outputs, inputs)? {
            let int8 = Int8Weights::new(int8);
            let biases = if bias {
                let parts =
                    names.iter().map(|n| w.get(&format!("{n}.bias"), Some(&[outputs]))).collect::<Result<Vec<_>>>()?;
                let values = parts.iter().flat_map(|b| b.values.iter().copied()).collect();
                let shape = vec![outputs * names.len()];
                Some(Arc::new(Weight { name: format!("{} biases", names.join(" + ")), shape, values }))
            } else {
                None
            };
            return Ok(Ok(Linear {
                layers: weights.iter().map(|name| w.layer_name(name)).collect(),
                name: weights.join(" + "),
                inputs,
                outputs: outputs * names.len(),
                input_quant: Some(int8.input),
                weights: Weights::Int8(int8),
                bias: biases,
            }));
        }
        let parts = names.iter().map(|n| Linear::load(w, n, outputs, inputs, bias)).collect::<Result<Vec<_>>>()?;
        Ok(Linear::fuse(parts))
    }

    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Outputs per row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Runs `rows` rows of `x`; the tap sees `x` first.
    pub fn apply(&self, x: &[f32], rows: usize, tap: &mut Tap) -> Vec<f32> {
        for layer in &self.layers {
            tap(layer, x);
        }
        let bias = self.bias.as_ref().map(|b| &b.values[..]);
        match (&self.weights, &self.input_quant) {
            (Weights::Int8(int8), _) => {
                // As deployed: the input's codes, the exact integer product, requantised with the bias on the way out.
                let mut y = vec![0.0f32; rows * self.outputs];
                let kernel = super::qgemm::Kernel::Best;
                match int8.input {
                    InputQuant::Static(params) => {
                        let output = super::qgemm::Output::Scaled { out: &mut y, scales: &int8.scales, bias };
                        super::qgemm::gemm_quantized_into(x, rows, params.scale, &int8.packed, output, kernel);
                    }
                    // Each row's scale is taken as its codes are made: `y = acc · (s_row · s_w) + b`.
                    _ => super::qgemm::gemm_dynamic_into(x, rows, &int8.packed, &mut y, &int8.scales, bias, kernel),
                }
                y
            }
            (Weights::Compact(packed), quant) => {
                let x = planned_input(x, self.inputs, quant.as_ref());
                packed.matmul(&x, rows, bias)
            }
            (Weights::F32(weight), quant) => {
                let x = planned_input(x, self.inputs, quant.as_ref());
                ops::linear(&x, rows, self.inputs, &weight.values, self.outputs, bias)
            }
        }
    }

    /// Layers reading the same input as one layer whose outputs are theirs side by side (one product instead of
    /// several), when their inputs are quantized alike and their weights are f32; otherwise `Err` gives the parts
    /// back unchanged (deployed compact and INT8 weights stay apart: their packed panels are not concatenated).
    pub fn fuse(parts: Vec<Linear>) -> std::result::Result<Linear, Vec<Linear>> {
        let alike = parts.windows(2).all(|w| w[0].input_quant == w[1].input_quant && w[0].inputs == w[1].inputs);
        let f32_weights: Vec<&Arc<Weight>> = parts
            .iter()
            .filter_map(|p| match &p.weights {
                Weights::F32(w) => Some(w),
                _ => None,
            })
            .collect();
        let biased = parts.iter().all(|p| p.bias.is_some()) || parts.iter().all(|p| p.bias.is_none());
        if parts.is_empty() || !alike || !biased || f32_weights.len() != parts.len() {
            return Err(parts);
        }
        let inputs = parts[0].inputs;
        let outputs: usize = parts.iter().map(Linear::outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for r in 0..inputs {
            for (p, w) in parts.iter().zip(&f32_weights) {
                weight.extend_from_slice(&w.values[r * p.outputs..(r + 1) * p.outputs]);
            }
        }
        let name = parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" + ");
        let bias = parts[0].bias.is_some().then(|| {
            let values = parts.iter().flat_map(|p| p.bias.iter().flat_map(|b| b.values.iter().copied())).collect();
            Arc::new(Weight { name: name.clone(), shape: vec![outputs], values })
        });
        Ok(Linear {
            layers: parts.iter().flat_map(|p| p.layers.iter().cloned()).collect(),
            weights: Weights::F32(Arc::new(Weight {
                name: name.clone(),
                shape: vec![inputs, outputs],
                values: weight,
            })),
            name,
            inputs,
            outputs,
            bias,
            input_quant: parts[0].input_quant,
        })
    }
}

/// A lookup table `[rows, width]` (token, position or segment embeddings): f32 values, or, deployed, the compact
/// FP16, BF16 or INT8 weights of the plan, converted one row at a time as they are looked up.
#[derive(Debug)]
pub struct Embedding {
    width: usize,
    table: Table,
}

#[derive(Debug)]
enum Table {
    F32(Arc<Weight>),
    Compact(super::wgemm::PackedWeights),
}

impl Embedding {
    /// Binds table `name`, checked to be `[rows, width]`.
    pub fn load(w: &WeightSource, name: &str, rows: usize, width: usize) -> Result<Embedding> {
        let table = match w.compact_linear(name, rows, width)? {
            Some(packed) => Table::Compact(packed),
            None => Table::F32(w.get(name, Some(&[rows, width]))?),
        };
        Ok(Embedding { width, table })
    }

    /// Row `index` added into `out` (`width` values); the caller checked `index < rows`.
    pub fn add_row_into(&self, index: usize, out: &mut [f32]) {
        match &self.table {
            Table::F32(values) => {
                let row = &values.values[index * self.width..][..self.width];
                out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
            }
            Table::Compact(packed) => {
                let mut row = vec![0.0f32; self.width];
                packed.row_into(index, &mut row);
                out.iter_mut().zip(&row).for_each(|(o, v)| *o += v);
            }
        }
    }
}
