//! The analysis pass's inner loops on one thread, data in cache (issue 2): `cargo run --release
//! --no-default-features --example bench_kernels -- [REPEAT]`.
//!
//! On 65,536 bell-shaped values (N(0, 0.02) with an outlier of ±0.5 every 4,099 values, as in
//! `tools/make_bench_model.py`; 256 KB as f32, so they stay in L2), the median over `REPEAT` timed rounds after
//! three warm-up rounds (the loops take turns within a round) of, in nanoseconds per element:
//! - `scan_f32`, `scan_bf16`: pass 1 (`kernels::scan`) on the values as f32 and as BF16 read in place;
//! - `measure_f32`, `measure_bf16`: pass 2 (`kernels::measure`), INT8 symmetric, with the histogram ranges the pass
//!   would choose (the value range, half a step of error);
//! - `histogram_increments`: the two histogram counter increments per element alone (bins computed beforehand,
//!   one copy of each histogram per lane as in the kernel). Pass 2 cannot be faster than this.
//!
//! Prints one JSON document.

mod common;

use quantstudio::quant::QParams;
use quantstudio::quant::kernels::{self, BinMap, HIST_BINS, MeasureAcc, MeasureSpec, Rounding, ScanAcc};

use common::{medians_ms, normal};

/// Elements per slice.
const LEN: usize = 1 << 16;
/// Passes over the slice per timed run.
const PASSES: usize = 64;
/// Histogram copies of the increments-only loop (one per lane, as in the kernel).
const COPIES: usize = 8;

fn main() {
    let repeat: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(30).max(1);
    let x: Vec<f32> = normal(LEN, 7)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 4099 == 0 { if i % 2 == 0 { 0.5 } else { -0.5 } } else { v * 0.02 })
        .collect();
    let bf16: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let params = QParams::symmetric(lo.abs().max(hi.abs()));
    let spec = MeasureSpec {
        rounding: Rounding::Int8(params),
        all_finite: true,
        value_bins: BinMap::new(lo as f64, hi as f64),
        error_bins: BinMap::new(-(params.scale as f64) / 2.0, params.scale as f64 / 2.0),
    };
    // The bins the kernel counts, for the increments-only loop.
    let bins: Vec<(u8, u8)> = x
        .iter()
        .map(|&v| {
            let e = v - params.dequantize(params.quantize(v));
            (spec.value_bins.bin(v) as u8, spec.error_bins.bin(e) as u8)
        })
        .collect();

    let mut scan_f32 = || {
        let mut acc = ScanAcc::default();
        for _ in 0..PASSES {
            kernels::scan(&x, 0.0, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut scan_bf16 = || {
        let mut acc = ScanAcc::default();
        for _ in 0..PASSES {
            kernels::scan(&bf16, 0.0, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut measure_f32 = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&x, &spec, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut measure_bf16 = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&bf16, &spec, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut histogram_increments = || {
        let mut value = vec![[0u32; HIST_BINS]; COPIES];
        let mut error = vec![[0u32; HIST_BINS]; COPIES];
        for _ in 0..PASSES {
            for chunk in std::hint::black_box(&bins).chunks_exact(COPIES) {
                for (copy, &(v, e)) in chunk.iter().enumerate() {
                    value[copy][v as usize] += 1;
                    error[copy][e as usize] += 1;
                }
            }
        }
        std::hint::black_box((value, error));
    };
    let names = ["scan_f32", "scan_bf16", "measure_f32", "measure_bf16", "histogram_increments"];
    let medians = medians_ms(
        repeat,
        &mut [&mut scan_f32, &mut scan_bf16, &mut measure_f32, &mut measure_bf16, &mut histogram_increments],
    );
    let ns_per_element: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(&medians)
        .map(|(name, ms)| (name.to_string(), serde_json::json!(ms * 1e6 / (LEN * PASSES) as f64)))
        .collect();
    let report = serde_json::json!({
        "elements": LEN,
        "threads": 1,
        "implementation": kernels::implementation_name(),
        "repeat": repeat,
        "ns_per_element": ns_per_element,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value always serialises"));
}
