//! The analyses of the open model's tensors, by (tensor, precision): filled by the analysis job, read by the table,
//! the inspector and the summary bar; and the histograms of the layers the inspector has shown, filled by the
//! histograms job on demand.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::Reaction;
use crate::model::{LayerId, Model, TensorId};
use crate::quant::{Plan, Precision, TensorAnalysis, TensorHistograms};
use crate::worker::Outcome;

/// Analyses by (tensor, precision); a precision changed back finds its result again.
#[derive(Clone, Debug, Default)]
pub struct Analyses {
    cache: HashMap<(TensorId, Precision), Arc<TensorAnalysis>>,
    histograms: HashMap<(TensorId, Precision), Arc<TensorHistograms>>,
    /// The histograms last asked of the worker (not asked again while they are awaited).
    requested_histograms: Option<(TensorId, Precision)>,
    /// Whether the job for `requested_histograms` ended without them (cancelled or failed): they are not asked
    /// again until [`Analyses::ask_histograms_again`].
    histograms_stopped: bool,
}

impl Analyses {
    /// Forgets every analysis (a new model).
    pub fn clear(&mut self) {
        self.cache.clear();
        self.histograms.clear();
        self.requested_histograms = None;
        self.histograms_stopped = false;
    }

    /// How many analyses are kept.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The analysis of `tensor` under `precision`, when computed.
    pub fn get(&self, tensor: TensorId, precision: Precision) -> Option<&Arc<TensorAnalysis>> {
        self.cache.get(&(tensor, precision))
    }

    /// The analysis of a layer's main tensor under its planned precision, when computed.
    pub fn of_layer(&self, model: &Model, plan: &Plan, layer: LayerId) -> Option<&Arc<TensorAnalysis>> {
        let main = model.main_tensor(layer)?;
        self.get(main, plan.tensor(model, main))
    }

    /// The histograms of a layer's main tensor under its planned precision, when computed.
    pub fn histograms_of_layer(&self, model: &Model, plan: &Plan, layer: LayerId) -> Option<&Arc<TensorHistograms>> {
        let main = model.main_tensor(layer)?;
        self.histograms.get(&(main, plan.tensor(model, main)))
    }

    /// The histograms to ask the worker for so that `layer` can be shown: its main tensor with its analysis, when
    /// the analysis is there, its histograms are not, and they have not been asked for already (which this
    /// notes).
    pub fn histograms_to_request(
        &mut self,
        model: &Model,
        plan: &Plan,
        layer: LayerId,
    ) -> Option<(TensorId, Arc<TensorAnalysis>)> {
        let main = model.main_tensor(layer)?;
        let key = (main, plan.tensor(model, main));
        let analysis = self.cache.get(&key)?;
        if self.histograms.contains_key(&key) || self.requested_histograms == Some(key) {
            return None;
        }
        self.requested_histograms = Some(key);
        self.histograms_stopped = false;
        Some((main, Arc::clone(analysis)))
    }

    /// Notes that the histograms job ended without its histograms (cancelled or failed).
    pub fn histograms_job_stopped(&mut self) {
        self.histograms_stopped = true;
    }

    /// Whether the histograms of `layer` were asked for and their job ended without them.
    pub fn histograms_stopped(&self, model: &Model, plan: &Plan, layer: LayerId) -> bool {
        let Some(main) = model.main_tensor(layer) else { return false };
        self.histograms_stopped && self.requested_histograms == Some((main, plan.tensor(model, main)))
    }

    /// Forgets a stopped request, so that the inspected layer's histograms are asked for again.
    pub fn ask_histograms_again(&mut self) {
        if self.histograms_stopped {
            self.requested_histograms = None;
            self.histograms_stopped = false;
        }
    }

    /// The (tensor, precision) pairs still to analyse for the plan, layers in `first` first, then model order.
    pub fn missing(
        &self,
        model: &Model,
        plan: &Plan,
        first: impl IntoIterator<Item = LayerId>,
    ) -> Vec<(TensorId, Precision)> {
        let mut seen = BTreeSet::new();
        first
            .into_iter()
            .chain((0..model.layers.len()).map(LayerId))
            .filter(|l| seen.insert(*l))
            .filter_map(|l| model.main_tensor(l))
            .map(|t| (t, plan.tensor(model, t)))
            .filter(|key| !self.cache.contains_key(key))
            .collect()
    }

    /// Files an analysis or a tensor's histograms.
    pub fn on_outcome(&mut self, outcome: &Outcome) -> Reaction {
        match outcome {
            Outcome::Analysed { tensor, precision, analysis } => {
                self.cache.insert((*tensor, *precision), Arc::clone(analysis));
                Reaction { figures_changed: true, ..Reaction::default() }
            }
            Outcome::Histograms { tensor, precision, histograms } => {
                self.histograms.insert((*tensor, *precision), Arc::clone(histograms));
                Reaction::default()
            }
            _ => Reaction::default(),
        }
    }
}
