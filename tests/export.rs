use quantstudio::export::{self, RECIPE_FILE, RECIPE_METADATA_KEY, WEIGHTS_FILE};
use quantstudio::model::{DType, TensorId};
use quantstudio::quant::pass::TensorData;
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe, analyze_tensor};
use quantstudio::{Error, Model, Progress};

use crate::common;

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
        let summary = export::export(&source, &plan, dir.path(), &Progress::new()).unwrap();
        assert!(summary.files.contains(&WEIGHTS_FILE.to_owned()));
        let exported = Model::open(dir.path()).unwrap();
        let name = "model.layers.0.self_attn.q_proj.weight";
        let id = source.tensor_by_name(name).unwrap();
        let analysis = analyze_tensor(&source, id, precision, &Progress::new()).unwrap();
        let symmetric = !precision.to_string().contains("asym");
        let (codes, scale_name) = if symmetric {
            // pack-quantized: codes packed four to an I32 word, one scale per row, the shape beside them.
            let packed = exported.tensor_by_name(&format!("{name}_packed")).expect("packed weight");
            assert_eq!(exported.tensor(packed).dtype, DType::I32);
            assert_eq!(exported.tensor(packed).shape, [64, 16]);
            assert!(exported.tensor_by_name(name).is_none());
            let shape = exported.tensor_bytes(exported.tensor_by_name(&format!("{name}_shape")).unwrap());
            assert_eq!(shape, [64i64, 64].iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>());
            (export::unpack_int8_rows(exported.tensor_bytes(packed), 64, 64), format!("{name}_scale"))
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
        let group = groups.values().find(|g| g["targets"].as_array().unwrap().iter().any(|t| t == "lm_head")).unwrap();
        assert_eq!(group["format"], expected_format);
        assert_eq!(group["weights"]["num_bits"], 8);
        assert_eq!(group["weights"]["symmetric"], symmetric);
        let ignore: Vec<&str> =
            quantization["ignore"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(ignore.is_empty(), "nothing 2-D stays float under a uniform INT8 plan: {ignore:?}");
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    }
}

#[test]
fn half_precision_exports_cast_with_the_documented_rounding() {
    let source = Model::open(&common::bundled_sample()).unwrap();
    for (precision, dtype) in [(Precision::Fp16, DType::F16), (Precision::Bf16, DType::BF16)] {
        let plan = Plan::all(&source, precision);
        let dir = common::temp_dir();
        export::export(&source, &plan, dir.path(), &Progress::new()).unwrap();
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
    let summary = export::export(&source, &plan, dir.path(), &Progress::new()).unwrap();
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(summary.warnings[0].contains("k_proj"));
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
    let error = export::export(&model, &plan, &folder, &Progress::new()).unwrap_err();
    assert!(matches!(error, Error::BadDestination { .. }), "{error}");
    let file_dest = folder.join("model.safetensors");
    assert!(matches!(export::export(&model, &plan, &file_dest, &Progress::new()), Err(Error::BadDestination { .. })));
    assert_eq!(common::snapshot(&folder), before);
}

#[test]
fn cancelled_export_leaves_no_partial_file() {
    let source = Model::open(&common::bundled_sample()).unwrap();
    let plan = Plan::all(&source, Precision::Fp16);
    let dir = common::temp_dir();
    let progress = Progress::new();
    progress.cancel();
    let result = export::export(&source, &plan, dir.path(), &progress);
    assert!(matches!(result, Err(Error::Cancelled)));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left after cancel: {left:?}");
}
