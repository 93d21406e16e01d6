//! The options of `chainrule train` and the settings they resolve to (`RunConfig`),
//! with the checks a resumed run makes against its saved settings.

use super::*;

/// Options of `chainrule train`. Unset options take the defaults shown, or, with
/// `--resume`, the values the run was started with.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Args {
    /// Dataset: `digits` (embedded), `mnist:DIR` (the four IDX files), `csv:FILE`, or
    /// text for a character-level language model: `text:FILE` (UTF-8), or `tragedies`
    /// (seven of Shakespeare's tragedies) or `macbeth` (embedded).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Model: `mlp` or `cnn` (for digits, MNIST and CSV of square images), or `lstm`,
    /// `gru`, `rnn`, `gpt` (for text) [default: mlp, or lstm for text]. `cnn` defaults to
    /// the W12 recipe (PyTorch's MNIST example: convolutions of 32 and 64 channels 3×3,
    /// max pooling 2, dropout 0.25, a hidden layer of 128, dropout 0.5; Adadelta lr 1.0
    /// ×0.7 after every epoch, batch 64, no clipping, 14 epochs). `gpt` defaults to the
    /// W11 recipe (nanoGPT's character GPT: 4 layers, 4 heads, width 128, context 64,
    /// batch 12, AdamW, warm-up 100 and cosine to 1e-4 over --max-steps 2000).
    #[arg(long, value_parser = ModelKind::parse)]
    pub(crate) model: Option<ModelKind>,
    /// Embedding size of a character model [default: 64; 128 for gpt].
    #[arg(long)]
    pub(crate) embed: Option<usize>,
    /// Recurrent layers or transformer blocks of a character model [default: 2; 4 for
    /// gpt].
    #[arg(long)]
    pub(crate) layers: Option<usize>,
    /// Attention heads of a GPT; they divide --embed [default: 4].
    #[arg(long)]
    pub(crate) heads: Option<usize>,
    /// Characters per window of truncated backpropagation through time, or a GPT's
    /// context [default: 64].
    #[arg(long)]
    pub(crate) seq_len: Option<usize>,
    /// Output channels of each convolution of a CNN [default: 32,64].
    #[arg(long, value_delimiter = ',')]
    pub(crate) channels: Option<Vec<usize>>,
    /// Side of a CNN's square kernels [default: 3].
    #[arg(long)]
    pub(crate) kernel: Option<usize>,
    /// Dropout probability after a CNN's pooling [default: 0.25].
    #[arg(long)]
    pub(crate) conv_dropout: Option<f64>,
    /// CSV label column, by name or 0-based index [default: last].
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Hidden layer sizes of an MLP [default: 128,64] or of a CNN's fully connected part
    /// [default: 128], or the hidden size of a recurrent model [default: 256].
    #[arg(long, value_delimiter = ',')]
    pub(crate) hidden: Option<Vec<usize>>,
    /// Weight initialisation of an MLP: he (He/Kaiming uniform), xavier (Glorot uniform)
    /// or torch (PyTorch's `nn.Linear` default, U(±1/√fan_in) for weights and biases)
    /// [default: torch].
    #[arg(long)]
    pub(crate) init: Option<String>,
    /// Hidden activation: relu, tanh or sigmoid [default: relu].
    #[arg(long)]
    pub(crate) activation: Option<String>,
    /// Dropout probability after each hidden layer of an MLP or a CNN, or after a GPT's
    /// embeddings and each residual branch [default: 0; 0.5 for cnn].
    #[arg(long)]
    pub(crate) dropout: Option<f64>,
    /// sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw or adadelta [default: adam;
    /// adamw for gpt; adadelta for cnn].
    #[arg(long)]
    pub(crate) optimizer: Option<String>,
    /// Learning rate [default: 0.001; 0.003 for text; 0.001 for gpt; 1.0 for cnn].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) lr: Option<f64>,
    /// Weight decay [default: the optimizer's PyTorch default].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) weight_decay: Option<f64>,
    /// Learning-rate schedule: constant, cosine, step:EVERY:GAMMA (×GAMMA every EVERY
    /// steps) or epoch:GAMMA (×GAMMA after every epoch) [default: constant; cosine for
    /// text]. A cosine spans the run after the warm-up: --max-steps, else
    /// --max-epochs, else (with --max-time alone) the time budget.
    #[arg(long)]
    pub(crate) schedule: Option<String>,
    /// Linear warm-up steps [default: 0; 100 for gpt].
    #[arg(long)]
    pub(crate) warmup: Option<usize>,
    /// The rate a cosine schedule ends at [default: 0; 1e-4 for gpt].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) min_lr: Option<f64>,
    /// Samples per step, or streams (windows for gpt) of a character model [default: 32;
    /// 12 for gpt].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Clip the global gradient norm to this value [default: 1.0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) clip_norm: Option<f64>,
    /// Turn gradient-norm clipping off.
    #[arg(long)]
    pub(crate) no_clip: bool,
    /// Clip each gradient element to ±this value [default: off].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) clip_value: Option<f64>,
    /// Stop when validation accuracy reaches this (a character model: when the validation
    /// loss falls to this, in nats per character), or `none` [default: 0.97; none for text].
    #[arg(long)]
    pub(crate) target: Option<Limit<f64>>,
    /// Stop after this many evaluations without improvement, or `none` [default: 20].
    #[arg(long)]
    pub(crate) patience: Option<Limit<usize>>,
    /// Stop after this many epochs, or `none` [default: 1000].
    #[arg(long)]
    pub(crate) max_epochs: Option<Limit<usize>>,
    /// Stop after this many steps, or `none` [default: none; 5000 for text].
    #[arg(long)]
    pub(crate) max_steps: Option<Limit<usize>>,
    /// Stop after this many seconds of training, or `none` [default: 60; 600 for text].
    #[arg(long)]
    pub(crate) max_time: Option<Limit<f64>>,
    /// Evaluate every k steps instead of every epoch [default: every epoch; 500 for text].
    #[arg(long)]
    pub(crate) eval_every: Option<usize>,
    /// Fraction of the data held out for validation (digits, CSV) [default: 0.2].
    #[arg(long)]
    pub(crate) val_fraction: Option<f64>,
    /// Put the best validation weights back at the end.
    #[arg(long)]
    pub(crate) restore_best: bool,
    /// Seed of the split, initialisation, batch order and dropout [default: 0].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Output folder for the metrics log, plot, report and checkpoint [default: runs/run-<unix time>].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Besides the evaluations that improve the best metric and the end of the run, also
    /// write the checkpoint at every K-th evaluation [default: never].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) checkpoint_every: Option<u64>,
    /// Continue the run saved in this folder (its checkpoint.safetensors).
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Train data-parallel across the processes of an MPI job: `mpirun -np N chainrule
    /// train --distributed ...` (a build with `--features mpi`). `--batch-size` stays the
    /// global batch, so the same options train the same model on 1 or N processes; rank 0
    /// writes the output folder.
    #[arg(long)]
    pub(crate) distributed: bool,
    /// Print the final report as one JSON object (and no progress).
    #[arg(long)]
    pub(crate) json: bool,
    /// Write one training step's graph (op, shape, gradient norm per node, grouped by
    /// layer) to this Graphviz DOT file.
    #[arg(long)]
    pub(crate) graph: Option<PathBuf>,
    /// Stop with the first op whose backward pass produced NaN or infinity.
    #[arg(long)]
    pub(crate) detect_anomaly: bool,
    /// With --distributed: sum each gradient across processes while the backward sweep
    /// computes the next one (MPI's non-blocking all-reduce), instead of after the sweep.
    /// Measured slower on one machine (docs/distributed.md); meant for clusters, where
    /// the network moves the bytes.
    #[arg(long, requires = "distributed")]
    pub(crate) overlap: bool,
    /// Record every step on the tape; by default a step whose graph and shapes repeat the
    /// previous one's is replayed from its recording (same values, less bookkeeping).
    #[arg(long)]
    pub(crate) eager: bool,
    /// Print where the training time went, phase by phase (forward, backward, clipping,
    /// optimizer, evaluation, logging and checkpoints); the JSON report always has it
    /// under `profile`.
    #[arg(long)]
    pub(crate) profile: bool,
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
pub(crate) fn limit<T: Copy>(given: Option<Limit<T>>, base: Option<T>) -> Option<T> {
    match given {
        Some(Limit(v)) => v,
        None => base,
    }
}

/// The resolved settings of a run, stored in its checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub(crate) data: String,
    /// Older settings without a model were an MLP's.
    #[serde(default)]
    pub(crate) model: ModelKind,
    #[serde(default)]
    pub(crate) embed: usize,
    #[serde(default)]
    pub(crate) layers: usize,
    #[serde(default)]
    pub(crate) heads: usize,
    #[serde(default)]
    pub(crate) seq_len: usize,
    /// A CNN's convolution channels (empty for other models).
    #[serde(default)]
    pub(crate) channels: Vec<usize>,
    #[serde(default)]
    pub(crate) kernel: usize,
    #[serde(default)]
    pub(crate) conv_dropout: f64,
    pub(crate) label: Option<String>,
    pub(crate) hidden: Vec<usize>,
    pub(crate) activation: Activation,
    #[serde(default)]
    pub(crate) init: Option<String>,
    pub(crate) dropout: f64,
    pub(crate) optimizer: OptimizerKind,
    pub(crate) lr: f64,
    pub(crate) weight_decay: Option<f64>,
    pub(crate) schedule: String,
    pub(crate) warmup: usize,
    #[serde(default)]
    pub(crate) min_lr: f64,
    /// Adam's β₂ when not PyTorch's 0.999 (nanoGPT's 0.99 for gpt).
    #[serde(default)]
    pub(crate) beta2: Option<f64>,
    pub(crate) batch_size: usize,
    pub(crate) clip_norm: Option<f64>,
    pub(crate) clip_value: Option<f64>,
    pub(crate) target: Option<f64>,
    pub(crate) patience: Option<usize>,
    pub(crate) max_epochs: Option<usize>,
    pub(crate) max_steps: Option<usize>,
    pub(crate) max_time: Option<f64>,
    pub(crate) eval_every: Option<usize>,
    pub(crate) val_fraction: f64,
    pub(crate) restore_best: bool,
    pub(crate) seed: u64,
}

/// Whether `--data` names text for a character model (`text:FILE`, or an embedded text:
/// `macbeth`, `tragedies`).
pub(crate) fn is_text(data: &str) -> bool {
    data.starts_with("text:") || EMBEDDED_TEXTS.contains(&data)
}

pub(crate) fn parse_init(s: &str) -> anyhow::Result<Init> {
    Ok(match s {
        "he" => Init::HeUniform,
        "xavier" => Init::XavierUniform,
        "torch" => Init::TorchDefault,
        _ => bail!("--init: unknown initialisation '{s}'; choose he, xavier or torch"),
    })
}

pub(crate) fn parse_activation(s: &str) -> anyhow::Result<Activation> {
    Ok(match s {
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        "sigmoid" => Activation::Sigmoid,
        _ => bail!("--activation: unknown activation '{s}'; choose relu, tanh or sigmoid"),
    })
}

pub(crate) fn positive(name: &str, v: Option<f64>) -> anyhow::Result<Option<f64>> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            bail!("{name} must be a positive number, got {x}")
        }
        _ => Ok(v),
    }
}

impl RunConfig {
    /// Defaults (the family's recipe), overridden by the options given (on top of
    /// `base` when resuming).
    pub(crate) fn resolve(a: &Args, base: Option<RunConfig>) -> anyhow::Result<RunConfig> {
        let text = a
            .data
            .as_deref()
            .or(base.as_ref().map(|b| b.data.as_str()))
            .is_some_and(is_text);
        let model = a
            .model
            .or(base.as_ref().map(|b| b.model))
            .unwrap_or(ModelKind::default_for(text));
        let fam = family(model);
        // a model that does not train on the data is refused below, naming the data's
        // default (digits when no --data was given)
        let b = base.unwrap_or_else(|| match fam.on_text() == text {
            true => fam.defaults(model),
            false => family(ModelKind::default_for(text)).defaults(ModelKind::default_for(text)),
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
        if fam.on_text() != text {
            bail!(
                "--model {model} does not train on --data {data}: text data takes {}, the others take {}",
                models(|f| f.on_text()),
                models(|f| !f.on_text())
            );
        }
        let (embed, layers, seq_len) = (
            a.embed.unwrap_or(b.embed),
            a.layers.unwrap_or(b.layers),
            a.seq_len.unwrap_or(b.seq_len),
        );
        let heads = a.heads.unwrap_or(b.heads);
        let (channels, kernel) = (
            a.channels.clone().unwrap_or(b.channels),
            a.kernel.unwrap_or(b.kernel),
        );
        let conv_dropout = a.conv_dropout.unwrap_or(b.conv_dropout);
        let min_lr = a.min_lr.unwrap_or(b.min_lr);
        if !(min_lr.is_finite() && min_lr >= 0.0) {
            bail!("--min-lr must be a non-negative number, got {min_lr}");
        }
        let cfg = RunConfig {
            data,
            model,
            embed,
            layers,
            heads,
            seq_len,
            channels,
            kernel,
            conv_dropout,
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
            min_lr,
            beta2: b.beta2,
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
        // an option only another family takes, then the family's own checks
        if let Some(refusal) = foreign_option(fam, a) {
            bail!(refusal);
        }
        fam.check_options(a, &cfg)?;
        cfg.check_schedule_and_limits()?;
        Ok(cfg)
    }

    /// The schedule must be buildable, the target finite, a cosine must know where the
    /// run ends, and some limit must end the run.
    fn check_schedule_and_limits(&self) -> anyhow::Result<()> {
        self.lr_schedule(0, 1)?;
        if let Some(t) = self.target
            && !t.is_finite()
        {
            bail!("--target must be a finite number, got {t}");
        }
        if self.schedule == "cosine" && self.max_epochs.is_none() && self.max_steps.is_none() {
            bail!(
                "--schedule cosine needs --max-epochs or --max-steps: the cosine ends where the run ends"
            );
        }
        if self.patience.is_none()
            && self.max_epochs.is_none()
            && self.max_steps.is_none()
            && self.max_time.is_none()
        {
            bail!(
                "--patience, --max-epochs, --max-steps and --max-time are all off: keep at least one so that the run ends"
            );
        }
        Ok(())
    }

    /// With `--resume`: refuses any option that would change the data split, the model or
    /// the batch layout of the saved run, naming the option and the saved value.
    pub(crate) fn refuse_changes(a: &Args, saved: &RunConfig) -> anyhow::Result<()> {
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
        same(
            "--model",
            a.model.map(|m| m.to_string()),
            saved.model.to_string(),
        )?;
        same("--embed", a.embed, saved.embed)?;
        same("--layers", a.layers, saved.layers)?;
        same("--heads", a.heads, saved.heads)?;
        same("--seq-len", a.seq_len, saved.seq_len)?;
        same("--channels", a.channels.as_ref(), &saved.channels)?;
        same("--kernel", a.kernel, saved.kernel)?;
        same("--conv-dropout", a.conv_dropout, saved.conv_dropout)?;
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

    /// The schedule of a run of `total_steps` steps: a cosine spans the steps after the
    /// warm-up (the GPT's warm-up is nanoGPT's ramp).
    pub(crate) fn lr_schedule(
        &self,
        total_steps: usize,
        steps_per_epoch: usize,
    ) -> anyhow::Result<LrSchedule> {
        let schedule = match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine {
                total: total_steps.saturating_sub(self.warmup).max(1),
                min_lr: self.min_lr,
            },
            // ×GAMMA after every epoch (PyTorch's StepLR stepped once an epoch)
            s if s.starts_with("epoch:") => match s["epoch:".len()..].parse::<f64>() {
                Ok(gamma) if gamma.is_finite() && gamma > 0.0 => Schedule::Step {
                    every: steps_per_epoch.max(1),
                    gamma,
                },
                _ => bail!("--schedule: expected epoch:GAMMA with a positive GAMMA, got '{s}'"),
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
                "--schedule: unknown schedule '{s}'; choose constant, cosine, step:EVERY:GAMMA or epoch:GAMMA"
            ),
        };
        Ok(LrSchedule {
            base_lr: self.lr,
            schedule,
            warmup: self.warmup,
            warmup_shape: family(self.model).warmup(),
        })
    }

    /// The run's optimizer (Adam and AdamW with the run's β₂ where it has one).
    pub(crate) fn build_optimizer(&self) -> anyhow::Result<Box<dyn Optimizer<f32>>> {
        let opt = self.optimizer.build::<f32>(self.lr, self.weight_decay)?;
        Ok(match (self.optimizer, self.beta2) {
            (OptimizerKind::Adam | OptimizerKind::Adamw, Some(b2)) => {
                let decoupled = self.optimizer == OptimizerKind::Adamw;
                let wd = self
                    .weight_decay
                    .unwrap_or(if decoupled { 0.01 } else { 0.0 });
                Box::new(Adam::<f32>::with_betas(self.lr, wd, decoupled, (0.9, b2)))
            }
            _ => opt,
        })
    }
}
