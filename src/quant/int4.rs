//! Group-wise INT4 weights (W4A16): each row of a 2-D weight (one output channel) split into groups of 32, 64 or
//! 128 consecutive values along the input dimension, every group with its own f32 scale (and zero point when
//! asymmetric), codes `-8..=7`. The layout compressed-tensors calls `strategy: "group"` and that llm-compressor's
//! W4A16 presets write; the formulas of one group are [`QParams::int4_symmetric`] and
//! [`QParams::int4_asymmetric`], written down in `docs/QUANTIZATION.md` ("INT4 group-wise").

use rayon::prelude::*;

use super::QParams;

/// The group sizes a plan may ask for, smallest first.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];
/// The group size when none is given (llm-compressor's W4A16 preset).
pub const DEFAULT_GROUP_SIZE: usize = 128;
/// Values per parallel task of [`fake_quantize_rows`].
const ROWS_TASK_VALUES: usize = 1 << 14;

/// An INT4 scheme: symmetric or asymmetric, with the number of input values that share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Int4Scheme {
    /// Symmetric (zero point 0) or asymmetric (a zero point per group).
    #[serde(default = "default_true")]
    pub symmetric: bool,
    /// Consecutive values of a row that share a scale: one of [`GROUP_SIZES`].
    #[serde(default = "default_group_size")]
    pub group_size: usize,
}

fn default_true() -> bool {
    true
}

fn default_group_size() -> usize {
    DEFAULT_GROUP_SIZE
}

impl Default for Int4Scheme {
    fn default() -> Self {
        Int4Scheme { symmetric: true, group_size: DEFAULT_GROUP_SIZE }
    }
}

impl Int4Scheme {
    /// A scheme with groups of `group_size` values.
    pub const fn new(symmetric: bool, group_size: usize) -> Int4Scheme {
        Int4Scheme { symmetric, group_size }
    }

    /// Whether the group size is one of [`GROUP_SIZES`].
    pub fn is_valid(self) -> bool {
        GROUP_SIZES.contains(&self.group_size)
    }

    /// Whether rows of `row_len` values split into whole groups.
    pub fn fits(self, row_len: usize) -> bool {
        self.group_size > 0 && row_len > 0 && row_len.is_multiple_of(self.group_size)
    }

    /// The scheme a row of `row_len` values gets: this one when its group size divides the row, else the largest
    /// smaller listed size that does (576 columns with groups of 128 get groups of 64); `None` when none does.
    /// compressed-tensors refuses groups that do not divide the row.
    pub fn fitted(self, row_len: usize) -> Option<Int4Scheme> {
        GROUP_SIZES
            .iter()
            .rev()
            .filter(|&&size| size <= self.group_size)
            .map(|&group_size| Int4Scheme { group_size, ..self })
            .find(|scheme| scheme.fits(row_len))
    }

    /// The parameters of one group of values (finite values only enter the range; an all-non-finite group gets
    /// scale 1).
    pub fn group_params(self, group: &[f32]) -> QParams {
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for &x in group.iter().filter(|x| x.is_finite()) {
            min = min.min(x);
            max = max.max(x);
        }
        let (min, max) = if min <= max { (min, max) } else { (0.0, 0.0) };
        if self.symmetric {
            QParams::int4_symmetric(min.abs().max(max.abs()))
        } else {
            QParams::int4_asymmetric(min, max)
        }
    }

    /// Bytes of a tensor of `values` values (rows a whole number of groups) as the export writes it: two codes
    /// per byte, an f32 scale per group and, when asymmetric, a 4-bit zero point per group.
    pub fn tensor_bytes(self, values: usize) -> usize {
        let groups = values / self.group_size.max(1);
        values.div_ceil(2) + 4 * groups + if self.symmetric { 0 } else { groups.div_ceil(2) }
    }

    /// Bits per weight with the scales (and zero points): 4.25 for symmetric groups of 128.
    pub fn bits_per_value(self) -> f64 {
        self.tensor_bytes(self.group_size * 2) as f64 * 8.0 / (self.group_size * 2) as f64
    }
}

/// The codes of one row (its length a whole number of groups) with the parameters of each group, in order.
/// Panics when the row is not whole groups (a caller's error: plans only give INT4 to rows it [`Int4Scheme::fits`]).
pub fn quantize_row(scheme: Int4Scheme, row: &[f32]) -> (Vec<i8>, Vec<QParams>) {
    assert!(scheme.fits(row.len()), "row length not a multiple of the group size");
    let mut codes = Vec::with_capacity(row.len());
    let mut params = Vec::with_capacity(row.len() / scheme.group_size);
    for group in row.chunks_exact(scheme.group_size) {
        let p = scheme.group_params(group);
        codes.extend(group.iter().map(|&x| p.quantize(x)));
        params.push(p);
    }
    (codes, params)
}

/// Replaces one row (whole groups) by its quantized-then-dequantized values.
pub fn fake_quantize_row(scheme: Int4Scheme, row: &mut [f32]) {
    assert!(scheme.fits(row.len()), "row length not a multiple of the group size");
    for group in row.chunks_exact_mut(scheme.group_size) {
        let p = scheme.group_params(group);
        for x in group.iter_mut() {
            *x = p.dequantize(p.quantize(*x));
        }
    }
}

/// Replaces every row of `rows` (row length `row_len`, which the scheme fits) by its quantized-then-dequantized
/// values, rows in parallel: the weights the simulation multiplies with.
pub fn fake_quantize_rows(scheme: Int4Scheme, rows: &mut [f32], row_len: usize) {
    assert!(scheme.fits(row_len), "row length not a multiple of the group size");
    let rows_per_task = (ROWS_TASK_VALUES / row_len).max(1);
    rows.par_chunks_mut(row_len * rows_per_task).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(row_len) {
            fake_quantize_row(scheme, row);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fall_back_to_the_largest_listed_size_that_divides_the_row() {
        let g128 = Int4Scheme::new(true, 128);
        assert_eq!(g128.fitted(768).map(|s| s.group_size), Some(128));
        assert_eq!(g128.fitted(576).map(|s| s.group_size), Some(64));
        assert_eq!(g128.fitted(1568).map(|s| s.group_size), Some(32));
        assert_eq!(g128.fitted(100), None);
        assert_eq!(Int4Scheme::new(false, 32).fitted(768), Some(Int4Scheme::new(false, 32)));
    }

    #[test]
    fn symmetric_group_worked_example() {
        // absmax 1.5: scale 0.2; 1.5 / 0.2 = 7.5 rounds to 8 and is clamped to 7; -1.5 -> -8 (tie to even).
        let scheme = Int4Scheme::new(true, 32);
        let mut row = vec![0.0f32; 32];
        row[0] = 1.5;
        row[1] = -1.5;
        row[2] = 0.3;
        let (codes, params) = quantize_row(scheme, &row);
        assert_eq!(params.len(), 1);
        assert_eq!(params[0].scale, 1.5f32 / 7.5);
        assert_eq!(&codes[..3], &[7, -8, (0.3f32 / params[0].scale).round_ties_even() as i8]);
        fake_quantize_row(scheme, &mut row);
        assert_eq!(row[0], 7.0 * params[0].scale);
    }

    #[test]
    fn asymmetric_groups_keep_zero_exact_and_have_their_own_range() {
        let scheme = Int4Scheme::new(false, 32);
        let row: Vec<f32> = (0..64).map(|i| if i < 32 { i as f32 * 0.1 } else { -(i as f32) }).collect();
        let (codes, params) = quantize_row(scheme, &row);
        assert_eq!(params.len(), 2);
        assert_eq!(params[0].zero_point, -8, "a positive-only group starts at the lowest code");
        assert_eq!(params[0].scale, row[31] / 15.0);
        assert_eq!(codes[0], -8);
        for p in &params {
            assert_eq!(p.dequantize(p.quantize(0.0)), 0.0);
        }
    }

    #[test]
    fn sizes_count_codes_scales_and_zero_points() {
        assert_eq!(Int4Scheme::new(true, 128).tensor_bytes(256), 128 + 8);
        assert_eq!(Int4Scheme::new(false, 32).tensor_bytes(256), 128 + 32 + 4);
        assert_eq!(Int4Scheme::new(true, 128).bits_per_value(), 4.25);
    }
}
