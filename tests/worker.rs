//! The worker: jobs submitted and their outcomes, named progress stages that never go back, cancel, a second job
//! of a kind replacing the first (whose late outputs are dropped), and job threads at a lower priority than the
//! caller's. Events are awaited with a timeout; nothing is ordered with sleep.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use quantstudio::Error;
use quantstudio::model::{Model, TensorId};
use quantstudio::progress::{Progress, ProgressSnapshot};
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe};
use quantstudio::runtime::latency::Workload;
use quantstudio::runtime::{Architecture, EvalData};
use quantstudio::worker::{Event, Job, JobId, JobKind, Outcome, Worker};

/// How long a test waits for one event before it fails (generous: the CI machine is shared).
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

fn path(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(folder)
}

/// A worker whose wake-ups arrive on a channel, so a test can wait for events without sleeping.
struct Harness {
    worker: Worker,
    woken: Receiver<()>,
    /// Progress seen while waiting, per job kind: (stage, done, total) in the order sampled.
    samples: Vec<(JobKind, ProgressSnapshot)>,
}

impl Harness {
    fn new() -> Harness {
        let (tx, woken) = channel();
        let worker = Worker::new(move || {
            let _ = tx.send(());
        });
        Harness { worker, woken, samples: Vec::new() }
    }

    /// The next event, sampling the running jobs' progress while waiting; panics after [`EVENT_TIMEOUT`].
    fn next_event(&mut self) -> Event {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            for (kind, _, snapshot) in self.worker.running() {
                self.samples.push((kind, snapshot));
            }
            if let Some(event) = self.worker.try_next() {
                return event;
            }
            let left = deadline.checked_duration_since(Instant::now()).expect("no worker event within the timeout");
            // Short waits, so progress is sampled while a job runs; a wake-up ends the wait at once.
            let _ = self.woken.recv_timeout(left.min(Duration::from_millis(5)));
        }
    }

    /// Events until `job` finishes: its outputs (in order) and how it ended. Events of other jobs are returned too.
    fn until_finished(&mut self, job: JobId) -> (Vec<(JobId, Outcome)>, Result<(), Error>) {
        let mut outputs = Vec::new();
        loop {
            match self.next_event() {
                Event::Output { job, outcome } => outputs.push((job, outcome)),
                Event::Finished { job: finished, result, .. } if finished == job => return (outputs, result),
                Event::Finished { .. } => {}
            }
        }
    }

    /// Waits until the running job of `kind` reports a stage starting with `prefix`.
    fn until_stage(&mut self, kind: JobKind, prefix: &str) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let running = self.worker.running();
            if running.iter().any(|(k, _, s)| *k == kind && s.stage.starts_with(prefix)) {
                return;
            }
            assert!(running.iter().any(|(k, _, _)| *k == kind), "the {kind:?} job ended before stage {prefix:?}");
            assert!(Instant::now() < deadline, "no stage {prefix:?} within the timeout");
            let _ = self.woken.recv_timeout(Duration::from_millis(5));
        }
    }
}

/// Asserts that within each stage of each kind `done` never decreases and `total` stays put.
fn assert_monotonic(samples: &[(JobKind, ProgressSnapshot)]) {
    for (i, (kind, later)) in samples.iter().enumerate() {
        let earlier = samples[..i].iter().rev().find(|(k, _)| k == kind).map(|(_, s)| s);
        if let Some(earlier) = earlier
            && earlier.stage == later.stage
        {
            assert!(
                later.done >= earlier.done,
                "{kind:?} went back within {:?}: {earlier:?} -> {later:?}",
                later.stage
            );
            assert_eq!(later.total, earlier.total, "{kind:?}: the total of {:?} changed", later.stage);
        }
    }
}

fn mlp() -> (Arc<Model>, Arc<Architecture>, Plan) {
    let model = Model::open(&path("sample-models/digits-mlp")).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let plan =
        Recipe::uniform(Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel))).resolve(&model).unwrap();
    (Arc::new(model), Arc::new(arch), plan)
}

/// A benchmark that cannot finish within the test (it is always cancelled).
fn endless_benchmark(model: &Arc<Model>, arch: &Arc<Architecture>, plan: &Plan) -> Job {
    Job::Benchmark {
        model: Arc::clone(model),
        arch: Arc::clone(arch),
        plan: plan.clone(),
        data: None,
        workload: Workload { repeat: 1_000_000, batch: 1, ..Workload::default() },
    }
}

#[test]
fn open_sends_the_model_with_its_runtime_and_data_then_finishes() {
    let mut h = Harness::new();
    let job = h.worker.submit(Job::Open(path("sample-models/digits-mlp")));
    assert!(h.worker.is_running(JobKind::Open) && h.worker.is_current(job));
    let (outputs, result) = h.until_finished(job);
    result.unwrap();
    let [(from, Outcome::Opened { model, runtime, default_data, default_calib_data })] = outputs.as_slice() else {
        panic!("{outputs:?}");
    };
    assert_eq!(*from, job);
    assert!(model.layers.len() >= 2);
    assert_eq!(runtime.as_ref().map(|a| a.family()), Ok("graph"));
    assert!(default_data.as_ref().is_some_and(|p| p.ends_with("eval.safetensors")), "{default_data:?}");
    assert!(default_calib_data.as_ref().is_some_and(|p| p.ends_with("calib.safetensors")), "{default_calib_data:?}");
    assert!(!h.worker.is_running(JobKind::Open));

    // A model that cannot run still opens, with the reason (weight-only mode).
    let job = h.worker.submit(Job::Open(path("sample-models/tiny-llm")));
    let (outputs, result) = h.until_finished(job);
    result.unwrap();
    let [(_, Outcome::Opened { runtime: Err(reason), .. })] = outputs.as_slice() else { panic!("{outputs:?}") };
    assert!(reason.contains("weight-only"), "{reason}");
}

#[test]
fn evaluation_and_calibration_report_named_stages_that_never_go_back() {
    let (model, arch, plan) = mlp();
    let mut h = Harness::new();
    let data = model.path.join("eval.safetensors");
    let job = h.worker.submit(Job::Evaluate {
        model: Arc::clone(&model),
        arch: Arc::clone(&arch),
        plan: plan.clone(),
        data: data.clone(),
    });
    let (outputs, result) = h.until_finished(job);
    result.unwrap();
    assert!(matches!(outputs.as_slice(), [(_, Outcome::Evaluated { report, .. })] if report.samples > 0));
    let calib = model.path.join("calib.safetensors");
    let job = h.worker.submit(Job::Calibrate { model: Arc::clone(&model), arch, data: calib, cache_dir: None });
    let (outputs, result) = h.until_finished(job);
    result.unwrap();
    assert!(
        matches!(outputs.as_slice(), [(_, Outcome::Calibrated { layers, from_cache: false, .. })] if !layers.is_empty())
    );
    assert_monotonic(&h.samples);
    assert!(h.samples.iter().all(|(_, s)| !s.stage.is_empty()), "every sampled stage has a name");
}

#[test]
fn sensitivity_counts_one_stage_over_every_layer_and_names_the_layer() {
    let (model, arch, plan) = mlp();
    let data = EvalData::load(&model.path.join("eval.safetensors"), &model.path).unwrap();
    let progress = Progress::new();
    let mut seen = Vec::new();
    let mode = quantstudio::calib::SensitivityMode::OneAtATime;
    let report = quantstudio::tasks::sensitivity(&model, &arch, &data, &plan, mode, &progress, &mut |layer| {
        seen.push((layer.layer.clone(), progress.snapshot()))
    })
    .unwrap();
    let layers = report.layers.len();
    assert!(layers >= 2);
    for (k, (name, snapshot)) in seen.iter().enumerate() {
        // Each layer's run adds its samples to the same stage: the bar only moves forward through the ranking.
        assert_eq!(snapshot.stage, format!("sensitivity {}/{layers}: {name}", k + 1));
        assert_eq!((snapshot.done, snapshot.total), (((k + 1) * data.len()) as u64, (layers * data.len()) as u64));
    }
}

#[test]
fn cancel_ends_a_running_job_with_cancelled_and_nothing_else() {
    let (model, arch, plan) = mlp();
    let mut h = Harness::new();
    let job = h.worker.submit(endless_benchmark(&model, &arch, &plan));
    h.until_stage(JobKind::Benchmark, "timing");
    h.worker.cancel(JobKind::Benchmark);
    assert!(!h.worker.is_running(JobKind::Benchmark) && !h.worker.is_current(job));
    let (outputs, result) = h.until_finished(job);
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(outputs.is_empty(), "{outputs:?}");
    assert_monotonic(&h.samples);
}

#[test]
fn a_second_job_of_a_kind_replaces_the_first_whose_late_outputs_are_dropped() {
    let (model, _, _) = mlp();
    let mut h = Harness::new();
    let requests: Vec<(TensorId, Precision)> = (0..model.tensors.len())
        .map(|i| (TensorId(i), Precision::Int8(Int8Scheme::weights(true, Granularity::PerTensor))))
        .collect();
    let first = h.worker.submit(Job::Analyse { model: Arc::clone(&model), requests: requests.clone() });
    // The first job has sent an output (the wake-up says so), and it waits in the queue, not yet drained.
    h.woken.recv_timeout(EVENT_TIMEOUT).expect("the first job sent nothing");
    let second = h.worker.submit(Job::Analyse { model: Arc::clone(&model), requests: requests.clone() });
    assert!(!h.worker.is_current(first) && h.worker.is_current(second));
    // Every event until both have ended: the second's outputs, and of the first only its end (cancelled, or done if
    // it finished before it was replaced).
    let (mut outputs, mut ended) = (Vec::new(), Vec::new());
    while ended.len() < 2 {
        match h.next_event() {
            Event::Output { job, .. } => outputs.push(job),
            Event::Finished { job, result, .. } => ended.push((job, result)),
        }
    }
    assert!(outputs.iter().all(|job| *job == second), "an output of the replaced job came through: {outputs:?}");
    assert_eq!(outputs.len(), requests.len());
    assert!(ended.iter().any(|(job, result)| *job == second && result.is_ok()), "{ended:?}");
    assert!(ended.iter().any(|(job, _)| *job == first), "{ended:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn job_threads_and_their_pool_run_below_the_callers_priority() {
    /// The nice value (field 19 of /proc/<pid>/task/<tid>/stat) of every thread whose name starts with `prefix`.
    fn nice_of(prefix: &str) -> Vec<i32> {
        let mut values = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            // The name in stat is in parentheses and may hold spaces: the fields start after the last ')'.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            if name.trim_end().starts_with(prefix) {
                values.push(fields.get(16).and_then(|f| f.parse().ok()).unwrap_or(i32::MIN));
            }
        }
        values
    }
    let own_nice = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let own_nice: i32 = own_nice.rsplit_once(')').unwrap().1.split_whitespace().nth(16).unwrap().parse().unwrap();
    let (model, arch, plan) = mlp();
    let mut h = Harness::new();
    let job = h.worker.submit(endless_benchmark(&model, &arch, &plan));
    h.until_stage(JobKind::Benchmark, "timing");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    // Pool threads lower their priority as they start: wait until every one has.
    while nice_of("qs-pool-").iter().any(|&n| n != quantstudio::worker::JOB_NICE) {
        assert!(Instant::now() < deadline, "pool threads kept their priority: {:?}", nice_of("qs-pool-"));
        let _ = h.woken.recv_timeout(Duration::from_millis(5));
    }
    assert!(!nice_of("qs-pool-").is_empty());
    assert!(nice_of("qs-benchmarking").iter().all(|&n| n == quantstudio::worker::JOB_NICE));
    let after: i32 = std::fs::read_to_string("/proc/thread-self/stat")
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after, own_nice, "the caller's thread keeps its priority");
    h.worker.cancel(JobKind::Benchmark);
    let (_, result) = h.until_finished(job);
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
}
