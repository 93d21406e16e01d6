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
