//! The use cases, called by both the worker (for the window) and the CLI, so the glue between the core modules
//! (open a model, resolve a recipe, detect the architecture, load data, run, write) is written once.
//!
//! Each use case is a plain function: typed inputs and a [`Progress`] in, a typed result out. Nothing here prints,
//! spawns a thread or knows who called it; results that stream (sensitivity layers, benchmark configurations,
//! analysed tensors) go to a callback as they come.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Histograms the input of every linear and conv layer on a data file, from the cache when it holds this model
/// and data (the core function is the use case as it stands).
pub use crate::calib::calibrate;
/// Ranks the layers a plan quantizes by how much each costs the task metric (data read with [`load_data`]).
pub use crate::calib::sensitivity;
/// Exports a model under a plan into a folder (the target checks the plan first).
pub use crate::export::export;

use crate::bench::Throughput;
use crate::calib::view::LayerActivations;
use crate::calib::{CalibrationRun, Observer};
use crate::error::{Error, Result};
use crate::export::{Compatibility, ExportOptions, ExportSummary};
use crate::model::writer::{PlannedTensor, TensorFileWriter};
use crate::model::{LayerId, Model, TensorId};
use crate::progress::Progress;
use crate::quant::gptq::GptqWeights;
use crate::quant::pass::{self, TensorData, analyze};
use crate::quant::{Plan, Precision, Recipe, TensorAnalysis, TensorHistograms};
use crate::report::{ModelReport, analyze_model};
use crate::runtime::benchmark::{self, Configuration};
use crate::runtime::latency::Workload;
use crate::runtime::perplexity::{Document, PerplexityReport};
use crate::runtime::{Architecture, EvalData, EvalReport, model_folder};

/// A model opened for running: its weights, its architecture and the plan a recipe gives it.
#[derive(Debug)]
pub struct Runnable {
    /// The model.
    pub model: Model,
    /// How it runs.
    pub arch: Architecture,
    /// The recipe resolved against it.
    pub plan: Plan,
}

/// Opens `path` for running under `recipe`: open, resolve the recipe, detect the architecture (in that order, so
/// the first problem found is the one reported).
pub fn open_runnable(path: &Path, recipe: &Recipe) -> Result<Runnable> {
    let model = Model::open(path)?;
    let plan = recipe.resolve(&model)?;
    let arch = Architecture::detect(&model)?;
    Ok(Runnable { model, arch, plan })
}

/// A model as the window opens it: runnable or not (weight-only mode), with the data files its folder brings.
#[derive(Debug)]
pub struct Opened {
    /// The model.
    pub model: Model,
    /// How it runs, or why it cannot (weight-only mode).
    pub runtime: Result<Architecture>,
    /// The evaluation data its folder brings, if any.
    pub default_data: Option<PathBuf>,
    /// The calibration data its folder brings (else its evaluation data), if any.
    pub default_calib_data: Option<PathBuf>,
}

/// Opens `path` (headers only) and finds how it runs and which data files lie beside it.
pub fn open(path: &Path, progress: &Progress) -> Result<Opened> {
    progress.start_stage(format!("opening {}", path.display()), 1);
    let model = Model::open(path)?;
    let runtime = Architecture::detect(&model);
    let default_data = default_eval_data(&model);
    let default_calib_data = EvalData::default_calibration_path(&model_folder(&model)).or_else(|| default_data.clone());
    progress.check()?;
    progress.advance(1);
    Ok(Opened { model, runtime, default_data, default_calib_data })
}

/// The evaluation data file the model's folder brings, if any.
pub fn default_eval_data(model: &Model) -> Option<PathBuf> {
    EvalData::default_path(&model_folder(model))
}

/// Reads an evaluation or calibration data file (text is tokenised with the tokenizer of the model's folder).
pub fn load_data(model: &Model, path: &Path, progress: &Progress) -> Result<EvalData> {
    progress.start_stage(format!("reading {}", path.display()), 0);
    EvalData::load(path, &model_folder(model))
}

/// Statistics of every tensor as stored (`inspect`).
pub fn inspect(model: &Model, progress: &Progress) -> Result<ModelReport> {
    analyze_model(model, &Plan::all(model, Precision::Fp32), progress)
}

/// Analyses these tensors, each under its precision, in the given order; `on_tensor` sees each result as it comes.
pub fn analyse_tensors(
    model: &Model,
    requests: &[(TensorId, Precision)],
    progress: &Progress,
    on_tensor: &mut dyn FnMut(TensorId, Precision, TensorAnalysis),
) -> Result<()> {
    let elements: u64 = requests.iter().map(|(t, _)| 2 * model.tensor(*t).numel() as u64).sum();
    progress.start_stage(format!("analysing {} tensor(s)", requests.len()), elements);
    for &(tensor, precision) in requests {
        progress.check()?;
        on_tensor(tensor, precision, analyze(&TensorData::of(model, tensor)?, precision, progress)?);
    }
    Ok(())
}

/// The value and error histograms of one tensor under the precision of `analysis` (its analysis): one read of
/// the tensor. The inspector asks for one layer's; `--histograms` for every tensor's ([`add_histograms`]).
pub fn tensor_histograms(
    model: &Model,
    tensor: TensorId,
    analysis: &TensorAnalysis,
    progress: &Progress,
) -> Result<TensorHistograms> {
    let data = TensorData::of(model, tensor)?;
    let mut histograms = pass::histograms(&data, analysis, progress)?;
    if let crate::quant::Precision::Int4(scheme) = analysis.precision {
        let quantized = crate::quant::quantize_tensor_int4(&data, scheme, progress)?;
        let groups_per_row = data.cols / scheme.group_size;
        histograms.group_scales = pass::GroupScales::of(&quantized.params, groups_per_row, scheme.group_size);
    }
    Ok(histograms)
}

/// Adds the histograms ([`tensor_histograms`]) of every analysed tensor of a report on `model`.
pub fn add_histograms(model: &Model, report: &mut ModelReport, progress: &Progress) -> Result<()> {
    let analysed = || report.tensors.iter().filter(|t| t.analysis.is_some());
    let elements: u64 = analysed().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    progress.start_stage("histograms", elements);
    for (index, tensor) in report.tensors.iter_mut().enumerate() {
        progress.check()?;
        if let Some(analysis) = &tensor.analysis {
            tensor.histograms = Some(tensor_histograms(model, TensorId(index), analysis, progress)?);
        }
    }
    Ok(())
}

/// What `quantize` found: the per-tensor error under the plan, whether the target's runtimes load it, and the
/// export when one was asked for.
#[derive(Debug)]
pub struct Quantized {
    /// Statistics and error of every tensor under the plan.
    pub report: ModelReport,
    /// What the export target and its runtimes make of the plan.
    pub compatibility: Compatibility,
    /// The export, when a destination was given: the summary, or why it was refused (the report still stands).
    pub export: Option<Result<ExportSummary>>,
}

/// Runs GPTQ on the INT4 and INT8 layers of `plan` with the calibration data `gptq.data` and keeps the weights in
/// the plan, where simulation, `bench` and the export use them.
pub fn gptq(
    model: &Model,
    plan: &mut Plan,
    gptq: &crate::quant::plan::GptqRecipe,
    progress: &Progress,
) -> Result<Arc<GptqWeights>> {
    let arch = Architecture::detect(model)?;
    progress.start_stage(format!("reading {}", gptq.data.display()), 0);
    let data = EvalData::load(&gptq.data, &model_folder(model))?;
    let weights = crate::calib::gptq::gptq(model, &arch, &data, &gptq.data, plan, gptq.options, progress)
        .map_err(|e| e.in_data_file(&gptq.data))?;
    let weights = Arc::new(weights);
    plan.gptq = Some(weights.clone());
    Ok(weights)
}

/// Analyses every tensor under `plan`, checks it against the export target, and exports into `dest` when given.
pub fn quantize(
    model: &Model,
    plan: &Plan,
    dest: Option<&Path>,
    options: &ExportOptions,
    progress: &Progress,
) -> Result<Quantized> {
    let report = analyze_model(model, plan, progress)?;
    let compatibility = options.target.check(model, plan);
    let export = dest.map(|dest| crate::export::export(model, plan, dest, options, progress));
    if let Some(Err(Error::Cancelled)) = export {
        return Err(Error::Cancelled);
    }
    Ok(Quantized { report, compatibility, export })
}

/// Runs the model in FP32 and under `plan` on the data file `data` and compares them; with `save_outputs`, also
/// writes every sample's FP32 and planned outputs (and the tokens) to that safetensors file.
pub fn evaluate(
    model: &Model,
    arch: &Architecture,
    plan: &Plan,
    data: &Path,
    save_outputs: Option<&Path>,
    progress: &Progress,
) -> Result<EvalReport> {
    let data_path = data;
    let name_data = |e: Error| e.in_data_file(data_path);
    let data = load_data(model, data, progress)?;
    let Some(path) = save_outputs else {
        return crate::runtime::evaluate(model, arch, &data, plan, progress).map_err(name_data);
    };
    let (report, tensors) =
        crate::runtime::eval::evaluate_with_outputs(model, arch, &data, plan, progress).map_err(name_data)?;
    progress.start_stage(format!("writing {}", path.display()), tensors.len() as u64);
    let planned =
        tensors.iter().map(|t| PlannedTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() });
    let metadata = [("format", "pt"), ("quantstudio.family", arch.family())]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut writer = TensorFileWriter::create(path, planned.collect(), &metadata)?;
    for t in &tensors {
        progress.check()?;
        writer.write_tensor(&t.name, &t.bytes)?;
        progress.advance(1);
    }
    writer.finish()?;
    Ok(report)
}

/// What a perplexity run measures on: the text file, tokens per chunk and the most chunks to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityInput {
    /// The text file, tokenised whole with the model's tokenizer.json.
    pub text: PathBuf,
    /// Tokens per chunk (llama-perplexity's `-c`).
    pub ctx_tokens: usize,
    /// The most chunks to run (llama-perplexity's `--chunks`; `None`: every whole chunk of the text).
    pub max_chunks: Option<usize>,
}

/// Perplexity of FP32 and `plan` on a text, and the KL divergence between them, as llama-perplexity measures them.
pub fn perplexity(
    model: &Model,
    arch: &Architecture,
    plan: &Plan,
    input: &PerplexityInput,
    progress: &Progress,
) -> Result<PerplexityReport> {
    progress.start_stage(format!("tokenising {}", input.text.display()), 0);
    let doc = Document::load(&input.text, &model_folder(model))?;
    progress.check()?;
    crate::runtime::perplexity::perplexity(model, arch, plan, &doc, input.ctx_tokens, input.max_chunks, progress)
        .map_err(|e| e.in_data_file(&input.text))
}

/// The display bins and the clip of every standard observer of each layer a calibration observed (what the
/// window shows; switching observers there only looks clips up).
pub fn calibration_view(
    model: &Model,
    run: &CalibrationRun,
    progress: &Progress,
) -> Result<BTreeMap<LayerId, LayerActivations>> {
    progress.start_stage("choosing clips", 0);
    let layers = crate::calib::view::layer_activations(model, &run.calibration);
    progress.check()?;
    Ok(layers)
}

/// The recipe of `plan` with its INT8 layers made W8A8 wherever calibration observed their input, at the clip
/// `observer` picks (the clips of the plan set by hand are replaced).
pub fn w8a8_recipe(model: &Model, plan: &Plan, run: &CalibrationRun, observer: Observer) -> Recipe {
    let calibration = &run.calibration;
    let mut plan = plan.clone();
    for (index, precision) in plan.layers.iter_mut().enumerate() {
        if let Precision::Int8(scheme) = precision
            && calibration.layers.contains_key(&model.layers[index].name)
        {
            *scheme = scheme.with_int8_inputs();
        }
    }
    calibration.apply(model, &mut plan, observer, &Default::default());
    plan.to_recipe(model)
}

/// What to benchmark.
pub struct BenchmarkInput<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its architecture.
    pub arch: &'a Architecture,
    /// The plan to time beside FP32 (`None`: FP32 only).
    pub plan: Option<&'a Plan>,
    /// The data file of the accuracy figures (`None`: timing only).
    pub data: Option<&'a Path>,
    /// The timed runs.
    pub workload: Workload,
}

/// Times FP32 and the plan as deployed (and measures the plan's accuracy when data is given); `on_configuration`
/// sees each configuration once measured, FP32 first. The plan's size on disk is the default export target's.
pub fn benchmark(
    input: &BenchmarkInput,
    progress: &Progress,
    on_configuration: &mut dyn FnMut(Configuration),
) -> Result<()> {
    let BenchmarkInput { model, arch, plan, data, workload } = *input;
    let data = data.map(|path| load_data(model, path, progress)).transpose()?;
    let request = benchmark::Request {
        model,
        arch,
        plan,
        time_fp32: true,
        data: data.as_ref(),
        workload,
        plan_disk_bytes: plan.map_or(0, |plan| crate::export::planned_model_bytes(model, plan)),
    };
    benchmark::run(&request, progress, on_configuration).map_err(|e| match input.data {
        Some(path) => e.in_data_file(path),
        None => e,
    })
}

/// The analysis pass's speed against the read bandwidth of the same files (the best of `repeat` runs).
pub fn throughput(model: &Model, plan: &Plan, repeat: usize, progress: &Progress) -> Result<Throughput> {
    crate::bench::measure_throughput(model, plan, repeat.max(1), progress)
}

/// Reads a recipe file and resolves it against `model`; when it asks for GPTQ, runs it on its calibration data.
pub fn load_recipe(model: &Model, path: &Path, progress: &Progress) -> Result<Plan> {
    progress.start_stage("loading recipe", 1);
    let recipe = Recipe::load(path)?;
    let mut plan = recipe.resolve(model).map_err(|e| e.in_recipe_file(path))?;
    progress.advance(1);
    if let Some(settings) = &recipe.gptq {
        gptq(model, &mut plan, settings, progress)?;
    }
    Ok(plan)
}

/// Writes `recipe` to `path`.
pub fn save_recipe(recipe: &Recipe, path: &Path, progress: &Progress) -> Result<()> {
    progress.start_stage("saving recipe", 1);
    recipe.save(path)?;
    progress.advance(1);
    Ok(())
}
