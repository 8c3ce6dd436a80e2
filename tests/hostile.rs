//! Hostile input: sizes from untrusted bytes, broken networks, unknown keys; each refusal names its file.

use std::path::Path;

use quantstudio::quant::Recipe;

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
