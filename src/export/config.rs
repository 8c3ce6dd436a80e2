//! The `quantization_config` entry of an exported `config.json`, in the compressed-tensors schema.
//!
//! One config group per distinct (format, symmetric, strategy, static INT8 inputs), targeting exact layer (module) names; every
//! layer whose main tensor stayed in float and has two or more dimensions is listed in `ignore` (vLLM needs
//! every Linear to be either targeted or ignored). Each group carries its own `format`, and the global `format`
//! is that format or `mixed-precision`. Keys that older loaders reject (`scale_dtype`, `zp_dtype`) are not written.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Layout, layout};
use crate::model::{LayerId, Model};
use crate::quant::Plan;

/// The `quantization_config` for `plan`, or `None` when no layer is INT8 (a pure FP16/BF16 export is a plain
/// float checkpoint).
pub fn quantization_config(model: &Model, plan: &Plan) -> Option<Value> {
    let mut groups: BTreeMap<(&'static str, bool, &'static str, bool), Vec<String>> = BTreeMap::new();
    let mut ignore = Vec::new();
    for (index, layer) in model.layers.iter().enumerate() {
        let Some(main) = model.main_tensor(LayerId(index)) else { continue };
        let key = match layout(model, plan, main) {
            Layout::Packed => ("pack-quantized", true, "channel", false),
            Layout::Naive { channels, symmetric, int8_inputs } => (
                if int8_inputs { "int-quantized" } else { "naive-quantized" },
                symmetric,
                if channels.is_some() { "channel" } else { "tensor" },
                int8_inputs,
            ),
            Layout::Cast(_) | Layout::Kept => {
                if model.tensor(main).shape.len() >= 2 {
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
    let formats: Vec<&str> = groups.keys().map(|(format, _, _, _)| *format).collect();
    let global_format = if formats.windows(2).all(|w| w[0] == w[1]) { formats[0] } else { "mixed-precision" };
    let config_groups: serde_json::Map<String, Value> = groups
        .into_iter()
        .enumerate()
        .map(|(i, ((format, symmetric, strategy, int8_inputs), targets))| {
            // Static per-tensor symmetric INT8 inputs with the calibrated `input_scale` (vLLM's static W8A8).
            let input_activations = int8_inputs.then(|| static_int8_args(true, "tensor"));
            let group = json!({
                "targets": targets,
                "format": format,
                "weights": static_int8_args(symmetric, strategy),
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

/// compressed-tensors `QuantizationArgs` of static 8-bit integers (no key that older loaders reject).
fn static_int8_args(symmetric: bool, strategy: &str) -> Value {
    json!({
        "num_bits": 8,
        "type": "int",
        "symmetric": symmetric,
        "strategy": strategy,
        "group_size": null,
        "block_structure": null,
        "dynamic": false,
        "actorder": null,
        "observer": "minmax",
        "observer_kwargs": {},
    })
}
