//! The command line: clap's types for every subcommand and the plan arguments they share.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result};
use crate::quant::{Granularity, Int8Scheme, Precision, Recipe};

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
        /// Export the quantized model into this folder (new, empty, or an earlier export, which is replaced); never the
        /// input's folder or a folder inside it. With --target gguf: this file (OUT.gguf).
        #[arg(short, long, value_name = "FOLDER|FILE")]
        output: Option<PathBuf>,
        /// Where the export goes: compressed-tensors (transformers, vLLM) or gguf (llama.cpp).
        #[arg(long, value_enum, default_value_t = TargetArg::CompressedTensors)]
        target: TargetArg,
        /// Export even when a runtime of the target will not load the plan (the layers are listed as warnings).
        #[arg(long)]
        force: bool,
        /// Split the weights into shards of at most this many bytes (with model.safetensors.index.json).
        #[arg(long, value_name = "BYTES", default_value_t = crate::export::DEFAULT_MAX_SHARD_BYTES)]
        max_shard_bytes: u64,
        /// Replace an output folder that holds something other than an earlier export (its files are removed).
        #[arg(long)]
        overwrite: bool,
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
        #[arg(long, value_name = "FILE", required_unless_present = "perplexity", conflicts_with = "perplexity")]
        data: Option<PathBuf>,
        /// Instead of --data: perplexity and KL of FP32 and the plan on this text file (Llama models), chunked and
        /// scored as llama-perplexity does.
        #[arg(long, value_name = "TEXT")]
        perplexity: Option<PathBuf>,
        /// Tokens per perplexity chunk (llama-perplexity's -c).
        #[arg(long, value_name = "TOKENS", default_value_t = crate::runtime::perplexity::DEFAULT_CTX_TOKENS, requires = "perplexity")]
        ctx: usize,
        /// The most perplexity chunks to run (default: every whole chunk of the text).
        #[arg(long, value_name = "N", requires = "perplexity")]
        chunks: Option<usize>,
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
    /// quantized linear layers on FP16/BF16/INT8/FP8/INT4 weights converted tile by tile.
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
        #[arg(long, default_value_t = 128, value_parser = at_most::<{ MAX_SEQ }>)]
        seq: usize,
        /// Llama: positions in the key/value cache before the timed token.
        #[arg(long, default_value_t = 127, value_parser = at_most::<{ MAX_PAST }>)]
        past: usize,
        /// Samples (graph) or sequences (BERT) per throughput run.
        #[arg(long, default_value_t = 32, value_parser = at_most::<{ MAX_BATCH }>)]
        batch: usize,
        /// Timed batch-1 runs (after 3 warm-up runs).
        #[arg(long, default_value_t = 30, value_parser = at_most::<{ MAX_REPEAT }>)]
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
        #[arg(long, default_value_t = 3, value_parser = at_most::<{ MAX_REPEAT }>)]
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
    /// With --json: include the 256-bin value and error histograms (counted only then, one more read of each
    /// tensor) and the INT8 scales of every tensor.
    #[arg(long)]
    pub histograms: bool,
}

impl OutputArgs {
    /// Whether the output shows histograms (they are computed only then).
    pub fn wants_histograms(&self) -> bool {
        self.json && self.histograms
    }
}

/// An export target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Hugging Face folder in the compressed-tensors layout (transformers, vLLM).
    CompressedTensors,
    /// One GGUF file for llama.cpp (Llama-family models); -o names the file, e.g. OUT.gguf.
    Gguf,
}

impl From<TargetArg> for crate::export::Target {
    fn from(arg: TargetArg) -> Self {
        match arg {
            TargetArg::CompressedTensors => crate::export::Target::CompressedTensors,
            TargetArg::Gguf => crate::export::Target::Gguf,
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
    /// Group-wise INT4 weights (W4A16; --group-size, --asymmetric); 2-D weights with rows of a multiple of 32.
    Int4,
    /// IEEE half precision.
    Fp16,
    /// bfloat16.
    Bf16,
    /// Keep as stored.
    Fp32,
    /// llama.cpp's Q8_0 blocks (32 values, f16 scale, 8-bit codes); 2-D weights with rows of a multiple of 32.
    #[value(name = "q8_0")]
    Q8_0,
    /// llama.cpp's Q4_0 blocks (32 values, f16 scale, 4-bit codes); 2-D weights with rows of a multiple of 32.
    #[value(name = "q4_0")]
    Q4_0,
    /// llama.cpp's Q4_K super-blocks (256 values); 2-D weights with rows of a multiple of 256.
    #[value(name = "q4_k")]
    Q4K,
    /// llama.cpp's Q6_K super-blocks (256 values); 2-D weights with rows of a multiple of 256.
    #[value(name = "q6_k")]
    Q6K,
}

/// The sensitivity variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Each layer quantized alone.
    OneAtATime,
    /// Everything quantized except one layer.
    AllButOne,
}

/// Parses an `--observer` value.
/// Largest `bench --seq`: tokens per sequence (activations grow with it; no supported model takes more).
pub const MAX_SEQ: usize = 32_768;
/// Largest `bench --past`: cached positions (the key/value cache grows with it).
pub const MAX_PAST: usize = 32_768;
/// Largest `bench --batch`: samples or sequences per throughput run.
pub const MAX_BATCH: usize = 4_096;
/// Largest `--repeat`: timed runs (one timing of 8 bytes is kept per run).
pub const MAX_REPEAT: usize = 1_000_000;

/// A count of at most `MAX`, the documented bound of a size taken from the command line.
fn at_most<const MAX: usize>(text: &str) -> std::result::Result<usize, String> {
    let value: usize = text.parse().map_err(|e| format!("{e}"))?;
    if value > MAX {
        return Err(format!("{value} is above the limit of {MAX}"));
    }
    Ok(value)
}

fn parse_observer(text: &str) -> std::result::Result<crate::calib::Observer, String> {
    crate::calib::Observer::parse(text)
}

impl Command {
    /// The recipe file the command was given (`--recipe`), if any.
    pub fn recipe_file(&self) -> Option<&std::path::Path> {
        let plan = match self {
            Command::Quantize { plan, .. }
            | Command::Eval { plan, .. }
            | Command::Calibrate { plan, .. }
            | Command::Sensitivity { plan, .. }
            | Command::Bench { plan, .. }
            | Command::Throughput { plan, .. } => plan,
            Command::Inspect { .. } | Command::Recipe { .. } => return None,
        };
        plan.recipe.as_deref()
    }
}

/// How the plan is given: a recipe file or the uniform-precision shortcuts.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A recipe JSON file (see `quantstudio recipe`).
    #[arg(long, conflicts_with_all = ["precision", "per_channel", "asymmetric", "group_size", "gptq"])]
    pub recipe: Option<PathBuf>,
    /// One precision for the model: quantized ones on linear layers and convolutions (not embeddings or lm_head),
    /// FP16/BF16 on every layer; norms and 1-D layers stay FP32. The output says which layers it touched.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// INT8: one scale per output channel instead of per tensor.
    #[arg(long)]
    pub per_channel: bool,
    /// INT8 and INT4: asymmetric (zero point) instead of symmetric.
    #[arg(long)]
    pub asymmetric: bool,
    /// INT4: values of a row that share a scale (32, 64 or 128; default 128). A layer whose rows it does not
    /// divide gets the largest smaller size that does.
    #[arg(long, value_parser = parse_group_size)]
    pub group_size: Option<usize>,
    /// INT4 and INT8: quantize with GPTQ on this calibration data (any format `eval --data` takes) instead of
    /// rounding to nearest; the output error of both is printed per layer.
    #[arg(long, value_name = "DATA")]
    pub gptq: Option<PathBuf>,
    /// With --gptq: visit the columns by decreasing input energy (act-order, static groups).
    #[arg(long, requires = "gptq")]
    pub act_order: bool,
}

fn parse_group_size(text: &str) -> std::result::Result<usize, String> {
    let value: usize = text.parse().map_err(|e| format!("{e}"))?;
    if !crate::quant::int4::GROUP_SIZES.contains(&value) {
        return Err(format!("{value} is not one of {:?}", crate::quant::int4::GROUP_SIZES));
    }
    Ok(value)
}

impl PlanArgs {
    /// Whether a plan was given at all (a recipe, a precision or a scheme flag).
    pub fn given(&self) -> bool {
        self.recipe.is_some()
            || self.precision.is_some()
            || self.per_channel
            || self.asymmetric
            || self.group_size.is_some()
            || self.gptq.is_some()
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
        if self.group_size.is_some() && self.precision != Some(PrecisionArg::Int4) {
            return Err(Error::BadArguments { reason: "--group-size applies to --precision int4 only".into() });
        }
        if self.gptq.is_some()
            && !matches!(self.precision, Some(PrecisionArg::Int4 | PrecisionArg::Int8 | PrecisionArg::W8a8Dynamic))
        {
            return Err(Error::BadArguments {
                reason: "--gptq applies to --precision int4, int8 and w8a8-dynamic only".into(),
            });
        }
        let precision = match self.precision {
            None if self.per_channel || self.asymmetric => Precision::Int8(scheme),
            None => {
                return Err(Error::BadArguments {
                    reason: "give --recipe FILE or --precision int8|w8a8-dynamic|fp8|fp8-dynamic|int4|fp16|bf16|fp32|q8_0|q4_0|q4_k|q6_k".into(),
                });
            }
            Some(PrecisionArg::Int8) => Precision::Int8(scheme),
            Some(PrecisionArg::W8a8Dynamic) => Precision::Int8(
                Int8Scheme::weights(!self.asymmetric, Granularity::PerChannel).with_dynamic_int8_inputs(),
            ),
            Some(PrecisionArg::Fp8 | PrecisionArg::Fp8Dynamic) if self.asymmetric => {
                return Err(Error::BadArguments {
                    reason: "FP8 is symmetric: --asymmetric applies to int8 and int4 only".into(),
                });
            }
            Some(PrecisionArg::Int4) if self.per_channel => {
                return Err(Error::BadArguments {
                    reason: "INT4 has a scale per group of a row (--group-size): --per-channel applies to int8 only"
                        .into(),
                });
            }
            Some(PrecisionArg::Int4) => Precision::Int4(crate::quant::Int4Scheme::new(
                !self.asymmetric,
                self.group_size.unwrap_or(crate::quant::int4::DEFAULT_GROUP_SIZE),
            )),
            Some(PrecisionArg::Fp8) => Precision::Fp8(crate::quant::Fp8Scheme::weights(Granularity::PerChannel)),
            Some(PrecisionArg::Fp8Dynamic) => Precision::Fp8(crate::quant::Fp8Scheme::dynamic()),
            Some(PrecisionArg::Fp16) => Precision::Fp16,
            Some(PrecisionArg::Bf16) => Precision::Bf16,
            Some(PrecisionArg::Fp32) => Precision::Fp32,
            Some(PrecisionArg::Q8_0 | PrecisionArg::Q4_0 | PrecisionArg::Q4K | PrecisionArg::Q6K)
                if self.asymmetric || self.per_channel =>
            {
                return Err(Error::BadArguments {
                    reason: "llama.cpp's block formats fix their own scales: --per-channel applies to int8 only, \
                             --asymmetric to int8 and int4 only"
                        .into(),
                });
            }
            Some(PrecisionArg::Q8_0) => Precision::Q8_0,
            Some(PrecisionArg::Q4_0) => Precision::Q4_0,
            Some(PrecisionArg::Q4K) => Precision::Q4K,
            Some(PrecisionArg::Q6K) => Precision::Q6K,
        };
        let gptq = self.gptq.clone().map(|data| crate::quant::plan::GptqRecipe {
            data,
            options: crate::quant::gptq::GptqOptions { act_order: self.act_order, ..Default::default() },
        });
        Ok(Recipe { gptq, ..Recipe::uniform(precision) })
    }
}
