//! FP8 E4M3 against independent implementations, bit for bit: ml_dtypes' and torch's `float8_e4m3fn` casts of
//! about a million f32 values (every tie of every binade, all E4M3 boundaries, specials), and compressed-tensors'
//! FP8 per-channel weight quantization (scales and codes), all produced by `tools/check/check_fp8.py`.
//!
//! Needs a Python with numpy, safetensors and ml_dtypes (`QUANTSTUDIO_PYTHON`, default `python3`), found by build.rs:
//! without one the test is reported as ignored (with `QUANTSTUDIO_REQUIRE_PYTHON=1` the build fails instead); torch
//! and compressed-tensors are compared when they import.

use std::path::Path;
use std::process::Command;

use quantstudio::quant::fp8::{self, absmax_finite, e4m3_to_f32, fp8_scale, quantize_e4m3, to_e4m3_saturating};
use safetensors::SafeTensors;

use crate::common;

/// Mismatches printed when a comparison fails.
const SHOWN_MISMATCHES: usize = 10;

fn f32s(tensors: &SafeTensors, name: &str) -> Vec<f32> {
    let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn u8s(tensors: &SafeTensors, name: &str) -> Option<Vec<u8>> {
    tensors.tensor(name).ok().map(|view| view.data().to_vec())
}

/// Indices where `ours` and `theirs` differ, described for a failure message.
fn mismatches(x: &[f32], ours: &[u8], theirs: &[u8]) -> (usize, String) {
    assert_eq!(ours.len(), theirs.len());
    let bad: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != theirs[i]).collect();
    let shown: Vec<String> = bad
        .iter()
        .take(SHOWN_MISMATCHES)
        .map(|&i| {
            format!("x = {:e} ({:#010x}): ours {:#04x}, theirs {:#04x}", x[i], x[i].to_bits(), ours[i], theirs[i])
        })
        .collect();
    (bad.len(), shown.join("\n"))
}

#[test]
#[cfg_attr(
    not(quantstudio_python_ml_dtypes),
    ignore = "needs a Python with numpy, safetensors and ml_dtypes (set QUANTSTUDIO_PYTHON)"
)]
fn e4m3_codes_match_ml_dtypes_torch_and_compressed_tensors_bit_for_bit() {
    let python = crate::python::PYTHON;
    let dir = common::temp_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check/check_fp8.py");
    let output = Command::new(python).arg(&script).arg("--out").arg(dir.path()).output().expect("run check_fp8.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "check_fp8.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("check_fp8.py prints one JSON line");
    let bytes = std::fs::read(dir.path().join("fp8.safetensors")).expect("fp8.safetensors written");
    let tensors = SafeTensors::deserialize(&bytes).expect("a safetensors file");

    let x = f32s(&tensors, "x");
    let ml_dtypes = u8s(&tensors, "ml_dtypes").expect("ml_dtypes codes");
    assert_eq!(x.len(), ml_dtypes.len());
    assert!(x.len() > 1_000_000, "the sample is as large as documented: {}", x.len());

    // The scalar definition, then the dispatched bulk loop (AVX2 where the CPU has it) with scale 1.
    let scalar: Vec<u8> = x.iter().map(|&v| to_e4m3_saturating(v)).collect();
    let (bad, shown) = mismatches(&x, &scalar, &ml_dtypes);
    assert_eq!(bad, 0, "to_e4m3_saturating vs ml_dtypes: {bad} of {} differ\n{shown}", x.len());
    let mut bulk = vec![0u8; x.len()];
    quantize_e4m3(&x, 1.0, &mut bulk);
    let (bad, shown) = mismatches(&x, &bulk, &ml_dtypes);
    assert_eq!(bad, 0, "quantize_e4m3 ({}) vs ml_dtypes: {bad} differ\n{shown}", fp8_implementation());
    eprintln!("fp8: {} values: to_e4m3_saturating and quantize_e4m3 equal ml_dtypes' codes", x.len());

    match u8s(&tensors, "torch") {
        Some(torch) => {
            let (bad, shown) = mismatches(&x, &scalar, &torch);
            assert_eq!(bad, 0, "to_e4m3_saturating vs torch: {bad} differ\n{shown}");
            assert_eq!(summary["torch_vs_ml_dtypes_mismatches"], 0, "{summary}");
            eprintln!("fp8: torch's float8_e4m3fn cast equals ml_dtypes' and ours on all {} values", x.len());
        }
        None => eprintln!("fp8: torch not importable: compared with ml_dtypes only"),
    }

    if let (Some(ct_codes), true) = (u8s(&tensors, "ct_codes"), tensors.tensor("ct_scale").is_ok()) {
        compare_with_compressed_tensors(&tensors, &ct_codes);
    } else {
        eprintln!("fp8: compressed-tensors not importable: its weight quantization not compared");
    }
}

fn fp8_implementation() -> &'static str {
    quantstudio::quant::kernels::implementation_name()
}

/// Per-channel FP8 weights against compressed-tensors 0.20: the same scale bits and codes, except two documented
/// differences: an all-zero row gets scale 1 here and `f32::EPSILON` there (its codes are all 0 either way), and a
/// -0.0 weight is code 0x80 here and 0x00 there (compressed-tensors adds the zero point 0.0 before the cast, which
/// turns -0 into +0; both decode to zero).
fn compare_with_compressed_tensors(tensors: &SafeTensors, ct_codes: &[u8]) {
    let weight_view = tensors.tensor("weight").expect("weight");
    let cols = weight_view.shape()[1];
    let weight = f32s(tensors, "weight");
    let ct_scale = f32s(tensors, "ct_scale");
    let (mut zero_rows, mut negative_zeros) = (0, 0);
    for (r, row) in weight.chunks_exact(cols).enumerate() {
        let absmax = absmax_finite(row);
        let scale = fp8_scale(absmax);
        if absmax == 0.0 {
            assert_eq!((scale, ct_scale[r]), (1.0, f32::EPSILON), "zero row {r}");
            zero_rows += 1;
        } else {
            assert_eq!(scale.to_bits(), ct_scale[r].to_bits(), "row {r}: {scale:e} vs {:e}", ct_scale[r]);
        }
        let mut codes = vec![0u8; cols];
        quantize_e4m3(row, scale, &mut codes);
        for (c, (&ours, &theirs)) in codes.iter().zip(&ct_codes[r * cols..(r + 1) * cols]).enumerate() {
            let w = row[c];
            if w == 0.0 && w.is_sign_negative() {
                assert_eq!((ours, theirs), (0x80, 0x00), "-0.0 at [{r}, {c}]");
                negative_zeros += 1;
            } else {
                assert_eq!(ours, theirs, "[{r}, {c}]: w = {w:e}, scale {scale:e}");
            }
            // Either way the weight comes back as e4m3_to_f32(code) * scale.
            assert_eq!(e4m3_to_f32(ours) * scale, fp8::quantize_dequantize(w, scale));
        }
    }
    assert!(zero_rows > 0 && negative_zeros > 0, "the documented differences are exercised");
    eprintln!(
        "fp8: compressed-tensors per-channel FP8: scales and codes equal on {} rows (differences only as documented)",
        weight.len() / cols
    );
}
