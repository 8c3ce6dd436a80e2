//! The analysis of one tensor, streamed from the memory map in parallel.
//!
//! The scan finds the finite range, sums and non-finite counts of the tensor and of each output channel; from it
//! come the statistics and the quantization parameters. The measure rounds every value as planned and
//! accumulates the error sums. [`analyze`] (the table's figures) runs both over each row while it is in cache
//! when a row's rounding depends on that row alone, and one after the other over the whole tensor otherwise.
//! [`histograms`] (the inspector's value and error histograms, on demand) measures once more from an analysis,
//! counting both histograms. Work is split into blocks of rows fixed by the tensor's shape alone, and block
//! results are combined in block order, so the figures do not depend on the number of threads or on scheduling.

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
        match granularity {
            Granularity::PerChannel if self.row_min.len() > 1 => {
                self.row_min.iter().zip(&self.row_max).map(|(&lo, &hi)| fp8_group(lo, hi)).collect()
            }
            _ => vec![fp8_group(self.total.min, self.total.max)],
        }
    }

    /// The INT8 parameters of each quantization group: one for per tensor (or for a 0-D/1-D tensor), one per
    /// row for per channel. Rows without finite values get the parameters of an all-zero group.
    pub fn group_params(&self, scheme: Int8Scheme) -> Vec<QParams> {
        match scheme.granularity {
            Granularity::PerChannel if self.row_min.len() > 1 => {
                self.row_min.iter().zip(&self.row_max).map(|(&lo, &hi)| int8_group(scheme, lo, hi)).collect()
            }
            _ => vec![int8_group(scheme, self.total.min, self.total.max)],
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
    /// Round trips of a block format's values.
    rounded: Vec<f32>,
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
            rounded: Vec::new(),
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

/// The statistics and error figures of one tensor under one precision: what the table shows. The histograms are
/// computed on demand from it ([`histograms`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorAnalysis {
    /// Summary statistics of the values.
    pub stats: TensorStats,
    /// The precision evaluated.
    pub precision: Precision,
    /// Error of that precision.
    pub error: ErrorMetrics,
    /// INT8 parameters per group (one per output channel for per-channel), empty for other precisions.
    pub group_params: Vec<QParams>,
    /// FP8 scales per group (one per output channel for per-channel), empty for other precisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fp8_scales: Vec<f32>,
}

impl TensorAnalysis {
    /// The range of the value histogram (see [`stats::value_range`]).
    pub fn value_range(&self) -> (f64, f64) {
        stats::value_range(self.stats.min, self.stats.max, self.stats.finite_count)
    }

    /// The half-width `r` of the error histogram `[-r, r]`: the largest rounding error the precision can make
    /// without saturating (see `docs/QUANTIZATION.md`).
    pub fn error_range(&self) -> f64 {
        let absmax = self.stats.absmax as f64;
        match self.precision {
            Precision::Int8(_) => self.group_params.iter().map(|p| p.scale as f64 / 2.0).fold(0.0, f64::max),
            // Half the step of the top binade [256, 448] (32): the largest error without saturation.
            Precision::Fp8(_) => self.fp8_scales.iter().map(|&s| s as f64 * 16.0).fold(0.0, f64::max),
            Precision::Fp16 => (absmax * 2f64.powi(-11)).max(2f64.powi(-25)),
            Precision::Bf16 => absmax * 2f64.powi(-8),
            Precision::Fp32 => 1.0,
            // Half the step of a block whose largest magnitude is the tensor's (a whole step for Q4_0, whose top
            // code is clamped; Q8_0 with the f16 scale's error): errors beyond land in the edge bins.
            Precision::Q8_0 => absmax / 127.0 * 0.6,
            Precision::Q4_0 => absmax / 8.0,
            Precision::Q4K => absmax / 15.0,
            Precision::Q6K => absmax / 63.0,
            // Half the step of a group whose largest magnitude is the tensor's (symmetric `absmax / 7.5`; an
            // asymmetric group spans at most twice the absmax in 15 steps).
            Precision::Int4(_) => absmax / 15.0,
        }
        .max(MIN_ERROR_RANGE)
    }

    /// How the measure pass rounds each group (one entry, or one per row for per-channel INT8 and FP8).
    fn roundings(&self) -> Vec<Rounding> {
        match self.precision {
            Precision::Int8(_) => self.group_params.iter().copied().map(Rounding::Int8).collect(),
            Precision::Fp8(_) => self.fp8_scales.iter().map(|&scale| Rounding::Fp8 { scale }).collect(),
            Precision::Fp16 => vec![Rounding::Fp16],
            Precision::Bf16 => vec![Rounding::Bf16],
            // Block formats and INT4 groups are rounded run by run in the measure loop (`kernels::measure_given`).
            _ => vec![Rounding::Identity],
        }
    }
}

/// The value and error histograms of one tensor under one precision ([`histograms`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorHistograms {
    /// Histogram of the finite values, over [`TensorAnalysis::value_range`].
    pub value: Histogram,
    /// Histogram of the error `x - x_hat`, over `[-r, r]` with `r` = [`TensorAnalysis::error_range`].
    pub error: Histogram,
    /// Group-wise INT4: how the scales of the groups spread ([`GroupScales::of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_scales: Option<GroupScales>,
}

/// The spread of the scales of a group-wise INT4 tensor: one grid per group, too many to draw one by one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupScales {
    /// Values per group.
    pub group_size: usize,
    /// Smallest, median (lower middle) and largest group scale.
    pub min: f32,
    /// See `min`.
    pub median: f32,
    /// See `min`.
    pub max: f32,
    /// The largest group scale of each output channel (row), in row order.
    pub row_max: Vec<f32>,
}

impl GroupScales {
    /// The spread of `params`, the group parameters of a tensor row by row (`groups_per_row` a row); `None` when
    /// there are none.
    pub fn of(params: &[QParams], groups_per_row: usize, group_size: usize) -> Option<GroupScales> {
        let mut scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        let row_max = scales.chunks(groups_per_row.max(1)).map(|row| row.iter().copied().fold(0.0, f32::max)).collect();
        scales.sort_by(f32::total_cmp);
        let (&min, &max) = (scales.first()?, scales.last()?);
        Some(GroupScales { group_size, min, median: scales[(scales.len() - 1) / 2], max, row_max })
    }
}

/// Smallest half-width of the error histogram, so that its bin arithmetic stays finite in f32.
const MIN_ERROR_RANGE: f64 = 1e-30;

/// Bins of a measure that counts no histogram (never read).
const NO_BINS: BinMap = BinMap { lo: 0.0, bins_per_unit: 1.0 };

/// The INT8 parameters of a group whose finite range is `[min, max]` (an all-zero group when it has none).
fn int8_group(scheme: Int8Scheme, min: f32, max: f32) -> QParams {
    let (min, max) = if min <= max { (min, max) } else { (0.0, 0.0) };
    if scheme.symmetric { QParams::symmetric(min.abs().max(max.abs())) } else { QParams::asymmetric(min, max) }
}

/// The FP8 scale of a group whose finite range is `[min, max]` (scale 1 when it has none).
fn fp8_group(min: f32, max: f32) -> f32 {
    super::fp8::fp8_scale(if min <= max { min.abs().max(max.abs()) } else { 0.0 })
}

/// Runs the analysis of a tensor of `model` under `precision` (no histograms).
pub fn analyze_tensor(
    model: &Model,
    id: TensorId,
    precision: Precision,
    progress: &Progress,
) -> Result<TensorAnalysis> {
    analyze(&TensorData::of(model, id)?, precision, progress)
}

/// Whether each row's rounding depends on nothing but the row, and every row lies within one block of work: then
/// the analysis reads each row once (scan, then measure while the row is in cache). Per-tensor INT8 and FP8 (and
/// per-channel ones of rows longer than a block) need the range of the whole tensor (or row) first: two reads.
fn rows_stand_alone(data: &TensorData, precision: Precision) -> bool {
    let per_row = |granularity| granularity == Granularity::PerChannel && data.rows > 1 && data.cols < BLOCK_ELEMS;
    match precision {
        Precision::Int8(scheme) => per_row(scheme.granularity),
        Precision::Fp8(scheme) => per_row(scheme.granularity),
        _ => true,
    }
}

/// The statistics and error figures of `data` under `precision` (no histograms: see [`histograms`]).
///
/// When every row's rounding depends on that row alone (FP16, BF16, FP32, the block formats, per-channel INT8
/// and FP8), each row is read from memory once: scanned, then measured while it is in cache. Otherwise the whole
/// tensor is scanned first. Both orders give the same bits: every sum is accumulated slice by slice and block
/// by block in the same order.
pub fn analyze(data: &TensorData, precision: Precision, progress: &Progress) -> Result<TensorAnalysis> {
    analyze_with(data, precision, rows_stand_alone(data, precision), progress)
}

/// [`analyze`], reading each row once when `one_read` (only valid when [`rows_stand_alone`]) and in two passes
/// otherwise.
fn analyze_with(
    data: &TensorData,
    precision: Precision,
    one_read: bool,
    progress: &Progress,
) -> Result<TensorAnalysis> {
    if let Some(format) = precision.row_format()
        && !format.fits(data.cols)
    {
        return Err(Error::KernelInput {
            problem: format!("{format} needs rows of a multiple of {} values, not {}", format.run_values(), data.cols),
        });
    }
    if one_read {
        let (scan, total) = scan_and_measure(data, precision, progress)?;
        return Ok(finish(&scan, precision, total));
    }
    let scan = scan(data, progress)?;
    // The parameters of every group, from the scan (the error figures follow from the measure below).
    let planned = finish(&scan, precision, kernels::MeasureSums::default());
    let all_finite = !planned.stats.has_non_finite();
    let measured = measure_blocks(data, precision, &planned.roundings(), all_finite, None, progress)?;
    Ok(finish(&scan, precision, measured.sums))
}

/// The analysis from the scan and the measure's sums.
fn finish(scan: &Scan, precision: Precision, total: kernels::MeasureSums) -> TensorAnalysis {
    let stats = scan.stats();
    let group_params = match precision {
        Precision::Int8(scheme) => scan.group_params(scheme),
        _ => Vec::new(),
    };
    let fp8_scales = match precision {
        Precision::Fp8(scheme) => scan.fp8_scales(scheme.granularity),
        _ => Vec::new(),
    };
    let mut error = ErrorMetrics::from_sums(
        kernels::lane_sum(&scan.total.sum_sq),
        kernels::lane_sum(&total.sum_sq_error),
        total.max_abs_error as f64,
        stats.finite_count,
    );
    error.saturated_count = total.saturated;
    TensorAnalysis { stats, precision, error, group_params, fp8_scales }
}

/// What one block of the one-read pass found: its scan totals, the range it saw of each row, its error sums.
type ScannedBlock = (ScanAcc, Vec<RowRange>, kernels::MeasureSums);

/// The one-read pass: each row slice of each block scanned, then measured with the rounding its own range gives.
fn scan_and_measure(
    data: &TensorData,
    precision: Precision,
    progress: &Progress,
) -> Result<(Scan, kernels::MeasureSums)> {
    let shift = first_finite(data);
    let blocks = data.blocks();
    let partials: Vec<ScannedBlock> = blocks
        .par_iter()
        .map_init(MeasureFold::default, |fold, block| {
            progress.check()?;
            let MeasureFold { acc, buf, rounded, .. } = fold;
            let scanned = if let Some(format) = precision.row_format() {
                // Row slices of a work block are whole rows or runs of 2^16 values of one row: whole blocks.
                let values = data.values(block.clone(), buf);
                scan_measure_block(
                    data,
                    block,
                    values,
                    shift,
                    |slice, scanned, acc| {
                        rounded.clear();
                        rounded.extend_from_slice(slice);
                        format.fake_quantize_rows(rounded, slice.len());
                        let spec = measure_spec(Rounding::Identity, scanned, None);
                        kernels::measure_given(slice, rounded, &spec, acc);
                    },
                    acc,
                )
            } else {
                let rounding_of = |scanned: &ScanAcc| match precision {
                    Precision::Int8(scheme) => Rounding::Int8(int8_group(scheme, scanned.min, scanned.max)),
                    Precision::Fp8(_) => Rounding::Fp8 { scale: fp8_group(scanned.min, scanned.max) },
                    Precision::Fp16 => Rounding::Fp16,
                    Precision::Bf16 => Rounding::Bf16,
                    _ => Rounding::Identity,
                };
                match data.elements(block.clone(), buf) {
                    Elements::F32(values) => scan_measure_block(
                        data,
                        block,
                        values,
                        shift,
                        |slice, scanned, acc| {
                            let spec = measure_spec(rounding_of(scanned), scanned, None);
                            kernels::measure(Element::elements(slice), &spec, acc);
                        },
                        acc,
                    ),
                    Elements::Bf16(values) => scan_measure_block(
                        data,
                        block,
                        values,
                        shift,
                        |slice, scanned, acc| {
                            let spec = measure_spec(rounding_of(scanned), scanned, None);
                            kernels::measure(Element::elements(slice), &spec, acc);
                        },
                        acc,
                    ),
                }
            };
            progress.advance(2 * block.len() as u64);
            Ok(scanned)
        })
        .collect::<Result<_>>()?;
    let mut result = Scan {
        shift,
        total: ScanAcc::default(),
        row_min: vec![f32::INFINITY; data.rows],
        row_max: vec![f32::NEG_INFINITY; data.rows],
    };
    let mut total = kernels::MeasureSums::default();
    for (scanned, rows, sums) in &partials {
        result.total.merge(scanned);
        for &(row, min, max) in rows {
            result.row_min[row] = result.row_min[row].min(min);
            result.row_max[row] = result.row_max[row].max(max);
        }
        total.merge(sums);
    }
    Ok((result, total))
}

/// A measure spec for a slice whose scan is `scanned`, with the histograms' bins when they are counted.
fn measure_spec(rounding: Rounding, scanned: &ScanAcc, bins: Option<(BinMap, BinMap)>) -> MeasureSpec {
    let (value_bins, error_bins) = bins.unwrap_or((NO_BINS, NO_BINS));
    MeasureSpec {
        rounding,
        all_finite: scanned.nan + scanned.inf == 0,
        histograms: bins.is_some(),
        value_bins,
        error_bins,
    }
}

/// One block of the one-read pass: each row slice scanned (as [`scan_block`]), then `measure(slice, scan, acc)`.
fn scan_measure_block<E: Element>(
    data: &TensorData,
    block: &Range<usize>,
    values: &[E],
    shift: f64,
    mut measure: impl FnMut(&[E], &ScanAcc, &mut MeasureAcc),
    acc: &mut MeasureAcc,
) -> ScannedBlock {
    let mut total = ScanAcc::default();
    let mut rows = Vec::new();
    data.for_each_row_slice(block, values, |row, slice| {
        let mut scanned = ScanAcc::default();
        kernels::scan(E::elements(slice), shift, &mut scanned);
        total.merge(&scanned);
        rows.push((row, scanned.min, scanned.max));
        measure(slice, &scanned, acc);
    });
    (total, rows, acc.take_sums())
}

/// What the measure pass found over a tensor: the error sums, and the histogram counts when asked for (non-finite
/// elements still in bin 0).
struct Measured {
    sums: kernels::MeasureSums,
    value_counts: [u64; HIST_BINS],
    error_counts: [u64; HIST_BINS],
}

/// The measure pass over a tensor, in parallel: each row rounded by `roundings` (one, or one per row), the
/// histograms counted with `bins` when given.
fn measure_blocks(
    data: &TensorData,
    precision: Precision,
    roundings: &[Rounding],
    all_finite: bool,
    bins: Option<(BinMap, BinMap)>,
    progress: &Progress,
) -> Result<Measured> {
    let row_format = precision.row_format();
    let (value_bins, error_bins) = bins.unwrap_or((NO_BINS, NO_BINS));
    let spec_of = |row: usize| MeasureSpec {
        rounding: roundings[if roundings.len() > 1 { row } else { 0 }],
        all_finite,
        histograms: bins.is_some(),
        value_bins,
        error_bins,
    };
    let blocks = data.blocks();
    // Histogram counts are integers and add up in any order, so each rayon fold keeps one set; the f64 sums are
    // kept per block and added in block order.
    let mut folded = blocks
        .par_iter()
        .enumerate()
        .try_fold(MeasureFold::default, |mut fold, (index, block)| {
            progress.check()?;
            let MeasureFold { acc, buf, rounded, .. } = &mut fold;
            if let Some(format) = row_format {
                // Row slices of a work block are whole rows or runs of 2^16 values of one row: whole blocks.
                let values = data.values(block.clone(), buf);
                data.for_each_row_slice(block, values, |row, slice| {
                    rounded.clear();
                    rounded.extend_from_slice(slice);
                    format.fake_quantize_rows(rounded, slice.len());
                    kernels::measure_given(slice, rounded, &spec_of(row), acc)
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
    let MeasureFold { value_counts, error_counts, mut block_sums, .. } = folded;
    block_sums.sort_unstable_by_key(|&(index, _)| index);
    let mut sums = kernels::MeasureSums::default();
    for (_, block) in &block_sums {
        sums.merge(block);
    }
    Ok(Measured { sums, value_counts, error_counts })
}

/// The value and error histograms of `data` under the precision of `analysis` (its analysis, from [`analyze`]):
/// one read of the tensor, rounding every value with the analysis's parameters.
pub fn histograms(data: &TensorData, analysis: &TensorAnalysis, progress: &Progress) -> Result<TensorHistograms> {
    let stats = &analysis.stats;
    if stats.count != data.len() as u64 {
        return Err(Error::KernelInput {
            problem: format!("an analysis of {} values for a tensor of {}", stats.count, data.len()),
        });
    }
    let (value_lo, value_hi) = analysis.value_range();
    let error_range = analysis.error_range();
    let bins = (BinMap::new(value_lo, value_hi), BinMap::new(-error_range, error_range));
    let roundings = analysis.roundings();
    let measured = measure_blocks(data, analysis.precision, &roundings, !stats.has_non_finite(), Some(bins), progress)?;
    let Measured { mut value_counts, mut error_counts, .. } = measured;
    // The kernels count non-finite elements in bin 0; take them out.
    let non_finite = stats.nan_count + stats.inf_count;
    value_counts[0] -= non_finite;
    error_counts[0] -= non_finite;
    let mut value = Histogram::empty(value_lo, value_hi);
    let mut error = Histogram::empty(-error_range, error_range);
    value.counts = value_counts.to_vec();
    error.counts = error_counts.to_vec();
    Ok(TensorHistograms { value, error, group_scales: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Fp8Scheme, Int8Scheme};

    /// Values of rows of different scales, with NaN and ±inf in some rows, one all-NaN row and one constant row.
    fn awkward_rows(rows: usize, cols: usize) -> Vec<f32> {
        let mut rng = crate::seeded::XorShift64::from_state(0x9E37_79B9_7F4A_7C15);
        let mut values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * (1.0 + (i / cols) as f32 * 0.25)
            })
            .collect();
        if rows > 3 {
            values[cols + 5] = f32::NAN;
            values[2 * cols + 1] = f32::INFINITY;
            values[2 * cols + 2] = f32::NEG_INFINITY;
            values[3 * cols..4 * cols].fill(f32::NAN);
        }
        if rows > 5 {
            values[5 * cols..6 * cols].fill(0.375);
        }
        values
    }

    fn precisions() -> Vec<Precision> {
        let mut all = vec![Precision::Fp16, Precision::Bf16, Precision::Fp32];
        for granularity in [Granularity::PerChannel, Granularity::PerTensor] {
            all.push(Precision::Int8(Int8Scheme::weights(true, granularity)));
            all.push(Precision::Int8(Int8Scheme::weights(false, granularity)));
            all.push(Precision::Fp8(Fp8Scheme::weights(granularity)));
        }
        all
    }

    /// Runs `f` on a rayon pool of `threads` threads.
    fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    /// The one-read pass gives the figures of the two-pass order (scan everything, then measure), and neither
    /// depends on the number of threads; the histograms do not depend on them either.
    #[test]
    fn one_read_gives_the_figures_of_two_reads_on_any_number_of_threads() {
        let shapes = [(37, 129), (9, 256), (3, BLOCK_ELEMS + 77), (1, 1000), (700, 200)];
        for (rows, cols) in shapes {
            let values = awkward_rows(rows, cols);
            let bf16: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let datas = [
                TensorData::from_f32(&values, rows, cols),
                TensorData { dtype: DType::BF16, bytes: bytemuck::cast_slice(&bf16), rows, cols },
            ];
            let mut all = precisions();
            if cols % 256 == 0 {
                all.extend([Precision::Q8_0, Precision::Q4_0, Precision::Q4K, Precision::Q6K]);
            }
            if cols % 32 == 0 {
                all.extend([
                    Precision::Int4(crate::quant::Int4Scheme::new(true, 32)),
                    Precision::Int4(crate::quant::Int4Scheme::new(false, 32)),
                ]);
            }
            for data in &datas {
                for &precision in &all {
                    let what = format!("{rows}x{cols} {:?} {precision}", data.dtype);
                    let progress = Progress::new();
                    let two_reads = on_threads(1, || analyze_with(data, precision, false, &progress).unwrap());
                    let expected = format!("{two_reads:?}");
                    let histograms = on_threads(1, || histograms(data, &two_reads, &progress).unwrap());
                    for threads in [1, 3] {
                        let analysis = on_threads(threads, || analyze(data, precision, &progress).unwrap());
                        assert_eq!(format!("{analysis:?}"), expected, "{what}, {threads} threads");
                        if rows_stand_alone(data, precision) {
                            let one_read =
                                on_threads(threads, || analyze_with(data, precision, true, &progress).unwrap());
                            assert_eq!(format!("{one_read:?}"), expected, "{what}, one read, {threads} threads");
                        }
                        let again = on_threads(threads, || super::histograms(data, &analysis, &progress).unwrap());
                        assert_eq!(again, histograms, "{what}, {threads} threads");
                    }
                    let finite = two_reads.stats.finite_count;
                    assert_eq!(histograms.value.total(), finite, "{what}");
                    assert_eq!(histograms.error.total(), finite, "{what}");
                }
            }
        }
    }

    /// The histograms against a plain loop: every finite value in the bin of [`BinMap::bin`] over the value range,
    /// its error (per-channel INT8, rounded by `QParams`) in the bin over `[-r, r]`.
    #[test]
    fn histograms_count_every_finite_value_and_error_in_its_bin() {
        let (rows, cols) = (37, 129);
        let values = awkward_rows(rows, cols);
        let data = TensorData::from_f32(&values, rows, cols);
        let precision = Precision::Int8(Int8Scheme::weights(false, Granularity::PerChannel));
        let analysis = analyze(&data, precision, &Progress::new()).unwrap();
        let h = histograms(&data, &analysis, &Progress::new()).unwrap();
        let (lo, hi) = analysis.value_range();
        let r = analysis.error_range();
        let (value_bins, error_bins) = (BinMap::new(lo, hi), BinMap::new(-r, r));
        let (mut value, mut error) = (vec![0u64; HIST_BINS], vec![0u64; HIST_BINS]);
        for (row, chunk) in values.chunks(cols).enumerate() {
            let p = analysis.group_params[row];
            for &v in chunk.iter().filter(|v| v.is_finite()) {
                value[value_bins.bin(v)] += 1;
                error[error_bins.bin(v - p.dequantize(p.quantize(v)))] += 1;
            }
        }
        assert_eq!((h.value.lo, h.value.hi, h.error.lo, h.error.hi), (lo, hi, -r, r));
        assert_eq!(h.value.counts, value);
        assert_eq!(h.error.counts, error);
    }

    #[test]
    fn histograms_refuse_an_analysis_of_another_tensor() {
        let values = awkward_rows(4, 10);
        let analysis = analyze(&TensorData::from_f32(&values[..20], 2, 10), Precision::Fp16, &Progress::new()).unwrap();
        let other = TensorData::from_f32(&values, 4, 10);
        assert!(matches!(histograms(&other, &analysis, &Progress::new()), Err(Error::KernelInput { .. })));
    }
}
