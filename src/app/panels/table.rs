//! The layer table (virtualised: only visible rows are laid out) with its filter and bulk-edit bar.

use eframe::egui;
use egui::{Color32, RichText};
use egui_extras::{Column, TableBuilder};

use super::{family_label, format, precision_choices, sqnr_color};
use crate::app::StudioApp;
use crate::app::state::{Command, PlannedError, SortColumn};
use crate::model::LayerId;
use crate::quant::{Fp8Scheme, Granularity, Int4Scheme, Int8Scheme, Precision};

const ROW_HEIGHT: f32 = 22.0;

/// The INT8 schemes offered, with their labels: weight-only, then W8A8 (static INT8 inputs, calibrated), then
/// W8A8-dynamic (per-token INT8 inputs, no calibration).
fn scheme_choices() -> [(Int8Scheme, &'static str); 7] {
    let s = |symmetric, granularity| Int8Scheme::weights(symmetric, granularity);
    [
        (s(true, Granularity::PerChannel), "sym · per-channel"),
        (s(true, Granularity::PerTensor), "sym · per-tensor"),
        (s(false, Granularity::PerChannel), "asym · per-channel"),
        (s(false, Granularity::PerTensor), "asym · per-tensor"),
        (s(true, Granularity::PerChannel).with_int8_inputs(), "W8A8 sym · per-channel"),
        (s(true, Granularity::PerTensor).with_int8_inputs(), "W8A8 sym · per-tensor"),
        (Int8Scheme::w8a8_dynamic(), "W8A8-dynamic sym · per-channel"),
    ]
}

fn scheme_label(scheme: Int8Scheme) -> &'static str {
    scheme_choices().into_iter().find(|(s, _)| *s == scheme).map(|(_, l)| l).unwrap_or("?")
}

/// The INT4 schemes offered: symmetric or asymmetric, groups of 128, 64 or 32 values.
fn int4_scheme_choices() -> [(Int4Scheme, &'static str); 6] {
    [
        (Int4Scheme::new(true, 128), "sym · g128"),
        (Int4Scheme::new(true, 64), "sym · g64"),
        (Int4Scheme::new(true, 32), "sym · g32"),
        (Int4Scheme::new(false, 128), "asym · g128"),
        (Int4Scheme::new(false, 64), "asym · g64"),
        (Int4Scheme::new(false, 32), "asym · g32"),
    ]
}

fn int4_scheme_label(scheme: Int4Scheme) -> &'static str {
    int4_scheme_choices().into_iter().find(|(s, _)| *s == scheme).map(|(_, l)| l).unwrap_or("?")
}

/// The FP8 E4M3 schemes offered: weight-only per channel or per tensor, and FP8_DYNAMIC (per-token FP8 inputs).
fn fp8_scheme_choices() -> [(Fp8Scheme, &'static str); 3] {
    [
        (Fp8Scheme::weights(Granularity::PerChannel), "per-channel"),
        (Fp8Scheme::weights(Granularity::PerTensor), "per-tensor"),
        (Fp8Scheme::dynamic(), "dynamic · per-channel"),
    ]
}

fn fp8_scheme_label(scheme: Fp8Scheme) -> &'static str {
    fp8_scheme_choices().into_iter().find(|(s, _)| *s == scheme).map(|(_, l)| l).unwrap_or("?")
}

/// The central panel: bulk bar and table.
pub fn central(ui: &mut egui::Ui, app: &mut StudioApp) {
    egui::CentralPanel::default().show(ui, |ui| {
        if app.studio.model.is_none() {
            ui.centered_and_justified(|ui| {
                ui.label("Open a model: File > Open (Ctrl+O), or drop a .safetensors file or a model folder here.");
            });
            return;
        }
        let rows = app.studio.rows();
        bulk_bar(ui, app, &rows);
        ui.separator();
        layer_table(ui, app, &rows);
    });
}

fn bulk_bar(ui: &mut egui::Ui, app: &mut StudioApp, rows: &[LayerId]) {
    ui.horizontal(|ui| {
        ui.label("Filter");
        ui.add(
            egui::TextEdit::singleline(&mut app.studio.table.filter).desired_width(200.0).hint_text("*attn* or text"),
        )
        .on_hover_text("A glob (*, ?, [..]) over layer names, or plain text to search for");
        if ui.button("Select shown").clicked() {
            app.studio.table.selection = rows.iter().copied().collect();
        }
        if ui.button("Clear selection").clicked() {
            app.studio.table.selection.clear();
        }
        ui.separator();
        let bulk = app.inputs.bulk_precision.get_or_insert(crate::app::state::DEFAULT_INT8);
        let combo = egui::ComboBox::from_id_salt("bulk-precision").selected_text(bulk_label(*bulk)).show_ui(ui, |ui| {
            for (precision, label) in precision_choices() {
                if let Precision::Int8(_) = precision {
                    for (scheme, scheme_text) in scheme_choices() {
                        ui.selectable_value(bulk, Precision::Int8(scheme), format!("INT8 {scheme_text}"));
                    }
                } else if let Precision::Fp8(_) = precision {
                    for (scheme, scheme_text) in fp8_scheme_choices() {
                        ui.selectable_value(bulk, Precision::Fp8(scheme), format!("FP8 {scheme_text}"));
                    }
                } else if let Precision::Int4(_) = precision {
                    for (scheme, scheme_text) in int4_scheme_choices() {
                        ui.selectable_value(bulk, Precision::Int4(scheme), format!("INT4 {scheme_text}"));
                    }
                } else {
                    ui.selectable_value(bulk, precision, label);
                }
            }
        });
        name_widget(&combo.response, "bulk precision");
        let bulk = *bulk;
        let selected: Vec<LayerId> = app.studio.table.selection.iter().copied().collect();
        if ui
            .add_enabled(!selected.is_empty(), egui::Button::new(format!("Apply to {} selected", selected.len())))
            .clicked()
        {
            app.send(Command::SetPrecision { layers: selected, precision: bulk });
        }
        let pattern = app.studio.table.filter.trim().to_owned();
        if ui
            .add_enabled(!pattern.is_empty(), egui::Button::new("Apply to matching"))
            .on_hover_text("Set every layer whose name matches the filter")
            .clicked()
        {
            app.send(Command::SetPrecisionMatching { pattern, precision: bulk });
        }
    });
}

fn bulk_label(precision: Precision) -> String {
    match precision {
        Precision::Int8(scheme) => format!("INT8 {}", scheme_label(scheme)),
        Precision::Fp8(scheme) => format!("FP8 {}", fp8_scheme_label(scheme)),
        Precision::Int4(scheme) => format!("INT4 {}", int4_scheme_label(scheme)),
        other => family_label(other).to_owned(),
    }
}

fn sort_header(ui: &mut egui::Ui, app: &mut StudioApp, label: &str, column: SortColumn, tooltip: &str) {
    let (current, ascending) = app.studio.table.sort;
    let arrow = if current == column { if ascending { " ^" } else { " v" } } else { "" };
    let response = ui.add(egui::Button::new(RichText::new(format!("{label}{arrow}")).strong()).frame(false));
    if response.on_hover_text(tooltip).clicked() {
        app.studio.table.sort = if current == column { (column, !ascending) } else { (column, true) };
    }
}

/// The widths of the columns right of the name (the name takes what is left, at least [`NAME_MIN_WIDTH`]).
const COLUMN_WIDTHS: [f32; 14] =
    [62.0, 64.0, 54.0, 38.0, 118.0, 62.0, 150.0, 70.0, 54.0, 54.0, 62.0, 112.0, 48.0, 70.0];
/// The index of the shape column in [`COLUMN_WIDTHS`].
const SHAPE_COLUMN: usize = 1;
/// The narrowest the name column gets; below that the table scrolls sideways.
const NAME_MIN_WIDTH: f32 = 190.0;

fn layer_table(ui: &mut egui::Ui, app: &mut StudioApp, rows: &[LayerId]) {
    // Wider than the window (a narrow window, or columns widened by hand): scroll sideways rather than lose the
    // right-hand columns.
    egui::ScrollArea::horizontal().id_salt("layers-h").auto_shrink([false, false]).show(ui, |ui| {
        // Text in a row does not take the click (it is not selectable): clicking a name selects the row.
        ui.style_mut().interaction.selectable_labels = false;
        layer_table_ui(ui, app, rows);
    });
}

fn layer_table_ui(ui: &mut egui::Ui, app: &mut StudioApp, rows: &[LayerId]) {
    let Some(model) = app.studio.model.clone() else { return };
    let modifiers = ui.input(|i| i.modifiers);
    let mut clicked: Option<LayerId> = None;
    // The name column is not resizable, so it takes the remainder of the width in every frame (a resizable one
    // keeps the width of its first frame, leaving free space right of the last column when the window grows).
    let mut table = TableBuilder::new(ui)
        .id_salt("layers")
        .striped(true)
        .resizable(true)
        .sense(egui::Sense::click())
        .cell_layout(egui::Layout::left_to_right(egui::Align::Center))
        .column(Column::remainder().at_least(NAME_MIN_WIDTH).clip(true).resizable(false));
    for (index, width) in COLUMN_WIDTHS.into_iter().enumerate() {
        // Shapes can be long (`[30522, 384]` fits, a 4-D conv kernel may not): the only clipped figure column.
        table = table.column(Column::initial(width).clip(index == SHAPE_COLUMN));
    }
    table
        .header(24.0, |mut header| {
            header.col(|ui| sort_header(ui, app, "Layer", SortColumn::Name, "Layer name (tensors grouped by prefix)"));
            header.col(|ui| sort_header(ui, app, "Kind", SortColumn::Kind, "Linear, conv, embedding, norm or other"));
            header.col(|ui| {
                ui.label(RichText::new("Shape").strong()).on_hover_text("Shape of the layer's main tensor");
            });
            header.col(|ui| sort_header(ui, app, "Params", SortColumn::Params, "Elements in all tensors of the layer"));
            header.col(|ui| {
                ui.label(RichText::new("DType").strong()).on_hover_text("Stored element type of the main tensor");
            });
            header.col(|ui| {
                sort_header(ui, app, "Size -> planned", SortColumn::Planned, "Bytes as stored -> bytes once exported")
            });
            header.col(|ui| sort_header(ui, app, "Precision", SortColumn::Precision, "Planned precision of the layer"));
            header.col(|ui| {
                ui.label(RichText::new("Scheme").strong()).on_hover_text(
                    "INT8: symmetric (zero point 0) or asymmetric, one scale per tensor or per output channel, inputs \
                     float (weight-only), static INT8 (W8A8, calibrated) or dynamic per token (W8A8-dynamic). FP8: \
                     E4M3 weights per channel or per tensor, inputs float or dynamic per-token FP8. INT4: a scale \
                     (and zero point when asymmetric) per group of 32, 64 or 128 values of a row; a layer whose \
                     rows the group does not divide gets the largest smaller group that does",
                );
            });
            header.col(|ui| {
                let runtimes = app.studio.target.runtimes().iter().map(|r| r.to_string()).collect::<Vec<_>>();
                ui.label(RichText::new("Deploys").strong()).on_hover_text(format!(
                    "Whether {} load the layer as planned from the {} export (hover a mark for the reason and the fix)",
                    runtimes.join(" and "),
                    app.studio.target
                ));
            });
            header.col(|ui| sort_header(ui, app, "MSE", SortColumn::Mse, "Mean squared error of the main tensor"));
            header.col(|ui| {
                sort_header(ui, app, "Max err", SortColumn::MaxError, "Largest absolute error |x - dequantized x|")
            });
            header.col(|ui| {
                sort_header(
                    ui,
                    app,
                    "SQNR",
                    SortColumn::Sqnr,
                    "10·log10(Σx² / Σe²) in dB of the weights; for W8A8 the worse of the weights' and the input's at \
                     its clip. Red < 20, orange < 30, yellow < 40",
                )
            });
            header.col(|ui| {
                ui.label(RichText::new("Out err").strong()).on_hover_text(
                    "INT4 and INT8 layers after GPTQ (Calibrate & diagnose panel): the output error on the calibration \
                     inputs, ||WX - QX||^2 / ||WX||^2 with Q the quantized weight, rounded to nearest -> with GPTQ. MSE, max error and SQNR are \
                     round to nearest's weight figures",
                );
            });
            header.col(|ui| {
                ui.label(RichText::new("NaN/Inf").strong())
                    .on_hover_text("Non-finite values in the layer's main tensor");
            });
            header.col(|ui| {
                sort_header(
                    ui,
                    app,
                    "Sensitivity",
                    SortColumn::Sensitivity,
                    "Task loss of quantizing this layer (one at a time) or recovered by keeping it FP32 (all but \
                     one); larger is more sensitive. Run it from the Calibrate & diagnose panel",
                )
            });
        })
        .body(|body| {
            body.rows(ROW_HEIGHT, rows.len(), |mut row| {
                let layer_id = rows[row.index()];
                let layer = model.layer(layer_id);
                let main = model.main_tensor(layer_id);
                let info = main.map(|t| model.tensor(t));
                let analysis = app.studio.layer_analysis(layer_id).cloned();
                let planned_error = app.studio.planned_error(layer_id);
                let precision = app.studio.plan().layer(layer_id);
                row.set_selected(app.studio.table.selection.contains(&layer_id));
                row.col(|ui| {
                    let shown = fitted_name(ui, &layer.name);
                    ui.add(egui::Label::new(shown).truncate()).on_hover_text(&layer.name);
                });
                row.col(|ui| {
                    ui.label(layer.kind.as_str());
                });
                row.col(|ui| {
                    ui.label(info.map(|t| format::shape(&t.shape)).unwrap_or_default());
                });
                row.col(|ui| {
                    let params: usize = layer.tensors.iter().map(|t| model.tensor(*t).numel()).sum();
                    ui.label(format::thousands(params as u64));
                });
                row.col(|ui| {
                    ui.label(info.map(|t| t.dtype.as_str()).unwrap_or("-"));
                });
                row.col(|ui| {
                    let size: u64 = layer.tensors.iter().map(|t| model.tensor(*t).size_bytes()).sum();
                    let planned = app.studio.layer_planned_bytes(layer_id);
                    ui.label(format!("{} -> {}", format::bytes(size), format::bytes(planned)));
                });
                let analysable = main.is_some();
                row.col(|ui| {
                    if !analysable {
                        ui.label("kept");
                        return;
                    }
                    let mut chosen = precision;
                    let combo = egui::ComboBox::from_id_salt(("precision", layer_id.0))
                        .selected_text(family_label(precision))
                        .width(64.0)
                        .show_ui(ui, |ui| {
                            for (option, label) in precision_choices() {
                                let option = match (option, precision) {
                                    (Precision::Int8(_), Precision::Int8(current)) => Precision::Int8(current),
                                    (Precision::Fp8(_), Precision::Fp8(current)) => Precision::Fp8(current),
                                    (Precision::Int4(_), Precision::Int4(current)) => Precision::Int4(current),
                                    _ => option,
                                };
                                ui.selectable_value(&mut chosen, option, label);
                            }
                        });
                    name_widget(&combo.response, &format!("precision of {}", layer.name));
                    if chosen != precision {
                        let layers = targets(app, layer_id);
                        app.send(Command::SetPrecision { layers, precision: chosen });
                    }
                });
                row.col(|ui| {
                    if !analysable {
                        return;
                    }
                    if let Precision::Fp8(scheme) = precision {
                        let mut chosen = scheme;
                        let combo = egui::ComboBox::from_id_salt(("fp8-scheme", layer_id.0))
                            .selected_text(fp8_scheme_label(scheme))
                            .width(140.0)
                            .show_ui(ui, |ui| {
                                for (option, label) in fp8_scheme_choices() {
                                    ui.selectable_value(&mut chosen, option, label);
                                }
                            });
                        name_widget(&combo.response, &format!("FP8 scheme of {}", layer.name));
                        if chosen != scheme {
                            let layers = targets(app, layer_id);
                            app.send(Command::SetPrecision { layers, precision: Precision::Fp8(chosen) });
                        }
                        return;
                    }
                    if let Precision::Int4(scheme) = precision {
                        let mut chosen = scheme;
                        let combo = egui::ComboBox::from_id_salt(("int4-scheme", layer_id.0))
                            .selected_text(int4_scheme_label(scheme))
                            .width(140.0)
                            .show_ui(ui, |ui| {
                                for (option, label) in int4_scheme_choices() {
                                    ui.selectable_value(&mut chosen, option, label);
                                }
                            });
                        name_widget(&combo.response, &format!("INT4 scheme of {}", layer.name));
                        if chosen != scheme {
                            let layers = targets(app, layer_id);
                            app.send(Command::SetPrecision { layers, precision: Precision::Int4(chosen) });
                        }
                        return;
                    }
                    let Precision::Int8(scheme) = precision else { return };
                    let mut chosen = scheme;
                    let combo = egui::ComboBox::from_id_salt(("scheme", layer_id.0))
                        .selected_text(scheme_label(scheme))
                        .width(140.0)
                        .show_ui(ui, |ui| {
                            for (option, label) in scheme_choices() {
                                ui.selectable_value(&mut chosen, option, label);
                            }
                        });
                    name_widget(&combo.response, &format!("INT8 scheme of {}", layer.name));
                    if chosen != scheme {
                        let layers = targets(app, layer_id);
                        app.send(Command::SetPrecision { layers, precision: Precision::Int8(chosen) });
                    }
                });
                row.col(|ui| deploy_cell(ui, app, layer_id));
                let pending = || RichText::new("...").color(Color32::GRAY);
                row.col(|ui| {
                    match &analysis {
                        Some(a) => ui.label(format::sci(a.error.mse)),
                        None if analysable => ui.label(pending()),
                        None => ui.label(""),
                    };
                });
                row.col(|ui| {
                    match &analysis {
                        Some(a) => ui.label(format::sci(a.error.max_abs_error)),
                        None if analysable => ui.label(pending()),
                        None => ui.label(""),
                    };
                });
                row.col(|ui| {
                    match &planned_error {
                        Some(e) => planned_error_label(ui, e),
                        None if analysable => ui.label(pending()),
                        None => ui.label(""),
                    };
                });
                row.col(|ui| {
                    if let Some(gptq) = main.and_then(|t| app.studio.plan().gptq_tensor(&model, t)) {
                        ui.label(format!(
                            "{} -> {}",
                            format::sci(gptq.rtn_output_error),
                            format::sci(gptq.gptq_output_error)
                        ))
                        .on_hover_text(format!(
                            "Output error on {} calibration rows: {} rounded to nearest, {} with GPTQ",
                            gptq.rows_seen,
                            format::sci(gptq.rtn_output_error),
                            format::sci(gptq.gptq_output_error)
                        ));
                    }
                });
                row.col(|ui| {
                    if let Some(a) = &analysis
                        && a.stats.has_non_finite()
                    {
                        ui.label(
                            RichText::new(format!("! {}", a.stats.nan_count + a.stats.inf_count))
                                .color(Color32::from_rgb(235, 90, 80)),
                        )
                        .on_hover_text(format!(
                            "{} NaN, {} ±inf (excluded from every figure)",
                            a.stats.nan_count, a.stats.inf_count
                        ));
                    }
                });
                row.col(|ui| {
                    if let Some(score) = app.studio.results.sensitivity.as_ref().and_then(|s| s.scores.get(&layer_id)) {
                        ui.label(format::sci(*score));
                    }
                });
                if row.response().clicked() {
                    clicked = Some(layer_id);
                }
            });
        });
    if let Some(layer) = clicked {
        app.studio.click_row(layer, modifiers.command, modifiers.shift, rows);
    }
}

/// The layer's compatibility mark: a check when every runtime of the target loads it as planned, else a cross with
/// the runtimes that refuse it; the reasons and the fix on hover.
fn deploy_cell(ui: &mut egui::Ui, app: &StudioApp, layer: LayerId) {
    // A plan that cannot run (static W8A8 without a clip) or deploy (refused): a short mark, the reason on hover.
    if let Some(problem) = app.studio.row_problem(layer) {
        ui.label(RichText::new(problem.word()).color(Color32::from_rgb(235, 150, 60))).on_hover_text(problem.reason());
        return;
    }
    let Some(compatibility) = app.studio.compatibility.as_ref() else { return };
    let Some(check) = compatibility.layer(layer) else { return };
    if let Some(reason) = &compatibility.model_refusal {
        // No layer loads when the model itself does not: say so once per row, quietly.
        ui.label(RichText::new("model: no").color(Color32::GRAY)).on_hover_text(reason);
        return;
    }
    if check.is_clean() {
        ui.label(RichText::new("yes").color(Color32::from_rgb(90, 190, 100)))
            .on_hover_text(format!("Written {} and loaded everywhere", treatment_phrase(&check.treatment)));
    }
}

/// The error as planned: the weights' SQNR, or for static W8A8 the worse of the weights' and the input's, both on
/// hover.
fn planned_error_label(ui: &mut egui::Ui, error: &PlannedError) -> egui::Response {
    let worst = error.worst_sqnr_db();
    let label = ui.label(RichText::new(format::db(worst)).color(sqnr_color(worst)));
    match error.input {
        Some((clip, input)) => label.on_hover_text(format!(
            "weights {}, input {} at clip ±{} ({:.3}% clipped){}",
            format::db(error.weights_sqnr_db),
            format::db(input.sqnr_db),
            format::sci(clip as f64),
            input.clipped_fraction * 100.0,
            if error.input_is_worse() { ": the input sets the figure" } else { "" }
        )),
        None => label,
    }
}

fn treatment_phrase(treatment: &crate::export::Treatment) -> &'static str {
    match treatment {
        crate::export::Treatment::AsPlanned => "as planned",
        crate::export::Treatment::Cast => "cast as planned",
        crate::export::Treatment::Kept => "as stored",
        crate::export::Treatment::NotExpressible(_) => "not at all",
    }
}

/// The name cut in the middle to the cell's width (block number and leaf stay, see [`format::elide_middle`]).
/// Only visible rows are laid out, and egui caches the text layouts, so this costs a few galleys per frame.
fn fitted_name(ui: &egui::Ui, name: &str) -> String {
    let available = ui.available_width();
    let font = egui::TextStyle::Body.resolve(ui.style());
    let width = |text: &str| ui.painter().layout_no_wrap(text.to_owned(), font.clone(), Color32::WHITE).size().x;
    let full = width(name);
    if full <= available {
        return name.to_owned();
    }
    let chars = name.chars().count();
    let mut max_chars = ((chars as f32 * available / full) as usize).max(4);
    loop {
        let shown = format::elide_middle(name, max_chars);
        if max_chars <= 4 || width(&shown) <= available {
            return shown;
        }
        max_chars -= 1;
    }
}

/// The layers a per-row edit applies to: the whole selection when the row is part of a multi-row selection.
fn targets(app: &StudioApp, layer: LayerId) -> Vec<LayerId> {
    if app.studio.table.selection.len() > 1 && app.studio.table.selection.contains(&layer) {
        app.studio.table.selection.iter().copied().collect()
    } else {
        vec![layer]
    }
}

/// Gives a combo box an accessible name (screen readers and UI tests find it by that name).
fn name_widget(response: &egui::Response, name: &str) {
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::ComboBox, response.enabled(), name));
}
