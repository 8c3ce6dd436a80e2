//! Export of a planned model to where users deploy it, behind one [`Target`] type that the window, the worker and
//! the CLI pass through. Each target answers, before anything is written, what it does with every layer of a plan
//! (written as planned, kept, cast, or not expressible) and which of the runtimes it serves will load the result
//! ([`Target::check`], a [`Compatibility`]); [`export`] refuses a plan a runtime will not load unless forced.
//!
//! Targets: [`compressed_tensors`] (the folder llm-compressor writes; transformers and vLLM load it). See
//! `docs/EXPORT.md`.
//!
//! Every export is written into a temp folder beside the destination and renamed into place, so the destination
//! holds the earlier export or the new one, never a mix of both. The destination must be new, empty, or an earlier
//! quantstudio export; it may be neither the input model's folder nor inside it, and the input is never written.
//! Every file and folder of the input that is not a weight file is carried over (tokenizer, `modules.json`,
//! `1_Pooling/`, `README.md`, …), so the export loads like the original.

pub mod compressed_tensors;
pub mod transformers_model_types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::model::writer::{PlannedTensor, TensorFileWriter, write_atomically};

use crate::error::{Error, Result};
use crate::model::{DType, LayerId, Model, TensorId};
use crate::progress::Progress;
use crate::quant::{Plan, Precision};

/// Name of the weights file of an export that fits one shard.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded export.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the recipe written beside the weights.
pub const RECIPE_FILE: &str = "quantstudio-recipe.json";
/// Key of the recipe in the safetensors `__metadata__`.
pub const RECIPE_METADATA_KEY: &str = "quantstudio.recipe";
/// Largest shard `save_pretrained` writes by default (5 GB): bigger exports are split into shards of at most this
/// many bytes of tensor data (a single larger tensor gets a shard of its own).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Where an export goes: a file layout and the runtimes that load it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// A Hugging Face folder in the compressed-tensors layout, for transformers and vLLM.
    #[default]
    CompressedTensors,
}

impl Target {
    /// Every target, in menu order.
    pub const ALL: [Target; 1] = [Target::CompressedTensors];

    /// The runtimes a user deploys this target's files to.
    pub fn runtimes(self) -> &'static [Runtime] {
        match self {
            Target::CompressedTensors => &[Runtime::Transformers, Runtime::Vllm],
        }
    }

    /// What this target does with every layer of `plan`, and which runtimes will load it.
    pub fn check(self, model: &Model, plan: &Plan) -> Compatibility {
        match self {
            Target::CompressedTensors => compressed_tensors::check(model, plan),
        }
    }

    /// Bytes tensor `id` takes in this target's files under `plan` (all the tensors written for it).
    pub fn planned_bytes(self, model: &Model, plan: &Plan, id: TensorId) -> u64 {
        match self {
            Target::CompressedTensors => compressed_tensors::planned_bytes(model, plan, id),
        }
    }

    /// Writes the weights and the config of `plan` into `folder` (empty, created by [`export`]); returns the files
    /// written with their sizes.
    fn write(
        self,
        model: &Model,
        plan: &Plan,
        folder: &Path,
        options: &ExportOptions,
        progress: &Progress,
    ) -> Result<Vec<(String, u64)>> {
        match self {
            Target::CompressedTensors => compressed_tensors::write(model, plan, folder, options, progress),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::CompressedTensors => "compressed-tensors",
        })
    }
}

/// Bytes tensor `id` takes in the default target's files under `plan`.
pub fn planned_bytes(model: &Model, plan: &Plan, id: TensorId) -> u64 {
    Target::default().planned_bytes(model, plan, id)
}

/// Bytes of every tensor of `model` in the default target's files under `plan`.
pub fn planned_model_bytes(model: &Model, plan: &Plan) -> u64 {
    (0..model.tensors.len()).map(|i| planned_bytes(model, plan, TensorId(i))).sum()
}

/// A program that loads a target's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Hugging Face transformers with the compressed-tensors package.
    Transformers,
    /// vLLM.
    Vllm,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Transformers => "transformers",
            Runtime::Vllm => "vLLM",
        })
    }
}

/// What a target writes for one layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "treatment", content = "reason", rename_all = "snake_case")]
pub enum Treatment {
    /// Quantized as planned.
    AsPlanned,
    /// Kept as stored (planned FP32, or nothing the target quantizes).
    Kept,
    /// Cast to FP16 or BF16 as planned.
    Cast,
    /// The target has no way to write it; the export refuses the plan.
    NotExpressible(String),
}

/// A runtime that will not load one layer as planned.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Refusal {
    /// Who refuses.
    pub runtime: Runtime,
    /// Why, in a few words (from the loader's source or a test that ran it; `docs/EXPORT.md`).
    pub reason: String,
}

/// What a target does with one layer, and who refuses it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerCheck {
    /// The layer.
    pub layer: LayerId,
    /// What is written for it.
    #[serde(flatten)]
    pub treatment: Treatment,
    /// The runtimes that will not load it as planned.
    pub refusals: Vec<Refusal>,
    /// A precision that every runtime of the target loads for this layer, when the plan's does not (the one-click
    /// fix: e.g. an embedding table kept in FP16).
    pub fix: Option<Precision>,
}

impl LayerCheck {
    /// Whether the layer is written and loaded as planned everywhere.
    pub fn is_clean(&self) -> bool {
        self.refusals.is_empty() && !matches!(self.treatment, Treatment::NotExpressible(_))
    }
}

/// A target's verdict on a whole plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Compatibility {
    /// The target checked.
    pub target: Target,
    /// Why no runtime of the target can load this model at all, whatever the plan (e.g. a model.json graph has no
    /// architecture transformers knows).
    pub model_refusal: Option<String>,
    /// One entry per layer, in model order.
    pub layers: Vec<LayerCheck>,
}

impl Compatibility {
    /// Whether `runtime` loads the export of this plan.
    pub fn loads_in(&self, runtime: Runtime) -> bool {
        self.model_refusal.is_none()
            && self.layers.iter().all(|l| {
                !matches!(l.treatment, Treatment::NotExpressible(_)) && l.refusals.iter().all(|r| r.runtime != runtime)
            })
    }

    /// Whether every runtime of the target loads it and the target can write every layer.
    pub fn is_clean(&self) -> bool {
        self.model_refusal.is_none() && self.layers.iter().all(LayerCheck::is_clean)
    }

    /// Whether the target can write the plan at all (no layer is [`Treatment::NotExpressible`]).
    pub fn is_expressible(&self) -> bool {
        self.layers.iter().all(|l| !matches!(l.treatment, Treatment::NotExpressible(_)))
    }

    /// The check of one layer.
    pub fn layer(&self, id: LayerId) -> Option<&LayerCheck> {
        // One entry per layer in model order, so the index is the id; the check guards a foreign id.
        self.layers.get(id.0).filter(|l| l.layer == id)
    }

    /// Layers that some runtime refuses or the target cannot write.
    pub fn problem_layers(&self) -> Vec<LayerId> {
        self.layers.iter().filter(|l| !l.is_clean()).map(|l| l.layer).collect()
    }

    /// One phrase: `loads in transformers ✓, vLLM ✓`, or which runtime refuses how many layers.
    pub fn summary(&self) -> String {
        self.summary_marked(" ✓", " ✗")
    }

    /// [`Compatibility::summary`] with other marks after each runtime's name for "loads" and "refuses" (the
    /// window's font has no ✓ or ✗).
    pub fn summary_marked(&self, yes: &str, no: &str) -> String {
        format!("{}: loads in {}", self.target, self.verdicts(yes, no))
    }

    /// Each runtime with its mark: `transformers ✓, vLLM ✗ (3 layers)` (the marks follow the names as given).
    pub fn verdicts(&self, yes: &str, no: &str) -> String {
        let verdicts: Vec<String> = self
            .target
            .runtimes()
            .iter()
            .map(|&runtime| {
                if self.loads_in(runtime) {
                    format!("{runtime}{yes}")
                } else if self.model_refusal.is_some() {
                    format!("{runtime}{no}")
                } else {
                    let refused = self
                        .layers
                        .iter()
                        .filter(|l| {
                            matches!(l.treatment, Treatment::NotExpressible(_))
                                || l.refusals.iter().any(|r| r.runtime == runtime)
                        })
                        .count();
                    format!("{runtime}{no} ({refused} layer{})", if refused == 1 { "" } else { "s" })
                }
            })
            .collect();
        verdicts.join(", ")
    }

    /// One line per problem, layers with the same refusals grouped and named (the first few), each with its fix
    /// when all of them share one, e.g. `3 layers: transformers, vLLM will not load (… Linear modules only); fix:
    /// fp16: a, b, c`; otherwise each layer's fix follows its name.
    pub fn problems(&self, model: &Model) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(reason) = &self.model_refusal {
            lines.push(reason.clone());
        }
        let mut groups: BTreeMap<String, Vec<(&str, Option<Precision>)>> = BTreeMap::new();
        for check in self.layers.iter().filter(|l| !l.is_clean()) {
            let what = match &check.treatment {
                Treatment::NotExpressible(reason) => format!("{} cannot write {reason}", self.target),
                _ => {
                    let runtimes: Vec<String> = check.refusals.iter().map(|r| r.runtime.to_string()).collect();
                    let mut reasons: Vec<&str> = check.refusals.iter().map(|r| r.reason.as_str()).collect();
                    reasons.dedup();
                    format!("{} will not load ({})", runtimes.join(", "), reasons.join("; "))
                }
            };
            groups.entry(what).or_default().push((model.layer(check.layer).name.as_str(), check.fix));
        }
        for (mut what, names) in groups {
            const SHOWN: usize = 4;
            let shared_fix = names.windows(2).all(|w| w[0].1 == w[1].1);
            if shared_fix && let Some(fix) = names[0].1 {
                what.push_str(&format!("; fix: {}", fix.label()));
            }
            let more = names.len().saturating_sub(SHOWN);
            let listed = names
                .iter()
                .take(SHOWN)
                .map(|(name, fix)| match fix {
                    Some(fix) if !shared_fix => format!("{name} (fix: {})", fix.label()),
                    _ => (*name).to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
            let count = names.len();
            lines.push(format!("{count} layer{}: {what}: {listed}{tail}", if count == 1 { "" } else { "s" }));
        }
        lines
    }

    /// Sets every layer that has a fix to it; returns how many layers changed.
    pub fn apply_fixes(&self, plan: &mut Plan) -> usize {
        let mut changed = 0;
        for check in &self.layers {
            if let Some(fix) = check.fix
                && let Some(slot) = plan.layers.get_mut(check.layer.0)
                && *slot != fix
            {
                *slot = fix;
                changed += 1;
            }
        }
        changed
    }
}

/// How an export is made.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Where it goes.
    pub target: Target,
    /// Write the plan even when a runtime of the target will not load it (never when the target cannot write it).
    pub force: bool,
    /// Largest shard, in bytes of tensor data ([`DEFAULT_MAX_SHARD_BYTES`]).
    pub max_shard_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { target: Target::default(), force: false, max_shard_bytes: DEFAULT_MAX_SHARD_BYTES }
    }
}

/// What an export produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    /// The destination folder.
    pub folder: PathBuf,
    /// The target written.
    pub target: Target,
    /// Total bytes of the files written.
    pub size_bytes: u64,
    /// Files written, relative to the folder, in order (weights and config first, then the recipe and the files
    /// carried over from the input).
    pub files: Vec<String>,
    /// What a runtime will refuse in this export (when forced), and input files not carried over.
    pub warnings: Vec<String>,
    /// The target's verdict on the plan exported.
    pub compatibility: Compatibility,
}

/// Writes the planned model into `dest` for `options.target`: the target's weights and config, the recipe that
/// reproduces the plan, and every non-weight file of the input folder. Refuses a plan with uncalibrated W8A8
/// layers, one the target cannot write, and (unless `options.force`) one a runtime of the target will not load.
pub fn export(
    model: &Model,
    plan: &Plan,
    dest: &Path,
    options: &ExportOptions,
    progress: &Progress,
) -> Result<ExportSummary> {
    plan.check_calibrated(model)?;
    let compatibility = options.target.check(model, plan);
    if !compatibility.is_expressible() || (!options.force && !compatibility.is_clean()) {
        return Err(Error::ExportRefused {
            target: options.target.to_string(),
            problems: compatibility.problems(model),
            forceable: compatibility.is_expressible(),
            path: dest.to_owned(),
        });
    }
    let dest = prepare_destination(model, dest)?;
    let staging = StagingFolder::create(&dest)?;
    let mut files = options.target.write(model, plan, staging.path(), options, progress)?;
    let recipe_json = plan.to_recipe(model).to_json() + "\n";
    write_atomically(&staging.path().join(RECIPE_FILE), recipe_json.as_bytes())?;
    files.push((RECIPE_FILE.to_owned(), recipe_json.len() as u64));
    let mut warnings: Vec<String> = if compatibility.is_clean() { Vec::new() } else { compatibility.problems(model) };
    let carried = carry_over(model, staging.path(), progress)?;
    files.extend(carried.copied);
    warnings.extend(carried.skipped.iter().map(|s| format!("not carried over (a weight file of another format): {s}")));
    staging.commit(&dest)?;
    Ok(ExportSummary {
        folder: dest,
        target: options.target,
        size_bytes: files.iter().map(|(_, size)| size).sum(),
        files: files.into_iter().map(|(name, _)| name).collect(),
        warnings,
        compatibility,
    })
}

/// Whether `dest` holds an earlier quantstudio export (its recipe file).
fn is_earlier_export(dest: &Path) -> bool {
    dest.join(RECIPE_FILE).is_file()
}

/// Checks that `dest` can receive an export without touching the input model or unrelated files, and returns it
/// canonical (its parent must exist or be creatable).
fn prepare_destination(model: &Model, dest: &Path) -> Result<PathBuf> {
    let bad = |reason: &str| Error::BadDestination { reason: reason.into(), path: dest.to_owned() };
    if dest.exists() && !dest.is_dir() {
        return Err(bad("it is a file, not a folder"));
    }
    if dest.is_dir() {
        let empty = std::fs::read_dir(dest).map_err(|e| Error::io("cannot read", dest, e))?.next().is_none();
        if !empty && !is_earlier_export(dest) {
            return Err(bad("it is a folder that is neither empty nor an earlier quantstudio export"));
        }
    }
    let name = dest.file_name().ok_or_else(|| bad("it has no folder name"))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("cannot create folder", &parent, e))?;
    let dest = parent.canonicalize().map_err(|e| Error::io("cannot resolve", &parent, e))?.join(name);
    let input_folder = crate::runtime::model_folder(model);
    let input_folder = input_folder.canonicalize().unwrap_or(input_folder);
    if dest.starts_with(&input_folder) {
        return Err(bad("it is the input model's folder or inside it"));
    }
    for source in model.source_files().iter().filter_map(|f| f.canonicalize().ok()) {
        if source.starts_with(&dest) {
            return Err(bad("it holds the input model"));
        }
    }
    Ok(dest)
}

/// A hidden folder beside the destination that receives the export, renamed into place by
/// [`StagingFolder::commit`]; removed when dropped uncommitted.
struct StagingFolder {
    path: PathBuf,
    committed: bool,
}

impl StagingFolder {
    fn create(dest: &Path) -> Result<StagingFolder> {
        let path = sibling(dest, "tmp");
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| Error::io("cannot create folder", &path, e))?;
        Ok(StagingFolder { path, committed: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished export to `dest`: an earlier export there is first renamed aside and removed after.
    fn commit(mut self, dest: &Path) -> Result<()> {
        let old = sibling(dest, "old");
        if dest.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove", &old, e))?;
            }
            std::fs::rename(dest, &old).map_err(|e| Error::io("cannot move aside", dest, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, dest) {
            // Put the earlier export back: the destination stays as it was.
            let _ = std::fs::rename(&old, dest);
            return Err(Error::io("cannot rename into place", dest, e));
        }
        self.committed = true;
        if old.exists() {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `.NAME.quantstudio-KIND-PID` beside `dest`.
fn sibling(dest: &Path, kind: &str) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.quantstudio-{kind}-{}", std::process::id()))
}

/// Extensions of weight files in formats other than the one opened (another export of the same weights).
const OTHER_WEIGHT_EXTENSIONS: [&str; 12] =
    ["bin", "pt", "pth", "ckpt", "h5", "msgpack", "onnx", "onnx_data", "gguf", "tflite", "ot", "mlmodel"];

/// Files carried over from the input folder.
struct CarriedOver {
    /// Relative paths with sizes.
    copied: Vec<(String, u64)>,
    /// Relative paths left out.
    skipped: Vec<String>,
}

/// Copies every file and folder of the input model's folder into `out`, except the weight files opened, the shard
/// index, `config.json` and the recipe (written anew), hidden entries, and weight files of other formats (a
/// subfolder holding one, such as `onnx/` or `openvino/`, is another export of the weights and is left out whole).
fn carry_over(model: &Model, out: &Path, progress: &Progress) -> Result<CarriedOver> {
    let mut carried = CarriedOver { copied: Vec::new(), skipped: Vec::new() };
    if !model.path.is_dir() {
        return Ok(carried);
    }
    let sources: Vec<PathBuf> = model.source_files().iter().filter_map(|f| f.canonicalize().ok()).collect();
    copy_tree(&model.path, out, "", &sources, &mut carried, progress)?;
    Ok(carried)
}

fn is_other_weight_file(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    OTHER_WEIGHT_EXTENSIONS.contains(&ext.as_str())
}

/// Whether a folder holds a weight file of another format anywhere below it.
fn holds_other_weights(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .any(|p| if p.is_dir() { holds_other_weights(&p) } else { is_other_weight_file(&p) })
}

fn copy_tree(
    from: &Path,
    to: &Path,
    prefix: &str,
    sources: &[PathBuf],
    carried: &mut CarriedOver,
    progress: &Progress,
) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(|e| Error::io("cannot read", from, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        progress.check()?;
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let relative = format!("{prefix}{name}");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if holds_other_weights(&path) {
                carried.skipped.push(format!("{relative}/"));
                continue;
            }
            let target = to.join(&name);
            std::fs::create_dir_all(&target).map_err(|e| Error::io("cannot create folder", &target, e))?;
            copy_tree(&path, &target, &format!("{relative}/"), sources, carried, progress)?;
            continue;
        }
        let top_level = prefix.is_empty();
        let rewritten = top_level && (name == "config.json" || name == RECIPE_FILE || name == INDEX_FILE);
        let is_source = path.canonicalize().is_ok_and(|p| sources.contains(&p));
        if rewritten || is_source || (top_level && name.ends_with(".safetensors.index.json")) {
            continue;
        }
        if is_other_weight_file(&path) {
            carried.skipped.push(relative);
            continue;
        }
        let target = to.join(&name);
        let size = std::fs::copy(&path, &target).map_err(|e| Error::io("cannot copy", &path, e))?;
        carried.copied.push((relative, size));
    }
    Ok(())
}

/// The layer a tensor's quantization parameters belong to, for messages.
pub(crate) fn layer_name(model: &Model, id: TensorId) -> &str {
    &model.layer(model.tensor(id).layer).name
}

/// The stored dtype a float fix keeps: BF16 tables stay BF16, everything else becomes FP16.
pub(crate) fn float_fix(model: &Model, id: TensorId) -> Precision {
    if model.tensor(id).dtype == DType::BF16 { Precision::Bf16 } else { Precision::Fp16 }
}
