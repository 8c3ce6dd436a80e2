//! The panels of the window. Each function draws from the state and pushes commands; none computes.

mod accuracy;
mod benchmark;
mod calibration;
mod inspector;
mod table;

use eframe::egui;
use std::path::PathBuf;

use egui::{Color32, RichText};

pub use accuracy::accuracy;
pub use calibration::diagnose;
pub use inspector::inspector;
pub use table::central;

use super::StudioApp;
use super::format;
use super::state::{Command, DEFAULT_INT8};
use crate::quant::Precision;

/// Text fields that live across frames.
pub struct Inputs {
    /// "Open path" field of the File menu.
    pub open_path: String,
    /// "Export to" field of the File menu.
    pub export_path: String,
    /// "Load recipe" path field.
    pub recipe_path: String,
    /// "Save recipe" path field.
    pub save_recipe_path: String,
    /// The precision the bulk buttons apply.
    pub bulk_precision: Option<Precision>,
    /// The evaluation data path field.
    pub eval_data: String,
    /// The model the data field was filled for (a new model brings its own default).
    pub eval_data_model: Option<PathBuf>,
    /// The calibration data path field.
    pub calib_data: String,
    /// The model the calibration field was filled for.
    pub calib_data_model: Option<PathBuf>,
    /// The sensitivity mode to run.
    pub sensitivity_mode: crate::calib::SensitivityMode,
    /// How many of the most sensitive layers the one-click buttons change.
    pub most_sensitive_count: usize,
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs {
            open_path: String::new(),
            export_path: String::new(),
            recipe_path: String::new(),
            save_recipe_path: String::new(),
            bulk_precision: None,
            eval_data: String::new(),
            eval_data_model: None,
            calib_data: String::new(),
            calib_data_model: None,
            sensitivity_mode: crate::calib::SensitivityMode::OneAtATime,
            most_sensitive_count: 3,
        }
    }
}

/// The colour of an SQNR figure: red below 20 dB, orange below 30, yellow below 40, green above.
pub fn sqnr_color(sqnr_db: Option<f64>) -> Color32 {
    match sqnr_db {
        None => Color32::from_rgb(120, 200, 120),
        Some(db) if db < 20.0 => Color32::from_rgb(235, 80, 70),
        Some(db) if db < 30.0 => Color32::from_rgb(240, 150, 60),
        Some(db) if db < 40.0 => Color32::from_rgb(220, 200, 80),
        Some(_) => Color32::from_rgb(120, 200, 120),
    }
}

/// Keyboard shortcuts: Ctrl+O open, Ctrl+E export, Ctrl+S save recipe, Ctrl+Z undo, Ctrl+Shift+Z / Ctrl+Y redo.
pub fn shortcuts(ctx: &egui::Context, app: &mut StudioApp) {
    use egui::{Key, KeyboardShortcut, Modifiers};
    let redo = KeyboardShortcut::new(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    let undo = KeyboardShortcut::new(Modifiers::COMMAND, Key::Z);
    let (open, export, save, redo_pressed, undo_pressed, redo_y) = ctx.input_mut(|i| {
        (
            i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::O)),
            i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::E)),
            i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::S)),
            i.consume_shortcut(&redo),
            i.consume_shortcut(&undo),
            i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::Y)),
        )
    });
    if redo_pressed || redo_y {
        app.send(Command::Redo);
    } else if undo_pressed {
        app.send(Command::Undo);
    }
    if open && let Some(path) = rfd::FileDialog::new().add_filter("safetensors", &["safetensors"]).pick_file() {
        app.send(Command::Open(path));
    }
    if export && let Some(path) = rfd::FileDialog::new().set_title("Export to folder").pick_folder() {
        app.send(Command::Export { dest: path, force: false });
    }
    if save && let Some(path) = rfd::FileDialog::new().add_filter("recipe", &["json"]).save_file() {
        app.send(Command::SaveRecipe(path));
    }
}

/// File / Edit / View menus.
pub fn menu_bar(ui: &mut egui::Ui, app: &mut StudioApp) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| file_menu(ui, app));
            ui.menu_button("Edit", |ui| {
                if ui.add_enabled(app.studio.can_undo(), egui::Button::new("Undo").shortcut_text("Ctrl+Z")).clicked() {
                    app.send(Command::Undo);
                    ui.close();
                }
                if ui
                    .add_enabled(app.studio.can_redo(), egui::Button::new("Redo").shortcut_text("Ctrl+Shift+Z"))
                    .clicked()
                {
                    app.send(Command::Redo);
                    ui.close();
                }
            });
            ui.menu_button("View", |ui| {
                ui.checkbox(&mut app.studio.prefs.show_inspector, "Inspector");
                ui.checkbox(&mut app.studio.prefs.show_accuracy, "Accuracy panel");
                ui.checkbox(&mut app.studio.prefs.show_diagnose, "Calibrate & diagnose panel");
                ui.checkbox(&mut app.studio.prefs.log_counts, "Log-scale histogram counts");
            });
        });
    });
}

fn file_menu(ui: &mut egui::Ui, app: &mut StudioApp) {
    if ui.add(egui::Button::new("Open file...").shortcut_text("Ctrl+O")).clicked() {
        ui.close();
        if let Some(path) = rfd::FileDialog::new().add_filter("safetensors", &["safetensors"]).pick_file() {
            app.send(Command::Open(path));
        }
    }
    if ui.button("Open folder...").clicked() {
        ui.close();
        if let Some(path) = rfd::FileDialog::new().pick_folder() {
            app.send(Command::Open(path));
        }
    }
    path_field(ui, "Open path", &mut app.inputs.open_path, "Open", |path| app.pending.push(Command::Open(path)));
    ui.menu_button("Open recent", |ui| {
        if app.studio.prefs.recent.is_empty() {
            ui.label("(none yet)");
        }
        for path in app.studio.prefs.recent.clone() {
            if ui.button(path.display().to_string()).clicked() {
                app.send(Command::Open(path));
                ui.close();
            }
        }
    });
    ui.separator();
    let has_model = app.studio.model.is_some();
    if ui.add_enabled(has_model, egui::Button::new("Save recipe...").shortcut_text("Ctrl+S")).clicked() {
        ui.close();
        if let Some(path) = rfd::FileDialog::new().add_filter("recipe", &["json"]).save_file() {
            app.send(Command::SaveRecipe(path));
        }
    }
    if ui.add_enabled(has_model, egui::Button::new("Load recipe...")).clicked() {
        ui.close();
        if let Some(path) = rfd::FileDialog::new().add_filter("recipe", &["json"]).pick_file() {
            app.send(Command::LoadRecipe(path));
        }
    }
    let pending = &mut app.pending;
    path_field(ui, "Load recipe", &mut app.inputs.recipe_path, "Load", |path| pending.push(Command::LoadRecipe(path)));
    let pending = &mut app.pending;
    path_field(ui, "Save recipe", &mut app.inputs.save_recipe_path, "Save", |path| {
        pending.push(Command::SaveRecipe(path))
    });
    ui.separator();
    if ui.add_enabled(has_model, egui::Button::new("Export...").shortcut_text("Ctrl+E")).clicked() {
        ui.close();
        if let Some(path) = rfd::FileDialog::new().set_title("Export to folder").pick_folder() {
            app.send(Command::Export { dest: path, force: false });
        }
    }
    let pending = &mut app.pending;
    path_field(ui, "Export to", &mut app.inputs.export_path, "Export", |path| {
        pending.push(Command::Export { dest: path, force: false })
    });
}

/// A text field with a button: the path alternative of every native dialog.
fn path_field(ui: &mut egui::Ui, label: &str, text: &mut String, action: &str, mut on_submit: impl FnMut(PathBuf)) {
    ui.horizontal(|ui| {
        ui.label(label);
        let field = ui.add(egui::TextEdit::singleline(text).desired_width(220.0).hint_text("path"));
        let submitted = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.button(action).clicked() || submitted) && !text.trim().is_empty() {
            on_submit(PathBuf::from(text.trim()));
            ui.close();
        }
    });
}

/// The always-visible summary: sizes, compression, worst layer, precision counts.
pub fn summary_bar(ui: &mut egui::Ui, app: &mut StudioApp) {
    egui::Panel::top("summary").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            let studio = &app.studio;
            let Some(model) = &studio.model else {
                ui.label(match &studio.model_path {
                    Some(p) => format!("Opening {}...", p.display()),
                    None => "No model open. File > Open, or drop a .safetensors file or model folder here.".into(),
                });
                return;
            };
            let name = model.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            ui.label(RichText::new(name).strong()).on_hover_text(model.path.display().to_string());
            ui.separator();
            let (size, planned) = (model.size_bytes(), studio.planned_bytes());
            let ratio = if planned == 0 { 1.0 } else { size as f64 / planned as f64 };
            ui.label(format!("Size {} -> {}", format::bytes(size), format::bytes(planned)))
                .on_hover_text("Tensor data as stored -> as exported under the current plan (scales included)");
            ui.label(RichText::new(format!("{ratio:.2}× smaller")).strong());
            ui.separator();
            let worst = (0..model.layers.len())
                .map(crate::model::LayerId)
                .filter_map(|l| studio.layer_analysis(l).and_then(|a| a.error.sqnr_db).map(|db| (l, db)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match worst {
                Some((layer, db)) => {
                    ui.label("Worst SQNR:");
                    ui.label(RichText::new(format::db(Some(db))).color(sqnr_color(Some(db))))
                        .on_hover_text("Signal-to-quantization-noise ratio, 10·log10(Σx² / Σe²); higher is better");
                    ui.label(&model.layer(layer).name);
                }
                None => {
                    ui.label("Worst SQNR: –");
                }
            }
            ui.separator();
            for (name, count) in studio.precision_counts() {
                if (name.starts_with("W8A8") || name.starts_with("FP8")) && count == 0 {
                    continue;
                }
                ui.label(format!("{name} {count}"));
            }
            ui.separator();
            deploy_status(ui, app);
        });
    });
}

/// Whether the export target's runtimes load the plan: a green or orange line with the refused layers on hover,
/// the one-click fix, and "Export anyway" after a refused export.
fn deploy_status(ui: &mut egui::Ui, app: &mut StudioApp) {
    let Some((compatibility, model)) = app.studio.compatibility.as_ref().zip(app.studio.model.as_ref()) else {
        return;
    };
    let clean = compatibility.is_clean();
    let color = if clean { Color32::from_rgb(90, 190, 100) } else { Color32::from_rgb(235, 150, 60) };
    let problems = compatibility.problems(model);
    let hover = if problems.is_empty() {
        format!("Every layer is written as planned and loads in {}", runtimes_phrase(compatibility.target))
    } else {
        problems.join("\n")
    };
    // Short, so that the bar stays one line; the window's font has no ✓ or ✗.
    let text = format!("Loads in {}", compatibility.verdicts(": yes", ": no"));
    ui.label(RichText::new(text).color(color)).on_hover_text(format!("{} export\n{hover}", compatibility.target));
    let fixes = compatibility.layers.iter().filter(|l| l.fix.is_some()).count();
    if fixes > 0
        && ui
            .button(format!("Fix {fixes} layer{}", if fixes == 1 { "" } else { "s" }))
            .on_hover_text("Give each refused layer the precision every runtime loads (undoable)")
            .clicked()
    {
        app.send(Command::ApplyExportFixes);
    }
    if let Some(dest) = app.studio.refused_export.clone()
        && ui
            .button("Export anyway")
            .on_hover_text(format!("Write {} even though a runtime will not load it", dest.display()))
            .clicked()
    {
        app.send(Command::Export { dest, force: true });
    }
}

/// `transformers and vLLM`.
fn runtimes_phrase(target: crate::export::Target) -> String {
    target.runtimes().iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" and ")
}

/// Jobs with progress and Cancel, and the current notice.
pub fn status_bar(ui: &mut egui::Ui, app: &mut StudioApp) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            for (kind, _, progress) in app.studio.jobs() {
                let text = if progress.stage.is_empty() { kind.label().to_owned() } else { progress.stage.clone() };
                ui.add(egui::ProgressBar::new(progress.fraction()).desired_width(180.0).text(text).show_percentage());
                if ui.small_button("Cancel").on_hover_text(format!("Cancel {}", kind.label())).clicked() {
                    app.send(Command::Cancel(kind));
                }
                ui.separator();
            }
            if let Some(notice) = app.studio.notice.clone() {
                let color = if notice.is_error { Color32::from_rgb(235, 90, 80) } else { ui.visuals().text_color() };
                if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                    app.send(Command::DismissNotice);
                }
                ui.label(RichText::new(notice.text).color(color));
            } else if app.studio.jobs().is_empty() {
                ui.label("Ready");
            }
        });
    });
}

/// The precisions offered in combos, with their labels.
pub fn precision_choices() -> [(Precision, &'static str); 5] {
    let fp8 = Precision::Fp8(crate::quant::Fp8Scheme::weights(crate::quant::Granularity::PerChannel));
    [
        (DEFAULT_INT8, "INT8"),
        (fp8, "FP8"),
        (Precision::Fp16, "FP16"),
        (Precision::Bf16, "BF16"),
        (Precision::Fp32, "FP32"),
    ]
}

/// The label of a precision's family (INT8 / FP8 / FP16 / BF16 / FP32).
pub fn family_label(precision: Precision) -> &'static str {
    match precision {
        Precision::Int8(_) => "INT8",
        Precision::Fp8(_) => "FP8",
        Precision::Fp16 => "FP16",
        Precision::Bf16 => "BF16",
        Precision::Fp32 => "FP32",
    }
}
