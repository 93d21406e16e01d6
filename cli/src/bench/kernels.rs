//! Kernel workloads: matrix products (square and the MLP's shapes in every layout),
//! the tape's bookkeeping per op (recorded and replayed) and an elementwise pass.

use super::*;

/// `n×n · n×n` through [`Tensor::matmul`] (its threading threshold and kernel choice
/// included), checked against f64 dot products.
pub(super) fn square_matmul(n: usize, cfg: &BenchConfig) -> Result<BenchRow> {
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
        .with("threads", chainrule::tensor::matmul_threads(n, n, n))
        .with("gflops_best", flops / t.min_s / 1e9);
    row.gflops = Some(flops / t.median_s / 1e9);
    if chainrule::tensor::matmul_threads(n, n, n) == 1 {
        row.runs_on = RunsOn::F32OneCore;
    }
    row.verify_product(err)
}

/// The time of the backward sweep of `record(x, w)` for one operand's gradient (`w`'s
/// with `wrt_w`, else `x`'s; the other is a constant), seeded with `g`, and that gradient.
pub(super) fn one_gradient(
    tape: &mut Tape<f32>,
    (x, w, g): (&Tensor<f32>, &Tensor<f32>, &Tensor<f32>),
    wrt_w: bool,
    (budget, min_reps): (Duration, usize),
    record: impl for<'t> FnOnce(Var<'t, f32>, Var<'t, f32>) -> Result<Var<'t, f32>>,
) -> Result<(Timing, Tensor<f32>)> {
    tape.clear();
    let (xv, wv) = if wrt_w {
        (tape.constant(x.clone()), tape.var(w.clone()))
    } else {
        (tape.var(x.clone()), tape.constant(w.clone()))
    };
    let yv = record(xv, wv)?;
    let wrt = if wrt_w { wv } else { xv };
    let mut grad = Tensor::zeros(&wrt.shape())?;
    let mut failure = None;
    let t = measure(budget, min_reps, || {
        match tape.backward_with(yv, g.clone()) {
            Ok(grads) => grad = grads.wrt(wrt).expect("one tape"),
            Err(e) => failure = Some(e),
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok((t, grad)),
    }
}

/// The three products of each layer through the tape: `A·B` is the forward `X·W`
/// recorded by `Var::matmul`; `Aᵀ·B` (`dW = Xᵀ·G`) and `A·Bᵀ` (`dX = G·Wᵀ`) are reverse
/// sweeps (`backward_with`, seed `G`) of a recorded product where only `W`, or only `X`,
/// needs a gradient; `layer` records the product with both as variables and runs the
/// forward and a backward that gives both gradients (GFLOP/s over the three products).
/// Every output is checked against f64 dot products.
///
/// The layers are `X [m×k] · W [k×n]` for each `(m, k, n)` in `shapes`, rows
/// named `{workload}/{m}x{k}x{n}/{case}`, timed as the trainer runs them: with a second
/// worker kept awake (woken from sleep for each product, it starts late on a small
/// virtual machine, and a product of a few hundred microseconds then runs on one core).
pub(super) fn layer_gemm(
    cfg: &BenchConfig,
    workload: &str,
    shapes: &[(usize, usize, usize)],
) -> Result<Vec<BenchRow>> {
    chainrule::tensor::with_a_worker_awake(|| layer_gemm_rows(cfg, workload, shapes))
}

fn layer_gemm_rows(
    cfg: &BenchConfig,
    workload: &str,
    shapes: &[(usize, usize, usize)],
) -> Result<Vec<BenchRow>> {
    use MatLayout::{Normal, Transposed};
    let mut rows = Vec::new();
    let budget = cfg.budget / 4;
    let mut tape = Tape::<f32>::new();
    for &(m, k, n) in shapes {
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
        // a row for a product of shape (rows, cols, inner), `products` of them per rep
        let row =
            |case: &str, product: &str, t: Timing, shape: (usize, usize, usize), products: f64| {
                let threads = chainrule::tensor::matmul_threads(shape.0, shape.1, shape.2);
                let mut r = BenchRow::new(format!("{workload}/{m}x{k}x{n}/{case}"), t)
                    .with("product", product)
                    .with("threads", threads);
                r.gflops = Some(products * flops / t.median_s / 1e9);
                if threads == 1 {
                    r.runs_on = RunsOn::F32OneCore;
                }
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
        let r = row("A·B", "X·W (forward)", t, (m, n, k), 1.0);
        rows.push(r.verify_product(y_err(&y))?);

        // weight gradient Xᵀ·G: only W needs a gradient
        let (t, mut dw) = one_gradient(&mut tape, (&x, &w, &g), true, (budget, 20), |x, w| {
            x.matmul(w)
        })?;
        let r = row("Aᵀ·B", "Xᵀ·G (dW)", t, (k, n, m), 1.0);
        rows.push(r.verify_product(dw_err(&dw))?);

        // input gradient G·Wᵀ: only X needs a gradient
        let (t, mut dx) = one_gradient(&mut tape, (&x, &w, &g), false, (budget, 20), |x, w| {
            x.matmul(w)
        })?;
        let r = row("A·Bᵀ", "G·Wᵀ (dX)", t, (m, k, n), 1.0);
        rows.push(r.verify_product(dx_err(&dx))?);

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
            .fold(0f64, chainrule::tensor::nan_max);
        let entries = errs.iter().map(|e| e.1).sum();
        let r = row(
            "layer",
            "X·W, then Xᵀ·G and G·Wᵀ in one backward",
            t,
            (m, n, k),
            3.0,
        );
        rows.push(r.verify_product((worst, entries))?);
    }
    Ok(rows)
}

/// A chain of `n` cheap ops on a one-element tensor, alternating `·0.999` and `+0.001`.
pub(super) fn chain<'t>(x: Var<'t, f32>, n: usize) -> Var<'t, f32> {
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
pub(super) fn tape_chain(n: usize, cfg: &BenchConfig) -> Result<BenchRow> {
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
    let empty = Tensor::<f32>::zeros(&[0])?;
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
pub(super) fn tape_chain_replay(n: usize, cfg: &BenchConfig) -> Result<BenchRow> {
    let record = |x0: &Tensor<f32>| -> Result<Trace<f32>> {
        let tape = Tape::<f32>::with_capacity(n + 2);
        let x = tape.var(x0.clone());
        let y = chain(x, n).sum_all();
        Trace::record(&tape, y, &[x], &[])
    };
    let scalar = Tensor::<f32>::scalar(1.0);
    let empty = Tensor::<f32>::zeros(&[0])?;
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

pub(super) fn elementwise_1m(cfg: &BenchConfig) -> Result<BenchRow> {
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
