//! [`ActivationHistogram`]: a signed histogram of activation values over `[-range, range)` whose `range` is always a
//! power of two, so that batches merge exactly and in any order.
//!
//! ```text
//! range = max(MIN_RANGE, smallest power of two >= max |x|)     (capped at MAX_RANGE = 2^127)
//! w     = 2 * range / BINS                                      (a power of two: x / w = x * (1 / w) exactly)
//! bin   = clamp(floor(x * (1 / w)) + BINS/2, 0, BINS - 1)        (f64 multiply, exact)
//! ```
//!
//! When a batch brings a larger absmax, the range grows by `2^k` and bin `i` moves to
//! `((i - BINS/2) >> k) + BINS/2` (arithmetic shift = floor division), which is the bin the value would have had
//! at the new range: `floor(floor(x / w) / 2^k) = floor(x / (2^k w))`. The one value that does not follow the
//! formula, `x == +range` (bin `BINS`, clamped into the last bin), is counted in `at_range` and moved on its own.
//! NaN and ±inf are counted in `nonfinite` and never binned.

use serde::{Deserialize, Serialize};

/// Signed bins over `[-range, range)`.
pub const BINS: usize = 8192;
const HALF: i64 = (BINS / 2) as i64;
/// The smallest range, `2^-114`: it keeps `w = 2^-126` a normal f32. Smaller nonzero values share the centre bins.
pub const MIN_RANGE: f32 = 1.0 / (1u128 << 114) as f32;
/// The largest range, `2^127` (`2^128` is not an f32). Values beyond it land in the end bins.
pub const MAX_RANGE: f32 = (1u128 << 127) as f32;

/// A histogram of activation values; see the module documentation for the formulas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SparseHistogram", into = "SparseHistogram")]
pub struct ActivationHistogram {
    /// Half-width of the binned interval `[-range, range)`: 0.0 until a nonzero finite value is seen, then a power
    /// of two (see [`range_for`]).
    pub range: f32,
    /// [`BINS`] counts (always that long); bin `i` holds `[(i - BINS/2) w, (i - BINS/2 + 1) w)`, the last one also
    /// `x == range`. While `range` is 0 only the centre bin `BINS/2` (exact zeros) can be nonzero.
    pub bins: Vec<u64>,
    /// Smallest finite value; `+inf` while `count` is 0.
    pub min: f32,
    /// Largest finite value; `-inf` while `count` is 0.
    pub max: f32,
    /// Finite values observed (the sum of `bins`).
    pub count: u64,
    /// Values exactly 0.0 (either sign), also counted in the centre bin.
    pub zeros: u64,
    /// NaN and ±inf values: never binned, never affect the range.
    pub nonfinite: u64,
    /// Values exactly equal to `+range`, also counted in the last bin; kept so that growing the range moves them
    /// to their own bin, which is what keeps merges exact.
    pub at_range: u64,
}

impl Default for ActivationHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The range for a finite absmax: 0 for 0, else the smallest power of two `>= absmax` (exact, from the f32 bits),
/// clamped to `[MIN_RANGE, MAX_RANGE]`.
pub fn range_for(absmax: f32) -> f32 {
    if absmax == 0.0 || !absmax.is_finite() {
        return 0.0;
    }
    let absmax = absmax.abs();
    if absmax <= MIN_RANGE {
        return MIN_RANGE;
    }
    let bits = absmax.to_bits();
    let (exponent, mantissa) = (bits >> 23, bits & 0x7f_ffff);
    if mantissa == 0 {
        return absmax;
    }
    if exponent >= 254 { MAX_RANGE } else { f32::from_bits((exponent + 1) << 23) }
}

/// `log2(range)` of a nonzero range (a power of two).
fn log2(range: f32) -> i32 {
    ((range.to_bits() >> 23) as i32) - 127
}

/// The shift `k` that takes bins at range `from` to range `to >= from`; 0 when `from` is 0 (then only the centre
/// bin is filled, and it stays the centre bin).
fn shift_between(from: f32, to: f32) -> u32 {
    if from == 0.0 { 0 } else { (log2(to) - log2(from)).clamp(0, 63) as u32 }
}

/// Adds `bins` (with `at_range` of them equal to their own `+range`) into `target`, shifted by `k`. Returns how
/// many of them equal `+range` at the target range (all of them when `k == 0`, none otherwise).
fn add_shifted(target: &mut [u64], bins: &[u64], at_range: u64, k: u32) -> u64 {
    if k == 0 {
        target.iter_mut().zip(bins).for_each(|(t, b)| *t += b);
        return at_range;
    }
    for (i, &c) in bins.iter().enumerate() {
        let c = if i == BINS - 1 { c - at_range } else { c };
        target[(((i as i64 - HALF) >> k) + HALF) as usize] += c;
    }
    // Their unclamped bin is BINS, i.e. HALF after centring.
    target[((HALF >> k) + HALF) as usize] += at_range;
    0
}

impl ActivationHistogram {
    /// An empty histogram (range 0).
    pub fn new() -> Self {
        ActivationHistogram {
            range: 0.0,
            bins: vec![0; BINS],
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            zeros: 0,
            nonfinite: 0,
            at_range: 0,
        }
    }

    /// Width of one bin, `2 * range / BINS` (0 while the range is 0).
    pub fn bin_width(&self) -> f32 {
        self.range * (2.0 / BINS as f32)
    }

    /// `max(|min|, |max|)` over the finite values; 0 when there are none.
    pub fn absmax(&self) -> f32 {
        if self.count == 0 { 0.0 } else { self.min.abs().max(self.max.abs()) }
    }

    /// The histogram of `|x|`: `BINS/2` bins over `[0, range)`, `folded[j] = bins[BINS/2 + j] + bins[BINS/2 - 1 - j]`.
    pub fn folded(&self) -> Vec<u64> {
        let half = BINS / 2;
        (0..half).map(|j| self.bins[half + j] + self.bins[half - 1 - j]).collect()
    }

    /// Grows the range to `new_range` (a power of two `>= range`), merging the bins by the factor between them.
    fn grow_to(&mut self, new_range: f32) {
        if new_range <= self.range {
            return;
        }
        let k = shift_between(self.range, new_range);
        if k > 0 {
            let mut bins = vec![0; BINS];
            self.at_range = add_shifted(&mut bins, &self.bins, self.at_range, k);
            self.bins = bins;
        }
        self.range = new_range;
    }

    /// Adds a batch: one scan for the counts and the absmax, at most one growth of the range, one scan to bin.
    pub fn observe(&mut self, values: &[f32]) {
        let (mut min, mut max) = (self.min, self.max);
        let (mut finite, mut zeros) = (0u64, 0u64);
        for &x in values {
            if x.is_finite() {
                min = min.min(x);
                max = max.max(x);
                finite += 1;
                zeros += (x == 0.0) as u64;
            }
        }
        self.nonfinite += values.len() as u64 - finite;
        if finite == 0 {
            return;
        }
        (self.min, self.max, self.count, self.zeros) = (min, max, self.count + finite, self.zeros + zeros);
        self.grow_to(range_for(self.absmax()));
        if self.range == 0.0 {
            self.bins[BINS / 2] += zeros;
            return;
        }
        // 1/w is a power of two and x an f32, so the f64 product is exact (no underflow, no rounding).
        let inv_width = 1.0 / self.bin_width() as f64;
        let last = BINS as i64 - 1;
        let mut at_range = 0u64;
        for &x in values {
            if x.is_finite() {
                let i = (x as f64 * inv_width).floor() as i64 + HALF;
                at_range += (i == BINS as i64) as u64;
                self.bins[i.clamp(0, last) as usize] += 1;
            }
        }
        self.at_range += at_range;
    }

    /// Adds another histogram: the result is the histogram of both batches, whatever the order.
    pub fn merge(&mut self, other: &ActivationHistogram) {
        self.grow_to(other.range);
        let k = shift_between(other.range, self.range);
        self.at_range += add_shifted(&mut self.bins, &other.bins, other.at_range, k);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.zeros += other.zeros;
        self.nonfinite += other.nonfinite;
    }
}

/// The serialized form: `bins` as sparse `[index, count]` pairs, `min`/`max` absent when there are no finite
/// values (JSON has no infinity).
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    range: f32,
    bins: Vec<[u64; 2]>,
    min: Option<f32>,
    max: Option<f32>,
    count: u64,
    zeros: u64,
    nonfinite: u64,
    at_range: u64,
}

impl From<ActivationHistogram> for SparseHistogram {
    fn from(h: ActivationHistogram) -> Self {
        let bins = h.bins.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, &c)| [i as u64, c]).collect();
        let (min, max) = if h.count > 0 { (Some(h.min), Some(h.max)) } else { (None, None) };
        let ActivationHistogram { range, count, zeros, nonfinite, at_range, .. } = h;
        SparseHistogram { range, bins, min, max, count, zeros, nonfinite, at_range }
    }
}

impl TryFrom<SparseHistogram> for ActivationHistogram {
    type Error = String;

    /// Checks what merging relies on: a power-of-two range, indices in bounds, counts that add up.
    fn try_from(s: SparseHistogram) -> Result<Self, String> {
        if s.range != 0.0 && range_for(s.range) != s.range {
            return Err(format!("histogram range {} is not 0 or a power of two in [2^-114, 2^127]", s.range));
        }
        let mut bins = vec![0u64; BINS];
        for [i, c] in s.bins {
            let bin = usize::try_from(i)
                .ok()
                .and_then(|i| bins.get_mut(i))
                .ok_or(format!("histogram bin {i} out of range"))?;
            *bin = bin.checked_add(c).ok_or("histogram bin count overflows")?;
        }
        let sum = bins.iter().try_fold(0u64, |a, &c| a.checked_add(c)).ok_or("histogram counts overflow")?;
        let ok = sum == s.count
            && s.zeros <= bins[BINS / 2]
            && s.at_range <= bins[BINS - 1]
            && (s.range != 0.0 || (bins[BINS / 2] == s.count && s.zeros == s.count && s.at_range == 0));
        if !ok {
            return Err("histogram counts are inconsistent".to_string());
        }
        let (min, max) = match (s.min, s.max) {
            (Some(min), Some(max)) if s.count > 0 && min.is_finite() && max.is_finite() && min <= max => (min, max),
            (None, None) if s.count == 0 => (f32::INFINITY, f32::NEG_INFINITY),
            _ => return Err("histogram min/max do not match its count".to_string()),
        };
        let h = ActivationHistogram {
            range: s.range,
            bins,
            min,
            max,
            count: s.count,
            zeros: s.zeros,
            nonfinite: s.nonfinite,
            at_range: s.at_range,
        };
        if range_for(h.absmax()) != h.range {
            return Err(format!("histogram range {} does not cover absmax {}", h.range, h.absmax()));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[f32]) -> ActivationHistogram {
        let mut h = ActivationHistogram::new();
        h.observe(values);
        h
    }

    #[test]
    fn ranges_are_powers_of_two() {
        assert_eq!(range_for(0.0), 0.0);
        assert_eq!(range_for(1.0), 1.0);
        assert_eq!(range_for(-1.0), 1.0);
        assert_eq!(range_for(1.5), 2.0);
        assert_eq!(range_for(0.3), 0.5);
        assert_eq!(range_for(1e-40), MIN_RANGE);
        assert_eq!(range_for(f32::MAX), MAX_RANGE);
        assert_eq!(MIN_RANGE * (2.0 / BINS as f32), f32::MIN_POSITIVE);
    }

    #[test]
    fn known_values_land_in_known_bins() {
        let h = hist(&[1.0, -1.0, 0.5, 0.0, -0.0, 1e-9, -1e-9, 0.75]);
        assert_eq!(h.range, 1.0);
        assert_eq!(h.bin_width(), 1.0 / 4096.0);
        let expect = [(BINS - 1, 1), (0, 1), (6144, 1), (4096, 3), (4095, 1), (7168, 1)];
        for (i, c) in expect {
            assert_eq!(h.bins[i], c, "bin {i}");
        }
        assert_eq!(h.bins.iter().sum::<u64>(), 8);
        assert_eq!((h.count, h.zeros, h.at_range), (8, 2, 1));
        assert_eq!((h.min, h.max, h.absmax()), (-1.0, 1.0, 1.0));
        let folded = h.folded();
        assert_eq!(folded.len(), BINS / 2);
        assert_eq!((folded[0], folded[2048], folded[3072], folded[4095]), (4, 1, 1, 2));
    }

    #[test]
    fn merge_is_exact_and_order_independent() {
        let a: Vec<f32> = (0..1000).map(|i| ((i * 37 % 1000) as f32 - 500.0) / 300.0).chain([1.0, 2.0]).collect();
        let b: Vec<f32> = (0..700).map(|i| ((i * 53 % 700) as f32 - 350.0) / 20.0).chain([16.0, -0.0]).collect();
        let mut ab = hist(&a);
        ab.observe(&b);
        let mut ba = hist(&b);
        ba.observe(&a);
        let mut merged = hist(&a);
        merged.merge(&hist(&b));
        let mut merged_ba = hist(&b);
        merged_ba.merge(&hist(&a));
        let both = hist(&[a.as_slice(), &b].concat());
        assert_eq!(ab, ba);
        assert_eq!(ab, merged);
        assert_eq!(ab, merged_ba);
        assert_eq!(ab, both);
        assert_eq!(ab.range, 32.0);
    }

    #[test]
    fn growth_rebins_and_preserves_counts() {
        let mut h = hist(&[0.25, -0.25, 0.1, 1.0]);
        let before = h.bins.clone();
        h.observe(&[100.0]);
        assert_eq!(h.range, 128.0);
        assert_eq!((h.count, h.bins.iter().sum::<u64>()), (5, 5));
        assert_eq!(before.iter().sum::<u64>(), 4);
        // k = 7: 0.25 (bin 5120 at range 1) -> (1024 >> 7) + 4096 = 4104; -0.25 -> (-1024 >> 7) + 4096 = 4088.
        assert_eq!((h.bins[4104], h.bins[4088]), (1, 1));
        assert_eq!(h, hist(&[0.25, -0.25, 0.1, 1.0, 100.0]));
        // Growth by more than 63 doublings puts everything in the two centre bins.
        let mut tiny = hist(&[1e-30, -1e-30]);
        tiny.observe(&[1e30]);
        assert_eq!((tiny.bins[4095], tiny.bins[4096]), (1, 1));
    }

    #[test]
    fn nonfinite_values_are_counted_and_ignored() {
        let with = hist(&[0.5, f32::NAN, -2.0, f32::INFINITY, f32::NEG_INFINITY]);
        let mut without = hist(&[0.5, -2.0]);
        assert_eq!(with.nonfinite, 3);
        without.nonfinite = 3;
        assert_eq!(with, without);
        let only = hist(&[f32::NAN]);
        assert_eq!((only.range, only.count, only.nonfinite, only.absmax()), (0.0, 0, 1, 0.0));
    }

    #[test]
    fn all_zero_input_keeps_range_zero() {
        let mut h = hist(&[0.0; 10]);
        assert_eq!((h.range, h.count, h.zeros, h.absmax(), h.bin_width()), (0.0, 10, 10, 0.0, 0.0));
        h.observe(&[3.0]);
        assert_eq!((h.range, h.bins[BINS / 2], h.zeros), (4.0, 10, 10));
        assert_eq!(h, hist(&[&[3.0][..], &[0.0; 10]].concat()));
    }

    #[test]
    fn serde_round_trip_is_sparse() {
        let h = hist(&[1.0, -0.3, 0.0, 7.5, f32::NAN]);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.len() < 300, "{json}");
        assert_eq!(serde_json::from_str::<ActivationHistogram>(&json).unwrap(), h);
        let empty = ActivationHistogram::new();
        assert_eq!(
            serde_json::from_str::<ActivationHistogram>(&serde_json::to_string(&empty).unwrap()).unwrap(),
            empty
        );
        let bad = json.replace("\"range\":8.0", "\"range\":6.0");
        assert!(serde_json::from_str::<ActivationHistogram>(&bad).is_err());
    }
}
