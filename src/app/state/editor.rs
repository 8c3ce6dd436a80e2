//! The plan editor: what the user edits (a precision per layer, the input clips set by hand, the observer that picks
//! the other clips), undo and redo over all of it, and the [`Plan`] the jobs receive, its clips resolved against the
//! calibration. Independent of the table's selection and of egui.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{NameFilter, Notice, Reaction};
use crate::calib::Observer;
use crate::calib::view::LayerActivations;
use crate::export::Compatibility;
use crate::model::{LayerId, Model};
use crate::quant::gptq::GptqWeights;
use crate::quant::{Plan, Precision};
use crate::worker::Outcome;

/// The observer a new model's plan starts with.
pub const DEFAULT_OBSERVER: Observer = Observer::Percentile { percentile: 99.99 };

/// Undo steps kept.
const MAX_UNDO: usize = 200;

/// Every layer input a calibration observed, with its histogram and observer clips.
pub type CalibratedLayers = Arc<BTreeMap<LayerId, LayerActivations>>;

/// One state of the plan as the user edits it: what undo and redo step between.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEdit {
    /// One precision per layer, indexed by [`LayerId`].
    pub layers: Vec<Precision>,
    /// Input clips (absolute value) set by hand or brought by a recipe; they win over the observer.
    pub clip_overrides: BTreeMap<LayerId, f32>,
    /// The observer that picks every other calibrated layer's input clip.
    pub observer: Observer,
    /// The GPTQ weights of the INT4 and INT8 layers, from the last GPTQ run (or the recipe that ran it).
    pub gptq: Option<Arc<GptqWeights>>,
}

/// The plan being edited, with its history.
///
/// Undo and redo restore a whole [`PlanEdit`]: a precision change, a hand-set clip, a reset clip and an observer
/// change are each one step. The clips the jobs use ([`Plan::input_clips`]) are derived, never stored: the hand-set
/// clip of a layer if any, else the observer's clip when the calibration observed the layer, else none. So an undone
/// clip edit also takes effect under a calibration that arrived after it.
#[derive(Clone, Debug)]
pub struct PlanEditor {
    edit: PlanEdit,
    undo: Vec<PlanEdit>,
    redo: Vec<PlanEdit>,
    calibrated: Option<CalibratedLayers>,
    plan: Plan,
}

impl Default for PlanEditor {
    fn default() -> PlanEditor {
        PlanEditor::new(Plan::fp32(0))
    }
}

impl PlanEditor {
    /// An editor starting at `plan` with no history; the plan's clips become hand-set clips.
    pub fn new(plan: Plan) -> PlanEditor {
        let clip_overrides = clips_of(&plan);
        let edit = PlanEdit {
            layers: plan.layers.clone(),
            clip_overrides,
            observer: DEFAULT_OBSERVER,
            gptq: plan.gptq.clone(),
        };
        let mut editor = PlanEditor { edit, undo: Vec::new(), redo: Vec::new(), calibrated: None, plan };
        editor.resolve();
        editor
    }

    /// The plan as the jobs use it (clips resolved).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The current edit state.
    pub fn edit(&self) -> &PlanEdit {
        &self.edit
    }

    /// The observer that picks the clips not set by hand.
    pub fn observer(&self) -> Observer {
        self.edit.observer
    }

    /// Clips set by hand (or by a recipe), by layer.
    pub fn clip_overrides(&self) -> &BTreeMap<LayerId, f32> {
        &self.edit.clip_overrides
    }

    /// Whether undo has something to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether redo has something to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// The calibration the clips are resolved against, if any.
    pub fn calibrated(&self) -> Option<&CalibratedLayers> {
        self.calibrated.as_ref()
    }

    /// Makes `next` the current state as one undoable step; `false` (and no step) when nothing changes.
    pub fn commit(&mut self, next: PlanEdit) -> bool {
        if next == self.edit {
            return false;
        }
        let previous = std::mem::replace(&mut self.edit, next);
        self.undo.push(previous);
        if self.undo.len() > MAX_UNDO {
            self.undo.remove(0);
        }
        self.redo.clear();
        self.resolve();
        true
    }

    /// Sets every layer's precision at once (one step).
    pub fn set_layers(&mut self, layers: Vec<Precision>) -> bool {
        let next = PlanEdit { layers, ..self.edit.clone() };
        self.commit(next)
    }

    /// Sets these layers to `precision` (one step); ids out of range are ignored.
    pub fn set_precision(&mut self, layers: &[LayerId], precision: Precision) -> bool {
        self.set_precisions(layers.iter().map(|&layer| (layer, precision)))
    }

    /// Sets each listed layer to its own precision (one undo step).
    pub fn set_precisions(&mut self, changes: impl IntoIterator<Item = (LayerId, Precision)>) -> bool {
        let mut next = self.edit.layers.clone();
        for (layer, precision) in changes {
            if let Some(slot) = next.get_mut(layer.0) {
                *slot = precision;
            }
        }
        self.set_layers(next)
    }

    /// Sets `layers` to `precision`, an INT4 group size fitted to each layer's rows ([`crate::quant::plan::fitted`]).
    pub fn set_fitted_precision(&mut self, model: &Model, layers: &[LayerId], precision: Precision) -> bool {
        self.set_precisions(layers.iter().map(|&layer| (layer, crate::quant::plan::fitted(model, layer, precision))))
    }

    /// Sets one layer's input clip by hand, or gives it back to the observer (`None`). A clip that is negative or
    /// not finite is refused (`false`).
    pub fn set_input_clip(&mut self, layer: LayerId, clip: Option<f32>) -> bool {
        let mut next = self.edit.clone();
        match clip {
            Some(c) if c.is_finite() && c >= 0.0 => {
                next.clip_overrides.insert(layer, c);
            }
            Some(_) => return false,
            None => {
                next.clip_overrides.remove(&layer);
            }
        }
        self.commit(next)
    }

    /// Chooses the observer (one step; the hand-set clips stay).
    pub fn set_observer(&mut self, observer: Observer) -> bool {
        let next = PlanEdit { observer, ..self.edit.clone() };
        self.commit(next)
    }

    /// Steps back; `false` when there is nothing to undo.
    pub fn undo(&mut self) -> bool {
        let Some(previous) = self.undo.pop() else { return false };
        let current = std::mem::replace(&mut self.edit, previous);
        self.redo.push(current);
        self.resolve();
        true
    }

    /// Steps forward again; `false` when there is nothing to redo.
    pub fn redo(&mut self) -> bool {
        let Some(next) = self.redo.pop() else { return false };
        let current = std::mem::replace(&mut self.edit, next);
        self.undo.push(current);
        self.resolve();
        true
    }

    /// A new calibration (or none). Its clips replace the hand-set ones; when there were any, that is an undoable
    /// step, so that Undo brings them back.
    pub fn set_calibration(&mut self, calibrated: Option<CalibratedLayers>) {
        self.calibrated = calibrated;
        if self.edit.clip_overrides.is_empty() {
            self.resolve();
        } else {
            let next = PlanEdit { clip_overrides: BTreeMap::new(), ..self.edit.clone() };
            self.commit(next);
        }
    }

    /// Takes a loaded recipe's precisions and clips as one step. Its clips become hand-set clips: added to the
    /// current ones under a calibration, replacing them without one (a recipe without clips keeps the current ones).
    pub fn load_recipe(&mut self, plan: &Plan) -> bool {
        let mut next = PlanEdit { layers: plan.layers.clone(), gptq: plan.gptq.clone(), ..self.edit.clone() };
        let recipe_clips = clips_of(plan);
        if !recipe_clips.is_empty() {
            if self.calibrated.is_some() {
                next.clip_overrides.extend(recipe_clips);
            } else {
                next.clip_overrides = recipe_clips;
            }
        }
        self.commit(next)
    }

    /// Gives every layer the export target refuses its fix (one step); returns how many layers changed.
    pub fn apply_fixes(&mut self, compatibility: &Compatibility) -> usize {
        let mut plan = self.plan.clone();
        let changed = compatibility.apply_fixes(&mut plan);
        self.set_layers(plan.layers);
        changed
    }

    /// Of `layers`, the static W8A8 ones without an input clip (they cannot run or export), in the given order.
    pub fn uncalibrated(&self, layers: &[LayerId]) -> Vec<LayerId> {
        layers.iter().copied().filter(|l| self.is_uncalibrated(*l)).collect()
    }

    /// Whether layer `id` is static W8A8 with no input clip.
    pub fn is_uncalibrated(&self, id: LayerId) -> bool {
        self.plan.layer(id).needs_calibration() && self.plan.input_clips.get(id.0).copied().flatten().is_none()
    }

    /// The plan edits a command asks for (precisions, clips, observer, undo, redo, export fixes); other commands
    /// are not the editor's and change nothing.
    pub fn apply(
        &mut self,
        command: &super::Command,
        model: &Model,
        compatibility: Option<&Compatibility>,
    ) -> Reaction {
        use super::Command;
        match command {
            Command::SetPrecision { layers, precision } => {
                let (layers, refused) = block_fit(model, layers, *precision);
                let layers = &layers;
                let changed = self.set_fitted_precision(model, layers, *precision);
                Reaction {
                    notice: refused.or_else(|| self.uncalibrated_notice(model, layers, None)),
                    plan_changed: changed,
                    ..Reaction::default()
                }
            }
            Command::SetPrecisionMatching { pattern, precision } => {
                let matcher = match NameFilter::new(pattern) {
                    Ok(m) => m,
                    Err(text) => return Reaction::notice(Notice::error(text)),
                };
                let layers: Vec<LayerId> =
                    (0..model.layers.len()).map(LayerId).filter(|l| matcher.matches(&model.layer(*l).name)).collect();
                if layers.is_empty() {
                    return Reaction::notice(Notice::error(format!("no layer matches {pattern:?}")));
                }
                let (layers, refused) = block_fit(model, &layers, *precision);
                if let Some(refused) = refused {
                    let changed = self.set_fitted_precision(model, &layers, *precision);
                    return Reaction { notice: Some(refused), plan_changed: changed, ..Reaction::default() };
                }
                let changed = self.set_fitted_precision(model, &layers, *precision);
                let text = format!("{} layer(s) matching {pattern:?} set to {precision}", layers.len());
                let notice = self.uncalibrated_notice(model, &layers, Some(&text)).unwrap_or(Notice::info(text));
                Reaction { notice: Some(notice), plan_changed: changed, ..Reaction::default() }
            }
            Command::Undo => Reaction::plan(self.undo()),
            Command::Redo => Reaction::plan(self.redo()),
            Command::ApplyExportFixes => {
                let Some(compatibility) = compatibility else { return Reaction::default() };
                let changed = self.apply_fixes(compatibility);
                let text = format!("{changed} layer(s) changed so that {} loads everywhere", compatibility.target);
                Reaction { notice: Some(Notice::info(text)), plan_changed: changed > 0, ..Reaction::default() }
            }
            Command::SetObserver(observer) if self.calibrated.is_some() => Reaction::plan(self.set_observer(*observer)),
            Command::SetInputClip { layer, clip } if self.calibrated.is_some() => {
                Reaction::plan(self.set_input_clip(*layer, *clip))
            }
            _ => Reaction::default(),
        }
    }

    /// The recipe and calibration outcomes: a loaded recipe becomes the plan, a calibration resolves the clips.
    pub fn on_outcome(&mut self, outcome: &Outcome) -> Reaction {
        match outcome {
            Outcome::RecipeLoaded { path, plan } => {
                let changed = self.load_recipe(plan);
                let mut text = format!("recipe loaded from {}", path.display());
                if let Some(w) = plan.warnings.first() {
                    text.push_str(&format!("; {w}"));
                }
                Reaction { notice: Some(Notice::info(text)), plan_changed: changed, ..Reaction::default() }
            }
            Outcome::Calibrated { layers, .. } => {
                self.set_calibration(Some(Arc::clone(layers)));
                Reaction::plan(true)
            }
            Outcome::Gptq(weights) => {
                let changed = self.commit(PlanEdit { gptq: Some(Arc::clone(weights)), ..self.edit.clone() });
                let (rtn, gptq) = weights.mean_output_errors();
                let mut text = format!(
                    "GPTQ on {} layer(s) in {:.1} s: mean output error {rtn:.2e} rounded to nearest, {gptq:.2e} with GPTQ",
                    weights.layers.len(),
                    weights.seconds
                );
                if !weights.unreached.is_empty() {
                    text.push_str(&format!(
                        "; {} layer(s) the data never reaches stay rounded",
                        weights.unreached.len()
                    ));
                }
                Reaction { notice: Some(Notice::info(text)), plan_changed: changed, ..Reaction::default() }
            }
            _ => Reaction::default(),
        }
    }

    /// A notice when some of `layers` are now static W8A8 without a clip (they cannot run): `lead` followed by why.
    fn uncalibrated_notice(&self, model: &Model, layers: &[LayerId], lead: Option<&str>) -> Option<Notice> {
        let missing = self.uncalibrated(layers);
        let first = missing.first()?;
        let why = match &self.calibrated {
            None => format!(
                "{} W8A8 layer(s) have no input clip: calibrate first (Calibrate & diagnose panel)",
                missing.len()
            ),
            Some(_) if missing.len() == 1 => {
                format!("calibration never observed the input of {}: it cannot run as W8A8", model.layer(*first).name)
            }
            Some(_) => format!(
                "calibration never observed the input of {} of them ({}, ...): they cannot run as W8A8",
                missing.len(),
                model.layer(*first).name
            ),
        };
        let text = match lead {
            Some(lead) => format!("{lead}; {why}"),
            None => why,
        };
        Some(Notice::info(text))
    }

    /// Derives the plan from the edit and the calibration.
    fn resolve(&mut self) {
        let count = self.edit.layers.len();
        let mut clips = vec![None; count];
        for (index, slot) in clips.iter_mut().enumerate() {
            let id = LayerId(index);
            let observed = || Some(self.calibrated.as_ref()?.get(&id)?.clip(self.edit.observer));
            *slot = crate::calib::chosen_clip(self.edit.clip_overrides.get(&id).copied(), observed);
        }
        self.plan.layers = self.edit.layers.clone();
        self.plan.input_clips = clips;
        self.plan.gptq = self.edit.gptq.clone();
    }
}

/// A plan's clips as a map.
fn clips_of(plan: &Plan) -> BTreeMap<LayerId, f32> {
    plan.input_clips.iter().enumerate().filter_map(|(i, c)| c.map(|c| (LayerId(i), c))).collect()
}

/// The layers of `layers` that can take `precision` (all of them unless it is a llama.cpp block format or INT4,
/// whose group size is first fitted to each layer's rows), and a notice naming the others and why ([`crate::quant::plan::block_refusal`]): they keep their precision.
fn block_fit(model: &Model, layers: &[LayerId], precision: Precision) -> (Vec<LayerId>, Option<Notice>) {
    let mut kept = Vec::with_capacity(layers.len());
    let mut refused: Vec<(LayerId, String)> = Vec::new();
    for &layer in layers {
        let precision = crate::quant::plan::fitted(model, layer, precision);
        match crate::quant::plan::block_refusal(model, layer, precision) {
            Some(reason) => refused.push((layer, reason)),
            None => kept.push(layer),
        }
    }
    let notice = refused.first().map(|(first, reason)| {
        Notice::error(format!(
            "{reason}: {} layer(s) left as they were ({}{})",
            refused.len(),
            model.layer(*first).name,
            if refused.len() > 1 { ", ..." } else { "" }
        ))
    });
    (kept, notice)
}
