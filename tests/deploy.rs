//! Exports loaded by the libraries they target: `tools/check_exports.py` exports every kind (INT8 weight-only per
//! channel, per tensor and asymmetric, FP16, BF16, static W8A8) with the CLI, loads the folder with transformers +
//! compressed-tensors (and, for all-MiniLM-L6-v2, sentence-transformers) and compares what they compute with the
//! studio's simulation saved by `eval --save-outputs` (tolerances in the script's header).
//!
//! Needs a Python with torch, transformers, compressed-tensors and sentence-transformers, found by build.rs
//! (`QUANTSTUDIO_PYTHON`): without one these tests are reported as ignored, and with `QUANTSTUDIO_REQUIRE_PYTHON=1`
//! the build fails instead.

use std::path::Path;
use std::process::Command;

use crate::common;
use crate::python::{PYTHON, REFERENCE_MODEL};

/// Runs check_exports.py on `models` with this build's binary; fails with its output unless every check passed.
fn check_exports(models: &[&Path]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = common::temp_dir();
    let output = Command::new(PYTHON)
        .arg(root.join("tools/check_exports.py"))
        .args(models)
        .args(["--quantstudio", env!("CARGO_BIN_EXE_quantstudio")])
        .arg("--work")
        .arg(work.path())
        .output()
        .expect("run check_exports.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "export check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL EXPORT CHECKS PASSED"), "{stdout}");
    println!("{stdout}");
}

/// The tiny fixtures: a GQA Llama, a tied-embedding Llama and a BERT, every export kind.
#[test]
#[cfg_attr(
    not(quantstudio_python_torch),
    ignore = "needs a Python with torch, transformers, compressed-tensors, sentence-transformers (set QUANTSTUDIO_PYTHON)"
)]
fn exports_of_the_tiny_fixtures_compute_in_transformers_what_the_studio_simulated() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    check_exports(&[&fixtures.join("tiny-llama"), &fixtures.join("tiny-llama-tied"), &fixtures.join("tiny-bert")]);
}

/// The real all-MiniLM-L6-v2: transformers and `SentenceTransformer(export).encode` against the studio.
#[test]
#[cfg_attr(
    not(all(quantstudio_python_torch, quantstudio_reference_model)),
    ignore = "needs a Python with torch, transformers, compressed-tensors, sentence-transformers (set QUANTSTUDIO_PYTHON) and QUANTSTUDIO_REFERENCE_MODEL"
)]
fn minilm_exports_compute_in_transformers_and_sentence_transformers_what_the_studio_simulated() {
    check_exports(&[Path::new(REFERENCE_MODEL)]);
}
