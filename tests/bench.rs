//! Benchmarks: the plan as deployed (FP16/BF16/INT8/FP8 weights held compact and converted tile by tile, W8A8 on the
//! integer GEMM) against the simulation, and the benchmark's figures (no timing is asserted beyond being positive).

use std::path::{Path, PathBuf};

use quantstudio::model::Model;
use quantstudio::progress::Progress;
use quantstudio::quant::{Fp8Scheme, Granularity, Int8Scheme, Plan, Precision, Recipe};
use quantstudio::runtime::benchmark::{Request, run};
use quantstudio::runtime::latency::Workload;
use quantstudio::runtime::{Architecture, Deployed, EvalData, Network, TokenSequence};

fn path(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(folder)
}

fn int8(symmetric: bool, granularity: Granularity) -> Precision {
    Precision::Int8(Int8Scheme::weights(symmetric, granularity))
}

fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The outputs of `net` on a few inputs the family takes.
fn outputs(net: &Network) -> Vec<f32> {
    match net {
        Network::Graph(g) => {
            let inputs: Vec<f32> = (0..g.input_len() * 5).map(|i| ((i * 37) % 17) as f32 / 17.0).collect();
            g.forward(&inputs)
        }
        Network::Bert(b) => b.forward(&TokenSequence::new(vec![2, 7, 11, 5, 3, 9])).unwrap(),
        Network::Llama(l) => l.forward(&TokenSequence::new(vec![1, 4, 9, 16, 25]), &mut l.new_cache()).unwrap(),
    }
}

#[test]
fn deployed_compact_weights_compute_what_the_simulation_computes() {
    let precisions = [
        Precision::Fp16,
        Precision::Bf16,
        int8(true, Granularity::PerChannel),
        int8(false, Granularity::PerChannel),
        int8(true, Granularity::PerTensor),
        int8(false, Granularity::PerTensor),
        Precision::Fp8(Fp8Scheme::weights(Granularity::PerChannel)),
        Precision::Fp8(Fp8Scheme::weights(Granularity::PerTensor)),
        // Dynamic FP8 inputs are rounded per token as in the simulation; the weights stay compact.
        Precision::Fp8(Fp8Scheme::dynamic()),
    ];
    for folder in ["sample-models/digits-mlp", "tests/fixtures/tiny-bert", "tests/fixtures/tiny-llama"] {
        let model = Model::open(&path(folder)).unwrap();
        let arch = Architecture::detect(&model).unwrap();
        let fp32_bytes = Network::build_measured(&model, &arch, None, &Progress::new()).unwrap().1;
        for precision in precisions {
            let plan = Recipe::uniform(precision).resolve(&model).unwrap();
            let simulated = Network::build(&model, &arch, Some(&plan), &Progress::new()).unwrap();
            let Deployed { network, weights_bytes, integer_layers, compact_layers } =
                Network::build_deployed(&model, &arch, &plan, &Progress::new()).unwrap();
            assert_eq!(integer_layers, 0);
            assert!(compact_layers >= 3, "{folder} {precision}: {compact_layers} compact layers");
            assert!(weights_bytes < fp32_bytes, "{folder} {precision}: {weights_bytes} vs {fp32_bytes} bytes");
            // The same weights exactly (conversion is exact); only the order of the f32 sums differs.
            let (ys, yd) = (outputs(&simulated), outputs(&network));
            let difference = relative_l2(&ys, &yd);
            assert!(difference < 1e-5, "{folder} {precision}: relative L2 {difference}");
        }
    }
}

#[test]
fn benchmark_reports_fp32_first_then_the_plan_with_its_accuracy_as_deployed() {
    let model = Model::open(&path("sample-models/digits-mlp")).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let data = EvalData::load(&model.path.join("eval.safetensors"), &model.path).unwrap();
    let plan = Recipe::uniform(int8(true, Granularity::PerChannel)).resolve(&model).unwrap();
    let workload = Workload { repeat: 3, batch: 4, ..Workload::default() };
    let plan_disk_bytes = quantstudio::export::planned_model_bytes(&model, &plan);
    let request = Request {
        model: &model,
        arch: &arch,
        plan: Some(&plan),
        time_fp32: true,
        data: Some(&data),
        workload,
        plan_disk_bytes,
    };
    let mut configurations = Vec::new();
    run(&request, &Progress::new(), &mut |c| configurations.push(c)).unwrap();
    assert_eq!(configurations.len(), 2);
    let (fp32, planned) = (&configurations[0], &configurations[1]);
    assert_eq!((fp32.name.as_str(), planned.name.as_str()), ("FP32", "plan"));
    // The accuracy figures are the evaluation's: the same FP32 accuracy, and the plan's measured as deployed.
    let evaluated = quantstudio::runtime::evaluate(&model, &arch, &data, &plan, &Progress::new()).unwrap();
    let fp32_quality = fp32.quality.as_ref().unwrap();
    assert_eq!((fp32_quality.metric, Some(fp32_quality.value)), ("accuracy", evaluated.fp32_accuracy));
    let plan_quality = planned.quality.as_ref().unwrap();
    assert!((plan_quality.value - evaluated.accuracy.unwrap()).abs() <= 1.0 / data.len() as f64);
    assert!(planned.evaluation.is_some() && fp32.evaluation.is_none());
    // Size on disk: FP32 as stored, the plan as exported (INT8 codes: about a quarter).
    assert_eq!(fp32.disk_bytes, model.size_bytes());
    assert!(planned.disk_bytes * 3 < fp32.disk_bytes);
    // INT8 codes held, not f32 (the 10-output layer is padded to a block of 64 columns, hence not a quarter).
    assert!(planned.latency.weights_bytes * 2 < fp32.latency.weights_bytes, "INT8 codes held, not f32");
    assert_eq!(planned.compact_layers, 3);
    for c in &configurations {
        assert!(c.latency.latency_ms_median > 0.0 && c.latency.latency_ms_p95 >= c.latency.latency_ms_median);
        assert!(c.latency.throughput_per_s > 0.0);
    }
    // A cancelled benchmark stops with `Cancelled` and reports nothing more.
    let progress = Progress::new();
    progress.cancel();
    let mut late = Vec::new();
    let result = run(&request, &progress, &mut |c| late.push(c));
    assert!(matches!(result, Err(quantstudio::Error::Cancelled)), "{result:?}");
    assert!(late.is_empty());
}

#[test]
fn an_uncalibrated_w8a8_plan_is_refused_before_anything_runs() {
    let model = Model::open(&path("sample-models/digits-mlp")).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let w8a8 = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel).with_int8_inputs());
    let plan: Plan = Recipe::uniform(w8a8).resolve(&model).unwrap();
    let request = Request {
        model: &model,
        arch: &arch,
        plan: Some(&plan),
        time_fp32: true,
        data: None,
        workload: Workload { repeat: 1, batch: 1, ..Workload::default() },
        plan_disk_bytes: quantstudio::export::planned_model_bytes(&model, &plan),
    };
    let mut configurations = Vec::new();
    let error = run(&request, &Progress::new(), &mut |c| configurations.push(c)).unwrap_err();
    assert!(error.to_string().contains("calibrat"), "{error}");
    assert!(configurations.is_empty());
}

#[test]
fn deployed_w8a8_dynamic_layers_run_integer_products_that_match_the_simulation() {
    let dynamic = Precision::Int8(Int8Scheme::w8a8_dynamic());
    for folder in ["sample-models/digits-mlp", "tests/fixtures/tiny-bert", "tests/fixtures/tiny-llama"] {
        let model = Model::open(&path(folder)).unwrap();
        let arch = Architecture::detect(&model).unwrap();
        let plan = Recipe::uniform(dynamic).resolve(&model).unwrap();
        assert!(plan.uncalibrated(&model).is_empty(), "dynamic inputs need no calibration");
        let (simulated, simulated_bytes) =
            Network::build_measured(&model, &arch, Some(&plan), &Progress::new()).unwrap();
        let Deployed { network, weights_bytes, integer_layers, .. } =
            Network::build_deployed(&model, &arch, &plan, &Progress::new()).unwrap();
        assert!(integer_layers >= 3, "{folder}: {integer_layers} integer layers");
        assert!(weights_bytes < simulated_bytes, "{folder}: INT8 codes, not f32");
        // Integer sums instead of f32 products of dequantized values: the same up to f32 rounding, which can move
        // a later layer's input code by one step (the static W8A8 test's bound).
        let difference = relative_l2(&outputs(&simulated), &outputs(&network));
        assert!(difference < 1e-3, "{folder}: relative L2 {difference}");
    }
}
