//! Helpers shared by the benchmark examples (each uses part of them): interleaved medians and deterministic data.

#![allow(dead_code)]

use std::time::Instant;

/// Median milliseconds of each of `runs` over `repeat` rounds after three warm-up rounds; every round runs each once,
/// in turn, so that a slow spell of the machine (a shared VM) falls on all of them alike.
pub fn medians_ms(repeat: usize, runs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for _ in 0..3 {
        runs.iter_mut().for_each(|run| run());
    }
    let mut times = vec![Vec::with_capacity(repeat); runs.len()];
    for _ in 0..repeat {
        for (run, times) in runs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            run();
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// Deterministic values in about [-2, 2].
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = quantstudio::seeded::XorShift64::new(seed);
    (0..len).map(|_| (rng.next_unit() * 4.0 - 2.0) as f32).collect()
}

/// Deterministic standard normal values (Box-Muller on the same generator): bell-shaped, as trained weights are.
pub fn normal(len: usize, seed: u64) -> Vec<f32> {
    let uniform = values(len + len % 2, seed);
    uniform
        .chunks_exact(2)
        .flat_map(|pair| {
            // Map [-2, 2) to (0, 1]: the logarithm never sees 0.
            let (u1, u2) = (1.0 - (pair[0] as f64 + 2.0) / 4.0, (pair[1] as f64 + 2.0) / 4.0);
            let radius = (-2.0 * u1.max(f64::MIN_POSITIVE).ln()).sqrt();
            let angle = 2.0 * std::f64::consts::PI * u2;
            [(radius * angle.cos()) as f32, (radius * angle.sin()) as f32]
        })
        .take(len)
        .collect()
}
