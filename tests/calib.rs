//! Calibration, W8A8 simulation and export, and sensitivity analysis, on the samples and on hand-built models.

use std::path::{Path, PathBuf};

use quantstudio::calib::{Observer, SensitivityMode, calibrate, sensitivity};
use quantstudio::model::Model;
use quantstudio::progress::Progress;
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision, QParams, Recipe};
use quantstudio::runtime::{Architecture, EvalData, Network, evaluate};
use quantstudio::{Error, Result};
use safetensors::Dtype;

use crate::common::{self, Spec};

/// Export options that write a model.json graph anyway (transformers and vLLM cannot build one; the layout is
/// what is checked here).
fn forced() -> quantstudio::export::ExportOptions {
    quantstudio::export::ExportOptions { force: true, ..Default::default() }
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models").join(name)
}

fn int8_weights() -> Precision {
    Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel))
}

fn w8a8(granularity: Granularity) -> Precision {
    Precision::Int8(Int8Scheme::weights(true, granularity).with_int8_inputs())
}

/// The sample's plan with every linear and conv layer W8A8 per channel, its inputs calibrated by `observer`.
fn calibrated_w8a8_plan(model: &Model, arch: &Architecture, cache: &Path, observer: Observer) -> Plan {
    let run = calibrate(model, arch, &model.path.join("calib.safetensors"), Some(cache), &Progress::new()).unwrap();
    let mut plan = Recipe::uniform(w8a8(Granularity::PerChannel)).resolve(model).unwrap();
    run.calibration.apply(model, &mut plan, observer, &Default::default());
    plan
}

#[test]
fn w8a8_on_the_digits_samples_keeps_accuracy_within_one_point_of_fp32() {
    let cache = common::temp_dir();
    for name in ["digits-mlp", "digits-cnn"] {
        let model = Model::open(&sample(name)).unwrap();
        let arch = Architecture::detect(&model).unwrap();
        let data = EvalData::load(&model.path.join("eval.safetensors"), &model.path).unwrap();
        for observer in [Observer::Percentile { percentile: 99.99 }, Observer::Mse, Observer::MinMax] {
            let plan = calibrated_w8a8_plan(&model, &arch, cache.path(), observer);
            assert!(plan.uncalibrated(&model).is_empty(), "every W8A8 layer has a clip");
            let report = evaluate(&model, &arch, &data, &plan, &Progress::new()).unwrap();
            let (fp32, w8a8) = (report.fp32_accuracy.unwrap(), report.accuracy.unwrap());
            // The stated margin: static INT8 inputs and INT8 weights cost at most one point of accuracy.
            assert!(w8a8 >= fp32 - 0.01, "{name} {observer}: W8A8 {w8a8} vs FP32 {fp32}");
            assert!(report.output_sqnr_db.unwrap() > 25.0, "{name} {observer}: {report:?}");
        }
    }
}

#[test]
fn calibration_is_cached_by_model_and_data_and_observers_never_rerun_it() {
    let dir = common::temp_dir();
    let cache = dir.path().join("cache");
    // A private copy of the sample so that its data file can change.
    let folder = dir.path().join("mlp");
    std::fs::create_dir(&folder).unwrap();
    for file in ["config.json", "model.json", "model.safetensors", "calib.safetensors"] {
        std::fs::copy(sample("digits-mlp").join(file), folder.join(file)).unwrap();
    }
    let model = Model::open(&folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let data = folder.join("calib.safetensors");
    let first = calibrate(&model, &arch, &data, Some(&cache), &Progress::new()).unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.calibration.layers.keys().collect::<Vec<_>>(), ["fc1", "fc2", "fc3"]);
    assert_eq!(first.calibration.samples, 128);
    // 128 samples x 64 pixels went into fc1's histogram.
    assert_eq!(first.calibration.layers["fc1"].count, 128 * 64);
    let again = calibrate(&model, &arch, &data, Some(&cache), &Progress::new()).unwrap();
    assert!(again.from_cache, "the same model and data come from the cache");
    assert_eq!(again.calibration, first.calibration);
    // A cancelled progress proves nothing runs: the cache answers without checking it.
    let cancelled = Progress::new();
    cancelled.cancel();
    let cached = calibrate(&model, &arch, &data, Some(&cache), &cancelled).unwrap();
    for observer in [Observer::MinMax, Observer::Mse, Observer::Entropy] {
        assert_eq!(cached.calibration.clips(observer), first.calibration.clips(observer));
    }
    // New data bytes: measured again.
    let mut eval = std::fs::read(sample("digits-mlp").join("eval.safetensors")).unwrap();
    std::fs::write(&data, &mut eval).unwrap();
    let changed = calibrate(&model, &arch, &data, Some(&cache), &Progress::new()).unwrap();
    assert!(!changed.from_cache);
    assert_eq!(changed.calibration.samples, 360);
    // Without a cache folder nothing is written and nothing read.
    let uncached = calibrate(&model, &arch, &data, None, &Progress::new()).unwrap();
    assert!(!uncached.from_cache && uncached.cache_file.is_none());
    // A corrupt cache file is ignored and replaced.
    std::fs::write(changed.cache_file.as_ref().unwrap(), b"{not json").unwrap();
    assert!(!calibrate(&model, &arch, &data, Some(&cache), &Progress::new()).unwrap().from_cache);
}

/// A one-layer graph `y = x wᵀ` with `w` 2x3, inputs of 3.
fn write_linear(dir: &Path, weight: &[f32]) {
    std::fs::write(dir.join("config.json"), r#"{"graph": "model.json"}"#).unwrap();
    let doc = serde_json::json!({
        "format": "quantstudio-graph", "version": 1,
        "inputs": [{"name": "x", "dtype": "F32", "shape": [3]}],
        "ops": [{"op": "linear", "weight": "fc.weight"}],
        "outputs": [{"name": "y", "dtype": "F32", "shape": [2]}],
    });
    std::fs::write(dir.join("model.json"), doc.to_string()).unwrap();
    common::write_model(&dir.join("model.safetensors"), &[Spec::f32("fc.weight", &[2, 3], weight)]);
}

#[test]
fn w8a8_simulation_quantizes_the_input_with_the_calibrated_scale() {
    let dir = common::temp_dir();
    let weight = [0.5f32, -0.25, 1.0, 0.125, 0.75, -1.0];
    write_linear(dir.path(), &weight);
    let model = Model::open(dir.path()).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let mut plan = Plan::all(&model, w8a8(Granularity::PerTensor));
    // Uncalibrated W8A8 is refused with the layer named.
    let data = EvalData::Samples { inputs: vec![0.0; 3], sample_shape: vec![3], labels: None };
    let err = evaluate(&model, &arch, &data, &plan, &Progress::new()).unwrap_err();
    assert!(matches!(&err, Error::Uncalibrated { names, .. } if names == &["fc"]), "{err}");
    assert!(err.to_string().contains("run calibrate first"), "{err}");
    let clip = 0.9f32;
    plan.input_clips = vec![Some(clip)];
    let net = Network::build(&model, &arch, Some(&plan), &Progress::new()).unwrap();
    let Network::Graph(graph) = net else { panic!("a graph") };
    let x = [0.3f32, -2.0, 0.0517];
    let y = graph.forward(&x);
    // By hand: the input on the grid of clip/127, clamped to [-128, 127] steps (the int8 range runtimes saturate
    // inputs to); the weight per tensor (absmax 1).
    let input = QParams::symmetric(clip);
    assert_eq!(input.scale, clip / 127.0);
    let x_hat: Vec<f32> =
        x.iter().map(|&v| ((v / input.scale).round_ties_even().clamp(-128.0, 127.0)) * input.scale).collect();
    assert_eq!(x_hat[1], -128.0 * input.scale, "-2 saturates one step beyond -clip");
    let w_scale = 1.0f32 / 127.0;
    let w_hat: Vec<f32> = weight.iter().map(|&v| (v / w_scale).round_ties_even() * w_scale).collect();
    for (row, got) in y.iter().enumerate() {
        let expected: f32 = (0..3).map(|k| x_hat[k] * w_hat[row * 3 + k]).sum();
        assert!((got - expected).abs() < 1e-6, "row {row}: {got} vs {expected}");
    }
    // The same layer weight-only sees the exact input.
    let weight_only = Plan::all(&model, Precision::Int8(Int8Scheme::weights(true, Granularity::PerTensor)));
    let Network::Graph(graph) = Network::build(&model, &arch, Some(&weight_only), &Progress::new()).unwrap() else {
        panic!("a graph")
    };
    let y = graph.forward(&x);
    let expected: f32 = (0..3).map(|k| x[k] * w_hat[k]).sum();
    assert!((y[0] - expected).abs() < 1e-6);
}

/// Three linear layers 8 -> 8 -> 8 -> 4 with ReLU; `b` has one weight 300 times the others.
fn write_outlier_model(dir: &Path) -> Vec<Spec> {
    std::fs::write(dir.join("config.json"), r#"{"graph": "model.json"}"#).unwrap();
    let doc = serde_json::json!({
        "format": "quantstudio-graph", "version": 1,
        "inputs": [{"name": "x", "dtype": "F32", "shape": [8]}],
        "ops": [
            {"op": "linear", "weight": "a.weight", "bias": "a.bias"}, {"op": "relu"},
            {"op": "linear", "weight": "b.weight", "bias": "b.bias"}, {"op": "relu"},
            {"op": "linear", "weight": "c.weight", "bias": "c.bias"},
        ],
        "outputs": [{"name": "y", "dtype": "F32", "shape": [4]}],
    });
    std::fs::write(dir.join("model.json"), doc.to_string()).unwrap();
    let mut b = common::normal(64, 2, 0.35);
    b[9] = 100.0;
    let specs = vec![
        Spec::f32("a.weight", &[8, 8], &common::normal(64, 1, 0.35)),
        Spec::f32("a.bias", &[8], &[0.1; 8]),
        Spec::f32("b.weight", &[8, 8], &b),
        Spec::f32("b.bias", &[8], &[0.1; 8]),
        Spec::f32("c.weight", &[4, 8], &common::normal(32, 3, 0.35)),
        Spec::f32("c.bias", &[4], &[0.0; 4]),
    ];
    common::write_model(&dir.join("model.safetensors"), &specs);
    specs
}

#[test]
fn sensitivity_puts_the_layer_with_an_outlier_first_and_streams_every_layer() -> Result<()> {
    let dir = common::temp_dir();
    write_outlier_model(dir.path());
    let model = Model::open(dir.path())?;
    let arch = Architecture::detect(&model)?;
    // Labels are the FP32 classes, so FP32 scores 100% and any drop is the plan's.
    let inputs = common::normal(256 * 8, 7, 1.0);
    let Network::Graph(fp32) = Network::build(&model, &arch, None, &Progress::new())? else { panic!("a graph") };
    let labels: Vec<i64> =
        fp32.forward(&inputs).chunks_exact(4).map(|row| quantstudio::runtime::eval::argmax(row) as i64).collect();
    let data_path = dir.path().join("data.safetensors");
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    common::write_model(
        &data_path,
        &[Spec::f32("inputs", &[256, 8], &inputs), Spec::raw("labels", Dtype::I64, &[256], label_bytes)],
    );
    let data = EvalData::load(&data_path, dir.path())?;
    let plan = Recipe::uniform(Precision::Int8(Int8Scheme::weights(true, Granularity::PerTensor))).resolve(&model)?;
    for mode in [SensitivityMode::OneAtATime, SensitivityMode::AllButOne] {
        let mut streamed = Vec::new();
        let report =
            sensitivity(&model, &arch, &data, &plan, mode, &Progress::new(), &mut |l| streamed.push(l.layer.clone()))?;
        assert_eq!(streamed, ["a", "b", "c"], "{mode:?}: every layer streams, in model order");
        let ranking: Vec<&str> = report.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(ranking[0], "b", "{mode:?}: {ranking:?} {report:#?}");
        assert!(report.layers[0].score > 0.0, "{mode:?}: the outlier costs accuracy: {report:#?}");
        assert_eq!(report.metric, "accuracy drop");
        assert_eq!(report.full_plan.is_some(), mode == SensitivityMode::AllButOne);
    }
    // Nothing to try is a clear error.
    let none = Plan::all(&model, Precision::Fp32);
    let err = sensitivity(&model, &arch, &data, &none, SensitivityMode::OneAtATime, &Progress::new(), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("quantizes no layer"), "{err}");
    // Cancelling stops it.
    let cancelled = Progress::new();
    cancelled.cancel();
    let err = sensitivity(&model, &arch, &data, &plan, SensitivityMode::OneAtATime, &cancelled, &mut |_| {});
    assert!(matches!(err, Err(Error::Cancelled)));
    Ok(())
}

#[test]
fn w8a8_export_writes_input_scales_and_an_int_quantized_group_and_the_recipe_reproduces_it() {
    let dir = common::temp_dir();
    let model = Model::open(&sample("digits-mlp")).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let plan = calibrated_w8a8_plan(&model, &arch, &dir.path().join("cache"), Observer::Mse);
    let out = dir.path().join("export");
    quantstudio::export::export(&model, &plan, &out, &forced(), &Progress::new()).unwrap();
    let exported = Model::open(&out).unwrap();
    for (index, layer) in ["fc1", "fc2", "fc3"].iter().enumerate() {
        let id = exported.tensor_by_name(&format!("{layer}.input_scale")).unwrap();
        let info = exported.tensor(id);
        assert_eq!((info.dtype.as_str(), info.shape.as_slice()), ("F32", &[1usize][..]));
        let bytes = exported.tensor_bytes(id);
        let scale = f32::from_le_bytes(bytes[..4].try_into().unwrap());
        assert_eq!(scale, QParams::symmetric(plan.input_clips[index].unwrap()).scale, "{layer}");
        let weight = exported.tensor(exported.tensor_by_name(&format!("{layer}.weight")).unwrap());
        assert_eq!(weight.dtype.as_str(), "I8", "W8A8 weights are int-quantized, not packed");
        assert!(exported.tensor_by_name(&format!("{layer}.weight_packed")).is_none());
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let q = &config["quantization_config"];
    assert_eq!(q["format"], "int-quantized");
    let group = &q["config_groups"]["group_0"];
    assert_eq!(group["format"], "int-quantized");
    assert_eq!(group["targets"], serde_json::json!(["fc1", "fc2", "fc3"]));
    let input = &group["input_activations"];
    assert_eq!((input["num_bits"].as_u64(), input["strategy"].as_str()), (Some(8), Some("tensor")));
    assert_eq!((input["symmetric"].as_bool(), input["dynamic"].as_bool()), (Some(true), Some(false)));
    assert_eq!(group["weights"]["strategy"], "channel");
    // The recipe written beside the export carries the clips and resolves to the same plan.
    let recipe = Recipe::load(&out.join("quantstudio-recipe.json")).unwrap();
    assert_eq!(recipe.input_clips.len(), 3);
    assert_eq!(recipe.resolve(&model).unwrap(), plan);
    // An uncalibrated W8A8 plan is not exported, and nothing is written.
    let uncalibrated = Plan::all(&model, w8a8(Granularity::PerChannel));
    let empty = dir.path().join("never");
    let err =
        quantstudio::export::export(&model, &uncalibrated, &empty, &Default::default(), &Progress::new()).unwrap_err();
    assert!(err.to_string().contains("fc1"), "{err}");
    assert!(!empty.exists());
}

fn run_cli_cached(args: &[&str], cache: &Path) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quantstudio"))
        .args(args)
        .env("QUANTSTUDIO_CACHE_DIR", cache)
        .output()
        .expect("run quantstudio");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cli_calibrate_and_sensitivity_give_the_same_numbers_as_the_library() {
    let dir = common::temp_dir();
    let cache = dir.path().join("cache");
    let mlp = sample("digits-mlp");
    let (m, calib, eval) = (mlp.to_str().unwrap(), mlp.join("calib.safetensors"), mlp.join("eval.safetensors"));
    let recipe = dir.path().join("w8a8.json");
    let (code, stdout, stderr) = run_cli_cached(
        &[
            "calibrate",
            m,
            "--data",
            calib.to_str().unwrap(),
            "--observer",
            "mse",
            "--write-recipe",
            recipe.to_str().unwrap(),
            "--json",
        ],
        &cache,
    );
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["from_cache"], false);
    let layers = doc["layers"].as_array().unwrap();
    assert_eq!(layers.iter().map(|l| l["name"].as_str().unwrap()).collect::<Vec<_>>(), ["fc1", "fc2", "fc3"]);
    // The library's numbers for the same model and data.
    let model = Model::open(&mlp).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let run = calibrate(&model, &arch, &calib, None, &Progress::new()).unwrap();
    for layer in layers {
        let h = &run.calibration.layers[layer["name"].as_str().unwrap()];
        assert_eq!(layer["clip"].as_f64().unwrap() as f32, Observer::Mse.clip(h));
        assert_eq!(layer["clips"]["entropy"].as_f64().unwrap() as f32, Observer::Entropy.clip(h));
        assert_eq!(layer["absmax"].as_f64().unwrap() as f32, h.absmax());
    }
    let (_, stdout, _) = run_cli_cached(&["calibrate", m, "--data", calib.to_str().unwrap(), "--json"], &cache);
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again["from_cache"], true, "the second run reads the cache");
    // The written recipe is W8A8 and evaluates in the CLI as in the library.
    let (code, stdout, stderr) = run_cli_cached(
        &["eval", m, "--recipe", recipe.to_str().unwrap(), "--data", eval.to_str().unwrap(), "--json"],
        &cache,
    );
    assert_eq!(code, 0, "{stderr}");
    let cli_report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let plan = Recipe::load(&recipe).unwrap().resolve(&model).unwrap();
    assert!(plan.layers.iter().all(|p| p.needs_calibration()));
    let data = EvalData::load(&eval, &mlp).unwrap();
    let report = evaluate(&model, &arch, &data, &plan, &Progress::new()).unwrap();
    assert_eq!(cli_report["accuracy"].as_f64(), report.accuracy);
    assert_eq!(cli_report["output_sqnr_db"].as_f64(), report.output_sqnr_db);
    // Sensitivity: one object per layer, ranked.
    let (code, stdout, stderr) = run_cli_cached(
        &["sensitivity", m, "--data", eval.to_str().unwrap(), "--recipe", recipe.to_str().unwrap(), "--json"],
        &cache,
    );
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["mode"], "one_at_a_time");
    assert_eq!(doc["layers"].as_array().unwrap().len(), 3);
    assert!(doc["layers"][0]["report"]["output_sqnr_db"].is_number());
    // A W8A8 recipe without clips: one line, exit code 2.
    let bare = dir.path().join("bare.json");
    std::fs::write(
        &bare,
        r#"{"version":1,"default":{"precision":"int8","granularity":"per_channel","activations":"int8"}}"#,
    )
    .unwrap();
    let (code, _, stderr) =
        run_cli_cached(&["eval", m, "--recipe", bare.to_str().unwrap(), "--data", eval.to_str().unwrap()], &cache);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no calibrated input range"), "{stderr}");
}

fn relative_l2(reference: &[f32], other: &[f32]) -> f64 {
    let signal: f64 = reference.iter().map(|v| (*v as f64).powi(2)).sum();
    let error: f64 = reference.iter().zip(other).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    (error / signal.max(f64::MIN_POSITIVE)).sqrt()
}

#[test]
fn deployed_w8a8_layers_run_integer_products_that_match_the_simulation() {
    let cache = common::temp_dir();
    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    for (folder, data_file) in [(sample("digits-mlp"), "calib.safetensors"), (bert, "inputs.txt")] {
        let model = Model::open(&folder).unwrap();
        let arch = Architecture::detect(&model).unwrap();
        let data_path = folder.join(data_file);
        let run = calibrate(&model, &arch, &data_path, Some(cache.path()), &Progress::new()).unwrap();
        // W8A8 where calibration saw an input (embeddings have none), weight-only INT8 elsewhere.
        let mut plan = Recipe::uniform(int8_weights()).resolve(&model).unwrap();
        for (i, layer) in model.layers.iter().enumerate() {
            if plan.layers[i] != Precision::Fp32 && run.calibration.layers.contains_key(&layer.name) {
                plan.layers[i] = w8a8(Granularity::PerChannel);
            }
        }
        run.calibration.apply(&model, &mut plan, Observer::Mse, &Default::default());
        let (simulated, simulated_bytes) =
            Network::build_measured(&model, &arch, Some(&plan), &Progress::new()).unwrap();
        let quantstudio::runtime::Deployed { network: deployed, weights_bytes: deployed_bytes, integer_layers, .. } =
            quantstudio::runtime::Network::build_deployed(&model, &arch, &plan, &Progress::new()).unwrap();
        assert!(integer_layers >= 3, "{folder:?}: {integer_layers} integer layers");
        assert!(deployed_bytes < simulated_bytes, "INT8 codes, not f32: {deployed_bytes} vs {simulated_bytes}");
        let data = EvalData::load(&data_path, &folder).unwrap();
        // The same computation up to f32 rounding (integer sums instead of f32 products of dequantized values);
        // a rounding difference can move a later layer's input code by one step, hence a relative bound.
        match (&simulated, &deployed, &data) {
            (Network::Graph(s), Network::Graph(d), EvalData::Samples { inputs, .. }) => {
                let (ys, yd) = (s.forward(inputs), d.forward(inputs));
                assert!(relative_l2(&ys, &yd) < 1e-3, "{}", relative_l2(&ys, &yd));
                let agree = ys
                    .chunks(10)
                    .zip(yd.chunks(10))
                    .filter(|(a, b)| quantstudio::runtime::eval::argmax(a) == quantstudio::runtime::eval::argmax(b));
                assert!(agree.count() >= 127, "the classes agree on (almost) every sample");
            }
            (Network::Bert(s), Network::Bert(d), EvalData::Sequences(seqs)) => {
                for seq in seqs {
                    let (ys, yd) = (s.forward(seq).unwrap(), d.forward(seq).unwrap());
                    assert!(relative_l2(&ys, &yd) < 1e-3, "{}", relative_l2(&ys, &yd));
                }
            }
            _ => panic!("unexpected family"),
        }
    }
}

#[test]
fn cli_bench_times_fp32_and_the_deployed_plan() {
    let dir = common::temp_dir();
    let mlp = sample("digits-mlp");
    let recipe = dir.path().join("w8a8.json");
    let calib = mlp.join("calib.safetensors");
    let m = mlp.to_str().unwrap();
    let args = ["calibrate", m, "--data", calib.to_str().unwrap(), "--write-recipe", recipe.to_str().unwrap()];
    assert_eq!(run_cli_cached(&args, &dir.path().join("cache")).0, 0);
    let args = ["bench", m, "--recipe", recipe.to_str().unwrap(), "--repeat", "3", "--batch", "4", "--json"];
    let (code, stdout, stderr) = run_cli_cached(&args, &dir.path().join("cache"));
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let configurations = doc["configurations"].as_array().unwrap();
    assert_eq!(configurations.len(), 2);
    assert_eq!((configurations[0]["name"].as_str(), configurations[1]["name"].as_str()), (Some("FP32"), Some("plan")));
    assert_eq!(configurations[1]["integer_layers"], 3);
    for c in configurations {
        assert!(c["latency_ms_median"].as_f64().unwrap() > 0.0);
        assert!(c["latency_ms_p95"].as_f64().unwrap() >= c["latency_ms_median"].as_f64().unwrap());
    }
    let (fp32, plan) =
        (configurations[0]["weights_bytes"].as_u64().unwrap(), configurations[1]["weights_bytes"].as_u64().unwrap());
    assert!(plan * 3 < fp32, "the plan holds INT8 codes: {plan} vs {fp32} bytes");
}

/// A copy of the model folder `from` in `to` (files only; large ones hard-linked where the file system allows)
/// whose `tokenizer.json` pads as `padding` says (`null`: no padding).
fn copy_with_padding(from: &Path, to: &Path, padding: serde_json::Value) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_file() && std::fs::hard_link(&path, &target).is_err() {
            std::fs::copy(&path, &target).unwrap();
        }
    }
    let tokenizer = to.join("tokenizer.json");
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tokenizer).unwrap()).unwrap();
    doc["padding"] = padding;
    // A fresh file, not the hard link's shared inode.
    std::fs::remove_file(&tokenizer).unwrap();
    std::fs::write(&tokenizer, doc.to_string()).unwrap();
}

/// Tokenizer padding to `length` tokens on `side` ("Right" or "Left"), with the pad token the file already names.
fn fixed_padding(tokenizer_folder: &Path, length: usize, side: &str) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_folder.join("tokenizer.json")).unwrap()).unwrap();
    let current = &doc["padding"];
    serde_json::json!({
        "strategy": {"Fixed": length}, "direction": side, "pad_to_multiple_of": null,
        "pad_id": current["pad_id"], "pad_type_id": current["pad_type_id"], "pad_token": current["pad_token"],
    })
}

/// The sequences of a text file tokenised by the folder's tokenizer.
fn sequences(data: &Path, folder: &Path) -> Vec<quantstudio::runtime::TokenSequence> {
    let EvalData::Sequences(seqs) = EvalData::load(data, folder).unwrap() else { panic!("text gives sequences") };
    seqs
}

/// Calibrates the model in `folder` on `data`, without a cache, and checks that every layer saw exactly one row
/// per real token: `Σ valid tokens × the layer's inputs` values.
fn calibrate_counting_real_rows(
    folder: &Path,
    data: &Path,
) -> std::collections::BTreeMap<String, quantstudio::calib::ActivationHistogram> {
    let model = Model::open(folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let run = calibrate(&model, &arch, data, None, &Progress::new()).unwrap();
    let real_tokens: usize = sequences(data, folder).iter().map(|s| s.valid_len()).sum();
    assert!(!run.calibration.layers.is_empty());
    for (name, histogram) in &run.calibration.layers {
        let id = model.layer_by_name(name).unwrap();
        let weight = model.tensor(model.main_tensor(id).unwrap());
        let inputs = weight.shape[1];
        assert_eq!(histogram.count, (real_tokens * inputs) as u64, "{folder:?} {name}: one row per real token");
    }
    run.calibration.layers
}

/// Padded positions never reach a histogram: with the tokenizer padding every line to a fixed length (right),
/// calibration gives exactly the histograms of no padding at all; padded on the left (where the real tokens move
/// to later positions, so the values differ), every layer still sees exactly one row per real token.
#[test]
fn padded_tokens_are_not_observed_and_padding_changes_no_histogram() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = common::temp_dir();
    // Longer than every line (the fixtures truncate at 16 tokens), within BERT's 64 positions.
    const PADDED_LENGTH: usize = 40;
    for fixture in ["tiny-bert", "tiny-llama", "tiny-llama-tied"] {
        let source = fixtures.join(fixture);
        let data = source.join("inputs.txt");
        let unpadded = dir.path().join(format!("{fixture}-unpadded"));
        let padded = dir.path().join(format!("{fixture}-padded"));
        copy_with_padding(&source, &unpadded, serde_json::Value::Null);
        copy_with_padding(&source, &padded, fixed_padding(&source, PADDED_LENGTH, "Right"));
        let seqs = sequences(&data, &padded);
        assert!(seqs.iter().all(|s| s.ids.len() == PADDED_LENGTH), "{fixture}: every line is padded");
        let real: usize = seqs.iter().map(|s| s.valid_len()).sum();
        assert!(real * 2 < seqs.len() * PADDED_LENGTH, "{fixture}: most positions are padding");
        assert!(sequences(&data, &unpadded).iter().all(|s| s.mask.iter().all(|&m| m)), "{fixture}: no padding");
        let without = calibrate_counting_real_rows(&unpadded, &data);
        let with = calibrate_counting_real_rows(&padded, &data);
        assert_eq!(with.keys().collect::<Vec<_>>(), without.keys().collect::<Vec<_>>());
        for (name, histogram) in &without {
            assert_eq!(&with[name], histogram, "{fixture} {name}: the same histogram with and without padding");
        }
    }
    // Left padding (BERT: the positions are absolute, so the real tokens' values change, but no pad is counted).
    let source = fixtures.join("tiny-bert");
    let left = dir.path().join("tiny-bert-left");
    copy_with_padding(&source, &left, fixed_padding(&source, PADDED_LENGTH, "Left"));
    let data = source.join("inputs.txt");
    assert!(sequences(&data, &left).iter().all(|s| !s.mask[0] && s.mask[PADDED_LENGTH - 1]), "padded on the left");
    calibrate_counting_real_rows(&left, &data);
}

/// The same equality on the real all-MiniLM-L6-v2 (when CI provides it), whose tokenizer pads every line to 128.
#[test]
#[cfg_attr(
    not(quantstudio_reference_model),
    ignore = "needs QUANTSTUDIO_REFERENCE_MODEL, the all-MiniLM-L6-v2 folder (.ci/run fetches it)"
)]
fn minilm_calibration_is_the_same_with_its_fixed_padding_as_without() {
    let padded = Path::new(crate::python::REFERENCE_MODEL);
    let dir = common::temp_dir();
    let data = dir.path().join("calib.txt");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut text = std::fs::read_to_string(fixtures.join("tiny-bert/inputs.txt")).unwrap();
    text += &std::fs::read_to_string(fixtures.join("tiny-llama/inputs.txt")).unwrap();
    std::fs::write(&data, text).unwrap();
    let seqs = sequences(&data, padded);
    assert!(seqs.iter().all(|s| s.ids.len() == 128), "all-MiniLM-L6-v2's tokenizer pads every line to 128 tokens");
    let unpadded = dir.path().join("unpadded");
    copy_with_padding(padded, &unpadded, serde_json::Value::Null);
    let without = calibrate_counting_real_rows(&unpadded, &data);
    let with = calibrate_counting_real_rows(padded, &data);
    assert_eq!(with.len(), 36, "6 layers × (query, key, value, attention output, intermediate, output)");
    assert_eq!(with, without);
}

/// Every input of what is observed is in the cache key: the tokenizer's files, a graph file named by
/// config.json, and the observation code's version (a cache written by other code is recomputed, never read).
#[test]
fn the_calibration_cache_follows_the_tokenizer_the_graph_and_the_observation_version() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = common::temp_dir();
    let cache = dir.path().join("cache");
    let folder = dir.path().join("bert");
    copy_with_padding(&fixtures.join("tiny-bert"), &folder, serde_json::Value::Null);
    let data = fixtures.join("tiny-bert/inputs.txt");
    let model = Model::open(&folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let run = || calibrate(&model, &arch, &data, Some(&cache), &Progress::new()).unwrap();
    let first = run();
    assert!(!first.from_cache);
    assert!(run().from_cache, "nothing changed");
    // The tokenizer now pads: measured again (the histograms are the same, as padding is not observed).
    let tokenizer = folder.join("tokenizer.json");
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tokenizer).unwrap()).unwrap();
    doc["padding"] = fixed_padding(&fixtures.join("tiny-bert"), 32, "Right");
    std::fs::write(&tokenizer, doc.to_string()).unwrap();
    let padded = run();
    assert!(!padded.from_cache, "tokenizer.json changed");
    assert_eq!(padded.calibration.layers, first.calibration.layers);
    assert!(run().from_cache);
    // tokenizer_config.json appears.
    std::fs::write(folder.join("tokenizer_config.json"), r#"{"model_max_length": 16}"#).unwrap();
    assert!(!run().from_cache, "tokenizer_config.json appeared");
    let current = run();
    assert!(current.from_cache);
    // A file at the key's name written by other observation code (or an older layout) is recomputed.
    let file = current.cache_file.unwrap();
    let mut cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let version = cached["key"]["observation_version"].as_u64().unwrap();
    cached["key"]["observation_version"] = (version - 1).into();
    std::fs::write(&file, cached.to_string()).unwrap();
    assert!(!run().from_cache, "another observation version is not read");
    assert!(run().from_cache, "and was replaced");
    let mut cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let key = cached["key"].as_object_mut().unwrap();
    key.remove("observation_version");
    key.remove("tokenizer_files");
    std::fs::write(&file, cached.to_string()).unwrap();
    assert!(!run().from_cache, "a key without the new fields is not read");

    // A graph model whose config.json names its graph file.
    let graph = dir.path().join("graph");
    std::fs::create_dir(&graph).unwrap();
    write_linear(&graph, &[0.5, -0.25, 1.0, 0.125, 0.75, -1.0]);
    std::fs::rename(graph.join("model.json"), graph.join("chain.json")).unwrap();
    std::fs::write(graph.join("config.json"), r#"{"graph": "chain.json"}"#).unwrap();
    let inputs = common::normal(16 * 3, 11, 1.0);
    let data = graph.join("calib.safetensors");
    common::write_model(&data, &[Spec::f32("inputs", &[16, 3], &inputs)]);
    let run_graph = || {
        let model = Model::open(&graph).unwrap();
        let arch = Architecture::detect(&model).unwrap();
        calibrate(&model, &arch, &data, Some(&cache), &Progress::new()).unwrap()
    };
    assert!(!run_graph().from_cache);
    assert!(run_graph().from_cache);
    // A ReLU after the layer: another network from the same weights file (its input, observed, is unchanged).
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(graph.join("chain.json")).unwrap()).unwrap();
    doc["ops"].as_array_mut().unwrap().push(serde_json::json!({"op": "relu"}));
    std::fs::write(graph.join("chain.json"), doc.to_string()).unwrap();
    assert!(!run_graph().from_cache, "the graph file changed");
}
