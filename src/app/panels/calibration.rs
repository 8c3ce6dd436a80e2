//! Calibrate & diagnose: the Calibrate action and the observer choice, GPTQ of the INT4 and INT8 layers, the
//! sensitivity ranking (bar chart, one click to keep the most sensitive layers in float), and, for the inspector,
//! the focused layer's input histogram with its clip range, draggable.

use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{Bar, BarChart, Plot, VLine};

use super::{PathTarget, axes, format, hint};
use crate::app::StudioApp;
use crate::app::dialogs::DialogRequest;
use crate::app::state::Command;
use crate::calib::SensitivityMode;
use crate::calib::view::STANDARD_OBSERVERS;
use crate::model::LayerId;
use crate::quant::{Precision, QParams};
use crate::worker::JobKind;

const CLIP_COLOR: Color32 = Color32::from_rgb(240, 150, 60);
const BAR_COLOR: Color32 = Color32::from_rgb(200, 110, 200);
/// Characters of a layer name on the ranking's axis.
const RANKING_NAME_CHARS: usize = 28;
/// Layers drawn in the ranking chart.
const CHART_LAYERS: usize = 24;

/// The bottom panel above the accuracy panel.
pub fn diagnose(ui: &mut egui::Ui, app: &mut StudioApp) {
    let (default_size, max_size) = super::bottom_panel_sizes(ui.ctx());
    let panel = egui::Panel::bottom("diagnose").resizable(true).default_size(default_size).max_size(max_size);
    panel.min_size(60.0).show(ui, |ui| {
        egui::ScrollArea::vertical()
            .id_salt("diagnose-scroll")
            .auto_shrink([false, false])
            .show(ui, |ui| diagnose_ui(ui, app));
    });
}

fn diagnose_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let runnable = matches!(app.studio.runtime, Some(Ok(_)));
    ui.horizontal(|ui| {
        ui.heading("Calibrate & diagnose");
        if !runnable {
            ui.label(RichText::new("needs a model that runs (see the accuracy panel)").weak());
        }
    });
    if !runnable {
        return;
    }
    calibration_row(ui, app);
    gptq_row(ui, app);
    ui.separator();
    sensitivity_ui(ui, app);
}

fn calibration_row(ui: &mut egui::Ui, app: &mut StudioApp) {
    let model_path = app.studio.model.as_ref().map(|m| m.path.clone());
    if app.inputs.calib_data_model != model_path {
        app.inputs.calib_data_model = model_path;
        app.inputs.calib_data =
            app.studio.calibration.default_data.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    }
    ui.horizontal(|ui| {
        let label = ui.label(PathTarget::CalibData.label());
        let field = ui
            .add(egui::TextEdit::singleline(&mut app.inputs.calib_data).desired_width(240.0).hint_text("data file"))
            .on_hover_text("Representative inputs, in any format the accuracy panel takes")
            .labelled_by(label.id);
        if app.inputs.take_focus(PathTarget::CalibData) {
            field.request_focus();
        }
        if ui.button("Browse...").clicked() {
            app.browse(DialogRequest::DataFile, PathTarget::CalibData);
        }
        let running = app.studio.jobs().iter().any(|(kind, _, _)| *kind == JobKind::Calibrate);
        let data = app.inputs.calib_data.trim().to_owned();
        if ui
            .add_enabled(!running && !data.is_empty(), egui::Button::new("Calibrate"))
            .on_hover_text(
                "Run FP32 on the data and histogram the input of every linear and conv layer (cached: a second run \
                 on the same model and data is instant). W8A8 layers take their input scale from it.",
            )
            .clicked()
        {
            app.send(Command::Calibrate(data.into()));
        }
        let Some(calibration) = &app.studio.calibration.run else {
            ui.label(RichText::new("not calibrated: W8A8 layers need a calibration").weak());
            return;
        };
        ui.separator();
        ui.label("Observer");
        let current_observer = app.studio.editor.observer();
        let mut observer = current_observer;
        let combo = egui::ComboBox::from_id_salt("observer").selected_text(observer.label()).show_ui(ui, |ui| {
            for option in STANDARD_OBSERVERS {
                ui.selectable_value(&mut observer, option, option.label());
            }
        });
        combo.response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::ComboBox, true, "observer"));
        let summary = format!(
            "{} layers, {} samples{}{}",
            calibration.layers.len(),
            calibration.samples,
            if calibration.from_cache { ", from the cache" } else { "" },
            match app.studio.editor.clip_overrides().len() {
                0 => String::new(),
                hand_set => format!(", {hand_set} clip(s) set by hand"),
            }
        );
        ui.label(RichText::new(summary).weak()).on_hover_text(calibration.data.display().to_string());
        if observer != current_observer {
            app.send(Command::SetObserver(observer));
        }
    });
}

/// GPTQ of the plan's INT4 and INT8 layers on the calibration data, and what the last run bought.
fn gptq_row(ui: &mut egui::Ui, app: &mut StudioApp) {
    let gptq_layers =
        app.studio.editor.plan().layers.iter().filter(|p| matches!(p, Precision::Int4(_) | Precision::Int8(_))).count();
    ui.horizontal(|ui| {
        ui.label(RichText::new("GPTQ").strong());
        ui.checkbox(&mut app.inputs.gptq_act_order, "act-order")
            .on_hover_text("Visit the columns by decreasing input energy (groups fixed first, as static groups)");
        let running = app.studio.jobs().iter().any(|(kind, _, _)| *kind == JobKind::Gptq);
        let data = app.inputs.calib_data.trim().to_owned();
        if ui
            .add_enabled(!running && !data.is_empty() && gptq_layers > 0, egui::Button::new("Run GPTQ"))
            .on_hover_text(
                "Quantize the INT4 and INT8 layers with GPTQ on the calibration data: each column's rounding error is \
                 moved onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs. \
                 The table's \"Out err\" column shows rounding's and GPTQ's output error per layer.",
            )
            .clicked()
        {
            app.send(Command::Gptq { data: data.into(), act_order: app.inputs.gptq_act_order });
        }
        let summary = match &app.studio.editor.plan().gptq {
            _ if gptq_layers == 0 => "no INT4 or INT8 layer in the plan".to_owned(),
            None => format!("{gptq_layers} INT4/INT8 layer(s) rounded to nearest"),
            Some(weights) => {
                let (rtn, gptq) = weights.mean_output_errors();
                format!(
                    "{} layer(s) from {}, mean output error {} -> {} ({:.1} s)",
                    weights.layers.len(),
                    weights.data.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                    format::sci(rtn),
                    format::sci(gptq),
                    weights.seconds
                )
            }
        };
        ui.label(RichText::new(summary).weak());
    });
}

fn sensitivity_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Sensitivity").strong());
        let mode = &mut app.inputs.sensitivity_mode;
        let combo = egui::ComboBox::from_id_salt("sensitivity-mode").selected_text(mode.label()).show_ui(ui, |ui| {
            ui.selectable_value(mode, SensitivityMode::OneAtATime, SensitivityMode::OneAtATime.label())
                .on_hover_text("Quantize each planned layer alone, the rest FP32");
            ui.selectable_value(mode, SensitivityMode::AllButOne, SensitivityMode::AllButOne.label())
                .on_hover_text("Quantize everything planned except one layer");
        });
        combo.response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::ComboBox, true, "sensitivity mode"));
        let mode = *mode;
        let data = app.inputs.eval_data.trim().to_owned();
        let running = app.studio.jobs().iter().any(|(kind, _, _)| *kind == JobKind::Sensitivity);
        if ui
            .add_enabled(!running && !data.is_empty(), egui::Button::new("Run sensitivity"))
            .on_hover_text(
                "On the accuracy panel's data: measure the task metric with each planned layer quantized (or kept \
                 in FP32) and rank the layers; results appear as they are measured",
            )
            .clicked()
        {
            app.send(Command::Sensitivity { data: data.into(), mode });
        }
        let has_results = app.studio.results.sensitivity.as_ref().is_some_and(|s| !s.results.is_empty());
        ui.separator();
        ui.label("Most sensitive");
        let count_field = ui.add(egui::DragValue::new(&mut app.inputs.most_sensitive_count).range(1..=1000).speed(0.2));
        count_field.widget_info(|| egui::WidgetInfo::labeled(egui::Role::SpinButton, true, "most sensitive count"));
        let count = app.inputs.most_sensitive_count;
        for precision in [Precision::Fp16, Precision::Fp32] {
            let label = format!("-> {}", super::family_label(precision));
            if ui
                .add_enabled(has_results, egui::Button::new(label))
                .on_hover_text(format!("Set the {count} most sensitive layers of the ranking to {precision}"))
                .clicked()
            {
                app.send(Command::SetMostSensitive { count, precision });
            }
        }
        if let Some(state) = &app.studio.results.sensitivity {
            let status = if state.ranked {
                format!("ranked by {}", state.metric.unwrap_or("task loss"))
            } else {
                format!("{}/{} layers measured", state.results.len(), state.planned)
            };
            ui.label(RichText::new(status).weak());
        }
    });
    let Some(state) = &app.studio.results.sensitivity else {
        ui.label(
            RichText::new("Rank the layers the plan quantizes by how much each one costs: set precisions, then Run.")
                .weak(),
        );
        return;
    };
    if state.results.is_empty() {
        return;
    }
    // Bars from the top: the most sensitive layer first (streaming results are shown in ranking order too).
    let mut shown = state.results.clone();
    if !state.ranked {
        crate::calib::sensitivity::rank(&mut shown, state.mode.unwrap_or(SensitivityMode::OneAtATime));
    }
    shown.truncate(CHART_LAYERS);
    // When the task metric does not move (accuracy on small data often does not), the bars show the relative
    // output noise Σ(y - ŷ)² / Σy² = 10^(-SQNR/10) instead, which the ranking uses to break ties.
    let by_score = shown.iter().any(|r| r.score != 0.0);
    let value = |r: &crate::calib::LayerSensitivity| {
        if by_score { r.score } else { r.report.output_sqnr_db.map_or(0.0, |db| 10f64.powf(-db / 10.0)) }
    };
    let series = if by_score { "task loss" } else { "relative output noise" };
    let bars: Vec<Bar> = shown
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sqnr = r.report.output_sqnr_db.map_or("identical".into(), |db| format!("{db:.1} dB"));
            Bar::new(-(i as f64), value(r))
                .name(format!("{}\nscore {}, output SQNR {sqnr}", r.layer, format::sci(r.score)))
                .width(0.7)
                .fill(BAR_COLOR)
        })
        .collect();
    if !by_score {
        hint(ui, "Every score is 0 (the task metric did not move): bars show the relative output noise.");
    }
    let names: Vec<String> = shown.iter().map(|r| r.layer.clone()).collect();
    // One labelled row per layer: the y axis names the bars (most sensitive on top), the x axis says what their
    // length is; no legend over the bars.
    let names_axis =
        egui_plot::AxisHints::new_y().label("layer").label_spacing(12.0..=16.0).formatter(move |mark, _| {
            let index = (-mark.value).round();
            if (mark.value + index).abs() < 1e-6 && index >= 0.0 {
                names.get(index as usize).map(|n| short_name(n)).unwrap_or_default()
            } else {
                String::new()
            }
        });
    let x_title =
        if by_score { "task loss (larger: more sensitive)" } else { "relative output noise Σ(y - ŷ)² / Σy²" };
    Plot::new("sensitivity-ranking")
        .height((shown.len() as f32 * 18.0 + 50.0).max(120.0))
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .custom_x_axes(vec![axes::x_axis(x_title)])
        .custom_y_axes(vec![names_axis])
        .x_grid_spacer(axes::spacer(axes::X_TICKS_PX))
        .y_grid_spacer(|input| {
            let (lo, hi) = input.bounds;
            ((-hi).ceil().max(0.0) as i64..=(-lo).floor() as i64)
                .map(|i| egui_plot::GridMark { value: -(i as f64), step_size: 1.0 })
                .collect()
        })
        .show(ui, |plot| plot.bar_chart(BarChart::new(series, bars).horizontal().color(BAR_COLOR)));
}

/// A layer name short enough for the ranking's axis, keeping its block number and leaf
/// (`encoder.layer.3.…self.value`).
fn short_name(name: &str) -> String {
    format::elide_middle(name, RANKING_NAME_CHARS)
}

/// The inspector's section on the focused layer's calibrated input.
pub fn input_section(ui: &mut egui::Ui, app: &mut StudioApp, layer: LayerId) {
    let Some(calibration) = &app.studio.calibration.run else { return };
    let Some(view) = calibration.layers.get(&layer).cloned() else { return };
    let observer = app.studio.editor.observer();
    let hand_set = app.studio.editor.clip_overrides().contains_key(&layer);
    let Some((clip, error)) = app.studio.input_clip_error(layer) else { return };
    ui.separator();
    ui.horizontal(|ui| {
        ui.label(RichText::new("Input activations").strong());
        let w8a8 = app.studio.plan().layer(layer).needs_calibration();
        ui.label(RichText::new(if w8a8 { "W8A8: quantized with this clip" } else { "float (weight-only)" }).weak());
    });
    let h = &view.histogram;
    hint(
        ui,
        format!(
            "{} values, min {:.4e}, max {:.4e}{}",
            format::thousands(h.count),
            h.min,
            h.max,
            if h.nonfinite > 0 { format!(", {} NaN/inf", h.nonfinite) } else { String::new() }
        ),
    );
    // The clip range over the display histogram; drag (or click) in the plot to move it.
    let log = app.studio.prefs.log_counts;
    let width = view.display.bin_width();
    let bars: Vec<Bar> = view
        .display
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let height = if log { (c as f64 + 1.0).log10() } else { c as f64 };
            Bar::new(view.display.bin_center(i), height).width(width).fill(Color32::from_rgb(120, 200, 160))
        })
        .collect();
    let y_title = if log { "log10(count + 1)" } else { "count" };
    let plot = Plot::new("input-histogram")
        .height(160.0)
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_boxed_zoom(false)
        .include_x(-(clip as f64))
        .include_x(clip as f64);
    let response = axes::titled(plot, "input value (clip lines: drag to move)", y_title).show(ui, |plot| {
        plot.bar_chart(BarChart::new(y_title, bars));
        plot.vline(VLine::new("clip", clip as f64).color(CLIP_COLOR).width(2.0));
        plot.vline(VLine::new("clip", -(clip as f64)).color(CLIP_COLOR).width(2.0));
    });
    let pointer = response.response.interact_pointer_pos();
    if (response.response.dragged() || response.response.clicked())
        && let Some(pos) = pointer
    {
        let x = response.transform.value_from_position(pos).x.abs() as f32;
        let new_clip = x.min(h.absmax());
        if new_clip != clip {
            app.send(Command::SetInputClip { layer, clip: Some(new_clip) });
        }
    }
    ui.horizontal(|ui| {
        ui.label("clip ±");
        let mut value = clip;
        let absmax = h.absmax().max(f32::MIN_POSITIVE);
        let drag = ui.add(egui::DragValue::new(&mut value).range(0.0..=absmax).speed(absmax as f64 / 500.0));
        drag.widget_info(|| egui::WidgetInfo::labeled(egui::Role::SpinButton, true, "input clip"));
        if value != clip {
            app.send(Command::SetInputClip { layer, clip: Some(value) });
        }
        if hand_set {
            if ui.small_button("Reset").on_hover_text(format!("Back to the observer ({observer})")).clicked() {
                app.send(Command::SetInputClip { layer, clip: None });
            }
        } else {
            ui.label(RichText::new(format!("from {observer}")).weak());
        }
    });
    egui::Grid::new("input-error").num_columns(4).spacing([12.0, 2.0]).show(ui, |ui| {
        ui.label("scale").on_hover_text("clip / 127: the step of the INT8 input grid");
        ui.label(format::sci(QParams::symmetric(clip).scale as f64));
        ui.label("clipped").on_hover_text("Share of the observed values beyond ±clip");
        ui.label(format!("{:.3}%", error.clipped_fraction * 100.0));
        ui.end_row();
        ui.label("SQNR").on_hover_text(
            "Of the layer's input at this clip, over the calibration histogram: rounding noise (step²/12) inside, \
             the distance to the clip outside",
        );
        ui.label(RichText::new(format::db(error.sqnr_db)).color(super::sqnr_color(error.sqnr_db)));
        ui.label("MSE");
        ui.label(format::sci(error.mse));
        ui.end_row();
    });
    hint(ui, "Observers (click to use for this layer)");
    ui.horizontal_wrapped(|ui| {
        for (option, value) in &view.clips {
            let text = format!("{} {}", option.label(), format::sci(*value as f64));
            if ui.small_button(text).clicked() {
                app.send(Command::SetInputClip { layer, clip: Some(*value) });
            }
        }
    });
}
