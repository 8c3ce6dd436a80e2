//! Networks described by a `model.json` chain of ops (docs/MODEL-JSON.md): parsed, shape-checked, run on batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::linear::{Linear, Tap, no_tap, planned_input};
use super::ops::{self, ConvShape};
use super::weights::{Weight, WeightSource};
use crate::error::{Error, Result, did_you_mean};
use crate::quant::InputQuant;

const GRAPH_FORMAT: &str = "quantstudio-graph";
const GRAPH_VERSION: u64 = 1;
/// The keys of the document's top-level object.
const DOCUMENT_KEYS: &[&str] = &["format", "version", "inputs", "ops", "outputs"];
/// The keys of an `inputs` entry.
const INPUT_KEYS: &[&str] = &["name", "dtype", "shape", "description"];
/// The keys of an `outputs` entry.
const OUTPUT_KEYS: &[&str] = &["name", "dtype", "shape"];
/// Every `op` this reader runs.
const OPS: &[&str] = &["linear", "conv2d", "layer_norm", "relu", "gelu", "silu", "softmax", "flatten"];
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
    /// The file it was read from (the bare name `model.json` when parsed from a document), named by errors about it.
    pub path: PathBuf,
}

impl GraphSpec {
    /// Reads and parses a `model.json` file; every error names it.
    pub fn load(path: &Path) -> Result<GraphSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let bad = |reason: String| Error::BadArchitecture { reason, path: path.to_owned() };
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not json ({e})")))?;
        let spec = Self::parse(&doc).map_err(bad)?;
        Ok(GraphSpec { path: path.to_owned(), ..spec })
    }

    /// Parses a `model.json` document; the error says what is wrong with it and where. Keys the format does not
    /// define are refused wherever they are (a `dilation` ignored, or a misspelt `padding` left at its default,
    /// would silently change the result), naming the closest known key.
    pub fn parse(doc: &serde_json::Value) -> std::result::Result<GraphSpec, String> {
        if doc["format"] != GRAPH_FORMAT {
            return Err(format!("not a {GRAPH_FORMAT} document"));
        }
        if doc["version"] != GRAPH_VERSION {
            return Err(format!("version {} is not supported (this reader knows {GRAPH_VERSION})", doc["version"]));
        }
        known_keys(doc, DOCUMENT_KEYS, "the document")?;
        let [input] = doc["inputs"].as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err("expected exactly one input".into());
        };
        known_keys(input, INPUT_KEYS, "inputs[0]")?;
        let input_shape = usizes(&input["shape"]).ok_or("the input shape is not a list of sizes")?;
        let [output] = doc["outputs"].as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err("expected exactly one output".into());
        };
        known_keys(output, OUTPUT_KEYS, "outputs[0]")?;
        let output_shape = usizes(&output["shape"]).ok_or("the output shape is not a list of sizes")?;
        let mut parsed = Vec::new();
        for (i, op) in doc["ops"].as_array().ok_or("ops is not a list")?.iter().enumerate() {
            if !op.is_object() {
                return Err(format!("op {i} is not an object"));
            }
            let kind = op["op"].as_str().ok_or(format!("op {i} has no \"op\" name"))?;
            if !OPS.contains(&kind) {
                return Err(format!("op {i}: unknown op {kind:?}{}", did_you_mean(kind, OPS)));
            }
            let fields: &[&str] = match kind {
                "linear" => &["op", "weight", "bias"],
                "conv2d" => &["op", "weight", "bias", "stride", "padding", "groups"],
                "layer_norm" => &["op", "weight", "bias", "eps"],
                _ => &["op"],
            };
            known_keys(op, fields, &format!("op {i} ({kind})"))?;
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
        Ok(GraphSpec { input_name, input_shape, ops: parsed, output_shape, path: PathBuf::from("model.json") })
    }
}

/// Refuses a key of `object` outside `known`, naming it, where it is and the closest known key.
fn known_keys(object: &serde_json::Value, known: &[&str], place: &str) -> std::result::Result<(), String> {
    match object.as_object().and_then(|o| o.keys().find(|key| !known.contains(&key.as_str()))) {
        Some(key) => Err(format!("unknown key {key:?} in {place}{}", did_you_mean(key, known))),
        None => Ok(()),
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
        let bad = |reason: String| Error::BadArchitecture { reason, path: spec.path.clone() };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> serde_json::Value {
        serde_json::json!({
            "format": GRAPH_FORMAT, "version": 1,
            "inputs": [{"name": "x", "dtype": "F32", "shape": [3], "description": "free text"}],
            "ops": [{"op": "linear", "weight": "w", "bias": "b"}, {"op": "relu"}],
            "outputs": [{"name": "y", "dtype": "F32", "shape": [2]}],
        })
    }

    type Edit = dyn Fn(&mut serde_json::Value);

    #[test]
    fn every_object_refuses_keys_the_format_does_not_define() {
        assert!(GraphSpec::parse(&document()).is_ok());
        let cases: [(&Edit, &str); 5] = [
            (
                &|d| d["output"] = serde_json::json!([]),
                r#"unknown key "output" in the document (did you mean "outputs"?)"#,
            ),
            (
                &|d| d["inputs"][0]["dtpye"] = "F32".into(),
                r#"unknown key "dtpye" in inputs[0] (did you mean "dtype"?)"#,
            ),
            (&|d| d["outputs"][0]["description"] = "".into(), r#"unknown key "description" in outputs[0]"#),
            (
                &|d| d["ops"][0]["wieght"] = "w".into(),
                r#"unknown key "wieght" in op 0 (linear) (did you mean "weight"?)"#,
            ),
            (&|d| d["ops"][1]["inplace"] = true.into(), r#"unknown key "inplace" in op 1 (relu)"#),
        ];
        for (edit, expected) in cases {
            let mut doc = document();
            edit(&mut doc);
            assert_eq!(GraphSpec::parse(&doc).unwrap_err(), expected);
        }
    }

    #[test]
    fn unknown_and_nameless_ops_are_refused_with_their_index() {
        let mut doc = document();
        doc["ops"][1]["op"] = "gleu".into();
        assert_eq!(GraphSpec::parse(&doc).unwrap_err(), r#"op 1: unknown op "gleu" (did you mean "gelu"?)"#);
        doc["ops"][1] = serde_json::json!({"kind": "relu"});
        assert_eq!(GraphSpec::parse(&doc).unwrap_err(), r#"op 1 has no "op" name"#);
        doc["ops"][1] = "relu".into();
        assert_eq!(GraphSpec::parse(&doc).unwrap_err(), "op 1 is not an object");
    }
}
