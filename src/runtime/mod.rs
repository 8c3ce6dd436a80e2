//! A small inference runtime: the FP32 forward pass of the models the studio can run, and the same pass with
//! a plan's weights (quantized and dequantized exactly as the foundation's schemes define), so that a plan is
//! judged by what the model then computes.
//!
//! Three families run: chain networks described by a `model.json` ([`graph`], the digits samples), BERT encoders
//! ([`bert`]) and Llama decoders ([`llama`]) from their Hugging Face `config.json`. Any other model opens in
//! weight-only mode; [`Architecture::detect`] says why it cannot run.

pub mod benchmark;
pub mod bert;
pub mod config;
pub mod data;
pub mod eval;
pub mod graph;
pub mod latency;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod perplexity;
pub mod qgemm;
pub mod weights;
pub mod wgemm;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::Plan;

pub use data::{EvalData, TokenSequence};
pub use eval::{EvalReport, evaluate};

/// What kind of network a model is, with what its forward pass needs.
#[derive(Clone, Debug)]
pub enum Architecture {
    /// A chain of ops from `model.json`.
    Graph(graph::GraphSpec),
    /// A BERT encoder.
    Bert(bert::BertConfig),
    /// A Llama decoder.
    Llama(llama::LlamaConfig),
}

impl Architecture {
    /// The architecture of an opened model, or the error saying why it cannot run (weight-only mode).
    pub fn detect(model: &Model) -> Result<Architecture> {
        let Some(config) = &model.config else {
            return Err(Error::NoConfig { path: model.path.clone() });
        };
        if let Some(path) = graph_path(model)? {
            return graph::GraphSpec::load(&path).map(Architecture::Graph);
        }
        Self::from_config(model, config).map_err(|e| e.in_folder(&model_folder(model)))
    }

    fn from_config(model: &Model, config: &config::ConfigMap) -> Result<Architecture> {
        match config.get("model_type").and_then(|v| v.as_str()) {
            Some("bert") => bert::BertConfig::from_config(config).map(Architecture::Bert),
            Some("llama") => llama::LlamaConfig::from_config(config).map(Architecture::Llama),
            Some(other) => {
                Err(Error::UnsupportedArchitecture { model_type: other.to_owned(), path: model.path.clone() })
            }
            None => Err(Error::NoModelType { path: model.path.clone() }),
        }
    }

    /// A short name for the family: "graph", "bert" or "llama".
    pub fn family(&self) -> &'static str {
        match self {
            Architecture::Graph(_) => "graph",
            Architecture::Bert(_) => "bert",
            Architecture::Llama(_) => "llama",
        }
    }
}

/// A network with its weights bound, ready to run.
#[derive(Debug)]
pub enum Network {
    /// A `model.json` chain.
    Graph(graph::GraphNet),
    /// A BERT encoder.
    Bert(bert::BertNet),
    /// A Llama decoder.
    Llama(llama::LlamaNet),
}

impl Network {
    /// Reads the weights (as stored when `plan` is `None`, else as the plan quantizes them) and binds them.
    pub fn build(model: &Model, arch: &Architecture, plan: Option<&Plan>, progress: &Progress) -> Result<Network> {
        Ok(Self::build_measured(model, arch, plan, progress)?.0)
    }

    /// [`Network::build`], also returning the bytes of f32 weights the network holds.
    pub fn build_measured(
        model: &Model,
        arch: &Architecture,
        plan: Option<&Plan>,
        progress: &Progress,
    ) -> Result<(Network, u64)> {
        let source = weights::WeightSource::new(model, plan, progress);
        let net = Self::from_source(arch, &source)?;
        Ok((net, source.loaded_bytes()))
    }

    /// The network `plan` makes, run as deployed where this runtime can: W8A8 layers with symmetric weights hold
    /// INT8 codes and compute integer products ([`qgemm`]); other linear layers the plan quantizes hold their
    /// weights as FP16, BF16 or INT8 codes, converted tile by tile as they multiply ([`wgemm`]); the rest (FP32
    /// layers, embeddings, convolutions) run on f32 values as simulated.
    pub fn build_deployed(model: &Model, arch: &Architecture, plan: &Plan, progress: &Progress) -> Result<Deployed> {
        plan.check_calibrated(model)?;
        let source = weights::WeightSource::deployed(model, plan, progress);
        let network = Self::from_source(arch, &source)?;
        Ok(Deployed {
            network,
            weights_bytes: source.loaded_bytes(),
            integer_layers: source.int8_layers(),
            compact_layers: source.compact_layers(),
        })
    }

    /// The FP32 network and the planned one, sharing the tensors the plan leaves in FP32.
    pub fn build_pair(
        model: &Model,
        arch: &Architecture,
        plan: &Plan,
        progress: &Progress,
    ) -> Result<(Network, Network)> {
        let reference = weights::WeightSource::new(model, None, progress);
        progress.start_stage("reading FP32 weights", 0);
        let fp32 = Self::from_source(arch, &reference)?;
        progress.start_stage("quantizing weights as planned", 0);
        let planned = Self::from_source(arch, &weights::WeightSource::sharing(&reference, plan))?;
        Ok((fp32, planned))
    }

    /// Binds the weights `source` gives.
    pub fn from_source(arch: &Architecture, source: &weights::WeightSource) -> Result<Network> {
        Ok(match arch {
            Architecture::Graph(spec) => Network::Graph(graph::GraphNet::build(spec.clone(), source)?),
            Architecture::Bert(c) => Network::Bert(bert::BertNet::build(c.clone(), source)?),
            Architecture::Llama(c) => Network::Llama(
                llama::LlamaNet::build(c.clone(), source).map_err(|e| e.in_folder(&model_folder(source.model())))?,
            ),
        })
    }
}

/// A network as deployed ([`Network::build_deployed`]) with what it holds.
#[derive(Debug)]
pub struct Deployed {
    /// The network.
    pub network: Network,
    /// Bytes of weights it holds in memory (f32, half and INT8 buffers with their scales).
    pub weights_bytes: u64,
    /// Linear layers running INT8 integer products.
    pub integer_layers: u64,
    /// Linear layers holding FP16, BF16 or INT8 weights converted tile by tile.
    pub compact_layers: u64,
}

/// The folder a model was opened from (for `tokenizer.json` and the sample data files).
pub fn model_folder(model: &Model) -> PathBuf {
    if model.path.is_dir() { model.path.clone() } else { model.path.parent().map(PathBuf::from).unwrap_or_default() }
}

/// The graph file `config.json` names (`"graph": "model.json"`), symlinks resolved, or `None` when it names none.
/// Refused unless it is a file inside the model folder (symlinks of the folder resolved too): a name such as
/// `/etc/passwd`, `../x` or a symlink leading out would read a file that is not the model's.
pub fn graph_path(model: &Model) -> Result<Option<PathBuf>> {
    let Some(value) = model.config.as_ref().and_then(|c| c.get("graph")) else { return Ok(None) };
    let folder = model_folder(model);
    let config_path = folder.join(config::CONFIG_FILE);
    let bad = |reason: String| Error::BadArchitecture { reason, path: config_path.clone() };
    let name = value.as_str().ok_or_else(|| bad(format!("graph is {value}, not a file name")))?;
    let joined = folder.join(name);
    let resolved = joined
        .canonicalize()
        .map_err(|e| bad(format!("graph {name:?} is not a file in the model folder ({}: {e})", joined.display())))?;
    let inside = folder.canonicalize().is_ok_and(|folder| resolved.starts_with(folder));
    if !inside {
        return Err(Error::OutsideModelFolder { field: "graph", resolved, path: config_path });
    }
    if !resolved.is_file() {
        return Err(bad(format!("graph {name:?} is not a file ({})", resolved.display())));
    }
    Ok(Some(resolved))
}
