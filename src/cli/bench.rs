//! `chainrule bench [NAME...]`: runs workloads and prints an aligned table or JSON lines.

use chainrule::bench::{self, BenchConfig, WORKLOADS};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `chainrule bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Workloads to run (all when none is given).
    names: Vec<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of timing per measurement.
    #[arg(long, default_value_t = 2.0)]
    budget: f64,
    /// List the workloads and exit.
    #[arg(long)]
    list: bool,
    /// The tragedies text for W9 (`w9_forward`, `w9_step`).
    #[arg(long, default_value = chainrule::bench::W9_TEXT)]
    text: std::path::PathBuf,
    /// The MNIST folder for W8 (`mnist_epoch`).
    #[arg(long, default_value = chainrule::bench::W8_MNIST)]
    mnist: std::path::PathBuf,
    /// Internal: the fresh process of `w7_memory`.
    #[arg(long, hide = true)]
    w7_child: bool,
    /// Internal: a fresh process of `memory_flat` that runs this many W1 steps.
    #[arg(long, hide = true, value_name = "STEPS")]
    w1_steps_child: Option<usize>,
    /// Internal: a fresh process of `memory_flat_lm` that runs this many character-model
    /// steps.
    #[arg(long, hide = true, value_name = "STEPS")]
    lm_steps_child: Option<usize>,
}

fn fmt_time(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.1} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.2} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.3} s", s)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.w7_child {
        println!("{}", bench::w7_child()?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(steps) = args.lm_steps_child {
        println!("{}", bench::lm_steps_child(steps)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(steps) = args.w1_steps_child {
        println!("{}", bench::w1_steps_child(steps)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.list {
        for w in WORKLOADS {
            println!("{w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !(args.budget > 0.0 && args.budget.is_finite()) {
        anyhow::bail!(
            "--budget must be a positive number of seconds, got {}",
            args.budget
        );
    }
    let names: Vec<String> = if args.names.is_empty() {
        WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        args.names
    };
    for n in &names {
        if !WORKLOADS.contains(&n.as_str()) {
            anyhow::bail!("unknown workload '{n}'; known: {}", WORKLOADS.join(", "));
        }
    }
    let cfg = BenchConfig {
        budget: Duration::from_secs_f64(args.budget),
        exe: std::env::current_exe().ok(),
        text: args.text.clone(),
        mnist: args.mnist.clone(),
    };
    if !args.json {
        println!(
            "{:<34} {:>12} {:>12} {:>7} {:>9} {:>8} {:>9}  extra",
            "workload", "median", "min", "reps", "GFLOP/s", "GB/s", "ns/op"
        );
    }
    // a workload whose check fails (or that cannot run) is reported and the others still
    // run; the exit status says whether any failed
    let mut failed = Vec::new();
    for name in names {
        let rows = match bench::run(&name, &cfg) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(name);
                continue;
            }
        };
        for row in rows {
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                let opt =
                    |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_default();
                let mut extra: Vec<String> =
                    row.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !row.check.is_empty() {
                    extra.push(format!(
                        "check={}",
                        serde_json::Value::from(row.check.clone())
                    ));
                }
                println!(
                    "{:<34} {:>12} {:>12} {:>7} {:>9} {:>8} {:>9}  {}",
                    row.name,
                    fmt_time(row.median_s),
                    fmt_time(row.min_s),
                    row.reps,
                    opt(row.gflops, 1),
                    opt(row.gbps, 1),
                    opt(row.ns_per_op, 1),
                    extra.join(" ")
                );
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{} workload(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
