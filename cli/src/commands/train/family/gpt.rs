//! The character-level GPT (`--model gpt`): nanoGPT's CPU character model by default.

use super::*;
use chainrule::nn::{Gpt as Transformer, GptConfig};

/// The GPT family.
pub(crate) struct Gpt;

impl Family for Gpt {
    fn on_text(&self) -> bool {
        true
    }

    /// The W11 recipe (bench/anchors/w11_char_gpt.py, nanoGPT's CPU character GPT), so
    /// that `--max-steps 2000` is that recipe.
    fn defaults(&self, _kind: ModelKind) -> RunConfig {
        RunConfig {
            model: ModelKind::Gpt,
            embed: 128,
            layers: 4,
            heads: 4,
            hidden: Vec::new(),
            activation: Activation::Identity,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: Some(0.1),
            warmup: 100,
            min_lr: 1e-4,
            beta2: Some(0.99),
            batch_size: 12,
            max_steps: Some(2000),
            ..recurrent::defaults()
        }
    }

    fn own_option_given(&self, a: &Args) -> Option<&'static str> {
        a.heads
            .is_some()
            .then_some("--heads: only --model gpt has attention heads")
    }

    /// Sizes of at least 1, heads that divide the width, no `--hidden` (the widths are
    /// `--embed`'s), and no `--val-fraction` or `--init`.
    fn check_options(&self, a: &Args, cfg: &RunConfig) -> anyhow::Result<()> {
        check_text_sizes(cfg)?;
        if cfg.heads == 0 || !cfg.embed.is_multiple_of(cfg.heads) {
            bail!(
                "--heads: {} heads do not divide --embed {}",
                cfg.heads,
                cfg.embed
            );
        }
        if a.hidden.is_some() {
            bail!("--hidden: a GPT's widths are --embed (its MLP is 4× that)");
        }
        refuse_text_options(a)
    }

    /// nanoGPT's ramp.
    fn warmup(&self) -> Warmup {
        Warmup::NanoGpt
    }

    fn build(
        &self,
        cfg: &RunConfig,
        saved: Option<&Saved>,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Trained>> {
        let text = load_text(cfg, saved_vocab(saved))?;
        let vocab = text.corpus.vocab().len();
        let model = transformer(cfg, saved, vocab, store)?;
        Ok(Box::new(GptRun { text, model }))
    }

    fn sampler(
        &self,
        cfg: &RunConfig,
        saved: &Saved,
        vocab: usize,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Sampler>> {
        Ok(Box::new(transformer(cfg, Some(saved), vocab, store)?))
    }
}

/// The run's GPT over `vocab` characters, its parameters in nanoGPT's weight-decay
/// groups: a checkpoint's recorded shape, else the settings' (tied head, no biases: the
/// W11 recipe's), checked against the checkpoint's parameter count before it is built.
fn transformer(
    cfg: &RunConfig,
    saved: Option<&Saved>,
    vocab: usize,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<Transformer> {
    let config = match saved.map(Saved::spec::<GptConfig>).transpose()? {
        Some(Some(config)) => {
            check_vocab(saved.expect("a recorded model"), config.vocab, vocab)?;
            config
        }
        _ => GptConfig {
            vocab,
            context: cfg.seq_len,
            layers: cfg.layers,
            heads: cfg.heads,
            embed: cfg.embed,
            bias: false,
            tied: true,
            dropout: cfg.dropout,
        },
    };
    if let Some(s) = saved {
        s.ckpt
            .check_param_count(config.param_count())
            .with_context(|| s.name.clone())?;
    }
    let model = Transformer::new(store, config, &mut chainrule::nn::rng(cfg.seed))?;
    Transformer::set_decay_groups(store);
    Ok(model)
}

impl Sampler for Transformer {
    /// The GPT reads at most its context: the prompt's last characters.
    fn sample(
        &self,
        store: &ParamStore<f32>,
        prompt: &[usize],
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    ) -> anyhow::Result<Vec<usize>> {
        Ok(Transformer::sample(
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

/// A GPT's run: its text and its model.
struct GptRun {
    text: TextData,
    model: Transformer,
}

impl Trained for GptRun {
    fn objective(&self, cfg: &RunConfig) -> anyhow::Result<Box<dyn Objective + '_>> {
        Ok(Box::new(GptLanguageModel::new(
            &self.model,
            self.text.corpus.train(),
            self.text.corpus.val(),
            cfg.batch_size,
            cfg.seq_len,
        )?))
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
        let (text, k) = (&self.text, &self.model.config);
        format!(
            "training a character GPT ({} blocks, {} heads, width {}, context {}, {} parameters) on {} ({} train / {} validation characters, vocabulary {}) with {:?}, lr {}, {} windows × {} characters, clipping {clipping}; output in {}",
            k.layers,
            k.heads,
            k.embed,
            k.context,
            store.num_elements(),
            text.corpus.name(),
            text.corpus.train().len(),
            text.corpus.val().len(),
            k.vocab,
            cfg.optimizer,
            cfg.lr,
            cfg.batch_size,
            cfg.seq_len,
            out.display()
        )
    }

    fn record(&self) -> Record {
        text_record(&self.text, tagged(ModelKind::Gpt, &self.model.config))
    }

    fn evaluate(&self, cfg: &RunConfig, store: &ParamStore<f32>) -> anyhow::Result<Evaluation> {
        let (train, val) = (self.text.corpus.train(), self.text.corpus.val());
        let lm = GptLanguageModel::new(&self.model, train, val, cfg.batch_size, cfg.seq_len)?;
        Ok(Evaluation::Text {
            loss: lm.loss_over(store, val)?.0,
            characters: val.len(),
        })
    }

    fn curvature<'a>(
        &'a self,
        cfg: &'a RunConfig,
        store: &'a ParamStore<f32>,
        limit: usize,
    ) -> anyhow::Result<CurvatureLoss<'a>> {
        // the run's first training batches (seeded windows), until `limit` characters
        let (train, val) = (self.text.corpus.train(), self.text.corpus.val());
        let mut lm = GptLanguageModel::new(&self.model, train, val, cfg.batch_size, cfg.seq_len)?;
        let per_batch = cfg.batch_size * cfg.seq_len;
        let batches = limit.div_ceil(per_batch).min(lm.batches_per_epoch());
        let hv = move |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
            let tape = Tape::forward_mode();
            let p = store.duals(&tape, v)?;
            lm.start_epoch(0, cfg.seed)?;
            let mut total = tape.scalar(0.0);
            for k in 0..batches {
                let (loss, _) = lm.batch_loss(&p, k, &mut ForwardCtx::eval())?;
                total = total.add(loss.mul_scalar(1.0 / batches as f64))?;
            }
            tape.backward_tangents(total, p.vars())
        };
        Ok(CurvatureLoss {
            hv: Box::new(hv),
            samples: batches * per_batch,
            over: format!(
                "mean cross-entropy per character over the run's first {batches} batch(es) of {} random windows of {} characters",
                cfg.batch_size, cfg.seq_len
            ),
        })
    }
}
