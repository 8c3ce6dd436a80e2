//! What the commands print: tables for people, one JSON document with `--json`, and the progress bar on stderr.
//! The formats are what scripts and the checks in tools/check read: change them only on purpose.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::args::OutputArgs;
use crate::calib::view::STANDARD_OBSERVERS;
use crate::calib::{CalibrationRun, Observer, SensitivityMode, SensitivityReport};
use crate::error::{Error, Result};
use crate::export::ExportSummary;
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::{Plan, Precision, Recipe};
use crate::report::{ModelReport, TensorReport};
use crate::runtime::benchmark::Configuration;
use crate::runtime::latency::Workload;
use crate::tasks::Quantized;
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

/// `inspect`: every tensor's statistics.
pub fn inspect(model: &Model, report: &ModelReport, output: &OutputArgs) {
    if output.json {
        print_json(&report_json(model, report, None, None, output, false));
    } else {
        print_table(model, report, false);
    }
}

/// `quantize`: the per-tensor error, the plan's coverage, the target's verdict and the export.
pub fn quantized(
    model: &Model,
    recipe: &Recipe,
    plan: &Plan,
    quantized: &Quantized,
    export: Option<&ExportSummary>,
    format: &OutputArgs,
) {
    let Quantized { report, compatibility, .. } = quantized;
    if format.json {
        let mut doc = report_json(model, report, Some((recipe, plan)), export, format, true);
        doc["coverage"] = json!(plan.coverage(model));
        doc["compatibility"] = compatibility_json(model, compatibility);
        print_json(&doc);
        return;
    }
    print_table(model, report, true);
    out!("plan: {}", plan.coverage(model));
    out!("{}", compatibility.summary());
    if export.is_none() {
        for problem in compatibility.problems(model) {
            out!("  {problem}");
        }
    }
    for warning in model.warnings.iter().chain(&plan.warnings) {
        out!("warning: {warning}");
    }
    if let Some(export) = export {
        for warning in &export.warnings {
            out!("warning: {warning}");
        }
        out!("exported to {} ({})", export.folder.display(), human_bytes(export.size_bytes));
    }
}

/// `eval`: the comparison of the plan with FP32.
pub fn evaluation(
    model: &Model,
    recipe: &Recipe,
    plan: &Plan,
    report: &crate::runtime::EvalReport,
    json: bool,
) -> Result<()> {
    if json {
        let mut doc = serde_json::to_value(report).map_err(|e| Error::Json { reason: e.to_string() })?;
        doc["model"] = json!(model.path);
        doc["recipe"] = serde_json::to_value(recipe).unwrap_or(Value::Null);
        doc["coverage"] = json!(plan.coverage(model));
        print_json(&doc);
    } else {
        out!("plan: {}", plan.coverage(model));
        print_eval(report);
    }
    Ok(())
}

/// `eval --perplexity`: perplexity of FP32 and the plan, and the KL between them (llama-perplexity's precision).
pub fn perplexity(
    model: &Model,
    recipe: &Recipe,
    plan: &Plan,
    text: &Path,
    r: &crate::runtime::perplexity::PerplexityReport,
    json: bool,
) -> Result<()> {
    if json {
        let mut doc = serde_json::to_value(r).map_err(|e| Error::Json { reason: e.to_string() })?;
        doc["model"] = json!(model.path);
        doc["text"] = json!(text);
        doc["recipe"] = serde_json::to_value(recipe).unwrap_or(Value::Null);
        doc["coverage"] = json!(plan.coverage(model));
        print_json(&doc);
        return Ok(());
    }
    use crate::runtime::perplexity::format_perplexity;
    out!("plan: {}", plan.coverage(model));
    out!(
        "{} chunks of {} tokens ({} text tokens, {} scored, BOS {})",
        r.chunks,
        r.ctx_tokens,
        r.text_tokens,
        r.scored_tokens,
        r.bos_token.map_or("not added".into(), |id| format!("{id}"))
    );
    out!("FP32  Final estimate: PPL = {}", format_perplexity(&r.fp32_perplexity));
    out!("plan  Final estimate: PPL = {}", format_perplexity(&r.plan_perplexity));
    out!("Mean    KLD: {:10.6} ± {:10.6}", r.kl_mean.value, r.kl_mean.error);
    out!("99.0%   KLD: {:10.6}", r.kl_p99);
    out!("Maximum KLD: {:10.6}", r.kl_max);
    out!("Same top p: {:6.3} ± {:5.3} %", 100.0 * r.same_top.value, 100.0 * r.same_top.error);
    if r.plan_nonfinite_positions > 0 {
        out!("BROKEN: the plan's logits are NaN or infinite at {} positions", r.plan_nonfinite_positions);
    }
    Ok(())
}

/// `calibrate`: every calibrated layer in model order with its clip, scale and input error.
pub fn calibration(
    model: &Model,
    data: &Path,
    observer: Observer,
    run: &CalibrationRun,
    recipe_path: Option<&Path>,
    json: bool,
) {
    let calibration = &run.calibration;
    // Model order, so the table reads like the network.
    let ordered: Vec<(&String, &crate::calib::ActivationHistogram)> =
        model.layers.iter().filter_map(|l| calibration.layers.get_key_value(&l.name)).collect();
    if json {
        let layers: Vec<Value> = ordered
            .iter()
            .map(|(name, h)| {
                let clip = observer.clip(h);
                let clips: serde_json::Map<String, Value> =
                    STANDARD_OBSERVERS.iter().map(|o| (o.label(), json!(o.clip(h)))).collect();
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
            "recipe": recipe_path,
            "layers": layers,
        }));
        return;
    }
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
    if let Some(path) = recipe_path {
        out!("W8A8 recipe written to {}", path.display());
    }
}

/// What `sensitivity` ran on, for its headline.
pub struct SensitivityRun<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its family ("graph", "bert", "llama").
    pub family: &'a str,
    /// Samples of the data.
    pub samples: usize,
    /// One at a time or all but one.
    pub mode: SensitivityMode,
}

/// `sensitivity`: the ranking, most sensitive first.
pub fn sensitivity(run: &SensitivityRun, report: &SensitivityReport, json: bool) -> Result<()> {
    if json {
        let mut doc = serde_json::to_value(report).map_err(|e| Error::Json { reason: e.to_string() })?;
        doc["model"] = json!(run.model.path);
        print_json(&doc);
        return Ok(());
    }
    out!("{} model, {} samples, {}; score = {}", run.family, run.samples, run.mode.label(), report.metric);
    if let Some(full) = &report.full_plan {
        out!("full plan: {}", full.headline());
    }
    out!("{:>4}  {:>12}  {:>10}  {:<24}  layer", "rank", "score", "SQNR dB", "precision");
    for (rank, l) in report.layers.iter().enumerate() {
        let sqnr = l.report.output_sqnr_db.map_or("identical".to_owned(), |db| format!("{db:.2}"));
        out!("{:>4}  {:>12.6}  {:>10}  {:<24}  {}", rank + 1, l.score, sqnr, l.precision.to_string(), l.layer);
    }
    Ok(())
}

/// What `bench` ran, for its output.
pub struct BenchRun<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its family.
    pub family: &'a str,
    /// The timed runs.
    pub workload: Workload,
    /// The data of the accuracy figures.
    pub data: Option<&'a Path>,
    /// The recipe timed beside FP32.
    pub recipe: Option<&'a Recipe>,
}

/// `bench`: latency, throughput, sizes and accuracy of each configuration, FP32 first.
pub fn bench(run: &BenchRun, configurations: &[Configuration], json: bool) {
    if json {
        print_json(&json!({
            "model": run.model.path,
            "family": run.family,
            "workload": run.workload,
            "data": run.data,
            "recipe": run.recipe,
            "configurations": configurations,
        }));
        return;
    }
    let fp32_median = configurations.first().map(|c| c.latency.latency_ms_median);
    for c in configurations {
        let latency = &c.latency;
        let layers = if c.name == "FP32" {
            String::new()
        } else {
            format!(", {} integer layer(s), {} compact layer(s)", c.integer_layers, c.compact_layers)
        };
        out!("{} model, {}, {} thread(s){layers}", run.family, c.name, latency.threads);
        let speedup = match fp32_median {
            Some(base) if c.name != "FP32" && latency.latency_ms_median > 0.0 => {
                format!(" ({:.2}x FP32)", base / latency.latency_ms_median)
            }
            _ => String::new(),
        };
        out!(
            "  latency ({}): median {:.3} ms{speedup}, p95 {:.3} ms over {} runs",
            latency.unit,
            latency.latency_ms_median,
            latency.latency_ms_p95,
            run.workload.repeat
        );
        out!("  throughput: {:.1} {}/s", latency.throughput_per_s, latency.throughput_unit);
        out!("  weights in memory: {}, on disk: {}", human_bytes(latency.weights_bytes), human_bytes(c.disk_bytes));
        if let Some(quality) = &c.quality {
            out!("  {quality}");
        }
        if let Some(evaluation) = &c.evaluation {
            out!("  against FP32: {}", evaluation.headline());
        }
    }
}

/// `throughput`: GB/s of the analysis pass against the read bandwidth.
pub fn throughput(result: &crate::bench::Throughput, json: bool) {
    if json {
        print_json(&serde_json::to_value(result).unwrap_or(Value::Null));
    } else {
        out!("{result}");
    }
}

/// `recipe`: the starting recipe as JSON.
pub fn recipe(recipe: &Recipe) {
    out!("{}", recipe.to_json());
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

fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// What GPTQ bought, layer by layer, on stderr: round to nearest's and GPTQ's output error on the calibration
/// inputs, and the run's cost.
pub fn gptq(model: &Model, run: &crate::quant::gptq::GptqWeights) {
    eprintln!(
        "GPTQ on {} ({} input rows, damp {}%{}): {} layers in {:.1} s ({} pass{} over the data)",
        run.data.display(),
        run.rows_seen,
        run.options.damp_percent,
        if run.options.act_order { ", act-order" } else { "" },
        run.layers.len(),
        run.seconds,
        run.passes,
        if run.passes == 1 { "" } else { "es" },
    );
    eprintln!("{:<48} {:>14} {:>14}", "layer", "RTN out err", "GPTQ out err");
    for (id, layer) in &run.layers {
        eprintln!("{:<48} {:>14.3e} {:>14.3e}", model.layer(*id).name, layer.rtn_output_error, layer.gptq_output_error);
    }
    if !run.unreached.is_empty() {
        let names: Vec<&str> = run.unreached.iter().map(|id| model.layer(*id).name.as_str()).collect();
        eprintln!("kept round to nearest (the data never reaches their input): {}", names.join(", "));
    }
    let (rtn, gptq) = run.mean_output_errors();
    eprintln!("{:<48} {:>14.3e} {:>14.3e}", "mean", rtn, gptq);
}

/// Runs `work` on a scoped thread while this thread draws a progress bar on stderr (when it is a terminal).
pub fn with_progress_bar<T: Send>(work: impl FnOnce(&Progress) -> Result<T> + Send) -> Result<T> {
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
                tensor
                    .histograms
                    .as_ref()
                    .map_or(Value::Null, |h| serde_json::to_value(&h.value).unwrap_or(Value::Null)),
            );
            if with_error {
                map.insert(
                    "error_histogram".into(),
                    tensor
                        .histograms
                        .as_ref()
                        .map_or(Value::Null, |h| serde_json::to_value(&h.error).unwrap_or(Value::Null)),
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
