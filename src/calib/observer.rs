//! [`Observer`]s: the rules that pick a symmetric clipping value `c` from an [`ActivationHistogram`]; the
//! activation is then quantized symmetric INT8 with `scale = c / 127`.
//!
//! All of them work on the folded `|x|` histogram `h[0..N]` (`N = BINS/2`, bin width `w`, `T` finite values) and
//! return `min(candidate, absmax)`; an histogram without a nonzero finite value gives 0.
//!
//! ```text
//! min-max        c = absmax
//! percentile p   c = (j + 1) w, j the smallest index with sum(h[0..=j]) >= p/100 * T
//! mse            c = argmin clip_error(c).mse over c = (k + 1) w (k < last nonempty bin) and c = absmax
//! entropy        c = i w, i = entropy_threshold_bins(h, 128)   (TensorRT KL calibration)
//! ```

use std::fmt;

use super::histogram::ActivationHistogram;

/// The percentiles offered by default.
pub const DEFAULT_PERCENTILES: [f64; 2] = [99.9, 99.99];
/// Quantized levels of the entropy observer (the positive half of INT8).
pub const ENTROPY_LEVELS: usize = 128;
/// Smoothing added to the empty bins of P and Q before the KL divergence (ONNX Runtime's `smooth_distribution`).
pub const SMOOTHING_EPS: f64 = 1e-4;

/// How a symmetric clipping value is chosen from a histogram.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "observer", rename_all = "snake_case")]
pub enum Observer {
    /// The largest finite `|x|`.
    MinMax,
    /// The `percentile`-th percentile of `|x|`, rounded up to a bin edge; `percentile` in (0, 100].
    Percentile {
        /// In percent.
        percentile: f64,
    },
    /// The clip with the smallest expected squared error (see [`clip_error`]).
    Mse,
    /// The clip with the smallest KL divergence between `|x|` and its 128-level quantization.
    Entropy,
}

impl Observer {
    /// The clipping value, in `[0, absmax]`; 0 when the histogram holds no nonzero finite value.
    pub fn clip(&self, h: &ActivationHistogram) -> f32 {
        let absmax = h.absmax();
        if absmax == 0.0 {
            return 0.0;
        }
        let width = h.bin_width();
        let clip = match *self {
            Observer::MinMax => absmax,
            Observer::Percentile { percentile } => {
                let target = percentile / 100.0 * h.count as f64;
                let folded = h.folded();
                let mut cumulative = 0u64;
                // A NaN or out-of-range percentile finds no bin and falls back to absmax.
                let j = folded
                    .iter()
                    .position(|&c| {
                        cumulative += c;
                        cumulative as f64 >= target
                    })
                    .unwrap_or(folded.len());
                (j + 1) as f32 * width
            }
            Observer::Mse => mse_clip(h, absmax),
            Observer::Entropy => entropy_threshold_bins(&h.folded(), ENTROPY_LEVELS) as f32 * width,
        };
        clip.min(absmax)
    }

    /// A short name: "min-max", "percentile 99.99", "mse", "entropy".
    pub fn label(&self) -> String {
        match self {
            Observer::MinMax => "min-max".to_string(),
            Observer::Percentile { percentile } => format!("percentile {percentile}"),
            Observer::Mse => "mse".to_string(),
            Observer::Entropy => "entropy".to_string(),
        }
    }

    /// Parses "minmax", "min-max", "percentile" (99.99), "percentile:P" (or the label "percentile P"), "mse",
    /// "entropy"; P must be in (0, 100].
    pub fn parse(s: &str) -> Result<Observer, String> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "minmax" | "min-max" => return Ok(Observer::MinMax),
            "percentile" => return Ok(Observer::Percentile { percentile: 99.99 }),
            "mse" => return Ok(Observer::Mse),
            "entropy" => return Ok(Observer::Entropy),
            _ => {}
        }
        let Some(p) = lower.strip_prefix("percentile").and_then(|p| p.strip_prefix([':', ' '])) else {
            return Err(format!("unknown observer `{s}`: expected min-max, percentile[:P], mse or entropy"));
        };
        match p.trim().parse::<f64>() {
            Ok(percentile) if percentile > 0.0 && percentile <= 100.0 => Ok(Observer::Percentile { percentile }),
            _ => Err(format!("percentile `{p}` is not a number in (0, 100]")),
        }
    }
}

impl fmt::Display for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// The expected error of symmetric INT8 with a given clip, from the histogram (see [`clip_error`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ClipError {
    /// Expected squared error per finite value.
    pub mse: f64,
    /// `10 log10(signal / error)`; `None` when the error is 0.
    pub sqnr_db: Option<f64>,
    /// Fraction of the finite values whose bin centre lies above the clip.
    pub clipped_fraction: f64,
}

/// The folded `|x|` counts without the exact zeros (they cost nothing: 0 is exact in a symmetric scheme).
fn nonzero_counts(h: &ActivationHistogram) -> Vec<u64> {
    let mut counts = h.folded();
    counts[0] -= h.zeros;
    counts
}

/// The clip a layer's input runs at, the one rule for it: a clip set by hand (or brought by a recipe) wins;
/// otherwise the observer's clip, when calibration observed the layer (`observed` computes it); otherwise none.
pub fn chosen_clip(hand_set: Option<f32>, observed: impl FnOnce() -> Option<f32>) -> Option<f32> {
    hand_set.or_else(observed)
}

/// The error of symmetric INT8 at `clip`, with `Δ = clip / 127` and bin centres `m_j = (j + 0.5) w`: a bin with
/// `m_j <= clip` costs `h_j Δ²/12` (uniform rounding noise), one with `m_j > clip` costs `h_j (m_j - clip)²`;
/// exact zeros cost 0. `mse` = that sum / count; the signal is `Σ h_j m_j²`. All in f64; O(N).
pub fn clip_error(h: &ActivationHistogram, clip: f32) -> ClipError {
    let width = h.bin_width() as f64;
    let clip = clip as f64;
    let rounding = (clip / 127.0).powi(2) / 12.0;
    let (mut error, mut signal, mut clipped) = (0.0f64, 0.0f64, 0u64);
    for (j, &count) in nonzero_counts(h).iter().enumerate() {
        let centre = (j as f64 + 0.5) * width;
        signal += count as f64 * centre * centre;
        if centre <= clip {
            error += count as f64 * rounding;
        } else {
            error += count as f64 * (centre - clip).powi(2);
            clipped += count;
        }
    }
    let total = h.count.max(1) as f64;
    ClipError {
        mse: error / total,
        sqnr_db: (error > 0.0).then(|| 10.0 * (signal / error).log10()),
        clipped_fraction: clipped as f64 / total,
    }
}

/// The Mse observer in O(N): grid clips `c = (k + 1) w` cost `inside(k) Δ²/12 + Σ_{j > k} h_j (m_j - c)²`, the
/// second term from suffix sums of `h`, `h t`, `h t²` with `t = 2j + 1` (half bin widths, exact in u128).
fn mse_clip(h: &ActivationHistogram, absmax: f32) -> f32 {
    let counts = nonzero_counts(h);
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let mut suffix = vec![[0u128; 3]; counts.len() + 1];
    for j in (0..counts.len()).rev() {
        let (c, t) = (counts[j] as u128, 2 * j as u128 + 1);
        let [s0, s1, s2] = suffix[j + 1];
        suffix[j] = [s0 + c, s1 + c * t, s2 + c * t * t];
    }
    let width = h.bin_width() as f64;
    let total = h.count as f64;
    let mut best = (f64::INFINITY, absmax);
    // Every grid clip below the last nonempty bin is <= absmax; the last one is replaced by absmax itself.
    for k in 0..last {
        let [s0, s1, s2] = suffix[k + 1];
        let t_clip = 2 * (k as u128 + 1);
        let outside = (s2 + t_clip * t_clip * s0 - 2 * t_clip * s1) as f64 * (width / 2.0).powi(2);
        let inside = (suffix[0][0] - s0) as f64;
        let clip = (k + 1) as f64 * width;
        let mse = (inside * (clip / 127.0).powi(2) / 12.0 + outside) / total;
        if mse < best.0 {
            best = (mse, (k + 1) as f32 * width as f32);
        }
    }
    if clip_error(h, absmax).mse < best.0 { absmax } else { best.1 }
}

/// The KL divergence of TensorRT's entropy calibration for a threshold of `i` bins of `h` (needs
/// `levels <= i <= h.len()`, else +inf):
///
/// - `P = h[0..i]`, with `sum(h[i..])` added to `P[i-1]`;
/// - `Q`: `levels` groups of `i / levels` bins (the last one extends to `i`); `Q[j]` = the group's sum of `h` over
///   its number of nonzero `P[j]`, for nonzero `P[j]`, else 0;
/// - both normalised to sum 1, then smoothed: `eps` added to zero entries, `eps * zeros / nonzeros` subtracted from
///   the others (+inf if one becomes <= 0);
/// - `Σ P_j ln(P_j / Q_j)` over `P_j > 0`.
pub fn entropy_kl(h: &[u64], i: usize, levels: usize) -> f64 {
    kl_into(h, i, levels, &mut Vec::new(), &mut Vec::new())
}

fn kl_into(h: &[u64], i: usize, levels: usize, p: &mut Vec<f64>, q: &mut Vec<f64>) -> f64 {
    if levels == 0 || i < levels || i > h.len() {
        return f64::INFINITY;
    }
    p.clear();
    p.extend(h[..i].iter().map(|&c| c as f64));
    p[i - 1] += h[i..].iter().sum::<u64>() as f64;
    q.clear();
    q.resize(i, 0.0);
    let merged = i / levels;
    for g in 0..levels {
        let start = g * merged;
        let end = if g + 1 == levels { i } else { start + merged };
        let nonzero = p[start..end].iter().filter(|&&x| x > 0.0).count();
        if nonzero > 0 {
            let value = h[start..end].iter().sum::<u64>() as f64 / nonzero as f64;
            q[start..end].iter_mut().zip(&p[start..end]).filter(|(_, x)| **x > 0.0).for_each(|(q, _)| *q = value);
        }
    }
    if !normalise_and_smooth(p) || !normalise_and_smooth(q) {
        return f64::INFINITY;
    }
    p.iter().zip(q.iter()).filter(|(p, _)| **p > 0.0).map(|(p, q)| p * (p / q).ln()).sum()
}

/// Scales `d` to sum 1 and smooths it; false when it is all zero or the smoothing leaves an entry <= 0.
fn normalise_and_smooth(d: &mut [f64]) -> bool {
    let sum: f64 = d.iter().sum();
    let zeros = d.iter().filter(|&&x| x == 0.0).count();
    let nonzeros = d.len() - zeros;
    if sum <= 0.0 || nonzeros == 0 {
        return false;
    }
    let taken = SMOOTHING_EPS * zeros as f64 / nonzeros as f64;
    for x in d.iter_mut() {
        *x = if *x == 0.0 { SMOOTHING_EPS } else { *x / sum - taken };
    }
    d.iter().all(|&x| x > 0.0)
}

/// The threshold `i` (in bins) with the smallest [`entropy_kl`] over `i` in `levels..=n` (first on ties), with `n`
/// the index of the last nonempty bin + 1; `n` itself when `n <= levels` or every divergence is +inf.
pub fn entropy_threshold_bins(h: &[u64], levels: usize) -> usize {
    let n = h.iter().rposition(|&c| c > 0).map_or(0, |j| j + 1);
    if n <= levels {
        return n;
    }
    let (mut p, mut q) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut best = (f64::INFINITY, n);
    for i in levels..=n {
        let kl = kl_into(h, i, levels, &mut p, &mut q);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_set_clip_wins_over_the_observer_and_nothing_observed_gives_none() {
        assert_eq!(chosen_clip(Some(2.5), || Some(7.0)), Some(2.5));
        assert_eq!(chosen_clip(None, || Some(7.0)), Some(7.0));
        assert_eq!(chosen_clip(None, || None), None);
    }

    /// Samples of the known distributions: quantiles `F⁻¹((k + 0.5) / K)`.
    const SAMPLES: usize = 200_000;
    /// The spacing of the |x| samples of Laplace(1) near its 99.9th percentile (`1 / (K e^-6.9)` ≈ 0.005) plus one
    /// bin width (2^-8): how far the empirical percentile may sit from the closed form.
    const LAPLACE_QUANTILE_TOL: f32 = 0.01;
    /// The Mse clip on Laplace(1) against the minimum of the continuous error model.
    const MSE_REL_TOL: f64 = 0.02;

    fn quantiles(inverse_cdf: impl Fn(f64) -> f64) -> Vec<f32> {
        (0..SAMPLES).map(|k| inverse_cdf((k as f64 + 0.5) / SAMPLES as f64) as f32).collect()
    }
    fn uniform() -> Vec<f32> {
        quantiles(|u| 2.0 * u - 1.0)
    }
    fn laplace() -> Vec<f32> {
        quantiles(|u| if u < 0.5 { (2.0 * u).ln() } else { -(2.0 * (1.0 - u)).ln() })
    }
    fn hist(values: &[f32]) -> ActivationHistogram {
        let mut h = ActivationHistogram::new();
        h.observe(values);
        h
    }
    /// The value of rank `ceil(p/100 K)` among the sorted |x|.
    fn empirical_percentile(values: &[f32], p: f64) -> f32 {
        let mut abs: Vec<f32> = values.iter().map(|x| x.abs()).collect();
        abs.sort_by(f32::total_cmp);
        abs[(p / 100.0 * abs.len() as f64).ceil() as usize - 1]
    }
    const ALL: [Observer; 5] = crate::calib::view::STANDARD_OBSERVERS;

    #[test]
    fn labels_parse_and_serde() {
        for o in ALL {
            assert_eq!(Observer::parse(&o.label()), Ok(o));
            assert_eq!(o.to_string(), o.label());
            assert_eq!(serde_json::from_str::<Observer>(&serde_json::to_string(&o).unwrap()).unwrap(), o);
        }
        assert_eq!(Observer::parse("minmax"), Ok(Observer::MinMax));
        assert_eq!(Observer::parse("percentile"), Ok(Observer::Percentile { percentile: 99.99 }));
        assert_eq!(Observer::parse("percentile:99.9"), Ok(Observer::Percentile { percentile: 99.9 }));
        assert_eq!(Observer::parse("percentile:100"), Ok(Observer::Percentile { percentile: 100.0 }));
        for bad in ["percentile:0", "percentile:100.5", "percentile:x", "percentile:nan", "max", ""] {
            assert!(Observer::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Observer::Percentile { percentile: 99.99 }.label(), "percentile 99.99");
        assert_eq!(serde_json::to_string(&Observer::MinMax).unwrap(), r#"{"observer":"min_max"}"#);
    }

    #[test]
    fn empty_and_zero_histograms_clip_to_zero() {
        for o in ALL {
            assert_eq!(o.clip(&ActivationHistogram::new()), 0.0);
            assert_eq!(o.clip(&hist(&[0.0; 100])), 0.0);
            assert_eq!(o.clip(&hist(&[f32::NAN, -0.0])), 0.0);
        }
    }

    #[test]
    fn nonfinite_values_change_no_clip() {
        let clean = laplace();
        let mut dirty = clean.clone();
        dirty.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        let (a, b) = (hist(&clean), hist(&dirty));
        for o in ALL {
            assert_eq!(o.clip(&a), o.clip(&b), "{o}");
            assert!((0.0..=a.absmax()).contains(&o.clip(&a)), "{o}");
        }
    }

    #[test]
    fn min_max_is_absmax() {
        let values = laplace();
        let absmax = values.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert_eq!(Observer::MinMax.clip(&hist(&values)), absmax);
        assert_eq!(Observer::MinMax.clip(&hist(&[-3.0, 0.5])), 3.0);
    }

    #[test]
    fn percentiles_of_uniform_and_laplace() {
        let values = uniform();
        let h = hist(&values);
        let width = h.bin_width();
        for p in DEFAULT_PERCENTILES {
            let clip = Observer::Percentile { percentile: p }.clip(&h);
            assert!((clip - (p / 100.0) as f32).abs() <= width, "uniform p{p}: {clip}");
            let q = empirical_percentile(&values, p);
            assert!(q <= clip && clip <= q + width, "uniform p{p}: {clip} vs {q}");
        }
        let values = laplace();
        let h = hist(&values);
        let clip = Observer::Percentile { percentile: 99.9 }.clip(&h);
        let q = empirical_percentile(&values, 99.9);
        assert!(q <= clip && clip <= q + h.bin_width(), "laplace p99.9: {clip} vs {q}");
        let exact = -(1.0f64 - 0.999).ln() as f32;
        assert!((clip - exact).abs() <= LAPLACE_QUANTILE_TOL, "laplace p99.9: {clip} vs {exact}");
    }

    #[test]
    fn mse_on_uniform_and_laplace() {
        let h = hist(&uniform());
        let clip = Observer::Mse.clip(&h);
        assert!(clip <= h.absmax() && clip >= 0.99 * h.absmax(), "uniform: {clip}");
        // Laplace(1): |x| ~ Exp(1), E(c) = (1 - e^-c) (c/127)^2 / 12 + 2 e^-c, minimised on a fine grid.
        let h = hist(&laplace());
        let clip = Observer::Mse.clip(&h) as f64;
        let model = |c: f64| (1.0 - (-c).exp()) * (c / 127.0).powi(2) / 12.0 + 2.0 * (-c).exp();
        let expected = (1..200_000)
            .map(|i| i as f64 * 1e-4)
            .fold((f64::INFINITY, 0.0), |best, c| if model(c) < best.0 { (model(c), c) } else { best });
        assert!((clip - expected.1).abs() <= MSE_REL_TOL * expected.1, "laplace: {clip} vs {}", expected.1);
        assert!(clip < 0.9 * h.absmax() as f64);
    }

    #[test]
    fn mse_search_matches_brute_force() {
        let mut rng = crate::seeded::XorShift64::from_state(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_unit();
        for round in 0..4 {
            let scale = [1.0, 3.0, 0.01, 100.0][round];
            let values: Vec<f32> = (0..5000)
                .map(
                    |i| if i % 50 == 0 { 0.0 } else { ((next() - 0.5) * next().powi(round as i32 + 1) * scale) as f32 },
                )
                .chain([scale as f32 * 0.7])
                .collect();
            let h = hist(&values);
            let (absmax, width) = (h.absmax(), h.bin_width());
            let last = nonzero_counts(&h).iter().rposition(|&c| c > 0).unwrap();
            let candidates = (0..last).map(|k| (k + 1) as f32 * width).chain([absmax]);
            let mut best = (f64::INFINITY, 0.0f32);
            for c in candidates {
                let mse = clip_error(&h, c).mse;
                if mse < best.0 {
                    best = (mse, c);
                }
            }
            let clip = Observer::Mse.clip(&h);
            let mse = clip_error(&h, clip).mse;
            assert!((mse - best.0).abs() <= 1e-12 * best.0, "round {round}: {clip} ({mse}) vs {} ({})", best.1, best.0);
            assert_eq!(clip, best.1, "round {round}");
        }
    }

    #[test]
    fn clip_error_by_hand() {
        // Range 0.5, w = 2^-13: 0.3 and -0.3 are both in folded bin 2457 (0.3 / w = 2457.6); 0 costs nothing.
        let h = hist(&[0.3, -0.3, 0.0, 0.0]);
        let w = h.bin_width() as f64;
        assert_eq!((h.range, h.folded()[2457]), (0.5, 2));
        let centre = 2457.5 * w;
        let kept = clip_error(&h, 0.5);
        let clipped = clip_error(&h, 0.25);
        assert_eq!(kept.mse, 2.0 * (0.5f64 / 127.0).powi(2) / 12.0 / 4.0);
        assert_eq!(kept.clipped_fraction, 0.0);
        assert_eq!(clipped.mse, 2.0 * (centre - 0.25).powi(2) / 4.0);
        assert_eq!(clipped.clipped_fraction, 0.5);
        let sqnr = 10.0 * (2.0 * centre * centre / (2.0 * (centre - 0.25).powi(2))).log10();
        assert!((clipped.sqnr_db.unwrap() - sqnr).abs() < 1e-12);
        assert_eq!(clip_error(&hist(&[0.0]), 0.0).sqnr_db, None);
    }

    #[test]
    fn entropy_hand_worked() {
        // h = [4, 2, 0, 1, 1], levels 2, n = 5:
        // i=2: P = [4, 2+0+1+1] = [4, 4]; merged 1; Q = [4, 2]; P = [1/2, 1/2], Q = [2/3, 1/3], no zeros:
        //      KL = 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8) = 0.0588915178
        // i=3: P = [4, 2, 0+1+1] = [4, 2, 2]; groups [0], [1, 2]: Q = [4, (2+0)/2, (2+0)/2] = [4, 1, 1];
        //      P = [1/2, 1/4, 1/4], Q = [2/3, 1/6, 1/6]: KL = 1/2 ln(3/4) + 1/2 ln(3/2) = 0.0588915178 again
        // i=4: P = [4, 2, 0, 1+1]; merged 2; groups [0, 1], [2, 3]: Q = [3, 3, 0, (0+1)/1] = [3, 3, 0, 1];
        //      P = [1/2, 1/4, 0, 1/4], Q = [3/7, 3/7, 0, 1/7]; one zero, three nonzeros: +1e-4 on the zero,
        //      -1e-4/3 on the others; KL = 0.0822410044
        // i=5: P = [4, 2, 0, 1, 1]; groups [0, 1], [2, 3, 4]: Q = [3, 3, 0, 1, 1];
        //      P = [1/2, 1/4, 0, 1/8, 1/8], Q = [3/8, 3/8, 0, 1/8, 1/8]; +1e-4 on the zero, -2.5e-5 on the others:
        //      KL = 0.0424777040  <- the smallest: i = 5
        let h = [4, 2, 0, 1, 1];
        let expected = [0.05889151782819174, 0.05889151782819174, 0.08224100438236827, 0.04247770398308917];
        for (i, kl) in (2..=5).zip(expected) {
            assert!((entropy_kl(&h, i, 2) - kl).abs() < 1e-12, "i={i}: {}", entropy_kl(&h, i, 2));
        }
        assert_eq!(entropy_threshold_bins(&h, 2), 5);
        // An outlier far out: clipping it (i = 3) wins. KL by the same steps (python3, i = 2..=9).
        let h = [6, 3, 2, 1, 0, 0, 0, 0, 1];
        let expected = [0.0885125293, 0.0196366221, 0.0476823231, 0.0658027901, 0.1143476752, 0.1143634836];
        for (i, kl) in (2..).zip(expected) {
            assert!((entropy_kl(&h, i, 2) - kl).abs() < 1e-9, "i={i}: {}", entropy_kl(&h, i, 2));
        }
        assert_eq!(entropy_threshold_bins(&h, 2), 3);
        assert_eq!(entropy_threshold_bins(&[3, 1, 0, 0], 2), 2, "n <= levels: n");
        assert_eq!(entropy_kl(&h, 1, 2), f64::INFINITY, "i < levels");
    }

    #[test]
    fn entropy_sanity_bounds() {
        // Sanity bounds only (KL calibration has no closed form): between the 90th percentile and absmax on
        // Laplace(1), near absmax on uniform data.
        let h = hist(&laplace());
        let clip = Observer::Entropy.clip(&h);
        assert!(clip < h.absmax() && clip > 10.0f32.ln(), "laplace: {clip}");
        let h = hist(&uniform());
        assert!(Observer::Entropy.clip(&h) >= 0.9 * h.absmax());
    }
}
