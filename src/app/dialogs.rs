//! File dialogs behind a seam: the window asks a [`FileDialogs`] for a path and learns whether one was picked, the
//! user cancelled, or no dialog could open at all (no desktop portal and no zenity). The native implementation
//! uses rfd; tests set [`NoDialogs`] so that nothing blocks on a real dialog.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the window asks a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogRequest {
    /// A `.safetensors` file to open.
    OpenFile,
    /// A model folder to open.
    OpenFolder,
    /// Where to save the recipe.
    SaveRecipe,
    /// A recipe to load.
    LoadRecipe,
    /// The folder to export to.
    ExportFolder,
    /// The file to export to (single-file targets: `.gguf`).
    ExportFile,
    /// An evaluation or calibration data file.
    DataFile,
}

/// The answer of a dialog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialogOutcome {
    /// The user picked this path.
    Picked(PathBuf),
    /// The dialog opened and the user closed it without a path.
    Cancelled,
    /// No dialog could open (the window falls back to a path field).
    Unavailable,
}

/// Opens file dialogs.
pub trait FileDialogs {
    /// Asks for a path (blocking while a native dialog is open).
    fn ask(&mut self, request: DialogRequest) -> DialogOutcome;
}

/// rfd's dialogs. rfd answers "no path" both when the user cancels and when no dialog could open; an answer
/// faster than [`NativeDialogs::UNAVAILABLE_WITHIN`] cannot come from a person, so it means the latter.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeDialogs;

impl NativeDialogs {
    /// A "no path" answer within this time means no dialog opened.
    pub const UNAVAILABLE_WITHIN: Duration = Duration::from_millis(300);
}

impl FileDialogs for NativeDialogs {
    fn ask(&mut self, request: DialogRequest) -> DialogOutcome {
        let start = Instant::now();
        let dialog = rfd::FileDialog::new();
        let picked = match request {
            DialogRequest::OpenFile => dialog.add_filter("safetensors", &["safetensors"]).pick_file(),
            DialogRequest::OpenFolder => dialog.set_title("Open model folder").pick_folder(),
            DialogRequest::SaveRecipe => dialog.add_filter("recipe", &["json"]).save_file(),
            DialogRequest::LoadRecipe => dialog.add_filter("recipe", &["json"]).pick_file(),
            DialogRequest::ExportFolder => dialog.set_title("Export to folder").pick_folder(),
            DialogRequest::ExportFile => dialog.set_title("Export to file").add_filter("gguf", &["gguf"]).save_file(),
            DialogRequest::DataFile => dialog.add_filter("data", &["safetensors", "txt"]).pick_file(),
        };
        match picked {
            Some(path) => DialogOutcome::Picked(path),
            None if start.elapsed() < Self::UNAVAILABLE_WITHIN => DialogOutcome::Unavailable,
            None => DialogOutcome::Cancelled,
        }
    }
}

/// No dialog can open: every request is [`DialogOutcome::Unavailable`] (a machine without a desktop portal, and
/// the tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDialogs;

impl FileDialogs for NoDialogs {
    fn ask(&mut self, _request: DialogRequest) -> DialogOutcome {
        DialogOutcome::Unavailable
    }
}
