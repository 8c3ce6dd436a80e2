//! The independent numpy implementation of the formulas (`tools/reference_check.py`) against the CLI: on the
//! bundled sample, on a hand-made model of edge values, and on a real checkpoint when CI provides one.
//!
//! Needs a Python with numpy and safetensors (`QUANTSTUDIO_PYTHON`, default `python3`). Where there is none the
//! test says so and passes, unless `QUANTSTUDIO_REQUIRE_PYTHON=1` (set by `.ci/run`), which makes it fail.

use std::path::Path;
use std::process::Command;

use crate::common;

fn python() -> Option<String> {
    let python = std::env::var("QUANTSTUDIO_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import numpy, safetensors"]).output();
    if probe.is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let required = std::env::var("QUANTSTUDIO_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(!required, "QUANTSTUDIO_REQUIRE_PYTHON=1 but {python} cannot import numpy and safetensors");
    eprintln!("skipped: {python} with numpy and safetensors not found (pip install numpy safetensors)");
    None
}

fn reference_check(python: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference_check.py");
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .args(["--quantstudio", env!("CARGO_BIN_EXE_quantstudio")])
        .output()
        .expect("run reference_check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "reference check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL CHECKS PASSED"), "{stdout}");
}

#[test]
fn numpy_reference_agrees_on_the_sample_and_on_edge_values() {
    let Some(python) = python() else { return };
    let dir = common::temp_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference_check.py");
    let made = Command::new(&python)
        .arg(&script)
        .args(["--make-awkward", dir.path().to_str().unwrap()])
        .output()
        .expect("make awkward model");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let sample = common::bundled_sample();
    reference_check(&python, &[sample.to_str().unwrap(), dir.path().to_str().unwrap()]);
}

/// A checkpoint nobody on the team made (all-MiniLM-L6-v2), when `QUANTSTUDIO_REFERENCE_MODEL` names its folder.
#[test]
fn numpy_reference_agrees_on_a_real_checkpoint() {
    let Ok(model) = std::env::var("QUANTSTUDIO_REFERENCE_MODEL") else {
        eprintln!("skipped: set QUANTSTUDIO_REFERENCE_MODEL to a model folder (.ci/run fetches all-MiniLM-L6-v2)");
        return;
    };
    let Some(python) = python() else { return };
    reference_check(&python, &[&model]);
}
