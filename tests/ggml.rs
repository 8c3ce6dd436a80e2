//! llama.cpp's block formats (src/quant/ggml.rs): hand-computed blocks, layouts, the scale searches' error bounds,
//! and the activation quantizers. Byte-for-byte agreement with gguf-py is checked in `python::ggml_blocks_*`.

use half::f16;
use quantstudio::quant::ggml::{BlockFormat, dequantize_row, quantize_activation_row, quantize_row};

fn seeded_normal(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f64 + 0.5) / (1u64 << 24) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn round_trip(format: BlockFormat, x: &[f32]) -> Vec<f32> {
    let bytes = quantize_row(format, x);
    assert_eq!(bytes.len(), x.len() / format.block_values() * format.block_bytes());
    let mut y = vec![0f32; x.len()];
    dequantize_row(format, &bytes, &mut y);
    y
}

#[test]
fn sizes_and_type_ids_are_ggmls() {
    let table: Vec<_> = BlockFormat::ALL
        .iter()
        .map(|f| (f.name(), f.ggml_type_id(), f.block_values(), f.block_bytes(), f.bits_per_value()))
        .collect();
    assert_eq!(
        table,
        vec![
            ("Q4_0", 2, 32, 18, 4.5),
            ("Q8_0", 8, 32, 34, 8.5),
            ("Q4_K", 12, 256, 144, 4.5),
            ("Q6_K", 14, 256, 210, 6.5625)
        ]
    );
    assert!(BlockFormat::Q8_0.fits(576) && BlockFormat::Q4_0.fits(64));
    assert!(!BlockFormat::Q4K.fits(576) && BlockFormat::Q6K.fits(1536) && !BlockFormat::Q8_0.fits(0));
    assert!(!BlockFormat::Q4_0.fits(48));
}

#[test]
fn q8_0_block_with_absmax_127_has_scale_one_and_rounds_half_away_from_zero() {
    let mut x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
    x[0] = -127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.49;
    let bytes = quantize_row(BlockFormat::Q8_0, &x);
    assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), f16::from_f32(1.0).to_bits());
    let codes: Vec<i8> = bytes[2..].iter().map(|&b| b as i8).collect();
    assert_eq!(&codes[..4], &[-127, 3, -3, 0]);
    for j in 4..32 {
        assert_eq!(codes[j] as f32, x[j]);
    }
    let y = round_trip(BlockFormat::Q8_0, &x);
    assert_eq!(y[1], 3.0);
    assert_eq!(y[0], -127.0);
}

#[test]
fn q4_0_block_takes_the_signed_max_truncates_and_packs_halves_into_nibbles() {
    // max = -8 (largest magnitude, negative) so d = max / -8 = 1 and id = 1.
    let mut x = vec![0f32; 32];
    x[0] = -8.0;
    x[1] = 0.4; // 8.9 -> 8
    x[2] = 0.5; // 9.0 -> 9
    x[3] = -0.5; // 8.0 -> 8
    x[16] = 7.0; // 15.5 -> 15
    x[17] = 7.9; // 16.4 -> 16 -> min 15
    x[18] = 3.0; // 11.5 -> 11
    let bytes = quantize_row(BlockFormat::Q4_0, &x);
    assert_eq!(bytes.len(), 18);
    assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), f16::from_f32(1.0).to_bits());
    assert_eq!(bytes[2], 15 << 4); // x[0] -> 0, x[16] -> 15
    assert_eq!(bytes[3], 8 | (15 << 4));
    assert_eq!(bytes[4], 9 | (11 << 4));
    assert_eq!(bytes[5], 8 | (8 << 4));
    let y = round_trip(BlockFormat::Q4_0, &x);
    assert_eq!(&y[..4], &[-8.0, 0.0, 1.0, 0.0]);
    assert_eq!(&y[16..19], &[7.0, 7.0, 3.0]);
    // The positive max: d = 8 / -8 = -1, codes 8 - x.
    let x: Vec<f32> = (0..32).map(|j| if j == 5 { 8.0 } else { 0.0 }).collect();
    let bytes = quantize_row(BlockFormat::Q4_0, &x);
    assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), f16::from_f32(-1.0).to_bits());
    assert_eq!(bytes[2 + 5] & 0x0F, 0);
    assert_eq!(round_trip(BlockFormat::Q4_0, &x), x);
}

#[test]
fn all_zero_blocks_are_all_zero_bytes_and_zero_values() {
    for format in BlockFormat::ALL {
        let x = vec![0f32; 512];
        let bytes = quantize_row(format, &x);
        let zero_code_bytes: Vec<u8> = match format {
            // Q4_0 stores code 8 for zero (offset 8) with d = 0.
            BlockFormat::Q4_0 => bytes.chunks(18).flat_map(|b| b[2..].to_vec()).filter(|&b| b != 0x88).collect(),
            _ => bytes.iter().copied().filter(|&b| b != 0).collect(),
        };
        assert!(zero_code_bytes.is_empty(), "{format}: {bytes:?}");
        assert!(round_trip(format, &x).iter().all(|&v| v == 0.0), "{format}");
    }
}

#[test]
fn decoding_hand_built_k_blocks_follows_the_layouts() {
    // Q4_K: d = 1, dmin = 0.5, sub-block j has scale j + 1 and min 2j (6 bits, j >= 4 split across bytes).
    let mut block = vec![0u8; 144];
    block[..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
    block[2..4].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
    let scale = |j: usize| (j + 1) as u8 + if j == 7 { 40 } else { 0 }; // 48 for j = 7 uses the high bits
    let min = |j: usize| (2 * j) as u8 + if j == 6 { 30 } else { 0 }; // 42 for j = 6
    for j in 0..8 {
        let (ls, lm) = (scale(j), min(j));
        if j < 4 {
            block[4 + j] = ls;
            block[4 + j + 4] = lm;
        } else {
            block[4 + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            block[4 + j - 4] |= (ls >> 4) << 6;
            block[4 + j] |= (lm >> 4) << 6;
        }
    }
    for (i, q) in block[16..].iter_mut().enumerate() {
        *q = (i % 16) as u8 | ((15 - i % 16) as u8) << 4;
    }
    let mut y = vec![0f32; 256];
    dequantize_row(BlockFormat::Q4K, &block, &mut y);
    for (v, &got) in y.iter().enumerate() {
        let (chunk, within) = (v / 64, v % 64);
        let j = 2 * chunk + within / 32;
        let l = within % 32;
        let q = if within < 32 { l % 16 } else { 15 - l % 16 };
        let want = scale(j) as f32 * q as f32 - 0.5 * min(j) as f32;
        assert_eq!(got, want, "value {v}");
    }
    // Q6_K: d = 0.25, scales alternate 1, -2, ...; value v has 6-bit code (v % 64).
    let mut block = vec![0u8; 210];
    block[208..].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
    for s in 0..16 {
        block[192 + s] = (if s % 2 == 0 { 1i8 } else { -2i8 }) as u8;
    }
    let code = |v: usize| (v * 7 % 64) as u8;
    for half in 0..2 {
        for l in 0..32 {
            let c = |k: usize| code(128 * half + l + 32 * k);
            block[64 * half + l] = (c(0) & 0xF) | ((c(2) & 0xF) << 4);
            block[64 * half + l + 32] = (c(1) & 0xF) | ((c(3) & 0xF) << 4);
            block[128 + 32 * half + l] = (c(0) >> 4) | ((c(1) >> 4) << 2) | ((c(2) >> 4) << 4) | ((c(3) >> 4) << 6);
        }
    }
    dequantize_row(BlockFormat::Q6K, &block, &mut y);
    for (v, &got) in y.iter().enumerate() {
        let s = if (v / 16) % 2 == 0 { 1.0 } else { -2.0 };
        assert_eq!(got, 0.25 * s * (code(v) as f32 - 32.0), "value {v}");
    }
}

#[test]
fn k_quant_round_trips_beat_their_plain_grids_on_seeded_normals() {
    let x = seeded_normal(256 * 16, 18);
    for (format, bits) in [(BlockFormat::Q4K, 4), (BlockFormat::Q6K, 6)] {
        let y = round_trip(format, &x);
        for (block_x, block_y) in x.chunks(format.block_values()).zip(y.chunks(format.block_values())) {
            let range = block_x.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0;
            // A uniform grid of 2^bits levels over the block's range errs at most half a step (plus the 6-/8-bit
            // quantization of the sub-block scales): the per-sub-block scales do better than that on average.
            let step = range / ((1 << bits) - 1) as f32;
            let worst = block_x.iter().zip(block_y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= step, "{format}: worst {worst} step {step}");
        }
        let mse: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64;
        let bound = if bits == 4 { 0.01 } else { 0.001 };
        assert!(mse < bound && mse > 0.0, "{format}: mse {mse}");
    }
    // Q8_0 is never more than half a step off; Q4_0 rounds half a step except at the clamped code 15, where a
    // value near +amax opposite a -amax max loses up to one step. The f16 scale adds up to 2^-11 of it per code
    // step (127 steps for Q8_0).
    for (format, steps) in [(BlockFormat::Q4_0, 1.0 + 8.0 / 2048.0), (BlockFormat::Q8_0, 0.5 + 127.0 / 2048.0)] {
        let y = round_trip(format, &x);
        for (block_x, block_y) in x.chunks(32).zip(y.chunks(32)) {
            let amax = block_x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = if format == BlockFormat::Q4_0 { amax / 8.0 } else { amax / 127.0 };
            let worst = block_x.iter().zip(block_y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= step * steps * 1.0001, "{format}: worst {worst} step {step}");
        }
    }
}

#[test]
fn quantization_is_deterministic_and_blockwise() {
    let x = seeded_normal(1024, 7);
    for format in BlockFormat::ALL {
        let whole = quantize_row(format, &x);
        let mut pieces = Vec::new();
        for chunk in x.chunks(format.block_values()) {
            pieces.extend(quantize_row(format, chunk));
        }
        assert_eq!(whole, pieces, "{format}");
        assert_eq!(whole, quantize_row(format, &x), "{format}");
    }
}

#[test]
fn activation_rows_become_llama_cpp_dot_product_inputs() {
    // Q8_0 activations (Q8_0 and Q4_0 weights): d = f16(amax / 127), codes round half to even of x * 127 / amax.
    let mut row: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
    row[0] = 127.0;
    row[1] = 2.5;
    quantize_activation_row(BlockFormat::Q4_0, &mut row);
    assert_eq!(row[1], 2.0, "ties to even on x86 AVX");
    assert_eq!(row[0], 127.0);
    assert_eq!(row[2], -14.0);
    // Q8_K activations (K-quant weights): f32 d = max / -127 over 256 values, nearest_int codes.
    let x = seeded_normal(512, 3);
    let mut row = x.clone();
    quantize_activation_row(BlockFormat::Q6K, &mut row);
    for (bx, by) in x.chunks(256).zip(row.chunks(256)) {
        let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        for (a, b) in bx.iter().zip(by) {
            let code = b / d;
            assert!((code - code.round()).abs() < 1e-3, "{b} is not on the grid of {d}");
            assert!((a - b).abs() <= d * 0.5 * 1.0001, "{a} -> {b}, d {d}");
        }
    }
    let mut zeros = vec![0f32; 256];
    quantize_activation_row(BlockFormat::Q4K, &mut zeros);
    assert!(zeros.iter().all(|&v| v == 0.0));
}

/// A model with a 2-D weight of rows of 256, one of rows of 96 and a 3-D one, and a norm.
fn block_model(dir: &std::path::Path) -> quantstudio::Model {
    use crate::common::{Spec, normal, write_model};
    let path = dir.join("model.safetensors");
    write_model(
        &path,
        &[
            Spec::f32("wide.weight", &[4, 256], &normal(1024, 1, 0.05)),
            Spec::f32("narrow.weight", &[4, 96], &normal(384, 2, 0.05)),
            Spec::f32("cube.weight", &[2, 4, 32], &normal(256, 3, 0.05)),
            Spec::f32("norm.weight", &[256], &normal(256, 4, 1.0)),
        ],
    );
    quantstudio::Model::open(&path).unwrap()
}

#[test]
fn plans_give_block_formats_to_whole_block_rows_only_and_say_why() {
    use quantstudio::quant::{Precision, Recipe};
    let dir = crate::common::temp_dir();
    let model = block_model(dir.path());
    let layer = |name: &str| model.layer_by_name(name).unwrap();
    let plan = Recipe::everywhere(Precision::Q4K).resolve(&model).unwrap();
    assert_eq!(plan.layer(layer("wide")), Precision::Q4K);
    assert_eq!(plan.layer(layer("narrow")), Precision::Fp32);
    assert_eq!(plan.layer(layer("cube")), Precision::Fp32);
    let text = plan.warnings.join("\n");
    assert!(
        text.contains("Q4_K needs rows of a multiple of 256 values (its block size); these rows have 96"),
        "{text}"
    );
    assert!(text.contains("narrow") && text.contains("cube") && text.contains("2-D weights only"), "{text}");
    let plan = Recipe::everywhere(Precision::Q4_0).resolve(&model).unwrap();
    assert_eq!(plan.layer(layer("narrow")), Precision::Q4_0);
    assert_eq!(plan.input_quant(layer("narrow")), Some(quantstudio::quant::InputQuant::Blocks(BlockFormat::Q4_0)));
    // A plan built around resolution keeps the tensor it cannot take in float.
    let forced = quantstudio::quant::Plan::all(&model, Precision::Q6K);
    assert_eq!(forced.tensor(&model, model.tensor_by_name("narrow.weight").unwrap()), Precision::Fp32);
    // Sizes count blocks: 4 rows of 256 values are 4 Q4_K super-blocks of 144 bytes.
    let wide = model.tensor_by_name("wide.weight").unwrap();
    let q4k = Recipe::everywhere(Precision::Q4K).resolve(&model).unwrap();
    assert_eq!(quantstudio::export::planned_bytes(&model, &q4k, wide), 4 * 144);
    assert_eq!(quantstudio::export::planned_bytes(&model, &plan, wide), 32 * 18);
}

#[test]
fn analysis_and_simulation_use_the_decoded_blocks() {
    use quantstudio::quant::pass::{TensorData, analyze};
    use quantstudio::quant::{Precision, Recipe};
    let values = seeded_normal(8 * 512, 11);
    let data = TensorData::from_f32(&values, 8, 512);
    let progress = quantstudio::progress::Progress::new();
    for (precision, format) in [
        (Precision::Q8_0, BlockFormat::Q8_0),
        (Precision::Q4_0, BlockFormat::Q4_0),
        (Precision::Q4K, BlockFormat::Q4K),
        (Precision::Q6K, BlockFormat::Q6K),
    ] {
        let decoded = round_trip(format, &values);
        let simulated = quantstudio::runtime::weights::simulate(&data, precision, &progress).unwrap();
        assert_eq!(simulated, decoded, "{format}");
        let analysis = analyze(&data, precision, &progress).unwrap();
        let mse = values.iter().zip(&decoded).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / values.len() as f64;
        let max = values.iter().zip(&decoded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!((analysis.error.mse - mse).abs() <= mse * 1e-9, "{format}: {} vs {mse}", analysis.error.mse);
        assert_eq!(analysis.error.max_abs_error, max as f64, "{format}");
        assert_eq!(analysis.error.saturated_count, 0);
        let h = quantstudio::quant::pass::histograms(&data, &analysis, &progress).unwrap();
        assert_eq!(h.error.counts.iter().sum::<u64>(), values.len() as u64);
        assert_eq!(analysis.precision.to_string(), format.name());
    }
    // Rows that are not whole blocks are an error, not a panic.
    let data = TensorData::from_f32(&values[..8 * 96], 8, 96);
    assert!(analyze(&data, Precision::Q4K, &progress).is_err());
    assert!(quantstudio::runtime::weights::simulate(&data, Precision::Q4K, &progress).is_err());
    // The runtime quantizes each input row as llama.cpp's product does.
    let dir = crate::common::temp_dir();
    let model = block_model(dir.path());
    let plan = Recipe::everywhere(Precision::Q6K).resolve(&model).unwrap();
    let quant = plan.input_quant(model.layer_by_name("wide").unwrap());
    let x = seeded_normal(3 * 256, 5);
    let planned = quantstudio::runtime::linear::planned_input(&x, 256, quant.as_ref());
    let mut expected = x.clone();
    for row in expected.chunks_mut(256) {
        quantize_activation_row(BlockFormat::Q6K, row);
    }
    assert_eq!(&planned[..], &expected[..]);
    assert_ne!(expected, x);
}

#[test]
fn compressed_tensors_cannot_express_blocks_and_offers_int8() {
    use quantstudio::export::Treatment;
    use quantstudio::quant::{Int8Scheme, Precision, Recipe};
    let dir = crate::common::temp_dir();
    let model = block_model(dir.path());
    let plan = Recipe::everywhere(Precision::Q8_0).resolve(&model).unwrap();
    let check = quantstudio::export::compressed_tensors::check(&model, &plan);
    let wide = model.layer_by_name("wide").unwrap();
    let layer = check.layers.iter().find(|l| l.layer == wide).unwrap();
    match &layer.treatment {
        Treatment::NotExpressible(reason) => assert!(reason.contains("Q8_0 blocks"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let expected_fix = if model.layer(wide).kind == quantstudio::model::LayerKind::Linear {
        Precision::Int8(Int8Scheme::default())
    } else {
        Precision::Fp16
    };
    assert_eq!(layer.fix, Some(expected_fix));
    assert!(!check.is_expressible());
}

#[test]
fn cli_takes_block_precisions() {
    let dir = crate::common::temp_dir();
    let _ = block_model(dir.path());
    let path = dir.path().join("model.safetensors");
    let (code, stdout, stderr) =
        crate::common::run_cli(&["quantize", path.to_str().unwrap(), "--precision", "q4_k", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tensors = doc["tensors"].as_array().unwrap();
    let wide = tensors.iter().find(|t| t["name"] == "wide.weight").unwrap();
    assert_eq!(wide["precision"], "q4_k", "{wide}");
    assert!(wide["mse"].as_f64().is_some_and(|m| m > 0.0), "{wide}");
    let (code, _, stderr) =
        crate::common::run_cli(&["quantize", path.to_str().unwrap(), "--precision", "q8_0", "--asymmetric"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("int8 only"), "{stderr}");
}

/// Runs tools/check/check_ggml_blocks.py in `mode` on `dir`; returns its JSON line.
fn ggml_check(mode: &str, dir: &std::path::Path) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check/check_ggml_blocks.py");
    let output = std::process::Command::new(crate::python::PYTHON)
        .arg(&script)
        .arg(mode)
        .arg(dir)
        .output()
        .expect("run check_ggml_blocks.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check_ggml_blocks.py {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("check_ggml_blocks.py prints one JSON line")
}

/// The rows of a 2-D tensor of `tensors`, as bytes.
fn rows_of(tensors: &safetensors::SafeTensors, name: &str) -> Vec<Vec<u8>> {
    let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let row_bytes = view.data().len() / view.shape()[0];
    view.data().chunks(row_bytes).map(<[u8]>::to_vec).collect()
}

fn f32_row(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
#[cfg_attr(
    not(quantstudio_python_gguf),
    ignore = "needs a Python with numpy, safetensors and gguf (set QUANTSTUDIO_PYTHON)"
)]
fn blocks_match_gguf_py_byte_for_byte_and_decode_as_gguf_py_does() {
    let dir = crate::common::temp_dir();
    let made = ggml_check("--make", dir.path());
    let bytes = std::fs::read(dir.path().join("inputs.safetensors")).unwrap();
    let inputs = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<String> = made["cases"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(cases.len(), 5, "{made}");
    let mut ours = Vec::new();
    for case in &cases {
        let rows: Vec<Vec<f32>> = rows_of(&inputs, &format!("x_{case}")).iter().map(|r| f32_row(r)).collect();
        for (format, name) in [
            (BlockFormat::Q8_0, "q8_0"),
            (BlockFormat::Q4_0, "q4_0"),
            (BlockFormat::Q4K, "q4_k"),
            (BlockFormat::Q6K, "q6_k"),
        ] {
            let blocks: Vec<Vec<u8>> = rows.iter().map(|r| quantize_row(format, r)).collect();
            if matches!(format, BlockFormat::Q8_0 | BlockFormat::Q4_0) {
                let theirs = rows_of(&inputs, &format!("gguf_{name}_{case}"));
                for (row, (a, b)) in blocks.iter().zip(&theirs).enumerate() {
                    let first = a.iter().zip(b).position(|(x, y)| x != y);
                    assert!(first.is_none(), "{name} {case} row {row}: first differing byte {first:?}");
                }
            }
            let flat: Vec<u8> = blocks.concat();
            ours.push(crate::common::Spec::raw(
                &format!("{name}_{case}"),
                safetensors::Dtype::U8,
                &[rows.len(), blocks[0].len()],
                flat,
            ));
        }
    }
    crate::common::write_model(&dir.path().join("ours.safetensors"), &ours);
    let summary = ggml_check("--dequantize", dir.path());
    let bytes = std::fs::read(dir.path().join("decoded.safetensors")).unwrap();
    let decoded = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for spec in &ours {
        let name = &spec.name;
        let format = match &name[..4] {
            "q8_0" => BlockFormat::Q8_0,
            "q4_0" => BlockFormat::Q4_0,
            "q4_k" => BlockFormat::Q4K,
            _ => BlockFormat::Q6K,
        };
        let ours_rows = rows_of(&inputs, &format!("x_{}", &name[5..])).len();
        let theirs = rows_of(&decoded, name);
        assert_eq!(theirs.len(), ours_rows);
        let block_rows = spec.bytes.len() / ours_rows;
        for (row, their_row) in theirs.iter().enumerate() {
            let mut mine = vec![0f32; 512];
            dequantize_row(format, &spec.bytes[row * block_rows..(row + 1) * block_rows], &mut mine);
            let theirs = f32_row(their_row);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&mine), bits(&theirs), "{name} row {row}");
        }
    }
    eprintln!("ggml blocks: gguf {} agrees; MSE of our blocks per format and case: {}", made["gguf"], summary["mse"]);
}

/// llama-quantize's own blocks for real weights (SmolLM2-135M), dumped by `check_ggml_blocks.py --pairs DIR
/// F32.gguf QUANT.gguf...` from `llama-quantize --pure` outputs: every row of ours equals llama.cpp's, byte for
/// byte. Ignored by default (it needs the llama.cpp build and a converted model); run it with
/// `QUANTSTUDIO_GGML_PAIRS=DIR cargo test --test integration ggml::blocks_match_llama_quantize -- --ignored`.
#[test]
#[ignore = "needs QUANTSTUDIO_GGML_PAIRS=DIR written by tools/check/check_ggml_blocks.py --pairs"]
fn blocks_match_llama_quantize() {
    let dir = std::env::var("QUANTSTUDIO_GGML_PAIRS").expect("QUANTSTUDIO_GGML_PAIRS names the --pairs folder");
    let bytes = std::fs::read(std::path::Path::new(&dir).join("pairs.safetensors")).expect("pairs.safetensors");
    let pairs = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut compared = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    let names = pairs.names();
    for name in names.iter().filter(|n| !n.starts_with("x_")) {
        let (format, index, label) = match name.split_at(5) {
            ("q8_0_", n) => (BlockFormat::Q8_0, n, "Q8_0"),
            ("q4_0_", n) => (BlockFormat::Q4_0, n, "Q4_0"),
            ("q4_k_", n) => (BlockFormat::Q4K, n, "Q4_K"),
            ("q6_k_", n) => (BlockFormat::Q6K, n, "Q6_K"),
            _ => panic!("unexpected tensor {name}"),
        };
        let inputs = rows_of(&pairs, &format!("x_{index}"));
        let theirs = rows_of(&pairs, name);
        assert_eq!(inputs.len(), theirs.len(), "{name}");
        let mut differing = 0;
        for (row, (x, blocks)) in inputs.iter().zip(&theirs).enumerate() {
            let ours = quantize_row(format, &f32_row(x));
            if &ours != blocks {
                differing += 1;
                if differing == 1 {
                    let at = ours.iter().zip(blocks).position(|(a, b)| a != b);
                    eprintln!("{name} row {row}: first differing byte {at:?}");
                }
            }
        }
        let entry = compared.entry(label).or_default();
        entry.0 += inputs.len();
        entry.1 += differing;
    }
    eprintln!("rows compared with llama-quantize (rows, differing): {compared:?}");
    assert!(compared.len() >= 2, "{compared:?}");
    assert!(compared.values().all(|&(_, differing)| differing == 0), "{compared:?}");
}

/// The window's plan editor gives a block format only to the layers it fits and says why the others kept theirs.
#[cfg(feature = "gui")]
#[test]
fn the_plan_editor_leaves_layers_a_block_does_not_fit_and_says_why() {
    use quantstudio::app::state::{Command, PlanEditor};
    use quantstudio::quant::{Precision, Recipe};
    let dir = crate::common::temp_dir();
    let model = block_model(dir.path());
    let (wide, narrow) = (model.layer_by_name("wide").unwrap(), model.layer_by_name("narrow").unwrap());
    let mut editor = PlanEditor::new(Recipe::uniform(Precision::Fp16).resolve(&model).unwrap());
    let command = Command::SetPrecision { layers: vec![wide, narrow], precision: Precision::Q4K };
    let reaction = editor.apply(&command, &model, None);
    assert!(reaction.plan_changed);
    let text = reaction.notice.expect("a notice").text;
    assert!(text.contains("multiple of 256") && text.contains("narrow"), "{text}");
    assert_eq!(editor.plan().layer(wide), Precision::Q4K);
    assert_eq!(editor.plan().layer(narrow), Precision::Fp16);
    let command = Command::SetPrecisionMatching { pattern: "*".into(), precision: Precision::Q8_0 };
    let reaction = editor.apply(&command, &model, None);
    assert!(reaction.notice.unwrap().text.contains("2-D weights only"));
    assert_eq!(editor.plan().layer(narrow), Precision::Q8_0);
}
