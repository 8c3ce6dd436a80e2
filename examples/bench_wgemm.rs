//! Compact weights against FP32 in linear layers (issue 7): `cargo run --release --no-default-features --example
//! bench_wgemm -- [REPEAT]`.
//!
//! For each `m x k x n` (activations `[m, k]` times a weight `[n, k]`ᵀ, no bias), the median over `REPEAT` timed
//! rounds after three warm-up rounds (the variants take turns within a round) of:
//! - `fp32`: `ops::linear` on the weight held transposed `[k, n]`;
//! - `fp16`, `bf16`: `wgemm::PackedWeights::{fp16, bf16}` (2 bytes a weight, converted tile by tile per call);
//! - `int8`: weight-only INT8, per-channel symmetric codes (1 byte a weight), dequantised tile by tile per call;
//! - `fp8`: FP8 E4M3 codes with per-channel scales (1 byte a weight), dequantised tile by tile per call.
//!
//! Every variant allocates its output per call, as `ops::linear` does. Prints one JSON document.

mod common;

use quantstudio::quant::QParams;
use quantstudio::quant::fp8;
use quantstudio::runtime::{ops, wgemm};

use common::{medians_ms, values};

fn main() -> quantstudio::error::Result<()> {
    let repeat: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(30).max(1);
    let shapes = [(512usize, 768usize, 768usize), (128, 768, 3072), (1, 768, 3072)];
    let mut results = Vec::new();
    for (m, k, n) in shapes {
        let x = values(m * k, 1);
        let w = values(n * k, 2);
        let w_t = ops::transpose(&w, n, k);
        let mut codes = Vec::with_capacity(n * k);
        let mut params = Vec::with_capacity(n);
        for row in w.chunks_exact(k) {
            let p = QParams::symmetric(row.iter().fold(0f32, |m, v| m.max(v.abs())));
            codes.extend(row.iter().map(|&v| p.quantize(v)));
            params.push(p);
        }
        let fp16 = wgemm::PackedWeights::fp16(&w, n, k)?;
        let bf16 = wgemm::PackedWeights::bf16(&w, n, k)?;
        let int8 = wgemm::PackedWeights::int8(&codes, &params, n, k)?;
        let mut fp8_codes = vec![0u8; n * k];
        let mut fp8_scales = Vec::with_capacity(n);
        for (row, out) in w.chunks_exact(k).zip(fp8_codes.chunks_exact_mut(k)) {
            let scale = fp8::fp8_scale(fp8::absmax_finite(row));
            fp8::quantize_e4m3(row, scale, out);
            fp8_scales.push(scale);
        }
        let fp8 = wgemm::PackedWeights::fp8(&fp8_codes, &fp8_scales, n, k)?;
        let matmul = |packed: &wgemm::PackedWeights| {
            std::hint::black_box(packed.matmul(&x, m, None));
        };
        let medians = medians_ms(
            repeat,
            &mut [
                &mut || {
                    std::hint::black_box(ops::linear(&x, m, k, &w_t, n, None));
                },
                &mut || matmul(&fp16),
                &mut || matmul(&bf16),
                &mut || matmul(&int8),
                &mut || matmul(&fp8),
            ],
        );
        let [fp32_ms, fp16_ms, bf16_ms, int8_ms, fp8_ms] = medians[..] else { unreachable!("five variants") };
        results.push(serde_json::json!({
            "shape": format!("{m}x{k}x{n}"),
            "fp32_ms": fp32_ms,
            "fp16_ms": fp16_ms,
            "bf16_ms": bf16_ms,
            "int8_weight_only_ms": int8_ms,
            "fp8_weight_only_ms": fp8_ms,
            "fp16_over_fp32": fp16_ms / fp32_ms,
            "bf16_over_fp32": bf16_ms / fp32_ms,
            "int8_over_fp32": int8_ms / fp32_ms,
            "fp8_over_fp32": fp8_ms / fp32_ms,
            "weight_bytes": {
                "fp32": 4 * n * k,
                "fp16": fp16.size_bytes(),
                "bf16": bf16.size_bytes(),
                "int8": int8.size_bytes(),
                "fp8": fp8.size_bytes(),
            },
        }));
    }
    let doc = serde_json::json!({
        "tool": "quantstudio bench_wgemm",
        "simd": wgemm::simd_available(),
        "threads": rayon::current_num_threads(),
        "repeat": repeat,
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    Ok(())
}
