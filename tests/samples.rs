//! The digits sample models (sample-models/digits-*): the committed data split is the documented one, the committed
//! weights load and score what the README says, the training program beats a stated bar from the committed seed,
//! and the model.json runtime (examples/train_digits/net.rs) computes correct gradients and refuses bad graphs.

use std::path::{Path, PathBuf};

use quantstudio::Model;
use quantstudio::model::DType;

use crate::common::{self, Spec};

#[allow(dead_code)]
#[path = "../examples/train_digits/net.rs"]
mod net;

use net::{Arch, Digits, Net};

/// Training runs in the test's debug build, so it is shortened: these epochs (with the learning rate falling to
/// zero over them, as `--epochs N` does) and these bars, well below the committed models' accuracy.
const TEST_EPOCHS_MLP: usize = 5;
const TEST_EPOCHS_CNN: usize = 2;
const SHORT_TRAINING_MIN_ACCURACY: f64 = 0.90;
/// What the issue asks of the committed, fully trained models.
const MLP_MIN_ACCURACY: f64 = 0.97;
const CNN_MIN_ACCURACY: f64 = 0.98;
/// Every split holds each class in proportion to its size within this many images.
const STRATA_TOLERANCE_IMAGES: f64 = 1.0;
/// sha256 of sklearn/datasets/data/digits.csv.gz in the scikit-learn 1.7.2 wheel.
const SOURCE_SHA256: &str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22";
/// Issue 3: all sample files together stay under 2 MB.
const SAMPLES_MAX_BYTES: u64 = 2_000_000;
/// Finite differences in f32: step and tolerance relative to the largest gradient.
const FD_STEP: f32 = 1e-3;
const FD_MAX_REL_ERROR: f32 = 2e-2;

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models")
}

fn data_path() -> PathBuf {
    samples_dir().join("digits-data/digits.safetensors")
}

fn digits() -> Digits {
    Digits::load(&data_path()).expect("committed digits data")
}

fn expected_tensors(arch: Arch) -> Vec<(&'static str, Vec<usize>)> {
    match arch {
        Arch::Mlp => vec![
            ("fc1.weight", vec![128, 64]),
            ("fc1.bias", vec![128]),
            ("fc2.weight", vec![64, 128]),
            ("fc2.bias", vec![64]),
            ("fc3.weight", vec![10, 64]),
            ("fc3.bias", vec![10]),
        ],
        Arch::Cnn => vec![
            ("conv1.weight", vec![8, 1, 3, 3]),
            ("conv1.bias", vec![8]),
            ("conv2.weight", vec![16, 8, 3, 3]),
            ("conv2.bias", vec![16]),
            ("fc.weight", vec![10, 1024]),
            ("fc.bias", vec![10]),
        ],
    }
}

/// The committed network of a sample folder, read the way a runtime reads it: model.json + model.safetensors.
fn load_net(folder: &Path) -> Net {
    let text = std::fs::read_to_string(folder.join("model.json")).expect("model.json");
    let graph: serde_json::Value = serde_json::from_str(&text).expect("model.json is json");
    let weights = Model::open(folder).expect("sample folder opens");
    Net::from_graph(&graph, &weights).expect("model.json matches the weights")
}

fn i64_values(model: &Model, name: &str) -> Vec<i64> {
    let (bytes, _) = net::tensor_data(model, name, DType::I64).unwrap();
    bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn accuracy(net: &Net, data: &Digits) -> f64 {
    let rows = &data.split.eval;
    net.correct(&data.inputs(rows), &data.labels_of(rows)) as f64 / rows.len() as f64
}

#[test]
fn data_split_is_the_documented_one() {
    let data = digits();
    let split = &data.split;
    assert_eq!(data.labels.len(), 1797);
    assert_eq!((split.train.len(), split.calib.len(), split.eval.len()), (1309, net::CALIB_LEN, net::EVAL_LEN));
    // Disjoint and complete (Digits::load checks it too; this states it).
    let mut all: Vec<usize> = split.train.iter().chain(&split.calib).chain(&split.eval).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1797).collect::<Vec<_>>());
    // Stratified: each class in proportion to its size.
    let class_len: Vec<usize> =
        (0..net::CLASSES).map(|c| data.labels.iter().filter(|&&l| l as usize == c).count()).collect();
    for (name, rows) in [("train", &split.train), ("calib", &split.calib), ("eval", &split.eval)] {
        for (c, &n) in class_len.iter().enumerate() {
            let count = rows.iter().filter(|&&r| data.labels[r] as usize == c).count() as f64;
            let expected = rows.len() as f64 * n as f64 / 1797.0;
            assert!(
                (count - expected).abs() <= STRATA_TOLERANCE_IMAGES,
                "{name}: class {c} has {count}, expected {expected:.1}"
            );
        }
    }
    // Exactly what the documented algorithm gives with the documented seed.
    assert_eq!(*split, net::stratified_split(&data.labels, net::SPLIT_SEED, net::EVAL_LEN, net::CALIB_LEN));
    let file = Model::open(&data_path()).unwrap();
    let metadata = &file.shards[0].header.metadata;
    assert_eq!(metadata.get("split_seed").map(String::as_str), Some("1998"));
    assert_eq!(metadata.get("source_sha256").map(String::as_str), Some(SOURCE_SHA256));
}

#[test]
fn split_algorithm_is_stable_on_hand_made_labels() {
    // Three classes of 4, 2 and 6 rows: eval takes the first half-rank of every class, so one of each plus the
    // larger class's next; the result must not depend on anything but labels and seed.
    let labels = [0u8, 2, 2, 1, 0, 2, 2, 0, 1, 2, 0, 2];
    let a = net::stratified_split(&labels, 7, 4, 2);
    let b = net::stratified_split(&labels, 7, 4, 2);
    assert_eq!(a, b);
    assert_eq!((a.eval.len(), a.calib.len(), a.train.len()), (4, 2, 6));
    let classes = |rows: &[usize]| {
        let mut c: Vec<u8> = rows.iter().map(|&r| labels[r]).collect();
        c.sort_unstable();
        c
    };
    assert_eq!(classes(&a.eval), [0, 1, 2, 2]);
    assert_ne!(a, net::stratified_split(&labels, 8, 4, 2), "another seed shuffles differently");
}

#[test]
fn committed_weights_load_with_the_expected_names_and_shapes() {
    for arch in Arch::ALL {
        let folder = samples_dir().join(arch.folder());
        let model = Model::open(&folder).unwrap();
        let mut found: Vec<(String, Vec<usize>)> = model
            .tensors
            .iter()
            .inspect(|t| assert_eq!(t.dtype, DType::F32, "{}", t.name))
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let mut expected: Vec<(String, Vec<usize>)> =
            expected_tensors(arch).into_iter().map(|(n, s)| (n.to_string(), s)).collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected, "{}", arch.folder());
        let config = model.config.as_ref().expect("config.json");
        assert_eq!(config["model_type"], format!("quantstudio-{}", arch.folder()));
        assert!(model.warnings.is_empty(), "{:?}", model.warnings);
        // model.json names exactly these tensors, each once.
        let net = load_net(&folder);
        let mut used: Vec<&str> = net.params.iter().map(|p| p.name.as_str()).collect();
        used.sort_unstable();
        assert_eq!(used, expected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    }
}

#[test]
fn committed_eval_accuracy_matches_config_and_readme() {
    let data = digits();
    let readme = std::fs::read_to_string(samples_dir().join("README.md")).expect("sample-models/README.md");
    for arch in Arch::ALL {
        let folder = samples_dir().join(arch.folder());
        let net = load_net(&folder);
        // eval.safetensors and calib.safetensors hold the committed split's images, scaled, in row order.
        let eval = Model::open(&folder.join("eval.safetensors")).unwrap();
        let (inputs, shape) = net::f32_values(&eval, "inputs").unwrap();
        assert_eq!(shape, [vec![net::EVAL_LEN], net.input_shape.clone()].concat());
        assert_eq!(inputs, data.inputs(&data.split.eval));
        let labels: Vec<usize> = i64_values(&eval, "labels").into_iter().map(|l| l as usize).collect();
        assert_eq!(labels, data.labels_of(&data.split.eval));
        let calib = Model::open(&folder.join("calib.safetensors")).unwrap();
        let (calib_inputs, calib_shape) = net::f32_values(&calib, "inputs").unwrap();
        assert_eq!(calib_shape, [vec![net::CALIB_LEN], net.input_shape.clone()].concat());
        assert_eq!(calib_inputs, data.inputs(&data.split.calib));

        let correct = net.correct(&inputs, &labels);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["training"]["eval_correct"], correct, "{}", arch.folder());
        assert_eq!(config["training"]["eval_total"], labels.len());
        let accuracy = correct as f64 / labels.len() as f64;
        let figure = format!("{:.2}% ({correct}/{})", 100.0 * accuracy, labels.len());
        let line = readme.lines().find(|l| l.contains(&format!("`{}`", arch.folder())) && l.contains('%'));
        assert!(line.is_some_and(|l| l.contains(&figure)), "README line for {} should say {figure}", arch.folder());
        let min = if arch == Arch::Mlp { MLP_MIN_ACCURACY } else { CNN_MIN_ACCURACY };
        assert!(accuracy >= min, "{}: {accuracy}", arch.folder());
    }
}

#[test]
fn training_from_the_committed_seed_beats_the_stated_bar() {
    let data = digits();
    for (arch, epochs) in [(Arch::Mlp, TEST_EPOCHS_MLP), (Arch::Cnn, TEST_EPOCHS_CNN)] {
        let config = net::TrainConfig { epochs, ..arch.train_config() };
        let mut losses = Vec::new();
        let trained = net::train_from_seed(arch, &data, &config, net::TRAIN_SEED, |_, loss| losses.push(loss));
        let accuracy = accuracy(&trained, &data);
        assert!(accuracy > SHORT_TRAINING_MIN_ACCURACY, "{} after {epochs} epochs: {accuracy}", arch.folder());
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "{}: losses {losses:?}", arch.folder());
    }
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let data = digits();
    let config = net::TrainConfig { epochs: 1, ..Arch::Mlp.train_config() };
    let run = |seed| net::train_from_seed(Arch::Mlp, &data, &config, seed, |_, _| {});
    let (first, second, other) = (run(net::TRAIN_SEED), run(net::TRAIN_SEED), run(net::TRAIN_SEED + 1));
    let values = |net: &Net| net.params.iter().flat_map(|p| p.value.iter().map(|v| v.to_bits())).collect::<Vec<_>>();
    assert_eq!(values(&first), values(&second), "same seed, same bits");
    assert_ne!(values(&first), values(&other), "another seed, other weights");
}

#[test]
fn sample_files_stay_under_2_mb() {
    fn size_bytes(path: &Path) -> u64 {
        let meta = std::fs::metadata(path).unwrap();
        if meta.is_dir() {
            std::fs::read_dir(path).unwrap().map(|e| size_bytes(&e.unwrap().path())).sum()
        } else {
            meta.len()
        }
    }
    let total_bytes = size_bytes(&samples_dir());
    assert!(total_bytes < SAMPLES_MAX_BYTES, "sample-models/ holds {total_bytes} bytes");
}

/// A small graph with every op and a strided, padded, rectangular convolution, written as a runtime would find it.
fn small_graph(dir: &Path) -> (serde_json::Value, Model) {
    let graph = serde_json::json!({
        "format": "quantstudio-graph", "version": 1,
        "inputs": [{"name": "x", "dtype": "F32", "shape": [2, 5, 4]}],
        "ops": [
            {"op": "conv2d", "weight": "c.weight", "bias": "c.bias", "stride": [2, 1], "padding": [1, 0]},
            {"op": "relu"},
            {"op": "flatten"},
            {"op": "linear", "weight": "l.weight", "bias": "l.bias"}
        ],
        "outputs": [{"name": "logits", "dtype": "F32", "shape": [4]}]
    });
    // conv out: rows (5 + 2 - 3) / 2 + 1 = 3, cols (4 - 2) / 1 + 1 = 3, 3 channels -> 27.
    let path = dir.join("small.safetensors");
    common::write_model(
        &path,
        &[
            Spec::f32("c.weight", &[3, 2, 3, 2], &common::normal(36, 11, 0.5)),
            Spec::f32("c.bias", &[3], &common::normal(3, 12, 0.1)),
            Spec::f32("l.weight", &[4, 27], &common::normal(108, 13, 0.3)),
            Spec::f32("l.bias", &[4], &common::normal(4, 14, 0.1)),
        ],
    );
    (graph, Model::open(&path).unwrap())
}

#[test]
fn gradients_match_finite_differences() {
    let dir = common::temp_dir();
    let (graph, weights) = small_graph(dir.path());
    let mut net = Net::from_graph(&graph, &weights).unwrap();
    assert_eq!(net.shapes().unwrap().last().unwrap(), &[4]);
    let batch = 3;
    let x = common::normal(batch * 40, 21, 1.0);
    let labels = [0, 3, 1];
    net.loss_and_gradients(&x, &labels);
    let analytic: Vec<Vec<f32>> = net.params.iter().map(|p| p.grad.clone()).collect();
    for (p, grads) in analytic.iter().enumerate() {
        let largest = grads.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        for (i, &g) in grads.iter().enumerate() {
            let value = net.params[p].value[i];
            net.params[p].value[i] = value + FD_STEP;
            let up = net.loss_and_gradients(&x, &labels);
            net.params[p].value[i] = value - FD_STEP;
            let down = net.loss_and_gradients(&x, &labels);
            net.params[p].value[i] = value;
            let numeric = (up - down) / (2.0 * FD_STEP);
            let error = (numeric - g).abs() / largest;
            assert!(error < FD_MAX_REL_ERROR, "{}[{i}]: analytic {g}, numeric {numeric}", net.params[p].name);
        }
    }
}

#[test]
fn model_json_with_unknown_ops_or_misfitting_tensors_is_refused() {
    let dir = common::temp_dir();
    let (graph, weights) = small_graph(dir.path());
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut g = graph.clone();
        edit(&mut g);
        Net::from_graph(&g, &weights).err().unwrap_or_default()
    };
    assert!(with(&|g| g["ops"][1]["op"] = "maxpool".into()).contains("unknown op"));
    // The studio runs GELU, but the training program has no gradient for it.
    assert!(with(&|g| g["ops"][1]["op"] = "gelu".into()).contains("cannot be trained"));
    assert!(with(&|g| g["ops"][0]["groups"] = 2.into()).contains("cannot be trained"));
    assert!(with(&|g| g["version"] = 2.into()).contains("version"));
    assert!(with(&|g| g["ops"][0]["dilation"] = serde_json::json!([2, 2])).contains("unknown key"));
    assert!(with(&|g| g["inputs"][0]["shape"] = serde_json::json!([2, 8, 4])).contains("linear"));
    assert!(with(&|g| g["ops"][0]["weight"] = "l.weight".into()).contains("conv2d"));
    assert!(with(&|g| g["ops"][3]["bias"] = "missing.bias".into()).contains("no tensor"));
    assert!(with(&|g| g["outputs"][0]["shape"] = serde_json::json!([5])).contains("output"));
}
