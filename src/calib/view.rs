//! What the window shows of a calibration, computed once on the worker: per layer, the input histogram in display
//! bins and the clip of every standard observer, so that switching observers in the window only looks values up.

use std::collections::BTreeMap;

use super::Calibration;
use super::histogram::{ActivationHistogram, BINS};
use super::observer::Observer;
use crate::model::{LayerId, Model};
use crate::stats::Histogram;

/// Display bins of an activation histogram.
pub const DISPLAY_BINS: usize = 256;

/// The observers the window offers, in menu order.
pub const STANDARD_OBSERVERS: [Observer; 5] = [
    Observer::MinMax,
    Observer::Percentile { percentile: 99.9 },
    Observer::Percentile { percentile: 99.99 },
    Observer::Mse,
    Observer::Entropy,
];

/// One layer's calibrated input.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerActivations {
    /// The full histogram (for the error at any clip).
    pub histogram: ActivationHistogram,
    /// [`DISPLAY_BINS`] bins over `[min, max]` of the finite values.
    pub display: Histogram,
    /// The clip each of [`STANDARD_OBSERVERS`] picks, in that order.
    pub clips: Vec<(Observer, f32)>,
}

impl LayerActivations {
    /// Display bins and observer clips of `histogram`.
    pub fn new(histogram: ActivationHistogram) -> LayerActivations {
        let clips = STANDARD_OBSERVERS.iter().map(|o| (*o, o.clip(&histogram))).collect();
        LayerActivations { display: display_bins(&histogram, DISPLAY_BINS), clips, histogram }
    }

    /// The clip `observer` picks (computed now when it is not a standard one).
    pub fn clip(&self, observer: Observer) -> f32 {
        self.clips.iter().find(|(o, _)| *o == observer).map_or_else(|| observer.clip(&self.histogram), |(_, c)| *c)
    }
}

/// The calibrated layers of `model`, by id, each with its display bins and observer clips.
pub fn layer_activations(model: &Model, calibration: &Calibration) -> BTreeMap<LayerId, LayerActivations> {
    use rayon::prelude::*;
    // The entropy search is the slow one (tens of ms per layer): layers run in parallel.
    let layers: Vec<(&String, &ActivationHistogram)> = calibration.layers.iter().collect();
    layers
        .into_par_iter()
        .filter_map(|(name, h)| Some((model.layer_by_name(name)?, LayerActivations::new(h.clone()))))
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

/// `bins` equal bins over `[min, max]` of the finite values, each source bin counted at its centre (clamped into
/// the span). An empty histogram gives zeros over `[0, 1]`; a constant one a span of ±0.5 around the value.
pub fn display_bins(h: &ActivationHistogram, bins: usize) -> Histogram {
    if h.count == 0 {
        return Histogram { lo: 0.0, hi: 1.0, counts: vec![0; bins] };
    }
    let (mut lo, mut hi) = (h.min as f64, h.max as f64);
    if hi <= lo {
        lo -= 0.5;
        hi += 0.5;
    }
    let mut counts = vec![0u64; bins];
    let width = h.bin_width() as f64;
    let scale = bins as f64 / (hi - lo);
    for (i, &c) in h.bins.iter().enumerate().filter(|(_, c)| **c > 0) {
        let centre = ((i as f64 - (BINS / 2) as f64) + 0.5) * width;
        let x = centre.clamp(lo, hi);
        let slot = (((x - lo) * scale) as usize).min(bins - 1);
        counts[slot] += c;
    }
    Histogram { lo, hi, counts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_bins_keep_every_count_inside_the_value_span() {
        let mut h = ActivationHistogram::new();
        let values: Vec<f32> = (0..1000).map(|i| i as f32 / 100.0 - 3.0).collect();
        h.observe(&values);
        let d = display_bins(&h, 64);
        assert_eq!(d.counts.iter().sum::<u64>(), 1000);
        assert_eq!((d.lo, d.hi), (-3.0, 6.99f32 as f64));
        assert!(d.counts.iter().all(|&c| c > 0), "{:?}", d.counts);
        let empty = display_bins(&ActivationHistogram::new(), 8);
        assert_eq!(empty.counts, vec![0; 8]);
        let view = LayerActivations::new(h);
        assert_eq!(view.clip(Observer::MinMax), 6.99);
        assert_eq!(view.clips.len(), STANDARD_OBSERVERS.len());
    }
}
