//! The calibration of the open model as the window uses it: the last run's histograms, where calibration data and
//! the cache live, and the error of each layer's input at its clip. The clips themselves are part of the plan
//! ([`super::PlanEditor`]): this part measures, the editor decides.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::editor::CalibratedLayers;
use super::{Notice, Reaction};
use crate::calib::{ClipError, Observer};
use crate::model::LayerId;
use crate::quant::Plan;
use crate::worker::Outcome;

/// One finished calibration run.
#[derive(Clone, Debug)]
pub struct LastCalibration {
    /// The data it ran on.
    pub data: PathBuf,
    /// Whether it came from the cache.
    pub from_cache: bool,
    /// Samples it ran.
    pub samples: usize,
    /// Every calibrated layer's histogram and observer clips.
    pub layers: CalibratedLayers,
}

/// The calibration state of the window.
#[derive(Clone, Debug)]
pub struct CalibrationState {
    /// The last run on the open model, if any.
    pub run: Option<LastCalibration>,
    /// The calibration file the model's folder brings, if any.
    pub default_data: Option<PathBuf>,
    /// The calibration cache folder (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Input errors by layer, with the bits of the clip they were computed at.
    errors: BTreeMap<LayerId, (u32, ClipError)>,
}

impl Default for CalibrationState {
    fn default() -> CalibrationState {
        CalibrationState {
            run: None,
            default_data: None,
            cache_dir: Some(crate::calib::default_cache_dir()),
            errors: BTreeMap::new(),
        }
    }
}

impl CalibrationState {
    /// Forgets the run and the errors (a new model); the cache folder stays.
    pub fn reset(&mut self, default_data: Option<PathBuf>) {
        self.run = None;
        self.default_data = default_data;
        self.errors.clear();
    }

    /// Whether the last run observed layer `id`'s input.
    pub fn observed(&self, id: LayerId) -> bool {
        self.run.as_ref().is_some_and(|r| r.layers.contains_key(&id))
    }

    /// The error of layer `id`'s input at `clip`, over the calibration histogram (`None` when not observed). Read
    /// from the cache when [`CalibrationState::refresh`] or [`CalibrationState::input_error_cached`] computed it at
    /// that clip.
    pub fn input_error(&self, id: LayerId, clip: f32) -> Option<ClipError> {
        match self.errors.get(&id) {
            Some((bits, error)) if *bits == clip.to_bits() => Some(*error),
            _ => Some(crate::calib::clip_error(&self.run.as_ref()?.layers.get(&id)?.histogram, clip)),
        }
    }

    /// [`CalibrationState::input_error`], kept for the next call.
    pub fn input_error_cached(&mut self, id: LayerId, clip: f32) -> Option<ClipError> {
        let error = self.input_error(id, clip)?;
        self.errors.insert(id, (clip.to_bits(), error));
        Some(error)
    }

    /// Computes the input error of every static W8A8 layer at its planned clip (after the plan or the clips
    /// changed), so that the table reads them without recomputing.
    pub fn refresh(&mut self, plan: &Plan) {
        let Some(run) = &self.run else {
            self.errors.clear();
            return;
        };
        let layers = run.layers.clone();
        self.errors.retain(|id, _| layers.contains_key(id));
        for (index, clip) in plan.input_clips.iter().enumerate() {
            let id = LayerId(index);
            if let Some(clip) = clip
                && plan.layer(id).needs_calibration()
            {
                self.input_error_cached(id, *clip);
            }
        }
    }

    /// Files a finished calibration (the observer only names itself in the notice).
    pub fn on_outcome(&mut self, outcome: &Outcome, observer: Observer) -> Reaction {
        let Outcome::Calibrated { data, from_cache, samples, layers } = outcome else { return Reaction::default() };
        let source = if *from_cache { "read from the cache" } else { "measured" };
        let text =
            format!("{} layer inputs calibrated on {samples} samples ({source}); observer {observer}", layers.len());
        self.errors.clear();
        self.run = Some(LastCalibration {
            data: data.clone(),
            from_cache: *from_cache,
            samples: *samples,
            layers: layers.clone(),
        });
        Reaction { notice: Some(Notice::info(text)), figures_changed: true, ..Reaction::default() }
    }
}
