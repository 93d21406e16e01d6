//! Benchmark workloads, shared by `chainrule bench` and `cargo bench`. They reproduce the
//! workloads of the Python anchors (`shared/bench/anchors/README.md`) with the same
//! splitmix64 data, so that the ratios against PyTorch, JAX and NumPy mean something.

use chainrule::autodiff::{Tape, Trace, Var};
use chainrule::data::Dataset;
use chainrule::error::{Error, Result};
use chainrule::nn::{Activation, Linear, Mlp, ParamId, ParamStore};
use chainrule::optim::{LrSchedule, Optimizer, OptimizerKind};
use chainrule::tensor::{Element, SplitMix64, Tensor};
use chainrule::train::{
    Classification, Collective, Objective, PhaseTimes, Regression, TrainConfig, Trainer,
};
use serde::Serialize;
use std::time::{Duration, Instant};

mod cnn;
#[cfg_attr(not(feature = "mpi"), allow(dead_code))] // its workloads run only in an `mpi` build
mod dp;
mod functions;
mod kernels;
mod lm;
mod memory;
mod mlp;
mod mnist;
mod roofline;

use cnn::*;
pub use dp::*;
pub use functions::*;
use kernels::*;
use lm::*;
pub use memory::*;
pub use mlp::*;
use mnist::*;
pub use roofline::{Peaks, measure_peaks};

/// How a reference product reads an operand: as stored, or transposed.
#[derive(Clone, Copy, Debug)]
pub enum MatLayout {
    /// Row-major as stored.
    Normal,
    /// The transpose of the row-major buffer.
    Transposed,
}

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
    /// Floating-point operations of one call, counted from the shapes (a multiply-add
    /// counts 2), where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
    /// Bytes one call reads and writes, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<f64>,
    /// The machine's peak that bounds this row's arithmetic ([`Peaks`]), GFLOP/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gflops: Option<f64>,
    /// The machine's peak bandwidth that bounds this row, GB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gbps: Option<f64>,
    /// The achieved GFLOP/s over `peak_gflops` (or GB/s over `peak_gbps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_of_peak: Option<f64>,
    /// Which peak applies: the precision and thread count of the row's arithmetic.
    #[serde(skip)]
    pub runs_on: RunsOn,
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

/// What a row's arithmetic runs on, to pick its peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunsOn {
    /// f32 on every thread of the pool (most workloads).
    #[default]
    F32AllCores,
    /// f32 on one thread.
    F32OneCore,
}

impl BenchRow {
    /// Fills `flops` and `bytes` from the throughputs where only those were set, and
    /// places the row against the peak that bounds it.
    pub fn place(&mut self, peaks: &Peaks) {
        if self.flops.is_none() {
            self.flops = self.gflops.map(|g| g * self.median_s * 1e9);
        }
        if self.gflops.is_none() {
            self.gflops = self.flops.map(|f| f / self.median_s / 1e9);
        }
        if self.bytes.is_none() {
            self.bytes = self.gbps.map(|g| g * self.median_s * 1e9);
        }
        if let Some(g) = self.gflops {
            let peak = match self.runs_on {
                RunsOn::F32AllCores => peaks.f32_all_gflops,
                RunsOn::F32OneCore => peaks.f32_one_gflops,
            };
            self.peak_gflops = Some(peak);
            self.share_of_peak = Some(g / peak);
        } else if let Some(g) = self.gbps {
            let peak = match self.runs_on {
                RunsOn::F32OneCore => peaks.triad_one_gbps,
                _ => peaks.triad_all_gbps,
            };
            self.peak_gbps = Some(peak);
            self.share_of_peak = Some(g / peak);
        }
    }

    fn new(name: impl Into<String>, t: Timing) -> Self {
        BenchRow {
            name: name.into(),
            median_s: t.median_s,
            min_s: t.min_s,
            reps: t.reps,
            gflops: None,
            gbps: None,
            flops: None,
            bytes: None,
            peak_gflops: None,
            peak_gbps: None,
            share_of_peak: None,
            runs_on: RunsOn::F32AllCores,
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
pub(super) const W1_LOSSES: [f64; 2] = [2.30215, 2.29226];
pub(super) const W2_LOSSES: [f64; 2] = [0.17359, 0.11585];
pub(super) const LOSS_TOL: f64 = 5e-5;
pub(super) const W3_LOSS: (f64, f64) = (106.2014, 1e-3);
pub(super) const W3_DW0: (f64, f64) = (0.482377, 1e-6);
pub(super) const W7_LOSS_200: f64 = 2.11580;

/// Largest error a benchmarked product may have against its f64 reference, relative to
/// the reference's largest entry.
pub(super) const PRODUCT_TOL: f64 = 1e-4;

/// How far `got` (`m×n`, row-major) is from `lhs·rhs` (`m×k · k×n`, each buffer read as
/// its layout says) computed with f64 dot products: the largest difference relative to
/// the largest reference entry, over every entry of products with at most 4096 of them
/// and over 256 entries drawn from splitmix64 stream 97 otherwise. Returns the error
/// (NaN when `got` has a NaN or an infinity) and the number of entries compared.
pub(super) fn product_error(
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

/// [`measure`] of a step that can fail: after the first error the remaining calls do
/// nothing, and the error is the result.
pub fn try_measure(
    budget: Duration,
    min_reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    let mut failure = None;
    let t = measure(budget, min_reps, || {
        if failure.is_none()
            && let Err(e) = f()
        {
            failure = Some(e);
        }
    });
    failure.map_or(Ok(t), Err)
}

/// [`try_measure`], plus how many cores were busy on average while it ran (CPU seconds
/// of the process over wall seconds; `None` where the CPU time is not reported).
pub fn try_measure_with_cores(
    budget: Duration,
    min_reps: usize,
    f: impl FnMut() -> Result<()>,
) -> Result<(Timing, Option<f64>)> {
    let (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
    let t = try_measure(budget, min_reps, f)?;
    let wall = wall0.elapsed().as_secs_f64();
    let busy = cpu0
        .zip(process_cpu_seconds())
        .map(|(a, b)| (b - a) / wall.max(1e-9));
    Ok((t, busy))
}

/// Names of every workload, in the order `chainrule bench` runs them.
pub const WORKLOADS: &[&str] = &[
    "matmul_256",
    "matmul_1024",
    "mlp_gemm",
    "w11_gemm",
    "w12_gemm",
    "tape_chain",
    "tape_chain_replay",
    "elementwise_1m",
    "w1_forward",
    "w1_forward_backward",
    "w1_step",
    "w1_step_replay",
    "w1_step_replay_idle_worker",
    "w2_step",
    "w2_step_replay",
    "w10_hvp",
    "w7_memory",
    "memory_flat",
    "memory_flat_lm",
    "memory_flat_gpt",
    "w3_scalar",
    "w9_forward",
    "w9_step",
    "w11_step",
    "mnist_epoch",
    "w12_step",
    "w12_conv2",
    "mnist_cnn_epoch",
];

/// Settings shared by all workloads.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Time budget of one measurement.
    pub budget: Duration,
    /// The `chainrule` executable, for workloads that need a fresh process (`w7_memory`,
    /// `memory_flat`).
    pub exe: Option<std::path::PathBuf>,
    /// The text of W9 and W11 (`w9_forward`, `w9_step`, `w11_step`); `None`: the embedded tragedies, the
    /// anchor's text.
    pub text: Option<std::path::PathBuf>,
    /// The MNIST folder of W8 and W12 (`mnist_epoch`, `w12_step`, `mnist_cnn_epoch`),
    /// which the repository does not hold.
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
        // W1's layers: batch 128, 784-256-256-10
        "mlp_gemm" => layer_gemm(
            cfg,
            "mlp_gemm",
            &[(128, 784, 256), (128, 256, 256), (128, 256, 10)],
        )?,
        // W11's: 12 windows of 64 at width 128, the attention's q, k, v (384), its output, the
        // MLP's up (512) and down projections, the tied head (73 characters)
        "w11_gemm" => layer_gemm(
            cfg,
            "w11_gemm",
            &[
                (768, 128, 384),
                (768, 128, 128),
                (768, 128, 512),
                (768, 512, 128),
                (768, 128, 73),
            ],
        )?,
        // W12's: conv2's product for one sample (64 filters of 32·3·3 taps by 24·24
        // positions), fc1 and fc2 at batch 64
        "w12_gemm" => layer_gemm(
            cfg,
            "w12_gemm",
            &[(64, 288, 576), (64, 9216, 128), (64, 128, 10)],
        )?,
        "tape_chain" => vec![tape_chain(100_000, cfg)?],
        "tape_chain_replay" => vec![tape_chain_replay(100_000, cfg)?],
        "elementwise_1m" => vec![elementwise_1m(cfg)?],
        "w1_forward" => vec![w1(cfg, false)?],
        "w1_forward_backward" => vec![w1(cfg, true)?],
        "w1_step" => vec![w1_step(cfg, false)?],
        "w1_step_replay" => vec![w1_step(cfg, true)?],
        "w1_step_replay_idle_worker" => vec![mlp::w1_step_replay_idle_worker(cfg)?],
        "w2_step" => vec![w2_step(cfg, false)?],
        "w2_step_replay" => vec![w2_step(cfg, true)?],
        "w10_hvp" => vec![w10_hvp(cfg)?],
        "w7_memory" => vec![w7_memory(cfg)?],
        "memory_flat" => vec![memory_flat(cfg, "memory_flat", "--w1-steps-child")?],
        "memory_flat_lm" => vec![memory_flat(cfg, "memory_flat_lm", "--lm-steps-child")?],
        "memory_flat_gpt" => vec![memory_flat(cfg, "memory_flat_gpt", "--gpt-steps-child")?],
        "w9_forward" => vec![w9(cfg, false)?],
        "w9_step" => vec![w9(cfg, true)?],
        "w11_step" => vec![w11(cfg)?],
        "mnist_epoch" => vec![mnist_epoch(cfg)?],
        "w12_step" => vec![w12_step(cfg)?],
        "w12_conv2" => w12_conv2(cfg)?,
        "mnist_cnn_epoch" => vec![mnist_cnn_epoch(cfg)?],
        "w3_scalar" => vec![
            w3_scalar(100_000, cfg)
                .verify_extra("loss", W3_LOSS.0, W3_LOSS.1)?
                .verify_extra("dL/dw0", W3_DW0.0, W3_DW0.1)?,
        ],
        other => {
            return Err(chainrule::error::Error::invalid(
                "bench",
                format!(
                    "unknown workload '{other}'; known: {}",
                    WORKLOADS.join(", ")
                ),
            ));
        }
    })
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
        let g = chainrule::autodiff::grad(|_, v| w4_f(v), &x).unwrap();
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
        let (j, mode) = chainrule::autodiff::jacobian(|_, v| w5_g(v, 50), &t).unwrap();
        assert_eq!(mode, chainrule::autodiff::JacobianMode::Forward);
        for k in 1..=50 {
            let kf = k as f64;
            let want = kf * (kf * 0.5).cos() * (-0.5 / kf).exp()
                - (kf * 0.5).sin() * (-0.5 / kf).exp() / kf;
            assert!((j.data()[k - 1] - want).abs() < 1e-12, "{k}");
        }
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
