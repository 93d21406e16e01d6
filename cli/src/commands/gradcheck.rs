//! `chainrule gradcheck`: the built-in suite, one line per op.

use crate::planted::{self, PlantedFault};
use chainrule::autodiff::{FORWARD_REVERSE_TOLERANCE, builtin_suite, second_order_suite};
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
    /// Largest acceptable relative error against central differences; the exit status is
    /// 1 above it, and on any NaN or infinity.
    #[arg(long, default_value_t = 1e-6)]
    tolerance: f64,
    /// Add an op with a deliberately broken rule, to see the check reject it. First order:
    /// nan-gradient, wrong-sign, wrong-broadcast-reduction, unreduced-broadcast,
    /// nan-tangent, forward-rule-errors or no-forward-rule (not a fault: reported as
    /// skipped); second order (with --order 2): nan-hvp, wrong-second-derivative or
    /// missing-cross-term. Repeatable.
    #[arg(long)]
    plant: Vec<PlantedFault>,
    /// 1: gradients (reverse and forward mode); 2: Hessian-vector products (forward mode
    /// over the recorded reverse sweep) against central differences of gradients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    order: u8,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.tolerance.is_nan() || args.tolerance < 0.0 {
        anyhow::bail!(
            "--tolerance must be a non-negative number, got {}",
            args.tolerance
        );
    }
    if let Some(f) = args.plant.iter().find(|f| f.order() != args.order) {
        anyhow::bail!(
            "--plant {} breaks a rule of order {}: run it with --order {}",
            f.name(),
            f.order(),
            f.order()
        );
    }
    if args.order == 2 {
        return second_order(&args);
    }
    let suite = builtin_suite(args.seed, args.tolerance, planted::cases(&args.plant, 1));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&suite)?);
    } else {
        println!(
            "reverse mode (rev) and forward mode (fwd) against central differences in f64, and against each other"
        );
        let w = op_column(suite.ops.iter().map(|r| r.op.as_str()));
        println!(
            "{:<w$} {:>5} {:>10} {:>10} {:>10} {:>10}  worst reverse-mode case",
            "op", "cases", "rev err", "rev abs", "fwd err", "fwd-rev"
        );
        for r in &suite.ops {
            let where_ = match &r.report.worst_index {
                Some(i) => format!("input {} at {:?}", r.report.worst_input, i),
                None => "random direction".to_string(),
            };
            println!(
                "{:<w$} {:>5} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}  shapes {:?}, {}{}",
                r.op,
                r.cases,
                r.report.max_rel_err,
                r.report.max_abs_err,
                r.worst_forward_rel_err,
                r.worst_forward_reverse_rel_err,
                r.worst_shapes,
                where_,
                if r.passed { "" } else { "  FAILED" }
            );
            if let Some(skipped) = &r.report.forward_skipped {
                println!("{:<w$} forward mode not checked: {skipped}", "");
            }
        }
        println!(
            "{} ops checked, worst relative error {:.2e}",
            suite.ops_checked, suite.worst_rel_err
        );
        println!(
            "forward mode: worst relative error {:.2e} against central differences, {:.2e} against reverse mode",
            suite.worst_forward_rel_err, suite.worst_forward_reverse_rel_err
        );
    }
    if suite.passed {
        return Ok(ExitCode::SUCCESS);
    }
    for r in suite.ops.iter().filter(|r| !r.passed) {
        let why = r.failure.clone().unwrap_or_else(|| {
            format!(
                "relative error {:.2e} (forward {:.2e}, forward against reverse {:.2e}) exceeds {:.0e} (forward against reverse: {:.0e})",
                r.report.max_rel_err,
                r.worst_forward_rel_err,
                r.worst_forward_reverse_rel_err,
                args.tolerance,
                FORWARD_REVERSE_TOLERANCE
            )
        });
        eprintln!("error: gradcheck failed for {}: {why}", r.op);
    }
    Ok(ExitCode::FAILURE)
}

/// `gradcheck --order 2`: one line per op, H·v against differences of gradients.
fn second_order(args: &Args) -> anyhow::Result<ExitCode> {
    let suite = second_order_suite(args.seed, args.tolerance, planted::cases(&args.plant, 2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&suite)?);
    } else {
        println!(
            "Hessian-vector products (forward mode over the recorded reverse sweep) against central differences of gradients, and against the scalar engine's H·v of the same function where it has the op, in f64"
        );
        let w = op_column(suite.ops.iter().map(|r| r.op.as_str()));
        println!(
            "{:<w$} {:>5} {:>10} {:>10}  worst case",
            "op", "cases", "H·v err", "vs scalar"
        );
        for r in &suite.ops {
            match &r.skipped {
                Some(why) if r.cases == 0 => {
                    println!(
                        "{:<w$} {:>5} {:>10} {:>10}  skipped: {why}",
                        r.op, 0, "-", "-"
                    )
                }
                _ => println!(
                    "{:<w$} {:>5} {:>10.2e} {:>10}  shapes {:?}{}",
                    r.op,
                    r.cases,
                    r.max_rel_err,
                    r.scalar_rel_err
                        .map_or("-".to_string(), |e| format!("{e:.2e}")),
                    r.worst_shapes,
                    if r.passed { "" } else { "  FAILED" }
                ),
            }
        }
        let checked = suite.ops.iter().filter(|r| r.cases > 0).count();
        let skipped = match suite.ops.len() - checked {
            0 => String::new(),
            n => format!("; {n} skipped (custom ops without a composition in built-in ops)"),
        };
        println!(
            "{checked} ops checked to second order, worst relative error {:.2e}{skipped}",
            suite.worst_rel_err,
        );
        println!(
            "{} of them also against the scalar engine, worst relative difference {:.2e}",
            suite.scalar_ops, suite.worst_scalar_rel_err
        );
    }
    if suite.passed {
        return Ok(ExitCode::SUCCESS);
    }
    for r in suite.ops.iter().filter(|r| !r.passed) {
        eprintln!(
            "error: second-order gradcheck failed for {}: {}",
            r.op,
            r.skipped.clone().unwrap_or_else(|| format!(
                "relative error {:.2e} (against the scalar engine {}) exceeds {:.0e}",
                r.max_rel_err,
                r.scalar_rel_err
                    .map_or("-".to_string(), |e| format!("{e:.2e}")),
                args.tolerance
            ))
        );
    }
    Ok(ExitCode::FAILURE)
}

/// The width of the op column: the longest op name, at least 14.
fn op_column<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max(14)
}
