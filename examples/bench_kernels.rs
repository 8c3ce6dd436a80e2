//! The analysis pass's inner loops on one thread, data in cache (issue 2): `cargo run --release
//! --no-default-features --example bench_kernels -- [REPEAT]`.
//!
//! On 65,536 bell-shaped values (N(0, 0.02) with an outlier of ±0.5 every 4,099 values, as in
//! `tools/fixtures/make_bench_model.py`; 256 KB as f32, so they stay in L2), the median over `REPEAT` timed rounds after
//! three warm-up rounds (the loops take turns within a round) of, in nanoseconds per element:
//! - `scan_f32`, `scan_bf16`: pass 1 (`kernels::scan`) on the values as f32 and as BF16 read in place;
//! - `measure_f32`, `measure_bf16`: pass 2 (`kernels::measure`), INT8 symmetric, with the histogram ranges the pass
//!   would choose (the value range, half a step of error);
//! - `measure_fp8_f32`, `measure_fp8_bf16`: the same pass with FP8 E4M3 rounding (`Rounding::Fp8`, scale
//!   `absmax / 448`; error histogram over the largest FP8 rounding error, `absmax / 16`, where FP8's errors,
//!   relative to each value, crowd the middle bins as FP16's do);
//! - `measure_fp8_int8_bins`: FP8 rounding with the INT8 line's error bins, which spreads the errors over more
//!   bins: the rounding's own cost apart from how the histogram's counters collide;
//! - `fp8_fake_quantize`, `fp8_codes`: the bulk FP8 loops alone (`fp8::fake_quantize_e4m3` into f32,
//!   `fp8::quantize_e4m3` into codes), same scale;
//! - `measure_table_f32`, `measure_table_bf16`: pass 2 as the table's figures need it (INT8 symmetric, no
//!   histograms: `MeasureSpec::histograms` off);
//! - `one_read_f32`, `one_read_bf16`: the analysis pass's per-row work for the table, row by row (4,096 values): the
//!   scan of a row, then its measure without histograms with the row's own INT8 parameters, as
//!   `quant::pass::analyze` does; the least time per element of the table's figures on one core;
//! - `histogram_increments`: the two histogram counter increments per element alone (bins computed beforehand,
//!   one copy of each histogram per lane as in the kernel). Pass 2 cannot be faster than this.
//!
//! Prints one JSON document.

mod common;

use quantstudio::quant::QParams;
use quantstudio::quant::fp8;
use quantstudio::quant::kernels::{self, BinMap, MeasureAcc, MeasureSpec, Rounding, ScanAcc};
use quantstudio::stats::HIST_BINS;

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
        histograms: true,
        value_bins: BinMap::new(lo as f64, hi as f64),
        error_bins: BinMap::new(-(params.scale as f64) / 2.0, params.scale as f64 / 2.0),
    };
    let absmax = lo.abs().max(hi.abs());
    let fp8_scale = fp8::fp8_scale(absmax);
    let fp8_spec = MeasureSpec {
        rounding: Rounding::Fp8 { scale: fp8_scale },
        error_bins: BinMap::new(-(absmax as f64) / 16.0, absmax as f64 / 16.0),
        ..spec
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
    let table_spec = MeasureSpec { histograms: false, ..spec };
    let mut measure_table_f32 = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&x, &table_spec, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut measure_table_bf16 = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&bf16, &table_spec, &mut acc);
        }
        std::hint::black_box(acc);
    };
    /// Values per row of the one-read loops.
    const ROW: usize = 4096;
    let one_read_spec = |row_scan: &ScanAcc| MeasureSpec {
        rounding: Rounding::Int8(QParams::symmetric(row_scan.min.abs().max(row_scan.max.abs()))),
        ..table_spec
    };
    let mut one_read_f32 = || {
        let (mut total, mut acc) = (ScanAcc::default(), Box::<MeasureAcc>::default());
        for _ in 0..PASSES {
            for row in x.chunks(ROW) {
                let mut row_scan = ScanAcc::default();
                kernels::scan(row, 0.0, &mut row_scan);
                total.merge(&row_scan);
                kernels::measure(row, &one_read_spec(&row_scan), &mut acc);
            }
        }
        std::hint::black_box((total, acc));
    };
    let mut one_read_bf16 = || {
        let (mut total, mut acc) = (ScanAcc::default(), Box::<MeasureAcc>::default());
        for _ in 0..PASSES {
            for row in bf16.chunks(ROW) {
                let mut row_scan = ScanAcc::default();
                kernels::scan(row, 0.0, &mut row_scan);
                total.merge(&row_scan);
                kernels::measure(row, &one_read_spec(&row_scan), &mut acc);
            }
        }
        std::hint::black_box((total, acc));
    };
    let mut measure_fp8_f32 = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&x, &fp8_spec, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut measure_fp8_bf16 = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&bf16, &fp8_spec, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let fp8_int8_bins = MeasureSpec { rounding: Rounding::Fp8 { scale: fp8_scale }, ..spec };
    let mut measure_fp8_int8_bins = || {
        let mut acc = Box::<MeasureAcc>::default();
        for _ in 0..PASSES {
            kernels::measure(&x, &fp8_int8_bins, &mut acc);
        }
        std::hint::black_box(acc);
    };
    let mut fp8_values = vec![0f32; LEN];
    let mut fp8_fake_quantize = || {
        for _ in 0..PASSES {
            fp8::fake_quantize_e4m3(std::hint::black_box(&x), fp8_scale, &mut fp8_values);
        }
        std::hint::black_box(&fp8_values);
    };
    let mut fp8_codes_out = vec![0u8; LEN];
    let mut fp8_codes = || {
        for _ in 0..PASSES {
            fp8::quantize_e4m3(std::hint::black_box(&x), fp8_scale, &mut fp8_codes_out);
        }
        std::hint::black_box(&fp8_codes_out);
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
    let names = [
        "scan_f32",
        "scan_bf16",
        "measure_f32",
        "measure_bf16",
        "measure_table_f32",
        "measure_table_bf16",
        "one_read_f32",
        "one_read_bf16",
        "measure_fp8_f32",
        "measure_fp8_bf16",
        "measure_fp8_int8_bins",
        "fp8_fake_quantize",
        "fp8_codes",
        "histogram_increments",
    ];
    let medians = medians_ms(
        repeat,
        &mut [
            &mut scan_f32,
            &mut scan_bf16,
            &mut measure_f32,
            &mut measure_bf16,
            &mut measure_table_f32,
            &mut measure_table_bf16,
            &mut one_read_f32,
            &mut one_read_bf16,
            &mut measure_fp8_f32,
            &mut measure_fp8_bf16,
            &mut measure_fp8_int8_bins,
            &mut fp8_fake_quantize,
            &mut fp8_codes,
            &mut histogram_increments,
        ],
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
