//! The accuracy of a plan against FP32: both networks run on the same data, sample by sample, and the figures the
//! model's task uses are compared (docs/EVALUATION.md gives every formula).

use rayon::prelude::*;
use serde::Serialize;

use super::{Architecture, EvalData, Network, bert};
use crate::error::{Error, Result};
use crate::model::{DType, Model};
use crate::progress::Progress;
use crate::quant::{ErrorMetrics, Plan};

/// Samples of a graph model run in one batch.
const GRAPH_BATCH: usize = 256;

/// What running a plan did to a model's outputs. Figures that do not apply to the model are `None` (and absent
/// from the JSON); `output_sqnr_db` is `null` when the outputs are identical.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// "graph", "bert" or "llama".
    pub family: &'static str,
    /// Samples evaluated.
    pub samples: usize,
    /// Output positions compared: samples for a graph, unmasked tokens for BERT and Llama.
    pub positions: usize,
    /// Classification accuracy of the FP32 model on labelled data (fraction of samples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp32_accuracy: Option<f64>,
    /// Classification accuracy of the plan on labelled data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Fraction of samples (graph) or token positions (Llama) where the plan's top-1 class equals FP32's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// Mean over token positions of KL(P_fp32 ‖ P_plan) of the next-token distributions, in nats (Llama).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_kl: Option<f64>,
    /// Mean cosine similarity of the sentence embeddings, FP32 against plan (BERT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_cosine: Option<f64>,
    /// Smallest cosine similarity of the sentence embeddings over the samples (BERT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// `10 log10(Σ y² / Σ (y - ŷ)²)` over the compared outputs (logits, last hidden states); `None`: identical.
    pub output_sqnr_db: Option<f64>,
    /// Mean squared difference of the compared outputs.
    pub output_mse: f64,
    /// Largest absolute difference of the compared outputs.
    pub output_max_abs_error: f64,
    /// Output values of the plan that are NaN or infinite (left out of the figures above, flagged in the headline).
    pub plan_nonfinite_outputs: usize,
}

impl EvalReport {
    /// The figure that matters most for the family, in one phrase ("accuracy 99.17% (FP32 99.44%)").
    pub fn headline(&self) -> String {
        let percent = |v: f64| format!("{:.2}%", v * 100.0);
        let sqnr = match self.output_sqnr_db {
            Some(db) => format!("output SQNR {db:.1} dB"),
            None => "outputs identical to FP32".into(),
        };
        let figures = match (self.accuracy, self.fp32_accuracy, self.mean_cosine, self.top1_agreement) {
            (Some(a), Some(f), _, _) => format!("accuracy {} (FP32 {}), {sqnr}", percent(a), percent(f)),
            (_, _, Some(c), _) => format!("mean cosine {c:.5}, {sqnr}"),
            (_, _, _, Some(t)) => format!("top-1 agreement {}, {sqnr}", percent(t)),
            _ => sqnr,
        };
        match self.plan_nonfinite_outputs {
            0 => figures,
            n => format!("BROKEN: {n} plan outputs are NaN or infinite; of the finite ones: {figures}"),
        }
    }
}

/// Per-sample sums, combined in sample order so the result does not depend on scheduling.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    positions: usize,
    signal_sq: f64,
    error_sq: f64,
    max_abs_error: f64,
    fp32_correct: usize,
    plan_correct: usize,
    labelled: usize,
    top1_same: usize,
    kl: f64,
    cosine_sum: f64,
    cosine_min: f64,
    fp32_nonfinite: usize,
    plan_nonfinite: usize,
}

impl Sums {
    fn add(mut self, o: Sums) -> Sums {
        self.positions += o.positions;
        self.signal_sq += o.signal_sq;
        self.error_sq += o.error_sq;
        self.max_abs_error = self.max_abs_error.max(o.max_abs_error);
        self.fp32_correct += o.fp32_correct;
        self.plan_correct += o.plan_correct;
        self.labelled += o.labelled;
        self.top1_same += o.top1_same;
        self.kl += o.kl;
        self.cosine_sum += o.cosine_sum;
        self.cosine_min = self.cosine_min.min(o.cosine_min);
        self.fp32_nonfinite += o.fp32_nonfinite;
        self.plan_nonfinite += o.plan_nonfinite;
        self
    }

    /// Error sums over the pairs where both values are finite; the others are counted, not summed (a NaN would
    /// vanish in `max` and read as agreement).
    fn compare(&mut self, reference: &[f32], planned: &[f32]) {
        for (&y, &q) in reference.iter().zip(planned) {
            if !y.is_finite() || !q.is_finite() {
                self.fp32_nonfinite += usize::from(!y.is_finite());
                self.plan_nonfinite += usize::from(!q.is_finite());
                continue;
            }
            let e = (y as f64 - q as f64).abs();
            self.signal_sq += (y as f64) * (y as f64);
            self.error_sq += e * e;
            self.max_abs_error = self.max_abs_error.max(e);
        }
    }
}

/// Runs FP32 and `plan` on `data` and compares them. The two networks are built first (sharing the tensors the
/// plan keeps in FP32), then every sample runs through both.
pub fn evaluate(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    plan: &Plan,
    progress: &Progress,
) -> Result<EvalReport> {
    Ok(run_evaluation(model, arch, data, plan, progress, false)?.0)
}

/// One tensor of the outputs kept by [`evaluate_with_outputs`], as raw little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor {
    /// Name: `fp32.{i}`, `plan.{i}`, `input_ids.{i}`, … (docs/EVALUATION.md lists them).
    pub name: String,
    /// Element type: F32 for outputs, I64 for token ids and masks.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// The elements, little-endian.
    pub bytes: Vec<u8>,
}

/// [`evaluate`], also keeping per sample `i` the FP32 and planned outputs and the tokens they were computed on:
/// `fp32.{i}` / `plan.{i}` (graph: the output row; BERT: last hidden state `[tokens, hidden]`; Llama: logits
/// `[tokens, vocab]`), for BERT `fp32_embedding.{i}` / `plan_embedding.{i}` (the sentence embedding), and for
/// token models `input_ids.{i}`, `attention_mask.{i}` (and BERT's `token_type_ids.{i}`) as I64. In sample order.
pub fn evaluate_with_outputs(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    plan: &Plan,
    progress: &Progress,
) -> Result<(EvalReport, Vec<OutputTensor>)> {
    run_evaluation(model, arch, data, plan, progress, true)
}

fn run_evaluation(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    plan: &Plan,
    progress: &Progress,
    keep_outputs: bool,
) -> Result<(EvalReport, Vec<OutputTensor>)> {
    plan.check_calibrated(model)?;
    let (reference, planned) = Network::build_pair(model, arch, plan, progress)?;
    check_data(&reference, data)?;
    progress.start_stage("running FP32 and the plan", data.len() as u64);
    let parts = over_units(data, progress, |unit| {
        let out_r = run_unit(&reference, data, unit)?;
        let out_p = run_unit(&planned, data, unit)?;
        let sums = unit_sums(&reference, data, unit, &out_r, &out_p);
        let kept = if keep_outputs { unit_tensors(&reference, data, unit, &out_r, &out_p) } else { Vec::new() };
        Ok((sums, kept))
    })?;
    let mut sums = empty_sums();
    let mut tensors = Vec::new();
    for (part, kept) in parts {
        sums = sums.add(part);
        tensors.extend(kept);
    }
    Ok((report(&reference, data, sums)?, tensors))
}

/// The tensors [`evaluate_with_outputs`] keeps for one unit.
fn unit_tensors(network: &Network, data: &EvalData, unit: usize, out_r: &[f32], out_p: &[f32]) -> Vec<OutputTensor> {
    let floats = |name: String, shape: Vec<usize>, values: &[f32]| OutputTensor {
        name,
        dtype: DType::F32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let ints = |name: String, values: Vec<i64>| OutputTensor {
        name,
        dtype: DType::I64,
        shape: vec![values.len()],
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let mut tensors = Vec::new();
    match (network, data) {
        (Network::Graph(net), EvalData::Samples { .. }) => {
            let classes = net.output_len().max(1);
            for (row, (r, p)) in out_r.chunks_exact(classes).zip(out_p.chunks_exact(classes)).enumerate() {
                let i = unit * GRAPH_BATCH + row;
                tensors.push(floats(format!("fp32.{i}"), vec![classes], r));
                tensors.push(floats(format!("plan.{i}"), vec![classes], p));
            }
        }
        (Network::Bert(_) | Network::Llama(_), EvalData::Sequences(seqs)) => {
            let seq = &seqs[unit];
            let (i, tokens) = (unit, seq.ids.len());
            let width = out_r.len() / tokens.max(1);
            tensors.push(ints(format!("input_ids.{i}"), seq.ids.iter().map(|&v| v as i64).collect()));
            tensors.push(ints(format!("attention_mask.{i}"), seq.mask.iter().map(|&m| m as i64).collect()));
            tensors.push(floats(format!("fp32.{i}"), vec![tokens, width], out_r));
            tensors.push(floats(format!("plan.{i}"), vec![tokens, width], out_p));
            if let Network::Bert(net) = network {
                let dim = net.config.hidden_size;
                tensors.push(ints(format!("token_type_ids.{i}"), seq.type_ids.iter().map(|&v| v as i64).collect()));
                let embedding_r = bert::sentence_embedding(out_r, &seq.mask, dim);
                let embedding_p = bert::sentence_embedding(out_p, &seq.mask, dim);
                tensors.push(floats(format!("fp32_embedding.{i}"), vec![dim], &embedding_r));
                tensors.push(floats(format!("plan_embedding.{i}"), vec![dim], &embedding_p));
            }
        }
        _ => {}
    }
    tensors
}

/// The FP32 outputs of a dataset, computed once, to compare several plans against (sensitivity analysis).
pub struct Reference<'n> {
    network: &'n Network,
    outputs: Vec<Vec<f32>>,
}

impl<'n> Reference<'n> {
    /// Runs `network` (the FP32 one) on every sample of `data` and keeps the outputs.
    pub fn run(network: &'n Network, data: &EvalData, progress: &Progress) -> Result<Reference<'n>> {
        check_data(network, data)?;
        let outputs = over_units(data, progress, |unit| run_unit(network, data, unit))?;
        Ok(Reference { network, outputs })
    }

    /// Runs `planned` on `data` (the data this reference was computed on) and compares it with the reference.
    pub fn compare(&self, planned: &Network, data: &EvalData, progress: &Progress) -> Result<EvalReport> {
        let parts = over_units(data, progress, |unit| {
            let out_p = run_unit(planned, data, unit)?;
            Ok(unit_sums(self.network, data, unit, &self.outputs[unit], &out_p))
        })?;
        report(self.network, data, parts.into_iter().fold(empty_sums(), Sums::add))
    }
}

/// Refuses data the network cannot take (samples of another shape, tokens for a graph, samples for a token model,
/// a sequence with a token id outside the vocabulary or longer than the position table, naming the sample). The
/// caller that read the data from a file names it with [`Error::in_data_file`].
pub fn check_data(network: &Network, data: &EvalData) -> Result<()> {
    let in_sample = |i: usize, e: Error| match e {
        Error::BadSequence { reason, path } => Error::BadSequence { reason: format!("sample {i}: {reason}"), path },
        e => e,
    };
    match (network, data) {
        (Network::Graph(r), EvalData::Samples { sample_shape, .. }) if *sample_shape != r.spec.input_shape => {
            Err(Error::DataShape {
                data_shape: sample_shape.clone(),
                model_shape: r.spec.input_shape.clone(),
                path: Default::default(),
            })
        }
        (Network::Graph(_), EvalData::Samples { .. }) => Ok(()),
        (Network::Bert(net), EvalData::Sequences(seqs)) => {
            seqs.iter().enumerate().try_for_each(|(i, s)| net.check(s).map_err(|e| in_sample(i, e)))
        }
        (Network::Llama(net), EvalData::Sequences(seqs)) => {
            seqs.iter().enumerate().try_for_each(|(i, s)| net.check(s).map_err(|e| in_sample(i, e)))
        }
        _ => Err(data_kind(network)),
    }
}

/// The error of data of the other kind than `network` takes.
pub fn data_kind(network: &Network) -> Error {
    Error::DataKind { model_takes_tokens: !matches!(network, Network::Graph(_)), path: Default::default() }
}

/// The outputs of one unit: logits `[batch, classes]` (graph), last hidden states `[tokens, hidden]` (BERT) or
/// logits `[tokens, vocab]` (Llama).
fn run_unit(network: &Network, data: &EvalData, unit: usize) -> Result<Vec<f32>> {
    match (network, data) {
        (Network::Graph(net), EvalData::Samples { inputs, .. }) => {
            let sample_len = net.input_len();
            let first = unit * GRAPH_BATCH * sample_len;
            let last = (first + GRAPH_BATCH * sample_len).min(inputs.len());
            Ok(net.forward(&inputs[first..last]))
        }
        (Network::Bert(net), EvalData::Sequences(seqs)) => net.forward(&seqs[unit]),
        (Network::Llama(net), EvalData::Sequences(seqs)) => net.forward(&seqs[unit], &mut net.new_cache()),
        _ => Err(data_kind(network)),
    }
}

/// Runs `per_unit` over every unit (sequences in parallel, graph batches in order: their ops are parallel
/// inside) and returns the results in unit order, for the caller to combine in that order.
fn over_units<T: Send>(
    data: &EvalData,
    progress: &Progress,
    per_unit: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    match data {
        EvalData::Sequences(seqs) => (0..seqs.len())
            .into_par_iter()
            .map(|unit| {
                progress.check()?;
                let part = per_unit(unit)?;
                progress.advance(1);
                Ok(part)
            })
            .collect::<Result<Vec<T>>>(),
        EvalData::Samples { .. } => {
            let mut parts = Vec::new();
            for unit in 0..data.len().div_ceil(GRAPH_BATCH) {
                progress.check()?;
                parts.push(per_unit(unit)?);
                progress.advance((data.len() - unit * GRAPH_BATCH).min(GRAPH_BATCH) as u64);
            }
            Ok(parts)
        }
    }
}

/// The comparison sums of one unit.
fn unit_sums(reference: &Network, data: &EvalData, unit: usize, out_r: &[f32], out_p: &[f32]) -> Sums {
    match (reference, data) {
        (Network::Graph(net), EvalData::Samples { labels, .. }) => {
            let classes = net.output_len();
            let rows = out_r.len() / classes.max(1);
            let mut sums = logit_sums(out_r, out_p, classes, &vec![true; rows], false);
            if let Some(labels) = labels {
                let first = unit * GRAPH_BATCH;
                for (i, (row_r, row_p)) in out_r.chunks_exact(classes).zip(out_p.chunks_exact(classes)).enumerate() {
                    let label = labels[first + i];
                    sums.labelled += 1;
                    sums.fp32_correct += (argmax(row_r) as i64 == label) as usize;
                    sums.plan_correct += (argmax(row_p) as i64 == label) as usize;
                }
            }
            sums
        }
        (Network::Bert(net), EvalData::Sequences(seqs)) => {
            bert_sums(out_r, out_p, &seqs[unit].mask, net.config.hidden_size)
        }
        (Network::Llama(net), EvalData::Sequences(seqs)) => {
            logit_sums(out_r, out_p, net.config.vocab_size, &seqs[unit].mask, true)
        }
        _ => empty_sums(),
    }
}

/// The report of the summed comparisons. Nothing compared (every position masked) and non-finite FP32 outputs
/// (the model itself is broken, e.g. a negative norm epsilon) are errors: neither may read as agreement.
fn report(reference: &Network, data: &EvalData, sums: Sums) -> Result<EvalReport> {
    if sums.positions == 0 {
        return Err(Error::NothingCompared { samples: data.len(), path: Default::default() });
    }
    if sums.fp32_nonfinite > 0 {
        return Err(Error::NonFiniteReference { count: sums.fp32_nonfinite, plan_count: sums.plan_nonfinite });
    }
    let metrics =
        ErrorMetrics::from_sums(sums.signal_sq, sums.error_sq, sums.max_abs_error, (sums.positions as u64).max(1));
    let fraction = |count: usize, of: usize| (of > 0).then(|| count as f64 / of as f64);
    let samples = data.len();
    let (family, element_count) = match reference {
        Network::Graph(r) => ("graph", sums.positions * r.output_len()),
        Network::Bert(r) => ("bert", sums.positions * r.config.hidden_size),
        Network::Llama(r) => ("llama", sums.positions * r.config.vocab_size),
    };
    Ok(EvalReport {
        family,
        samples,
        positions: sums.positions,
        fp32_accuracy: fraction(sums.fp32_correct, sums.labelled),
        accuracy: fraction(sums.plan_correct, sums.labelled),
        top1_agreement: (family != "bert").then(|| fraction(sums.top1_same, sums.positions)).flatten(),
        mean_kl: (family == "llama").then(|| sums.kl / sums.positions.max(1) as f64),
        mean_cosine: (family == "bert").then(|| sums.cosine_sum / samples.max(1) as f64),
        min_cosine: (family == "bert").then_some(sums.cosine_min),
        output_sqnr_db: metrics.sqnr_db,
        output_mse: sums.error_sq / element_count.max(1) as f64,
        output_max_abs_error: metrics.max_abs_error,
        plan_nonfinite_outputs: sums.plan_nonfinite,
    })
}

fn empty_sums() -> Sums {
    Sums { cosine_min: f64::INFINITY, ..Sums::default() }
}

fn bert_sums(hidden_r: &[f32], hidden_p: &[f32], mask: &[bool], dim: usize) -> Sums {
    let mut sums = empty_sums();
    for ((row_r, row_p), _) in hidden_r.chunks_exact(dim).zip(hidden_p.chunks_exact(dim)).zip(mask).filter(|(_, m)| **m)
    {
        sums.compare(row_r, row_p);
        sums.positions += 1;
    }
    let cosine = cosine(&bert::sentence_embedding(hidden_r, mask, dim), &bert::sentence_embedding(hidden_p, mask, dim));
    sums.cosine_sum = cosine;
    sums.cosine_min = cosine;
    sums
}

/// Output comparison of rows of `classes` logits at the unmasked positions: error sums, top-1 agreement and, when
/// `kl` is set, KL(softmax(reference) ‖ softmax(planned)).
fn logit_sums(reference: &[f32], planned: &[f32], classes: usize, mask: &[bool], kl: bool) -> Sums {
    let mut sums = empty_sums();
    for ((row_r, row_p), _) in
        reference.chunks_exact(classes).zip(planned.chunks_exact(classes)).zip(mask).filter(|(_, m)| **m)
    {
        sums.compare(row_r, row_p);
        sums.positions += 1;
        sums.top1_same += (argmax(row_r) == argmax(row_p)) as usize;
        if kl {
            sums.kl += kl_divergence(row_r, row_p);
        }
    }
    sums
}

/// Index of the largest value; the first on ties; NaN never wins.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best
}

/// KL(softmax(p_logits) ‖ softmax(q_logits)) in nats, in f64 with log-sum-exp; never negative.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let log_softmax = |logits: &[f32]| -> Vec<f64> {
        let max = logits.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
        let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        logits.iter().map(|&v| v as f64 - log_sum).collect()
    };
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// Cosine similarity in f64; 1 for two zero vectors, 0 when only one is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    match (na > 0.0, nb > 0.0) {
        (true, true) => dot / (na * nb),
        (false, false) => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_cosine_hand_cases() {
        assert_eq!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        // p = (1/2, 1/2), q = softmax(0, ln 3) = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
        let expected = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&[0.0, 0.0], &[0.0, 3f32.ln()]) - expected).abs() < 1e-7);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
    }
}
