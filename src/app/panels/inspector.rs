//! The inspector: histograms, scales and statistics of the focused layer's main tensor. The histograms are counted
//! by a worker job when the layer is first shown (the state asks for them); until they arrive the panel says so.

use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{Bar, BarChart, Line, Plot, PlotPoints, VLine};

use super::{axes, format};
use crate::app::StudioApp;
use crate::app::state::Command;
use crate::quant::pass::GroupScales;
use crate::quant::{Precision, TensorAnalysis, TensorHistograms};
use crate::stats::Histogram;

/// The right-hand panel.
pub fn inspector(ui: &mut egui::Ui, app: &mut StudioApp) {
    egui::Panel::right("inspector").resizable(true).default_size(300.0).min_size(240.0).show(ui, |ui| {
        // A right margin keeps the plots' last tick labels clear of the scroll bar.
        egui::ScrollArea::vertical().show(ui, |ui| {
            egui::Frame::new().inner_margin(egui::Margin { right: 12, ..Default::default() }).show(ui, |ui| {
                inspector_ui(ui, app);
            });
        });
    });
}

fn inspector_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    ui.heading("Inspector");
    let (Some(model), Some(layer)) = (app.studio.model.clone(), app.studio.table.focus) else {
        ui.label("Click a layer to inspect it.");
        return;
    };
    if layer.0 >= model.layers.len() {
        return;
    }
    let info = model.layer(layer);
    ui.label(RichText::new(&info.name).strong());
    let precision = app.studio.plan().layer(layer);
    ui.label(format!("{} · planned {}", info.kind.as_str(), precision));
    for tensor in &info.tensors {
        let t = model.tensor(*tensor);
        super::hint(ui, format!("{} {} {}", t.name, t.dtype, format::shape(&t.shape)));
    }
    super::calibration::input_section(ui, app, layer);
    gptq_section(ui, app, &model, layer);
    let Some(analysis) = app.studio.layer_analysis(layer).cloned() else {
        if model.main_tensor(layer).is_some() {
            ui.label("Computing...");
        } else {
            ui.label("No float tensor: kept as stored.");
        }
        return;
    };
    ui.separator();
    stats_grid(ui, &analysis);
    ui.separator();
    let log = app.studio.prefs.log_counts;
    ui.horizontal(|ui| {
        ui.label(RichText::new("Weights").strong());
        ui.checkbox(&mut app.studio.prefs.log_counts, "log counts");
    });
    match app.studio.layer_histograms(layer).cloned() {
        Some(histograms) => {
            value_plot(ui, &analysis, &histograms, log);
            ui.label(RichText::new("Error (x - dequantized x)").strong());
            histogram_plot(ui, "error-histogram", &histograms.error, log, ERROR_COLOR, &[], "error (weight units)");
            if let Some(groups) = &histograms.group_scales {
                group_scales_plot(ui, groups);
            }
        }
        None if app.studio.layer_histograms_stopped(layer) => {
            ui.horizontal(|ui| {
                ui.label("Histograms not computed (their job was cancelled or failed).");
                if ui.button("Compute histograms").clicked() {
                    app.studio.apply(Command::ComputeHistograms);
                }
            });
        }
        None => {
            ui.label("Computing histograms...");
        }
    }
    scales_plot(ui, &analysis);
}

/// What GPTQ bought this layer: rounding's and GPTQ's output error on the calibration inputs.
fn gptq_section(ui: &mut egui::Ui, app: &StudioApp, model: &crate::model::Model, layer: crate::model::LayerId) {
    let Some(gptq) = model.main_tensor(layer).and_then(|t| app.studio.plan().gptq_tensor(model, t)) else { return };
    ui.separator();
    ui.label(RichText::new("GPTQ").strong());
    ui.label(format!(
        "output error ||WX - QX||^2 / ||WX||^2 (Q: the quantized weight): {} rounded to nearest, {} with GPTQ ({:.1}x lower)",
        format::sci(gptq.rtn_output_error),
        format::sci(gptq.gptq_output_error),
        if gptq.gptq_output_error > 0.0 { gptq.rtn_output_error / gptq.gptq_output_error } else { f64::INFINITY }
    ));
    super::hint(
        ui,
        format!(
            "on {} calibration rows, damp {}%{}; the weight figures and histograms below are round to nearest's",
            gptq.rows_seen,
            gptq.options.damp_percent,
            if gptq.options.act_order { ", act-order" } else { "" }
        ),
    );
}

const VALUE_COLOR: Color32 = Color32::from_rgb(120, 170, 230);
const ERROR_COLOR: Color32 = Color32::from_rgb(230, 140, 80);
const RANGE_COLOR: Color32 = Color32::from_rgb(90, 160, 240);
const SCALE_COLOR: Color32 = Color32::from_rgb(160, 200, 120);

/// The step of every output channel's grid (one point per channel: the plot's work is proportional to the
/// channels, as drawn).
fn scales_plot(ui: &mut egui::Ui, a: &TensorAnalysis) {
    let count = match a.precision {
        Precision::Fp8(_) => a.fp8_scales.len(),
        _ => a.group_params.len(),
    };
    if count <= 1 {
        return;
    }
    ui.label(RichText::new(format!("Per-channel scales ({count} channels)")).strong());
    let points: PlotPoints = match a.precision {
        Precision::Fp8(_) => a.fp8_scales.iter().enumerate().map(|(i, &s)| [i as f64, s as f64]).collect(),
        _ => a.group_params.iter().enumerate().map(|(i, p)| [i as f64, p.scale as f64]).collect(),
    };
    let y_title = match a.precision {
        Precision::Fp8(_) => "scale",
        _ => "scale (step)",
    };
    let plot = Plot::new("scales").height(150.0).allow_scroll(false).include_y(0.0);
    axes::titled(plot, "output channel", y_title).show(ui, |plot| {
        plot.line(Line::new("scale", points).color(SCALE_COLOR));
    });
}

/// Group-wise INT4: the largest group scale of every output channel (one point per channel).
fn group_scales_plot(ui: &mut egui::Ui, groups: &GroupScales) {
    let count = groups.row_max.len();
    ui.label(RichText::new(format!("Largest group scale per output channel ({count} channels)")).strong());
    let points: PlotPoints = groups.row_max.iter().enumerate().map(|(i, &s)| [i as f64, s as f64]).collect();
    let plot = Plot::new("group-scales").height(150.0).allow_scroll(false).include_y(0.0);
    axes::titled(plot, "output channel", "scale (step)").show(ui, |plot| {
        plot.line(Line::new("largest group scale", points).color(SCALE_COLOR));
    });
}

fn stats_grid(ui: &mut egui::Ui, a: &TensorAnalysis) {
    // Three significant digits (the full value is on hover): four columns fit the narrowest inspector.
    let value = |ui: &mut egui::Ui, v: f64| {
        ui.label(format::sci(v)).on_hover_text(format!("{v:e}"));
    };
    egui::Grid::new("stats").num_columns(4).spacing([10.0, 2.0]).show(ui, |ui| {
        let s = &a.stats;
        ui.label("min");
        value(ui, s.min as f64);
        ui.label("max");
        value(ui, s.max as f64);
        ui.end_row();
        ui.label("mean");
        value(ui, s.mean);
        ui.label("std");
        value(ui, s.std);
        ui.end_row();
        ui.label("absmax");
        value(ui, s.absmax as f64);
        ui.label("NaN / inf");
        ui.label(format!("{} / {}", s.nan_count, s.inf_count));
        ui.end_row();
        ui.label("MSE").on_hover_text("Mean of (x - dequantized x)² over finite values");
        ui.label(format::sci(a.error.mse));
        ui.label("max |e|").on_hover_text("Largest absolute error");
        ui.label(format::sci(a.error.max_abs_error));
        ui.end_row();
        ui.label("SQNR").on_hover_text("10·log10(Σx² / Σe²); null (lossless) when the error is zero");
        ui.label(RichText::new(format::db(a.error.sqnr_db)).color(super::sqnr_color(a.error.sqnr_db)));
        ui.label("saturated").on_hover_text("Finite values outside the precision's range");
        ui.label(format::thousands(a.error.saturated_count));
        ui.end_row();
    });
}

fn value_plot(ui: &mut egui::Ui, a: &TensorAnalysis, h: &TensorHistograms, log: bool) {
    let (value_lo, value_hi) = (h.value.lo, h.value.hi);
    let mut marks = Vec::new();
    if let Precision::Int8(scheme) = a.precision
        && let Some(largest) = a.group_params.iter().max_by(|x, y| x.scale.total_cmp(&y.scale))
    {
        let lo = (largest.qmin - largest.zero_point) as f64 * largest.scale as f64;
        let hi = (largest.qmax - largest.zero_point) as f64 * largest.scale as f64;
        marks.push(VLine::new("INT8 range", lo).color(RANGE_COLOR));
        marks.push(VLine::new("INT8 range", hi).color(RANGE_COLOR));
        let per = if a.group_params.len() > 1 { "largest channel" } else { "tensor" };
        super::hint(
            ui,
            format!(
                "INT8 grid step {} ({per}); range [{lo:.3e}, {hi:.3e}]{}",
                format::sci(largest.scale as f64),
                if scheme.symmetric { "" } else { ", asymmetric" }
            ),
        );
        // Grid lines at every code, when they are far enough apart to be seen.
        let span = value_hi - value_lo;
        if a.group_params.len() == 1 && span / (largest.scale as f64) < 64.0 {
            for q in largest.qmin..=largest.qmax {
                let x = (q - largest.zero_point) as f64 * largest.scale as f64;
                if x >= value_lo && x <= value_hi {
                    marks.push(VLine::new("INT8 grid", x).color(Color32::from_rgba_unmultiplied(90, 160, 240, 60)));
                }
            }
        }
    }
    if let (Precision::Int4(scheme), Some(groups)) = (a.precision, &h.group_scales) {
        // One grid per group: the spread of the steps is said and, when symmetric (every grid centred on 0), the
        // median group's range drawn.
        if scheme.symmetric {
            let (lo, hi) = (-8.0 * groups.median as f64, 7.0 * groups.median as f64);
            marks.push(VLine::new("INT4 range of the median group", lo).color(RANGE_COLOR));
            marks.push(VLine::new("INT4 range of the median group", hi).color(RANGE_COLOR));
        }
        super::hint(
            ui,
            format!(
                "INT4 groups of {}: step min {}, median {}, max {}{}",
                groups.group_size,
                format::sci(groups.min as f64),
                format::sci(groups.median as f64),
                format::sci(groups.max as f64),
                if scheme.symmetric {
                    "; lines: the median group's range"
                } else {
                    " (asymmetric: each group its own offset)"
                }
            ),
        );
    }
    if let Precision::Fp8(_) = a.precision
        && let Some(&scale) = a.fp8_scales.iter().max_by(|x, y| x.total_cmp(y))
    {
        fp8_grid(ui, a, (value_lo, value_hi), scale as f64, &mut marks);
    }
    if !marks.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new("bars: weights").color(VALUE_COLOR));
            ui.label(RichText::new("lines: the grid's range (faint: its codes)").color(RANGE_COLOR));
        });
    }
    histogram_plot(ui, "value-histogram", &h.value, log, VALUE_COLOR, &marks, "weight value");
}

/// The E4M3 grid times `scale` (the largest channel's): the range marks, and a line at every code inside the
/// histogram's range. The grid is not uniform: its step doubles with every binade, from `2^-9 · scale` near zero to
/// `32 · scale` at the top.
fn fp8_grid(ui: &mut egui::Ui, a: &TensorAnalysis, (lo, hi_edge): (f64, f64), scale: f64, marks: &mut Vec<VLine>) {
    use crate::quant::fp8::{E4M3_MAX, E4M3_SUBNORMAL_STEP, e4m3_to_f32};
    let hi = E4M3_MAX as f64 * scale;
    marks.push(VLine::new("FP8 range", -hi).color(RANGE_COLOR));
    marks.push(VLine::new("FP8 range", hi).color(RANGE_COLOR));
    let per = if a.fp8_scales.len() > 1 { "largest channel" } else { "tensor" };
    super::hint(
        ui,
        format!(
            "FP8 E4M3 grid ({per}): range ±{hi:.3e}; step {} near 0, {} at the top",
            format::sci(E4M3_SUBNORMAL_STEP as f64 * scale),
            format::sci(32.0 * scale)
        ),
    );
    for code in 0..=u8::MAX {
        let x = e4m3_to_f32(code) as f64 * scale;
        if x.is_finite() && x >= lo && x <= hi_edge {
            marks.push(VLine::new("FP8 grid", x).color(Color32::from_rgba_unmultiplied(90, 160, 240, 50)));
        }
    }
}

/// A histogram as bars (its bins, already computed), with the range marks, round ticks and axis titles; no legend
/// over the data (the key is written above the plot).
fn histogram_plot(
    ui: &mut egui::Ui,
    id: &str,
    h: &Histogram,
    log: bool,
    color: Color32,
    marks: &[VLine],
    x_title: &str,
) {
    let width = h.bin_width();
    let bars: Vec<Bar> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let height = if log { (c as f64 + 1.0).log10() } else { c as f64 };
            Bar::new(h.bin_center(i), height).width(width).fill(color)
        })
        .collect();
    let y_title = if log { "log10(count + 1)" } else { "count" };
    let plot = Plot::new(id).height(160.0).allow_scroll(false);
    axes::titled(plot, x_title, y_title).show(ui, |plot| {
        plot.bar_chart(BarChart::new(y_title, bars).color(color));
        for mark in marks {
            plot.vline(mark.clone());
        }
    });
}
