//! Inference latency and throughput of a network on synthetic inputs of a fixed shape (a benchmark, reported by
//! `quantstudio bench`; never a test).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::{Network, TokenSequence};
use crate::error::Result;
use crate::progress::Progress;

/// What one timed run computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Sequence length of a BERT run, or of a Llama prefill for the throughput figure.
    pub seq_len: usize,
    /// Llama: positions already in the key/value cache when the timed token is decoded.
    pub past_len: usize,
    /// Samples (graph) or sequences (BERT) per throughput run; Llama throughput is prefill tokens.
    pub batch: usize,
    /// Timed runs (after warm-up runs).
    pub repeat: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload { seq_len: 128, past_len: 127, batch: 32, repeat: 30 }
    }
}

/// Timings of one configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// What was timed, e.g. "1 image", "1 sequence of 128 tokens", "1 token after 127".
    pub unit: String,
    /// Median of the batch-1 runs, milliseconds.
    pub latency_ms_median: f64,
    /// 95th percentile of the batch-1 runs, milliseconds.
    pub latency_ms_p95: f64,
    /// Units per second in the throughput runs (images, sequences or prefill tokens).
    pub throughput_per_s: f64,
    /// What the throughput counts.
    pub throughput_unit: String,
    /// Bytes of the weights the network holds in memory: f32, and INT8 codes with their scales for the layers
    /// that run integer products.
    pub weights_bytes: u64,
    /// Rayon threads.
    pub threads: usize,
}

const WARMUP_RUNS: usize = 3;

/// Times `net` on `workload`: batch-1 latency over `repeat` runs after warm-up, then throughput.
pub fn measure(net: &Network, weights_bytes: u64, workload: Workload, progress: &Progress) -> Result<Latency> {
    let mut latencies = measure_interleaved(&[(net, weights_bytes)], workload, progress)?;
    Ok(latencies.remove(0))
}

/// Times several networks on `workload` in alternation: each round runs every network once, so that a slow spell
/// of a shared machine falls on all of them alike and their figures compare. One [`Latency`] per network, in order.
pub fn measure_interleaved(nets: &[(&Network, u64)], workload: Workload, progress: &Progress) -> Result<Vec<Latency>> {
    let repeat = workload.repeat.max(1);
    let batch_rounds = repeat.div_ceil(3);
    let runners = nets.iter().map(|(net, _)| runner(net, workload)).collect::<Result<Vec<_>>>()?;
    progress.start_stage(
        "timing: batch-1 latency",
        ((WARMUP_RUNS + repeat + WARMUP_RUNS + batch_rounds) * nets.len()) as u64,
    );
    let mut times_ms = vec![Vec::with_capacity(repeat); nets.len()];
    for run in 0..WARMUP_RUNS + repeat {
        for (runner, times) in runners.iter().zip(&mut times_ms) {
            progress.check()?;
            let start = Instant::now();
            (runner.single)()?;
            if run >= WARMUP_RUNS {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            progress.advance(1);
        }
    }
    let mut best_rates = vec![0.0f64; nets.len()];
    progress.rename_stage("timing: throughput");
    for run in 0..WARMUP_RUNS + batch_rounds {
        for (runner, best_rate) in runners.iter().zip(&mut best_rates) {
            progress.check()?;
            let start = Instant::now();
            let units = (runner.batch)()?;
            if run >= WARMUP_RUNS {
                *best_rate = best_rate.max(units as f64 / start.elapsed().as_secs_f64());
            }
            progress.advance(1);
        }
    }
    let mut latencies = Vec::with_capacity(nets.len());
    for (((runner, mut times), best_rate), (_, weights_bytes)) in
        runners.into_iter().zip(times_ms).zip(best_rates).zip(nets)
    {
        times.sort_by(f64::total_cmp);
        latencies.push(Latency {
            unit: runner.unit,
            latency_ms_median: percentile(&times, 0.5),
            latency_ms_p95: percentile(&times, 0.95),
            throughput_per_s: best_rate,
            throughput_unit: runner.throughput_unit,
            weights_bytes: *weights_bytes,
            threads: rayon::current_num_threads(),
        });
    }
    Ok(latencies)
}

/// What one timed run of a network does: a batch-1 run, and a throughput run returning the units it processed.
struct Runner<'n> {
    unit: String,
    throughput_unit: String,
    single: Box<dyn Fn() -> Result<()> + 'n>,
    batch: Box<dyn Fn() -> Result<usize> + 'n>,
}

/// The timed runs of `net` on `workload` (inputs made once, up front).
fn runner<'n>(net: &'n Network, workload: Workload) -> Result<Runner<'n>> {
    Ok(match net {
        Network::Graph(g) => {
            let sample = synthetic(g.input_len(), 1);
            let many = synthetic(g.input_len() * workload.batch, 2);
            Runner {
                unit: "1 sample".into(),
                throughput_unit: "samples".into(),
                single: Box::new(move || {
                    std::hint::black_box(g.forward(&sample));
                    Ok(())
                }),
                batch: Box::new(move || {
                    std::hint::black_box(g.forward(&many));
                    Ok(workload.batch)
                }),
            }
        }
        Network::Bert(b) => {
            let seq = tokens(workload.seq_len, b.config.vocab_size);
            let seqs = vec![seq.clone(); workload.batch];
            Runner {
                unit: format!("1 sequence of {} tokens", workload.seq_len),
                throughput_unit: "sequences".into(),
                single: Box::new(move || {
                    std::hint::black_box(b.forward(&seq)?);
                    Ok(())
                }),
                batch: Box::new(move || {
                    seqs.par_iter().try_for_each(|s| b.forward(s).map(|o| drop(std::hint::black_box(o))))?;
                    Ok(workload.batch)
                }),
            }
        }
        Network::Llama(l) => {
            let cache = std::cell::RefCell::new(l.new_cache());
            l.forward(&tokens(workload.past_len, l.config.vocab_size), &mut cache.borrow_mut())?;
            let next = TokenSequence::new(vec![(workload.past_len % l.config.vocab_size) as u32]);
            let prompt = tokens(workload.seq_len, l.config.vocab_size);
            Runner {
                unit: format!("1 token after {}", workload.past_len),
                throughput_unit: "prefill tokens".into(),
                single: Box::new(move || {
                    // Decode one token, then drop it from the cache: every run sees `past_len` cached positions.
                    let mut cache = cache.borrow_mut();
                    std::hint::black_box(l.forward(&next, &mut cache)?);
                    cache.truncate(workload.past_len);
                    Ok(())
                }),
                batch: Box::new(move || {
                    std::hint::black_box(l.forward(&prompt, &mut l.new_cache())?);
                    Ok(workload.seq_len)
                }),
            }
        }
    })
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Deterministic inputs in [0, 1).
fn synthetic(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed)) >> 8) as f32 / (1u32 << 24) as f32)
        .collect()
}

/// A deterministic sequence of `len` valid token ids.
fn tokens(len: usize, vocab: usize) -> TokenSequence {
    TokenSequence::new((0..len).map(|i| ((i * 7919 + 101) % vocab.max(1)) as u32).collect())
}
