//! Quantities written for people, shared by the CLI and the window (so neither imports the other).

/// `1.50 MB`-style sizes (powers of 1000); whole bytes below 1 kB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.2} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_powers_of_1000() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500), "1.50 kB");
        assert_eq!(human_bytes(2_340_000), "2.34 MB");
        assert_eq!(human_bytes(5_000_000_000_000_000), "5000.00 TB");
    }
}
