//! Independent Python checks: the numpy implementation of the formulas (`tools/check/reference_check.py`) against the CLI
//! on the bundled sample, on a hand-made model of edge values and on a real checkpoint when CI provides one; the
//! runtime fixtures against a numpy forward pass; and the runtime on the real all-MiniLM-L6-v2.
//!
//! Needs a Python with numpy and safetensors (`QUANTSTUDIO_PYTHON`, default `python3`), found by build.rs when the
//! tests are built: without one these tests are reported as ignored (with `QUANTSTUDIO_REQUIRE_PYTHON=1`, set by
//! `.ci/run`, the build fails instead). The FP8 reference checks also need ml_dtypes, the real-checkpoint tests
//! `QUANTSTUDIO_REFERENCE_MODEL`. Each test names its schemes (`--schemes numpy`, `fp8` or `int4`), so an FP8 check
//! is never skipped inside a test that passes: without ml_dtypes it is the FP8 test that shows as ignored.

use std::path::Path;
use std::process::Command;

use crate::common;

/// The interpreter build.rs probed (`QUANTSTUDIO_PYTHON`, default `python3`).
pub const PYTHON: &str = env!("QUANTSTUDIO_BUILD_PYTHON");
/// The folder `QUANTSTUDIO_REFERENCE_MODEL` named when the tests were built (empty when none).
pub const REFERENCE_MODEL: &str = env!("QUANTSTUDIO_BUILD_REFERENCE_MODEL");

fn reference_check(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check/reference_check.py");
    let output = Command::new(PYTHON)
        .arg(&script)
        .args(args)
        .args(["--quantstudio", env!("CARGO_BIN_EXE_quantstudio")])
        .output()
        .expect("run reference_check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "reference check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL CHECKS PASSED"), "{stdout}");
}

/// The hand-made model of edge values (`reference_check.py --make-awkward`: zeros, constants, NaN/inf, subnormals,
/// values near f32::MAX, ties, INT4 groups of each), written into a temp folder.
fn awkward_model() -> tempfile::TempDir {
    let dir = common::temp_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check/reference_check.py");
    let made = Command::new(PYTHON)
        .arg(&script)
        .args(["--make-awkward", dir.path().to_str().unwrap()])
        .output()
        .expect("make awkward model");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    dir
}

/// INT8 (symmetric/asymmetric, per tensor/channel), FP16 and BF16: every figure, histogram and exported byte.
#[test]
#[cfg_attr(
    not(quantstudio_python_numpy),
    ignore = "needs a Python with numpy and safetensors (set QUANTSTUDIO_PYTHON)"
)]
fn numpy_reference_agrees_on_the_sample_and_on_edge_values() {
    let awkward = awkward_model();
    let sample = common::bundled_sample();
    reference_check(&[sample.to_str().unwrap(), awkward.path().to_str().unwrap(), "--schemes", "numpy"]);
}

/// FP8 E4M3 per channel (`--precision fp8`), FP8-dynamic and per tensor (a recipe): figures, saturated counts,
/// histograms, the F8_E4M3 codes and scales of the export and its config groups, on the bundled sample, the
/// convolutions of digits-cnn and the edge values (NaN keeps its sign, ±inf saturate, -0 is 0x80).
#[test]
#[cfg_attr(
    not(quantstudio_python_ml_dtypes),
    ignore = "needs a Python with numpy, safetensors and ml_dtypes (set QUANTSTUDIO_PYTHON)"
)]
fn numpy_reference_agrees_on_fp8_on_the_samples_and_on_edge_values() {
    let awkward = awkward_model();
    let sample = common::bundled_sample();
    let cnn = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-cnn");
    let models = [sample.to_str().unwrap(), cnn.to_str().unwrap(), awkward.path().to_str().unwrap()];
    reference_check(&[&models[..], &["--schemes", "fp8"]].concat());
}

/// Group-wise INT4 (symmetric and asymmetric, groups of 32/64/128 asked, and a recipe over every layer): figures,
/// histograms, which layers are INT4 with which fitted group size, the packed codes, scales and zero points of the
/// export and its config groups, on the bundled sample, digits-mlp (rows of 64: smaller groups), digits-cnn
/// (convolutions stay FP32) and the edge values (ties at ±7.5, zero and non-finite groups, values near f32::MAX).
#[test]
#[cfg_attr(
    not(quantstudio_python_numpy),
    ignore = "needs a Python with numpy and safetensors (set QUANTSTUDIO_PYTHON)"
)]
fn numpy_reference_agrees_on_int4_on_the_samples_and_on_edge_values() {
    let awkward = awkward_model();
    let sample = common::bundled_sample();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mlp, cnn) = (root.join("sample-models/digits-mlp"), root.join("sample-models/digits-cnn"));
    let models =
        [sample.to_str().unwrap(), mlp.to_str().unwrap(), cnn.to_str().unwrap(), awkward.path().to_str().unwrap()];
    reference_check(&[&models[..], &["--schemes", "int4"]].concat());
}

/// A checkpoint nobody on the team made (all-MiniLM-L6-v2), when `QUANTSTUDIO_REFERENCE_MODEL` names its folder.
#[test]
#[cfg_attr(
    not(all(quantstudio_python_numpy, quantstudio_reference_model)),
    ignore = "needs a Python with numpy and safetensors and QUANTSTUDIO_REFERENCE_MODEL (.ci/run fetches all-MiniLM-L6-v2)"
)]
fn numpy_reference_agrees_on_a_real_checkpoint() {
    reference_check(&[REFERENCE_MODEL, "--schemes", "numpy"]);
}

/// The FP8 schemes on all-MiniLM-L6-v2 (per tensor: its embedding tables too).
#[test]
#[cfg_attr(
    not(all(quantstudio_python_ml_dtypes, quantstudio_reference_model)),
    ignore = "needs a Python with numpy, safetensors and ml_dtypes and QUANTSTUDIO_REFERENCE_MODEL (.ci/run fetches all-MiniLM-L6-v2)"
)]
fn numpy_reference_agrees_on_fp8_on_a_real_checkpoint() {
    reference_check(&[REFERENCE_MODEL, "--schemes", "fp8"]);
}

/// The INT4 schemes on all-MiniLM-L6-v2 (the recipe over every layer: its embedding tables too).
#[test]
#[cfg_attr(
    not(all(quantstudio_python_numpy, quantstudio_reference_model)),
    ignore = "needs a Python with numpy and safetensors and QUANTSTUDIO_REFERENCE_MODEL (.ci/run fetches all-MiniLM-L6-v2)"
)]
fn numpy_reference_agrees_on_int4_on_a_real_checkpoint() {
    reference_check(&[REFERENCE_MODEL, "--schemes", "int4"]);
}

/// The runtime fixtures' goldens (from transformers' Flax models) agree with a plain-numpy forward pass that reads
/// only config.json + model.safetensors (tools/check/check_runtime_fixtures.py), so a fixture cannot drift from the
/// checkpoint it claims to describe.
#[test]
#[cfg_attr(
    not(quantstudio_python_numpy),
    ignore = "needs a Python with numpy and safetensors (set QUANTSTUDIO_PYTHON)"
)]
fn runtime_fixtures_agree_with_an_independent_numpy_forward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(PYTHON)
        .arg(root.join("tools/check/check_runtime_fixtures.py"))
        .arg("--fixtures")
        .arg(root.join("tests/fixtures"))
        .output()
        .expect("run check_runtime_fixtures.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("all runtime fixtures match their goldens"), "{stdout}");
}

/// On the real all-MiniLM-L6-v2 (when CI provides it), the runtime reproduces the scores of sentence-transformers'
/// semantic-search example ("A man is eating pasta." against its corpus), printed to four decimals in its docs.
#[test]
#[cfg_attr(
    not(quantstudio_reference_model),
    ignore = "needs QUANTSTUDIO_REFERENCE_MODEL set to the all-MiniLM-L6-v2 folder (.ci/run fetches it)"
)]
fn minilm_sentence_embeddings_give_the_published_similarities() {
    use quantstudio::runtime::{Architecture, EvalData, Network, bert};
    let folder = Path::new(REFERENCE_MODEL);
    let dir = common::temp_dir();
    let text = dir.path().join("sentences.txt");
    let sentences = [
        "A man is eating pasta.",
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "A man is riding a white horse on an enclosed ground.",
        "A cheetah is running behind its prey.",
    ];
    std::fs::write(&text, sentences.join("\n")).unwrap();
    let loaded = quantstudio::Model::open(folder).unwrap();
    let arch = Architecture::detect(&loaded).unwrap();
    let Network::Bert(net) = Network::build(&loaded, &arch, None, &quantstudio::Progress::new()).unwrap() else {
        panic!("all-MiniLM-L6-v2 is a BERT model")
    };
    let EvalData::Sequences(seqs) = EvalData::load(&text, folder).unwrap() else { panic!("text gives sequences") };
    let dim = net.config.hidden_size;
    let embeddings: Vec<Vec<f32>> =
        seqs.iter().map(|s| bert::sentence_embedding(&net.forward(s).unwrap(), &s.mask, dim)).collect();
    let published = [0.7035, 0.5272, 0.1889, 0.1047, 0.0980];
    for (i, expected) in published.iter().enumerate() {
        let score = quantstudio::runtime::eval::cosine(&embeddings[0], &embeddings[i + 1]);
        assert!((score - expected).abs() < 6e-5, "{:?}: {score:.5} vs published {expected}", sentences[i + 1]);
    }
}

/// Calibration statistics and observers, the W8A8 simulation and the W8A8 export on digits-mlp against an
/// independent numpy forward pass and the formulas of CALIBRATION.md / QUANTIZATION.md / EXPORT.md
/// (tools/check/check_calibration.py; tolerances in its header).
#[test]
#[cfg_attr(
    not(quantstudio_python_numpy),
    ignore = "needs a Python with numpy and safetensors (set QUANTSTUDIO_PYTHON)"
)]
fn numpy_checks_calibration_w8a8_simulation_and_export() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = common::temp_dir();
    let output = Command::new(PYTHON)
        .arg(root.join("tools/check/check_calibration.py"))
        .args(["--quantstudio", env!("CARGO_BIN_EXE_quantstudio")])
        .arg("--model")
        .arg(root.join("sample-models/digits-mlp"))
        .arg("--work")
        .arg(work.path())
        .output()
        .expect("run check_calibration.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "calibration check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL CHECKS PASSED"), "{stdout}");
}

/// The folder `QUANTSTUDIO_LLAMA_MODEL` named when the tests were built (SmolLM2-135M-Instruct in CI; empty when
/// none).
const LLAMA_MODEL: &str = env!("QUANTSTUDIO_BUILD_LLAMA_MODEL");

/// `eval --perplexity` on a real Llama-family checkpoint against transformers computing the same chunked
/// perplexity in torch (`tools/check/check_perplexity.py`): within 0.1%, same tokens, chunks and BOS.
#[test]
#[cfg_attr(
    not(all(quantstudio_python_torch, quantstudio_llama_model)),
    ignore = "needs a Python with torch and transformers (set QUANTSTUDIO_PYTHON) and QUANTSTUDIO_LLAMA_MODEL"
)]
fn smollm2_perplexity_agrees_with_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(PYTHON)
        .arg(root.join("tools/check/check_perplexity.py"))
        .arg(LLAMA_MODEL)
        .arg("--text")
        .arg(root.join("README.md"))
        .args(["--quantstudio", env!("CARGO_BIN_EXE_quantstudio"), "--ctx", "128", "--chunks", "2"])
        .output()
        .expect("run check_perplexity.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "perplexity check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL CHECKS PASSED"), "{stdout}");
}

/// GPTQ against an independent numpy GPTQ (`tools/check/gptq_reference.py`) on real all-MiniLM-L6-v2 layers:
/// the studio's Hessian of a layer's input agrees with one summed in torch through a forward hook on the
/// transformers model, and the studio's codes agree with the reference's (or give an output error within 1% of
/// it), its round-to-nearest and GPTQ output errors are the numpy figures of its codes, and GPTQ beats rounding.
#[test]
#[cfg_attr(
    not(quantstudio_reference_model),
    ignore = "needs QUANTSTUDIO_REFERENCE_MODEL set to the all-MiniLM-L6-v2 folder (.ci/run fetches it)"
)]
fn gptq_agrees_with_numpy_gptq_on_real_minilm_layers() {
    use quantstudio::calib::gptq::layer_hessian;
    use quantstudio::quant::gptq::{GptqOptions, gptq_int4, output_errors};
    use quantstudio::quant::{Int4Scheme, pass::TensorData};
    use quantstudio::runtime::{Architecture, EvalData};
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    let folder = Path::new(REFERENCE_MODEL);
    let dir = common::temp_dir();
    // 24 sentences and layers of 384 inputs: the test build is unoptimised.
    let sentences =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench/data/sentences.txt"));
    let text = dir.path().join("calibration.txt");
    std::fs::write(&text, sentences.unwrap().lines().take(24).collect::<Vec<_>>().join("\n")).unwrap();
    let model = quantstudio::Model::open(folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let data = EvalData::load(&text, folder).unwrap();
    let progress = quantstudio::Progress::new();
    let cases = [
        ("encoder.layer.2.attention.self.query", Int4Scheme::new(false, 32), true),
        ("encoder.layer.4.intermediate.dense", Int4Scheme::new(true, 128), false),
    ];
    for (name, scheme, act_order) in cases {
        let id = model.layer_by_name(name).unwrap();
        let hessian = layer_hessian(&model, &arch, &data, id, &progress).unwrap();
        let tensor = model.main_tensor(id).unwrap();
        let weight_data = TensorData::of(&model, tensor).unwrap();
        let (rows, cols) = (weight_data.rows, weight_data.cols);
        let mut buf = Vec::new();
        let weight = weight_data.values(0..weight_data.len(), &mut buf).to_vec();
        let options = GptqOptions { act_order, ..Default::default() };
        let q = gptq_int4(&weight, rows, &hessian, scheme, options, &progress).unwrap();
        let mut rtn = weight.clone();
        quantstudio::quant::int4::fake_quantize_rows(scheme, &mut rtn, cols);
        let errors = output_errors(&weight, &[&q.dequantized(cols, scheme.group_size), &rtn], &hessian);

        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let weight_bytes = le(&weight);
        let hessian_bytes: Vec<u8> = hessian.values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let code_bytes: Vec<u8> = q.codes.iter().map(|&c| c as u8).collect();
        let scale_bytes = le(&q.params.iter().map(|p| p.scale).collect::<Vec<_>>());
        let zp_bytes: Vec<u8> = q.params.iter().flat_map(|p| p.zero_point.to_le_bytes()).collect();
        let groups = cols / scheme.group_size;
        let tensors = [
            ("weight", TensorView::new(Dtype::F32, vec![rows, cols], &weight_bytes).unwrap()),
            ("hessian", TensorView::new(Dtype::F64, vec![cols, cols], &hessian_bytes).unwrap()),
            ("codes", TensorView::new(Dtype::I8, vec![rows, cols], &code_bytes).unwrap()),
            ("scales", TensorView::new(Dtype::F32, vec![rows, groups], &scale_bytes).unwrap()),
            ("zero_points", TensorView::new(Dtype::I32, vec![rows, groups], &zp_bytes).unwrap()),
        ];
        let metadata = [
            ("group_size", scheme.group_size.to_string()),
            ("symmetric", scheme.symmetric.to_string()),
            ("act_order", act_order.to_string()),
            ("damp_percent", (options.damp_percent / 100.0).to_string()),
            ("block_size", quantstudio::quant::gptq::BLOCK_COLUMNS.to_string()),
            ("gptq_output_error", format!("{:e}", errors[0])),
            ("rtn_output_error", format!("{:e}", errors[1])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let exchange = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&exchange, safetensors::serialize(tensors, Some(metadata)).unwrap()).unwrap();

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check/gptq_reference.py");
        let run = |args: &[&str]| {
            let output = Command::new(PYTHON).arg(&script).args(args).output().expect("run gptq_reference.py");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(output.status.success(), "{name}: {args:?}\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
            stdout
        };
        let exchange = exchange.to_str().unwrap();
        run(&["check", exchange]);
        run(&[
            "hessian",
            "--model",
            REFERENCE_MODEL,
            "--text",
            text.to_str().unwrap(),
            "--layer",
            name,
            "--exchange",
            exchange,
        ]);
    }
}
