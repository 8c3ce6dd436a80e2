//! Trains the digits sample models and writes them as sample-models/digits-mlp and sample-models/digits-cnn.
//!
//! ```text
//! cargo run --release --example train_digits -- [--epochs N] [--seed S] [--out DIR] [--data FILE] [--only mlp|cnn]
//! ```
//!
//! Reads the committed data file (sample-models/digits-data/digits.safetensors, made by tools/fixtures/make_digits_data.py),
//! checks that its split is the documented one, trains each network on the training split with the seed, and
//! writes per model: model.safetensors (F32 weights), model.json (the op list, docs/MODEL-JSON.md), config.json,
//! calib.safetensors (the 128 calibration inputs) and eval.safetensors (the evaluation inputs and labels).
//! Without options it reproduces the committed files bit for bit.

mod net;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use net::{Arch, Digits, Net, TrainConfig};
use quantstudio::model::DType;
use quantstudio::model::writer::{PlannedTensor, TensorFileWriter, write_atomically};

const USAGE: &str = "usage: train_digits [--epochs N] [--seed S] [--out DIR] [--data FILE] [--only mlp|cnn]  (defaults: each model's \
     own epochs, seed 1, out <repo>/sample-models, data <repo>/sample-models/digits-data/digits.safetensors)";

/// The command that made the committed files, recorded in config.json.
const COMMAND: &str = "cargo run --release --example train_digits";

struct Args {
    epochs: Option<usize>,
    seed: u64,
    out: PathBuf,
    data: PathBuf,
    only: Option<Arch>,
}

/// The options, or `None` for `--help`.
fn parse_args() -> Result<Option<Args>, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args = Args {
        epochs: None,
        seed: net::TRAIN_SEED,
        out: repo.join("sample-models"),
        data: repo.join("sample-models/digits-data/digits.safetensors"),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |_| format!("bad value {value:?} for {flag}\n{USAGE}");
        match flag.as_str() {
            "--epochs" => args.epochs = Some(value.parse().map_err(bad)?),
            "--seed" => args.seed = value.parse().map_err(bad)?,
            "--out" => args.out = value.into(),
            "--data" => args.data = value.into(),
            "--only" => {
                args.only = Some(match value.as_str() {
                    "mlp" => Arch::Mlp,
                    "cnn" => Arch::Cnn,
                    _ => return Err(format!("--only takes mlp or cnn\n{USAGE}")),
                })
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| match args {
        Some(args) => run(&args),
        None => {
            println!("{USAGE}");
            Ok(())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("train_digits: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let data = Digits::load(&args.data)?;
    let documented = net::stratified_split(&data.labels, net::SPLIT_SEED, net::EVAL_LEN, net::CALIB_LEN);
    if data.split != documented {
        return Err(format!("the split in {} is not the documented one", args.data.display()));
    }
    println!(
        "data: {} images; train {}, calibration {}, evaluation {}",
        data.labels.len(),
        data.split.train.len(),
        data.split.calib.len(),
        data.split.eval.len()
    );
    for arch in Arch::ALL.into_iter().filter(|a| args.only.is_none_or(|only| only == *a)) {
        let mut config = arch.train_config();
        if let Some(epochs) = args.epochs {
            config.epochs = epochs;
        }
        let started = Instant::now();
        let net = net::train_from_seed(arch, &data, &config, args.seed, |epoch, loss| {
            if epoch == 1 || epoch % 10 == 0 || epoch == config.epochs {
                println!("{}: epoch {epoch:>3}/{}  train loss {loss:.4}", arch.folder(), config.epochs);
            }
        });
        let elapsed_secs = started.elapsed().as_secs_f64();
        let eval_x = data.inputs(&data.split.eval);
        let eval_labels = data.labels_of(&data.split.eval);
        let correct = net.correct(&eval_x, &eval_labels);
        let accuracy = correct as f64 / eval_labels.len() as f64;
        let folder = args.out.join(arch.folder());
        std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        write_model(&folder, arch, &net, &config, args.seed, correct, eval_labels.len())?;
        write_splits(&folder, &net, &data)?;
        check_written(&folder, correct)?;
        println!(
            "{}: {} parameters, FP32 eval accuracy {:.2}% ({correct}/{}), trained in {elapsed_secs:.1} s -> {}",
            arch.folder(),
            net.parameter_count(),
            100.0 * accuracy,
            eval_labels.len(),
            folder.display()
        );
    }
    Ok(())
}

/// Reads the folder back as a runtime would (model.json + model.safetensors + eval.safetensors) and checks that it
/// classifies the evaluation split as the trained network did.
fn check_written(folder: &Path, correct: usize) -> Result<(), String> {
    let text = std::fs::read_to_string(folder.join("model.json")).map_err(|e| e.to_string())?;
    let graph: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let weights = quantstudio::Model::open(&folder.join("model.safetensors")).map_err(|e| e.to_string())?;
    let net = Net::from_graph(&graph, &weights)?;
    let eval = quantstudio::Model::open(&folder.join("eval.safetensors")).map_err(|e| e.to_string())?;
    let (inputs, _) = net::f32_values(&eval, "inputs")?;
    let (labels, _) = net::tensor_data(&eval, "labels", DType::I64)?;
    let labels: Vec<usize> =
        labels.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()) as usize).collect();
    let reread = net.correct(&inputs, &labels);
    if reread != correct {
        return Err(format!("the written model classifies {reread} correctly, not {correct}: {}", folder.display()));
    }
    Ok(())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write_tensors(
    path: &Path,
    tensors: &[(&str, DType, Vec<usize>, Vec<u8>)],
    metadata: &[(&str, &str)],
) -> Result<(), String> {
    let planned = tensors
        .iter()
        .map(|(name, dtype, shape, _)| PlannedTensor { name: (*name).into(), dtype: *dtype, shape: shape.clone() })
        .collect();
    let metadata: BTreeMap<String, String> = metadata.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let mut writer = TensorFileWriter::create(path, planned, &metadata).map_err(|e| e.to_string())?;
    for (name, _, _, bytes) in tensors {
        writer.write_tensor(name, bytes).map_err(|e| e.to_string())?;
    }
    writer.finish().map(|_| ()).map_err(|e| e.to_string())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    text.push('\n');
    write_atomically(path, text.as_bytes()).map_err(|e| e.to_string())
}

fn write_model(
    folder: &Path,
    arch: Arch,
    net: &Net,
    config: &TrainConfig,
    seed: u64,
    correct: usize,
    total: usize,
) -> Result<(), String> {
    let tensors: Vec<_> =
        net.params.iter().map(|p| (p.name.as_str(), DType::F32, p.shape.clone(), f32_bytes(&p.value))).collect();
    write_tensors(&folder.join("model.safetensors"), &tensors, &[("format", "pt")])?;
    let description = match arch {
        Arch::Mlp => "8x8 digit image, row-major, grey level / 16 in [0, 1]",
        Arch::Cnn => "8x8 digit image as [channel, row, column], grey level / 16 in [0, 1]",
    };
    let graph = net.graph_text(description);
    write_atomically(&folder.join("model.json"), graph.as_bytes()).map_err(|e| e.to_string())?;
    let (architecture, model_type) = match arch {
        Arch::Mlp => ("DigitsMlp", "quantstudio-digits-mlp"),
        Arch::Cnn => ("DigitsCnn", "quantstudio-digits-cnn"),
    };
    let config_json = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "num_labels": net::CLASSES,
        "torch_dtype": "float32",
        "graph": "model.json",
        "training": {
            "data": "sample-models/digits-data/digits.safetensors",
            "seed": seed,
            "epochs": config.epochs,
            "batch_size": config.batch,
            "optimizer": "adam",
            "learning_rate": config.learning_rate,
            "learning_rate_schedule": "linear to zero",
            "eval_correct": correct,
            "eval_total": total,
            "command": COMMAND,
        },
    });
    write_json(&folder.join("config.json"), &config_json)
}

/// calib.safetensors and eval.safetensors: `inputs` shaped [N, ..input shape], `labels` I64 [N].
fn write_splits(folder: &Path, net: &Net, data: &Digits) -> Result<(), String> {
    let shape = |n: usize| [vec![n], net.input_shape.clone()].concat();
    let calib = &data.split.calib;
    let source = "sample-models/digits-data/digits.safetensors";
    write_tensors(
        &folder.join("calib.safetensors"),
        &[("inputs", DType::F32, shape(calib.len()), f32_bytes(&data.inputs(calib)))],
        &[("split", "calibration"), ("source", source), ("input", &net.input_name)],
    )?;
    let eval = &data.split.eval;
    let labels: Vec<u8> = data.labels_of(eval).iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
    write_tensors(
        &folder.join("eval.safetensors"),
        &[
            ("inputs", DType::F32, shape(eval.len()), f32_bytes(&data.inputs(eval))),
            ("labels", DType::I64, vec![eval.len()], labels),
        ],
        &[("split", "evaluation"), ("source", source), ("input", &net.input_name)],
    )
}
