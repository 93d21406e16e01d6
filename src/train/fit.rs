//! [`Trainer::fit`]: the loop over epochs and steps, its stop conditions, the evaluations
//! and the report. What the loop carries from one step to the next lives in one struct,
//! [`Fit`], whose methods are the loop's named steps.

use super::{
    Callback, ClipStats, Collective, EvalRecord, Evaluation, GROWTH_WINDOW, MetricSpec, Objective,
    PhaseTimes, Position, Snapshot, StepOutcome, StepRecord, StopReason, TrainReport, Trainer,
    carried_state, combine, same_parameters,
};
use crate::autodiff::Tape;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::Optimizer;
use std::time::Instant;

impl Trainer {
    /// Trains the parameters in `store` on `objective` from `start` until a stop
    /// condition holds; evaluates every epoch (or every `eval_every` steps).
    pub fn fit(
        &self,
        objective: &mut dyn Objective,
        store: &mut ParamStore<f32>,
        optimizer: &mut dyn Optimizer<f32>,
        start: Position,
        callbacks: &mut [&mut dyn Callback],
    ) -> Result<TrainReport> {
        let batches_per_epoch = objective.batches_per_epoch();
        if start.batch >= batches_per_epoch {
            // a checkpoint of another batch size or dataset: slicing would panic
            return Err(Error::invalid(
                "train",
                format!(
                    "the run resumes at batch {} of an epoch that has {batches_per_epoch} batches of {}: it was saved with another batch size or dataset",
                    start.batch, self.config.batch_size
                ),
            ));
        }
        if let Some(c) = &self.collective {
            // every process starts from rank 0's parameters
            let ids: Vec<_> = store.iter().map(|(id, _, _)| id).collect();
            for id in ids {
                c.broadcast_f32(store.get_mut(id).data_mut())?;
            }
        }
        let mut fit = Fit::new(self, objective, store, optimizer, callbacks, start);
        for c in fit.callbacks.iter_mut() {
            c.on_start(&fit.pos, batches_per_epoch)?;
        }
        let (stopped_by, stop_detail) = fit.epochs()?;
        fit.finish(stopped_by, stop_detail)
    }

    /// [`fit`](Self::fit) from the start of a run, without callbacks: what a benchmark
    /// or an experiment that only reads the report runs.
    pub fn fit_from_start(
        &self,
        objective: &mut dyn Objective,
        store: &mut ParamStore<f32>,
        optimizer: &mut dyn Optimizer<f32>,
    ) -> Result<TrainReport> {
        self.fit(objective, store, optimizer, Position::default(), &mut [])
    }

    /// `flag` here, or on any process of a data-parallel run: so that a decision taken
    /// from a local clock is the same on every process.
    fn agree(&self, flag: bool) -> Result<bool> {
        match &self.collective {
            Some(c) => c.any(flag),
            None => Ok(flag),
        }
    }
}

/// One call of [`Trainer::fit`]: what it trains, and what the loop carries from step to
/// step (the position, the best evaluation, the running sums of the report).
struct Fit<'a, 'c> {
    trainer: &'a Trainer,
    objective: &'a mut dyn Objective,
    store: &'a mut ParamStore<f32>,
    optimizer: &'a mut dyn Optimizer<f32>,
    callbacks: &'a mut [&'c mut dyn Callback],
    metric: MetricSpec,
    batches_per_epoch: usize,
    pos: Position,
    /// The best validation metric so far and its step.
    best: Option<(f64, usize)>,
    /// Training loss summed since the last evaluation, and the number of steps.
    window_loss: (f64, usize),
    /// Sum of the gradient norms of every step of the run (resumed runs included).
    norm_sum: f64,
    samples: usize,
    step_losses: Vec<f64>,
    step_norms: Vec<(usize, f64, bool)>,
    profile: PhaseTimes,
    tape: Tape<f32>,
    clock: Instant,
    /// The seconds the run had trained before this call (a resumed run's).
    base_seconds: f64,
    /// The learning rate of the last step this call took (the schedule may follow the
    /// clock, so it is not always the schedule's rate at that step).
    last_lr: Option<f64>,
}

/// How one step ended.
enum AfterStep {
    /// A stop condition holds.
    Stop(StopReason, String),
    /// The epoch's last batch: the next epoch starts with a new order.
    EpochDone,
    Next,
}

impl<'a, 'c> Fit<'a, 'c> {
    fn new(
        trainer: &'a Trainer,
        objective: &'a mut dyn Objective,
        store: &'a mut ParamStore<f32>,
        optimizer: &'a mut dyn Optimizer<f32>,
        callbacks: &'a mut [&'c mut dyn Callback],
        mut pos: Position,
    ) -> Self {
        let metric = objective.metric();
        // a checkpoint written before `best` was kept has it only in its history
        let mut best: Option<(f64, usize)> = pos.best;
        for r in pos.history.iter().filter(|_| pos.best.is_none()) {
            if best.is_none_or(|(m, _)| metric.goal.better(r.val_metric, m)) {
                best = Some((r.val_metric, r.step));
            }
        }
        pos.best = best;
        let norm_sum = pos
            .norm_sum
            .unwrap_or(pos.clipping.mean_norm * pos.clipping.steps as f64);
        let tape = Tape::<f32>::new();
        tape.set_detect_anomaly(trainer.config.detect_anomaly);
        Fit {
            trainer,
            batches_per_epoch: objective.batches_per_epoch(),
            objective,
            store,
            optimizer,
            callbacks,
            metric,
            base_seconds: pos.seconds,
            last_lr: None,
            pos,
            best,
            window_loss: (0.0, 0),
            norm_sum,
            samples: 0,
            step_losses: Vec::new(),
            step_norms: Vec::new(),
            profile: PhaseTimes::default(),
            tape,
            clock: Instant::now(),
        }
    }

    /// The run's training time so far, the resumed part included.
    fn elapsed(&self) -> f64 {
        self.base_seconds + self.clock.elapsed().as_secs_f64()
    }

    fn collective(&self) -> Option<&dyn Collective> {
        self.trainer.collective.as_deref()
    }

    /// Epochs until a stop condition holds: which one, and in words.
    fn epochs(&mut self) -> Result<(StopReason, String)> {
        let cfg = &self.trainer.config;
        let mut epoch_started = None;
        loop {
            if let Some(max) = cfg.max_epochs
                && self.pos.epoch >= max
            {
                return Ok((
                    StopReason::MaxEpochs,
                    format!("reached the limit of {max} epochs"),
                ));
            }
            if epoch_started != Some(self.pos.epoch) {
                self.objective.start_epoch(self.pos.epoch, cfg.seed)?;
                if self.pos.batch > 0 {
                    // resuming mid-epoch: the state the saved run carried
                    let carried = std::mem::take(&mut self.pos.carried);
                    self.objective.restore_carried_state(carried)?;
                }
                epoch_started = Some(self.pos.epoch);
            }
            loop {
                match self.step()? {
                    AfterStep::Stop(reason, detail) => return Ok((reason, detail)),
                    AfterStep::EpochDone => break,
                    AfterStep::Next => {}
                }
            }
        }
    }

    /// One step (after the step and time limits are checked), its bookkeeping, and the
    /// evaluation that follows it when one is due.
    fn step(&mut self) -> Result<AfterStep> {
        let cfg = &self.trainer.config;
        if let Some(max) = cfg.max_steps
            && self.pos.step >= max
        {
            return Ok(AfterStep::Stop(
                StopReason::MaxSteps,
                format!("reached the limit of {max} steps"),
            ));
        }
        if let Some(max) = cfg.max_seconds
            && self.trainer.agree(self.elapsed() >= max)?
        {
            return Ok(AfterStep::Stop(
                StopReason::MaxTime,
                format!("reached the time limit of {max} s"),
            ));
        }
        let eval_now = match cfg.eval_every {
            Some(k) => (self.pos.step + 1).is_multiple_of(k.max(1)),
            None => self.pos.batch + 1 == self.batches_per_epoch,
        };
        if let (true, Some(max), Some(span)) =
            (cfg.schedule_by_time, cfg.max_seconds, cfg.schedule.span())
        {
            let at = schedule_position(self.pos.step, self.elapsed() / max, span);
            self.trainer.schedule_position.set(Some(at));
        }
        let out = self.trainer.train_step(
            &mut self.tape,
            &mut *self.objective,
            &mut *self.store,
            &mut *self.optimizer,
            self.pos.batch,
            self.pos.step,
            self.pos.first_loss,
            eval_now,
        )?;
        self.step_losses.push(out.loss);
        self.last_lr = Some(out.lr);
        self.profile.add(&out.times);
        if let Some((reason, detail)) = out.stop {
            let detail = format!("{detail} (epoch {})", self.pos.epoch + 1);
            return Ok(AfterStep::Stop(reason, detail));
        }
        self.pos.first_loss.get_or_insert(out.loss);
        self.track_norm(out.grad_norm, out.clipped);
        self.pos.step += 1;
        self.pos.batch += 1;
        self.samples += out.samples;
        self.window_loss = (self.window_loss.0 + out.loss, self.window_loss.1 + 1);
        self.step_norms
            .push((self.pos.step, out.grad_norm, out.clipped));
        let record = StepRecord {
            step: self.pos.step,
            loss: out.loss,
            grad_norm: out.grad_norm,
            clipped: out.clipped,
            lr: out.lr,
        };
        let t = Instant::now();
        for c in self.callbacks.iter_mut() {
            c.on_step(&record)?;
        }
        self.profile.logging_and_checkpoints += t.elapsed().as_secs_f64();

        let epoch_done = self.pos.batch == self.batches_per_epoch;
        if epoch_done {
            self.pos.epoch += 1;
            self.pos.batch = 0;
        }
        if eval_now && let Some(stop) = self.evaluate_and_check(&out)? {
            return Ok(stop);
        }
        Ok(if epoch_done {
            AfterStep::EpochDone
        } else {
            AfterStep::Next
        })
    }

    /// The evaluation after a step, and the stop conditions on its metric.
    fn evaluate_and_check(&mut self, out: &StepOutcome) -> Result<Option<AfterStep>> {
        let cfg = &self.trainer.config;
        let val_metric = self.record_evaluation(out.lr, &out.param_norms)?;
        if let Some(t) = cfg.target
            && self.metric.goal.reached(val_metric, t)
        {
            return Ok(Some(AfterStep::Stop(
                StopReason::Target,
                format!(
                    "validation {} {val_metric:.4} reached the target {t}",
                    self.metric.name
                ),
            )));
        }
        if let Some(p) = cfg.patience
            && self.pos.since_best >= p
        {
            return Ok(Some(AfterStep::Stop(
                StopReason::Patience,
                format!("no improvement for {p} evaluations"),
            )));
        }
        Ok(None)
    }

    /// The clipping statistics of one step's gradient norm, and the growth detector: a
    /// norm ten times the median of the last [`GROWTH_WINDOW`] steps (the median, not
    /// the smallest: minibatch norms scatter).
    fn track_norm(&mut self, norm: f64, clipped: bool) {
        let cs: &mut ClipStats = &mut self.pos.clipping;
        if cs.steps == 0 || norm < cs.min_norm {
            cs.min_norm = norm;
        }
        cs.max_norm = cs.max_norm.max(norm);
        cs.steps += 1;
        self.norm_sum += norm;
        self.pos.norm_sum = Some(self.norm_sum);
        cs.mean_norm = self.norm_sum / cs.steps as f64;
        cs.clipped_steps += usize::from(clipped);
        let recent_norms = &mut self.pos.recent_norms;
        if recent_norms.len() == GROWTH_WINDOW {
            recent_norms.pop_front();
        }
        if recent_norms.len() >= GROWTH_WINDOW / 2 {
            let mut sorted: Vec<f64> = recent_norms.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            if norm > 10.0 * median {
                self.pos.clipping.norm_growth_events += 1;
                let step = self.pos.step + 1;
                self.pos.clipping.first_norm_growth.get_or_insert_with(|| {
                    format!(
                        "the gradient norm grew from {median:.3e} (median of the previous {} steps) to {norm:.3e} at step {step}",
                        sorted.len(),
                    )
                });
                self.pos.recent_norms.clear();
            }
        }
        self.pos.recent_norms.push_back(norm);
    }

    /// Evaluates, updates the best metric and the position, and tells the callbacks
    /// (which log and checkpoint). Returns the metric.
    fn record_evaluation(&mut self, lr: f64, param_norms: &[f64]) -> Result<f64> {
        let restore_best = self.trainer.config.restore_best;
        // the time of the step the evaluation follows, not counting the evaluation
        let seconds = self.elapsed();
        let t = Instant::now();
        let eval = combine(self.objective.evaluate(self.store)?, self.collective())?;
        self.profile.evaluation += t.elapsed().as_secs_f64();
        if let Some(c) = self.collective() {
            same_parameters(c, self.store, self.pos.step)?;
        }
        let pos = &mut self.pos;
        let val_metric = eval.get(&self.metric.name);
        let record = EvalRecord {
            epoch: pos.epoch as f64 + pos.batch as f64 / self.batches_per_epoch as f64,
            step: pos.step,
            train_loss: self.window_loss.0 / self.window_loss.1.max(1) as f64,
            val_loss: eval.loss,
            val_metric,
            lr,
            seconds,
            metrics: eval.metrics.iter().cloned().collect(),
            grad_norms: self
                .store
                .iter()
                .zip(param_norms)
                .map(|((_, n, _), &v)| (n.to_string(), v))
                .collect(),
        };
        self.window_loss = (0.0, 0);
        if self
            .best
            .is_none_or(|(m, _)| self.metric.goal.better(val_metric, m))
        {
            if restore_best {
                pos.best_weights = self.store.iter().map(|(_, _, t)| t.clone()).collect();
            }
            self.best = Some((val_metric, pos.step));
            pos.best = self.best;
            pos.since_best = 0;
        } else {
            pos.since_best += 1;
        }
        pos.history.push(record.clone());
        pos.seconds = seconds;
        self.tell_callbacks(&record, false)?;
        Ok(val_metric)
    }

    /// Hands the position to the callbacks after an evaluation (`on_eval`) or at the
    /// stop (`on_stop`), with the state the objective carries when mid-epoch.
    fn tell_callbacks(&mut self, record: &EvalRecord, stop: bool) -> Result<()> {
        // the stop's timing includes the carried state, an evaluation's does not (as
        // the loop timed them before it became these methods)
        let before = Instant::now();
        // at an epoch's end the next batch starts from a fresh state
        self.pos.carried = if self.pos.batch == 0 {
            Vec::new()
        } else {
            carried_state(&*self.objective, self.collective())?
        };
        let t = if stop { before } else { Instant::now() };
        let snapshot = Snapshot {
            record,
            position: &self.pos,
            store: self.store,
            optimizer: &*self.optimizer,
        };
        for c in self.callbacks.iter_mut() {
            if stop {
                c.on_stop(&snapshot)?;
            } else {
                c.on_eval(&snapshot)?;
            }
        }
        self.pos.carried.clear();
        self.profile.logging_and_checkpoints += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// After the loop: a last evaluation if the run stopped between two, the callbacks'
    /// `on_stop`, the best weights restored if asked, the final evaluation and the
    /// report.
    fn finish(mut self, stopped_by: StopReason, stop_detail: String) -> Result<TrainReport> {
        let cfg = &self.trainer.config;
        // a run that stops between evaluations is evaluated (and checkpointed) once more,
        // so that its last steps are not lost
        let failed = matches!(stopped_by, StopReason::NonFinite | StopReason::Diverged);
        let pos = &self.pos;
        if !failed && pos.step > 0 && pos.history.last().is_none_or(|r| r.step != pos.step) {
            let last_lr = (self.last_lr).unwrap_or_else(|| cfg.schedule.lr_at(pos.step - 1));
            self.record_evaluation(last_lr, &[])?;
        }
        self.pos.seconds = self.elapsed();
        if let Some(record) = self.pos.history.last().filter(|_| !failed).cloned() {
            self.tell_callbacks(&record, true)?;
        }
        let seconds = self.elapsed();
        self.pos.seconds = seconds;
        let restored = cfg.restore_best && !self.pos.best_weights.is_empty();
        if restored {
            let ids: Vec<_> = self.store.iter().map(|(id, _, _)| id).collect();
            for (id, w) in ids.into_iter().zip(&self.pos.best_weights) {
                *self.store.get_mut(id) = w.clone();
            }
        }
        let final_eval = self.final_evaluation(stopped_by, restored)?;
        let phases: f64 = self.profile.named().iter().map(|(_, s)| s).sum();
        self.profile.other = (self.elapsed() - self.base_seconds - phases).max(0.0);
        let (best_val_metric, best_step) = self.best.unwrap_or((f64::NAN, 0));
        let report = TrainReport {
            stopped_by,
            stop_detail,
            metric: self.metric.clone(),
            best_val_metric,
            best_step,
            final_val_metric: final_eval.get(&self.metric.name),
            final_val_loss: final_eval.loss,
            epochs: self.pos.epoch,
            steps: self.pos.step,
            seconds,
            samples_per_second: self.samples as f64 / (seconds - self.base_seconds).max(1e-9),
            clipping: self.pos.clipping.clone(),
            profile: self.profile,
            history: self.pos.history.clone(),
            step_losses: self.step_losses,
            step_norms: self.step_norms,
            warnings: self.trainer.warnings.borrow().clone(),
        };
        for c in self.callbacks.iter_mut() {
            c.on_end(&report)?;
        }
        Ok(report)
    }

    /// The evaluation the report gives: the last one when it is of the final weights,
    /// a new one otherwise, none after a non-finite loss.
    fn final_evaluation(&mut self, stopped_by: StopReason, restored: bool) -> Result<Evaluation> {
        let last = self
            .pos
            .history
            .last()
            .filter(|r| r.step == self.pos.step && !restored);
        Ok(match (stopped_by, last) {
            (StopReason::NonFinite, _) => Evaluation {
                loss: f64::NAN,
                metrics: Vec::new(),
                samples: 0,
            },
            // the weights of the last evaluation are the final ones
            (_, Some(r)) => Evaluation {
                loss: r.val_loss,
                metrics: std::iter::once((self.metric.name.clone(), r.val_metric))
                    .chain(r.metrics.clone())
                    .collect(),
                samples: 0,
            },
            _ => {
                let t = Instant::now();
                let e = combine(self.objective.evaluate(self.store)?, self.collective())?;
                self.profile.evaluation += t.elapsed().as_secs_f64();
                e
            }
        })
    }
}
/// Where a schedule of `span` steps stands at step `step` when a fraction `clock` of the
/// time budget is spent: the further along of the two.
fn schedule_position(step: usize, clock: f64, span: usize) -> usize {
    let by_clock = (clock.clamp(0.0, 1.0) * span as f64) as usize;
    by_clock.max(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_the_clock_when_it_is_ahead_of_the_steps() {
        // a run at a fifth of its steps but half of its time is half-way through
        assert_eq!(schedule_position(200, 0.5, 1000), 500);
        // steps ahead of the clock keep their place; the clock never runs past the end
        assert_eq!(schedule_position(700, 0.5, 1000), 700);
        assert_eq!(schedule_position(10, 3.0, 1000), 1000);
        assert_eq!(schedule_position(10, f64::NAN, 1000), 10);
    }
}
