//! A model of your own layers, with dropout, trained by the library's one loop on the
//! digits; saved, loaded into a fresh store and evaluated; then fine-tuned with its body
//! frozen. `cargo run --release --example own_model`
use chainrule::data::{Dataset, Standardizer};
use chainrule::nn::{self, ChaCha8Rng, Classifier, Dropout, ForwardCtx, Init, Linear};
use chainrule::nn::{ParamStore, Params};
use chainrule::optim::OptimizerKind;
use chainrule::train::{Classification, Objective, TrainConfig, Trainer};
use chainrule::{Result, Var};

/// 64 pixels → 32 hidden units (tanh, dropout) → 10 classes.
struct TwoLayer {
    body: Linear,
    head: Linear,
    dropout: Dropout,
}

impl TwoLayer {
    /// As the library's models: the initial values drawn from the caller's generator.
    fn new(store: &mut ParamStore<f32>, rng: &mut ChaCha8Rng) -> Result<Self> {
        Ok(TwoLayer {
            body: Linear::new(store, "body", 64, 32, Init::TorchDefault, rng)?,
            head: Linear::new(store, "head", 32, 10, Init::TorchDefault, rng)?,
            dropout: Dropout { p: 0.2 },
        })
    }
}

impl Classifier<f32> for TwoLayer {
    fn logits<'t>(
        &self,
        p: &Params<'t, f32>,
        x: Var<'t, f32>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        let h = self.dropout.forward(self.body.forward(p, x)?.tanh(), ctx)?;
        self.head.forward(p, h)
    }
    // no `replay_graph`: with dropout every step draws a new mask, so every step is taped
}

fn main() -> Result<()> {
    let (train, val) = Dataset::digits()?.split(0.2, 0)?;
    let scale = Standardizer::fit(&train);
    let (train, val) = (scale.apply(&train)?, scale.apply(&val)?);
    let mut store = ParamStore::new();
    let model = TwoLayer::new(&mut store, &mut nn::rng(0))?;
    let mut adam = OptimizerKind::Adam.build::<f32>(3e-3, None)?;
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        max_epochs: Some(15),
        ..Default::default()
    })?;
    let mut task = Classification::new(&model, &train, &val, 32, true)?;
    let report = trainer.fit_from_start(&mut task, &mut store, adam.as_mut())?;
    println!(
        "trained: {:.4} validation accuracy after {} epochs",
        report.best_val_metric, report.epochs
    );

    // saved and loaded into a fresh store of the same layers: the same accuracy
    let path = std::env::temp_dir().join(format!("own_model-{}.safetensors", std::process::id()));
    store.save_safetensors(&path, &Default::default())?;
    let mut loaded = ParamStore::new();
    let same = TwoLayer::new(&mut loaded, &mut nn::rng(1))?; // other initial values, overwritten by the load
    loaded.load_safetensors(&path)?;
    std::fs::remove_file(&path).ok();
    let before = task.evaluate(&store)?.get("accuracy");
    let after = Classification::new(&same, &train, &val, 32, true)?
        .evaluate(&loaded)?
        .get("accuracy");
    println!("loaded: {after:.4} validation accuracy (saved: {before:.4})");

    // fine-tuning: the body frozen, the head trains on
    let body =
        [store.find("body.weight"), store.find("body.bias")].map(|id| id.expect("named above"));
    body.iter().for_each(|&id| store.freeze(id));
    let frozen = store.get(body[0]).clone();
    let tuned = trainer.fit_from_start(&mut task, &mut store, adam.as_mut())?;
    println!(
        "fine-tuned: {:.4}, body unchanged: {}",
        tuned.best_val_metric,
        *store.get(body[0]) == frozen
    );

    let fails = |why: String| Err(chainrule::Error::invalid("own_model", why));
    if report.best_val_metric < 0.9 || after != before || *store.get(body[0]) != frozen {
        return fails(format!(
            "accuracy {}, loaded {after} against {before}",
            report.best_val_metric
        ));
    }
    Ok(())
}
