//! Codes of whole tensors: the parameters from pass 1 of the analysis, then the codes, in parallel (INT8 codes
//! with their `QParams`, FP8 E4M3 codes with their scales). The export writes these codes, and the runtime's
//! simulation and deployed kernels are built from them.

use rayon::prelude::*;

use super::pass::{TensorData, scan};
use super::{Granularity, Int4Scheme, Int8Scheme, QParams, fp8, kernels};

/// Values per parallel task of [`quantize_tensor_int4`].
const ROWS_TASK_VALUES: usize = 1 << 16;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// INT8 codes of one tensor with their parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    /// Codes in the tensor's original layout.
    pub codes: Vec<i8>,
    /// One entry per group (per tensor: one; per channel: one per row).
    pub params: Vec<QParams>,
}

/// FP8 E4M3 codes of one tensor with their scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Tensor {
    /// E4M3 codes in the tensor's original layout.
    pub codes: Vec<u8>,
    /// One scale per group (per tensor: one; per channel: one per row).
    pub scales: Vec<f32>,
}

/// Group-wise INT4 codes of one 2-D tensor with the parameters of every group.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Tensor {
    /// Codes (`-8..=7`) in the tensor's original layout.
    pub codes: Vec<i8>,
    /// Row by row, the parameters of each group of the row (`rows × cols / group_size`).
    pub params: Vec<QParams>,
}

/// The entry of row `row` in per-group values (parameters or scales): the only entry when there is one group (per
/// tensor), the row's own otherwise (per channel). The one place that maps a row to its group.
pub fn row_group<T: Copy>(groups: &[T], row: usize) -> T {
    groups[if groups.len() == 1 { 0 } else { row }]
}

impl Int4Tensor {
    /// `(q - zero_point) · scale` of every code, for rows of `cols` values in groups of `group_size`.
    pub fn dequantized(&self, cols: usize, group_size: usize) -> Vec<f32> {
        let groups = cols / group_size.max(1);
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| self.params[(i / cols) * groups + (i % cols) / group_size].dequantize(q))
            .collect()
    }
}

impl QuantizedTensor {
    /// The parameters of row `row` (per tensor: the one set).
    pub fn row_params(&self, row: usize) -> QParams {
        row_group(&self.params, row)
    }

    /// `(q - zero_point) · scale` of every code, for rows of `cols` values.
    pub fn dequantized(&self, cols: usize) -> Vec<f32> {
        let cols = cols.max(1);
        self.codes.iter().enumerate().map(|(i, &q)| self.row_params(i / cols).dequantize(q)).collect()
    }
}

impl Fp8Tensor {
    /// The scale of row `row` (per tensor: the one scale).
    pub fn row_scale(&self, row: usize) -> f32 {
        row_group(&self.scales, row)
    }
}

/// Quantizes one tensor to INT8 codes under `scheme` (pass 1 for the parameters, then the codes, in parallel).
pub fn quantize_tensor(data: &TensorData, scheme: Int8Scheme, progress: &Progress) -> Result<QuantizedTensor> {
    let params = scan(data, progress)?.group_params(scheme);
    let codes = encode(data, progress, 0i8, |row, slice, out| {
        kernels::quantize_codes(slice, &row_group(&params, row), out);
    })?;
    Ok(QuantizedTensor { codes, params })
}

/// Quantizes one 2-D tensor (rows whole groups) to group-wise INT4 codes, rows in parallel.
pub fn quantize_tensor_int4(data: &TensorData, scheme: Int4Scheme, progress: &Progress) -> Result<Int4Tensor> {
    if !scheme.fits(data.cols) {
        return Err(Error::KernelInput {
            problem: format!("INT4 groups of {} cannot split rows of {} values", scheme.group_size, data.cols),
        });
    }
    let groups_per_row = data.cols / scheme.group_size;
    let mut codes = vec![0i8; data.len()];
    let mut params = vec![QParams::int4_symmetric(0.0); data.rows * groups_per_row];
    let rows_per_task = (ROWS_TASK_VALUES / data.cols).max(1);
    codes
        .par_chunks_mut(data.cols * rows_per_task)
        .zip(params.par_chunks_mut(groups_per_row * rows_per_task))
        .enumerate()
        .try_for_each_init(Vec::new, |buf, (task, (codes, params))| {
            progress.check()?;
            let first = task * rows_per_task * data.cols;
            let values = data.values(first..first + codes.len(), buf);
            for ((row, codes), params) in values
                .chunks_exact(data.cols)
                .zip(codes.chunks_exact_mut(data.cols))
                .zip(params.chunks_exact_mut(groups_per_row))
            {
                let (row_codes, row_params) = super::int4::quantize_row(scheme, row);
                codes.copy_from_slice(&row_codes);
                params.copy_from_slice(&row_params);
            }
            Ok::<(), Error>(())
        })?;
    Ok(Int4Tensor { codes, params })
}

/// Quantizes one tensor to FP8 E4M3 codes with one scale per tensor or per row (pass 1 for the scales, then the
/// codes, in parallel).
pub fn quantize_tensor_fp8(data: &TensorData, granularity: Granularity, progress: &Progress) -> Result<Fp8Tensor> {
    let scales = scan(data, progress)?.fp8_scales(granularity);
    let codes = encode(data, progress, 0u8, |row, slice, out| {
        fp8::quantize_e4m3(slice, row_group(&scales, row), out);
    })?;
    Ok(Fp8Tensor { codes, scales })
}

/// The codes of every element of `data`, block by block in parallel: `code_row(row, values, out)` fills the codes
/// of one row's slice of a block.
fn encode<T: Copy + Send>(
    data: &TensorData,
    progress: &Progress,
    zero: T,
    code_row: impl Fn(usize, &[f32], &mut [T]) + Sync,
) -> Result<Vec<T>> {
    let mut codes = vec![zero; data.len()];
    let blocks = data.blocks();
    let mut pieces: Vec<(&std::ops::Range<usize>, &mut [T])> = Vec::with_capacity(blocks.len());
    let mut rest = codes.as_mut_slice();
    for block in &blocks {
        let (piece, tail) = rest.split_at_mut(block.len());
        pieces.push((block, piece));
        rest = tail;
    }
    pieces.into_par_iter().try_for_each_init(Vec::new, |buf, (block, out)| {
        progress.check()?;
        let values = data.values(block.clone(), buf);
        let mut at = 0;
        data.for_each_row_slice(block, values, |row, slice| {
            code_row(row, slice, &mut out[at..at + slice.len()]);
            at += slice.len();
        });
        progress.advance(block.len() as u64);
        Ok::<(), Error>(())
    })?;
    Ok(codes)
}
