//! W12: PyTorch's MNIST convnet through the trainer, one step (`w12_step`) and one epoch
//! (`mnist_cnn_epoch`).

use super::*;
use chainrule::nn::{Cnn, CnnConfig};

/// Floating-point operations of one W12 sample, forward and backward: 11,992,448
/// multiply-adds forward (conv1 26²·32·9, conv2 24²·64·288, fc1 9216·128, fc2 128·10),
/// twice that backward less the input gradient of conv1, which nothing needs.
const W12_FLOP_PER_SAMPLE: f64 = 2.0 * (3.0 * 11_992_448.0 - 194_688.0);

/// MNIST standardised as W12 does (one mean and deviation over the training pixels: 0.1307
/// and 0.3081, the constants of the recipe), from `--mnist DIR`.
fn mnist(cfg: &BenchConfig, name: &'static str) -> Result<(Dataset, Dataset)> {
    use chainrule::data::{Standardizer, load_mnist};
    let Some(dir) = &cfg.mnist else {
        return Err(Error::invalid(
            name,
            "needs MNIST, which the repository does not hold: give its folder with --mnist DIR",
        ));
    };
    let (train, test) = load_mnist(dir)?;
    let s = Standardizer::fit_global(&train);
    Ok((s.apply(&train)?, s.apply(&test)?))
}

/// The W12 recipe's trainer: batch 64, Adadelta lr 1.0 ×0.7 after every epoch (938
/// steps), no clipping.
fn w12_trainer(max_epochs: Option<usize>) -> Result<Trainer> {
    use chainrule::optim::Schedule;
    Trainer::new(TrainConfig {
        batch_size: 64,
        schedule: LrSchedule {
            schedule: Schedule::Step {
                every: 938,
                gamma: 0.7,
            },
            ..LrSchedule::constant(1.0)
        },
        clip_norm: None,
        max_epochs,
        divergence_factor: None,
        keep_a_worker_awake: true, // as the program runs
        ..Default::default()
    })
}

/// W12 (`shared/bench/anchors/w12_mnist_cnn.py`): one training step at batch 64 through
/// `Trainer::train_step` on a `Classification` of the W12 network (seed 0, dropout on):
/// forward, loss, backward, Adadelta. Checks: the first loss is within 0.1 of ln 10 and 20
/// steps lower it by at least 0.3.
pub(super) fn w12_step(cfg: &BenchConfig) -> Result<BenchRow> {
    let (train, test) = mnist(cfg, "w12_step")?;
    let mut store = ParamStore::new();
    let model = Cnn::new(
        &mut store,
        CnnConfig::w12([28, 28], 10),
        &mut chainrule::nn::rng(0),
    )?;
    let mut objective = Classification::new(&model, &train, &test, 64, true)?;
    objective.start_epoch(0, 0)?;
    let trainer = w12_trainer(None)?;
    let mut optimizer = OptimizerKind::Adadelta.build::<f32>(1.0, None)?;
    let mut tape = Tape::new();
    let (mut step, mut losses) = (0usize, Vec::new());
    let mut run = |step: &mut usize, losses: &mut Vec<f64>| -> Result<()> {
        let batch = *step % objective.batches_per_epoch();
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
        *step += 1;
        Ok(())
    };
    for _ in 0..20 {
        run(&mut step, &mut losses)?;
    }
    let t = try_measure(cfg.budget, 5, || run(&mut step, &mut losses))?;
    let mut row = BenchRow::new("w12_step", t)
        .with("loss@0", losses[0])
        .with("loss@19", losses[19])
        .with("samples_per_s", 64.0 / t.median_s)
        .verify("loss@0 vs ln 10", 10f64.ln(), losses[0], 0.1)?
        .verify_at_most("loss@19", losses[0] - 0.3, losses[19])?;
    row.gflops = Some(64.0 * W12_FLOP_PER_SAMPLE / t.median_s / 1e9);
    Ok(row)
}

/// One epoch of the W12 recipe through [`Trainer::fit`] (938 steps of 64, dropout on, the
/// evaluation on the 10,000 test images after it), from the same fresh network (seed 0)
/// each repetition; the check is its test accuracy (PyTorch's anchor: 0.983–0.984 after
/// its first epoch over seeds 1–3).
pub(super) fn mnist_cnn_epoch(cfg: &BenchConfig) -> Result<BenchRow> {
    let (train, test) = mnist(cfg, "mnist_cnn_epoch")?;
    let trainer = w12_trainer(Some(1))?;
    let epoch = || -> Result<(f64, usize)> {
        let mut store = ParamStore::new();
        let model = Cnn::new(
            &mut store,
            CnnConfig::w12([28, 28], 10),
            &mut chainrule::nn::rng(0),
        )?;
        let mut objective = Classification::new(&model, &train, &test, 64, true)?;
        let mut optimizer = OptimizerKind::Adadelta.build::<f32>(1.0, None)?;
        let r = trainer.fit_from_start(&mut objective, &mut store, optimizer.as_mut())?;
        Ok((r.final_val_metric, r.steps))
    };
    let (accuracy, steps) = epoch()?;
    let (t, busy) = try_measure_with_cores(cfg.budget, 1, || epoch().map(drop))?;
    let mut row = BenchRow::new("mnist_cnn_epoch", t)
        .with("steps", steps)
        .with("test_accuracy", accuracy)
        .with("cores_busy", busy)
        .with("samples_per_s", train.len() as f64 / t.median_s)
        .verify("test_accuracy", 0.983, accuracy, 0.01)?;
    row.gflops = Some(train.len() as f64 * W12_FLOP_PER_SAMPLE / t.median_s / 1e9);
    Ok(row)
}

/// W12's second convolution alone (`[64, 32, 26, 26]` by `[64, 32, 3, 3]` with a bias,
/// stride 1, no padding: 1.36 GFLOP each way), as the tape runs it: the forward recorded by
/// `Var::conv2d` (`w12_conv2_forward`), and the reverse sweep seeded with `dY` for the
/// weight's gradient alone (`w12_conv2_weight_grad`) and for the input's alone
/// (`w12_conv2_input_grad`). Each result is checked at 256 entries against f64 sums.
pub(super) fn w12_conv2(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    use chainrule::autodiff::Conv2dOptions;
    let (n, c, h, o, k) = (64, 32, 26, 64, 3);
    let ho = h - k + 1;
    let x = Tensor::<f32>::splitmix_uniform(&[n, c, h, h], 71, -1.0, 1.0)?;
    let w = Tensor::<f32>::splitmix_uniform(&[o, c, k, k], 72, -0.2, 0.2)?;
    let b = Tensor::<f32>::splitmix_uniform(&[o], 73, -0.2, 0.2)?;
    let g = Tensor::<f32>::splitmix_uniform(&[n, o, ho, ho], 74, -1.0, 1.0)?;
    let flops = 2.0 * (n * o * ho * ho * c * k * k) as f64;
    let opts = Conv2dOptions::default();
    let budget = cfg.budget / 3;
    let mut tape = Tape::<f32>::new();
    let at4 = |t: &Tensor<f32>, i: [usize; 4]| {
        let s = t.shape();
        f64::from(t.data()[((i[0] * s[1] + i[1]) * s[2] + i[2]) * s[3] + i[3]])
    };
    let mut draws = SplitMix64::new(97);
    let mut pick = |bound: usize| draws.int(bound as u64) as usize;
    // y[i, p, r, s] = b[p] + Σ_{q, u, v} x[i, q, r+u, s+v]·w[p, q, u, v]
    let conv_at = |[i, p, r, s]: [usize; 4]| {
        let mut sum = f64::from(b.data()[p]);
        for q in 0..c {
            for u in 0..k {
                for v in 0..k {
                    sum += at4(&x, [i, q, r + u, s + v]) * at4(&w, [p, q, u, v]);
                }
            }
        }
        sum
    };
    // dW[p, q, u, v] = Σ_{i, r, s} dY[i, p, r, s]·x[i, q, r+u, s+v]
    let dw_at = |[p, q, u, v]: [usize; 4]| {
        let mut sum = 0.0;
        for i in 0..n {
            for r in 0..ho {
                for s in 0..ho {
                    sum += at4(&g, [i, p, r, s]) * at4(&x, [i, q, r + u, s + v]);
                }
            }
        }
        sum
    };
    // dX[i, q, a, e] = Σ_{p, u, v} dY[i, p, a−u, e−v]·w[p, q, u, v] over the taps inside dY
    let dx_at = |[i, q, a, e]: [usize; 4]| {
        let mut sum = 0.0;
        for p in 0..o {
            for u in (0..k).filter(|&u| u <= a && a - u < ho) {
                for v in (0..k).filter(|&v| v <= e && e - v < ho) {
                    sum += at4(&g, [i, p, a - u, e - v]) * at4(&w, [p, q, u, v]);
                }
            }
        }
        sum
    };
    // the largest difference at 256 drawn entries, relative to the largest reference entry
    let error = |got: &Tensor<f32>,
                 reference: &dyn Fn([usize; 4]) -> f64,
                 pick: &mut dyn FnMut(usize) -> usize| {
        let s = got.shape().to_vec();
        let (mut worst, mut scale) = (0f64, 0f64);
        for _ in 0..256 {
            let i = [pick(s[0]), pick(s[1]), pick(s[2]), pick(s[3])];
            let (have, want) = (at4(got, i), reference(i));
            worst = worst.max(if have.is_finite() {
                (have - want).abs()
            } else {
                f64::NAN
            });
            scale = scale.max(want.abs());
        }
        (worst / scale.max(f64::MIN_POSITIVE), 256)
    };
    let row = |name: &str, t: Timing| {
        let mut row = BenchRow::new(name, t).with("shape", "x [64,32,26,26] * w [64,32,3,3] + b");
        row.gflops = Some(flops / t.median_s / 1e9);
        row.flops = Some(flops);
        row
    };

    let mut y = Tensor::zeros(&[n, o, ho, ho])?;
    let mut failure = None;
    let t = measure(budget, 10, || {
        tape.clear();
        let (xv, wv, bv) = (
            tape.constant(x.clone()),
            tape.var(w.clone()),
            tape.var(b.clone()),
        );
        match xv.conv2d(wv, Some(bv), opts) {
            Ok(v) => y = v.value(),
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let forward = row("w12_conv2_forward", t).verify_product(error(&y, &conv_at, &mut pick))?;

    let mut gradients = Vec::new();
    for wrt_w in [true, false] {
        let (t, grad) = one_gradient(&mut tape, (&x, &w, &g), wrt_w, (budget, 10), |x, w| {
            x.conv2d(w, Some(x.tape().constant(b.clone())), opts)
        })?;
        let (name, reference): (_, &dyn Fn([usize; 4]) -> f64) = if wrt_w {
            ("w12_conv2_weight_grad", &dw_at)
        } else {
            ("w12_conv2_input_grad", &dx_at)
        };
        gradients.push(row(name, t).verify_product(error(&grad, reference, &mut pick))?);
    }
    Ok([vec![forward], gradients].concat())
}
