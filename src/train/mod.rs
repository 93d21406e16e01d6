//! The descent loop: forward pass, loss, backward pass, gradient clipping, optimizer
//! step, repeated over shuffled minibatches, with an evaluation on the validation split
//! every epoch (or every k steps) and stop conditions that compose.

mod callbacks;
mod checkpoint;
mod collective;
mod fit;
mod gpt;
#[cfg(feature = "mpi")]
pub mod mpi;
mod objective;
mod records;

pub use callbacks::{Callback, CheckpointWriter, MetricsLog, Snapshot, read_evaluations};
pub use checkpoint::{
    CHECKPOINT_FILE, CHECKPOINT_VERSION, Checkpoint, CheckpointMeta, DataIdentity, load_checkpoint,
};
pub use collective::{Collective, fingerprint, share};
pub use gpt::GptLanguageModel;
pub use objective::{
    BatchData, Classification, Evaluation, Goal, LanguageModel, MetricSpec, Objective, Regression,
    evaluate,
};
pub use records::*;

use crate::autodiff::{Tape, Trace};
use crate::error::{Error, Result};
use crate::nn::{ForwardCtx, ParamStore};
use crate::optim::{
    LrSchedule, Optimizer, clip_grad_norm, clip_grad_value, global_norm, grad_norms,
};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
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
    /// Stop when the objective's validation metric reaches this (at least this for an
    /// accuracy, at most this for a loss).
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
    /// Replay a recorded step when the next one has the same graph and shapes
    /// ([`crate::autodiff::Trace`]) instead of recording it again; steps that change
    /// shape (a last, smaller batch) and runs with `detect_anomaly` use the tape.
    #[serde(default = "replay_by_default")]
    pub replay: bool,
    /// With a time limit, the schedule follows whichever of the steps and the clock is
    /// further along (`max(step, elapsed / max_seconds · span)`), so that a run the
    /// clock stops still ends its schedule instead of being cut off mid-way; a run that
    /// finishes its steps first is unaffected.
    #[serde(default)]
    pub schedule_by_time: bool,
    /// Keep a second worker of rayon's pool awake through each step, taking the kernels'
    /// forked halves as they appear instead of being woken for each (tens of
    /// microseconds a wake-up on a small virtual machine). It keeps a core busy while the
    /// step runs, so it is off by default: right for a program that has the machine to
    /// itself (the `chainrule` binary turns it on), wrong for one whose other threads
    /// need that core. Ignored in a data-parallel run, whose processes share the cores.
    #[serde(default)]
    pub keep_a_worker_awake: bool,
}

fn replay_by_default() -> bool {
    true
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
            replay: true,
            schedule_by_time: false,
            keep_a_worker_awake: false,
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
    /// Evaluations so far. Not written into a checkpoint, whose metadata would grow with
    /// the run: a resumed run reads them back from its `metrics.jsonl` (checkpoints
    /// written before this change still carry them, and are read).
    #[serde(default, skip_serializing)]
    pub history: Vec<EvalRecord>,
    /// The best metric so far and the step of its evaluation.
    #[serde(default)]
    pub best: Option<(f64, usize)>,
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
    /// The state the objective carries to the next batch (a recurrent model's hidden
    /// state), in a checkpoint as `state:NAME` tensors; empty at an epoch's end.
    #[serde(skip)]
    pub carried: Vec<(String, Tensor<f32>)>,
    /// The global gradient norms of the last steps, for the growth warning.
    #[serde(default)]
    pub recent_norms: std::collections::VecDeque<f64>,
    /// The sum of every step's gradient norm (the mean's numerator, kept exactly).
    #[serde(default)]
    pub norm_sum: Option<f64>,
}

impl Position {
    /// A copy for a checkpoint: everything but the history of evaluations, which a
    /// checkpoint does not hold, so that writing one costs the same late in a run as
    /// early.
    pub fn without_history(&self) -> Position {
        Position {
            epoch: self.epoch,
            batch: self.batch,
            step: self.step,
            seconds: self.seconds,
            history: Vec::new(),
            best: self.best,
            first_loss: self.first_loss,
            since_best: self.since_best,
            best_weights: self.best_weights.clone(),
            clipping: self.clipping.clone(),
            carried: self.carried.clone(),
            recent_norms: self.recent_norms.clone(),
            norm_sum: self.norm_sum,
        }
    }
}

/// One training step's graph (forward, loss, backward on the first batch of the run) as
/// Graphviz DOT, grouped by layer, with every node's gradient norm.
pub fn step_graph(
    objective: &mut dyn Objective,
    store: &ParamStore<f32>,
    seed: u64,
) -> Result<String> {
    objective.start_epoch(0, seed)?;
    let tape = Tape::<f32>::new();
    let p = store.leaves(&tape);
    p.label(store);
    let (loss, _) = objective.batch_loss(&p, 0, &mut ForwardCtx::train(seed))?;
    let grads = tape.backward_keep_all(loss)?;
    Ok(crate::autodiff::graph_dot(&tape, Some(&grads)))
}

/// The evaluation of the whole validation split from each process's evaluation of its
/// share: means weighted by the samples they are over.
fn combine(e: Evaluation, collective: Option<&dyn Collective>) -> Result<Evaluation> {
    let Some(c) = collective else {
        return Ok(e);
    };
    let n = e.samples as f64;
    // a process with no share adds nothing (its means are NaN)
    let weighted = |v: f64| if e.samples == 0 { 0.0 } else { v * n };
    let mut sums: Vec<f64> = std::iter::once(weighted(e.loss))
        .chain(e.metrics.iter().map(|(_, v)| weighted(*v)))
        .chain(std::iter::once(n))
        .collect();
    c.sum_f64(&mut sums)?;
    let total = sums[sums.len() - 1];
    Ok(Evaluation {
        loss: sums[0] / total,
        metrics: e
            .metrics
            .iter()
            .zip(&sums[1..])
            .map(|((name, _), s)| (name.clone(), s / total))
            .collect(),
        samples: total as usize,
    })
}

/// Checks that every process holds rank 0's parameters (a hash of their bits), so that a
/// process that drifted (a bug, a flipped bit) stops the run instead of training apart.
fn same_parameters(c: &dyn Collective, store: &ParamStore<f32>, step: usize) -> Result<()> {
    let h = fingerprint(
        store
            .iter()
            .flat_map(|(_, _, t)| t.data().iter().map(|v| v.to_bits())),
    );
    let mut bytes = h.to_le_bytes().to_vec();
    c.broadcast_bytes(&mut bytes)?;
    let differs = bytes != h.to_le_bytes();
    if c.any(differs)? {
        return Err(Error::invalid(
            "distributed training",
            if differs {
                format!(
                    "at step {step} rank {}'s parameters differ from rank 0's",
                    c.rank()
                )
            } else {
                format!("at step {step} another process's parameters differ from rank 0's")
            },
        ));
    }
    Ok(())
}

/// The state the objective carries to the next batch; in a data-parallel run each
/// process holds its own streams' part (zeros elsewhere) and the sum is the whole.
fn carried_state(
    objective: &dyn Objective,
    collective: Option<&dyn Collective>,
) -> Result<Vec<(String, Tensor<f32>)>> {
    let mut state = objective.carried_state();
    if let Some(c) = collective {
        for (_, t) in &mut state {
            c.sum_f32(t.data_mut())?;
        }
    }
    Ok(state)
}

/// Runs the descent loop.
pub struct Trainer {
    /// The loop's settings.
    pub config: TrainConfig,
    /// The processes this one trains with (data-parallel), if any.
    collective: Option<Box<dyn Collective>>,
    /// Recorded steps, newest last, each with what it was recorded for: the graph and
    /// which parameters were frozen (constants in the recording, so without a gradient).
    traces: RefCell<Vec<RecordedStep>>,
    /// Graphs that asked for replay but are trained on the tape: their forward pass asked
    /// for its mode or randomness, or their recording failed.
    on_the_tape: RefCell<Vec<String>>,
    /// What the run did differently from what was asked, for the report.
    warnings: RefCell<Vec<String>>,
    /// The trace that gave the current step's gradients (their buffers go back to it).
    replayed: std::cell::Cell<Option<usize>>,
    /// Where the schedule stands for the next step when the clock is ahead of the steps
    /// ([`TrainConfig::schedule_by_time`]); set by the loop.
    schedule_position: std::cell::Cell<Option<usize>>,
    /// Sum gradients across processes during the backward sweep when the collective
    /// can ([`Collective::overlaps`]); off by default (see `with_overlapped_sums`).
    overlap: bool,
}

/// A recorded step: its graph, which parameters were frozen, the trace.
type RecordedStep = (String, Vec<bool>, Trace<f32>);

/// Traces kept at once: the full batch and the last smaller one of an epoch, with room
/// for an objective that alternates between a few shapes.
const TRACES_KEPT: usize = 4;

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
        Ok(Trainer {
            config,
            collective: None,
            traces: RefCell::new(Vec::new()),
            on_the_tape: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
            replayed: std::cell::Cell::new(None),
            schedule_position: std::cell::Cell::new(None),
            overlap: false,
        })
    }

    /// Trains data-parallel with the processes of `collective`: each one's objective must
    /// already be [sharded](Objective::shard) to its rank. The run starts from rank 0's
    /// parameters; every step sums the gradients weighted by each share's size (so they
    /// are the global batch's gradient), and the processes agree on every stop (a loss
    /// that is not finite on one stops all: the loss is summed too).
    pub fn with_collective(mut self, collective: Box<dyn Collective>) -> Self {
        self.collective = Some(collective);
        self
    }

    /// Starts each gradient's sum across processes as soon as the backward sweep has
    /// completed it, and lets the sums advance between the sweep's remaining steps
    /// (replayed steps only). On one machine this measured slower than summing after
    /// the sweep (MPI's non-blocking all-reduce moves the same bytes on the same cores,
    /// and more slowly: `bench w1_step_dp`), so it is off unless asked for; across
    /// machines, the network moves the bytes while the cores compute.
    pub fn with_overlapped_sums(mut self) -> Self {
        self.overlap = true;
        self
    }

    /// Forward and backward of a batch given as data: replayed when a trace of the same
    /// graph, shapes and frozen parameters exists, otherwise recorded in training mode
    /// with the step's randomness (and traced for the next batch like it). A forward pass
    /// that asks for its mode or randomness (dropout), or whose recording fails, is this
    /// step's eager result, and its graph goes on the tape from then on.
    #[allow(clippy::type_complexity)]
    fn replayed_step(
        &self,
        tape: &mut Tape<f32>,
        objective: &mut dyn Objective,
        store: &ParamStore<f32>,
        (data, step_seed): (&BatchData, u64),
        lap: &mut impl FnMut(&mut f64),
        times: &mut PhaseTimes,
    ) -> Result<(f64, usize, Vec<Option<Tensor<f32>>>, bool)> {
        let params: Vec<&Tensor<f32>> = store.iter().map(|(_, _, v)| v).collect();
        let frozen = store.frozen_flags();
        let inputs: Vec<&Tensor<f32>> = data.inputs.iter().collect();
        let indices: Vec<&[usize]> = data.indices.iter().map(Vec::as_slice).collect();
        let mut traces = self.traces.borrow_mut();
        let found = traces.iter().position(|(g, f, t)| {
            *g == data.graph && f.as_slice() == frozen && t.accepts(&params, &inputs, &indices)
        });
        let k = match found {
            Some(k) => k,
            None => {
                // record: the inputs are variables, so that every op depending on them
                // is on the tape
                let p = store.leaves(tape);
                let vars: Vec<_> = data.inputs.iter().map(|t| tape.var(t.clone())).collect();
                let mut ctx = ForwardCtx::train(step_seed);
                let loss = objective.data_loss(&p, &vars, &data.indices, &mut ctx)?;
                let recorded = if ctx.was_asked() {
                    Err("its forward pass asks for its mode or randomness (dropout)".into())
                } else {
                    Trace::record(tape, loss, p.vars(), &vars).map_err(|e| e.to_string())
                };
                match recorded {
                    Ok(trace) => {
                        if traces.len() == TRACES_KEPT {
                            traces.remove(0);
                        }
                        traces.push((data.graph.clone(), frozen.to_vec(), trace));
                        tape.clear();
                        traces.len() - 1
                    }
                    Err(why) => {
                        self.on_the_tape.borrow_mut().push(data.graph.clone());
                        self.warnings.borrow_mut().push(format!(
                            "`{}` is trained on the tape, not replayed: {why}",
                            data.graph
                        ));
                        let value = loss.item()? as f64;
                        lap(&mut times.forward);
                        let mut g = tape.backward(loss)?;
                        return Ok((value, data.samples, p.grads(&mut g)?, false));
                    }
                }
            }
        };
        // every step, the recording one included, takes its numbers from the trace, so
        // that a resumed run (which records anew) repeats an uninterrupted one exactly
        let trace = &mut traces[k].2;
        self.replayed.set(Some(k));
        let loss = trace.forward(&params, &inputs, &indices)? as f64;
        lap(&mut times.forward);
        let Some(c) = self
            .collective
            .as_deref()
            .filter(|c| self.overlap && c.overlaps())
        else {
            return Ok((loss, data.samples, trace.backward()?, false));
        };
        // data-parallel, overlapped: each gradient, weighted by this share's size, starts
        // its sum across the processes as soon as the sweep has completed it, and the
        // sums advance between the remaining steps of the sweep
        let mut totals = [loss * data.samples as f64, data.samples as f64];
        c.sum_f64(&mut totals)?;
        let weight = (data.samples as f64 / totals[1]) as f32;
        let mut started = Vec::new();
        let mut grads = trace.backward_with(
            &mut |k, g| {
                for v in g.data_mut() {
                    *v *= weight;
                }
                started.push(k);
                c.start_sum_f32(g.data())
            },
            &mut || c.progress(),
        )?;
        lap(&mut times.backward);
        c.finish_sums(&mut |i, sum| {
            // sums left over from a step that failed half-way belong to no gradient
            if let Some(g) = started.get(i).and_then(|&k| grads[k].as_mut())
                && g.len() == sum.len()
            {
                g.data_mut().copy_from_slice(sum);
            }
        })?;
        lap(&mut times.all_reduce);
        Ok((totals[0] / totals[1], data.samples, grads, true))
    }

    /// One step on batch `batch` of the current epoch: forward, loss, backward, (the
    /// seam where a gradient all-reduce across processes goes), clipping, optimizer step.
    /// `step` is the number of steps taken before this one (it seeds dropout and picks
    /// the learning rate); `first_loss` is the run's first loss, for the divergence test.
    /// A step whose loss or gradient is not finite, or whose loss diverged, changes
    /// nothing and says why in [`StepOutcome::stop`]. `norms_by_param` asks for each
    /// parameter's gradient norm (before clipping) as well. With
    /// [`TrainConfig::keep_a_worker_awake`], a second worker of the pool spins through
    /// the step.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &self,
        tape: &mut Tape<f32>,
        objective: &mut dyn Objective,
        store: &mut ParamStore<f32>,
        optimizer: &mut dyn Optimizer<f32>,
        batch: usize,
        step: usize,
        first_loss: Option<f64>,
        norms_by_param: bool,
    ) -> Result<StepOutcome> {
        let mut step_on = || {
            self.step_on(
                tape,
                objective,
                store,
                optimizer,
                (batch, step),
                first_loss,
                norms_by_param,
            )
        };
        if self.config.keep_a_worker_awake && self.collective.is_none() {
            crate::tensor::with_a_worker_awake(step_on)
        } else {
            step_on()
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_on(
        &self,
        tape: &mut Tape<f32>,
        objective: &mut dyn Objective,
        store: &mut ParamStore<f32>,
        optimizer: &mut dyn Optimizer<f32>,
        (batch, step): (usize, usize),
        first_loss: Option<f64>,
        norms_by_param: bool,
    ) -> Result<StepOutcome> {
        let cfg = &self.config;
        let lr = cfg
            .schedule
            .lr_at(self.schedule_position.take().unwrap_or(step));
        optimizer.set_learning_rate(lr);
        let mut times = PhaseTimes::default();
        let mut clock = Instant::now();
        let mut lap = |phase: &mut f64| {
            let now = Instant::now();
            *phase += (now - clock).as_secs_f64();
            clock = now;
        };
        tape.clear();
        self.replayed.set(None);
        let data = if cfg.replay && !cfg.detect_anomaly {
            objective
                .batch_data(batch)?
                .filter(|d| !self.on_the_tape.borrow().contains(&d.graph))
        } else {
            None
        };
        // the step's randomness (dropout), the same whether it is replayed or not
        let step_seed = cfg.seed ^ (step as u64).wrapping_mul(0xA076_1D64_78BD_642F);
        let (loss, samples, mut grads, summed) = match data {
            Some(data) => self.replayed_step(
                tape,
                objective,
                store,
                (&data, step_seed),
                &mut lap,
                &mut times,
            )?,
            None => {
                let p = store.leaves(tape);
                let mut ctx = ForwardCtx::train(step_seed);
                let (loss, samples) = objective.batch_loss(&p, batch, &mut ctx)?;
                let value = loss.item()? as f64;
                lap(&mut times.forward);
                let mut g = tape.backward(loss)?;
                (value, samples, p.grads(&mut g)?, false)
            }
        };
        tape.clear(); // drop the graph so the optimizer updates parameters in place
        lap(&mut times.backward);
        // data-parallel: the mean over the global batch from each share's mean
        let (loss, samples) = match &self.collective {
            None => (loss, samples),
            Some(_) if summed => (loss, samples),
            Some(c) => {
                let mut totals = [loss * samples as f64, samples as f64];
                c.sum_f64(&mut totals)?;
                let weight = (samples as f64 / totals[1]) as f32;
                for g in grads.iter_mut().flatten() {
                    let values = g.data_mut();
                    for v in values.iter_mut() {
                        *v *= weight;
                    }
                    c.sum_f32(values)?;
                }
                lap(&mut times.all_reduce);
                (totals[0] / totals[1], samples)
            }
        };
        let mut out = StepOutcome {
            loss,
            samples,
            lr,
            grad_norm: f64::NAN,
            clipped: false,
            param_norms: Vec::new(),
            stop: None,
            times: PhaseTimes::default(),
        };
        if !loss.is_finite() {
            out.stop = Some((
                StopReason::NonFinite,
                format!("the loss became {loss} at step {}", step + 1),
            ));
            return Ok(out);
        }
        let first = first_loss.unwrap_or(loss);
        if let Some(f) = cfg.divergence_factor
            && loss > f * first.max(1e-12)
        {
            out.stop = Some((
                StopReason::Diverged,
                format!(
                    "the loss {loss:.4} at step {} exceeds {f} × the first loss {first:.4}",
                    step + 1
                ),
            ));
            return Ok(out);
        }
        if norms_by_param {
            out.param_norms = grad_norms(&grads);
        }
        out.grad_norm = match cfg.clip_norm {
            Some(max) => clip_grad_norm(&mut grads, max, false)?,
            None => global_norm(&grads),
        };
        if !out.grad_norm.is_finite() {
            out.stop = Some((
                StopReason::NonFinite,
                format!(
                    "the gradient norm became {} at step {}",
                    out.grad_norm,
                    step + 1
                ),
            ));
            return Ok(out);
        }
        out.clipped = cfg.clip_norm.is_some_and(|m| out.grad_norm > m);
        if let Some(v) = cfg.clip_value {
            out.clipped |= clip_grad_value(&mut grads, v) > 0;
        }
        lap(&mut times.clipping);
        optimizer.step(store, &grads)?;
        if let Some(k) = self.replayed.take() {
            self.traces.borrow_mut()[k].2.recycle(grads);
        }
        lap(&mut times.optimizer);
        out.times = times;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
