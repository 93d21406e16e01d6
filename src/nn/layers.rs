//! Layers: Linear, an MLP builder, activations, Dropout and Embedding, with seeded
//! initialisers.

use super::store::{ParamId, ParamStore, Params, join};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor, UnaryOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Weight initialisers (biases start at zero, except for [`Init::TorchDefault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Glorot/Xavier uniform: U(±√(6 / (fan_in + fan_out))).
    XavierUniform,
    /// Glorot/Xavier normal: N(0, 2 / (fan_in + fan_out)).
    XavierNormal,
    /// He/Kaiming uniform for ReLU: U(±√(6 / fan_in)).
    HeUniform,
    /// He/Kaiming normal for ReLU: N(0, 2 / fan_in).
    HeNormal,
    /// PyTorch's `nn.Linear` default: weights and biases U(±1/√fan_in).
    TorchDefault,
}

impl Init {
    fn weight<T: Element>(
        self,
        fan_in: usize,
        fan_out: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor<T>> {
        let (fi, fo) = (fan_in as f64, fan_out as f64);
        // PyTorch's layout and order of draws
        let shape = [fan_out, fan_in];
        Ok(match self {
            Init::XavierUniform => {
                let a = (6.0 / (fi + fo)).sqrt();
                Tensor::rand_uniform_with(&shape, -a, a, rng)?
            }
            Init::XavierNormal => {
                Tensor::randn_with(&shape, rng)?.mul_scalar((2.0 / (fi + fo)).sqrt())
            }
            Init::HeUniform => {
                let a = (6.0 / fi).sqrt();
                Tensor::rand_uniform_with(&shape, -a, a, rng)?
            }
            Init::HeNormal => Tensor::randn_with(&shape, rng)?.mul_scalar((2.0 / fi).sqrt()),
            Init::TorchDefault => {
                let a = 1.0 / fi.sqrt();
                Tensor::rand_uniform_with(&shape, -a, a, rng)?
            }
        })
    }
}

/// Whether a forward pass is training (dropout active) and its random numbers.
///
/// A model that asks for either ([`ForwardCtx::is_training`], [`ForwardCtx::rng`]) computes
/// something that depends on its mode or on fresh randomness, which a replayed step
/// ([`crate::autodiff::Trace`]) would fix at the values of its recording: the trainer sees
/// that it asked and trains such a model on the tape, step by step.
pub struct ForwardCtx {
    train: bool,
    rng: ChaCha8Rng,
    asked: std::cell::Cell<bool>,
}

impl ForwardCtx {
    /// Training mode with a seeded generator.
    pub fn train(seed: u64) -> Self {
        ForwardCtx {
            train: true,
            rng: ChaCha8Rng::seed_from_u64(seed),
            asked: std::cell::Cell::new(false),
        }
    }
    /// Evaluation mode (dropout is the identity).
    pub fn eval() -> Self {
        ForwardCtx {
            train: false,
            rng: ChaCha8Rng::seed_from_u64(0),
            asked: std::cell::Cell::new(false),
        }
    }
    /// Whether this pass trains (dropout and other training-only branches active).
    pub fn is_training(&self) -> bool {
        self.asked.set(true);
        self.train
    }
    /// The generator of this pass's random numbers (dropout masks), seeded per step.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        self.asked.set(true);
        &mut self.rng
    }
    /// Whether the pass asked for its mode or its generator: what it computed may then
    /// differ from one step to the next beyond its inputs and parameters.
    pub(crate) fn was_asked(&self) -> bool {
        self.asked.get()
    }
}

/// A fully connected layer, PyTorch's `nn.Linear`: `y = x·Wᵀ + b` with `W: [out, in]`
/// and an optional `b: [out]`, so that a PyTorch state dict loads as it is. The product
/// reads `W` in place, transposed (no copy).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `name.weight: [out, in]`.
    pub weight: ParamId,
    /// `name.bias: [out]`, when the layer has one.
    pub bias: Option<ParamId>,
}

impl Linear {
    /// Adds `name.weight` drawn by `init` and `name.bias` (U(±1/√in) for
    /// [`Init::TorchDefault`], PyTorch's `nn.Linear`; zeros otherwise) to the store.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        name: &str,
        fan_in: usize,
        fan_out: usize,
        init: Init,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let w = init.weight(fan_in, fan_out, rng)?;
        let b = if init == Init::TorchDefault {
            let a = 1.0 / (fan_in.max(1) as f64).sqrt();
            Tensor::rand_uniform_with(&[fan_out], -a, a, rng)?
        } else {
            Tensor::zeroed(&[fan_out])
        };
        Ok(Linear {
            weight: store.add(join(name, "weight"), w)?,
            bias: Some(store.add(join(name, "bias"), b)?),
        })
    }

    /// Adds `name.weight` drawn from N(0, std²) and, with `bias`, `name.bias` (zeros):
    /// GPT-2's initialisation.
    pub fn normal<T: Element>(
        store: &mut ParamStore<T>,
        name: &str,
        (fan_in, fan_out): (usize, usize),
        bias: bool,
        std: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let w = Tensor::randn_with(&[fan_out, fan_in], rng)?.mul_scalar(std);
        Ok(Linear {
            weight: store.add(join(name, "weight"), w)?,
            bias: match bias {
                true => Some(store.add(join(name, "bias"), Tensor::zeros(&[fan_out])?)?),
                false => None,
            },
        })
    }

    /// Applies the layer to the rows of `x: [rows, in]`.
    pub fn forward<'t, T: Element>(&self, p: &Params<'t, T>, x: Var<'t, T>) -> Result<Var<'t, T>> {
        let y = x.matmul_in_layouts(p[self.weight], false, true)?;
        match self.bias {
            Some(b) => y.add(p[b]),
            None => Ok(y),
        }
    }

    /// [`Linear::forward`] on plain values, without a tape (the same kernels).
    pub fn infer<T: Element>(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        let y = x.matmul_transposed(store.get(self.weight), false, true)?;
        match self.bias {
            Some(b) => y.add(store.get(b)),
            None => Ok(y),
        }
    }
}

/// Elementwise nonlinearities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(x, 0)
    Relu,
    /// tanh
    Tanh,
    /// logistic sigmoid
    Sigmoid,
    /// no nonlinearity
    Identity,
}

impl Activation {
    /// Applies the activation to plain values (inference, no tape).
    pub fn apply_values<T: Element>(self, x: Tensor<T>) -> Tensor<T> {
        match self {
            Activation::Relu => UnaryOp::Relu.apply(&x),
            Activation::Tanh => UnaryOp::Tanh.apply(&x),
            Activation::Sigmoid => UnaryOp::Sigmoid.apply(&x),
            Activation::Identity => x,
        }
    }

    /// Applies the activation.
    pub fn apply<'t, T: Element>(self, x: Var<'t, T>) -> Var<'t, T> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Identity => x,
        }
    }
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales
/// the rest by `1/(1−p)`; in evaluation, the identity.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
}

/// Fills `d` with `scale` where a uniform draw in `[0, 1)` falls below `keep`, else zero:
/// the draws of `rng.random::<f64>()` (the top 53 bits of each `u64` times 2⁻⁵³), taken
/// from the generator in blocks and compared as integers, so the mask is the one a draw
/// per element gives, at a fraction of the cost.
fn keep_mask<T: Element>(rng: &mut ChaCha8Rng, keep: f64, scale: T, d: &mut [T]) {
    // m·2⁻⁵³ < keep ⟺ m < keep·2⁵³ ⟺ m < ⌈keep·2⁵³⌉ for integer m (the scaling is exact)
    let below = (keep * (1u64 << 53) as f64).ceil() as u64;
    let mut draws = [0u64; 256];
    for chunk in d.chunks_mut(draws.len()) {
        let draws = &mut draws[..chunk.len()];
        rng.fill(draws);
        for (v, &u) in chunk.iter_mut().zip(draws.iter()) {
            *v = if u >> 11 < below { scale } else { T::zero() };
        }
    }
}

impl Dropout {
    /// Applies dropout according to `ctx`.
    pub fn forward<'t, T: Element>(
        &self,
        x: Var<'t, T>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        // a dropout of nothing does not ask the mode, so a model with it stays replayable
        if self.p == 0.0 || !ctx.is_training() {
            return Ok(x);
        }
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::invalid(
                "dropout",
                format!("probability {} is not in [0, 1)", self.p),
            ));
        }
        let keep = 1.0 - self.p;
        let scale = T::of(1.0 / keep);
        let rng = ctx.rng();
        let mask = Tensor::build(&x.shape(), |d| keep_mask(rng, keep, scale, d));
        x.mul(x.tape().constant(mask))
    }
}

/// A lookup table of `num` vectors of size `dim`.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The table `[num, dim]`.
    pub table: ParamId,
}

impl Embedding {
    /// Adds `name.weight` initialised N(0, 1), as in PyTorch.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        name: &str,
        num: usize,
        dim: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        Ok(Embedding {
            table: store.add(
                format!("{name}.weight"),
                Tensor::randn_with(&[num, dim], rng)?,
            )?,
        })
    }

    /// The rows `indices` of the table, `[indices.len(), dim]`.
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        indices: &[usize],
    ) -> Result<Var<'t, T>> {
        p[self.table].index_select(0, indices)
    }
}

/// A model that maps rows of features `[batch, features]` to class logits `[batch,
/// classes]`: what [`crate::train::Classification`] trains and evaluates, whatever the
/// model family ([`Mlp`], [`super::Cnn`]).
pub trait Classifier<T: Element> {
    /// The logits of `x`, recorded on its tape.
    fn logits<'t>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>>;
    /// The logits of `x` in evaluation mode, as plain values (the numbers of
    /// [`Classifier::logits`] without dropout). By default the forward pass is recorded
    /// on a tape of its own, dropped at the end; a model with a tape-free path
    /// ([`Mlp`]) overrides it.
    fn infer(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let y = self.logits(&p, tape.constant(x.clone()), &mut ForwardCtx::eval())?;
        Ok(y.value())
    }
    /// Opts the model into replayed steps ([`crate::autodiff::Trace`]: a step recorded
    /// once, then run again on new batches without recording): what its graph depends on
    /// besides its parameters' and inputs' shapes (its activation, say), or `None` (the
    /// default) to be recorded on the tape every step. A model whose forward pass asks
    /// [`ForwardCtx`] for its mode or its generator (dropout) is trained on the tape
    /// whatever this says, and so is one whose recording fails; the run's report says so.
    fn replay_graph(&self) -> Option<String> {
        None
    }
    /// Rows evaluated at once (bounds the memory of an evaluation).
    fn eval_chunk(&self) -> usize {
        2048
    }
}

impl<T: Element> Classifier<T> for Mlp {
    fn logits<'t>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        self.forward(p, x, ctx)
    }
    fn infer(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        Mlp::infer(self, store, x)
    }
    fn replay_graph(&self) -> Option<String> {
        self.dropout
            .is_none_or(|d| d.p == 0.0)
            .then(|| format!("mlp {:?} {:?}", self.sizes, self.activation))
    }
}

/// A multilayer perceptron: Linear layers with an activation (and optional dropout)
/// between them, none after the last.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The layers, input to output.
    pub layers: Vec<Linear>,
    /// The hidden activation.
    pub activation: Activation,
    /// Dropout after each hidden activation.
    pub dropout: Option<Dropout>,
    /// Layer sizes, input first.
    pub sizes: Vec<usize>,
}

impl Mlp {
    /// Builds layers `sizes[0] → sizes[1] → ... → sizes[n]`, named `layer0`, `layer1`...
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        sizes: &[usize],
        activation: Activation,
        init: Init,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(Error::invalid(
                "Mlp::new",
                format!("layer sizes {sizes:?} need at least two positive entries"),
            ));
        }
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(store, &format!("layer{i}"), w[0], w[1], init, rng))
            .collect::<Result<_>>()?;
        Ok(Mlp {
            layers,
            activation,
            dropout: None,
            sizes: sizes.to_vec(),
        })
    }

    /// Adds dropout with probability `p` after each hidden activation.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = (p > 0.0).then_some(Dropout { p });
        self
    }

    /// The logits for a batch `x: [batch, sizes[0]]` computed on plain values, without a
    /// tape (evaluation and prediction): the same kernels as [`Mlp::forward`] in
    /// evaluation mode, so the same numbers.
    pub fn infer<T: Element>(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.infer(store, &h)?;
            if i + 1 < self.layers.len() {
                h = self.activation.apply_values(h);
            }
        }
        Ok(h)
    }

    /// The logits for a batch `x: [batch, sizes[0]]`.
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        let tape = x.tape();
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = tape.scoped(&format!("layer{i}"), || -> Result<Var<'t, T>> {
                let mut h = layer.forward(p, h)?;
                if i + 1 < self.layers.len() {
                    h = self.activation.apply(h);
                    if let Some(d) = &self.dropout {
                        h = d.forward(h, ctx)?;
                    }
                }
                Ok(h)
            })?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::Tape;

    #[test]
    fn inference_without_a_tape_gives_the_taped_numbers() {
        for act in [Activation::Relu, Activation::Tanh, Activation::Sigmoid] {
            let mut s = ParamStore::<f32>::new();
            let m = Mlp::new(
                &mut s,
                &[5, 7, 6, 3],
                act,
                Init::TorchDefault,
                &mut crate::nn::rng(2),
            )
            .unwrap();
            let x = Tensor::<f64>::randn(&[9, 5], 3).unwrap().cast::<f32>();
            let labels = [0, 1, 2, 2, 1, 0, 0, 1, 2];
            let tape = Tape::new();
            let p = s.leaves(&tape);
            let logits = m
                .forward(&p, tape.constant(x.clone()), &mut ForwardCtx::eval())
                .unwrap();
            let plain = m.infer(&s, &x).unwrap();
            assert_eq!(logits.value().data(), plain.data());
            let taped = crate::nn::cross_entropy(logits, &labels)
                .unwrap()
                .item()
                .unwrap();
            let values = crate::nn::cross_entropy_values(&plain, &labels).unwrap();
            assert_eq!(taped.to_bits(), values.to_bits());
            let target = Tensor::<f64>::randn(&[9, 3], 4).unwrap().cast::<f32>();
            let taped = crate::nn::mse(logits, tape.constant(target.clone())).unwrap();
            let values = crate::nn::mse_values(&plain, &target).unwrap();
            assert_eq!(taped.item().unwrap().to_bits(), values.to_bits());
        }
    }

    #[test]
    fn mlp_shapes_names_and_seeded_init() {
        let mut s = ParamStore::<f32>::new();
        let m = Mlp::new(
            &mut s,
            &[4, 8, 3],
            Activation::Relu,
            Init::HeUniform,
            &mut crate::nn::rng(1),
        )
        .unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s.name(m.layers[1].weight), "layer1.weight");
        let mut s2 = ParamStore::<f32>::new();
        Mlp::new(
            &mut s2,
            &[4, 8, 3],
            Activation::Relu,
            Init::HeUniform,
            &mut crate::nn::rng(1),
        )
        .unwrap();
        assert_eq!(s.get(ParamId(0)), s2.get(ParamId(0)));
        // a different seed gives different weights
        let mut s3 = ParamStore::<f32>::new();
        let m3 = Mlp::new(
            &mut s3,
            &[4, 8, 3],
            Activation::Relu,
            Init::HeUniform,
            &mut crate::nn::rng(2),
        )
        .unwrap();
        assert_ne!(s.get(m.layers[0].weight), s3.get(m3.layers[0].weight));
        assert_ne!(s.get(m.layers[1].weight), s3.get(m3.layers[1].weight));
        // He uniform: weights [fan_out, fan_in] (PyTorch's layout) in U(±√(6 / fan_in)), biases zero
        for (layer, fan_in) in m.layers.iter().zip([4.0f64, 8.0]) {
            let bound = (6.0 / fan_in).sqrt();
            let w = s.get(layer.weight);
            assert_eq!(w.shape()[1], fan_in as usize);
            let max = w
                .data()
                .iter()
                .map(|v| v.abs() as f64)
                .fold(0.0, crate::tensor::nan_max);
            assert!(max <= bound * (1.0 + 1e-6), "max |w| {max} > {bound}");
            // the full range is used (all of 24+ draws below bound/2 has odds < 2⁻²⁴)
            assert!(max > bound / 2.0, "max |w| {max} vs bound {bound}");
            assert!(s.get(layer.bias.unwrap()).data().iter().all(|&b| b == 0.0));
        }
        let tape = Tape::new();
        let p = s.leaves(&tape);
        let y = m
            .forward(
                &p,
                tape.constant(Tensor::ones(&[5, 4]).unwrap()),
                &mut ForwardCtx::eval(),
            )
            .unwrap();
        assert_eq!(y.shape().as_slice(), &[5, 3]);
        assert!(
            Mlp::new(
                &mut s,
                &[4],
                Activation::Relu,
                Init::HeUniform,
                &mut crate::nn::rng(1)
            )
            .is_err()
        );
    }

    #[test]
    fn dropout_scales_kept_units_and_is_identity_in_eval() {
        let tape = Tape::<f64>::new();
        let x = tape.var(Tensor::ones(&[1000]).unwrap());
        let d = Dropout { p: 0.25 };
        let y = d.forward(x, &mut ForwardCtx::train(3)).unwrap().value();
        let kept = y.data().iter().filter(|&&v| v != 0.0).count();
        assert!((700..800).contains(&kept), "{kept}");
        assert!(
            y.data()
                .iter()
                .all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-12)
        );
        let z = d.forward(x, &mut ForwardCtx::eval()).unwrap();
        assert_eq!(z.id(), x.id());
    }

    #[test]
    fn the_dropout_mask_is_the_one_a_draw_per_element_gives() {
        // an odd start and a length that is no multiple of the block, at several rates
        for (keep, len) in [(0.75, 1001), (0.5, 3), (0.1, 700), (1.0 - 1e-9, 513)] {
            let mut blocks = ChaCha8Rng::seed_from_u64(9);
            let mut one_by_one = blocks.clone();
            let _: u32 = blocks.random();
            let _: u32 = one_by_one.random();
            let mut got = vec![0f64; len];
            keep_mask(&mut blocks, keep, 2.0, &mut got);
            let want: Vec<f64> = (0..len)
                .map(|_| {
                    if one_by_one.random::<f64>() < keep {
                        2.0
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(got, want, "keep {keep}");
            assert_eq!(blocks.random::<u64>(), one_by_one.random::<u64>());
        }
    }

    #[test]
    fn embedding_gradient_accumulates_repeated_rows() {
        let mut s = ParamStore::<f64>::new();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let e = Embedding::new(&mut s, "emb", 5, 3, &mut rng).unwrap();
        let tape = Tape::new();
        let p = s.leaves(&tape);
        let y = e.forward(&p, &[1, 1, 4]).unwrap().sum_all();
        let g = tape.backward(y).unwrap();
        let gt = &g[p[e.table]];
        assert_eq!(&gt.data()[3..6], &[2.0, 2.0, 2.0]);
        assert_eq!(&gt.data()[0..3], &[0.0, 0.0, 0.0]);
    }
}
