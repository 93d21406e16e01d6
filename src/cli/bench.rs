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
    /// Internal: the fresh process of `w7_memory`.
    #[arg(long, hide = true)]
    w7_child: bool,
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
    };
    if !args.json {
        println!(
            "{:<34} {:>12} {:>12} {:>7} {:>9} {:>8} {:>9}  extra",
            "workload", "median", "min", "reps", "GFLOP/s", "GB/s", "ns/op"
        );
    }
    for name in names {
        for row in bench::run(&name, &cfg)? {
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                let opt =
                    |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_default();
                let extra: Vec<String> =
                    row.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
    Ok(ExitCode::SUCCESS)
}
