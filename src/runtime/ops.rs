//! The runtime's operators on row-major f32 buffers.
//!
//! Matrix products go to the `gemm` crate's packed SGEMM (AVX2/FMA kernels chosen at run time) on rayon's threads,
//! except products of 16 to 127 rows (with AVX2 and FMA), which take a kernel of their own (`few_rows`, faster
//! there);
//! one-row products (a decoder's token) take a GEMV that streams each weight row once. How work is split depends on
//! the shapes and the thread count only, so results are reproducible run to run on one machine.

use rayon::prelude::*;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// `y[m, n] = Σ_k x[m, k] · w_t[k, n] (+ bias[n])`: a PyTorch `Linear` whose weight `[n, k]` is held transposed,
/// `[k, n]` (see [`transpose`]), so that both the SGEMM and the one-row path read it row by row.
pub fn linear(x: &[f32], m: usize, k: usize, w_t: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w_t.len(), k * n);
    if m <= 2 {
        let mut y = vec![0.0f32; m * n];
        for (x_row, y_row) in x.chunks_exact(k.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
            gemv(x_row, w_t, y_row, bias);
        }
        return y;
    }
    let mut y = matmul(x, m, k, w_t, n);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n) {
            add_in_place(row, b);
        }
    }
    y
}

/// `[rows, cols]` row-major into `[cols, rows]` row-major, in cache-sized tiles.
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut t = vec![0.0f32; a.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    t[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
    t
}

/// `c[m, n] = a[m, k] · b[k, n]`, both row-major (attention's `P · V`, linear layers).
pub fn matmul(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    let mut c = vec![0.0f32; m * n];
    gemm(&mut c, m, k, n, (a, k, 1), (b, n, 1));
    c
}

/// A matrix operand: values, row stride, column stride.
pub(crate) type Operand<'a> = (&'a [f32], usize, usize);

/// `c[m, n] = A · B` (row-major `c`), with `A` (`m x k`) and `B` (`k x n`) read through their strides, on rayon's
/// threads when the product is large enough (the `gemm` crate splits the work).
fn gemm(c: &mut [f32], m: usize, k: usize, n: usize, a: Operand, b: Operand) {
    gemm_with_threads(c, m, k, n, a, b, rayon::current_num_threads());
}

fn gemm_with_threads(c: &mut [f32], m: usize, k: usize, n: usize, a: Operand, b: Operand, threads: usize) {
    assert!(c.len() >= m * n);
    // SAFETY: `c` holds the m x n result at row stride n, and nothing else refers to it while we hold `&mut`.
    unsafe { gemm_strided(c.as_mut_ptr(), n, false, m, k, n, a, b, threads) }
}

/// `C[m, n] = A · B`, or `C += A · B` when `accumulate`, with `C` written in place at `c` with row stride `rsc`
/// (column stride 1): a block of columns of a wider matrix. `A` (`m x k`) and `B` (`k x n`) are read through their
/// strides (bounds-checked); on `threads` rayon threads when the product is large enough (1: the calling thread).
///
/// # Safety
/// `c` must be valid for reads and writes of rows `0..m`, columns `0..n` at row stride `rsc`; those elements must
/// not overlap `a` or `b`, and no other thread may access them during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    c: *mut f32,
    rsc: usize,
    accumulate: bool,
    m: usize,
    k: usize,
    n: usize,
    a: Operand,
    b: Operand,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (a, rsa, csa) = a;
    let (b, rsb, csb) = b;
    assert!(k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len());
    assert!(k == 0 || (k - 1) * rsb + (n - 1) * csb < b.len());
    let threads = if m * k * n < PARALLEL_MIN_MACS { 1 } else { threads };
    #[cfg(target_arch = "x86_64")]
    if few_rows::ROWS.contains(&m)
        && n >= few_rows::MIN_COLUMNS
        && k * n >= PARALLEL_MIN_MACS
        && csb == 1
        && few_rows::available()
    {
        // SAFETY: the asserts above and the caller's guarantee on `c`; FMA and AVX2 were detected.
        unsafe { few_rows::product(c, rsc, accumulate, m, k, n, (a, rsa, csa), b, rsb, threads) };
        return;
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts keep every read of `a` and `b` inside them; the caller guarantees `c`. gemm computes
    // dst = alpha·dst + beta·lhs·rhs and reads dst only when asked to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            rsc as isize,
            accumulate,
            a.as_ptr(),
            csa as isize,
            rsa as isize,
            b.as_ptr(),
            csb as isize,
            rsb as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Products with few rows (16 to 127), at least 64 columns and `B` read along its rows: the `gemm` crate is slow
/// there (32 × 768 × 3072 took 3.1-6 ms on 2 threads, about as long as 128 rows).
///
/// Each task owns a run of 16-column blocks of `C`. A chunk of `B` (512 columns × 256 inputs) is copied, read along
/// `B`'s rows, into a buffer the thread keeps, block after block (256 × 16 values, 16 KiB, contiguous): read in place,
/// rows of `B` a large power-of-two-ish stride apart fall into a few cache sets. Then every 6 rows of `A` take a
/// block in one pass, their 6 × 16 sums in 12 `ymm` registers, one FMA per `A` value and 8 columns: `C[i, j] =
/// Σ_k A[i, k] · B[k, j]` in `k` order with fused multiply-adds (each chunk of inputs added to `C` after the
/// first, and the first too when accumulating). Columns past the last whole block take the same order in scalar
/// `mul_add`. With fewer than 16 rows, copying `B` costs more than it saves.
#[cfg(target_arch = "x86_64")]
mod few_rows {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    /// Rows of `A` for this path. Against the `gemm` crate on 768 × 3072, 2 threads, the same run: as fast at 16
    /// rows, a third faster at 32 to 96 (2.2 against 3.1-3.3 ms at 32 rows), as fast at 128; slower below 16 (the
    /// copy of `B` costs a pass over it: 1.0-1.2 ms against 0.52 at 6 rows).
    pub const ROWS: std::ops::RangeInclusive<usize> = 16..=127;
    /// Fewest columns of `B` for this path (a `B` of at least 64 K values too): small products (the digits CNN's
    /// convolutions, 8 to 16 columns) run faster in the `gemm` crate, which has kernels for narrow tiles.
    pub const MIN_COLUMNS: usize = 64;
    /// Rows of a micro-tile (12 accumulators, 2 vectors of `B` and a broadcast: 15 of the 16 `ymm`).
    const TILE_ROWS: usize = 6;
    /// Columns of a micro-tile: 2 vectors of 8.
    const TILE_COLUMNS: usize = 16;
    /// Columns of `B` copied at a time (a multiple of [`TILE_COLUMNS`]).
    const CHUNK_COLUMNS: usize = 512;
    /// Inputs of `B` copied at a time: a chunk is 512 KiB (L2), a block of it 16 KiB (L1).
    const CHUNK_DEPTH: usize = 256;

    thread_local! {
        /// A chunk of `B`, block by block, kept by each thread from one product to the next.
        static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Whether the CPU has AVX2 and FMA.
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    /// `C[m, n] (+)= A · B` as [`super::gemm_strided`], `B` at unit column stride, on `threads` tasks by columns.
    ///
    /// # Safety
    /// AVX2 and FMA; the operands as [`super::gemm_strided`] asserts and requires.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product(
        c: *mut f32,
        rsc: usize,
        accumulate: bool,
        m: usize,
        k: usize,
        n: usize,
        a: super::Operand,
        b: &[f32],
        rsb: usize,
        threads: usize,
    ) {
        let blocks = n.div_ceil(TILE_COLUMNS);
        let per_task = blocks.div_ceil(threads.max(1)) * TILE_COLUMNS;
        let c_at = c as usize;
        let task = |t: usize| {
            let first = t * per_task;
            let columns = per_task.min(n - first);
            // SAFETY: tasks own disjoint columns of C; the caller's guarantees cover the rest.
            unsafe { columns_into(c_at as *mut f32, rsc, accumulate, m, k, first, columns, a, b, rsb) };
        };
        let tasks = n.div_ceil(per_task);
        if tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            task(0);
        }
    }

    /// Columns `first..first + columns` of `C` for every row: whole blocks of 16 columns through the micro-tiles,
    /// in chunks of [`CHUNK_COLUMNS`] columns × [`CHUNK_DEPTH`] inputs of `B` copied block by block into a buffer the
    /// thread keeps (read along `B`'s rows), the rest in scalar code.
    ///
    /// # Safety
    /// As [`product`], for those columns.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn columns_into(
        c: *mut f32,
        rsc: usize,
        accumulate: bool,
        m: usize,
        k: usize,
        first: usize,
        columns: usize,
        a: super::Operand,
        b: &[f32],
        rsb: usize,
    ) {
        let whole = columns / TILE_COLUMNS * TILE_COLUMNS;
        BLOCK.with_borrow_mut(|buffer| {
            if buffer.len() < CHUNK_DEPTH * CHUNK_COLUMNS {
                buffer.resize(CHUNK_DEPTH * CHUNK_COLUMNS, 0.0);
            }
            for j0 in (first..first + whole).step_by(CHUNK_COLUMNS) {
                let width = CHUNK_COLUMNS.min(first + whole - j0);
                for k0 in (0..k).step_by(CHUNK_DEPTH) {
                    let depth = CHUNK_DEPTH.min(k - k0);
                    // Block q of the chunk at buffer[q · depth · 16..]: its `depth` rows of 16 values.
                    for kk in 0..depth {
                        let row = &b[(k0 + kk) * rsb + j0..(k0 + kk) * rsb + j0 + width];
                        for (q, piece) in row.chunks_exact(TILE_COLUMNS).enumerate() {
                            let at = (q * depth + kk) * TILE_COLUMNS;
                            buffer[at..at + TILE_COLUMNS].copy_from_slice(piece);
                        }
                    }
                    let add = accumulate || k0 > 0;
                    for q in 0..width / TILE_COLUMNS {
                        let block = &buffer[q * depth * TILE_COLUMNS..(q + 1) * depth * TILE_COLUMNS];
                        let mut row = 0;
                        while row < m {
                            let rows = TILE_ROWS.min(m - row);
                            let at = Place { row, k0, c_column: j0 + q * TILE_COLUMNS };
                            // SAFETY: rows row..row + rows, inputs k0..k0 + depth and the block's columns are inside
                            // the operands.
                            unsafe {
                                match rows {
                                    6 => tile::<6>(c, rsc, add, at, depth, a, block),
                                    5 => tile::<5>(c, rsc, add, at, depth, a, block),
                                    4 => tile::<4>(c, rsc, add, at, depth, a, block),
                                    3 => tile::<3>(c, rsc, add, at, depth, a, block),
                                    2 => tile::<2>(c, rsc, add, at, depth, a, block),
                                    _ => tile::<1>(c, rsc, add, at, depth, a, block),
                                }
                            }
                            row += rows;
                        }
                    }
                }
            }
        });
        let (a, rsa, csa) = a;
        for i in 0..m {
            for j in first + whole..first + columns {
                let mut sum = 0f32;
                for kk in 0..k {
                    sum = a[i * rsa + kk * csa].mul_add(b[kk * rsb + j], sum);
                }
                // SAFETY: (i, j) is inside C.
                unsafe {
                    let at = c.add(i * rsc + j);
                    *at = if accumulate { *at + sum } else { sum };
                }
            }
        }
    }

    /// Where a micro-tile is: its first row of `A` and `C`, its first input, its first column of `C`.
    #[derive(Clone, Copy)]
    struct Place {
        row: usize,
        k0: usize,
        c_column: usize,
    }

    /// Rows `at.row..at.row + R` and 16 columns of `C`, plus (or, unless `add`) `A[rows, k0..k0 + depth]` times
    /// `block` (`depth` rows of 16 values).
    ///
    /// # Safety
    /// AVX2 and FMA; the rows and columns are inside `C`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const R: usize>(
        c: *mut f32,
        rsc: usize,
        add: bool,
        at: Place,
        depth: usize,
        a: super::Operand,
        block: &[f32],
    ) {
        let (a, rsa, csa) = a;
        assert!((at.row + R - 1) * rsa + (at.k0 + depth - 1) * csa < a.len() && block.len() >= depth * TILE_COLUMNS);
        let (a, b) = (a.as_ptr(), block.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..depth {
            // SAFETY: checked above.
            unsafe {
                let b_row = b.add(kk * TILE_COLUMNS);
                let bv = [_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.add(8))];
                for r in 0..R {
                    let x = _mm256_set1_ps(*a.add((at.row + r) * rsa + (at.k0 + kk) * csa));
                    for q in 0..2 {
                        acc[r][q] = _mm256_fmadd_ps(x, bv[q], acc[r][q]);
                    }
                }
            }
        }
        for (r, sums) in acc.into_iter().enumerate() {
            for (q, sum) in sums.into_iter().enumerate() {
                // SAFETY: the row and its columns are inside C (the caller's guarantee).
                unsafe {
                    let out = c.add((at.row + r) * rsc + at.c_column + 8 * q);
                    let y = if add { _mm256_add_ps(_mm256_loadu_ps(out), sum) } else { sum };
                    _mm256_storeu_ps(out, y);
                }
            }
        }
    }
}

/// [`gemm`] on the calling thread only (for callers that already run in parallel).
fn gemm_serial(c: &mut [f32], m: usize, k: usize, n: usize, a: Operand, b: Operand) {
    gemm_with_threads(c, m, k, n, a, b, 1);
}

/// `C = alpha · A · B` (C overwritten) on `threads` rayon threads (1: the calling thread), arguments in the BLAS-like
/// order: sizes, alpha, then A, B, C each as pointer, row stride, column stride.
///
/// # Safety
/// The strides must keep every access inside the three buffers, and C must not overlap A or B.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    threads: usize,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: forwarded from the caller. gemm computes dst = alpha·dst + beta·lhs·rhs; dst is not read.
    unsafe {
        gemm::gemm(m, n, k, c, csc, rsc, false, a, csa, rsa, b, csb, rsb, 0.0, alpha, false, false, false, parallelism)
    }
}

/// `y = bias + Σ_k x[k] · w_t[k, :]`: the rows of `w_t` are split into one contiguous block per thread (each
/// streamed once, four rows at a time), and the per-block partial sums are added in block order.
fn gemv(x: &[f32], w_t: &[f32], y: &mut [f32], bias: Option<&[f32]>) {
    let (k, n) = (x.len(), y.len());
    let blocks = if k * n < PARALLEL_MIN_MACS { 1 } else { rayon::current_num_threads().clamp(1, k.div_ceil(4)) };
    let rows_per_block = (k.div_ceil(blocks).div_ceil(4) * 4).max(4);
    match bias {
        Some(b) => y.copy_from_slice(b),
        None => y.fill(0.0),
    }
    if blocks == 1 {
        accumulate_rows(x, w_t, y);
        return;
    }
    let partials: Vec<Vec<f32>> = (0..k.div_ceil(rows_per_block))
        .into_par_iter()
        .map(|b| {
            let rows = b * rows_per_block..((b + 1) * rows_per_block).min(k);
            let mut acc = vec![0.0f32; n];
            accumulate_rows(&x[rows.clone()], &w_t[rows.start * n..rows.end * n], &mut acc);
            acc
        })
        .collect();
    for partial in &partials {
        add_in_place(y, partial);
    }
}

/// `acc += Σ_i x[i] · w[i, :]` for the rows of `w` (`x.len()` rows of `acc.len()` values), four rows at a time.
fn accumulate_rows(x: &[f32], w: &[f32], acc: &mut [f32]) {
    let n = acc.len();
    let quads = x.len() / 4;
    for q in 0..quads {
        let xq = &x[4 * q..4 * q + 4];
        let block = &w[4 * q * n..(4 * q + 4) * n];
        let (r0, rest) = block.split_at(n);
        let (r1, rest) = rest.split_at(n);
        let (r2, r3) = rest.split_at(n);
        for j in 0..n {
            acc[j] += (xq[0] * r0[j] + xq[1] * r1[j]) + (xq[2] * r2[j] + xq[3] * r3[j]);
        }
    }
    for i in 4 * quads..x.len() {
        for (a, v) in acc.iter_mut().zip(&w[i * n..(i + 1) * n]) {
            *a += x[i] * v;
        }
    }
}

/// Layer normalisation over rows of `dim`: `(x - mean) / sqrt(var + eps) * gamma + beta`, population variance;
/// mean, variance and `(x - mean) / sqrt(var + eps)` in f64 (the sums in 8 interleaved lanes, added pairwise at
/// the end), then `· gamma + beta` in f32.
pub fn layer_norm(x: &mut [f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    let use_avx2 = avx2();
    x.par_chunks_mut(dim.max(1)).for_each(|row| {
        #[cfg(target_arch = "x86_64")]
        if use_avx2 {
            // SAFETY: AVX2 was detected at run time.
            unsafe { wide::layer_norm_row(row, gamma, beta, eps) };
            return;
        }
        layer_norm_row(row, gamma, beta, eps);
    });
}

/// [`layer_norm`] of one row.
#[inline(always)]
fn layer_norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let dim = row.len() as f64;
    let mean = sum_f64_lanes(row, |v| v as f64) / dim;
    let var = sum_f64_lanes(row, |v| (v as f64 - mean) * (v as f64 - mean)) / dim;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = ((*v as f64 - mean) * inv) as f32 * g + b;
    }
}

/// `Σ f(x)` in f64: element `i` into lane `i % 8`, the lanes added pairwise, then the tail in order (a fixed order,
/// which vectorises: every build gives the same sum).
#[inline(always)]
fn sum_f64_lanes(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let mut blocks = x.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += f(v);
        }
    }
    let [a, b, c, d, e, g, h, i] = lanes;
    let paired = ((a + e) + (c + h)) + ((b + g) + (d + i));
    blocks.remainder().iter().fold(paired, |sum, &v| sum + f(v))
}

/// RMS normalisation over rows of `dim` (Llama): `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &mut [f32], dim: usize, weight: &[f32], eps: f32) {
    x.par_chunks_mut(dim.max(1)).for_each(|row| {
        let mean_sq = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / dim as f64;
        let inv = (1.0 / (mean_sq + eps as f64).sqrt()) as f32;
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    });
}

/// ReLU in place.
pub fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// GELU in place: `x/2 · (1 + erf(x/√2))` (PyTorch's default, BERT's `"gelu"`), with [`erf`].
pub fn gelu(x: &mut [f32]) {
    let use_avx2 = avx2();
    x.par_chunks_mut(4096).for_each(|chunk| {
        #[cfg(target_arch = "x86_64")]
        if use_avx2 {
            // SAFETY: AVX2 was detected at run time.
            unsafe { wide::gelu(chunk) };
            return;
        }
        gelu_lanes(chunk);
    });
}

/// [`gelu`] of a chunk, in a loop that vectorises.
#[inline(always)]
fn gelu_lanes(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Whether the element-wise loops run their AVX2 builds ([`wide`]).
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 builds of the element-wise loops: the same Rust code compiled for 8-lane vectors instead of SSE2's 4. No FMA
/// is enabled, and Rust never fuses a multiply and an add on its own nor reorders floating-point operations, so
/// every value is bit for bit that of the portable build (a test holds them equal).
#[cfg(target_arch = "x86_64")]
mod wide {
    /// [`super::softmax_row`].
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn softmax_row(row: &mut [f32]) {
        super::softmax_row_lanes(row);
    }

    /// [`super::gelu_lanes`].
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gelu(x: &mut [f32]) {
        super::gelu_lanes(x);
    }

    /// [`super::layer_norm_row`].
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn layer_norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        super::layer_norm_row(row, gamma, beta, eps);
    }
}

/// The error function as a rational function of degree 13/8 on [-4, 4] (±1 beyond, where f32 rounds erf to ±1):
/// branch-free, so loops over it vectorise. Absolute error below 5e-7 (unit-tested against a series in f64).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.9546e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_473_9e-2;
    x * p / q
}

/// SiLU in place: `x · sigmoid(x)`.
pub fn silu(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|chunk| {
        for v in chunk {
            *v /= 1.0 + exp(-*v);
        }
    });
}

/// Softmax in place over rows of `dim`, stable (the row maximum is subtracted first).
pub fn softmax(x: &mut [f32], dim: usize) {
    for row in x.chunks_exact_mut(dim.max(1)) {
        softmax_row(row);
    }
}

/// Softmax of one row; entries at -inf get exactly 0, and a row with no finite entry becomes all zeros.
fn softmax_row(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 was detected at run time.
        unsafe { wide::softmax_row(row) };
        return;
    }
    softmax_row_lanes(row);
}

/// [`softmax_row`] in loops that vectorise.
#[inline(always)]
fn softmax_row_lanes(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    for v in row.iter_mut() {
        // exp(-inf) is not representable by the polynomial: masked entries are set to 0 explicitly.
        *v = if *v == f32::NEG_INFINITY { 0.0 } else { exp(*v - max) };
    }
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` for x ≤ 88 (finite results; below -87 it flushes towards 0), branch-free so loops over it vectorise:
/// Cody–Waite reduction by ln 2 and a degree-6 polynomial (Cephes' `expf`). Relative error below 2e-7
/// (unit-tested against f64).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x / ln 2 to the nearest integer with the 1.5·2^23 trick (no call to `round`): `shifted` is an integer in
    // [2^23, 2^24), where floats step by 1, so its low mantissa bits are `n` plus 2^22.
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the bits of `shifted` (`n as i32` exactly, for the |n| <= 127 of the clamped range) in integer
    // operations that vectorise, where a saturating float-to-int cast does not.
    let n_int = shifted.to_bits().wrapping_sub(0x4B40_0000) as i32;
    y * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// `a += b`, elementwise (residual connections).
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// The shape of one attention call over one sequence.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Query positions (rows of `q`).
    pub queries: usize,
    /// Key/value positions (rows of `k` and `v`), the cached ones first.
    pub keys: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; query head `h` reads key/value head `h / (heads / kv_heads)` (grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Causal: query `i` (at absolute position `keys - queries + i`) sees keys up to its own position.
    pub causal: bool,
}

/// Scaled dot-product attention over one sequence.
///
/// `q` is `[queries, heads·head_dim]`, `k` and `v` are `[keys, kv_heads·head_dim]`; `key_valid[j] == false` masks key
/// `j` out (padding). Returns `[queries, heads·head_dim]`. Masked keys get probability exactly 0; a query that sees
/// no key at all (possible only on padded positions) gets zeros.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], key_valid: Option<&[bool]>, s: AttentionShape) -> Vec<f32> {
    let AttentionShape { queries, keys, heads, kv_heads, head_dim, causal } = s;
    let q_stride = heads * head_dim;
    let kv_stride = kv_heads * head_dim;
    let group = heads / kv_heads.max(1);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let offset = keys.saturating_sub(queries);
    // Masking matters only when some key is invalid.
    let key_valid = key_valid.filter(|valid| valid.iter().take(keys).any(|ok| !ok));
    let use_avx2 = avx2();
    let mut merged = vec![0.0f32; queries * q_stride];
    // Each head writes its own columns `h · head_dim..` of every row of `merged`, in place.
    let merged_at = merged.as_mut_ptr() as usize;
    (0..heads).into_par_iter().for_each(|h| {
        let kvh = h / group.max(1);
        SCORES.with_borrow_mut(|scores| {
            scores.resize(queries * keys, 0.0);
            // SAFETY: q_h is queries x head_dim with row stride q_stride; k_hᵀ is head_dim x keys read with strides
            // (1, kv_stride); both stay inside q and k; `scores` is queries x keys, every value written.
            unsafe {
                sgemm(
                    queries,
                    head_dim,
                    keys,
                    scale,
                    q.as_ptr().add(h * head_dim),
                    q_stride as isize,
                    1,
                    k.as_ptr().add(kvh * head_dim),
                    1,
                    kv_stride as isize,
                    1,
                    scores.as_mut_ptr(),
                    keys as isize,
                    1,
                );
            }
            for (i, row) in scores.chunks_exact_mut(keys.max(1)).enumerate() {
                let visible = if causal { (offset + i + 1).min(keys) } else { keys };
                if let Some(valid) = key_valid {
                    for (s, ok) in row[..visible].iter_mut().zip(valid) {
                        if !ok {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                }
                // Future keys get probability exactly 0.
                row[visible..].fill(0.0);
                #[cfg(target_arch = "x86_64")]
                if use_avx2 {
                    // SAFETY: AVX2 was detected at run time.
                    unsafe { wide::softmax_row(&mut row[..visible]) };
                    continue;
                }
                softmax_row_lanes(&mut row[..visible]);
            }
            // SAFETY: scores is queries x keys; v_h is keys x head_dim with row stride kv_stride; the output is
            // columns h · head_dim.. (head_dim of them) of the queries rows of `merged` (row stride q_stride), which
            // no other head writes, and which outlives the loop.
            unsafe {
                sgemm(
                    queries,
                    keys,
                    head_dim,
                    1.0,
                    scores.as_ptr(),
                    keys as isize,
                    1,
                    v.as_ptr().add(kvh * head_dim),
                    kv_stride as isize,
                    1,
                    1,
                    (merged_at as *mut f32).add(h * head_dim),
                    q_stride as isize,
                    1,
                );
            }
        });
    });
    merged
}

thread_local! {
    /// One head's attention scores, kept by each thread from one call to the next.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rotary position embedding in place (Hugging Face's "rotate half" layout): for each head of `x`
/// (`[rows, heads·head_dim]`, row `i` at position `first_position + i`) and `j < head_dim/2`, with
/// `θ_j = position · base^(-2j/head_dim)`: `(x_j, x_{j+d/2}) <- (x_j cos θ_j - x_{j+d/2} sin θ_j,
/// x_{j+d/2} cos θ_j + x_j sin θ_j)`.
pub fn rotary(x: &mut [f32], heads: usize, head_dim: usize, first_position: usize, base: f32) {
    let half = head_dim / 2;
    // Frequencies and angles in f32, as transformers computes them (inv_freq = 1 / base^(2j/d)).
    let inv_freq: Vec<f32> = (0..half).map(|j| 1.0 / base.powf((2 * j) as f32 / head_dim as f32)).collect();
    for (i, row) in x.chunks_exact_mut((heads * head_dim).max(1)).enumerate() {
        let position = (first_position + i) as f32;
        let (cos, sin): (Vec<f32>, Vec<f32>) =
            inv_freq.iter().map(|f| (position * f).sin_cos()).map(|(s, c)| (c, s)).unzip();
        for head in row.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (lo[j], hi[j]);
                lo[j] = a * cos[j] - b * sin[j];
                hi[j] = b * cos[j] + a * sin[j];
            }
        }
    }
}

/// The geometry of a 2-D convolution over one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding on both sides (rows, columns).
    pub padding: [usize; 2],
    /// Groups: input and output channels split into this many independent blocks (depthwise: = in_channels).
    pub groups: usize,
}

impl ConvShape {
    /// Output height and width, or `None` when the kernel does not fit or a stride is 0.
    pub fn out_hw(&self) -> Option<[usize; 2]> {
        let dim = |i: usize| {
            let span = self.padding[i].checked_mul(2)?.checked_add(self.in_hw[i])?;
            (self.stride[i] > 0 && span >= self.kernel[i]).then(|| (span - self.kernel[i]) / self.stride[i] + 1)
        };
        Some([dim(0)?, dim(1)?])
    }
}

/// A grouped 2-D cross-correlation (PyTorch `Conv2d`, dilation 1) of a batch `[n, C, H, W]` with `weight`
/// `[O, C/groups, KH, KW]`: per sample and group, im2col (`[patch, positions]`, copied row span by row span) and one
/// SGEMM `W_g · columns`. Samples run in parallel; a single sample parallelises inside the SGEMM instead.
pub fn conv2d(x: &[f32], batch: usize, s: &ConvShape, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [oh, ow] = s.out_hw().unwrap_or([0, 0]);
    let c_per_group = s.in_channels / s.groups;
    let o_per_group = s.out_channels / s.groups;
    let patch = c_per_group * s.kernel[0] * s.kernel[1];
    let positions = oh * ow;
    let in_len = s.in_channels * s.in_hw[0] * s.in_hw[1];
    let out_len = s.out_channels * positions;
    let mut y = vec![0.0f32; batch * out_len];
    if patch == 0 || positions == 0 {
        return y;
    }
    let one_sample = |(y_n, x_n): (&mut [f32], &[f32]), parallel: bool| {
        let mut cols = vec![0.0f32; patch * positions];
        for g in 0..s.groups {
            let x_g = &x_n[g * c_per_group * s.in_hw[0] * s.in_hw[1]..];
            im2col(x_g, c_per_group, s, [oh, ow], &mut cols);
            let w_g = &weight[g * o_per_group * patch..][..o_per_group * patch];
            let y_g = &mut y_n[g * o_per_group * positions..][..o_per_group * positions];
            let (a, b) = ((w_g, patch, 1), (&cols[..], positions, 1));
            if parallel {
                gemm(y_g, o_per_group, patch, positions, a, b);
            } else {
                gemm_serial(y_g, o_per_group, patch, positions, a, b);
            }
        }
        if let Some(b) = bias {
            for (plane, b) in y_n.chunks_exact_mut(positions).zip(b) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
    };
    if batch == 1 {
        one_sample((&mut y, x), true);
    } else {
        y.par_chunks_mut(out_len).zip(x.par_chunks(in_len.max(1))).for_each(|pair| one_sample(pair, false));
    }
    y
}

/// The patches of `channels` planes as columns: row `(c, ky, kx)` of `cols` (`[patch, oh·ow]`) holds, for every
/// output position, the input value under that kernel tap (0 in the padding). Runs of a row that read one input
/// row are copied as slices when the column stride is 1.
fn im2col(x: &[f32], channels: usize, s: &ConvShape, [oh, ow]: [usize; 2], cols: &mut [f32]) {
    let [h, w] = s.in_hw;
    let [kh, kw] = s.kernel;
    let [sh, sw] = s.stride;
    let [ph, pw] = s.padding;
    for c in 0..channels {
        let plane = &x[c * h * w..][..h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut cols[((c * kh + ky) * kw + kx) * oh * ow..][..oh * ow];
                // Output columns whose input column ox·sw + kx − pw lies in 0..w.
                let ox_lo = pw.saturating_sub(kx).div_ceil(sw).min(ow);
                let ox_hi = if w + pw > kx { ((w + pw - kx - 1) / sw + 1).min(ow) } else { 0 }.max(ox_lo);
                for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    if iy < 0 || iy as usize >= h {
                        out.fill(0.0);
                        continue;
                    }
                    let input = &plane[iy as usize * w..][..w];
                    out[..ox_lo].fill(0.0);
                    out[ox_hi..].fill(0.0);
                    let first = ox_lo * sw + kx - pw;
                    if sw == 1 {
                        out[ox_lo..ox_hi].copy_from_slice(&input[first..first + (ox_hi - ox_lo)]);
                    } else {
                        for (i, v) in out[ox_lo..ox_hi].iter_mut().enumerate() {
                            *v = input[first + i * sw];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: Option<&[f32]>) -> Vec<f32> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>()
                    + b.map_or(0.0, |b| b[j] as f64);
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn linear_matches_the_definition_for_every_path() {
        // The GEMV (1-2 rows), the few-rows kernel (16-127 rows: several chunks of inputs and of columns, a scalar
        // tail of columns, one and several tasks) and the packed SGEMM.
        let shapes = [
            (1, 7, 5),
            (2, 33, 40),
            (1, 300, 700),
            (3, 16, 17),
            (6, 5, 16),
            (16, 128, 512),
            (20, 300, 520),
            (21, 257, 1040),
            (127, 64, 1024),
            (64, 96, 200),
            (127, 40, 47),
            (129, 64, 33),
        ];
        for &(m, k, n) in &shapes {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let b = values(n, 3);
            let w_t = transpose(&w, n, k);
            assert_close(&linear(&x, m, k, &w_t, n, Some(&b)), &naive_linear(&x, m, k, &w, n, Some(&b)), 1e-5);
            assert_close(&linear(&x, m, k, &w_t, n, None), &naive_linear(&x, m, k, &w, n, None), 1e-5);
        }
    }

    #[test]
    fn strided_products_accumulate_into_a_block_of_columns() {
        // C is the middle 72 of 88 columns, pre-filled; C += A · B for every path's row count (with 72 columns
        // and 1000 inputs, 16 to 127 rows take the few-rows kernel: whole blocks, a scalar tail, several chunks).
        for m in [2, 9, 16, 70, 130] {
            let (k, n, width) = (1000, 72, 88);
            let (a, b) = (values(m * k, 4), values(k * n, 5));
            let mut c = values(m * width, 6);
            let mut expected = c.clone();
            for i in 0..m {
                for j in 0..n {
                    let sum: f64 = (0..k).map(|t| a[i * k + t] as f64 * b[t * n + j] as f64).sum();
                    expected[i * width + 8 + j] = (expected[i * width + 8 + j] as f64 + sum) as f32;
                }
            }
            // SAFETY: rows 0..m, columns 8..80 of `c` at row stride 88 are inside it and touched by nothing else.
            unsafe { gemm_strided(c.as_mut_ptr().add(8), width, true, m, k, n, (&a, k, 1), (&b, n, 1), 2) };
            // 1000 f32 terms of about 0.3, summed in order: about 2e-5 of rounding on sums of order 1.
            assert_close(&c, &expected, 1e-4);
        }
    }

    #[test]
    fn attention_masks_padding_and_future_keys() {
        let (t, d) = (3, 2);
        let q = values(t * d, 4);
        let k = values(t * d, 5);
        let v = values(t * d, 6);
        let shape = AttentionShape { queries: t, keys: t, heads: 1, kv_heads: 1, head_dim: d, causal: true };
        let out = attention(&q, &k, &v, None, shape);
        // The first query sees only the first key: its output is the first value row.
        assert_close(&out[..d], &v[..d], 1e-6);
        // Masking key 2 for a non-causal call equals dropping it.
        let valid = [true, true, false];
        let full = attention(&q, &k, &v, Some(&valid), AttentionShape { causal: false, ..shape });
        let dropped = attention(
            &q,
            &k[..2 * d],
            &v[..2 * d],
            None,
            AttentionShape { keys: 2, queries: 3, causal: false, ..shape },
        );
        assert_close(&full, &dropped, 1e-6);
    }

    #[test]
    fn attention_of_several_heads_matches_the_definition() {
        // Grouped heads, causal with cached keys, a padded key: every head's columns against softmax(q kᵀ / √d) v
        // in f64.
        let (queries, keys, heads, kv_heads, head_dim) = (5, 7, 4, 2, 8);
        let q = values(queries * heads * head_dim, 11);
        let k = values(keys * kv_heads * head_dim, 12);
        let v = values(keys * kv_heads * head_dim, 13);
        let valid = [true, true, false, true, true, true, true];
        for (causal, mask) in [(true, Some(&valid[..])), (false, Some(&valid[..])), (false, None)] {
            let shape = AttentionShape { queries, keys, heads, kv_heads, head_dim, causal };
            let out = attention(&q, &k, &v, mask, shape);
            let mut expected = vec![0f32; queries * heads * head_dim];
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                for i in 0..queries {
                    let visible = if causal { keys - queries + i + 1 } else { keys };
                    let seen: Vec<usize> = (0..visible).filter(|&j| mask.is_none_or(|m| m[j])).collect();
                    let scores: Vec<f64> = seen
                        .iter()
                        .map(|&j| {
                            let dot: f64 = (0..head_dim)
                                .map(|d| {
                                    q[(i * heads + h) * head_dim + d] as f64
                                        * k[(j * kv_heads + kvh) * head_dim + d] as f64
                                })
                                .sum();
                            dot / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for d in 0..head_dim {
                        let value: f64 = seen
                            .iter()
                            .zip(&scores)
                            .map(|(&j, s)| (s - max).exp() / total * v[(j * kv_heads + kvh) * head_dim + d] as f64)
                            .sum();
                        expected[(i * heads + h) * head_dim + d] = value as f32;
                    }
                }
            }
            assert_close(&out, &expected, 1e-5);
        }
    }

    #[test]
    fn avx2_builds_give_the_portable_bits() {
        if !avx2() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut x: Vec<f32> = values(4099, 21).iter().map(|v| v * 30.0).collect();
            for (i, special) in [0.0, -0.0, 1e-30, -5.0, 90.0, -90.0, 1e6, -1e6].into_iter().enumerate() {
                x[i * 13] = special;
            }
            // Softmax rows of several lengths, with masked keys.
            for len in [1, 7, 8, 9, 128, 385] {
                let mut row = x[..len].to_vec();
                row.iter_mut().step_by(5).for_each(|v| *v = f32::NEG_INFINITY);
                row[len / 2] = 3.0;
                let (mut portable, mut wide) = (row.clone(), row);
                softmax_row_lanes(&mut portable);
                // SAFETY: AVX2 was detected above.
                unsafe { wide::softmax_row(&mut wide) };
                assert_eq!(bits(&wide), bits(&portable), "softmax len {len}");
            }
            let (mut portable, mut wide) = (x.clone(), x.clone());
            gelu_lanes(&mut portable);
            // SAFETY: AVX2 was detected above.
            unsafe { wide::gelu(&mut wide) };
            assert_eq!(bits(&wide), bits(&portable), "gelu");
            let (gamma, beta) = (values(385, 22), values(385, 23));
            for len in [1, 8, 13, 384, 385] {
                let (mut portable, mut wide) = (x[..len].to_vec(), x[..len].to_vec());
                layer_norm_row(&mut portable, &gamma, &beta, 1e-12);
                // SAFETY: AVX2 was detected above.
                unsafe { wide::layer_norm_row(&mut wide, &gamma, &beta, 1e-12) };
                assert_eq!(bits(&wide), bits(&portable), "layer norm len {len}");
            }
        }
    }

    #[test]
    fn exp_takes_the_exponent_from_the_rounding_bits() {
        // The exponent from the bits of the rounded value is `n as i32`: the same function as with the cast.
        let with_cast = |x: f32| {
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let mut p = 1.987_569_1e-4f32;
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = p * r + c;
            }
            (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) << 23) as u32)
        };
        let mut x = -100.0f32;
        while x < 100.0 {
            assert_eq!(exp(x).to_bits(), with_cast(x).to_bits(), "exp({x})");
            x += 0.0007;
        }
    }

    #[test]
    fn grouped_convolution_matches_the_definition() {
        for (stride, padding, batch) in [([2, 1], [1, 0], 2), ([1, 2], [0, 2], 1), ([3, 3], [2, 1], 3)] {
            let s = ConvShape {
                in_channels: 4,
                in_hw: [5, 6],
                out_channels: 6,
                kernel: [3, 2],
                stride,
                padding,
                groups: 2,
            };
            let [oh, ow] = s.out_hw().unwrap();
            let x = values(batch * 4 * 5 * 6, 7);
            let w = values(6 * 2 * 3 * 2, 8);
            let b = values(6, 9);
            let y = conv2d(&x, batch, &s, &w, Some(&b));
            for n in 0..batch {
                for o in 0..6 {
                    let g = o / 3;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = b[o] as f64;
                            for c in 0..2 {
                                for ky in 0..3 {
                                    for kx in 0..2 {
                                        let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                                        let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                                        if (0..5).contains(&iy) && (0..6).contains(&ix) {
                                            let xi = ((n * 4 + g * 2 + c) * 5 + iy as usize) * 6 + ix as usize;
                                            acc += x[xi] as f64 * w[((o * 2 + c) * 3 + ky) * 2 + kx] as f64;
                                        }
                                    }
                                }
                            }
                            let got = y[((n * 6 + o) * oh + oy) * ow + ox];
                            assert!((got as f64 - acc).abs() < 1e-5, "{stride:?} {padding:?}: {got} vs {acc}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_within_2e_7_relative() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            assert!(((exp(x) as f64 - exact) / exact).abs() < 2e-7, "exp({x})");
            x += 0.001;
        }
        assert_eq!(exp(0.0), 1.0);
        let mut row = [0.0, f32::NEG_INFINITY, 0.0];
        softmax_row(&mut row);
        assert_eq!(row, [0.5, 0.0, 0.5]);
    }

    #[test]
    fn erf_is_within_5e_7_of_the_series() {
        let series = |x: f64| {
            let (mut term, mut sum) = (x, x);
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -30_000..=30_000 {
            let x = i as f32 * 1e-4;
            assert!((erf(x) as f64 - series(x as f64)).abs() < 5e-7, "erf({x})");
        }
        assert!((erf(9.0) - 1.0).abs() < 2e-7 && (erf(-9.0) + 1.0).abs() < 2e-7 && erf(0.0) == 0.0);
    }

    #[test]
    fn norms_and_activations() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.0; 4], 0.0);
        assert_close(&x, &[-1.3416408, -0.4472136, 0.4472136, 1.3416408], 1e-6);
        let mut r = vec![3.0, 4.0];
        rms_norm(&mut r, 2, &[1.0, 2.0], 0.0);
        assert_close(&r, &[3.0 / 12.5f32.sqrt(), 8.0 / 12.5f32.sqrt()], 1e-6);
        let mut g = vec![-1.0, 0.0, 1.0];
        gelu(&mut g);
        assert_close(&g, &[-0.15865526, 0.0, 0.8413447], 1e-6);
        let mut s = vec![1000.0, 1000.0];
        softmax(&mut s, 2);
        assert_close(&s, &[0.5, 0.5], 0.0);
    }
}
