//! The model-wide analysis: every float tensor through the analysis pass under the plan, with sizes before and
//! after (histograms are added on demand by [`crate::tasks::add_histograms`]).
//! The CLI prints it (as a table or JSON) and the window shows the same figures.

use crate::error::Result;
use crate::model::{DType, Model, TensorId};
use crate::progress::Progress;
use crate::quant::pass::{TensorData, analyze};
use crate::quant::{Plan, Precision, TensorAnalysis, TensorHistograms};

/// One tensor of the report.
#[derive(Clone, Debug)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Layer name.
    pub layer: String,
    /// Layer kind.
    pub kind: &'static str,
    /// Stored dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes as stored.
    pub size_bytes: u64,
    /// Bytes under the plan.
    pub planned_bytes: u64,
    /// The precision the tensor gets (`fp32` = kept as stored; integer tensors are always kept).
    pub precision: Precision,
    /// Statistics and error, for float tensors.
    pub analysis: Option<TensorAnalysis>,
    /// Value and error histograms, for float tensors, when asked for.
    pub histograms: Option<TensorHistograms>,
}

impl TensorReport {
    /// Whether the tensor was analysed (float tensors only).
    pub fn is_analysed(&self) -> bool {
        self.analysis.is_some()
    }
}

/// The analysis of a whole model under a plan.
#[derive(Clone, Debug)]
pub struct ModelReport {
    /// Every tensor, in model order.
    pub tensors: Vec<TensorReport>,
    /// Bytes of tensor data as stored.
    pub size_bytes: u64,
    /// Bytes under the plan.
    pub planned_bytes: u64,
}

impl ModelReport {
    /// `size_bytes / planned_bytes` (1 when empty).
    pub fn compression_ratio(&self) -> f64 {
        if self.planned_bytes == 0 { 1.0 } else { self.size_bytes as f64 / self.planned_bytes as f64 }
    }

    /// The analysed tensor with the lowest SQNR (lossless ones never count).
    pub fn worst_by_sqnr(&self) -> Option<(&TensorReport, f64)> {
        self.tensors
            .iter()
            .filter_map(|t| t.analysis.as_ref().and_then(|a| a.error.sqnr_db).map(|db| (t, db)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Analyses every float tensor of `model` under `plan` (tensors one after another, each in parallel).
pub fn analyze_model(model: &Model, plan: &Plan, progress: &Progress) -> Result<ModelReport> {
    let float_elements: u64 = model.tensors.iter().filter(|t| t.is_analysable()).map(|t| 2 * t.numel() as u64).sum();
    progress.start_stage("analysing tensors", float_elements);
    let mut tensors = Vec::with_capacity(model.tensors.len());
    for (index, info) in model.tensors.iter().enumerate() {
        progress.check()?;
        let id = TensorId(index);
        let precision = plan.tensor(model, id);
        let analysis =
            if info.is_analysable() { Some(analyze(&TensorData::of(model, id)?, precision, progress)?) } else { None };
        let layer = model.layer(info.layer);
        tensors.push(TensorReport {
            name: info.name.clone(),
            layer: layer.name.clone(),
            kind: layer.kind.as_str(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            size_bytes: info.size_bytes(),
            planned_bytes: crate::export::planned_bytes(model, plan, id),
            precision,
            analysis,
            histograms: None,
        });
    }
    let planned_bytes = tensors.iter().map(|t| t.planned_bytes).sum();
    Ok(ModelReport { tensors, size_bytes: model.size_bytes(), planned_bytes })
}
