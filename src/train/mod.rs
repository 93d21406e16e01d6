//! The descent loop: forward pass, loss, backward pass, gradient clipping, optimizer
//! step, repeated over shuffled minibatches, with an evaluation on the validation split
//! every epoch (or every k steps) and stop conditions that compose.

mod callbacks;
mod checkpoint;
mod plot;

pub use callbacks::{Callback, CheckpointWriter, MetricsLog, Progress, Snapshot};
pub use checkpoint::{CHECKPOINT_FILE, Checkpoint, CheckpointMeta, load_checkpoint};
pub use plot::plot_history;

use crate::autodiff::Tape;
use crate::data::{Dataset, epoch_order, gather_batch};
use crate::error::{Error, Result};
use crate::nn::{ForwardCtx, Mlp, ParamStore, cross_entropy};
use crate::optim::{LrSchedule, Optimizer, clip_grad_norm, clip_grad_value, global_norm};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Settings of the loop. `None` means "no such limit".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Samples per step.
    pub batch_size: usize,
    /// Learning rate over steps.
    pub schedule: LrSchedule,
    /// Clip the global gradient norm to this value.
    pub clip_norm: Option<f64>,
    /// Clip every gradient element to ±this value.
    pub clip_value: Option<f64>,
    /// Stop when the validation accuracy reaches this.
    pub target: Option<f64>,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<usize>,
    /// Stop after this many epochs.
    pub max_epochs: Option<usize>,
    /// Stop after this many steps.
    pub max_steps: Option<usize>,
    /// Stop after this much training time (seconds).
    pub max_seconds: Option<f64>,
    /// Evaluate every k steps (otherwise at the end of every epoch).
    pub eval_every: Option<usize>,
    /// Stop when the loss exceeds this multiple of the first step's loss.
    pub divergence_factor: Option<f64>,
    /// Seed of the batch order and dropout.
    pub seed: u64,
    /// Put the best validation weights back at the end.
    pub restore_best: bool,
    /// Fail with the first op whose backward produced NaN or infinity.
    pub detect_anomaly: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 32,
            schedule: LrSchedule::constant(1e-3),
            clip_norm: None,
            clip_value: None,
            target: None,
            patience: None,
            max_epochs: Some(10),
            max_steps: None,
            max_seconds: None,
            eval_every: None,
            divergence_factor: Some(1e3),
            seed: 0,
            restore_best: false,
            detect_anomaly: false,
        }
    }
}

/// Which condition ended the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The validation metric reached the target.
    Target,
    /// No improvement for `patience` evaluations.
    Patience,
    /// The loss grew past the divergence threshold.
    Diverged,
    /// The loss or the gradient norm became NaN or infinite.
    NonFinite,
    /// The epoch limit.
    MaxEpochs,
    /// The step limit.
    MaxSteps,
    /// The time limit.
    MaxTime,
}

/// One evaluation on the validation split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Epochs completed (fractional when evaluating mid-epoch).
    pub epoch: f64,
    /// Steps taken.
    pub step: usize,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_metric: f64,
    /// Learning rate at the last step.
    pub lr: f64,
    /// Training seconds so far.
    pub seconds: f64,
}

/// Gradient-norm statistics over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClipStats {
    /// Steps whose gradient was changed by clipping.
    pub clipped_steps: usize,
    /// Steps observed.
    pub steps: usize,
    /// Smallest global gradient norm (before clipping).
    pub min_norm: f64,
    /// Largest global gradient norm (before clipping).
    pub max_norm: f64,
    /// Mean global gradient norm.
    pub mean_norm: f64,
}

/// What the run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The condition that ended the run.
    pub stopped_by: StopReason,
    /// A sentence explaining it.
    pub stop_detail: String,
    /// Best validation accuracy seen.
    pub best_val_metric: f64,
    /// Step at which it was seen.
    pub best_step: usize,
    /// Validation accuracy at the end (after restoring the best weights, if asked).
    pub final_val_metric: f64,
    /// Epochs completed.
    pub epochs: usize,
    /// Steps taken.
    pub steps: usize,
    /// Training seconds (loop only, evaluation included).
    pub seconds: f64,
    /// Training samples per second.
    pub samples_per_second: f64,
    /// Clipping statistics.
    pub clipping: ClipStats,
    /// Every evaluation.
    pub history: Vec<EvalRecord>,
    /// Loss returned by every step, in order.
    #[serde(skip)]
    pub step_losses: Vec<f64>,
}

/// Where a run starts: fresh, or where a checkpoint left off.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Position {
    /// Epoch being run.
    pub epoch: usize,
    /// Next batch within that epoch.
    pub batch: usize,
    /// Steps taken so far.
    pub step: usize,
    /// Training seconds so far.
    pub seconds: f64,
    /// Evaluations so far.
    pub history: Vec<EvalRecord>,
    /// The first step's loss (for the divergence test).
    pub first_loss: Option<f64>,
    /// Evaluations since the best one.
    pub since_best: usize,
    /// The parameters at the best evaluation so far, kept when the best weights are to be
    /// restored at the end (in a checkpoint as `best:NAME` tensors, not in its JSON), so
    /// that a resumed run restores the same weights as an uninterrupted one.
    #[serde(skip)]
    pub best_weights: Vec<Tensor<f32>>,
    /// Clipping statistics so far.
    pub clipping: ClipStats,
}

/// Mean cross-entropy and accuracy of `model` on `ds`, without recording gradients.
pub fn evaluate(model: &Mlp, store: &ParamStore<f32>, ds: &Dataset) -> Result<(f64, f64)> {
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(2048) {
        let tape = Tape::new();
        let (x, y) = gather_batch(ds, chunk);
        tape.no_grad(|| -> Result<()> {
            let p = store.leaves(&tape);
            let logits = model.forward(&p, tape.constant(x), &mut ForwardCtx::eval())?;
            loss_sum += cross_entropy(logits, &y)?.item()? as f64 * chunk.len() as f64;
            correct += logits
                .value()
                .argmax_rows()
                .iter()
                .zip(&y)
                .filter(|(a, b)| a == b)
                .count();
            Ok(())
        })?;
    }
    Ok((loss_sum / ds.len() as f64, correct as f64 / ds.len() as f64))
}

/// One training step's graph (forward, loss, backward on the first batch of the run) as
/// Graphviz DOT, grouped by layer, with every node's gradient norm.
pub fn step_graph(
    model: &Mlp,
    store: &ParamStore<f32>,
    train: &Dataset,
    batch_size: usize,
    seed: u64,
) -> Result<String> {
    let order = epoch_order(train.len(), seed, 0);
    let (x, y) = gather_batch(train, &order[..batch_size.min(train.len())]);
    let tape = Tape::<f32>::new();
    let p = store.leaves(&tape);
    p.label(store);
    let logits = model.forward(&p, tape.constant(x), &mut ForwardCtx::train(seed))?;
    let loss = tape.scoped("loss", || cross_entropy(logits, &y))?;
    let grads = tape.backward_keep_all(loss)?;
    Ok(crate::autodiff::graph_dot(&tape, Some(&grads)))
}

/// Runs the descent loop.
pub struct Trainer {
    /// The loop's settings.
    pub config: TrainConfig,
}

impl Trainer {
    /// A trainer with these settings.
    pub fn new(config: TrainConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::invalid("train", "batch size must be at least 1"));
        }
        if !(config.schedule.base_lr.is_finite() && config.schedule.base_lr >= 0.0) {
            return Err(Error::invalid(
                "train",
                format!(
                    "learning rate must be a non-negative number, got {}",
                    config.schedule.base_lr
                ),
            ));
        }
        for (name, v) in [
            ("clip norm", config.clip_norm),
            ("clip value", config.clip_value),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(Error::invalid(
                    "train",
                    format!("{name} must be a positive number, got {v}"),
                ));
            }
        }
        Ok(Trainer { config })
    }

    /// Trains `model` (whose parameters are in `store`) on `train`, evaluating on `val`.
    #[allow(clippy::too_many_arguments)]
    pub fn fit(
        &self,
        model: &Mlp,
        store: &mut ParamStore<f32>,
        optimizer: &mut dyn Optimizer<f32>,
        train: &Dataset,
        val: &Dataset,
        start: Position,
        callbacks: &mut [&mut dyn Callback],
    ) -> Result<TrainReport> {
        let cfg = &self.config;
        let n = train.len();
        let batches_per_epoch = n.div_ceil(cfg.batch_size);
        if start.batch >= batches_per_epoch {
            // a checkpoint of another batch size or dataset: slicing would panic
            return Err(Error::invalid(
                "train",
                format!(
                    "the run resumes at batch {} of an epoch that has {batches_per_epoch} batches of {}: it was saved with another batch size or dataset",
                    start.batch, cfg.batch_size
                ),
            ));
        }
        let mut pos = start;
        let clock = Instant::now();
        let elapsed = |pos_seconds: f64| pos_seconds + clock.elapsed().as_secs_f64();
        let base_seconds = pos.seconds;
        let mut best: Option<(f64, usize)> =
            pos.history
                .iter()
                .fold(None, |b: Option<(f64, usize)>, r| match b {
                    Some((m, _)) if m >= r.val_metric => b,
                    _ => Some((r.val_metric, r.step)),
                });
        let mut step_losses = Vec::new();
        let mut window_loss = (0.0, 0usize);
        let mut norm_sum = pos.clipping.mean_norm * pos.clipping.steps as f64;
        let mut tape = Tape::<f32>::new();
        tape.set_detect_anomaly(cfg.detect_anomaly);
        let mut samples = 0usize;

        for c in callbacks.iter_mut() {
            c.on_start(&pos, batches_per_epoch)?;
        }
        let (stopped_by, stop_detail) = 'epochs: loop {
            if let Some(max) = cfg.max_epochs
                && pos.epoch >= max
            {
                break 'epochs (
                    StopReason::MaxEpochs,
                    format!("reached the limit of {max} epochs"),
                );
            }
            let order = epoch_order(n, cfg.seed, pos.epoch);
            loop {
                if let Some(max) = cfg.max_steps
                    && pos.step >= max
                {
                    break 'epochs (
                        StopReason::MaxSteps,
                        format!("reached the limit of {max} steps"),
                    );
                }
                if let Some(max) = cfg.max_seconds
                    && elapsed(base_seconds) >= max
                {
                    break 'epochs (
                        StopReason::MaxTime,
                        format!("reached the time limit of {max} s"),
                    );
                }
                let idx =
                    &order[pos.batch * cfg.batch_size..((pos.batch + 1) * cfg.batch_size).min(n)];
                let (x, y) = gather_batch(train, idx);
                let lr = cfg.schedule.lr_at(pos.step);
                optimizer.set_learning_rate(lr);

                // forward, loss, backward
                tape.clear();
                let (loss, mut grads) = {
                    let p = store.leaves(&tape);
                    let mut ctx = ForwardCtx::train(
                        cfg.seed ^ (pos.step as u64).wrapping_mul(0xA076_1D64_78BD_642F),
                    );
                    let logits = model.forward(&p, tape.constant(x), &mut ctx)?;
                    let loss = cross_entropy(logits, &y)?;
                    let value = loss.item()? as f64;
                    let mut g = tape.backward(loss)?;
                    (value, p.grads(&mut g))
                };
                tape.clear(); // drop the graph so the optimizer updates parameters in place
                step_losses.push(loss);
                if !loss.is_finite() {
                    break 'epochs (
                        StopReason::NonFinite,
                        format!(
                            "the loss became {loss} at step {} (epoch {})",
                            pos.step + 1,
                            pos.epoch + 1
                        ),
                    );
                }
                let first = *pos.first_loss.get_or_insert(loss);
                if let Some(f) = cfg.divergence_factor
                    && loss > f * first.max(1e-12)
                {
                    break 'epochs (
                        StopReason::Diverged,
                        format!(
                            "the loss {loss:.4} at step {} exceeds {f} × the first loss {first:.4}",
                            pos.step + 1
                        ),
                    );
                }

                // clip, then step
                let norm = match cfg.clip_norm {
                    Some(max) => clip_grad_norm(&mut grads, max, false)?,
                    None => global_norm(&grads),
                };
                if !norm.is_finite() {
                    break 'epochs (
                        StopReason::NonFinite,
                        format!(
                            "the gradient norm became {norm} at step {} (epoch {})",
                            pos.step + 1,
                            pos.epoch + 1
                        ),
                    );
                }
                let cs = &mut pos.clipping;
                if cs.steps == 0 || norm < cs.min_norm {
                    cs.min_norm = norm;
                }
                cs.max_norm = cs.max_norm.max(norm);
                cs.steps += 1;
                norm_sum += norm;
                cs.mean_norm = norm_sum / cs.steps as f64;
                let mut clipped = cfg.clip_norm.is_some_and(|m| norm > m);
                if let Some(v) = cfg.clip_value {
                    clipped |= clip_grad_value(&mut grads, v) > 0;
                }
                cs.clipped_steps += usize::from(clipped);
                optimizer.step(store, &grads)?;

                pos.step += 1;
                pos.batch += 1;
                samples += idx.len();
                window_loss = (window_loss.0 + loss, window_loss.1 + 1);
                for c in callbacks.iter_mut() {
                    c.on_step(pos.step, loss)?;
                }

                let eval_now = match cfg.eval_every {
                    Some(k) => pos.step.is_multiple_of(k.max(1)),
                    None => pos.batch == batches_per_epoch,
                };
                let epoch_done = pos.batch == batches_per_epoch;
                if epoch_done {
                    pos.epoch += 1;
                    pos.batch = 0;
                }
                if eval_now {
                    let (val_loss, val_metric) = evaluate(model, store, val)?;
                    let record = EvalRecord {
                        epoch: pos.epoch as f64 + pos.batch as f64 / batches_per_epoch as f64,
                        step: pos.step,
                        train_loss: window_loss.0 / window_loss.1.max(1) as f64,
                        val_loss,
                        val_metric,
                        lr,
                        seconds: elapsed(base_seconds),
                    };
                    window_loss = (0.0, 0);
                    let improved = best.as_ref().is_none_or(|(m, _)| val_metric > *m);
                    if improved {
                        if cfg.restore_best {
                            pos.best_weights = store.iter().map(|(_, _, t)| t.clone()).collect();
                        }
                        best = Some((val_metric, pos.step));
                        pos.since_best = 0;
                    } else {
                        pos.since_best += 1;
                    }
                    pos.history.push(record.clone());
                    pos.seconds = elapsed(base_seconds);
                    for c in callbacks.iter_mut() {
                        c.on_eval(&Snapshot {
                            record: &record,
                            position: &pos,
                            store,
                            optimizer: &*optimizer,
                        })?;
                    }
                    if let Some(t) = cfg.target
                        && val_metric >= t
                    {
                        break 'epochs (
                            StopReason::Target,
                            format!("validation accuracy {val_metric:.4} reached the target {t}"),
                        );
                    }
                    if let Some(p) = cfg.patience
                        && pos.since_best >= p
                    {
                        break 'epochs (
                            StopReason::Patience,
                            format!("no improvement for {p} evaluations"),
                        );
                    }
                }
                if epoch_done {
                    break; // next epoch: a new order, and the epoch limit is checked
                }
            }
        };
        let seconds = elapsed(base_seconds);
        pos.seconds = seconds;
        if cfg.restore_best && !pos.best_weights.is_empty() {
            let ids: Vec<_> = store.iter().map(|(id, _, _)| id).collect();
            for (id, w) in ids.into_iter().zip(&pos.best_weights) {
                *store.get_mut(id) = w.clone();
            }
        }
        let final_val_metric = if stopped_by == StopReason::NonFinite {
            f64::NAN
        } else {
            evaluate(model, store, val)?.1
        };
        let (best_val_metric, best_step) = best.unwrap_or((f64::NAN, 0));
        let report = TrainReport {
            stopped_by,
            stop_detail,
            best_val_metric,
            best_step,
            final_val_metric,
            epochs: pos.epoch,
            steps: pos.step,
            seconds,
            samples_per_second: samples as f64 / (seconds - base_seconds).max(1e-9),
            clipping: pos.clipping.clone(),
            history: pos.history.clone(),
            step_losses,
        };
        for c in callbacks.iter_mut() {
            c.on_end(&report)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Activation, Init};
    use crate::optim::OptimizerKind;

    #[test]
    fn a_start_position_beyond_the_epoch_is_an_error_not_a_panic() {
        let ds = Dataset::new(
            Tensor::from_vec((0..20).map(|v| v as f32).collect(), &[10, 2]).unwrap(),
            (0..10).map(|i| i % 2).collect(),
            2,
            "ten",
        )
        .unwrap();
        let mut store = ParamStore::new();
        let model = Mlp::new(&mut store, &[2, 3, 2], Activation::Relu, Init::HeUniform, 0).unwrap();
        let mut opt = OptimizerKind::Sgd.build::<f32>(0.1, None).unwrap();
        let trainer = Trainer::new(TrainConfig {
            batch_size: 5,
            ..Default::default()
        })
        .unwrap();
        // saved with batch size 1: batch 7 of 10; this run has 2 batches per epoch
        let start = Position {
            batch: 7,
            ..Default::default()
        };
        let e = trainer
            .fit(&model, &mut store, opt.as_mut(), &ds, &ds, start, &mut [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("resumes at batch 7 of an epoch that has 2 batches"),
            "{e}"
        );
    }
}
