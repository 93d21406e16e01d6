//! The multilayer perceptron: a classifier of feature vectors (the main job).

use super::*;

/// The MLP family.
pub(crate) struct Mlp;

/// What a checkpoint records of an MLP.
#[derive(Serialize, Deserialize)]
struct MlpSpec {
    /// Layer sizes, input first.
    sizes: Vec<usize>,
    activation: Activation,
    /// `torch`, `he` or `xavier`.
    init: String,
    dropout: f64,
}

/// The defaults of an MLP classifier: the main job, on the embedded digits (the base of
/// the other classifiers' recipes).
pub(crate) fn defaults() -> RunConfig {
    RunConfig {
        data: "digits".into(),
        model: ModelKind::Mlp,
        embed: 0,
        layers: 0,
        heads: 0,
        seq_len: 0,
        channels: Vec::new(),
        kernel: 0,
        conv_dropout: 0.0,
        label: None,
        hidden: vec![128, 64],
        activation: Activation::Relu,
        init: None,
        dropout: 0.0,
        optimizer: OptimizerKind::Adam,
        lr: 1e-3,
        weight_decay: None,
        schedule: "constant".into(),
        warmup: 0,
        min_lr: 0.0,
        beta2: None,
        batch_size: 32,
        clip_norm: Some(1.0),
        clip_value: None,
        target: Some(0.97),
        patience: Some(20),
        max_epochs: Some(1000),
        max_steps: None,
        max_time: Some(60.0),
        eval_every: None,
        val_fraction: 0.2,
        restore_best: false,
        seed: 0,
    }
}

/// The classes of a classifier's model: a checkpoint's, else the data's.
pub(crate) fn classes(splits: &Splits, saved: Option<&Saved>) -> anyhow::Result<usize> {
    match saved {
        Some(s) => s.legacy_classes(),
        None => Ok(splits.train.num_classes.max(splits.val.num_classes)),
    }
}

impl Family for Mlp {
    fn on_text(&self) -> bool {
        false
    }

    fn defaults(&self, _kind: ModelKind) -> RunConfig {
        defaults()
    }

    fn check_options(&self, _a: &Args, _cfg: &RunConfig) -> anyhow::Result<()> {
        Ok(())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        saved: Option<&Saved>,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Trained>> {
        let standardizer = saved.and_then(|s| s.ckpt.meta.standardizer.clone());
        let splits = load_splits(cfg, standardizer, false)?;
        // the checkpoint is named only when there is one: a fresh run's error is the
        // options' own
        let (spec, model) = network(cfg, &splits, saved, store).map_err(|e| match saved {
            Some(s) => e.context(s.name.clone()),
            None => e,
        })?;
        Ok(Box::new(Classified {
            splits,
            description: format!("an MLP {:?}", model.sizes),
            sizes: model.sizes.clone(),
            spec: tagged(ModelKind::Mlp, &spec),
            model: Box::new(model),
        }))
    }
}

/// The run's MLP and what the checkpoint records of it: a checkpoint's recorded one,
/// else the settings' for the data, checked against the checkpoint's sizes before it is
/// built.
fn network(
    cfg: &RunConfig,
    splits: &Splits,
    saved: Option<&Saved>,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<(MlpSpec, chainrule::nn::Mlp)> {
    let spec = match saved.map(Saved::spec::<MlpSpec>).transpose()?.flatten() {
        Some(spec) => spec,
        None => {
            let mut sizes = vec![splits.train.dim()];
            sizes.extend(&cfg.hidden);
            sizes.push(classes(splits, saved)?);
            MlpSpec {
                sizes,
                activation: cfg.activation,
                init: cfg.init.clone().unwrap_or_else(|| "torch".into()),
                dropout: cfg.dropout,
            }
        }
    };
    if let Some(s) = saved {
        s.ckpt.check_sizes(&spec.sizes)?;
    }
    // PyTorch's default init (`torch`): over 5 seeds it reached 98% on MNIST in a median
    // of 9 epochs where He uniform needed 10 (docs/performance.md, "Same recipe, same
    // epochs")
    let init = parse_init(&spec.init)?;
    let mlp = chainrule::nn::Mlp::new(
        store,
        &spec.sizes,
        spec.activation,
        init,
        &mut chainrule::nn::rng(cfg.seed),
    )?;
    let mlp = mlp.with_dropout(spec.dropout);
    Ok((spec, mlp))
}
