//! The GGUF target: a Llama fixture written as GGUF and read back by the Rust header reader (metadata, tensor
//! infos, aligned offsets, bytes and the Q/K row permutation), the refusals (other architectures, INT8, unsafe
//! destinations), the CLI, and `tools/check/check_gguf.py` (llama.cpp's `gguf` package) on the fixture and on
//! SmolLM2 when the environment provides them.

use std::path::{Path, PathBuf};

use quantstudio::export::gguf::{self, GgmlType, Value};
use quantstudio::export::{self, ExportOptions, Target};
use quantstudio::model::TensorId;
use quantstudio::quant::pass::TensorData;
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision};
use quantstudio::{Error, Model, Progress};

use crate::common;

fn gguf_options() -> ExportOptions {
    ExportOptions { target: Target::Gguf, ..Default::default() }
}

/// The tiny-llama fixture (2 blocks, 4 heads, 2 KV heads, untied head) with a byte-level BPE tokenizer: ids 0-3
/// special, 4-97 the printable ASCII characters, 98 `Ġ`, two merges (99 `Ġt`, 100 `th`), ids 101-199 unused.
pub fn llama_fixture(dir: &Path) -> PathBuf {
    let folder = dir.join("tiny-llama-bpe");
    std::fs::create_dir_all(&folder).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), folder.join(file)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<unk>", "<s>", "</s>", "<pad>"].iter().enumerate() {
        vocab.insert((*token).into(), id.into());
    }
    for (i, c) in ('!'..='~').enumerate() {
        vocab.insert(c.to_string(), (4 + i).into());
    }
    vocab.insert("\u{120}".into(), 98.into());
    vocab.insert("\u{120}t".into(), 99.into());
    vocab.insert("th".into(), 100.into());
    let added: Vec<serde_json::Value> = ["<unk>", "<s>", "</s>", "<pad>"]
        .iter()
        .enumerate()
        .map(|(id, t)| serde_json::json!({"id": id, "content": t, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {}},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": [["\u{120}", "t"], ["t", "h"]], "byte_fallback": false},
    });
    std::fs::write(folder.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config =
        serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"});
    std::fs::write(folder.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(folder.join("chat_template.jinja"), "{{ messages }}").unwrap();
    folder
}

fn u32_of(header: &gguf::GgufHeader, key: &str) -> u32 {
    match header.get(key) {
        Some(Value::U32(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn tensor_bytes(path: &Path, header: &gguf::GgufHeader, name: &str) -> Vec<u8> {
    let (tensor, offset) = header.tensors.iter().find(|(t, _)| t.name == name).expect(name);
    let bytes = std::fs::read(path).unwrap();
    let start = (header.data_offset_bytes + offset) as usize;
    bytes[start..start + tensor.size_bytes() as usize].to_vec()
}

fn source_values(model: &Model, name: &str) -> Vec<f32> {
    let data = TensorData::of(model, model.tensor_by_name(name).unwrap()).unwrap();
    let mut buf = Vec::new();
    data.values(0..data.len(), &mut buf).to_vec()
}

#[test]
fn a_llama_export_reads_back_with_its_metadata_offsets_bytes_and_permuted_rows() {
    let dir = common::temp_dir();
    let folder = llama_fixture(dir.path());
    let model = Model::open(&folder).unwrap();
    let out = dir.path().join("out").join("tiny.gguf");
    let summary =
        export::export(&model, &Plan::all(&model, Precision::Fp32), &out, &gguf_options(), &Progress::new()).unwrap();
    assert_eq!(summary.files, vec!["tiny.gguf".to_owned()]);
    assert_eq!(summary.size_bytes, std::fs::metadata(&out).unwrap().len());
    assert!(summary.compatibility.loads_in(export::Runtime::LlamaCpp));
    let header = gguf::read_header(&out).unwrap();
    assert_eq!(header.version, 3);
    assert_eq!(header.get("general.architecture"), Some(&Value::Str("llama".into())));
    for (key, value) in [
        ("llama.block_count", 2),
        ("llama.embedding_length", 32),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 64),
        ("llama.rope.dimension_count", 8),
        ("llama.vocab_size", 200),
        ("general.alignment", 32),
        ("general.file_type", 0),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
        ("tokenizer.ggml.unknown_token_id", 0),
        ("tokenizer.ggml.padding_token_id", 3),
    ] {
        assert_eq!(u32_of(&header, key), value, "{key}");
    }
    assert_eq!(header.get("llama.rope.freq_base"), Some(&Value::F32(500000.0)));
    assert_eq!(header.get("tokenizer.ggml.model"), Some(&Value::Str("gpt2".into())));
    assert_eq!(header.get("tokenizer.ggml.pre"), Some(&Value::Str("smollm".into())), "no multi-digit token");
    assert_eq!(header.get("tokenizer.ggml.add_bos_token"), Some(&Value::Bool(true)), "the template starts with <s>");
    assert_eq!(header.get("tokenizer.chat_template"), Some(&Value::Str("{{ messages }}".into())));
    assert!(header.get("general.quantization_version").is_none(), "nothing is quantized");
    let Some(Value::StrArray(tokens)) = header.get("tokenizer.ggml.tokens") else { panic!("no tokens") };
    assert_eq!(
        (tokens.len(), tokens[4].as_str(), tokens[99].as_str(), tokens[150].as_str()),
        (200, "!", "\u{120}t", "[PAD150]")
    );
    let Some(Value::I32Array(types)) = header.get("tokenizer.ggml.token_type") else { panic!("no types") };
    assert_eq!((types[0], types[4], types[150]), (3, 1, 5), "control, normal, unused");
    assert_eq!(header.get("tokenizer.ggml.merges"), Some(&Value::StrArray(vec!["\u{120} t".into(), "t h".into()])));

    // 1 embedding + 2 x 9 block tensors + the final norm + the untied head, at aligned offsets after the header.
    assert_eq!(header.tensors.len(), 21);
    assert!(header.data_offset_bytes.is_multiple_of(gguf::ALIGNMENT_BYTES));
    assert!(header.tensors.iter().all(|(_, offset)| offset.is_multiple_of(gguf::ALIGNMENT_BYTES)));
    let names: Vec<&str> = header.tensors.iter().map(|(t, _)| t.name.as_str()).collect();
    assert_eq!(&names[..3], ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight"]);
    assert_eq!(names.last(), Some(&"output.weight"));
    let (embd, _) = &header.tensors[0];
    assert_eq!((embd.dims.clone(), embd.ggml_type), (vec![32, 200], GgmlType::F32), "ggml order: row length first");
    let (last, last_offset) = header.tensors.last().unwrap();
    let end = header.data_offset_bytes + last_offset + last.size_bytes().div_ceil(32) * 32;
    assert_eq!(std::fs::metadata(&out).unwrap().len(), end, "every tensor padded, the last one too");

    // Bytes: the embedding as stored; Q (4 heads) and K (2 heads) with each head's rotary halves interleaved.
    let f32s =
        |bytes: Vec<u8>| -> Vec<f32> { bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
    assert_eq!(
        f32s(tensor_bytes(&out, &header, "token_embd.weight")),
        source_values(&model, "model.embed_tokens.weight")
    );
    for (gg, hf, heads, rows) in [
        ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", 4, 32),
        ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2, 16),
    ] {
        let written = f32s(tensor_bytes(&out, &header, gg));
        let source = source_values(&model, hf);
        for row in 0..rows {
            // Head h, pair i, half j of the file is half j, pair i of head h in the checkpoint (8 rows a head).
            let head_rows = rows / heads;
            let (h, within) = (row / head_rows, row % head_rows);
            let src = h * head_rows + (within % 2) * head_rows / 2 + within / 2;
            assert_eq!(&written[row * 32..(row + 1) * 32], &source[src * 32..(src + 1) * 32], "{gg} row {row}");
        }
    }
}

#[test]
fn fp16_and_bf16_plans_cast_the_matrices_and_keep_the_norms_f32() {
    let dir = common::temp_dir();
    let model = Model::open(&llama_fixture(dir.path())).unwrap();
    for (precision, ggml_type, file_type) in
        [(Precision::Fp16, GgmlType::F16, 1), (Precision::Bf16, GgmlType::Bf16, 32)]
    {
        let out = dir.path().join(format!("{precision}.gguf"));
        export::export(&model, &Plan::all(&model, precision), &out, &gguf_options(), &Progress::new()).unwrap();
        let header = gguf::read_header(&out).unwrap();
        assert_eq!(u32_of(&header, "general.file_type"), file_type);
        for (tensor, _) in &header.tensors {
            let want = if tensor.dims.len() == 1 { GgmlType::F32 } else { ggml_type };
            assert_eq!(tensor.ggml_type, want, "{}", tensor.name);
        }
        let written = tensor_bytes(&out, &header, "blk.0.ffn_down.weight");
        let source = source_values(&model, "model.layers.0.mlp.down_proj.weight");
        let expected: Vec<u8> = source
            .iter()
            .flat_map(|&x| match precision {
                Precision::Fp16 => quantstudio::quant::params::to_fp16(x).to_le_bytes(),
                _ => quantstudio::quant::params::to_bf16(x).to_le_bytes(),
            })
            .collect();
        assert_eq!(written, expected, "{precision}");
        let planned: u64 = (0..model.tensors.len())
            .map(|i| Target::Gguf.planned_bytes(&model, &Plan::all(&model, precision), TensorId(i)))
            .sum();
        let data: u64 = header.tensors.iter().map(|(t, _)| t.size_bytes()).sum();
        assert_eq!(planned, data, "planned bytes are the tensor data written");
    }
}

#[test]
fn other_architectures_int8_and_unsafe_destinations_are_refused() {
    let dir = common::temp_dir();
    // The bundled sample is model_type tiny-demo with no tokenizer: it cannot be a GGUF source.
    let sample = Model::open(&common::bundled_sample()).unwrap();
    let check = Target::Gguf.check(&sample, &Plan::all(&sample, Precision::Fp32));
    assert!(check.model_refusal.as_deref().is_some_and(|r| r.contains("tiny-demo")), "{:?}", check.model_refusal);
    let out = dir.path().join("sample.gguf");
    let refused =
        export::export(&sample, &Plan::all(&sample, Precision::Fp32), &out, &gguf_options(), &Progress::new());
    assert!(matches!(refused, Err(Error::ExportRefused { .. })), "{refused:?}");
    assert!(!out.exists());

    let folder = llama_fixture(dir.path());
    let model = Model::open(&folder).unwrap();
    let int8 = Plan::all(&model, Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel)));
    let check = Target::Gguf.check(&model, &int8);
    assert!(!check.is_expressible());
    assert!(check.problems(&model).iter().any(|p| p.contains("use Q8_0")), "{:?}", check.problems(&model));
    let forced = ExportOptions { force: true, ..gguf_options() };
    let refused = export::export(&model, &int8, &out, &forced, &Progress::new());
    assert!(matches!(refused, Err(Error::ExportRefused { forceable: false, .. })), "{refused:?}");

    let fp32 = Plan::all(&model, Precision::Fp32);
    let export_to =
        |dest: &Path, options: &ExportOptions| export::export(&model, &fp32, dest, options, &Progress::new());
    let inside = folder.join("model.gguf");
    assert!(matches!(export_to(&inside, &gguf_options()), Err(Error::BadDestination { .. })));
    assert!(!inside.exists());
    assert!(matches!(export_to(dir.path(), &gguf_options()), Err(Error::BadDestination { .. })), "a folder");
    let foreign = dir.path().join("notes.gguf");
    std::fs::write(&foreign, "not ours").unwrap();
    // What a killed export left beside it (a process id no process has) is removed by the next export there.
    let crashed = dir.path().join(format!(".notes.gguf.tmp-{}", u32::MAX - 1));
    std::fs::write(&crashed, "half a file").unwrap();
    assert!(matches!(export_to(&foreign, &gguf_options()), Err(Error::BadDestination { .. })));
    assert_eq!(std::fs::read(&foreign).unwrap(), b"not ours");
    export_to(&foreign, &ExportOptions { overwrite: true, ..gguf_options() }).unwrap();
    // An earlier quantstudio export is replaced without --overwrite; no temp file stays beside it.
    export_to(&foreign, &gguf_options()).unwrap();
    assert!(gguf::read_header(&foreign).unwrap().get(gguf::RECIPE_KEY).is_some());
    let litter: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".notes"))
        .collect();
    assert!(litter.is_empty());
}

#[test]
fn the_cli_writes_a_gguf_file() {
    let dir = common::temp_dir();
    let folder = llama_fixture(dir.path());
    let out = dir.path().join("cli.gguf");
    let (code, stdout, stderr) = common::run_cli(&[
        "quantize",
        folder.to_str().unwrap(),
        "--precision",
        "fp16",
        "--target",
        "gguf",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("gguf: loads in llama.cpp"), "{stdout}");
    assert_eq!(u32_of(&gguf::read_header(&out).unwrap(), "general.file_type"), 1);
}

/// Runs `tools/check/check_gguf.py` on an export of `folder` at `precision`.
fn python_check(folder: &Path, dir: &Path, precision: &str) {
    let out = dir.join(format!("check-{precision}.gguf"));
    let (code, stdout, stderr) = common::run_cli(&[
        "quantize",
        folder.to_str().unwrap(),
        "--precision",
        precision,
        "--target",
        "gguf",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check/check_gguf.py");
    let types = match precision {
        "fp32" => "f32",
        "fp16" => "f16",
        _ => "bf16",
    };
    let output = std::process::Command::new(crate::python::PYTHON)
        .arg(&script)
        .args([out.to_str().unwrap(), folder.to_str().unwrap(), "--types", types])
        .output()
        .expect("run check_gguf.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check_gguf.py failed on {precision}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ALL CHECKS PASSED"), "{stdout}");
    std::fs::remove_file(&out).unwrap();
}

#[test]
#[cfg_attr(
    not(quantstudio_python_gguf),
    ignore = "needs a Python with numpy, safetensors and gguf (set QUANTSTUDIO_PYTHON)"
)]
fn llama_cpps_gguf_reader_reads_the_fixture_export_back() {
    let dir = common::temp_dir();
    let folder = llama_fixture(dir.path());
    for precision in ["fp32", "fp16", "bf16"] {
        python_check(&folder, dir.path(), precision);
    }
}

#[test]
#[cfg_attr(
    not(all(quantstudio_python_gguf, quantstudio_llama_model)),
    ignore = "needs a Python with gguf (set QUANTSTUDIO_PYTHON) and QUANTSTUDIO_LLAMA_MODEL (SmolLM2-135M)"
)]
fn llama_cpps_gguf_reader_reads_the_smollm2_export_back() {
    let dir = common::temp_dir();
    let folder = Path::new(env!("QUANTSTUDIO_BUILD_LLAMA_MODEL"));
    for precision in ["fp32", "fp16"] {
        python_check(folder, dir.path(), precision);
    }
}

/// Whether llama.cpp's own tools load and run our SmolLM2 exports: `llama-perplexity` over 2 chunks of 512 tokens of
/// the repository's English documentation (README.md and docs/*.md) must give a finite perplexity below 100 for
/// the F32 and the F16 file (tools/llama/check_llama_cpp.py; measured 10.85 for both over 8 chunks of llama.cpp's
/// docs).
#[test]
#[cfg_attr(
    not(all(quantstudio_python_gguf, quantstudio_llama_model, quantstudio_llama_cpp)),
    ignore = "needs QUANTSTUDIO_LLAMA_CPP_BIN (tools/llama/build_llama_cpp.sh), QUANTSTUDIO_LLAMA_MODEL and QUANTSTUDIO_PYTHON"
)]
fn llama_cpp_loads_and_runs_the_smollm2_exports() {
    let dir = common::temp_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()).collect();
    docs.sort();
    for doc in docs.iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        text.push_str(&std::fs::read_to_string(doc).unwrap());
    }
    let text_path = dir.path().join("docs.txt");
    std::fs::write(&text_path, text).unwrap();
    let folder = env!("QUANTSTUDIO_BUILD_LLAMA_MODEL");
    for precision in ["fp32", "fp16"] {
        let out = dir.path().join(format!("smollm2-{precision}.gguf"));
        let args = ["quantize", folder, "--precision", precision, "--target", "gguf", "-o", out.to_str().unwrap()];
        let (code, stdout, stderr) = common::run_cli(&args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let output = std::process::Command::new(crate::python::PYTHON)
            .arg(root.join("tools/llama/check_llama_cpp.py"))
            .args([env!("QUANTSTUDIO_BUILD_LLAMA_CPP_BIN"), out.to_str().unwrap(), text_path.to_str().unwrap()])
            .args(["--chunks", "2", "--max-ppl", "100"])
            .output()
            .expect("run check_llama_cpp.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{precision}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let ppl = result["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0 && ppl < 100.0, "{precision}: perplexity {ppl}");
        std::fs::remove_file(&out).unwrap();
    }
}
