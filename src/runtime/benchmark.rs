//! The benchmark of a plan against FP32, as the window and `quantstudio bench` show it: for each configuration the
//! latency and throughput of the network as deployed ([`Network::build_deployed`]: INT8 codes, half-precision
//! weights), the bytes of weights it holds, its size on disk, and, when evaluation data is given, the accuracy
//! figures of that same deployed network against FP32 ([`super::eval`]).

use serde::Serialize;

use super::eval::Reference;
use super::latency::{Latency, Workload, measure, measure_interleaved};
use super::{Architecture, EvalData, EvalReport, Network};
use crate::error::Result;
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::Plan;

/// The one figure of merit a family's evaluation is judged by (the chart's vertical axis).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// "accuracy" (labelled classification data), "mean cosine" (BERT) or "top-1 agreement" (other families).
    pub metric: &'static str,
    /// Its value: a fraction for accuracy and agreement, a cosine similarity otherwise; higher is better.
    pub value: f64,
}

impl Quality {
    /// The figure of the plan in `report`.
    pub fn of_plan(report: &EvalReport) -> Option<Quality> {
        match (report.accuracy, report.mean_cosine, report.top1_agreement) {
            (Some(value), _, _) => Some(Quality { metric: "accuracy", value }),
            (_, Some(value), _) => Some(Quality { metric: "mean cosine", value }),
            (_, _, Some(value)) => Some(Quality { metric: "top-1 agreement", value }),
            _ => None,
        }
    }

    /// The same figure for FP32 itself: its accuracy on labelled data, and otherwise the value of FP32 compared
    /// with itself (cosine 1, agreement 1), by definition.
    pub fn of_fp32(report: &EvalReport) -> Option<Quality> {
        let plan = Self::of_plan(report)?;
        let value = if plan.metric == "accuracy" { report.fp32_accuracy? } else { 1.0 };
        Some(Quality { metric: plan.metric, value })
    }
}

impl std::fmt::Display for Quality {
    /// "accuracy 99.17%", "mean cosine 0.99931", "top-1 agreement 97.50%".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.metric, self.value_text())
    }
}

impl Quality {
    /// The value alone as shown: a percentage, or a cosine with five decimals.
    pub fn value_text(&self) -> String {
        if self.metric == "mean cosine" { format!("{:.5}", self.value) } else { format!("{:.2}%", self.value * 100.0) }
    }
}

/// One benchmarked configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Configuration {
    /// "FP32", or "plan".
    pub name: String,
    /// Latency, throughput and the bytes of weights held in memory.
    #[serde(flatten)]
    pub latency: Latency,
    /// Bytes of the checkpoint on disk: as stored for FP32, as exported for the plan.
    pub disk_bytes: u64,
    /// Layers running INT8 integer products (W8A8 with symmetric weights).
    pub integer_layers: u64,
    /// Layers holding their weights as FP16, BF16 or INT8 codes, converted tile by tile at run time.
    pub compact_layers: u64,
    /// The family's figure of merit on the evaluation data (absent without data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// The full comparison of this configuration's outputs with FP32's (plans only, with data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvalReport>,
}

/// What to benchmark.
pub struct Request<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its architecture.
    pub arch: &'a Architecture,
    /// The plan to time beside FP32 (`None`: FP32 only).
    pub plan: Option<&'a Plan>,
    /// Whether FP32 itself is timed (its network is always built when there is data: it is the reference).
    pub time_fp32: bool,
    /// Evaluation data for the accuracy figures.
    pub data: Option<&'a EvalData>,
    /// The timed runs.
    pub workload: Workload,
    /// Bytes of the plan's files on disk, as its export target writes them (0 without a plan).
    pub plan_disk_bytes: u64,
}

/// Runs `request`, handing each configuration to `on_configuration` once measured (FP32 first). FP32 and the plan
/// are timed in alternation (one run of each per round), so that a slow spell of the machine falls on both.
pub fn run(request: &Request, progress: &Progress, on_configuration: &mut dyn FnMut(Configuration)) -> Result<()> {
    let Request { model, arch, plan, time_fp32, data, workload, plan_disk_bytes } = *request;
    if let Some(plan) = plan {
        plan.check_calibrated(model)?;
    }
    // Accuracy is measured for a plan against FP32, whose outputs on the data are computed first.
    let data = data.filter(|_| plan.is_some());
    progress.start_stage("reading FP32 weights", 0);
    let fp32 =
        if time_fp32 || data.is_some() { Some(Network::build_measured(model, arch, None, progress)?) } else { None };
    let reference = match (&fp32, data) {
        (Some((net, _)), Some(data)) => {
            progress.start_stage("FP32 reference", data.len() as u64);
            Some(Reference::run(net, data, progress)?)
        }
        _ => None,
    };
    let fp32_configuration = |latency, quality| Configuration {
        name: "FP32".into(),
        latency,
        disk_bytes: model.size_bytes(),
        integer_layers: 0,
        compact_layers: 0,
        quality,
        evaluation: None,
    };
    let timed_fp32 = fp32.as_ref().filter(|_| time_fp32).map(|(net, bytes)| (net, *bytes));
    let Some(plan) = plan else {
        if let Some((net, bytes)) = timed_fp32 {
            on_configuration(fp32_configuration(measure(net, bytes, workload, progress)?, None));
        }
        return Ok(());
    };
    progress.start_stage("building the plan as deployed", 0);
    let deployed = Network::build_deployed(model, arch, plan, progress)?;
    let evaluation = match (&reference, data) {
        (Some(reference), Some(data)) => {
            progress.start_stage("plan on the evaluation data", data.len() as u64);
            Some(reference.compare(&deployed.network, data, progress)?)
        }
        _ => None,
    };
    let mut nets = vec![(&deployed.network, deployed.weights_bytes)];
    if let Some(fp32) = timed_fp32 {
        nets.insert(0, fp32);
    }
    let mut latencies = measure_interleaved(&nets, workload, progress)?;
    let plan_latency = latencies.pop().expect("the plan was timed");
    if let Some(fp32_latency) = latencies.pop() {
        // FP32's figure comes with the plan's evaluation (the FP32 accuracy is measured beside it).
        on_configuration(fp32_configuration(fp32_latency, evaluation.as_ref().and_then(Quality::of_fp32)));
    }
    on_configuration(Configuration {
        name: "plan".into(),
        latency: plan_latency,
        disk_bytes: plan_disk_bytes,
        integer_layers: deployed.integer_layers,
        compact_layers: deployed.compact_layers,
        quality: evaluation.as_ref().and_then(Quality::of_plan),
        evaluation,
    });
    Ok(())
}
