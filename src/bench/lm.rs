//! W9: the character-level LSTM of the anchors, forward and training step.

use super::*;

/// W9 (`shared/bench/anchors/w9_char_lstm.py`): embedding 64, a 2-layer LSTM of 256, a
/// linear head, 32 streams × 64 characters of the tragedies, through the trainer's step
/// (`Trainer::train_step` on a `LanguageModel`: forward, loss, backward, clipping at 1.0,
/// Adam 2e-3), windows in order with the state carried; or the forward pass and loss of a
/// window alone. Checks: the first loss is within 0.25 of ln(vocabulary) (PyTorch's
/// initialisation predicts nearly uniformly), and the training step lowers the loss.
pub(super) fn w9(cfg: &BenchConfig, train: bool) -> Result<BenchRow> {
    use crate::autodiff::CellKind;
    use crate::data::{Streams, TextCorpus};
    use crate::nn::CharModel;
    use crate::train::LanguageModel;
    let corpus = match &cfg.text {
        Some(file) => TextCorpus::load(file)?,
        None => TextCorpus::tragedies()?,
    };
    let vocab = corpus.vocab().len();
    let train_streams = Streams::new(corpus.train(), 32, 64)?;
    let val = Streams::new(corpus.val(), 32, 64)?;
    let mut store = ParamStore::new();
    let model = CharModel::new(&mut store, CellKind::Lstm, vocab, 64, 256, 2, 0)?;
    let mut objective = LanguageModel::new(&model, train_streams, val);
    objective.start_epoch(0, 0)?;
    let windows = objective.batches_per_epoch();
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        schedule: LrSchedule::constant(2e-3),
        clip_norm: Some(1.0),
        divergence_factor: None,
        ..Default::default()
    })?;
    let mut optimizer = OptimizerKind::Adam.build::<f32>(2e-3, None)?;
    let mut tape = Tape::new();
    let (mut step, mut losses) = (0usize, Vec::new());
    let mut failure = None;
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
            let (loss, _) = objective.batch_loss(&p, batch, &mut crate::nn::ForwardCtx::eval())?;
            losses.push(loss.item()? as f64);
        }
        *step += 1;
        Ok(())
    };
    for _ in 0..20 {
        run(&mut step, &mut losses)?;
    }
    let t = measure(cfg.budget, 5, || {
        if failure.is_none()
            && let Err(e) = run(&mut step, &mut losses)
        {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let name = if train { "w9_step" } else { "w9_forward" };
    let uniform = (vocab as f64).ln();
    let mut row = BenchRow::new(name, t)
        .with("loss@0", losses[0])
        .with("ln_vocab", uniform)
        .with("chars_per_s", 32.0 * 64.0 / t.median_s)
        .verify("loss@0", uniform, losses[0], 0.25)?;
    if train {
        let last = losses[19];
        row = row
            .with("loss@19", last)
            .verify_at_most("loss@19", losses[0] - 0.3, last)?;
    }
    Ok(row)
}
