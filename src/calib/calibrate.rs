//! Calibration runs: the FP32 network on representative data, with a histogram of the input of every linear and
//! conv layer, cached on disk so that re-opening the model or switching observers never re-runs it.
//!
//! The histograms do not depend on the observer (every observer reads them), so the cache is keyed by what they
//! do depend on: the model's files and the data file (path, size, modification time) and the histogram layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::histogram::{ActivationHistogram, BINS};
use super::observer::Observer;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::Plan;
use crate::runtime::{Architecture, EvalData, Network};

/// The `format` of a calibration cache file.
pub const CALIBRATION_FORMAT: &str = "quantstudio-calibration";
/// The version this build writes and reads; files of another version are recomputed.
pub const CALIBRATION_VERSION: u32 = 1;
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

/// What a calibration was computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationKey {
    /// The model's weight files, `config.json` and graph description.
    pub model_files: Vec<FileStamp>,
    /// The data file.
    pub data: FileStamp,
    /// Bins of every histogram.
    pub bins: usize,
}

impl CalibrationKey {
    /// The key of calibrating `model` on `data_path`.
    pub fn new(model: &Model, data_path: &Path) -> Result<CalibrationKey> {
        let mut files = model.source_files();
        let folder = crate::runtime::model_folder(model);
        for extra in ["config.json", "model.json"] {
            let path = folder.join(extra);
            if !files.contains(&path) {
                files.push(path);
            }
        }
        files.retain(|f| f.is_file());
        Ok(CalibrationKey {
            model_files: files.iter().map(|f| FileStamp::of(f)).collect::<Result<_>>()?,
            data: FileStamp::of(data_path)?,
            bins: BINS,
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
                let clip = overrides.get(name).copied().unwrap_or_else(|| observer.clip(histogram));
                plan.input_clips[id.0] = Some(clip);
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
    let data = EvalData::load(data_path, &crate::runtime::model_folder(model))?;
    let layers = observe(model, arch, &data, progress)?;
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
/// result does not depend on scheduling.
pub fn observe(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    progress: &Progress,
) -> Result<BTreeMap<String, ActivationHistogram>> {
    progress.start_stage("reading FP32 weights", 0);
    let network = Network::build(model, arch, None, progress)?;
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
        (Network::Graph(net), EvalData::Samples { inputs, sample_shape, .. }) => {
            if *sample_shape != net.spec.input_shape {
                return Err(Error::Unsupported(format!(
                    "the data's samples are {sample_shape:?}, the model takes {:?}",
                    net.spec.input_shape
                )));
            }
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
                let mut tap = |layer: &str, values: &[f32]| record(&mut histograms, layer, values);
                match &network {
                    Network::Bert(net) => net.forward_tapped(seq, &mut tap).map(drop)?,
                    Network::Llama(net) => net.forward_tapped(seq, &mut net.new_cache(), &mut tap).map(drop)?,
                    Network::Graph(_) => {}
                }
                progress.advance(1);
                Ok::<_, Error>(histograms)
            })
            .try_reduce(Histograms::new, |a, b| Ok(merge(a, b))),
        (Network::Graph(_), EvalData::Sequences(_)) => {
            Err(Error::Unsupported("a model.json graph takes an `inputs` tensor, not token sequences".into()))
        }
        (_, EvalData::Samples { .. }) => Err(Error::Unsupported(
            "this model takes token sequences: give a text file or a safetensors file with input_ids".into(),
        )),
    }
}
