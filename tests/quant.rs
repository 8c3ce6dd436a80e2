use quantstudio::Model;
use quantstudio::Progress;
use quantstudio::model::TensorId;
use quantstudio::quant::pass::{TensorData, analyze, histograms};
use quantstudio::quant::{Fp8Scheme, Granularity, Int8Scheme, Precision, QParams, analyze_tensor, fp8};

use crate::common::{self, Spec};

/// Relative tolerance between two f64 summations of the same numbers in different orders.
const SUM_REL_TOL: f64 = 1e-12;

const SYM_TENSOR: Precision = Precision::Int8(Int8Scheme::weights(true, Granularity::PerTensor));
const SYM_CHANNEL: Precision = Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel));
const ASYM_CHANNEL: Precision = Precision::Int8(Int8Scheme::weights(false, Granularity::PerChannel));
const FP8_CHANNEL: Precision = Precision::Fp8(Fp8Scheme::weights(Granularity::PerChannel));
const FP8_TENSOR: Precision = Precision::Fp8(Fp8Scheme::weights(Granularity::PerTensor));

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

#[test]
fn int8_symmetric_per_tensor_matches_a_hand_computation() {
    let values = [0.0f32, 0.5, -1.27, 1.0, 0.015, -0.005];
    let data = TensorData::from_f32(&values, 2, 3);
    let analysis = analyze(&data, SYM_TENSOR, &Progress::new()).unwrap();
    let scale = 1.27f32 / 127.0;
    assert_eq!(analysis.group_params, [QParams { scale, zero_point: 0, qmin: -127, qmax: 127 }]);
    let (mut sum_e2, mut sum_x2, mut max_e) = (0f64, 0f64, 0f32);
    for &x in &values {
        let q = (x / scale).round_ties_even().clamp(-127.0, 127.0);
        let e = x - q * scale;
        sum_e2 += (e as f64).powi(2);
        sum_x2 += (x as f64).powi(2);
        max_e = max_e.max(e.abs());
    }
    assert!(close(analysis.error.mse, sum_e2 / 6.0, SUM_REL_TOL));
    assert_eq!(analysis.error.max_abs_error, max_e as f64);
    assert!(close(analysis.error.sqnr_db.unwrap(), 10.0 * (sum_x2 / sum_e2).log10(), SUM_REL_TOL));
    let s = analysis.stats;
    assert_eq!((s.min, s.max, s.absmax, s.count, s.finite_count), (-1.27, 1.0, 1.27, 6, 6));
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / 6.0;
    assert!(close(s.mean, mean, SUM_REL_TOL));
    let std = (values.iter().map(|&v| v as f64 - mean).map(|d| d * d).sum::<f64>() / 6.0).sqrt();
    assert!(close(s.std, std, SUM_REL_TOL));
    let h = histograms(&data, &analysis, &Progress::new()).unwrap();
    assert_eq!(h.value.total(), 6);
    assert_eq!(h.error.total(), 6);
}

#[test]
fn per_channel_is_never_worse_than_per_tensor_on_rows_of_different_scale() {
    let mut values = common::normal(64 * 32, 7, 0.02);
    for (i, v) in values.iter_mut().enumerate() {
        *v *= 1.0 + (i / 32) as f32; // row r has scale ~ (r + 1)
    }
    let data = TensorData::from_f32(&values, 64, 32);
    let per_tensor = analyze(&data, SYM_TENSOR, &Progress::new()).unwrap();
    let per_channel = analyze(&data, SYM_CHANNEL, &Progress::new()).unwrap();
    assert_eq!(per_channel.group_params.len(), 64);
    assert!(per_channel.error.mse < per_tensor.error.mse);
    assert!(per_channel.error.sqnr_db.unwrap() > per_tensor.error.sqnr_db.unwrap() + 3.0);
}

#[test]
fn edge_tensors_give_finite_documented_figures() {
    let zeros = vec![0f32; 24];
    let constant = vec![0.3f32; 24];
    let mut with_non_finite = common::normal(24, 3, 1.0);
    with_non_finite[0] = f32::NAN;
    with_non_finite[5] = f32::INFINITY;
    with_non_finite[9] = f32::NEG_INFINITY;
    let all_nan = vec![f32::NAN; 24];
    for precision in [
        SYM_TENSOR,
        SYM_CHANNEL,
        ASYM_CHANNEL,
        FP8_TENSOR,
        FP8_CHANNEL,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Fp32,
    ] {
        for (label, values) in
            [("zeros", &zeros), ("constant", &constant), ("nan/inf", &with_non_finite), ("nan", &all_nan)]
        {
            let a = analyze(&TensorData::from_f32(values, 4, 6), precision, &Progress::new()).unwrap();
            let figures = [a.error.mse, a.error.max_abs_error, a.stats.mean, a.stats.std, a.stats.min as f64];
            assert!(figures.iter().all(|f| f.is_finite()), "{label} {precision}: {figures:?}");
            assert!(a.error.sqnr_db.is_none_or(f64::is_finite), "{label} {precision}");
            assert!(a.group_params.iter().all(|p| p.scale.is_finite() && p.scale > 0.0), "{label} {precision}");
            assert!(a.fp8_scales.iter().all(|s| s.is_finite() && *s > 0.0), "{label} {precision}");
        }
        let zero = analyze(&TensorData::from_f32(&zeros, 4, 6), precision, &Progress::new()).unwrap();
        assert!(zero.error.is_lossless(), "all-zero tensors are lossless under {precision}");
        let nan = analyze(&TensorData::from_f32(&with_non_finite, 4, 6), precision, &Progress::new()).unwrap();
        assert_eq!((nan.stats.nan_count, nan.stats.inf_count, nan.stats.finite_count), (1, 2, 21));
        let finite_absmax = with_non_finite.iter().filter(|v| v.is_finite()).fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(nan.stats.absmax, finite_absmax, "scales come from finite values only");
    }
    let constant_int8 = analyze(&TensorData::from_f32(&constant, 4, 6), SYM_TENSOR, &Progress::new()).unwrap();
    assert_eq!(constant_int8.group_params[0].scale, 0.3f32 / 127.0);
}

#[test]
fn fp8_per_channel_matches_the_scalar_definition_row_by_row() {
    let mut values = common::normal(16 * 40, 21, 0.05);
    for (i, v) in values.iter_mut().enumerate() {
        *v *= 1.0 + (i / 40) as f32; // rows of different scale
    }
    values[7] = 1e-6; // a value in the subnormal range of its row
    let data = TensorData::from_f32(&values, 16, 40);
    let a = analyze(&data, FP8_CHANNEL, &Progress::new()).unwrap();
    assert_eq!(a.fp8_scales.len(), 16);
    assert!(a.group_params.is_empty(), "FP8 has no INT8 parameters");
    let (mut sum_e2, mut sum_x2, mut max_e) = (0f64, 0f64, 0f32);
    for (r, row) in values.chunks(40).enumerate() {
        let scale = fp8::fp8_scale(row.iter().fold(0f32, |m, v| m.max(v.abs())));
        assert_eq!(a.fp8_scales[r].to_bits(), scale.to_bits(), "row {r}");
        for &x in row {
            let e = x - fp8::quantize_dequantize(x, scale);
            sum_e2 += (e as f64).powi(2);
            sum_x2 += (x as f64).powi(2);
            max_e = max_e.max(e.abs());
        }
    }
    assert!(close(a.error.mse, sum_e2 / values.len() as f64, SUM_REL_TOL));
    assert_eq!(a.error.max_abs_error, max_e as f64);
    assert!(close(a.error.sqnr_db.unwrap(), 10.0 * (sum_x2 / sum_e2).log10(), SUM_REL_TOL));
    assert_eq!(a.error.saturated_count, 0, "a row's own scale never saturates it");
    let h = histograms(&data, &a, &Progress::new()).unwrap();
    assert_eq!(h.error.total(), values.len() as u64, "every error is inside the histogram's range");
    // 3 mantissa bits: a relative error of at most 2^-4, about 31 dB for bell-shaped values.
    assert!((28.0..36.0).contains(&a.error.sqnr_db.unwrap()), "{:?}", a.error.sqnr_db);
    let per_tensor = analyze(&data, FP8_TENSOR, &Progress::new()).unwrap();
    assert_eq!(per_tensor.fp8_scales.len(), 1);
}

#[test]
fn fp16_saturates_and_counts() {
    let values = [1.0f32, 70000.0, -1e9, 0.25];
    let a = analyze(&TensorData::from_f32(&values, 1, 4), Precision::Fp16, &Progress::new()).unwrap();
    assert_eq!(a.error.saturated_count, 2);
    assert_eq!(a.error.max_abs_error, (1e9f32 - 65504.0) as f64);
    let lossless = analyze(&TensorData::from_f32(&[1.0, 0.5, -2.0], 1, 3), Precision::Fp16, &Progress::new()).unwrap();
    assert!(lossless.error.is_lossless());
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let values = common::normal(300 * 257, 11, 0.05);
    let data = TensorData::from_f32(&values, 300, 257);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| analyze(&data, ASYM_CHANNEL, &Progress::new()).unwrap())
    };
    assert_eq!(run(1), run(2));
    assert_eq!(run(2), run(3));
}

#[test]
fn f16_bf16_and_f64_tensors_are_analysed_from_the_file() {
    let dir = common::temp_dir();
    let path = dir.path().join("m.safetensors");
    let values = [0.5f32, -0.25, 1.5, 3.0];
    let f16: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    let f64: Vec<u8> = values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect();
    common::write_model(
        &path,
        &[
            Spec::raw("a.weight", safetensors::Dtype::F16, &[2, 2], f16),
            Spec::raw("b.weight", safetensors::Dtype::BF16, &[2, 2], bf16),
            Spec::raw("c.weight", safetensors::Dtype::F64, &[2, 2], f64),
        ],
    );
    let model = Model::open(&path).unwrap();
    for i in 0..3 {
        let a = analyze_tensor(&model, TensorId(i), SYM_TENSOR, &Progress::new()).unwrap();
        assert_eq!((a.stats.min, a.stats.max), (-0.25, 3.0), "tensor {i}");
        let fp16 = analyze_tensor(&model, TensorId(i), Precision::Fp16, &Progress::new()).unwrap();
        assert!(fp16.error.is_lossless(), "these values are exact in fp16");
    }
}

#[test]
fn cancel_stops_the_pass() {
    let values = common::normal(1 << 20, 5, 1.0);
    let progress = Progress::new();
    progress.cancel();
    let result = analyze(&TensorData::from_f32(&values, 1024, 1024), SYM_CHANNEL, &progress);
    assert!(matches!(result, Err(quantstudio::Error::Cancelled)));
}
