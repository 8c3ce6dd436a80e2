//! The `quantization_config` entry of an exported `config.json` (compressed-tensors).

use serde_json::{Value, json};

use crate::model::Model;
use crate::quant::{Plan, Precision};

/// The `quantization_config` for `plan`. Placeholder until the layout research lands.
pub fn quantization_config(model: &Model, plan: &Plan) -> Value {
    let _ = (model, plan, Precision::Fp32);
    json!({"quant_method": "compressed-tensors"})
}
