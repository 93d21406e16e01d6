//! What the loop records: one row per evaluation and per step (the lines of
//! metrics.jsonl), the time of each phase, the clipping statistics, and the report of a
//! whole run.

use super::*;

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
    /// The objective's metric (validation accuracy for a classifier, the loss for a
    /// language model).
    pub val_metric: f64,
    /// Learning rate at the last step.
    pub lr: f64,
    /// Training seconds so far.
    pub seconds: f64,
    /// The objective's named metrics besides the loss.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Each parameter's gradient norm (before clipping) at the step before this
    /// evaluation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grad_norms: BTreeMap<String, f64>,
}

/// One step, as logged: its loss, the global gradient norm before clipping, and whether
/// clipping changed the gradient.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps taken, this one included.
    pub step: usize,
    /// The batch's loss.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether clipping fired.
    pub clipped: bool,
    /// The learning rate of this step (0 in logs written before it was recorded).
    #[serde(default)]
    pub lr: f64,
}

/// Seconds spent in each phase of the loop, over this process's part of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// The batch (gathered by the objective), the forward pass and the loss.
    pub forward: f64,
    /// The backward sweep and collecting the parameters' gradients.
    pub backward: f64,
    /// Summing gradients across the processes of a data-parallel run.
    #[serde(default)]
    pub all_reduce: f64,
    /// Gradient norms and clipping.
    pub clipping: f64,
    /// The optimizer's update.
    pub optimizer: f64,
    /// Evaluations on the validation split.
    pub evaluation: f64,
    /// The callbacks: progress, metrics log and checkpoints.
    pub logging_and_checkpoints: f64,
    /// Everything else in the loop (bookkeeping between the phases).
    pub other: f64,
}

impl PhaseTimes {
    pub(super) fn add(&mut self, o: &PhaseTimes) {
        self.forward += o.forward;
        self.backward += o.backward;
        self.all_reduce += o.all_reduce;
        self.clipping += o.clipping;
        self.optimizer += o.optimizer;
    }

    /// The phases with their names, in loop order.
    pub fn named(&self) -> [(&'static str, f64); 8] {
        [
            ("forward (with the batch)", self.forward),
            ("backward", self.backward),
            ("all-reduce", self.all_reduce),
            ("clipping", self.clipping),
            ("optimizer", self.optimizer),
            ("evaluation", self.evaluation),
            ("logging and checkpoints", self.logging_and_checkpoints),
            ("other", self.other),
        ]
    }
}

/// What [`Trainer::train_step`] did.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    /// The batch's loss.
    pub loss: f64,
    /// Samples (or predicted tokens) the loss averages over.
    pub samples: usize,
    /// The learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping (NaN when the step stopped before it).
    pub grad_norm: f64,
    /// Whether clipping changed the gradient.
    pub clipped: bool,
    /// Each parameter's gradient norm before clipping, when asked for.
    pub param_norms: Vec<f64>,
    /// Set when the step changed nothing because the run must stop.
    pub stop: Option<(StopReason, String)>,
    /// Seconds of its phases (forward, backward, clipping, optimizer).
    pub times: PhaseTimes,
}

/// Steps over which a tenfold growth of the gradient norm is reported.
pub const GROWTH_WINDOW: usize = 50;

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
    /// Times the norm grew tenfold within [`GROWTH_WINDOW`] steps.
    #[serde(default)]
    pub norm_growth_events: usize,
    /// The first such growth, in words.
    #[serde(default)]
    pub first_norm_growth: Option<String>,
}

/// What the run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The condition that ended the run.
    pub stopped_by: StopReason,
    /// A sentence explaining it.
    pub stop_detail: String,
    /// The metric that picked the best evaluation.
    pub metric: MetricSpec,
    /// Best value of that metric seen.
    pub best_val_metric: f64,
    /// Step at which it was seen.
    pub best_step: usize,
    /// The metric at the end (after restoring the best weights, if asked).
    pub final_val_metric: f64,
    /// The validation loss at the end.
    pub final_val_loss: f64,
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
    /// Seconds per phase of the loop (this process's steps; the final evaluation
    /// included).
    pub profile: PhaseTimes,
    /// Every evaluation.
    pub history: Vec<EvalRecord>,
    /// Loss returned by every step, in order.
    #[serde(skip)]
    pub step_losses: Vec<f64>,
    /// `(step, global gradient norm before clipping, clipped)` of every step of this
    /// process, in order.
    #[serde(skip)]
    pub step_norms: Vec<(usize, f64, bool)>,
    /// What the run did differently from what was asked, once each (a model that asked
    /// for replayed steps but was trained on the tape, and why).
    #[serde(default)]
    pub warnings: Vec<String>,
}
