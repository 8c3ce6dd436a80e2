//! The window's state and the commands that change it. No drawing here, and no heavy work: files are opened,
//! analysed and written by jobs on the [`Worker`]; this module only schedules them and files their results.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::calib::view::LayerActivations;
use crate::calib::{ClipError, LayerSensitivity, Observer, SensitivityMode};
use crate::error::Error;
use crate::export::{ExportSummary, planned_bytes};
use crate::model::{LayerId, Model, TensorId};
use crate::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe, TensorAnalysis};
use crate::runtime::{Architecture, EvalReport};
use crate::worker::{Event, Job, JobId, JobKind, Outcome, Worker};

/// The default INT8 scheme offered first: symmetric, per output channel.
pub const DEFAULT_INT8: Precision = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel));

/// The observer a new calibration starts with.
pub const DEFAULT_OBSERVER: Observer = Observer::Percentile { percentile: 99.99 };

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
    /// Make the plan of an earlier evaluation (index into [`Studio::evaluations`]) the current plan.
    RestorePlan(usize),
    /// Forget the evaluations of this session.
    ClearEvaluations,
    /// Histogram the input of every layer on this data file (the calibration used by W8A8 layers).
    Calibrate(PathBuf),
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
    /// Make the plan of an earlier benchmark (index into [`Studio::benchmarks`]) the current plan.
    RestoreBenchmarkPlan(usize),
    /// Forget the benchmarks of this session.
    ClearBenchmarks,
    /// Hide the current notice.
    DismissNotice,
}

/// The calibration of the open model, as the window uses it.
#[derive(Clone, Debug)]
pub struct CalibrationState {
    /// The data it ran on.
    pub data: PathBuf,
    /// Whether it came from the cache.
    pub from_cache: bool,
    /// Samples it ran.
    pub samples: usize,
    /// Every calibrated layer's histogram and observer clips.
    pub layers: Arc<BTreeMap<LayerId, LayerActivations>>,
    /// The observer that picks the clips.
    pub observer: Observer,
    /// Clips set by hand, by layer; they win over the observer.
    pub overrides: BTreeMap<LayerId, f32>,
}

impl CalibrationState {
    /// The clip layer `id`'s input gets, when calibrated.
    pub fn clip(&self, id: LayerId) -> Option<f32> {
        let view = self.layers.get(&id)?;
        Some(self.overrides.get(&id).copied().unwrap_or_else(|| view.clip(self.observer)))
    }
}

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
    pub configuration: crate::runtime::benchmark::Configuration,
    /// For a plan: FP32's median latency timed beside it in the same run (its speed-up is relative to that).
    pub fp32_latency_ms: Option<f64>,
}

/// A message for the user in the status bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// One line.
    pub text: String,
    /// Whether it reports a failure.
    pub is_error: bool,
}

/// Columns the layer table can be sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SortColumn {
    /// Model order (natural name order).
    #[default]
    Name,
    /// Layer kind.
    Kind,
    /// Parameter count.
    Params,
    /// Size as stored.
    Size,
    /// Planned size.
    Planned,
    /// Precision.
    Precision,
    /// Mean squared error.
    Mse,
    /// Max absolute error.
    MaxError,
    /// SQNR (worst first when ascending).
    Sqnr,
    /// Sensitivity score (most sensitive first when ascending).
    Sensitivity,
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

/// What the table order depends on: model generation, revision, filter, sort.
type RowsKey = (u64, u64, String, (SortColumn, bool));
const MAX_UNDO: usize = 200;

/// The studio's state.
pub struct Studio {
    worker: Worker,
    /// The open model.
    pub model: Option<Arc<Model>>,
    /// Path of the model being opened or open.
    pub model_path: Option<PathBuf>,
    /// The plan: one precision per layer.
    pub plan: Plan,
    undo: Vec<Vec<Precision>>,
    redo: Vec<Vec<Precision>>,
    /// Analyses by (tensor, precision) for the open model.
    pub cache: HashMap<(TensorId, Precision), Arc<TensorAnalysis>>,
    /// Selected layers.
    pub selection: BTreeSet<LayerId>,
    /// The layer the inspector shows.
    pub focus: Option<LayerId>,
    /// Last clicked row (for Shift-click ranges).
    pub anchor: Option<LayerId>,
    /// Table filter (glob or text).
    pub filter: String,
    /// Sort column and direction.
    pub sort: (SortColumn, bool),
    /// The message of the status bar.
    pub notice: Option<Notice>,
    /// The last export.
    pub last_export: Option<ExportSummary>,
    /// Where exports go.
    pub target: crate::export::Target,
    /// The target's verdict on the current plan (recomputed with every plan change: layer metadata only).
    pub compatibility: Option<crate::export::Compatibility>,
    /// The destination of an export the target refused, kept so that "Export anyway" can force it.
    pub refused_export: Option<PathBuf>,
    /// How the open model runs, or why it cannot (weight-only mode); `None` while none is open.
    pub runtime: Option<Result<Arc<Architecture>, String>>,
    /// The evaluation data the model's folder brings, if any.
    pub default_eval_data: Option<PathBuf>,
    /// Plans evaluated on the open model, oldest first.
    pub evaluations: Vec<Evaluation>,
    /// Benchmarks of the open model: FP32 (the latest timing) first, then every plan benchmarked, oldest first.
    pub benchmarks: Vec<BenchEntry>,
    /// The calibration file the model's folder brings, if any.
    pub default_calib_data: Option<PathBuf>,
    /// The calibration of the open model.
    pub calibration: Option<CalibrationState>,
    /// The last sensitivity analysis of the open model.
    pub sensitivity: Option<SensitivityState>,
    /// The calibration cache folder (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    clip_error_cache: Option<((LayerId, u32), ClipError)>,
    /// Persisted preferences.
    pub prefs: Preferences,
    /// Bumped whenever the model or the plan changes (for caches of derived values).
    pub revision: u64,
    generation: u64,
    rows_cache: Option<(RowsKey, Vec<LayerId>)>,
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
            plan: Plan::fp32(0),
            undo: Vec::new(),
            redo: Vec::new(),
            cache: HashMap::new(),
            selection: BTreeSet::new(),
            focus: None,
            anchor: None,
            filter: String::new(),
            sort: (SortColumn::Name, true),
            notice: None,
            last_export: None,
            target: crate::export::Target::default(),
            compatibility: None,
            refused_export: None,
            runtime: None,
            default_eval_data: None,
            evaluations: Vec::new(),
            benchmarks: Vec::new(),
            default_calib_data: None,
            calibration: None,
            sensitivity: None,
            cache_dir: Some(crate::calib::default_cache_dir()),
            clip_error_cache: None,
            prefs,
            revision: 0,
            generation: 0,
            rows_cache: None,
            job_generation: HashMap::new(),
            user_cancelled: BTreeSet::new(),
            planned_total: 0,
        }
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
        !self.undo.is_empty()
    }

    /// Whether redo has something to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Planned size of the whole model under the plan.
    pub fn planned_bytes(&self) -> u64 {
        self.planned_total
    }

    /// Planned size of one layer.
    pub fn layer_planned_bytes(&self, layer: LayerId) -> u64 {
        let Some(model) = &self.model else { return 0 };
        model.layer(layer).tensors.iter().map(|t| planned_bytes(model, &self.plan, *t)).sum()
    }

    /// The analysis of a layer's main tensor under its planned precision, when computed.
    pub fn layer_analysis(&self, layer: LayerId) -> Option<&Arc<TensorAnalysis>> {
        let model = self.model.as_ref()?;
        let main = model.main_tensor(layer)?;
        self.cache.get(&(main, self.plan.tensor(model, main)))
    }

    /// Applies a command.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::Open(path) => self.open(path),
            Command::SetPrecision { layers, precision } => {
                let mut next = self.plan.layers.clone();
                for layer in layers {
                    if let Some(p) = next.get_mut(layer.0) {
                        *p = precision;
                    }
                }
                self.set_plan(next);
            }
            Command::SetPrecisionMatching { pattern, precision } => {
                let Some(model) = self.model.clone() else { return };
                let matcher = match NameFilter::new(&pattern) {
                    Ok(m) => m,
                    Err(text) => return self.error(text),
                };
                let layers: Vec<LayerId> =
                    (0..model.layers.len()).map(LayerId).filter(|l| matcher.matches(&model.layer(*l).name)).collect();
                if layers.is_empty() {
                    return self.error(format!("no layer matches {pattern:?}"));
                }
                self.info(format!("{} layer(s) matching {pattern:?} set to {precision}", layers.len()));
                self.apply(Command::SetPrecision { layers, precision });
            }
            Command::Undo => {
                if let Some(previous) = self.undo.pop() {
                    let current = std::mem::replace(&mut self.plan.layers, previous);
                    self.redo.push(current);
                    self.plan_changed();
                }
            }
            Command::Redo => {
                if let Some(next) = self.redo.pop() {
                    let current = std::mem::replace(&mut self.plan.layers, next);
                    self.undo.push(current);
                    self.plan_changed();
                }
            }
            Command::Cancel(kind) => {
                if self.worker.is_running(kind) {
                    self.user_cancelled.insert(kind);
                    self.worker.cancel(kind);
                    self.info(format!("{} cancelled", kind.label()));
                }
            }
            Command::ApplyExportFixes => {
                let Some(compatibility) = &self.compatibility else { return };
                let mut plan = self.plan.clone();
                let changed = compatibility.apply_fixes(&mut plan);
                self.set_plan(plan.layers);
                self.info(format!("{changed} layer(s) changed so that {} loads everywhere", self.target));
            }
            Command::Export { dest, force } => {
                let Some(model) = self.model.clone() else { return self.error("open a model first".into()) };
                self.refused_export = None;
                let options = crate::export::ExportOptions { target: self.target, force, ..Default::default() };
                self.submit(Job::Export { model, plan: self.plan.clone(), dest, options });
            }
            Command::SaveRecipe(path) => {
                let Some(model) = &self.model else { return self.error("open a model first".into()) };
                self.submit(Job::SaveRecipe { recipe: self.plan.to_recipe(model), path });
            }
            Command::LoadRecipe(path) => {
                let Some(model) = self.model.clone() else { return self.error("open a model first".into()) };
                self.submit(Job::LoadRecipe { model, path });
            }
            Command::Evaluate(data) => {
                let Some(model) = self.model.clone() else { return self.error("open a model first".into()) };
                match &self.runtime {
                    Some(Ok(arch)) => {
                        let job = Job::Evaluate { model, arch: arch.clone(), plan: self.plan.clone(), data };
                        self.submit(job);
                    }
                    Some(Err(why)) => self.error(format!("cannot run this model: {why}")),
                    None => {}
                }
            }
            Command::RestorePlan(index) => {
                if let Some(evaluation) = self.evaluations.get(index) {
                    let (number, plan) = (evaluation.number, evaluation.plan.clone());
                    self.set_plan(plan);
                    self.info(format!("plan #{number} restored"));
                }
            }
            Command::ClearEvaluations => self.evaluations.clear(),
            Command::Benchmark { data } => {
                let Some((model, arch)) = self.runnable() else { return };
                let workload = crate::runtime::latency::Workload { repeat: 20, ..Default::default() };
                self.submit(Job::Benchmark { model, arch, plan: self.plan.clone(), data, workload });
            }
            Command::RestoreBenchmarkPlan(index) => {
                if let Some(BenchEntry { number, plan: Some(plan), .. }) = self.benchmarks.get(index) {
                    let (number, plan) = (*number, plan.clone());
                    self.set_plan(plan);
                    self.info(format!("benchmarked plan #{number} restored"));
                }
            }
            Command::ClearBenchmarks => self.benchmarks.clear(),
            Command::Calibrate(data) => {
                let Some((model, arch)) = self.runnable() else { return };
                self.submit(Job::Calibrate { model, arch, data, cache_dir: self.cache_dir.clone() });
            }
            Command::SetObserver(observer) => {
                if let Some(calibration) = &mut self.calibration {
                    calibration.observer = observer;
                    self.clips_changed();
                }
            }
            Command::SetInputClip { layer, clip } => {
                if let Some(calibration) = &mut self.calibration {
                    match clip {
                        Some(c) if c.is_finite() && c >= 0.0 => {
                            calibration.overrides.insert(layer, c);
                        }
                        Some(_) => return,
                        None => {
                            calibration.overrides.remove(&layer);
                        }
                    }
                    self.clips_changed();
                }
            }
            Command::Sensitivity { data, mode } => {
                let Some((model, arch)) = self.runnable() else { return };
                let planned = crate::calib::sensitivity::planned_layers(&model, &self.plan).len();
                self.sensitivity =
                    Some(SensitivityState { data: data.clone(), mode: Some(mode), planned, ..Default::default() });
                self.submit(Job::Sensitivity { model, arch, plan: self.plan.clone(), data, mode });
            }
            Command::SetMostSensitive { count, precision } => {
                let Some(sensitivity) = &self.sensitivity else { return };
                let Some(model) = &self.model else { return };
                let mut ranked = sensitivity.results.clone();
                if !sensitivity.ranked {
                    crate::calib::sensitivity::rank(
                        &mut ranked,
                        sensitivity.mode.unwrap_or(SensitivityMode::OneAtATime),
                    );
                }
                let layers: Vec<LayerId> =
                    ranked.iter().take(count).filter_map(|r| model.layer_by_name(&r.layer)).collect();
                if layers.is_empty() {
                    return self.error("no sensitivity ranking yet: run Sensitivity first".into());
                }
                let names: Vec<String> = ranked.iter().take(count).map(|r| r.layer.clone()).collect();
                self.info(format!("{} most sensitive layer(s) set to {precision}: {}", layers.len(), names.join(", ")));
                let mut next = self.plan.layers.clone();
                for layer in layers {
                    next[layer.0] = precision;
                }
                self.set_plan(next);
            }
            Command::DismissNotice => self.notice = None,
        }
    }

    /// The open model and its architecture, or `None` after telling the user why it cannot run.
    fn runnable(&mut self) -> Option<(Arc<Model>, Arc<Architecture>)> {
        let Some(model) = self.model.clone() else {
            self.error("open a model first".into());
            return None;
        };
        match &self.runtime {
            Some(Ok(arch)) => Some((model, arch.clone())),
            Some(Err(why)) => {
                let text = format!("cannot run this model: {why}");
                self.error(text);
                None
            }
            None => None,
        }
    }

    /// Copies the calibrated clips (observer or hand-set) into the plan.
    fn clips_changed(&mut self) {
        let Some(model) = &self.model else { return };
        let mut clips = vec![None; model.layers.len()];
        if let Some(calibration) = &self.calibration {
            for id in calibration.layers.keys() {
                if let Some(slot) = clips.get_mut(id.0) {
                    *slot = calibration.clip(*id);
                }
            }
        }
        self.plan.input_clips = clips;
        self.revision += 1;
    }

    /// The input clip of layer `id` and its activation error (cached: recomputed only when either changes).
    pub fn input_clip_error(&mut self, id: LayerId) -> Option<(f32, ClipError)> {
        let calibration = self.calibration.as_ref()?;
        let clip = calibration.clip(id)?;
        let key = (id, clip.to_bits());
        if let Some((cached, error)) = &self.clip_error_cache
            && *cached == key
        {
            return Some((clip, *error));
        }
        let error = crate::calib::clip_error(&calibration.layers.get(&id)?.histogram, clip);
        self.clip_error_cache = Some((key, error));
        Some((clip, error))
    }

    fn open(&mut self, path: PathBuf) {
        // A new model makes every running job moot.
        for kind in [
            JobKind::Analyse,
            JobKind::Export,
            JobKind::Recipe,
            JobKind::Evaluate,
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

    fn set_plan(&mut self, layers: Vec<Precision>) {
        if layers == self.plan.layers {
            return;
        }
        let previous = std::mem::replace(&mut self.plan.layers, layers);
        self.undo.push(previous);
        if self.undo.len() > MAX_UNDO {
            self.undo.remove(0);
        }
        self.redo.clear();
        self.plan_changed();
    }

    fn plan_changed(&mut self) {
        self.revision += 1;
        self.planned_total = match &self.model {
            Some(model) => (0..model.tensors.len()).map(|i| planned_bytes(model, &self.plan, TensorId(i))).sum(),
            None => 0,
        };
        self.compatibility = self.model.as_ref().map(|model| self.target.check(model, &self.plan));
        self.refused_export = None;
        self.schedule_analysis();
    }

    /// (Re)starts the analysis job for every layer whose main tensor has no result under its planned precision,
    /// the focused and selected layers first.
    pub fn schedule_analysis(&mut self) {
        let Some(model) = self.model.clone() else { return };
        let mut order: Vec<LayerId> = self.focus.into_iter().chain(self.selection.iter().copied()).collect();
        order.extend((0..model.layers.len()).map(LayerId));
        let mut seen = BTreeSet::new();
        let requests: Vec<(TensorId, Precision)> = order
            .into_iter()
            .filter(|l| seen.insert(*l))
            .filter_map(|l| model.main_tensor(l))
            .map(|t| (t, self.plan.tensor(&model, t)))
            .filter(|key| !self.cache.contains_key(key))
            .collect();
        if requests.is_empty() {
            self.worker.cancel(JobKind::Analyse);
            return;
        }
        self.submit(Job::Analyse { model, requests });
    }

    /// Drains worker events for at most `budget`.
    pub fn poll(&mut self, budget: std::time::Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < budget {
            let Some(event) = self.worker.try_next() else { break };
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Output { job, outcome } => {
                let current_model = self.job_generation.get(&job) == Some(&self.generation);
                match outcome {
                    Outcome::Opened { model, runtime, default_data, default_calib_data } => {
                        if self.worker.is_current(job) {
                            self.runtime = Some(runtime);
                            self.default_eval_data = default_data;
                            self.default_calib_data = default_calib_data;
                            self.model_opened(model);
                        }
                    }
                    Outcome::Evaluated { plan, data, report } => {
                        if current_model {
                            self.evaluated(plan, data, report);
                        }
                    }
                    Outcome::Benchmarked { plan, data, configuration } => {
                        if current_model {
                            self.benchmarked(plan, data, *configuration);
                        }
                    }
                    Outcome::Calibrated { data, from_cache, samples, layers } => {
                        if current_model {
                            let observer = self.calibration.as_ref().map_or(DEFAULT_OBSERVER, |c| c.observer);
                            let source = if from_cache { "read from the cache" } else { "measured" };
                            self.info(format!(
                                "{} layer inputs calibrated on {samples} samples ({source}); observer {observer}",
                                layers.len()
                            ));
                            self.calibration = Some(CalibrationState {
                                data,
                                from_cache,
                                samples,
                                layers,
                                observer,
                                overrides: BTreeMap::new(),
                            });
                            self.clips_changed();
                        }
                    }
                    Outcome::SensitivityLayer(result) => {
                        if current_model && let (Some(state), Some(model)) = (&mut self.sensitivity, &self.model) {
                            if let Some(id) = model.layer_by_name(&result.layer) {
                                state.scores.insert(id, result.score);
                            }
                            state.results.push(result);
                            self.revision += 1;
                        }
                    }
                    Outcome::SensitivityRanked(report) => {
                        if current_model && let Some(state) = &mut self.sensitivity {
                            state.metric = Some(report.metric);
                            state.results = report.layers;
                            state.ranked = true;
                            let top = state.results.first().map(|r| r.layer.clone()).unwrap_or_default();
                            self.info(format!("sensitivity ranked; most sensitive: {top}"));
                            self.revision += 1;
                        }
                    }
                    Outcome::Analysed { tensor, precision, analysis } => {
                        if current_model {
                            self.cache.insert((tensor, precision), analysis);
                            self.revision += 1;
                        }
                    }
                    Outcome::Exported(summary) => {
                        let mut text = format!(
                            "exported to {} ({})",
                            summary.folder.display(),
                            crate::cli::human_bytes(summary.size_bytes)
                        );
                        if let Some(warning) = summary.warnings.first() {
                            text.push_str(&format!("; warning: {warning}"));
                        }
                        self.info(text);
                        self.last_export = Some(summary);
                    }
                    Outcome::RecipeSaved(path) => self.info(format!("recipe saved to {}", path.display())),
                    Outcome::RecipeLoaded { path, plan } => {
                        if current_model {
                            let warnings = plan.warnings.clone();
                            // The recipe's calibrated clips come with it (as hand-set clips over a calibration).
                            let recipe_clips: Vec<(LayerId, f32)> = plan
                                .input_clips
                                .iter()
                                .enumerate()
                                .filter_map(|(i, c)| c.map(|c| (LayerId(i), c)))
                                .collect();
                            if !recipe_clips.is_empty() {
                                match &mut self.calibration {
                                    Some(calibration) => calibration.overrides.extend(recipe_clips),
                                    None => self.plan.input_clips = plan.input_clips.clone(),
                                }
                                if self.calibration.is_some() {
                                    self.clips_changed();
                                }
                            }
                            self.set_plan(plan.layers);
                            let mut text = format!("recipe loaded from {}", path.display());
                            if let Some(w) = warnings.first() {
                                text.push_str(&format!("; {w}"));
                            }
                            self.info(text);
                        }
                    }
                }
            }
            Event::Finished { job, kind, result } => {
                self.job_generation.remove(&job);
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
                        self.error(error.to_string());
                    }
                }
            }
        }
    }

    fn model_opened(&mut self, model: Arc<Model>) {
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
        self.plan = plan;
        self.undo.clear();
        self.redo.clear();
        self.cache.clear();
        self.selection.clear();
        self.focus = Some(LayerId(0));
        self.anchor = None;
        self.last_export = None;
        self.evaluations.clear();
        self.benchmarks.clear();
        self.calibration = None;
        self.sensitivity = None;
        self.clip_error_cache = None;
        self.info(text);
        self.plan_changed();
    }

    fn benchmarked(
        &mut self,
        plan: Option<Plan>,
        data: Option<PathBuf>,
        configuration: crate::runtime::benchmark::Configuration,
    ) {
        let Some(model) = &self.model else { return };
        let median_ms = configuration.latency.latency_ms_median;
        let Some(plan) = plan else {
            // FP32 is re-timed beside every plan: the latest timing replaces the earlier one.
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
            return;
        };
        let summary = plan_summary(model, &plan.layers);
        let number = self.benchmarks.iter().map(|b| b.number).max().unwrap_or(0) + 1;
        // FP32 arrives first from the same run: its timing is the one this plan was measured beside.
        let fp32_latency_ms = match self.benchmarks.first() {
            Some(BenchEntry { plan: None, configuration: fp32, .. }) => Some(fp32.latency.latency_ms_median),
            _ => None,
        };
        let speedup = match fp32_latency_ms {
            Some(fp32) if median_ms > 0.0 => format!(" ({:.2}x FP32)", fp32 / median_ms),
            _ => String::new(),
        };
        self.info(format!("benchmark #{number} done: median {median_ms:.3} ms{speedup}"));
        let plan = Some(plan.layers);
        self.benchmarks.push(BenchEntry { number, plan, summary, data, configuration, fp32_latency_ms });
    }

    fn evaluated(&mut self, plan: Plan, data: PathBuf, report: EvalReport) {
        let Some(model) = &self.model else { return };
        let summary = plan_summary(model, &plan.layers);
        let planned_bytes = (0..model.tensors.len()).map(|i| planned_bytes(model, &plan, TensorId(i))).sum();
        let number = self.evaluations.last().map_or(1, |e| e.number + 1);
        self.info(format!("evaluation #{number} done: {}", report.headline()));
        self.evaluations.push(Evaluation { number, plan: plan.layers, summary, planned_bytes, data, report });
    }

    fn info(&mut self, text: String) {
        self.notice = Some(Notice { text, is_error: false });
    }

    fn error(&mut self, text: String) {
        self.notice = Some(Notice { text, is_error: true });
    }

    /// Layers in table order, recomputed only when the model, plan, results, filter or sort changed.
    pub fn rows(&mut self) -> Vec<LayerId> {
        let key = (self.generation, self.revision, self.filter.clone(), self.sort);
        match &self.rows_cache {
            Some((cached, rows)) if *cached == key => rows.clone(),
            _ => {
                let rows = self.visible_layers();
                self.rows_cache = Some((key, rows.clone()));
                rows
            }
        }
    }

    /// Layers in table order: filtered by [`Studio::filter`], sorted by [`Studio::sort`].
    pub fn visible_layers(&self) -> Vec<LayerId> {
        let Some(model) = &self.model else { return Vec::new() };
        let filter = NameFilter::new(&self.filter).ok();
        let mut rows: Vec<LayerId> = (0..model.layers.len())
            .map(LayerId)
            .filter(|l| filter.as_ref().is_none_or(|f| f.matches(&model.layer(*l).name)))
            .collect();
        let (column, ascending) = self.sort;
        let metric = |l: &LayerId, f: fn(&TensorAnalysis) -> f64| self.layer_analysis(*l).map(|a| f(a));
        let params = |l: &LayerId| model.layer(*l).tensors.iter().map(|t| model.tensor(*t).numel()).sum::<usize>();
        match column {
            SortColumn::Name => {}
            SortColumn::Kind => rows.sort_by_key(|l| model.layer(*l).kind),
            SortColumn::Params => rows.sort_by_key(params),
            SortColumn::Size => {
                rows.sort_by_key(|l| model.layer(*l).tensors.iter().map(|t| model.tensor(*t).size_bytes()).sum::<u64>())
            }
            SortColumn::Planned => rows.sort_by_key(|l| self.layer_planned_bytes(*l)),
            SortColumn::Precision => rows.sort_by_key(|l| self.plan.layer(*l).to_string()),
            SortColumn::Mse => rows.sort_by(|a, b| cmp_option(metric(a, |x| x.error.mse), metric(b, |x| x.error.mse))),
            SortColumn::MaxError => rows
                .sort_by(|a, b| cmp_option(metric(a, |x| x.error.max_abs_error), metric(b, |x| x.error.max_abs_error))),
            SortColumn::Sqnr => {
                let sqnr = |l: &LayerId| metric(l, |x| x.error.sqnr_db.unwrap_or(f64::INFINITY));
                rows.sort_by(|a, b| cmp_option(sqnr(a), sqnr(b)));
            }
            SortColumn::Sensitivity => {
                let score = |l: &LayerId| self.sensitivity.as_ref().and_then(|s| s.scores.get(l)).map(|v| -v);
                rows.sort_by(|a, b| cmp_option(score(a), score(b)));
            }
        }
        if !ascending {
            rows.reverse();
        }
        rows
    }

    /// Click on a row: plain (select only it), Ctrl (toggle), Shift (range from the anchor in `order`).
    pub fn click_row(&mut self, layer: LayerId, ctrl: bool, shift: bool, order: &[LayerId]) {
        if shift && let Some(anchor) = self.anchor {
            let position = |l: LayerId| order.iter().position(|x| *x == l);
            if let (Some(a), Some(b)) = (position(anchor), position(layer)) {
                if !ctrl {
                    self.selection.clear();
                }
                self.selection.extend(&order[a.min(b)..=a.max(b)]);
            }
        } else if ctrl {
            if !self.selection.remove(&layer) {
                self.selection.insert(layer);
            }
            self.anchor = Some(layer);
        } else {
            self.selection.clear();
            self.selection.insert(layer);
            self.anchor = Some(layer);
        }
        if self.focus != Some(layer) {
            self.focus = Some(layer);
            // The focused layer's analysis goes to the front of the queue.
            let missing = self.layer_analysis(layer).is_none();
            if missing {
                self.schedule_analysis();
            }
        }
    }

    /// Counts of layers per precision name (INT8 weight-only, W8A8, FP16, BF16, FP32), only layers with float
    /// tensors.
    pub fn precision_counts(&self) -> [(&'static str, usize); 8] {
        match &self.model {
            Some(model) => precision_counts(model, &self.plan.layers),
            None => precision_counts_empty(),
        }
    }
}

/// Layers per precision name in a plan, counting only layers with float tensors.
fn precision_counts(model: &Model, layers: &[Precision]) -> [(&'static str, usize); 8] {
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
            Precision::Fp16 => 5,
            Precision::Bf16 => 6,
            Precision::Fp32 => 7,
        };
        counts[slot].1 += 1;
    }
    counts
}

/// Layers per precision in one phrase, e.g. "INT8 3, FP32 2".
fn plan_summary(model: &Model, layers: &[Precision]) -> String {
    let counts = precision_counts(model, layers);
    counts.iter().filter(|(_, n)| *n > 0).map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
}

fn precision_counts_empty() -> [(&'static str, usize); 8] {
    [("INT8", 0), ("W8A8", 0), ("W8A8-dyn", 0), ("FP8", 0), ("FP8-dyn", 0), ("FP16", 0), ("BF16", 0), ("FP32", 0)]
}

fn cmp_option(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// A layer-name filter: a glob when the text has `*`, `?` or `[`, else a case-insensitive substring.
pub struct NameFilter {
    glob: Option<glob::Pattern>,
    text: String,
}

impl NameFilter {
    /// Parses a filter; an invalid glob is an error message.
    pub fn new(pattern: &str) -> Result<NameFilter, String> {
        let pattern = pattern.trim();
        if pattern.contains(['*', '?', '[']) {
            let glob = glob::Pattern::new(pattern).map_err(|e| format!("invalid pattern {pattern:?}: {e}"))?;
            Ok(NameFilter { glob: Some(glob), text: String::new() })
        } else {
            Ok(NameFilter { glob: None, text: pattern.to_lowercase() })
        }
    }

    /// Whether a layer name passes.
    pub fn matches(&self, name: &str) -> bool {
        match &self.glob {
            Some(glob) => glob.matches(name),
            None => self.text.is_empty() || name.to_lowercase().contains(&self.text),
        }
    }
}
