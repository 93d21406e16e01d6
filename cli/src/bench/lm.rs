//! W9: the character-level LSTM of the anchors, forward and training step.

use super::*;

/// W9 (`shared/bench/anchors/w9_char_lstm.py`): embedding 64, a 2-layer LSTM of 256, a
/// linear head, 32 streams × 64 characters of the tragedies, through the trainer's step
/// (`Trainer::train_step` on a `LanguageModel`: forward, loss, backward, clipping at 1.0,
/// Adam 2e-3), windows in order with the state carried; or the forward pass and loss of a
/// window alone. Checks: the first loss is within 0.25 of ln(vocabulary) (PyTorch's
/// initialisation predicts nearly uniformly), and the training step lowers the loss.
pub(super) fn w9(cfg: &BenchConfig, train: bool) -> Result<BenchRow> {
    use chainrule::autodiff::CellKind;
    use chainrule::data::{Streams, TextCorpus};
    use chainrule::nn::CharModel;
    use chainrule::train::LanguageModel;
    let corpus = match &cfg.text {
        Some(file) => TextCorpus::load(file)?,
        None => TextCorpus::tragedies()?,
    };
    let vocab = corpus.vocab().len();
    let train_streams = Streams::new(corpus.train(), 32, 64)?;
    let val = Streams::new(corpus.val(), 32, 64)?;
    let mut store = ParamStore::new();
    let model = CharModel::new(
        &mut store,
        CellKind::Lstm,
        vocab,
        64,
        256,
        2,
        &mut chainrule::nn::rng(0),
    )?;
    let mut objective = LanguageModel::new(&model, train_streams, val);
    objective.start_epoch(0, 0)?;
    let windows = objective.batches_per_epoch();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        schedule: LrSchedule::constant(2e-3),
        clip_norm: Some(1.0),
        divergence_factor: None,
        keep_a_worker_awake: true, // as the program runs
        ..Default::default()
    })?;
    let mut optimizer = OptimizerKind::Adam.build::<f32>(2e-3, None)?;
    let mut tape = Tape::new();
    let (mut step, mut losses) = (0usize, Vec::new());
    let mut run = |step: &mut usize, losses: &mut Vec<f64>| -> Result<()> {
        let batch = *step % windows;
        if train {
            let out = trainer.train_step(
                &mut tape,
                &mut objective,
                &mut store,
                optimizer.as_mut(),
                batch,
                *step,
                None,
                false,
            )?;
            losses.push(out.loss);
        } else {
            tape.clear();
            let p = store.leaves(&tape);
            let (loss, _) =
                objective.batch_loss(&p, batch, &mut chainrule::nn::ForwardCtx::eval())?;
            losses.push(loss.item()? as f64);
        }
        *step += 1;
        Ok(())
    };
    for _ in 0..20 {
        run(&mut step, &mut losses)?;
    }
    let t = try_measure(cfg.budget, 5, || run(&mut step, &mut losses))?;
    let name = if train { "w9_step" } else { "w9_forward" };
    let uniform = (vocab as f64).ln();
    let mut row = BenchRow::new(name, t)
        .with("loss@0", losses[0])
        .with("ln_vocab", uniform)
        .with("chars_per_s", 32.0 * 64.0 / t.median_s)
        .verify("loss@0", uniform, losses[0], 0.25)?;
    // a training step is its forward pass and a backward pass of about twice the work
    let forward = w9_window_flops(vocab as f64);
    row.flops = Some(if train { 3.0 * forward } else { forward });
    if train {
        let last = losses[19];
        row = row
            .with("loss@19", last)
            .verify_at_most("loss@19", losses[0] - 0.3, last)?;
    }
    Ok(row)
}

/// W11 (`shared/bench/anchors/w11_char_gpt.py`): nanoGPT's character GPT (4 blocks of
/// width 128, 4 heads, context 64, tied head, 0.80 M parameters) on 12 random windows of
/// the tragedies per step, through the trainer's step (`Trainer::train_step` on a
/// `GptLanguageModel`: forward, loss, backward, clipping at 1.0, AdamW with nanoGPT's
/// groups and betas, the recipe's warm-up). Checks: the first loss equals the value this
/// implementation computed once (seed 0) within 1e-3, close to ln(vocabulary), and 20
/// steps lower it.
pub(super) fn w11(cfg: &BenchConfig) -> Result<BenchRow> {
    use chainrule::data::TextCorpus;
    use chainrule::train::GptLanguageModel;
    /// The first loss of seed 0 on the tragedies, computed once.
    const W11_LOSS0: f64 = 4.334_735;
    let corpus = match &cfg.text {
        Some(file) => TextCorpus::load(file)?,
        None => TextCorpus::tragedies()?,
    };
    let vocab = corpus.vocab().len();
    let (model, mut store) = w11_model(vocab)?;
    let mut objective = GptLanguageModel::new(&model, corpus.train(), corpus.val(), 12, 64)?;
    objective.start_epoch(0, 0)?;
    let trainer = Trainer::new(TrainConfig {
        divergence_factor: None,
        ..w11_config(2000)
    })?;
    let mut optimizer = w11_optimizer();
    let mut tape = Tape::new();
    let (mut step, mut losses) = (0usize, Vec::new());
    let mut run = |step: &mut usize, losses: &mut Vec<f64>| -> Result<()> {
        let batches = objective.batches_per_epoch();
        let out = trainer.train_step(
            &mut tape,
            &mut objective,
            &mut store,
            &mut optimizer,
            *step % batches,
            *step,
            None,
            false,
        )?;
        losses.push(out.loss);
        *step += 1;
        Ok(())
    };
    for _ in 0..20 {
        run(&mut step, &mut losses)?;
    }
    let t = try_measure(cfg.budget, 5, || run(&mut step, &mut losses))?;
    let uniform = (vocab as f64).ln();
    let mut row = BenchRow::new("w11_step", t)
        .with("loss@0", losses[0])
        .with("ln_vocab", uniform)
        .with("chars_per_s", 12.0 * 64.0 / t.median_s)
        .verify("loss@0 vs ln(vocab)", uniform, losses[0], 0.1)?;
    if cfg.text.is_none() {
        row = row.verify("loss@0", W11_LOSS0, losses[0], 1e-3)?;
    }
    row.flops = Some(3.0 * w11_batch_flops(vocab as f64));
    let last = losses[19];
    row.with("loss@19", last)
        .verify_at_most("loss@19", losses[0] - 0.3, last)
}

/// The products of W9's forward pass over one window (32 streams, 64 characters): each
/// LSTM layer's four gates from its input and state (`2·(in + H)·4H` per character,
/// embedding 64, hidden 256, two layers) and the head (`2·H·V`).
fn w9_window_flops(vocab: f64) -> f64 {
    let (b, t, e, h) = (32.0, 64.0, 64.0, 256.0);
    t * b * (2.0 * (e + h) * 4.0 * h + 2.0 * (h + h) * 4.0 * h + 2.0 * h * vocab)
}

/// The products of W11's forward pass over one batch (12 windows of 64): per block and
/// token `24·d²` (attention's q, k, v and output projections, the 4× MLP) and `4·T·d`
/// (scores and their weighted sum, the whole T×T as the kernels compute it), and the
/// tied head (`2·d·V`).
fn w11_batch_flops(vocab: f64) -> f64 {
    let (b, t, d, layers) = (12.0, 64.0, 128.0, 4.0);
    b * t * (layers * (24.0 * d * d + 4.0 * t * d) + 2.0 * d * vocab)
}

/// The W11 recipe's model (seed 0) over a vocabulary of `vocab` characters, its
/// parameters in nanoGPT's weight-decay groups.
pub(super) fn w11_model(vocab: usize) -> Result<(chainrule::nn::Gpt, ParamStore<f32>)> {
    use chainrule::nn::{Gpt, GptConfig};
    let config = GptConfig {
        vocab,
        context: 64,
        layers: 4,
        heads: 4,
        embed: 128,
        bias: false,
        tied: true,
        dropout: 0.0,
    };
    let mut store = ParamStore::new();
    let model = Gpt::new(&mut store, config, &mut chainrule::nn::rng(0))?;
    Gpt::set_decay_groups(&mut store);
    Ok((model, store))
}

/// The W11 recipe's settings for a run of `steps` steps: batches of 12, nanoGPT's
/// warm-up over 100 steps, a cosine to 1e-4 at the last step, clipping at 1.0.
pub(super) fn w11_config(steps: usize) -> TrainConfig {
    use chainrule::optim::{Schedule, Warmup};
    TrainConfig {
        batch_size: 12,
        schedule: LrSchedule {
            base_lr: 1e-3,
            schedule: Schedule::Cosine {
                total: steps.saturating_sub(100).max(1),
                min_lr: 1e-4,
            },
            warmup: 100,
            warmup_shape: Warmup::NanoGpt,
        },
        clip_norm: Some(1.0),
        keep_a_worker_awake: true,
        ..Default::default()
    }
}

/// The W11 recipe's optimizer: AdamW 1e-3, β = (0.9, 0.99), weight decay 0.1 on its group.
pub(super) fn w11_optimizer() -> chainrule::optim::Adam<f32> {
    chainrule::optim::Adam::with_betas(1e-3, 0.1, true, (0.9, 0.99))
}
