//! The headless commands (`inspect`, `quantize`, `recipe`, `eval`, `calibrate`, `sensitivity`, `bench`,
//! `throughput`) over the same core the window uses.
//!
//! Every command prints one JSON document on stdout with `--json`, a table otherwise, and a progress bar on
//! stderr when stderr is a terminal. Errors are printed once, on one line, and give exit code 2.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::{Granularity, Int8Scheme, Plan, Precision, Recipe};
use crate::report::{ModelReport, TensorReport, analyze_model};
use crate::runtime::EvalData;
use crate::units::human_bytes;

/// `println!` that ignores a closed stdout (`quantstudio inspect M | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out_inline {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// quantstudio: open a safetensors model, choose a precision per layer, measure the error, export.
#[derive(Debug, Parser)]
#[command(name = "quantstudio", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A headless command; without one the studio window opens.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Model to open in the window (a .safetensors file or a model folder); the bundled sample when omitted.
    pub path: Option<PathBuf>,
    /// Window benchmark: record frame times for this many seconds, print them as JSON on stderr, and close.
    #[arg(long, value_name = "SECS")]
    pub frame_stats: Option<f64>,
}

/// The headless commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List layers, dtypes, sizes and statistics of every tensor.
    Inspect {
        /// A .safetensors file or a Hugging Face model folder.
        model: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Quantize under a recipe or a uniform precision: per-tensor error table, sizes, and whether the export
    /// target's runtimes load the plan; export with -o.
    Quantize {
        /// A .safetensors file or a Hugging Face model folder.
        model: PathBuf,
        #[command(flatten)]
        plan: PlanArgs,
        /// Export the quantized model into this folder (new, empty, or an earlier export, which is replaced).
        #[arg(short, long, value_name = "FOLDER")]
        output: Option<PathBuf>,
        /// Where the export goes: compressed-tensors (transformers, vLLM).
        #[arg(long, value_enum, default_value_t = TargetArg::CompressedTensors)]
        target: TargetArg,
        /// Export even when a runtime of the target will not load the plan (the layers are listed as warnings).
        #[arg(long)]
        force: bool,
        /// Split the weights into shards of at most this many bytes (with model.safetensors.index.json).
        #[arg(long, value_name = "BYTES", default_value_t = crate::export::DEFAULT_MAX_SHARD_BYTES)]
        max_shard_bytes: u64,
        #[command(flatten)]
        format: OutputArgs,
    },
    /// Print a starting recipe for a model (JSON), to edit and pass to `quantize --recipe`.
    Recipe {
        /// A .safetensors file or a Hugging Face model folder.
        model: PathBuf,
    },
    /// Run the model in FP32 and as planned on evaluation data, and compare: accuracy, embedding cosine,
    /// next-token agreement and KL, output SQNR.
    Eval {
        /// A model folder with a runnable architecture (model.json graph, BERT or Llama config.json).
        model: PathBuf,
        #[command(flatten)]
        plan: PlanArgs,
        /// Evaluation data: a .safetensors file (`inputs` [+ `labels`], or `input_ids` [+ `attention_mask`,
        /// `token_type_ids`]) or a text file, one sample per line, tokenised with the model's tokenizer.json.
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// Also write the FP32 and planned outputs of every sample, with the tokens they were computed on, to this
        /// safetensors file (names in docs/EVALUATION.md).
        #[arg(long, value_name = "FILE")]
        save_outputs: Option<PathBuf>,
    },
    /// Run the model in FP32 on calibration data and pick a clip for the input of every linear and conv layer
    /// (static INT8 activations, W8A8); results are cached, so re-running with another observer is instant.
    Calibrate {
        /// A model folder with a runnable architecture.
        model: PathBuf,
        /// Calibration data, in any format `eval --data` takes.
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        /// How the clip is chosen: minmax, percentile (99.99), percentile:P, mse or entropy.
        #[arg(long, default_value = "percentile:99.99", value_parser = parse_observer)]
        observer: crate::calib::Observer,
        /// The weights of the recipe written with --write-recipe (default: INT8 symmetric per channel).
        #[command(flatten)]
        plan: PlanArgs,
        /// Write a recipe whose INT8 layers become W8A8 with the calibrated input clips.
        #[arg(long, value_name = "FILE")]
        write_recipe: Option<PathBuf>,
        /// Neither read nor write the calibration cache.
        #[arg(long)]
        no_cache: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Rank the layers by how much quantizing each one costs the task metric (one at a time, or everything
    /// but one).
    Sensitivity {
        /// A model folder with a runnable architecture.
        model: PathBuf,
        /// Evaluation data, in any format `eval --data` takes.
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        /// The precisions tried (default: INT8 symmetric per channel on every layer it suits).
        #[command(flatten)]
        plan: PlanArgs,
        /// one-at-a-time: each layer quantized alone; all-but-one: everything quantized except one layer.
        #[arg(long, value_enum, default_value_t = ModeArg::OneAtATime)]
        mode: ModeArg,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Time the FP32 forward pass, and the plan's when one is given: batch-1 latency (median, p95) and
    /// throughput on synthetic inputs, weights in memory, size on disk, and the plan's accuracy against FP32 on
    /// evaluation data. The plan runs as deployed: W8A8 layers on INT8 codes with integer products, other
    /// quantized linear layers on FP16/BF16/INT8 weights converted tile by tile.
    Bench {
        /// A model folder with a runnable architecture.
        model: PathBuf,
        /// A plan to time beside FP32 (a recipe, or the uniform-precision shortcuts).
        #[command(flatten)]
        plan: PlanArgs,
        /// Evaluation data for the accuracy figures (default: the data file the model folder brings, if any).
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// Time only; skip the accuracy figures.
        #[arg(long)]
        no_accuracy: bool,
        /// BERT: tokens per sequence; Llama: prompt length of the prefill throughput run.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Llama: positions in the key/value cache before the timed token.
        #[arg(long, default_value_t = 127)]
        past: usize,
        /// Samples (graph) or sequences (BERT) per throughput run.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Timed batch-1 runs (after 3 warm-up runs).
        #[arg(long, default_value_t = 30)]
        repeat: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Measure the analysis pass in GB/s of input weights against the read bandwidth of the same mapped files.
    Throughput {
        /// A .safetensors file or a Hugging Face model folder.
        model: PathBuf,
        #[command(flatten)]
        plan: PlanArgs,
        /// Timed repetitions of each measurement (the best is reported, after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Output options shared by the reporting commands.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With --json: include the 256-bin value and error histograms and the INT8 scales of every tensor.
    #[arg(long)]
    pub histograms: bool,
}

/// An export target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Hugging Face folder in the compressed-tensors layout (transformers, vLLM).
    CompressedTensors,
}

impl From<TargetArg> for crate::export::Target {
    fn from(arg: TargetArg) -> Self {
        match arg {
            TargetArg::CompressedTensors => crate::export::Target::CompressedTensors,
        }
    }
}

/// A uniform precision, for the shortcuts. The quantized ones apply to what deployment runtimes quantize: linear
/// layers and convolutions, but not embeddings or the output head (lm_head); FP16 and BF16 apply to every layer.
/// Norms and 1-D layers stay FP32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// 8-bit integer weights (weight-only; --per-channel, --asymmetric).
    Int8,
    /// W8A8-dynamic: symmetric per-channel INT8 weights, inputs quantized per token at run time (no calibration).
    W8a8Dynamic,
    /// FP8 E4M3 weights, one scale per output channel (weight-only).
    Fp8,
    /// FP8_DYNAMIC: FP8 E4M3 per-channel weights, inputs quantized to FP8 per token at run time.
    Fp8Dynamic,
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
    /// Keep as stored.
    Fp32,
}

/// The sensitivity variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Each layer quantized alone.
    OneAtATime,
    /// Everything quantized except one layer.
    AllButOne,
}

fn parse_observer(text: &str) -> std::result::Result<crate::calib::Observer, String> {
    crate::calib::Observer::parse(text)
}

/// How the plan is given: a recipe file or the uniform-precision shortcuts.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A recipe JSON file (see `quantstudio recipe`).
    #[arg(long, conflicts_with_all = ["precision", "per_channel", "asymmetric"])]
    pub recipe: Option<PathBuf>,
    /// One precision for the model: quantized ones on linear layers and convolutions (not embeddings or lm_head),
    /// FP16/BF16 on every layer; norms and 1-D layers stay FP32. The output says which layers it touched.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// INT8: one scale per output channel instead of per tensor.
    #[arg(long)]
    pub per_channel: bool,
    /// INT8: asymmetric (zero point) instead of symmetric.
    #[arg(long)]
    pub asymmetric: bool,
}

impl PlanArgs {
    /// Whether a plan was given at all (a recipe, a precision or a scheme flag).
    pub fn given(&self) -> bool {
        self.recipe.is_some() || self.precision.is_some() || self.per_channel || self.asymmetric
    }

    /// The recipe these arguments describe, or INT8 symmetric per channel when they describe none.
    pub fn recipe_or_int8(&self) -> Result<Recipe> {
        if !self.given() {
            return Ok(Recipe::uniform(Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel))));
        }
        self.recipe()
    }

    /// The recipe these arguments describe.
    pub fn recipe(&self) -> Result<Recipe> {
        if let Some(path) = &self.recipe {
            return Recipe::load(path);
        }
        let scheme = Int8Scheme::weights(
            !self.asymmetric,
            if self.per_channel { Granularity::PerChannel } else { Granularity::PerTensor },
        );
        let precision = match self.precision {
            None if self.per_channel || self.asymmetric => Precision::Int8(scheme),
            None => {
                return Err(Error::BadArguments {
                    reason: "give --recipe FILE or --precision int8|w8a8-dynamic|fp8|fp8-dynamic|fp16|bf16|fp32".into(),
                });
            }
            Some(PrecisionArg::Int8) => Precision::Int8(scheme),
            Some(PrecisionArg::W8a8Dynamic) => Precision::Int8(
                Int8Scheme::weights(!self.asymmetric, Granularity::PerChannel).with_dynamic_int8_inputs(),
            ),
            Some(PrecisionArg::Fp8 | PrecisionArg::Fp8Dynamic) if self.asymmetric => {
                return Err(Error::BadArguments {
                    reason: "FP8 is symmetric: --asymmetric applies to int8 only".into(),
                });
            }
            Some(PrecisionArg::Fp8) => Precision::Fp8(crate::quant::Fp8Scheme::weights(Granularity::PerChannel)),
            Some(PrecisionArg::Fp8Dynamic) => Precision::Fp8(crate::quant::Fp8Scheme::dynamic()),
            Some(PrecisionArg::Fp16) => Precision::Fp16,
            Some(PrecisionArg::Bf16) => Precision::Bf16,
            Some(PrecisionArg::Fp32) => Precision::Fp32,
        };
        Ok(Recipe::uniform(precision))
    }
}

fn print_eval(r: &crate::runtime::EvalReport) {
    out!("{} model, {} samples, {} outputs compared", r.family, r.samples, r.positions);
    let percent = |v: f64| format!("{:.2}%", v * 100.0);
    if let (Some(fp32), Some(plan)) = (r.fp32_accuracy, r.accuracy) {
        out!("accuracy         FP32 {}  plan {}  ({:+.2} points)", percent(fp32), percent(plan), (plan - fp32) * 100.0);
    }
    if let Some(v) = r.top1_agreement {
        out!("top-1 agreement  {}", percent(v));
    }
    if let Some(v) = r.mean_kl {
        out!("mean KL          {v:.6} nats");
    }
    if let (Some(mean), Some(min)) = (r.mean_cosine, r.min_cosine) {
        out!("cosine           mean {mean:.6}  min {min:.6}");
    }
    match r.output_sqnr_db {
        Some(db) => out!("output SQNR      {db:.2} dB  (max |diff| {:.4e})", r.output_max_abs_error),
        None => out!("output SQNR      identical to FP32"),
    }
}

/// Runs a headless command; returns the process exit code.
pub fn run(command: Command) -> i32 {
    match execute(command) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            2
        }
    }
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Inspect { model, output } => {
            let model = Model::open(&model)?;
            let plan = Plan::all(&model, Precision::Fp32);
            let report = with_progress_bar(|progress| analyze_model(&model, &plan, progress))?;
            if output.json {
                print_json(&report_json(&model, &report, None, None, &output, false));
            } else {
                print_table(&model, &report, false);
            }
            Ok(())
        }
        Command::Eval { model, plan, data, json, save_outputs } => {
            let recipe = plan.recipe()?;
            let model = Model::open(&model)?;
            let plan = recipe.resolve(&model)?;
            let arch = crate::runtime::Architecture::detect(&model)?;
            let data = crate::runtime::EvalData::load(&data, &crate::runtime::model_folder(&model))?;
            let report = match &save_outputs {
                None => with_progress_bar(|progress| crate::runtime::evaluate(&model, &arch, &data, &plan, progress))?,
                Some(path) => {
                    let (report, tensors) = with_progress_bar(|progress| {
                        crate::runtime::eval::evaluate_with_outputs(&model, &arch, &data, &plan, progress)
                    })?;
                    let planned = tensors
                        .iter()
                        .map(|t| crate::export::PlannedTensor {
                            name: t.name.clone(),
                            dtype: t.dtype,
                            shape: t.shape.clone(),
                        })
                        .collect();
                    let metadata = [("format", "pt"), ("quantstudio.family", arch.family())]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    let mut writer = crate::export::TensorFileWriter::create(path, planned, &metadata)?;
                    for t in &tensors {
                        writer.write_tensor(&t.name, &t.bytes)?;
                    }
                    writer.finish()?;
                    report
                }
            };
            if json {
                let mut doc = serde_json::to_value(&report).map_err(|e| Error::Json { reason: e.to_string() })?;
                doc["model"] = json!(model.path);
                doc["recipe"] = serde_json::to_value(&recipe).unwrap_or(Value::Null);
                doc["coverage"] = json!(plan.coverage(&model));
                print_json(&doc);
            } else {
                out!("plan: {}", plan.coverage(&model));
                print_eval(&report);
            }
            Ok(())
        }
        Command::Calibrate { model, data, observer, plan, write_recipe, no_cache, json } => {
            calibrate_command(&model, &data, observer, &plan, write_recipe.as_deref(), no_cache, json)
        }
        Command::Sensitivity { model, data, plan, mode, json } => {
            let recipe = plan.recipe_or_int8()?;
            let model = Model::open(&model)?;
            let plan = recipe.resolve(&model)?;
            let arch = crate::runtime::Architecture::detect(&model)?;
            let data = crate::runtime::EvalData::load(&data, &crate::runtime::model_folder(&model))?;
            let mode = match mode {
                ModeArg::OneAtATime => crate::calib::SensitivityMode::OneAtATime,
                ModeArg::AllButOne => crate::calib::SensitivityMode::AllButOne,
            };
            let report = with_progress_bar(|progress| {
                crate::calib::sensitivity(&model, &arch, &data, &plan, mode, progress, &mut |_| {})
            })?;
            if json {
                let mut doc = serde_json::to_value(&report).map_err(|e| Error::Json { reason: e.to_string() })?;
                doc["model"] = json!(model.path);
                print_json(&doc);
            } else {
                out!("{} model, {} samples, {}; score = {}", arch.family(), data.len(), mode.label(), report.metric);
                if let Some(full) = &report.full_plan {
                    out!("full plan: {}", full.headline());
                }
                out!("{:>4}  {:>12}  {:>10}  {:<24}  layer", "rank", "score", "SQNR dB", "precision");
                for (rank, l) in report.layers.iter().enumerate() {
                    let sqnr = l.report.output_sqnr_db.map_or("identical".to_owned(), |db| format!("{db:.2}"));
                    out!(
                        "{:>4}  {:>12.6}  {:>10}  {:<24}  {}",
                        rank + 1,
                        l.score,
                        sqnr,
                        l.precision.to_string(),
                        l.layer
                    );
                }
            }
            Ok(())
        }
        Command::Bench { model, plan, data, no_accuracy, seq, past, batch, repeat, json } => {
            let recipe = plan.given().then(|| plan.recipe()).transpose()?;
            let model = Model::open(&model)?;
            let arch = crate::runtime::Architecture::detect(&model)?;
            let planned = recipe.as_ref().map(|r| r.resolve(&model)).transpose()?;
            let workload = crate::runtime::latency::Workload { seq_len: seq, past_len: past, batch, repeat };
            let folder = crate::runtime::model_folder(&model);
            let data_path = if no_accuracy { None } else { data.or_else(|| EvalData::default_path(&folder)) };
            let eval_data = data_path.as_ref().map(|p| EvalData::load(p, &folder)).transpose()?;
            let request = crate::runtime::benchmark::Request {
                model: &model,
                arch: &arch,
                plan: planned.as_ref(),
                time_fp32: true,
                data: eval_data.as_ref(),
                workload,
                plan_disk_bytes: planned.as_ref().map_or(0, |p| crate::export::planned_model_bytes(&model, p)),
            };
            let mut configurations = Vec::new();
            with_progress_bar(|progress| {
                crate::runtime::benchmark::run(&request, progress, &mut |c| configurations.push(c))
            })?;
            if json {
                print_json(&json!({
                    "model": model.path,
                    "family": arch.family(),
                    "workload": workload,
                    "data": data_path,
                    "recipe": recipe,
                    "configurations": configurations,
                }));
            } else {
                let fp32_median = configurations.first().map(|c| c.latency.latency_ms_median);
                for c in &configurations {
                    let latency = &c.latency;
                    let layers = if c.name == "FP32" {
                        String::new()
                    } else {
                        format!(", {} integer layer(s), {} compact layer(s)", c.integer_layers, c.compact_layers)
                    };
                    out!("{} model, {}, {} thread(s){layers}", arch.family(), c.name, latency.threads);
                    let speedup = match fp32_median {
                        Some(base) if c.name != "FP32" && latency.latency_ms_median > 0.0 => {
                            format!(" ({:.2}x FP32)", base / latency.latency_ms_median)
                        }
                        _ => String::new(),
                    };
                    out!(
                        "  latency ({}): median {:.3} ms{speedup}, p95 {:.3} ms over {repeat} runs",
                        latency.unit,
                        latency.latency_ms_median,
                        latency.latency_ms_p95
                    );
                    out!("  throughput: {:.1} {}/s", latency.throughput_per_s, latency.throughput_unit);
                    out!(
                        "  weights in memory: {}, on disk: {}",
                        human_bytes(latency.weights_bytes),
                        human_bytes(c.disk_bytes)
                    );
                    if let Some(quality) = &c.quality {
                        out!("  {quality}");
                    }
                    if let Some(evaluation) = &c.evaluation {
                        out!("  against FP32: {}", evaluation.headline());
                    }
                }
            }
            Ok(())
        }
        Command::Quantize { model, plan, output, target, force, max_shard_bytes, format } => {
            let options = crate::export::ExportOptions { target: target.into(), force, max_shard_bytes };
            quantize_command(&model, &plan, output.as_deref(), &options, &format)
        }
        Command::Recipe { model } => {
            let model = Model::open(&model)?;
            out!("{}", Recipe::starting(&model).to_json());
            Ok(())
        }
        Command::Throughput { model, plan, repeat, json } => {
            let recipe = plan.recipe()?;
            let model = Model::open(&model)?;
            let plan = recipe.resolve(&model)?;
            let result = crate::bench::measure_throughput(&model, &plan, repeat.max(1), &Progress::new())?;
            if json {
                print_json(&serde_json::to_value(&result).unwrap_or(Value::Null));
            } else {
                out!("{result}");
            }
            Ok(())
        }
    }
}

fn quantize_command(
    model: &std::path::Path,
    plan_args: &PlanArgs,
    output: Option<&std::path::Path>,
    options: &crate::export::ExportOptions,
    format: &OutputArgs,
) -> Result<()> {
    let recipe = plan_args.recipe()?;
    let model = Model::open(model)?;
    let plan = recipe.resolve(&model)?;
    let report = with_progress_bar(|progress| analyze_model(&model, &plan, progress))?;
    let compatibility = options.target.check(&model, &plan);
    let export =
        output.map(|dest| with_progress_bar(|progress| crate::export::export(&model, &plan, dest, options, progress)));
    // A refused export still prints the report (with --json, the layers and fixes), then fails.
    let (export, error) = match export {
        Some(Ok(summary)) => (Some(summary), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    if format.json {
        let mut doc = report_json(&model, &report, Some((&recipe, &plan)), export.as_ref(), format, true);
        doc["coverage"] = json!(plan.coverage(&model));
        doc["compatibility"] = compatibility_json(&model, &compatibility);
        print_json(&doc);
    } else {
        print_table(&model, &report, true);
        out!("plan: {}", plan.coverage(&model));
        out!("{}", compatibility.summary());
        if export.is_none() {
            for problem in compatibility.problems(&model) {
                out!("  {problem}");
            }
        }
        for warning in model.warnings.iter().chain(&plan.warnings) {
            out!("warning: {warning}");
        }
        if let Some(export) = &export {
            for warning in &export.warnings {
                out!("warning: {warning}");
            }
            out!("exported to {} ({})", export.folder.display(), human_bytes(export.size_bytes));
        }
    }
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The compatibility check as JSON: the summary, one line per problem, and each refused layer with its runtimes,
/// reasons and fix.
fn compatibility_json(model: &Model, compatibility: &crate::export::Compatibility) -> Value {
    let loads: serde_json::Map<String, Value> = compatibility
        .target
        .runtimes()
        .iter()
        .map(|&r| {
            (
                serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                json!(compatibility.loads_in(r)),
            )
        })
        .collect();
    let layers: Vec<Value> = compatibility
        .layers
        .iter()
        .filter(|l| !l.is_clean())
        .map(|l| {
            let mut value = serde_json::to_value(l).unwrap_or(Value::Null);
            value["name"] = json!(model.layer(l.layer).name);
            value["fix"] = l.fix.map_or(Value::Null, precision_json);
            value
        })
        .collect();
    json!({
        "target": compatibility.target,
        "summary": compatibility.summary(),
        "loads_in": loads,
        "model_refusal": compatibility.model_refusal,
        "problems": compatibility.problems(model),
        "layers": layers,
    })
}

fn calibrate_command(
    model: &std::path::Path,
    data: &std::path::Path,
    observer: crate::calib::Observer,
    plan_args: &PlanArgs,
    write_recipe: Option<&std::path::Path>,
    no_cache: bool,
    json: bool,
) -> Result<()> {
    use crate::calib::Observer;
    let recipe = plan_args.recipe_or_int8()?;
    let model = Model::open(model)?;
    let mut plan = recipe.resolve(&model)?;
    let arch = crate::runtime::Architecture::detect(&model)?;
    let cache = (!no_cache).then(crate::calib::default_cache_dir);
    let run = with_progress_bar(|progress| crate::calib::calibrate(&model, &arch, data, cache.as_deref(), progress))?;
    let calibration = &run.calibration;
    let observers = [
        Observer::MinMax,
        Observer::Percentile { percentile: 99.9 },
        Observer::Percentile { percentile: 99.99 },
        Observer::Mse,
        Observer::Entropy,
    ];
    // Model order, so the table reads like the network.
    let ordered: Vec<(&String, &crate::calib::ActivationHistogram)> =
        model.layers.iter().filter_map(|l| calibration.layers.get_key_value(&l.name)).collect();
    if let Some(path) = write_recipe {
        for (index, precision) in plan.layers.iter_mut().enumerate() {
            if let Precision::Int8(scheme) = precision
                && calibration.layers.contains_key(&model.layers[index].name)
            {
                *scheme = scheme.with_int8_inputs();
            }
        }
        calibration.apply(&model, &mut plan, observer, &Default::default());
        plan.to_recipe(&model).save(path)?;
    }
    if json {
        let layers: Vec<Value> = ordered
            .iter()
            .map(|(name, h)| {
                let clip = observer.clip(h);
                let clips: serde_json::Map<String, Value> =
                    observers.iter().map(|o| (o.label(), json!(o.clip(h)))).collect();
                json!({
                    "name": name,
                    "values": h.count,
                    "nonfinite": h.nonfinite,
                    "min": if h.count > 0 { json!(h.min) } else { Value::Null },
                    "max": if h.count > 0 { json!(h.max) } else { Value::Null },
                    "absmax": h.absmax(),
                    "clip": clip,
                    "scale": crate::quant::QParams::symmetric(clip).scale,
                    "error": crate::calib::clip_error(h, clip),
                    "clips": clips,
                })
            })
            .collect();
        print_json(&json!({
            "model": model.path,
            "data": data,
            "observer": observer,
            "samples": calibration.samples,
            "from_cache": run.from_cache,
            "cache_file": run.cache_file,
            "recipe": write_recipe,
            "layers": layers,
        }));
    } else {
        let source = if run.from_cache { "from the cache" } else { "measured" };
        out!("{} layers calibrated on {} samples ({source}); observer {observer}", ordered.len(), calibration.samples);
        out!("{:>10}  {:>10}  {:>10}  {:>10}  {:>9}  layer", "absmax", "clip", "scale", "SQNR dB", "clipped");
        for (name, h) in &ordered {
            let clip = observer.clip(h);
            let error = crate::calib::clip_error(h, clip);
            let sqnr = error.sqnr_db.map_or("lossless".to_owned(), |db| format!("{db:.2}"));
            out!(
                "{:>10.4}  {:>10.4}  {:>10.3e}  {:>10}  {:>8.4}%  {name}",
                h.absmax(),
                clip,
                crate::quant::QParams::symmetric(clip).scale,
                sqnr,
                error.clipped_fraction * 100.0
            );
        }
        if let Some(path) = write_recipe {
            out!("W8A8 recipe written to {}", path.display());
        }
    }
    Ok(())
}

fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// Runs `work` on a scoped thread while this thread draws a progress bar on stderr (when it is a terminal).
fn with_progress_bar<T: Send>(work: impl FnOnce(&Progress) -> Result<T> + Send) -> Result<T> {
    let progress = Progress::new();
    if !std::io::stderr().is_terminal() {
        return work(&progress);
    }
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| work(&progress));
        let mut drawn = false;
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            let snapshot = progress.snapshot();
            let width = 30;
            let filled = (snapshot.fraction() * width as f32) as usize;
            eprint!(
                "\r[{}{}] {:>3.0}% {}\x1b[K",
                "#".repeat(filled),
                " ".repeat(width - filled),
                snapshot.fraction() * 100.0,
                snapshot.stage
            );
            drawn = true;
        }
        if drawn {
            eprint!("\r\x1b[K");
        }
        handle.join().unwrap_or(Err(Error::Cancelled))
    })
}

fn precision_json(precision: Precision) -> Value {
    serde_json::to_value(precision).unwrap_or(Value::Null)
}

fn tensor_json(tensor: &TensorReport, with_error: bool, with_histograms: bool) -> Value {
    let mut object = json!({
        "name": tensor.name,
        "layer": tensor.layer,
        "kind": tensor.kind,
        "dtype": tensor.dtype,
        "shape": tensor.shape,
        "size_bytes": tensor.size_bytes,
        "analysed": tensor.is_analysed(),
    });
    let map = object.as_object_mut().expect("json! of an object literal is an object");
    if with_error {
        map.insert("planned_bytes".into(), json!(tensor.planned_bytes));
        match precision_json(tensor.precision) {
            Value::Object(precision) if tensor.is_analysed() => map.extend(precision),
            _ => {
                map.insert("precision".into(), json!("kept"));
            }
        }
    }
    if let Some(analysis) = &tensor.analysis {
        map.insert("stats".into(), serde_json::to_value(analysis.stats).unwrap_or(Value::Null));
        if with_error {
            let e = &analysis.error;
            map.insert("mse".into(), json!(e.mse));
            map.insert("max_abs_error".into(), json!(e.max_abs_error));
            map.insert("sqnr_db".into(), json!(e.sqnr_db));
            map.insert("lossless".into(), json!(e.is_lossless()));
            map.insert("saturated_count".into(), json!(e.saturated_count));
        }
        if with_histograms {
            map.insert(
                "value_histogram".into(),
                serde_json::to_value(&analysis.value_histogram).unwrap_or(Value::Null),
            );
            if with_error {
                map.insert(
                    "error_histogram".into(),
                    serde_json::to_value(&analysis.error_histogram).unwrap_or(Value::Null),
                );
                map.insert("group_params".into(), serde_json::to_value(&analysis.group_params).unwrap_or(Value::Null));
                if !analysis.fp8_scales.is_empty() {
                    map.insert("fp8_scales".into(), json!(analysis.fp8_scales));
                }
            }
        }
    }
    object
}

fn report_json(
    model: &Model,
    report: &ModelReport,
    plan: Option<(&Recipe, &Plan)>,
    export: Option<&crate::export::ExportSummary>,
    output: &OutputArgs,
    with_error: bool,
) -> Value {
    let mut warnings = model.warnings.clone();
    let mut object = json!({
        "model": model.path,
        "implementation": crate::quant::kernels::implementation_name(),
        "tensor_count": model.tensors.len(),
        "layer_count": model.layers.len(),
        "parameter_count": model.parameter_count(),
        "size_bytes": report.size_bytes,
        "layers": model.layers.iter().map(|l| json!({
            "name": l.name,
            "kind": l.kind.as_str(),
            "tensors": l.tensors.iter().map(|t| model.tensor(*t).name.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "tensors": report.tensors.iter().map(|t| tensor_json(t, with_error, output.histograms)).collect::<Vec<_>>(),
    });
    let map = object.as_object_mut().expect("json! of an object literal is an object");
    if let Some((recipe, plan)) = plan {
        warnings.extend(plan.warnings.iter().cloned());
        map.insert("recipe".into(), serde_json::to_value(recipe).unwrap_or(Value::Null));
        map.insert("planned_bytes".into(), json!(report.planned_bytes));
        map.insert("compression_ratio".into(), json!(report.compression_ratio()));
        if let Some((worst, db)) = report.worst_by_sqnr() {
            map.insert("worst_sqnr".into(), json!({"name": worst.name, "sqnr_db": db}));
        }
    }
    if let Some(export) = export {
        map.insert(
            "export".into(),
            json!({"path": export.folder, "target": export.target, "size_bytes": export.size_bytes, "files": export.files}),
        );
        warnings.extend(export.warnings.iter().cloned());
    }
    map.insert("warnings".into(), json!(warnings));
    object
}

fn print_table(model: &Model, report: &ModelReport, with_error: bool) {
    out!(
        "model: {} ({} tensors, {} layers, {} parameters, {})",
        model.path.display(),
        model.tensors.len(),
        model.layers.len(),
        model.parameter_count(),
        human_bytes(report.size_bytes)
    );
    let name_width = report.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).clamp(6, 60);
    if with_error {
        out!(
            "{:<name_width$}  {:<5}  {:<16}  {:<21}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}",
            "tensor",
            "dtype",
            "shape",
            "precision",
            "size",
            "planned",
            "mse",
            "max err",
            "sqnr dB",
            "nan/inf"
        );
    } else {
        out!(
            "{:<name_width$}  {:<9}  {:<5}  {:<16}  {:>10}  {:>11}  {:>11}  {:>11}  {:>11}  {:>10}",
            "tensor",
            "kind",
            "dtype",
            "shape",
            "size",
            "min",
            "max",
            "mean",
            "std",
            "nan/inf"
        );
    }
    for t in &report.tensors {
        let shape = format!("{:?}", t.shape);
        let non_finite = t.analysis.as_ref().map(|a| a.stats.nan_count + a.stats.inf_count);
        let non_finite = non_finite.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        if with_error {
            let (mse, max, sqnr) = match &t.analysis {
                Some(a) => (
                    format!("{:.3e}", a.error.mse),
                    format!("{:.3e}", a.error.max_abs_error),
                    a.error.sqnr_db.map(|db| format!("{db:.2}")).unwrap_or_else(|| "lossless".into()),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            out!(
                "{:<name_width$}  {:<5}  {:<16}  {:<21}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}",
                t.name,
                t.dtype.as_str(),
                shape,
                if t.is_analysed() { t.precision.label() } else { "kept".to_owned() },
                human_bytes(t.size_bytes),
                human_bytes(t.planned_bytes),
                mse,
                max,
                sqnr,
                non_finite
            );
        } else {
            let cell = |f: fn(&crate::stats::TensorStats) -> f64| {
                t.analysis.as_ref().map(|a| format!("{:.4e}", f(&a.stats))).unwrap_or_else(|| "-".into())
            };
            out!(
                "{:<name_width$}  {:<9}  {:<5}  {:<16}  {:>10}  {:>11}  {:>11}  {:>11}  {:>11}  {:>10}",
                t.name,
                t.kind,
                t.dtype.as_str(),
                shape,
                human_bytes(t.size_bytes),
                cell(|s| s.min as f64),
                cell(|s| s.max as f64),
                cell(|s| s.mean),
                cell(|s| s.std),
                non_finite
            );
        }
    }
    if with_error {
        out_inline!(
            "total: {} -> {} ({:.2}x smaller)",
            human_bytes(report.size_bytes),
            human_bytes(report.planned_bytes),
            report.compression_ratio()
        );
        match report.worst_by_sqnr() {
            Some((worst, db)) => out!("; worst SQNR: {} at {db:.2} dB", worst.name),
            None => out!("; every tensor lossless"),
        }
    }
}
