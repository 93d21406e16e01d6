//! W8: one MNIST epoch through the trainer.

use super::*;

/// W8's recipe for one epoch: MNIST standardised with one mean and deviation, MLP
/// 784-256-256-10 (ReLU, PyTorch's initialisation, seed 0), Adam 1e-3, batch 128, clipping
/// at 1.0 (chainrule's default), 469 steps through [`Trainer::fit`], then the evaluation
/// on the 10,000 test images, as `w8_mnist.py` does each epoch. Each repetition starts
/// from the same fresh model; the check is its test accuracy after the epoch.
pub(super) fn mnist_epoch(cfg: &BenchConfig) -> Result<BenchRow> {
    use chainrule::data::{Standardizer, load_mnist};
    use chainrule::nn::Init;
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
        keep_a_worker_awake: true, // as the program runs
        ..Default::default()
    })?;
    let epoch = || -> Result<(f64, usize)> {
        let mut store = ParamStore::new();
        let model = Mlp::new(
            &mut store,
            &[784, 256, 256, 10],
            Activation::Relu,
            Init::TorchDefault,
            &mut chainrule::nn::rng(0),
        )?;
        let mut objective = Classification::new(&model, &train, &test, 128, true)?;
        let mut optimizer = OptimizerKind::Adam.build::<f32>(1e-3, None)?;
        let r = trainer.fit_from_start(&mut objective, &mut store, optimizer.as_mut())?;
        Ok((r.final_val_metric, r.steps))
    };
    let (accuracy, steps) = epoch()?;
    let (t, busy) = try_measure_with_cores(cfg.budget, 3, || epoch().map(drop))?;
    let mut row = BenchRow::new("mnist_epoch", t);
    // W1's network: a training sample costs W1's step over 128, a test sample its forward
    row.flops = Some(
        train.len() as f64 * W1_STEP_FLOPS / 128.0 + test.len() as f64 * W1_FORWARD_FLOPS / 128.0,
    );
    row.with("steps", steps)
        .with("test_accuracy", accuracy)
        .with("cores_busy", busy)
        .with("samples_per_s", train.len() as f64 / t.median_s)
        .verify("test_accuracy", 0.97, accuracy, 0.02)
}
