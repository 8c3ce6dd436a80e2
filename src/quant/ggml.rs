//! llama.cpp's block formats Q8_0, Q4_0, Q4_K and Q6_K: the bytes of a block as ggml writes them, their values,
//! and the activation quantization llama.cpp's CPU backend applies to a product's input row.
//!
//! The quantizers follow ggml's reference path, the one `llama-quantize` takes without an importance matrix
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`, `quantize_row_q4_K_ref`, `quantize_row_q6_K_ref` in
//! `ggml-quants.c`), operation for operation: the same f32 expressions evaluated in the same order (ggml-base is
//! built without FMA contraction), ggml's `nearest_int` (the `+ 1.5·2^23` trick, round half to even), and the
//! f32 → f16 conversion of the scales with round to nearest even ([`half::f16::from_f32`], as ggml's
//! `GGML_FP32_TO_FP16`). The formulas are written down in `docs/QUANTIZATION.md` ("llama.cpp block formats").

use half::f16;
use rayon::prelude::*;

/// Values in a K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Values in a Q8_0 / Q4_0 block (ggml's `QK8_0`, `QK4_0`).
pub const QK_SMALL: usize = 32;
/// Below this absolute maximum a Q6_K sub-block counts as all zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;
/// Values per parallel task of [`fake_quantize_rows`].
const ROWS_TASK_VALUES: usize = 1 << 14;

/// One of llama.cpp's block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// 32 values: an f16 scale `d = absmax / 127` and 32 signed 8-bit codes (8.5 bits per value).
    Q8_0,
    /// 32 values: an f16 scale `d = max / -8` (max = the value of largest magnitude) and 32 4-bit codes with
    /// offset 8 (4.5 bits per value).
    Q4_0,
    /// 256 values in 8 sub-blocks of 32: f16 `d` and `dmin`, 6-bit scale and min per sub-block, 4-bit codes;
    /// `x = d·sc·q − dmin·m` (4.5 bits per value).
    Q4K,
    /// 256 values in 16 sub-blocks of 16: 6-bit codes with offset 32, a signed 8-bit scale per sub-block and an f16
    /// super-scale; `x = d·sc·(q − 32)` (6.5625 bits per value).
    Q6K,
}

impl BlockFormat {
    /// All four, in the order of their ggml type ids.
    pub const ALL: [BlockFormat; 4] = [BlockFormat::Q4_0, BlockFormat::Q8_0, BlockFormat::Q4K, BlockFormat::Q6K];

    /// ggml's type id (`enum ggml_type`, the `type` of a GGUF tensor info).
    pub const fn ggml_type_id(self) -> u32 {
        match self {
            BlockFormat::Q4_0 => 2,
            BlockFormat::Q8_0 => 8,
            BlockFormat::Q4K => 12,
            BlockFormat::Q6K => 14,
        }
    }

    /// ggml's name of the type (`Q8_0`, `Q4_K`, …).
    pub const fn name(self) -> &'static str {
        match self {
            BlockFormat::Q8_0 => "Q8_0",
            BlockFormat::Q4_0 => "Q4_0",
            BlockFormat::Q4K => "Q4_K",
            BlockFormat::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub const fn block_values(self) -> usize {
        match self {
            BlockFormat::Q8_0 | BlockFormat::Q4_0 => QK_SMALL,
            BlockFormat::Q4K | BlockFormat::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 2 + QK_SMALL,
            BlockFormat::Q4_0 => 2 + QK_SMALL / 2,
            BlockFormat::Q4K => 2 + 2 + 12 + QK_K / 2,
            BlockFormat::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Whether a row of `row_len` values (ggml's `ne[0]`, the input dimension of a weight) splits into whole
    /// blocks.
    pub const fn fits(self, row_len: usize) -> bool {
        row_len > 0 && row_len.is_multiple_of(self.block_values())
    }

    /// Bytes of a tensor of `values` values (a multiple of the block size) in this format.
    pub const fn tensor_bytes(self, values: usize) -> usize {
        values.div_ceil(self.block_values()) * self.block_bytes()
    }

    /// Bits per value (block bytes × 8 / block values): 8.5, 4.5, 4.5, 6.5625.
    pub fn bits_per_value(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_values() as f64
    }
}

impl std::fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml's `nearest_int`: adds 1.5·2^23 so the f32 addition rounds to an integer (to nearest, ties to even) and
/// reads it from the mantissa. Valid for `|v| <= 4194303`, as in ggml (outside, the same bits as ggml's).
fn nearest_int(v: f32) -> i32 {
    let biased = v + 12_582_912.0f32;
    (biased.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

fn f16_bits(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

fn f16_value(bytes: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// Quantizes a row (its length a multiple of the block size: see [`BlockFormat::fits`]) into the bytes ggml
/// writes for it. Panics if the length is not a multiple of the block size (a caller's error, checked by
/// [`BlockFormat::fits`] before any user data reaches it).
pub fn quantize_row(format: BlockFormat, row: &[f32]) -> Vec<u8> {
    assert!(row.len().is_multiple_of(format.block_values()), "row length not a multiple of the block");
    let mut out = vec![0u8; format.tensor_bytes(row.len())];
    for (block, x) in out.chunks_exact_mut(format.block_bytes()).zip(row.chunks_exact(format.block_values())) {
        match format {
            BlockFormat::Q8_0 => quantize_block_q8_0(x, block),
            BlockFormat::Q4_0 => quantize_block_q4_0(x, block),
            BlockFormat::Q4K => quantize_block_q4_k(x, block),
            BlockFormat::Q6K => quantize_block_q6_k(x, block),
        }
    }
    out
}

/// Decodes the blocks of a row into `out` (as ggml's `dequantize_row_*`): `bytes` holds exactly
/// `out.len() / block_values` blocks. Panics on a length mismatch (a caller's error).
pub fn dequantize_row(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(format.block_values()), "row length not a multiple of the block");
    assert_eq!(bytes.len(), format.tensor_bytes(out.len()), "block bytes do not match the row length");
    for (block, y) in bytes.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(format.block_values())) {
        match format {
            BlockFormat::Q8_0 => dequantize_block_q8_0(block, y),
            BlockFormat::Q4_0 => dequantize_block_q4_0(block, y),
            BlockFormat::Q4K => dequantize_block_q4_k(block, y),
            BlockFormat::Q6K => dequantize_block_q6_k(block, y),
        }
    }
}

/// Replaces every row of `rows` (row length `row_len`, which the format fits) by its quantized-then-dequantized
/// values, rows in parallel: the weights the simulation multiplies with.
pub fn fake_quantize_rows(format: BlockFormat, rows: &mut [f32], row_len: usize) {
    assert!(format.fits(row_len), "row length not a multiple of the block");
    let rows_per_task = (ROWS_TASK_VALUES / row_len).max(1);
    rows.par_chunks_mut(row_len * rows_per_task).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(row_len) {
            let bytes = quantize_row(format, row);
            dequantize_row(format, &bytes, row);
        }
    });
}

/// Replaces an input row of a product with a weight in `format` by what llama.cpp's CPU dot product sees of it:
/// the codes times the scale of the activation blocks it quantizes the row into. Q8_0 and Q4_0 weights take
/// Q8_0 activation blocks (x86 AVX `quantize_row_q8_0`: `d = amax / 127` stored as f16, codes
/// `round_half_even(x · 127 / amax)`; the portable `quantize_row_q8_0_ref` uses `1 / d` and rounds half away from
/// zero, which differs only on ties and in the last bit of the multiplier); Q4_K and Q6_K weights take Q8_K
/// blocks of 256 (`quantize_row_q8_K_ref`: f32 `d = max / -127` with max the value of largest magnitude, codes
/// `nearest_int(x · -127 / max)` capped at 127). The product of these values with the dequantized weights is an
/// approximation of llama.cpp's integer dot product: the values are the same, the summation order is not
/// (ggml sums integer products per block and scales each block sum). The row length must be a multiple of the
/// activation block (32 or 256); a partial tail block is left in float.
pub fn quantize_activation_row(format: BlockFormat, row: &mut [f32]) {
    match format {
        BlockFormat::Q8_0 | BlockFormat::Q4_0 => {
            for x in row.chunks_exact_mut(QK_SMALL) {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = f16::from_f32(amax / 127.0).to_f32();
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                for v in x.iter_mut() {
                    let q = (*v * id).round_ties_even().clamp(-128.0, 127.0);
                    *v = q * d;
                }
            }
        }
        BlockFormat::Q4K | BlockFormat::Q6K => {
            for x in row.chunks_exact_mut(QK_K) {
                let (amax, max) = abs_max(x);
                if amax == 0.0 {
                    x.fill(0.0);
                    continue;
                }
                let iscale = -127.0f32 / max;
                let d = 1.0 / iscale;
                for v in x.iter_mut() {
                    let q = nearest_int(iscale * *v).min(127) as i8;
                    *v = d * f32::from(q);
                }
            }
        }
    }
}

/// The largest magnitude and the first value that has it (ggml's `if (ax > amax) { amax = ax; max = x; }`).
fn abs_max(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// `quantize_row_q8_0_ref` on one block: `d = amax / 127`, `q = roundf(x · (1/d))` (half away from zero).
fn quantize_block_q8_0(x: &[f32], block: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    block[..2].copy_from_slice(&f16_bits(d));
    for (q, &v) in block[2..].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

fn dequantize_block_q8_0(block: &[u8], y: &mut [f32]) {
    let d = f16_value(block);
    for (out, &q) in y.iter_mut().zip(&block[2..]) {
        *out = f32::from(q as i8) * d;
    }
}

/// `quantize_row_q4_0_ref` on one block: `d = max / -8`, `q = min(15, trunc(x · (1/d) + 8.5))`; value `j` in the
/// low nibble of byte `j`, value `j + 16` in its high nibble.
fn quantize_block_q4_0(x: &[f32], block: &mut [u8]) {
    let (_, max) = abs_max(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    block[..2].copy_from_slice(&f16_bits(d));
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK_SMALL / 2 {
        block[2 + j] = code(x[j]) | (code(x[j + QK_SMALL / 2]) << 4);
    }
}

fn dequantize_block_q4_0(block: &[u8], y: &mut [f32]) {
    let d = f16_value(block);
    for j in 0..QK_SMALL / 2 {
        let q = block[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + QK_SMALL / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// ggml's `make_qkx2_quants` for `n` values with weights: the scale and (negated) min of an asymmetric `nmax`-level
/// grid, searched over `nstep + 1` candidate scales `(rmin + rdelta·is + nmax) / (max − min)` by weighted least
/// squares. Writes the codes into `levels`; returns `(scale, −min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        levels[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(levels[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let big_d = sum_w * sum_l2 - sum_l * sum_l;
        if big_d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / big_d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / big_d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `quantize_row_q4_K_ref` on one super-block. Layout: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and
/// mins, 128 bytes of 4-bit codes (sub-blocks 2k and 2k+1 share 32 bytes: low nibbles, high nibbles).
fn quantize_block_q4_k(x: &[f32], block: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut aux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) =
            make_qkx2_quants(15, xs, &weights, &mut levels[32 * j..32 * j + 32], &mut aux, -1.0, 0.1, 20);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (head, rest) = block.split_at_mut(4);
    let (packed, qs) = rest.split_at_mut(12);
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    head[..2].copy_from_slice(&f16_bits(max_scale / 63.0));
    head[2..].copy_from_slice(&f16_bits(max_min / 63.0));
    let d_all = f16_value(&head[..2]);
    let dmin_all = f16_value(&head[2..]);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, packed);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d);
            levels[32 * j + ii] = l.clamp(0, 15) as u8;
        }
    }
    for (chunk, q) in qs.chunks_exact_mut(32).enumerate() {
        let j = chunk * 64;
        for l in 0..32 {
            q[l] = levels[j + l] | (levels[j + l + 32] << 4);
        }
    }
}

fn dequantize_block_q4_k(block: &[u8], y: &mut [f32]) {
    let d = f16_value(&block[..2]);
    let min = f16_value(&block[2..4]);
    let packed = &block[4..16];
    for (chunk, q) in block[16..].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, packed);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, packed);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d1 * f32::from(q[l] & 0xF) - m1;
            out[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// ggml's `make_qx_quants` with `rmse_type = 1` (weights `x²`) and no importance: the scale of a symmetric grid of
/// `2·nmax` levels (codes `l + nmax`, `l` in `[-nmax, nmax − 1]`), the first guess `-nmax / max` refined over 18
/// candidates `-(nmax + 0.1·is) / max` by weighted least squares. Writes the codes into `levels`.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (amax, max) = abs_max(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let mut iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        levels[i] = (l + nmax) as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let l = nearest_int(iscale * v);
                levels[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref` on one super-block. Layout: 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits),
/// 16 signed scales, f16 `d`; each half of 128 values packs value `l + 32k` (k = 0..4) into `ql[l]`/`ql[l + 32]`
/// nibbles and bits `2k..2k+2` of `qh[l]`.
fn quantize_block_q6_k(x: &[f32], block: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    let (ql, rest) = block.split_at_mut(QK_K / 2);
    let (qh, rest) = rest.split_at_mut(QK_K / 4);
    let (sc, d_bytes) = rest.split_at_mut(QK_K / 16);
    if max_abs_scale < GROUP_MAX_EPS {
        ql.fill(0);
        qh.fill(0);
        sc.fill(0);
        d_bytes.copy_from_slice(&f16_bits(0.0));
        return;
    }
    let iscale = -128.0f32 / max_scale;
    d_bytes.copy_from_slice(&f16_bits(1.0 / iscale));
    for ib in 0..QK_K / 16 {
        sc[ib] = (nearest_int(iscale * scales[ib]).min(127) as i8) as u8;
    }
    let d_all = f16_value(d_bytes);
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(sc[j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            levels[16 * j + ii] = (l + 32) as i8;
        }
    }
    let lv = |i: usize| levels[i] as u8;
    for half in 0..2 {
        let j = 128 * half;
        let ql = &mut ql[64 * half..64 * half + 64];
        let qh = &mut qh[32 * half..32 * half + 32];
        for l in 0..32 {
            let q1 = lv(j + l) & 0xF;
            let q2 = lv(j + l + 32) & 0xF;
            let q3 = lv(j + l + 64) & 0xF;
            let q4 = lv(j + l + 96) & 0xF;
            ql[l] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (lv(j + l) >> 4)
                | ((lv(j + l + 32) >> 4) << 2)
                | ((lv(j + l + 64) >> 4) << 4)
                | ((lv(j + l + 96) >> 4) << 6);
        }
    }
}

fn dequantize_block_q6_k(block: &[u8], y: &mut [f32]) {
    let d = f16_value(&block[QK_K / 2 + QK_K / 4 + QK_K / 16..]);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[QK_K / 2 + 32 * half..QK_K / 2 + 32 * half + 32];
        let sc = &block[QK_K / 2 + QK_K / 4 + 8 * half..QK_K / 2 + QK_K / 4 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            out[l] = d * s(0) * q1 as f32;
            out[l + 32] = d * s(2) * q2 as f32;
            out[l + 64] = d * s(4) * q3 as f32;
            out[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(63.49), 63);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }
}
