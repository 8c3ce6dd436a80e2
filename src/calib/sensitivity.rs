//! Which layers are to blame: the task metric of the model with one layer quantized at a time (the rest FP32),
//! or with everything quantized but one layer, ranked.
//!
//! The FP32 outputs are computed once and every variant is compared with them. Each variant's network shares
//! the FP32 tensors it does not change (and, leaving one layer out, the quantized tensors of the full plan), so a
//! variant costs one forward pass over the data plus the quantization of at most one layer.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{LayerId, Model};
use crate::progress::Progress;
use crate::quant::{Plan, Precision};
use crate::runtime::eval::Reference;
use crate::runtime::weights::WeightSource;
use crate::runtime::{Architecture, EvalData, EvalReport, Network};

/// Which variants a sensitivity analysis runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitivityMode {
    /// Each planned layer quantized alone, everything else FP32; score = the metric's loss against FP32.
    OneAtATime,
    /// Everything planned quantized except one layer, kept FP32; score = how much of the full plan's loss
    /// keeping that layer in FP32 recovers.
    AllButOne,
}

impl SensitivityMode {
    /// "one at a time" or "all but one".
    pub fn label(self) -> &'static str {
        match self {
            SensitivityMode::OneAtATime => "one at a time",
            SensitivityMode::AllButOne => "all but one",
        }
    }
}

/// One layer's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerSensitivity {
    /// The layer's name.
    pub layer: String,
    /// The precision the plan gives it (what was tried).
    pub precision: Precision,
    /// Larger is more sensitive: the task loss of quantizing this layer alone (one at a time), or the task loss
    /// recovered by keeping it in FP32 (all but one). See [`task_loss`].
    pub score: f64,
    /// The full comparison of the variant against FP32.
    pub report: EvalReport,
}

/// The ranking.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SensitivityReport {
    /// The variants run.
    pub mode: SensitivityMode,
    /// What the task loss is for this model ([`task_loss_name`]).
    pub metric: &'static str,
    /// The full plan against FP32 (all-but-one only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_plan: Option<EvalReport>,
    /// Most sensitive first.
    pub layers: Vec<LayerSensitivity>,
}

/// The task loss of a plan against FP32, larger is worse: the accuracy lost (fraction, labelled graph data),
/// else `1 - top1_agreement` (graph), `1 - mean_cosine` (BERT sentence embeddings) or the mean KL divergence of
/// the next-token distributions in nats (Llama).
pub fn task_loss(report: &EvalReport) -> f64 {
    match (report.fp32_accuracy, report.accuracy, report.mean_cosine, report.mean_kl, report.top1_agreement) {
        (Some(fp32), Some(plan), _, _, _) => fp32 - plan,
        (_, _, Some(cosine), _, _) => 1.0 - cosine,
        (_, _, _, Some(kl), _) => kl,
        (_, _, _, _, Some(top1)) => 1.0 - top1,
        _ => 0.0,
    }
}

/// The name of [`task_loss`] for a report's family and data.
pub fn task_loss_name(report: &EvalReport) -> &'static str {
    match (report.accuracy, report.mean_cosine, report.mean_kl) {
        (Some(_), _, _) => "accuracy drop",
        (_, Some(_), _) => "1 - mean cosine",
        (_, _, Some(_)) => "mean KL (nats)",
        _ => "1 - top-1 agreement",
    }
}

/// The layers a plan quantizes (its precision changes the layer's main tensor), in model order.
pub fn planned_layers(model: &Model, plan: &Plan) -> Vec<LayerId> {
    (0..model.layers.len())
        .map(LayerId)
        .filter(|&id| model.main_tensor(id).is_some_and(|main| plan.tensor(model, main) != Precision::Fp32))
        .collect()
}

/// Ranks the layers `plan` quantizes by how much each one costs the task metric. `on_layer` sees every result
/// as soon as it is measured (in model order), so a window can show them while the rest run.
pub fn sensitivity(
    model: &Model,
    arch: &Architecture,
    data: &EvalData,
    plan: &Plan,
    mode: SensitivityMode,
    progress: &Progress,
    on_layer: &mut dyn FnMut(&LayerSensitivity),
) -> Result<SensitivityReport> {
    plan.check_calibrated(model)?;
    let candidates = planned_layers(model, plan);
    if candidates.is_empty() {
        return Err(Error::NothingQuantized);
    }
    let reference_source = WeightSource::new(model, None, progress);
    progress.start_stage("reading FP32 weights", 0);
    let fp32 = Network::from_source(arch, &reference_source)?;
    progress.start_stage("FP32 reference", data.len() as u64);
    let reference = Reference::run(&fp32, data, progress)?;

    let full_source = WeightSource::sharing(&reference_source, plan);
    let full_plan = match mode {
        SensitivityMode::OneAtATime => None,
        SensitivityMode::AllButOne => {
            progress.start_stage("the full plan", data.len() as u64);
            let net = Network::from_source(arch, &full_source)?;
            Some(reference.compare(&net, data, progress)?)
        }
    };
    let full_loss = full_plan.as_ref().map_or(0.0, task_loss);

    // One stage over every layer's run, so the bar moves forward through the whole ranking; the text names the
    // layer being measured.
    let mut layers = Vec::with_capacity(candidates.len());
    progress.start_stage(format!("sensitivity 0/{}", candidates.len()), (candidates.len() * data.len()) as u64);
    for (done, &id) in candidates.iter().enumerate() {
        let name = &model.layer(id).name;
        progress.rename_stage(format!("sensitivity {}/{}: {name}", done + 1, candidates.len()));
        let mut variant = plan.clone();
        match mode {
            SensitivityMode::OneAtATime => {
                variant.layers.iter_mut().enumerate().for_each(|(i, p)| {
                    if i != id.0 {
                        *p = Precision::Fp32;
                    }
                });
            }
            SensitivityMode::AllButOne => variant.layers[id.0] = Precision::Fp32,
        }
        let source = WeightSource::sharing_with(&reference_source, &full_source, &variant);
        let net = Network::from_source(arch, &source)?;
        let report = reference.compare(&net, data, progress)?;
        let loss = task_loss(&report);
        let score = match mode {
            SensitivityMode::OneAtATime => loss,
            SensitivityMode::AllButOne => full_loss - loss,
        };
        let result = LayerSensitivity { layer: name.clone(), precision: plan.layer(id), score, report };
        on_layer(&result);
        layers.push(result);
    }
    rank(&mut layers, mode);
    let metric = task_loss_name(full_plan.as_ref().unwrap_or(&layers[0].report));
    Ok(SensitivityReport { mode, metric, full_plan, layers })
}

/// Most sensitive first: by score, then (ties are common with accuracy on small data) by the output SQNR of the
/// variant: lower first one at a time (more damage), higher first all but one (more recovered); then by name.
pub fn rank(layers: &mut [LayerSensitivity], mode: SensitivityMode) {
    let sqnr = |l: &LayerSensitivity| l.report.output_sqnr_db.unwrap_or(f64::INFINITY);
    layers.sort_by(|a, b| {
        let by_sqnr = match mode {
            SensitivityMode::OneAtATime => sqnr(a).total_cmp(&sqnr(b)),
            SensitivityMode::AllButOne => sqnr(b).total_cmp(&sqnr(a)),
        };
        b.score.total_cmp(&a.score).then(by_sqnr).then_with(|| a.layer.cmp(&b.layer))
    });
}
