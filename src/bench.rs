//! Throughput of the analysis pass, measured against the read bandwidth of the same memory-mapped files, and the
//! time of one tensor's histograms (what the inspector waits for).

use std::fmt;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::Result;
use crate::model::{Model, TensorId};
use crate::progress::Progress;
use crate::quant::Plan;
use crate::quant::pass::{self, TensorData};
use crate::report::analyze_model;

/// One throughput measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    /// Bytes of float tensor data the pass reads.
    pub input_bytes: u64,
    /// Rayon threads used.
    pub threads: usize,
    /// Kernel implementation in use ("avx2" or "portable").
    pub implementation: &'static str,
    /// Best time of the analysis of every float tensor (the table's figures, no histograms).
    pub pass_secs: f64,
    /// `input_bytes / pass_secs` in GB/s (1e9 bytes).
    pub pass_gb_per_s: f64,
    /// Best time to read every byte of the mapped files once (summing 64-bit words, same threads).
    pub read_secs: f64,
    /// Bytes of the mapped files.
    pub read_bytes: u64,
    /// `read_bytes / read_secs` in GB/s.
    pub read_gb_per_s: f64,
    /// `pass_gb_per_s / read_gb_per_s`.
    pub fraction_of_read_bandwidth: f64,
    /// The largest float tensor, whose histograms are timed.
    pub histograms_tensor: String,
    /// Its elements.
    pub histograms_elements: u64,
    /// Best time of its value and error histograms under the plan (from its analysis, which is not timed).
    pub histograms_secs: f64,
    /// Timed repetitions per measurement.
    pub repeat: usize,
}

impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "threads: {}, kernels: {}, best of {}", self.threads, self.implementation, self.repeat)?;
        writeln!(
            f,
            "read mapped file: {:.3} GB in {:.4} s = {:.2} GB/s",
            self.read_bytes as f64 / 1e9,
            self.read_secs,
            self.read_gb_per_s
        )?;
        write!(
            f,
            "analysis pass:    {:.3} GB in {:.4} s = {:.2} GB/s ({:.0}% of read bandwidth)",
            self.input_bytes as f64 / 1e9,
            self.pass_secs,
            self.pass_gb_per_s,
            100.0 * self.fraction_of_read_bandwidth
        )?;
        write!(
            f,
            "\nhistograms of {} ({} elements): {:.1} ms",
            self.histograms_tensor,
            self.histograms_elements,
            self.histograms_secs * 1e3
        )
    }
}

/// Reads every byte of the model's mapped files (summing 64-bit words in parallel) and returns the sum, so
/// that the compiler cannot skip the reads.
pub fn read_all(model: &Model) -> u64 {
    model
        .shards
        .iter()
        .map(|shard| {
            shard
                .file_bytes()
                .par_chunks(1 << 20)
                .map(|chunk| {
                    let mut words = chunk.chunks_exact(8);
                    let mut sum = 0u64;
                    for word in &mut words {
                        sum = sum.wrapping_add(u64::from_le_bytes([
                            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
                        ]));
                    }
                    words.remainder().iter().fold(sum, |s, &b| s.wrapping_add(b as u64))
                })
                .reduce(|| 0, u64::wrapping_add)
        })
        .fold(0, u64::wrapping_add)
}

/// Measures the read bandwidth and the full analysis pass under `plan`, after one warm-up of each (so the page
/// cache is warm), best of `repeat`.
pub fn measure_throughput(model: &Model, plan: &Plan, repeat: usize, progress: &Progress) -> Result<Throughput> {
    let input_bytes: u64 = model.tensors.iter().filter(|t| t.is_analysable()).map(|t| t.size_bytes()).sum();
    let read_bytes: u64 = model.shards.iter().map(|s| s.file_bytes().len() as u64).sum();
    std::hint::black_box(read_all(model));
    analyze_model(model, plan, progress)?;
    let mut read_secs = f64::INFINITY;
    let mut pass_secs = f64::INFINITY;
    for _ in 0..repeat {
        let start = Instant::now();
        std::hint::black_box(read_all(model));
        read_secs = read_secs.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        std::hint::black_box(analyze_model(model, plan, progress)?);
        pass_secs = pass_secs.min(start.elapsed().as_secs_f64());
    }
    let largest = (0..model.tensors.len())
        .map(TensorId)
        .filter(|&id| model.tensor(id).is_analysable())
        .max_by_key(|&id| (model.tensor(id).numel(), std::cmp::Reverse(id.0)));
    let mut histograms_secs = 0.0;
    if let Some(id) = largest {
        let data = TensorData::of(model, id)?;
        let analysis = pass::analyze(&data, plan.tensor(model, id), progress)?;
        pass::histograms(&data, &analysis, progress)?;
        histograms_secs = f64::INFINITY;
        for _ in 0..repeat {
            let start = Instant::now();
            std::hint::black_box(pass::histograms(&data, &analysis, progress)?);
            histograms_secs = histograms_secs.min(start.elapsed().as_secs_f64());
        }
    }
    let pass_gb_per_s = input_bytes as f64 / pass_secs / 1e9;
    let read_gb_per_s = read_bytes as f64 / read_secs / 1e9;
    Ok(Throughput {
        input_bytes,
        threads: rayon::current_num_threads(),
        implementation: crate::quant::kernels::implementation_name(),
        pass_secs,
        pass_gb_per_s,
        read_secs,
        read_bytes,
        read_gb_per_s,
        fraction_of_read_bandwidth: pass_gb_per_s / read_gb_per_s,
        histograms_tensor: largest.map(|id| model.tensor(id).name.clone()).unwrap_or_default(),
        histograms_elements: largest.map_or(0, |id| model.tensor(id).numel() as u64),
        histograms_secs,
        repeat,
    })
}
