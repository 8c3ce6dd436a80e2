//! The window's state without egui: each part of `app::state` on its own (plan editor, calibration, results log,
//! table view), and the `Studio` routing commands and worker events to them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quantstudio::Progress;
use quantstudio::app::state::{
    Analyses, CalibrationState, Command, DEFAULT_INT8, DEFAULT_OBSERVER, LastCalibration, LayerFacts, PlanEditor,
    ResultsLog, RowProblem, SortColumn, TableView,
};
use quantstudio::app::{Preferences, Studio};
use quantstudio::calib::Observer;
use quantstudio::calib::histogram::ActivationHistogram;
use quantstudio::calib::view::LayerActivations;
use quantstudio::model::{LayerId, Model};
use quantstudio::quant::pass::{TensorData, analyze};
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe};
use quantstudio::runtime::benchmark::Configuration;
use quantstudio::runtime::latency::Latency;
use quantstudio::worker::{JobId, Outcome};

use crate::common;

/// How long a test waits for the worker before failing.
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);

fn w8a8() -> Precision {
    Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel).with_int8_inputs())
}

fn digits_mlp_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp")
}

fn open(path: &Path) -> Arc<Model> {
    Arc::new(Model::open(path).expect("model opens"))
}

/// A calibration that observed `layers`, each input a seeded normal sample with an outlier.
fn calibrated(layers: &[LayerId]) -> Arc<BTreeMap<LayerId, LayerActivations>> {
    let views = layers
        .iter()
        .map(|id| {
            let mut histogram = ActivationHistogram::new();
            let mut values = common::normal(1 << 17, 7 + id.0 as u64, 1.0);
            // One outlier: min-max keeps it, the percentile observers clip it.
            values[0] = 40.0;
            histogram.observe(&values);
            (*id, LayerActivations::new(histogram))
        })
        .collect();
    Arc::new(views)
}

/// Files the analysis of every main tensor the plan still lacks, as the analysis job would.
fn analyse(model: &Model, plan: &Plan, analyses: &mut Analyses) {
    for (tensor, precision) in analyses.missing(model, plan, []) {
        let data = TensorData::of(model, tensor).expect("tensor data");
        let analysis = Arc::new(analyze(&data, precision, &Progress::new()).expect("analysis"));
        let _ = analyses.on_outcome(&Outcome::Analysed { tensor, precision, analysis });
    }
}

fn facts<'a>(
    model: &'a Model,
    editor: &'a PlanEditor,
    analyses: &'a Analyses,
    calibration: &'a CalibrationState,
) -> LayerFacts<'a> {
    LayerFacts { model, plan: editor.plan(), analyses, calibration, scores: None, compatibility: None }
}

#[test]
fn undo_reverts_precision_observer_and_clip_edits_one_step_at_a_time() {
    let model = open(&digits_mlp_path());
    let fc1 = model.layer_by_name("fc1").unwrap();
    let mut editor = PlanEditor::new(Recipe::uniform(DEFAULT_INT8).resolve(&model).unwrap());
    let layers = calibrated(&[fc1]);
    editor.set_calibration(Some(layers.clone()));
    assert!(!editor.can_undo(), "a calibration without hand-set clips is no edit");
    let by_default = layers[&fc1].clip(DEFAULT_OBSERVER);
    let by_min_max = layers[&fc1].clip(Observer::MinMax);
    assert_ne!(by_default, by_min_max);

    assert!(editor.set_precision(&[fc1], w8a8()));
    assert!(editor.set_observer(Observer::MinMax));
    assert!(editor.set_input_clip(fc1, Some(0.25)));
    assert!(!editor.set_input_clip(fc1, Some(f32::NAN)), "a clip that is not a number is refused");
    assert_eq!(editor.plan().input_clips[fc1.0], Some(0.25));

    assert!(editor.undo());
    assert_eq!(editor.plan().input_clips[fc1.0], Some(by_min_max), "undo gives the clip back to the observer");
    assert!(editor.clip_overrides().is_empty());
    assert!(editor.undo());
    assert_eq!(editor.plan().input_clips[fc1.0], Some(by_default), "undo reverts the observer");
    assert!(editor.undo());
    assert_eq!(editor.plan().layer(fc1), DEFAULT_INT8, "undo reverts the precision");
    assert!(!editor.undo());

    assert!(editor.redo() && editor.redo() && editor.redo());
    assert_eq!(editor.plan().layer(fc1), w8a8());
    assert_eq!(editor.observer(), Observer::MinMax);
    assert_eq!(editor.plan().input_clips[fc1.0], Some(0.25), "redo re-applies the hand-set clip");
}

#[test]
fn a_new_calibration_replaces_hand_set_clips_as_one_undoable_step() {
    let model = open(&digits_mlp_path());
    let fc1 = model.layer_by_name("fc1").unwrap();
    let mut editor = PlanEditor::new(Plan::all(&model, w8a8()));
    editor.set_calibration(Some(calibrated(&[fc1])));
    assert!(editor.set_input_clip(fc1, Some(0.5)));
    let again = calibrated(&[fc1]);
    editor.set_calibration(Some(again.clone()));
    assert_eq!(editor.plan().input_clips[fc1.0], Some(again[&fc1].clip(DEFAULT_OBSERVER)));
    assert!(editor.undo());
    assert_eq!(editor.plan().input_clips[fc1.0], Some(0.5), "undo brings the hand-set clip back");
}

#[test]
fn the_table_keeps_its_order_when_a_precision_changes_under_a_figure_sort() {
    let model = open(&common::bundled_sample());
    let mut editor = PlanEditor::new(Recipe::uniform(DEFAULT_INT8).resolve(&model).unwrap());
    let mut analyses = Analyses::default();
    let calibration = CalibrationState::default();
    let mut table = TableView::default();
    table.sort = (SortColumn::Sqnr, true);

    // Sorted before any figure: model order; figures arriving for rows without one re-sort the table.
    let (generation, mut revision) = (1, 1);
    let unsorted = table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision);
    analyse(&model, editor.plan(), &mut analyses);
    revision += 1;
    let before = table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision);
    assert_ne!(before, unsorted, "arriving figures sort the table");
    assert_eq!(before, table.sorted(&facts(&model, &editor, &analyses, &calibration)));

    // The worst row goes to FP16: its SQNR jumps, and the row stays where it is, through its new analysis.
    let worst = before[0];
    assert!(editor.set_precision(&[worst], Precision::Fp16));
    revision += 1;
    assert_eq!(table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision), before);
    analyse(&model, editor.plan(), &mut analyses);
    revision += 1;
    assert_eq!(table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision), before);
    let fresh = table.sorted(&facts(&model, &editor, &analyses, &calibration));
    assert_ne!(fresh[0], worst, "a fresh sort would have moved the edited row away");

    // Sorting again (a header click) applies the new figures; so does a filter change.
    table.sort = (SortColumn::Sqnr, false);
    let _ = table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision);
    table.sort = (SortColumn::Sqnr, true);
    assert_eq!(table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision), fresh);
    assert!(editor.set_precision(&[fresh[0]], Precision::Fp16));
    analyse(&model, editor.plan(), &mut analyses);
    revision += 1;
    table.filter = "proj".into();
    let filtered = table.rows(&facts(&model, &editor, &analyses, &calibration), generation, revision);
    assert_eq!(filtered, table.sorted(&facts(&model, &editor, &analyses, &calibration)));
    assert!(filtered.iter().all(|l| model.layer(*l).name.contains("proj")));
}

#[test]
fn the_planned_error_of_a_static_w8a8_layer_includes_its_input() {
    let model = open(&digits_mlp_path());
    let (fc1, fc2) = (model.layer_by_name("fc1").unwrap(), model.layer_by_name("fc2").unwrap());
    let mut editor = PlanEditor::new(Recipe::uniform(DEFAULT_INT8).resolve(&model).unwrap());
    let layers = calibrated(&[fc1, fc2]);
    let mut calibration = CalibrationState::default();
    calibration.run =
        Some(LastCalibration { data: "calib".into(), from_cache: false, samples: 1, layers: layers.clone() });
    editor.set_calibration(Some(layers.clone()));
    assert!(editor.set_precision(&[fc1], w8a8()));
    // A tight clip: most of the input is clipped, so the input, not the weights, sets the layer's error.
    let clip = layers[&fc1].histogram.absmax() / 50.0;
    assert!(editor.set_input_clip(fc1, Some(clip)));
    calibration.refresh(editor.plan());
    let mut analyses = Analyses::default();
    analyse(&model, editor.plan(), &mut analyses);
    let facts = facts(&model, &editor, &analyses, &calibration);

    let error = facts.planned_error(fc1).expect("fc1 is analysed");
    let weights = facts.analysis(fc1).unwrap().error.sqnr_db;
    let input = quantstudio::calib::clip_error(&layers[&fc1].histogram, clip);
    assert_eq!(error.weights_sqnr_db, weights);
    assert_eq!(error.input, Some((clip, input)));
    assert!(input.sqnr_db.unwrap() < weights.unwrap(), "{input:?} against {weights:?}");
    assert_eq!(error.worst_sqnr_db(), input.sqnr_db, "the worse of the two");
    assert!(error.input_is_worse());

    // Weight-only INT8 (fc2, calibrated or not): the weights alone.
    let weight_only = facts.planned_error(fc2).unwrap();
    assert_eq!(weight_only.input, None);
    assert_eq!(weight_only.worst_sqnr_db(), facts.analysis(fc2).unwrap().error.sqnr_db);
}

#[test]
fn static_w8a8_without_a_clip_is_marked_and_the_edit_says_why() {
    let model = open(&digits_mlp_path());
    let (fc1, fc2) = (model.layer_by_name("fc1").unwrap(), model.layer_by_name("fc2").unwrap());
    let mut editor = PlanEditor::new(Recipe::uniform(DEFAULT_INT8).resolve(&model).unwrap());
    let analyses = Analyses::default();
    let mut calibration = CalibrationState::default();

    // No calibration at all.
    let reaction = editor.apply(&Command::SetPrecision { layers: vec![fc1], precision: w8a8() }, &model, None);
    assert!(reaction.plan_changed);
    assert!(reaction.notice.unwrap().text.contains("calibrate first"));
    let problem = facts(&model, &editor, &analyses, &calibration).row_problem(fc1);
    assert_eq!(problem, Some(RowProblem::Uncalibrated { calibration_ran: false }));
    assert_eq!(problem.unwrap().word(), "uncalibrated");

    // A calibration that observed fc1 only: "Apply to matching" on fc* says which layer it never saw.
    let layers = calibrated(&[fc1]);
    calibration.run =
        Some(LastCalibration { data: "calib".into(), from_cache: false, samples: 1, layers: layers.clone() });
    editor.set_calibration(Some(layers));
    let command = Command::SetPrecisionMatching { pattern: "fc[12]".into(), precision: w8a8() };
    let notice = editor.apply(&command, &model, None).notice.unwrap();
    assert!(!notice.is_error);
    assert!(notice.text.contains("2 layer(s) matching"), "{}", notice.text);
    assert!(notice.text.contains("calibration never observed the input of fc2"), "{}", notice.text);
    let marks = facts(&model, &editor, &analyses, &calibration);
    assert_eq!(marks.row_problem(fc1), None, "fc1 has its observer clip");
    let problem = marks.row_problem(fc2).unwrap();
    assert_eq!(problem, RowProblem::Uncalibrated { calibration_ran: true });
    assert!(problem.reason().contains("never observed"));

    // W8A8-dynamic needs no calibration.
    assert!(editor.set_precision(&[fc2], Precision::Int8(Int8Scheme::w8a8_dynamic())));
    assert_eq!(facts(&model, &editor, &analyses, &calibration).row_problem(fc2), None);
}

#[test]
fn a_layer_the_export_target_refuses_carries_the_compatibility_mark() {
    let model = open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert"));
    let words = model.layer_by_name("embeddings.word_embeddings").unwrap();
    let mut editor = PlanEditor::new(Recipe::uniform(DEFAULT_INT8).resolve(&model).unwrap());
    assert!(editor.set_precision(&[words], DEFAULT_INT8));
    let compatibility = quantstudio::export::Target::default().check(&model, editor.plan());
    let (analyses, calibration) = (Analyses::default(), CalibrationState::default());
    let facts = LayerFacts { compatibility: Some(&compatibility), ..facts(&model, &editor, &analyses, &calibration) };
    let problem = facts.row_problem(words).expect("the INT8 embedding table is refused");
    assert_eq!(problem.word(), "no: transformers, vLLM");
    assert!(problem.reason().contains("Fix: "), "{}", problem.reason());
    let clean = (0..model.layers.len()).map(LayerId).filter(|l| *l != words);
    assert!(clean.into_iter().all(|l| facts.row_problem(l).is_none()));
}

fn configuration(name: &str, median_ms: f64) -> Configuration {
    Configuration {
        name: name.into(),
        latency: Latency {
            unit: "1 image".into(),
            latency_ms_median: median_ms,
            latency_ms_p95: median_ms,
            throughput_per_s: 1000.0 / median_ms,
            throughput_unit: "images".into(),
            weights_bytes: 0,
            threads: 1,
        },
        disk_bytes: 0,
        integer_layers: 0,
        compact_layers: 0,
        quality: None,
        evaluation: None,
    }
}

#[test]
fn a_benchmarked_plan_is_compared_with_the_fp32_of_its_own_run() {
    let model = open(&digits_mlp_path());
    let plan = Plan::all(&model, DEFAULT_INT8);
    let mut log = ResultsLog::default();
    let fp32 = |ms| Outcome::Benchmarked { plan: None, data: None, configuration: Box::new(configuration("FP32", ms)) };
    let planned = |ms| Outcome::Benchmarked {
        plan: Some(plan.clone()),
        data: None,
        configuration: Box::new(configuration("plan", ms)),
    };
    let (first, second, third) = (JobId(1), JobId(2), JobId(3));
    let _ = log.on_outcome(first, &fp32(10.0), &model);
    // A second run starts before the first one's plan is filed: its FP32 timing must not become the first's.
    let _ = log.on_outcome(second, &fp32(20.0), &model);
    let notice = log.on_outcome(first, &planned(5.0), &model).notice.unwrap();
    assert!(notice.text.contains("(2.00x FP32)"), "{}", notice.text);
    let _ = log.on_outcome(second, &planned(5.0), &model);
    assert_eq!(log.benchmarks.len(), 3, "one FP32 row and two plans");
    assert_eq!(log.benchmarks[0].configuration.latency.latency_ms_median, 20.0, "the FP32 row has the latest");
    assert_eq!((log.benchmarks[1].fp32_latency_ms, log.benchmarks[1].speedup()), (Some(10.0), Some(2.0)));
    assert_eq!((log.benchmarks[2].fp32_latency_ms, log.benchmarks[2].speedup()), (Some(20.0), Some(4.0)));
    // A run whose FP32 never came has no baseline (not an earlier run's).
    log.run_finished(first);
    let _ = log.on_outcome(third, &planned(5.0), &model);
    assert_eq!(log.benchmarks[3].fp32_latency_ms, None);
    assert_eq!(log.benchmarks[3].speedup(), None);
}

/// Polls the studio until `done` holds.
fn poll_until(studio: &mut Studio, what: &str, done: impl Fn(&Studio) -> bool) {
    let start = Instant::now();
    while !done(studio) {
        assert!(start.elapsed() < WORKER_TIMEOUT, "timed out waiting for {what}");
        studio.poll(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_studio_routes_calibration_and_clip_edits_and_undo_reverts_a_clip() {
    let cache = common::temp_dir();
    let mut studio = Studio::new(Preferences::default(), || {});
    studio.apply(Command::Open(digits_mlp_path()));
    poll_until(&mut studio, "the model to open", |s| s.model.is_some());
    let model = studio.model.clone().unwrap();
    let fc1 = model.layer_by_name("fc1").unwrap();
    studio.apply(Command::SetPrecisionMatching { pattern: "fc1".into(), precision: w8a8() });
    assert_eq!(studio.row_problem(fc1), Some(RowProblem::Uncalibrated { calibration_ran: false }));
    assert!(studio.notice.as_ref().unwrap().text.contains("calibrate first"));

    studio.calibration.cache_dir = Some(cache.path().to_owned());
    studio.apply(Command::Calibrate(digits_mlp_path().join("calib.safetensors")));
    poll_until(&mut studio, "the calibration", |s| s.calibration.run.is_some());
    assert_eq!(studio.row_problem(fc1), None, "calibrated: fc1 runs");
    let observed = studio.plan().input_clips[fc1.0].unwrap();
    studio.apply(Command::SetInputClip { layer: fc1, clip: Some(observed / 2.0) });
    assert_eq!(studio.plan().input_clips[fc1.0], Some(observed / 2.0));
    assert_eq!(studio.input_clip_error(fc1).map(|(clip, _)| clip), Some(observed / 2.0));
    studio.apply(Command::Undo);
    assert_eq!(studio.plan().input_clips[fc1.0], Some(observed), "Undo reverts the clip");
    assert_eq!(studio.plan().layer(fc1), w8a8(), "and only the clip");
    studio.apply(Command::Redo);
    assert_eq!(studio.plan().input_clips[fc1.0], Some(observed / 2.0));
    poll_until(&mut studio, "the jobs to end", |s| !s.is_busy());
}
