//! The runtime: FP32 forward passes against golden outputs of Hugging Face transformers' Flax models
//! (tests/fixtures, made by tools/fixtures/make_runtime_fixtures.py), tokenisation through tokenizer.json, the KV cache,
//! and the evaluation of plans against FP32 on the fixtures and the digits samples.

use std::path::{Path, PathBuf};

use quantstudio::model::DType;
use quantstudio::quant::pass::TensorData;
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe};
use quantstudio::runtime::{Architecture, EvalData, EvalReport, Network, TokenSequence, bert, evaluate};
use quantstudio::{Model, Progress};

use crate::common;

/// The issue's bar for agreement with the independent implementation.
const MAX_ABS_DIFF: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models").join(name)
}

fn floats(file: &Model, name: &str) -> (Vec<f32>, Vec<usize>) {
    let id = file.tensor_by_name(name).unwrap();
    let data = TensorData::of(file, id).unwrap();
    let mut buf = Vec::new();
    (data.values(0..data.len(), &mut buf).to_vec(), file.tensor(id).shape.clone())
}

fn ints(file: &Model, name: &str) -> Vec<i64> {
    let id = file.tensor_by_name(name).unwrap();
    assert_eq!(file.tensor(id).dtype, DType::I64);
    file.tensor_bytes(id).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// The golden token sequences, as stored.
fn golden_sequences(golden: &Model) -> Vec<TokenSequence> {
    let ids = ints(golden, "input_ids");
    let mask = ints(golden, "attention_mask");
    let types = golden.tensor_by_name("token_type_ids").map(|_| ints(golden, "token_type_ids"));
    let t = golden.tensor(golden.tensor_by_name("input_ids").unwrap()).shape[1];
    (0..ids.len() / t)
        .map(|s| TokenSequence {
            ids: ids[s * t..(s + 1) * t].iter().map(|&v| v as u32).collect(),
            type_ids: types
                .as_ref()
                .map_or(vec![0; t], |ty| ty[s * t..(s + 1) * t].iter().map(|&v| v as u32).collect()),
            mask: mask[s * t..(s + 1) * t].iter().map(|&m| m != 0).collect(),
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn open_network(folder: &Path) -> (Model, Architecture, Network) {
    let model = Model::open(folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let net = Network::build(&model, &arch, None, &Progress::new()).unwrap();
    (model, arch, net)
}

#[test]
fn bert_matches_flax_on_every_position_and_the_sentence_embeddings() {
    let folder = fixture("tiny-bert");
    let (_, _, net) = open_network(&folder);
    let Network::Bert(bert) = net else { panic!("not a BERT network") };
    let golden = Model::open(&folder.join("golden.safetensors")).unwrap();
    let (hidden, shape) = floats(&golden, "last_hidden_state");
    let (embeddings, _) = floats(&golden, "sentence_embedding");
    let (t, h) = (shape[1], shape[2]);
    let sequences = golden_sequences(&golden);
    assert!(sequences.iter().any(|s| s.valid_len() < t), "the fixture must exercise padding");
    for (i, seq) in sequences.iter().enumerate() {
        let out = bert.forward(seq).unwrap();
        let diff = max_abs_diff(&out, &hidden[i * t * h..(i + 1) * t * h]);
        assert!(diff < MAX_ABS_DIFF, "sequence {i}: last_hidden_state differs by {diff}");
        let embedding = bert::sentence_embedding(&out, &seq.mask, h);
        let diff = max_abs_diff(&embedding, &embeddings[i * h..(i + 1) * h]);
        assert!(diff < MAX_ABS_DIFF, "sequence {i}: sentence embedding differs by {diff}");
    }
}

#[test]
fn llama_matches_flax_with_gqa_rope_theta_and_separate_or_tied_head() {
    for name in ["tiny-llama", "tiny-llama-tied"] {
        let folder = fixture(name);
        let (_, _, net) = open_network(&folder);
        let Network::Llama(llama) = net else { panic!("not a Llama network") };
        let golden = Model::open(&folder.join("golden.safetensors")).unwrap();
        let (logits, shape) = floats(&golden, "logits");
        let (t, v) = (shape[1], shape[2]);
        for (i, seq) in golden_sequences(&golden).iter().enumerate() {
            let out = llama.forward(seq, &mut llama.new_cache()).unwrap();
            let diff = max_abs_diff(&out, &logits[i * t * v..(i + 1) * t * v]);
            assert!(diff < MAX_ABS_DIFF, "{name} sequence {i}: logits differ by {diff}");
        }
    }
}

#[test]
fn incremental_decoding_with_the_cache_equals_the_full_pass() {
    let (_, _, net) = open_network(&fixture("tiny-llama"));
    let Network::Llama(llama) = net else { panic!("not a Llama network") };
    let ids: Vec<u32> = vec![1, 17, 42, 99, 5, 150, 7];
    let full = llama.forward(&TokenSequence::new(ids.clone()), &mut llama.new_cache()).unwrap();
    let vocab = llama.config.vocab_size;
    let mut cache = llama.new_cache();
    let prefill = llama.forward(&TokenSequence::new(ids[..3].to_vec()), &mut cache).unwrap();
    assert!(max_abs_diff(&prefill, &full[..3 * vocab]) < 1e-5);
    for (i, &id) in ids.iter().enumerate().skip(3) {
        let step = llama.forward(&TokenSequence::new(vec![id]), &mut cache).unwrap();
        let diff = max_abs_diff(&step, &full[i * vocab..(i + 1) * vocab]);
        assert!(diff < 1e-5, "token {i}: {diff}");
    }
    assert_eq!(cache.len(), ids.len());
}

#[test]
fn text_is_tokenised_with_the_padding_and_truncation_of_tokenizer_json() {
    for name in ["tiny-bert", "tiny-llama"] {
        let folder = fixture(name);
        let data = EvalData::load(&folder.join("inputs.txt"), &folder).unwrap();
        let golden = Model::open(&folder.join("golden.safetensors")).unwrap();
        let EvalData::Sequences(got) = data else { panic!("text gives sequences") };
        let expected = golden_sequences(&golden);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.ids, e.ids, "{name}");
            assert_eq!(g.mask, e.mask, "{name}");
            if name == "tiny-bert" {
                assert_eq!(g.type_ids, e.type_ids);
            }
        }
        // The same sequences from a safetensors file of input tensors.
        let EvalData::Sequences(from_file) = EvalData::load(&folder.join("golden.safetensors"), &folder).unwrap()
        else {
            panic!("input_ids give sequences")
        };
        assert_eq!(
            from_file.iter().map(|s| &s.ids).collect::<Vec<_>>(),
            expected.iter().map(|s| &s.ids).collect::<Vec<_>>()
        );
    }
}

fn eval_uniform(folder: &Path, data: &Path, precision: Precision) -> EvalReport {
    let model = Model::open(folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let data = EvalData::load(data, folder).unwrap();
    let plan = Recipe::uniform(precision).resolve(&model).unwrap();
    evaluate(&model, &arch, &data, &plan, &Progress::new()).unwrap()
}

fn int8(granularity: Granularity) -> Precision {
    Precision::Int8(Int8Scheme::weights(true, granularity))
}

#[test]
fn an_all_fp32_plan_reproduces_fp32_exactly() {
    let bert = eval_uniform(&fixture("tiny-bert"), &fixture("tiny-bert/inputs.txt"), Precision::Fp32);
    assert_eq!(bert.output_sqnr_db, None);
    assert!((bert.min_cosine.unwrap() - 1.0).abs() < 1e-12 && (bert.mean_cosine.unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(bert.output_max_abs_error, 0.0);
    let llama = eval_uniform(&fixture("tiny-llama"), &fixture("tiny-llama/inputs.txt"), Precision::Fp32);
    assert_eq!((llama.output_sqnr_db, llama.top1_agreement, llama.mean_kl), (None, Some(1.0), Some(0.0)));
    let digits = eval_uniform(&sample("digits-mlp"), &sample("digits-mlp/eval.safetensors"), Precision::Fp32);
    assert_eq!(digits.output_sqnr_db, None);
    assert_eq!(digits.accuracy, digits.fp32_accuracy);
}

#[test]
fn int8_figures_are_finite_and_per_channel_is_no_worse_than_per_tensor() {
    for name in ["digits-mlp", "digits-cnn"] {
        let folder = sample(name);
        let data = folder.join("eval.safetensors");
        let fp32 = eval_uniform(&folder, &data, Precision::Fp32);
        let tensor = eval_uniform(&folder, &data, int8(Granularity::PerTensor));
        let channel = eval_uniform(&folder, &data, int8(Granularity::PerChannel));
        // The README's figures: 99.44% and 99.17% on the 360 evaluation images.
        let expected = if name == "digits-mlp" { 358.0 / 360.0 } else { 357.0 / 360.0 };
        assert_eq!(fp32.fp32_accuracy, Some(expected), "{name}");
        for r in [&tensor, &channel] {
            let sqnr = r.output_sqnr_db.expect("INT8 changes the outputs");
            assert!(sqnr.is_finite() && sqnr > 20.0, "{name}: {sqnr}");
            assert!(r.accuracy.unwrap() >= expected - 0.01, "{name}: INT8 loses more than a point: {r:?}");
        }
        assert!(channel.output_sqnr_db >= tensor.output_sqnr_db, "{name}: {channel:?} vs {tensor:?}");
        assert!(channel.accuracy >= tensor.accuracy, "{name}");
    }
    for name in ["tiny-bert", "tiny-llama"] {
        let folder = fixture(name);
        let data = folder.join("inputs.txt");
        let tensor = eval_uniform(&folder, &data, int8(Granularity::PerTensor));
        let channel = eval_uniform(&folder, &data, int8(Granularity::PerChannel));
        let fp16 = eval_uniform(&folder, &data, Precision::Fp16);
        for r in [&tensor, &channel, &fp16] {
            assert!(r.output_sqnr_db.is_some_and(f64::is_finite), "{name}: {r:?}");
            assert!(r.mean_cosine.is_none_or(|c| c > 0.5 && c <= 1.0 + 1e-12), "{name}: {r:?}");
            assert!(r.mean_kl.is_none_or(|kl| kl.is_finite() && kl >= 0.0), "{name}: {r:?}");
        }
        assert!(channel.output_sqnr_db >= tensor.output_sqnr_db, "{name}: {channel:?} vs {tensor:?}");
        assert!(fp16.output_sqnr_db > channel.output_sqnr_db, "{name}: FP16 is finer than INT8");
    }
}

#[test]
fn dynamic_inputs_are_quantized_per_token_and_cost_more_than_the_same_weights_alone() {
    use quantstudio::quant::Fp8Scheme;
    for name in ["tiny-bert", "tiny-llama", "tiny-llama-tied"] {
        let folder = fixture(name);
        let data = folder.join("inputs.txt");
        let weights_only = eval_uniform(&folder, &data, int8(Granularity::PerChannel));
        let dynamic = eval_uniform(&folder, &data, Precision::Int8(Int8Scheme::w8a8_dynamic()));
        let fp8 = eval_uniform(&folder, &data, Precision::Fp8(Fp8Scheme::weights(Granularity::PerChannel)));
        let fp8_dynamic = eval_uniform(&folder, &data, Precision::Fp8(Fp8Scheme::dynamic()));
        for r in [&dynamic, &fp8, &fp8_dynamic] {
            let sqnr = r.output_sqnr_db.expect("the plan changes the outputs");
            assert!(sqnr.is_finite() && sqnr > 10.0, "{name}: {r:?}");
        }
        // The same weights, with the inputs quantized too: strictly more error.
        assert!(dynamic.output_sqnr_db < weights_only.output_sqnr_db, "{name}: {dynamic:?} vs {weights_only:?}");
        assert!(fp8_dynamic.output_sqnr_db < fp8.output_sqnr_db, "{name}: {fp8_dynamic:?} vs {fp8:?}");
    }
}

#[test]
fn dynamic_input_quantization_gives_each_row_its_own_scale() {
    use quantstudio::quant::{InputQuant, QParams, fp8};
    use quantstudio::runtime::linear::planned_input;
    // Two tokens of very different size: each is quantized as if alone.
    let x = [0.5f32, -0.25, 0.125, 1e-3, 100.0, -50.0, 25.0, 0.1];
    let int8 = planned_input(&x, 4, Some(&InputQuant::DynamicInt8));
    for row in 0..2 {
        let values = &x[row * 4..row * 4 + 4];
        let params = QParams::symmetric(values.iter().fold(0f32, |m, v| m.max(v.abs())));
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(int8[row * 4 + i].to_bits(), params.dequantize(params.quantize(v)).to_bits());
        }
    }
    assert_ne!(int8[2], 0.0, "the small token keeps its small values (a per-tensor scale would zero them)");
    let e4m3 = planned_input(&x, 4, Some(&InputQuant::DynamicFp8));
    for row in 0..2 {
        let values = &x[row * 4..row * 4 + 4];
        let scale = fp8::fp8_scale(values.iter().fold(0f32, |m, v| m.max(v.abs())));
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(e4m3[row * 4 + i].to_bits(), fp8::quantize_dequantize(v, scale).to_bits());
        }
    }
}

#[test]
fn evaluation_is_deterministic_and_the_plan_only_changes_planned_layers() {
    let folder = fixture("tiny-llama");
    let data = folder.join("inputs.txt");
    let a = eval_uniform(&folder, &data, int8(Granularity::PerChannel));
    let b = eval_uniform(&folder, &data, int8(Granularity::PerChannel));
    assert_eq!(a, b);
    // Quantizing only the output head leaves every layer below it as in FP32, so the change is small but real.
    let model = Model::open(&folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let mut plan = Plan::all(&model, Precision::Fp32);
    plan.layers[model.layer_by_name("lm_head").unwrap().0] = int8(Granularity::PerChannel);
    let report = evaluate(&model, &arch, &EvalData::load(&data, &folder).unwrap(), &plan, &Progress::new()).unwrap();
    assert!(report.output_sqnr_db.unwrap() > a.output_sqnr_db.unwrap());
}

#[test]
fn models_without_a_forward_pass_open_in_weight_only_mode_with_the_reason() {
    let llm = Model::open(&sample("tiny-llm")).unwrap();
    let why = Architecture::detect(&llm).unwrap_err().to_string();
    assert!(why.contains("tiny-demo") && why.contains("weight-only"), "{why}");
    let dir = common::temp_dir();
    let file = dir.path().join("bare.safetensors");
    common::write_model(&file, &[common::Spec::f32("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])]);
    let why = Architecture::detect(&Model::open(&file).unwrap()).unwrap_err().to_string();
    assert!(why.contains("no config.json"), "{why}");
}

#[test]
fn bad_data_and_configs_are_one_line_errors() {
    let folder = fixture("tiny-bert");
    let model = Model::open(&folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let plan = Plan::all(&model, Precision::Fp32);
    let run = |data: &EvalData| evaluate(&model, &arch, data, &plan, &Progress::new());
    // A token id beyond the vocabulary, a segment id beyond the segment table, too many positions.
    for seq in [
        TokenSequence::new(vec![2, 100_000, 3]),
        TokenSequence { type_ids: vec![0, 7], ..TokenSequence::new(vec![2, 3]) },
        TokenSequence::new(vec![2; 500]),
    ] {
        let error = run(&EvalData::Sequences(vec![seq])).unwrap_err().to_string();
        assert!(!error.contains('\n') && error.contains("input sequence"), "{error}");
    }
    // Image data for a text model, and text for a model without a tokenizer.
    let images = EvalData::load(&sample("digits-mlp/eval.safetensors"), &sample("digits-mlp")).unwrap();
    assert!(run(&images).unwrap_err().to_string().contains("token sequences"));
    let error = EvalData::load(&fixture("tiny-bert/inputs.txt"), &sample("digits-mlp")).unwrap_err().to_string();
    assert!(error.contains("tokenizer.json"), "{error}");
    // A config the runtime does not implement says which field.
    let dir = common::temp_dir();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(folder.join(f), dir.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"gelu\"", "\"gelu_fast\"")).unwrap();
    let error = Architecture::detect(&Model::open(dir.path()).unwrap()).unwrap_err().to_string();
    assert!(error.contains("hidden_act") && error.contains("gelu_fast"), "{error}");
    // Weights whose shapes contradict the config.
    std::fs::write(dir.path().join("config.json"), config.replace("\"hidden_size\": 32", "\"hidden_size\": 48"))
        .unwrap();
    let model = Model::open(dir.path()).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let error = Network::build(&model, &arch, None, &Progress::new()).unwrap_err().to_string();
    assert!(error.contains("shape"), "{error}");
}

#[test]
fn cancelling_stops_an_evaluation() {
    let folder = sample("digits-cnn");
    let model = Model::open(&folder).unwrap();
    let arch = Architecture::detect(&model).unwrap();
    let data = EvalData::load(&folder.join("eval.safetensors"), &folder).unwrap();
    let progress = Progress::new();
    progress.cancel();
    let plan = Plan::all(&model, Precision::Fp16);
    assert!(matches!(evaluate(&model, &arch, &data, &plan, &progress), Err(quantstudio::Error::Cancelled)));
}

#[test]
fn cli_eval_json_names_the_figures_of_each_family() {
    let mlp = sample("digits-mlp");
    let (code, stdout, stderr) = common::run_cli(&[
        "eval",
        mlp.to_str().unwrap(),
        "--precision",
        "int8",
        "--per-channel",
        "--data",
        mlp.join("eval.safetensors").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["samples"], 360);
    assert!(doc["accuracy"].as_f64().unwrap() > 0.97);
    assert!(doc["output_sqnr_db"].as_f64().unwrap() > 20.0);
    assert!(doc.get("mean_kl").is_none());
    let llama = fixture("tiny-llama");
    let (code, stdout, stderr) = common::run_cli(&[
        "eval",
        llama.to_str().unwrap(),
        "--precision",
        "fp32",
        "--data",
        llama.join("inputs.txt").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((doc["top1_agreement"].as_f64(), doc["mean_kl"].as_f64()), (Some(1.0), Some(0.0)));
    assert!(doc["output_sqnr_db"].is_null(), "identical outputs are null, never inf");
    let bert = fixture("tiny-bert");
    let (code, stdout, _) = common::run_cli(&[
        "eval",
        bert.to_str().unwrap(),
        "--precision",
        "bf16",
        "--data",
        bert.join("inputs.txt").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(doc["mean_cosine"].as_f64().unwrap() > 0.99 && doc["min_cosine"].as_f64().is_some());
    // Weight-only models: exit code 2 and the reason on one line.
    let llm = sample("tiny-llm");
    let (code, _, stderr) = common::run_cli(&["eval", llm.to_str().unwrap(), "--precision", "int8", "--data", "x.txt"]);
    assert_eq!(code, 2);
    assert!(stderr.trim().lines().count() == 1 && stderr.contains("weight-only"), "{stderr}");
}

/// Writes a graph model folder: config.json naming model.json, the document, and the weights.
fn write_graph(dir: &Path, ops: serde_json::Value, input: &[usize], output: &[usize], specs: &[common::Spec]) {
    std::fs::write(dir.join("config.json"), r#"{"graph": "model.json", "model_type": "test-graph"}"#).unwrap();
    let doc = serde_json::json!({
        "format": "quantstudio-graph", "version": 1,
        "inputs": [{"name": "x", "dtype": "F32", "shape": input}],
        "ops": ops,
        "outputs": [{"name": "y", "dtype": "F32", "shape": output}],
    });
    std::fs::write(dir.join("model.json"), doc.to_string()).unwrap();
    common::write_model(&dir.join("model.safetensors"), specs);
}

#[test]
fn graph_ops_compute_what_model_json_documents() {
    let dir = common::temp_dir();
    // Depthwise 1x1 convolution scaling channel c by (c + 1), flatten, layer norm, then softmax.
    let ops = serde_json::json!([
        {"op": "conv2d", "weight": "dw.weight", "groups": 3},
        {"op": "flatten"},
        {"op": "layer_norm", "weight": "ln.weight", "bias": "ln.bias", "eps": 0.0},
        {"op": "softmax"},
    ]);
    let specs = [
        common::Spec::f32("dw.weight", &[3, 1, 1, 1], &[1.0, 2.0, 3.0]),
        common::Spec::f32("ln.weight", &[6], &[1.0; 6]),
        common::Spec::f32("ln.bias", &[6], &[0.0; 6]),
    ];
    write_graph(dir.path(), ops, &[3, 1, 2], &[6], &specs);
    let (_, _, net) = open_network(dir.path());
    let Network::Graph(graph) = net else { panic!("a graph") };
    let x = [1.0f32, -1.0, 0.5, 0.25, 2.0, 0.0];
    let y = graph.forward(&x);
    // By hand: scaled = [1, -1, 1, 0.5, 6, 0]; normalised; softmax.
    let scaled = [1.0f64, -1.0, 1.0, 0.5, 6.0, 0.0];
    let mean = scaled.iter().sum::<f64>() / 6.0;
    let std = (scaled.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0).sqrt();
    let exps: Vec<f64> = scaled.iter().map(|v| ((v - mean) / std).exp()).collect();
    let total: f64 = exps.iter().sum();
    for (got, e) in y.iter().zip(&exps) {
        assert!((*got as f64 - e / total).abs() < 1e-6, "{y:?}");
    }
    // gelu, silu, relu, linear with bias on a batch of two.
    let ops = serde_json::json!([
        {"op": "linear", "weight": "fc.weight", "bias": "fc.bias"},
        {"op": "gelu"}, {"op": "silu"}, {"op": "relu"},
    ]);
    let specs = [
        common::Spec::f32("fc.weight", &[2, 2], &[1.0, 0.0, 0.0, -1.0]),
        common::Spec::f32("fc.bias", &[2], &[0.5, 0.0]),
    ];
    write_graph(dir.path(), ops, &[2], &[2], &specs);
    let (_, _, net) = open_network(dir.path());
    let Network::Graph(graph) = net else { panic!("a graph") };
    let y = graph.forward(&[1.0, 2.0, -3.0, 0.0]);
    let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let expected = [1.5f64, -2.0, -2.5, 0.0].map(|v| silu(gelu(v)).max(0.0));
    for (got, e) in y.iter().zip(expected) {
        assert!((*got as f64 - e).abs() < 1e-6, "{y:?} vs {expected:?}");
    }
}

/// erf by its Maclaurin series (enough terms for |x| < 3).
fn erf(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    for n in 1..80 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn graph_documents_that_do_not_fit_are_refused() {
    let dir = common::temp_dir();
    let conv = |extra: serde_json::Value| {
        let mut op = serde_json::json!({"op": "conv2d", "weight": "c.weight"});
        op.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::json!([op, {"op": "flatten"}])
    };
    let specs = [common::Spec::f32("c.weight", &[4, 1, 1, 1], &[1.0; 4])];
    let cases = [
        (conv(serde_json::json!({"dilation": [2, 2]})), "unknown key \"dilation\" in op 0 (conv2d)"),
        (conv(serde_json::json!({"groups": 3})), "group"),
        (conv(serde_json::json!({"groups": 0})), "bad groups"),
        (serde_json::json!([{"op": "maxpool"}]), "unknown op"),
    ];
    for (ops, expected) in cases {
        write_graph(dir.path(), ops, &[2, 2, 2], &[16], &specs);
        let model = Model::open(dir.path()).unwrap();
        let error = Architecture::detect(&model)
            .and_then(|arch| Network::build(&model, &arch, None, &Progress::new()))
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected) && !error.contains('\n'), "{expected}: {error}");
    }
    // groups = 2 fits 2 input channels with a [4, 1, 1, 1] weight, and the output shape is checked.
    write_graph(dir.path(), conv(serde_json::json!({"groups": 2})), &[2, 2, 2], &[15], &specs);
    let model = Model::open(dir.path()).unwrap();
    let error = Network::build(&model, &Architecture::detect(&model).unwrap(), None, &Progress::new()).unwrap_err();
    assert!(error.to_string().contains("[16]"), "{error}");
}
