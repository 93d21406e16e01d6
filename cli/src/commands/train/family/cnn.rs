//! The convolutional network: a classifier of square one-channel images (MNIST, the
//! digits, a CSV of pixels), PyTorch's MNIST example by default.

use super::*;
use chainrule::nn::{Cnn as Network, CnnConfig};

/// The CNN family.
pub(crate) struct Cnn;

/// What a checkpoint records of a CNN: its [`CnnConfig`].
#[derive(Serialize, Deserialize)]
struct CnnSpec {
    in_channels: usize,
    image: [usize; 2],
    channels: Vec<usize>,
    kernel: usize,
    pool: usize,
    hidden: Vec<usize>,
    classes: usize,
    dropout: [f64; 2],
}

impl From<&CnnSpec> for CnnConfig {
    fn from(s: &CnnSpec) -> CnnConfig {
        CnnConfig {
            in_channels: s.in_channels,
            image: s.image,
            channels: s.channels.clone(),
            kernel: s.kernel,
            pool: s.pool,
            hidden: s.hidden.clone(),
            classes: s.classes,
            dropout: s.dropout,
        }
    }
}

impl From<&CnnConfig> for CnnSpec {
    fn from(k: &CnnConfig) -> CnnSpec {
        CnnSpec {
            in_channels: k.in_channels,
            image: k.image,
            channels: k.channels.clone(),
            kernel: k.kernel,
            pool: k.pool,
            hidden: k.hidden.clone(),
            classes: k.classes,
            dropout: k.dropout,
        }
    }
}

impl Family for Cnn {
    fn on_text(&self) -> bool {
        false
    }

    /// The W12 recipe (bench/anchors/w12_mnist_cnn.py, PyTorch's MNIST example) for the
    /// 14 epochs of that example.
    fn defaults(&self, _kind: ModelKind) -> RunConfig {
        RunConfig {
            model: ModelKind::Cnn,
            channels: vec![32, 64],
            kernel: 3,
            conv_dropout: 0.25,
            hidden: vec![128],
            dropout: 0.5,
            optimizer: OptimizerKind::Adadelta,
            lr: 1.0,
            schedule: "epoch:0.7".into(),
            batch_size: 64,
            clip_norm: None,
            target: None,
            max_epochs: Some(14),
            max_time: None,
            ..mlp::defaults()
        }
    }

    fn own_option_given(&self, a: &Args) -> Option<&'static str> {
        if a.channels.is_some() {
            Some("--channels: only --model cnn has convolutions")
        } else if a.kernel.is_some() {
            Some("--kernel: only --model cnn has convolutions")
        } else if a.conv_dropout.is_some() {
            Some("--conv-dropout: only --model cnn has convolutions")
        } else {
            None
        }
    }

    /// Positive channels and kernel, a dropout below 1, and no `--init` or
    /// `--activation`: PyTorch's initialisation and ReLU.
    fn check_options(&self, a: &Args, cfg: &RunConfig) -> anyhow::Result<()> {
        let channels = &cfg.channels;
        if channels.is_empty() || channels.contains(&0) {
            bail!("--channels: give one positive channel count per convolution, got {channels:?}");
        }
        if cfg.kernel == 0 {
            bail!("--kernel must be at least 1");
        }
        if !(0.0..1.0).contains(&cfg.conv_dropout) {
            bail!("--conv-dropout must be in [0, 1), got {}", cfg.conv_dropout);
        }
        if a.init.is_some() {
            bail!("--init: a CNN always starts from PyTorch's initialisation");
        }
        if a.activation.is_some() {
            bail!("--activation: a CNN's activations are ReLU");
        }
        Ok(())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        saved: Option<&Saved>,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Trained>> {
        let standardizer = saved.and_then(|s| s.ckpt.meta.standardizer.clone());
        let splits = load_splits(cfg, standardizer, true)?;
        let features = splits.train.dim();
        // the checkpoint is named only when there is one: a fresh run's error is the
        // options' own
        let config = shape(cfg, features, &splits, saved).map_err(|e| match saved {
            Some(s) => e.context(s.name.clone()),
            None => e,
        })?;
        let model = Network::new(store, config.clone(), &mut chainrule::nn::rng(cfg.seed))?;
        let description = format!(
            "a CNN (convolutions {:?} of {}×{}, pooling {}, hidden {:?}, dropout {:?}, {} parameters)",
            config.channels,
            config.kernel,
            config.kernel,
            config.pool,
            config.hidden,
            config.dropout,
            store.num_elements()
        );
        Ok(Box::new(Classified {
            splits,
            description,
            sizes: vec![features, config.classes],
            spec: tagged(ModelKind::Cnn, &CnnSpec::from(&config)),
            model: Box::new(model),
        }))
    }
}

/// The shape of the run's CNN: a checkpoint's recorded one, else the settings' for rows
/// of `features` values read as square one-channel images (28×28 for MNIST, 8×8 for the
/// digits); checked against the data and the checkpoint's parameters.
fn shape(
    cfg: &RunConfig,
    features: usize,
    splits: &Splits,
    saved: Option<&Saved>,
) -> anyhow::Result<CnnConfig> {
    let config = match saved.map(Saved::spec::<CnnSpec>).transpose()?.flatten() {
        Some(spec) => {
            let config = CnnConfig::from(&spec);
            let [h, w] = config.image;
            let values = h
                .checked_mul(w)
                .and_then(|p| p.checked_mul(config.in_channels));
            if values != Some(features) {
                bail!(
                    "its CNN reads images of {h}×{w}×{} values, the data has {features} features",
                    config.in_channels
                );
            }
            config
        }
        None => {
            let side = (features as f64).sqrt().round() as usize;
            if side.checked_mul(side) != Some(features) {
                bail!(
                    "--model cnn reads each row as a square image, but the data has {features} features (not a square number)"
                );
            }
            CnnConfig {
                in_channels: 1,
                image: [side, side],
                channels: cfg.channels.clone(),
                kernel: cfg.kernel,
                pool: 2,
                hidden: cfg.hidden.clone(),
                classes: mlp::classes(splits, saved)?,
                dropout: [cfg.conv_dropout, cfg.dropout],
            }
        }
    };
    config.flat_features()?;
    if let Some(s) = saved {
        s.ckpt.check_param_count(config.param_count())?;
    }
    Ok(config)
}
