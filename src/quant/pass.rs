//! The analysis of one tensor, streamed from the memory map in two parallel passes.
//!
//! Pass 1 (scan) finds the finite range, sum and non-finite counts of the tensor and of each output channel.
//! From it come the statistics, the quantization parameters and the histogram ranges. Pass 2 (measure) rounds
//! every value as planned and accumulates the error sums and both histograms. Work is split into blocks of rows
//! fixed by the tensor's shape alone, and block results are combined in block order, so the figures do not depend
//! on the number of threads or on scheduling.

use std::ops::Range;

use rayon::prelude::*;

use super::kernels::{self, BinMap, Element, Elements, MeasureAcc, MeasureSpec, Rounding, ScanAcc};
use super::{ErrorMetrics, Granularity, Int8Scheme, Precision, QParams};
use crate::error::{Error, Result};
use crate::model::{DType, Model, TensorId};
use crate::progress::Progress;
use crate::stats::{self, HIST_BINS, Histogram, TensorStats};

/// Target number of elements of one block of work.
pub const BLOCK_ELEMS: usize = 1 << 16;

/// A tensor's stored bytes, seen as `rows x cols` values (rows = output channels).
#[derive(Clone, Copy, Debug)]
pub struct TensorData<'a> {
    /// Element type (F32, F16, BF16 or F64).
    pub dtype: DType,
    /// The stored little-endian bytes.
    pub bytes: &'a [u8],
    /// Output channels (1 for 0-D and 1-D tensors).
    pub rows: usize,
    /// Elements per output channel.
    pub cols: usize,
}

impl<'a> TensorData<'a> {
    /// The data of a model tensor; [`Error::NotFloat`] for non-float tensors.
    pub fn of(model: &'a Model, id: TensorId) -> Result<TensorData<'a>> {
        let info = model.tensor(id);
        if !info.is_analysable() {
            return Err(Error::NotFloat {
                name: info.name.clone(),
                dtype: info.dtype.to_string(),
                path: model.shard_path(id).to_owned(),
            });
        }
        let (rows, cols) = info.rows_cols();
        Ok(TensorData { dtype: info.dtype, bytes: model.tensor_bytes(id), rows, cols })
    }

    /// A tensor held in memory as f32 (tests and tools).
    pub fn from_f32(values: &'a [f32], rows: usize, cols: usize) -> TensorData<'a> {
        TensorData { dtype: DType::F32, bytes: bytemuck::cast_slice(values), rows, cols }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements `range` as f32: borrowed when the data is aligned F32, else converted into `buf`.
    /// F16 and BF16 widen exactly; F64 rounds to nearest f32 (the working precision of every formula).
    pub fn values<'b>(&'b self, range: Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let size = self.dtype.size_bytes();
        let raw = &self.bytes[range.start * size..range.end * size];
        buf.clear();
        match self.dtype {
            DType::F32 => {
                #[cfg(target_endian = "little")]
                if let Ok(aligned) = bytemuck::try_cast_slice::<u8, f32>(raw) {
                    return aligned;
                }
                buf.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
            DType::F16 => {
                #[cfg(target_endian = "little")]
                if let Ok(halves) = bytemuck::try_cast_slice::<u8, half::f16>(raw) {
                    // Uses F16C when the CPU has it (runtime detection inside `half`).
                    use half::slice::HalfFloatSliceExt;
                    buf.resize(halves.len(), 0.0);
                    halves.convert_to_f32_slice(buf);
                    return buf;
                }
                buf.extend(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()));
            }
            DType::BF16 => {
                #[cfg(target_endian = "little")]
                if let Ok(bits) = bytemuck::try_cast_slice::<u8, u16>(raw) {
                    // A plain widening loop that the compiler vectorises.
                    buf.extend(bits.iter().map(|&b| f32::from_bits((b as u32) << 16)));
                    return buf;
                }
                buf.extend(
                    raw.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
                );
            }
            DType::F64 => {
                buf.extend(
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
                );
            }
            _ => {}
        }
        buf
    }

    /// The elements `range` as the kernels read them: aligned BF16 data in place (widened as it is loaded),
    /// anything else as [`TensorData::values`].
    pub fn elements<'b>(&'b self, range: Range<usize>, buf: &'b mut Vec<f32>) -> Elements<'b> {
        #[cfg(target_endian = "little")]
        if self.dtype == DType::BF16 {
            let raw = &self.bytes[range.start * 2..range.end * 2];
            if let Ok(bf16) = bytemuck::try_cast_slice::<u8, half::bf16>(raw) {
                return Elements::Bf16(bf16);
            }
        }
        Elements::F32(self.values(range, buf))
    }

    /// The blocks of work: flat element ranges that are whole rows, or pieces of one long row.
    pub fn blocks(&self) -> Vec<Range<usize>> {
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || cols == 0 {
            return Vec::new();
        }
        if cols >= BLOCK_ELEMS {
            (0..rows)
                .flat_map(|r| {
                    (0..cols).step_by(BLOCK_ELEMS).map(move |c| r * cols + c..r * cols + (c + BLOCK_ELEMS).min(cols))
                })
                .collect()
        } else {
            let rows_per_block = BLOCK_ELEMS / cols;
            (0..rows).step_by(rows_per_block).map(|r| r * cols..(r + rows_per_block).min(rows) * cols).collect()
        }
    }

    /// Calls `f(row, slice)` for each part of `block` that lies in one row.
    pub fn for_each_row_slice<E>(&self, block: &Range<usize>, values: &[E], mut f: impl FnMut(usize, &[E])) {
        let mut at = block.start;
        while at < block.end {
            let row = at / self.cols;
            let row_end = ((row + 1) * self.cols).min(block.end);
            f(row, &values[at - block.start..row_end - block.start]);
            at = row_end;
        }
    }
}

/// Result of pass 1: totals and the finite range of each row.
#[derive(Clone, Debug)]
pub struct Scan {
    /// The shift `k` of the moments (the first finite value, 0 when none).
    pub shift: f64,
    /// Totals over the tensor.
    pub total: ScanAcc,
    /// Smallest finite value per row (+inf for a row without one).
    pub row_min: Vec<f32>,
    /// Largest finite value per row (-inf for a row without one).
    pub row_max: Vec<f32>,
}

impl Scan {
    /// The summary statistics: `mean = k + S1/n`, `std = sqrt(S2/n - (S1/n)^2)` with the moments about `k`.
    pub fn stats(&self) -> TensorStats {
        let t = &self.total;
        let count = t.finite + t.nan + t.inf;
        if t.finite == 0 {
            return TensorStats { count, nan_count: t.nan, inf_count: t.inf, ..TensorStats::default() };
        }
        let n = t.finite as f64;
        let mean_shifted = kernels::lane_sum(&t.sum_shifted) / n;
        TensorStats {
            count,
            finite_count: t.finite,
            nan_count: t.nan,
            inf_count: t.inf,
            min: t.min,
            max: t.max,
            mean: self.shift + mean_shifted,
            std: (kernels::lane_sum(&t.sum_sq_shifted) / n - mean_shifted * mean_shifted).max(0.0).sqrt(),
            absmax: t.min.abs().max(t.max.abs()),
        }
    }

    /// The FP8 scale of each quantization group (`fp8::fp8_scale` of its finite absmax): one for per tensor (or
    /// for a 0-D/1-D tensor), one per row for per channel. Rows without finite values get scale 1.
    pub fn fp8_scales(&self, granularity: Granularity) -> Vec<f32> {
        let absmax = |min: f32, max: f32| if min <= max { min.abs().max(max.abs()) } else { 0.0 };
        match granularity {
            Granularity::PerChannel if self.row_min.len() > 1 => {
                self.row_min.iter().zip(&self.row_max).map(|(&lo, &hi)| super::fp8::fp8_scale(absmax(lo, hi))).collect()
            }
            _ => vec![super::fp8::fp8_scale(absmax(self.total.min, self.total.max))],
        }
    }

    /// The INT8 parameters of each quantization group: one for per tensor (or for a 0-D/1-D tensor), one per
    /// row for per channel. Rows without finite values get the parameters of an all-zero group.
    pub fn group_params(&self, scheme: Int8Scheme) -> Vec<QParams> {
        let make = |min: f32, max: f32| {
            let (min, max) = if min <= max { (min, max) } else { (0.0, 0.0) };
            if scheme.symmetric { QParams::symmetric(min.abs().max(max.abs())) } else { QParams::asymmetric(min, max) }
        };
        match scheme.granularity {
            Granularity::PerChannel if self.row_min.len() > 1 => {
                self.row_min.iter().zip(&self.row_max).map(|(&lo, &hi)| make(lo, hi)).collect()
            }
            _ => vec![make(self.total.min, self.total.max)],
        }
    }
}

/// The first finite value of the tensor (0 when there is none): the shift of the scan's moments.
fn first_finite(data: &TensorData) -> f64 {
    let mut buf = Vec::new();
    for block in data.blocks() {
        if let Some(v) = data.values(block, &mut buf).iter().find(|v| v.is_finite()) {
            return *v as f64;
        }
    }
    0.0
}

/// The finite range `(row, min, max)` one block saw of one row.
type RowRange = (usize, f32, f32);

/// Pass 1 over one block: its totals and the range it saw of each row.
fn scan_block<E: Element>(
    data: &TensorData,
    block: &Range<usize>,
    values: &[E],
    shift: f64,
) -> (ScanAcc, Vec<RowRange>) {
    let mut total = ScanAcc::default();
    let mut rows = Vec::new();
    data.for_each_row_slice(block, values, |row, slice| {
        let mut acc = ScanAcc::default();
        kernels::scan(E::elements(slice), shift, &mut acc);
        total.merge(&acc);
        rows.push((row, acc.min, acc.max));
    });
    (total, rows)
}

/// Pass 1 over a tensor, in parallel.
pub fn scan(data: &TensorData, progress: &Progress) -> Result<Scan> {
    let shift = first_finite(data);
    let blocks = data.blocks();
    let partials: Vec<(ScanAcc, Vec<RowRange>)> = blocks
        .par_iter()
        .map_init(Vec::new, |buf, block| {
            progress.check()?;
            let scanned = match data.elements(block.clone(), buf) {
                Elements::F32(values) => scan_block(data, block, values, shift),
                Elements::Bf16(values) => scan_block(data, block, values, shift),
            };
            progress.advance(block.len() as u64);
            Ok(scanned)
        })
        .collect::<Result<_>>()?;
    let mut result = Scan {
        shift,
        total: ScanAcc::default(),
        row_min: vec![f32::INFINITY; data.rows],
        row_max: vec![f32::NEG_INFINITY; data.rows],
    };
    for (total, rows) in &partials {
        result.total.merge(total);
        for &(row, min, max) in rows {
            result.row_min[row] = result.row_min[row].min(min);
            result.row_max[row] = result.row_max[row].max(max);
        }
    }
    Ok(result)
}

/// The state of one rayon fold of the measure pass.
struct MeasureFold {
    /// The kernels' accumulator (its sums are taken after every block).
    acc: Box<MeasureAcc>,
    /// Histogram counts drained from `acc`.
    value_counts: [u64; HIST_BINS],
    error_counts: [u64; HIST_BINS],
    /// Elements counted in `acc` since it was last drained.
    undrained: u64,
    /// The sums of each block, by block index.
    block_sums: Vec<(usize, kernels::MeasureSums)>,
    /// Conversion buffer for blocks that are not read in place.
    buf: Vec<f32>,
}

impl Default for MeasureFold {
    fn default() -> Self {
        MeasureFold {
            acc: Box::default(),
            value_counts: [0; HIST_BINS],
            error_counts: [0; HIST_BINS],
            undrained: 0,
            block_sums: Vec::new(),
            buf: Vec::new(),
        }
    }
}

impl MeasureFold {
    /// Elements after which the u32 counters are drained (far below 2^32).
    const DRAIN_ELEMS: u64 = 1 << 30;

    fn drain(&mut self) {
        self.acc.drain_histograms_into(&mut self.value_counts, &mut self.error_counts);
        self.undrained = 0;
    }

    fn merge(mut self, mut other: MeasureFold) -> MeasureFold {
        self.drain();
        other.drain();
        for bin in 0..HIST_BINS {
            self.value_counts[bin] += other.value_counts[bin];
            self.error_counts[bin] += other.error_counts[bin];
        }
        self.block_sums.append(&mut other.block_sums);
        self
    }
}

/// Everything known about one tensor under one precision.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorAnalysis {
    /// Summary statistics of the values.
    pub stats: TensorStats,
    /// Histogram of the finite values.
    pub value_histogram: Histogram,
    /// The precision evaluated.
    pub precision: Precision,
    /// Error of that precision.
    pub error: ErrorMetrics,
    /// Histogram of the error `x - x_hat`, over `[-r, r]` with `r` the largest rounding error the precision can
    /// make without saturating (see `docs/QUANTIZATION.md`).
    pub error_histogram: Histogram,
    /// INT8 parameters per group (one per output channel for per-channel), empty for other precisions.
    pub group_params: Vec<QParams>,
    /// FP8 scales per group (one per output channel for per-channel), empty for other precisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fp8_scales: Vec<f32>,
}

/// Smallest half-width of the error histogram, so that its bin arithmetic stays finite in f32.
const MIN_ERROR_RANGE: f64 = 1e-30;

/// Runs both passes over a tensor of `model` and measures `precision`.
pub fn analyze_tensor(
    model: &Model,
    id: TensorId,
    precision: Precision,
    progress: &Progress,
) -> Result<TensorAnalysis> {
    analyze(&TensorData::of(model, id)?, precision, progress)
}

/// Runs both passes over `data` and measures `precision`.
pub fn analyze(data: &TensorData, precision: Precision, progress: &Progress) -> Result<TensorAnalysis> {
    let scan = scan(data, progress)?;
    let stats = scan.stats();
    let group_params = match precision {
        Precision::Int8(scheme) => scan.group_params(scheme),
        _ => Vec::new(),
    };
    let fp8_scales = match precision {
        Precision::Fp8(scheme) => scan.fp8_scales(scheme.granularity),
        _ => Vec::new(),
    };
    let roundings: Vec<Rounding> = match precision {
        Precision::Int8(_) => group_params.iter().copied().map(Rounding::Int8).collect(),
        Precision::Fp8(_) => fp8_scales.iter().map(|&scale| Rounding::Fp8 { scale }).collect(),
        Precision::Fp16 => vec![Rounding::Fp16],
        Precision::Bf16 => vec![Rounding::Bf16],
        Precision::Fp32 => vec![Rounding::Identity],
        // Rounded block by block in the measure loop below (`kernels::measure_given`).
        Precision::Q8_0 | Precision::Q4_0 | Precision::Q4K | Precision::Q6K => vec![Rounding::Identity],
    };
    let block_format = precision.block_format();
    if let Some(format) = block_format
        && !format.fits(data.cols)
    {
        return Err(Error::KernelInput {
            problem: format!(
                "{format} needs rows of a multiple of {} values, not {}",
                format.block_values(),
                data.cols
            ),
        });
    }
    let absmax = stats.absmax as f64;
    let error_range = match precision {
        Precision::Int8(_) => group_params.iter().map(|p| p.scale as f64 / 2.0).fold(0.0, f64::max),
        // Half the step of the top binade [256, 448] (32): the largest error without saturation.
        Precision::Fp8(_) => fp8_scales.iter().map(|&s| s as f64 * 16.0).fold(0.0, f64::max),
        Precision::Fp16 => (absmax * 2f64.powi(-11)).max(2f64.powi(-25)),
        Precision::Bf16 => absmax * 2f64.powi(-8),
        Precision::Fp32 => 1.0,
        // Half the step of a block whose largest magnitude is the tensor's (a whole step for Q4_0, whose top code
        // is clamped; Q8_0 with the f16 scale's error): errors beyond land in the edge bins.
        Precision::Q8_0 => absmax / 127.0 * 0.6,
        Precision::Q4_0 => absmax / 8.0,
        Precision::Q4K => absmax / 15.0,
        Precision::Q6K => absmax / 63.0,
    }
    .max(MIN_ERROR_RANGE);
    let (value_lo, value_hi) = stats::value_range(stats.min, stats.max, stats.finite_count);
    let spec_of = |row: usize| MeasureSpec {
        rounding: roundings[if roundings.len() > 1 { row } else { 0 }],
        all_finite: !stats.has_non_finite(),
        value_bins: BinMap::new(value_lo, value_hi),
        error_bins: BinMap::new(-error_range, error_range),
    };
    let blocks = data.blocks();
    // Histogram counts are integers and add up in any order, so each rayon fold keeps one set; the f64 sums are
    // kept per block and added in block order.
    let mut folded = blocks
        .par_iter()
        .enumerate()
        .try_fold(MeasureFold::default, |mut fold, (index, block)| {
            progress.check()?;
            let MeasureFold { acc, buf, .. } = &mut fold;
            if let Some(format) = block_format {
                // Row slices of a work block are whole rows or runs of 2^16 values of one row: whole blocks.
                let values = data.values(block.clone(), buf);
                data.for_each_row_slice(block, values, |row, slice| {
                    let mut rounded = slice.to_vec();
                    super::ggml::fake_quantize_rows(format, &mut rounded, slice.len());
                    kernels::measure_given(slice, &rounded, &spec_of(row), acc)
                });
            } else {
                match data.elements(block.clone(), buf) {
                    Elements::F32(values) => data.for_each_row_slice(block, values, |row, slice| {
                        kernels::measure(Element::elements(slice), &spec_of(row), acc)
                    }),
                    Elements::Bf16(values) => data.for_each_row_slice(block, values, |row, slice| {
                        kernels::measure(Element::elements(slice), &spec_of(row), acc)
                    }),
                }
            }
            let sums = fold.acc.take_sums();
            fold.block_sums.push((index, sums));
            fold.undrained += block.len() as u64;
            if fold.undrained >= MeasureFold::DRAIN_ELEMS {
                fold.drain();
            }
            progress.advance(block.len() as u64);
            Ok::<_, Error>(fold)
        })
        .try_reduce(MeasureFold::default, |a, b| Ok(a.merge(b)))?;
    folded.drain();
    let MeasureFold { mut value_counts, mut error_counts, mut block_sums, .. } = folded;
    block_sums.sort_unstable_by_key(|&(index, _)| index);
    let mut total = kernels::MeasureSums::default();
    for (_, sums) in &block_sums {
        total.merge(sums);
    }
    let mut value_histogram = Histogram::empty(value_lo, value_hi);
    let mut error_histogram = Histogram::empty(-error_range, error_range);
    // The kernels count non-finite elements in bin 0; take them out.
    let non_finite = stats.nan_count + stats.inf_count;
    value_counts[0] -= non_finite;
    error_counts[0] -= non_finite;
    value_histogram.counts = value_counts.to_vec();
    error_histogram.counts = error_counts.to_vec();
    let mut error = ErrorMetrics::from_sums(
        kernels::lane_sum(&scan.total.sum_sq),
        kernels::lane_sum(&total.sum_sq_error),
        total.max_abs_error as f64,
        stats.finite_count,
    );
    error.saturated_count = total.saturated;
    Ok(TensorAnalysis { stats, value_histogram, precision, error, error_histogram, group_params, fp8_scales })
}
