//! INT8 matrix products: `C[m, n] = A[m, k] · Bᵀ` with `A` and `B` symmetric INT8 codes in `[-127, 127]` and `C`
//! exact `i32` sums, then requantised to `f32` with the scales (`y = C · s_a · s_w[j] + b[j]`).
//!
//! The AVX2 path (chosen at run time) multiplies four `k` at a time per `i32` lane without VNNI:
//! `|a|` (unsigned) times `b · sign(a)` (signed) with `vpmaddubsw`, whose pairs stay below `2 · 127 · 127 = 32258`
//! and so never saturate, then `vpmaddwd` against ones into `i32`. Every product and sum is exact, so the portable
//! path (plain `i32` dot products) gives identical results; the tests hold them to it on every edge size.
//!
//! Weights are packed once ([`PackedInt8`]): panels of 8 output columns, `k` padded to a multiple of 4 with zero
//! codes, so that one 32-byte load holds 4 `k` of 8 columns.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Output columns per packed panel (one AVX2 vector of `i32`).
pub const PANEL: usize = 8;
/// `k` per `i32` lane.
const K_GROUP: usize = 4;
/// Rows of `A` per micro-tile.
const ROWS: usize = 4;
/// Rows of `A` per cache block (64 rows of 768 codes: 48 KiB, in L2 with the task's weight panels).
const ROW_BLOCK: usize = 64;
/// Multiply-accumulates below which one thread does the whole product.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// INT8 weight codes `[n, k]` (output channels × inputs) packed for [`gemm_i8`].
#[derive(Clone, Debug, PartialEq)]
pub struct PackedInt8 {
    /// Output channels.
    pub n: usize,
    /// Inputs.
    pub k: usize,
    /// `ceil(k / 4)`.
    k_groups: usize,
    /// Panel `p`, group `g`, column `c`, lane `l` at `((p · k_groups + g) · PANEL + c) · 4 + l` = code of column
    /// `p · PANEL + c`, input `g · 4 + l` (0 past `n` or `k`).
    data: Vec<i8>,
}

impl PackedInt8 {
    /// Packs `codes`, row-major `[n, k]`; every code must be in `[-127, 127]` (the symmetric range).
    pub fn pack(codes: &[i8], n: usize, k: usize) -> Result<PackedInt8> {
        if codes.len() != n * k {
            return Err(Error::Unsupported(format!("{} INT8 codes cannot be a [{n}, {k}] matrix", codes.len())));
        }
        if codes.contains(&i8::MIN) {
            return Err(Error::Unsupported("INT8 GEMM weights must be symmetric codes in [-127, 127]".into()));
        }
        let k_groups = k.div_ceil(K_GROUP);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * k_groups * PANEL * K_GROUP];
        for (j, row) in codes.chunks_exact(k.max(1)).enumerate().take(n) {
            let (panel, column) = (j / PANEL, j % PANEL);
            for (i, &q) in row.iter().enumerate() {
                let (group, lane) = (i / K_GROUP, i % K_GROUP);
                data[((panel * k_groups + group) * PANEL + column) * K_GROUP + lane] = q;
            }
        }
        Ok(PackedInt8 { n, k, k_groups, data })
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.k_groups * PANEL * K_GROUP;
        &self.data[p * len..(p + 1) * len]
    }
}

/// Whether the AVX2 kernel runs on this machine.
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which kernel [`gemm_i8_with`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX2 when the CPU has it, else portable.
    Best,
    /// Plain `i32` dot products.
    Portable,
}

/// What the products become.
pub enum Output<'o> {
    /// The exact sums, `[m, n]`.
    Sums(&'o mut [i32]),
    /// `y[i, j] = sum · scales[j] + bias[j]` in f32 (a multiply, then an add; never fused), `[m, n]`.
    Scaled {
        /// `[m, n]`.
        out: &'o mut [f32],
        /// Per output column: the activation scale times the column's weight scale.
        scales: &'o [f32],
        /// Per output column.
        bias: Option<&'o [f32]>,
    },
}

/// `out[m, n] = a[m, k] · bᵀ` in exact `i32`, `a` row-major codes in `[-127, 127]`; AVX2 when available.
pub fn gemm_i8(a: &[i8], m: usize, b: &PackedInt8, out: &mut [i32]) {
    gemm_i8_into(a, m, b, Output::Sums(out), Kernel::Best);
}

/// [`gemm_i8`] with a chosen kernel (tests compare them).
pub fn gemm_i8_with(a: &[i8], m: usize, b: &PackedInt8, out: &mut [i32], kernel: Kernel) {
    gemm_i8_into(a, m, b, Output::Sums(out), kernel);
}

/// The INT8 product of `a` (`[m, k]` codes) and `b` into `output`, requantised on the way out when asked: the
/// sums are never stored when `output` is [`Output::Scaled`].
pub fn gemm_i8_into(a: &[i8], m: usize, b: &PackedInt8, output: Output, kernel: Kernel) {
    let (k, n) = (b.k, b.n);
    assert_eq!(a.len(), m * k, "A is not [m, k]");
    if m == 0 || n == 0 {
        return;
    }
    // Rows of A padded to whole groups of 4 (zero codes add nothing); borrowed when k already is.
    let stride = b.k_groups * K_GROUP;
    let padded: std::borrow::Cow<[i8]> = if stride == k {
        std::borrow::Cow::Borrowed(a)
    } else {
        let mut p = vec![0i8; m * stride];
        for (dst, src) in p.chunks_exact_mut(stride).zip(a.chunks_exact(k.max(1))) {
            dst[..k].copy_from_slice(src);
        }
        std::borrow::Cow::Owned(p)
    };
    let panels = n.div_ceil(PANEL);
    // Scales and bias padded to whole panels, so that the vector epilogue never reads past them.
    let (mut out_i32, mut out_f32, scales, bias) = match output {
        Output::Sums(out) => {
            assert_eq!(out.len(), m * n, "C is not [m, n]");
            (Some(out), None, Vec::new(), Vec::new())
        }
        Output::Scaled { out, scales, bias } => {
            assert_eq!(out.len(), m * n, "C is not [m, n]");
            assert_eq!(scales.len(), n, "one scale per output column");
            let mut padded_scales = scales.to_vec();
            padded_scales.resize(panels * PANEL, 0.0);
            let mut padded_bias = bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
            padded_bias.resize(panels * PANEL, 0.0);
            (None, Some(out), padded_scales, padded_bias)
        }
    };
    let job = Job { a: &padded, stride, b, use_avx2: kernel == Kernel::Best && avx2_available() };
    let threads = if m * n * k < PARALLEL_MIN_MACS { 1 } else { rayon::current_num_threads().max(1) };
    let epilogue = |data| Epilogue { data, scales: &scales, bias: &bias };
    if m == 1 && threads > 1 {
        // One row: tasks own runs of whole panels (contiguous columns of the row).
        let per_task = panels.div_ceil(threads * 2).max(1) * PANEL;
        match (&mut out_i32, &mut out_f32) {
            (Some(out), _) => out.par_chunks_mut(per_task).enumerate().for_each(|(t, chunk)| {
                job.run(0, 1, t * per_task / PANEL, &mut Dst { data: epilogue(Data::Sums(chunk)), col0: t * per_task })
            }),
            (_, Some(out)) => out.par_chunks_mut(per_task).enumerate().for_each(|(t, chunk)| {
                job.run(
                    0,
                    1,
                    t * per_task / PANEL,
                    &mut Dst { data: epilogue(Data::Scaled(chunk)), col0: t * per_task },
                )
            }),
            _ => {}
        }
    } else {
        // Tasks own runs of whole rows and read all of B (one panel at a time, from cache).
        let rows_per_task = m.div_ceil(threads).div_ceil(ROWS) * ROWS;
        match (&mut out_i32, &mut out_f32) {
            (Some(out), _) => out.par_chunks_mut(rows_per_task * n).enumerate().for_each(|(t, chunk)| {
                let rows = chunk.len() / n;
                job.run(t * rows_per_task, rows, 0, &mut Dst { data: epilogue(Data::Sums(chunk)), col0: 0 })
            }),
            (_, Some(out)) => out.par_chunks_mut(rows_per_task * n).enumerate().for_each(|(t, chunk)| {
                let rows = chunk.len() / n;
                job.run(t * rows_per_task, rows, 0, &mut Dst { data: epilogue(Data::Scaled(chunk)), col0: 0 })
            }),
            _ => {}
        }
    }
}

/// One product, shared by its tasks.
struct Job<'j> {
    a: &'j [i8],
    stride: usize,
    b: &'j PackedInt8,
    use_avx2: bool,
}

/// A task's part of the output: whole rows of `dst.width()` columns, the first at global column `col0`.
struct Dst<'d> {
    data: Epilogue<'d>,
    col0: usize,
}

/// The output slice with what the sums become on the way in.
struct Epilogue<'d> {
    data: Data<'d>,
    /// Padded to whole panels; empty for sums.
    scales: &'d [f32],
    bias: &'d [f32],
}

enum Data<'d> {
    Sums(&'d mut [i32]),
    Scaled(&'d mut [f32]),
}

impl Dst<'_> {
    /// Columns per row of this part.
    fn width(&self, rows: usize) -> usize {
        match &self.data.data {
            Data::Sums(d) => d.len() / rows.max(1),
            Data::Scaled(d) => d.len() / rows.max(1),
        }
    }

    /// Stores the 8 sums of global columns `column..column + 8` of local row `row` (those that exist).
    fn store(&mut self, row: usize, rows: usize, column: usize, sums: &[i32; PANEL]) {
        let width = self.width(rows);
        let local = column - self.col0;
        let valid = PANEL.min(width - local);
        let at = row * width + local;
        match &mut self.data.data {
            Data::Sums(d) => d[at..at + valid].copy_from_slice(&sums[..valid]),
            Data::Scaled(d) => {
                for (c, (y, &sum)) in d[at..at + valid].iter_mut().zip(sums).enumerate() {
                    *y = sum as f32 * self.data.scales[column + c] + self.data.bias[column + c];
                }
            }
        }
    }
}

impl Job<'_> {
    /// Rows `first_row..first_row + rows` of the product, panels from `first_panel` on as far as `dst` reaches.
    fn run(&self, first_row: usize, rows: usize, first_panel: usize, dst: &mut Dst) {
        let width = dst.width(rows);
        let last_panel = (dst.col0 + width).div_ceil(PANEL);
        for r0 in (0..rows).step_by(ROW_BLOCK) {
            let block_rows = ROW_BLOCK.min(rows - r0);
            let a_rows = &self.a[(first_row + r0) * self.stride..(first_row + r0 + block_rows) * self.stride];
            for p in (first_panel..last_panel).step_by(2) {
                let pair: Vec<&[i8]> = (p..(p + 2).min(last_panel)).map(|q| self.b.panel(q)).collect();
                if self.use_avx2 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 was detected at run time; the slices have the lengths the kernel reads.
                    unsafe {
                        avx2::panels(a_rows, block_rows, self.stride, &pair, &mut |row, panel, sums| {
                            dst.store(r0 + row, rows, (p + panel) * PANEL, sums)
                        });
                    }
                } else {
                    for (i, panel) in pair.iter().enumerate() {
                        portable_panel(a_rows, block_rows, self.stride, panel, &mut |row, sums| {
                            dst.store(r0 + row, rows, (p + i) * PANEL, sums)
                        });
                    }
                }
            }
        }
    }
}

/// One panel of 8 columns for every row, handed to `store(row, sums)`.
fn portable_panel(a: &[i8], m: usize, stride: usize, panel: &[i8], store: &mut dyn FnMut(usize, &[i32; PANEL])) {
    let groups = stride / K_GROUP;
    for row in 0..m {
        let a_row = &a[row * stride..(row + 1) * stride];
        let mut sums = [0i32; PANEL];
        for (c, sum) in sums.iter_mut().enumerate() {
            for g in 0..groups {
                for l in 0..K_GROUP {
                    *sum += a_row[g * K_GROUP + l] as i32 * panel[(g * PANEL + c) * K_GROUP + l] as i32;
                }
            }
        }
        store(row, &sums);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{K_GROUP, PANEL, ROWS};

    /// Panels `panels` (one or two) for every row of `a`, four rows at a time; every 8 sums go to
    /// `store(row, panel, sums)`.
    ///
    /// # Safety
    /// The CPU must have AVX2; `a` holds `m` rows of `stride` codes, every panel `stride / 4` groups of 32 codes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn panels(
        a: &[i8],
        m: usize,
        stride: usize,
        panels: &[&[i8]],
        store: &mut dyn FnMut(usize, usize, &[i32; PANEL]),
    ) {
        let groups = stride / K_GROUP;
        debug_assert!(a.len() >= m * stride && panels.iter().all(|p| p.len() >= groups * PANEL * K_GROUP));
        let mut sums = [0i32; PANEL];
        let mut emit = |row: usize, panel: usize, v: __m256i, sums: &mut [i32; PANEL]| {
            // SAFETY: sums holds 8 i32.
            unsafe { _mm256_storeu_si256(sums.as_mut_ptr().cast(), v) };
            store(row, panel, sums);
        };
        let mut row = 0;
        while row < m {
            let rows = if row + ROWS <= m { ROWS } else { 1 };
            // SAFETY: rows row..row+rows exist, and the caller guarantees the rest.
            unsafe {
                let a_rows = a.as_ptr().add(row * stride);
                match (rows, panels) {
                    (ROWS, [p0, p1]) => {
                        let tile = tile::<ROWS, 2>(a_rows, stride, [p0.as_ptr(), p1.as_ptr()], groups);
                        for (r, per_panel) in tile.iter().enumerate() {
                            for (p, v) in per_panel.iter().enumerate() {
                                emit(row + r, p, *v, &mut sums);
                            }
                        }
                    }
                    (ROWS, [p0]) => {
                        let tile = tile::<ROWS, 1>(a_rows, stride, [p0.as_ptr()], groups);
                        for (r, per_panel) in tile.iter().enumerate() {
                            emit(row + r, 0, per_panel[0], &mut sums);
                        }
                    }
                    (_, [p0, p1]) => {
                        let tile = tile::<1, 2>(a_rows, stride, [p0.as_ptr(), p1.as_ptr()], groups);
                        for (p, v) in tile[0].iter().enumerate() {
                            emit(row, p, *v, &mut sums);
                        }
                    }
                    (_, [p0]) => emit(row, 0, tile::<1, 1>(a_rows, stride, [p0.as_ptr()], groups)[0][0], &mut sums),
                    _ => {}
                }
            }
            row += rows;
        }
    }

    /// `R` rows of A (at `a`, `stride` apart) times `P` panels: 8 column sums per row and panel.
    ///
    /// # Safety
    /// AVX2; `a` readable for `R` rows of `groups · 4` bytes, each `b` for `groups · 32` bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile<const R: usize, const P: usize>(
        a: *const i8,
        stride: usize,
        b: [*const i8; P],
        groups: usize,
    ) -> [[__m256i; P]; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); P]; R];
        for g in 0..groups {
            // SAFETY: within the panels.
            let weights: [__m256i; P] = b.map(|b| unsafe { _mm256_loadu_si256(b.add(g * PANEL * K_GROUP).cast()) });
            for (r, acc) in acc.iter_mut().enumerate() {
                // Four codes of row r, in every lane.
                // SAFETY: within row r.
                let word = unsafe { (a.add(r * stride + g * K_GROUP) as *const i32).read_unaligned() };
                let x = _mm256_set1_epi32(word);
                let magnitude = _mm256_abs_epi8(x);
                for (acc, w) in acc.iter_mut().zip(&weights) {
                    // |a| · (b · sign(a)) = a · b; pairs stay within ±32258: no saturation.
                    let products = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(*w, x));
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(products, ones));
                }
            }
        }
        acc
    }
}

/// Elements per parallel chunk of the element-wise steps.
const CHUNK: usize = 1 << 15;

/// The largest `|x|` over the finite values of `x` (0 when there is none), in parallel chunks of 8 lanes that
/// the compiler vectorises: the range of a dynamic per-tensor activation quantization.
pub fn absmax(x: &[f32]) -> f32 {
    x.par_chunks(CHUNK)
        .map(|chunk| {
            let mut lanes = [0f32; 8];
            let mut blocks = chunk.chunks_exact(8);
            for block in &mut blocks {
                for (lane, &v) in lanes.iter_mut().zip(block) {
                    // NaN and ±inf fail `a < inf` and are skipped; the comparison form vectorises.
                    let a = v.abs();
                    *lane = if a > *lane && a < f32::INFINITY { a } else { *lane };
                }
            }
            let tail = blocks.remainder().iter().map(|v| v.abs()).filter(|a| a.is_finite());
            lanes.into_iter().chain(tail).fold(0f32, f32::max)
        })
        .reduce(|| 0.0, f32::max)
}

/// Symmetric per-tensor INT8 codes of `x` with `scale` (`q = clamp(round_half_even(x / scale), -127, 127)`, NaN to
/// 0): the activation quantization of `docs/QUANTIZATION.md` with a given scale, by the analysis pass's SIMD code
/// kernel (bit-identical to `QParams::quantize`), in parallel chunks.
pub fn quantize_activations(x: &[f32], scale: f32) -> Vec<i8> {
    let params = crate::quant::QParams { scale, zero_point: 0, qmin: -127, qmax: 127 };
    let mut codes = vec![0i8; x.len()];
    codes.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| {
        crate::quant::kernels::quantize_codes(x, &params, out);
    });
    codes
}

/// `y[i, j] = acc[i, j] · (a_scale · w_scales[j]) + bias[j]` in f32 (`w_scales` of length 1: per tensor).
pub fn requantize(acc: &[i32], n: usize, a_scale: f32, w_scales: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let scales: Vec<f32> = (0..n).map(|j| a_scale * w_scales[if w_scales.len() == 1 { 0 } else { j }]).collect();
    let zeros = vec![0.0f32; n];
    let bias = bias.unwrap_or(&zeros);
    let mut y = vec![0.0f32; acc.len()];
    let rows_per_chunk = (CHUNK / n.max(1)).max(1);
    y.par_chunks_mut(rows_per_chunk * n.max(1)).zip(acc.par_chunks(rows_per_chunk * n.max(1))).for_each(|(y, acc)| {
        for (y_row, acc_row) in y.chunks_exact_mut(n).zip(acc.chunks_exact(n)) {
            for (((y, &a), &s), &b) in y_row.iter_mut().zip(acc_row).zip(&scales).zip(bias) {
                *y = a as f32 * s + b;
            }
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(len: usize, seed: u64) -> Vec<i8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state % 255) as i32 - 127) as i8
            })
            .collect()
    }

    fn naive(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] as i32 * b[j * k + l] as i32).sum();
            }
        }
        c
    }

    #[test]
    fn every_kernel_gives_the_exact_sums_on_edge_sizes() {
        for &(m, k, n) in
            &[(1, 1, 1), (1, 3, 7), (3, 4, 8), (4, 5, 9), (5, 64, 16), (17, 100, 33), (9, 768, 24), (64, 67, 70)]
                .into_iter()
                // Large enough to run in parallel: one row split by columns, several rows split by rows.
                .chain([(1, 600, 515), (2, 300, 600), (70, 130, 41)])
                .collect::<Vec<_>>()
        {
            let a = codes(m * k, (m * 1000 + k) as u64);
            let b = codes(n * k, (n * 7 + k) as u64);
            let packed = PackedInt8::pack(&b, n, k).unwrap();
            let expected = naive(&a, &b, m, k, n);
            let scales: Vec<f32> = (0..n).map(|j| 0.001 * (j + 1) as f32).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 - 3.5).collect();
            let requantized = requantize(&expected, n, 1.0, &scales, Some(&bias));
            for kernel in [Kernel::Best, Kernel::Portable] {
                let mut c = vec![0i32; m * n];
                gemm_i8_with(&a, m, &packed, &mut c, kernel);
                assert_eq!(c, expected, "{kernel:?} m={m} k={k} n={n}");
                // The fused epilogue gives the bits of requantising the exact sums.
                let mut y = vec![0f32; m * n];
                let output = Output::Scaled { out: &mut y, scales: &scales, bias: Some(&bias) };
                gemm_i8_into(&a, m, &packed, output, kernel);
                assert_eq!(y, requantized, "{kernel:?} scaled m={m} k={k} n={n}");
            }
        }
    }

    #[test]
    fn extreme_codes_never_saturate() {
        // Every pair at ±127 · ±127: the sums are exact at the largest magnitude.
        let (m, k, n) = (5, 4096, 9);
        let a: Vec<i8> = (0..m * k).map(|i| if i % 3 == 0 { -127 } else { 127 }).collect();
        let b: Vec<i8> = (0..n * k).map(|i| if i % 5 == 0 { -127 } else { 127 }).collect();
        let packed = PackedInt8::pack(&b, n, k).unwrap();
        let mut c = vec![0i32; m * n];
        gemm_i8(&a, m, &packed, &mut c);
        assert_eq!(c, naive(&a, &b, m, k, n));
        let same = vec![127i8; k];
        let packed = PackedInt8::pack(&same, 1, k).unwrap();
        let mut c = vec![0i32; 1];
        gemm_i8(&same, 1, &packed, &mut c);
        assert_eq!(c[0], 127 * 127 * k as i32);
    }

    #[test]
    fn packing_refuses_what_the_kernel_cannot_take() {
        assert!(PackedInt8::pack(&[0; 5], 2, 3).is_err());
        assert!(PackedInt8::pack(&[-128, 0, 0, 0], 2, 2).is_err());
    }

    #[test]
    fn requantised_output_matches_the_dequantised_product_within_rounding() {
        let (m, k, n) = (3, 50, 6);
        let a = codes(m * k, 3);
        let b = codes(n * k, 4);
        let (a_scale, w_scales) = (0.02f32, [0.01f32, 0.02, 0.03, 0.04, 0.05, 0.06]);
        let packed = PackedInt8::pack(&b, n, k).unwrap();
        let mut acc = vec![0i32; m * n];
        gemm_i8(&a, m, &packed, &mut acc);
        let bias = [0.5f32; 6];
        let y = requantize(&acc, n, a_scale, &w_scales, Some(&bias));
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|l| (a[i * k + l] as f32 * a_scale) as f64 * (b[j * k + l] as f32 * w_scales[j]) as f64)
                    .sum::<f64>()
                    + 0.5;
                assert!((y[i * n + j] as f64 - exact).abs() < 1e-4 * exact.abs().max(1.0), "{i},{j}");
            }
        }
        assert_eq!(quantize_activations(&[0.3, -10.0, f32::NAN, 0.01], 0.02), [15, -127, 0, 0]);
        let mut x: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.37).sin()).collect();
        x[77_777] = -3.5;
        x[5] = f32::NAN;
        x[6] = f32::NEG_INFINITY;
        assert_eq!(absmax(&x), 3.5);
        assert_eq!(absmax(&[]), 0.0);
    }
}
