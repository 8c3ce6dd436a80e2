//! The one error type of the core, and its `Result` alias.
//!
//! Messages are lowercase, name the failure first and the path last, and fit on one line, so the CLI can print
//! them as they are and the window can show them in its status bar.
//!
//! Every error about a file names it. A few are raised where only the parsed contents are at hand (a recipe
//! resolved against a model, data checked against a network, a `config.json` field read from its parsed object);
//! they carry an empty or bare-name path that the layer which knows the file completes with
//! [`Error::in_recipe_file`], [`Error::in_data_file`] or [`Error::in_folder`].

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user (or the worker on their behalf) cancelled the job.
    #[error("cancelled")]
    Cancelled,

    /// An operating-system error while reading or writing a file.
    #[error("{action}: {source}: {}", path.display())]
    Io {
        /// What was being done ("cannot open", "cannot write", …).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
        /// The file concerned.
        path: PathBuf,
    },

    /// A path that is neither a `.safetensors` file nor a folder holding one.
    #[error("not a safetensors file or model folder: {}", path.display())]
    NotAModel {
        /// The path given.
        path: PathBuf,
    },

    /// A file of zero bytes.
    #[error("empty file: {}", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },

    /// A file shorter than the 8-byte header length prefix.
    #[error("file too short ({len_bytes} bytes) to be safetensors: {}", path.display())]
    FileTooShort {
        /// Its length.
        len_bytes: u64,
        /// The file.
        path: PathBuf,
    },

    /// The header length prefix points beyond the end of the file or is absurdly large.
    #[error("header length {header_bytes} does not fit in the file ({file_bytes} bytes): {}", path.display())]
    HeaderLength {
        /// The length the prefix announces.
        header_bytes: u64,
        /// The file length.
        file_bytes: u64,
        /// The file.
        path: PathBuf,
    },

    /// The header is not UTF-8.
    #[error("header is not utf-8: {}", path.display())]
    HeaderNotUtf8 {
        /// The file.
        path: PathBuf,
    },

    /// The header is not the JSON object safetensors expects.
    #[error("header is not valid safetensors json ({reason}): {}", path.display())]
    HeaderNotJson {
        /// What the parser said.
        reason: String,
        /// The file.
        path: PathBuf,
    },

    /// Two tensors with the same name (in one header, or across shards).
    #[error("duplicate tensor name {name:?}: {}", path.display())]
    DuplicateTensor {
        /// The repeated name.
        name: String,
        /// The file where it appears the second time.
        path: PathBuf,
    },

    /// A dtype string this tool does not know.
    #[error("tensor {name:?} has unsupported dtype {dtype:?}: {}", path.display())]
    UnsupportedDtype {
        /// The tensor.
        name: String,
        /// The dtype as written in the header.
        dtype: String,
        /// The file.
        path: PathBuf,
    },

    /// The byte length of a tensor does not match its shape and dtype.
    #[error("tensor {name:?} has {actual_bytes} bytes but shape {shape:?} of {dtype} needs {expected_bytes}: {}", path.display())]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its dtype.
        dtype: String,
        /// Bytes the shape implies.
        expected_bytes: u64,
        /// Bytes the offsets give.
        actual_bytes: u64,
        /// The file.
        path: PathBuf,
    },

    /// Data offsets that are reversed, out of range, overlapping or leave gaps.
    #[error("tensor {name:?}: {problem}: {}", path.display())]
    BadOffsets {
        /// The tensor.
        name: String,
        /// What is wrong, in words.
        problem: String,
        /// The file.
        path: PathBuf,
    },

    /// A model folder without weights.
    #[error("no model.safetensors, shard index or .safetensors file in folder: {}", path.display())]
    NoWeights {
        /// The folder.
        path: PathBuf,
    },

    /// A shard index that is malformed or names files that are missing.
    #[error("shard index: {problem}: {}", path.display())]
    BadShardIndex {
        /// What is wrong.
        problem: String,
        /// The index file.
        path: PathBuf,
    },

    /// A `config.json` that is not a JSON object.
    #[error("config.json is not a json object ({reason}): {}", path.display())]
    BadConfig {
        /// What the parser said.
        reason: String,
        /// The file.
        path: PathBuf,
    },

    /// A recipe file that cannot be read as a recipe.
    #[error("recipe is not valid ({reason}): {}", path.display())]
    BadRecipe {
        /// What is wrong.
        reason: String,
        /// The file (or `<recipe>` when it did not come from a file).
        path: PathBuf,
    },

    /// A recipe naming layers the model does not have.
    #[error("recipe names {} layer(s) the model lacks: {}{}", names.len(), names.join(", "), at(path))]
    RecipeUnknownLayers {
        /// The names that do not match, sorted.
        names: Vec<String>,
        /// The recipe file (empty until [`Error::in_recipe_file`] names it).
        path: PathBuf,
    },

    /// W8A8 layers whose input range has not been calibrated.
    #[error(
        "{} W8A8 layer(s) have no calibrated input range (run calibrate first; layers it does not observe, such as \
         embeddings, can only be weight-only): {}{}",
        names.len(),
        names.join(", "),
        at(path)
    )]
    Uncalibrated {
        /// The layers, in model order.
        names: Vec<String>,
        /// The recipe file the plan came from (empty until [`Error::in_recipe_file`] names it).
        path: PathBuf,
    },

    /// An invalid glob in a recipe rule.
    #[error("recipe rule {rule} pattern {pattern:?} is not a valid glob: {reason}{}", at(path))]
    BadPattern {
        /// The rule's index in `rules`, from 0.
        rule: usize,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: String,
        /// The recipe file (empty until [`Error::in_recipe_file`] names it).
        path: PathBuf,
    },

    /// A GGUF file whose header cannot be read.
    #[error("bad GGUF file ({problem}): {}", path.display())]
    BadGguf {
        /// What is wrong.
        problem: String,
        /// The file.
        path: PathBuf,
    },

    /// An export destination that would overwrite the input model or is otherwise unusable.
    #[error("cannot export there ({reason}): {}", path.display())]
    BadDestination {
        /// Why.
        reason: String,
        /// The destination.
        path: PathBuf,
    },

    /// A plan an export target cannot write, or (unless forced) that a runtime it serves will not load.
    #[error(
        "{target} export refused: {}; {}: {}",
        problems.join("; "),
        if *forceable { "change the plan (or export anyway with --force)" } else { "change the plan" },
        path.display()
    )]
    ExportRefused {
        /// The target (`compressed-tensors`, …).
        target: String,
        /// One line per problem, naming the layers and the fix.
        problems: Vec<String>,
        /// Whether forcing would write it (the runtimes refuse it, but the target can express it).
        forceable: bool,
        /// The destination.
        path: PathBuf,
    },

    /// A model folder without `config.json`: its architecture is unknown, so it cannot run (weight-only mode).
    #[error("no config.json beside the weights, so the architecture is unknown: weight-only mode: {}", path.display())]
    NoConfig {
        /// The model path.
        path: PathBuf,
    },

    /// A `config.json` that names no `model_type` (weight-only mode).
    #[error("config.json names no model_type: weight-only mode: {}", path.display())]
    NoModelType {
        /// The model path.
        path: PathBuf,
    },

    /// A `model_type` the runtime has no forward pass for (weight-only mode).
    #[error(
        "model_type {model_type:?} has no forward pass here (bert, llama and model.json graphs run): weight-only mode: {}",
        path.display()
    )]
    UnsupportedArchitecture {
        /// The `model_type` of `config.json`.
        model_type: String,
        /// The model path.
        path: PathBuf,
    },

    /// A field of `config.json` or a `model.json` graph the runtime cannot use, or a piece its architecture lacks.
    #[error("{reason}: {}", path.display())]
    BadArchitecture {
        /// What is wrong, naming the field (and the op of a graph).
        reason: String,
        /// The file: `config.json` or the graph file it names (a bare name until [`Error::in_folder`] completes it).
        path: PathBuf,
    },

    /// A file a model folder's `config.json` names that resolves (symlinks followed) outside the folder.
    #[error("config.json field {field:?} resolves to {}, outside the model folder: {}", resolved.display(), path.display())]
    OutsideModelFolder {
        /// The field (`graph`).
        field: &'static str,
        /// Where the name leads, symlinks resolved.
        resolved: PathBuf,
        /// The `config.json`.
        path: PathBuf,
    },

    /// A tensor the architecture needs that the checkpoint lacks.
    #[error("the model has no tensor {name:?}, which its architecture needs: {}", path.display())]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// The model (file or folder).
        path: PathBuf,
    },

    /// A tensor whose stored shape is not the one the architecture expects.
    #[error("tensor {name:?} has shape {stored:?}, the architecture expects {expected:?}: {}", path.display())]
    TensorShape {
        /// The tensor name.
        name: String,
        /// Its shape in the file.
        stored: Vec<usize>,
        /// The shape the architecture needs.
        expected: Vec<usize>,
        /// The safetensors file holding it.
        path: PathBuf,
    },

    /// A tensor that is not floating point where values are analysed or quantized.
    #[error("tensor {name:?} is {dtype}: only float tensors are analysed and quantized: {}", path.display())]
    NotFloat {
        /// The tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// The safetensors file holding it.
        path: PathBuf,
    },

    /// An evaluation or calibration data file that cannot be read as data.
    #[error("{problem}: {}", path.display())]
    BadData {
        /// What is wrong.
        problem: String,
        /// The data file.
        path: PathBuf,
    },

    /// Perplexity asked of a model that does not predict the next token.
    #[error("perplexity needs a Llama decoder; this model runs as {family}")]
    PerplexityNeedsDecoder {
        /// The family the model runs as ("graph", "bert").
        family: &'static str,
    },

    /// A perplexity text too short for one context window's worth of chunks (llama-perplexity's rule: 2 × ctx).
    #[error("the text tokenises to {tokens} tokens; perplexity with a context of {ctx_tokens} needs at least {needed}: {}", path.display())]
    TooFewTokens {
        /// Tokens of the text.
        tokens: usize,
        /// The context length asked for.
        ctx_tokens: usize,
        /// Tokens needed.
        needed: usize,
        /// The text file.
        path: PathBuf,
    },

    /// A token sequence the model cannot take (ids out of the vocabulary, too long, lengths that differ, …).
    #[error("input sequence: {reason}{}", at(path))]
    BadSequence {
        /// What is wrong (and which sample, from 0, when the data holds several).
        reason: String,
        /// The data file (empty until [`Error::in_data_file`] names it).
        path: PathBuf,
    },

    #[error(
        "nothing to compare: the {samples} sample(s) of the data have no unmasked position (all-zero attention mask?){}",
        at(path)
    )]
    /// Every position of the evaluation data is masked, so no output was compared.
    NothingCompared {
        /// Samples in the data.
        samples: usize,
        /// The data file (empty until [`Error::in_data_file`] names it).
        path: PathBuf,
    },
    #[error(
        "the FP32 model's outputs are not finite ({count} NaN or infinite values; the plan's: {plan_count}): the model is broken (a negative norm epsilon?), nothing was compared"
    )]
    /// The FP32 reference produced NaN or infinite outputs.
    NonFiniteReference {
        /// Non-finite FP32 output values.
        count: usize,
        /// Non-finite planned output values.
        plan_count: usize,
    },

    /// Samples whose shape is not the model's input shape.
    #[error("the data's samples are {data_shape:?}, the model takes {model_shape:?}{}", at(path))]
    DataShape {
        /// The shape of one sample of the data.
        data_shape: Vec<usize>,
        /// The shape the model takes.
        model_shape: Vec<usize>,
        /// The data file (empty until [`Error::in_data_file`] names it).
        path: PathBuf,
    },

    /// Data of the other kind: samples for a token model, or token sequences for a graph.
    #[error(
        "{}{}",
        if *model_takes_tokens {
            "this model takes token sequences: give a text file or a safetensors file with input_ids"
        } else {
            "a model.json graph takes an `inputs` tensor, not token sequences"
        },
        at(path)
    )]
    DataKind {
        /// Whether the model takes token sequences (it was given samples); otherwise it is a graph given tokens.
        model_takes_tokens: bool,
        /// The data file (empty until [`Error::in_data_file`] names it).
        path: PathBuf,
    },

    /// A layer input that is not one row per token, so calibration cannot leave padded tokens out of it.
    #[error(
        "calibration: the input of layer {layer:?} is not one row per token, so padded tokens cannot be left out of it"
    )]
    NotPerToken {
        /// The layer.
        layer: String,
    },

    /// A plan that quantizes no layer, where something must be quantized (sensitivity).
    #[error("the plan quantizes no layer: choose INT8, FP16 or BF16 for some layers first")]
    NothingQuantized,

    /// Command-line arguments that do not describe a plan.
    #[error("{reason}")]
    BadArguments {
        /// What to give instead.
        reason: String,
    },

    /// A result that could not be written as JSON.
    #[error("cannot write json ({reason})")]
    Json {
        /// What serde said.
        reason: String,
    },

    /// Codes, scales or shapes handed to a kernel that do not agree (a bug in the caller, reported, not panicked).
    #[error("{problem}")]
    KernelInput {
        /// What disagrees.
        problem: String,
    },

    /// A tensor file written out of its plan (a bug in the exporter, reported, not panicked).
    #[error("{problem}: {}", path.display())]
    WriterMisuse {
        /// What was written wrongly.
        problem: String,
        /// The file being written.
        path: PathBuf,
    },

    /// A thread that could not start or that panicked.
    #[error("{problem}")]
    Thread {
        /// What happened.
        problem: String,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done and on which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, source, path: path.into() }
    }

    /// Names `recipe` in an error about a recipe raised where only the parsed recipe was at hand (resolved against
    /// a model, or its plan checked); other errors, and ones that already name a file, are returned unchanged.
    pub fn in_recipe_file(self, recipe: &Path) -> Error {
        let name = |path: PathBuf| if path.as_os_str().is_empty() { recipe.to_owned() } else { path };
        match self {
            Error::RecipeUnknownLayers { names, path } => Error::RecipeUnknownLayers { names, path: name(path) },
            Error::BadPattern { rule, pattern, reason, path } => {
                Error::BadPattern { rule, pattern, reason, path: name(path) }
            }
            Error::Uncalibrated { names, path } => Error::Uncalibrated { names, path: name(path) },
            other => other,
        }
    }

    /// Names `data` in an error about evaluation or calibration data raised where only the loaded data was at
    /// hand (checked against a network, or run); other errors, and ones that already name a file, are returned
    /// unchanged.
    pub fn in_data_file(self, data: &Path) -> Error {
        let name = |path: PathBuf| if path.as_os_str().is_empty() { data.to_owned() } else { path };
        match self {
            Error::BadSequence { reason, path } => Error::BadSequence { reason, path: name(path) },
            Error::NothingCompared { samples, path } => Error::NothingCompared { samples, path: name(path) },
            Error::DataShape { data_shape, model_shape, path } => {
                Error::DataShape { data_shape, model_shape, path: name(path) }
            }
            Error::DataKind { model_takes_tokens, path } => Error::DataKind { model_takes_tokens, path: name(path) },
            other => other,
        }
    }

    /// Completes the bare file name of an error raised where only a file's parsed contents were at hand (a
    /// `config.json` field) with the model folder it lies in; other errors are returned unchanged.
    pub fn in_folder(self, folder: &Path) -> Error {
        match self {
            Error::BadArchitecture { reason, path } if path.parent().is_some_and(|p| p.as_os_str().is_empty()) => {
                Error::BadArchitecture { reason, path: folder.join(path) }
            }
            other => other,
        }
    }
}

/// `": <path>"`, or nothing for an empty path (a file not named yet, or data that did not come from a file).
fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() { String::new() } else { format!(": {}", path.display()) }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `" (did you mean \"x\"?)"` naming the known key closest to `key` by edit distance, or `""` when none is within
/// a third of its length (at least 2 edits).
pub fn did_you_mean(key: &str, known: &[&str]) -> String {
    let limit = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_named_once_by_the_layer_that_knows_it() {
        let unnamed = Error::DataShape { data_shape: vec![2], model_shape: vec![3], path: PathBuf::new() };
        assert_eq!(unnamed.to_string(), "the data's samples are [2], the model takes [3]");
        let named = unnamed.in_data_file(Path::new("a.safetensors"));
        assert!(named.to_string().ends_with(": a.safetensors"), "{named}");
        // Already named: unchanged; not a data error: unchanged.
        assert!(named.in_data_file(Path::new("b.safetensors")).to_string().ends_with(": a.safetensors"));
        let recipe = Error::RecipeUnknownLayers { names: vec!["x".into()], path: PathBuf::new() };
        assert!(
            matches!(recipe.in_data_file(Path::new("d")), Error::RecipeUnknownLayers { path, .. } if path.as_os_str().is_empty())
        );
        // A bare config.json is completed with its folder once; a path with a folder is left alone.
        let bare = Error::BadArchitecture { reason: "x".into(), path: "config.json".into() };
        let completed = bare.in_folder(Path::new("m")).in_folder(Path::new("m"));
        assert_eq!(completed.to_string(), format!("x: {}", Path::new("m").join("config.json").display()));
    }
}
