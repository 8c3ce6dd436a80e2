//! quantstudio: a quantization studio for safetensors models.
//!
//! Layers, from the bottom up (arrows point down only):
//! - [`model`]: what a checkpoint is; safetensors files and Hugging Face folders, memory-mapped.
//! - [`quant`]: precisions, schemes and their exact formulas, the fused analysis pass, error metrics, recipes.
//! - [`stats`]: summary statistics and histograms.
//! - [`export`]: the compressed-tensors folder a plan produces; temp file + rename.
//! - [`report`]: the model-wide analysis the CLI prints and the window shows.
//! - [`runtime`]: forward passes (model.json graphs, BERT, Llama) in FP32 and as a plan quantizes them; evaluation.
//! - [`calib`]: activation histograms of every layer's input, observers that pick the clip of static INT8 inputs
//!   (W8A8), cached calibration runs, per-layer sensitivity ranking.
//! - [`bench`]: throughput of the analysis pass against the read bandwidth of the same file.
//! - [`cli`]: the headless commands over the same core.
//! - [`seeded`]: the seeded generator of test, benchmark and example data.
//! - [`worker`]: the only code that spawns threads: jobs with progress and cancel, for the window.
//! - `app` (feature `gui`): the window; it only draws and sends commands.
//!
//! The core knows nothing of the GUI toolkit or threads beyond rayon's data parallelism; [`progress::Progress`] carries
//! progress and cancellation in and out.

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
