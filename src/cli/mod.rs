//! Subcommands of the `chainrule` binary.

mod bench;
mod gradcheck;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Automatic differentiation and neural-network training.
#[derive(Parser, Debug)]
#[command(name = "chainrule", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every differentiable op's gradient against finite differences (f64).
    Gradcheck(gradcheck::Args),
    /// Run benchmark workloads and print a table (or JSON lines).
    Bench(bench::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli
        .command
        .unwrap_or(Command::Gradcheck(gradcheck::Args::default()))
    {
        Command::Gradcheck(a) => gradcheck::run(a),
        Command::Bench(a) => bench::run(a),
    }
}
