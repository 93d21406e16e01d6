//! A progress bar on a terminal (plain log lines when the output is not a terminal), as a
//! callback of the library's training loop.

use chainrule::error::Result;
use chainrule::train::{Callback, Position, Snapshot, StepRecord, TrainReport};
use std::io::IsTerminal;

/// A progress bar on a terminal, one log line per evaluation otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    samples_per_step: usize,
    unit: &'static str,
    started: std::time::Instant,
    first_step: usize,
    step: usize,
    loss: f64,
}

impl Progress {
    /// `quiet` prints nothing (for `--json`); a step trains on `per_step` samples, or
    /// characters, or whatever `unit` names.
    pub fn new(quiet: bool, per_step: usize, unit: &'static str) -> Self {
        Progress {
            bar: None,
            quiet,
            samples_per_step: per_step,
            unit,
            started: std::time::Instant::now(),
            first_step: 0,
            step: 0,
            loss: f64::NAN,
        }
    }
    fn rate(&self) -> f64 {
        (self.step - self.first_step) as f64 * self.samples_per_step as f64
            / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

impl Callback for Progress {
    fn on_start(&mut self, position: &Position, _batches_per_epoch: usize) -> Result<()> {
        self.first_step = position.step;
        self.step = position.step;
        self.started = std::time::Instant::now();
        if !self.quiet && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] step {pos} {msg}",
                )
                .expect("valid template"),
            );
            self.bar = Some(bar);
        }
        Ok(())
    }
    fn on_step(&mut self, record: &StepRecord) -> Result<()> {
        let (step, loss) = (record.step, record.loss);
        self.step = step;
        self.loss = loss;
        if let Some(bar) = &self.bar
            && step.is_multiple_of(20)
        {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {loss:.4}  grad norm {:.3}  {:.0} {}/s",
                record.grad_norm,
                self.rate(),
                self.unit
            ));
        }
        Ok(())
    }
    fn on_eval(&mut self, s: &Snapshot<'_>) -> Result<()> {
        let r = s.record;
        let named: String = r
            .metrics
            .iter()
            .map(|(k, v)| format!("  val {} {v:.4}", k.replace('_', " ")))
            .collect();
        let line = format!(
            "epoch {:>6.2}  step {:>6}  loss {:.4}  val loss {:.4}{named}  lr {:.2e}  {:.0} {}/s",
            r.epoch,
            r.step,
            r.train_loss,
            r.val_loss,
            r.lr,
            self.rate(),
            self.unit,
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
        Ok(())
    }
    fn on_end(&mut self, _report: &TrainReport) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(())
    }
}
