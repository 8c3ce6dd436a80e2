use serde_json::Value;

use crate::common::{self, run_cli};

fn sample() -> String {
    common::bundled_sample().display().to_string()
}

#[test]
fn inspect_json_lists_every_tensor_with_stats() {
    let (code, stdout, stderr) = run_cli(&["inspect", &sample(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    let tensors = doc["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 13);
    for t in tensors {
        assert!(t["name"].is_string() && t["dtype"].is_string() && t["shape"].is_array(), "{t}");
        assert!(t["size_bytes"].is_u64());
    }
    let ids = tensors.iter().find(|t| t["name"] == "model.position_ids").unwrap();
    assert_eq!(ids["dtype"], "I64");
    assert_eq!(ids["analysed"], false);
    let q = tensors.iter().find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight").unwrap();
    assert!(q["stats"]["std"].as_f64().unwrap() > 0.0);
}

#[test]
fn quantize_json_has_error_figures_and_sizes() {
    let (code, stdout, stderr) = run_cli(&["quantize", &sample(), "--precision", "int8", "--per-channel", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    // The shortcut quantizes the linear layers (half of this model), not the embedding table or the head.
    assert!(doc["planned_bytes"].as_u64().unwrap() < doc["size_bytes"].as_u64().unwrap() * 2 / 3);
    // Every layer is one the runtimes load; the synthetic architecture itself is not one transformers knows.
    assert_eq!(doc["compatibility"]["layers"], serde_json::json!([]), "{}", doc["compatibility"]);
    assert!(doc["compatibility"]["model_refusal"].as_str().unwrap().contains("tiny-demo"));
    assert!(doc["coverage"].as_str().unwrap().contains("int8 sym per-channel: 6 linear"), "{}", doc["coverage"]);
    let tensors = doc["tensors"].as_array().unwrap();
    let q = tensors.iter().find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q["precision"], "int8");
    assert_eq!(q["granularity"], "per_channel");
    for key in ["mse", "max_abs_error", "sqnr_db"] {
        assert!(q[key].as_f64().is_some_and(f64::is_finite), "{key}: {q}");
    }
    let norm = tensors.iter().find(|t| t["name"] == "model.norm.weight").unwrap();
    assert_eq!(norm["precision"], "fp32");
    assert!(norm["sqnr_db"].is_null(), "lossless is null, never inf");
    assert_eq!(norm["lossless"], true);
}

#[test]
fn quantize_exports_with_dash_o_and_recipe_round_trips() {
    let dir = common::temp_dir();
    let (code, recipe, stderr) = run_cli(&["recipe", &sample()]);
    assert_eq!(code, 0, "{stderr}");
    let recipe_path = dir.path().join("r.json");
    std::fs::write(&recipe_path, recipe).unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = run_cli(&[
        "quantize",
        &sample(),
        "--recipe",
        recipe_path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("exported to"), "{stdout}");
    assert!(out.join("model.safetensors").is_file() && out.join("config.json").is_file());
}

#[test]
fn bad_input_exits_2_with_one_line_naming_the_file() {
    let dir = common::temp_dir();
    let bad = dir.path().join("broken.safetensors");
    std::fs::write(&bad, b"\x05\x00\x00").unwrap();
    for args in [vec!["inspect", bad.to_str().unwrap()], vec!["quantize", bad.to_str().unwrap(), "--precision", "fp16"]]
    {
        let (code, stdout, stderr) = run_cli(&args);
        assert_eq!(code, 2);
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("broken.safetensors") && stderr.contains("too short"), "{stderr}");
    }
    let recipe = dir.path().join("r.json");
    std::fs::write(&recipe, r#"{"version":1,"layers":{"no.such.layer":{"precision":"fp16"}}}"#).unwrap();
    let (code, _, stderr) = run_cli(&["quantize", &sample(), "--recipe", recipe.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no.such.layer"), "{stderr}");
}

#[test]
fn quantize_refuses_an_export_its_runtimes_will_not_load_unless_forced() {
    let dir = common::temp_dir();
    let bert = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let recipe = dir.path().join("everything.json");
    let everything =
        r#"{"version":1,"default":{"precision":"int8","granularity":"per_channel"},"default_scope":"all"}"#;
    std::fs::write(&recipe, everything).unwrap();
    let out = dir.path().join("out");
    let args = ["quantize", bert.to_str().unwrap(), "--recipe", recipe.to_str().unwrap(), "-o", out.to_str().unwrap()];
    let (code, stdout, stderr) = run_cli(&args);
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("word_embeddings") && stderr.contains("fix: fp16") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(stdout.contains("transformers ✗"), "the report says which runtime refuses: {stdout}");
    assert!(!out.exists());
    // --json lists the layers, the runtimes that refuse them and the fix.
    let (code, stdout, _) = run_cli(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 2);
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let layers = doc["compatibility"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{}", doc["compatibility"]);
    assert!(layers.iter().all(|l| l["fix"]["precision"] == "fp16" && l["refusals"].as_array().unwrap().len() == 2));
    assert_eq!(doc["compatibility"]["loads_in"]["vllm"], false);
    // --force writes it, and says what will not load.
    let (code, stdout, stderr) = run_cli(&[&args[..], &["--force"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("warning: 3 layers") && stdout.contains("exported to"), "{stdout}");
}

/// A text for `eval --perplexity` on the tiny Llama fixture: its sample lines, several times over.
fn perplexity_text(dir: &std::path::Path, repeats: usize) -> String {
    let lines = std::fs::read_to_string(fixture_llama().join("inputs.txt")).unwrap();
    let path = dir.join("text.txt");
    std::fs::write(&path, lines.repeat(repeats)).unwrap();
    path.display().to_string()
}

fn fixture_llama() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn perplexity_json(text: &str, plan: &[&str]) -> Value {
    let model = fixture_llama().display().to_string();
    let mut args = vec!["eval", &model, "--perplexity", text, "--ctx", "16", "--chunks", "5", "--json"];
    args.extend_from_slice(plan);
    let (code, stdout, stderr) = run_cli(&args);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("stdout is one JSON document")
}

#[test]
fn eval_perplexity_chunks_scores_and_compares_like_llama_perplexity() {
    let dir = common::temp_dir();
    let text = perplexity_text(dir.path(), 3);
    let fp32 = perplexity_json(&text, &["--precision", "fp32"]);
    // 16-token chunks score positions 8..=14: 7 tokens each; the tokenizer adds <s> (id 1) before each chunk.
    assert_eq!(fp32["chunks"], 5, "{fp32}");
    assert_eq!(fp32["scored_tokens"], 35);
    assert_eq!(fp32["bos_token"], 1);
    assert!(fp32["text_tokens"].as_u64().unwrap() >= 80);
    let ppl = fp32["fp32_perplexity"]["value"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl.is_finite(), "{fp32}");
    assert!(fp32["fp32_perplexity"]["error"].as_f64().unwrap() > 0.0);
    // An FP32 plan is FP32: same perplexity, no divergence, the same top token everywhere.
    assert_eq!(fp32["plan_perplexity"], fp32["fp32_perplexity"]);
    assert_eq!(fp32["kl_mean"]["value"], 0.0);
    assert_eq!(fp32["kl_p99"], 0.0);
    assert_eq!(fp32["same_top"]["value"], 1.0);

    let int8 = perplexity_json(&text, &["--precision", "int8", "--per-channel"]);
    assert_eq!(int8["fp32_perplexity"], fp32["fp32_perplexity"], "FP32 runs on the same chunks");
    let kl = int8["kl_mean"]["value"].as_f64().unwrap();
    assert!(kl > 0.0 && kl <= int8["kl_p99"].as_f64().unwrap().max(kl), "{int8}");
    assert!(int8["kl_max"].as_f64().unwrap() >= int8["kl_p99"].as_f64().unwrap());
    assert_ne!(int8["plan_perplexity"], fp32["plan_perplexity"]);
    let same = int8["same_top"]["value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&same));
    assert_eq!(int8["plan_nonfinite_positions"], 0);
}

#[test]
fn eval_perplexity_prints_llama_perplexity_lines_and_refuses_short_texts() {
    let dir = common::temp_dir();
    let text = perplexity_text(dir.path(), 3);
    let model = fixture_llama().display().to_string();
    let (code, stdout, stderr) =
        run_cli(&["eval", &model, "--precision", "int8", "--perplexity", &text, "--ctx", "16", "--chunks", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let estimate = stdout.lines().find(|l| l.starts_with("plan  Final estimate: PPL = ")).expect(&stdout);
    // Four decimals, then the ± with five, as llama-perplexity prints its final estimate.
    let figures: Vec<&str> = estimate.rsplit("PPL = ").next().unwrap().split(" +/- ").collect();
    assert_eq!(figures[0].split('.').nth(1).map(str::len), Some(4), "{estimate}");
    assert_eq!(figures[1].split('.').nth(1).map(str::len), Some(5), "{estimate}");
    assert!(stdout.contains("Mean    KLD:") && stdout.contains("Same top p:"), "{stdout}");

    let (code, _, stderr) = run_cli(&["eval", &model, "--precision", "int8", "--perplexity", &text, "--ctx", "512"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("needs at least 1024"), "{stderr}");
    let bert = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert").display().to_string();
    let (code, _, stderr) = run_cli(&["eval", &bert, "--precision", "int8", "--perplexity", &text, "--ctx", "16"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("needs a Llama decoder"), "{stderr}");
}

#[test]
fn int4_takes_a_listed_group_size_and_refuses_flags_that_do_not_apply() {
    let (code, stdout, stderr) =
        run_cli(&["quantize", &sample(), "--precision", "int4", "--group-size", "32", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert!(json["coverage"].as_str().unwrap().contains("int4 sym g32"), "{}", json["coverage"]);
    for (args, expected) in [
        (vec!["--precision", "int4", "--group-size", "48"], "48"),
        (vec!["--precision", "int8", "--group-size", "32"], "--group-size applies to --precision int4 only"),
        (vec!["--precision", "int4", "--per-channel"], "--per-channel applies to int8 only"),
    ] {
        let (code, _, stderr) = run_cli(&[&["quantize", &sample()][..], &args].concat());
        assert_eq!(code, 2, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// `--gptq DATA` on INT4: the per-layer output errors of rounding to nearest and of GPTQ on stderr, GPTQ's
/// mean below rounding's; the export writes GPTQ's codes (not rounding's), the same from a recipe carrying
/// `"gptq"` with a path relative to the recipe; on INT8 too; `--gptq` on another precision is refused.
#[test]
fn gptq_quantizes_int4_layers_on_calibration_data_and_the_export_writes_its_codes() {
    let dir = common::temp_dir();
    let model = fixture_llama().display().to_string();
    let data = fixture_llama().join("inputs.txt").display().to_string();
    let packed = |folder: &std::path::Path| {
        let bytes = std::fs::read(folder.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensor("model.layers.0.mlp.down_proj.weight_packed").unwrap().data().to_vec()
    };
    let export = |name: &str, plan: &[&str]| {
        let out = dir.path().join(name);
        let args = [&["quantize", &model, "-o", out.to_str().unwrap()][..], plan].concat();
        let (code, _, stderr) = run_cli(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        (packed(&out), stderr)
    };
    let (rtn, _) = export("rtn", &["--precision", "int4", "--group-size", "32"]);
    let (gptq, stderr) = export("gptq", &["--precision", "int4", "--group-size", "32", "--gptq", &data]);
    assert!(stderr.contains("GPTQ on") && stderr.contains("model.layers.1.self_attn.q_proj"), "{stderr}");
    let mean: Vec<f64> = stderr
        .lines()
        .find(|l| l.starts_with("mean "))
        .unwrap_or_else(|| panic!("a mean line: {stderr}"))
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(mean[1] < mean[0], "GPTQ's mean output error below rounding's: {mean:?}");
    assert_ne!(gptq, rtn, "the export writes GPTQ's codes");

    let recipe = dir.path().join("recipes").join("gptq.json");
    std::fs::create_dir_all(recipe.parent().unwrap()).unwrap();
    std::fs::copy(fixture_llama().join("inputs.txt"), dir.path().join("recipes/calib.txt")).unwrap();
    let json = r#"{"format": "quantstudio-recipe", "version": 1, "default_scope": "linear",
        "default": {"precision": "int4", "group_size": 32}, "gptq": {"data": "calib.txt", "damp_percent": 1.0}}"#;
    std::fs::write(&recipe, json).unwrap();
    let (from_recipe, _) = export("recipe", &["--recipe", recipe.to_str().unwrap()]);
    assert_eq!(from_recipe, gptq, "the recipe reproduces the run");
    std::fs::write(&recipe, json.replace("damp_percent", "damp")).unwrap();
    let (code, _, stderr) = run_cli(&["quantize", &model, "--recipe", recipe.to_str().unwrap()]);
    assert!(
        code != 0 && stderr.contains("unknown key \"damp\" in \"gptq\"") && stderr.contains("gptq.json"),
        "{stderr}"
    );

    // INT8 per channel: GPTQ on rounding's grid, other codes than rounding's.
    let int8 = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let args =
            [&["quantize", &model, "--precision", "int8", "--per-channel", "-o", out.to_str().unwrap()][..], extra]
                .concat();
        let (code, _, stderr) = run_cli(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        packed(&out)
    };
    assert_ne!(int8("int8-gptq", &["--gptq", &data]), int8("int8-rtn", &[]), "the INT8 export writes GPTQ's codes");

    let (code, _, stderr) = run_cli(&["quantize", &model, "--precision", "fp8", "--gptq", &data]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--gptq applies to --precision int4, int8 and w8a8-dynamic only"), "{stderr}");
}
