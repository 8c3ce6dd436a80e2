//! Linear layers whose weights are stored compactly — FP16, BF16, weight-only INT8 codes with their scales and
//! zero points, or FP8 E4M3 codes with their scales — and multiplied by f32 activations: `y[m, n] = x[m, k] · Wᵀ + b`
//! for a weight `W` `[n, k]` (issue 7).
//!
//! Weights are packed once ([`PackedWeights`]) in blocks of [`BLOCK_COLS`] output columns, each block stored
//! `[k][64]` contiguous (`n` padded with zero columns), so that converting a block is one streaming pass.
//!
//! - More than two rows: each block is converted to an f32 tile `[k, 64]` in a per-thread buffer that is kept
//!   between calls (no fresh pages per call), then `x` times the tile goes through the runtime's SGEMM straight
//!   into the block's columns of `y`; blocks run in parallel. The whole matrix is never converted: a call converts
//!   `k · n` values once and amortises them over `m` rows.
//! - One or two rows (a decoder's token): a GEMV reads the stored weights directly, 8 columns per vector, and
//!   converts them in registers (F16C's `vcvtph2ps`, a 16-bit shift for BF16, sign extension for INT8; FP8 codes
//!   are decoded to FP16 32 rows at a time in a 4 KB stack buffer and widened from it, see below).
//!
//! Conversion is exact: FP16 and BF16 widen to f32 without rounding, an INT8 tile holds
//! `(q - zero_point) as f32 · scale`, the formula of `QParams::dequantize`, and an FP8 tile holds
//! `fp8::e4m3_to_f32(q) · scale` (one f32 multiply), the formula of `fp8::quantize_dequantize`; so a tile holds bit for
//! bit the values of the simulated path (`weights::simulate`, `fp8::fake_quantize_e4m3`), and the products differ from
//! `ops::linear` on those values only in the order of the f32 sums. The SIMD and portable paths give identical
//! results: their tiles are equal and go to the same SGEMM, and the two GEMVs do the same multiplies and adds
//! (unfused) in the same order. The INT8 and FP8 GEMVs sum the unscaled values (`x · (q - zero_point)`,
//! `x · e4m3_to_f32(q)`) and multiply by the column's scale once at the end: a GEMV gives `scale · Σ x·v`, a tile
//! `Σ x·(v · scale)`, equal but for f32 rounding. The FP8 GEMV forms each `x · v` as `(x · 2^8) · (v · 2^-8)`:
//! `v · 2^-8` is what the F16C decoding below gives (one multiply fewer per 8 weights) and both factors are exact,
//! so each product is the f32 `x · v` bit for bit; rows with a finite `|x| > f32::MAX / 2^8`, whose `x · 2^8` would
//! overflow, go to the tile path instead.
//!
//! FP8 E4M3 codes are decoded with F16C: a code's bits placed in an FP16 (`sign << 15 | (code & 0x7F) << 7`, a sign
//! extension, a shift and a mask) are the FP16 of `value · 2^-8` (the exponent bias 15 against E4M3's 7, 8 more;
//! E4M3 subnormals land on FP16 subnormals, which `vcvtph2ps` widens exactly), and the NaN code is replaced by FP16
//! NaN `0x7E00`; a tile multiplies the f32 by 2^8 (exact) before the scale. For tiles this beat a `vpgatherdd` from
//! the 256-entry table and an integer exponent rebias with a subnormal blend (measured on 768 × 64 tiles), and it never
//! feeds a denormal f32 to a multiply. Packing notes which blocks hold a NaN code; the others skip the NaN replacement
//! (4 instructions per 16 codes), which matters in the GEMV, where every weight is decoded once per call.

use rayon::prelude::*;

use super::ops;
pub use super::qgemm::Kernel;
use crate::error::{Error, Result};
use crate::quant::QParams;
use crate::quant::fp8::e4m3_to_f32;
use crate::quant::params::{to_bf16, to_fp16};

/// Output columns per packed block.
pub const BLOCK_COLS: usize = 64;
/// `BLOCK_COLS`, short.
const NB: usize = BLOCK_COLS;
/// f32 per AVX2 vector.
const LANES: usize = 8;
/// Rows up to which a product is a GEMV over the stored weights.
const GEMV_MAX_ROWS: usize = 2;
/// Multiply-adds below which one thread does the whole product.
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// 2^-8: the FP8 GEMV multiplies `x · 2^8` by `v · 2^-8`, the values F16C widens the codes to (see the module doc).
const FP8_GEMV_UNIT: f32 = 1.0 / 256.0;
/// 2^8, what the FP8 GEMV multiplies `x` by.
const FP8_GEMV_X_SCALE: f32 = 256.0;
/// The largest finite `|x|` whose multiple by 2^8 is finite: rows with a larger one go to the tile path.
const FP8_GEMV_X_MAX: f32 = f32::MAX / FP8_GEMV_X_SCALE;
/// Rows of `k` an FP8 GEMV decodes to FP16 at a time (a 4 KB buffer for 64 columns).
const FP8_CHUNK_ROWS: usize = 32;

thread_local! {
    /// The f32 tile of the block a thread is multiplying: grown once to the largest `k · 64` seen, then reused.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How a [`PackedWeights`] stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// IEEE half precision, 2 bytes a weight.
    Fp16,
    /// bfloat16, 2 bytes a weight.
    Bf16,
    /// INT8 codes (1 byte a weight) with a scale and zero point per output row.
    Int8,
    /// FP8 E4M3 codes (1 byte a weight) with a scale per output row.
    Fp8,
    /// Group-wise INT4 codes (half a byte a weight) with a scale and zero point per group of each output row.
    Int4,
}

#[derive(Clone, Debug, PartialEq)]
enum Storage {
    /// FP16 bits, blocks `[k][64]`.
    Fp16(Vec<u16>),
    /// BF16 bits, blocks `[k][64]`.
    Bf16(Vec<u16>),
    /// Codes, blocks `[k][64]`; scale and zero point per (padded) output column.
    Int8 { codes: Vec<i8>, scales: Vec<f32>, zero_points: Vec<i32>, symmetric: bool },
    /// E4M3 codes, blocks `[k][64]`; scale per (padded) output column; per block, whether it holds a NaN code.
    Fp8 { codes: Vec<u8>, scales: Vec<f32>, nan_blocks: Vec<bool> },
    /// INT4 codes as `q + 8` nibbles, blocks `[k][32 bytes]` (column `2c` in the low nibble of byte `c`, `2c + 1` in
    /// the high one); per block, scale and zero point `[k / group][64]`.
    Int4 { codes: Vec<u8>, scales: Vec<f32>, zero_points: Vec<i8>, group: usize },
}

/// A weight `[n, k]` (`n` outputs × `k` inputs) held as FP16, BF16, INT8 codes or FP8 E4M3 codes, packed for its
/// product with f32 activations ([`PackedWeights::matmul`]).
///
/// Layout: block `b` holds output columns `64·b .. 64·b + 64`; its values sit at `(b · k + i) · 64 + c` for input
/// `i` and column `c` (zero past `n`). INT8 keeps one scale and zero point per output column (the per-tensor pair
/// repeated), FP8 one scale per output column (the per-tensor scale repeated); padding columns have scale 0.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    storage: Storage,
}

/// Whether the SIMD kernels run on this machine (AVX2, FMA and F16C).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `len` values make an `[n, k]` matrix.
fn check_shape(len: usize, n: usize, k: usize, what: &str) -> Result<()> {
    match n.checked_mul(k) {
        Some(expected) if expected == len => Ok(()),
        _ => Err(Error::KernelInput { problem: format!("{len} {what} cannot be a [{n}, {k}] weight") }),
    }
}

/// Row-major `[n, k]` `values` into blocks `[k][64]`, each value through `convert`, padding columns `T::default()`.
fn pack<S: Copy + Sync, T: Copy + Default + Send>(
    values: &[S],
    n: usize,
    k: usize,
    convert: impl Fn(S) -> T + Sync,
) -> Vec<T> {
    let mut data = vec![T::default(); n.div_ceil(NB) * k * NB];
    data.par_chunks_mut((k * NB).max(1)).enumerate().for_each(|(b, block)| {
        for c in 0..NB.min(n - b * NB) {
            let row = &values[(b * NB + c) * k..][..k];
            for (i, &v) in row.iter().enumerate() {
                block[i * NB + c] = convert(v);
            }
        }
    });
    data
}

impl PackedWeights {
    /// FP16 weights: `values` row-major `[n, k]`, each stored as `quant::params::to_fp16` does (finite values
    /// beyond ±65504 saturate).
    pub fn fp16(values: &[f32], n: usize, k: usize) -> Result<PackedWeights> {
        check_shape(values.len(), n, k, "values")?;
        Ok(PackedWeights { n, k, storage: Storage::Fp16(pack(values, n, k, |v| to_fp16(v).to_bits())) })
    }

    /// BF16 weights: `values` row-major `[n, k]`, each stored as `quant::params::to_bf16` does.
    pub fn bf16(values: &[f32], n: usize, k: usize) -> Result<PackedWeights> {
        check_shape(values.len(), n, k, "values")?;
        Ok(PackedWeights { n, k, storage: Storage::Bf16(pack(values, n, k, |v| to_bf16(v).to_bits())) })
    }

    /// Weight-only INT8: `codes` row-major `[n, k]` (as `quant::quantize_tensor` gives them) with one `params`
    /// for the tensor or one per output row.
    pub fn int8(codes: &[i8], params: &[QParams], n: usize, k: usize) -> Result<PackedWeights> {
        check_shape(codes.len(), n, k, "INT8 codes")?;
        if params.len() != 1 && params.len() != n {
            return Err(Error::KernelInput {
                problem: format!("{} quantization parameters for {n} output rows (expected 1 or {n})", params.len()),
            });
        }
        let padded = n.div_ceil(NB) * NB;
        let param = |j: usize| (j < n).then(|| crate::quant::row_group(params, j));
        let scales = (0..padded).map(|j| param(j).map_or(0.0, |p| p.scale)).collect();
        let zero_points: Vec<i32> = (0..padded).map(|j| param(j).map_or(0, |p| p.zero_point)).collect();
        let symmetric = zero_points.iter().all(|&z| z == 0);
        let codes = pack(codes, n, k, |q| q);
        Ok(PackedWeights { n, k, storage: Storage::Int8 { codes, scales, zero_points, symmetric } })
    }

    /// FP8 E4M3 weights: `codes` row-major `[n, k]` (as `quant::fp8::quantize_e4m3` gives them) with one scale for
    /// the tensor or one per output row. Weight `(j, i)` is `fp8::e4m3_to_f32(code) · scale_j` in f32, as
    /// `fp8::quantize_dequantize` gives it; NaN codes (0x7F, 0xFF) stay NaN. The scales are taken as they are.
    pub fn fp8(codes: &[u8], scales: &[f32], n: usize, k: usize) -> Result<PackedWeights> {
        check_shape(codes.len(), n, k, "FP8 codes")?;
        if scales.len() != 1 && scales.len() != n {
            return Err(Error::KernelInput {
                problem: format!("{} FP8 scales for {n} output rows (expected 1 or {n})", scales.len()),
            });
        }
        let padded = n.div_ceil(NB) * NB;
        let scale = |j: usize| if j >= n { 0.0 } else { crate::quant::row_group(scales, j) };
        let scales = (0..padded).map(scale).collect();
        let codes = pack(codes, n, k, |q| q);
        let len = k * NB;
        let nan_blocks =
            (0..n.div_ceil(NB)).map(|b| codes[b * len..][..len].iter().any(|&q| q & 0x7F == 0x7F)).collect();
        Ok(PackedWeights { n, k, storage: Storage::Fp8 { codes, scales, nan_blocks } })
    }

    /// Group-wise INT4: `codes` row-major `[n, k]` (`-8..=7`, as `quant::quantize_tensor_int4` gives them) with
    /// the parameters of every group, row by row (`n · k / group`). Weight `(j, i)` is
    /// `(q - zero_point) as f32 · scale` of its group, the formula of `QParams::dequantize`.
    pub fn int4(codes: &[i8], params: &[QParams], group: usize, n: usize, k: usize) -> Result<PackedWeights> {
        check_shape(codes.len(), n, k, "INT4 codes")?;
        if group == 0 || !k.is_multiple_of(group) || params.len() != n * (k / group) {
            return Err(Error::KernelInput {
                problem: format!("{} INT4 groups of {group} for a [{n}, {k}] weight", params.len()),
            });
        }
        let groups = k / group;
        let blocks = n.div_ceil(NB);
        let mut packed = vec![0u8; blocks * k * NB / 2];
        let mut scales = vec![0.0f32; blocks * groups * NB];
        let mut zero_points = vec![0i8; blocks * groups * NB];
        for j in 0..n {
            let (b, c) = (j / NB, j % NB);
            for i in 0..k {
                let nibble = ((codes[j * k + i] as i32 + 8) as u8) & 0x0F;
                packed[(b * k + i) * NB / 2 + c / 2] |= nibble << (4 * (c % 2));
            }
            for g in 0..groups {
                let p = params[j * groups + g];
                scales[(b * groups + g) * NB + c] = p.scale;
                zero_points[(b * groups + g) * NB + c] = p.zero_point as i8;
            }
        }
        Ok(PackedWeights { n, k, storage: Storage::Int4 { codes: packed, scales, zero_points, group } })
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// How the values are stored.
    pub fn format(&self) -> WeightFormat {
        match self.storage {
            Storage::Fp16(_) => WeightFormat::Fp16,
            Storage::Bf16(_) => WeightFormat::Bf16,
            Storage::Int8 { .. } => WeightFormat::Int8,
            Storage::Fp8 { .. } => WeightFormat::Fp8,
            Storage::Int4 { .. } => WeightFormat::Int4,
        }
    }

    /// Bytes held: 2 a weight for FP16 and BF16, 1 for INT8 plus 8 per output column (scale and zero point), 1 for
    /// FP8 plus 4 per output column (scale), half for INT4 plus 5 per group of each output column (scale and zero
    /// point), padding to whole blocks included.
    pub fn size_bytes(&self) -> usize {
        match &self.storage {
            Storage::Fp16(bits) | Storage::Bf16(bits) => 2 * bits.len(),
            Storage::Int8 { codes, scales, zero_points, .. } => codes.len() + 4 * scales.len() + 4 * zero_points.len(),
            Storage::Fp8 { codes, scales, .. } => codes.len() + 4 * scales.len(),
            Storage::Int4 { codes, scales, zero_points, .. } => codes.len() + 4 * scales.len() + zero_points.len(),
        }
    }

    /// The `[n, k]` weight in f32, as the simulated path gives it (for checks; the products never build it).
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut values = vec![0.0f32; n * k];
        let mut tile = vec![0.0f32; k * NB];
        for b in 0..self.blocks() {
            self.convert(b, &mut tile, simd_available());
            for c in 0..NB.min(n - b * NB) {
                for (i, v) in values[(b * NB + c) * k..][..k].iter_mut().enumerate() {
                    *v = tile[i * NB + c];
                }
            }
        }
        values
    }

    /// Row `j` of the `[n, k]` weight (`k` values) in f32 into `out`, exactly as [`PackedWeights::dequantize`] gives
    /// it: an embedding lookup on compact weights.
    ///
    /// # Panics
    /// When `j >= n` or `out` is not `k` long (the caller's shapes).
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.n && out.len() == self.k, "row {j} of [{}, {}]", self.n, self.k);
        let (block, c) = (self.block(j / NB), j % NB);
        for (i, v) in out.iter_mut().enumerate() {
            *v = match block {
                Block::Fp16(bits) => fp16_to_f32(bits[i * NB + c]),
                Block::Bf16(bits) => bf16_to_f32(bits[i * NB + c]),
                Block::Int8 { codes, scales, zero_points, .. } => {
                    (codes[i * NB + c] as i32 - zero_points[c]) as f32 * scales[c]
                }
                Block::Fp8 { codes, scales, .. } => e4m3_to_f32(codes[i * NB + c]) * scales[c],
                Block::Int4 { .. } => block.int4_value(i, c),
            };
        }
    }

    /// `y[m, n] = x[m, k] · Wᵀ (+ bias[n])` into a new vector, with the best kernel (see [`PackedWeights::matmul_into`]).
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0.0f32; m * self.n];
        self.matmul_into(x, m, &mut out, bias, Kernel::Best);
        out
    }

    /// `out[m, n] = x[m, k] · Wᵀ (+ bias[n])`, `x` and `out` row-major; `kernel` chooses SIMD (AVX2, FMA and F16C
    /// when present) or portable code, which give identical results.
    ///
    /// # Panics
    /// When `x` is not `m · k` values, `out` not `m · n`, or `bias` not `n` (the caller's shapes, not data).
    pub fn matmul_into(&self, x: &[f32], m: usize, out: &mut [f32], bias: Option<&[f32]>, kernel: Kernel) {
        let (k, n) = (self.k, self.n);
        assert_eq!(Some(x.len()), m.checked_mul(k), "x is not [m, k]");
        assert_eq!(Some(out.len()), m.checked_mul(n), "out is not [m, n]");
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "one bias per output column");
        }
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(bias.unwrap_or(&vec![0.0; n]));
            }
            return;
        }
        let simd = kernel == Kernel::Best && simd_available();
        if m <= GEMV_MAX_ROWS && self.gemv_takes(x) {
            self.gemv(x, m, out, bias, simd);
        } else {
            self.tiled(x, m, out, bias, simd);
        }
    }

    /// Whether the GEMV can multiply rows `x`: always but for FP8 with a finite `|x| > FP8_GEMV_X_MAX`, whose
    /// multiple by 2^8 would overflow.
    fn gemv_takes(&self, x: &[f32]) -> bool {
        !matches!(self.storage, Storage::Fp8 { .. }) || x.iter().all(|v| v.abs() <= FP8_GEMV_X_MAX || !v.is_finite())
    }

    /// Blocks of 64 output columns.
    fn blocks(&self) -> usize {
        self.n.div_ceil(NB)
    }

    /// Block `b`'s stored values and parameters.
    fn block(&self, b: usize) -> Block<'_> {
        let len = self.k * NB;
        match &self.storage {
            Storage::Fp16(bits) => Block::Fp16(&bits[b * len..][..len]),
            Storage::Bf16(bits) => Block::Bf16(&bits[b * len..][..len]),
            Storage::Int8 { codes, scales, zero_points, symmetric } => Block::Int8 {
                codes: &codes[b * len..][..len],
                scales: &scales[b * NB..][..NB],
                zero_points: &zero_points[b * NB..][..NB],
                symmetric: *symmetric,
            },
            Storage::Fp8 { codes, scales, nan_blocks } => {
                Block::Fp8 { codes: &codes[b * len..][..len], scales: &scales[b * NB..][..NB], has_nan: nan_blocks[b] }
            }
            Storage::Int4 { codes, scales, zero_points, group } => {
                let params = self.k / group * NB;
                Block::Int4 {
                    codes: &codes[b * len / 2..][..len / 2],
                    scales: &scales[b * params..][..params],
                    zero_points: &zero_points[b * params..][..params],
                    group: *group,
                }
            }
        }
    }

    /// Block `b` as f32 into `tile` (`[k, 64]`, at least `k · 64` long).
    fn convert(&self, b: usize, tile: &mut [f32], simd: bool) {
        let tile = &mut tile[..self.k * NB];
        if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd` is only true when `simd_available()` said so; the tile is as long as the block.
            unsafe {
                avx2::tile(self.block(b), tile)
            }
        } else {
            tile_portable(self.block(b), tile);
        }
    }

    /// More than two rows: block by block, a converted tile times `x` into the block's columns of `out`.
    fn tiled(&self, x: &[f32], m: usize, out: &mut [f32], bias: Option<&[f32]>, simd: bool) {
        let (k, n) = (self.k, self.n);
        let blocks = self.blocks();
        let threads = rayon::current_num_threads().max(1);
        let big = m.saturating_mul(k).saturating_mul(n) >= PARALLEL_MIN_MACS;
        let out = OutPtr(out.as_mut_ptr());
        let run = |b: usize, gemm_threads: usize| {
            // Taken out of the thread-local (not borrowed), so that a task nested on this thread while the SGEMM
            // waits for rayon finds an empty buffer instead of a borrow in progress.
            let mut tile = TILE.take();
            if tile.len() < k * NB {
                tile.resize(k * NB, 0.0);
            }
            self.convert(b, &mut tile, simd);
            let (j0, cols) = (b * NB, NB.min(n - b * NB));
            // SAFETY: this task alone touches columns j0..j0 + cols of the m rows of n values of `out`, which lie
            // inside it; `x` and the tile are other buffers.
            unsafe {
                let c = out.at(j0);
                if let Some(bias) = bias {
                    for i in 0..m {
                        std::ptr::copy_nonoverlapping(bias[j0..].as_ptr(), c.add(i * n), cols);
                    }
                }
                ops::gemm_strided(c, n, bias.is_some(), m, k, cols, (x, k, 1), (&tile[..k * NB], NB, 1), gemm_threads);
            }
            TILE.set(tile);
        };
        if big && threads > 1 && blocks >= 2 * threads {
            (0..blocks).into_par_iter().for_each(|b| run(b, 1));
        } else {
            // Few blocks: one at a time, each SGEMM split over the threads.
            for b in 0..blocks {
                run(b, if big { threads } else { 1 });
            }
        }
    }

    /// One or two rows: the stored weights read once, block by block.
    fn gemv(&self, x: &[f32], m: usize, out: &mut [f32], bias: Option<&[f32]>, simd: bool) {
        let (k, n) = (self.k, self.n);
        let parallel = k * n >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
        let x0 = &x[..k];
        if m == 1 {
            let run = |(b, y): (usize, &mut [f32])| self.gemv_block(b, [x0], [y], bias, simd);
            if parallel {
                out.par_chunks_mut(NB).enumerate().for_each(run);
            } else {
                out.chunks_mut(NB).enumerate().for_each(run);
            }
        } else {
            let x1 = &x[k..2 * k];
            let (y0, y1) = out.split_at_mut(n);
            let run =
                |(b, (y0, y1)): (usize, (&mut [f32], &mut [f32]))| self.gemv_block(b, [x0, x1], [y0, y1], bias, simd);
            if parallel {
                y0.par_chunks_mut(NB).zip(y1.par_chunks_mut(NB)).enumerate().for_each(run);
            } else {
                y0.chunks_mut(NB).zip(y1.chunks_mut(NB)).enumerate().for_each(run);
            }
        }
    }

    /// Block `b`'s columns of `R` rows: `y[r]` holds the block's valid columns of row `r`.
    fn gemv_block<const R: usize>(
        &self,
        b: usize,
        x: [&[f32]; R],
        y: [&mut [f32]; R],
        bias: Option<&[f32]>,
        simd: bool,
    ) {
        let block = self.block(b);
        let mut acc = [[0.0f32; NB]; R];
        if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd` is only true when `simd_available()` said so; every `x[r]` holds `k` values and the
            // block `k · 64`.
            unsafe {
                avx2::gemv(block, self.k, x, &mut acc)
            }
        } else {
            gemv_portable(block, self.k, &x, &mut acc);
        }
        let j0 = b * NB;
        for (y, acc) in y.into_iter().zip(&acc) {
            let bias = bias.map(|bias| &bias[j0..j0 + y.len()]);
            finish(acc, block, bias, y);
        }
    }
}

/// The output as a pointer that tasks writing disjoint columns share.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks that share it write disjoint elements (see `PackedWeights::tiled`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` values in.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// One block of stored values: `[k][64]`.
#[derive(Clone, Copy)]
enum Block<'a> {
    Fp16(&'a [u16]),
    Bf16(&'a [u16]),
    /// With the 64 columns' scales and zero points; `symmetric` when every zero point of the weight is 0.
    Int8 {
        codes: &'a [i8],
        scales: &'a [f32],
        zero_points: &'a [i32],
        symmetric: bool,
    },
    /// E4M3 codes with the 64 columns' scales; `has_nan` when a code of the block is NaN (0x7F, 0xFF).
    Fp8 {
        codes: &'a [u8],
        scales: &'a [f32],
        has_nan: bool,
    },
    /// INT4 nibbles `[k][32 bytes]` with the scales and zero points `[k / group][64]` of the 64 columns.
    Int4 {
        codes: &'a [u8],
        scales: &'a [f32],
        zero_points: &'a [i8],
        group: usize,
    },
}

impl Block<'_> {
    /// Weight `(i, c)` of an INT4 block: `(q - zero_point) as f32 · scale` (0 for other blocks).
    #[inline]
    fn int4_value(&self, i: usize, c: usize) -> f32 {
        let Block::Int4 { codes, scales, zero_points, group } = *self else { return 0.0 };
        let q = ((codes[i * NB / 2 + c / 2] >> (4 * (c % 2))) & 0x0F) as i32 - 8;
        let at = (i / group) * NB + c;
        (q - zero_points[at] as i32) as f32 * scales[at]
    }
}

/// FP16 bits to f32, exactly.
#[inline]
fn fp16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// BF16 bits to f32, exactly.
#[inline]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The block as f32 values (INT8: `(q - zero_point) as f32 · scale`, FP8: `e4m3_to_f32(q) · scale`), portable.
fn tile_portable(block: Block, tile: &mut [f32]) {
    match block {
        Block::Fp16(bits) => tile.iter_mut().zip(bits).for_each(|(t, &b)| *t = fp16_to_f32(b)),
        Block::Bf16(bits) => tile.iter_mut().zip(bits).for_each(|(t, &b)| *t = bf16_to_f32(b)),
        Block::Int8 { codes, scales, zero_points, .. } => {
            for (t, q) in tile.chunks_exact_mut(NB).zip(codes.chunks_exact(NB)) {
                for c in 0..NB {
                    t[c] = (q[c] as i32 - zero_points[c]) as f32 * scales[c];
                }
            }
        }
        Block::Fp8 { codes, scales, .. } => {
            for (t, q) in tile.chunks_exact_mut(NB).zip(codes.chunks_exact(NB)) {
                for c in 0..NB {
                    t[c] = e4m3_to_f32(q[c]) * scales[c];
                }
            }
        }
        Block::Int4 { .. } => {
            for (i, t) in tile.chunks_exact_mut(NB).enumerate() {
                int4_row(block, i, t);
            }
        }
    }
}

/// Row `i` of an INT4 block (64 weights) into `out`: `(q - zero_point) as f32 · scale`, one group's parameters.
#[inline]
fn int4_row(block: Block, i: usize, out: &mut [f32]) {
    let Block::Int4 { codes, scales, zero_points, group } = block else { return };
    let at = (i / group) * NB;
    let (scales, zero_points) = (&scales[at..at + NB], &zero_points[at..at + NB]);
    let bytes = &codes[i * NB / 2..(i + 1) * NB / 2];
    for (((pair, byte), scale), zero) in
        out.chunks_exact_mut(2).zip(bytes).zip(scales.chunks_exact(2)).zip(zero_points.chunks_exact(2))
    {
        let (lo, hi) = ((byte & 0x0F) as i32 - 8, (byte >> 4) as i32 - 8);
        pair[0] = (lo - zero[0] as i32) as f32 * scale[0];
        pair[1] = (hi - zero[1] as i32) as f32 * scale[1];
    }
}

/// `acc[r][c] += Σ_i x[r][i] · w[i][c]` over the block, `i` in order, multiply then add (INT8: `w = q - zero_point`,
/// FP8: `w = e4m3_to_f32(q) · 2^-8` times `x · 2^8`, both unscaled; INT4: the scaled weights), portable.
fn gemv_portable<const R: usize>(block: Block, k: usize, x: &[&[f32]; R], acc: &mut [[f32; NB]; R]) {
    let mut w = [0.0f32; NB];
    for i in 0..k {
        match block {
            Block::Fp16(bits) => w.iter_mut().zip(&bits[i * NB..]).for_each(|(w, &b)| *w = fp16_to_f32(b)),
            Block::Bf16(bits) => w.iter_mut().zip(&bits[i * NB..]).for_each(|(w, &b)| *w = bf16_to_f32(b)),
            Block::Int8 { codes, zero_points, .. } => {
                for ((w, &q), &z) in w.iter_mut().zip(&codes[i * NB..]).zip(zero_points) {
                    *w = (q as i32 - z) as f32;
                }
            }
            Block::Fp8 { codes, .. } => {
                w.iter_mut().zip(&codes[i * NB..]).for_each(|(w, &q)| *w = e4m3_to_f32(q) * FP8_GEMV_UNIT)
            }
            // Scales change along `k` (one per group): the weights are scaled here, not in `finish`.
            Block::Int4 { .. } => int4_row(block, i, &mut w),
        }
        for (acc, x) in acc.iter_mut().zip(x) {
            let xi = if matches!(block, Block::Fp8 { .. }) { x[i] * FP8_GEMV_X_SCALE } else { x[i] };
            for (a, &w) in acc.iter_mut().zip(&w) {
                *a += xi * w;
            }
        }
    }
}

/// `y[c] = acc[c] (· scale[c]) (+ bias[c])` for the valid columns of a block.
fn finish(acc: &[f32; NB], block: Block, bias: Option<&[f32]>, y: &mut [f32]) {
    match block {
        Block::Int8 { scales, .. } | Block::Fp8 { scales, .. } => {
            y.iter_mut().zip(acc).zip(scales).for_each(|((y, &a), &s)| *y = a * s)
        }
        _ => y.copy_from_slice(&acc[..y.len()]),
    }
    if let Some(bias) = bias {
        y.iter_mut().zip(bias).for_each(|(y, &b)| *y += b);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Block, FP8_CHUNK_ROWS, LANES, NB};

    /// Stored formats, as const parameters of the GEMV.
    const FP16: u8 = 0;
    const BF16: u8 = 1;
    /// INT8 with every zero point 0 (no subtraction).
    const INT8: u8 = 2;
    const INT8_ZP: u8 = 3;
    /// FP8 without NaN codes (the NaN code would decode as ±480).
    const FP8: u8 = 4;
    /// FP8 with NaN codes in the block.
    const FP8_NAN: u8 = 5;

    /// FP16 bits (in 16-bit lanes) of E4M3 codes held sign-extended to 16 bits, each the FP16 of `value · 2^-8` (see
    /// the module doc); with `NAN`, the NaN codes give FP16 NaN `0x7E00` with their sign (which widens to the table's
    /// `0x7FC0_0000`), without it ±480 · 2^-8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fp8_halves<const NAN: bool>(codes: __m256i) -> __m256i {
        // Shifted by 7, the sign-extended code is `sign << 15 | sign << 14 | magnitude << 7`; the mask clears bit 14.
        let half = _mm256_and_si256(_mm256_slli_epi16::<7>(codes), _mm256_set1_epi16(0xBF80u16 as i16));
        if !NAN {
            return half;
        }
        let nan = _mm256_cmpeq_epi16(_mm256_slli_epi16::<1>(half), _mm256_set1_epi16(0x7F00));
        // 0x3F80 ^ 0x4180 = 0x7E00.
        _mm256_xor_si256(half, _mm256_and_si256(nan, _mm256_set1_epi16(0x4180)))
    }

    /// 8 FP16 of `value · 2^-8` widened and multiplied by 2^8 (exact): the E4M3 values, as `e4m3_to_f32` gives them.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fp8_widen(halves: __m128i) -> __m256 {
        _mm256_mul_ps(_mm256_cvtph_ps(halves), _mm256_set1_ps(256.0))
    }

    /// An FP8 block's tile: 16 codes per step, two vectors of 8 f32, each times its columns' scales.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `codes` and `tile` `k · 64` long, `scales` 64.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fp8_tile<const NAN: bool>(codes: &[u8], scales: &[f32], tile: &mut [f32]) {
        let mut scale = [_mm256_setzero_ps(); NB / LANES];
        for (v, s) in scale.iter_mut().enumerate() {
            // SAFETY: 64 scales.
            *s = unsafe { _mm256_loadu_ps(scales.as_ptr().add(v * LANES)) };
        }
        for (t, q) in tile.chunks_exact_mut(NB).zip(codes.chunks_exact(NB)) {
            for v in 0..NB / (2 * LANES) {
                let at = 2 * v * LANES;
                // SAFETY: 64 values each.
                unsafe {
                    let halves = fp8_halves::<NAN>(_mm256_cvtepi8_epi16(_mm_loadu_si128(q.as_ptr().add(at).cast())));
                    let lo = fp8_widen(_mm256_castsi256_si128(halves));
                    let hi = fp8_widen(_mm256_extracti128_si256::<1>(halves));
                    _mm256_storeu_ps(t.as_mut_ptr().add(at), _mm256_mul_ps(lo, scale[2 * v]));
                    _mm256_storeu_ps(t.as_mut_ptr().add(at + LANES), _mm256_mul_ps(hi, scale[2 * v + 1]));
                }
            }
        }
    }

    /// [`super::tile_portable`] with F16C and AVX2; bit-identical.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `tile` must be as long as the block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile(block: Block, tile: &mut [f32]) {
        match block {
            Block::Fp16(bits) => {
                for (t, b) in tile.chunks_exact_mut(LANES).zip(bits.chunks_exact(LANES)) {
                    // SAFETY: 8 values each.
                    unsafe { _mm256_storeu_ps(t.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().cast()))) }
                }
            }
            Block::Bf16(bits) => {
                for (t, b) in tile.chunks_exact_mut(LANES).zip(bits.chunks_exact(LANES)) {
                    // SAFETY: 8 values each.
                    unsafe {
                        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(b.as_ptr().cast()));
                        _mm256_storeu_ps(t.as_mut_ptr(), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide)));
                    }
                }
            }
            Block::Int8 { codes, scales, zero_points, .. } => {
                let mut scale = [_mm256_setzero_ps(); NB / LANES];
                let mut zero = [_mm256_setzero_si256(); NB / LANES];
                for (v, (s, z)) in scale.iter_mut().zip(&mut zero).enumerate() {
                    // SAFETY: 64 scales and zero points.
                    unsafe {
                        *s = _mm256_loadu_ps(scales.as_ptr().add(v * LANES));
                        *z = _mm256_loadu_si256(zero_points.as_ptr().add(v * LANES).cast());
                    }
                }
                for (t, q) in tile.chunks_exact_mut(NB).zip(codes.chunks_exact(NB)) {
                    for v in 0..NB / LANES {
                        // SAFETY: 64 values each.
                        unsafe {
                            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().add(v * LANES).cast()));
                            let w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, zero[v])), scale[v]);
                            _mm256_storeu_ps(t.as_mut_ptr().add(v * LANES), w);
                        }
                    }
                }
            }
            // SAFETY: forwarded.
            Block::Fp8 { codes, scales, has_nan: false } => unsafe { fp8_tile::<false>(codes, scales, tile) },
            // SAFETY: forwarded.
            Block::Fp8 { codes, scales, has_nan: true } => unsafe { fp8_tile::<true>(codes, scales, tile) },
            Block::Int4 { codes, scales, zero_points, group } => {
                let mut params = None;
                for (i, t) in tile.chunks_exact_mut(NB).enumerate() {
                    if i % group == 0 || params.is_none() {
                        // SAFETY: group i / group of the block.
                        params = Some(unsafe { Int4Group::load(scales, zero_points, i / group) });
                    }
                    if let Some(params) = &params {
                        // SAFETY: row i < k of the block; the tile row holds 64 values.
                        unsafe {
                            for (v, w) in int4_row(codes, i, params).iter().enumerate() {
                                _mm256_storeu_ps(t.as_mut_ptr().add(v * LANES), *w);
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`super::gemv_portable`] with AVX2 and F16C; identical results.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; each `x[r]` must hold `k` values and the block `k · 64`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv<const R: usize>(block: Block, k: usize, x: [&[f32]; R], acc: &mut [[f32; NB]; R]) {
        debug_assert!(x.iter().all(|x| x.len() >= k));
        // SAFETY: forwarded; the zero points are 64 values.
        unsafe {
            match block {
                Block::Fp16(bits) => by_rows::<FP16, R>(bits.as_ptr().cast(), k, x, &[0; NB], acc),
                Block::Bf16(bits) => by_rows::<BF16, R>(bits.as_ptr().cast(), k, x, &[0; NB], acc),
                Block::Int8 { codes, zero_points, symmetric: true, .. } => {
                    by_rows::<INT8, R>(codes.as_ptr().cast(), k, x, zero_points, acc)
                }
                Block::Int8 { codes, zero_points, symmetric: false, .. } => {
                    by_rows::<INT8_ZP, R>(codes.as_ptr().cast(), k, x, zero_points, acc)
                }
                Block::Fp8 { codes, has_nan: false, .. } => by_rows::<FP8, R>(codes.as_ptr(), k, x, &[0; NB], acc),
                Block::Fp8 { codes, has_nan: true, .. } => by_rows::<FP8_NAN, R>(codes.as_ptr(), k, x, &[0; NB], acc),
                Block::Int4 { codes, scales, zero_points, group } => {
                    int4_columns::<R>(codes, scales, zero_points, group, k, x, acc)
                }
            }
        }
    }

    /// The parameters of one INT4 group as vectors of the 64 columns: scales, and `8 + zero_point` (what a
    /// nibble's code is measured from).
    struct Int4Group {
        scale: [__m256; NB / LANES],
        offset: [__m256i; NB / LANES],
    }

    impl Int4Group {
        /// Group `g` of a block's parameters.
        ///
        /// # Safety
        /// AVX2 must be present; `scales` and `zero_points` hold group `g`'s 64 values at `g · 64`.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load(scales: &[f32], zero_points: &[i8], g: usize) -> Int4Group {
            let at = g * NB;
            let mut group =
                Int4Group { scale: [_mm256_setzero_ps(); NB / LANES], offset: [_mm256_setzero_si256(); NB / LANES] };
            for v in 0..NB / LANES {
                // SAFETY: the caller's guarantee.
                unsafe {
                    group.scale[v] = _mm256_loadu_ps(scales.as_ptr().add(at + v * LANES));
                    let zero = _mm256_cvtepi8_epi32(_mm_loadl_epi64(zero_points.as_ptr().add(at + v * LANES).cast()));
                    group.offset[v] = _mm256_add_epi32(zero, _mm256_set1_epi32(8));
                }
            }
            group
        }
    }

    /// Row `i` of an INT4 block as 8 vectors of 8 columns: the 32 bytes' nibbles put in column order (the low
    /// nibble of byte `j` is column `2j`, the high one `2j + 1`), widened to i32, `(q - 8 - zero_point)` converted
    /// and multiplied by the group's scale: [`super::int4_row`]'s values.
    ///
    /// # Safety
    /// AVX2 must be present; `codes` holds row `i`'s 32 bytes at `i · 32`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn int4_row(codes: &[u8], i: usize, group: &Int4Group) -> [__m256; NB / LANES] {
        let mut ordered = [0u8; NB];
        let low = _mm256_set1_epi8(0x0F);
        // SAFETY: the caller's guarantee; `ordered` holds 64 bytes.
        unsafe {
            let packed = _mm256_loadu_si256(codes.as_ptr().add(i * NB / 2).cast());
            let lo = _mm256_and_si256(packed, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low);
            // Within each 128-bit lane: a = columns 0-15 | 32-47, b = 16-31 | 48-63.
            let a = _mm256_unpacklo_epi8(lo, hi);
            let b = _mm256_unpackhi_epi8(lo, hi);
            _mm256_storeu_si256(ordered.as_mut_ptr().cast(), _mm256_permute2x128_si256::<0x20>(a, b));
            _mm256_storeu_si256(ordered.as_mut_ptr().add(32).cast(), _mm256_permute2x128_si256::<0x31>(a, b));
        }
        let mut w = [_mm256_setzero_ps(); NB / LANES];
        for (v, w) in w.iter_mut().enumerate() {
            // SAFETY: 8 of the 64 ordered codes.
            let q = unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(ordered.as_ptr().add(v * LANES).cast())) };
            *w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, group.offset[v])), group.scale[v]);
        }
        w
    }

    /// INT4 rows, decoded by [`int4_row`], then `sum += x · w`: the same products and sums in the same order as
    /// [`super::gemv_portable`].
    ///
    /// # Safety
    /// As [`gemv`]; the block holds `k · 32` bytes of codes and `k / group · 64` scales and zero points.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn int4_columns<const R: usize>(
        codes: &[u8],
        scales: &[f32],
        zero_points: &[i8],
        group: usize,
        k: usize,
        x: [&[f32]; R],
        acc: &mut [[f32; NB]; R],
    ) {
        if k == 0 {
            return;
        }
        let mut sums = [[_mm256_setzero_ps(); NB / LANES]; R];
        // SAFETY: k > 0, so the block has group 0.
        let mut params = unsafe { Int4Group::load(scales, zero_points, 0) };
        for i in 0..k {
            if i % group == 0 {
                // SAFETY: group i / group < k / group.
                params = unsafe { Int4Group::load(scales, zero_points, i / group) };
            }
            // SAFETY: row i < k.
            let w = unsafe { int4_row(codes, i, &params) };
            for (sums, x) in sums.iter_mut().zip(&x) {
                // SAFETY: i < k ≤ x.len().
                let xs = _mm256_set1_ps(unsafe { *x.get_unchecked(i) });
                for (sum, w) in sums.iter_mut().zip(&w) {
                    *sum = _mm256_add_ps(*sum, _mm256_mul_ps(xs, *w));
                }
            }
        }
        for (acc, sums) in acc.iter_mut().zip(&sums) {
            for (v, s) in sums.iter().enumerate() {
                // SAFETY: 8 · v + 8 ≤ 64.
                unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(v * LANES), *s) };
            }
        }
    }

    /// One row: 8 vectors of columns per pass (8 accumulators); two rows: 4 per pass (4 per row).
    ///
    /// # Safety
    /// As [`gemv`]; `w` points at the block.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn by_rows<const F: u8, const R: usize>(
        w: *const u8,
        k: usize,
        x: [&[f32]; R],
        zero_points: &[i32],
        acc: &mut [[f32; NB]; R],
    ) {
        // SAFETY: forwarded.
        unsafe {
            match (F, R) {
                (FP8 | FP8_NAN, 1) => fp8_columns::<F, R, 8>(w, k, x, acc),
                (FP8 | FP8_NAN, _) => fp8_columns::<F, R, 4>(w, k, x, acc),
                (_, 1) => columns::<F, R, 8>(w, k, x, zero_points, acc),
                _ => columns::<F, R, 4>(w, k, x, zero_points, acc),
            }
        }
    }

    /// [`columns`] for FP8 (`F` is `FP8` or `FP8_NAN`): for each chunk of [`FP8_CHUNK_ROWS`] rows of `k`, the pass's
    /// codes are decoded to FP16 (`value · 2^-8`) into a stack buffer, then widened from it by `vcvtph2ps` and
    /// multiplied by `x · 2^8`: the same multiplies and adds in the same order as [`super::gemv_portable`]. Widening
    /// from memory leaves port 5 to the decoding's sign extension; widening the decoded registers (two more port-5
    /// instructions per 16 codes) was about 1.4 times slower (768 × 3072, one row, one thread).
    ///
    /// # Safety
    /// As [`gemv`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fp8_columns<const F: u8, const R: usize, const V: usize>(
        w: *const u8,
        k: usize,
        x: [&[f32]; R],
        acc: &mut [[f32; NB]; R],
    ) {
        let mut halves = [0u16; FP8_CHUNK_ROWS * NB];
        for pass in 0..NB / (V * LANES) {
            let col0 = pass * V * LANES;
            let mut sums = [[_mm256_setzero_ps(); V]; R];
            for i0 in (0..k).step_by(FP8_CHUNK_ROWS) {
                let rows = FP8_CHUNK_ROWS.min(k - i0);
                for r in 0..rows {
                    for v in (0..V).step_by(2) {
                        // SAFETY: row i0 + r < k of the block, columns col0 + 8·v .. + 16 ≤ 64; the buffer holds
                        // FP8_CHUNK_ROWS rows of V · 8 ≤ 64 values.
                        unsafe {
                            let codes =
                                _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add((i0 + r) * NB + col0 + v * LANES).cast()));
                            let decoded =
                                if F == FP8_NAN { fp8_halves::<true>(codes) } else { fp8_halves::<false>(codes) };
                            _mm256_storeu_si256(halves.as_mut_ptr().add((r * V + v) * LANES).cast(), decoded);
                        }
                    }
                }
                for r in 0..rows {
                    let mut xs = [_mm256_setzero_ps(); R];
                    for (xs, x) in xs.iter_mut().zip(&x) {
                        // SAFETY: i0 + r < k.
                        *xs = _mm256_set1_ps(unsafe { *x.get_unchecked(i0 + r) } * super::FP8_GEMV_X_SCALE);
                    }
                    for v in 0..V {
                        // SAFETY: within the buffer (above).
                        let wv = unsafe {
                            _mm256_cvtph_ps(_mm_loadu_si128(halves.as_ptr().add((r * V + v) * LANES).cast()))
                        };
                        for (sums, xs) in sums.iter_mut().zip(&xs) {
                            sums[v] = _mm256_add_ps(sums[v], _mm256_mul_ps(*xs, wv));
                        }
                    }
                }
            }
            for (acc, sums) in acc.iter_mut().zip(&sums) {
                for (v, s) in sums.iter().enumerate() {
                    // SAFETY: col0 + 8·v + 8 ≤ 64.
                    unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(col0 + v * LANES), *s) };
                }
            }
        }
    }

    /// `R` rows times the block, `V` vectors of 8 columns per pass over `k`.
    ///
    /// # Safety
    /// As [`gemv`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns<const F: u8, const R: usize, const V: usize>(
        w: *const u8,
        k: usize,
        x: [&[f32]; R],
        zero_points: &[i32],
        acc: &mut [[f32; NB]; R],
    ) {
        for pass in 0..NB / (V * LANES) {
            let col0 = pass * V * LANES;
            let mut zero = [_mm256_setzero_si256(); V];
            for (v, z) in zero.iter_mut().enumerate() {
                // SAFETY: 64 zero points.
                *z = unsafe { _mm256_loadu_si256(zero_points.as_ptr().add(col0 + v * LANES).cast()) };
            }
            let mut sums = [[_mm256_setzero_ps(); V]; R];
            for i in 0..k {
                let mut xs = [_mm256_setzero_ps(); R];
                for (xs, x) in xs.iter_mut().zip(&x) {
                    // SAFETY: i < k.
                    *xs = _mm256_set1_ps(unsafe { *x.get_unchecked(i) });
                }
                for v in 0..V {
                    // SAFETY: within the block.
                    let wv = unsafe { load::<F>(w, i * NB + col0 + v * LANES, zero[v]) };
                    for r in 0..R {
                        sums[r][v] = _mm256_add_ps(sums[r][v], _mm256_mul_ps(xs[r], wv));
                    }
                }
            }
            for (acc, sums) in acc.iter_mut().zip(&sums) {
                for (v, s) in sums.iter().enumerate() {
                    // SAFETY: col0 + 8·v + 8 ≤ 64.
                    unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(col0 + v * LANES), *s) };
                }
            }
        }
    }

    /// 8 stored values from element `at` as f32 (INT8: `q - zero`, unscaled).
    ///
    /// # Safety
    /// AVX2 and F16C; elements `at..at + 8` must lie in the block at `w`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load<const F: u8>(w: *const u8, at: usize, zero: __m256i) -> __m256 {
        // SAFETY: forwarded (2-byte elements for FP16 and BF16, 1-byte for INT8).
        unsafe {
            match F {
                FP16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * at).cast())),
                BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                    w.add(2 * at).cast(),
                )))),
                INT8 => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(w.add(at).cast()))),
                _ => {
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64(w.add(at).cast())), zero))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Progress;
    use crate::quant::fp8;
    use crate::quant::pass::TensorData;
    use crate::quant::{Granularity, Int4Scheme, Int8Scheme, Precision};
    use crate::runtime::weights::simulate;

    /// Largest relative L2 distance between a product and `ops::linear` on the simulated weights.
    const MAX_REL_L2: f64 = 1e-5;

    /// Seeded values in about [-scale, scale].
    fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = crate::seeded::XorShift64::new(seed);
        (0..len).map(|_| (rng.next_unit() * 2.0 - 1.0) as f32 * scale).collect()
    }

    /// FP16 bits decoded in f64 arithmetic (exact), independent of `half` and F16C.
    fn fp16_reference(bits: u16) -> f32 {
        let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
        let exponent = ((bits >> 10) & 0x1F) as i32;
        let mantissa = (bits & 0x3FF) as f64;
        let magnitude = match exponent {
            0 => mantissa * 2f64.powi(-24),
            31 => f64::INFINITY,
            e => (1.0 + mantissa / 1024.0) * 2f64.powi(e - 15),
        };
        (sign * magnitude) as f32
    }

    /// E4M3 code decoded in f64 arithmetic (exact), independent of `fp8`'s table and of F16C; `None` for the NaN
    /// codes.
    fn e4m3_reference(code: u8) -> Option<f64> {
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let (exponent, mantissa) = (((code >> 3) & 0xF) as i32, (code & 0x7) as f64);
        match (exponent, mantissa) {
            (15, 7.0) => None,
            (0, m) => Some(sign * m * 2f64.powi(-9)),
            (e, m) => Some(sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)),
        }
    }

    /// `w` `[n, k]` as FP8 with the simulation's scales (one for the tensor, or one per row): the codes, the scales
    /// and the simulated weight (`fp8::fake_quantize_e4m3` per group).
    fn fp8_quantized(w: &[f32], n: usize, k: usize, per_row: bool) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let group = if per_row { k } else { n * k };
        let (mut codes, mut simulated, mut scales) = (vec![0u8; w.len()], vec![0f32; w.len()], Vec::new());
        for ((g, c), s) in
            w.chunks(group.max(1)).zip(codes.chunks_mut(group.max(1))).zip(simulated.chunks_mut(group.max(1)))
        {
            let scale = fp8::fp8_scale(fp8::absmax_finite(g));
            fp8::quantize_e4m3(g, scale, c);
            fp8::fake_quantize_e4m3(g, scale, s);
            scales.push(scale);
        }
        if scales.is_empty() {
            scales.push(1.0);
        }
        (codes, scales, simulated)
    }

    /// Codes `[n, k]` in which every row holds every code (`k >= 256`), NaN codes replaced by ±448 (0x7E / 0xFE)
    /// except in the rows `keep_nan` accepts.
    fn every_code(n: usize, k: usize, keep_nan: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut codes = Vec::with_capacity(n * k);
        for j in 0..n {
            for i in 0..k {
                // 7 is odd, so i · 7 runs through every residue mod 256.
                let code = ((i * 7 + j * 13) % 256) as u8;
                codes.push(if code & 0x7F == 0x7F && !keep_nan(j) { code - 1 } else { code });
            }
        }
        codes
    }

    fn kernels() -> Vec<bool> {
        if simd_available() { vec![false, true] } else { vec![false] }
    }

    #[test]
    fn rows_are_the_rows_of_the_dequantized_weight() {
        let (n, k) = (70, 5);
        let values: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let params: Vec<QParams> = (0..n)
            .map(|j| QParams { scale: 0.01 * (j + 1) as f32, zero_point: j as i32 % 3 - 1, qmin: -128, qmax: 127 })
            .collect();
        let codes: Vec<i8> = (0..n * k).map(|i| (i * 53 % 255) as i32 as i8).collect();
        let fp8_codes: Vec<u8> = (0..n * k).map(|i| (i * 53 % 256) as u8).collect();
        let fp8_scales: Vec<f32> = (0..n).map(|j| 0.01 * (j + 1) as f32).collect();
        for packed in [
            PackedWeights::fp16(&values, n, k).unwrap(),
            PackedWeights::bf16(&values, n, k).unwrap(),
            PackedWeights::int8(&codes, &params, n, k).unwrap(),
            PackedWeights::fp8(&fp8_codes, &fp8_scales, n, k).unwrap(),
        ] {
            let all = packed.dequantize();
            let mut row = vec![0.0f32; k];
            for j in 0..n {
                packed.row_into(j, &mut row);
                let expected = &all[j * k..(j + 1) * k];
                assert!(row.iter().zip(expected).all(|(a, b)| a.to_bits() == b.to_bits()), "row {j}");
            }
        }
    }

    #[test]
    fn conversion_is_exact_on_every_half_bit_pattern() {
        // Every pattern but NaN: ±0, subnormals, normals up to ±65504 (FP16) or ±BF16_MAX, ±inf.
        let fp16: Vec<u16> = (0..=u16::MAX).filter(|b| b & 0x7C00 != 0x7C00 || b & 0x3FF == 0).collect();
        let bf16: Vec<u16> = (0..=u16::MAX).filter(|b| b & 0x7F80 != 0x7F80 || b & 0x7F == 0).collect();
        for is_fp16 in [true, false] {
            let mut padded = if is_fp16 { fp16.clone() } else { bf16.clone() };
            padded.resize(padded.len().div_ceil(NB) * NB, 0);
            let reference = |b: u16| if is_fp16 { fp16_reference(b) } else { half::bf16::from_bits(b).to_f32() };
            let expected: Vec<u32> = padded.iter().map(|&b| reference(b).to_bits()).collect();
            for simd in kernels() {
                let mut tile = vec![0.0f32; padded.len()];
                let block = if is_fp16 { Block::Fp16(&padded) } else { Block::Bf16(&padded) };
                if simd {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: checked by `kernels`; the tile is as long as the block.
                    unsafe {
                        avx2::tile(block, &mut tile)
                    }
                } else {
                    tile_portable(block, &mut tile);
                }
                let got: Vec<u32> = tile.iter().map(|v| v.to_bits()).collect();
                assert!(got == expected, "fp16 {is_fp16} simd {simd}");
            }
        }
    }

    #[test]
    fn tiles_hold_the_simulated_values_bit_for_bit() {
        let progress = Progress::new();
        for &(n, k) in &[(1, 1), (9, 7), (64, 64), (130, 100)] {
            let mut w = values(n * k, (n * 31 + k) as u64, 3.0);
            // Edges: beyond FP16's range, FP16 subnormals and underflow, ±inf, ±0, beyond BF16's range.
            let edges = [7e4, -1e6, 65504.0, -65504.0, 6e-8, -3e-5, 1e-9, f32::INFINITY, f32::NEG_INFINITY, -0.0];
            for (v, e) in w.iter_mut().zip(edges.iter().chain(&[f32::MAX, -f32::MAX, 1.0 + 2f32.powi(-8)])) {
                *v = *e;
            }
            let data = TensorData::from_f32(&w, n, k);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let fp16 = PackedWeights::fp16(&w, n, k).unwrap();
            let bf16 = PackedWeights::bf16(&w, n, k).unwrap();
            let mut cases = vec![
                (fp16, simulate(&data, Precision::Fp16, &progress).unwrap()),
                (bf16, simulate(&data, Precision::Bf16, &progress).unwrap()),
            ];
            // INT8 on finite values (quantization ignores ±inf for the range).
            let finite: Vec<f32> = w.iter().map(|v| if v.is_finite() { v.clamp(-1e5, 1e5) } else { 0.5 }).collect();
            let data = TensorData::from_f32(&finite, n, k);
            for symmetric in [true, false] {
                for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
                    let scheme = Int8Scheme::weights(symmetric, granularity);
                    let q = crate::quant::quantize_tensor(&data, scheme, &progress).unwrap();
                    let packed = PackedWeights::int8(&q.codes, &q.params, n, k).unwrap();
                    cases.push((packed, simulate(&data, Precision::Int8(scheme), &progress).unwrap()));
                }
            }
            // FP8 per tensor and per row, with ±NaN (which stay NaN) besides the edges above (±inf saturate).
            let mut with_nan = w.clone();
            if n * k > 13 {
                with_nan[n * k - 1] = f32::NAN;
                with_nan[n * k - 2] = -f32::NAN;
            }
            for per_row in [false, true] {
                let (codes, scales, simulated) = fp8_quantized(&with_nan, n, k, per_row);
                cases.push((PackedWeights::fp8(&codes, &scales, n, k).unwrap(), simulated));
            }
            // INT4 on the rows that split into groups of 32, NaN and the edges included.
            if k % 32 == 0 {
                let data = TensorData::from_f32(&with_nan, n, k);
                for scheme in [Int4Scheme::new(true, 32), Int4Scheme::new(false, 64)].into_iter().filter(|s| s.fits(k))
                {
                    let q = crate::quant::quantize_tensor_int4(&data, scheme, &progress).unwrap();
                    let packed = PackedWeights::int4(&q.codes, &q.params, scheme.group_size, n, k).unwrap();
                    cases.push((packed, simulate(&data, Precision::Int4(scheme), &progress).unwrap()));
                }
            }
            for (packed, simulated) in cases {
                for simd in kernels() {
                    let mut tile = vec![0.0f32; k * NB];
                    let mut values = vec![0.0f32; n * k];
                    for b in 0..packed.blocks() {
                        packed.convert(b, &mut tile, simd);
                        for c in 0..NB.min(n - b * NB) {
                            for i in 0..k {
                                values[(b * NB + c) * k + i] = tile[i * NB + c];
                            }
                        }
                    }
                    assert_eq!(bits(values), bits(simulated.clone()), "{:?} n={n} k={k} simd {simd}", packed.format());
                }
                assert_eq!(bits(packed.dequantize()), bits(simulated));
            }
        }
    }

    /// `‖a - b‖ / ‖b‖` in f64 (0 when both are 0).
    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let diff: f64 = a.iter().zip(b).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        let norm: f64 = b.iter().map(|&b| (b as f64).powi(2)).sum();
        if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
    }

    #[test]
    fn products_match_linear_on_the_simulated_weights_and_every_kernel_agrees() {
        let progress = Progress::new();
        let mut shapes = Vec::new();
        for m in [1, 2, 3, 17, 64] {
            for k in [1, 7, 64, 100] {
                for n in [1, 9, 64, 130] {
                    shapes.push((m, k, n));
                }
            }
        }
        // Large enough to run in parallel: GEMV over blocks, tiles over blocks, one SGEMM split over threads.
        shapes.extend([(1, 600, 515), (2, 300, 1000), (33, 300, 600), (200, 64, 130), (1, 640, 515), (2, 256, 1000)]);
        for (m, k, n) in shapes {
            let seed = (m * 10_000 + k * 100 + n) as u64;
            let w = values(n * k, seed, 1.0);
            let x = values(m * k, seed + 1, 2.0);
            let bias = values(n, seed + 2, 0.5);
            let data = TensorData::from_f32(&w, n, k);
            let scheme = |symmetric, granularity| Int8Scheme::weights(symmetric, granularity);
            let simulated = |precision| simulate(&data, precision, &progress).unwrap();
            let mut cases = vec![
                (PackedWeights::fp16(&w, n, k).unwrap(), simulated(Precision::Fp16), "Fp16".to_string()),
                (PackedWeights::bf16(&w, n, k).unwrap(), simulated(Precision::Bf16), "Bf16".to_string()),
            ];
            for s in [scheme(true, Granularity::PerChannel), scheme(false, Granularity::PerTensor)] {
                let q = crate::quant::quantize_tensor(&data, s, &progress).unwrap();
                let packed = PackedWeights::int8(&q.codes, &q.params, n, k).unwrap();
                cases.push((packed, simulated(Precision::Int8(s)), format!("{:?}", Precision::Int8(s))));
            }
            for per_row in [true, false] {
                let (codes, scales, simulated) = fp8_quantized(&w, n, k, per_row);
                cases.push((
                    PackedWeights::fp8(&codes, &scales, n, k).unwrap(),
                    simulated,
                    format!("Fp8 per row {per_row}"),
                ));
            }
            for scheme in [Int4Scheme::new(true, 32), Int4Scheme::new(false, 32)].into_iter().filter(|s| s.fits(k)) {
                let q = crate::quant::quantize_tensor_int4(&data, scheme, &progress).unwrap();
                let packed = PackedWeights::int4(&q.codes, &q.params, scheme.group_size, n, k).unwrap();
                cases.push((packed, simulated(Precision::Int4(scheme)), format!("{:?}", Precision::Int4(scheme))));
            }
            for (packed, simulated, label) in cases {
                let w_t = ops::transpose(&simulated, n, k);
                for bias in [None, Some(&bias[..])] {
                    let expected = ops::linear(&x, m, k, &w_t, n, bias);
                    let mut portable = vec![f32::NAN; m * n];
                    packed.matmul_into(&x, m, &mut portable, bias, Kernel::Portable);
                    let best = packed.matmul(&x, m, bias);
                    let what = format!("{label} m={m} k={k} n={n} bias {}", bias.is_some());
                    assert!(rel_l2(&best, &expected) < MAX_REL_L2, "{what}: {}", rel_l2(&best, &expected));
                    let (best_bits, portable_bits): (Vec<u32>, Vec<u32>) =
                        best.iter().zip(&portable).map(|(a, b)| (a.to_bits(), b.to_bits())).unzip();
                    assert!(best_bits == portable_bits, "{what}: the kernels differ");
                }
            }
        }
    }

    #[test]
    fn fp8_decodes_every_code_exactly_in_every_path() {
        // Two blocks, the second partial; k odd; per-row scales from 1 to f32 subnormal products and near-overflow.
        let (n, k) = (70, 259);
        let scale_choices = [1.0, 0.5 / 448.0, 3.0, 1e-3, 2f32.powi(-20), 1e-38, 1e30, f32::MAX / 448.0];
        let scales: Vec<f32> = (0..n).map(|j| scale_choices[j % scale_choices.len()]).collect();
        for code in [0x7F, 0xFF] {
            let v = fp8::e4m3_to_f32(code) * 3.0;
            assert!(v.is_nan() && v.is_sign_negative() == (code == 0xFF), "NaN code {code:#04x} keeps its sign");
        }
        // With NaN codes in every block (the decoding that replaces them) and in none (the one that skips that).
        for keep_nan in [true, false] {
            let codes = every_code(n, k, |_| keep_nan);
            let packed = PackedWeights::fp8(&codes, &scales, n, k).unwrap();
            // The value of weight (j, i): the f64 product is exact (4 × 24 significant bits), so casting it rounds
            // once, as the f32 multiply does.
            let expected = |j: usize, i: usize| -> u32 {
                let code = codes[j * k + i];
                match e4m3_reference(code) {
                    Some(v) => ((v * scales[j] as f64) as f32).to_bits(),
                    None => (fp8::e4m3_to_f32(code) * scales[j]).to_bits(),
                }
            };
            for simd in kernels() {
                let mut tile = vec![0.0f32; k * NB];
                for b in 0..packed.blocks() {
                    packed.convert(b, &mut tile, simd);
                    for c in 0..NB.min(n - b * NB) {
                        for i in 0..k {
                            let what = format!("NaN {keep_nan} simd {simd} col {c} i {i}");
                            assert_eq!(tile[i * NB + c].to_bits(), expected(b * NB + c, i), "{what}");
                        }
                    }
                }
            }
            let all = packed.dequantize();
            let mut row = vec![0.0f32; k];
            for j in 0..n {
                packed.row_into(j, &mut row);
                for i in 0..k {
                    let got = (all[j * k + i].to_bits(), row[i].to_bits());
                    assert_eq!(got, (expected(j, i), expected(j, i)), "NaN {keep_nan} ({j}, {i})");
                }
            }
        }
        // The GEMVs (1 and 2 rows) decode in registers: with one-hot rows of `x` (value `hot`), output j is
        // `(0 + … + hot · v) · scale_j`, which equals `(hot · v) · scale_j` in f32 (NaN codes left out: 0 · NaN would
        // spread over the row). `hot` covers an f32 subnormal and the largest |x| the GEMV takes (`hot · v` may
        // overflow, as it does in f32).
        let codes = every_code(n, k, |_| false);
        let packed = PackedWeights::fp8(&codes, &scales, n, k).unwrap();
        for hot in [1.0, -3e-39, FP8_GEMV_X_MAX] {
            for simd in kernels() {
                let kernel = if simd { Kernel::Best } else { Kernel::Portable };
                for i in 0..k {
                    let mut x = vec![0.0f32; 2 * k];
                    x[i] = hot;
                    x[k + (i + 1) % k] = hot;
                    let (mut one, mut two) = (vec![0.0f32; n], vec![0.0f32; 2 * n]);
                    packed.matmul_into(&x[..k], 1, &mut one, None, kernel);
                    packed.matmul_into(&x, 2, &mut two, None, kernel);
                    for j in 0..n {
                        let value = |i: usize| e4m3_reference(codes[j * k + i]).map(|v| (hot * v as f32) * scales[j]);
                        let what = format!("x {hot:e} simd {simd} ({j}, {i})");
                        assert_eq!((Some(one[j]), Some(two[j])), (value(i), value(i)), "{what}");
                        assert_eq!(Some(two[n + j]), value((i + 1) % k), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn fp8_rows_the_gemv_cannot_scale_go_to_the_tiles() {
        // A finite |x| above f32::MAX / 2^8 would overflow as `x · 2^8`: one and two rows take the tile path.
        let (n, k) = (70, 33);
        let w = values(n * k, 11, 1e-3);
        let (codes, scales, simulated) = fp8_quantized(&w, n, k, true);
        let packed = PackedWeights::fp8(&codes, &scales, n, k).unwrap();
        let w_t = ops::transpose(&simulated, n, k);
        for m in [1, 2] {
            let mut x = values(m * k, 12, 2.0);
            x[m * k - 1] = FP8_GEMV_X_MAX.next_up();
            assert!(!packed.gemv_takes(&x) && packed.gemv_takes(&x[..m * k - 1]));
            let expected = ops::linear(&x, m, k, &w_t, n, None);
            for simd in kernels() {
                let kernel = if simd { Kernel::Best } else { Kernel::Portable };
                let mut got = vec![0.0f32; m * n];
                packed.matmul_into(&x, m, &mut got, None, kernel);
                let mut tiled = vec![0.0f32; m * n];
                packed.tiled(&x, m, &mut tiled, None, simd);
                assert!(got.iter().all(|v| v.is_finite()), "m={m} simd {simd}");
                assert_eq!(got, tiled, "m={m} simd {simd}");
                assert!(rel_l2(&got, &expected) < MAX_REL_L2, "m={m} simd {simd}: {}", rel_l2(&got, &expected));
            }
        }
    }

    #[test]
    fn fp8_products_carry_nan_saturated_and_subnormal_codes() {
        // Every code in every row, NaN codes kept in every fifth row of the first block (whose outputs are NaN; the
        // second block has none); n past a block, k odd.
        let (n, k) = (70, 257);
        let nan_row = |j: usize| j.is_multiple_of(5) && j < NB;
        let codes = every_code(n, k, nan_row);
        let scales: Vec<f32> = (0..n).map(|j| 0.01 * (j + 1) as f32 / 448.0).collect();
        let packed = PackedWeights::fp8(&codes, &scales, n, k).unwrap();
        let w_t = ops::transpose(&packed.dequantize(), n, k);
        let bias = values(n, 5, 0.5);
        for m in [1, 2, 3, 8] {
            let x = values(m * k, 7 + m as u64, 2.0);
            let expected = ops::linear(&x, m, k, &w_t, n, Some(&bias));
            let mut portable = vec![0.0f32; m * n];
            packed.matmul_into(&x, m, &mut portable, Some(&bias), Kernel::Portable);
            let best = packed.matmul(&x, m, Some(&bias));
            for (idx, ((&b, &p), &e)) in best.iter().zip(&portable).zip(&expected).enumerate() {
                let nan = nan_row(idx % n);
                assert!(e.is_nan() == nan && b.is_nan() == nan && p.is_nan() == nan, "m={m} at {idx}");
                assert!(nan || b.to_bits() == p.to_bits(), "m={m} at {idx}: the kernels differ");
            }
            let finite = |v: &[f32]| -> Vec<f32> { v.iter().copied().filter(|v| !v.is_nan()).collect() };
            let distance = rel_l2(&finite(&best), &finite(&expected));
            assert!(distance < MAX_REL_L2, "m={m}: {distance}");
        }
    }

    #[test]
    fn empty_shapes_give_the_bias() {
        let packed = PackedWeights::fp16(&[], 3, 0).unwrap();
        assert_eq!(packed.matmul(&[], 2, Some(&[1.0, 2.0, 3.0])), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        assert_eq!(packed.matmul(&[], 1, None), [0.0; 3]);
        let packed = PackedWeights::fp8(&[], &[0.5], 3, 0).unwrap();
        assert_eq!(packed.matmul(&[], 3, Some(&[1.0, 2.0, 3.0]))[6..], [1.0, 2.0, 3.0]);
        let packed = PackedWeights::fp8(&[], &[], 0, 4).unwrap();
        assert!(packed.matmul(&[0.0; 4], 1, None).is_empty());
        let packed = PackedWeights::bf16(&[], 0, 4).unwrap();
        assert!(packed.matmul(&[0.0; 8], 2, None).is_empty());
        assert!(packed.matmul(&[], 0, None).is_empty());
    }

    #[test]
    fn constructors_refuse_bad_shapes_and_count_bytes() {
        assert!(PackedWeights::fp16(&[0.0; 5], 2, 3).is_err());
        assert!(PackedWeights::bf16(&[0.0; 5], usize::MAX, 2).is_err());
        let p = QParams::symmetric(1.0);
        assert!(PackedWeights::int8(&[0; 6], &[p, p], 3, 2).is_err());
        assert!(PackedWeights::int8(&[0; 5], &[p], 3, 2).is_err());
        assert_eq!(PackedWeights::fp16(&[0.0; 640], 64, 10).unwrap().size_bytes(), 1280);
        assert_eq!(PackedWeights::bf16(&[0.0; 650], 65, 10).unwrap().size_bytes(), 2 * 128 * 10);
        let int8 = PackedWeights::int8(&[0; 640], &[p; 64], 64, 10).unwrap();
        assert_eq!((int8.size_bytes(), int8.format(), int8.n(), int8.k()), (640 + 64 * 8, WeightFormat::Int8, 64, 10));
        assert!(PackedWeights::fp8(&[0; 5], &[1.0], 3, 2).is_err());
        assert!(PackedWeights::fp8(&[0; 6], &[1.0, 1.0], 3, 2).is_err());
        assert!(PackedWeights::fp8(&[0; 6], &[], 3, 2).is_err());
        let fp8 = PackedWeights::fp8(&[0; 650], &[1.0; 65], 65, 10).unwrap();
        assert_eq!((fp8.size_bytes(), fp8.format(), fp8.n(), fp8.k()), (128 * 10 + 128 * 4, WeightFormat::Fp8, 65, 10));
        assert_eq!(PackedWeights::fp8(&[0; 640], &[0.5], 64, 10).unwrap().size_bytes(), 640 + 64 * 4);
    }
}
