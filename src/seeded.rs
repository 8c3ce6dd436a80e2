//! Seeded pseudo-random numbers for test, benchmark and example data: xorshift64 (Marsaglia's 13/7/17 shifts).
//! Reproducible from a seed on every platform; not for anything that needs statistical quality or secrecy.

/// The xorshift64 generator.
#[derive(Clone, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator from `seed`, scrambled (`seed · 0x9E3779B97F4A7C15 | 1`: never the all-zero state).
    pub fn new(seed: u64) -> XorShift64 {
        XorShift64 { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    /// A generator from a raw state, used as is (0 would only ever give 0).
    pub fn from_state(state: u64) -> XorShift64 {
        XorShift64 { state }
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `(0, 1)`, never 0 (for logarithms), from the top 53 bits.
    pub fn next_open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_marsaglias_xorshift64() {
        // x ^= x << 13; x ^= x >> 7; x ^= x << 17 from 1, worked out in Python's big integers (mod 2^64).
        let mut g = XorShift64::from_state(1);
        assert_eq!(g.next_u64(), 1_082_269_761);
        assert_eq!(g.next_u64(), 1_152_992_998_833_853_505);
        let mut seeded = XorShift64::new(0);
        assert_ne!(seeded.next_u64(), 0);
        for _ in 0..1000 {
            let (u, open) = (g.next_unit(), g.next_open_unit());
            assert!((0.0..1.0).contains(&u) && open > 0.0 && open < 1.0);
        }
    }
}
