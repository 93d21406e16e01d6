//! `chainrule gradcheck`: the built-in suite, one line per op.

use chainrule::autodiff::builtin_suite;
use std::process::ExitCode;

/// Options of `chainrule gradcheck`.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the random shapes and values.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest acceptable relative error; the exit status is 1 above it.
    #[arg(long, default_value_t = 1e-6)]
    tolerance: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let results = builtin_suite(args.seed)?;
    let worst = results
        .iter()
        .map(|r| r.report.max_rel_err)
        .fold(0.0, f64::max);
    let passed = worst <= args.tolerance;
    if args.json {
        let v = serde_json::json!({
            "ops": results,
            "ops_checked": results.len(),
            "worst_rel_err": worst,
            "tolerance": args.tolerance,
            "passed": passed,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<14} {:>5} {:>12} {:>12}  {:<11} worst case",
            "op", "cases", "max rel err", "max abs err", "mode"
        );
        for r in &results {
            let where_ = match &r.report.worst_index {
                Some(i) => format!("input {} at {:?}", r.report.worst_input, i),
                None => "random direction".to_string(),
            };
            println!(
                "{:<14} {:>5} {:>12.2e} {:>12.2e}  {:<11} shapes {:?}, {}",
                r.op,
                r.cases,
                r.report.max_rel_err,
                r.report.max_abs_err,
                format!("{:?}", r.report.mode).to_lowercase(),
                r.worst_shapes,
                where_
            );
        }
        println!(
            "{} ops checked, worst relative error {:.2e}",
            results.len(),
            worst
        );
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
