//! The anchors' MLP workloads: W1 (784-256-256-10, batch 128) and W2, forward, backward
//! and training steps recorded or replayed, and W3 on the scalar tape.

use super::*;

/// The W1 network of the anchors: parameters `[W1, b1, W2, b2, W3, b3]` (W is
pub struct W1Data<T: Element> {
    /// Input batch `[128, 784]`.
    pub x: Tensor<T>,
    /// Class labels, 128 of them in `0..10`.
    pub labels: Vec<usize>,
    /// `[W1, b1, W2, b2, W3, b3]`.
    pub params: Vec<Tensor<T>>,
}

/// Builds the anchors' data for an MLP with the given layer sizes (stream of layer `i`
/// is `first_stream + 2i` for W and `+1` for b).
pub fn anchor_mlp_params<T: Element>(sizes: &[usize], first_stream: u64) -> Vec<Tensor<T>> {
    let mut params = Vec::new();
    for (i, w) in sizes.windows(2).enumerate() {
        let bound = 1.0 / (w[0] as f64).sqrt();
        let s = first_stream + 2 * i as u64;
        params.push(
            Tensor::splitmix_uniform(&[w[0], w[1]], s, -bound, bound)
                .expect("a workload's fixed shape"),
        );
        params.push(
            Tensor::splitmix_uniform(&[w[1]], s + 1, -bound, bound)
                .expect("a workload's fixed shape"),
        );
    }
    params
}

impl<T: Element> W1Data<T> {
    /// The anchors' W1 batch and initial parameters.
    pub fn new() -> Self {
        let mut g = SplitMix64::new(2);
        W1Data {
            x: Tensor::splitmix_uniform(&[128, 784], 1, -1.0, 1.0)
                .expect("a workload's fixed shape"),
            labels: (0..128).map(|_| g.int(10) as usize).collect(),
            params: anchor_mlp_params(&[784, 256, 256, 10], 11),
        }
    }
}

impl<T: Element> Default for W1Data<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Forward pass of W1 on a tape: relu MLP and mean softmax cross-entropy.
pub fn w1_loss<'t, T: Element>(
    tape: &'t Tape<T>,
    x: &Tensor<T>,
    labels: &[usize],
    params: &[Var<'t, T>],
) -> Result<Var<'t, T>> {
    let mut h = tape.constant(x.clone());
    for (i, layer) in params.chunks(2).enumerate() {
        h = h.matmul(layer[0])?.add(layer[1])?;
        if i + 1 < params.len() / 2 {
            h = h.relu();
        }
    }
    chainrule::nn::cross_entropy(h, labels)
}

pub(super) fn w1(cfg: &BenchConfig, backward: bool) -> Result<BenchRow> {
    let data = W1Data::<f32>::new();
    let mut tape = Tape::<f32>::new();
    let mut loss0 = f32::NAN;
    let mut failure = None;
    let t = measure(cfg.budget, 20, || {
        tape.clear();
        let ps: Vec<Var<'_, f32>> = data.params.iter().map(|p| tape.var(p.clone())).collect();
        match w1_loss(&tape, &data.x, &data.labels, &ps) {
            Ok(loss) => {
                loss0 = loss.item().unwrap_or(f32::NAN);
                if backward {
                    std::hint::black_box(tape.backward(loss).map(|g| g.get(ps[0]).is_ok()).ok());
                }
            }
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let flops = if backward {
        W1_STEP_FLOPS
    } else {
        W1_FORWARD_FLOPS
    };
    let name = if backward {
        "w1_forward_backward"
    } else {
        "w1_forward"
    };
    let mut row = BenchRow::new(name, t).with("loss@0", loss0 as f64);
    row.gflops = Some(flops / t.median_s / 1e9);
    row.verify_extra("loss@0", W1_LOSSES[0], LOSS_TOL)
}

/// W3: `loss = Σ tanh(wᵢ xᵢ + bᵢ)` as a left fold on the scalar tape, n terms, all 3n
/// inputs receiving gradients. Timed: build (the forward pass) plus backward; the inputs
/// are created once and the previous graph dropped before each sample.
pub(super) fn w3_scalar(n: usize, cfg: &BenchConfig) -> BenchRow {
    use chainrule::scalar::{Real, STape};
    let streams: Vec<Vec<f64>> = [41u64, 42, 43]
        .iter()
        .map(|&s| {
            let mut g = SplitMix64::new(s);
            (0..n).map(|_| g.uniform_f32(-1.0, 1.0) as f64).collect()
        })
        .collect();
    let tape = STape::<f64>::with_capacity(7 * n);
    let vars: Vec<_> = streams
        .iter()
        .flat_map(|s| s.iter().map(|&v| tape.var(v)))
        .collect();
    let (w, x, b) = (&vars[..n], &vars[n..2 * n], &vars[2 * n..]);
    let mut adj = Vec::with_capacity(7 * n);
    let mut loss = 0.0;
    let t = measure(cfg.budget, 5, || {
        tape.truncate(3 * n);
        let mut s = (w[0] * x[0] + b[0]).tanh();
        for i in 1..n {
            s = s + (w[i] * x[i] + b[i]).tanh();
        }
        tape.backward_into(s, 1.0, &mut adj);
        loss = s.value();
    });
    let ops = 4 * n - 1;
    let mut row = BenchRow::new("w3_scalar", t)
        .with("n", n)
        .with("ops", ops)
        .with("loss", loss)
        .with("dL/dw0", adj[w[0].id()]);
    row.ns_per_op = Some(t.median_s / ops as f64 * 1e9);
    row
}

/// A weight of the anchors (NumPy's `x @ W`, `[in, out]`) in `Linear`'s layout, `[out,
/// in]`; a bias as it is.
fn torch_layout(p: Tensor<f32>) -> Tensor<f32> {
    match p.shape() {
        [_, _] => p.t().expect("a matrix"),
        _ => p,
    }
}

/// An MLP over parameters already in `store` (ids 0, 1, 2... as W, b pairs, each `W` in
/// PyTorch's layout, `[out, in]`).
pub(super) fn mlp_over(sizes: &[usize], activation: Activation) -> Mlp {
    let layers = (0..sizes.len() - 1)
        .map(|i| Linear {
            weight: ParamId(2 * i),
            bias: Some(ParamId(2 * i + 1)),
        })
        .collect();
    Mlp {
        layers,
        activation,
        dropout: None,
        sizes: sizes.to_vec(),
    }
}

/// One training step of the anchors' workloads (forward, loss, backward, plain SGD),
/// through the trainer's own step ([`Trainer::train_step`]) on a one-batch objective.
pub struct AnchorStep {
    store: ParamStore<f32>,
    model: Mlp,
    data: AnchorData,
    tape: Tape<f32>,
    trainer: Trainer,
    optimizer: Box<dyn Optimizer<f32>>,
    steps: usize,
    /// (rank, ranks) of a data-parallel run.
    pub(super) shard: (usize, usize),
    /// The phases of the last step.
    pub(super) times: PhaseTimes,
}

pub(super) enum AnchorData {
    Classes(Dataset),
    Values(Tensor<f32>, Tensor<f32>),
}

impl AnchorStep {
    fn new(store: ParamStore<f32>, model: Mlp, data: AnchorData, batch: usize) -> Self {
        let lr = 0.01;
        AnchorStep {
            store,
            model,
            data,
            tape: Tape::new(),
            trainer: Trainer::new(TrainConfig {
                batch_size: batch,
                schedule: LrSchedule::constant(lr),
                divergence_factor: None,
                keep_a_worker_awake: true, // as the program runs
                ..Default::default()
            })
            .expect("valid settings"),
            optimizer: OptimizerKind::Sgd
                .build::<f32>(lr, None)
                .expect("valid settings"),
            steps: 0,
            shard: (0, 1),
            times: PhaseTimes::default(),
        }
    }

    /// The same steps data-parallel with the processes of `c`: each takes its share of
    /// the batch and the gradients are summed, during the backward sweep when `overlap`.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // W1 on the ranks of an `mpi` build
    pub fn distributed(mut self, c: Box<dyn Collective>, overlap: bool) -> Result<Self> {
        self.shard = (c.rank(), c.ranks());
        let trainer = Trainer::new(self.trainer.config.clone())?.with_collective(c);
        self.trainer = if overlap {
            trainer.with_overlapped_sums()
        } else {
            trainer
        };
        Ok(self)
    }

    /// W1: 784-256-256-10 ReLU, softmax cross-entropy, batch 128, SGD lr 0.01.
    pub fn w1() -> Self {
        let data = W1Data::<f32>::new();
        let mut store = ParamStore::new();
        for (i, p) in data.params.into_iter().enumerate() {
            store
                .add(format!("p{i}"), torch_layout(p))
                .expect("unique names");
        }
        let ds = Dataset::new(data.x, data.labels, 10, "w1").expect("128 labelled rows");
        AnchorStep::new(
            store,
            mlp_over(&[784, 256, 256, 10], Activation::Relu),
            AnchorData::Classes(ds),
            128,
        )
    }

    /// W2: 2-16-16-1 tanh, mean squared error against x₀·x₁, batch 32, SGD lr 0.01.
    pub fn w2() -> Self {
        let x = Tensor::<f32>::splitmix_uniform(&[32, 2], 21, -1.0, 1.0)
            .expect("a workload's fixed shape");
        let y: Vec<f32> = x.data().chunks_exact(2).map(|r| r[0] * r[1]).collect();
        let mut store = ParamStore::new();
        for (i, p) in anchor_mlp_params::<f32>(&[2, 16, 16, 1], 31)
            .into_iter()
            .enumerate()
        {
            store
                .add(format!("p{i}"), torch_layout(p))
                .expect("unique names");
        }
        let y = Tensor::from_vec(y, &[32, 1]).expect("32 targets");
        AnchorStep::new(
            store,
            mlp_over(&[2, 16, 16, 1], Activation::Tanh),
            AnchorData::Values(x, y),
            32,
        )
    }

    /// The same steps, each recorded on the tape (no replay).
    pub fn eager(mut self) -> Self {
        self.trainer.config.replay = false;
        self
    }

    /// The same steps with the library's default runtime: no worker kept spinning
    /// through each step (`TrainConfig::keep_a_worker_awake` off).
    pub fn without_a_spinning_worker(mut self) -> Self {
        self.trainer.config.keep_a_worker_awake = false;
        self
    }

    /// Runs one step and returns the loss of its forward pass (before the update).
    pub fn step(&mut self) -> Result<f32> {
        let batch = self.trainer.config.batch_size;
        let mut objective: Box<dyn Objective> = match &self.data {
            AnchorData::Classes(ds) => {
                Box::new(Classification::new(&self.model, ds, ds, batch, false)?)
            }
            AnchorData::Values(x, y) => Box::new(Regression::new(
                &self.model,
                (x.clone(), y.clone()),
                (x.clone(), y.clone()),
                batch,
                false,
            )?),
        };
        if self.shard.1 > 1 {
            objective.shard(self.shard.0, self.shard.1)?;
        }
        let out = self.trainer.train_step(
            &mut self.tape,
            objective.as_mut(),
            &mut self.store,
            self.optimizer.as_mut(),
            0,
            self.steps,
            None,
            false,
        )?;
        if let Some((_, why)) = out.stop {
            return Err(Error::NonFinite(why));
        }
        self.times = out.times;
        self.steps += 1;
        Ok(out.loss as f32)
    }
}

/// Times steps after the first 11, whose losses are checked against `expected`
/// (`loss@0`, `loss@10`).
pub(super) fn train_step_row(
    name: &str,
    mut step: AnchorStep,
    cfg: &BenchConfig,
    flops: Option<f64>,
    expected: [f64; 2],
) -> Result<BenchRow> {
    let mut losses = Vec::new();
    for _ in 0..11 {
        losses.push(step.step()?);
    }
    let (t, busy) = try_measure_with_cores(cfg.budget, 20, || step.step().map(drop))?;
    let mut row = BenchRow::new(name, t)
        .with("loss@0", losses[0] as f64)
        .with("loss@10", losses[10] as f64)
        .with("cores_busy", busy);
    row.gflops = flops.map(|f| f / t.median_s / 1e9);
    row.verify_extra("loss@0", expected[0], LOSS_TOL)?
        .verify_extra("loss@10", expected[1], LOSS_TOL)
}

/// The products of W1's forward pass (batch 128, 784-256-256-10): `2·128·(784·256 +
/// 256·256 + 256·10)`.
pub(super) const W1_FORWARD_FLOPS: f64 = 68.75e6;
/// W1's forward and backward passes: the backward pass does twice the forward's products
/// but the input gradient of the first layer (`2·128·784·256`), plus the elementwise work.
pub(super) const W1_STEP_FLOPS: f64 = 155.1e6;
/// W2's forward and backward products (batch 32, 2-16-16-1), counted as W1's.
pub(super) const W2_STEP_FLOPS: f64 =
    3.0 * 2.0 * 32.0 * (2.0 * 16.0 + 16.0 * 16.0 + 16.0) - 2.0 * 32.0 * 2.0 * 16.0;

/// W1 training steps, every step recorded on the tape (`w1_step`) or replayed from the
/// first one's recording (`w1_step_replay`), as the program runs them (a second worker
/// kept spinning through each step).
pub(super) fn w1_step(cfg: &BenchConfig, replay: bool) -> Result<BenchRow> {
    let (name, step) = match replay {
        true => ("w1_step_replay", AnchorStep::w1()),
        false => ("w1_step", AnchorStep::w1().eager()),
    };
    train_step_row(name, step, cfg, Some(W1_STEP_FLOPS), W1_LOSSES)
}

/// `w1_step_replay` with the library's default runtime: no worker kept spinning.
pub(super) fn w1_step_replay_idle_worker(cfg: &BenchConfig) -> Result<BenchRow> {
    let step = AnchorStep::w1().without_a_spinning_worker();
    let name = "w1_step_replay_idle_worker";
    train_step_row(name, step, cfg, Some(W1_STEP_FLOPS), W1_LOSSES)
}

/// W2 training steps, eager or replayed as in [`w1_step`].
pub(super) fn w2_step(cfg: &BenchConfig, replay: bool) -> Result<BenchRow> {
    let (name, step) = match replay {
        true => ("w2_step_replay", AnchorStep::w2()),
        false => ("w2_step", AnchorStep::w2().eager()),
    };
    train_step_row(name, step, cfg, Some(W2_STEP_FLOPS), W2_LOSSES)
}
