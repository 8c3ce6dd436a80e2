use quantstudio::export::compressed_tensors::unpack_int8_rows;
use quantstudio::export::{self, ExportOptions, RECIPE_FILE, RECIPE_METADATA_KEY, WEIGHTS_FILE};
use quantstudio::model::{DType, TensorId};
use quantstudio::quant::pass::TensorData;
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe, analyze_tensor};
use quantstudio::{Error, Model, Progress};

use crate::common;

/// The bundled sample is synthetic (`model_type` "tiny-demo", which transformers cannot build), so its exports are
/// refused unless forced; the tests that use it check the layout and the codes.
fn forced() -> ExportOptions {
    ExportOptions { force: true, ..Default::default() }
}

fn scheme(symmetric: bool, granularity: Granularity) -> Precision {
    Precision::Int8(Int8Scheme::weights(symmetric, granularity))
}

/// Reads `name` from an exported file as f32 values, whatever float dtype it has.
fn floats(model: &Model, name: &str) -> Vec<f32> {
    let id = model.tensor_by_name(name).unwrap_or_else(|| panic!("{name} missing"));
    let data = TensorData::of(model, id).unwrap();
    let mut buf = Vec::new();
    data.values(0..data.len(), &mut buf).to_vec()
}

fn int8s(model: &Model, name: &str) -> Vec<i8> {
    let id = model.tensor_by_name(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(model.tensor(id).dtype, DType::I8);
    model.tensor_bytes(id).iter().map(|&b| b as i8).collect()
}

#[test]
fn reopened_export_dequantizes_to_the_analysed_values_bit_for_bit() {
    let source = Model::open(&common::bundled_sample()).unwrap();
    for precision in [
        scheme(true, Granularity::PerChannel),
        scheme(true, Granularity::PerTensor),
        scheme(false, Granularity::PerChannel),
        scheme(false, Granularity::PerTensor),
    ] {
        let plan = Recipe::uniform(precision).resolve(&source).unwrap();
        let dir = common::temp_dir();
        let symmetric = !precision.to_string().contains("asym");
        // vLLM loads weight-only INT8 only when symmetric: asymmetric layers are refused.
        let check = export::Target::CompressedTensors.check(&source, &plan);
        assert_eq!(check.problem_layers().is_empty(), symmetric, "{precision}: {:?}", check.problems(&source));
        assert!(check.model_refusal.as_ref().is_some_and(|r| r.contains("tiny-demo")), "{:?}", check.model_refusal);
        let summary = export::export(&source, &plan, dir.path(), &forced(), &Progress::new()).unwrap();
        assert!(summary.files.contains(&WEIGHTS_FILE.to_owned()));
        let exported = Model::open(dir.path()).unwrap();
        let name = "model.layers.0.self_attn.q_proj.weight";
        let id = source.tensor_by_name(name).unwrap();
        let analysis = analyze_tensor(&source, id, precision, &Progress::new()).unwrap();
        let (codes, scale_name) = if symmetric {
            // pack-quantized: codes packed four to an I32 word, one scale per row, the shape beside them.
            let packed = exported.tensor_by_name(&format!("{name}_packed")).expect("packed weight");
            assert_eq!(exported.tensor(packed).dtype, DType::I32);
            assert_eq!(exported.tensor(packed).shape, [64, 16]);
            assert!(exported.tensor_by_name(name).is_none());
            let shape = exported.tensor_bytes(exported.tensor_by_name(&format!("{name}_shape")).unwrap());
            assert_eq!(shape, [64i64, 64].iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>());
            (unpack_int8_rows(exported.tensor_bytes(packed), 64, 64), format!("{name}_scale"))
        } else {
            (int8s(&exported, name), format!("{name}_scale"))
        };
        let scales = floats(&exported, &scale_name);
        let zero_points = if symmetric {
            assert!(exported.tensor_by_name(&format!("{name}_zero_point")).is_none());
            vec![0; scales.len()]
        } else {
            int8s(&exported, &format!("{name}_zero_point"))
        };
        let per_row = precision.to_string().contains("per-channel");
        let scale_shape = &exported.tensor(exported.tensor_by_name(&scale_name).unwrap()).shape;
        assert_eq!(scale_shape, &if per_row || symmetric { vec![64, 1] } else { vec![1] });
        let original = floats(&source, name);
        let cols = 64;
        for (i, (&q, &x)) in codes.iter().zip(&original).enumerate() {
            let g = if per_row { i / cols } else { 0 };
            let p = analysis.group_params[g];
            let stored = if scales.len() > 1 { i / cols } else { 0 };
            assert_eq!(scales[stored].to_bits(), p.scale.to_bits());
            assert_eq!(zero_points[stored] as i32, p.zero_point);
            assert_eq!(q, p.quantize(x), "{precision}: code {i}");
            let from_file = (q as i32 - zero_points[stored] as i32) as f32 * scales[stored];
            assert_eq!(from_file.to_bits(), p.dequantize(p.quantize(x)).to_bits());
        }
        // Kept tensors are byte-identical; integer tensors too.
        for kept in ["model.norm.weight", "model.position_ids", "model.layers.0.mlp.up_proj.bias"] {
            let a = source.tensor_bytes(source.tensor_by_name(kept).unwrap());
            let b = exported.tensor_bytes(exported.tensor_by_name(kept).unwrap());
            assert_eq!(a, b, "{kept}");
        }
        let recipe_in_metadata = exported.shards[0].header.metadata.get(RECIPE_METADATA_KEY).unwrap();
        let recipe_beside = std::fs::read_to_string(dir.path().join(RECIPE_FILE)).unwrap();
        assert_eq!(recipe_in_metadata.trim(), recipe_beside.trim());
        let reproduced = Recipe::from_json(&recipe_beside, dir.path()).unwrap().resolve(&source).unwrap();
        assert_eq!(reproduced.layers, plan.layers);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], "tiny-demo", "the original config is kept");
        let quantization = &config["quantization_config"];
        assert_eq!(quantization["quant_method"], "compressed-tensors");
        assert_eq!(quantization["quantization_status"], "compressed");
        let expected_format = if symmetric { "pack-quantized" } else { "naive-quantized" };
        let groups = quantization["config_groups"].as_object().unwrap();
        let q_proj = "model.layers.0.self_attn.q_proj";
        let group = groups.values().find(|g| g["targets"].as_array().unwrap().iter().any(|t| t == q_proj)).unwrap();
        assert_eq!(group["format"], expected_format);
        assert_eq!(group["weights"]["num_bits"], 8);
        assert_eq!(group["weights"]["symmetric"], symmetric);
        let ignore: Vec<&str> =
            quantization["ignore"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        // The shortcut quantizes linear layers but the output head; embeddings are not Linear modules.
        assert_eq!(ignore, ["lm_head"], "the head stays float, and every 2-D float layer is ignored");
        // The model-level refusal, and the refused layers of an asymmetric plan.
        assert_eq!(summary.warnings.len(), if symmetric { 1 } else { 2 }, "{:?}", summary.warnings);
    }
}

#[test]
fn half_precision_exports_cast_with_the_documented_rounding() {
    let source = Model::open(&common::bundled_sample()).unwrap();
    for (precision, dtype) in [(Precision::Fp16, DType::F16), (Precision::Bf16, DType::BF16)] {
        let plan = Plan::all(&source, precision);
        let dir = common::temp_dir();
        export::export(&source, &plan, dir.path(), &forced(), &Progress::new()).unwrap();
        let exported = Model::open(dir.path()).unwrap();
        let name = "lm_head.weight";
        assert_eq!(exported.tensor(exported.tensor_by_name(name).unwrap()).dtype, dtype);
        let rounded: Vec<u32> = floats(&source, name)
            .iter()
            .map(|&x| {
                if precision == Precision::Fp16 {
                    quantstudio::quant::params::round_fp16(x).to_bits()
                } else {
                    quantstudio::quant::params::round_bf16(x).to_bits()
                }
            })
            .collect();
        let stored: Vec<u32> = floats(&exported, name).iter().map(|v| v.to_bits()).collect();
        assert_eq!(stored, rounded);
        assert_eq!(exported.tensor(exported.tensor_by_name("model.position_ids").unwrap()).dtype, DType::I64);
        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(!config.contains("quantization_config"), "a float-only export is a plain checkpoint");
    }
}

#[test]
fn mixed_plans_list_float_layers_in_ignore_and_warn_about_split_fusions() {
    let source = Model::open(&common::bundled_sample()).unwrap();
    let mut recipe = Recipe::uniform(scheme(true, Granularity::PerChannel));
    recipe.layers.insert("model.layers.0.self_attn.k_proj".into(), Precision::Fp16);
    recipe.layers.insert("model.embed_tokens".into(), scheme(false, Granularity::PerTensor));
    recipe.layers.insert("lm_head".into(), Precision::Fp32);
    let plan = recipe.resolve(&source).unwrap();
    let dir = common::temp_dir();
    let refused = export::export(&source, &plan, dir.path(), &ExportOptions::default(), &Progress::new()).unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("model.embed_tokens") && message.contains("q_proj") && message.contains("--force"),
        "{message}"
    );
    let summary = export::export(&source, &plan, dir.path(), &forced(), &Progress::new()).unwrap();
    assert_eq!(summary.warnings.len(), 3, "the model, the embedding, the split fusion: {:?}", summary.warnings);
    let fusion = summary.warnings.iter().find(|w| w.contains("vLLM fuses")).unwrap();
    assert!(fusion.contains("3 layers") && fusion.contains("fix: int8 sym per-channel"), "{fusion}");
    assert!(
        summary.warnings.iter().any(|w| w.contains("embed_tokens") && w.contains("fix: fp16")),
        "{:?}",
        summary.warnings
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    let quantization = &config["quantization_config"];
    assert_eq!(quantization["format"], "mixed-precision");
    assert_eq!(quantization["ignore"], serde_json::json!(["lm_head", "model.layers.0.self_attn.k_proj"]));
    let exported = Model::open(dir.path()).unwrap();
    let bytes: u64 = exported.tensors.iter().map(|t| t.size_bytes()).sum();
    let planned: u64 = (0..source.tensors.len()).map(|i| export::planned_bytes(&source, &plan, TensorId(i))).sum();
    assert_eq!(bytes, planned, "the planned size is the exported size");
}

#[test]
fn never_writes_over_the_input() {
    let dir = common::temp_dir();
    let folder = dir.path().join("model");
    common::write_tiny_sample(&folder);
    let before = common::snapshot(&folder);
    let model = Model::open(&folder).unwrap();
    let plan = Plan::all(&model, Precision::Fp16);
    let options = forced();
    let error = export::export(&model, &plan, &folder, &options, &Progress::new()).unwrap_err();
    assert!(matches!(error, Error::BadDestination { .. }), "{error}");
    let file_dest = folder.join("model.safetensors");
    let error = export::export(&model, &plan, &file_dest, &options, &Progress::new()).unwrap_err();
    assert!(matches!(error, Error::BadDestination { .. }), "{error}");
    let inside = folder.join("quantized");
    let error = export::export(&model, &plan, &inside, &options, &Progress::new()).unwrap_err();
    assert!(error.to_string().contains("inside it"), "{error}");
    assert_eq!(common::snapshot(&folder), before);
}

#[test]
fn cancelled_export_leaves_no_partial_file() {
    let source = Model::open(&common::bundled_sample()).unwrap();
    let plan = Plan::all(&source, Precision::Fp16);
    let dir = common::temp_dir();
    let progress = Progress::new();
    progress.cancel();
    let result = export::export(&source, &plan, dir.path(), &forced(), &progress);
    assert!(matches!(result, Err(Error::Cancelled)));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left after cancel: {left:?}");
}

/// tiny-bert copied into `dir/name` with the files a sentence-transformers folder brings beside the weights.
fn sentence_transformers_folder(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let folder = dir.join(name);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    std::fs::create_dir_all(folder.join("1_Pooling")).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json", "inputs.txt"] {
        std::fs::copy(fixture.join(file), folder.join(file)).unwrap();
    }
    std::fs::write(folder.join("1_Pooling/config.json"), r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
    std::fs::write(folder.join("modules.json"), r#"[{"idx":0,"path":"","type":"x"},{"idx":1,"path":"1_Pooling"}]"#)
        .unwrap();
    std::fs::write(folder.join("README.md"), "# model card\n").unwrap();
    std::fs::create_dir_all(folder.join("onnx")).unwrap();
    std::fs::write(folder.join("onnx/model.onnx"), b"not really onnx").unwrap();
    std::fs::create_dir_all(folder.join(".cache")).unwrap();
    std::fs::write(folder.join(".cache/x"), b"hidden").unwrap();
    folder
}

#[test]
fn the_default_int8_plan_deploys_and_a_plan_with_quantized_embeddings_is_refused_with_the_fix() {
    let dir = common::temp_dir();
    let folder = sentence_transformers_folder(dir.path(), "bert");
    let model = Model::open(&folder).unwrap();
    let target = export::Target::CompressedTensors;
    // The shortcut quantizes the encoder's linear layers only: transformers and vLLM load that.
    let default = Recipe::uniform(scheme(true, Granularity::PerChannel)).resolve(&model).unwrap();
    let check = target.check(&model, &default);
    assert!(check.is_clean(), "{:?}", check.problems(&model));
    assert_eq!(check.summary(), "compressed-tensors: loads in transformers ✓, vLLM ✓");
    // Every layer quantized: the three embedding tables are not Linear modules.
    let everywhere = Recipe::everywhere(scheme(true, Granularity::PerChannel)).resolve(&model).unwrap();
    let check = target.check(&model, &everywhere);
    assert!(!check.loads_in(export::Runtime::Transformers) && !check.loads_in(export::Runtime::Vllm));
    let refused: Vec<&str> = check.problem_layers().iter().map(|&id| model.layer(id).name.as_str()).collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|name| name.contains("embeddings")), "{refused:?}");
    assert!(check.summary().contains("transformers ✗ (3 layers)"), "{}", check.summary());
    let out = dir.path().join("out");
    let error = export::export(&model, &everywhere, &out, &ExportOptions::default(), &Progress::new()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::ExportRefused { forceable: true, .. }));
    assert!(message.contains("word_embeddings") && message.contains("fix: fp16"), "{message}");
    assert!(!out.exists(), "a refused export writes nothing");
    // The one-click fix makes it load everywhere.
    let mut fixed = everywhere.clone();
    assert_eq!(check.apply_fixes(&mut fixed), 3);
    assert!(target.check(&model, &fixed).is_clean());
    export::export(&model, &fixed, &out, &ExportOptions::default(), &Progress::new()).unwrap();
}

#[test]
fn the_export_carries_over_every_non_weight_file_and_folder() {
    let dir = common::temp_dir();
    let folder = sentence_transformers_folder(dir.path(), "bert");
    let model = Model::open(&folder).unwrap();
    let plan = Recipe::uniform(scheme(true, Granularity::PerChannel)).resolve(&model).unwrap();
    let out = dir.path().join("out");
    let summary = export::export(&model, &plan, &out, &ExportOptions::default(), &Progress::new()).unwrap();
    for file in ["1_Pooling/config.json", "modules.json", "README.md", "tokenizer.json", "inputs.txt"] {
        assert_eq!(std::fs::read(out.join(file)).unwrap(), std::fs::read(folder.join(file)).unwrap(), "{file}");
        assert!(summary.files.contains(&file.to_owned()), "{file} in {:?}", summary.files);
    }
    assert!(!out.join("onnx").exists(), "another format's weights are not carried over");
    assert!(!out.join(".cache").exists(), "hidden entries are not carried over");
    assert!(summary.warnings.iter().any(|w| w.contains("onnx/")), "{:?}", summary.warnings);
    let written: u64 = summary.files.iter().map(|f| std::fs::metadata(out.join(f)).unwrap().len()).sum();
    assert_eq!(summary.size_bytes, written);
}

#[test]
fn large_exports_are_sharded_with_an_index_and_reopen_identically() {
    let dir = common::temp_dir();
    let source = Model::open(&common::bundled_sample()).unwrap();
    let plan = Recipe::uniform(scheme(true, Granularity::PerChannel)).resolve(&source).unwrap();
    let single = dir.path().join("single");
    export::export(&source, &plan, &single, &forced(), &Progress::new()).unwrap();
    let sharded = dir.path().join("sharded");
    let options = ExportOptions { max_shard_bytes: 40_000, ..forced() };
    let summary = export::export(&source, &plan, &sharded, &options, &Progress::new()).unwrap();
    let shards: Vec<&String> = summary.files.iter().filter(|f| f.ends_with(".safetensors")).collect();
    assert!(shards.len() > 2, "{:?}", summary.files);
    assert_eq!(shards[0], &format!("model-00001-of-{:05}.safetensors", shards.len()));
    assert!(!sharded.join(WEIGHTS_FILE).exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sharded.join(export::INDEX_FILE)).unwrap()).unwrap();
    let a = Model::open(&single).unwrap();
    let b = Model::open(&sharded).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    let total: u64 = a.tensors.iter().map(|t| t.size_bytes()).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    for (i, t) in a.tensors.iter().enumerate() {
        let other = b.tensor_by_name(&t.name).unwrap();
        assert_eq!(a.tensor_bytes(TensorId(i)), b.tensor_bytes(other), "{}", t.name);
        assert!(index["weight_map"][&t.name].is_string(), "{} in the index", t.name);
    }
}

#[test]
fn an_export_replaces_an_earlier_one_whole_and_never_writes_into_other_folders() {
    let dir = common::temp_dir();
    let source = Model::open(&common::bundled_sample()).unwrap();
    let out = dir.path().join("out");
    let sharded = ExportOptions { max_shard_bytes: 40_000, ..forced() };
    let int8 = Recipe::uniform(scheme(true, Granularity::PerChannel)).resolve(&source).unwrap();
    export::export(&source, &int8, &out, &sharded, &Progress::new()).unwrap();
    // A second export over the first: no shard of the first survives beside the new single file.
    let fp16 = Plan::all(&source, Precision::Fp16);
    let summary = export::export(&source, &fp16, &out, &forced(), &Progress::new()).unwrap();
    let mut left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    let mut expected = summary.files.clone();
    expected.sort();
    assert_eq!(left, expected);
    // Nothing is left beside it either (no staging or set-aside folder).
    let siblings: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(siblings, ["out"]);
    // A folder holding something else is refused, and left as it was.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let error = export::export(&source, &fp16, &other, &forced(), &Progress::new()).unwrap_err();
    assert!(matches!(error, Error::BadDestination { .. }), "{error}");
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn w8a8_dynamic_exports_int_quantized_weights_with_dynamic_per_token_inputs() {
    let dir = common::temp_dir();
    let source = Model::open(&common::bundled_sample()).unwrap();
    let dynamic = Precision::Int8(Int8Scheme::w8a8_dynamic());
    let plan = Recipe::uniform(dynamic).resolve(&source).unwrap();
    assert!(plan.uncalibrated(&source).is_empty(), "dynamic inputs need no calibration");
    let out = dir.path().join("out");
    export::export(&source, &plan, &out, &forced(), &Progress::new()).unwrap();
    let exported = Model::open(&out).unwrap();
    let name = "model.layers.0.self_attn.q_proj";
    let weight = exported.tensor(exported.tensor_by_name(&format!("{name}.weight")).unwrap());
    assert_eq!((weight.dtype, weight.shape.as_slice()), (DType::I8, [64usize, 64].as_slice()));
    assert!(exported.tensor_by_name(&format!("{name}.input_scale")).is_none(), "no static input scale");
    let analysis =
        analyze_tensor(&source, source.tensor_by_name(&format!("{name}.weight")).unwrap(), dynamic, &Progress::new())
            .unwrap();
    let scales = floats(&exported, &format!("{name}.weight_scale"));
    assert_eq!(scales, analysis.group_params.iter().map(|p| p.scale).collect::<Vec<_>>());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let groups = config["quantization_config"]["config_groups"].as_object().unwrap();
    assert_eq!(groups.len(), 1);
    let group = groups.values().next().unwrap();
    assert_eq!(group["format"], "int-quantized");
    assert_eq!(group["weights"]["strategy"], "channel");
    let inputs = &group["input_activations"];
    assert_eq!((inputs["dynamic"].as_bool(), inputs["strategy"].as_str()), (Some(true), Some("token")));
    assert_eq!((inputs["num_bits"].as_u64(), inputs["symmetric"].as_bool()), (Some(8), Some(true)));
    assert!(inputs["observer"].is_null());
}

#[test]
fn fp8_exports_float_quantized_e4m3_codes_and_scales_bit_for_bit() {
    use quantstudio::quant::{Fp8Scheme, fp8};
    let dir = common::temp_dir();
    let source = Model::open(&common::bundled_sample()).unwrap();
    for (scheme, dynamic) in [(Fp8Scheme::weights(Granularity::PerChannel), false), (Fp8Scheme::dynamic(), true)] {
        let plan = Recipe::uniform(Precision::Fp8(scheme)).resolve(&source).unwrap();
        let out = dir.path().join(format!("out-{dynamic}"));
        export::export(&source, &plan, &out, &forced(), &Progress::new()).unwrap();
        let exported = Model::open(&out).unwrap();
        let name = "model.layers.0.mlp.down_proj.weight";
        let codes_id = exported.tensor_by_name(name).unwrap();
        assert_eq!(exported.tensor(codes_id).dtype, DType::F8E4M3);
        assert_eq!(exported.tensor(codes_id).shape, [64, 128]);
        let codes = exported.tensor_bytes(codes_id);
        let scales = floats(&exported, &format!("{name}_scale"));
        assert_eq!(scales.len(), 64);
        let original = floats(&source, name);
        for (r, row) in original.chunks(128).enumerate() {
            let scale = fp8::fp8_scale(row.iter().fold(0f32, |m, v| m.max(v.abs())));
            assert_eq!(scales[r].to_bits(), scale.to_bits(), "row {r}");
            for (c, &x) in row.iter().enumerate() {
                assert_eq!(codes[r * 128 + c], fp8::quantize_value(x, scale), "row {r} col {c}");
            }
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let quantization = &config["quantization_config"];
        assert_eq!(quantization["format"], "float-quantized");
        let group = quantization["config_groups"]["group_0"].clone();
        assert_eq!(group["weights"]["type"], "float");
        assert_eq!(group["weights"]["num_bits"], 8);
        assert_eq!(group["weights"]["strategy"], "channel");
        if dynamic {
            let inputs = &group["input_activations"];
            assert_eq!((inputs["type"].as_str(), inputs["strategy"].as_str()), (Some("float"), Some("token")));
            assert_eq!(inputs["dynamic"], true);
        } else {
            assert!(group["input_activations"].is_null());
        }
    }
}

#[test]
fn grouped_query_attention_with_one_scheme_is_not_a_split_fusion() {
    // tiny-llama has 4 query heads and 2 key/value heads: k_proj and v_proj have half q_proj's rows.
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let model = Model::open(&folder).unwrap();
    for precision in [
        scheme(true, Granularity::PerChannel),
        Precision::Int8(Int8Scheme::w8a8_dynamic()),
        Precision::Fp8(quantstudio::quant::Fp8Scheme::dynamic()),
    ] {
        let plan = Recipe::uniform(precision).resolve(&model).unwrap();
        let check = export::Target::CompressedTensors.check(&model, &plan);
        assert!(check.is_clean(), "{precision}: {:?}", check.problems(&model));
    }
}

/// Group-wise INT4 (W4A16): the packed codes, scales and zero points of `pack-quantized` decode to the simulated
/// values bit for bit, each layer with the group size its rows allow.
#[test]
fn int4_exports_pack_quantized_codes_scales_and_zero_points_bit_for_bit() {
    use quantstudio::quant::{Int4Scheme, int4};
    let dir = common::temp_dir();
    let source = Model::open(&common::bundled_sample()).unwrap();
    for asked in [Int4Scheme::new(true, 128), Int4Scheme::new(false, 32)] {
        let plan = Recipe::uniform(Precision::Int4(asked)).resolve(&source).unwrap();
        // q_proj has rows of 64 values: groups of 128 fall back to 64, with a warning naming it.
        let q_proj = source.layer_by_name("model.layers.0.self_attn.q_proj").unwrap();
        let fitted = Int4Scheme { group_size: asked.group_size.min(64), ..asked };
        assert_eq!(plan.layer(q_proj), Precision::Int4(fitted));
        assert_eq!(
            plan.warnings.iter().any(|w| w.contains("groups of 128 do not divide") && w.contains("q_proj")),
            asked.group_size == 128,
            "{:?}",
            plan.warnings
        );
        let check = export::Target::CompressedTensors.check(&source, &plan);
        let refused_for_transformers = check.layers.iter().any(|l| {
            l.refusals.iter().any(|r| r.runtime == export::Runtime::Transformers && r.reason.contains("dequantize"))
        });
        assert_eq!(refused_for_transformers, !asked.symmetric, "{:?}", check.problems(&source));
        let out = dir.path().join(format!("int4-{}", asked.group_size));
        export::export(&source, &plan, &out, &forced(), &Progress::new()).unwrap();
        let exported = Model::open(&out).unwrap();
        for (name, cols) in
            [("model.layers.0.mlp.down_proj.weight", 128), ("model.layers.0.self_attn.q_proj.weight", 64)]
        {
            let scheme = asked.fitted(cols).unwrap();
            let groups = cols / scheme.group_size;
            let original = floats(&source, name);
            let rows = original.len() / cols;
            assert!(exported.tensor_by_name(name).is_none(), "{name}: only the packed codes are written");
            let packed_id = exported.tensor_by_name(&format!("{name}_packed")).unwrap();
            assert_eq!(
                (exported.tensor(packed_id).dtype, exported.tensor(packed_id).shape.clone()),
                (DType::I32, vec![rows, cols / 8])
            );
            let packed = exported.tensor_bytes(packed_id);
            let scales = floats(&exported, &format!("{name}_scale"));
            assert_eq!(scales.len(), rows * groups);
            let zero_points: Option<Vec<u32>> = exported.tensor_by_name(&format!("{name}_zero_point")).map(|id| {
                assert_eq!(exported.tensor(id).shape, [rows.div_ceil(8), groups]);
                exported.tensor_bytes(id).chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect()
            });
            assert_eq!(zero_points.is_some(), !scheme.symmetric, "{name}");
            let shape_id = exported.tensor_by_name(&format!("{name}_shape")).unwrap();
            let shape: Vec<i64> = exported
                .tensor_bytes(shape_id)
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(shape, [rows as i64, cols as i64]);
            let data = TensorData::from_f32(&original, rows, cols);
            let simulated =
                quantstudio::runtime::weights::simulate(&data, Precision::Int4(scheme), &Progress::new()).unwrap();
            for (r, row) in original.chunks(cols).enumerate() {
                let (codes, params) = int4::quantize_row(scheme, row);
                for (g, p) in params.iter().enumerate() {
                    assert_eq!(scales[r * groups + g].to_bits(), p.scale.to_bits(), "{name} row {r} group {g}");
                    let zero_point = match &zero_points {
                        Some(words) => ((words[(r / 8) * groups + g] >> (4 * (r % 8))) & 0xF) as i32 - 8,
                        None => 0,
                    };
                    assert_eq!(zero_point, p.zero_point, "{name} row {r} group {g}");
                }
                for (c, &q) in codes.iter().enumerate() {
                    let byte = packed[r * cols / 2 + c / 2];
                    let stored = ((byte >> (4 * (c % 2))) & 0xF) as i32 - 8;
                    assert_eq!(stored, q as i32, "{name} row {r} col {c}");
                    let p = params[c / scheme.group_size];
                    let decoded = (stored - p.zero_point) as f32 * p.scale;
                    assert_eq!(decoded.to_bits(), simulated[r * cols + c].to_bits(), "{name} row {r} col {c}");
                }
            }
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let quantization = &config["quantization_config"];
        assert_eq!(quantization["format"], "pack-quantized");
        let groups = quantization["config_groups"].as_object().unwrap();
        let sizes: Vec<i64> = groups.values().map(|g| g["weights"]["group_size"].as_i64().unwrap()).collect();
        for group in groups.values() {
            let weights = &group["weights"];
            assert_eq!((weights["num_bits"].as_i64(), weights["strategy"].as_str()), (Some(4), Some("group")));
            assert_eq!(weights["symmetric"], asked.symmetric);
            assert!(group["input_activations"].is_null());
        }
        let mut expected: Vec<i64> = if asked.group_size == 128 { vec![128, 64] } else { vec![32] };
        let mut sizes = sizes;
        sizes.sort();
        expected.sort();
        assert_eq!(sizes, expected);
    }
}
