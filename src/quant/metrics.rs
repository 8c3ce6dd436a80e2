//! Error metrics of a quantized tensor against its original: MSE, max |error|, SQNR.

/// Error of one tensor under one precision, over its finite elements.
///
/// `sqnr_db` is `None` when the error is exactly zero (lossless), so neither infinity nor NaN ever appears.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorMetrics {
    /// Mean of `(x - x_hat)^2` over the finite elements (0 when there are none).
    pub mse: f64,
    /// Largest `|x - x_hat|` over the finite elements.
    pub max_abs_error: f64,
    /// `10 log10(sum x^2 / sum e^2)`; `None` when lossless.
    pub sqnr_db: Option<f64>,
    /// Finite elements the figures are computed over.
    pub finite_count: u64,
    /// Finite inputs that the precision's range could not hold and that were saturated (FP16 beyond ±65504).
    pub saturated_count: u64,
}

/// Lowest SQNR reported: the value when the signal is zero but the error is not (no scheme here produces that,
/// since 0 always maps to 0, but the figure must stay finite whatever happens).
pub const SQNR_FLOOR_DB: f64 = -400.0;

impl ErrorMetrics {
    /// Computes the metrics from the f64 sums of the pass.
    pub fn from_sums(sum_sq_signal: f64, sum_sq_error: f64, max_abs_error: f64, finite_count: u64) -> ErrorMetrics {
        let mse = if finite_count == 0 { 0.0 } else { sum_sq_error / finite_count as f64 };
        let sqnr_db = if sum_sq_error == 0.0 {
            None
        } else if sum_sq_signal == 0.0 {
            Some(SQNR_FLOOR_DB)
        } else {
            Some((10.0 * (sum_sq_signal / sum_sq_error).log10()).max(SQNR_FLOOR_DB))
        };
        ErrorMetrics { mse, max_abs_error, sqnr_db, finite_count, saturated_count: 0 }
    }

    /// True when every finite element is reproduced exactly.
    pub fn is_lossless(&self) -> bool {
        self.sqnr_db.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossless_is_none_never_infinite() {
        let m = ErrorMetrics::from_sums(10.0, 0.0, 0.0, 4);
        assert!(m.is_lossless());
        assert_eq!(m.mse, 0.0);
        let empty = ErrorMetrics::from_sums(0.0, 0.0, 0.0, 0);
        assert!(empty.is_lossless() && empty.mse == 0.0);
    }

    #[test]
    fn sqnr_formula() {
        let m = ErrorMetrics::from_sums(100.0, 1.0, 0.5, 10);
        assert_eq!(m.sqnr_db, Some(20.0));
        assert_eq!(m.mse, 0.1);
        assert_eq!(ErrorMetrics::from_sums(0.0, 1.0, 1.0, 1).sqnr_db, Some(SQNR_FLOOR_DB));
    }
}
