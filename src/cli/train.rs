//! `chainrule train` (the default command) and `chainrule eval`.

use anyhow::{Context, bail};
use chainrule::autodiff::CellKind;
use chainrule::data::{
    Dataset, EMBEDDED_TEXTS, LabelColumn, Standardizer, Streams, TextCorpus, load_csv, load_mnist,
    unigram_entropy,
};
use chainrule::nn::{Activation, CharModel, Init, Mlp, ParamStore};
use chainrule::optim::{LrSchedule, OptimizerKind, Schedule};
use chainrule::train::{
    CHECKPOINT_FILE, Callback, CheckpointMeta, CheckpointWriter, Classification, Collective,
    DataIdentity, LanguageModel, MetricsLog, Objective, Position, Progress, StopReason,
    TrainConfig, Trainer, evaluate, load_checkpoint, plot_history, read_evaluations,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `chainrule train`. Unset options take the defaults shown, or, with
/// `--resume`, the values the run was started with.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Args {
    /// Dataset: `digits` (embedded), `mnist:DIR` (the four IDX files), `csv:FILE`, or
    /// text for a character-level language model: `text:FILE` (UTF-8), or `tragedies`
    /// (seven of Shakespeare's tragedies) or `macbeth` (embedded).
    #[arg(long)]
    data: Option<String>,
    /// Model: `mlp` (for digits, MNIST and CSV), or `lstm`, `gru`, `rnn` (for text)
    /// [default: mlp, or lstm for text].
    #[arg(long)]
    model: Option<String>,
    /// Embedding size of a character model [default: 64].
    #[arg(long)]
    embed: Option<usize>,
    /// Recurrent layers of a character model [default: 2].
    #[arg(long)]
    layers: Option<usize>,
    /// Characters per window of truncated backpropagation through time [default: 64].
    #[arg(long)]
    seq_len: Option<usize>,
    /// CSV label column, by name or 0-based index [default: last].
    #[arg(long)]
    label: Option<String>,
    /// Hidden layer sizes of an MLP [default: 128,64], or the hidden size of a recurrent
    /// model [default: 256].
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Weight initialisation of an MLP: he (He/Kaiming uniform), xavier (Glorot uniform)
    /// or torch (PyTorch's `nn.Linear` default, U(±1/√fan_in) for weights and biases)
    /// [default: torch].
    #[arg(long)]
    init: Option<String>,
    /// Hidden activation: relu, tanh or sigmoid [default: relu].
    #[arg(long)]
    activation: Option<String>,
    /// Dropout probability after each hidden layer [default: 0].
    #[arg(long)]
    dropout: Option<f64>,
    /// sgd, momentum, nesterov, adagrad, rmsprop, adam or adamw [default: adam].
    #[arg(long)]
    optimizer: Option<String>,
    /// Learning rate [default: 0.001; 0.003 for text].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Weight decay [default: the optimizer's PyTorch default].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule: constant, cosine or step:EVERY:GAMMA [default: constant;
    /// cosine for text].
    #[arg(long)]
    schedule: Option<String>,
    /// Linear warm-up steps [default: 0].
    #[arg(long)]
    warmup: Option<usize>,
    /// Samples per step, or streams of a character model [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Clip the global gradient norm to this value [default: 1.0].
    #[arg(long, allow_negative_numbers = true)]
    clip_norm: Option<f64>,
    /// Turn gradient-norm clipping off.
    #[arg(long)]
    no_clip: bool,
    /// Clip each gradient element to ±this value [default: off].
    #[arg(long, allow_negative_numbers = true)]
    clip_value: Option<f64>,
    /// Stop when validation accuracy reaches this (a character model: when the validation
    /// loss falls to this, in nats per character), or `none` [default: 0.97; none for text].
    #[arg(long)]
    target: Option<Limit<f64>>,
    /// Stop after this many evaluations without improvement, or `none` [default: 20].
    #[arg(long)]
    patience: Option<Limit<usize>>,
    /// Stop after this many epochs, or `none` [default: 1000].
    #[arg(long)]
    max_epochs: Option<Limit<usize>>,
    /// Stop after this many steps, or `none` [default: none; 5000 for text].
    #[arg(long)]
    max_steps: Option<Limit<usize>>,
    /// Stop after this many seconds of training, or `none` [default: 60; 600 for text].
    #[arg(long)]
    max_time: Option<Limit<f64>>,
    /// Evaluate every k steps instead of every epoch [default: every epoch; 500 for text].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Fraction of the data held out for validation (digits, CSV) [default: 0.2].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Put the best validation weights back at the end.
    #[arg(long)]
    restore_best: bool,
    /// Seed of the split, initialisation, batch order and dropout [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder for the metrics log, plot, report and checkpoint [default: runs/run-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Besides the evaluations that improve the best metric and the end of the run, also
    /// write the checkpoint at every K-th evaluation [default: never].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// Continue the run saved in this folder (its checkpoint.safetensors).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Train data-parallel across the processes of an MPI job: `mpirun -np N chainrule
    /// train --distributed ...` (a build with `--features mpi`). `--batch-size` stays the
    /// global batch, so the same options train the same model on 1 or N processes; rank 0
    /// writes the output folder.
    #[arg(long)]
    distributed: bool,
    /// Print the final report as one JSON object (and no progress).
    #[arg(long)]
    json: bool,
    /// Write one training step's graph (op, shape, gradient norm per node, grouped by
    /// layer) to this Graphviz DOT file.
    #[arg(long)]
    graph: Option<PathBuf>,
    /// Stop with the first op whose backward pass produced NaN or infinity.
    #[arg(long)]
    detect_anomaly: bool,
    /// With --distributed: sum each gradient across processes while the backward sweep
    /// computes the next one (MPI's non-blocking all-reduce), instead of after the sweep.
    /// Measured slower on one machine (docs/distributed.md); meant for clusters, where
    /// the network moves the bytes.
    #[arg(long, requires = "distributed")]
    overlap: bool,
    /// Record every step on the tape; by default a step whose graph and shapes repeat the
    /// previous one's is replayed from its recording (same values, less bookkeeping).
    #[arg(long)]
    eager: bool,
    /// Print where the training time went, phase by phase (forward, backward, clipping,
    /// optimizer, evaluation, logging and checkpoints); the JSON report always has it
    /// under `profile`.
    #[arg(long)]
    profile: bool,
}

/// A stop limit on the command line: a value, or `none` to switch the limit off.
#[derive(Clone, Copy, Debug)]
pub struct Limit<T>(Option<T>);

impl<T: std::str::FromStr> std::str::FromStr for Limit<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Limit(None));
        }
        s.parse()
            .map(|v| Limit(Some(v)))
            .map_err(|e| format!("{e} (give a number, or 'none' to switch this limit off)"))
    }
}

/// The option's value when given (`Some(None)` for `none`), else the saved or default one.
fn limit<T: Copy>(given: Option<Limit<T>>, base: Option<T>) -> Option<T> {
    match given {
        Some(Limit(v)) => v,
        None => base,
    }
}

/// The resolved settings of a run, stored in its checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    data: String,
    #[serde(default = "mlp")]
    model: String,
    #[serde(default)]
    embed: usize,
    #[serde(default)]
    layers: usize,
    #[serde(default)]
    seq_len: usize,
    label: Option<String>,
    hidden: Vec<usize>,
    activation: Activation,
    #[serde(default)]
    init: Option<String>,
    dropout: f64,
    optimizer: OptimizerKind,
    lr: f64,
    weight_decay: Option<f64>,
    schedule: String,
    warmup: usize,
    batch_size: usize,
    clip_norm: Option<f64>,
    clip_value: Option<f64>,
    target: Option<f64>,
    patience: Option<usize>,
    max_epochs: Option<usize>,
    max_steps: Option<usize>,
    max_time: Option<f64>,
    eval_every: Option<usize>,
    val_fraction: f64,
    restore_best: bool,
    seed: u64,
}

/// Whether `--data` names text for a character model (`text:FILE`, or an embedded text:
/// `macbeth`, `tragedies`).
fn is_text(data: &str) -> bool {
    data.starts_with("text:") || EMBEDDED_TEXTS.contains(&data)
}

fn mlp() -> String {
    "mlp".into()
}

/// The recurrent cell of a `--model` name (`None` for `mlp`).
fn cell_kind(model: &str) -> anyhow::Result<Option<CellKind>> {
    Ok(match model {
        "mlp" => None,
        "lstm" => Some(CellKind::Lstm),
        "gru" => Some(CellKind::Gru),
        "rnn" => Some(CellKind::Rnn),
        _ => bail!("--model: unknown model '{model}'; choose mlp, lstm, gru or rnn"),
    })
}

fn parse_init(s: &str) -> anyhow::Result<Init> {
    Ok(match s {
        "he" => Init::HeUniform,
        "xavier" => Init::XavierUniform,
        "torch" => Init::TorchDefault,
        _ => bail!("--init: unknown initialisation '{s}'; choose he, xavier or torch"),
    })
}

fn parse_activation(s: &str) -> anyhow::Result<Activation> {
    Ok(match s {
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        "sigmoid" => Activation::Sigmoid,
        _ => bail!("--activation: unknown activation '{s}'; choose relu, tanh or sigmoid"),
    })
}

fn positive(name: &str, v: Option<f64>) -> anyhow::Result<Option<f64>> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            bail!("{name} must be a positive number, got {x}")
        }
        _ => Ok(v),
    }
}

impl RunConfig {
    /// Defaults, overridden by the options given (on top of `base` when resuming).
    fn resolve(a: &Args, base: Option<RunConfig>) -> anyhow::Result<RunConfig> {
        let text = a
            .data
            .as_deref()
            .or(base.as_ref().map(|b| b.data.as_str()))
            .is_some_and(is_text);
        let b = base.unwrap_or(if text {
            // a character-level language model: the best recipe found for 600 s on the
            // tragedies (README, "Character-level language model")
            RunConfig {
                data: String::new(),
                model: "lstm".into(),
                embed: 64,
                layers: 2,
                seq_len: 64,
                label: None,
                hidden: vec![256],
                activation: Activation::Tanh,
                init: None,
                dropout: 0.0,
                optimizer: OptimizerKind::Adam,
                lr: 3e-3,
                weight_decay: None,
                schedule: "cosine".into(),
                warmup: 0,
                batch_size: 32,
                clip_norm: Some(1.0),
                clip_value: None,
                target: None,
                patience: Some(20),
                max_epochs: Some(1000),
                max_steps: Some(5000),
                max_time: Some(600.0),
                eval_every: Some(500),
                val_fraction: 0.1,
                restore_best: false,
                seed: 0,
            }
        } else {
            RunConfig {
                data: "digits".into(),
                model: mlp(),
                embed: 0,
                layers: 0,
                seq_len: 0,
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
        });
        let lr = a.lr.unwrap_or(b.lr);
        if !(lr.is_finite() && lr >= 0.0) {
            bail!("--lr must be a non-negative number, got {lr}");
        }
        let optimizer = match &a.optimizer {
            Some(s) => s
                .parse::<OptimizerKind>()
                .map_err(|e| anyhow::anyhow!("--optimizer: {e}"))?,
            None => b.optimizer,
        };
        let dropout = a.dropout.unwrap_or(b.dropout);
        if !(0.0..1.0).contains(&dropout) {
            bail!("--dropout must be in [0, 1), got {dropout}");
        }
        let val_fraction = a.val_fraction.unwrap_or(b.val_fraction);
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            bail!("--val-fraction must be between 0 and 1, got {val_fraction}");
        }
        let hidden = a.hidden.clone().unwrap_or(b.hidden);
        if hidden.contains(&0) {
            bail!("--hidden: layer sizes must be positive, got {hidden:?}");
        }
        let batch_size = a.batch_size.unwrap_or(b.batch_size);
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let data = a.data.clone().unwrap_or(b.data);
        let model = a.model.clone().unwrap_or(b.model);
        let recurrent = cell_kind(&model)?.is_some();
        if recurrent != text {
            bail!(
                "--model {model} does not train on --data {data}: text data takes lstm, gru or rnn, the others take mlp"
            );
        }
        let (embed, layers, seq_len) = (
            a.embed.unwrap_or(b.embed),
            a.layers.unwrap_or(b.layers),
            a.seq_len.unwrap_or(b.seq_len),
        );
        if text {
            for (flag, v) in [
                ("--embed", embed),
                ("--layers", layers),
                ("--seq-len", seq_len),
            ] {
                if v == 0 {
                    bail!("{flag} must be at least 1");
                }
            }
            if hidden.len() != 1 {
                bail!(
                    "--hidden: a recurrent model takes one hidden size (stack layers with --layers), got {hidden:?}"
                );
            }
            if a.val_fraction.is_some() {
                bail!("--val-fraction: text data always validates on its last 10%");
            }
            if a.init.is_some() {
                bail!("--init: a character model always starts from PyTorch's initialisation");
            }
        }
        let cfg = RunConfig {
            data,
            model,
            embed,
            layers,
            seq_len,
            label: a.label.clone().or(b.label),
            hidden,
            activation: match &a.activation {
                Some(s) => parse_activation(s)?,
                None => b.activation,
            },
            init: match &a.init {
                Some(s) => {
                    parse_init(s)?;
                    Some(s.clone())
                }
                None => b.init,
            },
            dropout,
            optimizer,
            lr,
            weight_decay: a.weight_decay.or(b.weight_decay),
            schedule: a.schedule.clone().unwrap_or(b.schedule),
            warmup: a.warmup.unwrap_or(b.warmup),
            batch_size,
            clip_norm: if a.no_clip {
                None
            } else {
                positive("--clip-norm", a.clip_norm.or(b.clip_norm))?
            },
            clip_value: positive("--clip-value", a.clip_value.or(b.clip_value))?,
            target: limit(a.target, b.target),
            patience: limit(a.patience, b.patience),
            max_epochs: limit(a.max_epochs, b.max_epochs),
            max_steps: limit(a.max_steps, b.max_steps),
            max_time: positive("--max-time", limit(a.max_time, b.max_time))?,
            eval_every: a.eval_every.or(b.eval_every),
            val_fraction,
            restore_best: a.restore_best || b.restore_best,
            seed: a.seed.unwrap_or(b.seed),
        };
        cfg.lr_schedule(0)?;
        if let Some(t) = cfg.target
            && !t.is_finite()
        {
            bail!("--target must be a finite number, got {t}");
        }
        if cfg.schedule == "cosine" && cfg.max_epochs.is_none() && cfg.max_steps.is_none() {
            bail!(
                "--schedule cosine needs --max-epochs or --max-steps: the cosine ends where the run ends"
            );
        }
        if cfg.patience.is_none()
            && cfg.max_epochs.is_none()
            && cfg.max_steps.is_none()
            && cfg.max_time.is_none()
        {
            bail!(
                "--patience, --max-epochs, --max-steps and --max-time are all off: keep at least one so that the run ends"
            );
        }
        Ok(cfg)
    }

    /// With `--resume`: refuses any option that would change the data split, the model or
    /// the batch layout of the saved run, naming the option and the saved value.
    fn refuse_changes(a: &Args, saved: &RunConfig) -> anyhow::Result<()> {
        fn same<T: PartialEq + std::fmt::Debug>(
            flag: &str,
            given: Option<T>,
            saved: T,
        ) -> anyhow::Result<()> {
            match given {
                Some(g) if g != saved => bail!(
                    "--resume: {flag} {g:?} differs from the saved run's {saved:?}; a resumed run keeps its data split, model and batch layout (drop {flag}, or start a new run)"
                ),
                _ => Ok(()),
            }
        }
        same("--data", a.data.as_ref(), &saved.data)?;
        same("--model", a.model.as_ref(), &saved.model)?;
        same("--embed", a.embed, saved.embed)?;
        same("--layers", a.layers, saved.layers)?;
        same("--seq-len", a.seq_len, saved.seq_len)?;
        // no label option means the last column
        let label = |l: Option<&String>| l.map_or("last".to_string(), String::clone);
        same(
            "--label",
            a.label.as_ref().map(|l| label(Some(l))),
            label(saved.label.as_ref()),
        )?;
        same("--val-fraction", a.val_fraction, saved.val_fraction)?;
        same("--seed", a.seed, saved.seed)?;
        same("--hidden", a.hidden.as_ref(), &saved.hidden)?;
        let activation = a.activation.as_deref().map(parse_activation).transpose()?;
        same("--activation", activation, saved.activation)?;
        let saved_init = saved.init.clone().unwrap_or_else(|| "torch".into());
        same("--init", a.init.as_ref(), &saved_init)?;
        same("--dropout", a.dropout, saved.dropout)?;
        let optimizer = match &a.optimizer {
            Some(s) => Some(
                s.parse::<OptimizerKind>()
                    .map_err(|e| anyhow::anyhow!("--optimizer: {e}"))?,
            ),
            None => None,
        };
        same("--optimizer", optimizer, saved.optimizer)?;
        same("--batch-size", a.batch_size, saved.batch_size)
    }

    fn lr_schedule(&self, total_steps: usize) -> anyhow::Result<LrSchedule> {
        let schedule = match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine {
                total: total_steps.max(1),
                min_lr: 0.0,
            },
            s if s.starts_with("step:") => {
                let parts: Vec<&str> = s.split(':').collect();
                match (
                    parts.get(1).and_then(|v| v.parse().ok()),
                    parts.get(2).and_then(|v| v.parse().ok()),
                ) {
                    (Some(every), Some(gamma)) if parts.len() == 3 => {
                        Schedule::Step { every, gamma }
                    }
                    _ => bail!("--schedule: expected step:EVERY:GAMMA, got '{s}'"),
                }
            }
            s => bail!(
                "--schedule: unknown schedule '{s}'; choose constant, cosine or step:EVERY:GAMMA"
            ),
        };
        Ok(LrSchedule {
            base_lr: self.lr,
            schedule,
            warmup: self.warmup,
        })
    }
}

/// Training and evaluation splits, standardised with the training split's statistics
/// (per feature for tabular data; one mean and deviation over all pixels for MNIST).
pub struct Splits {
    pub(super) train: Dataset,
    val: Dataset,
    standardizer: Standardizer,
    eval_name: &'static str,
    /// The data as loaded, before standardisation.
    identity: DataIdentity,
}

/// The identity of a classification set: its features and labels, training and
/// validation, as loaded.
fn dataset_identity(source: &str, train: &Dataset, val: &Dataset) -> DataIdentity {
    let words = |d: &Dataset| {
        let features = d.features.data().iter().map(|v| v.to_bits());
        features
            .chain(d.labels.iter().map(|&l| l as u32))
            .collect::<Vec<u32>>()
    };
    let (a, b) = (words(train), words(val));
    DataIdentity::of(source, train.len() + val.len(), a.into_iter().chain(b))
}

fn load_splits(cfg: &RunConfig, standardizer: Option<Standardizer>) -> anyhow::Result<Splits> {
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
        if eval_name == "test" {
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
fn layer_sizes(cfg: &RunConfig, inputs: usize, classes: usize) -> Vec<usize> {
    let mut sizes = vec![inputs];
    sizes.extend(&cfg.hidden);
    sizes.push(classes);
    sizes
}

fn build_model(
    cfg: &RunConfig,
    sizes: &[usize],
    store: &mut ParamStore<f32>,
) -> anyhow::Result<Mlp> {
    let init = match &cfg.init {
        Some(s) => parse_init(s)?,
        // PyTorch's default: over 5 seeds it reached 98% on MNIST in a median of 9
        // epochs where He uniform needed 10 (README, "Same recipe, same epochs")
        None => Init::TorchDefault,
    };
    Ok(Mlp::new(store, sizes, cfg.activation, init, cfg.seed)?.with_dropout(cfg.dropout))
}

/// A character model's data: the corpus and its streams.
pub(super) struct TextData {
    pub(super) corpus: TextCorpus,
    pub(super) train: Streams,
    pub(super) val: Streams,
}

impl TextData {
    /// The text's identity: its characters' ids, training and validation.
    fn identity(&self, source: &str) -> DataIdentity {
        let (train, val) = (self.corpus.train(), self.corpus.val());
        let ids = train.iter().chain(val).copied();
        DataIdentity::of(source, train.len() + val.len(), ids)
    }
}

fn load_text(cfg: &RunConfig, saved_vocab: Option<&str>) -> anyhow::Result<TextData> {
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
enum Problem {
    Classifier { splits: Splits, model: Mlp },
    Text { text: TextData, model: CharModel },
}

impl Problem {
    /// What identifies the run's data (recorded in the checkpoint, compared on
    /// `--resume` and across the ranks of a data-parallel run).
    fn identity(&self, source: &str) -> DataIdentity {
        match self {
            Problem::Classifier { splits, .. } => splits.identity.clone(),
            Problem::Text { text, .. } => text.identity(source),
        }
    }
}

fn char_model(
    cfg: &RunConfig,
    kind: CellKind,
    vocab: usize,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<CharModel> {
    let Some(&hidden) = cfg.hidden.first() else {
        bail!("the run's configuration has no hidden size");
    };
    Ok(CharModel::new(
        store, kind, vocab, cfg.embed, hidden, cfg.layers, cfg.seed,
    )?)
}

/// Parameter values of the character model `cfg` describes (`None`: no hidden size, or
/// an overflow), to check a checkpoint before the model is built.
fn char_param_count(cfg: &RunConfig, kind: CellKind, vocab: usize) -> Option<usize> {
    let hidden = *cfg.hidden.first()?;
    CharModel::param_count(kind, vocab, cfg.embed, hidden, cfg.layers)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.distributed {
        return run_distributed(args);
    }
    run_with(args, None)
}

/// `--distributed`: one process of an MPI job. An error on any process aborts the whole
/// job (after this process's one line), so no process waits forever on one that failed.
#[cfg(feature = "mpi")]
fn run_distributed(args: Args) -> anyhow::Result<ExitCode> {
    use mpi::traits::Communicator;
    let universe = mpi::initialize()
        .ok_or_else(|| anyhow::anyhow!("--distributed: MPI was already started"))?;
    let world = universe.world();
    let rank = world.rank();
    let collective = chainrule::train::mpi::MpiCollective::new(universe.world());
    match run_with(args, Some(Box::new(collective))) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: rank {rank} of {}: {e:#}", world.size());
            world.abort(1)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn run_distributed(_args: Args) -> anyhow::Result<ExitCode> {
    bail!(
        "--distributed: this chainrule was built without MPI; build it with `cargo build --release --features mpi` (README, \"Data-parallel training\")"
    )
}

/// What must be equal on every process of a data-parallel run: the configuration and a
/// hash of the training and validation data, as JSON.
fn run_fingerprint(cfg: &RunConfig, problem: &Problem) -> anyhow::Result<serde_json::Value> {
    let data = serde_json::to_value(problem.identity(&cfg.data))?;
    Ok(serde_json::json!({"configuration": serde_json::to_value(cfg)?, "data": data}))
}

/// Refuses to train unless every process has rank 0's configuration and data; the
/// process that differs names the first difference.
fn check_same_run(c: &dyn Collective, mine: &serde_json::Value) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec(mine)?;
    c.broadcast_bytes(&mut bytes)?;
    let theirs: serde_json::Value = serde_json::from_slice(&bytes)?;
    let mut difference = None;
    for part in ["configuration", "data"] {
        if let (Some(a), Some(b)) = (mine[part].as_object(), theirs[part].as_object()) {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            if let Some(k) = keys.into_iter().find(|k| a.get(*k) != b.get(*k)) {
                difference = Some(format!(
                    "its {part} differs from rank 0's at '{k}': {} here, {} on rank 0",
                    a.get(k).unwrap_or(&serde_json::Value::Null),
                    b.get(k).unwrap_or(&serde_json::Value::Null)
                ));
                break;
            }
        }
    }
    let any = c.any(difference.is_some())?;
    match difference {
        Some(d) => bail!("{d}; every process must train the same run"),
        None if any => {
            // the process that differs says how and aborts the job; give it the time to
            let pause = std::time::Duration::from_secs(5);
            std::thread::sleep(pause);
            bail!("another process's configuration or data differs from rank 0's")
        }
        None => Ok(()),
    }
}

fn run_with(args: Args, collective: Option<Box<dyn Collective>>) -> anyhow::Result<ExitCode> {
    let resumed = match &args.resume {
        Some(dir) => Some(
            load_checkpoint(&dir.join(CHECKPOINT_FILE))
                .with_context(|| format!("--resume {}", dir.display()))?,
        ),
        None => None,
    };
    let base: Option<RunConfig> = match &resumed {
        Some(c) => Some(
            serde_json::from_value(c.meta.config.clone())
                .context("the checkpoint's configuration is not readable")?,
        ),
        None => None,
    };
    let resume_context = || {
        let dir = args.resume.clone().unwrap_or_default();
        format!("--resume {}", dir.join(CHECKPOINT_FILE).display())
    };
    if let Some(saved) = &base {
        RunConfig::refuse_changes(&args, saved)?;
    }
    let cfg = RunConfig::resolve(&args, base)?;
    // everything is validated before anything is written: the data, the model, the
    // checkpoint's tensors and the trainer's settings
    let mut store = ParamStore::<f32>::new();
    let problem = match cell_kind(&cfg.model)? {
        None => {
            let splits = load_splits(
                &cfg,
                resumed.as_ref().and_then(|c| c.meta.standardizer.clone()),
            )?;
            let sizes = layer_sizes(
                &cfg,
                splits.train.dim(),
                splits.train.num_classes.max(splits.val.num_classes),
            );
            if let Some(c) = &resumed {
                c.check_sizes(&sizes).with_context(resume_context)?;
            }
            let model = build_model(&cfg, &sizes, &mut store)?;
            Problem::Classifier { splits, model }
        }
        Some(kind) => {
            let text = load_text(&cfg, resumed.as_ref().and_then(|c| c.meta.vocab.as_deref()))?;
            let vocab = text.corpus.vocab().len();
            if let Some(c) = &resumed {
                c.check_param_count(char_param_count(&cfg, kind, vocab))
                    .with_context(resume_context)?;
            }
            let model = char_model(&cfg, kind, vocab, &mut store)?;
            Problem::Text { text, model }
        }
    };
    if let Some(saved) = resumed.as_ref().and_then(|c| c.meta.data.as_ref()) {
        saved.check_same(&problem.identity(&cfg.data))?;
    }

    let mut optimizer = cfg.optimizer.build::<f32>(cfg.lr, cfg.weight_decay)?;
    let mut objective: Box<dyn Objective + '_> = match &problem {
        Problem::Classifier { splits, model } => Box::new(Classification::new(
            model,
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
    };
    let batches_per_epoch = objective.batches_per_epoch();
    let total_steps = cfg.max_steps.unwrap_or(usize::MAX).min(
        cfg.max_epochs
            .unwrap_or(100)
            .saturating_mul(batches_per_epoch),
    );
    let mut position = Position::default();
    if let Some(c) = &resumed {
        c.restore_params(&mut store).with_context(resume_context)?;
        optimizer
            .load_state(c.optimizer.0.clone(), c.optimizer.1, &store)
            .with_context(resume_context)?;
        position = c.meta.position.clone();
        if position.history.is_empty() {
            let log = args
                .resume
                .clone()
                .unwrap_or_default()
                .join("metrics.jsonl");
            position.history = read_evaluations(&log, position.step);
        }
        position.best_weights = c.best_weights(&store).with_context(resume_context)?;
        if position.batch > 0 {
            // checked now, before anything is written
            objective.start_epoch(position.epoch, cfg.seed)?;
            objective
                .restore_carried_state(position.carried.clone())
                .with_context(resume_context)?;
        }
    }

    let trainer = Trainer::new(TrainConfig {
        batch_size: cfg.batch_size,
        schedule: cfg.lr_schedule(total_steps)?,
        clip_norm: cfg.clip_norm,
        clip_value: cfg.clip_value,
        target: cfg.target,
        patience: cfg.patience,
        max_epochs: cfg.max_epochs,
        max_steps: cfg.max_steps,
        max_seconds: cfg.max_time,
        eval_every: cfg.eval_every,
        divergence_factor: Some(1e3),
        seed: cfg.seed,
        restore_best: cfg.restore_best,
        detect_anomaly: args.detect_anomaly,
        replay: !args.eager,
    })?;
    // rank 0 of a data-parallel run (or a single process) writes the run's files
    let writer = collective.as_ref().is_none_or(|c| c.rank() == 0);
    let trainer = match collective {
        None => trainer,
        Some(c) => {
            check_same_run(c.as_ref(), &run_fingerprint(&cfg, &problem)?)?;
            objective.shard(c.rank(), c.ranks())?;
            let trainer = trainer.with_collective(c);
            if args.overlap {
                trainer.with_overlapped_sums()
            } else {
                trainer
            }
        }
    };

    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("runs/run-{secs}"))
        }
    };
    if writer {
        std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    }
    if let Some(path) = args.graph.as_ref().filter(|_| writer) {
        let dot = chainrule::train::step_graph(objective.as_mut(), &store, cfg.seed)?;
        chainrule::nn::write_atomically(path, dot.as_bytes())?;
        if !args.json {
            eprintln!(
                "wrote one step's graph to {} (render: dot -Tsvg {} -o graph.svg)",
                path.display(),
                path.display()
            );
        }
    }
    let clipping = cfg
        .clip_norm
        .map(|c| format!("at norm {c}"))
        .unwrap_or("off".into());
    let (eval_name, sizes, vocab, standardizer) = match &problem {
        Problem::Classifier { splits, model } => {
            if writer && !args.json {
                eprintln!(
                    "training an MLP {:?} on {} ({} train / {} {} samples) with {:?}, lr {}, batch {}, clipping {clipping}; output in {}",
                    model.sizes,
                    cfg.data,
                    splits.train.len(),
                    splits.val.len(),
                    splits.eval_name,
                    cfg.optimizer,
                    cfg.lr,
                    cfg.batch_size,
                    out.display()
                );
            }
            (
                splits.eval_name,
                model.sizes.clone(),
                None,
                Some(splits.standardizer.clone()),
            )
        }
        Problem::Text { text, model } => {
            if writer && !args.json {
                eprintln!(
                    "training a character {} ({} layers of {}, embedding {}, {} parameters) on {} ({} train / {} validation characters, vocabulary {}, unigram entropy {:.3} nats) with {:?}, lr {}, {} streams × {} characters, clipping {clipping}; output in {}",
                    cfg.model.to_uppercase(),
                    cfg.layers,
                    model.rnn.hidden_size,
                    model.embed,
                    store.num_elements(),
                    text.corpus.name(),
                    text.corpus.train().len(),
                    text.corpus.val().len(),
                    model.vocab,
                    unigram_entropy(text.corpus.train()),
                    cfg.optimizer,
                    cfg.lr,
                    cfg.batch_size,
                    cfg.seq_len,
                    out.display()
                );
            }
            (
                "validation",
                Vec::new(),
                Some(text.corpus.vocab().iter().collect::<String>()),
                None,
            )
        }
    };
    let meta = CheckpointMeta {
        version: 1,
        sizes,
        activation: cfg.activation,
        dropout: cfg.dropout,
        standardizer,
        vocab,
        position: position.clone(),
        config: serde_json::to_value(&cfg)?,
        data: Some(problem.identity(&cfg.data)),
    };
    let (per_step, unit) = match &problem {
        Problem::Classifier { .. } => (cfg.batch_size, "samples"),
        Problem::Text { .. } => (cfg.batch_size.saturating_mul(cfg.seq_len), "chars"),
    };
    let mut progress = Progress::new(args.json, per_step, unit);
    let mut log = match &resumed {
        _ if !writer => None,
        Some(c) => Some(MetricsLog::resume(
            &args
                .resume
                .clone()
                .unwrap_or_default()
                .join("metrics.jsonl"),
            out.join("metrics.jsonl"),
            c.meta.position.step,
        )?),
        None => Some(MetricsLog::new(out.join("metrics.jsonl"))),
    };
    let mut ckpt = CheckpointWriter::new(out.join(CHECKPOINT_FILE), meta).every(
        args.checkpoint_every
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
    );
    let mut callbacks: Vec<&mut dyn Callback> = match &mut log {
        Some(log) => vec![&mut progress, log, &mut ckpt],
        None => Vec::new(),
    };
    let report = trainer.fit(
        objective.as_mut(),
        &mut store,
        optimizer.as_mut(),
        position,
        &mut callbacks,
    )?;
    let failed = matches!(
        report.stopped_by,
        StopReason::NonFinite | StopReason::Diverged
    );
    if !writer {
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }

    let plot_path = out.join("curves.svg");
    plot_history(&report.history, &report.step_norms, &plot_path)?;
    let mut json = serde_json::to_value(&report)?;
    json["out"] = serde_json::json!(out.display().to_string());
    json["eval_split"] = serde_json::json!(eval_name);
    json["data"] = serde_json::json!(cfg.data);
    json["model"] = serde_json::json!(cfg.model);
    let text = matches!(problem, Problem::Text { .. });
    if text {
        let best_loss = report.best_val_metric;
        json["best_val_loss"] = serde_json::json!(best_loss);
        json["best_val_bits_per_char"] = serde_json::json!(best_loss / std::f64::consts::LN_2);
    }
    chainrule::nn::write_atomically(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    if args.json {
        json.as_object_mut().expect("object").remove("history");
        println!("{}", serde_json::to_string(&json)?);
    } else {
        let c = &report.clipping;
        println!(
            "stopped by:        {:?} ({})",
            report.stopped_by, report.stop_detail
        );
        if text {
            let ln2 = std::f64::consts::LN_2;
            println!(
                "best val loss:     {:.4} nats/char = {:.4} bits/char (step {})",
                report.best_val_metric,
                report.best_val_metric / ln2,
                report.best_step
            );
            println!(
                "final val loss:    {:.4} nats/char = {:.4} bits/char",
                report.final_val_loss,
                report.final_val_loss / ln2
            );
        } else {
            println!(
                "best {} acc:   {:.4} (step {})",
                eval_name, report.best_val_metric, report.best_step
            );
            println!("final {} acc:  {:.4}", eval_name, report.final_val_metric);
        }
        println!("epochs, steps:     {}, {}", report.epochs, report.steps);
        println!(
            "training time:     {:.3} s ({:.0} {unit}/s)",
            report.seconds, report.samples_per_second
        );
        println!(
            "gradient norms:    {:.3} .. {:.3} (mean {:.3}); clipped in {} of {} steps",
            c.min_norm, c.max_norm, c.mean_norm, c.clipped_steps, c.steps
        );
        println!(
            "written:           {}/metrics.jsonl, curves.svg, report.json, {CHECKPOINT_FILE}",
            out.display()
        );
        if args.profile {
            let total: f64 = report.profile.named().iter().map(|(_, s)| s).sum();
            println!("where the time went ({total:.3} s):");
            // a single process has nothing to all-reduce: no line for it
            let phases = report.profile.named();
            for (phase, s) in phases
                .into_iter()
                .filter(|&(p, s)| p != "all-reduce" || s > 0.0)
            {
                println!(
                    "  {phase:<26} {s:>9.3} s  {:>5.1}%",
                    100.0 * s / total.max(1e-12)
                );
            }
        }
    }
    if let Some(w) = &report.clipping.first_norm_growth {
        eprintln!(
            "warning: {w}{}",
            match report.clipping.norm_growth_events {
                1 => String::new(),
                n => format!(" ({n} such growths in the run)"),
            }
        );
    }
    if failed {
        eprintln!(
            "error: training failed: {}; the last good checkpoint is {}",
            report.stop_detail,
            out.join(CHECKPOINT_FILE).display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `chainrule eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A run folder (holding checkpoint.safetensors) or a checkpoint file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset to evaluate on [default: the run's]; its validation (or MNIST test) split is used.
    #[arg(long)]
    data: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A saved run: its checkpoint file, the checkpoint, and its configuration with the data
/// replaced by `data` when given.
pub(super) struct SavedRun {
    pub(super) file: PathBuf,
    pub(super) ckpt: chainrule::train::Checkpoint,
    pub(super) cfg: RunConfig,
}

impl SavedRun {
    /// Reads `checkpoint` (a run folder or a checkpoint file).
    pub(super) fn load(checkpoint: &Path, data: Option<String>) -> anyhow::Result<Self> {
        let file = if checkpoint.is_dir() {
            checkpoint.join(CHECKPOINT_FILE)
        } else {
            checkpoint.to_path_buf()
        };
        let ckpt = load_checkpoint(&file)
            .with_context(|| format!("--checkpoint {}", checkpoint.display()))?;
        let mut cfg: RunConfig = serde_json::from_value(ckpt.meta.config.clone())
            .context("the checkpoint's configuration is not readable")?;
        if let Some(d) = data {
            cfg.data = d;
        }
        Ok(SavedRun { file, ckpt, cfg })
    }

    /// The run's base learning rate.
    pub(super) fn cfg_lr(&self) -> f64 {
        self.cfg.lr
    }

    /// The run's optimizer, as named on the command line.
    pub(super) fn cfg_optimizer(&self) -> String {
        serde_json::to_value(self.cfg.optimizer)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", self.cfg.optimizer).to_lowercase())
    }

    /// The character model of the run with its saved weights, and the run's text;
    /// `None` for a classifier's run.
    pub(super) fn char_model(
        &self,
    ) -> anyhow::Result<Option<(CharModel, ParamStore<f32>, TextData)>> {
        let Some(kind) = cell_kind(&self.cfg.model)? else {
            return Ok(None);
        };
        let Some(vocab) = self.ckpt.meta.vocab.as_deref() else {
            bail!(
                "{}: a character model's checkpoint without its vocabulary",
                self.file.display()
            );
        };
        let text = load_text(&self.cfg, Some(vocab))?;
        let size = char_param_count(&self.cfg, kind, text.corpus.vocab().len());
        self.ckpt
            .check_param_count(size)
            .with_context(|| format!("--checkpoint {}", self.file.display()))?;
        let mut store = ParamStore::<f32>::new();
        let model = char_model(&self.cfg, kind, text.corpus.vocab().len(), &mut store)?;
        self.ckpt.restore_params(&mut store)?;
        Ok(Some((model, store, text)))
    }

    /// The MLP classifier of the run with its saved weights, and the run's data splits.
    pub(super) fn mlp(&self) -> anyhow::Result<(Mlp, ParamStore<f32>, Splits)> {
        let splits = load_splits(&self.cfg, self.ckpt.meta.standardizer.clone())?;
        let Some(&classes) = self.ckpt.meta.sizes.last() else {
            bail!(
                "{}: the checkpoint's model has no layers",
                self.file.display()
            );
        };
        let sizes = layer_sizes(&self.cfg, splits.val.dim(), classes);
        self.ckpt
            .check_sizes(&sizes)
            .with_context(|| format!("--checkpoint {}", self.file.display()))?;
        let mut store = ParamStore::<f32>::new();
        let model = build_model(&self.cfg, &sizes, &mut store)?;
        self.ckpt.restore_params(&mut store)?;
        Ok((model, store, splits))
    }
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let run = SavedRun::load(&args.checkpoint, args.data)?;
    let (dir, ckpt, cfg) = (&run.file, &run.ckpt, &run.cfg);
    if let Some((model, store, text)) = run.char_model()? {
        let lm = LanguageModel::new(&model, text.train.clone(), text.val.clone());
        let loss = lm.loss_over(&store, &text.val)?;
        let bpc = loss / std::f64::consts::LN_2;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"data": cfg.data, "split": "validation", "characters": text.corpus.val().len(), "loss": loss, "bits_per_char": bpc, "step": ckpt.meta.position.step})
            );
        } else {
            println!(
                "{} on the validation text of {}: loss {loss:.4} nats/char = {bpc:.4} bits/char",
                dir.display(),
                cfg.data
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (model, store, splits) = run.mlp()?;
    let (loss, acc) = evaluate(&model, &store, &splits.val)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"data": cfg.data, "split": splits.eval_name, "samples": splits.val.len(), "loss": loss, "accuracy": acc, "step": ckpt.meta.position.step})
        );
    } else {
        println!(
            "{} on the {} split of {} ({} samples): accuracy {:.4}, loss {:.4}",
            dir.display(),
            splits.eval_name,
            cfg.data,
            splits.val.len(),
            acc,
            loss
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `chainrule sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// A run folder of a character model (holding checkpoint.safetensors) or its file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text the model reads before it writes; every character must be in its vocabulary
    /// [default: a newline].
    #[arg(long, default_value = "\n", hide_default_value = true)]
    prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    length: usize,
    /// Softmax temperature: below 1 is more conservative, 0 always picks the most likely
    /// character (greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Draw only among the k most likely characters [default: all].
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn sample(args: SampleArgs) -> anyhow::Result<ExitCode> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature must be a finite number ≥ 0 (0 is greedy), got {}",
            args.temperature
        );
    }
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let file = if args.checkpoint.is_dir() {
        args.checkpoint.join(CHECKPOINT_FILE)
    } else {
        args.checkpoint.clone()
    };
    let context = || format!("--checkpoint {}", args.checkpoint.display());
    let ckpt = load_checkpoint(&file).with_context(context)?;
    let cfg: RunConfig = serde_json::from_value(ckpt.meta.config.clone())
        .context("the checkpoint's configuration is not readable")?;
    let (Some(kind), Some(vocab)) = (cell_kind(&cfg.model)?, ckpt.meta.vocab.as_deref()) else {
        bail!(
            "{}: it holds an MLP classifier, not a character model; sample needs a run of `chainrule train --data text:FILE`",
            file.display()
        );
    };
    let chars: Vec<char> = vocab.chars().collect();
    let prompt: Vec<usize> = args
        .prompt
        .chars()
        .map(|ch| {
            chars.iter().position(|&v| v == ch).ok_or_else(|| {
                anyhow::anyhow!(
                    "--prompt: the character {ch:?} is not in the model's vocabulary of {} characters",
                    chars.len()
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if prompt.is_empty() {
        bail!("--prompt is empty; give at least one character");
    }
    ckpt.check_param_count(char_param_count(&cfg, kind, chars.len()))
        .with_context(context)?;
    let mut store = ParamStore::<f32>::new();
    let model = char_model(&cfg, kind, chars.len(), &mut store)?;
    ckpt.restore_params(&mut store).with_context(context)?;
    let ids = model.sample(
        &store,
        &prompt,
        args.length,
        args.temperature,
        args.top_k,
        args.seed,
    )?;
    let text: String = ids.iter().map(|&i| chars[i]).collect();
    println!("{}{text}", args.prompt);
    Ok(ExitCode::SUCCESS)
}
