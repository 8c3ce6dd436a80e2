//! Axes of the window's plots: labelled ticks at round values a label's width apart whatever the range (egui_plot's
//! default grid labels only powers of ten, so a ±0.05 histogram in a 280 px panel showed a single "0"), and tick
//! labels that stay short: fixed decimals for ordinary magnitudes, scientific notation for tiny or huge ones.

use std::ops::RangeInclusive;

use eframe::egui;
use egui_plot::{AxisHints, GridInput, GridMark, Plot};

/// Least points between labelled ticks on an x axis (labels such as `-0.04` or `2.5e-4` are 30 to 45 points wide;
/// egui_plot's default of 60 left a 280-point inspector plot with one or two labels).
pub const X_TICKS_PX: f64 = 50.0;
/// Least points between labelled ticks on a y axis.
pub const Y_TICKS_PX: f64 = 30.0;
/// egui_plot's smallest grid spacing in points: [`GridInput::base_step_size`] is that many points in plot units.
const GRID_MIN_PX: f64 = 8.0;
/// Thin grid lines between two labelled ticks.
const MINOR_PER_MAJOR: i64 = 5;
/// More marks than this is a degenerate range; none are drawn.
const MAX_MARKS: f64 = 2000.0;

/// `plot` with round ticks on both axes and the axis titles `x_title` and `y_title` (with their units).
pub fn titled<'a>(plot: Plot<'a>, x_title: &str, y_title: &str) -> Plot<'a> {
    plot.custom_x_axes(vec![x_axis(x_title)])
        .custom_y_axes(vec![y_axis(y_title)])
        .x_grid_spacer(spacer(X_TICKS_PX))
        .y_grid_spacer(spacer(Y_TICKS_PX))
}

/// An x axis titled `title` whose labels show from [`X_TICKS_PX`] apart.
pub fn x_axis(title: &str) -> AxisHints<'static> {
    AxisHints::new_x()
        .label(egui::RichText::new(title).strong())
        .formatter(tick_label)
        .label_spacing((X_TICKS_PX as f32 - 10.0)..=X_TICKS_PX as f32)
}

/// A y axis titled `title` whose labels show from [`Y_TICKS_PX`] apart.
pub fn y_axis(title: &str) -> AxisHints<'static> {
    AxisHints::new_y()
        .label(egui::RichText::new(title).strong())
        .formatter(tick_label)
        .label_spacing((Y_TICKS_PX as f32 - 10.0)..=Y_TICKS_PX as f32)
}

/// The smallest 1, 2 or 5 × 10^k not below `step` (`step` > 0).
pub fn nice_step(step: f64) -> f64 {
    let power = 10f64.powf(step.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|s| *s >= step * (1.0 - 1e-9)).unwrap_or(10.0 * power)
}

/// A grid spacer whose labelled ticks sit at a round step at least `spacing_px` points apart, with thin lines at
/// a fifth of the step between them.
pub fn spacer(spacing_px: f64) -> impl Fn(GridInput) -> Vec<GridMark> {
    move |input: GridInput| {
        let (lo, hi) = input.bounds;
        if !(input.base_step_size > 0.0 && lo.is_finite() && hi.is_finite() && hi > lo) {
            return Vec::new();
        }
        let points_per_unit = GRID_MIN_PX / input.base_step_size;
        let step = nice_step(spacing_px / points_per_unit);
        let minor = step / MINOR_PER_MAJOR as f64;
        let (first, last) = ((lo / minor).ceil(), (hi / minor).floor());
        // Also false for NaN: no marks then either.
        let countable = last - first < MAX_MARKS;
        if !countable {
            return Vec::new();
        }
        (first as i64..=last as i64)
            .map(|k| GridMark {
                value: k as f64 * minor,
                step_size: if k % MINOR_PER_MAJOR == 0 { step } else { minor },
            })
            .collect()
    }
}

/// The label of a tick: as many decimals as its step needs (`0.04`, `1.5`, `300`, `0.9995`), or scientific
/// notation when the axis's values are below 0.001 or from 100,000 in magnitude (`2.5e-4`, `1.2e6`), so that one
/// axis keeps one notation.
pub fn tick_label(mark: GridMark, range: &RangeInclusive<f64>) -> String {
    let (value, step) = (mark.value, mark.step_size.abs());
    if value.abs() < step * 1e-6 {
        return "0".into();
    }
    let magnitude = range.start().abs().max(range.end().abs());
    if !(1e-3..1e5).contains(&magnitude) {
        return format!("{value:.1e}");
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(bounds: (f64, f64), width_px: f64, spacing_px: f64) -> Vec<GridMark> {
        let base_step_size = (bounds.1 - bounds.0) / width_px * GRID_MIN_PX;
        spacer(spacing_px)(GridInput { bounds, base_step_size })
    }

    #[test]
    fn a_small_symmetric_range_gets_several_labelled_ticks() {
        let marks = marks((-0.05, 0.05), 280.0, X_TICKS_PX);
        let labelled: Vec<String> =
            marks.iter().filter(|m| m.step_size > 0.02 - 1e-12).map(|m| tick_label(*m, &(-0.05..=0.05))).collect();
        assert_eq!(labelled, ["-0.04", "-0.02", "0", "0.02", "0.04"]);
        // Labelled ticks are at least the spacing apart on screen.
        let points_per_unit = 280.0 / 0.1;
        assert!(0.02 * points_per_unit >= X_TICKS_PX);
    }

    #[test]
    fn steps_are_round_and_labels_short() {
        assert_eq!(nice_step(0.013), 0.02);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.0), 1.0);
        let label = |value, step_size, hi: f64| tick_label(GridMark { value, step_size }, &(-hi..=hi));
        assert_eq!(label(0.0004, 0.0002, 0.0005), "4.0e-4");
        assert_eq!(label(1.5, 0.5, 2.0), "1.5");
        assert_eq!(label(300.0, 100.0, 400.0), "300");
        assert_eq!(label(2e6, 1e6, 3e6), "2.0e6");
        assert_eq!(label(1e-17, 0.01, 0.05), "0");
        // A narrow range far from zero (mean cosines): fixed decimals that tell the ticks apart.
        assert_eq!(label(0.9995, 0.0005, 1.0), "0.9995");
    }

    #[test]
    fn degenerate_ranges_draw_no_marks() {
        assert!(spacer(X_TICKS_PX)(GridInput { bounds: (1.0, 1.0), base_step_size: 0.0 }).is_empty());
        assert!(spacer(X_TICKS_PX)(GridInput { bounds: (f64::NAN, 1.0), base_step_size: 0.1 }).is_empty());
    }
}
