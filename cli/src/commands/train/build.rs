//! The data and the model of a run (classification or a character model), and what
//! identifies the data in its checkpoint.

use super::*;

/// Training and evaluation splits, standardised with the training split's statistics
/// (per feature for tabular data; one mean and deviation over all pixels for MNIST).
pub struct Splits {
    pub(crate) train: Dataset,
    pub(crate) val: Dataset,
    pub(crate) standardizer: Standardizer,
    pub(crate) eval_name: &'static str,
    /// The data as loaded, before standardisation.
    pub(crate) identity: DataIdentity,
}

/// The identity of a classification set: its features and labels, training and
/// validation, as loaded.
pub(crate) fn dataset_identity(source: &str, train: &Dataset, val: &Dataset) -> DataIdentity {
    let words = |d: &Dataset| {
        let features = d.features.data().iter().map(|v| v.to_bits());
        features
            .chain(d.labels.iter().map(|&l| l as u32))
            .collect::<Vec<u32>>()
    };
    let (a, b) = (words(train), words(val));
    DataIdentity::of(source, train.len() + val.len(), a.into_iter().chain(b))
}

pub(crate) fn load_splits(
    cfg: &RunConfig,
    standardizer: Option<Standardizer>,
) -> anyhow::Result<Splits> {
    let (train, val, eval_name) = if cfg.data == "digits" {
        let (t, v) = Dataset::digits()?.split(cfg.val_fraction, cfg.seed)?;
        (t, v, "validation")
    } else if let Some(dir) = cfg.data.strip_prefix("mnist:") {
        let (t, v) = load_mnist(Path::new(dir))?;
        (t, v, "test")
    } else if let Some(file) = cfg.data.strip_prefix("csv:") {
        let label: LabelColumn = cfg
            .label
            .as_deref()
            .unwrap_or("last")
            .parse()
            .expect("infallible");
        let all = load_csv(Path::new(file), &label)?;
        if all.num_classes < 2 {
            bail!("{file}: every row has the same label; a classifier needs at least two classes");
        }
        let (t, v) = all.split(cfg.val_fraction, cfg.seed)?;
        (t, v, "validation")
    } else {
        bail!(
            "--data: unknown dataset '{}'; use digits, mnist:DIR, csv:FILE, text:FILE, macbeth or tragedies",
            cfg.data
        );
    };
    let s = standardizer.unwrap_or_else(|| {
        // images (MNIST, or any for a CNN) share one mean and deviation over all pixels
        if eval_name == "test" || cfg.model == CNN {
            Standardizer::fit_global(&train)
        } else {
            Standardizer::fit(&train)
        }
    });
    s.check(train.dim())?;
    let identity = dataset_identity(&cfg.data, &train, &val);
    Ok(Splits {
        identity,
        train: s.apply(&train)?,
        val: s.apply(&val)?,
        standardizer: s,
        eval_name,
    })
}

/// The MLP's layer sizes, input first.
pub(crate) fn layer_sizes(cfg: &RunConfig, inputs: usize, classes: usize) -> Vec<usize> {
    let mut sizes = vec![inputs];
    sizes.extend(&cfg.hidden);
    sizes.push(classes);
    sizes
}

pub(crate) fn build_model(
    cfg: &RunConfig,
    sizes: &[usize],
    store: &mut ParamStore<f32>,
) -> anyhow::Result<Mlp> {
    let init = match &cfg.init {
        Some(s) => parse_init(s)?,
        // PyTorch's default: over 5 seeds it reached 98% on MNIST in a median of 9
        // epochs where He uniform needed 10 (docs/performance.md, "Same recipe, same epochs")
        None => Init::TorchDefault,
    };
    Ok(Mlp::new(
        store,
        sizes,
        cfg.activation,
        init,
        &mut chainrule::nn::rng(cfg.seed),
    )?
    .with_dropout(cfg.dropout))
}

/// The network of a classifier's run: an MLP or a CNN.
pub(crate) enum Network {
    Mlp(Mlp),
    Cnn(Cnn),
}

impl Network {
    /// The network as the trainer and the evaluation see it.
    pub(crate) fn classifier(&self) -> &dyn Classifier<f32> {
        match self {
            Network::Mlp(m) => m,
            Network::Cnn(c) => c,
        }
    }

    /// What the checkpoint records as the model's sizes: the MLP's layer sizes, or a
    /// CNN's features and classes (its shape is in the run's settings).
    pub(crate) fn sizes(&self) -> Vec<usize> {
        match self {
            Network::Mlp(m) => m.sizes.clone(),
            Network::Cnn(c) => {
                let k = &c.config;
                vec![k.in_channels * k.image[0] * k.image[1], k.classes]
            }
        }
    }

    /// The network in words, for the line a run starts with.
    pub(crate) fn describe(&self, store: &ParamStore<f32>) -> String {
        match self {
            Network::Mlp(m) => format!("an MLP {:?}", m.sizes),
            Network::Cnn(c) => {
                let k = &c.config;
                format!(
                    "a CNN (convolutions {:?} of {}×{}, pooling {}, hidden {:?}, dropout {:?}, {} parameters)",
                    k.channels,
                    k.kernel,
                    k.kernel,
                    k.pool,
                    k.hidden,
                    k.dropout,
                    store.num_elements()
                )
            }
        }
    }
}

/// The shape of the CNN `cfg` describes for rows of `features` values, read as square
/// one-channel images (28×28 for MNIST, 8×8 for the digits).
pub(crate) fn cnn_config(
    cfg: &RunConfig,
    features: usize,
    classes: usize,
) -> anyhow::Result<CnnConfig> {
    let side = (features as f64).sqrt().round() as usize;
    if side.checked_mul(side) != Some(features) {
        bail!(
            "--model cnn reads each row as a square image, but the data has {features} features (not a square number)"
        );
    }
    let config = CnnConfig {
        in_channels: 1,
        image: [side, side],
        channels: cfg.channels.clone(),
        kernel: cfg.kernel,
        pool: 2,
        hidden: cfg.hidden.clone(),
        classes,
        dropout: [cfg.conv_dropout, cfg.dropout],
    };
    config.flat_features()?;
    Ok(config)
}

/// The classifier of a run for rows of `features` values and `classes` classes, checked
/// against a checkpoint's parameters before it is built (`check`).
pub(crate) fn build_network(
    cfg: &RunConfig,
    (features, classes): (usize, usize),
    check: Option<&chainrule::train::Checkpoint>,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<Network> {
    if cfg.model == CNN {
        let config = cnn_config(cfg, features, classes)?;
        if let Some(c) = check {
            c.check_param_count(config.param_count())?;
        }
        return Ok(Network::Cnn(Cnn::new(
            store,
            config,
            &mut chainrule::nn::rng(cfg.seed),
        )?));
    }
    let sizes = layer_sizes(cfg, features, classes);
    if let Some(c) = check {
        c.check_sizes(&sizes)?;
    }
    Ok(Network::Mlp(build_model(cfg, &sizes, store)?))
}

/// A character model's data: the corpus and its streams.
pub(crate) struct TextData {
    pub(crate) corpus: TextCorpus,
    pub(crate) train: Streams,
    pub(crate) val: Streams,
}

impl TextData {
    /// The text's identity: its characters' ids, training and validation.
    pub(crate) fn identity(&self, source: &str) -> DataIdentity {
        let (train, val) = (self.corpus.train(), self.corpus.val());
        let ids = train.iter().chain(val).copied();
        DataIdentity::of(source, train.len() + val.len(), ids)
    }
}

pub(crate) fn load_text(cfg: &RunConfig, saved_vocab: Option<&str>) -> anyhow::Result<TextData> {
    let file = cfg.data.strip_prefix("text:").unwrap_or(&cfg.data);
    let corpus = if EMBEDDED_TEXTS.contains(&cfg.data.as_str()) {
        TextCorpus::embedded(&cfg.data)?
    } else {
        TextCorpus::load(Path::new(file))?
    };
    if let Some(v) = saved_vocab {
        let now: String = corpus.vocab().iter().collect();
        if now != v {
            bail!(
                "{file}: its vocabulary ({} characters) differs from the one the checkpoint was trained on ({} characters); the text changed",
                corpus.vocab().len(),
                v.chars().count()
            );
        }
    }
    let streams = |ids: &[u32], what: &str| {
        Streams::new(ids, cfg.batch_size, cfg.seq_len).with_context(|| {
            format!(
                "{file}: the {what} text ({} characters) is too short for {} streams",
                ids.len(),
                cfg.batch_size
            )
        })
    };
    Ok(TextData {
        train: streams(corpus.train(), "training")?,
        val: streams(corpus.val(), "validation")?,
        corpus,
    })
}

/// The model of a run and its data.
pub(crate) enum Problem {
    Classifier { splits: Splits, model: Network },
    Text { text: TextData, model: CharModel },
    Gpt { text: TextData, model: Gpt },
}

impl Problem {
    /// The objective the loop drives for this model and data.
    pub(crate) fn objective(&self, cfg: &RunConfig) -> anyhow::Result<Box<dyn Objective + '_>> {
        Ok(match self {
            Problem::Classifier { splits, model } => Box::new(Classification::new(
                model.classifier(),
                &splits.train,
                &splits.val,
                cfg.batch_size,
                true,
            )?),
            Problem::Text { text, model } => Box::new(LanguageModel::new(
                model,
                text.train.clone(),
                text.val.clone(),
            )),
            Problem::Gpt { text, model } => Box::new(GptLanguageModel::new(
                model,
                text.corpus.train(),
                text.corpus.val(),
                cfg.batch_size,
                cfg.seq_len,
            )?),
        })
    }

    /// The text of a character model's run.
    pub(crate) fn text(&self) -> Option<&TextData> {
        match self {
            Problem::Classifier { .. } => None,
            Problem::Text { text, .. } | Problem::Gpt { text, .. } => Some(text),
        }
    }

    /// What one step trains on, and its unit: samples of a batch, or characters.
    pub(crate) fn step_unit(&self, cfg: &RunConfig) -> (usize, &'static str) {
        match self {
            Problem::Classifier { .. } => (cfg.batch_size, "samples"),
            Problem::Text { .. } | Problem::Gpt { .. } => {
                (cfg.batch_size.saturating_mul(cfg.seq_len), "chars")
            }
        }
    }

    /// The split the run evaluates on: `validation`, or `test` for MNIST.
    pub(crate) fn eval_name(&self) -> &'static str {
        match self {
            Problem::Classifier { splits, .. } => splits.eval_name,
            Problem::Text { .. } | Problem::Gpt { .. } => "validation",
        }
    }

    /// What identifies the run's data (recorded in the checkpoint, compared on
    /// `--resume` and across the ranks of a data-parallel run).
    pub(crate) fn identity(&self, source: &str) -> DataIdentity {
        match self {
            Problem::Classifier { splits, .. } => splits.identity.clone(),
            Problem::Text { text, .. } | Problem::Gpt { text, .. } => text.identity(source),
        }
    }
}

pub(crate) fn char_model(
    cfg: &RunConfig,
    kind: CellKind,
    vocab: usize,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<CharModel> {
    let Some(&hidden) = cfg.hidden.first() else {
        bail!("the run's configuration has no hidden size");
    };
    Ok(CharModel::new(
        store,
        kind,
        vocab,
        cfg.embed,
        hidden,
        cfg.layers,
        &mut chainrule::nn::rng(cfg.seed),
    )?)
}

/// Parameter values of the character model `cfg` describes (`None`: no hidden size, or
/// an overflow), to check a checkpoint before the model is built.
pub(crate) fn char_param_count(cfg: &RunConfig, kind: CellKind, vocab: usize) -> Option<usize> {
    let hidden = *cfg.hidden.first()?;
    CharModel::param_count(kind, vocab, cfg.embed, hidden, cfg.layers)
}

/// The shape of the GPT `cfg` describes over a vocabulary of `vocab` characters (tied
/// head, no biases: the W11 recipe's).
pub(crate) fn gpt_config(cfg: &RunConfig, vocab: usize) -> GptConfig {
    GptConfig {
        vocab,
        context: cfg.seq_len,
        layers: cfg.layers,
        heads: cfg.heads,
        embed: cfg.embed,
        bias: false,
        tied: true,
        dropout: cfg.dropout,
    }
}

/// The GPT of a run, its parameters in nanoGPT's weight-decay groups.
pub(crate) fn gpt_model(
    cfg: &RunConfig,
    vocab: usize,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<Gpt> {
    let model = Gpt::new(
        store,
        gpt_config(cfg, vocab),
        &mut chainrule::nn::rng(cfg.seed),
    )?;
    Gpt::set_decay_groups(store);
    Ok(model)
}
