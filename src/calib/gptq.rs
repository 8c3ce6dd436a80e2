//! GPTQ on calibration data: the FP32 network runs on the data, the input of every INT4 and INT8 layer of the plan
//! is summed into its Hessian `Σ x xᵀ` (padded positions excluded, as for the histograms), and each layer's weight
//! is quantized by [`crate::quant::gptq::gptq_int4`] or [`crate::quant::gptq::gptq_int8`]. The inputs are those of
//! the FP32 model (every layer sees unquantized predecessors), so the layers are independent and run in any order.
//!
//! Layers fed the same input (a block's query, key and value; gate and up) share one Hessian. The Hessians of
//! one run are held at once up to [`HESSIAN_BUDGET_BYTES`]; a model that needs more runs the data again for
//! the rest.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::calibrate::{real_rows, without_trailing_padding};
use crate::error::{Error, Result};
use crate::model::{LayerId, Model};
use crate::progress::Progress;
use crate::quant::gptq::{
    GptqCodes, GptqLayer, GptqOptions, GptqWeights, Hessian, gptq_int4, gptq_int8, output_errors,
};
use crate::quant::pass::TensorData;
use crate::quant::{Plan, Precision};
use crate::runtime::eval::{check_data, data_kind};
use crate::runtime::{Architecture, EvalData, Network};

/// The most bytes of Hessians held at once (f64, `inputs²` per distinct layer input).
pub const HESSIAN_BUDGET_BYTES: usize = 512 << 20;
/// Samples of a graph model run per batch.
const GRAPH_BATCH: usize = 256;

/// One layer to quantize: its id, its precision in the plan, the grid, its weight's shape.
struct Target {
    id: LayerId,
    precision: Precision,
    grid: TargetGrid,
    rows: usize,
    cols: usize,
}

/// The grid of a target: INT4 groups (fitted to the rows) or INT8 under its scheme.
#[derive(Clone, Copy)]
enum TargetGrid {
    Int4(crate::quant::Int4Scheme),
    Int8(crate::quant::Int8Scheme),
}

/// Runs GPTQ on every INT4 and INT8 layer of `plan` whose weight is 2-D (INT4: rows of whole groups), with Hessians
/// from the FP32 model on `data` (read from the file `data_path`, recorded in the result).
pub fn gptq(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    data_path: &Path,
    plan: &Plan,
    options: GptqOptions,
    progress: &Progress,
) -> Result<GptqWeights> {
    let start = Instant::now();
    let targets = targets(model, plan);
    progress.start_stage("reading FP32 weights", 0);
    let network = Network::build(model, arch, None, progress)?;
    check_data(&network, data)?;
    if targets.is_empty() {
        let (layers, unreached) = (BTreeMap::new(), Vec::new());
        return Ok(GptqWeights {
            seconds: 0.0,
            data: data_path.to_owned(),
            options,
            rows_seen: 0,
            passes: 0,
            unreached,
            layers,
        });
    }
    // Which tapped layers see the same input: the first of each run of equal inputs leads.
    let leaders = shared_inputs(&network, data)?;
    let leader_of = |name: &str| leaders.get(name).cloned().unwrap_or_else(|| name.to_owned());
    let mut inputs: BTreeMap<String, usize> = BTreeMap::new();
    for t in &targets {
        inputs.insert(leader_of(&model.layer(t.id).name), t.cols);
    }
    // Passes over the data, each with as many Hessians as fit the budget.
    let mut passes: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new()];
    let mut held = 0usize;
    for (name, cols) in inputs {
        let bytes = cols * cols * 8;
        if held > 0 && held + bytes > HESSIAN_BUDGET_BYTES {
            passes.push(BTreeMap::new());
            held = 0;
        }
        held += bytes;
        passes.last_mut().map(|p| p.insert(name, cols));
    }
    let pass_count = passes.len();
    let mut layers = BTreeMap::new();
    let mut unreached = Vec::new();
    let mut rows_seen = 0;
    for (index, pass) in passes.into_iter().enumerate() {
        let stage = if pass_count > 1 {
            format!("GPTQ: collecting layer inputs (pass {} of {pass_count})", index + 1)
        } else {
            "GPTQ: collecting layer inputs".to_owned()
        };
        progress.start_stage(stage, data.len() as u64);
        let hessians = collect(&network, data, pass, progress)?;
        rows_seen = hessians.values().map(|h| h.rows_seen).max().unwrap_or(0);
        let here: Vec<&Target> =
            targets.iter().filter(|t| hessians.contains_key(&leader_of(&model.layer(t.id).name))).collect();
        progress.start_stage("GPTQ: quantizing", here.iter().map(|t| t.rows as u64).sum());
        // One layer after the other, each spread over the cores: a layer's sequential part (its Cholesky) holds
        // one thread at most, so other jobs of the window keep a core.
        let done: Vec<(LayerId, Option<GptqLayer>)> = here
            .iter()
            .map(|t| {
                let hessian = &hessians[&leader_of(&model.layer(t.id).name)];
                // An input the data never reaches (a BERT pooler under mean pooling) says nothing about the layer.
                let quantized = (hessian.rows_seen > 0)
                    .then(|| quantize_layer(model, t, hessian, options, progress))
                    .transpose()?;
                Ok((t.id, quantized))
            })
            .collect::<Result<_>>()?;
        for (id, quantized) in done {
            match quantized {
                Some(layer) => {
                    layers.insert(id, layer);
                }
                None => unreached.push(id),
            }
        }
    }
    Ok(GptqWeights {
        seconds: start.elapsed().as_secs_f64(),
        data: data_path.to_owned(),
        options,
        rows_seen,
        passes: pass_count,
        unreached,
        layers,
    })
}

/// The Hessian `Σ x xᵀ` of layer `layer`'s input over `data` (padded positions excluded), as [`gptq`] sums it.
pub fn layer_hessian(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    layer: LayerId,
    progress: &Progress,
) -> Result<Hessian> {
    let network = Network::build(model, arch, None, progress)?;
    check_data(&network, data)?;
    let name = model.layer(layer).name.clone();
    let leader = shared_inputs(&network, data)?.remove(&name).unwrap_or(name);
    let cols = model.main_tensor(layer).and_then(|t| model.tensor(t).shape.get(1).copied()).unwrap_or(0);
    let mut hessians = collect(&network, data, BTreeMap::from([(leader.clone(), cols)]), progress)?;
    Ok(hessians.remove(&leader).unwrap_or_else(|| Hessian::new(cols)))
}

/// The INT4 and INT8 layers of `plan` GPTQ can quantize: 2-D weights (INT4: rows of whole groups).
fn targets(model: &Model, plan: &Plan) -> Vec<Target> {
    (0..model.layers.len())
        .map(LayerId)
        .filter_map(|id| {
            let precision = plan.layer(id);
            let tensor = model.main_tensor(id)?;
            let [rows, cols] = model.tensor(tensor).shape[..] else { return None };
            let grid = match plan.tensor(model, tensor) {
                Precision::Int4(scheme) if scheme.fits(cols) => TargetGrid::Int4(scheme),
                Precision::Int8(scheme) => TargetGrid::Int8(scheme),
                _ => return None,
            };
            Some(Target { id, precision, grid, rows, cols })
        })
        .collect()
}

/// GPTQ of one layer, with round to nearest's output error beside it.
fn quantize_layer(
    model: &Model,
    target: &Target,
    hessian: &Hessian,
    options: GptqOptions,
    progress: &Progress,
) -> Result<GptqLayer> {
    let layer = &model.layer(target.id).name;
    let tensor = model
        .main_tensor(target.id)
        .ok_or_else(|| Error::KernelInput { problem: format!("GPTQ: layer {layer} has no weight") })?;
    let data = TensorData::of(model, tensor)?;
    let mut buf = Vec::new();
    let weight = data.values(0..data.len(), &mut buf).to_vec();
    if hessian.cols != target.cols {
        return Err(Error::KernelInput {
            problem: format!("GPTQ: layer {layer} takes {} inputs but saw rows of {}", target.cols, hessian.cols),
        });
    }
    let (codes, rtn) = match target.grid {
        TargetGrid::Int4(scheme) => {
            let tensor = gptq_int4(&weight, target.rows, hessian, scheme, options, progress)?;
            let mut rtn = weight.clone();
            crate::quant::int4::fake_quantize_rows(scheme, &mut rtn, target.cols);
            (GptqCodes::Int4 { scheme, tensor }, rtn)
        }
        TargetGrid::Int8(scheme) => {
            let rounded = crate::quant::quantize_tensor(&data, scheme, progress)?;
            let tensor = gptq_int8(&weight, target.rows, hessian, rounded.params.clone(), options, progress)?;
            let rtn = rounded.dequantized(target.cols);
            (GptqCodes::Int8 { scheme, tensor }, rtn)
        }
    };
    let gptq_values = codes.dequantized(target.cols);
    let errors = output_errors(&weight, &[&rtn, &gptq_values], hessian);
    Ok(GptqLayer {
        precision: target.precision,
        codes,
        options,
        rtn_output_error: errors[0],
        gptq_output_error: errors[1],
        rows_seen: hessian.rows_seen,
    })
}

/// For every tapped layer whose input is the same as that of the layer tapped just before it (same length and
/// values) on the first sample, the first layer of that run; layers absent lead themselves.
fn shared_inputs(network: &Network, data: &EvalData) -> Result<BTreeMap<String, String>> {
    let mut followers = BTreeMap::new();
    let mut previous: Option<(String, Vec<f32>)> = None;
    let mut tap = |layer: &str, values: &[f32]| match &previous {
        Some((leader, seen)) if seen.as_slice() == values => {
            followers.insert(layer.to_owned(), leader.clone());
        }
        _ => previous = Some((layer.to_owned(), values.to_vec())),
    };
    match (network, data) {
        (Network::Graph(net), EvalData::Samples { inputs, .. }) => {
            let first = &inputs[..net.input_len().min(inputs.len())];
            net.forward_tapped(first, &mut tap);
        }
        (Network::Bert(net), EvalData::Sequences(seqs)) => {
            if let Some(seq) = seqs.first() {
                net.forward_tapped(seq, &mut tap)?;
            }
        }
        (Network::Llama(net), EvalData::Sequences(seqs)) => {
            if let Some(seq) = seqs.first() {
                net.forward_tapped(seq, &mut net.new_cache(), &mut tap)?;
            }
        }
        _ => return Err(data_kind(network)),
    }
    Ok(followers)
}

/// The Hessians of the inputs named in `wanted` (name → width) over every sample of `data`, sequences one after
/// the other (each sum is spread over the cores).
fn collect(
    network: &Network,
    data: &EvalData,
    wanted: BTreeMap<String, usize>,
    progress: &Progress,
) -> Result<BTreeMap<String, Hessian>> {
    let mut sums = Sums {
        hessians: wanted.iter().map(|(name, &cols)| (name.clone(), Hessian::new(cols))).collect(),
        misfit: None,
    };
    match (network, data) {
        (Network::Graph(net), EvalData::Samples { inputs, .. }) => {
            for batch in inputs.chunks(GRAPH_BATCH * net.input_len().max(1)) {
                progress.check()?;
                net.forward_tapped(batch, &mut |layer, values| sums.add(layer, values));
                progress.advance((batch.len() / net.input_len().max(1)) as u64);
            }
        }
        (Network::Bert(_) | Network::Llama(_), EvalData::Sequences(seqs)) => {
            for seq in seqs {
                progress.check()?;
                if let Some(seq) = without_trailing_padding(seq) {
                    let mut tap = |layer: &str, values: &[f32]| match real_rows(values, &seq.mask) {
                        Some(runs) => runs.for_each(|run| sums.add(layer, run)),
                        None if sums.hessians.contains_key(layer) => {
                            sums.misfit = Some((layer.to_owned(), values.len()));
                        }
                        None => {}
                    };
                    match network {
                        Network::Bert(net) => net.forward_tapped(&seq, &mut tap).map(drop)?,
                        Network::Llama(net) => net.forward_tapped(&seq, &mut net.new_cache(), &mut tap).map(drop)?,
                        Network::Graph(_) => {}
                    }
                }
                progress.advance(1);
            }
        }
        _ => return Err(data_kind(network)),
    }
    if let Some((layer, len)) = sums.misfit {
        return Err(Error::KernelInput {
            problem: format!("GPTQ: the input of {layer} ({len} values) is not whole rows of its weight's inputs"),
        });
    }
    let mut hessians = sums.hessians;
    for h in hessians.values_mut() {
        h.finish();
    }
    Ok(hessians)
}

/// The sums of one pass, and the first input that was not whole rows.
struct Sums {
    hessians: BTreeMap<String, Hessian>,
    misfit: Option<(String, usize)>,
}

impl Sums {
    /// Adds `rows` to the sum of `layer`'s input when it is one of the pass's.
    fn add(&mut self, layer: &str, rows: &[f32]) {
        if let Some(h) = self.hessians.get_mut(layer) {
            if h.cols == 0 || !rows.len().is_multiple_of(h.cols) {
                self.misfit = Some((layer.to_owned(), rows.len()));
            } else {
                h.add_rows(rows);
            }
        }
    }
}
