//! Character-level recurrent models: `--model lstm`, `gru` or `rnn` (one family, three
//! cells), trained by truncated backpropagation through time over parallel streams.

use super::*;
use chainrule::autodiff::CellKind;

/// The recurrent family.
pub(crate) struct Recurrent;

/// What a checkpoint records of a recurrent character model (its cell is its tag).
#[derive(Serialize, Deserialize)]
struct RecurrentSpec {
    vocab: usize,
    embed: usize,
    hidden: usize,
    layers: usize,
}

/// The defaults of a character-level language model: the best recipe found for 600 s
/// on the tragedies (docs/language-models.md); the base of the GPT's recipe.
pub(crate) fn defaults() -> RunConfig {
    RunConfig {
        data: String::new(),
        model: ModelKind::Lstm,
        embed: 64,
        layers: 2,
        heads: 0,
        seq_len: 64,
        channels: Vec::new(),
        kernel: 0,
        conv_dropout: 0.0,
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
        min_lr: 0.0,
        beta2: None,
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
}

/// The cell of a recurrent `--model`.
fn cell(kind: ModelKind) -> anyhow::Result<CellKind> {
    Ok(match kind {
        ModelKind::Lstm => CellKind::Lstm,
        ModelKind::Gru => CellKind::Gru,
        ModelKind::Rnn => CellKind::Rnn,
        other => bail!("--model {other} is not a recurrent model"),
    })
}

impl Family for Recurrent {
    fn on_text(&self) -> bool {
        true
    }

    fn defaults(&self, kind: ModelKind) -> RunConfig {
        RunConfig {
            model: kind,
            ..defaults()
        }
    }

    /// Sizes of at least 1, one hidden size (layers stack with `--layers`), and no
    /// `--val-fraction` or `--init`.
    fn check_options(&self, a: &Args, cfg: &RunConfig) -> anyhow::Result<()> {
        check_text_sizes(cfg)?;
        if cfg.hidden.len() != 1 {
            bail!(
                "--hidden: a recurrent model takes one hidden size (stack layers with --layers), got {:?}",
                cfg.hidden
            );
        }
        refuse_text_options(a)
    }

    fn build(
        &self,
        cfg: &RunConfig,
        saved: Option<&Saved>,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Trained>> {
        let text = load_text(cfg, saved_vocab(saved))?;
        let vocab = text.corpus.vocab().len();
        let (spec, model) = char_model(cfg, saved, vocab, store)?;
        Ok(Box::new(RecurrentRun {
            text,
            model,
            spec: tagged(cfg.model, &spec),
        }))
    }

    fn sampler(
        &self,
        cfg: &RunConfig,
        saved: &Saved,
        vocab: usize,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Sampler>> {
        Ok(Box::new(char_model(cfg, Some(saved), vocab, store)?.1))
    }
}

/// The run's model over `vocab` characters and what the checkpoint records of it: a
/// checkpoint's recorded one, else the settings', checked against the checkpoint's
/// parameter count before it is built.
fn char_model(
    cfg: &RunConfig,
    saved: Option<&Saved>,
    vocab: usize,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<(RecurrentSpec, CharModel)> {
    let kind = cell(cfg.model)?;
    let spec = match saved.map(Saved::spec::<RecurrentSpec>).transpose()? {
        Some(Some(spec)) => {
            check_vocab(saved.expect("a recorded model"), spec.vocab, vocab)?;
            spec
        }
        _ => RecurrentSpec {
            vocab,
            embed: cfg.embed,
            // no hidden size: a count that matches no checkpoint, then the error below
            hidden: cfg.hidden.first().copied().unwrap_or(0),
            layers: cfg.layers,
        },
    };
    if let Some(s) = saved {
        let count = match spec.hidden {
            0 => None,
            h => CharModel::param_count(kind, spec.vocab, spec.embed, h, spec.layers),
        };
        s.ckpt
            .check_param_count(count)
            .with_context(|| s.name.clone())?;
    }
    if spec.hidden == 0 {
        bail!("the run's configuration has no hidden size");
    }
    let model = CharModel::new(
        store,
        kind,
        spec.vocab,
        spec.embed,
        spec.hidden,
        spec.layers,
        &mut chainrule::nn::rng(cfg.seed),
    )?;
    Ok((spec, model))
}

impl Sampler for CharModel {
    fn sample(
        &self,
        store: &ParamStore<f32>,
        prompt: &[usize],
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    ) -> anyhow::Result<Vec<usize>> {
        Ok(CharModel::sample(
            self,
            store,
            prompt,
            length,
            temperature,
            top_k,
            seed,
        )?)
    }
}

/// A recurrent model's run: its text and its model.
struct RecurrentRun {
    text: TextData,
    model: CharModel,
    spec: serde_json::Value,
}

impl Trained for RecurrentRun {
    fn objective(&self, _cfg: &RunConfig) -> anyhow::Result<Box<dyn Objective + '_>> {
        Ok(Box::new(LanguageModel::new(
            &self.model,
            self.text.train.clone(),
            self.text.val.clone(),
        )))
    }

    fn data(&self) -> RunData<'_> {
        RunData::Text(&self.text)
    }

    fn announcement(
        &self,
        cfg: &RunConfig,
        store: &ParamStore<f32>,
        clipping: &str,
        out: &Path,
    ) -> String {
        let (text, model) = (&self.text, &self.model);
        format!(
            "training a character {} ({} layers of {}, embedding {}, {} parameters) on {} ({} train / {} validation characters, vocabulary {}, unigram entropy {:.3} nats) with {:?}, lr {}, {} streams × {} characters, clipping {clipping}; output in {}",
            cfg.model.to_string().to_uppercase(),
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
        )
    }

    fn record(&self) -> Record {
        text_record(&self.text, self.spec.clone())
    }

    fn evaluate(&self, _cfg: &RunConfig, store: &ParamStore<f32>) -> anyhow::Result<Evaluation> {
        let text = &self.text;
        let lm = LanguageModel::new(&self.model, text.train.clone(), text.val.clone());
        Ok(Evaluation::Text {
            loss: lm.loss_over(store, &text.val)?,
            characters: text.corpus.val().len(),
        })
    }

    fn curvature<'a>(
        &'a self,
        _cfg: &'a RunConfig,
        store: &'a ParamStore<f32>,
        limit: usize,
    ) -> anyhow::Result<CurvatureLoss<'a>> {
        // the first training windows of every stream, state carried from zeros, as the
        // run's first batches; windows are added until `limit` characters
        let (streams, mut windows, mut n) = (&self.text.train, 0, 0);
        while windows < streams.windows() && n < limit {
            n += streams.window(windows).2 * streams.batch();
            windows += 1;
        }
        if n == 0 {
            bail!("the run's training text has no window");
        }
        let text = &self.text;
        let mut lm = LanguageModel::new(&self.model, text.train.clone(), text.val.clone());
        let hv = move |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
            let tape = Tape::forward_mode();
            let p = store.duals(&tape, v)?;
            lm.start_epoch(0, 0)?;
            let mut total = tape.scalar(0.0);
            for k in 0..windows {
                let (loss, chars) = lm.batch_loss(&p, k, &mut ForwardCtx::eval())?;
                total = total.add(loss.mul_scalar(chars as f64 / n as f64))?;
            }
            tape.backward_tangents(total, p.vars())
        };
        Ok(CurvatureLoss {
            hv: Box::new(hv),
            samples: n,
            over: format!(
                "mean cross-entropy per character over the first {windows} training window(s) of {} streams, the first from a zero state, each next from the state the one before left, as in training",
                text.train.batch()
            ),
        })
    }
}
