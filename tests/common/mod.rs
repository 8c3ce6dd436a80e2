//! Tiny checkpoints written by the tests themselves (no network, no large files).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub struct Spec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Spec {
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Spec {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Spec { name: name.into(), dtype: Dtype::F32, shape: shape.to_vec(), bytes: f32_bytes(values) }
    }

    pub fn raw(name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Spec {
        Spec { name: name.into(), dtype, shape: shape.to_vec(), bytes }
    }
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises tensors with the reference safetensors crate.
pub fn safetensors_bytes(specs: &[Spec], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = specs
        .iter()
        .map(|s| (s.name.clone(), TensorView::new(s.dtype, s.shape.clone(), &s.bytes).expect("valid test tensor")))
        .collect();
    safetensors::serialize(views, metadata).expect("serialise test model")
}

pub fn write_model(path: &Path, specs: &[Spec]) {
    std::fs::write(path, safetensors_bytes(specs, None)).expect("write test model");
}

/// Deterministic values ~ N(0, std) (xorshift + Box-Muller), so tests are seeded.
pub fn normal(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut rng = quantstudio::seeded::XorShift64::new(seed);
    let mut uniform = move || rng.next_open_unit();
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
        })
        .collect()
}

/// A temp folder that lives as long as the value.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("quantstudio-test").tempdir().expect("temp dir")
}

/// The tensors of the bundled tiny sample (`sample-models/tiny-llm`): a one-block decoder-shaped model with
/// embeddings, attention and MLP projections (one with a bias), norms, a tied-size head and an integer buffer.
pub fn tiny_sample_specs() -> Vec<Spec> {
    let hidden = 64;
    let vocab = 256;
    let ffn = 128;
    let mut seed = 0;
    let mut weight = |name: &str, shape: &[usize]| {
        seed += 1;
        let n = shape.iter().product();
        let std = 1.0 / (shape[shape.len() - 1] as f32).sqrt();
        let mut values = normal(n, seed, std);
        // A few outliers, as real checkpoints have, so that per-channel and per-tensor differ.
        for i in (0..n).step_by(997) {
            values[i] *= 8.0;
        }
        Spec::f32(name, shape, &values)
    };
    let mut specs = vec![
        weight("model.embed_tokens.weight", &[vocab, hidden]),
        weight("model.layers.0.self_attn.q_proj.weight", &[hidden, hidden]),
        weight("model.layers.0.self_attn.k_proj.weight", &[hidden, hidden]),
        weight("model.layers.0.self_attn.v_proj.weight", &[hidden, hidden]),
        weight("model.layers.0.self_attn.o_proj.weight", &[hidden, hidden]),
        weight("model.layers.0.mlp.up_proj.weight", &[ffn, hidden]),
        weight("model.layers.0.mlp.down_proj.weight", &[hidden, ffn]),
        weight("lm_head.weight", &[vocab, hidden]),
    ];
    specs.push(Spec::f32("model.layers.0.mlp.up_proj.bias", &[ffn], &normal(ffn, 99, 0.1)));
    let ones: Vec<f32> = normal(hidden, 100, 0.05).iter().map(|v| 1.0 + v).collect();
    specs.push(Spec::f32("model.layers.0.input_layernorm.weight", &[hidden], &ones));
    specs.push(Spec::f32("model.layers.0.post_attention_layernorm.weight", &[hidden], &ones));
    specs.push(Spec::f32("model.norm.weight", &[hidden], &ones));
    let positions: Vec<u8> = (0..16i64).flat_map(|p| p.to_le_bytes()).collect();
    specs.push(Spec::raw("model.position_ids", Dtype::I64, &[1, 16], positions));
    specs
}

pub const TINY_SAMPLE_CONFIG: &str = r#"{
  "architectures": ["TinyDemoForCausalLM"],
  "model_type": "tiny-demo",
  "hidden_size": 64,
  "intermediate_size": 128,
  "num_hidden_layers": 1,
  "vocab_size": 256,
  "torch_dtype": "float32"
}
"#;

/// Writes the tiny sample as a Hugging Face folder.
pub fn write_tiny_sample(folder: &Path) {
    std::fs::create_dir_all(folder).expect("sample folder");
    write_model(&folder.join("model.safetensors"), &tiny_sample_specs());
    std::fs::write(folder.join("config.json"), TINY_SAMPLE_CONFIG).expect("config");
}

/// The committed sample folder.
pub fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models/tiny-llm")
}

/// Runs the CLI binary; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_quantstudio")).args(args).output().expect("run quantstudio");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every file under `dir` with its bytes, to prove that nothing was written.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}
