use quantstudio::model::TensorId;
use quantstudio::quant::plan::Rule;
use quantstudio::quant::{Granularity, Int8Scheme, Precision, Recipe};
use quantstudio::{Error, Model};

use crate::common;

const INT8: Precision = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel));

fn sample() -> Model {
    Model::open(&common::bundled_sample()).unwrap()
}

#[test]
fn uniform_recipe_keeps_norms_and_vectors_fp32() {
    let model = sample();
    let plan = Recipe::uniform(INT8).resolve(&model).unwrap();
    let precision = |name: &str| plan.layer(model.layer_by_name(name).unwrap());
    assert_eq!(precision("model.layers.0.self_attn.q_proj"), INT8);
    assert_eq!(precision("model.layers.0.input_layernorm"), Precision::Fp32);
    assert_eq!(precision("model.norm"), Precision::Fp32);
    assert_eq!(precision("model"), Precision::Fp32, "a layer without float tensors (model.position_ids) is kept");
    let ids = model.tensor_by_name("model.position_ids").unwrap();
    assert_eq!(plan.tensor(&model, ids), Precision::Fp32);
    let bias = model.tensor_by_name("model.layers.0.mlp.up_proj.bias").unwrap();
    assert_eq!(plan.tensor(&model, bias), Precision::Fp32, "biases stay float in INT8 layers");
    assert_eq!(precision("model.embed_tokens"), Precision::Fp32, "the shortcut leaves embedding tables as stored");
    assert_eq!(precision("lm_head"), Precision::Fp32, "and the output head");
    let everywhere = Recipe::everywhere(INT8).resolve(&model).unwrap();
    assert_eq!(everywhere.layer(model.layer_by_name("lm_head").unwrap()), INT8);
    let planned: u64 =
        (0..model.tensors.len()).map(|i| quantstudio::export::planned_bytes(&model, &everywhere, TensorId(i))).sum();
    assert!(planned < model.size_bytes() / 3);
}

#[test]
fn rules_apply_in_order_and_layers_win() {
    let model = sample();
    let mut recipe = Recipe::uniform(Precision::Fp32);
    recipe.rules = vec![
        Rule { pattern: "*proj".into(), precision: INT8 },
        Rule { pattern: "*mlp*".into(), precision: Precision::Fp16 },
        Rule { pattern: "*norm*".into(), precision: Precision::Bf16 },
        Rule { pattern: "nothing*".into(), precision: INT8 },
    ];
    recipe.layers.insert("model.layers.0.self_attn.v_proj".into(), Precision::Bf16);
    let plan = recipe.resolve(&model).unwrap();
    let precision = |name: &str| plan.layer(model.layer_by_name(name).unwrap());
    assert_eq!(precision("model.layers.0.self_attn.q_proj"), INT8);
    assert_eq!(precision("model.layers.0.mlp.up_proj"), Precision::Fp16, "later rule wins");
    assert_eq!(precision("model.layers.0.self_attn.v_proj"), Precision::Bf16, "layer entry wins");
    assert_eq!(precision("model.norm"), Precision::Bf16, "an explicit rule overrides the norm default");
    assert_eq!(precision("lm_head"), Precision::Fp32);
    assert_eq!(plan.warnings, ["rule \"nothing*\" matches no layer"]);
}

#[test]
fn unknown_layers_are_listed() {
    let model = sample();
    let mut recipe = Recipe::uniform(INT8);
    recipe.layers.insert("decoder.block.9".into(), Precision::Fp16);
    recipe.layers.insert("encoder.block.1".into(), Precision::Fp16);
    let error = recipe.resolve(&model).unwrap_err();
    assert!(matches!(&error, Error::RecipeUnknownLayers { names, .. } if names.len() == 2));
    assert_eq!(error.to_string(), "recipe names 2 layer(s) the model lacks: decoder.block.9, encoder.block.1");
}

#[test]
fn starting_recipe_reproduces_its_plan_and_saves_atomically() {
    let model = sample();
    let recipe = Recipe::starting(&model);
    assert_eq!(recipe.layers.len(), model.layers.len());
    let dir = common::temp_dir();
    let path = dir.path().join("recipe.json");
    recipe.save(&path).unwrap();
    let loaded = Recipe::load(&path).unwrap();
    assert_eq!(loaded, recipe);
    assert_eq!(loaded.resolve(&model).unwrap(), Recipe::uniform(INT8).resolve(&model).unwrap());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
}

#[test]
fn int4_recipes_round_trip_with_their_group_size_and_refuse_unlisted_sizes() {
    use quantstudio::quant::Int4Scheme;
    let path = std::path::Path::new("int4.json");
    let text = r#"{"format":"quantstudio-recipe","version":1,"default":{"precision":"int4","symmetric":false,"group_size":32}}"#;
    let recipe = Recipe::from_json(text, path).unwrap();
    assert_eq!(recipe.default, Precision::Int4(Int4Scheme::new(false, 32)));
    assert_eq!(Recipe::from_json(&recipe.to_json(), path).unwrap(), recipe);
    // Defaults: symmetric, groups of 128.
    let short = Recipe::from_json(r#"{"version":1,"default":{"precision":"int4"}}"#, path).unwrap();
    assert_eq!(short.default, Precision::Int4(Int4Scheme::new(true, 128)));
    let bad = r#"{"version":1,"rules":[{"pattern":"*","precision":"int4","group_size":48}]}"#;
    let err = Recipe::from_json(bad, path).unwrap_err().to_string();
    assert!(err.contains("int4.json") && err.contains("rule 0") && err.contains("48"), "{err}");
    let typo = r#"{"version":1,"default":{"precision":"int4","groupsize":32}}"#;
    let err = Recipe::from_json(typo, path).unwrap_err().to_string();
    assert!(err.contains("groupsize") && err.contains("group_size"), "{err}");
}

#[test]
fn int4_keeps_fp32_where_no_group_size_divides_the_rows() {
    use quantstudio::quant::Int4Scheme;
    let model = sample();
    let plan = Recipe::everywhere(Precision::Int4(Int4Scheme::default())).resolve(&model).unwrap();
    for (index, layer) in model.layers.iter().enumerate() {
        let precision = plan.layers[index];
        let Some(main) = model.main_tensor(quantstudio::model::LayerId(index)) else { continue };
        let shape = &model.tensor(main).shape;
        if shape.len() == 2 && shape[1].is_multiple_of(32) && !layer.name.ends_with("norm") {
            assert!(
                matches!(precision, Precision::Int4(s) if shape[1].is_multiple_of(s.group_size)),
                "{}: {precision}",
                layer.name
            );
        } else {
            assert!(!matches!(precision, Precision::Int4(_)), "{}: {precision}", layer.name);
        }
    }
}
