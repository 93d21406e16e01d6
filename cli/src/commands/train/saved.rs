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
        let mut cfg: RunConfig = serde_json::from_value(ckpt.meta.config.clone())
            .context("the checkpoint's configuration is not readable")?;
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

    /// The character model of the run with its saved weights, and the run's text;
    /// `None` for a classifier's run.
    pub(crate) fn char_model(
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

    /// The GPT of the run with its saved weights, and the run's text; `None` for the
    /// run of another model.
    pub(crate) fn gpt(&self) -> anyhow::Result<Option<(Gpt, ParamStore<f32>, TextData)>> {
        if self.cfg.model != GPT {
            return Ok(None);
        }
        let Some(vocab) = self.ckpt.meta.vocab.as_deref() else {
            bail!(
                "{}: a character model's checkpoint without its vocabulary",
                self.file.display()
            );
        };
        let text = load_text(&self.cfg, Some(vocab))?;
        let vocab = text.corpus.vocab().len();
        self.ckpt
            .check_param_count(gpt_config(&self.cfg, vocab).param_count())
            .with_context(|| format!("--checkpoint {}", self.file.display()))?;
        let mut store = ParamStore::<f32>::new();
        let model = gpt_model(&self.cfg, vocab, &mut store)?;
        self.ckpt.restore_params(&mut store)?;
        Ok(Some((model, store, text)))
    }

    /// The classifier (MLP or CNN) of the run with its saved weights, and the run's data
    /// splits.
    pub(crate) fn classifier(&self) -> anyhow::Result<(Network, ParamStore<f32>, Splits)> {
        let splits = load_splits(&self.cfg, self.ckpt.meta.standardizer.clone())?;
        let Some(&classes) = self.ckpt.meta.sizes.last() else {
            bail!(
                "{}: the checkpoint's model has no layers",
                self.file.display()
            );
        };
        let mut store = ParamStore::<f32>::new();
        let shape = (splits.val.dim(), classes);
        let model = build_network(&self.cfg, shape, Some(&self.ckpt), &mut store)
            .with_context(|| format!("--checkpoint {}", self.file.display()))?;
        self.ckpt.restore_params(&mut store)?;
        Ok((model, store, splits))
    }
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let run = SavedRun::load(&args.checkpoint, args.data)?;
    let (dir, ckpt, cfg) = (&run.file, &run.ckpt, &run.cfg);
    let text_loss = if let Some((model, store, text)) = run.gpt()? {
        let (train, val) = (text.corpus.train(), text.corpus.val());
        let lm = GptLanguageModel::new(&model, train, val, cfg.batch_size, cfg.seq_len)?;
        Some((lm.loss_over(&store, val)?.0, text))
    } else if let Some((model, store, text)) = run.char_model()? {
        let lm = LanguageModel::new(&model, text.train.clone(), text.val.clone());
        Some((lm.loss_over(&store, &text.val)?, text))
    } else {
        None
    };
    if let Some((loss, text)) = text_loss {
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
    let (model, store, splits) = run.classifier()?;
    let (loss, acc) = evaluate(model.classifier(), &store, &splits.val)?;
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
    let cfg: RunConfig = serde_json::from_value(ckpt.meta.config.clone())
        .context("the checkpoint's configuration is not readable")?;
    let (true, Some(vocab)) = (is_text_model(&cfg.model)?, ckpt.meta.vocab.as_deref()) else {
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
    let ids = match cell_kind(&cfg.model)? {
        Some(kind) => {
            ckpt.check_param_count(char_param_count(&cfg, kind, chars.len()))
                .with_context(context)?;
            let model = char_model(&cfg, kind, chars.len(), &mut store)?;
            ckpt.restore_params(&mut store).with_context(context)?;
            model.sample(&store, &prompt, args.length, args.temperature, top_k, seed)?
        }
        // the GPT reads at most its context: the prompt's last characters
        None => {
            ckpt.check_param_count(gpt_config(&cfg, chars.len()).param_count())
                .with_context(context)?;
            let model = gpt_model(&cfg, chars.len(), &mut store)?;
            ckpt.restore_params(&mut store).with_context(context)?;
            model.sample(&store, &prompt, args.length, args.temperature, top_k, seed)?
        }
    };
    let text: String = ids.iter().map(|&i| chars[i]).collect();
    println!("{}{text}", args.prompt);
    Ok(ExitCode::SUCCESS)
}
