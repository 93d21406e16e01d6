//! `chainrule eval` and `chainrule sample`: what a saved run is, and what can be done
//! with one.

use super::*;

/// Options of `chainrule eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A run folder (holding checkpoint.safetensors) or a checkpoint file.
    #[arg(long)]
    pub(crate) checkpoint: PathBuf,
    /// Dataset to evaluate on [default: the run's]; its validation (or MNIST test) split is used.
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The settings a checkpoint was trained with, its model the one it records (for an
/// older checkpoint, the one its settings name).
pub(crate) fn saved_config(ckpt: &chainrule::train::Checkpoint) -> anyhow::Result<RunConfig> {
    let mut cfg: RunConfig = serde_json::from_value(ckpt.meta.config.clone())
        .context("the checkpoint's configuration is not readable")?;
    if let Some(kind) = ModelKind::recorded(ckpt)? {
        cfg.model = kind;
    }
    Ok(cfg)
}

/// A saved run: its checkpoint file, the checkpoint, and its configuration with the data
/// replaced by `data` when given.
pub(crate) struct SavedRun {
    pub(crate) file: PathBuf,
    pub(crate) ckpt: chainrule::train::Checkpoint,
    pub(crate) cfg: RunConfig,
}

impl SavedRun {
    /// Reads `checkpoint` (a run folder or a checkpoint file).
    pub(crate) fn load(checkpoint: &Path, data: Option<String>) -> anyhow::Result<Self> {
        let file = if checkpoint.is_dir() {
            checkpoint.join(CHECKPOINT_FILE)
        } else {
            checkpoint.to_path_buf()
        };
        let ckpt = load_checkpoint(&file)
            .with_context(|| format!("--checkpoint {}", checkpoint.display()))?;
        let mut cfg = saved_config(&ckpt)?;
        if let Some(d) = data {
            cfg.data = d;
        }
        Ok(SavedRun { file, ckpt, cfg })
    }

    /// The run's base learning rate.
    pub(crate) fn cfg_lr(&self) -> f64 {
        self.cfg.lr
    }

    /// The run's optimizer, as named on the command line.
    pub(crate) fn cfg_optimizer(&self) -> String {
        serde_json::to_value(self.cfg.optimizer)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", self.cfg.optimizer).to_lowercase())
    }

    /// The run's model with its saved weights, and its data.
    pub(crate) fn restore(&self) -> anyhow::Result<(Box<dyn Trained>, ParamStore<f32>)> {
        let fam = family(self.cfg.model);
        if fam.on_text() && self.ckpt.meta.vocab.is_none() {
            bail!(
                "{}: a character model's checkpoint without its vocabulary",
                self.file.display()
            );
        }
        let saved = Saved {
            ckpt: &self.ckpt,
            name: format!("--checkpoint {}", self.file.display()),
        };
        let mut store = ParamStore::<f32>::new();
        let trained = fam.build(&self.cfg, Some(&saved), &mut store)?;
        self.ckpt.restore_params(&mut store)?;
        Ok((trained, store))
    }
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let run = SavedRun::load(&args.checkpoint, args.data)?;
    let (dir, ckpt, cfg) = (&run.file, &run.ckpt, &run.cfg);
    let (trained, store) = run.restore()?;
    let step = ckpt.meta.position.step;
    match trained.evaluate(cfg, &store)? {
        Evaluation::Text { loss, characters } => {
            let bpc = loss / std::f64::consts::LN_2;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"data": cfg.data, "split": "validation", "characters": characters, "loss": loss, "bits_per_char": bpc, "step": step})
                );
            } else {
                println!(
                    "{} on the validation text of {}: loss {loss:.4} nats/char = {bpc:.4} bits/char",
                    dir.display(),
                    cfg.data
                );
            }
        }
        Evaluation::Classes {
            loss,
            accuracy,
            samples,
            split,
        } => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"data": cfg.data, "split": split, "samples": samples, "loss": loss, "accuracy": accuracy, "step": step})
                );
            } else {
                println!(
                    "{} on the {split} split of {} ({samples} samples): accuracy {accuracy:.4}, loss {loss:.4}",
                    dir.display(),
                    cfg.data,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `chainrule sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// A run folder of a character model (holding checkpoint.safetensors) or its file.
    #[arg(long)]
    pub(crate) checkpoint: PathBuf,
    /// Text the model reads before it writes; every character must be in its vocabulary
    /// [default: a newline].
    #[arg(long, default_value = "\n", hide_default_value = true)]
    pub(crate) prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    pub(crate) length: usize,
    /// Softmax temperature: below 1 is more conservative, 0 always picks the most likely
    /// character (greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub(crate) temperature: f64,
    /// Draw only among the k most likely characters [default: all].
    #[arg(long)]
    pub(crate) top_k: Option<usize>,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
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
    let cfg = saved_config(&ckpt)?;
    let fam = family(cfg.model);
    let (true, Some(vocab)) = (fam.on_text(), ckpt.meta.vocab.as_deref()) else {
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
    let mut store = ParamStore::<f32>::new();
    let (top_k, seed) = (args.top_k, args.seed);
    let saved = Saved {
        ckpt: &ckpt,
        name: context(),
    };
    let model = fam.sampler(&cfg, &saved, chars.len(), &mut store)?;
    ckpt.restore_params(&mut store).with_context(context)?;
    let ids = model.sample(&store, &prompt, args.length, args.temperature, top_k, seed)?;
    let text: String = ids.iter().map(|&i| chars[i]).collect();
    println!("{}{text}", args.prompt);
    Ok(ExitCode::SUCCESS)
}
