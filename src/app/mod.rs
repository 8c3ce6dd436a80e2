//! The studio window (eframe/egui). It only draws and sends commands.

/// Opens the window; returns the process exit code.
pub fn run(_path: Option<std::path::PathBuf>) -> i32 {
    0
}
