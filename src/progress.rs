//! Progress reporting and cancellation for long core operations, with no threads of its own.
//!
//! Core functions take a `&Progress`; they call [`Progress::advance`] now and then and [`Progress::check`] between
//! units of work, which returns [`Error::Cancelled`] once someone has called [`Progress::cancel`]. The worker
//! (or the CLI's progress bar) observes the shared counters from another thread.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Shared progress state of one job: done/total units, the current stage, and a cancel flag.
///
/// Within a stage `done` only grows; a new stage starts from zero. Work whose units are not the stage's (the
/// elements of weights quantized while a stage counts samples) reports through [`Progress::uncounted`].
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
    /// Whether this handle moves the counters and the stage (`false`: it only checks for cancel).
    counted: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { inner: Arc::default(), counted: true }
    }
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
    stage: Mutex<String>,
}

/// A snapshot of a job's progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressSnapshot {
    /// Units done.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// What is being done now.
    pub stage: String,
}

impl ProgressSnapshot {
    /// Fraction done in 0..=1 (0 when the total is unknown).
    pub fn fraction(&self) -> f32 {
        if self.total == 0 { 0.0 } else { (self.done as f64 / self.total as f64).min(1.0) as f32 }
    }
}

impl Progress {
    /// A fresh, not cancelled progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same job's cancel flag, without its counters: stages and advances through it are ignored, so work
    /// counted in other units does not move the current stage.
    pub fn uncounted(&self) -> Progress {
        Progress { inner: Arc::clone(&self.inner), counted: false }
    }

    /// Sets the stage text and the total, and resets `done` to zero.
    pub fn start_stage(&self, stage: impl Into<String>, total: u64) {
        if !self.counted {
            return;
        }
        if let Ok(mut s) = self.inner.stage.lock() {
            *s = stage.into();
        }
        self.inner.total.store(total, Ordering::Relaxed);
        self.inner.done.store(0, Ordering::Relaxed);
    }

    /// Changes the stage text and keeps `done` and `total`: a named step inside one stage ("layer 3/50").
    pub fn rename_stage(&self, stage: impl Into<String>) {
        if !self.counted {
            return;
        }
        if let Ok(mut s) = self.inner.stage.lock() {
            *s = stage.into();
        }
    }

    /// Adds `units` to the done counter.
    pub fn advance(&self, units: u64) {
        if self.counted {
            self.inner.done.fetch_add(units, Ordering::Relaxed);
        }
    }

    /// `Err(Cancelled)` once the job has been cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
    }

    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether cancel was asked.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// The current state.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            done: self.inner.done.load(Ordering::Relaxed),
            total: self.inner.total.load(Ordering::Relaxed),
            stage: self.inner.stage.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_turns_check_into_cancelled() {
        let progress = Progress::new();
        assert!(progress.check().is_ok());
        progress.clone().cancel();
        assert!(matches!(progress.check(), Err(Error::Cancelled)));
    }

    #[test]
    fn an_uncounted_handle_cancels_but_moves_nothing() {
        let progress = Progress::new();
        progress.start_stage("samples", 10);
        progress.advance(3);
        let quiet = progress.uncounted();
        quiet.start_stage("elements", 1_000);
        quiet.advance(500);
        quiet.rename_stage("other");
        assert_eq!(progress.snapshot(), ProgressSnapshot { done: 3, total: 10, stage: "samples".into() });
        progress.rename_stage("samples, step 2");
        assert_eq!(progress.snapshot().done, 3);
        progress.cancel();
        assert!(matches!(quiet.check(), Err(Error::Cancelled)));
    }

    #[test]
    fn stages_reset_done() {
        let progress = Progress::new();
        progress.start_stage("reading", 10);
        progress.advance(4);
        assert_eq!(progress.snapshot().fraction(), 0.4);
        progress.start_stage("writing", 5);
        assert_eq!(progress.snapshot(), ProgressSnapshot { done: 0, total: 5, stage: "writing".into() });
    }
}
