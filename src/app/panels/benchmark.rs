//! The benchmark tab of the accuracy panel: FP32 and every plan benchmarked in this session, as deployed, in a
//! table (latency, throughput, memory, size, accuracy) and a chart of accuracy against latency whose marker area
//! is the size on disk, so the trade-off reads at a glance.

use eframe::egui;
use egui::{Align2, Color32, RichText};
use egui_extras::{Column, TableBuilder};
use egui_plot::{MarkerShape, Plot, PlotPoint, Points, Text};

use super::format;
use crate::app::StudioApp;
use crate::app::state::{BenchEntry, Command};
use crate::worker::JobKind;

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
                 other quantized linear layers: FP16/BF16/INT8 weights converted tile by tile), batch-1 latency and \
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

/// The table and the chart.
pub fn results(ui: &mut egui::Ui, app: &mut StudioApp) {
    if app.studio.results.benchmarks.is_empty() {
        ui.label(
            "Benchmark the plan to time it against FP32 (latency, throughput, memory, size, accuracy); every plan \
             benchmarked stays here for comparison.",
        );
        return;
    }
    // One fixed rectangle split in two (sizing by the panel's available height would grow the panel frame after
    // frame): the table on the left, the chart on the right.
    const BODY_HEIGHT: f32 = 180.0;
    let (rect, _) = ui.allocate_exact_size(egui::vec2(ui.available_width(), BODY_HEIGHT), egui::Sense::hover());
    let chart_width = (rect.width() * 0.3).max(260.0).min(rect.width() * 0.5);
    let (table_rect, chart_rect) = rect.split_left_right_at_x(rect.right() - chart_width);
    ui.scope_builder(egui::UiBuilder::new().max_rect(table_rect.shrink2(egui::vec2(4.0, 0.0))), |ui| table(ui, app));
    ui.scope_builder(egui::UiBuilder::new().max_rect(chart_rect), |ui| {
        chart(ui, &app.studio.results.benchmarks, BODY_HEIGHT)
    });
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
        .striped(true)
        .cell_layout(egui::Layout::left_to_right(egui::Align::Center))
        .max_scroll_height(150.0)
        .auto_shrink([false, true])
        .column(Column::exact(92.0))
        .column(Column::initial(150.0).at_least(90.0).clip(true))
        .column(Column::exact(122.0))
        .column(Column::exact(62.0))
        .column(Column::exact(92.0))
        .column(Column::exact(140.0))
        .column(Column::exact(56.0))
        .column(Column::remainder().at_least(80.0))
        .header(20.0, |mut header| {
            let headers = [
                ("#", "Restore makes a benchmarked plan the current one"),
                ("Configuration", "Layers per precision"),
                ("Latency p50 / p95", "Batch-1 latency: median and 95th percentile of the timed runs"),
                ("Speed-up", "Median latency of FP32 timed in the same run (in alternation) / this median latency"),
                ("Throughput", "Units per second with a larger batch (hover a value for the unit)"),
                ("Memory / disk", "Weights held in memory while running (f32, half and INT8 buffers) / checkpoint size on disk (as stored for FP32, as exported for a plan)"),
                ("Layers", "Integer-GEMM (W8A8) layers / compact-weight layers (FP16, BF16, INT8 weight-only)"),
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
                body.row(20.0, |mut row| {
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
                        ui.label(format!("{} / {}", format::millis(latency.latency_ms_median), format::millis(latency.latency_ms_p95)))
                            .on_hover_text(&latency.unit);
                    });
                    row.col(|ui| {
                        let base = if entry.plan.is_none() { Some(latency.latency_ms_median) } else { entry.fp32_latency_ms };
                        let text = match base {
                            Some(base) if latency.latency_ms_median > 0.0 => {
                                format!("{:.2}x", base / latency.latency_ms_median)
                            }
                            _ => "-".into(),
                        };
                        ui.label(text);
                    });
                    row.col(|ui| {
                        ui.label(format!("{:.1}/s", latency.throughput_per_s))
                            .on_hover_text(format!("{} per second, {} thread(s)", latency.throughput_unit, latency.threads));
                    });
                    row.col(|ui| {
                        ui.label(format!("{} / {}", format::bytes(latency.weights_bytes), format::bytes(c.disk_bytes)));
                    });
                    row.col(|ui| {
                        ui.label(if entry.plan.is_none() {
                            "-".into()
                        } else {
                            format!("{} / {}", c.integer_layers, c.compact_layers)
                        });
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

/// Accuracy (or, without data, size on disk) against median latency; marker area proportional to the size.
fn chart(ui: &mut egui::Ui, entries: &[BenchEntry], height: f32) {
    let metric = entries.iter().find_map(|e| e.configuration.quality.as_ref().map(|q| q.metric));
    let largest = entries.iter().map(|e| e.configuration.disk_bytes).max().unwrap_or(1).max(1) as f64;
    let y_of = |entry: &BenchEntry| match (metric, &entry.configuration.quality) {
        (Some(_), Some(q)) => Some(if q.metric == "mean cosine" { q.value } else { q.value * 100.0 }),
        (Some(_), None) => None,
        (None, _) => Some(entry.configuration.disk_bytes as f64 / 1e6),
    };
    let y_label = match metric {
        Some("mean cosine") => "mean cosine".to_owned(),
        Some(m) => format!("{m} (%)"),
        None => "size on disk (MB)".to_owned(),
    };
    // Labels sit a little to the right of their marker (the plot has no pixel offsets).
    let label_dx = 0.05 * entries.iter().map(|e| e.configuration.latency.latency_ms_median).fold(0.0, f64::max);
    // Equal values (one configuration, or plans as accurate as FP32) get a small range around them, not the
    // plot's default of ±100.
    let ys: Vec<f64> = entries.iter().filter_map(y_of).collect();
    let (low, high) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &y| (l.min(y), h.max(y)));
    let pad = if high - low < 1e-9 { 1e-3 * high.abs().max(1.0) } else { 0.0 };
    ui.vertical(|ui| {
        ui.label(RichText::new(format!("y: {y_label}   x: median latency (ms)   marker area: size on disk")).small());
        let mut chart = Plot::new("bench-chart")
            .height(height - 18.0)
            .allow_scroll(false)
            .include_x(0.0)
            .set_margin_fraction(egui::vec2(0.3, 0.25));
        if pad > 0.0 && low.is_finite() {
            chart = chart.include_y(low - pad).include_y(high + pad);
        }
        chart.show(ui, |plot| {
            for entry in entries {
                let Some(y) = y_of(entry) else { continue };
                let x = entry.configuration.latency.latency_ms_median;
                let share = entry.configuration.disk_bytes as f64 / largest;
                let radius = (3.0 + 9.0 * share.sqrt()) as f32;
                let name = format!("{} {}", label(entry), entry.summary);
                plot.points(
                    Points::new(name.clone(), vec![[x, y]])
                        .radius(radius)
                        .shape(MarkerShape::Circle)
                        .filled(true)
                        .color(color(entry)),
                );
                let text = format!("{} · {}", label(entry), format::bytes(entry.configuration.disk_bytes));
                let at = PlotPoint::new(x + label_dx, y);
                plot.text(Text::new(name, at, text).anchor(Align2::LEFT_CENTER).color(color(entry)));
            }
        });
    });
}
