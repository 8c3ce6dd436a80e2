//! The layer table's state: filter, sort, selection, focus, the displayed order, and what each row shows beyond
//! the model's own facts: its error as planned and why its plan cannot run or deploy.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::analyses::Analyses;
use super::calibration::CalibrationState;
use crate::calib::ClipError;
use crate::export::{Compatibility, Treatment, planned_bytes};
use crate::model::{LayerId, Model};
use crate::quant::{Plan, TensorAnalysis};

/// Columns the layer table can be sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SortColumn {
    /// Model order (natural name order).
    #[default]
    Name,
    /// Layer kind.
    Kind,
    /// Parameter count.
    Params,
    /// Size as stored.
    Size,
    /// Planned size.
    Planned,
    /// Precision.
    Precision,
    /// Mean squared error.
    Mse,
    /// Max absolute error.
    MaxError,
    /// SQNR as planned ([`PlannedError::worst_sqnr_db`]; worst first when ascending).
    Sqnr,
    /// Sensitivity score (most sensitive first when ascending).
    Sensitivity,
}

/// A layer's error as planned: its weights', and for static W8A8 its input's too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedError {
    /// SQNR of the layer's main weight under its planned precision; `None` when it is exact.
    pub weights_sqnr_db: Option<f64>,
    /// For a static W8A8 layer with a clip and a calibration histogram: the clip and the input's error at it over
    /// that histogram. `None` for every other layer (float or dynamically quantized inputs; a clip from a recipe
    /// without a calibration has no histogram to measure it on).
    pub input: Option<(f32, ClipError)>,
}

impl PlannedError {
    /// The worse of the weights' and the input's SQNR; `None` when both are exact.
    pub fn worst_sqnr_db(&self) -> Option<f64> {
        let input = self.input.and_then(|(_, e)| e.sqnr_db);
        match (self.weights_sqnr_db, input) {
            (Some(w), Some(i)) => Some(w.min(i)),
            (w, i) => w.or(i),
        }
    }

    /// Whether the input sets [`PlannedError::worst_sqnr_db`] (its SQNR is below the weights').
    pub fn input_is_worse(&self) -> bool {
        match (self.weights_sqnr_db, self.input.and_then(|(_, e)| e.sqnr_db)) {
            (Some(w), Some(i)) => i < w,
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

/// Why a row's plan cannot run or deploy as planned (the table marks the row with [`RowProblem::word`] and shows
/// [`RowProblem::reason`] on hover).
#[derive(Clone, Debug, PartialEq)]
pub enum RowProblem {
    /// Static W8A8 without an input clip: nothing can run or export it.
    Uncalibrated {
        /// Whether a calibration exists (it did not observe this layer's input) or none was run.
        calibration_ran: bool,
    },
    /// A runtime of the export target will not load the layer as planned, or the target cannot write it.
    Refused {
        /// Who refuses: runtime names, or "not written".
        who: Vec<String>,
        /// One line per reason, with the fix when there is one.
        reasons: Vec<String>,
    },
}

impl RowProblem {
    /// The short mark: `uncalibrated`, or `no: transformers, vLLM`.
    pub fn word(&self) -> String {
        match self {
            RowProblem::Uncalibrated { .. } => "uncalibrated".into(),
            RowProblem::Refused { who, .. } => format!("no: {}", who.join(", ")),
        }
    }

    /// The reason, for the hover.
    pub fn reason(&self) -> String {
        match self {
            RowProblem::Uncalibrated { calibration_ran: false } => {
                "Static W8A8 needs the input's clip from a calibration: run Calibrate (Calibrate & diagnose panel) \
                 or choose W8A8-dynamic"
                    .into()
            }
            RowProblem::Uncalibrated { calibration_ran: true } => {
                "The calibration never observed this layer's input, so static W8A8 has no clip: the plan cannot run \
                 or export. Choose W8A8-dynamic or weight-only INT8 for it"
                    .into()
            }
            RowProblem::Refused { reasons, .. } => reasons.join("\n"),
        }
    }
}

/// What the table's figures are computed from: the open model, the plan and the results of the session.
#[derive(Clone, Copy)]
pub struct LayerFacts<'a> {
    /// The open model.
    pub model: &'a Model,
    /// The plan (clips resolved).
    pub plan: &'a Plan,
    /// Tensor analyses.
    pub analyses: &'a Analyses,
    /// The calibration (input histograms).
    pub calibration: &'a CalibrationState,
    /// Sensitivity scores, when run.
    pub scores: Option<&'a HashMap<LayerId, f64>>,
    /// The export target's verdict on the plan.
    pub compatibility: Option<&'a Compatibility>,
}

impl LayerFacts<'_> {
    /// The analysis of the layer's main tensor under its planned precision, when computed.
    pub fn analysis(&self, layer: LayerId) -> Option<&Arc<TensorAnalysis>> {
        self.analyses.of_layer(self.model, self.plan, layer)
    }

    /// Bytes the layer takes once exported under the plan.
    pub fn planned_bytes(&self, layer: LayerId) -> u64 {
        self.model.layer(layer).tensors.iter().map(|t| planned_bytes(self.model, self.plan, *t)).sum()
    }

    /// The layer's error as planned: `None` until its weights are analysed (or when it has no float tensor).
    pub fn planned_error(&self, layer: LayerId) -> Option<PlannedError> {
        let weights_sqnr_db = self.analysis(layer)?.error.sqnr_db;
        let input = if self.plan.layer(layer).needs_calibration() {
            let clip = self.plan.input_clips.get(layer.0).copied().flatten();
            clip.and_then(|clip| Some((clip, self.calibration.input_error(layer, clip)?)))
        } else {
            None
        };
        Some(PlannedError { weights_sqnr_db, input })
    }

    /// Why the layer's plan cannot run (static W8A8 without a clip) or deploy (refused by the export target's
    /// runtimes, or not writable); `None` when it can. When the target's runtimes cannot build the model at all,
    /// that is the model's problem, not a row's, and no row is marked for it.
    pub fn row_problem(&self, layer: LayerId) -> Option<RowProblem> {
        let precision = self.plan.layer(layer);
        if precision.needs_calibration() && self.plan.input_clips.get(layer.0).copied().flatten().is_none() {
            return Some(RowProblem::Uncalibrated { calibration_ran: self.calibration.run.is_some() });
        }
        let compatibility = self.compatibility?;
        if compatibility.model_refusal.is_some() {
            return None;
        }
        let check = compatibility.layer(layer)?;
        if check.is_clean() {
            return None;
        }
        let mut who: Vec<String> = check.refusals.iter().map(|r| r.runtime.to_string()).collect();
        who.dedup();
        let mut reasons: Vec<String> = check.refusals.iter().map(|r| format!("{}: {}", r.runtime, r.reason)).collect();
        if let Treatment::NotExpressible(reason) = &check.treatment {
            who = vec!["not written".into()];
            reasons.push(format!("{} cannot write {reason}", compatibility.target));
        }
        if let Some(fix) = check.fix {
            reasons.push(format!("Fix: {} (Fix button in the summary bar)", fix.label()));
        }
        Some(RowProblem::Refused { who, reasons })
    }

    /// Whether the layer has a figure in `column` (rows without one sort last).
    fn has_figure(&self, column: SortColumn, layer: LayerId) -> bool {
        match column {
            SortColumn::Mse | SortColumn::MaxError => self.analysis(layer).is_some(),
            SortColumn::Sqnr => self.planned_error(layer).is_some(),
            SortColumn::Sensitivity => self.scores.is_some_and(|s| s.contains_key(&layer)),
            _ => true,
        }
    }
}

/// What the displayed order depends on besides the figures: model generation, filter, sort.
type OrderKey = (u64, String, (SortColumn, bool));

/// The displayed order and what it was computed from.
#[derive(Clone, Debug)]
struct Order {
    key: OrderKey,
    /// The studio revision last checked against.
    revision: u64,
    rows: Vec<LayerId>,
    /// The rows that had a figure in the sort column when they were sorted.
    figured: BTreeSet<LayerId>,
}

/// The table's state.
///
/// **Order rule.** The displayed order is computed when the model, the filter, the sort column or its direction
/// changes, and when a figure arrives for a row that had none in the sort column when it was sorted (analyses and
/// sensitivity scores streaming in fill a sorted table). A figure that *changes* never moves a row: after a
/// precision change the row stays where it is, through its new analysis, until the user sorts again (clicks a
/// header) or changes the filter. Rows do not jump away from under the pointer that edited them.
#[derive(Clone, Debug)]
pub struct TableView {
    /// Table filter (glob or text).
    pub filter: String,
    /// Sort column and direction (ascending when `true`).
    pub sort: (SortColumn, bool),
    /// Selected layers.
    pub selection: BTreeSet<LayerId>,
    /// The layer the inspector shows.
    pub focus: Option<LayerId>,
    /// Last clicked row (for Shift-click ranges).
    pub anchor: Option<LayerId>,
    order: Option<Order>,
}

impl Default for TableView {
    /// Model order (by name, ascending), nothing selected.
    fn default() -> Self {
        TableView {
            filter: String::new(),
            sort: (SortColumn::Name, true),
            selection: BTreeSet::new(),
            focus: None,
            anchor: None,
            order: None,
        }
    }
}

impl TableView {
    /// A fresh view for a new model: the focus on its first layer; filter and sort stay.
    pub fn model_opened(&mut self) {
        self.selection.clear();
        self.focus = Some(LayerId(0));
        self.anchor = None;
        self.order = None;
    }

    /// Layers in display order (see the order rule on [`TableView`]); `generation` identifies the model and
    /// `revision` changes with every plan or figure change.
    pub fn rows(&mut self, facts: &LayerFacts, generation: u64, revision: u64) -> Vec<LayerId> {
        let key = (generation, self.filter.clone(), self.sort);
        if let Some(order) = &mut self.order
            && order.key == key
        {
            if order.revision == revision {
                return order.rows.clone();
            }
            order.revision = revision;
            let column = self.sort.0;
            let new_figure = order.rows.iter().any(|l| !order.figured.contains(l) && facts.has_figure(column, *l));
            if !new_figure {
                return order.rows.clone();
            }
        }
        let rows = self.sorted(facts);
        let figured = rows.iter().copied().filter(|l| facts.has_figure(self.sort.0, *l)).collect();
        self.order = Some(Order { key, revision, rows: rows.clone(), figured });
        rows
    }

    /// Layers filtered by [`TableView::filter`] and sorted by [`TableView::sort`] now (ignoring the kept order).
    pub fn sorted(&self, facts: &LayerFacts) -> Vec<LayerId> {
        let model = facts.model;
        let filter = NameFilter::new(&self.filter).ok();
        let mut rows: Vec<LayerId> = (0..model.layers.len())
            .map(LayerId)
            .filter(|l| filter.as_ref().is_none_or(|f| f.matches(&model.layer(*l).name)))
            .collect();
        let (column, ascending) = self.sort;
        let metric = |l: &LayerId, f: fn(&TensorAnalysis) -> f64| facts.analysis(*l).map(|a| f(a));
        let params = |l: &LayerId| model.layer(*l).tensors.iter().map(|t| model.tensor(*t).numel()).sum::<usize>();
        match column {
            SortColumn::Name => {}
            SortColumn::Kind => rows.sort_by_key(|l| model.layer(*l).kind),
            SortColumn::Params => rows.sort_by_key(params),
            SortColumn::Size => {
                rows.sort_by_key(|l| model.layer(*l).tensors.iter().map(|t| model.tensor(*t).size_bytes()).sum::<u64>())
            }
            SortColumn::Planned => rows.sort_by_key(|l| facts.planned_bytes(*l)),
            SortColumn::Precision => rows.sort_by_key(|l| facts.plan.layer(*l).to_string()),
            SortColumn::Mse => rows.sort_by(|a, b| cmp_option(metric(a, |x| x.error.mse), metric(b, |x| x.error.mse))),
            SortColumn::MaxError => rows
                .sort_by(|a, b| cmp_option(metric(a, |x| x.error.max_abs_error), metric(b, |x| x.error.max_abs_error))),
            SortColumn::Sqnr => {
                let sqnr = |l: &LayerId| facts.planned_error(*l).map(|e| e.worst_sqnr_db().unwrap_or(f64::INFINITY));
                rows.sort_by(|a, b| cmp_option(sqnr(a), sqnr(b)));
            }
            SortColumn::Sensitivity => {
                let score = |l: &LayerId| facts.scores.and_then(|s| s.get(l)).map(|v| -v);
                rows.sort_by(|a, b| cmp_option(score(a), score(b)));
            }
        }
        if !ascending {
            rows.reverse();
        }
        rows
    }

    /// Click on a row: plain (select only it), Ctrl (toggle), Shift (range from the anchor in `order`). Returns
    /// whether the focus moved to `layer`.
    pub fn click_row(&mut self, layer: LayerId, ctrl: bool, shift: bool, order: &[LayerId]) -> bool {
        if shift && let Some(anchor) = self.anchor {
            let position = |l: LayerId| order.iter().position(|x| *x == l);
            if let (Some(a), Some(b)) = (position(anchor), position(layer)) {
                if !ctrl {
                    self.selection.clear();
                }
                self.selection.extend(&order[a.min(b)..=a.max(b)]);
            }
        } else if ctrl {
            if !self.selection.remove(&layer) {
                self.selection.insert(layer);
            }
            self.anchor = Some(layer);
        } else {
            self.selection.clear();
            self.selection.insert(layer);
            self.anchor = Some(layer);
        }
        let moved = self.focus != Some(layer);
        self.focus = Some(layer);
        moved
    }
}

fn cmp_option(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// A layer-name filter: a glob when the text has `*`, `?` or `[`, else a case-insensitive substring.
pub struct NameFilter {
    glob: Option<glob::Pattern>,
    text: String,
}

impl NameFilter {
    /// Parses a filter; an invalid glob is an error message.
    pub fn new(pattern: &str) -> Result<NameFilter, String> {
        let pattern = pattern.trim();
        if pattern.contains(['*', '?', '[']) {
            let glob = glob::Pattern::new(pattern).map_err(|e| format!("invalid pattern {pattern:?}: {e}"))?;
            Ok(NameFilter { glob: Some(glob), text: String::new() })
        } else {
            Ok(NameFilter { glob: None, text: pattern.to_lowercase() })
        }
    }

    /// Whether a layer name passes.
    pub fn matches(&self, name: &str) -> bool {
        match &self.glob {
            Some(glob) => glob.matches(name),
            None => self.text.is_empty() || name.to_lowercase().contains(&self.text),
        }
    }
}
