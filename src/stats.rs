//! Summary statistics and histograms of a tensor's values (plain data; the pass that fills them is
//! [`crate::quant::pass`]).

/// Bins of every value and error histogram.
pub const HIST_BINS: usize = 256;

/// Summary statistics over the finite elements of a tensor (all zero when it has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorStats {
    /// Elements in all.
    pub count: u64,
    /// Finite elements (the statistics are over these).
    pub finite_count: u64,
    /// NaN elements.
    pub nan_count: u64,
    /// ±inf elements.
    pub inf_count: u64,
    /// Smallest finite value.
    pub min: f32,
    /// Largest finite value.
    pub max: f32,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation, `sqrt(sum (x - mean)^2 / n)`, from a second pass.
    pub std: f64,
    /// `max(|min|, |max|)`.
    pub absmax: f32,
}

impl TensorStats {
    /// Whether any element is NaN or infinite.
    pub fn has_non_finite(&self) -> bool {
        self.nan_count + self.inf_count > 0
    }
}

/// A histogram of equal-width bins over `[lo, hi]`; values outside are counted in the end bins.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Count per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram of [`HIST_BINS`] bins over `[lo, hi]`.
    pub fn empty(lo: f64, hi: f64) -> Histogram {
        Histogram { lo, hi, counts: vec![0; HIST_BINS] }
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        (self.hi - self.lo) / self.counts.len() as f64
    }

    /// Centre of bin `i`.
    pub fn bin_center(&self, i: usize) -> f64 {
        self.lo + (i as f64 + 0.5) * self.bin_width()
    }

    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The range of the value histogram for finite values in `[min, max]`: `[min, max]` itself, or, for a constant
/// tensor (or a range too narrow for f32 bin arithmetic), `[v - h, v + h]` around its centre `v` with
/// `h = max(0.5, |v| / 256)`. `[-1, 1]` when there are no finite values.
pub fn value_range(min: f32, max: f32, finite_count: u64) -> (f64, f64) {
    if finite_count == 0 {
        return (-1.0, 1.0);
    }
    let (lo, hi) = (min as f64, max as f64);
    let bins_per_unit = HIST_BINS as f64 / (hi - lo);
    if hi > lo && (bins_per_unit as f32).is_finite() {
        return (lo, hi);
    }
    let centre = lo / 2.0 + hi / 2.0;
    let h = (centre.abs() / 256.0).max(0.5);
    (centre - h, centre + h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(value_range(-1.0, 3.0, 10), (-1.0, 3.0));
        assert_eq!(value_range(2.0, 2.0, 10), (1.5, 2.5));
        assert_eq!(value_range(0.0, 0.0, 10), (-0.5, 0.5));
        assert_eq!(value_range(1024.0, 1024.0, 1), (1020.0, 1028.0));
        assert_eq!(value_range(f32::INFINITY, f32::NEG_INFINITY, 0), (-1.0, 1.0));
        let (lo, hi) = value_range(0.0, 1e-44, 2);
        assert!(lo < 0.0 && hi > 0.0, "too narrow for f32 bins: widened");
    }

    #[test]
    fn bins() {
        let h = Histogram::empty(0.0, 256.0);
        assert_eq!(h.bin_width(), 1.0);
        assert_eq!(h.bin_center(3), 3.5);
    }
}
