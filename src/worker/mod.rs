//! The only code that spawns threads: jobs (open, analyse, histograms, export, recipes, evaluation, calibration,
//! GPTQ, sensitivity, benchmark) run on background threads and report
//! events the window drains each frame.
//!
//! At most one job of each [`JobKind`] runs at a time; submitting another cancels the running one and replaces it:
//! the replaced job's late outputs are dropped by [`Worker::try_next`], and only its `Finished` (with
//! [`Error::Cancelled`]) still arrives, for the caller's bookkeeping. Dropping the [`Worker`] cancels every job.
//!
//! Jobs run at a lower OS priority than the window's thread (on Linux, nice [`JOB_NICE`]): each job thread, and the
//! worker's own rayon pool that the core's parallel loops run on inside a job, so the window keeps its frame
//! budget with every core busy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::calib::view::LayerActivations;
use crate::calib::{LayerSensitivity, SensitivityMode, SensitivityReport};
use crate::error::Error;
use crate::export::ExportSummary;
use crate::model::{LayerId, Model, TensorId};
use crate::progress::{Progress, ProgressSnapshot};
use crate::quant::{Plan, Precision, Recipe, TensorAnalysis, TensorHistograms};
use crate::runtime::benchmark::Configuration;
use crate::runtime::latency::Workload;
use crate::runtime::perplexity::PerplexityReport;
use crate::runtime::{Architecture, EvalReport};
use crate::tasks;

/// Identifies a submitted job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// Kinds of job; one of each runs at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    /// Opening a model (headers only).
    Open,
    /// Statistics and error of tensors under their planned precisions.
    Analyse,
    /// The value and error histograms of the inspected layer.
    Histograms,
    /// Writing an export folder.
    Export,
    /// Reading or writing a recipe file.
    Recipe,
    /// Running the model in FP32 and as planned on evaluation data.
    Evaluate,
    /// Observing the input of every layer on calibration data.
    Calibrate,
    /// Ranking the layers by sensitivity.
    Sensitivity,
    /// Timing FP32 and the plan as deployed.
    Benchmark,
    /// Perplexity and KL of FP32 and the plan on a text.
    Perplexity,
    /// GPTQ of the plan's INT4 and INT8 layers on calibration data.
    Gptq,
}

impl JobKind {
    /// What the status bar calls it.
    pub fn label(self) -> &'static str {
        match self {
            JobKind::Open => "opening",
            JobKind::Analyse => "analysing",
            JobKind::Histograms => "histograms",
            JobKind::Export => "exporting",
            JobKind::Recipe => "recipe",
            JobKind::Evaluate => "evaluating",
            JobKind::Calibrate => "calibrating",
            JobKind::Sensitivity => "sensitivity",
            JobKind::Benchmark => "benchmarking",
            JobKind::Perplexity => "perplexity",
            JobKind::Gptq => "GPTQ",
        }
    }
}

/// Work for the worker.
pub enum Job {
    /// Open a model file or folder.
    Open(PathBuf),
    /// Analyse these tensors, each under its precision, in the given order (results stream one by one).
    Analyse {
        /// The model.
        model: Arc<Model>,
        /// Tensor and precision, most urgent first.
        requests: Vec<(TensorId, Precision)>,
    },
    /// Count the value and error histograms of one tensor under the precision of its analysis.
    Histograms {
        /// The model.
        model: Arc<Model>,
        /// The tensor.
        tensor: TensorId,
        /// Its analysis (the parameters the histograms follow).
        analysis: Arc<TensorAnalysis>,
    },
    /// Export the model under a plan into a folder.
    Export {
        /// The model.
        model: Arc<Model>,
        /// The plan.
        plan: Plan,
        /// Destination folder.
        dest: PathBuf,
        /// Target, force, shard size.
        options: crate::export::ExportOptions,
    },
    /// Save a recipe to a file.
    SaveRecipe {
        /// The recipe.
        recipe: Recipe,
        /// Destination file.
        path: PathBuf,
    },
    /// Run the model in FP32 and under a plan on a data file, and compare.
    Evaluate {
        /// The model.
        model: Arc<Model>,
        /// Its architecture.
        arch: Arc<Architecture>,
        /// The plan.
        plan: Plan,
        /// The data file.
        data: PathBuf,
    },
    /// Perplexity and KL of FP32 and a plan on a text, chunked as llama-perplexity does.
    Perplexity {
        /// The model.
        model: Arc<Model>,
        /// Its architecture.
        arch: Arc<Architecture>,
        /// The plan.
        plan: Plan,
        /// The text, context and chunks.
        input: tasks::PerplexityInput,
    },
    /// GPTQ of a plan's INT4 and INT8 layers on a calibration data file.
    Gptq {
        /// The model.
        model: Arc<Model>,
        /// The plan (its INT4 and INT8 layers are quantized).
        plan: Plan,
        /// The data file and the options.
        settings: crate::quant::plan::GptqRecipe,
    },
    /// Histogram the input of every linear and conv layer on a data file (from the cache when it holds it).
    Calibrate {
        /// The model.
        model: Arc<Model>,
        /// Its architecture.
        arch: Arc<Architecture>,
        /// The data file.
        data: PathBuf,
        /// The calibration cache folder (`None`: no cache).
        cache_dir: Option<PathBuf>,
    },
    /// Rank the layers a plan quantizes by how much each costs the task metric; results stream one by one.
    Sensitivity {
        /// The model.
        model: Arc<Model>,
        /// Its architecture.
        arch: Arc<Architecture>,
        /// The plan whose layers are tried.
        plan: Plan,
        /// The data file.
        data: PathBuf,
        /// One at a time, or all but one.
        mode: SensitivityMode,
    },
    /// Time FP32 and the plan as deployed, and measure the plan's accuracy on a data file when one is given.
    Benchmark {
        /// The model.
        model: Arc<Model>,
        /// Its architecture.
        arch: Arc<Architecture>,
        /// The plan.
        plan: Plan,
        /// Evaluation data for the accuracy figures.
        data: Option<PathBuf>,
        /// The timed runs.
        workload: Workload,
    },
    /// Load a recipe file and resolve it against a model.
    LoadRecipe {
        /// The model to resolve against.
        model: Arc<Model>,
        /// The recipe file.
        path: PathBuf,
    },
}

impl Job {
    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Open(_) => JobKind::Open,
            Job::Analyse { .. } => JobKind::Analyse,
            Job::Histograms { .. } => JobKind::Histograms,
            Job::Export { .. } => JobKind::Export,
            Job::SaveRecipe { .. } | Job::LoadRecipe { .. } => JobKind::Recipe,
            Job::Evaluate { .. } => JobKind::Evaluate,
            Job::Calibrate { .. } => JobKind::Calibrate,
            Job::Sensitivity { .. } => JobKind::Sensitivity,
            Job::Benchmark { .. } => JobKind::Benchmark,
            Job::Perplexity { .. } => JobKind::Perplexity,
            Job::Gptq { .. } => JobKind::Gptq,
        }
    }
}

/// What a job produced.
#[derive(Debug)]
pub enum Outcome {
    /// A model was opened.
    Opened {
        /// The model.
        model: Arc<Model>,
        /// How it runs, or why it cannot (weight-only mode).
        runtime: Result<Arc<Architecture>, String>,
        /// The evaluation data its folder brings, if any.
        default_data: Option<PathBuf>,
        /// The calibration data its folder brings, if any.
        default_calib_data: Option<PathBuf>,
    },
    /// An evaluation finished.
    Evaluated {
        /// The plan that was evaluated.
        plan: Plan,
        /// The data file.
        data: PathBuf,
        /// The figures.
        report: EvalReport,
    },
    /// A perplexity run finished.
    Perplexity {
        /// The plan that ran beside FP32.
        plan: Plan,
        /// The text, context and chunks.
        input: tasks::PerplexityInput,
        /// The figures.
        report: PerplexityReport,
    },
    /// A GPTQ run finished: the weights of the plan's INT4 and INT8 layers.
    Gptq(Arc<crate::quant::gptq::GptqWeights>),
    /// A calibration finished.
    Calibrated {
        /// The data file.
        data: PathBuf,
        /// Whether it was read from the cache.
        from_cache: bool,
        /// Samples it ran.
        samples: usize,
        /// Every calibrated layer with its display histogram and observer clips.
        layers: Arc<BTreeMap<LayerId, LayerActivations>>,
    },
    /// One layer's sensitivity was measured (more follow from the same job).
    SensitivityLayer(LayerSensitivity),
    /// The sensitivity analysis finished: the ranking.
    SensitivityRanked(SensitivityReport),
    /// One configuration was benchmarked (FP32 first, then the plan).
    Benchmarked {
        /// The plan benchmarked, for the plan's configuration; `None` for FP32.
        plan: Option<Plan>,
        /// The data of the accuracy figures.
        data: Option<PathBuf>,
        /// The figures.
        configuration: Box<Configuration>,
    },
    /// One tensor was analysed (more may follow from the same job).
    Analysed {
        /// The tensor.
        tensor: TensorId,
        /// The precision it was measured under.
        precision: Precision,
        /// The result.
        analysis: Arc<TensorAnalysis>,
    },
    /// One tensor's histograms were counted.
    Histograms {
        /// The tensor.
        tensor: TensorId,
        /// The precision of the error histogram.
        precision: Precision,
        /// The histograms.
        histograms: Arc<TensorHistograms>,
    },
    /// An export finished.
    Exported(ExportSummary),
    /// A recipe was saved to this path.
    RecipeSaved(PathBuf),
    /// A recipe was loaded and resolved.
    RecipeLoaded {
        /// Where from.
        path: PathBuf,
        /// The resolved plan.
        plan: Plan,
    },
}

/// A message from the worker.
#[derive(Debug)]
pub enum Event {
    /// A result (a job may send several).
    Output {
        /// The job.
        job: JobId,
        /// What it produced.
        outcome: Outcome,
    },
    /// The job ended: `Ok` when it completed, the error otherwise ([`Error::Cancelled`] when cancelled).
    Finished {
        /// The job.
        job: JobId,
        /// Its kind.
        kind: JobKind,
        /// How it ended.
        result: Result<(), Error>,
    },
}

/// The nice value of job threads and of the worker's rayon pool on Linux (the window's thread stays at 0).
pub const JOB_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`JOB_NICE`] (Linux; elsewhere nothing changes).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours. On Linux the nice value is a
    // per-thread attribute, and PRIO_PROCESS with who = 0 applies it to the calling thread only. A failure leaves
    // the priority as it was, which is harmless.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, JOB_NICE);
    }
}

/// The rayon pool jobs run in, its threads at [`JOB_NICE`]; `None` when it cannot be built (jobs then use the
/// global pool).
fn job_pool() -> Option<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("qs-pool-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .ok()
        .map(Arc::new)
}

struct Running {
    id: JobId,
    progress: Progress,
}

/// Runs jobs on background threads.
pub struct Worker {
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    running: BTreeMap<JobKind, Running>,
    next_id: u64,
    wake: Arc<dyn Fn() + Send + Sync>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Jobs replaced by a newer job of their kind whose `Finished` has not arrived: their outputs are dropped.
    replaced: std::collections::BTreeSet<JobId>,
}

impl Worker {
    /// A worker that calls `wake` after each event it sends (the window's repaint request).
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Worker {
        let (events_tx, events_rx) = channel();
        Worker {
            events_tx,
            events_rx,
            running: BTreeMap::new(),
            next_id: 0,
            wake: Arc::new(wake),
            pool: job_pool(),
            replaced: Default::default(),
        }
    }

    /// Starts `job`, cancelling the running job of the same kind.
    pub fn submit(&mut self, job: Job) -> JobId {
        let kind = job.kind();
        if let Some(running) = self.running.get(&kind) {
            self.replaced.insert(running.id);
        }
        self.cancel(kind);
        self.next_id += 1;
        let id = JobId(self.next_id);
        let progress = Progress::new();
        // Named from the start, before the job's first stage.
        progress.start_stage(kind.label(), 0);
        self.running.insert(kind, Running { id, progress: progress.clone() });
        let events = self.events_tx.clone();
        let wake = Arc::clone(&self.wake);
        let pool = self.pool.clone();
        let spawned = std::thread::Builder::new().name(format!("qs-{}", kind.label())).spawn(move || {
            lower_priority();
            let send = |outcome| {
                let _ = events.send(Event::Output { job: id, outcome });
                wake();
            };
            let result = match &pool {
                Some(pool) => pool.install(|| run(job, &progress, &send)),
                None => run(job, &progress, &send),
            };
            let _ = events.send(Event::Finished { job: id, kind, result });
            wake();
        });
        if let Err(error) = spawned {
            let _ = self.events_tx.send(Event::Finished {
                job: id,
                kind,
                result: Err(Error::Thread { problem: format!("cannot start a worker thread: {error}") }),
            });
        }
        id
    }

    /// Cancels the running job of `kind`, if any (it stops at its next check and reports `Cancelled`).
    pub fn cancel(&mut self, kind: JobKind) {
        if let Some(running) = self.running.remove(&kind) {
            running.progress.cancel();
        }
    }

    /// Whether `job` is the current job of its kind (events of replaced jobs are stale).
    pub fn is_current(&self, job: JobId) -> bool {
        self.running.values().any(|r| r.id == job)
    }

    /// The next event, if one is waiting; outputs of replaced jobs are skipped. Marks a finished job as no longer
    /// running.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            let event = self.events_rx.try_recv().ok()?;
            match &event {
                Event::Output { job, .. } if self.replaced.contains(job) => continue,
                Event::Output { .. } => {}
                Event::Finished { job, kind, .. } => {
                    self.replaced.remove(job);
                    if self.running.get(kind).is_some_and(|r| r.id == *job) {
                        self.running.remove(kind);
                    }
                }
            }
            return Some(event);
        }
    }

    /// Running jobs with their progress.
    pub fn running(&self) -> Vec<(JobKind, JobId, ProgressSnapshot)> {
        self.running.iter().map(|(kind, r)| (*kind, r.id, r.progress.snapshot())).collect()
    }

    /// Whether a job of `kind` runs.
    pub fn is_running(&self, kind: JobKind) -> bool {
        self.running.contains_key(&kind)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.progress.cancel();
        }
    }
}

/// Runs one job through its use case in [`crate::tasks`], sending what it produces.
fn run(job: Job, progress: &Progress, send: &dyn Fn(Outcome)) -> Result<(), Error> {
    match job {
        Job::Open(path) => {
            let opened = tasks::open(&path, progress)?;
            send(Outcome::Opened {
                model: Arc::new(opened.model),
                runtime: opened.runtime.map(Arc::new).map_err(|e| e.to_string()),
                default_data: opened.default_data,
                default_calib_data: opened.default_calib_data,
            });
        }
        Job::Analyse { model, requests } => {
            tasks::analyse_tensors(&model, &requests, progress, &mut |tensor, precision, analysis| {
                send(Outcome::Analysed { tensor, precision, analysis: Arc::new(analysis) })
            })?;
        }
        Job::Histograms { model, tensor, analysis } => {
            progress.start_stage("histograms", model.tensor(tensor).numel() as u64);
            let histograms = tasks::tensor_histograms(&model, tensor, &analysis, progress)?;
            send(Outcome::Histograms { tensor, precision: analysis.precision, histograms: Arc::new(histograms) });
        }
        Job::Export { model, plan, dest, options } => {
            send(Outcome::Exported(tasks::export(&model, &plan, &dest, &options, progress)?));
        }
        Job::Evaluate { model, arch, plan, data } => {
            let report = tasks::evaluate(&model, &arch, &plan, &data, None, progress)?;
            send(Outcome::Evaluated { plan, data, report });
        }
        Job::Perplexity { model, arch, plan, input } => {
            let report = tasks::perplexity(&model, &arch, &plan, &input, progress)?;
            send(Outcome::Perplexity { plan, input, report });
        }
        Job::Gptq { model, mut plan, settings } => {
            send(Outcome::Gptq(tasks::gptq(&model, &mut plan, &settings, progress)?));
        }
        Job::Calibrate { model, arch, data, cache_dir } => {
            let run = tasks::calibrate(&model, &arch, &data, cache_dir.as_deref(), progress)?;
            let layers = Arc::new(tasks::calibration_view(&model, &run, progress)?);
            send(Outcome::Calibrated { data, from_cache: run.from_cache, samples: run.calibration.samples, layers });
        }
        Job::Sensitivity { model, arch, plan, data, mode } => {
            let eval_data = tasks::load_data(&model, &data, progress)?;
            let report = tasks::sensitivity(&model, &arch, &eval_data, &plan, mode, progress, &mut |layer| {
                send(Outcome::SensitivityLayer(layer.clone()))
            })
            .map_err(|e| e.in_data_file(&data))?;
            send(Outcome::SensitivityRanked(report));
        }
        Job::Benchmark { model, arch, plan, data, workload } => {
            let input = tasks::BenchmarkInput {
                model: &model,
                arch: &arch,
                plan: Some(&plan),
                data: data.as_deref(),
                workload,
            };
            tasks::benchmark(&input, progress, &mut |configuration| {
                let plan = (configuration.name != "FP32").then(|| plan.clone());
                send(Outcome::Benchmarked { plan, data: data.clone(), configuration: Box::new(configuration) });
            })?;
        }
        Job::SaveRecipe { recipe, path } => {
            tasks::save_recipe(&recipe, &path, progress)?;
            send(Outcome::RecipeSaved(path));
        }
        Job::LoadRecipe { model, path } => {
            let plan = tasks::load_recipe(&model, &path, progress)?;
            send(Outcome::RecipeLoaded { path, plan });
        }
    }
    Ok(())
}
