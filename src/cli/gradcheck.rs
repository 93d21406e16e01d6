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
    let worst_fwd = results
        .iter()
        .map(|r| r.worst_forward_rel_err)
        .fold(0.0, f64::max);
    let worst_fwd_rev = results
        .iter()
        .map(|r| r.worst_forward_reverse_rel_err)
        .fold(0.0, f64::max);
    // forward and reverse mode compute the same numbers by different routes: they must
    // agree far more tightly than either agrees with finite differences
    let passed = worst <= args.tolerance && worst_fwd <= args.tolerance && worst_fwd_rev <= 1e-10;
    if args.json {
        let v = serde_json::json!({
            "ops": results,
            "ops_checked": results.len(),
            "worst_rel_err": worst,
            "worst_forward_rel_err": worst_fwd,
            "worst_forward_reverse_rel_err": worst_fwd_rev,
            "tolerance": args.tolerance,
            "passed": passed,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "reverse mode (rev) and forward mode (fwd) against central differences in f64, and against each other"
        );
        println!(
            "{:<14} {:>5} {:>10} {:>10} {:>10} {:>10}  worst reverse-mode case",
            "op", "cases", "rev err", "rev abs", "fwd err", "fwd-rev"
        );
        for r in &results {
            let where_ = match &r.report.worst_index {
                Some(i) => format!("input {} at {:?}", r.report.worst_input, i),
                None => "random direction".to_string(),
            };
            println!(
                "{:<14} {:>5} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}  shapes {:?}, {}",
                r.op,
                r.cases,
                r.report.max_rel_err,
                r.report.max_abs_err,
                r.worst_forward_rel_err,
                r.worst_forward_reverse_rel_err,
                r.worst_shapes,
                where_
            );
        }
        println!(
            "{} ops checked, worst relative error {:.2e}",
            results.len(),
            worst
        );
        println!(
            "forward mode: worst relative error {worst_fwd:.2e} against central differences, {worst_fwd_rev:.2e} against reverse mode"
        );
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
