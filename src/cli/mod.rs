//! The headless commands (`inspect`, `quantize`, `recipe`, `eval`, `calibrate`, `sensitivity`, `bench`,
//! `throughput`) over the use cases the window runs too ([`crate::tasks`]).
//!
//! Every command prints one JSON document on stdout with `--json`, a table otherwise, and a progress bar on
//! stderr when stderr is a terminal. Errors are printed once, on one line, and give exit code 2.
//! [`args`] holds the clap types, [`commands`] one function per subcommand, [`print`](mod@print) the output formats.

pub mod args;
pub mod commands;
pub mod print;

pub use args::{Cli, Command, ModeArg, OutputArgs, PlanArgs, PrecisionArg, TargetArg};

use crate::error::Result;
use crate::export::ExportOptions;
use crate::runtime::latency::Workload;

/// Runs a headless command; returns the process exit code.
pub fn run(command: Command) -> i32 {
    // Errors about the recipe (layers the model lacks, a bad glob) are raised where only its contents are known.
    let recipe = command.recipe_file().map(std::path::Path::to_path_buf);
    match dispatch(command).map_err(|e| if let Some(recipe) = &recipe { e.in_recipe_file(recipe) } else { e }) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            2
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Inspect { model, output } => commands::inspect(&model, &output),
        Command::Quantize { model, plan, output, target, force, max_shard_bytes, overwrite, format } => {
            let options = ExportOptions { target: target.into(), force, max_shard_bytes, overwrite };
            commands::quantize(&model, &plan, output.as_deref(), &options, &format)
        }
        Command::Recipe { model } => commands::recipe(&model),
        Command::Eval { model, plan, data, perplexity, ctx, chunks, json, save_outputs } => match (data, perplexity) {
            (_, Some(text)) => {
                let input = crate::tasks::PerplexityInput { text, ctx_tokens: ctx, max_chunks: chunks };
                commands::perplexity(&model, &plan, &input, json)
            }
            (Some(data), None) => commands::eval(&model, &plan, &data, save_outputs.as_deref(), json),
            (None, None) => Err(crate::error::Error::BadArguments { reason: "give --data or --perplexity".into() }),
        },
        Command::Calibrate { model, data, observer, plan, write_recipe, no_cache, json } => {
            let args = commands::CalibrateArgs { observer, write_recipe: write_recipe.as_deref(), no_cache, json };
            commands::calibrate(&model, &data, &plan, &args)
        }
        Command::Sensitivity { model, data, plan, mode, json } => {
            commands::sensitivity(&model, &data, &plan, mode, json)
        }
        Command::Bench { model, plan, data, no_accuracy, seq, past, batch, repeat, json } => {
            let workload = Workload { seq_len: seq, past_len: past, batch, repeat };
            commands::bench(&model, &plan, data.as_deref(), no_accuracy, workload, json)
        }
        Command::Throughput { model, plan, repeat, json } => commands::throughput(&model, &plan, repeat, json),
    }
}
