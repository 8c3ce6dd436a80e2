//! The one integration-test binary (one link instead of many on a 2-core CI machine).

mod common;

// Opening files and folders, and every kind of bad input.
mod load;
// Formulas, statistics, edge values and determinism of the analysis pass.
mod quant;
// Recipes: resolution order, defaults, errors.
mod recipe;
// Export: layout, bit-exact round trip, safety of the input model.
mod export;
// The GGUF target: header, offsets, bytes and permutation read back; refusals; the gguf package's reader.
mod gguf;
// Folder-atomic export: kill -9 mid-export, litter of a crash, foreign folders, the input's folder, empty tensors.
mod atomic;
// The headless CLI: JSON shape, exit codes, one-line errors.
mod cli;
// The window, headless (egui_kittest).
#[cfg(feature = "gui")]
mod gui;
// The window's state without egui: plan editor, calibration, results log, table view, and the studio routing them.
#[cfg(feature = "gui")]
mod studio;
// The digits sample models: documented data split, committed weights and accuracy, seeded training, model.json.
mod samples;
// Independent Python checks: the numpy reference of the formulas, the runtime fixtures, MiniLM's published scores.
mod python;
// Exports loaded by transformers, compressed-tensors and sentence-transformers against the studio's simulation.
mod deploy;
// Mutation fuzzing of the safetensors, recipe, model.json and data parsers, and the known-abort classes.
mod fuzz;
// The runtime: forward passes against Flax goldens, tokenisation, evaluation of plans against FP32.
mod runtime;
// The worker: jobs, progress stages, cancel, replacement, priority of its threads.
mod worker;
// Hostile input: huge sizes, broken networks, unknown keys, errors naming their file.
mod hostile;
// The use cases the CLI and the worker share (src/tasks).
mod tasks;
// Calibration, W8A8 and sensitivity.
mod calib;
// Benchmarks: the deployed kernels against the simulation, and the benchmark's figures.
mod bench;
// FP8 E4M3 bit for bit against ml_dtypes, torch and compressed-tensors (tools/check/check_fp8.py).
mod fp8;
// llama.cpp block formats Q8_0, Q4_0, Q4_K, Q6_K: known blocks, layouts, activation quantizers.
mod ggml;
