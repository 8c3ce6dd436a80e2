//! Hostile input: sizes from untrusted bytes, broken networks, unknown keys; each refusal names its file.

use std::path::{Path, PathBuf};

use quantstudio::quant::Recipe;
use safetensors::Dtype;

use crate::common::{Spec, run_cli, temp_dir, write_model};

#[test]
fn recipe_typos_are_errors_naming_key_file_and_closest_key() {
    let origin = Path::new("typo.recipe.json");
    let top = r#"{"format":"quantstudio-recipe","version":1,"rule":[]}"#;
    let message = Recipe::from_json(top, origin).unwrap_err().to_string();
    assert!(
        message.contains("\"rule\"") && message.contains("\"rules\"") && message.contains("typo.recipe.json"),
        "{message}"
    );
    let nested = r#"{"format":"quantstudio-recipe","version":1,"default":{"precision":"int8","symetric":false}}"#;
    let message = Recipe::from_json(nested, origin).unwrap_err().to_string();
    assert!(message.contains("\"symetric\"") && message.contains("\"symmetric\""), "{message}");
    let rule = r#"{"format":"quantstudio-recipe","version":1,"rules":[{"pattern":"*","precision":"fp16","granularty":"per_tensor"}]}"#;
    assert!(Recipe::from_json(rule, origin).is_err());
    let good =
        r#"{"format":"quantstudio-recipe","version":1,"rules":[{"pattern":"*","precision":"int8","symmetric":false}]}"#;
    assert!(Recipe::from_json(good, origin).is_ok());
}

#[test]
fn zero_element_tensor_with_huge_first_dim_is_inspected_without_allocating_by_it() {
    let dir = temp_dir();
    let file = dir.path().join("empty.safetensors");
    write_model(&file, &[Spec::f32("layer.weight", &[1 << 40, 0], &[]), Spec::f32("other.weight", &[2, 2], &[1.0; 4])]);
    let (code, _stdout, stderr) = run_cli(&["inspect", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn bench_size_arguments_above_their_limits_are_refused_by_name() {
    for (flag, value) in [("--repeat", "4611686018427387904"), ("--batch", "1099511627776"), ("--past", "1000000000")] {
        let (code, _stdout, stderr) = run_cli(&["bench", "no-such-folder", flag, value]);
        assert_ne!(code, 0);
        assert!(stderr.contains(flag), "{stderr}");
    }
}

/// Copies every file of a folder (`sample-models/NAME` or `tests/fixtures/NAME`) into `dir/NAME`.
fn copy_folder(from: &Path, dir: &Path) -> PathBuf {
    let folder = dir.join(from.file_name().expect("folder name"));
    std::fs::create_dir(&folder).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list folder") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, folder.join(path.file_name().expect("file name"))).expect("copy file");
    }
    folder
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models").join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs the CLI, expecting a refusal: exit code 2 and one line on stderr, which is returned.
fn refusal(args: &[&str]) -> String {
    let (code, _stdout, stderr) = run_cli(args);
    assert_eq!(code, 2, "{args:?} must be refused with code 2: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} must print one line: {stderr}");
    stderr.trim_end().to_owned()
}

/// `eval --precision int8` of a model folder on a data file.
fn eval_args<'a>(folder: &'a Path, data: &'a Path) -> [&'a str; 6] {
    ["eval", utf8(folder), "--precision", "int8", "--data", utf8(data)]
}

/// The digits MLP sample copied into `dir`, its model.json edited by `edit`; returns the folder.
fn mlp_with_graph(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let folder = copy_folder(&sample("digits-mlp"), dir);
    let path = folder.join("model.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read model.json")).expect("model.json is json");
    edit(&mut doc);
    std::fs::write(&path, doc.to_string()).expect("write model.json");
    folder
}

#[test]
fn model_json_unknown_keys_are_refused_naming_file_key_place_and_closest_key() {
    type Edit = dyn Fn(&mut serde_json::Value);
    let cases: [(&str, &Edit, [&str; 3]); 4] = [
        ("top", &|doc| doc["opps"] = doc["ops"].clone(), ["\"opps\"", "the document", "\"ops\""]),
        ("node", &|doc| doc["ops"][2]["baias"] = "fc2.bias".into(), ["\"baias\"", "op 2 (linear)", "\"bias\""]),
        ("input", &|doc| doc["inputs"][0]["shap"] = serde_json::json!([64]), ["\"shap\"", "inputs[0]", "\"shape\""]),
        ("output", &|doc| doc["outputs"][0]["dtpye"] = "F32".into(), ["\"dtpye\"", "outputs[0]", "\"dtype\""]),
    ];
    for (name, edit, needles) in cases {
        let dir = temp_dir();
        let folder = mlp_with_graph(dir.path(), edit);
        let message = refusal(&eval_args(&folder, &sample("digits-mlp/eval.safetensors")));
        assert!(message.contains("model.json") && !message.contains("config.json"), "{name}: {message}");
        for needle in needles {
            assert!(message.contains(needle), "{name}: {message} lacks {needle}");
        }
    }
    // The free-text `description` of an input is a key of the format, and a sample with one still runs.
    let dir = temp_dir();
    let folder = mlp_with_graph(dir.path(), |doc| doc["inputs"][0]["description"] = "grey levels".into());
    let (code, _stdout, stderr) = run_cli(&eval_args(&folder, &sample("digits-mlp/eval.safetensors")));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn model_json_unknown_op_names_the_closest_op() {
    let dir = temp_dir();
    let folder = mlp_with_graph(dir.path(), |doc| doc["ops"][1]["op"] = "rellu".into());
    let message = refusal(&eval_args(&folder, &sample("digits-mlp/eval.safetensors")));
    assert!(message.contains("op 1") && message.contains("\"rellu\"") && message.contains("\"relu\""), "{message}");
}

#[test]
fn model_json_errors_name_model_json_not_config_json() {
    let dir = temp_dir();
    let folder = copy_folder(&sample("digits-mlp"), dir.path());
    let graph = folder.join("model.json");
    std::fs::write(&graph, "{not json").expect("write model.json");
    let message = refusal(&eval_args(&folder, &sample("digits-mlp/eval.safetensors")));
    assert!(message.contains("model.json") && !message.contains("config.json"), "{message}");
    // A graph named otherwise is named by its own name.
    std::fs::write(folder.join("chain.json"), "[]").expect("write chain.json");
    std::fs::write(folder.join("config.json"), r#"{"graph": "chain.json"}"#).expect("write config.json");
    let message = refusal(&eval_args(&folder, &sample("digits-mlp/eval.safetensors")));
    assert!(message.ends_with("chain.json") && !message.contains("config.json"), "{message}");
}

#[test]
fn graph_path_outside_the_model_folder_is_refused_naming_config_field_and_resolved_path() {
    let dir = temp_dir();
    let folder = copy_folder(&sample("digits-mlp"), dir.path());
    // A valid graph outside the folder, which the model would run if it were read.
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir(&outside).expect("mkdir");
    let foreign = outside.join("model.json");
    std::fs::copy(sample("digits-mlp/model.json"), &foreign).expect("copy graph");
    let foreign_resolved = foreign.canonicalize().expect("canonical");
    let data = sample("digits-mlp/eval.safetensors");
    let config = folder.join("config.json");
    let names = [
        serde_json::Value::from(utf8(&foreign)),
        serde_json::Value::from("../elsewhere/model.json"),
        serde_json::Value::from("/etc/passwd"),
    ];
    for name in names {
        std::fs::write(&config, serde_json::json!({ "graph": name }).to_string()).expect("write config.json");
        let message = refusal(&eval_args(&folder, &data));
        assert!(
            message.contains("\"graph\"")
                && message.contains("outside the model folder")
                && message.ends_with(utf8(&config)),
            "{name}: {message}"
        );
        let resolved = if name == "/etc/passwd" { "/etc/passwd" } else { utf8(&foreign_resolved) };
        assert!(message.contains(resolved), "{name}: {message}");
    }
    // Inside the folder, a subfolder and a name with `..` that stays inside are fine.
    std::fs::create_dir(folder.join("graphs")).expect("mkdir");
    std::fs::copy(sample("digits-mlp/model.json"), folder.join("graphs/chain.json")).expect("copy graph");
    for name in ["graphs/chain.json", "graphs/../model.json"] {
        std::fs::write(&config, serde_json::json!({ "graph": name }).to_string()).expect("write config.json");
        let (code, _stdout, stderr) = run_cli(&eval_args(&folder, &data));
        assert_eq!(code, 0, "{name}: {stderr}");
    }
}

#[cfg(unix)]
#[test]
fn graph_path_symlink_leading_outside_the_model_folder_is_refused() {
    let dir = temp_dir();
    let folder = copy_folder(&sample("digits-mlp"), dir.path());
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir(&outside).expect("mkdir");
    let foreign = outside.join("model.json");
    std::fs::copy(sample("digits-mlp/model.json"), &foreign).expect("copy graph");
    std::os::unix::fs::symlink(&foreign, folder.join("linked.json")).expect("symlink");
    let config = folder.join("config.json");
    std::fs::write(&config, r#"{"graph": "linked.json"}"#).expect("write config.json");
    let data = sample("digits-mlp/eval.safetensors");
    let message = refusal(&eval_args(&folder, &data));
    let resolved = foreign.canonicalize().expect("canonical");
    assert!(
        message.contains("\"graph\"") && message.contains(utf8(&resolved)) && message.ends_with(utf8(&config)),
        "{message}"
    );
    // A symlinked folder on the way out is followed too.
    std::os::unix::fs::symlink(&outside, folder.join("linked-folder")).expect("symlink");
    std::fs::write(&config, r#"{"graph": "linked-folder/model.json"}"#).expect("write config.json");
    let message = refusal(&eval_args(&folder, &data));
    assert!(message.contains(utf8(&resolved)) && message.ends_with(utf8(&config)), "{message}");
    // A symlink that stays inside the folder is fine.
    std::os::unix::fs::symlink(folder.join("model.json"), folder.join("alias.json")).expect("symlink");
    std::fs::write(&config, r#"{"graph": "alias.json"}"#).expect("write config.json");
    let (code, _stdout, stderr) = run_cli(&eval_args(&folder, &data));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn recipe_errors_found_against_the_model_name_the_recipe_file() {
    let dir = temp_dir();
    let model = sample("digits-mlp");
    let recipe = dir.path().join("plan.recipe.json");
    let cases = [
        (r#"{"format":"quantstudio-recipe","version":1,"layers":{"fc9":{"precision":"int8"}}}"#, "fc9"),
        (r#"{"format":"quantstudio-recipe","version":1,"rules":[{"pattern":"[fc","precision":"int8"}]}"#, "rule 0"),
        (
            r#"{"format":"quantstudio-recipe","version":1,"default":{"precision":"int8","activations":"int8"}}"#,
            "calibrate",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&recipe, text).expect("write recipe");
        let data = sample("digits-mlp/eval.safetensors");
        let message = refusal(&["eval", utf8(&model), "--recipe", utf8(&recipe), "--data", utf8(&data)]);
        assert!(message.contains(needle) && message.ends_with(utf8(&recipe)), "{message}");
    }
    std::fs::write(&recipe, cases[0].0).expect("write recipe");
    let message = refusal(&["quantize", utf8(&model), "--recipe", utf8(&recipe)]);
    assert!(message.contains("fc9") && message.ends_with(utf8(&recipe)), "{message}");
}

#[test]
fn data_that_does_not_fit_the_model_is_refused_naming_the_data_file() {
    let dir = temp_dir();
    // Samples of another shape, and token ids given to a graph.
    let mlp = sample("digits-mlp");
    let cnn_data = sample("digits-cnn/eval.safetensors");
    let message = refusal(&eval_args(&mlp, &cnn_data));
    assert!(message.contains("[1, 8, 8]") && message.ends_with(utf8(&cnn_data)), "{message}");
    let ids = dir.path().join("ids.safetensors");
    let values: Vec<u8> = [1i64, 2, 3, 4, 99_999, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_model(&ids, &[Spec::raw("input_ids", Dtype::I64, &[2, 3], values)]);
    let message = refusal(&eval_args(&mlp, &ids));
    assert!(message.contains("token sequences") && message.ends_with(utf8(&ids)), "{message}");
    // A token id outside the vocabulary names the sample and the file, in every command that runs data.
    let llama = fixture("tiny-llama");
    let commands: [&[&str]; 4] = [
        &eval_args(&llama, &ids),
        &["calibrate", utf8(&llama), "--data", utf8(&ids), "--no-cache"],
        &["sensitivity", utf8(&llama), "--data", utf8(&ids)],
        &["bench", utf8(&llama), "--precision", "int8", "--data", utf8(&ids), "--repeat", "1"],
    ];
    for args in commands {
        let message = refusal(args);
        assert!(
            message.contains("sample 1") && message.contains("99999") && message.ends_with(utf8(&ids)),
            "{args:?}: {message}"
        );
    }
    // Samples given to a token model.
    let message = refusal(&eval_args(&llama, &sample("digits-mlp/eval.safetensors")));
    assert!(message.ends_with("eval.safetensors"), "{message}");
}

#[test]
fn tensors_the_architecture_lacks_or_misshapes_name_their_file() {
    let dir = temp_dir();
    let data = sample("digits-mlp/eval.safetensors");
    let folder = mlp_with_graph(dir.path(), |doc| doc["ops"][0]["weight"] = "fc9.weight".into());
    let message = refusal(&eval_args(&folder, &data));
    assert!(message.contains("\"fc9.weight\"") && message.ends_with(utf8(&folder)), "{message}");
    std::fs::remove_dir_all(&folder).expect("clean");
    let folder = mlp_with_graph(dir.path(), |doc| doc["ops"][0]["bias"] = "fc2.bias".into());
    let message = refusal(&eval_args(&folder, &data));
    assert!(
        message.contains("\"fc2.bias\"") && message.ends_with(utf8(&folder.join("model.safetensors"))),
        "{message}"
    );
}

#[test]
fn config_json_field_errors_name_the_model_folders_config_json() {
    let dir = temp_dir();
    let folder = copy_folder(&fixture("tiny-llama"), dir.path());
    let config = folder.join("config.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read config")).expect("config is json");
    doc["hidden_size"] = "wide".into();
    std::fs::write(&config, doc.to_string()).expect("write config");
    let message = refusal(&eval_args(&folder, &folder.join("inputs.txt")));
    assert!(message.contains("hidden_size") && message.ends_with(utf8(&config)), "{message}");
    // Found while binding the weights: no lm_head and untied embeddings.
    doc["hidden_size"] = 32.into();
    doc["tie_word_embeddings"] = false.into();
    std::fs::write(&config, doc.to_string()).expect("write config");
    let weights = quantstudio::model::Model::open(&folder).expect("open fixture");
    let specs: Vec<Spec> = weights
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name != "lm_head.weight")
        .map(|(i, t)| {
            let id = quantstudio::model::TensorId(i);
            Spec::raw(&t.name, Dtype::F32, &t.shape, weights.tensor_bytes(id).to_vec())
        })
        .collect();
    drop(weights);
    write_model(&folder.join("model.safetensors"), &specs);
    let message = refusal(&eval_args(&folder, &folder.join("inputs.txt")));
    assert!(message.contains("lm_head") && message.ends_with(utf8(&config)), "{message}");
}
