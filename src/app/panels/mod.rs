//! The panels of the window. Each function draws from the state and pushes commands; none computes.

mod accuracy;
mod axes;
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
use super::dialogs::DialogRequest;
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
    /// The perplexity text path field.
    pub perplexity_text: String,
    /// Tokens per perplexity chunk.
    pub perplexity_ctx: usize,
    /// The most perplexity chunks to run (0: every whole chunk).
    pub perplexity_chunks: usize,
    /// The calibration data path field.
    pub calib_data: String,
    /// The model the calibration field was filled for.
    pub calib_data_model: Option<PathBuf>,
    /// GPTQ's act-order choice.
    pub gptq_act_order: bool,
    /// The sensitivity mode to run.
    pub sensitivity_mode: crate::calib::SensitivityMode,
    /// How many of the most sensitive layers the one-click buttons change.
    pub most_sensitive_count: usize,
    /// The path field shown in a window because no file dialog could open (Ctrl+O, Ctrl+S, Ctrl+E, the menu).
    pub prompt: Option<PathTarget>,
    /// A path field that takes the keyboard in the next frame.
    pub focus: Option<PathTarget>,
}

/// What a path typed or picked is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathTarget {
    /// A model file or folder to open.
    Open,
    /// Where to save the recipe.
    SaveRecipe,
    /// A recipe to load.
    LoadRecipe,
    /// The folder to export to.
    Export,
    /// The accuracy panel's data file.
    EvalData,
    /// The calibration data file.
    CalibData,
    /// The text of the perplexity run.
    PerplexityText,
}

impl PathTarget {
    /// The label of its path field.
    pub fn label(self) -> &'static str {
        match self {
            PathTarget::Open => "Model path",
            PathTarget::SaveRecipe => "Save recipe to",
            PathTarget::LoadRecipe => "Recipe path",
            PathTarget::Export => "Export to folder",
            PathTarget::EvalData => "Data",
            PathTarget::CalibData => "Calibration data",
            PathTarget::PerplexityText => "Perplexity text",
        }
    }

    /// The title of the window that asks for it when no dialog can.
    fn title(self) -> &'static str {
        match self {
            PathTarget::Open => "Open a model",
            PathTarget::SaveRecipe => "Save the recipe",
            PathTarget::LoadRecipe => "Load a recipe",
            PathTarget::Export => "Export the plan",
            PathTarget::EvalData => "Evaluation data",
            PathTarget::CalibData => "Calibration data",
            PathTarget::PerplexityText => "Perplexity text",
        }
    }

    /// The button that uses the path.
    fn action(self) -> &'static str {
        match self {
            PathTarget::Open => "Open",
            PathTarget::SaveRecipe => "Save",
            PathTarget::LoadRecipe => "Load",
            PathTarget::Export => "Export",
            PathTarget::EvalData | PathTarget::CalibData | PathTarget::PerplexityText => "Use",
        }
    }
}

impl Inputs {
    /// The text of the field for `target`.
    pub fn path(&self, target: PathTarget) -> &str {
        match target {
            PathTarget::Open => &self.open_path,
            PathTarget::SaveRecipe => &self.save_recipe_path,
            PathTarget::LoadRecipe => &self.recipe_path,
            PathTarget::Export => &self.export_path,
            PathTarget::EvalData => &self.eval_data,
            PathTarget::CalibData => &self.calib_data,
            PathTarget::PerplexityText => &self.perplexity_text,
        }
    }

    /// The text of the field for `target`, to edit.
    pub fn path_mut(&mut self, target: PathTarget) -> &mut String {
        match target {
            PathTarget::Open => &mut self.open_path,
            PathTarget::SaveRecipe => &mut self.save_recipe_path,
            PathTarget::LoadRecipe => &mut self.recipe_path,
            PathTarget::Export => &mut self.export_path,
            PathTarget::EvalData => &mut self.eval_data,
            PathTarget::CalibData => &mut self.calib_data,
            PathTarget::PerplexityText => &mut self.perplexity_text,
        }
    }

    /// Shows the path field for `target` (the panels' data fields are always shown; the others open in a
    /// window) and gives it the keyboard.
    pub fn show_path_field(&mut self, target: PathTarget) {
        if !matches!(target, PathTarget::EvalData | PathTarget::CalibData | PathTarget::PerplexityText) {
            self.prompt = Some(target);
        }
        self.focus = Some(target);
    }

    /// Whether the field for `target` should take the keyboard now (once).
    pub fn take_focus(&mut self, target: PathTarget) -> bool {
        if self.focus == Some(target) {
            self.focus = None;
            true
        } else {
            false
        }
    }
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
            perplexity_text: String::new(),
            perplexity_ctx: crate::runtime::perplexity::DEFAULT_CTX_TOKENS,
            perplexity_chunks: 0,
            calib_data: String::new(),
            calib_data_model: None,
            gptq_act_order: false,
            sensitivity_mode: crate::calib::SensitivityMode::OneAtATime,
            most_sensitive_count: 3,
            prompt: None,
            focus: None,
        }
    }
}

/// The default and the largest height of each of the two bottom panels: together 30% of the window by default
/// (the table keeps the rest), each up to 40% when dragged.
pub fn bottom_panel_sizes(ctx: &egui::Context) -> (f32, f32) {
    let height = ctx.content_rect().height();
    ((height * 0.15).max(80.0), (height * 0.4).max(120.0))
}

/// A hint or a caption: body size and the text colour (small grey text was hard to read).
pub fn hint(ui: &mut egui::Ui, text: impl Into<String>) -> egui::Response {
    let color = ui.visuals().text_color();
    ui.label(RichText::new(text.into()).color(color))
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
    if open {
        app.browse(DialogRequest::OpenFile, PathTarget::Open);
    }
    let has_model = app.studio.model.is_some();
    if export && has_model {
        app.browse(app.export_request(), PathTarget::Export);
    }
    if save && has_model {
        app.browse(DialogRequest::SaveRecipe, PathTarget::SaveRecipe);
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
        app.browse(DialogRequest::OpenFile, PathTarget::Open);
    }
    if ui.button("Open folder...").clicked() {
        ui.close();
        app.browse(DialogRequest::OpenFolder, PathTarget::Open);
    }
    menu_path_field(ui, app, PathTarget::Open);
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
        app.browse(DialogRequest::SaveRecipe, PathTarget::SaveRecipe);
    }
    if ui.add_enabled(has_model, egui::Button::new("Load recipe...")).clicked() {
        ui.close();
        app.browse(DialogRequest::LoadRecipe, PathTarget::LoadRecipe);
    }
    menu_path_field(ui, app, PathTarget::LoadRecipe);
    menu_path_field(ui, app, PathTarget::SaveRecipe);
    ui.separator();
    ui.horizontal(|ui| {
        ui.label("Export target");
        for target in crate::export::Target::ALL {
            if ui.selectable_label(app.studio.target == target, target.to_string()).clicked()
                && app.studio.target != target
            {
                app.send(Command::SetTarget(target));
            }
        }
    });
    if ui.add_enabled(has_model, egui::Button::new("Export...").shortcut_text("Ctrl+E")).clicked() {
        ui.close();
        app.browse(app.export_request(), PathTarget::Export);
    }
    menu_path_field(ui, app, PathTarget::Export);
}

/// A path field of the File menu: the path alternative of every native dialog.
fn menu_path_field(ui: &mut egui::Ui, app: &mut StudioApp, target: PathTarget) {
    let submitted = ui.horizontal(|ui| path_field(ui, app, target, 220.0)).inner;
    if submitted {
        ui.close();
    }
}

/// A labelled path field and its action button; returns whether the path was used (button or Enter). It looks
/// like an enabled field wherever it is drawn (menus draw their widgets without a frame, which made the File
/// menu's fields look greyed out).
fn path_field(ui: &mut egui::Ui, app: &mut StudioApp, target: PathTarget, width: f32) -> bool {
    let label = ui.label(if target == PathTarget::Export && app.studio.target.is_single_file() {
        "Export to file (.gguf)"
    } else {
        target.label()
    });
    let global = ui.ctx().global_style();
    ui.style_mut().visuals.widgets = global.visuals.widgets.clone();
    // A visible outline: a field that reads as a place to type, in a menu as anywhere.
    let outline = ui.visuals().widgets.inactive.fg_stroke.color.gamma_multiply(0.6);
    ui.style_mut().visuals.widgets.inactive.bg_stroke = egui::Stroke::new(1.0, outline);
    let text = app.inputs.path_mut(target);
    let field = ui
        .add(
            egui::TextEdit::singleline(text)
                .desired_width(width)
                .background_color(ui.visuals().extreme_bg_color)
                .hint_text(
                    RichText::new("type a path, then Enter").color(ui.visuals().text_color().gamma_multiply(0.6)),
                ),
        )
        .labelled_by(label.id);
    if app.inputs.take_focus(target) {
        field.request_focus();
    }
    let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    let text = app.inputs.path(target).trim().to_owned();
    let clicked = ui.add_enabled(!text.is_empty(), egui::Button::new(target.action())).clicked();
    if (clicked || entered) && !text.is_empty() {
        app.use_path(target, PathBuf::from(text));
        return true;
    }
    false
}

/// The path field that stands in for a dialog that could not open: a small window near the top, the field
/// focused, Enter or the button to use the path, Escape or Cancel to close.
pub fn path_prompt(ctx: &egui::Context, app: &mut StudioApp) {
    let Some(target) = app.inputs.prompt else { return };
    let mut open = true;
    let mut done = false;
    egui::Window::new(target.title())
        .id(egui::Id::unique("path-prompt"))
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_TOP, egui::vec2(0.0, 90.0))
        .show(ctx, |ui| {
            ui.label("No file dialog could open on this system: type the path.");
            ui.horizontal(|ui| {
                done = path_field(ui, app, target, 420.0);
                if ui.button("Cancel").clicked() || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                    done = true;
                }
            });
        });
    if done || !open {
        app.inputs.prompt = None;
    }
}

/// The summary bar's figures that loop over every layer, computed once per studio revision rather than in every
/// frame (a frame's work follows what is on screen, not the model's size).
pub struct SummaryFigures {
    /// The studio revision and model they were computed for.
    key: (u64, usize),
    /// The layer with the lowest weight SQNR, and that SQNR.
    worst: Option<(crate::model::LayerId, f64)>,
    /// Layers per precision name.
    counts: [(&'static str, usize); 10],
    /// The export target's problems with the plan, one per line.
    problems: Vec<String>,
    /// Layers the one-click fix changes.
    fixes: usize,
}

impl SummaryFigures {
    /// The figures of the studio's current revision (recomputed when it changed).
    fn of<'a>(cache: &'a mut Option<SummaryFigures>, studio: &super::Studio) -> Option<&'a SummaryFigures> {
        let model = studio.model.as_ref()?;
        let key = (studio.revision, std::sync::Arc::as_ptr(model) as usize);
        if cache.as_ref().is_none_or(|c| c.key != key) {
            let worst = (0..model.layers.len())
                .map(crate::model::LayerId)
                .filter_map(|l| studio.layer_analysis(l).and_then(|a| a.error.sqnr_db).map(|db| (l, db)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let compatibility = studio.compatibility.as_ref();
            *cache = Some(SummaryFigures {
                key,
                worst,
                counts: studio.precision_counts(),
                problems: compatibility.map(|c| c.problems(model)).unwrap_or_default(),
                fixes: compatibility.map_or(0, |c| c.layers.iter().filter(|l| l.fix.is_some()).count()),
            });
        }
        cache.as_ref()
    }
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
            let Some(figures) = SummaryFigures::of(&mut app.summary, studio) else { return };
            match figures.worst {
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
            for (name, count) in figures.counts {
                if (name.starts_with("W8A8") || name.starts_with("FP8")) && count == 0 {
                    continue;
                }
                ui.label(format!("{name} {count}"));
            }
            ui.separator();
            let (problems, fixes) = (figures.problems.clone(), figures.fixes);
            deploy_status(ui, app, &problems, fixes);
        });
    });
}

/// Whether the export target's runtimes load the plan: a green or orange line with the refused layers on hover,
/// the one-click fix, and "Export anyway" after a refused export.
fn deploy_status(ui: &mut egui::Ui, app: &mut StudioApp, problems: &[String], fixes: usize) {
    let Some(compatibility) = app.studio.compatibility.as_ref() else { return };
    let clean = compatibility.is_clean();
    let color = if clean { Color32::from_rgb(90, 190, 100) } else { Color32::from_rgb(235, 150, 60) };
    let hover = if problems.is_empty() {
        format!("Every layer is written as planned and loads in {}", runtimes_phrase(compatibility.target))
    } else {
        problems.join("\n")
    };
    // Short, so that the bar stays one line; the window's font has no ✓ or ✗.
    let text = format!("Loads in {}", compatibility.verdicts(": yes", ": no"));
    ui.label(RichText::new(text).color(color)).on_hover_text(format!("{} export\n{hover}", compatibility.target));
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
                // The job and its stage beside the bar: a job's stages each count from 0%, so the percentage
                // alone would seem to go backwards.
                let stage = if progress.stage.is_empty() {
                    kind.label().to_owned()
                } else if progress.stage.starts_with(kind.label()) {
                    progress.stage.clone()
                } else {
                    format!("{}: {}", kind.label(), progress.stage)
                };
                ui.label(stage);
                ui.add(egui::ProgressBar::new(progress.fraction()).desired_width(140.0).show_percentage());
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
pub fn precision_choices() -> [(Precision, &'static str); 10] {
    let fp8 = Precision::Fp8(crate::quant::Fp8Scheme::weights(crate::quant::Granularity::PerChannel));
    [
        (DEFAULT_INT8, "INT8"),
        (fp8, "FP8"),
        (Precision::Int4(crate::quant::Int4Scheme::default()), "INT4"),
        (Precision::Fp16, "FP16"),
        (Precision::Bf16, "BF16"),
        (Precision::Fp32, "FP32"),
        (Precision::Q8_0, "Q8_0"),
        (Precision::Q4_0, "Q4_0"),
        (Precision::Q4K, "Q4_K"),
        (Precision::Q6K, "Q6_K"),
    ]
}

/// The label of a precision's family (INT8 / FP8 / FP16 / BF16 / FP32), or llama.cpp's name of a block format.
pub fn family_label(precision: Precision) -> &'static str {
    match precision {
        Precision::Int8(_) => "INT8",
        Precision::Fp8(_) => "FP8",
        Precision::Int4(_) => "INT4",
        Precision::Fp16 => "FP16",
        Precision::Bf16 => "BF16",
        Precision::Fp32 => "FP32",
        Precision::Q8_0 => "Q8_0",
        Precision::Q4_0 => "Q4_0",
        Precision::Q4K => "Q4_K",
        Precision::Q6K => "Q6_K",
    }
}
