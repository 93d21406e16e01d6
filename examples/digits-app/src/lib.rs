//! What a Rust engineer's own crate looks like when it adopts chainrule: one dependency
//! (`chainrule = { path = ... }` or a version, default features), no program, no web
//! stack. It trains an MLP on the handwritten digits embedded in the library through the
//! library's one descent loop, `Trainer`, and its test checks that it learned.

use chainrule::data::{Dataset, Standardizer};
use chainrule::nn::{Activation, Init, Mlp, ParamStore};
use chainrule::optim::OptimizerKind;
use chainrule::train::{Classification, TrainConfig, TrainReport, Trainer};

/// Trains a 64-32-10 MLP with Adam and clipping until 95% validation accuracy or 40
/// epochs, and returns the trainer's report.
pub fn train_digits(seed: u64) -> chainrule::Result<TrainReport> {
    let (train, val) = Dataset::digits()?.split(0.2, seed)?;
    let standardize = Standardizer::fit(&train);
    let (train, val) = (standardize.apply(&train)?, standardize.apply(&val)?);
    let mut store = ParamStore::new();
    let model = Mlp::new(
        &mut store,
        &[64, 32, 10],
        Activation::Relu,
        Init::TorchDefault,
        &mut chainrule::nn::rng(seed),
    )?;
    let mut adam = OptimizerKind::Adam.build::<f32>(3e-3, None)?;
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        clip_norm: Some(1.0),
        target: Some(0.95),
        max_epochs: Some(40),
        seed,
        ..Default::default()
    })?;
    let mut task = Classification::new(&model, &train, &val, 32, true)?;
    trainer.fit_from_start(&mut task, &mut store, adam.as_mut())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dependent_crate_trains_an_mlp_on_the_digits() {
        let report = super::train_digits(0).unwrap();
        assert!(
            report.best_val_metric >= 0.95,
            "{} after {} epochs ({:?})",
            report.best_val_metric,
            report.epochs,
            report.stopped_by
        );
    }
}
