//! The compressed-tensors target: the Hugging Face folder llm-compressor writes, which transformers (with the
//! compressed-tensors package) and vLLM load. See `docs/EXPORT.md` for the layout and the loader rules, and
//! `docs/COMPRESSED-TENSORS-NOTES.md` for the sources they come from.
//!
//! Per tensor, by its planned precision and shape ([`Layout`]):
//! - INT8 symmetric weight-only, 2-D `*.weight`: `pack-quantized` (what vLLM loads for weight-only INT8):
//!   `x.weight_packed` (I32 `[out, ceil(in/4)]`, four codes per word as `q + 128`, little-endian), `x.weight_scale`
//!   (F32 `[out, 1]`; a per-tensor scale is repeated per row, which changes no value) and `x.weight_shape` (I64 `[2]`).
//! - any other INT8 tensor: codes as I8 in the original shape, `x_scale` (F32, `[1]` per tensor or `[out, 1]` per
//!   channel) and, when asymmetric, `x_zero_point` (I8, the scale's shape); `naive-quantized` for weight-only,
//!   `int-quantized` when the layer's input is quantized too: static W8A8 adds `M.input_scale` (F32 `[1]`, the
//!   calibrated `clip / 127`), W8A8-dynamic adds nothing (the runtime computes each token's scale).
//! - FP8 E4M3: `float-quantized`: codes as F8_E4M3 in the original shape and `x_scale` (F32, `[1]` or `[out, 1]`);
//!   dynamic per-token FP8 inputs add nothing (the runtime computes each token's scale).
//! - FP16 / BF16: cast, round to nearest even with saturation (the formulas of `docs/QUANTIZATION.md`).
//! - everything else: bytes copied unchanged, integer tensors included.
//!
//! `config.json` gets a `quantization_config`: one group per distinct scheme, targeting exact module names, every
//! unquantized linear layer in `ignore`. Exports above the shard size are split into
//! `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, as `save_pretrained` does.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::{
    Compatibility, ExportOptions, INDEX_FILE, LayerCheck, RECIPE_METADATA_KEY, Refusal, Runtime, Target, Treatment,
    WEIGHTS_FILE, float_fix,
};
use crate::error::{Error, Result};
use crate::model::writer::{PlannedTensor, TensorFileWriter, write_atomically};
use crate::model::{DType, LayerId, LayerKind, Model, TensorId};
use crate::progress::Progress;
use crate::quant::params::{to_bf16, to_fp16};
use crate::quant::pass::TensorData;
use crate::quant::plan::is_output_head;
use crate::quant::{Activations, Fp8Activations, Granularity, Plan, Precision, quantize_tensor_fp8};

/// What a quantized layer's input becomes in the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Inputs {
    /// Kept in float (weight-only).
    Float,
    /// Static per-tensor symmetric INT8 with the calibrated `input_scale`.
    StaticInt8,
    /// Dynamic per-token symmetric INT8 (no tensor written).
    DynamicInt8,
    /// Dynamic per-token FP8 E4M3 (no tensor written).
    DynamicFp8,
}

/// How one tensor is stored in the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// INT8 symmetric weight-only 2-D weight, packed four codes per I32 (`pack-quantized`), one scale per row.
    Packed,
    /// INT8 codes as I8 in the original shape, with scales (and zero points) of shape `[1]` per tensor or
    /// `[rows, 1]` per channel: `naive-quantized` for weight-only, `int-quantized` with quantized inputs.
    Int8Codes {
        /// Rows of the scale when per channel; `None` per tensor.
        channels: Option<usize>,
        /// Whether zero points are omitted.
        symmetric: bool,
        /// What the layer's input becomes.
        inputs: Inputs,
    },
    /// FP8 E4M3 codes (F8_E4M3) in the original shape, with F32 scales of shape `[1]` per tensor or `[rows, 1]`
    /// per channel: `float-quantized`.
    Fp8Codes {
        /// Rows of the scale when per channel; `None` per tensor.
        channels: Option<usize>,
        /// What the layer's input becomes (float, or dynamic per-token FP8).
        inputs: Inputs,
    },
    /// Group-wise INT4 2-D weight (W4A16), `pack-quantized`: eight codes per I32 along a row, an F32 scale per
    /// group, and for asymmetric groups zero points packed eight per I32 along the output dimension.
    PackedInt4 {
        /// Values of a row that share a scale.
        group_size: usize,
        /// Whether zero points are omitted.
        symmetric: bool,
    },
    /// Cast to F16 or BF16.
    Cast(DType),
    /// Bytes copied unchanged.
    Kept,
}

impl Layout {
    /// The compressed-tensors format of a quantized layout (`None` for cast and kept tensors).
    pub fn format(self) -> Option<&'static str> {
        match self {
            Layout::Packed | Layout::PackedInt4 { .. } => Some("pack-quantized"),
            Layout::Int8Codes { inputs: Inputs::Float, .. } => Some("naive-quantized"),
            Layout::Int8Codes { .. } => Some("int-quantized"),
            Layout::Fp8Codes { .. } => Some("float-quantized"),
            Layout::Cast(_) | Layout::Kept => None,
        }
    }
}

/// The layout of tensor `id` under `plan`.
pub fn layout(model: &Model, plan: &Plan, id: TensorId) -> Layout {
    let info = model.tensor(id);
    match plan.tensor(model, id) {
        Precision::Int8(scheme)
            if scheme.symmetric
                && scheme.activations == Activations::Float
                && info.shape.len() == 2
                && info.name.ends_with(".weight") =>
        {
            Layout::Packed
        }
        Precision::Int8(scheme) => Layout::Int8Codes {
            channels: match scheme.granularity {
                Granularity::PerChannel => Some(info.rows_cols().0),
                Granularity::PerTensor => None,
            },
            symmetric: scheme.symmetric,
            inputs: match scheme.activations {
                Activations::Float => Inputs::Float,
                Activations::Int8 => Inputs::StaticInt8,
                Activations::Int8Dynamic => Inputs::DynamicInt8,
            },
        },
        Precision::Fp8(scheme) => Layout::Fp8Codes {
            channels: match scheme.granularity {
                Granularity::PerChannel => Some(info.rows_cols().0),
                Granularity::PerTensor => None,
            },
            inputs: match scheme.activations {
                Fp8Activations::Float => Inputs::Float,
                Fp8Activations::Fp8Dynamic => Inputs::DynamicFp8,
            },
        },
        Precision::Int4(scheme) if info.shape.len() == 2 && info.name.ends_with(".weight") => {
            Layout::PackedInt4 { group_size: scheme.group_size, symmetric: scheme.symmetric }
        }
        // Only 2-D weights are planned in INT4 (plan resolution refuses the rest).
        Precision::Int4(_) => Layout::Kept,
        Precision::Fp16 => Layout::Cast(DType::F16),
        Precision::Bf16 => Layout::Cast(DType::BF16),
        // Not expressible in compressed-tensors ([`check`] refuses the plan): the float values would be written.
        Precision::Fp32 | Precision::Q8_0 | Precision::Q4_0 | Precision::Q4K | Precision::Q6K => Layout::Kept,
    }
}

/// The name of a quantization parameter tensor: `x.weight` -> `x.weight_scale`.
pub fn param_name(tensor: &str, suffix: &str) -> String {
    format!("{tensor}_{suffix}")
}

/// The name of the input scale of the layer whose weight is `weight`: `M.weight` -> `M.input_scale`.
pub fn input_scale_name(weight: &str) -> String {
    format!("{}.input_scale", weight.strip_suffix(".weight").unwrap_or(weight))
}

/// Shape of the scale / zero point: `[1]` per tensor, `[channels, 1]` per channel.
fn param_shape(channels: Option<usize>) -> Vec<usize> {
    match channels {
        Some(rows) => vec![rows, 1],
        None => vec![1],
    }
}

/// The tensors written for one model tensor under a layout, in write order.
pub fn layout_outputs(name: &str, dtype: DType, shape: &[usize], layout: Layout) -> Vec<PlannedTensor> {
    let planned = |name: String, dtype, shape| PlannedTensor { name, dtype, shape };
    match layout {
        Layout::Packed => {
            let (rows, cols) = (shape[0], shape[1]);
            vec![
                planned(param_name(name, "packed"), DType::I32, vec![rows, cols.div_ceil(4)]),
                planned(param_name(name, "scale"), DType::F32, vec![rows, 1]),
                planned(param_name(name, "shape"), DType::I64, vec![2]),
            ]
        }
        Layout::PackedInt4 { group_size, symmetric } => {
            let (rows, cols) = (shape[0], shape[1]);
            let groups = cols / group_size.max(1);
            let mut outputs = vec![
                planned(param_name(name, "packed"), DType::I32, vec![rows, cols.div_ceil(8)]),
                planned(param_name(name, "scale"), DType::F32, vec![rows, groups]),
            ];
            if !symmetric {
                outputs.push(planned(param_name(name, "zero_point"), DType::I32, vec![rows.div_ceil(8), groups]));
            }
            outputs.push(planned(param_name(name, "shape"), DType::I64, vec![2]));
            outputs
        }
        Layout::Int8Codes { channels, symmetric, inputs } => {
            let mut outputs = vec![
                planned(name.to_owned(), DType::I8, shape.to_vec()),
                planned(param_name(name, "scale"), DType::F32, param_shape(channels)),
            ];
            if !symmetric {
                outputs.push(planned(param_name(name, "zero_point"), DType::I8, param_shape(channels)));
            }
            if inputs == Inputs::StaticInt8 {
                outputs.push(planned(input_scale_name(name), DType::F32, vec![1]));
            }
            outputs
        }
        Layout::Fp8Codes { channels, .. } => vec![
            planned(name.to_owned(), DType::F8E4M3, shape.to_vec()),
            planned(param_name(name, "scale"), DType::F32, param_shape(channels)),
        ],
        Layout::Cast(to) => vec![planned(name.to_owned(), to, shape.to_vec())],
        Layout::Kept => vec![planned(name.to_owned(), dtype, shape.to_vec())],
    }
}

/// Bytes tensor `id` takes in the export under `plan` (all the tensors its layout writes).
pub fn planned_bytes(model: &Model, plan: &Plan, id: TensorId) -> u64 {
    let info = model.tensor(id);
    layout_outputs(&info.name, info.dtype, &info.shape, layout(model, plan, id))
        .iter()
        .map(|t| t.size_bytes() as u64)
        .sum()
}

/// Packs INT8 codes of a `rows x cols` matrix as `pack-quantized` does: each code stored as the byte `q + 128`,
/// four per little-endian I32 word along a row, the last word of a row padded with zero bytes.
pub fn pack_int8_rows(codes: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let words_per_row = cols.div_ceil(4);
    let mut bytes = vec![0u8; rows * words_per_row * 4];
    for (row, out) in codes.chunks_exact(cols.max(1)).zip(bytes.chunks_exact_mut((words_per_row * 4).max(1))) {
        for (o, &q) in out.iter_mut().zip(row) {
            *o = (q as u8) ^ 0x80;
        }
    }
    bytes
}

/// Packs INT4 codes (`-8..=7`) of a `rows x cols` matrix as compressed-tensors' `pack_to_int32` does along the
/// last dimension: each code stored as `q + 8`, value `j` of a row in nibble `j % 8` (bits `4 (j % 8)`) of
/// little-endian I32 word `j / 8`, the last word of a row padded with zero nibbles.
pub fn pack_int4_rows(codes: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let words_per_row = cols.div_ceil(8);
    let mut bytes = vec![0u8; rows * words_per_row * 4];
    for (row, out) in codes.chunks_exact(cols.max(1)).zip(bytes.chunks_exact_mut((words_per_row * 4).max(1))) {
        for (j, &q) in row.iter().enumerate() {
            out[j / 2] |= (((q as i32 + 8) as u8) & 0x0F) << (4 * (j % 2));
        }
    }
    bytes
}

/// Packs the zero points of an asymmetric INT4 weight (`rows x groups`, each `-8..=7`) as compressed-tensors does
/// (`pack_to_int32(…, packed_dim=0)`): word `(r, g)` of the `ceil(rows / 8) x groups` I32 matrix holds
/// `zero_point[8 r + k, g] + 8` in bits `4 k`, missing rows padded with zero nibbles.
pub fn pack_int4_columns(values: &[i8], rows: usize, groups: usize) -> Vec<u8> {
    let mut words = vec![0u32; rows.div_ceil(8) * groups];
    for (r, row) in values.chunks_exact(groups.max(1)).enumerate() {
        for (g, &z) in row.iter().enumerate() {
            words[(r / 8) * groups + g] |= (((z as i32 + 8) as u32) & 0x0F) << (4 * (r % 8));
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Inverse of [`pack_int8_rows`].
pub fn unpack_int8_rows(bytes: &[u8], rows: usize, cols: usize) -> Vec<i8> {
    let row_bytes = cols.div_ceil(4) * 4;
    (0..rows).flat_map(|r| bytes[r * row_bytes..r * row_bytes + cols].iter().map(|&b| (b ^ 0x80) as i8)).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The compatibility check: the loaders' rules (docs/EXPORT.md, docs/COMPRESSED-TENSORS-NOTES.md).

/// Why transformers and vLLM cannot instantiate the model at all, whatever the plan.
fn model_refusal(model: &Model) -> Option<String> {
    let Some(config) = &model.config else {
        return Some("no config.json beside the weights: transformers and vLLM need one to build the model".into());
    };
    if config.contains_key("graph") {
        return Some(
            "a model.json graph is not an architecture transformers or vLLM know (it runs in the studio)".into(),
        );
    }
    let Some(model_type) = config.get("model_type").and_then(Value::as_str) else {
        return Some("config.json names no model_type: transformers and vLLM cannot build the model".into());
    };
    // A model that brings its own code (`auto_map`) loads with trust_remote_code.
    let known = super::transformers_model_types::MODEL_TYPES.binary_search(&model_type).is_ok();
    if !known && !config.contains_key("auto_map") {
        return Some(format!(
            "transformers {} has no model_type {model_type:?} and config.json brings no code (auto_map): \
             transformers and vLLM cannot build the model",
            super::transformers_model_types::TRANSFORMERS_VERSION
        ));
    }
    None
}

/// Whether the config ties the output head to the token embeddings.
fn ties_head(model: &Model) -> bool {
    model.config.as_ref().and_then(|c| c.get("tie_word_embeddings")).and_then(Value::as_bool).unwrap_or(false)
}

/// The layers vLLM fuses into one product, by family (`…self_attn.qkv`, `…mlp.gate_up`, `…attention.self.qkv`).
fn fused_family(name: &str) -> Option<String> {
    let (prefix, last) = name.rsplit_once('.')?;
    let family = match last {
        "q_proj" | "k_proj" | "v_proj" => "qkv",
        "gate_proj" | "up_proj" => "gate_up",
        "query" | "key" | "value" if prefix.ends_with("attention.self") => "qkv",
        _ => return None,
    };
    Some(format!("{prefix}.{family}"))
}

/// What transformers and vLLM do with one layer on its own.
fn check_layer(model: &Model, plan: &Plan, id: LayerId) -> LayerCheck {
    let layer = model.layer(id);
    let Some(main) = model.main_tensor(id) else {
        return LayerCheck { layer: id, treatment: Treatment::Kept, refusals: Vec::new(), fix: None };
    };
    if let Some(format) = plan.tensor(model, main).block_format() {
        // The fix: what compressed-tensors writes for a linear layer (INT8 weight-only), float elsewhere.
        let fix = if layer.kind == LayerKind::Linear && !is_output_head(&layer.name) {
            Precision::Int8(crate::quant::Int8Scheme::default())
        } else {
            float_fix(model, main)
        };
        let reason = format!("llama.cpp's {format} blocks (compressed-tensors has no block format; export to gguf)");
        return LayerCheck {
            layer: id,
            treatment: Treatment::NotExpressible(reason),
            refusals: Vec::new(),
            fix: Some(fix),
        };
    }
    let layout = layout(model, plan, main);
    let treatment = match layout {
        Layout::Packed | Layout::PackedInt4 { .. } | Layout::Int8Codes { .. } | Layout::Fp8Codes { .. } => {
            Treatment::AsPlanned
        }
        Layout::Cast(_) => Treatment::Cast,
        Layout::Kept => Treatment::Kept,
    };
    let mut refusals = Vec::new();
    let mut fix = None;
    let mut refuse = |runtimes: &[Runtime], reason: &str| {
        refusals.extend(runtimes.iter().map(|&runtime| Refusal { runtime, reason: reason.to_owned() }));
    };
    let both = [Runtime::Transformers, Runtime::Vllm];
    if treatment == Treatment::AsPlanned {
        let precision = plan.layer(id);
        if layer.kind != LayerKind::Linear {
            let what = match layer.kind {
                LayerKind::Embedding => "an embedding table",
                LayerKind::Conv => "a convolution",
                LayerKind::Norm => "a norm",
                _ => "not a linear layer",
            };
            refuse(&both, &format!("compressed-tensors quantizes Linear modules only; this is {what}"));
            fix = Some(float_fix(model, main));
        } else if is_output_head(&layer.name) {
            refuse(&[Runtime::Vllm], "vLLM never quantizes the output head (ParallelLMHead)");
            if ties_head(model) {
                refuse(&[Runtime::Transformers], "the head is tied to the token embeddings (tie_word_embeddings)");
            }
            fix = Some(float_fix(model, main));
        } else if let Precision::Int8(scheme) = precision
            && !scheme.symmetric
        {
            let reason = if scheme.activations == Activations::Float {
                "vLLM loads weight-only INT8 only as symmetric pack-quantized"
            } else {
                "vLLM's W8A8 kernels take symmetric weights only"
            };
            refuse(&[Runtime::Vllm], reason);
            fix = Some(Precision::Int8(crate::quant::Int8Scheme { symmetric: true, ..scheme }));
        } else if let Precision::Int4(scheme) = precision
            && !scheme.symmetric
        {
            refuse(
                &[Runtime::Transformers],
                "compressed-tensors packs asymmetric INT4 zero points in the file but builds the model with them \
                 unpacked: transformers loads it only with CompressedTensorsConfig(dequantize=True)",
            );
            fix = Some(Precision::Int4(crate::quant::Int4Scheme { symmetric: true, ..scheme }));
        }
    }
    LayerCheck { layer: id, treatment, refusals, fix }
}

/// What the compressed-tensors target does with every layer of `plan`, and which runtimes load it.
pub fn check(model: &Model, plan: &Plan) -> Compatibility {
    let mut layers: Vec<LayerCheck> = (0..model.layers.len()).map(|i| check_layer(model, plan, LayerId(i))).collect();
    // vLLM fuses q/k/v and gate/up into one product and needs one scheme for all of them.
    let mut families: BTreeMap<String, Vec<LayerId>> = BTreeMap::new();
    for (index, layer) in model.layers.iter().enumerate() {
        if let Some(family) = fused_family(&layer.name) {
            families.entry(family).or_default().push(LayerId(index));
        }
    }
    for (family, members) in families {
        // The scheme, not the shape: under grouped-query attention k/v have fewer rows (scales) than q.
        let scheme = |id: LayerId| match model.main_tensor(id).map(|main| layout(model, plan, main)) {
            Some(Layout::Cast(_) | Layout::Kept) | None => None,
            Some(Layout::Int8Codes { channels, symmetric, inputs }) => {
                Some(Layout::Int8Codes { channels: channels.map(|_| 0), symmetric, inputs })
            }
            Some(Layout::Fp8Codes { channels, inputs }) => {
                Some(Layout::Fp8Codes { channels: channels.map(|_| 0), inputs })
            }
            Some(packed) => Some(packed),
        };
        let first = members[0];
        if members.iter().all(|&m| scheme(m) == scheme(first)) {
            continue;
        }
        let names: Vec<&str> = members.iter().map(|&m| model.layer(m).name.rsplit('.').next().unwrap_or("")).collect();
        let reason = format!("vLLM fuses {family} ({}) and needs one scheme for all of them", names.join(", "));
        // The fix gives the odd ones out the precision most members have (the first such, on a tie).
        let count = |p: Precision| members.iter().filter(|&&m| plan.layer(m) == p).count();
        let common = members.iter().map(|&m| plan.layer(m)).max_by_key(|&p| count(p)).unwrap_or(plan.layer(first));
        for &member in &members {
            let check = &mut layers[member.0];
            check.refusals.push(Refusal { runtime: Runtime::Vllm, reason: reason.clone() });
            if check.fix.is_none() && plan.layer(member) != common {
                check.fix = Some(common);
            }
        }
    }
    Compatibility { target: Target::CompressedTensors, model_refusal: model_refusal(model), layers }
}

// ---------------------------------------------------------------------------------------------------------------
// The config.

/// One config group: format, weight arguments and input arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    format: &'static str,
    /// Bits of a weight code.
    bits: u8,
    /// Values sharing a scale, for strategy `"group"`.
    group_size: Option<usize>,
    /// `"int"` or `"float"`.
    kind: &'static str,
    symmetric: bool,
    strategy: &'static str,
    inputs: Inputs,
}

/// The `quantization_config` for `plan`, or `None` when no layer is quantized (a pure FP16/BF16 export is a plain
/// float checkpoint).
///
/// One config group per distinct (format, symmetric, strategy, inputs), targeting exact layer (module) names;
/// every linear (or conv) layer whose main tensor stayed in float is listed in `ignore` (vLLM needs
/// every Linear to be either targeted or ignored). Each group carries its own `format`, and the global `format` is
/// that format or `mixed-precision`. Keys that older loaders reject (`scale_dtype`, `zp_dtype`) are not written.
pub fn quantization_config(model: &Model, plan: &Plan) -> Option<Value> {
    let mut groups: BTreeMap<GroupKey, Vec<String>> = BTreeMap::new();
    let mut ignore = Vec::new();
    for (index, layer) in model.layers.iter().enumerate() {
        let Some(main) = model.main_tensor(LayerId(index)) else { continue };
        let layout = layout(model, plan, main);
        let key = match layout {
            Layout::Packed => GroupKey {
                format: "pack-quantized",
                bits: 8,
                group_size: None,
                kind: "int",
                symmetric: true,
                strategy: "channel",
                inputs: Inputs::Float,
            },
            Layout::PackedInt4 { group_size, symmetric } => GroupKey {
                format: "pack-quantized",
                bits: 4,
                group_size: Some(group_size),
                kind: "int",
                symmetric,
                strategy: "group",
                inputs: Inputs::Float,
            },
            Layout::Int8Codes { channels, symmetric, inputs } => GroupKey {
                format: layout.format().unwrap_or("naive-quantized"),
                bits: 8,
                group_size: None,
                kind: "int",
                symmetric,
                strategy: if channels.is_some() { "channel" } else { "tensor" },
                inputs,
            },
            Layout::Fp8Codes { channels, inputs } => GroupKey {
                format: "float-quantized",
                bits: 8,
                group_size: None,
                kind: "float",
                symmetric: true,
                strategy: if channels.is_some() { "channel" } else { "tensor" },
                inputs,
            },
            Layout::Cast(_) | Layout::Kept => {
                // Like llm-compressor: float Linear modules are ignored by name; embeddings and norms are never
                // targeted, so they are not listed.
                if matches!(layer.kind, LayerKind::Linear | LayerKind::Conv) {
                    ignore.push(layer.name.clone());
                }
                continue;
            }
        };
        groups.entry(key).or_default().push(layer.name.clone());
    }
    if groups.is_empty() {
        return None;
    }
    let formats: Vec<&str> = groups.keys().map(|k| k.format).collect();
    let global_format = if formats.windows(2).all(|w| w[0] == w[1]) { formats[0] } else { "mixed-precision" };
    let config_groups: serde_json::Map<String, Value> = groups
        .into_iter()
        .enumerate()
        .map(|(i, (key, targets))| {
            let input_activations = match key.inputs {
                Inputs::Float => Value::Null,
                // vLLM's static W8A8: one calibrated scale per tensor (`input_scale`).
                Inputs::StaticInt8 => quantization_args("int", 8, true, "tensor", None, false),
                // llm-compressor's W8A8 preset: a scale per token, computed at run time.
                Inputs::DynamicInt8 => quantization_args("int", 8, true, "token", None, true),
                // llm-compressor's FP8_DYNAMIC preset.
                Inputs::DynamicFp8 => quantization_args("float", 8, true, "token", None, true),
            };
            let group = json!({
                "targets": targets,
                "format": key.format,
                "weights": quantization_args(key.kind, key.bits, key.symmetric, key.strategy, key.group_size, false),
                "input_activations": input_activations,
                "output_activations": null,
            });
            (format!("group_{i}"), group)
        })
        .collect();
    Some(json!({
        "quant_method": "compressed-tensors",
        "format": global_format,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "global_compression_ratio": null,
        "sparsity_config": {},
        "transform_config": {},
    }))
}

/// compressed-tensors `QuantizationArgs` of `bits` bits, `kind` `"int"` or `"float"` (no key that older loaders
/// reject).
fn quantization_args(
    kind: &str,
    bits: u8,
    symmetric: bool,
    strategy: &str,
    group_size: Option<usize>,
    dynamic: bool,
) -> Value {
    json!({
        "num_bits": bits,
        "type": kind,
        "symmetric": symmetric,
        "strategy": strategy,
        "group_size": group_size,
        "block_structure": null,
        "dynamic": dynamic,
        "actorder": null,
        // Dynamic arguments have no observer: nothing is observed ahead of time.
        "observer": if dynamic { Value::Null } else { json!("minmax") },
        "observer_kwargs": {},
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Writing.

/// The tensors of the exported files, in write order, each with the model tensor and layout it comes from.
type PlannedFile = Vec<(TensorId, Layout, Vec<PlannedTensor>)>;

/// Splits the planned tensors into shards of at most `max_bytes` of data (the outputs of one model tensor stay
/// together; a tensor larger than `max_bytes` gets a shard of its own).
fn shards(model: &Model, plan: &Plan, max_bytes: u64) -> Vec<PlannedFile> {
    let mut shards: Vec<PlannedFile> = vec![Vec::new()];
    let mut filled = 0u64;
    for index in 0..model.tensors.len() {
        let id = TensorId(index);
        let info = model.tensor(id);
        let layout = layout(model, plan, id);
        let outputs = layout_outputs(&info.name, info.dtype, &info.shape, layout);
        let bytes: u64 = outputs.iter().map(|t| t.size_bytes() as u64).sum();
        if filled > 0 && filled + bytes > max_bytes {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += bytes;
        if let Some(last) = shards.last_mut() {
            last.push((id, layout, outputs));
        }
    }
    shards
}

/// The name of shard `index` (0-based) of `count`: `model.safetensors` alone, else `model-00001-of-00003.safetensors`.
pub fn shard_file_name(index: usize, count: usize) -> String {
    if count == 1 { WEIGHTS_FILE.to_owned() } else { format!("model-{:05}-of-{count:05}.safetensors", index + 1) }
}

/// Writes the weights (one file, or shards with their index) and `config.json` into `folder`.
pub fn write(
    model: &Model,
    plan: &Plan,
    folder: &Path,
    options: &ExportOptions,
    progress: &Progress,
) -> Result<Vec<(String, u64)>> {
    let shards = shards(model, plan, options.max_shard_bytes.max(1));
    let total_elements: u64 = model.tensors.iter().map(|t| t.numel() as u64).sum();
    progress.start_stage("exporting", total_elements);
    let recipe_json = plan.to_recipe(model).to_json();
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    for (index, shard) in shards.iter().enumerate() {
        let name = shard_file_name(index, shards.len());
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_owned(), "pt".to_owned());
        if index == 0 {
            metadata.insert(RECIPE_METADATA_KEY.to_owned(), recipe_json.clone());
        }
        let outputs: Vec<PlannedTensor> = shard.iter().flat_map(|(_, _, o)| o.iter().cloned()).collect();
        for output in &outputs {
            weight_map.insert(output.name.clone(), name.clone());
            total_size += output.size_bytes() as u64;
        }
        let mut writer = TensorFileWriter::create(&folder.join(&name), outputs, &metadata)?;
        for (id, layout, outputs) in shard {
            progress.check()?;
            write_tensor(model, plan, *id, *layout, outputs, &mut writer, progress)?;
            progress.advance(model.tensor(*id).numel() as u64);
        }
        files.push((name, writer.finish()?));
    }
    if shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).unwrap_or_default() + "\n";
        write_atomically(&folder.join(INDEX_FILE), text.as_bytes())?;
        files.push((INDEX_FILE.to_owned(), text.len() as u64));
    }
    let mut config = model.config.clone().unwrap_or_default();
    config.remove("quantization_config");
    if let Some(quantization) = quantization_config(model, plan) {
        config.insert("quantization_config".into(), quantization);
    }
    let config_text = serde_json::to_string_pretty(&Value::Object(config)).unwrap_or_default() + "\n";
    write_atomically(&folder.join("config.json"), config_text.as_bytes())?;
    files.push(("config.json".into(), config_text.len() as u64));
    Ok(files)
}

/// Writes the outputs of one model tensor.
fn write_tensor(
    model: &Model,
    plan: &Plan,
    id: TensorId,
    layout: Layout,
    outputs: &[PlannedTensor],
    writer: &mut TensorFileWriter,
    progress: &Progress,
) -> Result<()> {
    let info = model.tensor(id);
    match layout {
        Layout::Packed | Layout::Int8Codes { .. } => {
            let Precision::Int8(scheme) = plan.tensor(model, id) else {
                let problem = format!("tensor {:?} has an INT8 layout but no INT8 plan", info.name);
                return Err(Error::WriterMisuse { problem, path: writer.path().to_owned() });
            };
            // Progress is counted per tensor by the caller.
            let quantized = plan.int8_tensor(model, id, scheme, &Progress::new())?;
            let mut scales: Vec<f32> = quantized.params.iter().map(|p| p.scale).collect();
            if layout == Layout::Packed {
                let (rows, cols) = (info.shape[0], info.shape[1]);
                scales.resize(rows, scales[0]);
                writer.write_tensor(&outputs[0].name, &pack_int8_rows(&quantized.codes, rows, cols))?;
                writer.write_tensor(&outputs[1].name, &f32_le_bytes(&scales))?;
                let shape: Vec<u8> = [rows as i64, cols as i64].iter().flat_map(|d| d.to_le_bytes()).collect();
                writer.write_tensor(&outputs[2].name, &shape)?;
            } else {
                writer.write_tensor(&outputs[0].name, bytemuck::cast_slice(&quantized.codes))?;
                writer.write_tensor(&outputs[1].name, &f32_le_bytes(&scales))?;
                if !scheme.symmetric {
                    let zero_points: Vec<u8> = quantized.params.iter().map(|p| p.zero_point as i8 as u8).collect();
                    writer.write_tensor(&outputs[2].name, &zero_points)?;
                }
                if let Layout::Int8Codes { inputs: Inputs::StaticInt8, .. } = layout {
                    let input = plan.input_params(info.layer).ok_or_else(|| Error::Uncalibrated {
                        names: vec![super::layer_name(model, id).to_owned()],
                        path: Default::default(),
                    })?;
                    let last = outputs.last().map(|o| o.name.as_str()).unwrap_or_default();
                    writer.write_tensor(last, &f32_le_bytes(&[input.scale]))?;
                }
            }
        }
        Layout::PackedInt4 { .. } => {
            let Precision::Int4(scheme) = plan.tensor(model, id) else {
                let problem = format!("tensor {:?} has an INT4 layout but no INT4 plan", info.name);
                return Err(Error::WriterMisuse { problem, path: writer.path().to_owned() });
            };
            let (rows, cols) = (info.shape[0], info.shape[1]);
            let quantized = plan.int4_tensor(model, id, scheme, &Progress::new())?;
            writer.write_tensor(&outputs[0].name, &pack_int4_rows(&quantized.codes, rows, cols))?;
            let scales: Vec<f32> = quantized.params.iter().map(|p| p.scale).collect();
            writer.write_tensor(&outputs[1].name, &f32_le_bytes(&scales))?;
            if !scheme.symmetric {
                let zero_points: Vec<i8> = quantized.params.iter().map(|p| p.zero_point as i8).collect();
                let groups = cols / scheme.group_size;
                writer.write_tensor(&outputs[2].name, &pack_int4_columns(&zero_points, rows, groups))?;
            }
            let shape: Vec<u8> = [rows as i64, cols as i64].iter().flat_map(|d| d.to_le_bytes()).collect();
            writer.write_tensor(&outputs[outputs.len() - 1].name, &shape)?;
        }
        Layout::Fp8Codes { .. } => {
            let Precision::Fp8(scheme) = plan.tensor(model, id) else {
                let problem = format!("tensor {:?} has an FP8 layout but no FP8 plan", info.name);
                return Err(Error::WriterMisuse { problem, path: writer.path().to_owned() });
            };
            let data = TensorData::of(model, id)?;
            let quantized = quantize_tensor_fp8(&data, scheme.granularity, &Progress::new())?;
            writer.write_tensor(&outputs[0].name, &quantized.codes)?;
            writer.write_tensor(&outputs[1].name, &f32_le_bytes(&quantized.scales))?;
        }
        Layout::Cast(to) => {
            let data = TensorData::of(model, id)?;
            let mut buf = Vec::new();
            for block in data.blocks() {
                progress.check()?;
                let values = data.values(block, &mut buf);
                let bytes: Vec<u8> = if to == DType::F16 {
                    values.iter().flat_map(|&x| to_fp16(x).to_le_bytes()).collect()
                } else {
                    values.iter().flat_map(|&x| to_bf16(x).to_le_bytes()).collect()
                };
                writer.write_tensor(&info.name, &bytes)?;
            }
        }
        Layout::Kept => {
            for chunk in model.tensor_bytes(id).chunks(1 << 24) {
                writer.write_tensor(&info.name, chunk)?;
            }
        }
    }
    Ok(())
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
