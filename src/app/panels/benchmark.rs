//! The benchmark tab of the accuracy panel: FP32 and every plan benchmarked in this session, as deployed, in a
//! table (latency, throughput, memory, size, accuracy) and a chart of accuracy against latency whose marker area
//! is the size on disk, so the trade-off reads at a glance.

use eframe::egui;
use egui::{Color32, RichText};
use egui_extras::{Column, TableBuilder};
use egui_plot::{MarkerShape, Plot, Points};

use super::format;
use crate::app::StudioApp;
use crate::app::state::{BenchEntry, Command};
use crate::worker::JobKind;

/// Points between labelled latency ticks (the chart is wide: fewer, rounder ticks read better).
const BENCH_X_TICKS_PX: f64 = 90.0;
const FP32_COLOR: Color32 = Color32::from_rgb(170, 170, 170);
const PLAN_COLORS: [Color32; 6] = [
    Color32::from_rgb(90, 170, 240),
    Color32::from_rgb(240, 150, 60),
    Color32::from_rgb(120, 200, 120),
    Color32::from_rgb(200, 110, 200),
    Color32::from_rgb(230, 200, 80),
    Color32::from_rgb(235, 90, 80),
];

/// The Benchmark button and Clear, on the panel's header row.
pub fn actions(ui: &mut egui::Ui, app: &mut StudioApp, data: &str) {
    let running = app.studio.jobs().iter().any(|(kind, _, _)| *kind == JobKind::Benchmark);
    let hover = "Time FP32 and the current plan as a deployment runs them (W8A8: INT8 codes and integer products; \
                 other quantized linear layers: FP16/BF16/INT8/FP8/INT4 weights converted tile by tile), batch-1 latency and \
                 batch throughput on synthetic inputs, with the plan's accuracy on the data when a data file is given";
    if ui.add_enabled(!running, egui::Button::new("Benchmark plan")).on_hover_text(hover).clicked() {
        let data = (!data.is_empty()).then(|| data.into());
        app.send(Command::Benchmark { data });
    }
    if !app.studio.results.benchmarks.is_empty()
        && ui.button("Clear").on_hover_text("Forget these benchmarks").clicked()
    {
        app.send(Command::ClearBenchmarks);
    }
}

/// The table, then the chart across the panel's width (the panel scrolls when it is shorter than both).
pub fn results(ui: &mut egui::Ui, app: &mut StudioApp) {
    if app.studio.results.benchmarks.is_empty() {
        ui.label(
            "Benchmark the plan to time it against FP32 (latency, throughput, memory, size, accuracy); every plan \
             benchmarked stays here for comparison.",
        );
        return;
    }
    table(ui, app);
    ui.add_space(6.0);
    // A height from the window, not from the space left in the panel (which would grow the panel frame after
    // frame).
    let height = (ui.ctx().content_rect().height() * 0.25).clamp(170.0, 340.0);
    chart(ui, &app.studio.results.benchmarks, height);
}

fn color(entry: &BenchEntry) -> Color32 {
    match entry.plan {
        None => FP32_COLOR,
        Some(_) => PLAN_COLORS[(entry.number - 1) % PLAN_COLORS.len()],
    }
}

fn label(entry: &BenchEntry) -> String {
    if entry.plan.is_none() { "FP32".into() } else { format!("#{}", entry.number) }
}

fn table(ui: &mut egui::Ui, app: &mut StudioApp) {
    let entries = &app.studio.results.benchmarks;
    let metric = entries.iter().find_map(|e| e.configuration.quality.as_ref().map(|q| q.metric));
    let mut restore = None;
    TableBuilder::new(ui)
        .id_salt("bench-table")
        .striped(true)
        .vscroll(false)
        .cell_layout(egui::Layout::left_to_right(egui::Align::Center))
        .column(Column::exact(100.0))
        .column(Column::initial(170.0).at_least(90.0).clip(true))
        .column(Column::exact(150.0))
        .column(Column::exact(70.0))
        .column(Column::initial(150.0).clip(true))
        .column(Column::exact(150.0))
        .column(Column::initial(150.0).clip(true))
        .column(Column::remainder().at_least(80.0))
        .header(20.0, |mut header| {
            let headers = [
                ("#", "Colour and number of the configuration in the chart; Restore makes a benchmarked plan the current one"),
                ("Configuration", "Layers per precision"),
                ("Latency p50 / p95", "Batch-1 latency in milliseconds: median and 95th percentile of the timed runs"),
                ("Speed-up", "Median latency of the FP32 timed in the same run (in alternation) / this median latency"),
                ("Throughput", "What a larger batch gets through per second"),
                ("Memory / disk", "Weights held in memory while running (f32, half and INT8 buffers) / checkpoint size on disk (as stored for FP32, as exported for a plan)"),
                ("Kernels", "How many layers run integer products (INT8 inputs × INT8 weights, W8A8) and how many hold compact weights (FP16, BF16, INT8 or FP8, converted tile by tile); the other layers run FP32"),
                (metric.unwrap_or("Accuracy"), "The family's figure of merit on the data, measured as deployed"),
            ];
            for (name, hover) in headers {
                header.col(|ui| {
                    ui.strong(name).on_hover_text(hover);
                });
            }
        })
        .body(|mut body| {
            for (index, entry) in entries.iter().enumerate() {
                let c = &entry.configuration;
                let latency = &c.latency;
                body.row(22.0, |mut row| {
                    row.col(|ui| {
                        ui.label(RichText::new(label(entry)).color(color(entry)).strong());
                        if entry.plan.is_some()
                            && ui.small_button("Restore").on_hover_text("Make this plan the current one").clicked()
                        {
                            restore = Some(index);
                        }
                    });
                    row.col(|ui| {
                        let data = entry.data.as_ref().map_or("no accuracy data".into(), |d| format!("data: {}", d.display()));
                        ui.label(&entry.summary).on_hover_text(format!("{}\n{data}", entry.summary));
                    });
                    row.col(|ui| {
                        ui.label(format!(
                            "{} / {}",
                            format::millis(latency.latency_ms_median),
                            format::millis(latency.latency_ms_p95)
                        ))
                        .on_hover_text(format!("one run: {}", latency.unit));
                    });
                    row.col(|ui| {
                        ui.label(entry.speedup().map_or("-".into(), |x| format!("{x:.2}x")));
                    });
                    row.col(|ui| {
                        ui.label(format!("{:.1} {}/s", latency.throughput_per_s, latency.throughput_unit))
                            .on_hover_text(format!("{} per second with {} thread(s)", latency.throughput_unit, latency.threads));
                    });
                    row.col(|ui| {
                        ui.label(format!("{} / {}", format::bytes(latency.weights_bytes), format::bytes(c.disk_bytes)));
                    });
                    row.col(|ui| {
                        if entry.plan.is_none() {
                            ui.label("all FP32");
                        } else {
                            ui.label(format!("{} integer · {} compact", c.integer_layers, c.compact_layers)).on_hover_text(
                                format!(
                                    "{} layers run INT8 × INT8 integer products (W8A8); {} hold compact weights \
                                     converted tile by tile as they multiply; the other layers run FP32",
                                    c.integer_layers, c.compact_layers
                                ),
                            );
                        }
                    });
                    row.col(|ui| {
                        let text = c.quality.as_ref().map_or("-".into(), |q| q.value_text());
                        let response = ui.label(text);
                        if let Some(evaluation) = &c.evaluation {
                            response.on_hover_text(evaluation.headline());
                        }
                    });
                });
            }
        });
    if let Some(index) = restore {
        app.send(Command::RestoreBenchmarkPlan(index));
    }
}

/// Accuracy (or, without data, size on disk) against median latency; marker area proportional to the size. The
/// markers carry no text (labels of close points overlapped): the key above the chart and the table's coloured
/// numbers name them.
fn chart(ui: &mut egui::Ui, entries: &[BenchEntry], height: f32) {
    let metric = entries.iter().find_map(|e| e.configuration.quality.as_ref().map(|q| q.metric));
    let largest = entries.iter().map(|e| e.configuration.disk_bytes).max().unwrap_or(1).max(1) as f64;
    let y_of = |entry: &BenchEntry| match (metric, &entry.configuration.quality) {
        (Some(_), Some(q)) => Some(if q.metric == "mean cosine" { q.value } else { q.value * 100.0 }),
        (Some(_), None) => None,
        (None, _) => Some(entry.configuration.disk_bytes as f64 / 1e6),
    };
    let y_title = match metric {
        Some("mean cosine") => "mean cosine".to_owned(),
        Some(m) => format!("{m} (%)"),
        None => "size on disk (MB)".to_owned(),
    };
    // Equal values (one configuration, or plans as accurate as FP32) get a small range around them, not the
    // plot's default of ±100.
    let ys: Vec<f64> = entries.iter().filter_map(y_of).collect();
    let (low, high) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &y| (l.min(y), h.max(y)));
    let pad = if high - low < 1e-9 { 1e-3 * high.abs().max(1.0) } else { 0.0 };
    ui.horizontal_wrapped(|ui| {
        for entry in entries {
            let size = format::bytes(entry.configuration.disk_bytes);
            let text = match entry.plan {
                None => format!("FP32 · {size}"),
                Some(_) => format!("{} {} · {size}", label(entry), entry.summary),
            };
            ui.label(RichText::new(text).color(color(entry)).strong());
            ui.add_space(8.0);
        }
        super::hint(ui, "(marker area: size on disk; up and left is better)");
    });
    // Latency from 0 (no negative ticks) to a little past the slowest.
    let slowest_ms = entries.iter().map(|e| e.configuration.latency.latency_ms_median).fold(0.0, f64::max);
    let mut chart = Plot::new("bench-chart")
        .height(height)
        .allow_scroll(false)
        .include_x(0.0)
        .include_x(slowest_ms * 1.1)
        .set_margin_fraction(egui::vec2(0.0, 0.2));
    if pad > 0.0 && low.is_finite() {
        chart = chart.include_y(low - pad).include_y(high + pad);
    }
    let chart = super::axes::titled(chart, "median latency, batch 1 (ms)", &y_title)
        .x_grid_spacer(super::axes::spacer(BENCH_X_TICKS_PX));
    chart.show(ui, |plot| {
        for entry in entries {
            let Some(y) = y_of(entry) else { continue };
            let x = entry.configuration.latency.latency_ms_median;
            let share = entry.configuration.disk_bytes as f64 / largest;
            let radius = (4.0 + 10.0 * share.sqrt()) as f32;
            plot.points(
                Points::new(format!("{} {}", label(entry), entry.summary), vec![[x, y]])
                    .radius(radius)
                    .shape(MarkerShape::Circle)
                    .filled(true)
                    .color(color(entry)),
            );
        }
    });
}
