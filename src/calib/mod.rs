//! Calibration: activation histograms of every linear and conv layer's input over representative data, the
//! observers that pick a clipping range from them (static W8A8 inputs), and per-layer sensitivity analysis.
//! The formulas are in `docs/CALIBRATION.md`.

pub mod calibrate;
pub mod gptq;
pub mod histogram;
pub mod observer;
pub mod sensitivity;
pub mod view;

pub use calibrate::{Calibration, CalibrationRun, calibrate, default_cache_dir};
pub use histogram::ActivationHistogram;
pub use observer::{ClipError, Observer, chosen_clip, clip_error};
pub use sensitivity::{LayerSensitivity, SensitivityMode, SensitivityReport, sensitivity};
