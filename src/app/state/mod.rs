//! The window's state and the commands that change it. No drawing here, and no heavy work: files are opened,
//! analysed and written by jobs on the [`Worker`]; this module only schedules them and files their results.
//!
//! The state is in parts, each owning its fields, its commands and the worker outcomes it files, and each usable
//! without egui: [`PlanEditor`] (the plan and its undo history), [`CalibrationState`] (histograms and input errors),
//! [`ResultsLog`] (evaluations, benchmarks, sensitivity), [`Analyses`] (tensor errors) and [`TableView`] (filter,
//! sort, selection, displayed order, per-row figures). [`Studio`] routes commands and events to them and runs the
//! jobs.

mod analyses;
mod calibration;
mod editor;
mod results;
mod table;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::calib::{ClipError, Observer, SensitivityMode};
use crate::error::Error;
use crate::export::{Compatibility, ExportSummary, planned_bytes};
use crate::model::{LayerId, Model, TensorId};
use crate::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe, TensorAnalysis, TensorHistograms};
use crate::runtime::Architecture;
use crate::worker::{Event, Job, JobId, JobKind, Outcome, Worker};

pub use analyses::Analyses;
pub use calibration::{CalibrationState, LastCalibration};
pub use editor::{CalibratedLayers, DEFAULT_OBSERVER, PlanEdit, PlanEditor};
pub use results::{BenchEntry, Evaluation, ResultsLog, SensitivityState, plan_summary, precision_counts};
pub use table::{LayerFacts, NameFilter, PlannedError, RowProblem, SortColumn, TableView};

/// The default INT8 scheme offered first: symmetric, per output channel.
pub const DEFAULT_INT8: Precision = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel));

/// Everything the user can ask the studio to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Open a model file or folder.
    Open(PathBuf),
    /// Set the precision of these layers.
    SetPrecision {
        /// The layers.
        layers: Vec<LayerId>,
        /// The new precision.
        precision: Precision,
    },
    /// Set the precision of every layer whose name matches a glob (or contains the text, when it has no
    /// wildcard).
    SetPrecisionMatching {
        /// Glob or text.
        pattern: String,
        /// The new precision.
        precision: Precision,
    },
    /// Undo the last plan edit.
    Undo,
    /// Redo the last undone plan edit.
    Redo,
    /// Cancel the running job of a kind.
    Cancel(JobKind),
    /// Give every layer the export target refuses the precision its runtimes load (one undoable edit).
    ApplyExportFixes,
    /// Choose the export target (the compatibility verdict follows it).
    SetTarget(crate::export::Target),
    /// Export the current plan into a folder (`force`: even if a runtime of the target will not load it).
    Export {
        /// Destination folder.
        dest: PathBuf,
        /// Write it even when a runtime of the target refuses some layers.
        force: bool,
    },
    /// Save the current plan as a recipe file.
    SaveRecipe(PathBuf),
    /// Load a recipe file and apply it.
    LoadRecipe(PathBuf),
    /// Run the model in FP32 and under the current plan on this data file, and compare.
    Evaluate(PathBuf),
    /// Make the plan of an earlier evaluation (index into [`ResultsLog::evaluations`]) the current plan.
    RestorePlan(usize),
    /// Run FP32 and the plan on a text and measure perplexity and KL (Llama models).
    Perplexity(crate::tasks::PerplexityInput),
    /// Forget the evaluations of this session.
    ClearEvaluations,
    /// Histogram the input of every layer on this data file (the calibration used by W8A8 layers).
    Calibrate(PathBuf),
    /// Quantize the plan's INT4 and INT8 layers with GPTQ on this calibration data file.
    Gptq {
        /// The data file.
        data: PathBuf,
        /// Visit the columns by decreasing input energy.
        act_order: bool,
    },
    /// Choose the observer that picks every layer's input clip (hand-set clips stay).
    SetObserver(Observer),
    /// Set one layer's input clip by hand; `None` gives it back to the observer.
    SetInputClip {
        /// The layer.
        layer: LayerId,
        /// The clip (absolute value), or `None`.
        clip: Option<f32>,
    },
    /// Rank the layers the plan quantizes by sensitivity on this data file.
    Sensitivity {
        /// The data file.
        data: PathBuf,
        /// One at a time, or all but one.
        mode: SensitivityMode,
    },
    /// Set the `count` most sensitive layers of the last ranking to `precision`.
    SetMostSensitive {
        /// How many, from the top of the ranking.
        count: usize,
        /// Usually FP16 or FP32.
        precision: Precision,
    },
    /// Time FP32 and the current plan as deployed; with a data file, measure the plan's accuracy beside.
    Benchmark {
        /// Evaluation data for the accuracy figures.
        data: Option<PathBuf>,
    },
    /// Make the plan of an earlier benchmark (index into [`ResultsLog::benchmarks`]) the current plan.
    RestoreBenchmarkPlan(usize),
    /// Forget the benchmarks of this session.
    ClearBenchmarks,
    /// Ask again for the inspected layer's histograms after their job was cancelled or failed.
    ComputeHistograms,
    /// Hide the current notice.
    DismissNotice,
}

/// A message for the user in the status bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// One line.
    pub text: String,
    /// Whether it reports a failure.
    pub is_error: bool,
}

impl Notice {
    /// A message that reports no failure.
    pub fn info(text: impl Into<String>) -> Notice {
        Notice { text: text.into(), is_error: false }
    }

    /// A message that reports a failure.
    pub fn error(text: impl Into<String>) -> Notice {
        Notice { text: text.into(), is_error: true }
    }
}

/// What a part's handling of a command or an outcome asks of the studio.
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct Reaction {
    /// A message for the status bar.
    pub notice: Option<Notice>,
    /// The plan changed: sizes, the export verdict, input errors and analyses follow it.
    pub plan_changed: bool,
    /// Figures the table shows changed (analyses, scores, calibration).
    pub figures_changed: bool,
}

impl Reaction {
    /// Only a message.
    pub fn notice(notice: Notice) -> Reaction {
        Reaction { notice: Some(notice), ..Reaction::default() }
    }

    /// Only whether the plan changed.
    pub fn plan(changed: bool) -> Reaction {
        Reaction { plan_changed: changed, ..Reaction::default() }
    }

    /// Both reactions (the later notice wins).
    pub fn and(self, other: Reaction) -> Reaction {
        Reaction {
            notice: other.notice.or(self.notice),
            plan_changed: self.plan_changed || other.plan_changed,
            figures_changed: self.figures_changed || other.figures_changed,
        }
    }
}

/// Preferences kept between runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Preferences {
    /// Recently opened models, most recent first.
    pub recent: Vec<PathBuf>,
    /// Histogram counts on a log scale.
    pub log_counts: bool,
    /// Whether the inspector panel is shown.
    pub show_inspector: bool,
    /// Whether the accuracy panel is shown.
    pub show_accuracy: bool,
    /// Whether the calibrate & diagnose panel is shown.
    pub show_diagnose: bool,
    /// Whether the accuracy panel shows the benchmark instead of the evaluations.
    pub show_benchmark_tab: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            recent: Vec::new(),
            log_counts: true,
            show_inspector: true,
            show_accuracy: true,
            show_diagnose: true,
            show_benchmark_tab: false,
        }
    }
}

const MAX_RECENT: usize = 8;

/// The studio's state: the open model, the parts, and the jobs that fill them.
pub struct Studio {
    worker: Worker,
    /// The open model.
    pub model: Option<Arc<Model>>,
    /// Path of the model being opened or open.
    pub model_path: Option<PathBuf>,
    /// The plan and its undo history.
    pub editor: PlanEditor,
    /// Tensor analyses of the open model.
    pub analyses: Analyses,
    /// The layer table's filter, sort, selection and order.
    pub table: TableView,
    /// The calibration of the open model.
    pub calibration: CalibrationState,
    /// Evaluations, benchmarks and sensitivity of the open model.
    pub results: ResultsLog,
    /// The message of the status bar.
    pub notice: Option<Notice>,
    /// The last export.
    pub last_export: Option<ExportSummary>,
    /// Where exports go.
    pub target: crate::export::Target,
    /// The target's verdict on the current plan (recomputed with every plan change: layer metadata only).
    pub compatibility: Option<Compatibility>,
    /// The destination of an export the target refused, kept so that "Export anyway" can force it.
    pub refused_export: Option<PathBuf>,
    /// How the open model runs, or why it cannot (weight-only mode); `None` while none is open.
    pub runtime: Option<Result<Arc<Architecture>, String>>,
    /// The evaluation data the model's folder brings, if any.
    pub default_eval_data: Option<PathBuf>,
    /// Persisted preferences.
    pub prefs: Preferences,
    /// Bumped whenever the model, the plan or a figure the table shows changes (for caches of derived values).
    pub revision: u64,
    generation: u64,
    job_generation: HashMap<JobId, u64>,
    user_cancelled: BTreeSet<JobKind>,
    planned_total: u64,
}

impl Studio {
    /// A studio with no model; `wake` is called from worker threads when an event is ready.
    pub fn new(prefs: Preferences, wake: impl Fn() + Send + Sync + 'static) -> Studio {
        Studio {
            worker: Worker::new(wake),
            model: None,
            model_path: None,
            editor: PlanEditor::default(),
            analyses: Analyses::default(),
            table: TableView::default(),
            calibration: CalibrationState::default(),
            results: ResultsLog::default(),
            notice: None,
            last_export: None,
            target: crate::export::Target::default(),
            compatibility: None,
            refused_export: None,
            runtime: None,
            default_eval_data: None,
            prefs,
            revision: 0,
            generation: 0,
            job_generation: HashMap::new(),
            user_cancelled: BTreeSet::new(),
            planned_total: 0,
        }
    }

    /// The plan: one precision per layer, with the input clips resolved.
    pub fn plan(&self) -> &Plan {
        self.editor.plan()
    }

    /// Running jobs with their progress.
    pub fn jobs(&self) -> Vec<(JobKind, JobId, crate::progress::ProgressSnapshot)> {
        self.worker.running()
    }

    /// Whether any job runs (the window keeps repainting for its progress).
    pub fn is_busy(&self) -> bool {
        !self.worker.running().is_empty()
    }

    /// Whether undo has something to undo.
    pub fn can_undo(&self) -> bool {
        self.editor.can_undo()
    }

    /// Whether redo has something to redo.
    pub fn can_redo(&self) -> bool {
        self.editor.can_redo()
    }

    /// Planned size of the whole model under the plan.
    pub fn planned_bytes(&self) -> u64 {
        self.planned_total
    }

    /// What the table's per-row figures are computed from; `None` without a model.
    pub fn facts(&self) -> Option<LayerFacts<'_>> {
        Some(LayerFacts {
            model: self.model.as_deref()?,
            plan: self.editor.plan(),
            analyses: &self.analyses,
            calibration: &self.calibration,
            scores: self.results.scores(),
            compatibility: self.compatibility.as_ref(),
        })
    }

    /// Planned size of one layer.
    pub fn layer_planned_bytes(&self, layer: LayerId) -> u64 {
        self.facts().map_or(0, |f| f.planned_bytes(layer))
    }

    /// The analysis of a layer's main tensor under its planned precision, when computed.
    pub fn layer_analysis(&self, layer: LayerId) -> Option<&Arc<TensorAnalysis>> {
        self.analyses.of_layer(self.model.as_deref()?, self.editor.plan(), layer)
    }

    /// A layer's error as planned (the weights', and a static W8A8 layer's input's), once its weights are analysed.
    pub fn planned_error(&self, layer: LayerId) -> Option<PlannedError> {
        self.facts()?.planned_error(layer)
    }

    /// Why a layer's plan cannot run or deploy, if it cannot.
    pub fn row_problem(&self, layer: LayerId) -> Option<RowProblem> {
        self.facts()?.row_problem(layer)
    }

    /// The input clip of layer `id` and its activation error (cached: recomputed only when the clip changes).
    pub fn input_clip_error(&mut self, id: LayerId) -> Option<(f32, ClipError)> {
        let clip = self.editor.plan().input_clips.get(id.0).copied().flatten()?;
        Some((clip, self.calibration.input_error_cached(id, clip)?))
    }

    /// Counts of layers per precision name (INT8 weight-only, W8A8, FP16, BF16, FP32), only layers with float
    /// tensors.
    pub fn precision_counts(&self) -> [(&'static str, usize); 10] {
        match &self.model {
            Some(model) => precision_counts(model, &self.editor.plan().layers),
            None => results::precision_counts_empty(),
        }
    }

    /// Layers in table order (see [`TableView`] for when the order is recomputed).
    pub fn rows(&mut self) -> Vec<LayerId> {
        let Some(model) = self.model.as_deref() else { return Vec::new() };
        let facts = LayerFacts {
            model,
            plan: self.editor.plan(),
            analyses: &self.analyses,
            calibration: &self.calibration,
            scores: self.results.scores(),
            compatibility: self.compatibility.as_ref(),
        };
        self.table.rows(&facts, self.generation, self.revision)
    }

    /// Click on a row: plain (select only it), Ctrl (toggle), Shift (range from the anchor in `order`).
    pub fn click_row(&mut self, layer: LayerId, ctrl: bool, shift: bool, order: &[LayerId]) {
        // The focused layer's analysis goes to the front of the queue.
        if self.table.click_row(layer, ctrl, shift, order) && self.layer_analysis(layer).is_none() {
            self.schedule_analysis();
        }
    }

    /// Applies a command: plan edits go to the editor, the results' own commands to the log, the rest start jobs.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::Open(path) => self.open(path),
            Command::Cancel(kind) => self.cancel(kind),
            Command::DismissNotice => self.notice = None,
            Command::ComputeHistograms => self.analyses.ask_histograms_again(),
            Command::SetTarget(target) => {
                self.target = target;
                let plan = self.editor.plan();
                self.compatibility = self.model.as_ref().map(|model| target.check(model, plan));
                self.refused_export = None;
            }
            Command::Export { .. }
            | Command::SaveRecipe(_)
            | Command::LoadRecipe(_)
            | Command::Evaluate(_)
            | Command::Perplexity(_)
            | Command::Benchmark { .. }
            | Command::Calibrate(_)
            | Command::Gptq { .. }
            | Command::Sensitivity { .. } => self.start_job(command),
            Command::RestorePlan(index) => {
                if let Some((number, plan)) = self.results.evaluation_plan(index) {
                    self.restore(plan, format!("plan #{number} restored"));
                }
            }
            Command::RestoreBenchmarkPlan(index) => {
                if let Some((number, plan)) = self.results.benchmark_plan(index) {
                    self.restore(plan, format!("benchmarked plan #{number} restored"));
                }
            }
            Command::ClearEvaluations => {
                self.results.evaluations.clear();
                self.results.perplexities.clear();
            }
            Command::ClearBenchmarks => self.results.benchmarks.clear(),
            Command::SetMostSensitive { count, precision } => self.set_most_sensitive(count, precision),
            Command::SetPrecision { .. }
            | Command::SetPrecisionMatching { .. }
            | Command::Undo
            | Command::Redo
            | Command::ApplyExportFixes
            | Command::SetObserver(_)
            | Command::SetInputClip { .. } => {
                let Some(model) = self.model.clone() else { return };
                let reaction = self.editor.apply(&command, &model, self.compatibility.as_ref());
                self.react(reaction);
            }
        }
    }

    /// Drains worker events for at most `budget`, then asks for the inspected layer's histograms if they are
    /// missing.
    pub fn poll(&mut self, budget: std::time::Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < budget {
            let Some(event) = self.worker.try_next() else { break };
            self.handle(event);
        }
        self.request_histograms();
    }

    /// Whether the inspected layer's histograms job was cancelled or failed (the inspector offers to ask again).
    pub fn layer_histograms_stopped(&self, layer: LayerId) -> bool {
        self.model.as_deref().is_some_and(|model| self.analyses.histograms_stopped(model, self.editor.plan(), layer))
    }

    /// The histograms of the inspected layer, when computed.
    pub fn layer_histograms(&self, layer: LayerId) -> Option<&Arc<TensorHistograms>> {
        self.analyses.histograms_of_layer(self.model.as_deref()?, self.editor.plan(), layer)
    }

    /// Starts the histograms job for the inspected layer once its analysis is in, unless they are cached or asked
    /// for already (a newer request replaces an older one: one histograms job runs at a time).
    fn request_histograms(&mut self) {
        let (Some(model), Some(layer)) = (self.model.clone(), self.table.focus) else { return };
        if layer.0 >= model.layers.len() {
            return;
        }
        if let Some((tensor, analysis)) = self.analyses.histograms_to_request(&model, self.editor.plan(), layer) {
            self.submit(Job::Histograms { model, tensor, analysis });
        }
    }

    /// Files one worker event: outcomes go to the parts that want them, the end of a job to the job bookkeeping.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Output { job, outcome } => self.on_outcome(job, outcome),
            Event::Finished { job, kind, result } => self.on_finished(job, kind, result),
        }
    }

    fn on_outcome(&mut self, job: JobId, outcome: Outcome) {
        let current_model = self.job_generation.get(&job) == Some(&self.generation);
        match outcome {
            Outcome::Opened { model, runtime, default_data, default_calib_data } => {
                if self.worker.is_current(job) {
                    self.runtime = Some(runtime);
                    self.default_eval_data = default_data;
                    self.model_opened(model, default_calib_data);
                }
            }
            Outcome::Exported(summary) => {
                let mut text = format!(
                    "exported to {} ({})",
                    summary.folder.display(),
                    crate::units::human_bytes(summary.size_bytes)
                );
                if let Some(warning) = summary.warnings.first() {
                    text.push_str(&format!("; warning: {warning}"));
                }
                self.notice = Some(Notice::info(text));
                self.last_export = Some(summary);
            }
            Outcome::RecipeSaved(path) => {
                self.notice = Some(Notice::info(format!("recipe saved to {}", path.display())))
            }
            outcome => {
                // Everything else belongs to the model it was computed on.
                let Some(model) = self.model.clone().filter(|_| current_model) else { return };
                let reaction = self
                    .calibration
                    .on_outcome(&outcome, self.editor.observer())
                    .and(self.editor.on_outcome(&outcome))
                    .and(self.analyses.on_outcome(&outcome))
                    .and(self.results.on_outcome(job, &outcome, &model));
                self.react(reaction);
            }
        }
    }

    fn on_finished(&mut self, job: JobId, kind: JobKind, result: Result<(), Error>) {
        self.job_generation.remove(&job);
        if kind == JobKind::Benchmark {
            self.results.run_finished(job);
        }
        if kind == JobKind::Histograms && result.is_err() {
            self.analyses.histograms_job_stopped();
        }
        match result {
            Ok(()) => {}
            Err(Error::Cancelled) => {
                self.user_cancelled.remove(&kind);
            }
            Err(error) => {
                if kind == JobKind::Open {
                    self.model_path = self.model.as_ref().map(|m| m.path.clone());
                }
                // A refused export can be forced from the export panel ("Export anyway").
                if let Error::ExportRefused { forceable: true, path, .. } = &error {
                    self.refused_export = Some(path.clone());
                }
                self.notice = Some(Notice::error(error.to_string()));
            }
        }
    }

    /// Does what a part's reaction asks: show its notice, follow a plan change, invalidate the figures.
    fn react(&mut self, reaction: Reaction) {
        if let Some(notice) = reaction.notice {
            self.notice = Some(notice);
        }
        if reaction.plan_changed {
            self.plan_changed();
        } else if reaction.figures_changed {
            self.revision += 1;
        }
    }

    fn restore(&mut self, plan: Vec<Precision>, text: String) {
        let changed = self.editor.set_layers(plan);
        self.react(Reaction { notice: Some(Notice::info(text)), plan_changed: changed, ..Reaction::default() });
    }

    fn set_most_sensitive(&mut self, count: usize, precision: Precision) {
        let Some(model) = self.model.clone() else { return };
        if self.results.sensitivity.is_none() {
            return;
        }
        match self.results.most_sensitive(&model, count) {
            Ok((layers, names)) => {
                let text = format!("{} most sensitive layer(s) set to {precision}: {}", layers.len(), names.join(", "));
                let changed = self.editor.set_fitted_precision(&model, &layers, precision);
                self.react(Reaction { notice: Some(Notice::info(text)), plan_changed: changed, ..Reaction::default() });
            }
            Err(text) => self.notice = Some(Notice::error(text)),
        }
    }

    fn cancel(&mut self, kind: JobKind) {
        if self.worker.is_running(kind) {
            self.user_cancelled.insert(kind);
            self.worker.cancel(kind);
            self.notice = Some(Notice::info(format!("{} cancelled", kind.label())));
        }
    }

    /// Submits the job a command asks for, with the state it needs; tells the user when it cannot run.
    fn start_job(&mut self, command: Command) {
        let Some(model) = self.model.clone() else {
            self.notice = Some(Notice::error("open a model first"));
            return;
        };
        let plan = self.editor.plan().clone();
        let job = match command {
            Command::Export { dest, force } => {
                self.refused_export = None;
                let options = crate::export::ExportOptions { target: self.target, force, ..Default::default() };
                Job::Export { model, plan, dest, options }
            }
            Command::SaveRecipe(path) => Job::SaveRecipe { recipe: plan.to_recipe(&model), path },
            Command::LoadRecipe(path) => Job::LoadRecipe { model, path },
            Command::Evaluate(data) => {
                let Some(arch) = self.runnable() else { return };
                Job::Evaluate { model, arch, plan, data }
            }
            Command::Perplexity(input) => {
                let Some(arch) = self.runnable() else { return };
                Job::Perplexity { model, arch, plan, input }
            }
            Command::Benchmark { data } => {
                let Some(arch) = self.runnable() else { return };
                let workload = crate::runtime::latency::Workload { repeat: 20, ..Default::default() };
                Job::Benchmark { model, arch, plan, data, workload }
            }
            Command::Gptq { data, act_order } => {
                if self.runnable().is_none() {
                    return;
                }
                let options = crate::quant::gptq::GptqOptions { act_order, ..Default::default() };
                Job::Gptq { model, plan, settings: crate::quant::plan::GptqRecipe { data, options } }
            }
            Command::Calibrate(data) => {
                let Some(arch) = self.runnable() else { return };
                Job::Calibrate { model, arch, data, cache_dir: self.calibration.cache_dir.clone() }
            }
            Command::Sensitivity { data, mode } => {
                let Some(arch) = self.runnable() else { return };
                let planned = crate::calib::sensitivity::planned_layers(&model, &plan).len();
                self.results.start_sensitivity(data.clone(), mode, planned);
                Job::Sensitivity { model, arch, plan, data, mode }
            }
            _ => return,
        };
        self.submit(job);
    }

    /// The open model's architecture, or `None` after telling the user why it cannot run.
    fn runnable(&mut self) -> Option<Arc<Architecture>> {
        match &self.runtime {
            Some(Ok(arch)) => Some(arch.clone()),
            Some(Err(why)) => {
                self.notice = Some(Notice::error(format!("cannot run this model: {why}")));
                None
            }
            None => None,
        }
    }

    fn open(&mut self, path: PathBuf) {
        // A new model makes every running job moot.
        for kind in [
            JobKind::Analyse,
            JobKind::Histograms,
            JobKind::Export,
            JobKind::Recipe,
            JobKind::Evaluate,
            JobKind::Perplexity,
            JobKind::Gptq,
            JobKind::Calibrate,
            JobKind::Sensitivity,
        ] {
            self.worker.cancel(kind);
        }
        self.model_path = Some(path.clone());
        self.submit(Job::Open(path));
    }

    fn submit(&mut self, job: Job) -> JobId {
        self.user_cancelled.remove(&job.kind());
        let id = self.worker.submit(job);
        self.job_generation.insert(id, self.generation);
        id
    }

    fn model_opened(&mut self, model: Arc<Model>, default_calib_data: Option<PathBuf>) {
        self.generation += 1;
        let path = model.path.clone();
        self.prefs.recent.retain(|p| p != &path);
        self.prefs.recent.insert(0, path.clone());
        self.prefs.recent.truncate(MAX_RECENT);
        let plan = Recipe::uniform(DEFAULT_INT8).resolve(&model).unwrap_or_else(|_| Plan::all(&model, Precision::Fp32));
        let mut text =
            format!("opened {} ({} layers, {} tensors)", path.display(), model.layers.len(), model.tensors.len());
        if let Some(w) = model.warnings.first() {
            text.push_str(&format!("; {w}"));
        }
        self.model_path = Some(path);
        self.model = Some(model);
        self.editor = PlanEditor::new(plan);
        self.analyses.clear();
        self.table.model_opened();
        self.calibration.reset(default_calib_data);
        self.results.clear();
        self.last_export = None;
        self.notice = Some(Notice::info(text));
        self.plan_changed();
    }

    fn plan_changed(&mut self) {
        self.revision += 1;
        let plan = self.editor.plan();
        self.planned_total = match &self.model {
            Some(model) => (0..model.tensors.len()).map(|i| planned_bytes(model, plan, TensorId(i))).sum(),
            None => 0,
        };
        self.compatibility = self.model.as_ref().map(|model| self.target.check(model, plan));
        self.refused_export = None;
        self.calibration.refresh(plan);
        self.schedule_analysis();
    }

    /// (Re)starts the analysis job for every layer whose main tensor has no result under its planned precision,
    /// the focused and selected layers first.
    pub fn schedule_analysis(&mut self) {
        let Some(model) = self.model.clone() else { return };
        let first: Vec<LayerId> = self.table.focus.into_iter().chain(self.table.selection.iter().copied()).collect();
        let requests = self.analyses.missing(&model, self.editor.plan(), first);
        if requests.is_empty() {
            self.worker.cancel(JobKind::Analyse);
            return;
        }
        self.submit(Job::Analyse { model, requests });
    }
}
