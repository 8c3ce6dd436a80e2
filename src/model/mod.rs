//! What a checkpoint is: tensors grouped into layers, read lazily from memory-mapped safetensors files.
//!
//! [`Model::open`] accepts a `.safetensors` file or a Hugging Face folder (`config.json` plus `model.safetensors`,
//! a sharded `model.safetensors.index.json`, or any `*.safetensors` files). Opening reads headers only; tensor data
//! is paged in from the map when [`Model::tensor_bytes`] is used.

pub mod dtype;
pub mod layers;
pub mod safetensors;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub use dtype::DType;
pub use layers::LayerKind;

use crate::error::{Error, Result};
use safetensors::SafetensorsFile;

/// Index of a tensor in [`Model::tensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TensorId(pub usize);

/// Index of a layer in [`Model::layers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LayerId(pub usize);

/// One tensor of the model.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Full name, e.g. `fc1.weight`.
    pub name: String,
    /// Element type as stored.
    pub dtype: DType,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// The layer it belongs to.
    pub layer: LayerId,
    /// Index of the shard (file) that holds it.
    pub shard: usize,
    /// Byte range in that shard's data buffer.
    data: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of its data as stored.
    pub fn size_bytes(&self) -> u64 {
        (self.data.end - self.data.start) as u64
    }

    /// Whether it is a float tensor that can be analysed and quantized.
    pub fn is_analysable(&self) -> bool {
        self.dtype.is_analysable_float()
    }

    /// Rows and row length for per-output-channel quantization: axis 0 against the rest. 0-D and 1-D tensors are
    /// one row (per-channel falls back to per-tensor for them). A tensor with no elements is `(0, 0)` whatever its
    /// dimensions (`[2^40, 0]` must not size anything by its first dimension).
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [] => (1, 1),
            [n] => (1, *n),
            [rows, rest @ ..] if *rows == 0 || rest.contains(&0) => (0, 0),
            [rows, rest @ ..] => (*rows, rest.iter().product()),
        }
    }
}

/// A group of tensors sharing a name prefix (`x.weight`, `x.bias` -> `x`).
#[derive(Clone, Debug)]
pub struct Layer {
    /// Layer name.
    pub name: String,
    /// What it appears to be.
    pub kind: LayerKind,
    /// Its tensors, in name order.
    pub tensors: Vec<TensorId>,
}

/// An opened model: shards kept mapped, tensors and layers listed in natural name order.
#[derive(Debug)]
pub struct Model {
    /// The path the user opened (file or folder).
    pub path: PathBuf,
    /// The parsed `config.json`, when the model is a folder that has one.
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// The opened files.
    pub shards: Vec<SafetensorsFile>,
    /// Every tensor, sorted by natural name order.
    pub tensors: Vec<TensorInfo>,
    /// Every layer, sorted by natural name order.
    pub layers: Vec<Layer>,
    /// Things worth telling the user that did not stop the load.
    pub warnings: Vec<String>,
}

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

impl Model {
    /// Opens a `.safetensors` file or a model folder, reading headers only.
    pub fn open(path: &Path) -> Result<Model> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot open", path, e))?;
        if meta.is_dir() {
            Self::open_folder(path)
        } else {
            let shard = SafetensorsFile::open(path)?;
            Self::from_shards(path.to_owned(), None, vec![shard], None)
        }
    }

    fn open_folder(folder: &Path) -> Result<Model> {
        let config = read_config(folder)?;
        let index_path = folder.join(INDEX_FILE);
        if index_path.is_file() {
            let weight_map = read_index(&index_path)?;
            let files: BTreeSet<&str> = weight_map.values().map(String::as_str).collect();
            let missing: Vec<&str> = files.iter().copied().filter(|f| !folder.join(f).is_file()).collect();
            if !missing.is_empty() {
                return Err(Error::BadShardIndex {
                    problem: format!("names missing file(s) {}", missing.join(", ")),
                    path: index_path,
                });
            }
            let shards = files.iter().map(|f| SafetensorsFile::open(&folder.join(f))).collect::<Result<Vec<_>>>()?;
            return Self::from_shards(folder.to_owned(), config, shards, Some((&index_path, &weight_map)));
        }
        let single = folder.join(SINGLE_FILE);
        let files = if single.is_file() {
            vec![single]
        } else {
            let entries = std::fs::read_dir(folder).map_err(|e| Error::io("cannot list", folder, e))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "safetensors"))
                .collect();
            files.sort();
            files
        };
        if files.is_empty() {
            return Err(Error::NoWeights { path: folder.to_owned() });
        }
        let shards = files.iter().map(|f| SafetensorsFile::open(f)).collect::<Result<Vec<_>>>()?;
        Self::from_shards(folder.to_owned(), config, shards, None)
    }

    fn from_shards(
        path: PathBuf,
        config: Option<serde_json::Map<String, serde_json::Value>>,
        shards: Vec<SafetensorsFile>,
        index: Option<(&Path, &BTreeMap<String, String>)>,
    ) -> Result<Model> {
        let mut warnings = Vec::new();
        let mut tensors = Vec::new();
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (shard_index, shard) in shards.iter().enumerate() {
            for t in &shard.header.tensors {
                if owner.insert(t.name.as_str(), shard_index).is_some() {
                    return Err(Error::DuplicateTensor { name: t.name.clone(), path: shard.path.clone() });
                }
                tensors.push(TensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    layer: LayerId(0),
                    shard: shard_index,
                    data: t.data.clone(),
                });
            }
        }
        if let Some((index_path, weight_map)) = index {
            for (name, file) in weight_map {
                let found = owner.get(name.as_str()).map(|&s| &shards[s]);
                let in_named_file = found.is_some_and(|s| s.path.file_name().is_some_and(|f| f == file.as_str()));
                if !in_named_file {
                    return Err(Error::BadShardIndex {
                        problem: format!("tensor {name:?} is not in shard {file}"),
                        path: index_path.to_owned(),
                    });
                }
            }
            let unlisted = tensors.iter().filter(|t| !weight_map.contains_key(&t.name)).count();
            if unlisted > 0 {
                warnings.push(format!("{unlisted} tensor(s) in the shards are not listed in {INDEX_FILE}"));
            }
        }
        drop(owner);
        tensors.sort_by(|a, b| layers::natural_cmp(&a.name, &b.name));
        let layers = group_layers(&mut tensors);
        Ok(Model { path, config, shards, tensors, layers, warnings })
    }

    /// The stored bytes of a tensor (paged in from the map on access).
    pub fn tensor_bytes(&self, id: TensorId) -> &[u8] {
        let tensor = &self.tensors[id.0];
        self.shards[tensor.shard].tensor_bytes(&tensor.data)
    }

    /// The safetensors file holding a tensor.
    pub fn shard_path(&self, id: TensorId) -> &Path {
        &self.shards[self.tensors[id.0].shard].path
    }

    /// A tensor by id.
    pub fn tensor(&self, id: TensorId) -> &TensorInfo {
        &self.tensors[id.0]
    }

    /// A layer by id.
    pub fn layer(&self, id: LayerId) -> &Layer {
        &self.layers[id.0]
    }

    /// Finds a layer by name.
    pub fn layer_by_name(&self, name: &str) -> Option<LayerId> {
        self.layers.binary_search_by(|l| layers::natural_cmp(&l.name, name)).ok().map(LayerId)
    }

    /// Finds a tensor by name.
    pub fn tensor_by_name(&self, name: &str) -> Option<TensorId> {
        self.tensors.binary_search_by(|t| layers::natural_cmp(&t.name, name)).ok().map(TensorId)
    }

    /// Total bytes of tensor data as stored.
    pub fn size_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorInfo::size_bytes).sum()
    }

    /// Total number of parameters (elements of every tensor).
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }

    /// The files a user must never see overwritten: every shard, the index and the config.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.shards.iter().map(|s| s.path.clone()).collect();
        if self.path.is_dir() {
            files.push(self.path.join("config.json"));
            files.push(self.path.join(INDEX_FILE));
        }
        files
    }

    /// The main tensor of a layer: its `.weight` if it has a float one, else its largest float tensor.
    pub fn main_tensor(&self, layer: LayerId) -> Option<TensorId> {
        main_tensor_of(&self.tensors, &self.layers[layer.0].tensors)
    }
}

fn main_tensor_of(tensors: &[TensorInfo], ids: &[TensorId]) -> Option<TensorId> {
    let floats = || ids.iter().copied().filter(|id| tensors[id.0].is_analysable());
    floats()
        .find(|id| tensors[id.0].name.ends_with(".weight"))
        .or_else(|| floats().max_by_key(|id| (tensors[id.0].numel(), std::cmp::Reverse(id.0))))
}

/// Groups sorted tensors into layers (sorted by name) and sets each tensor's layer.
fn group_layers(tensors: &mut [TensorInfo]) -> Vec<Layer> {
    let mut by_name: BTreeMap<&str, Vec<TensorId>> = BTreeMap::new();
    for (index, tensor) in tensors.iter().enumerate() {
        by_name.entry(layers::layer_name(&tensor.name)).or_default().push(TensorId(index));
    }
    let mut groups: Vec<(&str, Vec<TensorId>)> = by_name.into_iter().collect();
    groups.sort_by(|a, b| layers::natural_cmp(a.0, b.0));
    let mut result = Vec::with_capacity(groups.len());
    let mut assignments = Vec::with_capacity(tensors.len());
    for (layer_index, (name, ids)) in groups.into_iter().enumerate() {
        let main = main_tensor_of(tensors, &ids);
        let kind = layers::classify(name, main.map(|id| tensors[id.0].shape.as_slice()));
        assignments.extend(ids.iter().map(|id| (*id, LayerId(layer_index))));
        result.push(Layer { name: name.to_owned(), kind, tensors: ids });
    }
    for (tensor, layer) in assignments {
        tensors[tensor.0].layer = layer;
    }
    result
}

fn read_config(folder: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let path = folder.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(Error::BadConfig { reason: "not an object".into(), path }),
        Err(e) => Err(Error::BadConfig { reason: e.to_string(), path }),
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let bad = |problem: String| Error::BadShardIndex { problem, path: path.to_owned() };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if index.weight_map.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    for file in index.weight_map.values() {
        let plain = Path::new(file).file_name().is_some_and(|f| f == file.as_str()) && !file.starts_with('.');
        if !plain {
            return Err(bad(format!("shard file name {file:?} is not a plain file name in the folder")));
        }
    }
    Ok(index.weight_map)
}
