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

/// A duration in milliseconds, always in ms (one unit in every table and chart), with three significant digits:
/// `123 ms`, `12.3 ms`, `1.23 ms`, `0.457 ms`, `0.0241 ms`.
pub fn millis(ms: f64) -> String {
    let decimals = if ms <= 0.0 || !ms.is_finite() { 0 } else { (2.0 - ms.log10().floor()).clamp(0.0, 6.0) as usize };
    format!("{ms:.decimals$} ms")
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

/// A long dotted name cut in the middle so that it fits in `max_chars` characters. The head up to the first number
/// (the block index) and as many trailing components as fit stay: `encoder.layer.3.…self.query`. When that is too
/// long, the head loses its leading components (`…11.…mlp.down_proj`); a name without dots loses characters.
pub fn elide_middle(name: &str, max_chars: usize) -> String {
    const ELLIPSIS: &str = "…";
    let count = name.chars().count();
    if count <= max_chars {
        return name.to_owned();
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 1 {
        let head_end = parts
            .iter()
            .position(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            .map_or(1, |i| i + 1)
            .min(parts.len() - 1);
        for start in 0..=head_end {
            let mut head = if start > 0 { ELLIPSIS.to_owned() } else { String::new() };
            for part in &parts[start..head_end] {
                head.push_str(part);
                head.push('.');
            }
            let budget = max_chars.saturating_sub(head.chars().count() + usize::from(start < head_end));
            let mut tail = String::new();
            for part in parts[head_end..].iter().rev() {
                let candidate = if tail.is_empty() { (*part).to_owned() } else { format!("{part}.{tail}") };
                if candidate.chars().count() > budget {
                    break;
                }
                tail = candidate;
            }
            if !tail.is_empty() {
                let gap = if start < head_end { ELLIPSIS } else { "" };
                return format!("{head}{gap}{tail}");
            }
        }
    }
    // Characters from both ends around the ellipsis, the end getting the larger half (it tells q from k).
    let keep = max_chars.saturating_sub(1).max(2);
    let front = keep / 2;
    let head: String = name.chars().take(front).collect();
    let tail: String = name.chars().skip(count.saturating_sub(keep - front)).collect();
    format!("{head}{ELLIPSIS}{tail}")
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
        assert_eq!(millis(123.4), "123 ms");
        assert_eq!(millis(12.34), "12.3 ms");
        assert_eq!(millis(1.234), "1.23 ms");
        assert_eq!(millis(0.0241), "0.0241 ms");
        assert_eq!(millis(0.0), "0 ms");
    }

    #[test]
    fn long_names_keep_their_block_number_and_their_leaf() {
        let name = "encoder.layer.3.attention.self.query";
        assert_eq!(elide_middle(name, 100), name);
        assert_eq!(elide_middle(name, 28), "encoder.layer.3.…self.query");
        assert_eq!(elide_middle(name, 22), "encoder.layer.3.…query");
        assert_eq!(elide_middle("model.layers.11.mlp.down_proj", 20), "…11.…mlp.down_proj");
        assert_eq!(elide_middle("embeddings.word_embeddings", 20), "…word_embeddings");
        assert_eq!(elide_middle("abcdefghijklmnopqrstuvwxyz", 10), "abcd…vwxyz");
        for max_chars in 3..40 {
            let cut = elide_middle("model.layers.11.self_attn.q_proj", max_chars);
            assert!(cut.chars().count() <= max_chars.max(3), "{cut} for {max_chars}");
        }
    }
}
