//! `chainrule bench [NAME...]`: runs workloads and prints an aligned table or JSON lines.

use crate::bench::{self, BenchConfig, WORKLOADS};
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
    /// Skip measuring the machine's peaks (about 1.5 s; rows then carry no share of
    /// peak), e.g. under callgrind, where only instruction counts matter.
    #[arg(long)]
    no_roofline: bool,
    /// The text for W9 (`w9_forward`, `w9_step`) [default: the embedded tragedies, the
    /// anchor's text].
    #[arg(long)]
    text: Option<std::path::PathBuf>,
    /// The MNIST folder (the four IDX files) for W8 (`mnist_epoch`); the repository does
    /// not hold MNIST.
    #[arg(long)]
    mnist: Option<std::path::PathBuf>,
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
    /// Internal: a fresh process of `memory_flat_gpt` that runs this many GPT steps.
    #[arg(long, hide = true, value_name = "STEPS")]
    gpt_steps_child: Option<usize>,
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
    if let Some(steps) = args.gpt_steps_child {
        println!("{}", bench::gpt_steps_child(steps)?);
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
        if !WORKLOADS.contains(&n.as_str()) && !bench::MPI_WORKLOADS.contains(&n.as_str()) {
            anyhow::bail!(
                "unknown workload '{n}'; known: {}, and under mpirun {}",
                WORKLOADS.join(", "),
                bench::MPI_WORKLOADS.join(", ")
            );
        }
    }
    let mpi = names
        .iter()
        .any(|n| bench::MPI_WORKLOADS.contains(&n.as_str()));
    if mpi && names.len() > 1 {
        anyhow::bail!(
            "{} run under mpirun, alone: `mpirun -np 2 chainrule bench allreduce`",
            bench::MPI_WORKLOADS.join(", ")
        );
    }
    let cfg = BenchConfig {
        budget: Duration::from_secs_f64(args.budget),
        exe: std::env::current_exe().ok(),
        text: args.text.clone(),
        mnist: args.mnist.clone(),
    };
    if mpi {
        return allreduce(&names[0], &cfg, args.json);
    }
    // the machine's limits first, so that every row can say how close it comes
    let peaks = (!args.no_roofline).then(bench::measure_peaks);
    if !args.json
        && let Some(peaks) = &peaks
    {
        println!(
            "machine: {} ({}, {} threads); multiply-add peak f32 {:.0} GFLOP/s on one core, {:.0} on all; f64 {:.0} and {:.0}; triad bandwidth {:.1} GB/s on one core, {:.1} on all",
            peaks.cpu,
            peaks.isa,
            peaks.threads,
            peaks.f32_one_gflops,
            peaks.f32_all_gflops,
            peaks.f64_one_gflops,
            peaks.f64_all_gflops,
            peaks.triad_one_gbps,
            peaks.triad_all_gbps
        );
    }
    if !args.json {
        println!(
            "{:<34} {:>12} {:>12} {:>7} {:>9} {:>8} {:>6} {:>9}  extra",
            "workload", "median", "min", "reps", "GFLOP/s", "GB/s", "peak%", "ns/op"
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
        for mut row in rows {
            if let Some(peaks) = &peaks {
                row.place(peaks);
            }
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
                    "{:<34} {:>12} {:>12} {:>7} {:>9} {:>8} {:>6} {:>9}  {}",
                    row.name,
                    fmt_time(row.median_s),
                    fmt_time(row.min_s),
                    row.reps,
                    opt(row.gflops, 1),
                    opt(row.gbps, 1),
                    opt(row.share_of_peak.map(|s| 100.0 * s), 0),
                    opt(row.ns_per_op, 1),
                    extra.join(" ")
                );
            }
        }
    }
    if args.json
        && let Some(peaks) = &peaks
    {
        println!(
            "{}",
            serde_json::json!({ "name": "roofline", "peaks": peaks })
        );
    }
    if !failed.is_empty() {
        anyhow::bail!("{} workload(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `mpirun -np N chainrule bench allreduce` (or `w1_step_dp`): every rank takes part,
/// rank 0 prints.
#[cfg(feature = "mpi")]
fn allreduce(name: &str, cfg: &BenchConfig, json: bool) -> anyhow::Result<ExitCode> {
    use chainrule::train::Collective;
    let universe = std::rc::Rc::new(
        mpi::initialize()
            .ok_or_else(|| anyhow::anyhow!("bench allreduce: MPI was already started"))?,
    );
    let c = chainrule::train::mpi::MpiCollective::new(universe.clone());
    let rows = match name {
        "w1_step_dp" => bench::w1_step_dp(&|| {
            Box::new(chainrule::train::mpi::MpiCollective::new(universe.clone()))
        })?,
        _ => bench::allreduce(cfg, &c)?,
    };
    if c.rank() == 0 {
        for row in rows {
            if json {
                println!("{}", serde_json::to_string(&row)?);
            } else if name == "w1_step_dp" {
                let extra: Vec<String> =
                    row.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<24} {:>12} {:>12} {:>7}  {}",
                    row.name,
                    fmt_time(row.median_s),
                    fmt_time(row.min_s),
                    row.reps,
                    extra.join(" ")
                );
            } else {
                println!(
                    "{:<20} {:>12} {:>12} {:>7} {:>8.2} GB/s  bus {:>6.2} GB/s  ({} ranks)",
                    row.name,
                    fmt_time(row.median_s),
                    fmt_time(row.min_s),
                    row.reps,
                    row.gbps.unwrap_or(f64::NAN),
                    row.extra["bus_gbps"].as_f64().unwrap_or(f64::NAN),
                    row.extra["ranks"]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "mpi"))]
fn allreduce(_name: &str, _cfg: &BenchConfig, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "bench allreduce: this chainrule was built without MPI; build it with `cargo build --release --features mpi` and run `mpirun -np 2 target/release/chainrule bench allreduce`"
    )
}
