//! Export of a planned model to where users deploy it, behind one [`Target`] type that the window, the worker and
//! the CLI pass through. Each target answers, before anything is written, what it does with every layer of a plan
//! (written as planned, kept, cast, or not expressible) and which of the runtimes it serves will load the result
//! ([`Target::check`], a [`Compatibility`]); [`export`] refuses a plan a runtime will not load unless forced.
//!
//! Targets: [`compressed_tensors`] (the folder llm-compressor writes; transformers and vLLM load it) and [`gguf`]
//! (one `.gguf` file that llama.cpp loads, for Llama-family models). See `docs/EXPORT.md`.
//!
//! A GGUF export is one file: written beside the destination under a temp name and renamed into place; the
//! destination may not be inside the input model's folder, and an existing file is replaced only when it is an
//! earlier quantstudio GGUF export (its header holds the recipe) or with [`ExportOptions::overwrite`].
//!
//! Every export is written into a temp folder beside the destination and renamed into place, so the destination
//! holds the earlier export or the new one, never a mix of both; what a crashed export leaves beside it is recovered
//! or removed by the next export there. The destination must be new, empty, or an earlier quantstudio export (or be
//! replaced with [`ExportOptions::overwrite`]); it may be neither the input model's folder nor inside it, and the
//! input is never written.
//! Every file and folder of the input that is not a weight file is carried over (tokenizer, `modules.json`,
//! `1_Pooling/`, `README.md`, …), so the export loads like the original.

pub mod compressed_tensors;
pub mod gguf;
pub mod gguf_vocab;
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
    /// One GGUF file, for llama.cpp (Llama-family models).
    Gguf,
}

impl Target {
    /// Every target, in menu order.
    pub const ALL: [Target; 2] = [Target::CompressedTensors, Target::Gguf];

    /// The runtimes a user deploys this target's files to.
    pub fn runtimes(self) -> &'static [Runtime] {
        match self {
            Target::CompressedTensors => &[Runtime::Transformers, Runtime::Vllm],
            Target::Gguf => &[Runtime::LlamaCpp],
        }
    }

    /// Whether the export is one file (named by the destination) rather than a folder.
    pub fn is_single_file(self) -> bool {
        self == Target::Gguf
    }

    /// The file extension of a single-file target's destination (`gguf`).
    pub fn file_extension(self) -> Option<&'static str> {
        match self {
            Target::CompressedTensors => None,
            Target::Gguf => Some("gguf"),
        }
    }

    /// What this target does with every layer of `plan`, and which runtimes will load it.
    pub fn check(self, model: &Model, plan: &Plan) -> Compatibility {
        match self {
            Target::CompressedTensors => compressed_tensors::check(model, plan),
            Target::Gguf => gguf::check(model, plan),
        }
    }

    /// Bytes tensor `id` takes in this target's files under `plan` (all the tensors written for it).
    pub fn planned_bytes(self, model: &Model, plan: &Plan, id: TensorId) -> u64 {
        match self {
            Target::CompressedTensors => compressed_tensors::planned_bytes(model, plan, id),
            Target::Gguf => gguf::planned_bytes(model, plan, id),
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
            Target::Gguf => {
                let name = "model.gguf";
                Ok(vec![(name.to_owned(), gguf::write(model, plan, &folder.join(name), progress)?)])
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::CompressedTensors => "compressed-tensors",
            Target::Gguf => "gguf",
        })
    }
}

/// Bytes tensor `id` takes in the default target's files under `plan`; a tensor in one of llama.cpp's block
/// formats counts its blocks (18 bytes per 32 values for Q4_0: what a GGUF file holds), whatever the target.
pub fn planned_bytes(model: &Model, plan: &Plan, id: TensorId) -> u64 {
    if let Some(format) = plan.tensor(model, id).block_format() {
        return format.tensor_bytes(model.tensor(id).numel()) as u64;
    }
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
    /// llama.cpp (llama-cli, llama-server, llama-perplexity, and the libraries built on it).
    LlamaCpp,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Transformers => "transformers",
            Runtime::Vllm => "vLLM",
            Runtime::LlamaCpp => "llama.cpp",
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
    /// Replace a destination folder that holds something other than an earlier quantstudio export (its files are
    /// removed); without it such a folder is refused.
    pub overwrite: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            target: Target::default(),
            force: false,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            overwrite: false,
        }
    }
}

/// What an export produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    /// The destination: a folder, or the file of a single-file target.
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
    if options.target.is_single_file() {
        return export_file(model, plan, dest, options, compatibility, progress);
    }
    let dest = prepare_destination(model, dest, options.overwrite)?;
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

/// Writes a single-file target's export at `dest` (already checked against the plan).
fn export_file(
    model: &Model,
    plan: &Plan,
    dest: &Path,
    options: &ExportOptions,
    compatibility: Compatibility,
    progress: &Progress,
) -> Result<ExportSummary> {
    let dest = prepare_file_destination(model, dest, options.overwrite)?;
    let size_bytes = match options.target {
        Target::Gguf => gguf::write(model, plan, &dest, progress)?,
        Target::CompressedTensors => {
            return Err(Error::BadDestination { reason: "this target writes a folder".into(), path: dest });
        }
    };
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let warnings = if compatibility.is_clean() { Vec::new() } else { compatibility.problems(model) };
    Ok(ExportSummary { folder: dest, target: options.target, size_bytes, files: vec![name], warnings, compatibility })
}

/// Checks that the file `dest` can receive a single-file export: not inside the input model's folder, not a
/// folder, and new, an earlier quantstudio GGUF export, or replaced with `overwrite`. Returns it resolved; a temp
/// file an earlier crashed export left beside it is removed.
fn prepare_file_destination(model: &Model, dest: &Path, overwrite: bool) -> Result<PathBuf> {
    let bad = |reason: String| Error::BadDestination { reason, path: dest.to_owned() };
    let resolved = resolve(dest)?;
    let Some(parent) = resolved.parent().filter(|_| resolved.file_name().is_some()).map(Path::to_owned) else {
        return Err(bad("it has no file name".into()));
    };
    let input_folder = crate::runtime::model_folder(model);
    let input_folder = input_folder.canonicalize().map_err(|e| Error::io("cannot resolve", &input_folder, e))?;
    if resolved.starts_with(&input_folder) {
        return Err(bad(format!("it is inside the input model's folder {}", input_folder.display())));
    }
    if resolved.is_dir() {
        return Err(bad("it is a folder; a GGUF export is one file (e.g. model.gguf)".into()));
    }
    if resolved.exists()
        && !overwrite
        && gguf::read_header(&resolved).ok().and_then(|h| h.get(gguf::RECIPE_KEY).cloned()).is_none()
    {
        return Err(bad("it is a file that is not an earlier quantstudio export; --overwrite replaces it".into()));
    }
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("cannot create folder", &parent, e))?;
    remove_stale_temp_files(&resolved)?;
    Ok(resolved)
}

/// Removes the temp files (`.NAME.tmp-PID`, [`crate::model::writer::temp_path_for`]) that exports to the file
/// `dest` left when their process died mid-way; those of a running process are left alone.
fn remove_stale_temp_files(dest: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else { return Ok(()) };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    for entry in std::fs::read_dir(parent).map_err(|e| Error::io("cannot read", parent, e))? {
        let entry = entry.map_err(|e| Error::io("cannot read", parent, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !is_running_elsewhere(pid) && entry.path().is_file() {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
        }
    }
    Ok(())
}

/// Whether `dest` holds an earlier quantstudio export (its recipe file).
fn is_earlier_export(dest: &Path) -> bool {
    dest.join(RECIPE_FILE).is_file()
}

/// Checks that `dest` can receive an export without touching the input model or unrelated files, and returns it
/// canonical (its parent must exist or be creatable; a symlink is followed to the folder it names). Folders left
/// beside `dest` by an export that crashed are recovered or removed first ([`recover_destination`]).
fn prepare_destination(model: &Model, dest: &Path, overwrite: bool) -> Result<PathBuf> {
    let bad = |reason: String| Error::BadDestination { reason, path: dest.to_owned() };
    let dest = resolve(dest)?;
    let parent = match (dest.parent(), dest.file_name()) {
        (Some(parent), Some(_)) => parent.to_owned(),
        _ => return Err(bad("it has no folder name".into())),
    };
    let input_folder = crate::runtime::model_folder(model);
    let input_folder = input_folder.canonicalize().map_err(|e| Error::io("cannot resolve", &input_folder, e))?;
    if dest.starts_with(&input_folder) {
        return Err(bad(format!("it is the input model's folder or inside it, input {}", input_folder.display())));
    }
    for source in model.source_files().iter().filter_map(|f| f.canonicalize().ok()) {
        if source.starts_with(&dest) {
            return Err(bad(format!("it holds the input model {}", source.display())));
        }
    }
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("cannot create folder", &parent, e))?;
    recover_destination(&dest)?;
    if dest.exists() && !dest.is_dir() {
        return Err(bad("it is a file, not a folder".into()));
    }
    if dest.is_dir() && !overwrite {
        let empty = std::fs::read_dir(&dest).map_err(|e| Error::io("cannot read", &dest, e))?.next().is_none();
        if !empty && !is_earlier_export(&dest) {
            return Err(bad(
                "it is a folder that is neither empty nor an earlier quantstudio export; --overwrite replaces it"
                    .into(),
            ));
        }
    }
    Ok(dest)
}

/// `path` made absolute with every symlink resolved, though its last components may not exist yet: the longest
/// existing ancestor is canonicalised and the rest appended (no folder is created, so a refused destination leaves
/// nothing behind).
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map_err(|e| Error::io("cannot resolve", path, e))?.join(path)
    };
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    while existing.symlink_metadata().is_err() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().map_err(|e| Error::io("cannot resolve", existing, e))?;
    for name in missing.iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

/// What a hidden folder beside a destination is: `.NAME.quantstudio-KIND-PID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SiblingKind {
    /// A staging folder: an export being written, or (after a swap) the earlier export about to be removed.
    Staging,
    /// An earlier export set aside while the new one is renamed into place (platforms without an atomic swap).
    SetAside,
}

impl SiblingKind {
    fn tag(self) -> &'static str {
        match self {
            SiblingKind::Staging => "tmp",
            SiblingKind::SetAside => "old",
        }
    }
}

/// `.NAME.quantstudio-KIND-PID` beside `dest`.
fn sibling(dest: &Path, kind: SiblingKind, pid: u32) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.quantstudio-{}-{pid}", kind.tag()))
}

/// The folders beside `dest` that exports to `dest` left, with their kind and process id.
fn siblings_of(dest: &Path) -> Result<Vec<(PathBuf, SiblingKind, u32)>> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else { return Ok(Vec::new()) };
    let prefix = format!(".{}.quantstudio-", name.to_string_lossy());
    let mut found = Vec::new();
    for entry in std::fs::read_dir(parent).map_err(|e| Error::io("cannot read", parent, e))? {
        let entry = entry.map_err(|e| Error::io("cannot read", parent, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else { continue };
        let Some((tag, pid)) = rest.split_once('-') else { continue };
        let kind = match tag {
            "tmp" => SiblingKind::Staging,
            "old" => SiblingKind::SetAside,
            _ => continue,
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        found.push((entry.path(), kind, pid));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Whether process `pid` is still running (another export may be writing its staging folder). Without a way to
/// tell (no `/proc`), every other process is taken for dead, so its folders are cleaned.
fn is_running_elsewhere(pid: u32) -> bool {
    if pid == std::process::id() {
        // Exports of this process to one destination run one at a time: its own folders are left overs.
        return false;
    }
    cfg!(target_os = "linux") && Path::new("/proc").join(pid.to_string()).exists()
}

/// Finishes or undoes what a crashed export to `dest` left: an earlier export set aside while `dest` is missing
/// (a crash between the two renames of [`StagingFolder::commit`]'s fallback) is renamed back; every other staging
/// or set-aside folder of a process that is no longer running is removed.
fn recover_destination(dest: &Path) -> Result<()> {
    for (path, kind, pid) in siblings_of(dest)? {
        if is_running_elsewhere(pid) {
            continue;
        }
        if kind == SiblingKind::SetAside && dest.symlink_metadata().is_err() {
            std::fs::rename(&path, dest).map_err(|e| Error::io("cannot restore", &path, e))?;
            continue;
        }
        std::fs::remove_dir_all(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
    }
    Ok(())
}

/// A hidden folder beside the destination that receives the export, swapped into place by
/// [`StagingFolder::commit`]; removed when dropped uncommitted.
struct StagingFolder {
    path: PathBuf,
    committed: bool,
}

impl StagingFolder {
    fn create(dest: &Path) -> Result<StagingFolder> {
        let path = sibling(dest, SiblingKind::Staging, std::process::id());
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| Error::io("cannot create folder", &path, e))?;
        Ok(StagingFolder { path, committed: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the finished export durable and moves it to `dest`. An earlier export there is swapped out in one
    /// atomic exchange where the file system has one (Linux), else renamed aside first; either way it is removed
    /// after. See `docs/EXPORT.md` for what a crash at each step leaves.
    fn commit(mut self, dest: &Path) -> Result<()> {
        sync_tree(&self.path)?;
        if dest.symlink_metadata().is_ok() && exchange(&self.path, dest)? {
            // The staging name now holds the earlier export.
            self.committed = true;
            sync_parent(dest)?;
            std::fs::remove_dir_all(&self.path).map_err(|e| Error::io("cannot remove", &self.path, e))?;
            return Ok(());
        }
        let old = sibling(dest, SiblingKind::SetAside, std::process::id());
        let set_aside = dest.symlink_metadata().is_ok();
        if set_aside {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove", &old, e))?;
            }
            std::fs::rename(dest, &old).map_err(|e| Error::io("cannot move aside", dest, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, dest) {
            // Put the earlier export back: the destination stays as it was.
            if set_aside {
                let _ = std::fs::rename(&old, dest);
            }
            return Err(Error::io("cannot rename into place", dest, e));
        }
        self.committed = true;
        sync_parent(dest)?;
        if set_aside {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove", &old, e))?;
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

/// Swaps the folders `a` and `b` in one atomic step; `Ok(false)` when the file system cannot (then nothing moved).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::BadDestination { reason: "its path holds a NUL byte".into(), path: p.to_owned() })
    };
    let (ca, cb) = (c_path(a)?, c_path(b)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; renameat2 reads them only.
    let status =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if status == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        // Not supported by this kernel or file system: fall back to two renames.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(Error::io("cannot swap into place", b, error)),
    }
}

/// Swaps the folders `a` and `b` in one atomic step; `Ok(false)` when the platform cannot (then nothing moved).
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

/// Flushes every file and folder under `dir` to disk, so that a power cut after the rename cannot leave the new
/// folder with empty or short files.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("cannot read", dir, e))? {
        let path = entry.map_err(|e| Error::io("cannot read", dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// `fsync` of one file or folder (folders only where the platform allows opening them).
fn sync_path(path: &Path) -> Result<()> {
    if cfg!(windows) && path.is_dir() {
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    file.sync_all().map_err(|e| Error::io("cannot sync", path, e))
}

/// `fsync` of the folder holding `path`, which makes a rename inside it durable.
fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_path(parent),
        _ => Ok(()),
    }
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
