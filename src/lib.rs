//! quantstudio: a quantization studio for safetensors models.
//!
//! The layers, from the bottom up. Imports point down only: a module may import the ones listed before it, never
//! one listed after it (checked by `grep -rnE 'crate::(export|tasks|worker|cli|app)\b' src/quant src/model
//! src/stats.rs src/calib src/runtime`, which prints nothing).
//! - Foundations, importing nothing but [`error`]: [`error`] (the one `Error`), [`progress`] (progress and cancel,
//!   no threads), [`units`] (sizes written for people), [`seeded`] (the seeded generator of test data), [`stats`]
//!   (summary statistics and histograms).
//! - [`model`]: what a checkpoint is; safetensors files and Hugging Face folders, memory-mapped; the tensor-file
//!   writer (temp file + rename).
//! - [`quant`]: precisions, schemes and their exact formulas, codes, the fused analysis pass, error metrics,
//!   recipes. Imports model and the foundations.
//! - [`runtime`]: forward passes (model.json graphs, BERT, Llama) in FP32, simulated and as deployed; evaluation;
//!   timing. Imports quant and below; never export.
//! - [`calib`]: activation histograms of every layer's input, observers that pick the clip of static INT8 inputs
//!   (the one rule of which clip wins), cached calibration runs, per-layer sensitivity. Imports runtime and below.
//! - [`export`]: the targets (compressed-tensors) with what each can express, sizes as written, the export folder.
//!   Imports runtime, quant and below.
//! - [`report`] (the model-wide analysis) and [`bench`](mod@bench) (throughput of the analysis pass): above export.
//! - [`tasks`]: the use cases (open a runnable model, inspect, quantize/export, evaluate, calibrate, sensitivity,
//!   benchmark, throughput, recipes) as plain functions; the glue between the modules above lives here once.
//! - [`worker`]: the only code that spawns job threads (below the window's priority): runs tasks for the window,
//!   with progress, cancel and one job per kind. Imports tasks and the core's types.
//! - [`cli`]: the headless commands over tasks (args, one function per command, printing). Never imports worker
//!   or app.
//! - `app` (feature `gui`): the window; it only draws and sends commands to the worker. Never imports cli;
//!   nothing imports it.
//!
//! The core (everything up to tasks) knows nothing of the GUI toolkit, and of threads nothing beyond rayon's data
//! parallelism; [`progress::Progress`] carries progress and cancellation in and out.

#[cfg(feature = "gui")]
pub mod app;
pub mod bench;
pub mod calib;
pub mod cli;
pub mod error;
pub mod export;
pub mod model;
pub mod progress;
pub mod quant;
pub mod report;
pub mod runtime;
pub mod seeded;
pub mod stats;
pub mod tasks;
pub mod units;
pub mod worker;

pub use error::{Error, Result};
pub use model::Model;
pub use progress::Progress;
