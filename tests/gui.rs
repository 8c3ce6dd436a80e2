//! The window, headless: egui_kittest drives the real `StudioApp` by label (no GPU, no display).

use std::path::Path;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use quantstudio::app::{Command, NoDialogs, Preferences, StudioApp};

use crate::common::{self, Spec};

/// How long a test waits for the worker before failing.
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);

/// The window's size in the tests: its bottom panels (15% of the height each) show a few result rows without
/// scrolling.
const WINDOW_SIZE: [f32; 2] = [1280.0, 1000.0];

/// The window on `path`, asking no file dialog (the tests must never block on one).
fn harness(path: &Path) -> Harness<'static, StudioApp> {
    let app = StudioApp::new(Preferences::default(), Some(path.to_owned()), || {}).with_dialogs(Box::new(NoDialogs));
    Harness::builder().with_size(WINDOW_SIZE).build_ui_state(|ui, app: &mut StudioApp| app.frame_ui(ui), app)
}

/// Steps frames until `done` holds (the worker runs on its own threads meanwhile).
fn step_until(harness: &mut Harness<'static, StudioApp>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    while !done(harness.state()) {
        assert!(start.elapsed() < WORKER_TIMEOUT, "timed out waiting for {what}");
        harness.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    harness.step();
}

fn loaded_and_analysed(app: &StudioApp) -> bool {
    app.studio.model.is_some() && !app.studio.is_busy()
}

#[test]
fn opens_the_sample_and_fills_in_the_error_columns() {
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    assert!(h.query_all_by_label("lm_head").count() >= 1);
    h.get_by_label_contains("× smaller");
    let model = h.state().studio.model.clone().unwrap();
    let analysed = (0..model.layers.len())
        .filter(|i| h.state().studio.layer_analysis(quantstudio::model::LayerId(*i)).is_some())
        .count();
    assert_eq!(analysed, 11, "every layer with a float tensor has its error");
    assert!(!h.get_all_by_label_contains(" dB").collect::<Vec<_>>().is_empty(), "SQNR figures are shown");
}

#[test]
fn changing_a_precision_changes_the_planned_size_and_undo_restores_it() {
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open", loaded_and_analysed);
    let before = h.state().studio.planned_bytes();
    h.get_by_label("precision of model.layers.0.mlp.down_proj").click();
    h.run_steps(3);
    h.get_by_label("FP16").click();
    h.run_steps(2);
    let after = h.state().studio.planned_bytes();
    assert!(after > before, "down_proj INT8 -> FP16 grows the plan: {before} -> {after}");
    step_until(&mut h, "the new error", loaded_and_analysed);
    h.get_by_label("Edit").click();
    h.run_steps(3);
    h.get_by_label_contains("Undo").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.planned_bytes(), before, "undo restores the plan");
    h.key_press_modifiers(egui::Modifiers::COMMAND | egui::Modifiers::SHIFT, egui::Key::Z);
    h.run_steps(2);
    assert_eq!(h.state().studio.planned_bytes(), after, "Ctrl+Shift+Z re-applies it");
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.run_steps(2);
    assert_eq!(h.state().studio.planned_bytes(), before, "Ctrl+Z undoes it again");
}

/// Clicks Cancel and waits until no job runs; whether the notice says the job was cancelled (it may have ended on
/// its own between the last frame and the click).
fn cancel_and_wait(h: &mut Harness<'static, StudioApp>) -> bool {
    h.get_by_label("Cancel").click();
    h.run_steps(2);
    step_until(h, "the job to stop", |app| !app.studio.is_busy());
    let notice = h.state().studio.notice.clone();
    notice.is_some_and(|n| n.text.contains("cancelled") && !n.is_error)
}

#[test]
fn a_running_job_can_be_cancelled_and_the_app_stays_usable() {
    let dir = common::temp_dir();
    let path = dir.path().join("big.safetensors");
    // Large enough that the analysis is still running when Cancel is clicked, even on a fast machine.
    let specs: Vec<Spec> = (0..16)
        .map(|i| Spec::f32(&format!("layers.{i}.weight"), &[1024, 1024], &common::normal(1 << 20, i, 0.02)))
        .collect();
    common::write_model(&path, &specs);
    let mut h = harness(&path);
    let only_analysing = |app: &StudioApp| {
        let jobs = app.studio.jobs();
        jobs.len() == 1 && jobs[0].0 == quantstudio::worker::JobKind::Analyse
    };
    step_until(&mut h, "the model to open", |app| {
        app.studio.model.is_some() && (only_analysing(app) || !app.studio.is_busy())
    });
    // On a loaded machine one frame can outlast the whole analysis; each try starts a fresh one (every layer to a
    // precision not analysed yet) and clicks Cancel while it runs. A Cancel that never stops a job fails all tries.
    let layers: Vec<_> = (0..16).map(quantstudio::model::LayerId).collect();
    let fresh = [
        quantstudio::quant::Precision::Bf16,
        quantstudio::quant::Precision::Int4(quantstudio::quant::Int4Scheme { symmetric: true, group_size: 32 }),
        quantstudio::quant::Precision::Int4(quantstudio::quant::Int4Scheme { symmetric: false, group_size: 64 }),
        quantstudio::quant::Precision::Int4(quantstudio::quant::Int4Scheme { symmetric: true, group_size: 128 }),
    ];
    let mut cancelled = only_analysing(h.state()) && cancel_and_wait(&mut h);
    for precision in fresh {
        if cancelled {
            break;
        }
        h.state_mut().send(Command::SetPrecision { layers: layers.clone(), precision });
        assert!(only_analysing(h.state()), "a precision change starts the analysis (and only it)");
        h.step();
        cancelled = only_analysing(h.state()) && cancel_and_wait(&mut h);
    }
    assert!(cancelled, "Cancel stopped a running analysis in one of the tries");
    // Still usable: a precision change restarts the analysis for what is missing.
    h.state_mut().send(Command::SetPrecision {
        layers: vec![quantstudio::model::LayerId(0)],
        precision: quantstudio::quant::Precision::Fp16,
    });
    h.step();
    step_until(&mut h, "the new analysis", loaded_and_analysed);
    assert!(h.state().studio.layer_analysis(quantstudio::model::LayerId(0)).is_some());
}

#[test]
fn a_bad_file_shows_an_error_and_keeps_the_open_model() {
    let dir = common::temp_dir();
    let bad = dir.path().join("truncated.safetensors");
    std::fs::write(&bad, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open", loaded_and_analysed);
    h.state_mut().send(Command::Open(bad));
    h.step();
    step_until(&mut h, "the open to fail", |app| app.studio.notice.as_ref().is_some_and(|n| n.is_error));
    h.get_by_label_contains("truncated.safetensors");
    assert!(h.state().studio.model.as_ref().unwrap().path.ends_with("tiny-llm"), "the open model stays");
    assert!(h.query_all_by_label("lm_head").count() >= 1);
    h.get_by_label("x").click();
    h.run_steps(2);
    assert!(h.state().studio.notice.is_none(), "the notice can be dismissed");
}

#[test]
fn the_gguf_target_is_chosen_in_the_file_menu_and_exports_a_llama_model_through_the_window() {
    let dir = common::temp_dir();
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open", loaded_and_analysed);
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("gguf").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.target, quantstudio::export::Target::Gguf);
    // The bundled sample (model_type tiny-demo, no tokenizer) cannot be a GGUF source: refused, nothing written.
    let refused = dir.path().join("sample.gguf");
    h.state_mut().send(Command::Export { dest: refused.clone(), force: false });
    h.step();
    step_until(&mut h, "the refusal", |app| app.studio.notice.as_ref().is_some_and(|n| n.is_error));
    assert!(h.query_all_by_label_contains("tiny-demo").count() >= 1, "the reason is shown");
    assert!(!refused.exists());
    // A Llama model with a byte-level tokenizer is written as one .gguf file.
    let folder = crate::gguf::llama_fixture(dir.path());
    h.state_mut().send(Command::Open(folder));
    h.step();
    step_until(&mut h, "the llama model to open", |app| {
        loaded_and_analysed(app) && app.studio.model.as_ref().is_some_and(|m| m.path.ends_with("tiny-llama-bpe"))
    });
    // The starting plan quantizes the linear layers to INT8, which GGUF has no type for: one click sets the fix.
    let compatibility = h.state().studio.compatibility.clone().unwrap();
    assert!(compatibility.model_refusal.is_none() && !compatibility.is_expressible());
    h.state_mut().send(Command::ApplyExportFixes);
    h.run_steps(2);
    h.get_by_label("Loads in llama.cpp: yes");
    let dest = dir.path().join("tiny.gguf");
    h.state_mut().send(Command::Export { dest: dest.clone(), force: false });
    h.step();
    step_until(&mut h, "the export", |app| app.studio.last_export.is_some());
    h.get_by_label_contains("exported to");
    let header = quantstudio::export::gguf::read_header(&dest).unwrap();
    assert_eq!(header.tensors.len(), 21);
    // The fix of an INT8 linear layer is llama.cpp's 8-bit type (its rows of 32 or 64 are whole blocks).
    let q8_0 = quantstudio::export::gguf::GgmlType::Block(quantstudio::quant::ggml::BlockFormat::Q8_0);
    let (ffn_down, _) = header.tensors.iter().find(|(t, _)| t.name == "blk.0.ffn_down.weight").unwrap();
    assert_eq!(ffn_down.ggml_type, q8_0);
}

#[test]
fn export_and_recipes_run_as_jobs_and_report_in_the_status_bar() {
    let dir = common::temp_dir();
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open", loaded_and_analysed);
    let dest = dir.path().join("export");
    // The synthetic sample's architecture is not one transformers builds: the export is refused, then forced.
    h.state_mut().send(Command::Export { dest: dest.clone(), force: false });
    h.step();
    step_until(&mut h, "the refusal", |app| app.studio.refused_export.is_some() && !app.studio.is_busy());
    h.get_by_label_contains("export refused");
    assert!(!dest.exists(), "a refused export writes nothing");
    h.get_by_label("Export anyway").click();
    h.step();
    step_until(&mut h, "the export", |app| app.studio.last_export.is_some());
    h.get_by_label_contains("exported to");
    assert!(dest.join("model.safetensors").is_file());
    let recipe = dir.path().join("plan.json");
    h.state_mut().send(Command::SaveRecipe(recipe.clone()));
    h.step();
    step_until(&mut h, "the recipe to be saved", |app| !app.studio.is_busy());
    assert!(recipe.is_file());
    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, r#"{"version":1,"layers":{"decoder.block.7":{"precision":"fp16"}}}"#).unwrap();
    h.state_mut().send(Command::LoadRecipe(foreign));
    h.step();
    step_until(&mut h, "the recipe error", |app| app.studio.notice.as_ref().is_some_and(|n| n.is_error));
    h.get_by_label_contains("decoder.block.7");
}

#[test]
fn evaluate_compares_plans_with_fp32_and_remembers_them() {
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    h.get_by_label_contains("graph model");
    // The data field is filled with the sample's own evaluation split.
    assert!(h.state().inputs_eval_data().ends_with("eval.safetensors"));
    h.get_by_label("Evaluate plan").click();
    h.step();
    step_until(&mut h, "the evaluation", |app| !app.studio.results.evaluations.is_empty() && !app.studio.is_busy());
    h.get_by_label("FP32 (reference)");
    h.get_by_label("#1");
    assert!(h.query_all_by_label("99.44%").count() >= 2, "FP32 accuracy and the INT8 plan's are shown");
    // A second plan is kept beside the first, and the first can be restored.
    let first_plan = h.state().studio.plan().layers.clone();
    h.state_mut()
        .send(Command::SetPrecisionMatching { pattern: "*".into(), precision: quantstudio::quant::Precision::Fp16 });
    h.step();
    h.get_by_label("Evaluate plan").click();
    h.step();
    step_until(&mut h, "the second evaluation", |app| {
        app.studio.results.evaluations.len() == 2 && !app.studio.is_busy()
    });
    h.get_by_label("#2");
    h.get_by_label("#1");
    h.get_all_by_label("Restore plan").last().unwrap().click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().layers, first_plan);
}

#[test]
fn benchmark_times_fp32_beside_each_plan_and_keeps_them_for_comparison() {
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    h.get_by_label("Benchmark").click();
    h.run_steps(2);
    h.get_by_label("Benchmark plan").click();
    h.step();
    step_until(&mut h, "the benchmark", |app| app.studio.results.benchmarks.len() == 2 && !app.studio.is_busy());
    h.get_by_label("#1");
    {
        let benchmarks = &h.state().studio.results.benchmarks;
        assert!(benchmarks[0].plan.is_none(), "FP32 comes first");
        let plan = &benchmarks[1].configuration;
        assert_eq!(plan.compact_layers, 3, "the INT8 weights run compact");
        assert_eq!(plan.quality.as_ref().map(|q| q.metric), Some("accuracy"), "measured on the sample's data");
        assert!(plan.disk_bytes * 3 < benchmarks[0].configuration.disk_bytes);
    }
    // A second plan joins the first; FP32 is re-timed beside it and stays one row.
    let first_plan = h.state().studio.plan().layers.clone();
    h.state_mut()
        .send(Command::SetPrecisionMatching { pattern: "*".into(), precision: quantstudio::quant::Precision::Fp16 });
    h.step();
    h.get_by_label("Benchmark plan").click();
    h.step();
    step_until(&mut h, "the second benchmark", |app| app.studio.results.benchmarks.len() == 3 && !app.studio.is_busy());
    h.get_by_label("#2");
    {
        let benchmarks = &h.state().studio.results.benchmarks;
        assert_eq!(benchmarks.iter().filter(|b| b.plan.is_none()).count(), 1);
        // Each plan's speed-up is against the FP32 timed beside it; the FP32 row holds the latest timing.
        assert_eq!(benchmarks[2].fp32_latency_ms, Some(benchmarks[0].configuration.latency.latency_ms_median));
        assert!(benchmarks[1].fp32_latency_ms.is_some());
    }
    h.get_all_by_label("Restore").next().unwrap().click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().layers, first_plan);
}

#[test]
fn a_model_without_a_forward_pass_says_why_it_cannot_run() {
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open", loaded_and_analysed);
    h.get_by_label_contains("Running unavailable");
    assert!(h.query_by_label("Evaluate plan").is_none());
}

#[test]
fn calibrate_and_sensitivity_run_as_jobs_and_drive_the_plan() {
    use quantstudio::calib::Observer;
    use quantstudio::model::LayerId;
    use quantstudio::quant::{Granularity, Int8Scheme, Precision};
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let cache = common::temp_dir();
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    h.state_mut().studio.calibration.cache_dir = Some(cache.path().to_owned());
    h.get_by_label_contains("not calibrated");
    h.get_by_label("Calibrate").click();
    h.step();
    step_until(&mut h, "the calibration", |app| app.studio.calibration.run.is_some() && !app.studio.is_busy());
    h.get_by_label_contains("3 layers, 128 samples");
    assert!(cache.path().read_dir().unwrap().count() == 1, "the calibration is cached on disk");
    // Every layer W8A8: each one has its calibrated clip.
    let w8a8 = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel).with_int8_inputs());
    h.state_mut().send(Command::SetPrecisionMatching { pattern: "*".into(), precision: w8a8 });
    h.run_steps(2);
    let model = h.state().studio.model.clone().unwrap();
    assert!(h.state().studio.plan().uncalibrated(&model).is_empty());
    // The inspector shows fc1's input with its clip, from the default observer.
    h.get_by_label("Input activations");
    h.get_by_label_contains("from percentile 99.99");
    let fc1 = LayerId(0);
    let absmax = h.state().studio.calibration.run.as_ref().unwrap().layers[&fc1].histogram.absmax();
    h.state_mut().send(Command::SetObserver(Observer::MinMax));
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().input_clips[0], Some(absmax));
    // A clip set by hand wins over the observer until reset.
    h.state_mut().send(Command::SetInputClip { layer: fc1, clip: Some(absmax / 2.0) });
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().input_clips[0], Some(absmax / 2.0));
    h.get_by_label("Reset").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().input_clips[0], Some(absmax));
    // The W8A8 plan evaluates.
    h.get_by_label("Evaluate plan").click();
    h.step();
    step_until(&mut h, "the evaluation", |app| !app.studio.results.evaluations.is_empty() && !app.studio.is_busy());
    assert!(h.state().studio.results.evaluations[0].report.accuracy.unwrap() > 0.98);
    // Sensitivity streams into the table's column and ranks; one click keeps the most sensitive in FP16.
    h.get_by_label("Run sensitivity").click();
    h.step();
    step_until(&mut h, "the ranking", |app| app.studio.results.sensitivity.as_ref().is_some_and(|s| s.ranked));
    assert_eq!(h.state().studio.results.sensitivity.as_ref().unwrap().scores.len(), 3);
    let top = h.state().studio.results.sensitivity.as_ref().unwrap().results[0].layer.clone();
    h.state_mut().send(Command::SetMostSensitive { count: 1, precision: Precision::Fp16 });
    h.run_steps(2);
    let top_id = model.layer_by_name(&top).unwrap();
    assert_eq!(h.state().studio.plan().layer(top_id), Precision::Fp16);
    assert_eq!(h.state().studio.plan().layers.iter().filter(|p| **p == Precision::Fp16).count(), 1);
    h.get_by_label("-> FP32").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().layers.iter().filter(|p| **p == Precision::Fp32).count(), 3);
}

#[test]
fn the_summary_says_whether_the_export_loads_and_one_click_fixes_the_refused_layers() {
    use quantstudio::quant::{Granularity, Int8Scheme, Precision};
    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let mut h = harness(&bert);
    step_until(&mut h, "tiny-bert to open", loaded_and_analysed);
    h.get_by_label("Loads in transformers: yes, vLLM: yes");
    // The word embeddings quantized: neither runtime loads an INT8 embedding table.
    let model = h.state().studio.model.clone().unwrap();
    let words = model.layer_by_name("embeddings.word_embeddings").unwrap();
    let int8 = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel));
    h.state_mut().send(Command::SetPrecision { layers: vec![words], precision: int8 });
    h.run_steps(2);
    h.get_by_label_contains("transformers: no (1 layer)");
    h.get_by_label("no: transformers, vLLM");
    h.get_by_label("Fix 1 layer").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().layer(words), Precision::Fp16, "the fix keeps the table in FP16");
    h.get_by_label_contains("transformers: yes, vLLM: yes");
    h.get_by_label("Edit").click();
    h.run_steps(3);
    h.get_by_label_contains("Undo").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().layer(words), int8, "the fix is one undoable edit");
}

#[test]
fn an_uncalibrated_w8a8_layer_is_marked_in_its_row_until_calibrated() {
    use quantstudio::quant::{Granularity, Int8Scheme, Precision};
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let cache = common::temp_dir();
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    h.state_mut().studio.calibration.cache_dir = Some(cache.path().to_owned());
    assert!(h.query_by_label("uncalibrated").is_none());
    let w8a8 = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel).with_int8_inputs());
    h.state_mut().send(Command::SetPrecisionMatching { pattern: "fc2".into(), precision: w8a8 });
    h.run_steps(2);
    assert_eq!(h.query_all_by_label("uncalibrated").count(), 1, "fc2's row is marked, and only it");
    h.get_by_label_contains("calibrate first");
    h.get_by_label("Calibrate").click();
    h.step();
    step_until(&mut h, "the calibration", |app| app.studio.calibration.run.is_some() && !app.studio.is_busy());
    assert!(h.query_by_label("uncalibrated").is_none(), "calibrated: the mark goes");
    // The SQNR column shows fc2's error as planned: the worse of its weights' and its input's.
    let fc2 = h.state().studio.model.as_ref().unwrap().layer_by_name("fc2").unwrap();
    let error = h.state().studio.planned_error(fc2).expect("fc2 is analysed");
    assert!(error.input_is_worse(), "INT8 inputs cost more than INT8 weights here: {error:?}");
    let (shown, weights) = (format!("{:.1} dB", error.worst_sqnr_db().unwrap()), error.weights_sqnr_db.unwrap());
    assert_ne!(shown, format!("{weights:.1} dB"), "the cell does not show the weights' figure");
    h.get_by_label(&shown);
}

#[test]
fn clicking_a_layer_name_selects_its_row_and_the_inspector_shows_it() {
    use quantstudio::model::LayerId;
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    let model = h.state().studio.model.clone().unwrap();
    assert_eq!(h.state().studio.table.focus, Some(LayerId(0)), "the first layer is inspected at start");
    assert_eq!(h.state_mut().studio.rows(), [LayerId(0), LayerId(1), LayerId(2)], "rows in model order at start");
    // A layer that is neither inspected nor named as the worst in the summary bar: its name shows once, in its row.
    let worst = (0..model.layers.len())
        .map(LayerId)
        .filter_map(|l| h.state().studio.layer_analysis(l).and_then(|a| a.error.sqnr_db).map(|db| (l, db)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(l, _)| l);
    let target = (1..model.layers.len()).map(LayerId).find(|l| Some(*l) != worst).unwrap();
    let name = model.layer(target).name.clone();
    assert_eq!(h.query_all_by_label(&name).count(), 1, "{name} shows in its row only");
    h.get_by_label(&name).click();
    h.run_steps(2);
    assert_eq!(h.state().studio.table.focus, Some(target), "a click on the name focuses the row");
    assert!(h.state().studio.table.selection.contains(&target), "and selects it");
    assert_eq!(h.query_all_by_label(&name).count(), 2, "the inspector now shows {name} too");
}

/// The histograms of the inspected layer are counted by a worker job when it is first shown: the panel says so
/// meanwhile, draws them when they arrive, and shows them at once when the layer is inspected again.
#[test]
fn the_inspector_asks_the_worker_for_a_layers_histograms_and_keeps_them() {
    use quantstudio::model::LayerId;
    const COMPUTING: &str = "Computing histograms...";
    const ERROR_PLOT: &str = "Error (x - dequantized x)";
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    step_until(&mut h, "the first layer's histograms", |app| app.studio.layer_histograms(LayerId(0)).is_some());
    assert!(h.query_by_label(COMPUTING).is_none());
    h.get_by_label(ERROR_PLOT);
    let order = h.state_mut().studio.rows();
    let target = LayerId(1);
    assert!(h.state().studio.layer_histograms(target).is_none(), "only the inspected layer's are counted");
    h.state_mut().studio.click_row(target, false, false, &order);
    // The frame that asks for them cannot have them yet (results are filed before the request is made).
    h.step();
    h.get_by_label(COMPUTING);
    assert!(h.query_by_label(ERROR_PLOT).is_none());
    step_until(&mut h, "the second layer's histograms", |app| app.studio.layer_histograms(target).is_some());
    assert!(h.query_by_label(COMPUTING).is_none());
    h.get_by_label(ERROR_PLOT);
    let histograms = h.state().studio.layer_histograms(target).cloned().unwrap();
    let analysis = h.state().studio.layer_analysis(target).cloned().unwrap();
    assert_eq!(histograms.value.total(), analysis.stats.finite_count, "every finite weight is counted");
    // Back and forth: both are cached, so neither asks again.
    for layer in [LayerId(0), target] {
        h.state_mut().studio.click_row(layer, false, false, &order);
        h.step();
        h.step();
        assert!(h.query_by_label(COMPUTING).is_none(), "{layer:?} is shown at once");
        h.get_by_label(ERROR_PLOT);
        assert!(!h.state().studio.jobs().iter().any(|(kind, _, _)| *kind == quantstudio::worker::JobKind::Histograms));
    }
}

/// A histograms job that ends without its histograms (cancelled from the status bar, or failed) is not asked again
/// by itself; the inspector says so, and its button asks again.
#[test]
fn a_stopped_histograms_job_is_said_and_can_be_asked_again() {
    use quantstudio::app::state::Command;
    use quantstudio::model::LayerId;
    use quantstudio::worker::{Event, JobKind};
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    step_until(&mut h, "the first layer's histograms", |app| app.studio.layer_histograms(LayerId(0)).is_some());
    let order = h.state_mut().studio.rows();
    let target = LayerId(1);
    h.state_mut().studio.click_row(target, false, false, &order);
    // A poll with no time for events makes the request and nothing else; the job's end is then filed as the
    // worker files a cancelled one, before the job's own result can arrive.
    h.state_mut().studio.poll(std::time::Duration::ZERO);
    let job = h.state().studio.jobs().iter().find(|(kind, _, _)| *kind == JobKind::Histograms).map(|(_, id, _)| *id);
    let job = job.expect("the inspected layer's histograms are asked for");
    let cancelled =
        Event::Finished { job, kind: JobKind::Histograms, result: Err(quantstudio::error::Error::Cancelled) };
    h.state_mut().studio.handle(cancelled);
    assert!(h.state().studio.layer_histograms_stopped(target));
    h.state_mut().studio.poll(std::time::Duration::ZERO);
    assert!(h.state().studio.layer_histograms_stopped(target), "a stopped request is not made again by itself");
    assert!(!h.state().studio.layer_histograms_stopped(LayerId(0)), "only the inspected layer's request stopped");
    h.state_mut().studio.apply(Command::ComputeHistograms);
    assert!(!h.state().studio.layer_histograms_stopped(target));
    step_until(&mut h, "the histograms asked again", |app| app.studio.layer_histograms(target).is_some());
    h.get_by_label("Error (x - dequantized x)");
}

#[test]
fn without_a_file_dialog_the_shortcuts_and_browse_fall_back_to_a_path_field() {
    use egui::accesskit::Role;
    use quantstudio::app::PathTarget;
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    // Ctrl+O: no dialog opens, the status line says so and a focused path field takes the path.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::O);
    h.run_steps(3);
    assert_eq!(h.state().path_prompt(), Some(PathTarget::Open));
    h.get_by_label("no file dialog available: type the path in the field");
    let field = h.get_by_role_and_label(Role::TextInput, "Model path");
    assert!(field.is_focused(), "the path field has the keyboard");
    let other = common::bundled_sample();
    field.type_text(&other.display().to_string());
    h.run_steps(2);
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    assert!(h.state().path_prompt().is_none(), "Enter uses the path and closes the field");
    step_until(&mut h, "the typed model to open", |app| {
        app.studio.model.as_ref().is_some_and(|m| m.path.ends_with("tiny-llm")) && !app.studio.is_busy()
    });
    // Ctrl+E the same way; Escape closes it without exporting.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::E);
    h.run_steps(3);
    assert_eq!(h.state().path_prompt(), Some(PathTarget::Export));
    assert!(h.get_by_role_and_label(Role::TextInput, "Export to folder").is_focused());
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert!(h.state().path_prompt().is_none());
    assert!(h.state().studio.last_export.is_none());
    // Browse... beside the evaluation data: its own field takes the keyboard.
    h.state_mut().send(Command::Open(mlp));
    h.step();
    step_until(&mut h, "the sample to open again", |app| {
        app.studio.model.as_ref().is_some_and(|m| m.path.ends_with("digits-mlp")) && !app.studio.is_busy()
    });
    h.state_mut().studio.notice = None;
    // The accuracy panel's Browse... (drawn first; the calibration panel has the other).
    h.get_all_by_label("Browse...").next().unwrap().click();
    h.run_steps(3);
    h.get_by_label("no file dialog available: type the path in the field");
    let data = h.get_by_role_and_label(Role::TextInput, "Data");
    assert!(data.is_focused(), "the data field beside Browse... has the keyboard");
    assert!(h.state().path_prompt().is_none(), "no extra window for a field already on screen");
}

#[test]
fn perplexity_runs_on_a_llama_text_and_shows_fp32_beside_the_plan() {
    use egui::accesskit::Role;
    let llama = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let dir = common::temp_dir();
    let text = dir.path().join("text.txt");
    // Two 512-token chunks at the default context (the fixture's lines make about 104 tokens).
    std::fs::write(&text, std::fs::read_to_string(llama.join("inputs.txt")).unwrap().repeat(11)).unwrap();
    let mut h = harness(&llama);
    step_until(&mut h, "the tiny Llama to open", loaded_and_analysed);
    h.get_by_label_contains("llama model");
    h.get_by_role_and_label(Role::TextInput, "Perplexity text").click();
    h.run_steps(2);
    h.get_by_role_and_label(Role::TextInput, "Perplexity text").type_text(&text.display().to_string());
    h.run_steps(2);
    h.state_mut().studio.notice = None;
    h.get_by_label("Run perplexity").click();
    h.step();
    step_until(&mut h, "the perplexity run", |app| {
        (!app.studio.results.perplexities.is_empty() || app.studio.notice.is_some()) && !app.studio.is_busy()
    });
    assert!(!h.state().studio.results.perplexities.is_empty(), "{:?}", h.state().studio.notice);
    let report = h.state().studio.results.perplexities[0].report.clone();
    assert_eq!((report.chunks, report.ctx_tokens, report.scored_tokens), (2, 512, 2 * 255));
    let fp32 = quantstudio::runtime::perplexity::format_perplexity(&report.fp32_perplexity);
    let plan = quantstudio::runtime::perplexity::format_perplexity(&report.plan_perplexity);
    assert_ne!(fp32, plan, "the INT8 plan's perplexity differs from FP32's");
    h.get_by_label("FP32 (reference)");
    h.get_by_label(&fp32);
    h.get_by_label(&plan);
    h.get_by_label(&format!("#1 {}", h.state().studio.results.perplexities[0].summary));
    h.get_by_label(&format!("{:.6}", report.kl_p99));
}

/// An INT4 layer set from the window: the table shows the group size its rows allow (the sample's q_proj has rows
/// of 64: groups of 128 become 64), and the inspector says how the group steps spread and plots them per channel.
#[test]
fn an_int4_layer_shows_its_fitted_group_size_and_the_spread_of_its_group_scales() {
    use quantstudio::quant::{Int4Scheme, Precision};
    let mut h = harness(&common::bundled_sample());
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    let model = h.state().studio.model.clone().unwrap();
    let q_proj = model.layer_by_name("model.layers.0.self_attn.q_proj").unwrap();
    h.get_by_label("precision of model.layers.0.self_attn.q_proj").click();
    h.run_steps(3);
    h.get_by_label("INT4").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.plan().layer(q_proj), Precision::Int4(Int4Scheme::new(true, 64)));
    let order = h.state_mut().studio.rows();
    h.state_mut().studio.click_row(q_proj, false, false, &order);
    step_until(&mut h, "q_proj's INT4 analysis and histograms", |app| {
        app.studio.layer_analysis(q_proj).is_some_and(|a| matches!(a.precision, Precision::Int4(_)))
            && app.studio.layer_histograms(q_proj).is_some_and(|h| h.group_scales.is_some())
    });
    h.run_steps(2);
    h.get_by_label("INT4 scheme of model.layers.0.self_attn.q_proj");
    assert!(h.query_all_by_label_contains("INT4 groups of 64: step min").count() >= 1);
    h.get_by_label(&format!("Largest group scale per output channel ({} channels)", 64));
}

#[test]
fn gptq_runs_as_a_job_on_the_calibration_data_and_shows_what_it_bought() {
    use quantstudio::quant::{Int4Scheme, Precision};
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp");
    let mut h = harness(&mlp);
    step_until(&mut h, "the sample to open and be analysed", loaded_and_analysed);
    h.get_by_label_contains("3 INT4/INT8 layer(s) rounded to nearest");
    h.state_mut().send(Command::SetPrecisionMatching { pattern: "*".into(), precision: Precision::Fp16 });
    h.run_steps(2);
    h.get_by_label_contains("no INT4 or INT8 layer in the plan");
    let int4 = Precision::Int4(Int4Scheme::new(true, 32));
    h.state_mut().send(Command::SetPrecisionMatching { pattern: "*".into(), precision: int4 });
    h.run_steps(2);
    h.get_by_label_contains("3 INT4/INT8 layer(s) rounded to nearest");
    let arrows_before = h.query_all_by_label_contains(" -> ").count();
    h.get_by_label("Run GPTQ").click();
    h.step();
    step_until(&mut h, "GPTQ", |app| app.studio.plan().gptq.is_some() && !app.studio.is_busy());
    let weights = h.state().studio.plan().gptq.clone().unwrap();
    assert_eq!(weights.layers.len(), 3, "{weights:?}");
    assert!(weights.data.ends_with("calib.safetensors"), "the calibration field's data: {:?}", weights.data);
    let (rtn, gptq) = weights.mean_output_errors();
    assert!(gptq < rtn, "GPTQ lowers the mean output error: {rtn} -> {gptq}");
    h.run_steps(2);
    // The panel's summary, the table's column for every layer, the inspector's section for the focused one.
    h.get_by_label_contains("3 layer(s) from calib.safetensors, mean output error");
    let arrows = h.query_all_by_label_contains(" -> ").count();
    assert_eq!(arrows, arrows_before + 4, "one \"RTN -> GPTQ\" cell per layer, and the panel's summary");
    h.get_by_label_contains("with GPTQ (");
    // The plan's recipe asks for GPTQ on the same data; undo takes GPTQ away, redo brings it back.
    let model = h.state().studio.model.clone().unwrap();
    let recipe = h.state().studio.plan().to_recipe(&model);
    assert_eq!(recipe.gptq.as_ref().map(|g| g.data.clone()), Some(weights.data.clone()));
    h.state_mut().send(Command::Undo);
    h.run_steps(2);
    assert!(h.state().studio.plan().gptq.is_none());
    h.state_mut().send(Command::Redo);
    h.run_steps(2);
    assert!(h.state().studio.plan().gptq.is_some());
    // A saved recipe runs GPTQ again when loaded (in its job): the same codes.
    let dir = common::temp_dir();
    let path = dir.path().join("gptq.json");
    h.state_mut().send(Command::SaveRecipe(path.clone()));
    h.step();
    step_until(&mut h, "the recipe to be saved", |app| !app.studio.is_busy());
    h.state_mut().send(Command::Undo);
    h.run_steps(2);
    h.state_mut().send(Command::LoadRecipe(path));
    h.step();
    step_until(&mut h, "the recipe to load", |app| app.studio.plan().gptq.is_some() && !app.studio.is_busy());
    let again = h.state().studio.plan().gptq.clone().unwrap();
    assert_eq!(again.layers, weights.layers, "the recipe reproduces the GPTQ weights");
}
