//! One short function per subcommand: parse what the arguments mean, call the use case in [`crate::tasks`] under
//! the progress bar, print the result.

use std::path::Path;

use super::args::{ModeArg, OutputArgs, PlanArgs};
use super::print::{self, BenchRun, SensitivityRun, with_progress_bar};
use crate::calib::{Observer, SensitivityMode};
use crate::error::Result;
use crate::export::ExportOptions;
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::Recipe;
use crate::runtime::Architecture;
use crate::runtime::latency::Workload;
use crate::tasks::{self, BenchmarkInput, Runnable};

/// `inspect`.
pub fn inspect(model: &Path, output: &OutputArgs) -> Result<()> {
    let model = Model::open(model)?;
    let report = with_progress_bar(|progress| {
        let mut report = tasks::inspect(&model, progress)?;
        if output.wants_histograms() {
            tasks::add_histograms(&model, &mut report, progress)?;
        }
        Ok(report)
    })?;
    print::inspect(&model, &report, output);
    Ok(())
}

/// `quantize`: a refused export still prints the report (with --json, the layers and fixes), then fails.
pub fn quantize(
    model: &Path,
    plan: &PlanArgs,
    dest: Option<&Path>,
    options: &ExportOptions,
    format: &OutputArgs,
) -> Result<()> {
    let recipe = plan.recipe()?;
    let model = Model::open(model)?;
    let mut plan = recipe.resolve(&model)?;
    with_gptq(&model, &recipe, &mut plan)?;
    let mut quantized = with_progress_bar(|progress| {
        let mut quantized = tasks::quantize(&model, &plan, dest, options, progress)?;
        if format.wants_histograms() {
            tasks::add_histograms(&model, &mut quantized.report, progress)?;
        }
        Ok(quantized)
    })?;
    let (export, error) = match quantized.export.take() {
        Some(Ok(summary)) => (Some(summary), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    print::quantized(&model, &recipe, &plan, &quantized, export.as_ref(), format);
    error.map_or(Ok(()), Err)
}

/// `recipe`.
pub fn recipe(model: &Path) -> Result<()> {
    print::recipe(&Recipe::starting(&Model::open(model)?));
    Ok(())
}

/// `eval`.
pub fn eval(model: &Path, plan: &PlanArgs, data: &Path, save_outputs: Option<&Path>, json: bool) -> Result<()> {
    let recipe = plan.recipe()?;
    let Runnable { model, arch, mut plan } = tasks::open_runnable(model, &recipe)?;
    with_gptq(&model, &recipe, &mut plan)?;
    let report = with_progress_bar(|progress| tasks::evaluate(&model, &arch, &plan, data, save_outputs, progress))?;
    print::evaluation(&model, &recipe, &plan, &report, json)
}

/// `eval --perplexity`.
pub fn perplexity(model: &Path, plan: &PlanArgs, input: &tasks::PerplexityInput, json: bool) -> Result<()> {
    let recipe = plan.recipe()?;
    let Runnable { model, arch, mut plan } = tasks::open_runnable(model, &recipe)?;
    with_gptq(&model, &recipe, &mut plan)?;
    let report = with_progress_bar(|progress| tasks::perplexity(&model, &arch, &plan, input, progress))?;
    print::perplexity(&model, &recipe, &plan, &input.text, &report, json)
}

/// What `calibrate` is asked to do.
pub struct CalibrateArgs<'a> {
    /// The observer of the printed clips and of the recipe.
    pub observer: Observer,
    /// Where to write the W8A8 recipe.
    pub write_recipe: Option<&'a Path>,
    /// Neither read nor write the cache.
    pub no_cache: bool,
    /// One JSON document.
    pub json: bool,
}

/// `calibrate`.
pub fn calibrate(model: &Path, data: &Path, plan: &PlanArgs, args: &CalibrateArgs) -> Result<()> {
    let recipe = plan.recipe_or_int8()?;
    let Runnable { model, arch, plan } = tasks::open_runnable(model, &recipe)?;
    let cache = (!args.no_cache).then(crate::calib::default_cache_dir);
    let run = with_progress_bar(|progress| tasks::calibrate(&model, &arch, data, cache.as_deref(), progress))?;
    if let Some(path) = args.write_recipe {
        tasks::w8a8_recipe(&model, &plan, &run, args.observer).save(path)?;
    }
    print::calibration(&model, data, args.observer, &run, args.write_recipe, args.json);
    Ok(())
}

/// `sensitivity`.
pub fn sensitivity(model: &Path, data: &Path, plan: &PlanArgs, mode: ModeArg, json: bool) -> Result<()> {
    let recipe = plan.recipe_or_int8()?;
    let Runnable { model, arch, plan } = tasks::open_runnable(model, &recipe)?;
    let mode = match mode {
        ModeArg::OneAtATime => SensitivityMode::OneAtATime,
        ModeArg::AllButOne => SensitivityMode::AllButOne,
    };
    let data_path = data;
    let data = tasks::load_data(&model, data, &Progress::new())?;
    let report =
        with_progress_bar(|progress| tasks::sensitivity(&model, &arch, &data, &plan, mode, progress, &mut |_| {}))
            .map_err(|e| e.in_data_file(data_path))?;
    let run = SensitivityRun { model: &model, family: arch.family(), samples: data.len(), mode };
    print::sensitivity(&run, &report, json)
}

/// `bench`: the plan is optional; the accuracy data defaults to the file the model folder brings.
pub fn bench(
    model: &Path,
    plan: &PlanArgs,
    data: Option<&Path>,
    no_accuracy: bool,
    workload: Workload,
    json: bool,
) -> Result<()> {
    let recipe = plan.given().then(|| plan.recipe()).transpose()?;
    let model = Model::open(model)?;
    let mut planned = recipe.as_ref().map(|r| r.resolve(&model)).transpose()?;
    if let (Some(recipe), Some(plan)) = (&recipe, &mut planned) {
        with_gptq(&model, recipe, plan)?;
    }
    let arch = Architecture::detect(&model)?;
    let data =
        if no_accuracy { None } else { data.map(Path::to_path_buf).or_else(|| tasks::default_eval_data(&model)) };
    let input = BenchmarkInput { model: &model, arch: &arch, plan: planned.as_ref(), data: data.as_deref(), workload };
    let mut configurations = Vec::new();
    with_progress_bar(|progress| tasks::benchmark(&input, progress, &mut |c| configurations.push(c)))?;
    let run =
        BenchRun { model: &model, family: arch.family(), workload, data: data.as_deref(), recipe: recipe.as_ref() };
    print::bench(&run, &configurations, json);
    Ok(())
}

/// `throughput`.
pub fn throughput(model: &Path, plan: &PlanArgs, repeat: usize, json: bool) -> Result<()> {
    let recipe = plan.recipe()?;
    let model = Model::open(model)?;
    let mut plan = recipe.resolve(&model)?;
    with_gptq(&model, &recipe, &mut plan)?;
    let result = tasks::throughput(&model, &plan, repeat, &Progress::new())?;
    print::throughput(&result, json);
    Ok(())
}

/// Runs GPTQ on the INT4 and INT8 layers of `plan` when the recipe asks for it, and prints what it bought per
/// layer (on stderr, so that a --json document stays alone on stdout).
fn with_gptq(model: &Model, recipe: &Recipe, plan: &mut crate::quant::Plan) -> Result<()> {
    let Some(gptq) = &recipe.gptq else { return Ok(()) };
    let run = with_progress_bar(|progress| tasks::gptq(model, plan, gptq, progress))?;
    print::gptq(model, &run);
    Ok(())
}
