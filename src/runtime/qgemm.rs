//! INT8 matrix products: `C[m, n] = A[m, k] · Bᵀ` with `A` INT8 codes in `[-128, 127]` (a static input saturates at
//! `-128`, as compressed-tensors and vLLM quantize inputs; dynamic inputs stay in `[-127, 127]`), `B` symmetric INT8
//! codes in `[-127, 127]` and `C`
//! exact `i32` sums, then requantised to `f32` with the scales (`y = C · s_a · s_w[j] + b[j]`).
//!
//! Three x86 kernels, chosen at run time:
//!
//! - VNNI (where the CPU has AVX-VNNI, or AVX512-VNNI with AVX512-VL; [`PackedInt8::pack`] then builds the VNNI
//!   form): activation codes offset to `u = a + 128 ∈ [0, 255]` as below, a 4-byte broadcast per row and one
//!   `vpdpbusd` per 32 multiply-accumulates, which adds the four `u8 × s8` products of each `i32` lane into it with no
//!   `i16` step (`4 · 255 · 127` fits): every weight is packed as it is, no pair is clamped, and
//!   `C[i, j] = Σ_k u[i, k] · b[j, k] − 128 · colsum_j(b)`, the offset added to each tile's sums as below. On 256-bit
//!   vectors (`ymm`), the same tiles as `u8 × s8`.
//! - `u8 × s8` (AVX2, the default without VNNI when the weights allow it): activation codes offset to `u = a + 128 ∈
//!   [0, 255]` (a block of rows at a time, as `u8`, in a buffer each thread keeps), a 4-byte broadcast per row,
//!   `vpmaddubsw` (`u8 × s8` products, pairs of one column summed into `i16`), `vpmaddwd` by ones (the two pairs into
//!   one `i32`) and `vpaddd`: three instructions per 32 multiply-accumulates. A pair sum `u0·b0 + u1·b1` saturates
//!   `i16` only when `b0`, `b1` have one sign and `|b0| + |b1| > 128` (`255 · 128 = 32640` fits, `255 · 129` does not),
//!   so packing clamps the second weight of every such pair to `b1' = sign · (128 − |b0|)` and records the rest `r = b1
//!   − b1'` (`|r| ≤ 126`) as a sparse correction (column `j`, input `k1`, `r`). Then, exactly, `C[i, j] = Σ_k u[i, k] ·
//!   b'[j, k] − 128 · colsum_j(b') + Σ_{corrections of j} r · a[i, k1]`, computed as `Σ_k u · b' + Σ_{corrections of j}
//!   r · u[i, k1] − 128 · colsum_j(b)` (the same, as `colsum(b) = colsum(b') + Σ r`): the corrections are summed column
//!   by column for a whole block of rows from its `u8` codes transposed (32 rows per pass, in registers; row by row
//!   from the codes as they are below 8 rows), and the offset and those sums are added to the `i32` sums of each tile
//!   before they are stored or requantised (all in wrapping `i32`, whose result is the exact sum whenever that sum fits
//!   `i32`). Trained weights are bell-shaped and need a correction for well under 1% of their codes; when more than 2%
//!   would ([`MAX_CORRECTIONS_PER_WEIGHT`]; uniformly spread codes need one for about a quarter of the pairs), the
//!   weights are packed as they are and use the kernel below.
//! - `i16`: the codes of `A` are held as `i16`, the packed `i8` weights widened to `i16` as they are loaded
//!   (`vpmovsxbw`), and `vpmaddwd` multiplies 16 pairs and adds each pair into an `i32` lane, every pair within
//!   `±2 · 128 · 127 = ±32512`: exact, four instructions per 32 multiply-accumulates.
//!
//! The portable path (plain `i32` dot products on the packed codes, plus the corrections) gives identical results
//! (and runs, like the `i16` kernel, on weights in any form: the VNNI form holds the codes as they are);
//! the tests hold every path to a naive `i64` product on every edge size and at the extreme codes.
//!
//! [`gemm_quantized_into`] quantizes `f32` activations into that buffer block by block (bit for bit the codes of
//! [`quantize_activations`]), so a dynamic or static W8A8 layer writes no `[m, k]` code matrix; [`gemm_dynamic_into`]
//! does the same with a scale per row (per-token activations, W8A8-dynamic), applied as the tiles are stored.
//!
//! Weights are packed once ([`PackedInt8`]): panels of 8 output columns, `k` padded to a multiple of 4 with zero
//! codes, so that one 32-byte load holds 4 `k` of 8 columns. A micro-tile is 6 rows by two panels (VNNI, `u8 × s8`)
//! or by one panel (`i16`).

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Output columns per packed panel (one AVX2 vector of `i32`).
pub const PANEL: usize = 8;
/// `k` per `i32` lane.
const K_GROUP: usize = 4;
/// Rows of `A` per micro-tile (12 accumulators, 2 weight vectors and a broadcast: 15 of the 16 `ymm` registers).
const ROWS: usize = 6;
/// Most bytes of `i16` codes of `A` per cache block (126 rows of 768 inputs): in L2, read again for every panel.
const ROW_BLOCK_BYTES: usize = 192 << 10;
/// Bytes per code counted against [`ROW_BLOCK_BYTES`] for the `u8` codes (as many rows per block as with `i16`).
#[cfg(target_arch = "x86_64")]
const U8_BLOCK_CODE_BYTES: usize = 2;
/// Multiply-accumulates below which one thread does the whole product.
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Most corrections per weight code for which [`PackedInt8::pack`] builds the `u8 × s8` form (2%): beyond, the
/// corrections would cost more than the kernel saves.
pub const MAX_CORRECTIONS_PER_WEIGHT: f64 = 0.02;

/// A weight the `u8 × s8` form leaves out of the packed codes: `r · a[i, k]` is added to column `column` of its panel.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Correction {
    /// Input.
    k: u32,
    /// Column within the panel.
    column: u8,
    /// The weight left out, `|r| ≤ 126`.
    r: i8,
}

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
    /// `p · PANEL + c`, input `g · 4 + l` (0 past `n` or `k`); with the `u8 × s8` form, the clamped codes `b'`.
    data: Vec<i8>,
    /// The `u8 × s8` form's offsets and corrections (empty without it), boxed: the layers that hold a
    /// `PackedInt8` stay small.
    u8s8: Box<U8s8Form>,
}

/// The offsets and corrections of the `u8 × s8` form of a [`PackedInt8`], or the offsets alone of its VNNI form.
#[derive(Clone, Debug, Default, PartialEq)]
struct U8s8Form {
    /// The VNNI form: the codes as they are (no pair clamped, no corrections) and the offsets.
    vnni: bool,
    /// Empty without the `u8 × s8` or VNNI form; else `−128 · Σ_k b[j, k]` per column (the codes before clamping:
    /// the kernel adds the corrections times the offset codes `u`), padded to whole panels.
    offsets: Vec<i32>,
    /// The corrections of column `c` of panel `p` (sorted by input) at
    /// `corrections[starts[p · 8 + c]..starts[p · 8 + c + 1]]`: a panel's corrections are sorted by column, then
    /// input.
    corrections: Vec<Correction>,
    /// `8 · panels + 1` bounds into `corrections` (empty without the `u8 × s8` form).
    starts: Vec<usize>,
}

impl PackedInt8 {
    /// Packs `codes`, row-major `[n, k]`; every code must be in `[-127, 127]` (the symmetric range). On a CPU with
    /// VNNI, builds the VNNI form (the codes as they are, and the offsets); else the `u8 × s8` form (clamped pairs,
    /// offsets, corrections: see the module docs) when at most [`MAX_CORRECTIONS_PER_WEIGHT`] of the codes need a
    /// correction.
    pub fn pack(codes: &[i8], n: usize, k: usize) -> Result<PackedInt8> {
        Self::pack_as(codes, n, k, if vnni().is_some() { Form::Vnni } else { Form::U8s8 })
    }

    /// [`PackedInt8::pack`] into a chosen form (the `u8 × s8` form only where the corrections are few enough).
    fn pack_as(codes: &[i8], n: usize, k: usize, form: Form) -> Result<PackedInt8> {
        if n.checked_mul(k) != Some(codes.len()) {
            return Err(Error::KernelInput {
                problem: format!("{} INT8 codes cannot be a [{n}, {k}] matrix", codes.len()),
            });
        }
        if codes.contains(&i8::MIN) {
            return Err(Error::KernelInput {
                problem: "INT8 GEMM weights must be symmetric codes in [-127, 127]".into(),
            });
        }
        if u32::try_from(k).is_err() {
            return Err(Error::KernelInput { problem: format!("INT8 GEMM inputs {k} exceed u32") });
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
        let mut packed = PackedInt8 { n, k, k_groups, data, u8s8: Box::default() };
        match form {
            Form::Plain => {}
            Form::U8s8 => packed.build_u8s8(),
            Form::Vnni => packed.build_vnni(),
        }
        Ok(packed)
    }

    /// The VNNI form: `vpdpbusd` adds the four `u8 × s8` products of a lane in `i32` without an `i16` step, so no
    /// pair needs clamping; only the offsets `−128 · Σ_k b[j, k]` are recorded.
    fn build_vnni(&mut self) {
        let panels = self.n.div_ceil(PANEL);
        let mut offsets = vec![0i32; panels * PANEL];
        let panel_len = self.k_groups * PANEL * K_GROUP;
        for (p, panel) in self.data.chunks_exact(panel_len.max(1)).enumerate().take(panels) {
            for group in panel.chunks_exact(PANEL * K_GROUP) {
                for (column, codes) in group.chunks_exact(K_GROUP).enumerate() {
                    let sum: i32 = codes.iter().map(|&q| q as i32).sum();
                    let offset = &mut offsets[p * PANEL + column];
                    *offset = offset.wrapping_sub(sum.wrapping_mul(128));
                }
            }
        }
        *self.u8s8 = U8s8Form { vnni: true, offsets, ..U8s8Form::default() };
    }

    /// Clamps the pairs that could saturate `vpmaddubsw` and records the corrections and column offsets, unless
    /// there would be too many corrections (then the codes stay as they are, for the `i16` kernel).
    fn build_u8s8(&mut self) {
        let needs_correction = |b0: i8, b1: i8| {
            (b0 > 0 && b1 > 0 || b0 < 0 && b1 < 0) && b0.unsigned_abs() as u32 + b1.unsigned_abs() as u32 > 128
        };
        let count = self.data.chunks_exact(2).filter(|pair| needs_correction(pair[0], pair[1])).count();
        if count as f64 > MAX_CORRECTIONS_PER_WEIGHT * (self.n * self.k) as f64 {
            return;
        }
        let panel_len = self.k_groups * PANEL * K_GROUP;
        let panels = self.n.div_ceil(PANEL);
        let mut corrections = Vec::with_capacity(count);
        let mut starts = Vec::with_capacity(panels * PANEL + 1);
        let mut offsets = vec![0i32; panels * PANEL];
        for (p, panel) in self.data.chunks_exact_mut(panel_len.max(1)).enumerate().take(panels) {
            let first = corrections.len();
            for (g, group) in panel.chunks_exact_mut(PANEL * K_GROUP).enumerate() {
                for (column, codes) in group.chunks_exact_mut(K_GROUP).enumerate() {
                    for (t, pair) in codes.chunks_exact_mut(2).enumerate() {
                        let (b0, b1) = (pair[0], pair[1]);
                        if needs_correction(b0, b1) {
                            let clamped = (128 - b0.unsigned_abs() as i32) * (b1 as i32).signum();
                            // |clamped| in [1, 127], |r| <= 126: both fit i8.
                            pair[1] = clamped as i8;
                            let k = (g * K_GROUP + 2 * t + 1) as u32;
                            corrections.push(Correction { k, column: column as u8, r: (b1 as i32 - clamped) as i8 });
                        }
                        // The original codes: the kernel adds `r · u`, not `r · a`, so `−128 · r` is offset too.
                        let sum = b0 as i32 + b1 as i32;
                        let offset = &mut offsets[p * PANEL + column];
                        *offset = offset.wrapping_sub(sum.wrapping_mul(128));
                    }
                }
            }
            let panel_corrections = &mut corrections[first..];
            panel_corrections.sort_by_key(|fix| (fix.column, fix.k));
            for column in 0..PANEL as u8 {
                starts.push(first + panel_corrections.partition_point(|fix| fix.column < column));
            }
        }
        starts.push(corrections.len());
        *self.u8s8 = U8s8Form { vnni: false, offsets, corrections, starts };
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len()
            + 4 * self.u8s8.offsets.len()
            + std::mem::size_of::<Correction>() * self.u8s8.corrections.len()
            + std::mem::size_of::<usize>() * self.u8s8.starts.len()
    }

    /// Whether the `u8 × s8` form was built (few enough weight pairs need a correction).
    pub fn has_u8s8(&self) -> bool {
        !self.u8s8.starts.is_empty()
    }

    /// Whether the VNNI form was built (the CPU has AVX-VNNI or AVX512-VNNI).
    pub fn has_vnni(&self) -> bool {
        self.u8s8.vnni
    }

    /// Weight codes that the `u8 × s8` form leaves out of the packed codes, as corrections (0 without the form).
    pub fn corrections(&self) -> usize {
        self.u8s8.corrections.len()
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.k_groups * PANEL * K_GROUP;
        &self.data[p * len..(p + 1) * len]
    }

    /// The corrections of panel `p` (none without the `u8 × s8` form).
    fn panel_corrections(&self, p: usize) -> &[Correction] {
        self.corrections_between(p * PANEL, (p + 1) * PANEL)
    }

    /// The corrections of column `c` of panel `p`, by input (none without the `u8 × s8` form).
    #[cfg(target_arch = "x86_64")]
    fn column_corrections(&self, p: usize, c: usize) -> &[Correction] {
        self.corrections_between(p * PANEL + c, p * PANEL + c + 1)
    }

    /// The corrections of the panel columns `first..last` (counted over all panels).
    fn corrections_between(&self, first: usize, last: usize) -> &[Correction] {
        match (self.u8s8.starts.get(first), self.u8s8.starts.get(last)) {
            (Some(&from), Some(&to)) => &self.u8s8.corrections[from..to],
            _ => &[],
        }
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

/// The VNNI instructions this CPU has for `vpdpbusd` on 256-bit vectors, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vnni {
    /// AVX-VNNI (VEX encoding).
    Avx,
    /// AVX512-VNNI with AVX512-VL (EVEX encoding, the same operation).
    Avx512,
}

/// The VNNI form of `vpdpbusd` that runs here (with AVX2), if any.
fn vnni() -> Option<Vnni> {
    #[cfg(target_arch = "x86_64")]
    {
        if !avx2_available() {
            None
        } else if std::is_x86_feature_detected!("avxvnni") {
            Some(Vnni::Avx)
        } else if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
            Some(Vnni::Avx512)
        } else {
            None
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// How [`PackedInt8::pack_as`] lays out the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// The codes as they are (the `i16` and portable kernels).
    #[cfg_attr(not(test), allow(dead_code))]
    Plain,
    /// Clamped pairs, offsets and corrections for `vpmaddubsw` (plain when too many pairs need a correction).
    U8s8,
    /// The codes as they are and the offsets, for `vpdpbusd`.
    Vnni,
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

/// `out[m, n] = a[m, k] · bᵀ` in exact `i32`, `a` row-major codes in `[-128, 127]`; AVX2 when available.
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
    assert_eq!(a.len(), m * b.k, "A is not [m, k]");
    product(Source::Codes(a), m, b, output, kernel);
}

/// The INT8 product of the activations `x` (`[m, k]` f32) quantized with `a_scale`, and `b`, into `output`: the
/// codes are those of [`quantize_activations`] (bit for bit) and the sums those of [`gemm_i8_into`] on them, but
/// the codes are made a block of rows at a time inside each task, into a buffer the thread keeps, so no `[m, k]`
/// code matrix is allocated or written out. The fastest deployed W8A8 layer: quantize, multiply, requantise.
pub fn gemm_quantized_into(x: &[f32], m: usize, a_scale: f32, b: &PackedInt8, output: Output, kernel: Kernel) {
    assert_eq!(x.len(), m * b.k, "x is not [m, k]");
    let params = crate::quant::QParams { scale: a_scale, zero_point: 0, qmin: -128, qmax: 127 };
    product(Source::Values { x, params }, m, b, output, kernel);
}

/// W8A8 with activations quantized per token at run time (W8A8-dynamic):
/// `y[i, j] = C[i, j] · (s_i · w_scales[j]) + bias[j]` (the product of the two scales in f32, then a multiply and an
/// add, never fused), where row `i` of `x` (`[m, k]` f32) has the scale `s_i` of [`row_scales`]
/// (`QParams::symmetric` of its absmax over the finite values) and the codes `QParams::quantize` gives with it
/// (round half to even, clamp to ±127, NaN to 0), and `C` is the exact `i32` product of those codes and `b`. Each
/// task computes the absmax and codes of a block of rows where the static path quantizes (AVX2 when the kernel is),
/// keeps the block's scales and applies them as the tiles are stored: no `[m, k]` code matrix, no second pass over
/// `x`. `w_scales` and `bias` hold one value per output column.
pub fn gemm_dynamic_into(
    x: &[f32],
    m: usize,
    b: &PackedInt8,
    out: &mut [f32],
    w_scales: &[f32],
    bias: Option<&[f32]>,
    kernel: Kernel,
) {
    assert_eq!(x.len(), m * b.k, "x is not [m, k]");
    product(Source::PerRow(x), m, b, Output::Scaled { out, scales: w_scales, bias }, kernel);
}

/// The per-token (per-row) scale of every row of `x` (`[m, k]`): `QParams::symmetric(absmax).scale` with the absmax
/// over the row's finite values (`absmax / 127` in f32; 1 when that is 0 or not finite), the scales
/// [`gemm_dynamic_into`] quantizes with, bit for bit (the largest `|x|` is exact whatever the order of the
/// comparisons). For simulating W8A8-dynamic: `QParams::symmetric(absmax)` of row `i` quantizes and dequantizes it.
pub fn row_scales(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x is not [m, k]");
    if k == 0 {
        return vec![1.0; m];
    }
    let use_avx2 = avx2_available();
    let rows_per_task = (CHUNK / k).max(1);
    let mut scales = vec![0f32; m];
    scales.par_chunks_mut(rows_per_task).zip(x.par_chunks(rows_per_task * k)).for_each(|(scales, x)| {
        for (s, row) in scales.iter_mut().zip(x.chunks_exact(k)) {
            *s = crate::quant::QParams::symmetric(row_absmax(row, use_avx2)).scale;
        }
    });
    scales
}

/// The largest `|x|` over the finite values of one row (0 when there is none), AVX2 when asked and available.
fn row_absmax(x: &[f32], use_avx2: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: callers pass `use_avx2` only where AVX2 was detected at run time.
        return unsafe { avx2::absmax(x) };
    }
    let _ = use_avx2;
    crate::quant::fp8::absmax_finite(x)
}

/// Where the rows of A come from.
enum Source<'s> {
    /// Row-major INT8 codes.
    Codes(&'s [i8]),
    /// Row-major f32 activations and their quantization.
    Values { x: &'s [f32], params: crate::quant::QParams },
    /// Row-major f32 activations, each row quantized symmetrically with the scale of its own absmax.
    PerRow(&'s [f32]),
}

impl Source<'_> {
    /// Whether the rows carry scales of their own (which the stores multiply into the column scales).
    fn per_row(&self) -> bool {
        matches!(self, Source::PerRow(_))
    }

    /// The quantization of row `row` (`x` its values): the source's, or, per row, the row's own, whose scale is
    /// written to `scale`.
    fn params(&self, row: &[f32], scale: &mut f32, use_avx2: bool) -> crate::quant::QParams {
        match self {
            Source::Values { params, .. } => *params,
            _ => {
                let params = crate::quant::QParams::symmetric(row_absmax(row, use_avx2));
                *scale = params.scale;
                params
            }
        }
    }

    /// Rows `first..first + rows` of A as `i16` codes, `stride` per row (zeros past `k`), into `buf`; per row, the
    /// rows' scales into `row_scales` (else it may be empty).
    fn fill(&self, first: usize, k: usize, stride: usize, buf: &mut [i16], row_scales: &mut [f32], use_avx2: bool) {
        let mut unused = 0f32;
        for (r, dst) in buf.chunks_exact_mut(stride).enumerate() {
            let (row, rest) = dst.split_at_mut(k);
            let at = (first + r) * k;
            match self {
                Source::Codes(a) => widen(&a[at..at + k], row),
                Source::Values { x, .. } | Source::PerRow(x) => {
                    let x = &x[at..at + k];
                    let params = self.params(x, row_scales.get_mut(r).unwrap_or(&mut unused), use_avx2);
                    quantize_i16(x, &params, row, use_avx2);
                }
            }
            rest.fill(0);
        }
    }

    /// Rows `first..first + rows` of A as `u8` codes offset by 128, `stride` per row (128, the code 0, past `k`),
    /// into `buf`; per row, the rows' scales into `row_scales` (else it may be empty).
    fn fill_u8(&self, first: usize, k: usize, stride: usize, buf: &mut [u8], row_scales: &mut [f32], use_avx2: bool) {
        let mut unused = 0f32;
        for (r, dst) in buf.chunks_exact_mut(stride).enumerate() {
            let (row, rest) = dst.split_at_mut(k);
            let at = (first + r) * k;
            match self {
                Source::Codes(a) => {
                    for (o, &c) in row.iter_mut().zip(&a[at..at + k]) {
                        *o = (c as u8) ^ 0x80;
                    }
                }
                Source::Values { x, .. } | Source::PerRow(x) => {
                    let x = &x[at..at + k];
                    let params = self.params(x, row_scales.get_mut(r).unwrap_or(&mut unused), use_avx2);
                    quantize_u8(x, &params, row, use_avx2);
                }
            }
            rest.fill(128);
        }
    }
}

/// The codes of `x` plus 128 as `u8`, the codes bit for bit those of `QParams::quantize` (which must be in
/// `[-128, 127]`: a symmetric or signed quantization).
fn quantize_u8(x: &[f32], params: &crate::quant::QParams, out: &mut [u8], use_avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: AVX2 was detected at run time.
        unsafe { avx2::quantize_u8(x, params, out) };
        return;
    }
    let _ = use_avx2;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (params.quantize(v) as u8) ^ 0x80;
    }
}

fn widen(codes: &[i8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = c as i16;
    }
}

/// The codes of `x` as `i16`, bit for bit those of `QParams::quantize`.
fn quantize_i16(x: &[f32], params: &crate::quant::QParams, out: &mut [i16], use_avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: AVX2 was detected at run time.
        unsafe { avx2::quantize_i16(x, params, out) };
        return;
    }
    let _ = use_avx2;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = params.quantize(v) as i16;
    }
}

/// The product of `source` (`[m, k]`) and `b` into `output`, in parallel tasks.
fn product(source: Source, m: usize, b: &PackedInt8, output: Output, kernel: Kernel) {
    let use_avx2 = kernel == Kernel::Best && avx2_available();
    let path = match (use_avx2, b.has_u8s8(), b.has_vnni().then(vnni).flatten()) {
        (true, _, Some(Vnni::Avx)) => Path::AvxVnni,
        (true, _, Some(Vnni::Avx512)) => Path::Avx512Vnni,
        (true, true, _) => Path::U8s8,
        (true, false, _) => Path::I16,
        (false, _, _) => Path::Portable,
    };
    product_on(source, m, b, output, path);
}

/// [`product`] on `path`, which must run here and suit the form of `b` (`u8 × s8` only on that form, VNNI only on
/// the VNNI form, `i16` on the others).
fn product_on(source: Source, m: usize, b: &PackedInt8, output: Output, path: Path) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(PANEL);
    // Scales and bias padded to whole panels, so that the vector epilogue never reads past them.
    let (data, scales, bias) = match output {
        Output::Sums(out) => {
            assert_eq!(out.len(), m * n, "C is not [m, n]");
            (Data::Sums(out), Vec::new(), Vec::new())
        }
        Output::Scaled { out, scales, bias } => {
            assert_eq!(out.len(), m * n, "C is not [m, n]");
            assert_eq!(scales.len(), n, "one scale per output column");
            let mut padded_scales = scales.to_vec();
            padded_scales.resize(panels * PANEL, 0.0);
            let mut padded_bias = bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
            padded_bias.resize(panels * PANEL, 0.0);
            (Data::Scaled(out), padded_scales, padded_bias)
        }
    };
    if k == 0 {
        // No inputs: every sum is 0 (and a row of codes would be empty, which the kernels do not take).
        match data {
            Data::Sums(out) => out.fill(0),
            Data::Scaled(out) => {
                for row in out.chunks_exact_mut(n) {
                    for ((y, &scale), &bias) in row.iter_mut().zip(&scales).zip(&bias) {
                        *y = 0f32 * scale + bias;
                    }
                }
            }
        }
        return;
    }
    assert!(path != Path::U8s8 || b.has_u8s8(), "the u8 x s8 kernel needs the u8 x s8 form");
    assert!(!matches!(path, Path::AvxVnni | Path::Avx512Vnni) || b.has_vnni(), "VNNI needs the VNNI form");
    let per_row = source.per_row();
    let job = Job { source, k, stride: b.k_groups * K_GROUP, b, path };
    let threads = if m * n * k < PARALLEL_MIN_MACS { 1 } else { rayon::current_num_threads().max(1) };
    let split = Split { m, n, panels, threads, scales: &scales, bias: &bias, per_row };
    match data {
        Data::Sums(out) => split.run(&job, out, |chunk| Data::Sums(chunk)),
        Data::Scaled(out) => split.run(&job, out, |chunk| Data::Scaled(chunk)),
    }
}

/// How a product is cut into tasks.
struct Split<'s> {
    m: usize,
    n: usize,
    panels: usize,
    threads: usize,
    scales: &'s [f32],
    bias: &'s [f32],
    /// Whether the rows have scales of their own (dynamic per-token activations).
    per_row: bool,
}

impl Split<'_> {
    fn run<T: Send>(&self, job: &Job, out: &mut [T], wrap: impl for<'d> Fn(&'d mut [T]) -> Data<'d> + Sync) {
        let (m, n) = (self.m, self.n);
        let part = |data, col0, width, rows| {
            // A task's rows are few (at most m / threads): their scales cost nothing to hold.
            let row_scales = if self.per_row { vec![0f32; rows] } else { Vec::new() };
            Out { data, width, col0, scales: self.scales, bias: self.bias, row_scales }
        };
        if m == 1 && self.threads > 1 {
            // One row: tasks own runs of whole panels (contiguous columns of the row); each quantizes the row.
            let per_task = self.panels.div_ceil(self.threads * 2).max(1) * PANEL;
            out.par_chunks_mut(per_task).enumerate().for_each(|(t, chunk)| {
                let width = chunk.len();
                job.run(0, 1, &mut part(wrap(chunk), t * per_task, width, 1));
            });
        } else {
            // Tasks own runs of whole rows and read all of B (one panel at a time, from cache).
            let rows_per_task = m.div_ceil(self.threads).div_ceil(ROWS) * ROWS;
            out.par_chunks_mut(rows_per_task * n).enumerate().for_each(|(t, chunk)| {
                let rows = chunk.len() / n;
                job.run(t * rows_per_task, rows, &mut part(wrap(chunk), 0, n, rows));
            });
        }
    }
}

/// One product, shared by its tasks.
struct Job<'j> {
    source: Source<'j>,
    k: usize,
    /// `k` rounded up to whole groups of 4: the row length of the `i16` codes.
    stride: usize,
    b: &'j PackedInt8,
    path: Path,
}

/// Which kernel a product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Plain `i32` dot products on `i16` codes, plus the corrections.
    Portable,
    /// AVX2 `vpmaddwd` on `i16` codes (weights without the `u8 × s8` form).
    I16,
    /// AVX2 `vpmaddubsw` on `u8` codes offset by 128, plus the offsets and the corrections.
    U8s8,
    /// AVX-VNNI `vpdpbusd` on `u8` codes offset by 128 (weights in the VNNI form), plus the offsets.
    AvxVnni,
    /// The same with AVX512-VNNI's encoding.
    Avx512Vnni,
}

thread_local! {
    /// A block of rows of A as `i16` codes, kept by each thread from one product to the next (a fresh buffer
    /// per product would cost page faults).
    static ROWS_I16: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for the `u8` codes (offset by 128) of the `u8 × s8` kernel.
    static ROWS_U8: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// For the `u8 × s8` kernel: the block's `u8` codes input-major (rows padded to a multiple of 8), the
    /// corrections' sums of two panels in the tiles' layout (row-major: the block's rows of 8 sums each), and one
    /// panel's sums column-major (8 columns of the block's rows) before they are transposed into it.
    static U8_CORRECTIONS: std::cell::RefCell<(Vec<u8>, Vec<i32>, Vec<i32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl Job<'_> {
    /// Rows `first_row..first_row + rows` of the product, the columns `out` holds.
    fn run(&self, first_row: usize, rows: usize, out: &mut Out) {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.path, Path::U8s8 | Path::AvxVnni | Path::Avx512Vnni) {
            self.run_u8s8(first_row, rows, out);
            return;
        }
        let use_avx2 = self.path == Path::I16;
        let (first_panel, last_panel) = (out.col0 / PANEL, (out.col0 + out.width).div_ceil(PANEL));
        let block = self.block_rows(rows, 2);
        ROWS_I16.with_borrow_mut(|buf| {
            if buf.len() < block * self.stride {
                buf.resize(block * self.stride, 0);
            }
            for r0 in (0..rows).step_by(block) {
                let block_rows = block.min(rows - r0);
                let a = &mut buf[..block_rows * self.stride];
                let row_scales = out.row_scales.get_mut(r0..r0 + block_rows).unwrap_or_default();
                self.source.fill(first_row + r0, self.k, self.stride, a, row_scales, use_avx2);
                let a = &*a;
                for p in first_panel..last_panel {
                    let (panel, corrections) = (self.b.panel(p), self.b.panel_corrections(p));
                    if use_avx2 {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: AVX2 was detected at run time; `a` holds `block_rows` rows of `stride` codes and
                        // the panel `stride / 4` groups of 32 codes.
                        unsafe {
                            avx2::panel(a, block_rows, self.stride, panel, out, r0, p * PANEL)
                        };
                    } else {
                        portable_panel(a, block_rows, self.stride, panel, corrections, out, r0, p * PANEL);
                    }
                }
            }
        });
    }

    /// Rows per cache block of `rows` rows of `code_bytes` bytes per code: blocks of equal size (whole tiles), so
    /// that no small last block reads all of the panels again.
    fn block_rows(&self, rows: usize, code_bytes: usize) -> usize {
        let most = (ROW_BLOCK_BYTES / (self.stride * code_bytes).max(1) / ROWS * ROWS).max(ROWS);
        rows.div_ceil(rows.div_ceil(most)).div_ceil(ROWS) * ROWS
    }

    /// [`Job::run`] with the `u8 × s8` kernel, two panels at a time. The corrections of a panel are added up for the
    /// whole block of rows first: from the row-major codes for fewer than 8 rows, else 8 rows per vector from the
    /// block's codes transposed (input-major, rows padded to a multiple of 8).
    #[cfg(target_arch = "x86_64")]
    fn run_u8s8(&self, first_row: usize, rows: usize, out: &mut Out) {
        let (first_panel, last_panel) = (out.col0 / PANEL, (out.col0 + out.width).div_ceil(PANEL));
        let block = self.block_rows(rows, U8_BLOCK_CODE_BYTES);
        let block_padded = block.div_ceil(PANEL) * PANEL;
        let corrected = !self.b.u8s8.corrections.is_empty();
        ROWS_U8.with_borrow_mut(|buf| {
            U8_CORRECTIONS.with_borrow_mut(|(transposed, fixes, scratch)| {
                if buf.len() < block * self.stride {
                    buf.resize(block * self.stride, 128);
                }
                if corrected && block >= PANEL && transposed.len() < block_padded * self.k {
                    transposed.resize(block_padded * self.k, 0);
                }
                if corrected && fixes.len() < 2 * PANEL * block_padded {
                    fixes.resize(2 * PANEL * block_padded, 0);
                    scratch.resize(PANEL * block_padded, 0);
                }
                for r0 in (0..rows).step_by(block) {
                    let block_rows = block.min(rows - r0);
                    let padded = block_rows.div_ceil(PANEL) * PANEL;
                    let a = &mut buf[..block_rows * self.stride];
                    let row_scales = out.row_scales.get_mut(r0..r0 + block_rows).unwrap_or_default();
                    self.source.fill_u8(first_row + r0, self.k, self.stride, a, row_scales, true);
                    let a = &*a;
                    let codes = if !corrected {
                        Codes::None
                    } else if block_rows < PANEL {
                        Codes::RowMajor { a, stride: self.stride }
                    } else {
                        let transposed = &mut transposed[..padded * self.k];
                        // SAFETY: this path runs only where AVX2 was detected.
                        unsafe { avx2::transpose(a, block_rows, self.stride, self.k, transposed, padded) };
                        Codes::Transposed(transposed)
                    };
                    for p in (first_panel..last_panel).step_by(2) {
                        let pair = (last_panel - p).min(2);
                        let fixes = &mut fixes[..if corrected { pair * PANEL * padded } else { 0 }];
                        for (q, fixes) in fixes.chunks_exact_mut(PANEL * padded).enumerate() {
                            // SAFETY: this path runs only where AVX2 was detected.
                            unsafe { avx2::sum_corrections(fixes, scratch, &codes, block_rows, self.b, p + q) };
                        }
                        let fixes = avx2::Fixes { sums: fixes, rows: padded, first: 0 };
                        // SAFETY: each path runs only where its instructions were detected; `a` holds `block_rows`
                        // rows of `stride` codes, and panels `p..p + pair` exist; the VNNI paths take weights in the
                        // VNNI form, which has no corrections.
                        unsafe {
                            match self.path {
                                Path::AvxVnni => {
                                    avx_vnni::panels(a, block_rows, self.stride, self.b, p, pair, &fixes, out, r0)
                                }
                                Path::Avx512Vnni => {
                                    avx512_vnni::panels(a, block_rows, self.stride, self.b, p, pair, &fixes, out, r0)
                                }
                                _ => avx2_u8s8::panels(a, block_rows, self.stride, self.b, p, pair, &fixes, out, r0),
                            }
                        }
                    }
                }
            });
        });
    }
}

/// The `u8` codes (offset by 128) of a block of rows, as the corrections read them.
#[cfg(target_arch = "x86_64")]
enum Codes<'c> {
    /// The matrix has no corrections.
    None,
    /// Row-major, `stride` per row (fewer than 8 rows).
    RowMajor { a: &'c [u8], stride: usize },
    /// Input-major: input `k`'s codes of the block's rows (padded to a multiple of 8) at `[k · padded..]`.
    Transposed(&'c [u8]),
}

/// A task's part of the output: whole rows of `width` columns, the first at global column `col0`.
struct Out<'d> {
    data: Data<'d>,
    width: usize,
    col0: usize,
    /// Padded to whole panels, by global column; empty for sums.
    scales: &'d [f32],
    bias: &'d [f32],
    /// Per local row, the scale of its activations (multiplied into `scales` as the row is stored), when each row
    /// has its own; else empty.
    row_scales: Vec<f32>,
}

enum Data<'d> {
    Sums(&'d mut [i32]),
    Scaled(&'d mut [f32]),
}

impl Out<'_> {
    /// Stores the 8 sums of global columns `column..column + 8` of local row `row` (those that exist).
    fn store(&mut self, row: usize, column: usize, sums: &[i32; PANEL]) {
        let local = column - self.col0;
        let valid = PANEL.min(self.width - local);
        let at = row * self.width + local;
        match &mut self.data {
            Data::Sums(d) => d[at..at + valid].copy_from_slice(&sums[..valid]),
            Data::Scaled(d) => {
                let row_scale = self.row_scales.get(row).copied();
                for (c, (y, &sum)) in d[at..at + valid].iter_mut().zip(sums).enumerate() {
                    let scale = row_scale.map_or(self.scales[column + c], |s| s * self.scales[column + c]);
                    *y = sum as f32 * scale + self.bias[column + c];
                }
            }
        }
    }
}

/// One panel of 8 columns (global `column..`) for the `rows` rows of `a`, local rows `row0..` of `out`.
#[allow(clippy::too_many_arguments)]
fn portable_panel(
    a: &[i16],
    rows: usize,
    stride: usize,
    panel: &[i8],
    corrections: &[Correction],
    out: &mut Out,
    row0: usize,
    column: usize,
) {
    for (row, a_row) in a.chunks_exact(stride).take(rows).enumerate() {
        let mut sums = [0i32; PANEL];
        for (c, sum) in sums.iter_mut().enumerate() {
            for (g, a_group) in a_row.chunks_exact(K_GROUP).enumerate() {
                for (l, &x) in a_group.iter().enumerate() {
                    *sum += x as i32 * panel[(g * PANEL + c) * K_GROUP + l] as i32;
                }
            }
        }
        for fix in corrections {
            let sum = &mut sums[fix.column as usize];
            *sum = sum.wrapping_add(fix.r as i32 * a_row[fix.k as usize] as i32);
        }
        out.store(row0 + row, column, &sums);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Codes, Data, K_GROUP, Out, PANEL, PackedInt8, ROWS};

    /// `acc + Σ` of each column's four `u · b'` products: `vpmaddubsw` (pairs into `i16`, never saturating as the
    /// pairs were clamped when packing), `vpmaddwd` by ones (the two pairs into the column's `i32` lane) and an add.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub fn maddubs_add(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)))
    }

    /// The corrections' sums of a block of rows for one or two panels, from row `first`.
    pub struct Fixes<'f> {
        /// Row-major per panel: `rows` rows of `PANEL` sums; empty when there are no corrections.
        pub sums: &'f [i32],
        /// Rows per panel in `sums` (at least the block's).
        pub rows: usize,
        /// The row that [`Fixes::row`] counts from.
        pub first: usize,
    }

    impl<'f> Fixes<'f> {
        pub fn at(&self, first: usize) -> Fixes<'f> {
            Fixes { sums: self.sums, rows: self.rows, first }
        }

        /// The 8 sums of row `first + r` of panel `q` (of the pair).
        #[target_feature(enable = "avx2")]
        #[inline]
        pub fn row(&self, q: usize, r: usize) -> __m256i {
            if self.sums.is_empty() {
                return _mm256_setzero_si256();
            }
            let at = (q * self.rows + self.first + r) * PANEL;
            let sums = &self.sums[at..at + PANEL];
            // SAFETY: sums holds 8 i32.
            unsafe { _mm256_loadu_si256(sums.as_ptr().cast()) }
        }
    }

    /// `fixes[t · 8 + c] = Σ r · u[t, k]` over the corrections `(k, c, r)` of panel `p` of `b`, for the block's
    /// `rows` rows (`fixes` holds `padded = rows` rounded up to 8 rows of 8 sums; the padding rows are garbage).
    /// From row-major codes one row and column at a time; from transposed codes column by column, 32 and then 8 rows
    /// per vector of sums (`vpmovzxbd`, `vpmaddwd` by the correction, `vpaddd`: each product `u · r` is exact in
    /// `i32`), into `scratch` (`8 · padded`, column-major), then transposed 8 × 8 into `fixes`.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum_corrections(
        fixes: &mut [i32],
        scratch: &mut [i32],
        codes: &Codes,
        rows: usize,
        b: &PackedInt8,
        p: usize,
    ) {
        let padded = rows.div_ceil(PANEL) * PANEL;
        assert!(fixes.len() == PANEL * padded && scratch.len() >= PANEL * padded);
        match *codes {
            Codes::None => {}
            Codes::RowMajor { a, stride } => {
                let bounds = &b.u8s8.starts[p * PANEL..=(p + 1) * PANEL];
                for t in 0..rows {
                    let row = &a[t * stride..(t + 1) * stride];
                    for (c, ends) in bounds.windows(2).enumerate() {
                        let mut sum = 0i32;
                        for fix in &b.u8s8.corrections[ends[0]..ends[1]] {
                            sum = sum.wrapping_add(fix.r as i32 * row[fix.k as usize] as i32);
                        }
                        fixes[t * PANEL + c] = sum;
                    }
                }
            }
            Codes::Transposed(transposed) => {
                assert!(transposed.len() >= b.k * padded);
                for c in 0..PANEL {
                    let column = b.column_corrections(p, c);
                    let sums = &mut scratch[c * padded..(c + 1) * padded];
                    let mut r0 = 0;
                    while r0 + 4 * PANEL <= padded {
                        column_sums::<4>(column, transposed, padded, r0, &mut sums[r0..r0 + 4 * PANEL]);
                        r0 += 4 * PANEL;
                    }
                    while r0 < padded {
                        column_sums::<1>(column, transposed, padded, r0, &mut sums[r0..r0 + PANEL]);
                        r0 += PANEL;
                    }
                }
                for r0 in (0..padded).step_by(PANEL) {
                    let mut columns = [_mm256_setzero_si256(); PANEL];
                    for (c, v) in columns.iter_mut().enumerate() {
                        let src = &scratch[c * padded + r0..c * padded + r0 + PANEL];
                        // SAFETY: `src` holds 8 i32.
                        *v = unsafe { _mm256_loadu_si256(src.as_ptr().cast()) };
                    }
                    for (t, v) in transpose8x8(columns).into_iter().enumerate() {
                        let dst = &mut fixes[(r0 + t) * PANEL..(r0 + t + 1) * PANEL];
                        // SAFETY: `dst` holds 8 i32.
                        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
                    }
                }
            }
        }
    }

    /// `sums[l] = Σ r · u[k, r0 + l]` over the corrections `(k, r)` of one column, for `8 · L` rows from `r0`, the
    /// `L` vectors of sums in registers.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn column_sums<const L: usize>(
        column: &[super::Correction],
        transposed: &[u8],
        padded: usize,
        r0: usize,
        sums: &mut [i32],
    ) {
        assert_eq!(sums.len(), L * PANEL);
        let mut acc = [_mm256_setzero_si256(); L];
        for fix in column {
            let r = _mm256_set1_epi32(fix.r as i32);
            let at = fix.k as usize * padded + r0;
            let u = &transposed[at..at + L * PANEL];
            for (l, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `u` holds `L · 8` codes.
                let u = unsafe { _mm_loadl_epi64(u.as_ptr().add(l * PANEL).cast()) };
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_cvtepu8_epi32(u), r));
            }
        }
        for (l, acc) in acc.into_iter().enumerate() {
            // SAFETY: `sums` holds `L · 8` i32.
            unsafe { _mm256_storeu_si256(sums.as_mut_ptr().add(l * PANEL).cast(), acc) };
        }
    }

    /// The 8 × 8 transpose of `i32` vectors: lane `j` of output `i` is lane `i` of input `j`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn transpose8x8(v: [__m256i; 8]) -> [__m256i; 8] {
        let t = [
            _mm256_unpacklo_epi32(v[0], v[1]),
            _mm256_unpackhi_epi32(v[0], v[1]),
            _mm256_unpacklo_epi32(v[2], v[3]),
            _mm256_unpackhi_epi32(v[2], v[3]),
            _mm256_unpacklo_epi32(v[4], v[5]),
            _mm256_unpackhi_epi32(v[4], v[5]),
            _mm256_unpacklo_epi32(v[6], v[7]),
            _mm256_unpackhi_epi32(v[6], v[7]),
        ];
        let u = [
            _mm256_unpacklo_epi64(t[0], t[2]),
            _mm256_unpackhi_epi64(t[0], t[2]),
            _mm256_unpacklo_epi64(t[1], t[3]),
            _mm256_unpackhi_epi64(t[1], t[3]),
            _mm256_unpacklo_epi64(t[4], t[6]),
            _mm256_unpackhi_epi64(t[4], t[6]),
            _mm256_unpacklo_epi64(t[5], t[7]),
            _mm256_unpackhi_epi64(t[5], t[7]),
        ];
        [
            _mm256_permute2x128_si256::<0x20>(u[0], u[4]),
            _mm256_permute2x128_si256::<0x20>(u[1], u[5]),
            _mm256_permute2x128_si256::<0x20>(u[2], u[6]),
            _mm256_permute2x128_si256::<0x20>(u[3], u[7]),
            _mm256_permute2x128_si256::<0x31>(u[0], u[4]),
            _mm256_permute2x128_si256::<0x31>(u[1], u[5]),
            _mm256_permute2x128_si256::<0x31>(u[2], u[6]),
            _mm256_permute2x128_si256::<0x31>(u[3], u[7]),
        ]
    }

    /// `out[i · padded + t] = a[t · stride + i]` for the `rows` rows and `k` inputs of `a`: 16 × 16 bytes at a time
    /// (four rounds of byte interleaves), the edges one byte at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose(a: &[u8], rows: usize, stride: usize, k: usize, out: &mut [u8], padded: usize) {
        assert!(a.len() >= rows * stride && stride >= k && padded >= rows && out.len() >= k * padded);
        let (full_rows, full_k) = (rows / 16 * 16, k / 16 * 16);
        for t0 in (0..full_rows).step_by(16) {
            for i0 in (0..full_k).step_by(16) {
                let mut x = [_mm_setzero_si128(); 16];
                for (t, v) in x.iter_mut().enumerate() {
                    let src = &a[(t0 + t) * stride + i0..(t0 + t) * stride + i0 + 16];
                    // SAFETY: `src` holds 16 bytes.
                    *v = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
                }
                for _ in 0..4 {
                    let mut y = [_mm_setzero_si128(); 16];
                    for i in 0..8 {
                        y[2 * i] = _mm_unpacklo_epi8(x[i], x[i + 8]);
                        y[2 * i + 1] = _mm_unpackhi_epi8(x[i], x[i + 8]);
                    }
                    x = y;
                }
                for (i, v) in x.iter().enumerate() {
                    let dst = &mut out[(i0 + i) * padded + t0..(i0 + i) * padded + t0 + 16];
                    // SAFETY: `dst` holds 16 bytes.
                    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), *v) };
                }
            }
            for i in full_k..k {
                for t in t0..t0 + 16 {
                    out[i * padded + t] = a[t * stride + i];
                }
            }
        }
        for t in full_rows..rows {
            for i in 0..k {
                out[i * padded + t] = a[t * stride + i];
            }
        }
    }

    /// One panel of 8 columns (global `column..`) for the `rows` rows of `a`, six rows at a time, into local rows
    /// `row0..` of `out`.
    ///
    /// # Safety
    /// The CPU must have AVX2; `a` holds `rows` rows of `stride` codes, `panel` `stride / 4` groups of 32 codes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn panel(
        a: &[i16],
        rows: usize,
        stride: usize,
        panel: &[i8],
        out: &mut Out,
        row0: usize,
        column: usize,
    ) {
        let groups = stride / K_GROUP;
        assert!(a.len() >= rows * stride && panel.len() >= groups * PANEL * K_GROUP);
        let mut row = 0;
        while row < rows {
            // SAFETY: rows row.. exist, and the caller guarantees the rest.
            let (a_rows, b) = (unsafe { a.as_ptr().add(row * stride) }, panel.as_ptr());
            let at = row0 + row;
            // SAFETY: as above, for the rows each arm reads.
            unsafe {
                row += match rows - row {
                    ROWS.. => tile_into::<ROWS>(a_rows, stride, b, groups, out, at, column),
                    5 => tile_into::<5>(a_rows, stride, b, groups, out, at, column),
                    4 => tile_into::<4>(a_rows, stride, b, groups, out, at, column),
                    3 => tile_into::<3>(a_rows, stride, b, groups, out, at, column),
                    2 => tile_into::<2>(a_rows, stride, b, groups, out, at, column),
                    _ => tile_into::<1>(a_rows, stride, b, groups, out, at, column),
                };
            }
        }
    }

    /// `R` rows of A times one panel, stored; returns `R`.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile_into<const R: usize>(
        a: *const i16,
        stride: usize,
        b: *const i8,
        groups: usize,
        out: &mut Out,
        row: usize,
        column: usize,
    ) -> usize {
        // SAFETY: the caller's guarantee.
        let sums = unsafe { tile::<R>(a, stride, b, groups) };
        for (r, v) in sums.into_iter().enumerate() {
            store(out, row + r, column, v);
        }
        R
    }

    /// `R` rows of A (`i16` codes at `a`, `stride` apart) times one panel: the 8 column sums of each row.
    ///
    /// Each group of 4 `k` of 8 columns (32 bytes) is widened to two vectors of `i16` (columns 0-3 and 4-7, their
    /// 4 `k` side by side), multiplied by the row's 4 `k` with `vpmaddwd` (pairs of `i16` products summed into
    /// `i32`: exact) and added up; the two partial sums of each column are added at the end.
    ///
    /// # Safety
    /// AVX2; `a` readable for `R` rows of `groups · 4` codes, `b` for `groups · 32` bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile<const R: usize>(a: *const i16, stride: usize, b: *const i8, groups: usize) -> [__m256i; R] {
        let mut low = [_mm256_setzero_si256(); R];
        let mut high = [_mm256_setzero_si256(); R];
        for g in 0..groups {
            // SAFETY: within the panel and the rows.
            unsafe {
                let w = b.add(g * PANEL * K_GROUP);
                let w_low = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.cast()));
                let w_high = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(16).cast()));
                for r in 0..R {
                    // The row's 4 codes of this group, in every 64-bit lane.
                    let x = _mm256_set1_epi64x((a.add(r * stride + g * K_GROUP) as *const i64).read_unaligned());
                    low[r] = _mm256_add_epi32(low[r], _mm256_madd_epi16(x, w_low));
                    high[r] = _mm256_add_epi32(high[r], _mm256_madd_epi16(x, w_high));
                }
            }
        }
        // low: [c0 c0 c1 c1 | c2 c2 c3 c3], high: [c4 c4 c5 c5 | c6 c6 c7 c7]; hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7].
        let mut sums = [_mm256_setzero_si256(); R];
        for r in 0..R {
            sums[r] = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(low[r], high[r]));
        }
        sums
    }

    /// Stores the 8 sums `v` of global columns `column..column + 8` of local row `row`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn store(out: &mut Out, row: usize, column: usize, v: __m256i) {
        let local = column - out.col0;
        if local + PANEL > out.width {
            let mut sums = [0i32; PANEL];
            // SAFETY: sums holds 8 i32.
            unsafe { _mm256_storeu_si256(sums.as_mut_ptr().cast(), v) };
            out.store(row, column, &sums);
            return;
        }
        let at = row * out.width + local;
        match &mut out.data {
            Data::Sums(d) => {
                let dst = &mut d[at..at + PANEL];
                // SAFETY: dst holds 8 i32.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
            }
            Data::Scaled(d) => {
                let (dst, scales, bias) =
                    (&mut d[at..at + PANEL], &out.scales[column..column + PANEL], &out.bias[column..column + PANEL]);
                // SAFETY: each slice holds 8 f32. A multiply, then an add, as the scalar store (never fused); with
                // per-row scales, the row's scale times the column's first, as there.
                unsafe {
                    let mut scale = _mm256_loadu_ps(scales.as_ptr());
                    if let Some(&s) = out.row_scales.get(row) {
                        scale = _mm256_mul_ps(_mm256_set1_ps(s), scale);
                    }
                    let y = _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale);
                    _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_add_ps(y, _mm256_loadu_ps(bias.as_ptr())));
                }
            }
        }
    }

    /// The largest `|x|` over the finite values of `x` (0 when there is none), 16 at a time: the sign cleared, values
    /// not below infinity (±inf, NaN) masked to 0, then `vmaxps` (exact, so any order gives the same maximum).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn absmax(x: &[f32]) -> f32 {
        let (sign, inf) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(f32::INFINITY));
        let finite_abs = |v: __m256| {
            let a = _mm256_andnot_ps(sign, v);
            _mm256_and_ps(a, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf))
        };
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut blocks = x.chunks_exact(16);
        for block in &mut blocks {
            // SAFETY: `block` holds 16 f32.
            let v = unsafe { [_mm256_loadu_ps(block.as_ptr()), _mm256_loadu_ps(block.as_ptr().add(8))] };
            acc[0] = _mm256_max_ps(acc[0], finite_abs(v[0]));
            acc[1] = _mm256_max_ps(acc[1], finite_abs(v[1]));
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(acc[0], acc[1])) };
        let tail = blocks.remainder().iter().map(|v| v.abs()).filter(|a| a.is_finite());
        lanes.into_iter().chain(tail).fold(0f32, f32::max)
    }

    /// `QParams::quantize` of every `x` plus 128 as `u8`, 8 at a time (the codes of [`quantize_i16`]).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_u8(x: &[f32], p: &crate::quant::QParams, out: &mut [u8]) {
        assert!(out.len() >= x.len());
        let full = x.len() / 8 * 8;
        let offset = _mm_set1_epi16(128);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= x.len() <= out.len().
            unsafe {
                let u = _mm_add_epi16(codes8(x.as_ptr().add(i), p), offset);
                _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm_packus_epi16(u, u));
            }
        }
        for (o, &v) in out[full..].iter_mut().zip(&x[full..]) {
            *o = (p.quantize(v) as u8) ^ 0x80;
        }
    }

    /// `QParams::quantize` of every `x` as `i16`, 8 at a time (the same division, rounding and clamping).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_i16(x: &[f32], p: &crate::quant::QParams, out: &mut [i16]) {
        assert!(out.len() >= x.len());
        let full = x.len() / 8 * 8;
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= x.len() <= out.len().
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), codes8(x.as_ptr().add(i), p)) };
        }
        for (o, &v) in out[full..].iter_mut().zip(&x[full..]) {
            *o = p.quantize(v) as i16;
        }
    }

    /// The codes of the 8 values at `x` as `i16`: `QParams::quantize`'s division, round half to even, zero point,
    /// clamp, and NaN to the zero point.
    ///
    /// # Safety
    /// AVX2; `x` is readable for 8 `f32`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn codes8(x: *const f32, p: &crate::quant::QParams) -> __m128i {
        const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let (scale, zp) = (_mm256_set1_ps(p.scale), _mm256_set1_ps(p.zero_point as f32));
        let (qmin, qmax) = (_mm256_set1_ps(p.qmin as f32), _mm256_set1_ps(p.qmax as f32));
        // SAFETY: the caller's guarantee.
        let v = unsafe { _mm256_loadu_ps(x) };
        let q = _mm256_add_ps(_mm256_round_ps::<ROUND_NEAREST>(_mm256_div_ps(v, scale)), zp);
        let q = _mm256_min_ps(_mm256_max_ps(q, qmin), qmax);
        let q = _mm256_blendv_ps(q, zp, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let c = _mm256_cvtps_epi32(q);
        _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256::<1>(c))
    }
}

/// The `u8 × s8` kernels, one module per multiply step (the loops, tiles and stores are the same): per group of 4
/// `k`, a broadcast of the row's 4 `u8` codes and one multiply-accumulate per panel into each column's `i32` lane.
/// - AVX2 (`avx2_u8s8`): `vpmaddubsw` (pairs of `k` of one column into `i16`; never saturating, as the pairs were
///   clamped when packing), `vpmaddwd` by ones and an add; the clamped pairs are made good by the corrections.
/// - VNNI (`avx_vnni`, `avx512_vnni`, two encodings of `vpdpbusd`): the four `u · b` products added exactly, no `i16`
///   step, so the weights (in the VNNI form) need no clamping and no corrections.
///
/// The sums plus the offsets `−128 · Σ_k b` (plus the corrections) are `Σ_k a · b`.
macro_rules! u8s8_kernels {
    ($module:ident, $features:literal, $form_ok:expr, $multiply_add:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use std::arch::x86_64::*;

            use super::avx2::Fixes;
            use super::{K_GROUP, Out, PANEL, PackedInt8, ROWS};

            /// Panels `first..first + count` (`count` 1 or 2) of `b` for the `rows` rows of `a` (`u8` codes offset
            /// by 128), six rows at a time, into local rows `row0..` of `out`, with the offsets and the corrections
            /// (`fixes`; empty where the weights have none).
            ///
            /// # Safety
            /// The CPU must have the module's instructions (`$features`).
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn panels(
                a: &[u8],
                rows: usize,
                stride: usize,
                b: &PackedInt8,
                first: usize,
                count: usize,
                fixes: &Fixes,
                out: &mut Out,
                row0: usize,
            ) {
                let groups = stride / K_GROUP;
                let panel_len = groups * PANEL * K_GROUP;
                assert!(a.len() >= rows * stride && b.k_groups == groups && (1..=2).contains(&count));
                let form_ok: fn(&PackedInt8) -> bool = $form_ok;
                assert!(form_ok(b) && b.u8s8.offsets.len() >= (first + count) * PANEL);
                assert!(b.data.len() >= (first + count) * panel_len);
                // The corrections' sums of each panel (`PANEL` columns of `rows`), or none.
                assert!(
                    fixes.sums.is_empty() || (fixes.sums.len() == count * PANEL * fixes.rows && fixes.rows >= rows)
                );
                let w = b.data[first * panel_len..].as_ptr();
                let mut row = 0;
                while row < rows {
                    let a_rows = &a[row * stride..];
                    let at = row0 + row;
                    let f = fixes.at(row);
                    // SAFETY: rows row.. exist (at least the tile's, checked by `a_rows` in the tile), and the
                    // panels.
                    unsafe {
                        row += match (rows - row, count) {
                            (ROWS.., 2) => tile_into::<ROWS, 2>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (ROWS.., _) => tile_into::<ROWS, 1>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (5, 2) => tile_into::<5, 2>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (5, _) => tile_into::<5, 1>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (4, 2) => tile_into::<4, 2>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (4, _) => tile_into::<4, 1>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (3, 2) => tile_into::<3, 2>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (3, _) => tile_into::<3, 1>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (2, 2) => tile_into::<2, 2>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (2, _) => tile_into::<2, 1>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (_, 2) => tile_into::<1, 2>(a_rows, stride, w, groups, b, first, &f, out, at),
                            (_, _) => tile_into::<1, 1>(a_rows, stride, w, groups, b, first, &f, out, at),
                        };
                    }
                }
            }

            /// `R` rows of A times `P` panels (from panel `first`, codes at `w`), the offsets and corrections added,
            /// stored; returns `R`.
            ///
            /// # Safety
            /// The module's features; `a` holds `R` rows of `stride = groups · 4` codes; `w` is readable for `P`
            /// panels of `groups · 32` bytes, `b`'s panels `first..first + P`.
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn tile_into<const R: usize, const P: usize>(
                a: &[u8],
                stride: usize,
                w: *const i8,
                groups: usize,
                b: &PackedInt8,
                first: usize,
                fixes: &Fixes,
                out: &mut Out,
                row: usize,
            ) -> usize {
                assert!(a.len() >= R * stride);
                // SAFETY: the caller's guarantee and the check above.
                let sums = unsafe { tile::<R, P>(a.as_ptr(), stride, w, groups) };
                for (q, panel_sums) in sums.into_iter().enumerate() {
                    let p = first + q;
                    let offsets = &b.u8s8.offsets[p * PANEL..p * PANEL + PANEL];
                    // SAFETY: `offsets` holds 8 i32.
                    let offset = unsafe { _mm256_loadu_si256(offsets.as_ptr().cast()) };
                    for (r, v) in panel_sums.into_iter().enumerate() {
                        let v = _mm256_add_epi32(_mm256_add_epi32(v, offset), fixes.row(q, r));
                        super::avx2::store(out, row + r, p * PANEL, v);
                    }
                }
                R
            }

            /// `R` rows of A (`u8` codes offset by 128 at `a`, `stride` apart) times `P` panels (`w`, `groups · 32`
            /// bytes apart): the 8 column sums of each row and panel, in wrapping `i32`.
            ///
            /// # Safety
            /// The module's features; `a` readable for `R` rows of `groups · 4` codes, `w` for `P · groups · 32`
            /// bytes.
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::needless_range_loop)]
            unsafe fn tile<const R: usize, const P: usize>(
                a: *const u8,
                stride: usize,
                w: *const i8,
                groups: usize,
            ) -> [[__m256i; R]; P] {
                let panel_len = groups * PANEL * K_GROUP;
                let mut acc = [[_mm256_setzero_si256(); R]; P];
                for g in 0..groups {
                    // SAFETY: within the panels and the rows.
                    unsafe {
                        let mut wv = [_mm256_setzero_si256(); P];
                        for (q, v) in wv.iter_mut().enumerate() {
                            *v = _mm256_loadu_si256(w.add(q * panel_len + g * PANEL * K_GROUP).cast());
                        }
                        for r in 0..R {
                            let x = (a.add(r * stride + g * K_GROUP) as *const i32).read_unaligned();
                            let x = _mm256_set1_epi32(x);
                            for q in 0..P {
                                acc[q][r] = $multiply_add(acc[q][r], x, wv[q]);
                            }
                        }
                    }
                }
                acc
            }
        }
    };
}

u8s8_kernels!(avx2_u8s8, "avx2", |_| true, super::avx2::maddubs_add);
u8s8_kernels!(avx_vnni, "avx2,avxvnni", PackedInt8::has_vnni, _mm256_dpbusd_avx_epi32);
u8s8_kernels!(avx512_vnni, "avx2,avx512vnni,avx512vl", PackedInt8::has_vnni, _mm256_dpbusd_epi32);

/// Elements per parallel chunk of the element-wise steps.
const CHUNK: usize = 1 << 15;

/// The largest `|x|` over the finite values of `x` (0 when there is none), in parallel chunks of 8 lanes that
/// the compiler vectorises: the range of a dynamic per-tensor activation quantization.
pub fn absmax(x: &[f32]) -> f32 {
    x.par_chunks(CHUNK).map(crate::quant::fp8::absmax_finite).reduce(|| 0.0, f32::max)
}

/// Static per-tensor INT8 codes of `x` with `scale` (`q = clamp(round_half_even(x / scale), -128, 127)`, NaN to 0):
/// the static input quantization of `docs/QUANTIZATION.md` (`QParams::static_input`) with a given scale, by the
/// analysis pass's SIMD code kernel (bit-identical to `QParams::quantize`), in parallel chunks.
pub fn quantize_activations(x: &[f32], scale: f32) -> Vec<i8> {
    let params = crate::quant::QParams { scale, zero_point: 0, qmin: -128, qmax: 127 };
    let mut codes = vec![0i8; x.len()];
    codes.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| {
        crate::quant::kernels::quantize_codes(x, &params, out);
    });
    codes
}

/// `y[i, j] = acc[i, j] · (a_scale · w_scales[j]) + bias[j]` in f32 (`w_scales` of length 1: per tensor).
pub fn requantize(acc: &[i32], n: usize, a_scale: f32, w_scales: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let scales: Vec<f32> = (0..n).map(|j| a_scale * crate::quant::row_group(w_scales, j)).collect();
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
        let mut rng = crate::seeded::XorShift64::new(seed);
        (0..len).map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8).collect()
    }

    /// Activation codes over the whole int8 range, -128 (a saturated static input) included.
    fn activation_codes(len: usize, seed: u64) -> Vec<i8> {
        let mut rng = crate::seeded::XorShift64::new(seed);
        (0..len).map(|_| ((rng.next_u64() % 256) as i32 - 128) as i8).collect()
    }

    /// Bell-shaped weight codes `[n, k]` as trained weights give: normal values (Box-Muller), each row quantized
    /// with its absmax (so every row has a ±127).
    fn bell_codes(n: usize, k: usize, seed: u64) -> Vec<i8> {
        let mut rng = crate::seeded::XorShift64::new(seed);
        let mut uniform = move || rng.next_open_unit();
        let values: Vec<f64> = (0..n * k)
            .map(|_| (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos())
            .collect();
        values
            .chunks_exact(k.max(1))
            .flat_map(|row| {
                let absmax = row.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
                row.iter().map(move |v| (v / absmax * 127.0).round_ties_even() as i8)
            })
            .collect()
    }

    /// The exact product in `i64`, checked to fit `i32`.
    fn naive(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: i64 = (0..k).map(|l| a[i * k + l] as i64 * b[j * k + l] as i64).sum();
                c[i * n + j] = i32::try_from(sum).unwrap();
            }
        }
        c
    }

    /// Every form the weights can be packed in: the VNNI form (its kernel where the CPU has VNNI, else the `i16`
    /// one), the `u8 × s8` form (plain where too many pairs need corrections) and the plain codes.
    const FORMS: [Form; 3] = [Form::Vnni, Form::U8s8, Form::Plain];

    /// Every form, kernel and entry point on `a` (`[m, k]`) times `b` (`[n, k]`): the exact sums, and the bits of
    /// requantising them.
    fn check_every_path(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) {
        for form in FORMS {
            check_form(a, b, m, k, n, form);
        }
    }

    /// [`check_every_path`] for the weights packed in `form`.
    fn check_form(a: &[i8], b: &[i8], m: usize, k: usize, n: usize, form: Form) {
        let packed = PackedInt8::pack_as(b, n, k, form).unwrap();
        assert_eq!(packed.has_vnni(), form == Form::Vnni);
        let expected = naive(a, b, m, k, n);
        let scales: Vec<f32> = (0..n).map(|j| 0.001 * (j + 1) as f32).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 - 3.5).collect();
        let requantized = requantize(&expected, n, 1.0, &scales, Some(&bias));
        // Values whose codes at scale 0.5 are `a`.
        let a_scale = 0.5f32;
        let x: Vec<f32> = a.iter().enumerate().map(|(i, &q)| (q as f32 + [0.0, 0.2, -0.2][i % 3]) * a_scale).collect();
        assert_eq!(quantize_activations(&x, a_scale), a);
        let params = crate::quant::QParams { scale: a_scale, zero_point: 0, qmin: -128, qmax: 127 };
        // Every path that runs here, then the entry points as they choose.
        for path in paths(&packed).into_iter().map(Some).chain([None]) {
            let what = format!("{path:?} {form:?} u8s8={} m={m} k={k} n={n}", packed.has_u8s8());
            let run = |source: Source, output: Output| match path {
                Some(path) => product_on(source, m, &packed, output, path),
                None => product(source, m, &packed, output, Kernel::Best),
            };
            let mut c = vec![0i32; m * n];
            run(Source::Codes(a), Output::Sums(&mut c));
            assert_eq!(c, expected, "{what}");
            let mut c = vec![0i32; m * n];
            run(Source::Values { x: &x, params }, Output::Sums(&mut c));
            assert_eq!(c, expected, "quantized {what}");
            // The fused epilogue gives the bits of requantising the exact sums.
            let mut y = vec![0f32; m * n];
            run(Source::Codes(a), Output::Scaled { out: &mut y, scales: &scales, bias: Some(&bias) });
            assert_eq!(y, requantized, "scaled {what}");
            let mut y = vec![0f32; m * n];
            run(Source::Values { x: &x, params }, Output::Scaled { out: &mut y, scales: &scales, bias: Some(&bias) });
            assert_eq!(y, requantized, "quantized scaled {what}");
        }
        for kernel in [Kernel::Best, Kernel::Portable] {
            let mut c = vec![0i32; m * n];
            gemm_i8_with(a, m, &packed, &mut c, kernel);
            assert_eq!(c, expected, "gemm_i8_with {kernel:?} {form:?} m={m} k={k} n={n}");
            let mut y = vec![0f32; m * n];
            let output = Output::Scaled { out: &mut y, scales: &scales, bias: Some(&bias) };
            gemm_quantized_into(&x, m, a_scale, &packed, output, kernel);
            assert_eq!(y, requantized, "gemm_quantized_into {kernel:?} {form:?} m={m} k={k} n={n}");
        }
    }

    #[test]
    fn every_kernel_gives_the_exact_sums_on_edge_sizes() {
        // Rows 1-7 and 13 leave every remainder of the 6-row tile; k and n are off the groups of 4 and panels of 8.
        let small = [(1, 1, 1), (1, 3, 7), (2, 2, 1), (3, 4, 8), (4, 5, 9), (5, 64, 16), (6, 7, 3), (7, 9, 17)];
        let larger = [(13, 100, 33), (9, 768, 24), (64, 67, 70), (1, 1, 40), (61, 1, 2)];
        // Large enough to run in parallel (one row split by columns, several rows split by rows), and k so long
        // that a cache block holds one tile of rows.
        let parallel = [(1, 600, 515), (2, 300, 600), (70, 130, 41), (20, 8195, 9)];
        for (m, k, n) in small.into_iter().chain(larger).chain(parallel) {
            let a = activation_codes(m * k, (m * 1000 + k) as u64);
            let b = codes(n * k, (n * 7 + k) as u64);
            check_every_path(&a, &b, m, k, n);
        }
    }

    #[test]
    fn u8s8_form_is_exact_on_bell_shaped_weights() {
        let small =
            [(1, 1, 1), (1, 3, 7), (2, 2, 1), (3, 4, 8), (4, 5, 9), (6, 7, 3), (7, 9, 17), (1, 1, 40), (2, 0, 3)];
        let larger = [(13, 100, 33), (9, 768, 24), (64, 67, 70), (61, 1, 2), (5, 257, 1), (1, 768, 23)];
        let parallel = [(1, 600, 515), (1, 768, 515), (2, 1001, 300), (70, 130, 41), (20, 8195, 9), (97, 768, 72)];
        for (m, k, n) in small.into_iter().chain(larger).chain(parallel) {
            let b = bell_codes(n, k, (n * 7 + k) as u64);
            let packed = PackedInt8::pack_as(&b, n, k, Form::U8s8).unwrap();
            // One input: no pair to correct. Long rows: absmax at 3-4 sigma, about 1% of the codes corrected (short
            // rows have their absmax nearer the bulk, and more corrections).
            if k == 1 || k >= 700 {
                assert!(packed.has_u8s8(), "m={m} k={k} n={n}: {} corrections", packed.corrections());
            }
            let mixed: Vec<i8> = (0..m * k).map(|i| if i % 3 == 0 { -127 } else { 127 }).collect();
            let lowest = vec![-128; m * k];
            for a in [activation_codes(m * k, (m * 1000 + k) as u64), vec![127; m * k], lowest, mixed] {
                check_every_path(&a, &b, m, k, n);
            }
        }
    }

    #[test]
    fn u8s8_corrections_are_exact() {
        // Bell-shaped weights with pairs that saturate vpmaddubsw unless corrected, at every position of the group
        // of 4 and in first, middle and last columns, rows and panels.
        let (m, k, n) = (13, 771, 37);
        let mut b = bell_codes(n, k, 11);
        let pairs: [(i8, i8); 4] = [(127, 127), (-127, -127), (127, 2), (-100, -29)];
        let mut planted = 0;
        for j in [0, 5, 8, 17, 36] {
            for (t, &(b0, b1)) in pairs.iter().enumerate() {
                let at = j * k + 2 * (t * 25 + j % 3);
                (b[at], b[at + 1]) = (b0, b1);
                planted += 1;
            }
        }
        let packed = PackedInt8::pack_as(&b, n, k, Form::U8s8).unwrap();
        assert!(packed.has_u8s8());
        assert!(packed.corrections() >= planted, "{} corrections", packed.corrections());
        let mixed: Vec<i8> = (0..m * k).map(|i| [127, -127, 1, -1, 0][i % 5]).collect();
        for a in [activation_codes(m * k, 5), vec![127; m * k], vec![-127; m * k], vec![-128; m * k], mixed] {
            check_every_path(&a, &b, m, k, n);
        }
        // A pair (b0, b1) of one sign summing to exactly 128 needs no correction; 129 does.
        let mut edge = vec![0i8; 64];
        edge[..8].copy_from_slice(&[64, 64, -1, -127, 100, 28, -100, -29]);
        let packed = PackedInt8::pack_as(&edge, 1, 64, Form::U8s8).unwrap();
        assert_eq!((packed.has_u8s8(), packed.corrections()), (true, 1));
        let signs: Vec<i8> = (0..64).map(|i| [-127, 127, 127, -127][i % 4]).collect();
        for a in [vec![127i8; 64], vec![-127; 64], vec![-128; 64], signs] {
            check_every_path(&a, &edge, 1, 64, 1);
        }
    }

    #[test]
    fn dense_corrections_fall_back_to_the_i16_kernel() {
        let (m, k, n) = (7, 300, 20);
        for b in [vec![127i8; n * k], vec![-127; n * k], codes(n * k, 9)] {
            let packed = PackedInt8::pack_as(&b, n, k, Form::U8s8).unwrap();
            assert!(!packed.has_u8s8());
            assert_eq!((packed.corrections(), packed.size_bytes()), (0, n.div_ceil(PANEL) * PANEL * k.div_ceil(4) * 4));
            check_every_path(&codes(m * k, 3), &b, m, k, n);
        }
    }

    #[test]
    fn extreme_codes_are_exact() {
        // Every product at ±127 · ±127, alike and mixed, on sizes off the tiles: the sums at their largest magnitude.
        let (m, k, n) = (7, 4099, 9);
        let mixed_a: Vec<i8> = (0..m * k).map(|i| if i % 3 == 0 { -127 } else { 127 }).collect();
        let mixed_b: Vec<i8> = (0..n * k).map(|i| if i % 5 == 0 { -127 } else { 127 }).collect();
        for (a, b) in [
            (vec![127i8; m * k], vec![127i8; n * k]),
            (vec![-127; m * k], vec![-127; n * k]),
            (vec![127; m * k], vec![-127; n * k]),
            (vec![-127; m * k], vec![127; n * k]),
            (mixed_a.clone(), mixed_b.clone()),
            (mixed_a, vec![127; n * k]),
            (vec![-127; m * k], mixed_b),
        ] {
            check_every_path(&a, &b, m, k, n);
        }
        let same = vec![127i8; k];
        let packed = PackedInt8::pack(&same, 1, k).unwrap();
        let mut c = vec![0i32; 1];
        gemm_i8(&same, 1, &packed, &mut c);
        assert_eq!(c[0], 127 * 127 * k as i32);
    }

    #[test]
    fn fused_codes_are_those_of_the_quantizer() {
        // Ordinary values, ties, the clamps, infinities and NaN, through the fused path's quantizer (AVX2 when
        // present, in blocks of 8 and the tail) and the portable one.
        let mut x: Vec<f32> = (0..1003).map(|i| ((i as f32) * 0.731).sin() * 3.0).collect();
        for (i, v) in [0.01, -0.01, 0.03, -0.05, 2.54, -2.54, 1e9, -1e9, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]
            .into_iter()
            .enumerate()
        {
            x[i * 7] = v;
            x[1000 - i] = v;
        }
        // Dynamic inputs saturate at -127, static ones at -128.
        for qmin in [-127, -128] {
            let params = crate::quant::QParams { scale: 0.02, zero_point: 0, qmin, qmax: 127 };
            let expected: Vec<i16> = x.iter().map(|&v| params.quantize(v) as i16).collect();
            assert!(expected.contains(&(qmin as i16)));
            for use_avx2 in [avx2_available(), false] {
                let mut out = vec![0i16; x.len()];
                quantize_i16(&x, &params, &mut out, use_avx2);
                assert_eq!(out, expected, "avx2 {use_avx2} qmin {qmin}");
                let mut out = vec![0u8; x.len()];
                quantize_u8(&x, &params, &mut out, use_avx2);
                let offset: Vec<u8> = expected.iter().map(|&q| (q + 128) as u8).collect();
                assert_eq!(out, offset, "u8 avx2 {use_avx2} qmin {qmin}");
            }
        }
    }

    /// Activations `[m, k]` for the per-token path: rows at magnitudes from 1e-3 to 1e3, and among them a row of
    /// zeros, one with NaN and ±inf, one of only non-finite values, one whose absmax is so small that its scale is 1
    /// (`absmax / 127` underflows to 0), one whose scale is subnormal, and one with ±127-step ties.
    fn per_token_values(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::seeded::XorShift64::new(seed);
        let mut x: Vec<f32> = (0..m * k)
            .map(|i| {
                let magnitude = 10f32.powi((i / k.max(1)) as i32 % 7 - 3);
                (rng.next_unit() * 2.0 - 1.0) as f32 * magnitude
            })
            .collect();
        for (r, row) in x.chunks_exact_mut(k.max(1)).enumerate() {
            match r % 8 {
                1 => row.fill(0.0),
                2 => {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = [*v, f32::NAN, f32::INFINITY, *v, f32::NEG_INFINITY][i % 5];
                    }
                }
                3 => {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
                    }
                }
                4 => {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = [1e-44, -1e-45, 0.0][i % 3];
                    }
                }
                5 => {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = [1e-40, -3e-41, 7e-42][i % 3];
                    }
                }
                6 => {
                    // Steps of 0.5 up to ±63.5 in a row of absmax 127: the codes are ties, rounded to even.
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = if i == 0 { 127.0 } else { (i % 255) as f32 * 0.5 - 63.5 };
                    }
                }
                _ => {}
            }
        }
        x
    }

    /// The per-token reference, independently of the kernels: each row's scale from its absmax over the finite
    /// values (`QParams::symmetric`), its codes by `QParams::quantize`, and the product in `i64`.
    fn naive_per_token(x: &[f32], m: usize, k: usize, b: &[i8], n: usize) -> (Vec<f32>, Vec<i32>) {
        let mut scales = Vec::with_capacity(m);
        let mut codes = Vec::with_capacity(m * k);
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            let absmax = row.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
            let params = crate::quant::QParams::symmetric(absmax);
            scales.push(params.scale);
            codes.extend(row.iter().map(|&v| params.quantize(v)));
        }
        (scales, naive(&codes, b, m, k, n))
    }

    /// Every kernel path that runs here and suits the form of `packed`.
    fn paths(packed: &PackedInt8) -> Vec<Path> {
        let mut paths = vec![Path::Portable];
        if avx2_available() {
            paths.push(if packed.has_u8s8() { Path::U8s8 } else { Path::I16 });
        }
        #[cfg(target_arch = "x86_64")]
        if packed.has_vnni() && avx2_available() {
            if std::is_x86_feature_detected!("avxvnni") {
                paths.push(Path::AvxVnni);
            }
            if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
                paths.push(Path::Avx512Vnni);
            }
        }
        paths
    }

    /// Every form and kernel on `x` (`[m, k]`) quantized per token times `b` (`[n, k]`): the row scales, the exact
    /// sums, and the bits of `y = sum · (s_i · w_scales[j]) + bias[j]`, with and without a bias. Returns whether the
    /// weights took the `u8 × s8` form when asked to.
    fn check_per_token(x: &[f32], m: usize, k: usize, b: &[i8], n: usize) -> bool {
        let mut u8s8 = false;
        for form in FORMS {
            u8s8 |= check_per_token_form(x, m, k, b, n, form);
        }
        u8s8
    }

    /// [`check_per_token`] for the weights packed in `form`.
    fn check_per_token_form(x: &[f32], m: usize, k: usize, b: &[i8], n: usize, form: Form) -> bool {
        let packed = PackedInt8::pack_as(b, n, k, form).unwrap();
        let (scales, sums) = naive_per_token(x, m, k, b, n);
        assert_eq!(row_scales(x, m, k), scales, "row scales m={m} k={k}");
        let w_scales: Vec<f32> = (0..n).map(|j| 0.003 * (j % 11 + 1) as f32).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 1.5).collect();
        let formula = |bias: Option<&[f32]>| -> Vec<f32> {
            (0..m * n)
                .map(|at| {
                    let (i, j) = (at / n, at % n);
                    sums[at] as f32 * (scales[i] * w_scales[j]) + bias.map_or(0.0, |b| b[j])
                })
                .collect()
        };
        let (with_bias, without_bias) = (formula(Some(&bias)), formula(None));
        let bits = |v: &[f32]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
        for path in paths(&packed) {
            let what = format!("{path:?} {form:?} u8s8={} m={m} k={k} n={n}", packed.has_u8s8());
            let mut c = vec![0i32; m * n];
            product_on(Source::PerRow(x), m, &packed, Output::Sums(&mut c), path);
            assert_eq!(c, sums, "sums {what}");
            for (bias, expected) in [(Some(&bias[..]), &with_bias), (None, &without_bias)] {
                let mut y = vec![f32::NAN; m * n];
                let output = Output::Scaled { out: &mut y, scales: &w_scales, bias };
                product_on(Source::PerRow(x), m, &packed, output, path);
                assert_eq!(bits(&y), bits(expected), "outputs {what} bias {}", bias.is_some());
            }
        }
        for kernel in [Kernel::Best, Kernel::Portable] {
            let mut y = vec![f32::NAN; m * n];
            gemm_dynamic_into(x, m, &packed, &mut y, &w_scales, Some(&bias), kernel);
            assert_eq!(bits(&y), bits(&with_bias), "gemm_dynamic_into {kernel:?} {form:?} m={m} k={k} n={n}");
        }
        packed.has_u8s8()
    }

    #[test]
    fn per_token_activations_are_exact_on_every_kernel() {
        // Rows 1, 5, 6, 7 and 13 leave every remainder of the 6-row tile, 64 and 97 several blocks and tasks; k off
        // the groups of 4 and n off the panels of 8 and 16; the last sizes large enough to run in parallel (one row
        // split by columns, several rows split by rows).
        let rows = [1, 5, 6, 7, 13, 64, 97];
        let shapes = [(1, 1), (3, 9), (67, 17), (385, 70)];
        let parallel = [(1, 771, 515), (97, 771, 70), (13, 1537, 90)];
        let mut forms = [false, false];
        for (m, k, n) in rows.iter().flat_map(|&m| shapes.iter().map(move |&(k, n)| (m, k, n))).chain(parallel) {
            let x = per_token_values(m, k, (m * 31 + k) as u64);
            // Bell-shaped weights (the u8 x s8 kernel with corrections where its long rows allow) and uniform ones
            // (the i16 kernel).
            for b in [bell_codes(n, k, (n * 7 + k) as u64), codes(n * k, (n * 5 + k) as u64)] {
                let u8s8 = check_per_token(&x, m, k, &b, n);
                forms[u8s8 as usize] = true;
            }
        }
        assert_eq!(forms, [true, true], "both weight forms were exercised");
        // Packing takes the VNNI form exactly where the CPU has VNNI.
        assert_eq!(PackedInt8::pack(&codes(64, 1), 8, 8).unwrap().has_vnni(), vnni().is_some());
        // Corrections planted in the u8 x s8 form, with rows at the extreme codes.
        let (m, k, n) = (13, 771, 37);
        let mut b = bell_codes(n, k, 11);
        for j in [0, 5, 8, 17, 36] {
            (b[j * k + 2 * j], b[j * k + 2 * j + 1]) = (127, 127);
            (b[j * k + 2 * j + 50], b[j * k + 2 * j + 51]) = (-100, -29);
        }
        let mut x = per_token_values(m, k, 3);
        x[7 * k..8 * k].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 3 == 0 { -2.5 } else { 2.5 });
        assert!(check_per_token(&x, m, k, &b, n));
        // No inputs: every sum is 0, every row scale 1, the outputs the bias.
        assert_eq!(row_scales(&[], 3, 0), [1.0; 3]);
        check_per_token(&[], 3, 0, &[], 5);
    }

    #[test]
    fn row_absmax_skips_non_finite_values() {
        let mut x: Vec<f32> = (0..203).map(|i| ((i as f32) * 0.37).sin() * 2.0).collect();
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 33, 64, 203] {
            let expected = x[..len].iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
            for use_avx2 in [avx2_available(), false] {
                assert_eq!(row_absmax(&x[..len], use_avx2), expected, "len {len} avx2 {use_avx2}");
            }
        }
        // The largest finite value at every position of the vector blocks and the tail, among NaN and ±inf.
        for at in 0..40 {
            x[..40].fill(f32::NAN);
            x[..40].iter_mut().step_by(3).for_each(|v| *v = f32::NEG_INFINITY);
            x[at] = -5.5;
            x[(at + 17) % 40] = 1.25;
            for use_avx2 in [avx2_available(), false] {
                assert_eq!(row_absmax(&x[..40], use_avx2), 5.5, "at {at} avx2 {use_avx2}");
            }
        }
        assert_eq!(row_absmax(&[f32::NAN, f32::INFINITY], avx2_available()), 0.0);
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
        assert_eq!(quantize_activations(&[0.3, -10.0, f32::NAN, 0.01], 0.02), [15, -128, 0, 0]);
        let mut x: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.37).sin()).collect();
        x[77_777] = -3.5;
        x[5] = f32::NAN;
        x[6] = f32::NEG_INFINITY;
        assert_eq!(absmax(&x), 3.5);
        assert_eq!(absmax(&[]), 0.0);
    }
}
