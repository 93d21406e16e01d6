//! Hooks into the descent loop: the [`Callback`] trait, a metrics log, and checkpoints
//! (when the best metric improves and when the run stops). Drawing callbacks (a progress
//! bar, plots) belong to the program that shows them.

use super::checkpoint::{CheckpointMeta, save_checkpoint};
use super::{EvalRecord, Position, StepRecord, TrainReport};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::Optimizer;
use std::io::Write;
use std::path::PathBuf;

/// The state of a run at an evaluation.
pub struct Snapshot<'a> {
    /// The evaluation just made.
    pub record: &'a EvalRecord,
    /// Where the run is.
    pub position: &'a Position,
    /// The parameters.
    pub store: &'a ParamStore<f32>,
    /// The optimizer (for its state).
    pub optimizer: &'a dyn Optimizer<f32>,
}

/// Hooks called by the trainer.
pub trait Callback {
    /// Before the first step.
    fn on_start(&mut self, _position: &Position, _batches_per_epoch: usize) -> Result<()> {
        Ok(())
    }
    /// After every step.
    fn on_step(&mut self, _step: &StepRecord) -> Result<()> {
        Ok(())
    }
    /// After every evaluation.
    fn on_eval(&mut self, _snapshot: &Snapshot<'_>) -> Result<()> {
        Ok(())
    }
    /// When the run stops without a fault (not after a NaN or a divergence), with the
    /// last evaluation and the final position, before any best weights are restored.
    fn on_stop(&mut self, _snapshot: &Snapshot<'_>) -> Result<()> {
        Ok(())
    }
    /// At the end.
    fn on_end(&mut self, _report: &TrainReport) -> Result<()> {
        Ok(())
    }
}

/// Appends one JSON object per step (`step`, `loss`, `grad_norm` before clipping,
/// `clipped`) and one per evaluation (`epoch`, `step`, `train_loss`, `val_loss`,
/// `val_metric`, ...) to `metrics.jsonl`. Step rows are buffered and written out at each
/// evaluation, at the end, and at least once a second (so `chainrule serve` can draw a run
/// while it trains).
pub struct MetricsLog {
    path: PathBuf,
    /// Start a new file when the run starts (a fresh run), or append (a resumed one).
    fresh: bool,
    pending: String,
    last_flush: std::time::Instant,
}

impl MetricsLog {
    /// Logs a new run to `path`: rows already there (an earlier run into the same folder)
    /// are replaced when the run starts.
    pub fn new(path: PathBuf) -> Self {
        MetricsLog {
            path,
            fresh: true,
            pending: String::new(),
            last_flush: std::time::Instant::now(),
        }
    }

    /// Logs to `path` a run resumed at `step` whose log so far is `from` (the same file,
    /// or the saved run's when the resumed one writes elsewhere): rows of evaluations
    /// after that step (written before the process stopped, but not in its checkpoint)
    /// and a torn last line are dropped first, so the file reads as if the run had never
    /// stopped.
    pub fn resume(from: &std::path::Path, path: PathBuf, step: usize) -> Result<Self> {
        crate::nn::remove_stale_temporaries(&path);
        if let Ok(text) = std::fs::read_to_string(from) {
            let kept: String = text
                .split_inclusive('\n')
                .filter(|line| {
                    line.ends_with('\n')
                        && serde_json::from_str::<serde_json::Value>(line)
                            .ok()
                            .and_then(|r| r["step"].as_u64())
                            .is_some_and(|s| s <= step as u64)
                })
                .collect();
            if kept.len() != text.len() || from != path {
                crate::nn::write_atomically(&path, kept.as_bytes())?;
            }
        }
        Ok(MetricsLog {
            path,
            fresh: false,
            pending: String::new(),
            last_flush: std::time::Instant::now(),
        })
    }
}

/// The evaluation rows of a metrics log up to `step` (a resumed run's history: its
/// checkpoint does not hold it). A missing file gives none; lines that are not
/// evaluation rows, or do not parse, are skipped.
pub fn read_evaluations(path: &std::path::Path, step: usize) -> Vec<EvalRecord> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).ok()?;
            row.get("val_metric")?;
            serde_json::from_value::<EvalRecord>(row).ok()
        })
        .filter(|r| r.step <= step)
        .collect()
}

impl MetricsLog {
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |e: std::io::Error| Error::Io {
            path: self.path.display().to_string(),
            cause: e,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(self.pending.as_bytes()).map_err(io)?;
        self.pending.clear();
        self.last_flush = std::time::Instant::now();
        Ok(())
    }
}

impl Callback for MetricsLog {
    fn on_start(&mut self, _position: &Position, _batches_per_epoch: usize) -> Result<()> {
        if self.fresh {
            std::fs::write(&self.path, b"").map_err(|e| Error::Io {
                path: self.path.display().to_string(),
                cause: e,
            })?;
        }
        Ok(())
    }
    fn on_step(&mut self, record: &StepRecord) -> Result<()> {
        self.pending
            .push_str(&serde_json::to_string(record).expect("records serialise"));
        self.pending.push('\n');
        if self.last_flush.elapsed() >= std::time::Duration::from_secs(1) {
            self.flush()?;
        }
        Ok(())
    }
    fn on_eval(&mut self, s: &Snapshot<'_>) -> Result<()> {
        self.pending
            .push_str(&serde_json::to_string(s.record).expect("records serialise"));
        self.pending.push('\n');
        self.flush()
    }
    fn on_end(&mut self, _report: &TrainReport) -> Result<()> {
        self.flush()
    }
}

/// Writes a checkpoint (parameters, optimizer state, metadata) at an evaluation that
/// improved the best metric, at every `every`-th evaluation when asked, and when the run
/// stops: a checkpoint costs a few milliseconds and three syncs, more than the
/// evaluation of a small model, so the ones that nobody would resume from are skipped.
pub struct CheckpointWriter {
    path: PathBuf,
    meta: CheckpointMeta,
    every: Option<usize>,
    evals_since_save: usize,
    saved_step: Option<usize>,
}

impl CheckpointWriter {
    /// Checkpoints into the file `path`; `meta` carries the run's configuration and model,
    /// and its position fields are filled in at each save.
    pub fn new(path: PathBuf, meta: CheckpointMeta) -> Self {
        CheckpointWriter {
            path,
            meta,
            every: None,
            evals_since_save: 0,
            saved_step: None,
        }
    }

    /// Also checkpoints at every `k`-th evaluation (`--checkpoint-every`), so that a
    /// killed run loses at most `k` evaluations' work even while it does not improve.
    pub fn every(mut self, k: Option<usize>) -> Self {
        self.every = k.map(|k| k.max(1));
        self
    }

    fn save(&mut self, s: &Snapshot<'_>) -> Result<()> {
        self.meta.position = s.position.without_history();
        save_checkpoint(&self.path, &self.meta, s.store, s.optimizer)?;
        self.evals_since_save = 0;
        self.saved_step = Some(s.position.step);
        Ok(())
    }
}

impl Callback for CheckpointWriter {
    fn on_start(&mut self, _position: &Position, _batches_per_epoch: usize) -> Result<()> {
        crate::nn::remove_stale_temporaries(&self.path);
        Ok(())
    }
    fn on_eval(&mut self, s: &Snapshot<'_>) -> Result<()> {
        self.evals_since_save += 1;
        let improved = s.position.since_best == 0;
        if improved || self.every.is_some_and(|k| self.evals_since_save >= k) {
            self.save(s)?;
        }
        Ok(())
    }
    fn on_stop(&mut self, s: &Snapshot<'_>) -> Result<()> {
        if self.saved_step != Some(s.position.step) {
            self.save(s)?;
        }
        Ok(())
    }
}
