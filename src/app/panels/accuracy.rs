//! The accuracy panel: the Evaluate action and FP32 against every plan evaluated on the open model, or (its
//! Benchmark tab, [`super::benchmark`]) the timings of FP32 and the plans as deployed.

use eframe::egui;
use egui::{Color32, RichText};
use egui_extras::{Column, TableBuilder};

use super::{PathTarget, format, sqnr_color};
use crate::app::StudioApp;
use crate::app::dialogs::DialogRequest;
use crate::app::state::{Command, Evaluation};
use crate::runtime::perplexity::{Estimate, MIN_CTX_TOKENS, format_perplexity};
use crate::tasks::PerplexityInput;
use crate::worker::JobKind;

/// The bottom panel above the status bar.
pub fn accuracy(ui: &mut egui::Ui, app: &mut StudioApp) {
    let (default_size, max_size) = super::bottom_panel_sizes(ui.ctx());
    let panel = egui::Panel::bottom("accuracy").resizable(true).default_size(default_size).max_size(max_size);
    panel.min_size(60.0).show(ui, |ui| {
        egui::ScrollArea::vertical()
            .id_salt("accuracy-scroll")
            .auto_shrink([false, false])
            .show(ui, |ui| accuracy_ui(ui, app));
    });
}

fn accuracy_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    // A newly opened model brings its own data file.
    let model_path = app.studio.model.as_ref().map(|m| m.path.clone());
    if app.inputs.eval_data_model != model_path {
        app.inputs.eval_data_model = model_path;
        app.inputs.eval_data =
            app.studio.default_eval_data.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    }
    let benchmark_tab = app.studio.prefs.show_benchmark_tab;
    ui.horizontal(|ui| {
        let tab = &mut app.studio.prefs.show_benchmark_tab;
        ui.selectable_value(tab, false, RichText::new("Accuracy").heading())
            .on_hover_text("FP32 against every plan evaluated, on the data");
        ui.selectable_value(tab, true, RichText::new("Benchmark").heading())
            .on_hover_text("Latency, throughput, memory and size of FP32 and every plan benchmarked");
        let runnable = match &app.studio.runtime {
            Some(Ok(arch)) => {
                ui.label(RichText::new(format!("{} model", arch.family())).weak());
                true
            }
            Some(Err(why)) => {
                ui.label(RichText::new(format!("Running unavailable: {why}")).color(Color32::from_rgb(220, 170, 80)));
                false
            }
            None => false,
        };
        if !runnable {
            return;
        }
        ui.separator();
        let label = ui.label(PathTarget::EvalData.label());
        let field = ui
            .add(egui::TextEdit::singleline(&mut app.inputs.eval_data).desired_width(260.0).hint_text("data file"))
            .on_hover_text(
                "A .safetensors file (`inputs` [+ `labels`], or `input_ids` [+ `attention_mask`]) or a text file, \
                 one sample per line, tokenised with the model's tokenizer.json",
            )
            .labelled_by(label.id);
        if app.inputs.take_focus(PathTarget::EvalData) {
            field.request_focus();
        }
        if ui.button("Browse...").clicked() {
            app.browse(DialogRequest::DataFile, PathTarget::EvalData);
        }
        let data = app.inputs.eval_data.trim().to_owned();
        if benchmark_tab {
            super::benchmark::actions(ui, app, &data);
            return;
        }
        let running = app.studio.jobs().iter().any(|(kind, _, _)| *kind == JobKind::Evaluate);
        let evaluate = ui
            .add_enabled(!running && !data.is_empty(), egui::Button::new("Evaluate plan"))
            .on_hover_text("Run the model in FP32 and under the current plan on the data, and compare");
        if evaluate.clicked() {
            app.send(Command::Evaluate(data.into()));
        }
        if !app.studio.results.evaluations.is_empty()
            && ui.button("Clear").on_hover_text("Forget these evaluations").clicked()
        {
            app.send(Command::ClearEvaluations);
        }
    });
    if !matches!(app.studio.runtime, Some(Ok(_))) {
        return;
    }
    if benchmark_tab {
        super::benchmark::results(ui, app);
        return;
    }
    if matches!(app.studio.runtime, Some(Ok(ref arch)) if matches!(**arch, crate::runtime::Architecture::Llama(_))) {
        perplexity_ui(ui, app);
    }
    if app.studio.results.evaluations.is_empty() {
        if matches!(app.studio.runtime, Some(Ok(_))) {
            ui.label("Evaluate the plan to compare it with FP32; every plan evaluated stays here for comparison.");
        }
        return;
    }
    results_table(ui, app);
}

/// Which figures the model's family reports, as (header, hover text, value of a report).
type Figure = (&'static str, &'static str, fn(&Evaluation) -> Option<String>);

fn figures(family: &str) -> Vec<Figure> {
    let mut figures: Vec<Figure> = Vec::new();
    match family {
        "graph" => {
            figures.push(("Accuracy", "Share of labelled samples classified correctly", |e| {
                e.report.accuracy.map(|v| format!("{:.2}%", v * 100.0))
            }));
            figures.push(("Top-1 agreement", "Share of samples where the plan's class equals FP32's", |e| {
                e.report.top1_agreement.map(|v| format!("{:.2}%", v * 100.0))
            }));
        }
        "bert" => {
            figures.push(("Mean cosine", "Mean cosine similarity of sentence embeddings, FP32 vs plan", |e| {
                e.report.mean_cosine.map(|v| format!("{v:.5}"))
            }));
            figures.push(("Min cosine", "Lowest cosine similarity over the samples", |e| {
                e.report.min_cosine.map(|v| format!("{v:.5}"))
            }));
        }
        _ => {
            figures.push((
                "Top-1 agreement",
                "Share of token positions where the next-token argmax equals FP32's",
                |e| e.report.top1_agreement.map(|v| format!("{:.2}%", v * 100.0)),
            ));
            figures.push(("Mean KL", "Mean KL(P_fp32 || P_plan) of next-token distributions, nats", |e| {
                e.report.mean_kl.map(|v| format!("{v:.5}"))
            }));
        }
    }
    figures
}

fn results_table(ui: &mut egui::Ui, app: &mut StudioApp) {
    let family = app.studio.results.evaluations[0].report.family;
    let figures = figures(family);
    let model_size = app.studio.model.as_ref().map_or(0, |m| m.size_bytes());
    let fp32_accuracy = app.studio.results.evaluations.iter().find_map(|e| e.report.fp32_accuracy);
    let mut restore = None;
    // The panel scrolls (it is short on a small screen); the table does not scroll on its own.
    let mut table = TableBuilder::new(ui)
        .id_salt("evaluations")
        .striped(true)
        .vscroll(false)
        .auto_shrink([false, true])
        .column(Column::exact(34.0))
        .column(Column::initial(230.0).at_least(120.0).clip(true))
        .column(Column::exact(80.0));
    for _ in &figures {
        table = table.column(Column::exact(120.0));
    }
    table
        .column(Column::exact(110.0))
        .column(Column::exact(80.0))
        .column(Column::remainder())
        .header(20.0, |mut header| {
            header.col(|ui| {
                ui.strong("#");
            });
            header.col(|ui| {
                ui.strong("Plan");
            });
            header.col(|ui| {
                ui.strong("Size");
            });
            for (name, hover, _) in &figures {
                header.col(|ui| {
                    ui.strong(*name).on_hover_text(*hover);
                });
            }
            header.col(|ui| {
                ui.strong("Output SQNR")
                    .on_hover_text("10·log10(Σy² / Σ(y - ŷ)²) over the compared outputs (logits or hidden states)");
            });
            header.col(|ui| {
                ui.strong("Samples");
            });
            header.col(|_| {});
        })
        .body(|mut body| {
            body.row(20.0, |mut row| {
                row.col(|ui| {
                    ui.label("-");
                });
                row.col(|ui| {
                    ui.label(RichText::new("FP32 (reference)").strong());
                });
                row.col(|ui| {
                    ui.label(format::bytes(model_size));
                });
                for (name, _, _) in &figures {
                    row.col(|ui| {
                        ui.label(match *name {
                            "Accuracy" => fp32_accuracy.map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
                            "Mean KL" => "0".into(),
                            "Top-1 agreement" => "100.00%".into(),
                            _ => "1.00000".into(),
                        });
                    });
                }
                row.col(|ui| {
                    ui.label("reference");
                });
                row.col(|_| {});
                row.col(|_| {});
            });
            for (index, evaluation) in app.studio.results.evaluations.iter().enumerate().rev() {
                body.row(20.0, |mut row| {
                    row.col(|ui| {
                        ui.label(format!("#{}", evaluation.number));
                    });
                    row.col(|ui| {
                        ui.label(&evaluation.summary).on_hover_text(format!("data: {}", evaluation.data.display()));
                    });
                    row.col(|ui| {
                        ui.label(format::bytes(evaluation.planned_bytes));
                    });
                    for (_, _, value) in &figures {
                        row.col(|ui| {
                            ui.label(value(evaluation).unwrap_or_else(|| "-".into()));
                        });
                    }
                    row.col(|ui| {
                        let sqnr = evaluation.report.output_sqnr_db;
                        let text = sqnr.map_or("identical".into(), |db| format!("{db:.1} dB"));
                        ui.label(RichText::new(text).color(sqnr_color(sqnr)));
                    });
                    row.col(|ui| {
                        ui.label(evaluation.report.samples.to_string());
                    });
                    row.col(|ui| {
                        if ui.small_button("Restore plan").on_hover_text("Make this plan the current one").clicked() {
                            restore = Some(index);
                        }
                    });
                });
            }
        });
    if let Some(index) = restore {
        app.send(Command::RestorePlan(index));
    }
}

/// The perplexity run of a Llama model: the text, ctx and chunks, the Run button, and FP32 beside every plan run.
fn perplexity_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    ui.horizontal(|ui| {
        let label = ui.label(PathTarget::PerplexityText.label());
        let field = ui
            .add(
                egui::TextEdit::singleline(&mut app.inputs.perplexity_text).desired_width(260.0).hint_text("text file"),
            )
            .on_hover_text("A text file, tokenised whole with the model's tokenizer.json (as llama-perplexity -f)")
            .labelled_by(label.id);
        if app.inputs.take_focus(PathTarget::PerplexityText) {
            field.request_focus();
        }
        if ui.button("Browse...").on_hover_text("Pick the perplexity text").clicked() {
            app.browse(DialogRequest::DataFile, PathTarget::PerplexityText);
        }
        ui.label("ctx");
        ui.add(egui::DragValue::new(&mut app.inputs.perplexity_ctx).range(MIN_CTX_TOKENS..=1 << 16))
            .on_hover_text("Tokens per chunk (llama-perplexity -c); the second half of each chunk is scored");
        ui.label("chunks");
        ui.add(egui::DragValue::new(&mut app.inputs.perplexity_chunks).range(0..=1 << 20))
            .on_hover_text("The most chunks to run (llama-perplexity --chunks); 0: every whole chunk of the text");
        let text = app.inputs.perplexity_text.trim().to_owned();
        let running = app.studio.jobs().iter().any(|(kind, _, _)| *kind == JobKind::Perplexity);
        let run = ui
            .add_enabled(!running && !text.is_empty(), egui::Button::new("Run perplexity"))
            .on_hover_text("Perplexity of FP32 and the current plan on the text, and the KL between them");
        if run.clicked() {
            let chunks = app.inputs.perplexity_chunks;
            app.send(Command::Perplexity(PerplexityInput {
                text: text.into(),
                ctx_tokens: app.inputs.perplexity_ctx,
                max_chunks: (chunks > 0).then_some(chunks),
            }));
        }
    });
    if app.studio.results.perplexities.is_empty() {
        return;
    }
    let estimate = |e: &Estimate| format!("{:.6} ± {:.6}", e.value, e.error);
    let percent = |e: &Estimate| format!("{:.3} ± {:.3}%", e.value * 100.0, e.error * 100.0);
    let mut rows: Vec<[String; 7]> = Vec::new();
    if let Some(last) = app.studio.results.perplexities.last() {
        let r = &last.report;
        let ctx = format!("{} × {} tokens", r.chunks, r.ctx_tokens);
        rows.push([
            "FP32 (reference)".into(),
            format_perplexity(&r.fp32_perplexity),
            "0".into(),
            "0".into(),
            "100%".into(),
            ctx,
            "-".into(),
        ]);
    }
    for run in app.studio.results.perplexities.iter().rev() {
        let r = &run.report;
        rows.push([
            format!("#{} {}", run.number, run.summary),
            format_perplexity(&r.plan_perplexity),
            estimate(&r.kl_mean),
            format!("{:.6}", r.kl_p99),
            percent(&r.same_top),
            format!("{} × {} tokens", r.chunks, r.ctx_tokens),
            format!("FP32 {}", format_perplexity(&r.fp32_perplexity)),
        ]);
    }
    let headers = [
        ("Perplexity run", "FP32 of the latest run, then every plan run, newest first"),
        ("PPL ±", "exp(mean nll) ± its standard error, as llama-perplexity's final estimate"),
        ("KL mean ±", "Mean KL(P_fp32 || P_plan) per scored token, nats"),
        ("KL p99", "99th percentile of the per-token KL, nats"),
        ("Same top", "Share of scored tokens where the plan's top token is FP32's"),
        ("Chunks", "Chunks × tokens per chunk"),
        ("FP32 on these chunks", "FP32 perplexity of the same run"),
    ];
    TableBuilder::new(ui)
        .id_salt("perplexities")
        .striped(true)
        .vscroll(false)
        .auto_shrink([false, true])
        .column(Column::initial(230.0).at_least(120.0).clip(true))
        .columns(Column::exact(150.0), 2)
        .columns(Column::exact(90.0), 1)
        .columns(Column::exact(130.0), 2)
        .column(Column::remainder())
        .header(20.0, |mut header| {
            for (name, hover) in headers {
                header.col(|ui| {
                    ui.strong(name).on_hover_text(hover);
                });
            }
        })
        .body(|mut body| {
            for cells in &rows {
                body.row(20.0, |mut row| {
                    for cell in cells {
                        row.col(|ui| {
                            ui.label(cell);
                        });
                    }
                });
            }
        });
    ui.separator();
}
