//! An objective of your own through the library's one loop: a denoising autoencoder that
//! learns to restore the digits' 64 pixels from a noisy copy (no labels, no classes).
//! `cargo run --release --example own_objective`
use chainrule::data::{Dataset, Standardizer};
use chainrule::nn::{ForwardCtx, Init, Linear, ParamStore, Params, mse};
use chainrule::optim::OptimizerKind;
use chainrule::tensor::SplitMix64;
use chainrule::train::{Evaluation, Goal, MetricSpec, Objective, TrainConfig, Trainer};
use chainrule::{Error, Result, Tape, Tensor, Var};

/// 64 → 32 → 64 with tanh between; the loss is the error of the restored clean pixels.
struct Denoise<'a> {
    encode: Linear,
    decode: Linear,
    train: &'a Tensor<f32>,
    val: &'a Tensor<f32>,
    order: Vec<usize>,
}

impl Denoise<'_> {
    const BATCH: usize = 32;
    fn restore<'t>(&self, p: &Params<'t, f32>, x: Var<'t, f32>) -> Result<Var<'t, f32>> {
        self.decode.forward(p, self.encode.forward(p, x)?.tanh())
    }
}

impl Objective for Denoise<'_> {
    fn metric(&self) -> MetricSpec {
        MetricSpec {
            name: "loss".into(),
            goal: Goal::Minimize,
        }
    }
    fn batches_per_epoch(&self) -> usize {
        self.order.len().div_ceil(Self::BATCH)
    }
    fn start_epoch(&mut self, epoch: usize, seed: u64) -> Result<()> {
        let mut g = SplitMix64::new(seed ^ epoch as u64); // Fisher–Yates, seeded per epoch
        for i in (1..self.order.len()).rev() {
            self.order.swap(i, g.int(i as u64 + 1) as usize);
        }
        Ok(())
    }
    fn batch_loss<'t>(
        &mut self,
        p: &Params<'t, f32>,
        b: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<(Var<'t, f32>, usize)> {
        let rows = &self.order[b * Self::BATCH..((b + 1) * Self::BATCH).min(self.order.len())];
        let clean = self.train.index_select(0, rows)?;
        let noise = Tensor::randn_with(clean.shape(), ctx.rng())?.mul_scalar(1.0); // fresh each step
        let tape = p.tape();
        let restored = self.restore(p, tape.constant(clean.add(&noise)?))?;
        Ok((mse(restored, tape.constant(clean))?, rows.len()))
    }
    fn evaluate(&self, store: &ParamStore<f32>) -> Result<Evaluation> {
        let noise = Tensor::randn(self.val.shape(), 7)?.mul_scalar(1.0); // the same every time
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let restored = self.restore(&p, tape.constant(self.val.add(&noise)?))?;
        let loss = mse(restored, tape.constant(self.val.clone()))?.item()? as f64;
        let untouched = mse(
            tape.constant(self.val.add(&noise)?),
            tape.constant(self.val.clone()),
        )?;
        let metrics = vec![("noisy_input_loss".into(), untouched.item()? as f64)];
        Ok(Evaluation {
            loss,
            metrics,
            samples: self.val.shape()[0],
        })
    }
}

fn main() -> Result<()> {
    let (train, val) = Dataset::digits()?.split(0.2, 0)?;
    let scale = Standardizer::fit(&train);
    let (train, val) = (scale.apply(&train)?.features, scale.apply(&val)?.features);
    let mut store = ParamStore::new();
    let mut rng = chainrule::nn::rng(0);
    let mut task = Denoise {
        encode: Linear::new(&mut store, "encode", 64, 32, Init::TorchDefault, &mut rng)?,
        decode: Linear::new(&mut store, "decode", 32, 64, Init::TorchDefault, &mut rng)?,
        train: &train,
        val: &val,
        order: (0..train.shape()[0]).collect(),
    };
    let mut adam = OptimizerKind::Adam.build::<f32>(3e-3, None)?;
    let config = TrainConfig {
        batch_size: Denoise::BATCH,
        max_epochs: Some(30),
        ..Default::default()
    };
    let report = Trainer::new(config)?.fit_from_start(&mut task, &mut store, adam.as_mut())?;
    let noisy = task.evaluate(&store)?.get("noisy_input_loss");
    println!(
        "restored: {:.4} mean squared error (the noisy input: {noisy:.4})",
        report.best_val_metric
    );
    if report.best_val_metric.is_nan() || report.best_val_metric >= 0.8 * noisy {
        return Err(Error::invalid(
            "own_objective",
            "the autoencoder did not learn to denoise",
        ));
    }
    Ok(())
}
