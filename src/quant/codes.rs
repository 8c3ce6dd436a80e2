//! INT8 codes of whole tensors: the parameters from pass 1 of the analysis, then the codes, in parallel. The
//! export writes these codes and the runtime's simulation and deployed kernels are built from them.

use rayon::prelude::*;

use super::kernels;
use super::pass::{TensorData, scan};
use super::{Int8Scheme, QParams};
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

/// Quantizes one tensor to INT8 codes under `scheme` (pass 1 for the parameters, then the codes, in parallel).
pub fn quantize_tensor(data: &TensorData, scheme: Int8Scheme, progress: &Progress) -> Result<QuantizedTensor> {
    let params = scan(data, progress)?.group_params(scheme);
    let mut codes = vec![0i8; data.len()];
    let blocks = data.blocks();
    let mut pieces: Vec<(&std::ops::Range<usize>, &mut [i8])> = Vec::with_capacity(blocks.len());
    let mut rest = codes.as_mut_slice();
    for block in &blocks {
        let (piece, tail) = rest.split_at_mut(block.len());
        pieces.push((block, piece));
        rest = tail;
    }
    let per_row = params.len() > 1;
    pieces.into_par_iter().try_for_each_init(Vec::new, |buf, (block, out)| {
        progress.check()?;
        let values = data.values(block.clone(), buf);
        let mut at = 0;
        data.for_each_row_slice(block, values, |row, slice| {
            let p = &params[if per_row { row } else { 0 }];
            kernels::quantize_codes(slice, p, &mut out[at..at + slice.len()]);
            at += slice.len();
        });
        progress.advance(block.len() as u64);
        Ok::<(), Error>(())
    })?;
    Ok(QuantizedTensor { codes, params })
}
