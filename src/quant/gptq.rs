//! GPTQ (Frantar et al., 2022) for group-wise INT4 weights: the columns of a weight are quantized one at a time
//! and the rounding error of each is moved onto the columns not yet quantized, weighted by the inverse of the
//! layer's Hessian `H = Σ x xᵀ` over its calibration inputs (the factor `2/n` of the paper changes nothing: the
//! dampening is relative). The exact procedure, as written down in `docs/QUANTIZATION.md` ("GPTQ"):
//!
//! 1. Dead inputs (`H[j,j] = 0`) get `H[j,j] = 1` and their weights set to 0.
//! 2. With act-order, every group's parameters are taken first from the weight as it is ("static groups",
//!    llm-compressor's `actorder: weight`), then the columns are visited by decreasing `H[j,j]`. Without it, a
//!    group's parameters are taken when its first column comes up, from the group's current values (every earlier
//!    column's error already moved onto them), as the reference implementation does.
//! 3. `H += damp · mean(diag H) · I` (damp 1% by default), and `U` = the upper Cholesky factor of `H⁻¹`
//!    (`H⁻¹ = UᵀU`), computed as `J · chol(J H J)⁻¹ · J` with `J` the reversal (one Cholesky, one triangular
//!    inverse; the same `U` as Cholesky → inverse → Cholesky).
//! 4. In blocks of 128 columns: for column `c`, `q = dequant(quant(w_c))`, `err = (w_c − q) / U[c,c]`,
//!    `w_j −= err · U[c,j]` for the later columns of the block; after the block, the later columns receive the
//!    block's errors at once (the lazy batch update).
//!
//! Every row (output channel) is independent given `U`, so rows run in parallel, a few at a time so that each
//! row of `U` read from memory serves several rows of the weight.
//!
//! The figure GPTQ is judged by is the output error on the calibration inputs,
//! `‖WX − ŴX‖² / ‖WX‖² = Σ_r (w_r − ŵ_r)ᵀ H (w_r − ŵ_r) / Σ_r w_rᵀ H w_r` ([`output_errors`]), computed
//! from `H` without the inputs.

use rayon::prelude::*;

use super::codes::row_group;
use super::{Int4Scheme, Int4Tensor, Int8Scheme, QParams, QuantizedTensor};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Dampening when none is given: 1% of the mean diagonal of `H`, as GPTQ and llm-compressor.
pub const DEFAULT_DAMP_PERCENT: f64 = 1.0;
/// Columns per lazy batch update.
pub const BLOCK_COLUMNS: usize = 128;
/// Rows of the weight processed together (each row of `U` read once for all of them).
const ROWS_PER_TASK: usize = 16;

/// The choices of a GPTQ run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptqOptions {
    /// Added to the diagonal of `H`, in percent of its mean.
    #[serde(default = "default_damp_percent")]
    pub damp_percent: f64,
    /// Visit the columns by decreasing `H[j,j]` (static groups).
    #[serde(default)]
    pub act_order: bool,
}

fn default_damp_percent() -> f64 {
    DEFAULT_DAMP_PERCENT
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { damp_percent: DEFAULT_DAMP_PERCENT, act_order: false }
    }
}

/// The GPTQ weights of one layer, as a plan holds them: used in place of round to nearest while the layer keeps
/// the precision they were computed for.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqLayer {
    /// The layer's precision in the plan when GPTQ ran.
    pub precision: super::Precision,
    /// The codes and their parameters.
    pub codes: GptqCodes,
    /// The options of the run.
    pub options: GptqOptions,
    /// Round to nearest's `‖WX − ŴX‖² / ‖WX‖²` on the calibration inputs.
    pub rtn_output_error: f64,
    /// GPTQ's, on the same inputs.
    pub gptq_output_error: f64,
    /// Input rows the Hessian summed.
    pub rows_seen: u64,
}

/// GPTQ's codes of one weight, in the layouts round to nearest gives them.
#[derive(Clone, Debug, PartialEq)]
pub enum GptqCodes {
    /// Group-wise INT4 under `scheme` (the precision's, fitted to the layer's rows).
    Int4 {
        /// The scheme of the codes.
        scheme: Int4Scheme,
        /// Codes and group parameters.
        tensor: Int4Tensor,
    },
    /// INT8 under `scheme`, the parameters (per tensor or per row) those of round to nearest.
    Int8 {
        /// The scheme of the codes.
        scheme: Int8Scheme,
        /// Codes and parameters.
        tensor: QuantizedTensor,
    },
}

impl GptqCodes {
    /// `(q - zero_point) · scale` of every code, for rows of `cols` values.
    pub fn dequantized(&self, cols: usize) -> Vec<f32> {
        match self {
            GptqCodes::Int4 { scheme, tensor } => tensor.dequantized(cols, scheme.group_size),
            GptqCodes::Int8 { tensor, .. } => tensor.dequantized(cols),
        }
    }
}

/// The GPTQ weights of a plan's INT4 and INT8 layers and where they came from: what a plan holds after a GPTQ run.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqWeights {
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// The calibration data file.
    pub data: std::path::PathBuf,
    /// The options of the run.
    pub options: GptqOptions,
    /// Input rows (token positions or samples) the Hessians summed.
    pub rows_seen: u64,
    /// Times the data was run (more than one when the Hessians did not fit in memory at once).
    pub passes: usize,
    /// Layers whose input the data never reached: they stay rounded to nearest.
    pub unreached: Vec<crate::model::LayerId>,
    /// The weights of every other INT4 and INT8 layer of the plan.
    pub layers: std::collections::BTreeMap<crate::model::LayerId, GptqLayer>,
}

impl GptqWeights {
    /// The mean over the layers of round to nearest's and GPTQ's output error.
    pub fn mean_output_errors(&self) -> (f64, f64) {
        let count = self.layers.len().max(1) as f64;
        let rtn = self.layers.values().map(|l| l.rtn_output_error).sum::<f64>() / count;
        let gptq = self.layers.values().map(|l| l.gptq_output_error).sum::<f64>() / count;
        (rtn, gptq)
    }
}

/// `Σ x xᵀ` over the calibration inputs of one layer, `cols × cols`, row-major, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    /// Input width.
    pub cols: usize,
    /// `cols × cols` values (symmetric).
    pub values: Vec<f64>,
    /// Input rows accumulated.
    pub rows_seen: u64,
}

impl Hessian {
    /// An empty sum for inputs of `cols` values.
    pub fn new(cols: usize) -> Hessian {
        Hessian { cols, values: vec![0.0; cols * cols], rows_seen: 0 }
    }

    /// Adds every row of `x` (`[n, cols]`): `H += XᵀX` as one f64 matrix product on the cores (the `gemm` crate);
    /// [`Hessian::finish`] then makes the sum exactly symmetric.
    pub fn add_rows(&mut self, x: &[f32]) {
        let cols = self.cols;
        let rows = x.len().checked_div(cols).unwrap_or(0);
        if rows == 0 {
            return;
        }
        let x64: Vec<f64> = x[..rows * cols].iter().map(|&v| v as f64).collect();
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: `values` is cols × cols at row stride cols and nothing else refers to it while we hold `&mut`;
        // the left operand Xᵀ (element (i, t) at t·cols + i) and the right X (element (t, j) at t·cols + j) stay
        // inside `x64`, rows × cols values. gemm computes dst = 1·dst + 1·lhs·rhs.
        unsafe {
            gemm::gemm(
                cols,
                cols,
                rows,
                self.values.as_mut_ptr(),
                1,
                cols as isize,
                true,
                x64.as_ptr(),
                cols as isize,
                1,
                x64.as_ptr(),
                1,
                cols as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        self.rows_seen += rows as u64;
    }

    /// Adds another sum of the same width.
    pub fn merge(&mut self, other: &Hessian) {
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a += b;
        }
        self.rows_seen += other.rows_seen;
    }

    /// Copies the upper triangle onto the lower one (after the last [`Hessian::add_rows`]), so that the sum is
    /// exactly symmetric whatever order the product summed each entry in.
    pub fn finish(&mut self) {
        let n = self.cols;
        for i in 0..n {
            for j in 0..i {
                self.values[i * n + j] = self.values[j * n + i];
            }
        }
    }
}

/// `‖WX − ŴX‖² / ‖WX‖²` on the inputs `hessian` sums, for a weight `[rows, cols]` and each of its quantized
/// versions `candidates` (0 when `WX` is 0 everywhere): with `V` the weight's rows and their differences to each
/// candidate, in f64, `P = V · H` as one matrix product and each quadratic form `Σ_j P[r, j] · V[r, j]`.
pub fn output_errors(weight: &[f32], candidates: &[&[f32]], hessian: &Hessian) -> Vec<f64> {
    let n = hessian.cols;
    let rows = weight.len().checked_div(n).unwrap_or(0);
    let forms = candidates.len() + 1;
    if rows == 0 {
        return vec![0.0; candidates.len()];
    }
    let mut v = vec![0.0f64; forms * rows * n];
    for (i, &w) in weight[..rows * n].iter().enumerate() {
        v[i] = w as f64;
        for (k, c) in candidates.iter().enumerate() {
            v[(k + 1) * rows * n + i] = w as f64 - c[i] as f64;
        }
    }
    let mut p = vec![0.0f64; v.len()];
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `p` and `v` are (forms · rows) × n at row stride n, `hessian.values` n × n at row stride n; `p` is
    // written alone. gemm computes p = 1·(v · H) without reading p.
    unsafe {
        gemm::gemm(
            forms * rows,
            n,
            n,
            p.as_mut_ptr(),
            1,
            n as isize,
            false,
            v.as_ptr(),
            1,
            n as isize,
            hessian.values.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    let totals: Vec<f64> = v
        .par_chunks(rows * n)
        .zip(p.par_chunks(rows * n))
        .map(|(v, p)| v.chunks_exact(n).zip(p.chunks_exact(n)).map(|(v, p)| dot(v, p)).sum())
        .collect();
    let signal = totals[0];
    totals[1..].iter().map(|&e| if signal > 0.0 { e / signal } else { 0.0 }).collect()
}

/// How a GPTQ run picks the grid of a weight value.
#[derive(Clone, Copy)]
enum Grid<'a> {
    /// Group-wise INT4: a group's parameters taken when the group starts (fixed first with act-order).
    Int4(Int4Scheme),
    /// Parameters fixed before the run, one per tensor or one per row (INT8: round to nearest's).
    Fixed(&'a [QParams]),
}

/// GPTQ of one weight `[rows, cols]` (rows whole groups of `scheme`) with the inputs' `hessian`: the codes and
/// every group's parameters, in the layout of [`super::quantize_tensor_int4`].
pub fn gptq_int4(
    weight: &[f32],
    rows: usize,
    hessian: &Hessian,
    scheme: Int4Scheme,
    options: GptqOptions,
    progress: &Progress,
) -> Result<Int4Tensor> {
    let cols = hessian.cols;
    if !scheme.fits(cols) || !BLOCK_COLUMNS.is_multiple_of(scheme.group_size) {
        return Err(Error::KernelInput {
            problem: format!("GPTQ: rows of {cols} inputs are not whole INT4 groups of {}", scheme.group_size),
        });
    }
    let (codes, params) = gptq_codes(weight, rows, hessian, Grid::Int4(scheme), options, progress)?;
    Ok(Int4Tensor { codes, params })
}

/// GPTQ of one weight `[rows, cols]` on the INT8 grid of `params` (one for the tensor, or one per row: round to
/// nearest's parameters of the stored weight, as llm-compressor fixes them before the run): the codes, in the
/// layout of [`super::quantize_tensor`].
pub fn gptq_int8(
    weight: &[f32],
    rows: usize,
    hessian: &Hessian,
    params: Vec<QParams>,
    options: GptqOptions,
    progress: &Progress,
) -> Result<QuantizedTensor> {
    if params.len() != 1 && params.len() != rows {
        return Err(Error::KernelInput {
            problem: format!("GPTQ: {} INT8 parameter sets for {rows} rows", params.len()),
        });
    }
    let (codes, _) = gptq_codes(weight, rows, hessian, Grid::Fixed(&params), options, progress)?;
    Ok(QuantizedTensor { codes, params })
}

/// The shared run: the codes and, on the INT4 grid, every group's parameters (on a fixed grid, the row's).
fn gptq_codes(
    weight: &[f32],
    rows: usize,
    hessian: &Hessian,
    grid: Grid,
    options: GptqOptions,
    progress: &Progress,
) -> Result<(Vec<i8>, Vec<QParams>)> {
    let cols = hessian.cols;
    if cols == 0 || weight.len() != rows * cols {
        return Err(Error::KernelInput {
            problem: format!("GPTQ: a weight of {} values is not {rows} rows of {cols} inputs", weight.len()),
        });
    }
    let mut h = hessian.values.clone();
    let dead: Vec<bool> = (0..cols).map(|j| h[j * cols + j] == 0.0).collect();
    for (j, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
        h[j * cols + j] = 1.0;
    }
    let group = match grid {
        Grid::Int4(scheme) => scheme.group_size,
        Grid::Fixed(_) => cols,
    };
    let groups_per_row = cols / group;
    // The visiting order: column `order[c]` of the weight is the c-th quantized.
    let mut order: Vec<usize> = (0..cols).collect();
    if options.act_order {
        order.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    let mean_diagonal = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
    let damp = options.damp_percent / 100.0 * mean_diagonal;
    // H permuted into the visiting order, dampened.
    let mut permuted = vec![0.0f64; cols * cols];
    for (a, &i) in order.iter().enumerate() {
        for (b, &j) in order.iter().enumerate() {
            permuted[a * cols + b] = h[i * cols + j];
        }
        permuted[a * cols + a] += damp;
    }
    drop(h);
    let u = upper_cholesky_of_inverse(permuted, cols)?;
    progress.check()?;

    let mut codes = vec![0i8; rows * cols];
    let mut params = vec![QParams::int4_symmetric(0.0); rows * groups_per_row];
    let task = GptqTask { u: &u, cols, group, order: &order, dead: &dead, grid, act_order: options.act_order };
    codes
        .par_chunks_mut(cols * ROWS_PER_TASK)
        .zip(params.par_chunks_mut(groups_per_row * ROWS_PER_TASK))
        .zip(weight.par_chunks(cols * ROWS_PER_TASK))
        .enumerate()
        .try_for_each(|(index, ((codes, params), weight))| {
            progress.check()?;
            task.run(index * ROWS_PER_TASK, weight, codes, params);
            progress.advance((weight.len() / cols) as u64);
            Ok::<(), Error>(())
        })?;
    Ok((codes, params))
}

/// What every group of rows shares.
struct GptqTask<'a> {
    /// Upper Cholesky factor of the dampened `H⁻¹` in visiting order, row-major.
    u: &'a [f64],
    cols: usize,
    /// Values of a row that share parameters (a fixed grid: the whole row).
    group: usize,
    order: &'a [usize],
    dead: &'a [bool],
    grid: Grid<'a>,
    act_order: bool,
}

impl GptqTask<'_> {
    /// GPTQ of a few rows, the first of them row `first_row` of the weight: `weight` `[n, cols]` in, their codes
    /// and group parameters out.
    fn run(&self, first_row: usize, weight: &[f32], codes: &mut [i8], params: &mut [QParams]) {
        let (cols, group) = (self.cols, self.group);
        let groups_per_row = cols / group;
        let n = weight.len() / cols;
        // The rows in visiting order, in f64, dead inputs zeroed.
        let mut w = vec![0.0f64; n * cols];
        for r in 0..n {
            for (c, &j) in self.order.iter().enumerate() {
                w[r * cols + c] = if self.dead[j] { 0.0 } else { weight[r * cols + j] as f64 };
            }
        }
        match self.grid {
            Grid::Fixed(fixed) => {
                for (r, p) in params.iter_mut().enumerate() {
                    *p = row_group(fixed, first_row + r);
                }
            }
            Grid::Int4(scheme) if self.act_order => {
                // Static groups: every group's parameters from the (dead-zeroed) weight as it is.
                for r in 0..n {
                    let mut original = vec![0.0f32; cols];
                    for (c, &j) in self.order.iter().enumerate() {
                        original[j] = w[r * cols + c] as f32;
                    }
                    for (g, values) in original.chunks_exact(group).enumerate() {
                        params[r * groups_per_row + g] = scheme.group_params(values);
                    }
                }
            }
            Grid::Int4(_) => {}
        }
        let mut errors = vec![0.0f64; n * BLOCK_COLUMNS];
        let mut group_values = vec![0.0f32; if matches!(self.grid, Grid::Int4(_)) { group } else { 0 }];
        for start in (0..cols).step_by(BLOCK_COLUMNS) {
            let end = (start + BLOCK_COLUMNS).min(cols);
            for r in 0..n {
                let row = &mut w[r * cols..(r + 1) * cols];
                for c in start..end {
                    let j = self.order[c];
                    if let Grid::Int4(scheme) = self.grid
                        && !self.act_order
                        && c % group == 0
                    {
                        for (v, &x) in group_values.iter_mut().zip(&row[c..c + group]) {
                            *v = x as f32;
                        }
                        params[r * groups_per_row + c / group] = scheme.group_params(&group_values);
                    }
                    let p = params[r * groups_per_row + j / group];
                    let code = p.quantize(row[c] as f32);
                    codes[r * cols + j] = code;
                    let err = (row[c] - p.dequantize(code) as f64) / self.u[c * cols + c];
                    errors[r * BLOCK_COLUMNS + c - start] = err;
                    let u_row = &self.u[c * cols + c + 1..c * cols + end];
                    for (x, &uc) in row[c + 1..end].iter_mut().zip(u_row) {
                        *x -= err * uc;
                    }
                }
            }
            if end == cols {
                break;
            }
            // The lazy batch update: every later column receives the block's errors, W[:, end..] -= E · U[block, end..]
            // as one matrix product.
            let count = end - start;
            // SAFETY: dst is rows 0..n, columns end..cols of `w` (row stride cols); lhs is the n × count errors at
            // row stride BLOCK_COLUMNS; rhs is rows start..end, columns end..cols of `u` (row stride cols): all in
            // bounds, and `w` is borrowed mutably here alone. gemm computes dst = 1·dst + (-1)·lhs·rhs.
            unsafe {
                gemm::gemm(
                    n,
                    cols - end,
                    count,
                    w.as_mut_ptr().add(end),
                    1,
                    cols as isize,
                    true,
                    errors.as_ptr(),
                    1,
                    BLOCK_COLUMNS as isize,
                    self.u.as_ptr().add(start * cols + end),
                    1,
                    cols as isize,
                    1.0,
                    -1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    }
}

/// The upper factor `U` of `H⁻¹ = UᵀU` for a symmetric positive definite `h` (`n × n`, row-major, consumed):
/// `U = J · L⁻¹ · J` where `J H J = L Lᵀ` (`J` reverses the order). Fails when `h` is not positive definite.
pub fn upper_cholesky_of_inverse(h: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    let mut a = h;
    // J H J: both orders reversed.
    a.reverse();
    let l = cholesky_lower(a, n)?;
    let inverse = lower_inverse(&l, n);
    let mut u = inverse;
    u.reverse();
    Ok(u)
}

/// The lower Cholesky factor of `a` (row-major, consumed), row by row.
fn cholesky_lower(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    for i in 0..n {
        let (done, rest) = a.split_at_mut(i * n);
        let row = &mut rest[..n];
        for j in 0..=i {
            let earlier = if j < i { &done[j * n..j * n + j] } else { &row[..j] };
            let s = row[j] - dot(&row[..j], earlier);
            if j == i {
                if s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    return Err(Error::KernelInput {
                        problem: format!(
                            "GPTQ: the dampened Hessian is not positive definite (pivot {s:e} at input {})",
                            n - 1 - i
                        ),
                    });
                }
                row[i] = s.sqrt();
            } else {
                row[j] = s / done[j * n + j];
            }
        }
        row[i + 1..].fill(0.0);
    }
    Ok(a)
}

/// The inverse of a lower-triangular `l` with a positive diagonal, row by row:
/// `X[i] = (e_i − Σ_{k<i} L[i,k] X[k]) / L[i,i]`.
fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut x = vec![0.0f64; n * n];
    for i in 0..n {
        let (done, rest) = x.split_at_mut(i * n);
        let row = &mut rest[..n];
        row[i] = 1.0;
        for k in 0..i {
            let lik = l[i * n + k];
            if lik != 0.0 {
                for (xv, &prev) in row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]) {
                    *xv -= lik * prev;
                }
            }
        }
        let d = l[i * n + i];
        for xv in &mut row[..=i] {
            *xv /= d;
        }
    }
    x
}

/// `Σ a_i b_i` in four lanes (vectorizable).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (a4, a_rest) = a.split_at(a.len() / 4 * 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (x, y) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for k in 0..4 {
            lanes[k] += x[k] * y[k];
        }
    }
    let tail: f64 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The finished Hessian of `rows` rows of [`inputs`].
    fn hessian(rows: usize, cols: usize) -> Hessian {
        let mut h = Hessian::new(cols);
        h.add_rows(&inputs(rows, cols));
        h.finish();
        h
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
            })
            .collect()
    }

    /// Inputs with correlated columns (what makes GPTQ worth it) and one dead column.
    fn inputs(rows: usize, cols: usize) -> Vec<f32> {
        let base = random(rows * cols, 7);
        let mut x = base.clone();
        for r in 0..rows {
            for c in 1..cols {
                x[r * cols + c] = 0.6 * x[r * cols + c - 1] + base[r * cols + c] * (1.0 + (c % 5) as f32);
            }
            x[r * cols + 3] = 0.0;
        }
        x
    }

    #[test]
    fn the_upper_factor_is_that_of_the_inverse() {
        let n = 5;
        let x = inputs(40, n);
        let mut h = Hessian::new(n);
        h.add_rows(&x);
        h.finish();
        for j in 0..n {
            h.values[j * n + j] += 0.5;
        }
        let u = upper_cholesky_of_inverse(h.values.clone(), n).unwrap();
        // H · (UᵀU) = I.
        for i in 0..n {
            for j in 0..n {
                let mut v = 0.0;
                for k in 0..n {
                    let inv_kj: f64 = (0..n).map(|m| u[m * n + k] * u[m * n + j]).sum();
                    v += h.values[i * n + k] * inv_kj;
                }
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "({i},{j}) = {v}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0, "upper triangular");
            }
        }
        assert!(upper_cholesky_of_inverse(vec![1.0, 2.0, 2.0, 1.0], 2).is_err(), "not positive definite");
    }

    #[test]
    fn gptq_lowers_the_output_error_below_round_to_nearest() {
        let (rows, cols) = (24, 256);
        let h = hessian(600, cols);
        assert_eq!(h.rows_seen, 600);
        let weight = random(rows * cols, 3);
        for scheme in [Int4Scheme::new(true, 128), Int4Scheme::new(false, 32)] {
            for act_order in [false, true] {
                let options = GptqOptions { act_order, ..Default::default() };
                let q = gptq_int4(&weight, rows, &h, scheme, options, &Progress::new()).unwrap();
                let mut rtn = weight.clone();
                crate::quant::int4::fake_quantize_rows(scheme, &mut rtn, cols);
                let [gptq_error, rtn_error] =
                    output_errors(&weight, &[&q.dequantized(cols, scheme.group_size), &rtn], &h)[..]
                else {
                    panic!("two candidates, two errors")
                };
                assert!(gptq_error < 0.8 * rtn_error, "{scheme:?} act_order {act_order}: {gptq_error} vs {rtn_error}");
                // The codes are the scheme's own codes of the stored parameters.
                assert!(q.codes.iter().all(|&c| (-8..=7).contains(&c)));
            }
        }
    }

    #[test]
    fn gptq_on_the_int8_grid_keeps_rounding_s_parameters_and_lowers_the_output_error() {
        use crate::quant::{Granularity, pass::TensorData};
        let (rows, cols) = (24, 160);
        let h = hessian(400, cols);
        let weight = random(rows * cols, 4);
        let data = TensorData::from_f32(&weight, rows, cols);
        for granularity in [Granularity::PerChannel, Granularity::PerTensor] {
            for symmetric in [true, false] {
                let scheme = Int8Scheme::weights(symmetric, granularity);
                let rounded = crate::quant::quantize_tensor(&data, scheme, &Progress::new()).unwrap();
                let options = GptqOptions::default();
                let q = gptq_int8(&weight, rows, &h, rounded.params.clone(), options, &Progress::new()).unwrap();
                assert_eq!(q.params, rounded.params, "the grid is rounding's");
                let errors = output_errors(&weight, &[&q.dequantized(cols), &rounded.dequantized(cols)], &h);
                assert!(errors[0] < 0.8 * errors[1], "{scheme:?}: GPTQ {} vs rounding {}", errors[0], errors[1]);
            }
        }
        let wrong = vec![QParams::symmetric(1.0); 2];
        assert!(gptq_int8(&weight, rows, &h, wrong, GptqOptions::default(), &Progress::new()).is_err());
    }

    #[test]
    fn a_layer_whose_inputs_are_all_zero_gets_zero_weights_and_no_output_error() {
        let (rows, cols) = (2, 32);
        let h = Hessian::new(cols);
        let weight = random(rows * cols, 5);
        let q = gptq_int4(&weight, rows, &h, Int4Scheme::new(true, 32), GptqOptions::default(), &Progress::new());
        // Every input dead: weights zeroed, codes 0, output error 0 (nothing reaches the output).
        let q = q.unwrap();
        assert!(q.codes.iter().all(|&c| c == 0));
        assert_eq!(output_errors(&weight, &[&q.dequantized(cols, 32)], &h), [0.0]);
    }
}
