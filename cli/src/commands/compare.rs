//! `chainrule compare`: what a gradient costs by reverse mode, forward mode and central
//! differences as the problem grows (W4: f: Rᴺ → R), and a Jacobian by each mode (W5:
//! g: R → Rᴹ), measured here, with a table, a CSV file, a log-log plot and the crossover.

use crate::bench::{Timing, measure, w4_f, w4_input, w5_g};
use crate::plot::{log_ticks, tick_label};
use anyhow::Context;
use chainrule::autodiff::{JacobianMode, Tape, jacfwd, jacobian, jacrev};
use chainrule::tensor::Tensor;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `chainrule compare`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small sizes and short timings (finishes in well under 30 s).
    #[arg(long)]
    quick: bool,
    /// One JSON object per row instead of tables.
    #[arg(long)]
    json: bool,
    /// Folder for compare.csv and compare.svg [default: runs/compare-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One measurement: a method's median seconds for a function at a size, and its ratio to
/// the function itself (or why it was skipped).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) function: &'static str,
    pub(crate) n: usize,
    pub(crate) method: &'static str,
    pub(crate) median_s: Option<f64>,
    pub(crate) ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

/// What to measure, and how long each measurement may take.
pub(crate) struct Plan {
    pub(crate) budget: Duration,
    /// Skip a measurement whose single call is predicted to take longer than this.
    pub(crate) cap_s: f64,
    pub(crate) f_sizes: Vec<usize>,
    pub(crate) g_sizes: Vec<usize>,
    /// Skip every measurement left once this is past (the page's bound per request).
    pub(crate) deadline: Option<std::time::Instant>,
}

fn time(plan: &Plan, f: impl FnMut()) -> Timing {
    measure(plan.budget, 3, f)
}

/// The median time of `f`, or a note saying why it was skipped: one call is predicted to
/// take longer than the plan's cap, or to end past its deadline.
fn time_or_skip(
    plan: &Plan,
    predicted_s: f64,
    what: &str,
    f: impl FnMut(),
) -> (Option<f64>, Option<String>) {
    let left_s = plan.deadline.map(|d| {
        d.saturating_duration_since(std::time::Instant::now())
            .as_secs_f64()
    });
    if predicted_s > plan.cap_s {
        (
            None,
            Some(format!("skipped: about {predicted_s:.1} s per {what}")),
        )
    } else if left_s.is_some_and(|left| predicted_s > left) {
        (
            None,
            Some(format!(
                "skipped: about {predicted_s:.2} s per {what}, more than this request has left"
            )),
        )
    } else {
        (Some(time(plan, f).median_s), None)
    }
}

type F32 = f32;

fn f_value(x: &Tensor<F32>) -> F32 {
    let tape = Tape::new();
    tape.no_grad(|| w4_f(tape.constant(x.clone())).and_then(|y| y.item()))
        .expect("W4 evaluates")
}

/// W4's gradient at each of the plan's sizes: `f` itself, reverse mode, forward mode (N
/// passes) and central differences (2N evaluations), a row each.
pub(crate) fn run_f(plan: &Plan, rows: &mut Vec<Row>) {
    for &n in &plan.f_sizes {
        let x = w4_input::<F32>(n);
        let tf = time(plan, || {
            std::hint::black_box(f_value(&x));
        });
        let base = tf.median_s;
        let mut push = |method: &'static str, t: Option<f64>, note: Option<String>| {
            rows.push(Row {
                function: "f",
                n,
                method,
                median_s: t,
                ratio: t.map(|t| t / base),
                note,
            });
        };
        push("f", Some(base), None);
        let tr = time(plan, || {
            let tape = Tape::new();
            let v = tape.var(x.clone());
            let y = w4_f(v).expect("W4 records");
            std::hint::black_box(tape.backward(y).expect("scalar").get(v).is_ok());
        });
        push("reverse", Some(tr.median_s), None);
        // forward mode: N passes, one basis tangent each
        let (t, note) = time_or_skip(plan, 3.0 * n as f64 * base, "gradient (N passes)", || {
            let mut e = Tensor::<F32>::zeros(&[n]).expect("n elements of an existing tensor");
            for i in 0..n {
                e.data_mut()[i] = 1.0;
                let tape = Tape::forward_mode();
                let v = tape.dual(x.clone(), e.clone()).expect("same shape");
                std::hint::black_box(w4_f(v).and_then(|y| y.tangent()).expect("forward rules"));
                e.data_mut()[i] = 0.0;
            }
        });
        push("forward", t, note);
        // central differences: 2N evaluations, h = 1e-2 as in the anchors (float32)
        let (t, note) = time_or_skip(
            plan,
            2.0 * n as f64 * base,
            "gradient (2N evaluations)",
            || {
                let mut xs = x.clone();
                for i in 0..n {
                    let x0 = xs.data()[i];
                    xs.data_mut()[i] = x0 + 1e-2;
                    let p = f_value(&xs);
                    xs.data_mut()[i] = x0 - 1e-2;
                    let m = f_value(&xs);
                    xs.data_mut()[i] = x0;
                    std::hint::black_box((p - m) / 2e-2);
                }
            },
        );
        push("finite_diff", t, note);
    }
}

/// W5's Jacobian at each of the plan's sizes: `g` itself, forward mode and reverse mode
/// (M sweeps), a row each; and the mode `jacobian` picks there.
pub(crate) fn run_g(plan: &Plan, rows: &mut Vec<Row>) -> Vec<(usize, JacobianMode)> {
    let t = Tensor::<F32>::from_vec(vec![0.5], &[1]).expect("one element");
    let mut picked = Vec::new();
    for &m in &plan.g_sizes {
        let tg = time(plan, || {
            let tape = Tape::new();
            std::hint::black_box(
                tape.no_grad(|| w5_g(tape.constant(t.clone()), m).map(|y| y.value()))
                    .expect("W5 evaluates"),
            );
        });
        let base = tg.median_s;
        let mut push = |method: &'static str, time: Option<f64>, note: Option<String>| {
            rows.push(Row {
                function: "g",
                n: m,
                method,
                median_s: time,
                ratio: time.map(|x| x / base),
                note,
            });
        };
        push("f", Some(base), None);
        let tf = time(plan, || {
            std::hint::black_box(jacfwd(|_, v| w5_g(v, m), &t).expect("forward Jacobian"));
        });
        push("forward", Some(tf.median_s), None);
        let (tr, note) = time_or_skip(plan, 2.0 * m as f64 * base, "Jacobian (M sweeps)", || {
            std::hint::black_box(jacrev(|_, v| w5_g(v, m), &t).expect("reverse Jacobian"));
        });
        push("reverse", tr, note);
        let (_, mode) = jacobian(|_, v| w5_g(v, m), &t).expect("Jacobian");
        picked.push((m, mode));
    }
    picked
}

fn fmt_time(s: Option<f64>) -> String {
    match s {
        None => "—".into(),
        Some(s) if s < 1e-3 => format!("{:.2} µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.3} ms", s * 1e3),
        Some(s) => format!("{s:.3} s"),
    }
}

fn table(rows: &[Row], function: &str, methods: &[&str]) {
    print!("{:>9}", if function == "f" { "N" } else { "M" });
    for m in methods {
        print!(" {:>24}", m);
    }
    println!();
    let mut sizes: Vec<usize> = rows
        .iter()
        .filter(|r| r.function == function)
        .map(|r| r.n)
        .collect();
    sizes.dedup();
    for n in sizes {
        print!("{n:>9}");
        for m in methods {
            let r = rows
                .iter()
                .find(|r| r.function == function && r.n == n && r.method == *m);
            let cell = match r {
                Some(Row {
                    median_s: Some(t),
                    ratio: Some(q),
                    ..
                }) => format!("{} ({:.3}×)", fmt_time(Some(*t)), q),
                _ => "skipped".into(),
            };
            print!(" {cell:>24}");
        }
        println!();
    }
}

fn crossover(
    rows: &[Row],
    function: &str,
    slow_first: &str,
    fast_later: &str,
) -> Option<(usize, usize)> {
    // the first size at which `fast_later` beats `slow_first`, and the size before it
    let mut prev = None;
    let mut sizes: Vec<usize> = rows
        .iter()
        .filter(|r| r.function == function)
        .map(|r| r.n)
        .collect();
    sizes.dedup();
    for n in sizes {
        let t = |m: &str| {
            rows.iter()
                .find(|r| r.function == function && r.n == n && r.method == m)
                .and_then(|r| r.median_s)
        };
        match (t(slow_first), t(fast_later)) {
            (Some(a), Some(b)) if b < a => return Some((prev.unwrap_or(n), n)),
            (None, Some(_)) => return Some((prev.unwrap_or(n), n)),
            _ => prev = Some(n),
        }
    }
    None
}

fn write_csv(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| path.display().to_string())?;
    w.write_record(["function", "n", "method", "median_s", "ratio", "note"])?;
    for r in rows {
        w.write_record([
            r.function.to_string(),
            r.n.to_string(),
            r.method.to_string(),
            r.median_s.map(|v| v.to_string()).unwrap_or_default(),
            r.ratio.map(|v| v.to_string()).unwrap_or_default(),
            r.note.clone().unwrap_or_default(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn plot(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let (left, right) = root.split_horizontally(500);
    for (area, function, title, methods) in [
        (
            &left,
            "f",
            "gradient of f: Rᴺ → R",
            &["f", "reverse", "forward", "finite_diff"][..],
        ),
        (
            &right,
            "g",
            "Jacobian of g: R → Rᴹ",
            &["f", "forward", "reverse"][..],
        ),
    ] {
        let pts: Vec<&Row> = rows
            .iter()
            .filter(|r| r.function == function && r.median_s.is_some())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let (nmin, nmax) = pts.iter().fold((f64::MAX, 0f64), |(a, b), r| {
            (a.min(r.n as f64), b.max(r.n as f64))
        });
        let (tmin, tmax) = pts.iter().fold((f64::MAX, 0f64), |(a, b), r| {
            (a.min(r.median_s.unwrap()), b.max(r.median_s.unwrap()))
        });
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (nmin..nmax * 1.01)
                    .log_scale()
                    .with_key_points(log_ticks(nmin, nmax * 1.01)),
                (tmin * 0.8..tmax * 1.25)
                    .log_scale()
                    .with_key_points(log_ticks(tmin * 0.8, tmax * 1.25)),
            )
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc(if function == "f" { "N" } else { "M" })
            .y_desc("seconds")
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        for (i, m) in methods.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series: Vec<(f64, f64)> = pts
                .iter()
                .filter(|r| r.method == *m)
                .map(|r| (r.n as f64, r.median_s.unwrap()))
                .collect();
            chart
                .draw_series(LineSeries::new(series, color))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                .label(*m)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let plan = if args.quick {
        Plan {
            budget: Duration::from_millis(40),
            cap_s: 0.05,
            f_sizes: vec![10, 100, 1000, 10_000],
            g_sizes: vec![10, 100, 1000, 10_000],
            deadline: None,
        }
    } else {
        Plan {
            budget: Duration::from_millis(500),
            cap_s: 2.0,
            f_sizes: vec![10, 100, 1000, 10_000, 100_000, 1_000_000],
            g_sizes: vec![10, 100, 1000, 10_000, 100_000],
            deadline: None,
        }
    };
    let out = super::out_dir(args.out, "compare");
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    let mut rows = Vec::new();
    run_f(&plan, &mut rows);
    let picked = run_g(&plan, &mut rows);
    write_csv(&rows, &out.join("compare.csv"))?;
    plot(&rows, &out.join("compare.svg"))?;
    // the rows again as JSON, for `chainrule serve` to draw
    chainrule::nn::write_atomically(
        &out.join("compare.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?.as_bytes(),
    )?;
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("f(x) = Σ sin(xᵢ)xᵢ² + Rosenbrock (W4), float32: time of one call (ratio to f)");
    table(&rows, "f", &["f", "reverse", "forward", "finite_diff"]);
    println!("\ng(t)ₖ = sin(kt)·exp(−t/k), k = 1..M (W5): time of the Jacobian (ratio to g)");
    table(&rows, "g", &["f", "forward", "reverse"]);
    println!("(the column f is g itself)");
    let modes: Vec<String> = picked
        .iter()
        .map(|(m, mode)| format!("M={m}: {mode:?}"))
        .collect();
    println!("`jacobian` picked: {}", modes.join(", ").to_lowercase());
    match crossover(&rows, "f", "forward", "reverse") {
        Some((a, b)) if a == b => {
            println!("\nFor f, reverse mode is already faster than forward mode at N = {b}.")
        }
        Some((a, b)) => {
            println!("\nFor f, reverse mode overtakes forward mode between N = {a} and N = {b}.")
        }
        None => {
            println!("\nFor f, forward mode stayed faster than reverse mode at every N measured.")
        }
    }
    match crossover(&rows, "g", "reverse", "forward") {
        Some((a, b)) if a == b => {
            println!("For g, forward mode is already faster than reverse mode at M = {b}.")
        }
        Some((a, b)) => {
            println!("For g, forward mode overtakes reverse mode between M = {a} and M = {b}.")
        }
        None => {
            println!("For g, reverse mode stayed faster than forward mode at every M measured.")
        }
    }
    println!(
        "wrote {}/compare.csv, compare.svg and compare.json",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
