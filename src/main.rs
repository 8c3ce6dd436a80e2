//! The `quantstudio` binary: no subcommand opens the studio window, a subcommand runs headless.

use clap::Parser;
use quantstudio::cli::{Cli, run};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(command) => run(command),
        None => open_window(cli.path),
    };
    std::process::exit(code);
}

#[cfg(feature = "gui")]
fn open_window(path: Option<std::path::PathBuf>) -> i32 {
    quantstudio::app::run(path)
}

#[cfg(not(feature = "gui"))]
fn open_window(_path: Option<std::path::PathBuf>) -> i32 {
    eprintln!("error: this build has no window (built without the `gui` feature); run `quantstudio --help`");
    2
}
