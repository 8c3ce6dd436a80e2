//! Recipes (what the user asks for, saved as versioned JSON) and plans (the precision of every layer of one
//! model, resolved from a recipe).
//!
//! Resolution, for each layer: the recipe's `default` when its `default_scope` covers the layer, else FP32 (as
//! stored); then, when `keep_norms_and_vectors` is on, norms and
//! layers whose tensors are all 0-D or 1-D stay FP32; then every rule whose glob matches the layer name, in
//! order, the last match winning; then an entry of `layers` naming it.
//!
//! llama.cpp's block formats (Q8_0, Q4_0, Q4_K, Q6_K) apply to a layer whose main tensor is a 2-D weight with rows
//! a whole number of blocks long (32 or 256 values): resolution keeps any other layer a rule or default would give
//! one of them FP32 and says why in a warning ([`block_refusal`]).
//!
//! W8A8 layers (INT8 with [`super::Activations::Int8`]) also need the clip of their input from calibration:
//! `input_clips` carries it, by layer name, in the recipe and by [`LayerId`] in the plan.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::gptq::{GptqCodes, GptqLayer, GptqWeights};
use super::{Activations, Fp8Activations, Granularity, InputQuant, Int8Scheme, Precision, QParams};
use crate::error::{Error, Result};
use crate::model::{LayerId, LayerKind, Model, TensorId};

/// Layers named in the warning about layers a block format does not fit (the count covers them all).
const REFUSED_NAMES_SHOWN: usize = 6;

/// The `format` field of every recipe file.
pub const RECIPE_FORMAT: &str = "quantstudio-recipe";
/// The recipe version this build writes and reads.
pub const RECIPE_VERSION: u32 = 1;

/// A precision for all layers whose name matches a glob (`*` any run, `?` one character, `[abc]` a class).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// Glob over layer names.
    pub pattern: String,
    /// What matching layers get.
    #[serde(flatten)]
    pub precision: Precision,
}

/// What the user asks for, independent of any one model; saved and loaded as JSON.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    /// Always [`RECIPE_FORMAT`].
    #[serde(default = "recipe_format")]
    pub format: String,
    /// [`RECIPE_VERSION`] when written by this build.
    pub version: u32,
    /// Precision of the layers nothing else names.
    #[serde(default = "fp32")]
    pub default: Precision,
    /// Keep norms and all-1-D layers in FP32 unless a rule or a layer entry names them.
    #[serde(default = "yes")]
    pub keep_norms_and_vectors: bool,
    /// Which layers `default` applies to (the others keep their stored precision unless a rule names them).
    #[serde(default)]
    pub default_scope: DefaultScope,
    /// Glob rules applied in order; the last match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Per-layer precisions, by exact layer name; they win over rules.
    #[serde(default)]
    pub layers: BTreeMap<String, Precision>,
    /// The calibrated symmetric clip of each layer's input (`scale = clip / 127` for W8A8 layers), by layer name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_clips: BTreeMap<String, f32>,
    /// Quantize the INT4 and INT8 layers with GPTQ on this calibration data (round to nearest when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gptq: Option<GptqRecipe>,
}

/// A recipe's GPTQ choice: the calibration data and the run's options.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptqRecipe {
    /// The calibration data, in any format `eval --data` takes; a relative path in a recipe file is relative to
    /// the recipe's folder.
    pub data: std::path::PathBuf,
    /// Dampening and column order.
    #[serde(flatten)]
    pub options: super::gptq::GptqOptions,
}

/// Which layers a recipe's `default` precision applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultScope {
    /// Every layer (norms and 1-D layers aside when `keep_norms_and_vectors` is on).
    #[default]
    All,
    /// What deployment runtimes quantize: linear layers and convolutions, except the output head (`lm_head`).
    /// Embedding tables, the head, norms and everything else keep their stored precision.
    Linear,
}

impl DefaultScope {
    /// Whether `default` applies to layer `id` of `model`.
    pub fn covers(self, model: &Model, id: LayerId) -> bool {
        match self {
            DefaultScope::All => true,
            DefaultScope::Linear => {
                let layer = model.layer(id);
                matches!(layer.kind, LayerKind::Linear | LayerKind::Conv) && !is_output_head(&layer.name)
            }
        }
    }
}

/// The output head of a language model (`lm_head`, GPT-NeoX's `embed_out`), which runtimes keep in float.
pub fn is_output_head(layer_name: &str) -> bool {
    let last = layer_name.rsplit('.').next().unwrap_or(layer_name);
    matches!(last, "lm_head" | "embed_out")
}

/// The keys of a recipe's top-level object.
const RECIPE_KEYS: &[&str] = &[
    "format",
    "version",
    "default",
    "keep_norms_and_vectors",
    "default_scope",
    "rules",
    "layers",
    "input_clips",
    "gptq",
];
/// The keys of a recipe's `"gptq"` object.
const GPTQ_KEYS: &[&str] = &["data", "damp_percent", "act_order"];
/// The keys of a precision object (`{"precision": "int8", "symmetric": true, …}`).
const PRECISION_KEYS: &[&str] = &["precision", "symmetric", "granularity", "activations", "group_size"];

/// Refuses unknown keys (a typo such as `"rule"` or `"symetric"` would otherwise fall back to the default
/// silently), naming the key, where it is, and the closest known key.
fn check_recipe_keys(value: &serde_json::Value) -> std::result::Result<(), String> {
    let unknown = |object: &serde_json::Map<String, serde_json::Value>, known: &[&str], place: &str| match object
        .keys()
        .find(|key| !known.contains(&key.as_str()))
    {
        Some(key) => Err(format!("unknown key {key:?} in {place}{}", crate::error::did_you_mean(key, known))),
        None => Ok(()),
    };
    let Some(top) = value.as_object() else { return Ok(()) };
    unknown(top, RECIPE_KEYS, "the recipe")?;
    if let Some(default) = top.get("default").and_then(|v| v.as_object()) {
        unknown(default, PRECISION_KEYS, "\"default\"")?;
    }
    if let Some(gptq) = top.get("gptq").and_then(|v| v.as_object()) {
        unknown(gptq, GPTQ_KEYS, "\"gptq\"")?;
    }
    if let Some(rules) = top.get("rules").and_then(|v| v.as_array()) {
        let rule_keys: Vec<&str> = PRECISION_KEYS.iter().copied().chain(["pattern"]).collect();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(rule) = rule.as_object() {
                unknown(rule, &rule_keys, &format!("rule {i}"))?;
            }
        }
    }
    if let Some(layers) = top.get("layers").and_then(|v| v.as_object()) {
        for (name, precision) in layers {
            if let Some(precision) = precision.as_object() {
                unknown(precision, PRECISION_KEYS, &format!("layer {name:?}"))?;
            }
        }
    }
    Ok(())
}

fn recipe_format() -> String {
    RECIPE_FORMAT.to_owned()
}
fn fp32() -> Precision {
    Precision::Fp32
}
fn yes() -> bool {
    true
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe::uniform(Precision::Fp32)
    }
}

impl Recipe {
    /// The CLI's `--precision` shortcut: INT8 and FP8 on the layers deployment runtimes quantize (linear layers and
    /// convolutions but the output head; [`DefaultScope::Linear`]); FP16 and BF16 on every layer; norms and 1-D
    /// layers kept in FP32 either way.
    pub fn uniform(precision: Precision) -> Recipe {
        let default_scope = if precision.has_codes() { DefaultScope::Linear } else { DefaultScope::All };
        Recipe { default_scope, ..Recipe::everywhere(precision) }
    }

    /// Every layer at `precision`, norms and 1-D layers kept in FP32.
    pub fn everywhere(precision: Precision) -> Recipe {
        Recipe {
            format: RECIPE_FORMAT.to_owned(),
            version: RECIPE_VERSION,
            default: precision,
            keep_norms_and_vectors: true,
            default_scope: DefaultScope::All,
            rules: Vec::new(),
            layers: BTreeMap::new(),
            input_clips: BTreeMap::new(),
            gptq: None,
        }
    }

    /// A starting point for `model`: INT8 symmetric per-channel everywhere it is sensible, every layer listed
    /// explicitly so that it can be edited.
    pub fn starting(model: &Model) -> Recipe {
        let base = Recipe::uniform(Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel)));
        match base.resolve(model) {
            Ok(plan) => plan.to_recipe(model),
            Err(_) => base,
        }
    }

    /// Parses recipe JSON; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<Recipe> {
        let bad = |reason: String| Error::BadRecipe { reason, path: origin.to_owned() };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        check_recipe_keys(&value).map_err(bad)?;
        let recipe: Recipe = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let precisions = std::iter::once(("\"default\"".to_owned(), recipe.default))
            .chain(recipe.rules.iter().enumerate().map(|(i, r)| (format!("rule {i}"), r.precision)))
            .chain(recipe.layers.iter().map(|(name, p)| (format!("layer {name:?}"), *p)));
        for (place, precision) in precisions {
            if let Precision::Int4(scheme) = precision
                && !scheme.is_valid()
            {
                return Err(bad(format!(
                    "{place}: INT4 group_size {} is not one of {:?}",
                    scheme.group_size,
                    super::int4::GROUP_SIZES
                )));
            }
        }
        if let Some(gptq) = &recipe.gptq
            && !(gptq.options.damp_percent.is_finite() && gptq.options.damp_percent > 0.0)
        {
            return Err(bad(format!(
                "gptq: damp_percent must be a positive number, not {}",
                gptq.options.damp_percent
            )));
        }
        if recipe.format != RECIPE_FORMAT {
            return Err(bad(format!("format is {:?}, expected {RECIPE_FORMAT:?}", recipe.format)));
        }
        if recipe.version == 0 || recipe.version > RECIPE_VERSION {
            return Err(bad(format!(
                "version {} is not supported (this build reads 1..={RECIPE_VERSION})",
                recipe.version
            )));
        }
        Ok(recipe)
    }

    /// Reads a recipe file.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let mut recipe = Recipe::from_json(&text, path)?;
        if let Some(gptq) = &mut recipe.gptq
            && gptq.data.is_relative()
        {
            gptq.data = path.parent().unwrap_or(Path::new("")).join(&gptq.data);
        }
        Ok(recipe)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the recipe atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::model::writer::write_atomically(path, self.to_json().as_bytes())
    }

    /// Resolves the recipe against `model`. Fails when a `layers` entry names a layer the model lacks (all such
    /// names are listed) or when a pattern is not a valid glob; the caller that read the recipe from a file names
    /// it with [`Error::in_recipe_file`].
    pub fn resolve(&self, model: &Model) -> Result<Plan> {
        let mut unknown: Vec<String> = self
            .layers
            .keys()
            .chain(self.input_clips.keys())
            .filter(|name| model.layer_by_name(name).is_none())
            .cloned()
            .collect();
        unknown.sort();
        unknown.dedup();
        if !unknown.is_empty() {
            return Err(Error::RecipeUnknownLayers { names: unknown, path: Default::default() });
        }
        let patterns = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                glob::Pattern::new(&rule.pattern).map_err(|e| Error::BadPattern {
                    rule: i,
                    pattern: rule.pattern.clone(),
                    reason: e.to_string(),
                    path: Default::default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rule_matches = vec![0usize; self.rules.len()];
        let layers: Vec<Precision> = model
            .layers
            .iter()
            .enumerate()
            .map(|(index, layer)| {
                let mut precision =
                    if self.default_scope.covers(model, LayerId(index)) { self.default } else { Precision::Fp32 };
                if self.keep_norms_and_vectors && is_norm_or_vector(model, LayerId(index)) {
                    precision = Precision::Fp32;
                }
                for (i, (rule, pattern)) in self.rules.iter().zip(&patterns).enumerate() {
                    if pattern.matches(&layer.name) {
                        precision = rule.precision;
                        rule_matches[i] += 1;
                    }
                }
                self.layers.get(&layer.name).copied().unwrap_or(precision)
            })
            .collect();
        let mut warnings: Vec<String> = self
            .rules
            .iter()
            .zip(rule_matches)
            .filter(|(_, n)| *n == 0)
            .map(|(rule, _)| format!("rule {:?} matches no layer", rule.pattern))
            .collect();
        let mut layers = layers;
        let mut refused: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (index, precision) in layers.iter_mut().enumerate() {
            let asked = *precision;
            *precision = fitted(model, LayerId(index), asked);
            if let (Precision::Int4(asked), Precision::Int4(got)) = (asked, *precision)
                && asked.group_size != got.group_size
            {
                let reason = format!(
                    "groups of {} do not divide these rows; groups of {} do (compressed-tensors refuses uneven \
                     groups)",
                    asked.group_size, got.group_size
                );
                let names = refused.entry(reason).or_default();
                names.push(&model.layers[index].name);
            }
            if let Some(reason) = block_refusal(model, LayerId(index), *precision) {
                refused.entry(reason).or_default().push(&model.layers[index].name);
                *precision = Precision::Fp32;
            }
        }
        for (reason, names) in refused {
            let more = names.len().saturating_sub(REFUSED_NAMES_SHOWN);
            let shown = names[..names.len().min(REFUSED_NAMES_SHOWN)].join(", ");
            let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
            let outcome = if reason.starts_with("groups of") { "use the smaller groups" } else { "kept in FP32" };
            warnings.push(format!("{reason}: {} layer(s) {outcome}: {shown}{tail}", names.len()));
        }
        let input_clips = model.layers.iter().map(|l| self.input_clips.get(&l.name).copied()).collect();
        Ok(Plan { layers, input_clips, warnings, gptq: None })
    }
}

/// `precision` for layer `id` with an INT4 group size that divides the rows of its main tensor: the asked size when
/// it does, else the largest smaller listed size that does ([`super::Int4Scheme::fitted`]); any other precision,
/// and INT4 on a layer no size fits (refused by [`block_refusal`]), unchanged.
pub fn fitted(model: &Model, id: LayerId, precision: Precision) -> Precision {
    let Precision::Int4(scheme) = precision else { return precision };
    let Some(main) = model.main_tensor(id) else { return precision };
    let shape = &model.tensor(main).shape;
    match shape.as_slice() {
        [_, cols] => scheme.fitted(*cols).map_or(precision, Precision::Int4),
        _ => precision,
    }
}

/// Why layer `id` cannot take `precision` when it rounds rows run by run (llama.cpp's block formats, group-wise
/// INT4): its main tensor is not a 2-D weight, or its rows (the input dimension, ggml's `ne[0]`) are not a whole
/// number of blocks or groups. `None` when it can, and for every other precision.
pub fn block_refusal(model: &Model, id: LayerId, precision: Precision) -> Option<String> {
    let format = precision.row_format()?;
    let (what, unit) = match format {
        super::RowFormat::Block(_) => (format.to_string(), "its block size"),
        super::RowFormat::Int4(_) => ("INT4".to_owned(), "the smallest group size"),
    };
    let run = match format {
        super::RowFormat::Int4(_) => super::int4::GROUP_SIZES[0],
        _ => format.run_values(),
    };
    let main = model.tensor(model.main_tensor(id)?);
    if main.shape.len() != 2 {
        return Some(format!("{what} quantizes 2-D weights only, in rows of {run} values"));
    }
    let row_len = main.shape[1];
    if !format.fits(row_len) {
        return Some(format!("{what} needs rows of a multiple of {run} values ({unit}); these rows have {row_len}"));
    }
    None
}

/// Norm layers, and layers whose float tensors are all 0-D or 1-D.
fn is_norm_or_vector(model: &Model, id: LayerId) -> bool {
    let layer = model.layer(id);
    layer.kind == LayerKind::Norm
        || layer.tensors.iter().map(|t| model.tensor(*t)).filter(|t| t.is_analysable()).all(|t| t.shape.len() <= 1)
}

/// The precision of every layer of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Indexed by [`LayerId`].
    pub layers: Vec<Precision>,
    /// The calibrated clip of each layer's input, indexed by [`LayerId`]; `None` when not calibrated. Only W8A8
    /// layers use it.
    pub input_clips: Vec<Option<f32>>,
    /// Rules that matched nothing, and the like.
    pub warnings: Vec<String>,
    /// GPTQ weights of INT4 and INT8 layers ([`crate::calib::gptq`]), used while a layer keeps the precision they were
    /// computed for ([`Plan::gptq_tensor`]); layers absent are rounded to nearest.
    pub gptq: Option<Arc<GptqWeights>>,
}

impl Plan {
    /// Every layer of `model` at `precision`, with no exceptions.
    pub fn all(model: &Model, precision: Precision) -> Plan {
        Plan {
            layers: vec![precision; model.layers.len()],
            input_clips: vec![None; model.layers.len()],
            warnings: Vec::new(),
            gptq: None,
        }
    }

    /// A plan for a model of `layer_count` layers, all FP32, nothing calibrated.
    pub fn fp32(layer_count: usize) -> Plan {
        Plan {
            layers: vec![Precision::Fp32; layer_count],
            input_clips: vec![None; layer_count],
            warnings: Vec::new(),
            gptq: None,
        }
    }

    /// The quantization of layer `id`'s input: `Some` for a W8A8 layer with a calibrated clip
    /// (`QParams::static_input(clip)`: `scale = clip / 127`, 1 when the clip is 0, codes in `[-128, 127]`).
    pub fn input_params(&self, id: LayerId) -> Option<QParams> {
        if !self.layer(id).needs_calibration() {
            return None;
        }
        self.input_clips.get(id.0).copied().flatten().map(QParams::static_input)
    }

    /// How layer `id`'s input is quantized: static with its calibrated clip ([`Plan::input_params`]), dynamic
    /// per token, or `None` (kept in float, or a static layer not calibrated yet).
    pub fn input_quant(&self, id: LayerId) -> Option<InputQuant> {
        match self.layer(id) {
            Precision::Int8(s) if s.activations == Activations::Int8Dynamic => Some(InputQuant::DynamicInt8),
            Precision::Fp8(s) if s.activations == Fp8Activations::Fp8Dynamic => Some(InputQuant::DynamicFp8),
            precision if let Some(format) = precision.block_format() => Some(InputQuant::Blocks(format)),
            _ => self.input_params(id).map(InputQuant::Static),
        }
    }

    /// The W8A8 layers that have no calibrated input clip, by name, in model order.
    pub fn uncalibrated(&self, model: &Model) -> Vec<String> {
        (0..model.layers.len())
            .filter(|&i| {
                self.layer(LayerId(i)).needs_calibration() && self.input_clips.get(i).copied().flatten().is_none()
            })
            .map(|i| model.layers[i].name.clone())
            .collect()
    }

    /// `Err(Uncalibrated)` naming every W8A8 layer without a calibrated input clip.
    pub fn check_calibrated(&self, model: &Model) -> Result<()> {
        let names = self.uncalibrated(model);
        if names.is_empty() { Ok(()) } else { Err(Error::Uncalibrated { names, path: Default::default() }) }
    }

    /// Which layers each precision covers, by kind, in one phrase: `int8 sym per-channel: 36 linear; fp32: 3
    /// embedding, 13 norm` (layers without a float tensor are left out; FP32 last).
    pub fn coverage(&self, model: &Model) -> String {
        let mut by_precision: BTreeMap<(bool, String), BTreeMap<&str, usize>> = BTreeMap::new();
        for (index, layer) in model.layers.iter().enumerate() {
            if model.main_tensor(LayerId(index)).is_none() {
                continue;
            }
            let precision = self.layer(LayerId(index));
            let key = (precision == Precision::Fp32, precision.label());
            *by_precision.entry(key).or_default().entry(layer.kind.as_str()).or_default() += 1;
        }
        by_precision
            .into_iter()
            .map(|((_, label), kinds)| {
                let kinds: Vec<String> = kinds.into_iter().map(|(kind, n)| format!("{n} {kind}")).collect();
                format!("{label}: {}", kinds.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The precision of a layer.
    pub fn layer(&self, id: LayerId) -> Precision {
        self.layers.get(id.0).copied().unwrap_or(Precision::Fp32)
    }

    /// The GPTQ weights of tensor `id`: `Some` when it is its layer's main tensor and the plan holds GPTQ weights
    /// computed for the layer's current precision.
    pub fn gptq_tensor(&self, model: &Model, id: TensorId) -> Option<&GptqLayer> {
        let layer = model.tensor(id).layer;
        let gptq = self.gptq.as_ref()?.layers.get(&layer)?;
        (model.main_tensor(layer) == Some(id) && self.layer(layer) == gptq.precision).then_some(gptq)
    }

    /// The INT4 codes of tensor `id` under `scheme`: its GPTQ weights when the plan holds them for this scheme,
    /// round to nearest otherwise.
    pub fn int4_tensor(
        &self,
        model: &Model,
        id: TensorId,
        scheme: super::Int4Scheme,
        progress: &crate::progress::Progress,
    ) -> Result<std::borrow::Cow<'_, super::Int4Tensor>> {
        match self.gptq_tensor(model, id).map(|g| &g.codes) {
            Some(GptqCodes::Int4 { scheme: computed, tensor }) if *computed == scheme => {
                Ok(std::borrow::Cow::Borrowed(tensor))
            }
            _ => {
                let data = super::pass::TensorData::of(model, id)?;
                Ok(std::borrow::Cow::Owned(super::quantize_tensor_int4(&data, scheme, progress)?))
            }
        }
    }

    /// The INT8 codes of tensor `id` under `scheme`: its GPTQ codes when the plan holds them for this scheme,
    /// round to nearest otherwise.
    pub fn int8_tensor(
        &self,
        model: &Model,
        id: TensorId,
        scheme: Int8Scheme,
        progress: &crate::progress::Progress,
    ) -> Result<std::borrow::Cow<'_, super::QuantizedTensor>> {
        match self.gptq_tensor(model, id).map(|g| &g.codes) {
            Some(GptqCodes::Int8 { scheme: computed, tensor }) if *computed == scheme => {
                Ok(std::borrow::Cow::Borrowed(tensor))
            }
            _ => {
                let data = super::pass::TensorData::of(model, id)?;
                Ok(std::borrow::Cow::Owned(super::quantize_tensor(&data, scheme, progress)?))
            }
        }
    }

    /// The precision a tensor actually gets: non-float tensors are kept; in an INT8 layer only the main tensor
    /// (its `.weight`) is quantized and the others (biases…) stay in float, as in the compressed-tensors layout,
    /// and a 0-D or 1-D main tensor is quantized per tensor; FP16/BF16 apply to every float tensor of the layer.
    pub fn tensor(&self, model: &Model, id: TensorId) -> Precision {
        let tensor = model.tensor(id);
        if !tensor.is_analysable() {
            return Precision::Fp32;
        }
        match self.layer(tensor.layer) {
            precision if precision.has_codes() && model.main_tensor(tensor.layer) != Some(id) => Precision::Fp32,
            // 0-D and 1-D tensors have no output channels: per tensor is what they get.
            Precision::Int8(scheme) if tensor.shape.len() < 2 => {
                Precision::Int8(super::Int8Scheme { granularity: Granularity::PerTensor, ..scheme })
            }
            Precision::Fp8(scheme) if tensor.shape.len() < 2 => {
                Precision::Fp8(super::Fp8Scheme { granularity: Granularity::PerTensor, ..scheme })
            }
            // A block format the tensor cannot take (resolution refuses it; a plan built otherwise keeps it).
            precision if block_refusal(model, tensor.layer, precision).is_some() => Precision::Fp32,
            precision => precision,
        }
    }

    /// A recipe that reproduces this plan exactly: every layer listed, no rules, no defaults applied.
    pub fn to_recipe(&self, model: &Model) -> Recipe {
        let mut recipe = Recipe::everywhere(Precision::Fp32);
        recipe.keep_norms_and_vectors = false;
        recipe.layers = model.layers.iter().zip(&self.layers).map(|(l, p)| (l.name.clone(), *p)).collect();
        recipe.input_clips = model
            .layers
            .iter()
            .zip(&self.input_clips)
            .filter_map(|(l, clip)| clip.map(|c| (l.name.clone(), c)))
            .collect();
        recipe.gptq = self.gptq.as_ref().map(|g| GptqRecipe { data: g.data.clone(), options: g.options });
        recipe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_versioning() {
        let mut recipe = Recipe::uniform(Precision::Int8(Int8Scheme::default()));
        recipe.rules.push(Rule { pattern: "*norm*".into(), precision: Precision::Fp32 });
        recipe.layers.insert("fc1".into(), Precision::Fp16);
        let json = recipe.to_json();
        assert!(json.contains("\"pattern\": \"*norm*\""), "{json}");
        assert_eq!(Recipe::from_json(&json, Path::new("r.json")).unwrap(), recipe);
        let future = json.replace("\"version\": 1", "\"version\": 99");
        assert!(Recipe::from_json(&future, Path::new("r.json")).unwrap_err().to_string().contains("version 99"));
        let wrong = json.replace(RECIPE_FORMAT, "something-else");
        assert!(Recipe::from_json(&wrong, Path::new("r.json")).is_err());
        assert!(Recipe::from_json("{", Path::new("r.json")).is_err());
    }

    #[test]
    fn minimal_recipe_parses_with_defaults() {
        let recipe = Recipe::from_json(
            r#"{"version":1,"rules":[{"pattern":"*attention*","precision":"int8","granularity":"per_channel"}]}"#,
            Path::new("r.json"),
        )
        .unwrap();
        assert_eq!(recipe.default, Precision::Fp32);
        assert!(recipe.keep_norms_and_vectors);
        assert_eq!(recipe.rules[0].precision, Precision::Int8(Int8Scheme::default()));
    }
}
