//! Benchmark workloads, shared by `chainrule bench` and `cargo bench`. They reproduce the
//! workloads of the Python anchors (`shared/bench/anchors/README.md`) with the same
//! splitmix64 data, so that the ratios against PyTorch, JAX and NumPy mean something.

use crate::autodiff::{Tape, Trace, Var};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::{Activation, Linear, Mlp, ParamId, ParamStore};
use crate::optim::{LrSchedule, Optimizer, OptimizerKind};
use crate::tensor::{Element, MatLayout, SplitMix64, Tensor};
use crate::train::{
    Classification, Collective, Objective, PhaseTimes, Regression, TrainConfig, Trainer,
};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Workload name (with its case, e.g. `mlp_gemm/128x784x256/A·B`).
    pub name: String,
    /// Median seconds per call.
    pub median_s: f64,
    /// Fastest call.
    pub min_s: f64,
    /// Number of timed calls.
    pub reps: usize,
    /// Floating-point throughput, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// Memory throughput, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// Nanoseconds per recorded op, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_per_op: Option<f64>,
    /// Anything else worth recording (loss values, thread counts, ratios).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Values checked against a reference (an anchor's loss, an f64 product), by name:
    /// `{"expected", "got", "tol"}`, or `{"max", "got"}` for an upper bound. A row is only
    /// returned when every check passed.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub check: serde_json::Map<String, serde_json::Value>,
}

impl BenchRow {
    fn new(name: impl Into<String>, t: Timing) -> Self {
        BenchRow {
            name: name.into(),
            median_s: t.median_s,
            min_s: t.min_s,
            reps: t.reps,
            gflops: None,
            gbps: None,
            ns_per_op: None,
            extra: Default::default(),
            check: Default::default(),
        }
    }
    fn with(mut self, key: &str, v: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), v.into());
        self
    }

    /// Records `got` against `expected` under `key` in `check`; an error naming the
    /// workload, both values and the tolerance when they differ by more than `tol`.
    fn verify(mut self, key: &str, expected: f64, got: f64, tol: f64) -> Result<Self> {
        self.check.insert(
            key.into(),
            serde_json::json!({"expected": expected, "got": got, "tol": tol}),
        );
        if (got - expected).abs() <= tol {
            Ok(self)
        } else {
            Err(Error::invalid(
                "bench",
                format!(
                    "{}: {key} check failed: expected {expected}, measured {got} (difference {:.3e}, tolerance {tol:e})",
                    self.name,
                    (got - expected).abs()
                ),
            ))
        }
    }

    /// [`verify`](Self::verify) on a number already recorded in `extra` (missing or not a
    /// number fails).
    fn verify_extra(self, key: &str, expected: f64, tol: f64) -> Result<Self> {
        let got = self
            .extra
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        self.verify(key, expected, got, tol)
    }

    /// Records `got` under `key` against an upper bound; an error when it exceeds `max`.
    fn verify_at_most(mut self, key: &str, max: f64, got: f64) -> Result<Self> {
        self.check
            .insert(key.into(), serde_json::json!({"max": max, "got": got}));
        if got <= max {
            Ok(self)
        } else {
            Err(Error::invalid(
                "bench",
                format!(
                    "{}: {key} check failed: expected at most {max}, measured {got}",
                    self.name
                ),
            ))
        }
    }

    /// Records a product's error against its f64 reference ([`product_error`]) as
    /// `max_rel_err`; an error above [`PRODUCT_TOL`].
    fn verify_product(mut self, (err, entries): (f64, usize)) -> Result<Self> {
        self.check.insert(
            "max_rel_err".into(),
            serde_json::json!({"expected": 0.0, "got": err, "tol": PRODUCT_TOL, "entries": entries}),
        );
        if err <= PRODUCT_TOL {
            Ok(self)
        } else {
            Err(Error::invalid(
                "bench",
                format!(
                    "{}: the product differs from its f64 reference: expected a relative error of at most {PRODUCT_TOL:e}, measured {err:.3e} over {entries} entries",
                    self.name
                ),
            ))
        }
    }
}

/// Check values of the anchors (`shared/bench/anchors/results.md`), with the tolerances
/// of the unit tests below: W1 and W2 `loss@0` / `loss@10` (the losses returned by steps 1
/// and 11), W3 at n = 100 000, W7 the loss returned by step 200.
const W1_LOSSES: [f64; 2] = [2.30215, 2.29226];
const W2_LOSSES: [f64; 2] = [0.17359, 0.11585];
const LOSS_TOL: f64 = 5e-5;
const W3_LOSS: (f64, f64) = (106.2014, 1e-3);
const W3_DW0: (f64, f64) = (0.482377, 1e-6);
const W7_LOSS_200: f64 = 2.11580;

/// Largest error a benchmarked product may have against its f64 reference, relative to
/// the reference's largest entry.
const PRODUCT_TOL: f64 = 1e-4;

/// How far `got` (`m×n`, row-major) is from `lhs·rhs` (`m×k · k×n`, each buffer read as
/// its layout says) computed with f64 dot products: the largest difference relative to
/// the largest reference entry, over every entry of products with at most 4096 of them
/// and over 256 entries drawn from splitmix64 stream 97 otherwise. Returns the error
/// (NaN when `got` has a NaN or an infinity) and the number of entries compared.
fn product_error(
    got: &[f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[f32], MatLayout),
    rhs: (&[f32], MatLayout),
) -> (f64, usize) {
    let at = |(buf, layout): (&[f32], MatLayout), rows: usize, cols: usize, r: usize, c: usize| {
        f64::from(match layout {
            MatLayout::Normal => buf[r * cols + c],
            MatLayout::Transposed => buf[c * rows + r],
        })
    };
    let entries: Vec<(usize, usize)> = if m * n <= 4096 {
        (0..m * n).map(|e| (e / n, e % n)).collect()
    } else {
        let mut g = SplitMix64::new(97);
        (0..256)
            .map(|_| (g.int(m as u64) as usize, g.int(n as u64) as usize))
            .collect()
    };
    let (mut worst, mut scale, mut finite) = (0f64, 0f64, true);
    for &(i, j) in &entries {
        let want: f64 = (0..k)
            .map(|p| at(lhs, m, k, i, p) * at(rhs, k, n, p, j))
            .sum();
        let have = f64::from(got[i * n + j]);
        finite &= have.is_finite();
        worst = worst.max((have - want).abs());
        scale = scale.max(want.abs());
    }
    let err = if finite {
        worst / scale.max(f64::MIN_POSITIVE)
    } else {
        f64::NAN
    };
    (err, entries.len())
}

/// Median and minimum of a timed closure.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median seconds per call.
    pub median_s: f64,
    /// Fastest call.
    pub min_s: f64,
    /// Timed calls.
    pub reps: usize,
}

/// Times `f`: warm-up calls, then samples until `budget` is used (at least `min_reps`).
pub fn measure(budget: Duration, min_reps: usize, mut f: impl FnMut()) -> Timing {
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        f();
    }
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_reps || (start.elapsed() < budget && samples.len() < 1_000_000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Timing {
        median_s: samples[samples.len() / 2],
        min_s: samples[0],
        reps: samples.len(),
    }
}

/// CPU seconds (user + system, every thread) this process has used so far, where Linux
/// reports them (`/proc/self/stat`, in clock ticks of 1/100 s: Linux's `USER_HZ` on every
/// architecture it exposes to user space).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the command name may hold spaces and parentheses: count fields after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// [`measure`], plus how many cores were busy on average while it ran (CPU seconds of
/// the process over wall seconds; `None` where the CPU time is not reported).
pub fn measure_with_cores(
    budget: Duration,
    min_reps: usize,
    f: impl FnMut(),
) -> (Timing, Option<f64>) {
    let (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
    let t = measure(budget, min_reps, f);
    let wall = wall0.elapsed().as_secs_f64();
    let busy = cpu0
        .zip(process_cpu_seconds())
        .map(|(a, b)| (b - a) / wall.max(1e-9));
    (t, busy)
}

/// Names of every workload, in the order `chainrule bench` runs them.
pub const WORKLOADS: &[&str] = &[
    "matmul_256",
    "matmul_1024",
    "mlp_gemm",
    "tape_chain",
    "tape_chain_replay",
    "elementwise_1m",
    "w1_forward",
    "w1_forward_backward",
    "w1_step",
    "w1_step_replay",
    "w2_step",
    "w2_step_replay",
    "w10_hvp",
    "w7_memory",
    "memory_flat",
    "memory_flat_lm",
    "w3_scalar",
    "w9_forward",
    "w9_step",
    "mnist_epoch",
];

/// Settings shared by all workloads.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Time budget of one measurement.
    pub budget: Duration,
    /// The `chainrule` executable, for workloads that need a fresh process (`w7_memory`,
    /// `memory_flat`).
    pub exe: Option<std::path::PathBuf>,
    /// The text of W9 (`w9_forward`, `w9_step`); `None`: the embedded tragedies, the
    /// anchor's text.
    pub text: Option<std::path::PathBuf>,
    /// The MNIST folder of W8 (`mnist_epoch`), which the repository does not hold.
    pub mnist: Option<std::path::PathBuf>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            budget: Duration::from_secs(2),
            exe: None,
            text: None,
            mnist: None,
        }
    }
}

/// Runs one named workload.
pub fn run(name: &str, cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    Ok(match name {
        "matmul_256" => vec![square_matmul(256, cfg)?],
        "matmul_1024" => vec![square_matmul(1024, cfg)?],
        "mlp_gemm" => mlp_gemm(cfg)?,
        "tape_chain" => vec![tape_chain(100_000, cfg)?],
        "tape_chain_replay" => vec![tape_chain_replay(100_000, cfg)?],
        "elementwise_1m" => vec![elementwise_1m(cfg)?],
        "w1_forward" => vec![w1(cfg, false)?],
        "w1_forward_backward" => vec![w1(cfg, true)?],
        "w1_step" => vec![w1_step(cfg, false)?],
        "w1_step_replay" => vec![w1_step(cfg, true)?],
        "w2_step" => vec![w2_step(cfg, false)?],
        "w2_step_replay" => vec![w2_step(cfg, true)?],
        "w10_hvp" => vec![w10_hvp(cfg)?],
        "w7_memory" => vec![w7_memory(cfg)?],
        "memory_flat" => vec![memory_flat(cfg, "memory_flat", "--w1-steps-child")?],
        "memory_flat_lm" => vec![memory_flat(cfg, "memory_flat_lm", "--lm-steps-child")?],
        "w9_forward" => vec![w9(cfg, false)?],
        "w9_step" => vec![w9(cfg, true)?],
        "mnist_epoch" => vec![mnist_epoch(cfg)?],
        "w3_scalar" => vec![
            w3_scalar(100_000, cfg)
                .verify_extra("loss", W3_LOSS.0, W3_LOSS.1)?
                .verify_extra("dL/dw0", W3_DW0.0, W3_DW0.1)?,
        ],
        other => {
            return Err(crate::error::Error::invalid(
                "bench",
                format!(
                    "unknown workload '{other}'; known: {}",
                    WORKLOADS.join(", ")
                ),
            ));
        }
    })
}

/// `n×n · n×n` through [`Tensor::matmul`] (its threading threshold and kernel choice
/// included), checked against f64 dot products.
fn square_matmul(n: usize, cfg: &BenchConfig) -> Result<BenchRow> {
    let a = Tensor::<f32>::splitmix_uniform(&[n, n], 61, -1.0, 1.0)?;
    let b = Tensor::<f32>::splitmix_uniform(&[n, n], 62, -1.0, 1.0)?;
    let mut c = a.matmul(&b)?;
    let t = measure(cfg.budget, 5, || {
        c = a.matmul(&b).expect("the shapes of the call above");
    });
    let flops = 2.0 * (n as f64).powi(3);
    let err = product_error(
        c.data(),
        n,
        n,
        n,
        (a.data(), MatLayout::Normal),
        (b.data(), MatLayout::Normal),
    );
    let mut row = BenchRow::new(format!("matmul_{n}"), t)
        .with("threads", crate::tensor::matmul_threads(n, n, n))
        .with("gflops_best", flops / t.min_s / 1e9);
    row.gflops = Some(flops / t.median_s / 1e9);
    row.verify_product(err)
}

/// The three products of each W1 layer through the tape: `A·B` is the forward `X·W`
/// recorded by `Var::matmul`; `Aᵀ·B` (`dW = Xᵀ·G`) and `A·Bᵀ` (`dX = G·Wᵀ`) are reverse
/// sweeps (`backward_with`, seed `G`) of a recorded product where only `W`, or only `X`,
/// needs a gradient; `layer` records the product with both as variables and runs the
/// forward and a backward that gives both gradients (GFLOP/s over the three products).
/// Every output is checked against f64 dot products.
fn mlp_gemm(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    use MatLayout::{Normal, Transposed};
    let mut rows = Vec::new();
    let budget = cfg.budget / 4;
    let mut tape = Tape::<f32>::new();
    for (m, k, n) in [(128, 784, 256), (128, 256, 256), (128, 256, 10)] {
        let x = Tensor::<f32>::splitmix_uniform(&[m, k], 1, -1.0, 1.0)?;
        let w = Tensor::<f32>::splitmix_uniform(&[k, n], 11, -1.0, 1.0)?;
        let g = Tensor::<f32>::splitmix_uniform(&[m, n], 2, -1.0, 1.0)?;
        let flops = 2.0 * (m * n * k) as f64;
        let y_err = |y: &Tensor<f32>| {
            product_error(y.data(), m, n, k, (x.data(), Normal), (w.data(), Normal))
        };
        let dw_err = |dw: &Tensor<f32>| {
            product_error(
                dw.data(),
                k,
                n,
                m,
                (x.data(), Transposed),
                (g.data(), Normal),
            )
        };
        let dx_err = |dx: &Tensor<f32>| {
            product_error(
                dx.data(),
                m,
                k,
                n,
                (g.data(), Normal),
                (w.data(), Transposed),
            )
        };
        let row = |case: &str, product: &str, t: Timing, threads: usize, products: f64| {
            let mut r = BenchRow::new(format!("mlp_gemm/{m}x{k}x{n}/{case}"), t)
                .with("product", product)
                .with("threads", threads);
            r.gflops = Some(products * flops / t.median_s / 1e9);
            r
        };
        let mut failure = None;

        // forward X·W, recorded on the tape
        let mut y = x.matmul(&w)?;
        let t = measure(budget, 20, || {
            tape.clear();
            let (xv, wv) = (tape.constant(x.clone()), tape.var(w.clone()));
            match xv.matmul(wv) {
                Ok(v) => y = v.value(),
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure.take() {
            return Err(e);
        }
        rows.push(
            row(
                "A·B",
                "X·W (forward)",
                t,
                crate::tensor::matmul_threads(m, n, k),
                1.0,
            )
            .verify_product(y_err(&y))?,
        );

        // weight gradient Xᵀ·G: only W needs a gradient
        tape.clear();
        let (xv, wv) = (tape.constant(x.clone()), tape.var(w.clone()));
        let yv = xv.matmul(wv)?;
        let mut dw = Tensor::zeroed(&[k, n]);
        let t = measure(budget, 20, || match tape.backward_with(yv, g.clone()) {
            Ok(grads) => dw = grads.wrt(wv).expect("one tape"),
            Err(e) => failure = Some(e),
        });
        if let Some(e) = failure.take() {
            return Err(e);
        }
        rows.push(
            row(
                "Aᵀ·B",
                "Xᵀ·G (dW)",
                t,
                crate::tensor::matmul_threads(k, n, m),
                1.0,
            )
            .verify_product(dw_err(&dw))?,
        );

        // input gradient G·Wᵀ: only X needs a gradient
        tape.clear();
        let (xv, wv) = (tape.var(x.clone()), tape.constant(w.clone()));
        let yv = xv.matmul(wv)?;
        let mut dx = Tensor::zeroed(&[m, k]);
        let t = measure(budget, 20, || match tape.backward_with(yv, g.clone()) {
            Ok(grads) => dx = grads.wrt(xv).expect("one tape"),
            Err(e) => failure = Some(e),
        });
        if let Some(e) = failure.take() {
            return Err(e);
        }
        rows.push(
            row(
                "A·Bᵀ",
                "G·Wᵀ (dX)",
                t,
                crate::tensor::matmul_threads(m, k, n),
                1.0,
            )
            .verify_product(dx_err(&dx))?,
        );

        // the whole layer: record X·W with both operands variables, backward to both
        let t = measure(budget, 20, || {
            tape.clear();
            let (xv, wv) = (tape.var(x.clone()), tape.var(w.clone()));
            let grads = xv.matmul(wv).and_then(|yv| {
                y = yv.value();
                tape.backward_with(yv, g.clone())
            });
            match grads {
                Ok(grads) => {
                    (dw, dx) = (
                        grads.wrt(wv).expect("one tape"),
                        grads.wrt(xv).expect("one tape"),
                    )
                }
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure.take() {
            return Err(e);
        }
        let errs = [y_err(&y), dw_err(&dw), dx_err(&dx)];
        let worst = errs
            .iter()
            .map(|e| e.0)
            .fold(0f64, |a, b| if b.is_nan() { b } else { a.max(b) });
        let entries = errs.iter().map(|e| e.1).sum();
        rows.push(
            row(
                "layer",
                "X·W, then Xᵀ·G and G·Wᵀ in one backward",
                t,
                crate::tensor::matmul_threads(m, n, k),
                3.0,
            )
            .verify_product((worst, entries))?,
        );
    }
    Ok(rows)
}

/// A chain of `n` cheap ops on a one-element tensor, alternating `·0.999` and `+0.001`.
fn chain<'t>(x: Var<'t, f32>, n: usize) -> Var<'t, f32> {
    let mut y = x;
    for i in 0..n {
        y = if i % 2 == 0 {
            y.mul_scalar(0.999)
        } else {
            y.add_scalar(0.001)
        };
    }
    y
}

/// A chain of `n` scalar ops (alternately ×0.999 and +0.001) recorded and swept back.
/// `ns_per_op` is the whole cost per op; `bookkeeping_ns_per_op` is timed directly on the
/// same chain over an empty tensor, where no kernel has an element to compute, so it is
/// what an op costs besides arithmetic (recording the node, allocating its output and its
/// gradient, the sweep): an upper bound of the tape's own share that cannot come out
/// negative, as a difference of two noisy medians could.
fn tape_chain(n: usize, cfg: &BenchConfig) -> Result<BenchRow> {
    let mut tape = Tape::<f32>::with_capacity(n + 2);
    let mut run = |x0: &Tensor<f32>| -> Result<f32> {
        tape.clear();
        let x = tape.var(x0.clone());
        let y = chain(x, n).sum_all();
        let g = tape.backward(y)?;
        Ok(g.get(x)?
            .map_or(f32::NAN, |g| g.data().first().copied().unwrap_or(0.0)))
    };
    let scalar = Tensor::<f32>::scalar(1.0);
    let empty = Tensor::<f32>::zeroed(&[0]);
    // ∂y/∂x = 0.999^(n/2) through the chain
    let want = 0.999f64.powi(n.div_ceil(2) as i32);
    let got = run(&scalar)? as f64;
    run(&empty)?;
    let full = measure(cfg.budget, 5, || {
        std::hint::black_box(run(&scalar).ok());
    });
    let bare = measure(cfg.budget, 5, || {
        std::hint::black_box(run(&empty).ok());
    });
    let per_op = full.median_s / n as f64 * 1e9;
    let bookkeeping = bare.median_s / n as f64 * 1e9;
    let mut row = BenchRow::new("tape_chain", full)
        .with("ops", n)
        .with("bookkeeping_ns_per_op", bookkeeping)
        .verify("dy/dx", want, got, 1e-3 * want)?;
    row.ns_per_op = Some(per_op);
    Ok(row)
}

/// The chain of [`tape_chain`] recorded once and replayed ([`Trace`]): `ns_per_op` is
/// the whole cost per op, `bookkeeping_ns_per_op` the cost on an empty tensor (what a
/// replayed op costs besides arithmetic).
fn tape_chain_replay(n: usize, cfg: &BenchConfig) -> Result<BenchRow> {
    let record = |x0: &Tensor<f32>| -> Result<Trace<f32>> {
        let tape = Tape::<f32>::with_capacity(n + 2);
        let x = tape.var(x0.clone());
        let y = chain(x, n).sum_all();
        Trace::record(&tape, y, &[x], &[])
    };
    let scalar = Tensor::<f32>::scalar(1.0);
    let empty = Tensor::<f32>::zeroed(&[0]);
    let (mut full_trace, mut bare_trace) = (record(&scalar)?, record(&empty)?);
    let run = |trace: &mut Trace<f32>, x: &Tensor<f32>| -> Result<f32> {
        trace.forward(&[x], &[], &[])?;
        let g = trace.backward()?;
        Ok(g[0]
            .as_ref()
            .map_or(f32::NAN, |g| g.data().first().copied().unwrap_or(0.0)))
    };
    let want = 0.999f64.powi(n.div_ceil(2) as i32);
    let got = run(&mut full_trace, &scalar)? as f64;
    run(&mut bare_trace, &empty)?;
    let full = measure(cfg.budget, 5, || {
        std::hint::black_box(run(&mut full_trace, &scalar).ok());
    });
    let bare = measure(cfg.budget, 5, || {
        std::hint::black_box(run(&mut bare_trace, &empty).ok());
    });
    let mut row = BenchRow::new("tape_chain_replay", full)
        .with("ops", n)
        .with("bookkeeping_ns_per_op", bare.median_s / n as f64 * 1e9)
        .verify("dy/dx", want, got, 1e-3 * want)?;
    row.ns_per_op = Some(full.median_s / n as f64 * 1e9);
    Ok(row)
}

fn elementwise_1m(cfg: &BenchConfig) -> Result<BenchRow> {
    let n = 1 << 20;
    let a = Tensor::<f32>::splitmix_uniform(&[n], 1, -1.0, 1.0)?;
    let b = Tensor::<f32>::splitmix_uniform(&[n], 2, -1.0, 1.0)?;
    let t = measure(cfg.budget, 10, || {
        std::hint::black_box(a.add(&b).expect("same shape"));
    });
    let mut row = BenchRow::new("elementwise_1m", t).with("op", "add f32, 2 reads + 1 write");
    row.gbps = Some(3.0 * 4.0 * n as f64 / t.median_s / 1e9);
    Ok(row)
}

/// The W1 network of the anchors: parameters `[W1, b1, W2, b2, W3, b3]` (W is
/// `[fan_in, fan_out]`), input `[128, 784]` and labels, from the splitmix64 streams.
pub struct W1Data<T: Element> {
    /// Input batch `[128, 784]`.
    pub x: Tensor<T>,
    /// Class labels, 128 of them in `0..10`.
    pub labels: Vec<usize>,
    /// `[W1, b1, W2, b2, W3, b3]`.
    pub params: Vec<Tensor<T>>,
}

/// Builds the anchors' data for an MLP with the given layer sizes (stream of layer `i`
/// is `first_stream + 2i` for W and `+1` for b).
pub fn anchor_mlp_params<T: Element>(sizes: &[usize], first_stream: u64) -> Vec<Tensor<T>> {
    let mut params = Vec::new();
    for (i, w) in sizes.windows(2).enumerate() {
        let bound = 1.0 / (w[0] as f64).sqrt();
        let s = first_stream + 2 * i as u64;
        params.push(
            Tensor::splitmix_uniform(&[w[0], w[1]], s, -bound, bound)
                .expect("a workload's fixed shape"),
        );
        params.push(
            Tensor::splitmix_uniform(&[w[1]], s + 1, -bound, bound)
                .expect("a workload's fixed shape"),
        );
    }
    params
}

impl<T: Element> W1Data<T> {
    /// The anchors' W1 batch and initial parameters.
    pub fn new() -> Self {
        let mut g = SplitMix64::new(2);
        W1Data {
            x: Tensor::splitmix_uniform(&[128, 784], 1, -1.0, 1.0)
                .expect("a workload's fixed shape"),
            labels: (0..128).map(|_| g.int(10) as usize).collect(),
            params: anchor_mlp_params(&[784, 256, 256, 10], 11),
        }
    }
}

impl<T: Element> Default for W1Data<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Forward pass of W1 on a tape: relu MLP and mean softmax cross-entropy.
pub fn w1_loss<'t, T: Element>(
    tape: &'t Tape<T>,
    x: &Tensor<T>,
    labels: &[usize],
    params: &[Var<'t, T>],
) -> Result<Var<'t, T>> {
    let mut h = tape.constant(x.clone());
    for (i, layer) in params.chunks(2).enumerate() {
        h = h.matmul(layer[0])?.add(layer[1])?;
        if i + 1 < params.len() / 2 {
            h = h.relu();
        }
    }
    let lse = h.logsumexp(&[1], false)?;
    let picked = h.gather(1, labels)?.reshape(&[labels.len()])?;
    Ok(lse.sub(picked)?.mean_all())
}

fn w1(cfg: &BenchConfig, backward: bool) -> Result<BenchRow> {
    let data = W1Data::<f32>::new();
    let mut tape = Tape::<f32>::new();
    let mut loss0 = f32::NAN;
    let mut failure = None;
    let t = measure(cfg.budget, 20, || {
        tape.clear();
        let ps: Vec<Var<'_, f32>> = data.params.iter().map(|p| tape.var(p.clone())).collect();
        match w1_loss(&tape, &data.x, &data.labels, &ps) {
            Ok(loss) => {
                loss0 = loss.item().unwrap_or(f32::NAN);
                if backward {
                    std::hint::black_box(tape.backward(loss).map(|g| g.get(ps[0]).is_ok()).ok());
                }
            }
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let flops = if backward { 155.1e6 } else { 68.8e6 };
    let name = if backward {
        "w1_forward_backward"
    } else {
        "w1_forward"
    };
    let mut row = BenchRow::new(name, t).with("loss@0", loss0 as f64);
    row.gflops = Some(flops / t.median_s / 1e9);
    row.verify_extra("loss@0", W1_LOSSES[0], LOSS_TOL)
}

/// W3: `loss = Σ tanh(wᵢ xᵢ + bᵢ)` as a left fold on the scalar tape, n terms, all 3n
/// inputs receiving gradients. Timed: build (the forward pass) plus backward; the inputs
/// are created once and the previous graph dropped before each sample.
fn w3_scalar(n: usize, cfg: &BenchConfig) -> BenchRow {
    use crate::scalar::{Real, STape};
    let streams: Vec<Vec<f64>> = [41u64, 42, 43]
        .iter()
        .map(|&s| {
            let mut g = SplitMix64::new(s);
            (0..n).map(|_| g.uniform_f32(-1.0, 1.0) as f64).collect()
        })
        .collect();
    let tape = STape::<f64>::with_capacity(7 * n);
    let vars: Vec<_> = streams
        .iter()
        .flat_map(|s| s.iter().map(|&v| tape.var(v)))
        .collect();
    let (w, x, b) = (&vars[..n], &vars[n..2 * n], &vars[2 * n..]);
    let mut adj = Vec::with_capacity(7 * n);
    let mut loss = 0.0;
    let t = measure(cfg.budget, 5, || {
        tape.truncate(3 * n);
        let mut s = (w[0] * x[0] + b[0]).tanh();
        for i in 1..n {
            s = s + (w[i] * x[i] + b[i]).tanh();
        }
        tape.backward_into(s, 1.0, &mut adj);
        loss = s.value();
    });
    let ops = 4 * n - 1;
    let mut row = BenchRow::new("w3_scalar", t)
        .with("n", n)
        .with("ops", ops)
        .with("loss", loss)
        .with("dL/dw0", adj[w[0].id()]);
    row.ns_per_op = Some(t.median_s / ops as f64 * 1e9);
    row
}

/// An MLP over parameters already in `store` (ids 0, 1, 2... as W, b pairs).
fn mlp_over(sizes: &[usize], activation: Activation) -> Mlp {
    let layers = (0..sizes.len() - 1)
        .map(|i| Linear {
            weight: ParamId(2 * i),
            bias: ParamId(2 * i + 1),
        })
        .collect();
    Mlp {
        layers,
        activation,
        dropout: None,
        sizes: sizes.to_vec(),
    }
}

/// One training step of the anchors' workloads (forward, loss, backward, plain SGD),
/// through the trainer's own step ([`Trainer::train_step`]) on a one-batch objective.
pub struct AnchorStep {
    store: ParamStore<f32>,
    model: Mlp,
    data: AnchorData,
    tape: Tape<f32>,
    trainer: Trainer,
    optimizer: Box<dyn Optimizer<f32>>,
    steps: usize,
    /// (rank, ranks) of a data-parallel run.
    shard: (usize, usize),
    /// The phases of the last step.
    times: PhaseTimes,
}

enum AnchorData {
    Classes(Dataset),
    Values(Tensor<f32>, Tensor<f32>),
}

impl AnchorStep {
    fn new(store: ParamStore<f32>, model: Mlp, data: AnchorData, batch: usize) -> Self {
        let lr = 0.01;
        AnchorStep {
            store,
            model,
            data,
            tape: Tape::new(),
            trainer: Trainer::new(TrainConfig {
                batch_size: batch,
                schedule: LrSchedule::constant(lr),
                divergence_factor: None,
                ..Default::default()
            })
            .expect("valid settings"),
            optimizer: OptimizerKind::Sgd
                .build::<f32>(lr, None)
                .expect("valid settings"),
            steps: 0,
            shard: (0, 1),
            times: PhaseTimes::default(),
        }
    }

    /// The same steps data-parallel with the processes of `c`: each takes its share of
    /// the batch and the gradients are summed, during the backward sweep when `overlap`.
    pub fn distributed(mut self, c: Box<dyn Collective>, overlap: bool) -> Result<Self> {
        self.shard = (c.rank(), c.ranks());
        let trainer = Trainer::new(self.trainer.config.clone())?.with_collective(c);
        self.trainer = if overlap {
            trainer.with_overlapped_sums()
        } else {
            trainer
        };
        Ok(self)
    }

    /// W1: 784-256-256-10 ReLU, softmax cross-entropy, batch 128, SGD lr 0.01.
    pub fn w1() -> Self {
        let data = W1Data::<f32>::new();
        let mut store = ParamStore::new();
        for (i, p) in data.params.into_iter().enumerate() {
            store.add(format!("p{i}"), p).expect("unique names");
        }
        let ds = Dataset::new(data.x, data.labels, 10, "w1").expect("128 labelled rows");
        AnchorStep::new(
            store,
            mlp_over(&[784, 256, 256, 10], Activation::Relu),
            AnchorData::Classes(ds),
            128,
        )
    }

    /// W2: 2-16-16-1 tanh, mean squared error against x₀·x₁, batch 32, SGD lr 0.01.
    pub fn w2() -> Self {
        let x = Tensor::<f32>::splitmix_uniform(&[32, 2], 21, -1.0, 1.0)
            .expect("a workload's fixed shape");
        let y: Vec<f32> = x.data().chunks_exact(2).map(|r| r[0] * r[1]).collect();
        let mut store = ParamStore::new();
        for (i, p) in anchor_mlp_params::<f32>(&[2, 16, 16, 1], 31)
            .into_iter()
            .enumerate()
        {
            store.add(format!("p{i}"), p).expect("unique names");
        }
        let y = Tensor::from_vec(y, &[32, 1]).expect("32 targets");
        AnchorStep::new(
            store,
            mlp_over(&[2, 16, 16, 1], Activation::Tanh),
            AnchorData::Values(x, y),
            32,
        )
    }

    /// The same steps, each recorded on the tape (no replay).
    pub fn eager(mut self) -> Self {
        self.trainer.config.replay = false;
        self
    }

    /// Runs one step and returns the loss of its forward pass (before the update).
    pub fn step(&mut self) -> Result<f32> {
        let batch = self.trainer.config.batch_size;
        let mut objective: Box<dyn Objective> = match &self.data {
            AnchorData::Classes(ds) => {
                Box::new(Classification::new(&self.model, ds, ds, batch, false)?)
            }
            AnchorData::Values(x, y) => Box::new(Regression::new(
                &self.model,
                (x.clone(), y.clone()),
                (x.clone(), y.clone()),
                batch,
                false,
            )?),
        };
        if self.shard.1 > 1 {
            objective.shard(self.shard.0, self.shard.1)?;
        }
        let out = self.trainer.train_step(
            &mut self.tape,
            objective.as_mut(),
            &mut self.store,
            self.optimizer.as_mut(),
            0,
            self.steps,
            None,
            false,
        )?;
        if let Some((_, why)) = out.stop {
            return Err(Error::NonFinite(why));
        }
        self.times = out.times;
        self.steps += 1;
        Ok(out.loss as f32)
    }
}

/// Times steps after the first 11, whose losses are checked against `expected`
/// (`loss@0`, `loss@10`).
fn train_step_row(
    name: &str,
    mut step: AnchorStep,
    cfg: &BenchConfig,
    flops: Option<f64>,
    expected: [f64; 2],
) -> Result<BenchRow> {
    let mut losses = Vec::new();
    for _ in 0..11 {
        losses.push(step.step()?);
    }
    let mut failure = None;
    let (t, busy) = measure_with_cores(cfg.budget, 20, || {
        if let Err(e) = step.step() {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let mut row = BenchRow::new(name, t)
        .with("loss@0", losses[0] as f64)
        .with("loss@10", losses[10] as f64)
        .with("cores_busy", busy);
    row.gflops = flops.map(|f| f / t.median_s / 1e9);
    row.verify_extra("loss@0", expected[0], LOSS_TOL)?
        .verify_extra("loss@10", expected[1], LOSS_TOL)
}

/// W1 training steps, every step recorded on the tape (`w1_step`) or replayed from the
/// first one's recording (`w1_step_replay`).
fn w1_step(cfg: &BenchConfig, replay: bool) -> Result<BenchRow> {
    let (name, step) = match replay {
        true => ("w1_step_replay", AnchorStep::w1()),
        false => ("w1_step", AnchorStep::w1().eager()),
    };
    train_step_row(name, step, cfg, Some(155.1e6), W1_LOSSES)
}

/// W2 training steps, eager or replayed as in [`w1_step`].
fn w2_step(cfg: &BenchConfig, replay: bool) -> Result<BenchRow> {
    let (name, step) = match replay {
        true => ("w2_step_replay", AnchorStep::w2()),
        false => ("w2_step", AnchorStep::w2().eager()),
    };
    train_step_row(name, step, cfg, None, W2_LOSSES)
}

/// W10 (`shared/bench/anchors/w10_hvp.py`): the Hessian-vector product of the W1 loss
/// at the anchors' parameters along the anchor's direction (parameter i: splitmix64
/// uniform in [−1, 1] from stream 101 + i), by forward over reverse, H·v alone as the
/// anchors time it ([`crate::autodiff::hvp_only`]), against one gradient (tape forward +
/// backward). `median_s`
/// is the H·v, `grad_median_s` the gradient; `v_hv` = Σ v·Hv is checked against the
/// anchor's 0.96944.
fn w10_hvp(cfg: &BenchConfig) -> Result<BenchRow> {
    let data = W1Data::<f32>::new();
    let v: Vec<Tensor<f32>> = data
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Tensor::splitmix_uniform(p.shape(), 101 + i as u64, -1.0, 1.0)
                .expect("a workload's fixed shape")
        })
        .collect();
    let hvp = || {
        crate::autodiff::hvp_only(
            |t, p| w1_loss(t, &data.x, &data.labels, p),
            &data.params,
            &v,
        )
    };
    let hv = hvp()?;
    let v_hv: f64 = hv
        .iter()
        .zip(&v)
        .map(|(h, v)| {
            h.data()
                .iter()
                .zip(v.data())
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum::<f64>()
        })
        .sum();
    let mut failure = None;
    let half = cfg.budget / 2;
    let t_hvp = measure(half, 5, || {
        if let Err(e) = hvp() {
            failure = Some(e);
        }
    });
    let mut tape = Tape::<f32>::new();
    let t_grad = measure(half, 5, || {
        tape.clear();
        let ps: Vec<Var<'_, f32>> = data.params.iter().map(|p| tape.var(p.clone())).collect();
        let g = w1_loss(&tape, &data.x, &data.labels, &ps).and_then(|l| tape.backward(l));
        if let Err(e) = g {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    BenchRow::new("w10_hvp", t_hvp)
        .with("grad_median_s", t_grad.median_s)
        .with("v_hv", v_hv)
        .with("hvp_over_grad", t_hvp.median_s / t_grad.median_s)
        .verify("v_hv", 0.96944, v_hv, 5e-4)
}

/// Peak resident memory of this process in bytes (`VmHWM`), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The body of `w7_memory`, run in a fresh process: 200 W1 steps, then the peak RSS and
/// the last loss as one JSON object.
pub fn w7_child() -> Result<serde_json::Value> {
    w1_steps_child(200)
}

/// `steps` W1 training steps in this (fresh) process, then one JSON object: `steps`, the
/// peak RSS (`VmHWM`, bytes) at the start, after building the model and data, and at the
/// end (`peak_rss_bytes`), and the loss returned by the last step (`loss_after_{steps}`).
/// The body of `w7_memory` (200 steps) and of `memory_flat`.
pub fn w1_steps_child(steps: usize) -> Result<serde_json::Value> {
    let before = peak_rss_bytes();
    let mut step = AnchorStep::w1();
    let built = peak_rss_bytes();
    let mut loss = f32::NAN;
    for _ in 0..steps {
        loss = step.step()?;
    }
    Ok(steps_report(steps, before, built, f64::from(loss)))
}

/// The JSON object a training child prints: `steps`, the peak RSS at the end
/// (`peak_rss_bytes`), after start and after building, and the last step's loss.
fn steps_report(
    steps: usize,
    before: Option<u64>,
    built: Option<u64>,
    loss: f64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("steps".into(), steps.into());
    out.insert("peak_rss_bytes".into(), peak_rss_bytes().into());
    out.insert("peak_after_start".into(), before.into());
    out.insert("peak_after_build".into(), built.into());
    out.insert(format!("loss_after_{steps}"), loss.into());
    out.into()
}

/// `steps` training steps of a character LSTM (embedding 32, 2 layers of 128, 32 streams
/// × 64 characters of the embedded Macbeth, Adam 2e-3, clipping at 1.0, the state carried
/// and reset at each epoch) through `Trainer::fit` in this (fresh) process, then the same
/// JSON object as [`w1_steps_child`] (`loss_after_{steps}`: the last step's loss).
pub fn lm_steps_child(steps: usize) -> Result<serde_json::Value> {
    use crate::autodiff::CellKind;
    use crate::data::{Streams, TextCorpus};
    use crate::nn::CharModel;
    use crate::train::{LanguageModel, Position};
    let before = peak_rss_bytes();
    let corpus = TextCorpus::macbeth()?;
    let mut store = ParamStore::new();
    let model = CharModel::new(
        &mut store,
        CellKind::Lstm,
        corpus.vocab().len(),
        32,
        128,
        2,
        0,
    )?;
    let mut objective = LanguageModel::new(
        &model,
        Streams::new(corpus.train(), 32, 64)?,
        Streams::new(corpus.val(), 32, 64)?,
    );
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        schedule: LrSchedule::constant(2e-3),
        clip_norm: Some(1.0),
        max_epochs: None,
        max_steps: Some(steps),
        eval_every: Some(steps.max(1)),
        ..Default::default()
    })?;
    let mut optimizer = OptimizerKind::Adam.build::<f32>(2e-3, None)?;
    let built = peak_rss_bytes();
    let report = trainer.fit(
        &mut objective,
        &mut store,
        optimizer.as_mut(),
        Position::default(),
        &mut [],
    )?;
    let loss = report.step_losses.last().copied().unwrap_or(f64::NAN);
    Ok(steps_report(steps, before, built, loss))
}

/// Runs `chainrule <args>` in a fresh process with two rayon threads and returns the
/// JSON object it prints and the seconds it took.
fn child_json(
    cfg: &BenchConfig,
    workload: &'static str,
    args: &[&str],
) -> Result<(serde_json::Value, f64)> {
    let exe = cfg.exe.clone().ok_or_else(|| {
        Error::invalid(
            workload,
            "needs the chainrule executable to start a fresh process",
        )
    })?;
    let t0 = Instant::now();
    let out = std::process::Command::new(&exe)
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .map_err(|e| Error::Io {
            path: exe.display().to_string(),
            cause: e,
        })?;
    let secs = t0.elapsed().as_secs_f64();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    match parsed {
        Some(v) if out.status.success() && v.is_object() => Ok((v, secs)),
        _ => Err(Error::invalid(
            workload,
            format!(
                "the child process `{} {}` failed ({}) or printed no result: {}",
                exe.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
    }
}

/// A row for a fresh-process workload: the child's wall time, one call.
fn once(name: &str, secs: f64) -> BenchRow {
    BenchRow::new(
        name,
        Timing {
            median_s: secs,
            min_s: secs,
            reps: 1,
        },
    )
}

fn w7_memory(cfg: &BenchConfig) -> Result<BenchRow> {
    let (v, secs) = child_json(cfg, "w7_memory", &["bench", "--w7-child"])?;
    let mut row = once("w7_memory", secs);
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            row = row.with(k, val.clone());
        }
    }
    row.verify_extra("loss_after_200", W7_LOSS_200, LOSS_TOL)
}

/// Training in two fresh processes, 1,000 and 10,000 steps (`child_flag`: W1, or the
/// character LSTM of [`lm_steps_child`]): the peak RSS must not grow with the number of
/// steps (at most 5% more after 10,000 than after 1,000).
fn memory_flat(cfg: &BenchConfig, name: &'static str, child_flag: &str) -> Result<BenchRow> {
    const STEPS: [usize; 2] = [1_000, 10_000];
    let mut row = once(name, 0.0);
    let mut peaks = [0u64; 2];
    let mut total = 0.0;
    for (peak, steps) in peaks.iter_mut().zip(STEPS) {
        let (v, secs) = child_json(cfg, name, &["bench", child_flag, &steps.to_string()])?;
        total += secs;
        let field = |key: &str| v.get(key).and_then(|x| x.as_u64());
        *peak = field("peak_rss_bytes")
            .ok_or_else(|| Error::invalid(name, format!("the child reported no peak RSS: {v}")))?;
        let built = field("peak_after_build").unwrap_or(0);
        let loss = v.get(format!("loss_after_{steps}")).cloned();
        row = row
            .with(&format!("peak_rss_{steps}_steps"), *peak)
            .with(
                &format!("growth_during_{steps}_steps"),
                peak.saturating_sub(built),
            )
            .with(&format!("loss_after_{steps}"), loss.unwrap_or_default())
            .with(&format!("seconds_{steps}_steps"), secs);
    }
    (row.median_s, row.min_s) = (total, total);
    let ratio = peaks[1] as f64 / peaks[0] as f64;
    row.with("peak_ratio", ratio)
        .verify_at_most("peak_ratio", 1.05, ratio)
}

/// W4's `f(x) = Σ sin(xᵢ) xᵢ² + Σ_{i<N−1} [100 (xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)²]` on a tape.
pub fn w4_f<'t, T: Element>(x: Var<'t, T>) -> Result<Var<'t, T>> {
    let n = x.shape()[0];
    let x2 = x.mul(x)?;
    let first = x.sin().mul(x2)?.sum_all();
    if n < 2 {
        return Ok(first);
    }
    let head = x.narrow(0, 0, n - 1)?;
    let tail = x.narrow(0, 1, n - 1)?;
    let a = tail
        .sub(x2.narrow(0, 0, n - 1)?)?
        .powf(2.0)
        .mul_scalar(100.0);
    let b = head.neg().add_scalar(1.0).powf(2.0);
    first.add(a.add(b)?.sum_all())
}

/// W4's input: `N` values uniform in [-1, 1) from splitmix64 stream 51.
pub fn w4_input<T: Element>(n: usize) -> Tensor<T> {
    Tensor::splitmix_uniform(&[n], 51, -1.0, 1.0).expect("a workload's fixed shape")
}

/// W5's `g(t)_k = sin(k t) exp(−t/k)`, k = 1..M, for a one-element `t`.
pub fn w5_g<'t, T: Element>(t: Var<'t, T>, m: usize) -> Result<Var<'t, T>> {
    let k = Tensor::<T>::arange(m)?.add_scalar(1.0);
    let inv_k = k.map(|v| T::one() / v);
    let tape = t.tape();
    let kt = tape.constant(k).mul(t)?;
    let decay = tape.constant(inv_k).mul(t)?.neg().exp();
    kt.sin().mul(decay)
}

/// The W1 loss gradient on the tensor engine in f64, for the first `batch` samples.
pub fn w1_grad_f64(
    params: &[f64],
    x: &Tensor<f64>,
    labels: &[usize],
    batch: usize,
) -> Result<Vec<f64>> {
    let data = W1Data::<f64>::new();
    let tape = Tape::<f64>::new();
    let mut at = 0;
    let vars: Vec<Var<'_, f64>> = data
        .params
        .iter()
        .map(|p| {
            let t = Tensor::from_vec(params[at..at + p.len()].to_vec(), p.shape())
                .expect("sizes match");
            at += p.len();
            tape.var(t)
        })
        .collect();
    let xb = x.narrow(0, 0, batch)?;
    let loss = w1_loss(&tape, &xb, &labels[..batch], &vars)?;
    let g = tape.backward(loss)?;
    let mut flat = Vec::new();
    for &v in &vars {
        flat.extend_from_slice(g.wrt(v)?.data());
    }
    Ok(flat)
}

/// Hessian-vector product of the W1 loss (first `batch` samples) at the anchors' initial
/// parameters along a seeded random direction, by forward-over-reverse on the tensor
/// engine ([`crate::autodiff::hvp`]), and the central difference of tensor-engine
/// gradients along the same direction. Returns (hvp, difference, max |hvp − difference| /
/// max |difference|).
pub fn w1_hvp_check(batch: usize) -> Result<(Vec<f64>, Vec<f64>, f64)> {
    let data = W1Data::<f64>::new();
    let theta: Vec<f64> = data.params.iter().flat_map(|p| p.to_vec()).collect();
    let v = Tensor::<f64>::randn(&[theta.len()], 7)?.to_vec();
    let mut at = 0;
    let directions: Vec<Tensor<f64>> = data
        .params
        .iter()
        .map(|p| {
            let part = Tensor::from_vec(v[at..at + p.len()].to_vec(), p.shape());
            at += p.len();
            part
        })
        .collect::<Result<_>>()?;
    let xb = data.x.narrow(0, 0, batch)?;
    let labels = &data.labels[..batch];
    let r = crate::autodiff::hvp(|t, p| w1_loss(t, &xb, labels, p), &data.params, &directions)?;
    let hv: Vec<f64> = r.hv.iter().flat_map(|t| t.to_vec()).collect();
    // a small step: ReLU's derivative jumps where a pre-activation crosses zero, and a
    // step that crosses one makes the difference of gradients meaningless there
    let h = 1e-7;
    let shifted = |sign: f64| -> Vec<f64> {
        theta
            .iter()
            .zip(&v)
            .map(|(t, d)| t + sign * h * d)
            .collect()
    };
    let gp = w1_grad_f64(&shifted(1.0), &data.x, &data.labels, batch)?;
    let gm = w1_grad_f64(&shifted(-1.0), &data.x, &data.labels, batch)?;
    let fd: Vec<f64> = gp
        .iter()
        .zip(&gm)
        .map(|(a, b)| (a - b) / (2.0 * h))
        .collect();
    let scale = fd.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = hv
        .iter()
        .zip(&fd)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    Ok((hv, fd, err))
}

/// W9 (`shared/bench/anchors/w9_char_lstm.py`): embedding 64, a 2-layer LSTM of 256, a
/// linear head, 32 streams × 64 characters of the tragedies, through the trainer's step
/// (`Trainer::train_step` on a `LanguageModel`: forward, loss, backward, clipping at 1.0,
/// Adam 2e-3), windows in order with the state carried; or the forward pass and loss of a
/// window alone. Checks: the first loss is within 0.25 of ln(vocabulary) (PyTorch's
/// initialisation predicts nearly uniformly), and the training step lowers the loss.
fn w9(cfg: &BenchConfig, train: bool) -> Result<BenchRow> {
    use crate::autodiff::CellKind;
    use crate::data::{Streams, TextCorpus};
    use crate::nn::CharModel;
    use crate::train::LanguageModel;
    let corpus = match &cfg.text {
        Some(file) => TextCorpus::load(file)?,
        None => TextCorpus::tragedies()?,
    };
    let vocab = corpus.vocab().len();
    let train_streams = Streams::new(corpus.train(), 32, 64)?;
    let val = Streams::new(corpus.val(), 32, 64)?;
    let mut store = ParamStore::new();
    let model = CharModel::new(&mut store, CellKind::Lstm, vocab, 64, 256, 2, 0)?;
    let mut objective = LanguageModel::new(&model, train_streams, val);
    objective.start_epoch(0, 0)?;
    let windows = objective.batches_per_epoch();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        schedule: LrSchedule::constant(2e-3),
        clip_norm: Some(1.0),
        divergence_factor: None,
        ..Default::default()
    })?;
    let mut optimizer = OptimizerKind::Adam.build::<f32>(2e-3, None)?;
    let mut tape = Tape::new();
    let (mut step, mut losses) = (0usize, Vec::new());
    let mut failure = None;
    let mut run = |step: &mut usize, losses: &mut Vec<f64>| -> Result<()> {
        let batch = *step % windows;
        if train {
            let out = trainer.train_step(
                &mut tape,
                &mut objective,
                &mut store,
                optimizer.as_mut(),
                batch,
                *step,
                None,
                false,
            )?;
            losses.push(out.loss);
        } else {
            tape.clear();
            let p = store.leaves(&tape);
            let (loss, _) = objective.batch_loss(&p, batch, &mut crate::nn::ForwardCtx::eval())?;
            losses.push(loss.item()? as f64);
        }
        *step += 1;
        Ok(())
    };
    for _ in 0..20 {
        run(&mut step, &mut losses)?;
    }
    let t = measure(cfg.budget, 5, || {
        if failure.is_none()
            && let Err(e) = run(&mut step, &mut losses)
        {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let name = if train { "w9_step" } else { "w9_forward" };
    let uniform = (vocab as f64).ln();
    let mut row = BenchRow::new(name, t)
        .with("loss@0", losses[0])
        .with("ln_vocab", uniform)
        .with("chars_per_s", 32.0 * 64.0 / t.median_s)
        .verify("loss@0", uniform, losses[0], 0.25)?;
    if train {
        let last = losses[19];
        row = row
            .with("loss@19", last)
            .verify_at_most("loss@19", losses[0] - 0.3, last)?;
    }
    Ok(row)
}

/// Workloads run by name only, under `mpirun` in a build with the `mpi` feature.
pub const MPI_WORKLOADS: &[&str] = &["allreduce", "w1_step_dp"];

/// Sums of 4 KiB to 64 MiB of f32 across the processes of `c` through
/// [`Collective::sum_f32`] (the trainer's path): the median time of each size, the
/// algorithmic bandwidth (bytes / time) and the bus bandwidth of a ring all-reduce,
/// 2(N−1)/N · bytes / time. Every process must call this; rank 0's rows are the ones to
/// print. Each sum is checked: every element must come out as 1 + 2 + … + N.
pub fn allreduce(cfg: &BenchConfig, c: &dyn crate::train::Collective) -> Result<Vec<BenchRow>> {
    let ranks = c.ranks();
    let want = (ranks * (ranks + 1) / 2) as f32;
    let mine = (c.rank() + 1) as f32;
    let mut rows = Vec::new();
    for kib in [4usize, 16, 64, 256, 1024, 4096, 16384, 65536] {
        let n = kib * 1024 / 4;
        let mut buf = vec![mine; n];
        let once = |buf: &mut Vec<f32>| -> Result<f64> {
            buf.fill(mine);
            let t = Instant::now();
            c.sum_f32(buf)?;
            Ok(t.elapsed().as_secs_f64())
        };
        once(&mut buf)?;
        // every process must make the same number of calls: rank 0's estimate decides
        let mut estimate = [once(&mut buf)? as f32];
        c.broadcast_f32(&mut estimate)?;
        let per_size = cfg.budget.as_secs_f64() / 8.0;
        let reps = (per_size / f64::from(estimate[0]).max(1e-7)).clamp(5.0, 10_000.0) as usize;
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            samples.push(once(&mut buf)?);
        }
        let wrong = buf.iter().filter(|&&v| v != want).count();
        if wrong > 0 {
            return Err(Error::invalid(
                "bench allreduce",
                format!("{wrong} of {n} sums differ from {want} ({kib} KiB)"),
            ));
        }
        samples.sort_by(f64::total_cmp);
        let t = Timing {
            median_s: samples[samples.len() / 2],
            min_s: samples[0],
            reps,
        };
        let bytes = (n * 4) as f64;
        let mut row = BenchRow::new(format!("allreduce/{kib}KiB"), t)
            .with("ranks", ranks)
            .with("bytes", bytes)
            .with(
                "bus_gbps",
                2.0 * (ranks as f64 - 1.0) / ranks as f64 * bytes / t.median_s / 1e9,
            );
        row.gbps = Some(bytes / t.median_s / 1e9);
        rows.push(row);
    }
    Ok(rows)
}

/// W1 training steps data-parallel over the processes that `collective()` joins (the
/// global batch of 128 split between them), with the gradient sums after the backward
/// sweep (`w1_step_dp/blocking`) and during it (`w1_step_dp/overlapped`). Each mode runs
/// a fixed number of steps (the processes must make the same calls); the losses of steps
/// 0 and 10 are checked against the single-process anchor. `all_reduce_s` is the median
/// time a step waits for its sums after the sweep; `hidden` is the share of the blocking
/// sums' time that the overlap removed from the step:
/// (blocking step − overlapped step) / blocking all-reduce.
pub fn w1_step_dp(
    collective: &dyn Fn() -> Box<dyn crate::train::Collective>,
) -> Result<Vec<BenchRow>> {
    const STEPS: usize = 400;
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut blocking = (f64::NAN, f64::NAN);
    for overlap in [false, true] {
        let mut step = AnchorStep::w1().distributed(collective(), overlap)?;
        let mut losses = Vec::new();
        for _ in 0..11 {
            losses.push(step.step()?);
        }
        let (mut total, mut waits, mut sweeps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..STEPS {
            let t = Instant::now();
            step.step()?;
            total.push(t.elapsed().as_secs_f64());
            waits.push(step.times.all_reduce);
            sweeps.push(step.times.backward);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let min = total.iter().copied().fold(f64::INFINITY, f64::min);
        let t = Timing {
            median_s: median(&mut total),
            min_s: min,
            reps: STEPS,
        };
        let name = if overlap { "overlapped" } else { "blocking" };
        let mut row = BenchRow::new(format!("w1_step_dp/{name}"), t)
            .with("ranks", step.shard.1)
            .with("all_reduce_s", median(&mut waits))
            .with("backward_s", median(&mut sweeps))
            .with("loss@0", losses[0] as f64)
            .with("loss@10", losses[10] as f64);
        if overlap {
            let hidden = (blocking.0 - t.median_s) / blocking.1;
            row = row.with("hidden", hidden);
        } else {
            blocking = (t.median_s, median(&mut waits));
        }
        rows.push(
            row.verify_extra("loss@0", W1_LOSSES[0], LOSS_TOL)?
                .verify_extra("loss@10", W1_LOSSES[1], LOSS_TOL)?,
        );
    }
    Ok(rows)
}

/// W8's recipe for one epoch: MNIST standardised with one mean and deviation, MLP
/// 784-256-256-10 (ReLU, PyTorch's initialisation, seed 0), Adam 1e-3, batch 128, clipping
/// at 1.0 (chainrule's default), 469 steps through [`Trainer::fit`], then the evaluation
/// on the 10,000 test images, as `w8_mnist.py` does each epoch. Each repetition starts
/// from the same fresh model; the check is its test accuracy after the epoch.
fn mnist_epoch(cfg: &BenchConfig) -> Result<BenchRow> {
    use crate::data::{Standardizer, load_mnist};
    use crate::nn::Init;
    use crate::train::Position;
    let Some(dir) = &cfg.mnist else {
        return Err(Error::invalid(
            "mnist_epoch",
            "needs MNIST, which the repository does not hold: give its folder with --mnist DIR",
        ));
    };
    let (train, test) = load_mnist(dir)?;
    let s = Standardizer::fit_global(&train);
    let (train, test) = (s.apply(&train)?, s.apply(&test)?);
    let trainer = Trainer::new(TrainConfig {
        batch_size: 128,
        schedule: LrSchedule::constant(1e-3),
        clip_norm: Some(1.0),
        max_epochs: Some(1),
        ..Default::default()
    })?;
    let epoch = || -> Result<(f64, usize)> {
        let mut store = ParamStore::new();
        let model = Mlp::new(
            &mut store,
            &[784, 256, 256, 10],
            Activation::Relu,
            Init::TorchDefault,
            0,
        )?;
        let mut objective = Classification::new(&model, &train, &test, 128, true)?;
        let mut optimizer = OptimizerKind::Adam.build::<f32>(1e-3, None)?;
        let r = trainer.fit(
            &mut objective,
            &mut store,
            optimizer.as_mut(),
            Position::default(),
            &mut [],
        )?;
        Ok((r.final_val_metric, r.steps))
    };
    let (accuracy, steps) = epoch()?;
    let mut failure = None;
    let (t, busy) = measure_with_cores(cfg.budget, 3, || {
        if failure.is_none()
            && let Err(e) = epoch()
        {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    BenchRow::new("mnist_epoch", t)
        .with("steps", steps)
        .with("test_accuracy", accuracy)
        .with("cores_busy", busy)
        .with("samples_per_s", train.len() as f64 / t.median_s)
        .verify("test_accuracy", 0.97, accuracy, 0.02)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_and_w2_steps_reproduce_the_anchor_losses() {
        // results.md: W1 loss@0 2.30215, loss@10 2.29226; W2 loss@0 0.17359, loss@10 0.11585
        let mut w1 = AnchorStep::w1();
        let l1: Vec<f32> = (0..11).map(|_| w1.step().unwrap()).collect();
        assert!(
            (l1[0] - 2.30215).abs() < 5e-5 && (l1[10] - 2.29226).abs() < 5e-5,
            "{l1:?}"
        );
        let mut w2 = AnchorStep::w2();
        let l2: Vec<f32> = (0..11).map(|_| w2.step().unwrap()).collect();
        assert!(
            (l2[0] - 0.17359).abs() < 5e-5 && (l2[10] - 0.11585).abs() < 5e-5,
            "{l2:?}"
        );
    }

    #[test]
    fn w3_reproduces_the_anchor_loss_and_gradient() {
        // results.md: n = 100000, loss 106.2014, dL/dw0 0.482377
        let row = w3_scalar(
            100_000,
            &BenchConfig {
                budget: Duration::from_millis(1),
                ..Default::default()
            },
        );
        let loss = row.extra["loss"].as_f64().unwrap();
        let g = row.extra["dL/dw0"].as_f64().unwrap();
        assert!(
            (loss - 106.2014).abs() < 1e-3 && (g - 0.482377).abs() < 1e-6,
            "{loss} {g}"
        );
    }

    #[test]
    fn w4_and_w5_gradients_match_their_formulas() {
        let x = w4_input::<f64>(6);
        let g = crate::autodiff::grad(|_, v| w4_f(v), &x).unwrap();
        let xd = x.data();
        for i in 0..6 {
            let mut want = xd[i].cos() * xd[i] * xd[i] + 2.0 * xd[i] * xd[i].sin();
            if i + 1 < 6 {
                want += -400.0 * xd[i] * (xd[i + 1] - xd[i] * xd[i]) - 2.0 * (1.0 - xd[i]);
            }
            if i > 0 {
                want += 200.0 * (xd[i] - xd[i - 1] * xd[i - 1]);
            }
            assert!(
                (g.data()[i] - want).abs() < 1e-12 * want.abs().max(1.0),
                "{i}"
            );
        }
        let t = Tensor::<f64>::from_vec(vec![0.5], &[1]).unwrap();
        let (j, mode) = crate::autodiff::jacobian(|_, v| w5_g(v, 50), &t).unwrap();
        assert_eq!(mode, crate::autodiff::JacobianMode::Forward);
        for k in 1..=50 {
            let kf = k as f64;
            let want = kf * (kf * 0.5).cos() * (-0.5 / kf).exp()
                - (kf * 0.5).sin() * (-0.5 / kf).exp() / kf;
            assert!((j.data()[k - 1] - want).abs() < 1e-12, "{k}");
        }
    }

    #[test]
    fn w1_hvp_matches_differences_of_the_gradient() {
        let (hv, _, err) = w1_hvp_check(128).unwrap();
        assert_eq!(hv.len(), 269_322);
        assert!(err <= 1e-5, "relative error {err}");
    }

    #[test]
    fn checks_fail_with_the_workload_and_both_values() {
        let t = Timing {
            median_s: 1.0,
            min_s: 1.0,
            reps: 1,
        };
        let row = BenchRow::new("w1_step", t).with("loss@0", 2.31);
        let e = row.verify_extra("loss@0", 2.30215, 5e-5).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("w1_step") && msg.contains("2.30215") && msg.contains("2.31"),
            "{msg}"
        );
        let ok = BenchRow::new("w2_step", t)
            .with("loss@0", 0.17361)
            .verify_extra("loss@0", 0.17359, 5e-5)
            .unwrap();
        assert_eq!(ok.check["loss@0"]["expected"], 0.17359);
        assert_eq!(ok.check["loss@0"]["got"], 0.17361);
        // a missing value fails too
        assert!(
            BenchRow::new("x", t)
                .verify_extra("loss", 1.0, 1.0)
                .is_err()
        );
        assert!(
            BenchRow::new("memory_flat", t)
                .verify_at_most("peak_ratio", 1.05, 1.06)
                .is_err()
        );
    }

    #[test]
    fn product_error_finds_a_wrong_entry_in_every_layout() {
        use MatLayout::{Normal, Transposed};
        // small (every entry compared) and large (a sample of 256)
        for (m, n, k) in [(7, 5, 3), (128, 256, 40)] {
            let a = Tensor::<f32>::splitmix_uniform(&[m, k], 1, -1.0, 1.0).unwrap();
            let b = Tensor::<f32>::splitmix_uniform(&[k, n], 2, -1.0, 1.0).unwrap();
            let (at, bt) = (a.t().unwrap(), b.t().unwrap());
            for (lhs, rhs) in [
                ((a.data(), Normal), (b.data(), Normal)),
                ((at.data(), Transposed), (bt.data(), Transposed)),
                ((a.data(), Normal), (bt.data(), Transposed)),
                ((at.data(), Transposed), (b.data(), Normal)),
            ] {
                let mut c = a.matmul(&b).unwrap().to_vec();
                let (err, entries) = product_error(&c, m, n, k, lhs, rhs);
                assert!(err <= PRODUCT_TOL, "{err}");
                assert_eq!(entries, if m * n <= 4096 { m * n } else { 256 });
                if m * n <= 4096 {
                    // every entry is compared: one wrong entry is enough
                    let mut one = c.clone();
                    one[17] += 1e-2;
                    assert!(product_error(&one, m, n, k, lhs, rhs).0 > PRODUCT_TOL);
                }
                // every entry is wrong: any sample sees it
                for v in c.iter_mut() {
                    *v *= 1.001;
                }
                assert!(product_error(&c, m, n, k, lhs, rhs).0 > PRODUCT_TOL);
                c.fill(f32::NAN);
                assert!(product_error(&c, m, n, k, lhs, rhs).0.is_nan());
            }
        }
    }

    #[test]
    fn w1_loss_matches_the_anchor() {
        let data = W1Data::<f32>::new();
        let tape = Tape::new();
        let ps: Vec<_> = data.params.iter().map(|p| tape.var(p.clone())).collect();
        let loss = w1_loss(&tape, &data.x, &data.labels, &ps)
            .unwrap()
            .item()
            .unwrap();
        // results.md: loss@0 = 2.30215 for every framework
        assert!((loss - 2.30215).abs() < 5e-5, "{loss}");
    }
}
