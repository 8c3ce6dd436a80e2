use std::path::Path;

use quantstudio::model::{DType, LayerKind};
use quantstudio::{Error, Model};
use safetensors::Dtype;

use crate::common::{self, Spec};

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Header length prefix + header text + data, by hand.
fn hand_made(header: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_len));
    bytes
}

#[test]
fn opens_a_file_written_by_the_reference_crate() {
    let dir = common::temp_dir();
    let path = dir.path().join("m.safetensors");
    common::write_model(
        &path,
        &[
            Spec::f32("fc1.weight", &[4, 3], &[0.5; 12]),
            Spec::f32("fc1.bias", &[4], &[0.1; 4]),
            Spec::raw("steps", Dtype::I64, &[2], vec![0; 16]),
            Spec::raw("half.weight", Dtype::F16, &[2, 2], vec![0; 8]),
        ],
    );
    let model = Model::open(&path).unwrap();
    assert_eq!(model.tensors.len(), 4);
    let names: Vec<_> = model.layers.iter().map(|l| (l.name.as_str(), l.kind)).collect();
    assert_eq!(names, [("fc1", LayerKind::Linear), ("half", LayerKind::Linear), ("steps", LayerKind::Other)]);
    let fc1 = model.layer_by_name("fc1").unwrap();
    assert_eq!(model.layer(fc1).tensors.len(), 2);
    let steps = model.tensor_by_name("steps").unwrap();
    assert_eq!(model.tensor(steps).dtype, DType::I64);
    assert!(!model.tensor(steps).is_analysable());
    assert_eq!(model.size_bytes(), 48 + 16 + 16 + 8);
    assert_eq!(model.tensor_bytes(model.tensor_by_name("fc1.bias").unwrap()), common::f32_bytes(&[0.1; 4]));
}

#[test]
fn opens_the_bundled_sample_folder_with_its_config() {
    let model = Model::open(&common::bundled_sample()).unwrap();
    assert!(model.config.as_ref().is_some_and(|c| c.contains_key("model_type")));
    let kind = |name: &str| model.layer(model.layer_by_name(name).unwrap()).kind;
    assert_eq!(kind("model.embed_tokens"), LayerKind::Embedding);
    assert_eq!(kind("model.layers.0.self_attn.q_proj"), LayerKind::Linear);
    assert_eq!(kind("model.layers.0.input_layernorm"), LayerKind::Norm);
    assert_eq!(kind("model.norm"), LayerKind::Norm);
}

#[test]
fn bundled_sample_is_reproducible() {
    let dir = common::temp_dir();
    common::write_tiny_sample(dir.path());
    let regenerate = std::env::var_os("QUANTSTUDIO_REGENERATE_SAMPLE").is_some();
    if regenerate {
        common::write_tiny_sample(&common::bundled_sample());
    }
    for file in ["model.safetensors", "config.json"] {
        let made = std::fs::read(dir.path().join(file)).unwrap();
        let committed = std::fs::read(common::bundled_sample().join(file)).unwrap();
        assert!(made == committed, "{file} differs from what tests/common makes; set QUANTSTUDIO_REGENERATE_SAMPLE=1");
    }
}

#[test]
fn opens_a_sharded_folder_in_natural_order() {
    let dir = common::temp_dir();
    let shard = |name: &str, specs: &[Spec]| common::write_model(&dir.path().join(name), specs);
    shard("model-00001-of-00002.safetensors", &[Spec::f32("layers.10.w", &[2, 2], &[1.0; 4])]);
    shard("model-00002-of-00002.safetensors", &[Spec::f32("layers.2.w", &[2, 2], &[2.0; 4])]);
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"layers.10.w":"model-00001-of-00002.safetensors","layers.2.w":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type":"x"}"#).unwrap();
    let model = Model::open(dir.path()).unwrap();
    let names: Vec<_> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["layers.2", "layers.10"]);
    assert_eq!(model.shards.len(), 2);
}

/// Whether an error is the expected one.
type ErrorCheck = fn(&Error) -> bool;

fn open_err(path: &Path) -> Error {
    let before = common::snapshot(path.parent().unwrap());
    let error = Model::open(path).expect_err("must fail");
    assert_eq!(common::snapshot(path.parent().unwrap()), before, "a failed open wrote something");
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    error
}

#[test]
fn bad_files_give_named_errors_and_write_nothing() {
    let dir = common::temp_dir();
    let d = dir.path();
    let f32_entry = |name: &str, shape: &str, begin: usize, end: usize| {
        format!(r#""{name}":{{"dtype":"F32","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
    };
    let cases: Vec<(&str, Vec<u8>, ErrorCheck)> = vec![
        ("empty", vec![], |e| matches!(e, Error::EmptyFile { .. })),
        ("short", vec![1, 2, 3], |e| matches!(e, Error::FileTooShort { .. })),
        (
            "beyond",
            {
                let mut b = hand_made("{}", 0);
                b[0] = 250;
                b
            },
            |e| matches!(e, Error::HeaderLength { .. }),
        ),
        (
            "absurd",
            {
                let mut b = hand_made("{}", 0);
                b[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
                b
            },
            |e| matches!(e, Error::HeaderLength { .. }),
        ),
        (
            "notutf8",
            {
                let mut b = hand_made("{\"a\": 1}", 0);
                b[10] = 0xC3;
                b[11] = 0x28;
                b
            },
            |e| matches!(e, Error::HeaderNotUtf8 { .. }),
        ),
        ("notjson", hand_made("{this is not json", 0), |e| matches!(e, Error::HeaderNotJson { .. })),
        ("out_of_range", hand_made(&format!("{{{}}}", f32_entry("a", "[4]", 0, 16)), 8), |e| {
            matches!(e, Error::BadOffsets { .. })
        }),
        (
            "overlap",
            hand_made(&format!("{{{},{}}}", f32_entry("a", "[2]", 0, 8), f32_entry("b", "[2]", 4, 12)), 12),
            |e| matches!(e, Error::BadOffsets { problem, .. } if problem.contains("overlap")),
        ),
        (
            "gap",
            hand_made(&format!("{{{},{}}}", f32_entry("a", "[1]", 0, 4), f32_entry("b", "[1]", 8, 12)), 12),
            |e| matches!(e, Error::BadOffsets { problem, .. } if problem.contains("gap")),
        ),
        ("mismatch", hand_made(&format!("{{{}}}", f32_entry("a", "[3]", 0, 8)), 8), |e| {
            matches!(e, Error::ShapeMismatch { .. })
        }),
        ("dtype", hand_made(r#"{"a":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}}"#, 2), |e| {
            matches!(e, Error::UnsupportedDtype { .. })
        }),
        (
            "duplicate",
            hand_made(&format!("{{{},{}}}", f32_entry("a", "[1]", 0, 4), f32_entry("a", "[1]", 4, 8)), 8),
            |e| matches!(e, Error::DuplicateTensor { .. }),
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = file_with(d, &format!("{name}.safetensors"), &bytes);
        let error = open_err(&path);
        assert!(expected(&error), "{name}: unexpected error {error}");
        assert!(error.to_string().contains(&format!("{name}.safetensors")), "{name}: message names the file: {error}");
    }
}

#[test]
fn truncated_copies_of_a_real_file_never_panic() {
    let dir = common::temp_dir();
    let full = common::safetensors_bytes(&common::tiny_sample_specs(), None);
    for len in (0..full.len()).step_by(97).chain([full.len() - 1]) {
        let path = file_with(dir.path(), "cut.safetensors", &full[..len]);
        assert!(Model::open(&path).is_err(), "a file cut at {len} bytes opened");
    }
}

#[test]
fn bad_folders() {
    let dir = common::temp_dir();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("config.json"), "{}").unwrap();
    assert!(matches!(Model::open(&empty), Err(Error::NoWeights { .. })));

    let missing = dir.path().join("missing");
    std::fs::create_dir(&missing).unwrap();
    common::write_model(&missing.join("a.safetensors"), &[Spec::f32("x.weight", &[1], &[1.0])]);
    std::fs::write(
        missing.join("model.safetensors.index.json"),
        r#"{"weight_map":{"x.weight":"a.safetensors","y.weight":"b.safetensors"}}"#,
    )
    .unwrap();
    let error = Model::open(&missing).unwrap_err();
    assert!(matches!(&error, Error::BadShardIndex { problem, .. } if problem.contains("b.safetensors")), "{error}");

    let hostile = dir.path().join("hostile");
    std::fs::create_dir(&hostile).unwrap();
    std::fs::write(hostile.join("model.safetensors.index.json"), r#"{"weight_map":{"x":"../../etc/passwd"}}"#).unwrap();
    assert!(matches!(Model::open(&hostile), Err(Error::BadShardIndex { .. })));

    let bad_config = dir.path().join("badconfig");
    std::fs::create_dir(&bad_config).unwrap();
    common::write_model(&bad_config.join("model.safetensors"), &[Spec::f32("x.weight", &[1], &[1.0])]);
    std::fs::write(bad_config.join("config.json"), "[1,2").unwrap();
    assert!(matches!(Model::open(&bad_config), Err(Error::BadConfig { .. })));

    assert!(matches!(Model::open(&dir.path().join("nope")), Err(Error::Io { .. })));
}
