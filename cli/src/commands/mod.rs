//! Subcommands of the `chainrule` binary.

mod bench;
mod clipping;
mod compare;
mod curvature;
mod explain;
mod gradcheck;
mod serve;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Automatic differentiation and neural-network training.
#[derive(Parser, Debug)]
#[command(
    name = "chainrule",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand, `chainrule` trains (the options of `chainrule train`).
    #[command(flatten)]
    train: train::Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train an MLP or a character model (the default: an MLP on the embedded digits, Adam,
    /// clipping, target 0.97, 60 s).
    Train(Box<train::Args>),
    /// Evaluate a saved checkpoint.
    Eval(train::EvalArgs),
    /// Generate text with a character model's checkpoint.
    Sample(train::SampleArgs),
    /// Check every differentiable op's gradient against finite differences (f64).
    Gradcheck(gradcheck::Args),
    /// Run benchmark workloads and print a table (or JSON lines).
    Bench(bench::Args),
    /// Walk the chain rule through an expression, edge by edge.
    Explain(explain::Args),
    /// Why gradient clipping exists: a recurrent model trained with and without it, and
    /// gradient norms through a deep network under three initialisations.
    Clipping(clipping::Args),
    /// Measure what a gradient costs by reverse mode, forward mode and finite differences.
    Compare(compare::Args),
    /// The largest Hessian eigenvalues of a saved MLP's training loss, and the learning
    /// rate above which gradient descent diverges along them.
    Curvature(curvature::Args),
    /// The learner's page: walk an expression through the chain rule in the browser and
    /// watch runs train (an HTTP server on 127.0.0.1).
    Serve(serve::Args),
}

impl Cli {
    /// Whether the command is `serve`, which runs an HTTP server until it is stopped.
    pub fn runs_a_server(&self) -> bool {
        matches!(self.command, Some(Command::Serve(_)))
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Train(Box::new(cli.train))) {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => train::eval(a),
        Command::Sample(a) => train::sample(a),
        Command::Gradcheck(a) => gradcheck::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Clipping(a) => clipping::run(a),
        Command::Curvature(a) => curvature::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// `--out` when given, else `runs/NAME-<unix time>` (a fresh folder per run of a
/// command that writes several files).
pub(crate) fn out_dir(out: Option<std::path::PathBuf>, name: &str) -> std::path::PathBuf {
    out.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        std::path::PathBuf::from(format!("runs/{name}-{secs}"))
    })
}
