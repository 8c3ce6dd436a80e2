//! INT8 against FP32 matrix products, the shapes of issue 7 and then those of all-MiniLM-L6-v2's linear layers at 128
//! tokens and at 1: `cargo run --release --example bench_gemm -- [REPEAT]`.
//!
//! For each `m x k x n` (activations `[m, k]`, uniform in `[-2, 2]`, times weights `[n, k]`ᵀ, standard normal: trained
//! weights are bell-shaped), the median over `REPEAT` timed rounds after
//! three warm-up rounds (the five take turns within each round, so a slow spell of the machine falls on all) of:
//! - `fp32`: the runtime's SGEMM (`ops::matmul`, weights held transposed `[k, n]`);
//! - `int8_gemm`: the exact `i32` product of INT8 codes (`qgemm::gemm_i8`, weights packed once);
//! - `int8_dynamic`: what a dynamically quantised layer does per call, as onnxruntime's `quantize_dynamic` model
//!   does: per-tensor absmax of the activations, their INT8 codes (made block by block inside the product,
//!   `qgemm::gemm_quantized_into`), the INT8 product, requantised to `f32` with per-channel weight scales as the
//!   tiles are stored (the output is allocated per call, as FP32's is).
//! - `int8_static`: the same with a given (calibrated) activation scale: no absmax pass (static W8A8);
//! - `int8_per_token`: W8A8-dynamic as vLLM deploys it: each row's absmax, scale and codes made inside the product
//!   (`qgemm::gemm_dynamic_into`), requantised with the row's scale times the column's.
//!
//! Prints one JSON document; `tools/bench/bench_qgemm.sh` runs it beside onnxruntime.

mod common;

use quantstudio::runtime::{ops, qgemm};

use common::{medians_ms, normal, values};

fn main() {
    let repeat: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(30).max(1);
    let issue_7 = [(512usize, 768usize, 768usize), (128, 768, 3072), (1, 768, 3072)];
    let minilm = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384), (1, 384, 384), (1, 384, 1536), (1, 1536, 384)];
    let shapes = issue_7.into_iter().chain(minilm);
    let mut results = Vec::new();
    for (m, k, n) in shapes {
        let a = values(m * k, 1);
        // Weights normally distributed (trained weights are bell-shaped; the u8 x s8 kernel relies on it), activations
        // uniform in [-2, 2].
        let w = normal(n * k, 2);
        // Per-channel symmetric weight codes.
        let mut w_codes = Vec::with_capacity(n * k);
        let mut w_scales = Vec::with_capacity(n);
        for row in w.chunks_exact(k) {
            let absmax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let params = quantstudio::quant::QParams::symmetric(absmax);
            w_scales.push(params.scale);
            w_codes.extend(row.iter().map(|&v| params.quantize(v)));
        }
        let packed = qgemm::PackedInt8::pack(&w_codes, n, k).expect("symmetric codes");
        let w_t = ops::transpose(&w, n, k);
        let a_codes = qgemm::quantize_activations(&a, 2.0 / 127.0);
        let mut acc = vec![0i32; m * n];
        let static_scale = 2.0f32 / 127.0;
        let static_scales: Vec<f32> = w_scales.iter().map(|w| static_scale * w).collect();
        let medians = medians_ms(
            repeat,
            &mut [
                &mut || {
                    std::hint::black_box(ops::matmul(&a, m, k, &w_t, n));
                },
                &mut || {
                    qgemm::gemm_i8(&a_codes, m, &packed, &mut acc);
                    std::hint::black_box(&acc);
                },
                &mut || {
                    let scale = quantstudio::quant::QParams::symmetric(qgemm::absmax(&a)).scale;
                    let scales: Vec<f32> = w_scales.iter().map(|w| scale * w).collect();
                    let mut y = vec![0f32; m * n];
                    let output = qgemm::Output::Scaled { out: &mut y, scales: &scales, bias: None };
                    qgemm::gemm_quantized_into(&a, m, scale, &packed, output, qgemm::Kernel::Best);
                    std::hint::black_box(y);
                },
                &mut || {
                    let mut y = vec![0f32; m * n];
                    let output = qgemm::Output::Scaled { out: &mut y, scales: &static_scales, bias: None };
                    qgemm::gemm_quantized_into(&a, m, static_scale, &packed, output, qgemm::Kernel::Best);
                    std::hint::black_box(y);
                },
                &mut || {
                    let mut y = vec![0f32; m * n];
                    qgemm::gemm_dynamic_into(&a, m, &packed, &mut y, &w_scales, None, qgemm::Kernel::Best);
                    std::hint::black_box(y);
                },
            ],
        );
        let (fp32, int8_gemm, int8_dynamic) = (medians[0], medians[1], medians[2]);
        let (int8_static, int8_per_token) = (medians[3], medians[4]);
        results.push(serde_json::json!({
            "shape": format!("{m}x{k}x{n}"),
            "fp32_ms": fp32,
            "int8_gemm_ms": int8_gemm,
            "int8_dynamic_ms": int8_dynamic,
            "int8_static_ms": int8_static,
            "int8_per_token_ms": int8_per_token,
            "int8_speedup_over_fp32": fp32 / int8_dynamic,
            "int8_per_token_speedup_over_fp32": fp32 / int8_per_token,
            "int8_u8s8": packed.has_u8s8(),
            "int8_vnni": packed.has_vnni(),
            "int8_corrections_per_weight": packed.corrections() as f64 / (n * k) as f64,
        }));
    }
    let doc = serde_json::json!({
        "tool": "quantstudio",
        "avx2": qgemm::avx2_available(),
        "threads": rayon::current_num_threads(),
        "repeat": repeat,
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}
