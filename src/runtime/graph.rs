//! Networks described by a `model.json` chain of ops (docs/MODEL-JSON.md): parsed, shape-checked, run on batches.

use std::path::Path;
use std::sync::Arc;

use super::linear::{Linear, Tap, no_tap, planned_input};
use super::ops::{self, ConvShape};
use super::weights::{Weight, WeightSource};
use crate::error::{Error, Result};
use crate::quant::InputQuant;

const GRAPH_FORMAT: &str = "quantstudio-graph";
const GRAPH_VERSION: u64 = 1;
/// The most values one sample's activation may hold after a conv2d (1 GiB of f32): a model.json whose shapes would
/// need more is refused before anything is allocated.
pub const MAX_ACTIVATION_ELEMENTS: usize = 1 << 28;

/// One step of a chain.
#[derive(Clone, Debug)]
pub enum GraphOp {
    /// `y = x wᵀ + b` on the last axis (`[in] -> [out]`).
    Linear {
        /// `[out, in]`.
        weight: String,
        /// `[out]`.
        bias: Option<String>,
    },
    /// Grouped 2-D cross-correlation, `[C, H, W] -> [O, OH, OW]`.
    Conv2d {
        /// `[O, C/groups, KH, KW]`.
        weight: String,
        /// `[O]`.
        bias: Option<String>,
        /// Rows, columns.
        stride: [usize; 2],
        /// Zero padding on both sides (rows, columns).
        padding: [usize; 2],
        /// Channel groups (1: dense; C: depthwise).
        groups: usize,
    },
    /// Layer normalisation over the last axis.
    LayerNorm {
        /// `[dim]`.
        weight: String,
        /// `[dim]`.
        bias: String,
        /// Added to the variance.
        eps: f32,
    },
    /// `max(x, 0)`.
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// `x · sigmoid(x)`.
    Silu,
    /// Softmax over the last axis.
    Softmax,
    /// All axes of a sample into one.
    Flatten,
}

/// The parsed description of a chain network.
#[derive(Clone, Debug)]
pub struct GraphSpec {
    /// The input's name.
    pub input_name: String,
    /// The shape of one input sample.
    pub input_shape: Vec<usize>,
    /// The steps.
    pub ops: Vec<GraphOp>,
    /// The shape of one output sample.
    pub output_shape: Vec<usize>,
}

impl GraphSpec {
    /// Reads and parses a `model.json` file.
    pub fn load(path: &Path) -> Result<GraphSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let bad = |reason: String| Error::BadConfig { reason, path: path.to_owned() };
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        Self::parse(&doc).map_err(bad)
    }

    /// Parses a `model.json` document; the error says what is wrong with it.
    pub fn parse(doc: &serde_json::Value) -> std::result::Result<GraphSpec, String> {
        if doc["format"] != GRAPH_FORMAT {
            return Err(format!("not a {GRAPH_FORMAT} document"));
        }
        if doc["version"] != GRAPH_VERSION {
            return Err(format!("version {} is not supported (this reader knows {GRAPH_VERSION})", doc["version"]));
        }
        let [input] = doc["inputs"].as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err("expected exactly one input".into());
        };
        let input_shape = usizes(&input["shape"]).ok_or("the input shape is not a list of sizes")?;
        let [output] = doc["outputs"].as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err("expected exactly one output".into());
        };
        let output_shape = usizes(&output["shape"]).ok_or("the output shape is not a list of sizes")?;
        let mut parsed = Vec::new();
        for (i, op) in doc["ops"].as_array().ok_or("ops is not a list")?.iter().enumerate() {
            let kind = op["op"].as_str().unwrap_or_default();
            let fields: &[&str] = match kind {
                "linear" => &["op", "weight", "bias"],
                "conv2d" => &["op", "weight", "bias", "stride", "padding", "groups"],
                "layer_norm" => &["op", "weight", "bias", "eps"],
                _ => &["op"],
            };
            // A field this reader does not know (dilation, ...) could change the result: refuse it.
            if let Some(unknown) = op.as_object().and_then(|o| o.keys().find(|k| !fields.contains(&k.as_str()))) {
                return Err(format!("op {i} ({kind}): unknown field {unknown:?}"));
            }
            let name = |field: &str| -> std::result::Result<Option<String>, String> {
                match op.get(field) {
                    None => Ok(None),
                    Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or(format!("op {i}: {field} is not a name")),
                }
            };
            let required = |field: &str| name(field)?.ok_or(format!("op {i} ({kind}): no {field}"));
            let pair = |field: &str, default: usize| match op.get(field) {
                None => Ok([default; 2]),
                Some(v) => usizes(v).and_then(|v| <[usize; 2]>::try_from(v).ok()).ok_or(format!("op {i}: bad {field}")),
            };
            parsed.push(match kind {
                "linear" => GraphOp::Linear { weight: required("weight")?, bias: name("bias")? },
                "conv2d" => GraphOp::Conv2d {
                    weight: required("weight")?,
                    bias: name("bias")?,
                    stride: pair("stride", 1)?,
                    padding: pair("padding", 0)?,
                    groups: match op.get("groups") {
                        None => 1,
                        Some(v) => v.as_u64().filter(|&g| g > 0).ok_or(format!("op {i}: bad groups"))? as usize,
                    },
                },
                "layer_norm" => GraphOp::LayerNorm {
                    weight: required("weight")?,
                    bias: required("bias")?,
                    eps: match op.get("eps") {
                        None => 1e-5,
                        Some(v) => v.as_f64().ok_or(format!("op {i}: bad eps"))? as f32,
                    },
                },
                "relu" => GraphOp::Relu,
                "gelu" => GraphOp::Gelu,
                "silu" => GraphOp::Silu,
                "softmax" => GraphOp::Softmax,
                "flatten" => GraphOp::Flatten,
                other => return Err(format!("op {i}: unknown op {other:?}")),
            });
        }
        let input_name = input["name"].as_str().unwrap_or("input").to_owned();
        Ok(GraphSpec { input_name, input_shape, ops: parsed, output_shape })
    }
}

/// A step with its weights bound and its input shape known.
#[derive(Debug)]
enum Step {
    Linear {
        linear: Linear,
        rows: usize,
    },
    Conv2d {
        layer: String,
        weight: Arc<Weight>,
        bias: Option<Arc<Weight>>,
        shape: ConvShape,
        input_quant: Option<InputQuant>,
    },
    LayerNorm {
        weight: Arc<Weight>,
        bias: Arc<Weight>,
        eps: f32,
        dim: usize,
    },
    Relu,
    Gelu,
    Silu,
    Softmax {
        dim: usize,
    },
    Flatten,
}

/// A chain network ready to run.
#[derive(Debug)]
pub struct GraphNet {
    /// What it was built from.
    pub spec: GraphSpec,
    steps: Vec<Step>,
}

impl GraphNet {
    /// Binds the weights of `spec` and checks every shape along the chain.
    pub fn build(spec: GraphSpec, weights: &WeightSource) -> Result<GraphNet> {
        let bad = |reason: String| Error::BadArchitecture { file: "model.json", reason };
        let mut shape = spec.input_shape.clone();
        let mut steps = Vec::new();
        for (i, op) in spec.ops.iter().enumerate() {
            let step = match op {
                GraphOp::Linear { weight, bias } => {
                    let (&inputs, lead) =
                        shape.split_last().ok_or_else(|| bad(format!("op {i}: linear on a scalar")))?;
                    let [outputs, w_in] = weights.shape(weight)?[..] else {
                        return Err(bad(format!("op {i}: {weight} is not 2-D")));
                    };
                    if w_in != inputs {
                        return Err(bad(format!("op {i}: {weight} takes {w_in} inputs, the chain gives {inputs}")));
                    }
                    let bias = bias.as_deref().map(|b| weights.get(b, Some(&[outputs]))).transpose()?;
                    let linear = Linear::load_tensors(weights, weight, bias, outputs, inputs)?;
                    let rows = lead.iter().product();
                    shape = [lead, &[outputs]].concat();
                    Step::Linear { linear, rows }
                }
                GraphOp::Conv2d { weight, bias, stride, padding, groups } => {
                    let w = weights.get(weight, None)?;
                    let (&[c, h, w_in], &[o, c_g, kh, kw]) = (&shape[..], &w.shape[..]) else {
                        return Err(bad(format!("op {i}: conv2d needs a [C, H, W] input and a 4-D weight")));
                    };
                    if c % groups != 0 || o % groups != 0 || c / groups != c_g {
                        return Err(bad(format!(
                            "op {i}: {weight} {:?} does not fit {c} input channels in {groups} group(s)",
                            w.shape
                        )));
                    }
                    let conv = ConvShape {
                        in_channels: c,
                        in_hw: [h, w_in],
                        out_channels: o,
                        kernel: [kh, kw],
                        stride: *stride,
                        padding: *padding,
                        groups: *groups,
                    };
                    let [oh, ow] = conv.out_hw().ok_or_else(|| bad(format!("op {i}: the kernel does not fit")))?;
                    let out_elements = o.checked_mul(oh).and_then(|n| n.checked_mul(ow));
                    if out_elements.is_none_or(|n| n > MAX_ACTIVATION_ELEMENTS) {
                        return Err(bad(format!(
                            "op {i}: conv2d output [{o}, {oh}, {ow}] exceeds {MAX_ACTIVATION_ELEMENTS} values per sample \
                             (stride {stride:?}, padding {padding:?})"
                        )));
                    }
                    let bias = bias.as_deref().map(|b| weights.get(b, Some(&[o]))).transpose()?;
                    shape = vec![o, oh, ow];
                    Step::Conv2d {
                        layer: weights.layer_name(weight),
                        input_quant: weights.input_quant(weight),
                        weight: w,
                        bias,
                        shape: conv,
                    }
                }
                GraphOp::LayerNorm { weight, bias, eps } => {
                    let dim = *shape.last().ok_or_else(|| bad(format!("op {i}: layer_norm on a scalar")))?;
                    Step::LayerNorm {
                        weight: weights.get(weight, Some(&[dim]))?,
                        bias: weights.get(bias, Some(&[dim]))?,
                        eps: *eps,
                        dim,
                    }
                }
                GraphOp::Relu => Step::Relu,
                GraphOp::Gelu => Step::Gelu,
                GraphOp::Silu => Step::Silu,
                GraphOp::Softmax => Step::Softmax { dim: shape.last().copied().unwrap_or(1) },
                GraphOp::Flatten => {
                    shape = vec![shape.iter().product()];
                    Step::Flatten
                }
            };
            steps.push(step);
        }
        if shape != spec.output_shape {
            return Err(bad(format!("the ops compute {shape:?}, the document says {:?}", spec.output_shape)));
        }
        Ok(GraphNet { spec, steps })
    }

    /// Elements of one input sample.
    pub fn input_len(&self) -> usize {
        self.spec.input_shape.iter().product()
    }

    /// Elements of one output sample.
    pub fn output_len(&self) -> usize {
        self.spec.output_shape.iter().product()
    }

    /// Runs a batch of `x.len() / input_len()` samples; returns `[batch, output_len()]`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.forward_tapped(x, &mut no_tap())
    }

    /// [`GraphNet::forward`], showing the input of every linear and conv layer to `tap`.
    pub fn forward_tapped(&self, x: &[f32], tap: &mut Tap) -> Vec<f32> {
        let batch = x.len() / self.input_len().max(1);
        let mut h = x.to_vec();
        for step in &self.steps {
            match step {
                Step::Linear { linear, rows } => h = linear.apply(&h, batch * rows, tap),
                Step::Conv2d { layer, weight, bias, shape, input_quant } => {
                    tap(layer, &h);
                    // A dynamic quantization takes each sample's whole input as one row.
                    let input = planned_input(&h, h.len() / batch.max(1), input_quant.as_ref());
                    h = ops::conv2d(&input, batch, shape, &weight.values, bias.as_ref().map(|b| &b.values[..]));
                }
                Step::LayerNorm { weight, bias, eps, dim } => {
                    ops::layer_norm(&mut h, *dim, &weight.values, &bias.values, *eps)
                }
                Step::Relu => ops::relu(&mut h),
                Step::Gelu => ops::gelu(&mut h),
                Step::Silu => ops::silu(&mut h),
                Step::Softmax { dim } => ops::softmax(&mut h, *dim),
                Step::Flatten => {}
            }
        }
        h
    }
}

fn usizes(value: &serde_json::Value) -> Option<Vec<usize>> {
    value.as_array()?.iter().map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok())).collect()
}
