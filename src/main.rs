//! The `quantstudio` binary: no subcommand opens the studio window, a subcommand runs headless.

use clap::Parser;
use quantstudio::cli::{Cli, run};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(command) => run(command),
        None => open_window(cli.path, cli.frame_stats),
    };
    std::process::exit(code);
}

#[cfg(feature = "gui")]
fn open_window(path: Option<std::path::PathBuf>, frame_stats_secs: Option<f64>) -> i32 {
    quantstudio::app::run(path, frame_stats_secs)
}

#[cfg(not(feature = "gui"))]
fn open_window(_path: Option<std::path::PathBuf>, _frame_stats_secs: Option<f64>) -> i32 {
    eprintln!("error: this build has no window (built without the `gui` feature); run `quantstudio --help`");
    2
}
