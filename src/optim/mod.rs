//! Optimizers, learning-rate schedules and gradient clipping. Each optimizer follows the
//! update rule in PyTorch's documentation for the same hyperparameters, and updates the
//! parameters in place (the step's tape must be dropped first, so no copy is made).

mod clip;
pub mod curvature;
pub mod newton;
mod schedule;

pub use clip::{clip_grad_norm, clip_grad_value, global_norm, grad_norms};
pub use schedule::{LrSchedule, Schedule, Warmup};

use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::tensor::{Element, PARALLEL_MIN_LEN, Tensor, with_avx2};
use rayon::prelude::*;

/// One optimizer interface for every update rule.
pub trait Optimizer<T: Element> {
    /// Updates every parameter that has a gradient (`grads[i]` belongs to `ParamId(i)`).
    fn step(&mut self, store: &mut ParamStore<T>, grads: &[Option<Tensor<T>>]) -> Result<()>;
    /// The current learning rate.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate (schedules call this before each step).
    fn set_learning_rate(&mut self, lr: f64);
    /// The optimizer's state as named tensors (for checkpoints), plus its step count.
    fn state(&self) -> (Vec<(String, Tensor<T>)>, u64);
    /// Restores a state written by [`state`](Self::state) for the parameters of `store`.
    /// The state may come from a file: every entry must name a parameter of `store`, with
    /// its shape, and the step count must fit the bias corrections, or it is an error.
    fn load_state(
        &mut self,
        tensors: Vec<(String, Tensor<T>)>,
        steps: u64,
        store: &ParamStore<T>,
    ) -> Result<()>;
}

/// The optimizers, by name (`sgd`, `momentum`, `nesterov`, `adagrad`, `rmsprop`, `adam`,
/// `adamw`, `adadelta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent.
    Sgd,
    /// SGD with heavy-ball momentum 0.9.
    Momentum,
    /// SGD with Nesterov momentum 0.9.
    Nesterov,
    /// AdaGrad.
    Adagrad,
    /// RMSProp (α = 0.99).
    Rmsprop,
    /// Adam (β = 0.9, 0.999), weight decay as an L2 term.
    Adam,
    /// AdamW: Adam with decoupled weight decay (default 0.01).
    Adamw,
    /// Adadelta (ρ 0.9, ε 1e-6; PyTorch's default learning rate is 1.0).
    Adadelta,
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "sgd" => OptimizerKind::Sgd,
            "momentum" => OptimizerKind::Momentum,
            "nesterov" => OptimizerKind::Nesterov,
            "adagrad" => OptimizerKind::Adagrad,
            "rmsprop" => OptimizerKind::Rmsprop,
            "adam" => OptimizerKind::Adam,
            "adamw" => OptimizerKind::Adamw,
            "adadelta" => OptimizerKind::Adadelta,
            _ => {
                return Err(Error::invalid(
                    "optimizer",
                    format!(
                        "unknown optimizer '{s}'; choose sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw or adadelta"
                    ),
                ));
            }
        })
    }
}

impl OptimizerKind {
    /// Builds the optimizer with learning rate `lr` and weight decay (`None`: the
    /// PyTorch default, 0 except 0.01 for AdamW).
    pub fn build<T: Element>(
        self,
        lr: f64,
        weight_decay: Option<f64>,
    ) -> Result<Box<dyn Optimizer<T>>> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(
                "optimizer",
                format!("learning rate must be a non-negative number, got {lr}"),
            ));
        }
        let wd = weight_decay.unwrap_or(if self == OptimizerKind::Adamw {
            0.01
        } else {
            0.0
        });
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(Error::invalid(
                "optimizer",
                format!("weight decay must be a non-negative number, got {wd}"),
            ));
        }
        Ok(match self {
            OptimizerKind::Sgd => Box::new(Sgd::new(lr, 0.0, false, wd)),
            OptimizerKind::Momentum => Box::new(Sgd::new(lr, 0.9, false, wd)),
            OptimizerKind::Nesterov => Box::new(Sgd::new(lr, 0.9, true, wd)),
            OptimizerKind::Adagrad => Box::new(AdaGrad::new(lr, wd)),
            OptimizerKind::Rmsprop => Box::new(RmsProp::new(lr, 0.99, wd)),
            OptimizerKind::Adam => Box::new(Adam::new(lr, wd, false)),
            OptimizerKind::Adamw => Box::new(Adam::new(lr, wd, true)),
            OptimizerKind::Adadelta => Box::new(Adadelta::new(lr, 0.9, 1e-6, wd)),
        })
    }
}

/// The largest step count a state may carry: bias corrections raise β to the power
/// `steps + 1` as an `i32`.
const MAX_STEPS: u64 = i32::MAX as u64 - 1;

/// A step count from a state (a file, perhaps) that the bias corrections can raise β to.
fn check_step_count(steps: u64) -> Result<()> {
    if steps > MAX_STEPS {
        return Err(Error::invalid(
            "optimizer state",
            format!("a step count of {steps} is beyond {MAX_STEPS}"),
        ));
    }
    Ok(())
}

/// Per-parameter state tensors, created on first use.
#[derive(Default)]
struct Slots<T: Element> {
    names: &'static [&'static str],
    per_param: Vec<Vec<Tensor<T>>>,
}

impl<T: Element> Slots<T> {
    fn new(names: &'static [&'static str]) -> Self {
        Slots {
            names,
            per_param: Vec::new(),
        }
    }
    /// The state tensors of `id`, zero-initialised with `shape` on first use.
    /// The slots of parameter `id`, which has `len` elements (kept flat).
    fn get(&mut self, id: usize, len: usize) -> &mut [Tensor<T>] {
        if self.per_param.len() <= id {
            self.per_param.resize_with(id + 1, Vec::new);
        }
        if self.per_param[id].is_empty() {
            self.per_param[id] = self.names.iter().map(|_| Tensor::zeroed(&[len])).collect();
        }
        &mut self.per_param[id]
    }
    fn export(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        for (i, slots) in self.per_param.iter().enumerate() {
            for (name, t) in self.names.iter().zip(slots) {
                out.push((format!("{i}.{name}"), t.clone()));
            }
        }
        out
    }
    /// Restores exported state, checking each entry against the parameters of `store`
    /// (it may come from a hostile file: an id past the parameters or a shape that differs
    /// from its parameter's would allocate without bound or update part of a parameter).
    fn import(&mut self, tensors: Vec<(String, Tensor<T>)>, store: &ParamStore<T>) -> Result<()> {
        let mut per_param: Vec<Vec<Tensor<T>>> = Vec::new();
        for (key, t) in tensors {
            let bad =
                |why: &str| Error::invalid("optimizer state", format!("entry '{key}': {why}"));
            let (id, name) = key.split_once('.').ok_or_else(|| bad("not ID.NAME"))?;
            let id: usize = id.parse().map_err(|_| bad("not ID.NAME"))?;
            let slot = (self.names.iter())
                .position(|n| *n == name)
                .ok_or_else(|| bad("not a state of this optimizer"))?;
            if id >= store.len() {
                return Err(bad(&format!("the model has {} parameters", store.len())));
            }
            // the state is kept flat, one value per parameter element
            let len = store.get(ParamId(id)).len();
            if t.shape() != [len] {
                return Err(bad(&format!(
                    "shape {:?}, but the parameter has {len} elements",
                    t.shape()
                )));
            }
            if per_param.len() <= id {
                per_param.resize_with(id + 1, Vec::new);
            }
            if per_param[id].is_empty() {
                per_param[id] = self.names.iter().map(|_| Tensor::zeroed(&[len])).collect();
            }
            per_param[id][slot] = t;
        }
        self.per_param = per_param;
        Ok(())
    }
}

/// A piece of one parameter, its gradient, its state slots, and whether weight decay
/// applies to it with the parameter's index, updated together.
type Piece<'a, T, const S: usize> = (&'a mut [T], &'a [T], [&'a mut [T]; S], (bool, usize));

/// Runs the update rule `f` over every parameter that has a gradient, with its `S` state
/// slots (created on first use), whether its weight decays and its index
/// ([`ParamStore::set_decay`]: the parameter groups), in one pass: the parameters are cut into pieces that
/// all run in one parallel loop on every rayon thread once there are enough elements to
/// pay for it, each piece compiled for AVX2 where the CPU has it. Every rule here
/// updates element `j` from element `j` alone and uses no FMA, so neither the cut nor
/// the instruction set can change a result. Counts and shapes are checked before
/// anything is updated.
fn update_all<T: Element, const S: usize>(
    store: &mut ParamStore<T>,
    grads: &[Option<Tensor<T>>],
    slots: &mut Slots<T>,
    f: impl Fn(&mut [T], &[T], [&mut [T]; S], (bool, usize)) + Sync + Send,
) -> Result<()> {
    if grads.len() > store.len() {
        return Err(Error::invalid(
            "optimizer step",
            format!("{} gradients for {} parameters", grads.len(), store.len()),
        ));
    }
    let mut total = 0;
    for (i, g) in grads.iter().enumerate() {
        let Some(g) = g else { continue };
        let p = store.get(ParamId(i));
        if p.shape() != g.shape() {
            return Err(Error::shape("optimizer step", p.shape(), g.shape()));
        }
        total += p.len();
        if S > 0 {
            slots.get(i, p.len());
        }
    }
    let threads = rayon::current_num_threads().max(1);
    let parallel = total >= PARALLEL_MIN_LEN && threads > 1;
    let piece = if parallel {
        total.div_ceil(threads * 4).max(4096)
    } else {
        usize::MAX
    };
    let mut per_param = slots.per_param.iter_mut();
    let mut parts: Vec<Piece<'_, T, S>> = Vec::new();
    let decays: Vec<bool> = (0..store.len()).map(|i| store.decays(ParamId(i))).collect();
    for (id, ((p, g), &decays)) in store
        .values_mut()
        .zip(grads.iter().chain(std::iter::repeat(&None)))
        .zip(&decays)
        .enumerate()
    {
        let state = per_param.next();
        let Some(g) = g else { continue };
        let mut state = state.map(|v| v.iter_mut()).into_iter().flatten();
        // the slots were made (or loaded and checked) with the parameter's length; a
        // shorter one would only shorten the zipped loops, never index out of bounds
        let mut slot_pieces: [std::slice::ChunksMut<'_, T>; S] = std::array::from_fn(|_| {
            state
                .next()
                .expect("slots exist for every parameter with a gradient")
                .data_mut()
                .chunks_mut(piece)
        });
        for (p, g) in p.data_mut().chunks_mut(piece).zip(g.data().chunks(piece)) {
            let s = std::array::from_fn(|k| slot_pieces[k].next().unwrap_or_default());
            parts.push((p, g, s, (decays, id)));
        }
    }
    if parallel {
        parts
            .into_par_iter()
            .for_each(|(p, g, s, d)| with_avx2!(f(p, g, s, d)));
    } else {
        with_avx2!(for (p, g, s, d) in parts {
            f(p, g, s, d)
        });
    }
    Ok(())
}

/// The methods every optimizer here shares: its learning rate, and its state as the
/// step count plus the per-parameter slots.
macro_rules! optimizer_bookkeeping {
    () => {
        fn learning_rate(&self) -> f64 {
            self.lr
        }
        fn set_learning_rate(&mut self, lr: f64) {
            self.lr = lr;
        }
        fn state(&self) -> (Vec<(String, Tensor<T>)>, u64) {
            (self.slots.export(), self.steps)
        }
        fn load_state(
            &mut self,
            tensors: Vec<(String, Tensor<T>)>,
            steps: u64,
            store: &ParamStore<T>,
        ) -> Result<()> {
            check_step_count(steps)?;
            self.slots.import(tensors, store)?;
            self.steps = steps;
            Ok(())
        }
    };
}

/// SGD with optional (Nesterov) momentum and L2 weight decay (`torch.optim.SGD`).
pub struct Sgd<T: Element> {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    steps: u64,
    slots: Slots<T>,
}

impl<T: Element> Sgd<T> {
    /// A new SGD optimizer.
    pub fn new(lr: f64, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        Sgd {
            lr,
            momentum,
            nesterov,
            weight_decay,
            steps: 0,
            slots: Slots::new(&["momentum_buffer"]),
        }
    }
}

impl<T: Element> Optimizer<T> for Sgd<T> {
    fn step(&mut self, store: &mut ParamStore<T>, grads: &[Option<Tensor<T>>]) -> Result<()> {
        let (lr, mu, wd, nesterov) = (
            T::of(self.lr),
            T::of(self.momentum),
            T::of(self.weight_decay),
            self.nesterov,
        );
        let first = self.steps == 0;
        if mu == T::zero() {
            update_all(store, grads, &mut self.slots, |p, g, [], (decays, _)| {
                let wd = if decays { wd } else { T::zero() };
                for (p, &g) in p.iter_mut().zip(g) {
                    *p -= lr * (g + wd * *p);
                }
            })?;
        } else {
            update_all(store, grads, &mut self.slots, |p, g, [buf], (decays, _)| {
                let wd = if decays { wd } else { T::zero() };
                for ((p, &g), b) in p.iter_mut().zip(g).zip(buf) {
                    let d = g + wd * *p;
                    *b = if first { d } else { mu * *b + d };
                    *p -= lr * if nesterov { d + mu * *b } else { *b };
                }
            })?;
        }
        self.steps += 1;
        Ok(())
    }
    optimizer_bookkeeping!();
}

/// AdaGrad (`torch.optim.Adagrad`, eps 1e-10).
pub struct AdaGrad<T: Element> {
    lr: f64,
    weight_decay: f64,
    steps: u64,
    slots: Slots<T>,
}

impl<T: Element> AdaGrad<T> {
    /// A new AdaGrad optimizer.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        AdaGrad {
            lr,
            weight_decay,
            steps: 0,
            slots: Slots::new(&["sum"]),
        }
    }
}

impl<T: Element> Optimizer<T> for AdaGrad<T> {
    fn step(&mut self, store: &mut ParamStore<T>, grads: &[Option<Tensor<T>>]) -> Result<()> {
        let (lr, wd, eps) = (T::of(self.lr), T::of(self.weight_decay), T::of(1e-10));
        update_all(store, grads, &mut self.slots, |p, g, [sum], (decays, _)| {
            let wd = if decays { wd } else { T::zero() };
            for ((p, &g), s) in p.iter_mut().zip(g).zip(sum) {
                let d = g + wd * *p;
                *s += d * d;
                *p -= lr * d / (s.sqrt() + eps);
            }
        })?;
        self.steps += 1;
        Ok(())
    }
    optimizer_bookkeeping!();
}

/// Adadelta (`torch.optim.Adadelta`): `v ← ρv + (1−ρ)g²`,
/// `δ = √(u + ε)/√(v + ε)·g`, `u ← ρu + (1−ρ)δ²`, `p ← p − lr·δ` (ρ 0.9, ε 1e-6, lr 1.0
/// by default there).
pub struct Adadelta<T: Element> {
    lr: f64,
    rho: f64,
    eps: f64,
    weight_decay: f64,
    steps: u64,
    slots: Slots<T>,
}

impl<T: Element> Adadelta<T> {
    /// A new Adadelta optimizer.
    pub fn new(lr: f64, rho: f64, eps: f64, weight_decay: f64) -> Self {
        Adadelta {
            lr,
            rho,
            eps,
            weight_decay,
            steps: 0,
            slots: Slots::new(&["square_avg", "acc_delta"]),
        }
    }
}

impl<T: Element> Optimizer<T> for Adadelta<T> {
    fn step(&mut self, store: &mut ParamStore<T>, grads: &[Option<Tensor<T>>]) -> Result<()> {
        let (lr, rho, eps, wd) = (
            T::of(self.lr),
            T::of(self.rho),
            T::of(self.eps),
            T::of(self.weight_decay),
        );
        update_all(
            store,
            grads,
            &mut self.slots,
            |p, g, [v, u], (decays, _)| {
                let wd = if decays { wd } else { T::zero() };
                for (((p, &g), v), u) in p.iter_mut().zip(g).zip(v).zip(u) {
                    let d = g + wd * *p;
                    *v = rho * *v + (T::one() - rho) * d * d;
                    let delta = (*u + eps).sqrt() / (*v + eps).sqrt() * d;
                    *u = rho * *u + (T::one() - rho) * delta * delta;
                    *p -= lr * delta;
                }
            },
        )?;
        self.steps += 1;
        Ok(())
    }
    optimizer_bookkeeping!();
}

/// RMSProp (`torch.optim.RMSprop`, eps 1e-8, not centered, no momentum).
pub struct RmsProp<T: Element> {
    lr: f64,
    alpha: f64,
    weight_decay: f64,
    steps: u64,
    slots: Slots<T>,
}

impl<T: Element> RmsProp<T> {
    /// A new RMSProp optimizer.
    pub fn new(lr: f64, alpha: f64, weight_decay: f64) -> Self {
        RmsProp {
            lr,
            alpha,
            weight_decay,
            steps: 0,
            slots: Slots::new(&["square_avg"]),
        }
    }
}

impl<T: Element> Optimizer<T> for RmsProp<T> {
    fn step(&mut self, store: &mut ParamStore<T>, grads: &[Option<Tensor<T>>]) -> Result<()> {
        let (lr, a, wd, eps) = (
            T::of(self.lr),
            T::of(self.alpha),
            T::of(self.weight_decay),
            T::of(1e-8),
        );
        update_all(store, grads, &mut self.slots, |p, g, [v], (decays, _)| {
            let wd = if decays { wd } else { T::zero() };
            for ((p, &g), v) in p.iter_mut().zip(g).zip(v) {
                let d = g + wd * *p;
                *v = a * *v + (T::one() - a) * d * d;
                *p -= lr * d / (v.sqrt() + eps);
            }
        })?;
        self.steps += 1;
        Ok(())
    }
    optimizer_bookkeeping!();
}

/// Adam (`torch.optim.Adam`, L2 weight decay) or AdamW (`torch.optim.AdamW`, decoupled).
pub struct Adam<T: Element> {
    lr: f64,
    weight_decay: f64,
    decoupled: bool,
    beta1: f64,
    beta2: f64,
    steps: u64,
    /// Each parameter's own count of the steps that updated it (PyTorch's
    /// `state['step']`): a parameter frozen or without a gradient for a while starts its
    /// bias correction from its own first step, not from the optimizer's.
    param_steps: Vec<u64>,
    slots: Slots<T>,
}

impl<T: Element> Adam<T> {
    /// Adam (`decoupled = false`) or AdamW (`decoupled = true`), β = (0.9, 0.999), eps 1e-8.
    pub fn new(lr: f64, weight_decay: f64, decoupled: bool) -> Self {
        Self::with_betas(lr, weight_decay, decoupled, (0.9, 0.999))
    }

    /// Adam or AdamW with the moment decays `(β₁, β₂)` (nanoGPT trains with (0.9, 0.99)).
    pub fn with_betas(
        lr: f64,
        weight_decay: f64,
        decoupled: bool,
        (beta1, beta2): (f64, f64),
    ) -> Self {
        Adam {
            lr,
            weight_decay,
            decoupled,
            beta1,
            beta2,
            steps: 0,
            param_steps: Vec::new(),
            slots: Slots::new(&["exp_avg", "exp_avg_sq"]),
        }
    }
}

impl<T: Element> Optimizer<T> for Adam<T> {
    fn step(&mut self, store: &mut ParamStore<T>, grads: &[Option<Tensor<T>>]) -> Result<()> {
        if self.param_steps.len() < grads.len() {
            self.param_steps.resize(grads.len(), 0);
        }
        let (b1, b2) = (T::of(self.beta1), T::of(self.beta2));
        // PyTorch's arrangement of the bias corrections: lr / (1 - β₁ᵗ) as one step size
        // and √v / √(1 - β₂ᵗ), here as a product with the reciprocal. The same update as
        // lr · (m / c₁) / (√(v / c₂) + ε) in exact arithmetic, with one division and one
        // square root per element instead of three and one, which the one divider
        // unit ran in turn (the 784-256-256-10 MLP, 269 k parameters, on one core:
        // 311–346 → 221–245 µs per step).
        // per parameter, at its own step t: (lr / (1 − β₁ᵗ), 1 / √(1 − β₂ᵗ))
        let corrections: Vec<(T, T)> = self
            .param_steps
            .iter()
            .map(|&done| {
                let t = done.min(MAX_STEPS) as i32 + 1;
                (
                    T::of(self.lr / (1.0 - self.beta1.powi(t))),
                    T::of(1.0 / (1.0 - self.beta2.powi(t)).sqrt()),
                )
            })
            .collect();
        let eps = T::of(1e-8);
        let (l2, shrink) = if self.decoupled {
            (T::zero(), T::of(1.0 - self.lr * self.weight_decay))
        } else {
            (T::of(self.weight_decay), T::one())
        };
        update_all(
            store,
            grads,
            &mut self.slots,
            |p, g, [m, v], (decays, id)| {
                let (step_size, inv_sqrt_c2) = corrections[id];
                let (l2, shrink) = if decays {
                    (l2, shrink)
                } else {
                    (T::zero(), T::one())
                };
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    *p *= shrink;
                    let d = g + l2 * *p;
                    *m = b1 * *m + (T::one() - b1) * d;
                    *v = b2 * *v + (T::one() - b2) * d * d;
                    *p -= step_size * *m / (v.sqrt() * inv_sqrt_c2 + eps);
                }
            },
        )?;
        for (done, g) in self.param_steps.iter_mut().zip(grads) {
            *done += u64::from(g.is_some());
        }
        self.steps += 1;
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    /// The moments, and each parameter's step count as `ID.step`: `[count / 2²⁴,
    /// count mod 2²⁴]`, two numbers that f32 holds exactly.
    fn state(&self) -> (Vec<(String, Tensor<T>)>, u64) {
        let mut tensors = self.slots.export();
        for (i, &done) in self.param_steps.iter().enumerate() {
            let parts = vec![T::of((done >> 24) as f64), T::of((done & 0xFF_FFFF) as f64)];
            let t = Tensor::from_vec(parts, &[2]).expect("two numbers");
            tensors.push((format!("{i}.step"), t));
        }
        (tensors, self.steps)
    }
    /// A state without `ID.step` entries (written before they were) gives every parameter
    /// with moments the optimizer's count, as it then had.
    fn load_state(
        &mut self,
        tensors: Vec<(String, Tensor<T>)>,
        steps: u64,
        store: &ParamStore<T>,
    ) -> Result<()> {
        check_step_count(steps)?;
        let (counts, moments): (Vec<_>, Vec<_>) =
            tensors.into_iter().partition(|(k, _)| k.ends_with(".step"));
        let mut param_steps: Vec<Option<u64>> = vec![None; store.len()];
        for (key, t) in counts {
            let bad =
                |why: &str| Error::invalid("optimizer state", format!("entry '{key}': {why}"));
            let id: usize = key
                .strip_suffix(".step")
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| bad("not ID.step"))?;
            let slot = param_steps
                .get_mut(id)
                .ok_or_else(|| bad(&format!("the model has {} parameters", store.len())))?;
            let whole = |v: f64, below: f64| v.fract() == 0.0 && (0.0..below).contains(&v);
            let count = match t.data() {
                &[hi, lo] if whole(hi.as_f64(), 256.0) && whole(lo.as_f64(), 16_777_216.0) => {
                    (hi.as_f64() as u64) << 24 | lo.as_f64() as u64
                }
                _ => return Err(bad("not a step count")),
            };
            if count > steps {
                return Err(bad(&format!(
                    "{count} steps, more than the optimizer's {steps}"
                )));
            }
            *slot = Some(count);
        }
        self.slots.import(moments, store)?;
        let has_moments = |i: usize| self.slots.per_param.get(i).is_some_and(|s| !s.is_empty());
        self.param_steps = (0..store.len())
            .map(|i| param_steps[i].unwrap_or(if has_moments(i) { steps } else { 0 }))
            .collect();
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_corrects_each_parameters_bias_from_its_own_first_step() {
        let mut store = ParamStore::<f64>::new();
        let a = store.add("a", Tensor::ones(&[1]).unwrap()).unwrap();
        let b = store.add("b", Tensor::ones(&[1]).unwrap()).unwrap();
        let one = || Some(Tensor::ones(&[1]).unwrap());
        let mut adam = Adam::new(0.1, 0.0, false);
        // b has no gradient for two steps (frozen, say), then its first
        adam.step(&mut store, &[one(), None]).unwrap();
        adam.step(&mut store, &[one(), None]).unwrap();
        let (state, steps) = adam.state();
        adam.step(&mut store, &[one(), one()]).unwrap();
        // PyTorch: b's first step is lr·ĝ/(|ĝ| + ε) with ĝ the bias-corrected moment, 0.1
        let moved = 1.0 - store.get(b).data()[0];
        assert!((moved - 0.1).abs() < 1e-9, "{moved}");
        // the counts survive a checkpoint: resumed, the same step gives the same values
        let mut again = ParamStore::<f64>::new();
        again.add("a", store.get(a).clone()).unwrap();
        again.add("b", Tensor::ones(&[1]).unwrap()).unwrap();
        *again.get_mut(a) = Tensor::from_vec(vec![1.0 - 0.2], &[1]).unwrap();
        let mut resumed = Adam::new(0.1, 0.0, false);
        resumed.load_state(state.clone(), steps, &again).unwrap();
        assert_eq!(resumed.param_steps, [2, 0]);
        resumed.step(&mut again, &[one(), one()]).unwrap();
        assert_eq!(again.get(b), store.get(b));
        // a state written before the counts gives each parameter with moments the total
        let older: Vec<_> = state
            .iter()
            .filter(|(k, _)| !k.ends_with(".step"))
            .cloned()
            .collect();
        resumed.load_state(older, steps, &again).unwrap();
        assert_eq!(resumed.param_steps, [2, 0]);
        // and a count that is not one is refused
        let mut hostile = state.clone();
        hostile[2].1 = Tensor::from_vec(vec![0.0, 0.5], &[2]).unwrap();
        assert!(resumed.load_state(hostile, steps, &again).is_err());
    }

    #[test]
    fn adadelta_follows_pytorchs_update_sequence() {
        // torch.optim.Adadelta(lr 1.0, rho 0.9, eps 1e-6, weight_decay 0.01) on
        // 0.5·Σ A·a², three steps (torch 2.15, f64)
        let mut store = ParamStore::<f64>::new();
        let a = store
            .add("a", Tensor::from_vec(vec![1.0, -2.0, 3.0], &[3]).unwrap())
            .unwrap();
        let mut opt = OptimizerKind::Adadelta
            .build::<f64>(1.0, Some(0.01))
            .unwrap();
        for _ in 0..3 {
            let p = store.get(a);
            let g: Vec<f64> = p
                .data()
                .iter()
                .zip([1.0, 2.0, 0.5])
                .map(|(p, k)| p * k)
                .collect();
            let grads = [Some(Tensor::from_vec(g, &[3]).unwrap())];
            opt.step(&mut store, &grads).unwrap();
        }
        let want = [0.9903090818250304, -1.990300752388965, 2.990298014225644];
        for (g, w) in store.get(a).data().iter().zip(want) {
            assert!((g - w).abs() <= 1e-14 * w.abs(), "{g} vs {w}");
        }
    }

    #[test]
    fn adamw_decays_only_its_decay_group_as_pytorch_does() {
        // torch.optim.AdamW([{a, weight_decay 0.1}, {b, weight_decay 0}], lr 0.05,
        // betas (0.9, 0.99)) on 0.5·Σ A·a² + 0.5·Σ B·b², three steps (torch 2.15, f64)
        let mut store = ParamStore::<f64>::new();
        let a = store
            .add("a", Tensor::from_vec(vec![1.0, -2.0, 3.0], &[3]).unwrap())
            .unwrap();
        let b = store
            .add("b", Tensor::from_vec(vec![0.5, -1.0], &[2]).unwrap())
            .unwrap();
        store.set_decay(b, false);
        let mut opt = Adam::with_betas(0.05, 0.1, true, (0.9, 0.99));
        for _ in 0..3 {
            let grad = |id: ParamId, k: &[f64]| {
                let p = store.get(id);
                Tensor::from_vec(
                    p.data().iter().zip(k).map(|(p, k)| p * k).collect(),
                    p.shape(),
                )
            };
            let grads = [
                Some(grad(a, &[1.0, 2.0, 0.5]).unwrap()),
                Some(grad(b, &[3.0, 1.0]).unwrap()),
            ];
            opt.step(&mut store, &grads).unwrap();
        }
        let want_a = [0.8361502330965854, -1.821053938377474, 2.806080445041209];
        let want_b = [0.3507485846659294, -0.8502901546247856];
        for (got, want) in [(store.get(a), &want_a[..]), (store.get(b), &want_b[..])] {
            for (g, w) in got.data().iter().zip(want) {
                assert!((g - w).abs() <= 1e-14 * w.abs(), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn one_pass_over_every_parameter_gives_the_same_bits_on_one_or_more_threads() {
        // big and small parameters, one without a gradient: the parallel pass cuts them
        // into pieces, the single-threaded one does not
        let sizes = [70_000usize, 3, 100_000, 5];
        let run = |threads: usize| -> Vec<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut out = Vec::new();
                for kind in [
                    OptimizerKind::Adam,
                    OptimizerKind::Momentum,
                    OptimizerKind::Rmsprop,
                ] {
                    let mut store = ParamStore::<f32>::new();
                    for (i, &n) in sizes.iter().enumerate() {
                        store
                            .add(
                                format!("p{i}"),
                                Tensor::<f64>::randn(&[n], i as u64).unwrap().cast(),
                            )
                            .unwrap();
                    }
                    let mut opt = kind.build::<f32>(0.01, Some(1e-3)).unwrap();
                    for step in 0..3u64 {
                        let grads: Vec<Option<Tensor<f32>>> = sizes
                            .iter()
                            .enumerate()
                            .map(|(i, &n)| {
                                (i != 1).then(|| {
                                    Tensor::<f64>::randn(&[n], 100 + 10 * step + i as u64)
                                        .unwrap()
                                        .cast()
                                })
                            })
                            .collect();
                        opt.step(&mut store, &grads).unwrap();
                    }
                    out.extend(store.iter().map(|(_, _, t)| t.to_vec()));
                }
                out
            })
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(2), run(3));
        // a wrong shape updates nothing
        let mut store = ParamStore::<f32>::new();
        store.add("a", Tensor::ones(&[4]).unwrap()).unwrap();
        store.add("b", Tensor::ones(&[2]).unwrap()).unwrap();
        let mut opt = OptimizerKind::Sgd.build::<f32>(0.1, None).unwrap();
        let bad = [
            Some(Tensor::ones(&[4]).unwrap()),
            Some(Tensor::ones(&[3]).unwrap()),
        ];
        assert!(opt.step(&mut store, &bad).is_err());
        assert_eq!(store.iter().next().unwrap().2.to_vec(), vec![1.0; 4]);
    }

    /// Three steps on f(p) = ½ Σ aᵢ pᵢ², a = [1, 2, 0.5], p₀ = [1, −2, 3].
    fn run(mut opt: Box<dyn Optimizer<f64>>) -> Vec<Vec<f64>> {
        let a = Tensor::<f64>::from_vec(vec![1.0, 2.0, 0.5], &[3]).unwrap();
        let mut store = ParamStore::new();
        let id = store
            .add("p", Tensor::from_vec(vec![1.0, -2.0, 3.0], &[3]).unwrap())
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            let g = store.get(id).mul(&a).unwrap();
            opt.step(&mut store, &[Some(g)]).unwrap();
            out.push(store.get(id).to_vec());
        }
        out
    }

    fn assert_close(name: &str, got: Vec<Vec<f64>>, want: [[f64; 3]; 3]) {
        for (g, w) in got.iter().zip(want) {
            for (a, b) in g.iter().zip(w) {
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                    "{name}: got {got:?}, want {want:?}"
                );
            }
        }
    }

    // Literals from tools/optim_reference.py: an independent transcription of the update
    // rules in PyTorch's documentation, in Python floats.
    #[test]
    fn sgd_family_matches_reference_sequences() {
        assert_close(
            "sgd",
            run(OptimizerKind::Sgd.build(0.1, None).unwrap()),
            [
                [0.9, -1.6, 2.85],
                [0.81, -1.28, 2.7075],
                [0.7290000000000001, -1.024, 2.572125],
            ],
        );
        assert_close(
            "momentum",
            run(OptimizerKind::Momentum.build(0.1, None).unwrap()),
            [
                [0.9, -1.6, 2.85],
                [0.72, -0.9199999999999999, 2.5725000000000002],
                [0.486, -0.12399999999999978, 2.194125],
            ],
        );
        assert_close(
            "nesterov_wd",
            run(OptimizerKind::Nesterov.build(0.1, Some(0.01)).unwrap()),
            [
                [0.8081, -1.2362, 2.7093],
                [0.5712156100000001, -0.43847521999999983, 2.32283883],
                [0.3218596734410001, 0.22330218851800032, 1.8742975643729998],
            ],
        );
    }

    #[test]
    fn adaptive_optimizers_match_reference_sequences() {
        assert_close(
            "adagrad",
            run(OptimizerKind::Adagrad.build(0.1, None).unwrap()),
            [
                [0.90000000001, -1.9000000000025, 2.9000000000066666],
                [0.8331035268523168, -1.8311250538122312, 2.830497790325168],
                [0.7804561813655163, -1.775821515013063, 2.774359345948216],
            ],
        );
        assert_close(
            "rmsprop",
            run(OptimizerKind::Rmsprop.build(0.01, None).unwrap()),
            [
                [0.9000000099999991, -1.9000000025, 2.9000000066666662],
                [0.8329179752650593, -1.8309433291098638, 2.830317456889818],
                [0.7799822819823541, -1.7753494456014602, 2.773888578459935],
            ],
        );
        assert_close(
            "adam",
            run(OptimizerKind::Adam.build(0.1, None).unwrap()),
            [
                [0.900000001, -1.90000000025, 2.9000000006666666],
                [0.8004122297123382, -1.8001664861157012, 2.8001027084220778],
                [0.701586274504415, -1.7006233920464653, 2.7003815249719785],
            ],
        );
        assert_close(
            "adam_l2",
            run(OptimizerKind::Adam.build(0.1, Some(0.1)).unwrap()),
            [
                [0.9000000009090909, -1.9000000002380952, 2.9000000005555555],
                [0.8004122295267845, -1.8001664860916349, 2.8001027081982355],
                [0.7015862742210723, -1.7006233920100058, 2.7003815246339267],
            ],
        );
        assert_close(
            "adamw",
            run(OptimizerKind::Adamw.build(0.1, Some(0.1)).unwrap()),
            [
                [0.890000001, -1.88000000025, 2.8700000006666664],
                [0.7815718569541611, -1.7614089505845592, 2.7414399419121342],
                [0.6751012231892007, -1.6443686835605893, 2.614405618794088],
            ],
        );
    }

    #[test]
    fn bad_hyperparameters_and_names_are_rejected() {
        assert!(
            OptimizerKind::Adam
                .build::<f32>(-0.1, None)
                .err()
                .unwrap()
                .to_string()
                .contains("-0.1")
        );
        assert!(OptimizerKind::Adam.build::<f32>(f64::NAN, None).is_err());
        let e = "adamx".parse::<OptimizerKind>().unwrap_err().to_string();
        assert!(e.contains("unknown optimizer 'adamx'"), "{e}");
    }

    #[test]
    fn state_roundtrip_continues_identically() {
        let a = Tensor::<f64>::from_vec(vec![1.0, 2.0, 0.5], &[3]).unwrap();
        let mut store = ParamStore::new();
        let id = store
            .add("p", Tensor::from_vec(vec![1.0, -2.0, 3.0], &[3]).unwrap())
            .unwrap();
        let mut opt = OptimizerKind::Adam.build(0.1, None).unwrap();
        let g = store.get(id).mul(&a).unwrap();
        opt.step(&mut store, &[Some(g)]).unwrap();
        let (state, steps) = opt.state();
        let mut store2 = store.clone();
        let mut opt2 = OptimizerKind::Adam.build(0.1, None).unwrap();
        opt2.load_state(state.clone(), steps, &store2).unwrap();
        // entries that do not fit the model are refused, not trusted
        let mut wrong = state.clone();
        wrong[0].0 = "99999999999.exp_avg".into();
        let e = OptimizerKind::Adam.build::<f64>(0.1, None).unwrap();
        let mut e = e;
        assert!(e.load_state(wrong, steps, &store2).is_err());
        let mut short = state.clone();
        short[0].1 = Tensor::zeros(&[2]).unwrap();
        assert!(e.load_state(short, steps, &store2).is_err());
        assert!(e.load_state(state, u64::MAX, &store2).is_err());
        let (g, g2) = (
            store.get(id).mul(&a).unwrap(),
            store2.get(id).mul(&a).unwrap(),
        );
        opt.step(&mut store, &[Some(g)]).unwrap();
        opt2.step(&mut store2, &[Some(g2)]).unwrap();
        assert_eq!(store.get(id), store2.get(id));
    }
}
