//! The studio window (eframe + egui + egui_plot). It only draws and sends [`Command`]s; the [`Studio`] state
//! schedules jobs on the worker and files their results.

pub mod dialogs;
mod format;
mod panels;
pub mod state;

use eframe::egui;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use dialogs::{DialogOutcome, DialogRequest, FileDialogs, NativeDialogs, NoDialogs};
pub use panels::PathTarget;
pub use state::{Command, Preferences, Studio};

/// Key of the preferences in eframe's storage.
const PREFS_KEY: &str = "quantstudio-preferences";
/// Repaint interval while a job runs (its progress bar moves).
const BUSY_REPAINT: Duration = Duration::from_millis(50);
/// Repaint interval while a benchmark runs.
const BENCHMARK_REPAINT: Duration = Duration::from_millis(500);
/// Longest time per frame spent filing worker events.
const EVENT_BUDGET: Duration = Duration::from_millis(8);

/// The eframe application.
pub struct StudioApp {
    /// The state.
    pub studio: Studio,
    /// Commands issued while drawing this frame, applied after it.
    pending: Vec<Command>,
    /// Text of the "open path" and pattern fields.
    pub(crate) inputs: panels::Inputs,
    /// Where paths come from when the user browses (native dialogs; the tests set [`NoDialogs`]).
    dialogs: Box<dyn FileDialogs>,
    /// A dialog asked for while drawing, opened after the frame is drawn (it blocks while open).
    dialog_request: Option<(DialogRequest, PathTarget)>,
    /// The summary bar's whole-model figures, kept per studio revision.
    summary: Option<panels::SummaryFigures>,
    frame_stats: Option<FrameStats>,
}

/// Frame-time measurement for `--frame-stats` (a benchmark, not a test).
struct FrameStats {
    until: Instant,
    last_frame: Option<Instant>,
    ui_ms: Vec<f64>,
    interval_ms: Vec<f64>,
}

impl StudioApp {
    /// A studio that opens `path` (if any) at start; `wake` requests a repaint from worker threads.
    pub fn new(prefs: Preferences, path: Option<PathBuf>, wake: impl Fn() + Send + Sync + 'static) -> StudioApp {
        let mut studio = Studio::new(prefs, wake);
        if let Some(path) = path {
            studio.apply(Command::Open(path));
        }
        StudioApp {
            studio,
            pending: Vec::new(),
            inputs: panels::Inputs::default(),
            dialogs: Box::new(NativeDialogs),
            dialog_request: None,
            summary: None,
            frame_stats: None,
        }
    }

    /// The same studio asking `dialogs` for paths (tests pass [`NoDialogs`] to see the fallback).
    pub fn with_dialogs(mut self, dialogs: Box<dyn FileDialogs>) -> StudioApp {
        self.dialogs = dialogs;
        self
    }

    /// The dialog that asks where to export: a file for single-file targets (GGUF), else a folder.
    pub fn export_request(&self) -> DialogRequest {
        if self.studio.target.is_single_file() { DialogRequest::ExportFile } else { DialogRequest::ExportFolder }
    }

    /// Asks for a path for `target` with a dialog, once this frame is drawn. When no dialog can open, the status
    /// line says so and a path field takes the keyboard instead.
    pub fn browse(&mut self, request: DialogRequest, target: PathTarget) {
        self.dialog_request = Some((request, target));
    }

    /// The text of a path field (the fallback of a dialog).
    pub fn path_text(&self, target: PathTarget) -> &str {
        self.inputs.path(target)
    }

    /// The path field open because no dialog could, if any.
    pub fn path_prompt(&self) -> Option<PathTarget> {
        self.inputs.prompt
    }

    /// The text of the evaluation data field.
    pub fn inputs_eval_data(&self) -> &str {
        &self.inputs.eval_data
    }

    /// Queues a command (applied at the end of the frame).
    pub fn send(&mut self, command: Command) {
        self.pending.push(command);
    }

    /// One frame: file worker events, draw, apply the commands the drawing issued.
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        let start = Instant::now();
        self.studio.poll(EVENT_BUDGET);
        self.handle_dropped_files(ui.ctx());
        panels::shortcuts(ui.ctx(), self);
        panels::menu_bar(ui, self);
        panels::summary_bar(ui, self);
        panels::status_bar(ui, self);
        if self.studio.prefs.show_accuracy && self.studio.model.is_some() {
            panels::accuracy(ui, self);
        }
        if self.studio.prefs.show_diagnose && self.studio.model.is_some() {
            panels::diagnose(ui, self);
        }
        if self.studio.prefs.show_inspector {
            panels::inspector(ui, self);
        }
        panels::central(ui, self);
        panels::path_prompt(ui.ctx(), self);
        if let Some((request, target)) = self.dialog_request.take() {
            self.run_dialog(request, target);
        }
        for command in std::mem::take(&mut self.pending) {
            self.studio.apply(command);
        }
        if self.studio.is_busy() {
            // While a benchmark times runs, draw its progress twice a second only: every frame takes CPU (all of a
            // core with a software renderer) from the runs being timed.
            let benchmarking = self.studio.jobs().iter().any(|(kind, _, _)| *kind == crate::worker::JobKind::Benchmark);
            let interval = if benchmarking { BENCHMARK_REPAINT } else { BUSY_REPAINT };
            ui.ctx().request_repaint_after(interval);
        }
        self.record_frame(ui.ctx(), start);
    }

    fn run_dialog(&mut self, request: DialogRequest, target: PathTarget) {
        match self.dialogs.ask(request) {
            DialogOutcome::Picked(path) => self.use_path(target, path),
            DialogOutcome::Cancelled => {}
            DialogOutcome::Unavailable => {
                self.studio.notice = Some(state::Notice::info("no file dialog available: type the path in the field"));
                self.inputs.show_path_field(target);
            }
        }
    }

    /// Sends the command a path is for, or fills the data field it is for.
    pub(crate) fn use_path(&mut self, target: PathTarget, path: PathBuf) {
        match target {
            PathTarget::Open => self.send(Command::Open(path)),
            PathTarget::SaveRecipe => self.send(Command::SaveRecipe(path)),
            PathTarget::LoadRecipe => self.send(Command::LoadRecipe(path)),
            PathTarget::Export => self.send(Command::Export { dest: path, force: false }),
            PathTarget::EvalData | PathTarget::CalibData | PathTarget::PerplexityText => {
                *self.inputs.path_mut(target) = path.display().to_string()
            }
        }
    }

    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).filter(|p| !p.as_os_str().is_empty()).collect()
        });
        if let Some(path) = dropped.into_iter().next() {
            self.send(Command::Open(path));
        }
    }

    fn record_frame(&mut self, ctx: &egui::Context, start: Instant) {
        let Some(stats) = &mut self.frame_stats else { return };
        let now = Instant::now();
        stats.ui_ms.push(now.duration_since(start).as_secs_f64() * 1e3);
        if let Some(last) = stats.last_frame {
            stats.interval_ms.push(start.duration_since(last).as_secs_f64() * 1e3);
        }
        stats.last_frame = Some(start);
        if now < stats.until {
            ctx.request_repaint();
            return;
        }
        let report = serde_json::json!({
            "frames": stats.ui_ms.len(),
            "ui_ms_p50": percentile(&stats.ui_ms, 0.50),
            "ui_ms_p99": percentile(&stats.ui_ms, 0.99),
            "ui_ms_max": percentile(&stats.ui_ms, 1.0),
            "frame_interval_ms_p50": percentile(&stats.interval_ms, 0.50),
            "frame_interval_ms_p99": percentile(&stats.interval_ms, 0.99),
            "analysed_tensors": self.studio.analyses.len(),
            "jobs_running": self.studio.is_busy(),
        });
        eprintln!("{report}");
        self.frame_stats = None;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame_ui(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, PREFS_KEY, &self.studio.prefs);
    }
}

/// The bundled sample opened when no path is given: the digits MLP.
pub fn default_model() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-models/digits-mlp"),
        PathBuf::from("sample-models/digits-mlp"),
    ];
    candidates.into_iter().find(|p| p.exists())
}

/// Opens the window on `path` (or the bundled sample); returns the process exit code. With `frame_stats_secs`,
/// records frame times for that long, prints them as JSON on stderr and closes.
pub fn run(path: Option<PathBuf>, frame_stats_secs: Option<f64>) -> i32 {
    let path = path.or_else(default_model);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("quantstudio")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([800.0, 500.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let result = eframe::run_native(
        "quantstudio",
        options,
        Box::new(move |cc| {
            let prefs: Preferences = cc.storage.and_then(|s| eframe::get_value(s, PREFS_KEY)).unwrap_or_default();
            let ctx = cc.egui_ctx.clone();
            let mut app = StudioApp::new(prefs, path, move || ctx.request_repaint());
            if let Some(secs) = frame_stats_secs {
                app.frame_stats = Some(FrameStats {
                    until: Instant::now() + Duration::from_secs_f64(secs),
                    last_frame: None,
                    ui_ms: Vec::new(),
                    interval_ms: Vec::new(),
                });
            }
            Ok(Box::new(app))
        }),
    );
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: cannot open the window: {error}");
            1
        }
    }
}
