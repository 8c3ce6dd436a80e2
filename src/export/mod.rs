//! Export of a planned model as a folder in the compressed-tensors layout (the one llm-compressor writes and
//! vLLM and transformers load), with the recipe that reproduces it. See `docs/EXPORT.md`.
//!
//! Per tensor, by its planned precision and shape ([`Layout`]):
//! - INT8 symmetric, 2-D `*.weight`: `pack-quantized` (what vLLM loads for weight-only INT8): `x.weight_packed`
//!   (I32 `[out, ceil(in/4)]`, four codes per word as `q + 128`, little-endian), `x.weight_scale` (F32
//!   `[out, 1]`; a per-tensor scale is repeated per row, which changes no value) and `x.weight_shape` (I64 `[2]`).
//! - any other INT8 tensor (asymmetric, conv kernels, 1-D…): `naive-quantized`: `<name>` as I8 codes in the
//!   original shape, `<name>_scale` (F32, `[1]` per tensor or `[out, 1]` per channel) and, when asymmetric,
//!   `<name>_zero_point` (I8, the scale's shape).
//! - the weight of a W8A8 layer `M` (static INT8 inputs): `int-quantized`, the same tensors as `naive-quantized`
//!   plus `M.input_scale` (F32 `[1]`, the calibrated `clip / 127`).
//! - FP16 / BF16: cast, round to nearest even with saturation (the formulas of `docs/QUANTIZATION.md`).
//! - everything else: bytes copied unchanged, integer tensors included.
//!
//! Every file is written to a temp file and renamed into place; the input model's files are never written.

mod config;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use config::quantization_config;
pub use writer::{PlannedTensor, TensorFileWriter, write_atomically};

use crate::error::{Error, Result};
use crate::model::{DType, LayerId, Model, TensorId};
use crate::progress::Progress;
use crate::quant::kernels;
use crate::quant::params::{to_bf16, to_fp16};
use crate::quant::pass::{TensorData, scan};
use crate::quant::{Activations, Granularity, Int8Scheme, Plan, Precision, QParams};

/// Name of the weights file in an export.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the recipe written beside the weights.
pub const RECIPE_FILE: &str = "quantstudio-recipe.json";
/// Key of the recipe in the safetensors `__metadata__`.
pub const RECIPE_METADATA_KEY: &str = "quantstudio.recipe";

/// What an export produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    /// The destination folder.
    pub folder: PathBuf,
    /// Total bytes of the files written.
    pub size_bytes: u64,
    /// Names of the files written, in order.
    pub files: Vec<String>,
    /// What a runtime may refuse in this export (see `docs/EXPORT.md`).
    pub warnings: Vec<String>,
}

/// INT8 codes of one tensor with their parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    /// Codes in the tensor's original layout.
    pub codes: Vec<i8>,
    /// One entry per group (per tensor: one; per channel: one per row).
    pub params: Vec<QParams>,
}

/// Quantizes one tensor to INT8 codes under `scheme` (pass 1 for the parameters, then the codes, in parallel).
pub fn quantize_tensor(data: &TensorData, scheme: Int8Scheme, progress: &Progress) -> Result<QuantizedTensor> {
    let params = scan(data, progress)?.group_params(scheme);
    let mut codes = vec![0i8; data.len()];
    let blocks = data.blocks();
    let mut pieces: Vec<(&std::ops::Range<usize>, &mut [i8])> = Vec::with_capacity(blocks.len());
    let mut rest = codes.as_mut_slice();
    for block in &blocks {
        let (piece, tail) = rest.split_at_mut(block.len());
        pieces.push((block, piece));
        rest = tail;
    }
    let per_row = params.len() > 1;
    pieces.into_par_iter().try_for_each_init(Vec::new, |buf, (block, out)| {
        progress.check()?;
        let values = data.values(block.clone(), buf);
        let mut at = 0;
        data.for_each_row_slice(block, values, |row, slice| {
            let p = &params[if per_row { row } else { 0 }];
            kernels::quantize_codes(slice, p, &mut out[at..at + slice.len()]);
            at += slice.len();
        });
        progress.advance(block.len() as u64);
        Ok::<(), Error>(())
    })?;
    Ok(QuantizedTensor { codes, params })
}

/// The name of a quantization parameter tensor: `x.weight` -> `x.weight_scale`.
pub fn param_name(tensor: &str, suffix: &str) -> String {
    format!("{tensor}_{suffix}")
}

/// How one tensor is stored in the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// INT8 symmetric 2-D weight, packed four codes per I32 (`pack-quantized`), one scale per row.
    Packed,
    /// INT8 codes as I8 in the original shape (`naive-quantized`), with scales (and zero points) of shape `[1]`
    /// per tensor or `[rows, 1]` per channel.
    Naive {
        /// Rows of the scale when per channel; `None` per tensor.
        channels: Option<usize>,
        /// Whether zero points are omitted.
        symmetric: bool,
        /// Whether the layer's input is static INT8 (W8A8): an `input_scale` is written and the format is
        /// `int-quantized`.
        int8_inputs: bool,
    },
    /// Cast to F16 or BF16.
    Cast(DType),
    /// Bytes copied unchanged.
    Kept,
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
        Precision::Int8(scheme) => {
            let channels = match scheme.granularity {
                Granularity::PerChannel => Some(info.rows_cols().0),
                Granularity::PerTensor => None,
            };
            Layout::Naive {
                channels,
                symmetric: scheme.symmetric,
                int8_inputs: scheme.activations == Activations::Int8,
            }
        }
        Precision::Fp16 => Layout::Cast(DType::F16),
        Precision::Bf16 => Layout::Cast(DType::BF16),
        Precision::Fp32 => Layout::Kept,
    }
}

/// Shape of the scale / zero point: `[1]` per tensor, `[channels, 1]` per channel.
fn param_shape(channels: Option<usize>) -> Vec<usize> {
    match channels {
        Some(rows) => vec![rows, 1],
        None => vec![1],
    }
}

/// The name of the input scale of the layer whose weight is `weight`: `M.weight` -> `M.input_scale`.
pub fn input_scale_name(weight: &str) -> String {
    format!("{}.input_scale", weight.strip_suffix(".weight").unwrap_or(weight))
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
        Layout::Naive { channels, symmetric, int8_inputs } => {
            let mut outputs = vec![
                planned(name.to_owned(), DType::I8, shape.to_vec()),
                planned(param_name(name, "scale"), DType::F32, param_shape(channels)),
            ];
            if !symmetric {
                outputs.push(planned(param_name(name, "zero_point"), DType::I8, param_shape(channels)));
            }
            if int8_inputs {
                outputs.push(planned(input_scale_name(name), DType::F32, vec![1]));
            }
            outputs
        }
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

/// Inverse of [`pack_int8_rows`].
pub fn unpack_int8_rows(bytes: &[u8], rows: usize, cols: usize) -> Vec<i8> {
    let row_bytes = cols.div_ceil(4) * 4;
    (0..rows).flat_map(|r| bytes[r * row_bytes..r * row_bytes + cols].iter().map(|&b| (b ^ 0x80) as i8)).collect()
}

/// The tensors of the exported file, in write order, each with the model tensor and layout it comes from.
fn planned_tensors(model: &Model, plan: &Plan) -> Vec<(TensorId, Layout, Vec<PlannedTensor>)> {
    (0..model.tensors.len())
        .map(|index| {
            let id = TensorId(index);
            let info = model.tensor(id);
            let layout = layout(model, plan, id);
            (id, layout, layout_outputs(&info.name, info.dtype, &info.shape, layout))
        })
        .collect()
}

/// Checks that `dest` can receive an export without touching the input model, and creates it.
fn prepare_destination(model: &Model, dest: &Path) -> Result<PathBuf> {
    let bad = |reason: &str| Error::BadDestination { reason: reason.into(), path: dest.to_owned() };
    if dest.exists() && !dest.is_dir() {
        return Err(bad("it is a file, not a folder"));
    }
    std::fs::create_dir_all(dest).map_err(|e| Error::io("cannot create folder", dest, e))?;
    let dest = dest.canonicalize().map_err(|e| Error::io("cannot resolve", dest, e))?;
    let sources: Vec<PathBuf> = model.source_files().iter().filter_map(|f| f.canonicalize().ok()).collect();
    let model_folder = if model.path.is_dir() { model.path.canonicalize().ok() } else { None };
    if model_folder.as_ref() == Some(&dest) {
        return Err(bad("it is the input model's folder"));
    }
    for name in [WEIGHTS_FILE, "config.json", RECIPE_FILE] {
        if sources.contains(&dest.join(name)) {
            return Err(bad("it would overwrite the input model"));
        }
    }
    Ok(dest)
}

/// Small files of a model folder that loaders need beside the weights (tokenizer, generation config…).
fn companion_files(model: &Model) -> Vec<PathBuf> {
    if !model.path.is_dir() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(&model.path) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let ext = p.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            matches!(ext.as_str(), "json" | "txt" | "model" | "tiktoken" | "jinja")
                && name != "config.json"
                && name != RECIPE_FILE
                && !name.ends_with(".safetensors.index.json")
        })
        .collect();
    files.sort();
    files
}

/// Writes the planned model into `dest` (created if needed): `model.safetensors`, `config.json` with its
/// `quantization_config`, the recipe, and the model folder's tokenizer and other small JSON/text files.
pub fn export(model: &Model, plan: &Plan, dest: &Path, progress: &Progress) -> Result<ExportSummary> {
    plan.check_calibrated(model)?;
    let dest = prepare_destination(model, dest)?;
    let recipe_json = plan.to_recipe(model).to_json();
    let planned = planned_tensors(model, plan);
    let total_elements: u64 = planned.iter().map(|(id, _, _)| model.tensor(*id).numel() as u64).sum();
    progress.start_stage("exporting", total_elements);

    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_owned(), "pt".to_owned());
    metadata.insert(RECIPE_METADATA_KEY.to_owned(), recipe_json.clone());
    let all_outputs: Vec<PlannedTensor> = planned.iter().flat_map(|(_, _, o)| o.iter().cloned()).collect();
    let mut writer = TensorFileWriter::create(&dest.join(WEIGHTS_FILE), all_outputs, &metadata)?;
    for (id, layout, outputs) in &planned {
        progress.check()?;
        let info = model.tensor(*id);
        match *layout {
            Layout::Packed | Layout::Naive { .. } => {
                let Precision::Int8(scheme) = plan.tensor(model, *id) else {
                    return Err(Error::Unsupported(format!(
                        "tensor {:?} has an INT8 layout but no INT8 plan",
                        info.name
                    )));
                };
                let data = TensorData::of(model, *id)?;
                let quantized = quantize_tensor(&data, scheme, &Progress::new())?;
                let mut scales: Vec<f32> = quantized.params.iter().map(|p| p.scale).collect();
                if *layout == Layout::Packed {
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
                    if let Layout::Naive { int8_inputs: true, .. } = layout {
                        let input = plan
                            .input_params(info.layer)
                            .ok_or_else(|| Error::Uncalibrated { names: vec![model.layer(info.layer).name.clone()] })?;
                        let last = outputs.last().map(|o| o.name.as_str()).unwrap_or_default();
                        writer.write_tensor(last, &f32_le_bytes(&[input.scale]))?;
                    }
                }
            }
            Layout::Cast(to) => {
                let data = TensorData::of(model, *id)?;
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
                for chunk in model.tensor_bytes(*id).chunks(1 << 24) {
                    writer.write_tensor(&info.name, chunk)?;
                }
            }
        }
        progress.advance(info.numel() as u64);
    }
    let mut size_bytes = writer.finish()?;
    let mut files = vec![WEIGHTS_FILE.to_owned()];

    let mut config = model.config.clone().unwrap_or_default();
    config.remove("quantization_config");
    let warnings = vllm_fusion_warnings(model, plan);
    if let Some(quantization) = quantization_config(model, plan) {
        config.insert("quantization_config".into(), quantization);
    }
    let config_text = serde_json::to_string_pretty(&serde_json::Value::Object(config)).unwrap_or_default() + "\n";
    write_atomically(&dest.join("config.json"), config_text.as_bytes())?;
    write_atomically(&dest.join(RECIPE_FILE), (recipe_json + "\n").as_bytes())?;
    size_bytes += config_text.len() as u64;
    files.push("config.json".into());
    files.push(RECIPE_FILE.into());
    for source in companion_files(model) {
        let Some(name) = source.file_name() else { continue };
        let bytes = std::fs::read(&source).map_err(|e| Error::io("cannot read", &source, e))?;
        write_atomically(&dest.join(name), &bytes)?;
        size_bytes += bytes.len() as u64;
        files.push(name.to_string_lossy().into_owned());
    }
    size_bytes += std::fs::metadata(dest.join(RECIPE_FILE)).map(|m| m.len()).unwrap_or(0);
    Ok(ExportSummary { folder: dest, size_bytes, files, warnings })
}

/// vLLM fuses `q/k/v_proj` and `gate/up_proj` of one block and needs one layout for all of them.
fn vllm_fusion_warnings(model: &Model, plan: &Plan) -> Vec<String> {
    let mut families: BTreeMap<String, Vec<(String, Layout)>> = BTreeMap::new();
    for (index, layer) in model.layers.iter().enumerate() {
        let Some((prefix, last)) = layer.name.rsplit_once('.') else { continue };
        let family = match last {
            "q_proj" | "k_proj" | "v_proj" => "qkv",
            "gate_proj" | "up_proj" => "gate_up",
            _ => continue,
        };
        let Some(main) = model.main_tensor(LayerId(index)) else { continue };
        let kind = match layout(model, plan, main) {
            Layout::Cast(_) | Layout::Kept => Layout::Kept,
            other => other,
        };
        families.entry(format!("{prefix}.{family}")).or_default().push((layer.name.clone(), kind));
    }
    families
        .into_iter()
        .filter(|(_, members)| members.windows(2).any(|w| w[0].1 != w[1].1))
        .map(|(family, members)| {
            let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
            format!("vLLM fuses {family} and needs one scheme for {}; it will refuse this export", names.join(", "))
        })
        .collect()
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
