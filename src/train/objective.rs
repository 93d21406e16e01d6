//! What the descent loop trains: an [`Objective`] says which batches make an epoch, what
//! a batch's loss is on the tape, what state carries from one batch to the next, and how
//! the model is evaluated. The loop itself ([`super::Trainer`]) is the same for every
//! model: a classifier, a regression and a language model are three objectives.

use crate::autodiff::{CellKind, Tape, Var};
use crate::data::{Dataset, Streams, epoch_order, gather_batch};
use crate::error::{Error, Result};
use crate::nn::{
    CarriedState, CharModel, Classifier, ForwardCtx, ParamStore, Params, cross_entropy,
    cross_entropy_values, mse, mse_values,
};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Whether a metric improves downwards (a loss) or upwards (an accuracy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Lower is better.
    Minimize,
    /// Higher is better.
    Maximize,
}

impl Goal {
    /// Whether `a` is strictly better than `b` (any number is better than NaN).
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            _ if b.is_nan() => !a.is_nan(),
            Goal::Minimize => a < b,
            Goal::Maximize => a > b,
        }
    }

    /// Whether `value` has reached `target`.
    pub fn reached(self, value: f64, target: f64) -> bool {
        match self {
            Goal::Minimize => value <= target,
            Goal::Maximize => value >= target,
        }
    }
}

/// The metric that picks the best evaluation and that `target` and `patience` watch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// Its name in [`Evaluation::metrics`] (`loss` means [`Evaluation::loss`]).
    pub name: String,
    /// Which way is better.
    pub goal: Goal,
}

/// One evaluation on the validation split.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    /// Mean loss per sample (per predicted token for a language model).
    pub loss: f64,
    /// Named metrics besides the loss.
    pub metrics: Vec<(String, f64)>,
    /// How many samples (tokens) the means are over: a data-parallel run weights each
    /// process's evaluation of its share by it.
    pub samples: usize,
}

impl Evaluation {
    /// The value of the metric `name` (`loss` is the loss); NaN when absent.
    pub fn get(&self, name: &str) -> f64 {
        if name == "loss" {
            return self.loss;
        }
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

/// A training problem, as the descent loop sees it.
pub trait Objective {
    /// The metric that decides the best evaluation, `target` and `patience`.
    fn metric(&self) -> MetricSpec;
    /// Batches in one epoch (at least one).
    fn batches_per_epoch(&self) -> usize;
    /// Prepares epoch `epoch`: its batch order (derived from `seed` and `epoch`, so that a
    /// resumed run sees the same order) and a fresh carried state.
    fn start_epoch(&mut self, epoch: usize, seed: u64) -> Result<()>;
    /// Records the loss of batch `batch` of the current epoch on the tape of `p` and
    /// returns it with the number of samples it averages over. State that carries to the
    /// next batch is kept detached (as values, not on the tape).
    fn batch_loss<'t>(
        &mut self,
        p: &Params<'t, f32>,
        batch: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<(Var<'t, f32>, usize)>;
    /// Batch `batch` of the current epoch as data for a replayed step
    /// ([`crate::autodiff::Trace`]): its tensors, its index lists (class labels) and how
    /// many samples it holds. `None` (the default) when this objective's steps cannot be
    /// replayed (state carried between batches, dropout): every step is then recorded
    /// by [`Objective::batch_loss`].
    fn batch_data(&mut self, batch: usize) -> Result<Option<BatchData>> {
        let _ = batch;
        Ok(None)
    }
    /// The loss of a batch from [`Objective::batch_data`], recorded on the tape of `p`
    /// with the batch's tensors as `inputs` (the loss `batch_loss` records for it), in
    /// the mode and with the randomness of `ctx` (training, seeded for the step).
    fn data_loss<'t>(
        &self,
        p: &Params<'t, f32>,
        inputs: &[Var<'t, f32>],
        indices: &[Vec<usize>],
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        let _ = (p, inputs, indices, ctx);
        Err(Error::invalid(
            "data_loss",
            "this objective gives no batch data to replay",
        ))
    }
    /// Evaluates the parameters in `store` on the validation split, without a gradient.
    fn evaluate(&self, store: &ParamStore<f32>) -> Result<Evaluation>;
    /// The state carried between batches, for a checkpoint (empty when none).
    fn carried_state(&self) -> Vec<(String, Tensor<f32>)> {
        Vec::new()
    }
    /// Makes batch `b` of every epoch this process's share of global batch `b`, for
    /// data-parallel training as rank `rank` of `ranks` ([`super::share`]); the loss of a
    /// batch is then the mean over the share. Objectives that cannot be split say so.
    fn shard(&mut self, rank: usize, ranks: usize) -> Result<()> {
        let _ = (rank, ranks);
        Err(Error::invalid(
            "distributed training",
            "this model's batches cannot be split across processes yet",
        ))
    }
    /// Puts back a state from [`Objective::carried_state`] after `start_epoch`.
    fn restore_carried_state(&mut self, state: Vec<(String, Tensor<f32>)>) -> Result<()> {
        match state.first() {
            None => Ok(()),
            Some((name, _)) => Err(Error::invalid(
                "restore_carried_state",
                format!("this model carries no state between batches, but '{name}' was given"),
            )),
        }
    }
}

/// One batch as plain data, for a replayed step.
pub struct BatchData {
    /// What the recorded graph depends on besides the parameters: two batches with the
    /// same graph and shapes replay the same trace.
    pub graph: String,
    /// The batch's tensors (inputs, targets).
    pub inputs: Vec<Tensor<f32>>,
    /// The batch's index lists (class labels), one per gather of the loss.
    pub indices: Vec<Vec<usize>>,
    /// Samples in the batch.
    pub samples: usize,
}

/// What a replayed step of `model` under the loss `loss` is recorded for (its graph
/// depends on nothing else), or `None` when its steps cannot be replayed (dropout draws a
/// new mask each step). Computed once per objective, not per step.
fn replay_graph(loss: &str, model: &dyn Classifier<f32>) -> Option<String> {
    model.replay_graph().map(|g| format!("{loss} {g}"))
}

/// Mean cross-entropy and accuracy of `model` on `ds`, without recording gradients.
pub fn evaluate(
    model: &dyn Classifier<f32>,
    store: &ParamStore<f32>,
    ds: &Dataset,
) -> Result<(f64, f64)> {
    evaluate_rows(model, store, ds, 0..ds.len())
}

/// [`evaluate`] on rows `rows` of `ds` (NaN for no rows).
fn evaluate_rows(
    model: &dyn Classifier<f32>,
    store: &ParamStore<f32>,
    ds: &Dataset,
    rows: std::ops::Range<usize>,
) -> Result<(f64, f64)> {
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let n = rows.len();
    let idx: Vec<usize> = rows.collect();
    for chunk in idx.chunks(model.eval_chunk().max(1)) {
        let (x, y) = gather_batch(ds, chunk);
        let logits = model.infer(store, &x)?;
        loss_sum += cross_entropy_values(&logits, &y)? as f64 * chunk.len() as f64;
        correct += logits
            .argmax_rows()
            .iter()
            .zip(&y)
            .filter(|(a, b)| a == b)
            .count();
    }
    Ok((loss_sum / n as f64, correct as f64 / n as f64))
}

/// A classifier (an [`Mlp`](crate::nn::Mlp), a [`crate::nn::Cnn`], any [`Classifier`]) trained with
/// softmax cross-entropy on shuffled minibatches; its metric is validation accuracy.
pub struct Classification<'a> {
    /// The model.
    pub model: &'a dyn Classifier<f32>,
    train: &'a Dataset,
    val: &'a Dataset,
    batches: Minibatches,
    replay_graph: Option<String>,
}

impl<'a> Classification<'a> {
    /// Minibatches of `batch_size` from `train`, shuffled each epoch when `shuffle`.
    pub fn new(
        model: &'a dyn Classifier<f32>,
        train: &'a Dataset,
        val: &'a Dataset,
        batch_size: usize,
        shuffle: bool,
    ) -> Result<Self> {
        Ok(Classification {
            model,
            train,
            val,
            batches: Minibatches::new("Classification", train.len(), batch_size, shuffle)?,
            replay_graph: replay_graph("classification", model),
        })
    }
}

/// The minibatches of a set of `n` samples: batch `b` of an epoch is rows
/// `b·size .. (b+1)·size` of that epoch's order (shuffled from the seed and the epoch, or
/// in order).
struct Minibatches {
    size: usize,
    shuffle: bool,
    order: Vec<usize>,
    /// (rank, ranks) of a data-parallel run: `rows` gives this process's share.
    shard: (usize, usize),
}

impl Minibatches {
    fn new(op: &'static str, n: usize, size: usize, shuffle: bool) -> Result<Self> {
        if n == 0 || size == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "needs at least one sample and a batch size of at least 1 (got {n} samples, batch {size})"
                ),
            ));
        }
        Ok(Minibatches {
            size,
            shuffle,
            order: (0..n).collect(),
            shard: (0, 1),
        })
    }

    /// Every process of `ranks` must get at least one row of every batch (a share of
    /// none would average over nothing).
    fn shard(&mut self, rank: usize, ranks: usize) -> Result<()> {
        let n = self.order.len();
        let last = n - (self.count() - 1) * self.size;
        let smallest = self.size.min(last);
        if ranks == 0 || rank >= ranks || smallest < ranks {
            return Err(Error::invalid(
                "distributed training",
                format!(
                    "{ranks} processes cannot share a batch of {smallest} rows ({n} samples in batches of {}): every process needs at least one row of every batch",
                    self.size
                ),
            ));
        }
        self.shard = (rank, ranks);
        Ok(())
    }

    fn count(&self) -> usize {
        self.order.len().div_ceil(self.size)
    }

    fn start_epoch(&mut self, epoch: usize, seed: u64) {
        if self.shuffle {
            self.order = epoch_order(self.order.len(), seed, epoch);
        }
    }

    fn rows(&self, batch: usize) -> &[usize] {
        let n = self.order.len();
        let global = &self.order[(batch * self.size).min(n)..((batch + 1) * self.size).min(n)];
        &global[super::share(global.len(), self.shard.0, self.shard.1)]
    }
}

/// The [`Objective`] methods of a model trained on samples in minibatches
/// (`self.batches`, shuffled per epoch and shared out among processes): the same for
/// [`Classification`] and [`Regression`].
macro_rules! minibatch_methods {
    () => {
        fn batches_per_epoch(&self) -> usize {
            self.batches.count()
        }
        fn start_epoch(&mut self, epoch: usize, seed: u64) -> Result<()> {
            self.batches.start_epoch(epoch, seed);
            Ok(())
        }
        fn shard(&mut self, rank: usize, ranks: usize) -> Result<()> {
            self.batches.shard(rank, ranks)
        }
    };
}

impl Objective for Classification<'_> {
    fn metric(&self) -> MetricSpec {
        MetricSpec {
            name: "accuracy".into(),
            goal: Goal::Maximize,
        }
    }
    minibatch_methods!();
    fn batch_loss<'t>(
        &mut self,
        p: &Params<'t, f32>,
        batch: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<(Var<'t, f32>, usize)> {
        let rows = self.batches.rows(batch);
        let (x, y) = gather_batch(self.train, rows);
        let logits = self.model.logits(p, p.tape().constant(x), ctx)?;
        let loss = p.tape().scoped("loss", || cross_entropy(logits, &y))?;
        Ok((loss, rows.len()))
    }
    fn batch_data(&mut self, batch: usize) -> Result<Option<BatchData>> {
        let Some(graph) = &self.replay_graph else {
            return Ok(None);
        };
        let rows = self.batches.rows(batch);
        let (x, y) = gather_batch(self.train, rows);
        Ok(Some(BatchData {
            graph: graph.clone(),
            inputs: vec![x],
            indices: vec![y],
            samples: rows.len(),
        }))
    }
    fn data_loss<'t>(
        &self,
        p: &Params<'t, f32>,
        inputs: &[Var<'t, f32>],
        indices: &[Vec<usize>],
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        let logits = self.model.logits(p, inputs[0], ctx)?;
        cross_entropy(logits, &indices[0])
    }
    /// In a data-parallel run each process evaluates its share of the validation rows.
    fn evaluate(&self, store: &ParamStore<f32>) -> Result<Evaluation> {
        let (rank, ranks) = self.batches.shard;
        let rows = super::share(self.val.len(), rank, ranks);
        let samples = rows.len();
        let (loss, accuracy) = evaluate_rows(self.model, store, self.val, rows)?;
        Ok(Evaluation {
            loss,
            metrics: vec![("accuracy".into(), accuracy)],
            samples,
        })
    }
}

/// A model fitted to real-valued targets with mean squared error; its metric is the
/// validation loss. Any model of [`Classifier`]'s shape serves (an [`Mlp`](crate::nn::Mlp), a model of
/// your own): its outputs, which a classifier calls logits, are the predictions.
pub struct Regression<'a> {
    /// The model.
    pub model: &'a dyn Classifier<f32>,
    x: Tensor<f32>,
    y: Tensor<f32>,
    val: (Tensor<f32>, Tensor<f32>),
    batches: Minibatches,
    replay_graph: Option<String>,
}

impl<'a> Regression<'a> {
    /// Inputs `x: [n, d]` with targets `y: [n, k]`, validated on `val`, in minibatches of
    /// `batch_size` (shuffled each epoch when `shuffle`).
    pub fn new(
        model: &'a dyn Classifier<f32>,
        (x, y): (Tensor<f32>, Tensor<f32>),
        val: (Tensor<f32>, Tensor<f32>),
        batch_size: usize,
        shuffle: bool,
    ) -> Result<Self> {
        for (x, y) in [(&x, &y), (&val.0, &val.1)] {
            if x.shape().len() != 2 || y.shape().len() != 2 || x.shape()[0] != y.shape()[0] {
                return Err(Error::shape_detail(
                    "Regression",
                    x.shape(),
                    y.shape(),
                    "inputs [n, d] and targets [n, k] with the same n",
                ));
            }
        }
        let batches = Minibatches::new("Regression", x.shape()[0], batch_size, shuffle)?;
        Ok(Regression {
            model,
            x,
            y,
            val,
            batches,
            replay_graph: replay_graph("regression", model),
        })
    }
}

impl Regression<'_> {
    /// The inputs and targets of batch `batch`.
    fn rows_of(&self, batch: usize) -> Result<(Tensor<f32>, Tensor<f32>)> {
        let rows = self.batches.rows(batch);
        let n = self.x.shape()[0];
        let whole = rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r);
        // the whole set in order (a full-batch workload) needs no gather
        Ok(if whole {
            (self.x.clone(), self.y.clone())
        } else {
            (self.x.index_select(0, rows)?, self.y.index_select(0, rows)?)
        })
    }
}

impl Objective for Regression<'_> {
    fn metric(&self) -> MetricSpec {
        MetricSpec {
            name: "loss".into(),
            goal: Goal::Minimize,
        }
    }
    minibatch_methods!();
    fn batch_loss<'t>(
        &mut self,
        p: &Params<'t, f32>,
        batch: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<(Var<'t, f32>, usize)> {
        let (x, y) = self.rows_of(batch)?;
        let samples = x.shape()[0];
        let tape = p.tape();
        let pred = self.model.logits(p, tape.constant(x), ctx)?;
        let loss = tape.scoped("loss", || mse(pred, tape.constant(y)))?;
        Ok((loss, samples))
    }
    fn batch_data(&mut self, batch: usize) -> Result<Option<BatchData>> {
        let Some(graph) = &self.replay_graph else {
            return Ok(None);
        };
        let (x, y) = self.rows_of(batch)?;
        Ok(Some(BatchData {
            graph: graph.clone(),
            samples: x.shape()[0],
            inputs: vec![x, y],
            indices: Vec::new(),
        }))
    }
    fn data_loss<'t>(
        &self,
        p: &Params<'t, f32>,
        inputs: &[Var<'t, f32>],
        _indices: &[Vec<usize>],
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        let pred = self.model.logits(p, inputs[0], ctx)?;
        mse(pred, inputs[1])
    }
    fn evaluate(&self, store: &ParamStore<f32>) -> Result<Evaluation> {
        let pred = self.model.infer(store, &self.val.0)?;
        let loss = mse_values(&pred, &self.val.1)? as f64;
        // every process evaluates all of the (small) validation set
        Ok(Evaluation {
            loss,
            metrics: Vec::new(),
            samples: self.val.0.shape()[0],
        })
    }
}

/// A character model trained by truncated backpropagation through time: the training
/// text is cut into `B` contiguous streams, batch `k` of an epoch is window `k` of every
/// stream, and the hidden state carries from one window to the next (detached), starting
/// from zeros each epoch. Its metric is the validation loss in nats per character;
/// `bits_per_char` is reported beside it. Validation reads the whole validation text the
/// same way, state carried.
pub struct LanguageModel<'a> {
    /// The model.
    pub model: &'a CharModel,
    train: Streams,
    val: Streams,
    /// The state of this process's streams (all of them, or its share).
    state: Option<CarriedState>,
    /// (rank, ranks) of a data-parallel run: this process trains its share of the streams.
    shard: (usize, usize),
}

/// Time-major ids (`t·B + b`) from a row-major `[B, len]` window.
fn time_major(ids: &[u32], bsz: usize, len: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(ids.len());
    for t in 0..len {
        for b in 0..bsz {
            out.push(ids[b * len + t] as usize);
        }
    }
    out
}

impl<'a> LanguageModel<'a> {
    /// Trains `model` on the streams `train`, validating on `val`.
    pub fn new(model: &'a CharModel, train: Streams, val: Streams) -> Self {
        LanguageModel {
            model,
            train,
            val,
            state: None,
            shard: (0, 1),
        }
    }

    /// The streams this process trains.
    fn my_streams(&self) -> std::ops::Range<usize> {
        super::share(self.train.batch(), self.shard.0, self.shard.1)
    }

    /// Mean loss (nats per character) over all of `streams`, state carried.
    pub fn loss_over(&self, store: &ParamStore<f32>, streams: &Streams) -> Result<f64> {
        Ok(self
            .loss_over_streams(store, streams, 0..streams.batch())?
            .0)
    }

    /// Mean loss over streams `which` of `streams` (NaN for none), and how many
    /// characters it is over.
    fn loss_over_streams(
        &self,
        store: &ParamStore<f32>,
        streams: &Streams,
        which: std::ops::Range<usize>,
    ) -> Result<(f64, usize)> {
        let mut tape = Tape::new();
        let (mut sum, mut count) = (0.0, 0usize);
        let mut state: Option<CarriedState> = None;
        let bsz = which.len();
        for k in 0..streams.windows() {
            let (inputs, targets, len) = streams.window(k);
            let rows = which.start * len..which.end * len;
            let (inputs, targets) = (&inputs[rows.clone()], &targets[rows]);
            tape.no_grad(|| -> Result<()> {
                let p = store.leaves(&tape);
                let o =
                    self.model
                        .forward(&p, &time_major(inputs, bsz, len), bsz, state.as_ref())?;
                let loss = cross_entropy(o.logits, &time_major(targets, bsz, len))?;
                sum += loss.item()? as f64 * (bsz * len) as f64;
                count += bsz * len;
                state = Some(o.state);
                Ok(())
            })?;
            tape.clear();
        }
        Ok((sum / count as f64, count))
    }
}

impl Objective for LanguageModel<'_> {
    fn metric(&self) -> MetricSpec {
        MetricSpec {
            name: "loss".into(),
            goal: Goal::Minimize,
        }
    }
    fn batches_per_epoch(&self) -> usize {
        self.train.windows()
    }
    fn start_epoch(&mut self, _epoch: usize, _seed: u64) -> Result<()> {
        self.state = None;
        Ok(())
    }
    fn batch_loss<'t>(
        &mut self,
        p: &Params<'t, f32>,
        batch: usize,
        _ctx: &mut ForwardCtx,
    ) -> Result<(Var<'t, f32>, usize)> {
        let (inputs, targets, len) = self.train.window(batch);
        if len == 0 {
            return Err(Error::invalid(
                "LanguageModel",
                format!("window {batch} is past the end of the training streams"),
            ));
        }
        // this process's streams: rows of the row-major [B, len] window
        let mine = self.my_streams();
        let bsz = mine.len();
        let rows = mine.start * len..mine.end * len;
        let (inputs, targets) = (&inputs[rows.clone()], &targets[rows]);
        let o = self
            .model
            .forward(p, &time_major(inputs, bsz, len), bsz, self.state.as_ref())?;
        self.state = Some(o.state);
        let targets = time_major(targets, bsz, len);
        let loss = p
            .tape()
            .scoped("loss", || cross_entropy(o.logits, &targets))?;
        Ok((loss, bsz * len))
    }
    /// In a data-parallel run each process evaluates its share of the validation streams.
    fn evaluate(&self, store: &ParamStore<f32>) -> Result<Evaluation> {
        let which = super::share(self.val.batch(), self.shard.0, self.shard.1);
        let (loss, samples) = self.loss_over_streams(store, &self.val, which)?;
        Ok(Evaluation {
            loss,
            metrics: vec![("bits_per_char".into(), loss / std::f64::consts::LN_2)],
            samples,
        })
    }
    fn shard(&mut self, rank: usize, ranks: usize) -> Result<()> {
        let streams = self.train.batch();
        if ranks == 0 || rank >= ranks || streams < ranks {
            return Err(Error::invalid(
                "distributed training",
                format!(
                    "{ranks} processes cannot share {streams} streams (--batch-size): every process needs at least one"
                ),
            ));
        }
        self.shard = (rank, ranks);
        Ok(())
    }
    /// The state of all `B` streams, `[layers, B, hidden]`; a process of a data-parallel
    /// run fills its own streams' rows and leaves zeros elsewhere, so that the sum over
    /// the processes is the whole state.
    fn carried_state(&self) -> Vec<(String, Tensor<f32>)> {
        let Some(s) = &self.state else {
            return Vec::new();
        };
        let mine = self.my_streams();
        let all = self.train.batch();
        let whole = |t: &Tensor<f32>| -> Tensor<f32> {
            if mine.len() == all {
                return t.clone();
            }
            let (l, h) = (t.shape()[0], t.shape()[2]);
            let mut out = vec![0f32; l * all * h];
            for (layer, rows) in t.data().chunks_exact(mine.len() * h).enumerate() {
                let at = (layer * all + mine.start) * h;
                out[at..at + rows.len()].copy_from_slice(rows);
            }
            Tensor::from_vec(out, &[l, all, h]).expect("l·B·h values")
        };
        std::iter::once(("h".to_string(), whole(&s.h)))
            .chain(s.c.as_ref().map(|c| ("c".to_string(), whole(c))))
            .collect()
    }
    fn restore_carried_state(&mut self, state: Vec<(String, Tensor<f32>)>) -> Result<()> {
        let (l, b, h) = (
            self.model.rnn.num_layers(),
            self.train.batch(),
            self.model.rnn.hidden_size,
        );
        let lstm = self.model.rnn.kind == CellKind::Lstm;
        let mut s = CarriedState {
            h: Tensor::zeroed(&[0]),
            c: None,
        };
        let mut have_h = false;
        for (name, t) in state {
            if t.shape() != [l, b, h] {
                return Err(Error::invalid(
                    "checkpoint",
                    format!(
                        "carried state '{name}' has shape {:?}, the model needs [{l}, {b}, {h}]",
                        t.shape()
                    ),
                ));
            }
            match name.as_str() {
                "h" => (s.h, have_h) = (t, true),
                "c" if lstm => s.c = Some(t),
                _ => {
                    return Err(Error::invalid(
                        "checkpoint",
                        format!("unexpected carried state '{name}'"),
                    ));
                }
            }
        }
        // a process of a data-parallel run keeps its own streams' rows
        let mine = self.my_streams();
        let own = |t: Tensor<f32>| -> Tensor<f32> {
            if mine.len() == b {
                return t;
            }
            let rows: Vec<f32> = t
                .data()
                .chunks_exact(b * h)
                .flat_map(|layer| &layer[mine.start * h..mine.end * h])
                .copied()
                .collect();
            Tensor::from_vec(rows, &[l, mine.len(), h]).expect("l·share·h values")
        };
        if have_h {
            s.h = own(s.h);
        }
        s.c = s.c.map(own);
        self.state = match (have_h, lstm, s.c.is_some()) {
            (false, _, false) => None,
            (true, false, false) | (true, true, true) => Some(s),
            _ => {
                return Err(Error::invalid(
                    "checkpoint",
                    "the carried state is incomplete (an LSTM needs both h and c)",
                ));
            }
        };
        Ok(())
    }
}
