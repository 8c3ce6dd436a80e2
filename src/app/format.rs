//! Number formatting for the window: sizes, counts, errors, decibels.

/// `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.23 MB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    crate::units::human_bytes(n)
}

/// A duration given in milliseconds, with three significant digits: `12.3 ms`, `0.457 ms`, `2.41 us`.
pub fn millis(ms: f64) -> String {
    match ms {
        ms if ms >= 100.0 => format!("{ms:.0} ms"),
        ms if ms >= 10.0 => format!("{ms:.1} ms"),
        ms if ms >= 0.1 => format!("{ms:.3} ms"),
        ms => format!("{:.2} us", ms * 1e3),
    }
}

/// A small positive error in engineering-style scientific notation: `3.21e-5`.
pub fn sci(x: f64) -> String {
    if x == 0.0 { "0".into() } else { format!("{x:.2e}") }
}

/// `42.1 dB`, or `lossless`.
pub fn db(sqnr: Option<f64>) -> String {
    match sqnr {
        Some(v) => format!("{v:.1} dB"),
        None => "lossless".into(),
    }
}

/// `[4096, 4096]`.
pub fn shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(100), "100");
        assert_eq!(db(None), "lossless");
        assert_eq!(db(Some(41.234)), "41.2 dB");
        assert_eq!(shape(&[3, 4]), "[3, 4]");
    }
}
