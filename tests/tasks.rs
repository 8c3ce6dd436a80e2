//! The use-case layer the CLI and the worker share: opening a runnable model (and the order its checks run in),
//! evaluation with saved outputs, quantize with a refused export, the W8A8 recipe of a calibration, the
//! benchmark's size on disk.

use std::path::{Path, PathBuf};

use quantstudio::Error;
use quantstudio::export::{ExportOptions, planned_model_bytes};
use quantstudio::model::Model;
use quantstudio::progress::Progress;
use quantstudio::quant::{Granularity, Int8Scheme, Precision, Recipe};
use quantstudio::runtime::latency::Workload;
use quantstudio::tasks::{self, BenchmarkInput, Runnable};

fn path(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(folder)
}

fn int8_per_channel() -> Recipe {
    Recipe::uniform(Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel)))
}

#[test]
fn a_runnable_model_is_opened_resolved_and_detected_and_each_failure_is_named() {
    let Runnable { model, arch, plan } =
        tasks::open_runnable(&path("sample-models/digits-mlp"), &int8_per_channel()).expect("the MLP sample runs");
    assert_eq!(arch.family(), "graph");
    assert_eq!(plan.layers.len(), model.layers.len());
    assert!(plan.layers.iter().any(|p| matches!(p, Precision::Int8(_))));

    // A model_type without a forward pass is named with the type and the path (the window offers weight-only).
    let error = tasks::open_runnable(&path("sample-models/tiny-llm"), &int8_per_channel()).unwrap_err();
    assert!(
        matches!(&error, Error::UnsupportedArchitecture { model_type, path } if model_type == "tiny-demo"
            && path.ends_with("tiny-llm")),
        "{error:?}"
    );
    // The recipe is resolved before the architecture is detected: its error is the one reported.
    let mut recipe = int8_per_channel();
    recipe.layers.insert("no.such.layer".into(), Precision::Fp16);
    let error = tasks::open_runnable(&path("sample-models/tiny-llm"), &recipe).unwrap_err();
    assert!(matches!(&error, Error::RecipeUnknownLayers { names, .. } if names == &["no.such.layer"]), "{error:?}");
}

#[test]
fn evaluate_with_saved_outputs_gives_the_same_report_and_a_file_of_every_sample() {
    let Runnable { model, arch, plan } =
        tasks::open_runnable(&path("sample-models/digits-mlp"), &int8_per_channel()).unwrap();
    let data = model.path.join("eval.safetensors");
    let progress = Progress::new();
    let plain = tasks::evaluate(&model, &arch, &plan, &data, None, &progress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("outputs.safetensors");
    let saved = tasks::evaluate(&model, &arch, &plan, &data, Some(&outputs), &progress).unwrap();
    assert_eq!(plain, saved);
    let written = Model::open(&outputs).unwrap();
    let samples = plain.samples;
    for i in [0, samples - 1] {
        assert!(written.tensor_by_name(&format!("fp32.{i}")).is_some(), "fp32.{i}");
        assert!(written.tensor_by_name(&format!("plan.{i}")).is_some(), "plan.{i}");
    }
    assert!(written.tensor_by_name(&format!("fp32.{samples}")).is_none());
    let snapshot = progress.snapshot();
    assert_eq!((snapshot.done, snapshot.total), (2 * samples as u64, 2 * samples as u64), "{snapshot:?}");
}

#[test]
fn quantize_keeps_the_report_when_the_export_is_refused() {
    let model = Model::open(&path("sample-models/digits-mlp")).unwrap();
    let plan = int8_per_channel().resolve(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("export");
    let quantized = tasks::quantize(&model, &plan, Some(&dest), &ExportOptions::default(), &Progress::new()).unwrap();
    assert_eq!(quantized.report.tensors.len(), model.tensors.len());
    assert_eq!(quantized.report.planned_bytes, planned_model_bytes(&model, &plan));
    // A model.json graph is not a transformers architecture: the target refuses, and says so.
    assert!(!quantized.compatibility.problems(&model).is_empty());
    assert!(matches!(quantized.export, Some(Err(Error::ExportRefused { .. }))), "{:?}", quantized.export);
    assert!(!dest.exists());
    let unexported = tasks::quantize(&model, &plan, None, &ExportOptions::default(), &Progress::new()).unwrap();
    assert!(unexported.export.is_none());
}

#[test]
fn the_w8a8_recipe_of_a_calibration_makes_observed_int8_layers_static_at_the_observer_clip() {
    let Runnable { model, arch, plan } =
        tasks::open_runnable(&path("sample-models/digits-mlp"), &int8_per_channel()).unwrap();
    let run = tasks::calibrate(&model, &arch, &model.path.join("calib.safetensors"), None, &Progress::new()).unwrap();
    let observer = quantstudio::calib::Observer::MinMax;
    let recipe = tasks::w8a8_recipe(&model, &plan, &run, observer);
    let w8a8 = recipe.resolve(&model).unwrap();
    let mut observed = 0;
    for (name, histogram) in &run.calibration.layers {
        let id = model.layer_by_name(name).unwrap();
        let Precision::Int8(scheme) = w8a8.layer(id) else { continue };
        assert_eq!(scheme.activations, quantstudio::quant::Activations::Int8, "{name}");
        assert_eq!(w8a8.input_clips[id.0], Some(observer.clip(histogram)), "{name}");
        observed += 1;
    }
    assert!(observed > 0);
    // The W8A8 plan runs (every W8A8 layer has its clip).
    w8a8.check_calibrated(&model).unwrap();
}

#[test]
fn the_benchmark_reports_the_plans_size_as_exported() {
    let Runnable { model, arch, plan } =
        tasks::open_runnable(&path("sample-models/digits-mlp"), &int8_per_channel()).unwrap();
    let input = BenchmarkInput {
        model: &model,
        arch: &arch,
        plan: Some(&plan),
        data: None,
        workload: Workload { repeat: 1, batch: 1, ..Workload::default() },
    };
    let mut configurations = Vec::new();
    tasks::benchmark(&input, &Progress::new(), &mut |c| configurations.push(c)).unwrap();
    let names: Vec<&str> = configurations.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["FP32", "plan"]);
    assert_eq!(configurations[0].disk_bytes, model.size_bytes());
    assert_eq!(configurations[1].disk_bytes, planned_model_bytes(&model, &plan));
    assert!(configurations[1].disk_bytes * 3 < configurations[0].disk_bytes);
}
