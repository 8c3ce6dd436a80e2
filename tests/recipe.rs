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
