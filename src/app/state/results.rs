//! The results log of the open model: evaluated plans, benchmarks and the sensitivity analysis, as the worker
//! reports them. Plans kept here can be restored into the editor.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::{Notice, Reaction};
use crate::calib::{LayerSensitivity, SensitivityMode};
use crate::export::planned_bytes;
use crate::model::{LayerId, Model, TensorId};
use crate::quant::{Plan, Precision};
use crate::runtime::EvalReport;
use crate::runtime::benchmark::Configuration;
use crate::worker::{JobId, Outcome};

/// A sensitivity analysis, streaming or finished.
#[derive(Clone, Debug, Default)]
pub struct SensitivityState {
    /// The data it ran on.
    pub data: PathBuf,
    /// Its mode, once started.
    pub mode: Option<SensitivityMode>,
    /// Results as they arrive; ranked (most sensitive first) once `ranked`.
    pub results: Vec<LayerSensitivity>,
    /// Score by layer.
    pub scores: HashMap<LayerId, f64>,
    /// Whether the analysis finished and `results` is the ranking.
    pub ranked: bool,
    /// The name of the task loss behind the scores.
    pub metric: Option<&'static str>,
    /// Layers to try, when it started.
    pub planned: usize,
}

/// One evaluated plan, kept for comparison with the others.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// 1, 2, ... in the order they finished.
    pub number: usize,
    /// The plan's precision per layer.
    pub plan: Vec<Precision>,
    /// Layers per precision, e.g. "INT8 3, FP32 2".
    pub summary: String,
    /// Export size under the plan.
    pub planned_bytes: u64,
    /// The data it ran on.
    pub data: PathBuf,
    /// The figures.
    pub report: EvalReport,
}

/// One perplexity run of a plan beside FP32, kept for comparison with the others.
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityRun {
    /// 1, 2, ... in the order they finished.
    pub number: usize,
    /// Layers per precision, e.g. "INT8 3, FP32 2".
    pub summary: String,
    /// The text, context and chunks.
    pub input: crate::tasks::PerplexityInput,
    /// The figures.
    pub report: crate::runtime::perplexity::PerplexityReport,
}

/// One benchmarked configuration: FP32 (re-timed with every plan, so the two are measured side by side) or a
/// plan tried in this session.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchEntry {
    /// 1, 2, ... for plans in the order they finished; 0 for FP32.
    pub number: usize,
    /// The plan's precision per layer; `None` for FP32.
    pub plan: Option<Vec<Precision>>,
    /// Layers per precision, e.g. "INT8 3, FP32 2" ("FP32" for FP32).
    pub summary: String,
    /// The data of the accuracy figures.
    pub data: Option<PathBuf>,
    /// The figures.
    pub configuration: Configuration,
    /// For a plan: FP32's median latency timed beside it in the same benchmark run (its speed-up is relative to
    /// that); `None` when that run timed no FP32.
    pub fp32_latency_ms: Option<f64>,
}

impl BenchEntry {
    /// The plan's speed-up over the FP32 of its own run (1 for FP32 itself); `None` without a baseline.
    pub fn speedup(&self) -> Option<f64> {
        let median_ms = self.configuration.latency.latency_ms_median;
        let base_ms = if self.plan.is_none() { Some(median_ms) } else { self.fp32_latency_ms };
        base_ms.filter(|_| median_ms > 0.0).map(|base| base / median_ms)
    }
}

/// Evaluations, benchmarks and sensitivity of the open model.
#[derive(Clone, Debug, Default)]
pub struct ResultsLog {
    /// Plans evaluated on the open model, oldest first.
    pub evaluations: Vec<Evaluation>,
    /// Perplexity runs on the open model, oldest first.
    pub perplexities: Vec<PerplexityRun>,
    /// Benchmarks of the open model: FP32 (the latest timing) first, then every plan benchmarked, oldest first.
    pub benchmarks: Vec<BenchEntry>,
    /// The last sensitivity analysis of the open model.
    pub sensitivity: Option<SensitivityState>,
    /// FP32 medians of benchmark runs whose plan has not arrived yet, by job: a plan is compared with the FP32 of
    /// its own run only, never with an earlier or a concurrent run's.
    fp32_by_run: BTreeMap<JobId, f64>,
}

impl ResultsLog {
    /// Forgets everything (a new model).
    pub fn clear(&mut self) {
        *self = ResultsLog::default();
    }

    /// A new sensitivity analysis starts (its results replace the last one's as they arrive).
    pub fn start_sensitivity(&mut self, data: PathBuf, mode: SensitivityMode, planned: usize) {
        self.sensitivity = Some(SensitivityState { data, mode: Some(mode), planned, ..Default::default() });
    }

    /// The sensitivity scores by layer, when any.
    pub fn scores(&self) -> Option<&HashMap<LayerId, f64>> {
        self.sensitivity.as_ref().map(|s| &s.scores)
    }

    /// The number and precisions of evaluation `index`.
    pub fn evaluation_plan(&self, index: usize) -> Option<(usize, Vec<Precision>)> {
        self.evaluations.get(index).map(|e| (e.number, e.plan.clone()))
    }

    /// The number and precisions of benchmark entry `index` (`None` for FP32).
    pub fn benchmark_plan(&self, index: usize) -> Option<(usize, Vec<Precision>)> {
        let entry = self.benchmarks.get(index)?;
        Some((entry.number, entry.plan.clone()?))
    }

    /// The `count` most sensitive layers of the ranking (ranked so far, while it streams), with their names; an
    /// error message when there is no ranking.
    pub fn most_sensitive(&self, model: &Model, count: usize) -> Result<(Vec<LayerId>, Vec<String>), String> {
        let no_ranking = || "no sensitivity ranking yet: run Sensitivity first".to_owned();
        let sensitivity = self.sensitivity.as_ref().ok_or_else(no_ranking)?;
        let mut ranked = sensitivity.results.clone();
        if !sensitivity.ranked {
            crate::calib::sensitivity::rank(&mut ranked, sensitivity.mode.unwrap_or(SensitivityMode::OneAtATime));
        }
        let layers: Vec<LayerId> = ranked.iter().take(count).filter_map(|r| model.layer_by_name(&r.layer)).collect();
        if layers.is_empty() {
            return Err(no_ranking());
        }
        Ok((layers, ranked.iter().take(count).map(|r| r.layer.clone()).collect()))
    }

    /// Files the outcomes of evaluation, benchmark and sensitivity jobs of the open model.
    pub fn on_outcome(&mut self, job: JobId, outcome: &Outcome, model: &Model) -> Reaction {
        match outcome {
            Outcome::Evaluated { plan, data, report } => self.evaluated(model, plan, data.clone(), report.clone()),
            Outcome::Perplexity { plan, input, report } => {
                let number = self.perplexities.last().map_or(1, |p| p.number + 1);
                let notice = Notice::info(format!("perplexity #{number} done: {}", report.headline()));
                let summary = plan_summary(model, &plan.layers);
                self.perplexities.push(PerplexityRun { number, summary, input: input.clone(), report: report.clone() });
                Reaction::notice(notice)
            }
            Outcome::Benchmarked { plan, data, configuration } => {
                self.benchmarked(job, model, plan.as_ref(), data.clone(), (**configuration).clone())
            }
            Outcome::SensitivityLayer(result) => {
                let Some(state) = &mut self.sensitivity else { return Reaction::default() };
                if let Some(id) = model.layer_by_name(&result.layer) {
                    state.scores.insert(id, result.score);
                }
                state.results.push(result.clone());
                Reaction { figures_changed: true, ..Reaction::default() }
            }
            Outcome::SensitivityRanked(report) => {
                let Some(state) = &mut self.sensitivity else { return Reaction::default() };
                state.metric = Some(report.metric);
                state.results = report.layers.clone();
                state.ranked = true;
                let top = state.results.first().map(|r| r.layer.clone()).unwrap_or_default();
                let notice = Notice::info(format!("sensitivity ranked; most sensitive: {top}"));
                Reaction { notice: Some(notice), figures_changed: true, ..Reaction::default() }
            }
            _ => Reaction::default(),
        }
    }

    /// A benchmark job's run ended (its FP32 timing, if the plan never came, is no baseline for anything else).
    pub fn run_finished(&mut self, job: JobId) {
        self.fp32_by_run.remove(&job);
    }

    fn benchmarked(
        &mut self,
        job: JobId,
        model: &Model,
        plan: Option<&Plan>,
        data: Option<PathBuf>,
        configuration: Configuration,
    ) -> Reaction {
        let median_ms = configuration.latency.latency_ms_median;
        let Some(plan) = plan else {
            // FP32 is re-timed beside every plan: the latest timing replaces the earlier one in the FP32 row, and
            // is remembered for the plan of the same run.
            self.fp32_by_run.insert(job, median_ms);
            let entry = BenchEntry {
                number: 0,
                plan: None,
                summary: "FP32".into(),
                data,
                configuration,
                fp32_latency_ms: None,
            };
            match self.benchmarks.first_mut() {
                Some(first) if first.plan.is_none() => *first = entry,
                _ => self.benchmarks.insert(0, entry),
            }
            return Reaction::default();
        };
        let summary = plan_summary(model, &plan.layers);
        let number = self.benchmarks.iter().map(|b| b.number).max().unwrap_or(0) + 1;
        let fp32_latency_ms = self.fp32_by_run.remove(&job);
        let entry =
            BenchEntry { number, plan: Some(plan.layers.clone()), summary, data, configuration, fp32_latency_ms };
        let speedup = entry.speedup().map(|x| format!(" ({x:.2}x FP32)")).unwrap_or_default();
        self.benchmarks.push(entry);
        Reaction::notice(Notice::info(format!("benchmark #{number} done: median {median_ms:.3} ms{speedup}")))
    }

    fn evaluated(&mut self, model: &Model, plan: &Plan, data: PathBuf, report: EvalReport) -> Reaction {
        let summary = plan_summary(model, &plan.layers);
        let planned_bytes = (0..model.tensors.len()).map(|i| planned_bytes(model, plan, TensorId(i))).sum();
        let number = self.evaluations.last().map_or(1, |e| e.number + 1);
        let notice = Notice::info(format!("evaluation #{number} done: {}", report.headline()));
        self.evaluations.push(Evaluation { number, plan: plan.layers.clone(), summary, planned_bytes, data, report });
        Reaction::notice(notice)
    }
}

/// Layers per precision name in a plan, counting only layers with float tensors.
pub fn precision_counts(model: &Model, layers: &[Precision]) -> [(&'static str, usize); 10] {
    let mut counts = precision_counts_empty();
    for (index, precision) in layers.iter().enumerate() {
        if model.main_tensor(LayerId(index)).is_none() {
            continue;
        }
        let slot = match precision {
            Precision::Int8(_) if precision.needs_calibration() => 1,
            Precision::Int8(_) if precision.quantizes_inputs() => 2,
            Precision::Int8(_) => 0,
            Precision::Fp8(_) if precision.quantizes_inputs() => 4,
            Precision::Fp8(_) => 3,
            Precision::Int4(_) => 5,
            Precision::Fp16 => 6,
            Precision::Bf16 => 7,
            Precision::Fp32 => 8,
            Precision::Q8_0 | Precision::Q4_0 | Precision::Q4K | Precision::Q6K => 9,
        };
        counts[slot].1 += 1;
    }
    counts
}

/// Layers per precision in one phrase, e.g. "INT8 3, FP32 2".
pub fn plan_summary(model: &Model, layers: &[Precision]) -> String {
    let counts = precision_counts(model, layers);
    counts.iter().filter(|(_, n)| *n > 0).map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
}

/// Every precision name with a count of 0.
pub fn precision_counts_empty() -> [(&'static str, usize); 10] {
    [
        ("INT8", 0),
        ("W8A8", 0),
        ("W8A8-dyn", 0),
        ("FP8", 0),
        ("FP8-dyn", 0),
        ("INT4", 0),
        ("FP16", 0),
        ("BF16", 0),
        ("FP32", 0),
        ("GGUF blocks", 0),
    ]
}
