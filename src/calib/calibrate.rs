//! Calibration runs: the FP32 network on representative data, with a histogram of the input of every linear and
//! conv layer, cached on disk so that re-opening the model or switching observers never re-runs it.
//!
//! Padded positions of token sequences (mask `false`) never enter a histogram: trailing padding is not run at all,
//! and the rows of any other padded position are skipped in every layer's input.
//!
//! The histograms do not depend on the observer (every observer reads them), so the cache is keyed by what they
//! do depend on: the model's files, the data file, the tokenizer's files (path, size, modification time), the
//! histogram layout and the version of the observation code.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::histogram::{ActivationHistogram, BINS};
use super::observer::{Observer, chosen_clip};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::Plan;
use crate::runtime::eval::{check_data, data_kind};
use crate::runtime::{Architecture, EvalData, Network, TokenSequence};

/// The `format` of a calibration cache file.
pub const CALIBRATION_FORMAT: &str = "quantstudio-calibration";
/// The version of the cache file's layout this build writes and reads; files of another version are recomputed.
pub const CALIBRATION_VERSION: u32 = 1;
/// The version of what [`observe`] puts into the histograms, part of every [`CalibrationKey`]: bumped whenever the
/// same model and data would give other histograms (1: every position of a sequence; 2: padded positions
/// excluded), so that a cache written by older code is recomputed, never read.
pub const OBSERVATION_VERSION: u32 = 2;
/// The tokenizer's files in the model folder that are part of the key (when they exist): `tokenizer.json` is what
/// a text data file is tokenised with (padding and truncation included); `tokenizer_config.json` is not read by
/// this build but holds tokenizer settings other tools apply, so a change to it is treated as a change too.
pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];
/// Samples of a graph model observed per batch.
const GRAPH_BATCH: usize = 256;

/// A file as the cache sees it: changing any field invalidates the cached calibration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Canonical path.
    pub path: PathBuf,
    /// Length.
    pub size_bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when the file system has none).
    pub modified_unix_ns: u128,
}

impl FileStamp {
    /// Stamps `path`.
    pub fn of(path: &Path) -> Result<FileStamp> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read", path, e))?;
        let modified_unix_ns =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        Ok(FileStamp {
            path: path.canonicalize().unwrap_or_else(|_| path.to_owned()),
            size_bytes: meta.len(),
            modified_unix_ns,
        })
    }
}

/// What a calibration was computed from: every input that can change what is observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationKey {
    /// The model's weight files, shard index, `config.json` and graph description (`model.json`, or the file
    /// `config.json` names as its `graph`).
    pub model_files: Vec<FileStamp>,
    /// The data file.
    pub data: FileStamp,
    /// Those of [`TOKENIZER_FILES`] the model folder holds.
    pub tokenizer_files: Vec<FileStamp>,
    /// Bins of every histogram.
    pub bins: usize,
    /// [`OBSERVATION_VERSION`].
    pub observation_version: u32,
}

impl CalibrationKey {
    /// The key of calibrating `model` on `data_path`.
    pub fn new(model: &Model, data_path: &Path) -> Result<CalibrationKey> {
        let mut files = model.source_files();
        let folder = crate::runtime::model_folder(model);
        let graph = crate::runtime::graph_path(model)?;
        for path in ["config.json", "model.json"].map(|f| folder.join(f)).into_iter().chain(graph) {
            if !files.contains(&path) {
                files.push(path);
            }
        }
        files.retain(|f| f.is_file());
        // The graph is named by its resolved path, which may be another spelling of model.json.
        let mut seen = std::collections::BTreeSet::new();
        files.retain(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
        let tokenizer_files: Vec<PathBuf> =
            TOKENIZER_FILES.iter().map(|f| folder.join(f)).filter(|f| f.is_file()).collect();
        Ok(CalibrationKey {
            model_files: files.iter().map(|f| FileStamp::of(f)).collect::<Result<_>>()?,
            data: FileStamp::of(data_path)?,
            tokenizer_files: tokenizer_files.iter().map(|f| FileStamp::of(f)).collect::<Result<_>>()?,
            bins: BINS,
            observation_version: OBSERVATION_VERSION,
        })
    }

    /// A stable 64-bit FNV-1a hash of the key's JSON, in hex: the cache file's name.
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        format!("{hash:016x}")
    }
}

/// The input histograms of every linear and conv layer of a model over a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Always [`CALIBRATION_FORMAT`].
    pub format: String,
    /// [`CALIBRATION_VERSION`].
    pub version: u32,
    /// What it was computed from.
    pub key: CalibrationKey,
    /// Samples (sequences, or graph inputs) run.
    pub samples: usize,
    /// By layer name.
    pub layers: BTreeMap<String, ActivationHistogram>,
}

impl Calibration {
    /// The clip `observer` picks for every calibrated layer.
    pub fn clips(&self, observer: Observer) -> BTreeMap<String, f32> {
        self.layers.iter().map(|(name, h)| (name.clone(), observer.clip(h))).collect()
    }

    /// Sets the input clip of every calibrated layer of `plan` to what `observer` picks, or to the value in
    /// `overrides` for the layers named there (a clip the user chose by hand). Layers not calibrated keep theirs.
    pub fn apply(&self, model: &Model, plan: &mut Plan, observer: Observer, overrides: &BTreeMap<String, f32>) {
        plan.input_clips.resize(model.layers.len(), None);
        for (name, histogram) in &self.layers {
            if let Some(id) = model.layer_by_name(name) {
                plan.input_clips[id.0] = chosen_clip(overrides.get(name).copied(), || Some(observer.clip(histogram)));
            }
        }
    }
}

/// A calibration and whether it came from the cache.
#[derive(Clone, Debug)]
pub struct CalibrationRun {
    /// The histograms.
    pub calibration: Calibration,
    /// `true` when read from the cache (nothing ran).
    pub from_cache: bool,
    /// The cache file (written or read), when a cache folder was given.
    pub cache_file: Option<PathBuf>,
}

/// The default cache folder: `$QUANTSTUDIO_CACHE_DIR`, else `$XDG_CACHE_HOME/quantstudio`, else
/// `~/.cache/quantstudio`, else the temp folder's `quantstudio-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUANTSTUDIO_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("quantstudio");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("quantstudio"),
        None => std::env::temp_dir().join("quantstudio-cache"),
    }
}

/// Calibrates `model` on the data file `data_path`, reading the result from `cache_dir` when it holds one for the
/// same model and data, and writing it there otherwise (a cache that cannot be written is not an error).
pub fn calibrate(
    model: &Model,
    arch: &Architecture,
    data_path: &Path,
    cache_dir: Option<&Path>,
    progress: &Progress,
) -> Result<CalibrationRun> {
    let key = CalibrationKey::new(model, data_path)?;
    let cache_file = cache_dir.map(|dir| dir.join(format!("calibration-{}.json", key.digest())));
    if let Some(file) = &cache_file
        && let Some(calibration) = read_cache(file, &key)
    {
        return Ok(CalibrationRun { calibration, from_cache: true, cache_file });
    }
    progress.start_stage(format!("reading {}", data_path.display()), 0);
    let data = EvalData::load(data_path, &crate::runtime::model_folder(model))?;
    let layers = observe(model, arch, &data, progress).map_err(|e| e.in_data_file(data_path))?;
    let calibration = Calibration {
        format: CALIBRATION_FORMAT.into(),
        version: CALIBRATION_VERSION,
        key,
        samples: data.len(),
        layers,
    };
    if let Some(file) = &cache_file {
        let written = std::fs::create_dir_all(file.parent().unwrap_or(Path::new(".")))
            .map_err(|e| Error::io("cannot create folder", file, e))
            .and_then(|_| {
                let json = serde_json::to_vec(&calibration).unwrap_or_default();
                crate::model::writer::write_atomically(file, &json)
            });
        if written.is_err() {
            return Ok(CalibrationRun { calibration, from_cache: false, cache_file: None });
        }
    }
    Ok(CalibrationRun { calibration, from_cache: false, cache_file })
}

/// The cached calibration in `file` when it exists, parses and has exactly `key`.
fn read_cache(file: &Path, key: &CalibrationKey) -> Option<Calibration> {
    let bytes = std::fs::read(file).ok()?;
    let calibration: Calibration = serde_json::from_slice(&bytes).ok()?;
    (calibration.format == CALIBRATION_FORMAT && calibration.version == CALIBRATION_VERSION && calibration.key == *key)
        .then_some(calibration)
}

/// Runs the FP32 network on every sample of `data` and histograms the input of every linear and conv layer.
/// Sequences run in parallel, each into its own histograms, merged afterwards; the merge is exact, so the
/// result does not depend on scheduling. Padded positions of a sequence are never observed: trailing ones are not
/// run ([`without_trailing_padding`]), the rows of the others are skipped in every layer's input ([`real_rows`]);
/// a sequence without a real position adds nothing.
pub fn observe(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    progress: &Progress,
) -> Result<BTreeMap<String, ActivationHistogram>> {
    progress.start_stage("reading FP32 weights", 0);
    let network = Network::build(model, arch, None, progress)?;
    check_data(&network, data)?;
    progress.start_stage("calibrating: running FP32 on the data", data.len() as u64);
    type Histograms = BTreeMap<String, ActivationHistogram>;
    let record = |histograms: &mut Histograms, layer: &str, values: &[f32]| {
        if !histograms.contains_key(layer) {
            histograms.insert(layer.to_owned(), ActivationHistogram::new());
        }
        if let Some(h) = histograms.get_mut(layer) {
            h.observe(values);
        }
    };
    let merge = |mut a: Histograms, b: Histograms| {
        for (name, h) in b {
            match a.get_mut(&name) {
                Some(existing) => existing.merge(&h),
                None => {
                    a.insert(name, h);
                }
            }
        }
        a
    };
    match (&network, data) {
        (Network::Graph(net), EvalData::Samples { inputs, .. }) => {
            let mut histograms = Histograms::new();
            for batch in inputs.chunks(GRAPH_BATCH * net.input_len().max(1)) {
                progress.check()?;
                net.forward_tapped(batch, &mut |layer, values| record(&mut histograms, layer, values));
                progress.advance((batch.len() / net.input_len().max(1)) as u64);
            }
            Ok(histograms)
        }
        (Network::Bert(_) | Network::Llama(_), EvalData::Sequences(seqs)) => seqs
            .par_iter()
            .try_fold(Histograms::new, |mut histograms, seq| {
                progress.check()?;
                if let Some(seq) = without_trailing_padding(seq) {
                    let mut not_per_position = None;
                    let mut tap = |layer: &str, values: &[f32]| match real_rows(values, &seq.mask) {
                        Some(runs) => runs.for_each(|run| record(&mut histograms, layer, run)),
                        None => not_per_position = Some(layer.to_owned()),
                    };
                    match &network {
                        Network::Bert(net) => net.forward_tapped(&seq, &mut tap).map(drop)?,
                        Network::Llama(net) => net.forward_tapped(&seq, &mut net.new_cache(), &mut tap).map(drop)?,
                        Network::Graph(_) => {}
                    }
                    if let Some(layer) = not_per_position {
                        return Err(Error::NotPerToken { layer });
                    }
                }
                progress.advance(1);
                Ok::<_, Error>(histograms)
            })
            .try_reduce(Histograms::new, |a, b| Ok(merge(a, b))),
        // `check_data` above refuses every other pairing.
        _ => Err(data_kind(&network)),
    }
}

/// `seq` without its trailing padded positions, `None` when it has no real position. No real position attends
/// to them (a BERT encoder gives padded keys probability exactly 0; in a causal decoder they come later), so in
/// exact arithmetic dropping them changes nothing the real positions compute, and the observed values no longer
/// depend on the padding length (nor do the f32 kernels chosen by the number of rows). Leading or inner padding
/// stays: removing it would move the real positions. A sequence whose lengths disagree is passed on unchanged,
/// for the forward pass to refuse.
pub(super) fn without_trailing_padding(seq: &TokenSequence) -> Option<Cow<'_, TokenSequence>> {
    let len = seq.mask.iter().rposition(|&real| real)? + 1;
    if len == seq.ids.len() || seq.ids.len() != seq.mask.len() || seq.type_ids.len() != seq.mask.len() {
        return Some(Cow::Borrowed(seq));
    }
    Some(Cow::Owned(TokenSequence {
        ids: seq.ids[..len].to_vec(),
        type_ids: seq.type_ids[..len].to_vec(),
        mask: seq.mask[..len].to_vec(),
    }))
}

/// The rows of `values` (`[positions, width]`, one row per position of `mask`) whose position is real, as runs
/// of consecutive real rows; `None` when `values` is not a whole number of rows.
pub(super) fn real_rows<'v>(values: &'v [f32], mask: &'v [bool]) -> Option<impl Iterator<Item = &'v [f32]> + 'v> {
    let positions = mask.len();
    if positions == 0 || !values.len().is_multiple_of(positions) {
        return None;
    }
    let width = values.len() / positions;
    let mut start = 0;
    Some(std::iter::from_fn(move || {
        start += mask.get(start..)?.iter().position(|&real| real)?;
        let end = mask[start..].iter().position(|&real| !real).map_or(positions, |n| start + n);
        let run = values.get(start * width..end * width);
        start = end;
        run
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(values: &[f32], mask: &[bool]) -> Option<Vec<Vec<f32>>> {
        real_rows(values, mask).map(|r| r.map(<[f32]>::to_vec).collect())
    }

    #[test]
    fn real_rows_are_the_unmasked_rows_in_runs() {
        // 5 positions of width 2.
        let values: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let mask = [false, true, true, false, true];
        assert_eq!(runs(&values, &mask), Some(vec![vec![2.0, 3.0, 4.0, 5.0], vec![8.0, 9.0]]));
        assert_eq!(runs(&values, &[true; 5]), Some(vec![values.clone()]));
        assert_eq!(runs(&values, &[false; 5]), Some(vec![]));
        // Width 0: empty runs, nothing to observe.
        assert_eq!(runs(&[], &[true, false, true]), Some(vec![vec![], vec![]]));
        // Not a whole number of rows, or no positions.
        assert_eq!(runs(&values, &[true, true, true]), None);
        assert_eq!(runs(&values, &[]), None);
    }

    #[test]
    fn only_trailing_padding_is_dropped() {
        let seq = |mask: &[bool]| TokenSequence {
            ids: (1..=mask.len() as u32).collect(),
            type_ids: vec![0; mask.len()],
            mask: mask.to_vec(),
        };
        let padded = seq(&[false, true, false, true, false, false]);
        let kept = without_trailing_padding(&padded).unwrap();
        assert!(matches!(kept, Cow::Owned(_)));
        assert_eq!(kept.ids, [1, 2, 3, 4]);
        assert_eq!(kept.mask, [false, true, false, true]);
        assert_eq!(kept.type_ids.len(), 4);
        let full = seq(&[true, true]);
        assert!(matches!(without_trailing_padding(&full), Some(Cow::Borrowed(s)) if *s == full));
        assert!(without_trailing_padding(&seq(&[false, false])).is_none());
        // Lengths that disagree are left for the forward pass to refuse.
        let mut odd = seq(&[true, false]);
        odd.ids.push(9);
        assert!(matches!(without_trailing_padding(&odd), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn the_key_changes_with_the_observation_version() {
        let stamp = |name: &str| FileStamp { path: PathBuf::from(name), size_bytes: 1, modified_unix_ns: 2 };
        let key = CalibrationKey {
            model_files: vec![stamp("model.safetensors")],
            data: stamp("calib.txt"),
            tokenizer_files: vec![stamp("tokenizer.json")],
            bins: BINS,
            observation_version: OBSERVATION_VERSION,
        };
        let older = CalibrationKey { observation_version: OBSERVATION_VERSION - 1, ..key.clone() };
        let no_tokenizer = CalibrationKey { tokenizer_files: vec![], ..key.clone() };
        assert_ne!(key.digest(), older.digest());
        assert_ne!(key.digest(), no_tokenizer.digest());
        assert_eq!(key.digest(), key.clone().digest());
    }
}
