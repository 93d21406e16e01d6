//! The closed set of recorded ops. Each family file holds, side by side, the `Var`
//! methods that run the forward kernel and record a node, the reverse rule (VJP) of
//! every op in the family, written once for first and second order (over the table's
//! `Number` for elementwise ops, over `RuleValue` for the rest), its forward rule
//! (JVP), and its tests.

pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod matmul;
pub(crate) mod pool;
pub(crate) mod recurrent;
pub(crate) mod reduce;
pub(crate) mod shape;
pub(crate) mod transformer;

pub use transformer::AttentionMask;

use crate::error::{Error, Result};
use crate::tensor::{BinaryOp, Element, Shape, Tensor, UnaryOp};
use std::sync::Arc;

/// The tangents of an op's inputs in forward mode, one per input; `None` is a zero
/// tangent (an input that does not depend on the seeded ones).
pub type Tangents<'a, T> = [Option<&'a Tensor<T>>];

/// An op defined outside the library: its forward runs eagerly (the caller supplies the
/// value), and `vjp` maps the output gradient to one gradient per input.
pub trait CustomOp<T: Element>: Send + Sync {
    /// The name shown in printed graphs.
    fn name(&self) -> &str;
    /// The output tangent given the input tangents (`None` = zero); optional. The
    /// default runs [`composed`](Self::composed) in forward mode where the op has a
    /// composition, and is an error otherwise.
    fn jvp(
        &self,
        inputs: &[&Tensor<T>],
        _output: &Tensor<T>,
        tangents: &Tangents<T>,
    ) -> Result<Tensor<T>> {
        let tape = super::Tape::forward_mode();
        let vars = inputs
            .iter()
            .zip(tangents)
            .map(|(&x, t)| match t {
                Some(t) => tape.dual(x.clone(), (*t).clone()),
                None => Ok(tape.var(x.clone())),
            })
            .collect::<Result<Vec<_>>>()?;
        match self.composed(&vars) {
            Some(y) => y?.tangent(),
            None => Err(Error::NoRule {
                op: self.name().to_string(),
            }),
        }
    }
    /// Gradients for each input, given the input values, the output and its gradient.
    fn vjp(
        &self,
        inputs: &[&Tensor<T>],
        output: &Tensor<T>,
        grad: &Tensor<T>,
    ) -> Result<Vec<Tensor<T>>>;
    /// The op written as a composition of built-in ops on `inputs`, computing the same
    /// value as the forward kernel; optional. A sweep that records itself (second order:
    /// [`Tape::backward_recorded`](super::Tape::backward_recorded), [`hvp`](super::hvp))
    /// differentiates this composition where first order runs `vjp`, so an op with one
    /// gets Hessian-vector products without a second copy of its derivative. `None`, the
    /// default: the op's gradient cannot be differentiated.
    fn composed<'t>(&self, _inputs: &[super::Var<'t, T>]) -> Option<Result<super::Var<'t, T>>> {
        None
    }
}

/// What a node did. Only what the derivative needs is stored beyond the node's inputs
/// and value (an axis list, a mask, indices).
#[derive(Clone)]
pub(crate) enum Op<T: Element> {
    Leaf,
    Constant,
    Unary(UnaryOp),
    Binary(BinaryOp),
    Where(Box<Tensor<T>>),
    Sum {
        axes: Box<[usize]>,
    },
    Mean {
        axes: Box<[usize]>,
    },
    Max {
        axes: Box<[usize]>,
    },
    LogSumExp {
        axes: Box<[usize]>,
    },
    Softmax(usize),
    LogSoftmax(usize),
    /// `op(a)·op(b)`, `op` swapping the last two axes where the flag is set (flags are
    /// set only on 2-D operands, by the recorded matmul rule, to read them in place).
    MatMul {
        ta: bool,
        tb: bool,
    },
    Reshape,
    Permute(Box<[usize]>),
    BroadcastTo,
    Narrow {
        axis: usize,
        start: usize,
    },
    Concat {
        axis: usize,
    },
    IndexSelect {
        axis: usize,
        indices: Arc<[usize]>,
    },
    Gather {
        axis: usize,
        index: Arc<[usize]>,
    },
    /// Layer normalisation over the last axis; inputs `x`, then the weight and the bias
    /// where `affine` says so. Keeps each row's mean and 1/σ, `[rows, 2]`.
    LayerNorm {
        eps: f64,
        affine: (bool, bool),
        stats: Arc<Tensor<T>>,
    },
    /// Scaled dot-product attention of `q, k, v`; keeps the probabilities.
    Attention(Box<AttentionRecord<T>>),
    /// 2-D convolution of `x, w` (and a bias when there are three inputs).
    Conv2d(Box<conv::Conv2dOptions>),
    /// Max pooling; keeps, per output element, the input index of its window's maximum.
    MaxPool2d {
        opts: Box<pool::Pool2dOptions>,
        argmax: Arc<[usize]>,
    },
    AvgPool2d(Box<pool::Pool2dOptions>),
    Custom(Arc<dyn CustomOp<T>>),
}

/// What an attention node keeps for its derivative. Boxed in [`Op`] (as are the options
/// of convolution and pooling) so that the common ops' nodes stay small: every node of
/// a tape is as large as its largest variant, and the sweep walks all of them.
#[derive(Clone)]
pub(crate) struct AttentionRecord<T: Element> {
    pub(crate) scale: f64,
    /// Added to the scaled scores: `[T, S]` for every head, or one block per head.
    pub(crate) mask: Option<Arc<Tensor<T>>>,
    /// Query `i` sees keys `0..=i` (the kernels skip the others).
    pub(crate) causal: bool,
    /// `Some(heads)`: one input, the fused projection `[B, T, 3·D]` of this many
    /// heads, and the output `[B, T, D]` ([`super::Var::self_attention`]).
    pub(crate) heads: Option<usize>,
    pub(crate) probs: Arc<Tensor<T>>,
}

pub(crate) type Grads<T> = smallvec::SmallVec<[Option<Tensor<T>>; 2]>;

/// Input gradients recorded on the tape (second order).
pub(crate) type VarGrads<'t, T> = smallvec::SmallVec<[Option<super::Var<'t, T>>; 2]>;

/// References to a node's input variables, for the rules written over [`RuleValue`].
fn refs<'a, 't, T: Element>(
    ins: &'a [super::Var<'t, T>],
) -> smallvec::SmallVec<[&'a super::Var<'t, T>; 4]> {
    ins.iter().collect()
}

/// Input gradients, one per input (`None` where none is needed), in the values a rule
/// is evaluated on.
pub(crate) type RuleGrads<V> = smallvec::SmallVec<[Option<V>; 2]>;

/// The values a reverse rule is written in, so that each rule of the reductions, shape
/// ops and matmul is written once: on tensors it computes the gradient (first order), on
/// variables it records the same computation as ops, so that the gradient can be
/// differentiated again (second order). Weights and masks that are constants of a rule
/// (the maxima of `max`) come from [`RuleValue::tensor`] and enter through
/// [`RuleValue::constant`].
pub(crate) trait RuleValue<T: Element>: Sized + Clone {
    fn shape(&self) -> Shape;
    /// The current value.
    fn tensor(&self) -> Tensor<T>;
    /// `t` as a constant of the rule (on the same tape).
    fn constant(&self, t: Tensor<T>) -> Self;
    fn reshape(&self, shape: &[usize]) -> Result<Self>;
    fn permute(&self, perm: &[usize]) -> Result<Self>;
    fn broadcast_to(&self, shape: &[usize]) -> Result<Self>;
    /// Sums broadcast axes away (the adjoint of broadcasting).
    fn sum_to_shape(&self, shape: &[usize]) -> Result<Self>;
    fn sum_keepdim(&self, axes: &[usize]) -> Result<Self>;
    fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self>;
    fn mul(&self, other: &Self) -> Result<Self>;
    fn sub(&self, other: &Self) -> Result<Self>;
    fn exp(&self) -> Self;
    fn mul_scalar(&self, k: f64) -> Self;
    /// `op(self)·op(other)`, `op` swapping the last two axes where asked.
    fn matmul_transposed(
        &self,
        other: &Self,
        transpose_self: bool,
        transpose_other: bool,
    ) -> Result<Self>;
    /// The adjoint of `narrow`: `self` placed at `start` along `axis` in zeros of `shape`.
    fn narrow_adjoint(&self, shape: &[usize], axis: usize, start: usize) -> Result<Self>;
    /// The adjoint of `index_select`: rows added into zeros of `shape`.
    fn index_select_adjoint(&self, shape: &[usize], axis: usize, indices: &[usize])
    -> Result<Self>;
    /// The adjoint of `gather`: entries added into zeros of `shape`.
    fn gather_adjoint(&self, shape: &[usize], axis: usize, index: &[usize]) -> Result<Self>;
}

impl<T: Element> RuleValue<T> for Tensor<T> {
    fn shape(&self) -> Shape {
        Shape::from_slice(Tensor::shape(self))
    }
    fn tensor(&self) -> Tensor<T> {
        self.clone()
    }
    fn constant(&self, t: Tensor<T>) -> Self {
        t
    }
    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        Tensor::reshape(self, shape)
    }
    fn permute(&self, perm: &[usize]) -> Result<Self> {
        Tensor::permute(self, perm)
    }
    fn broadcast_to(&self, shape: &[usize]) -> Result<Self> {
        Tensor::broadcast_to(self, shape)
    }
    fn sum_to_shape(&self, shape: &[usize]) -> Result<Self> {
        Tensor::sum_to_shape(self, shape)
    }
    fn sum_keepdim(&self, axes: &[usize]) -> Result<Self> {
        self.sum(axes, true)
    }
    fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        Tensor::narrow(self, axis, start, len)
    }
    fn mul(&self, other: &Self) -> Result<Self> {
        Tensor::mul(self, other)
    }
    fn sub(&self, other: &Self) -> Result<Self> {
        Tensor::sub(self, other)
    }
    fn exp(&self) -> Self {
        Tensor::exp(self)
    }
    fn mul_scalar(&self, k: f64) -> Self {
        Tensor::mul_scalar(self, k)
    }
    fn matmul_transposed(&self, other: &Self, ta: bool, tb: bool) -> Result<Self> {
        Tensor::matmul_transposed(self, other, ta, tb)
    }
    fn narrow_adjoint(&self, shape: &[usize], axis: usize, start: usize) -> Result<Self> {
        Ok(crate::tensor::narrow_adjoint(self, shape, axis, start))
    }
    fn index_select_adjoint(
        &self,
        shape: &[usize],
        axis: usize,
        indices: &[usize],
    ) -> Result<Self> {
        Ok(crate::tensor::index_select_adjoint(
            self, shape, axis, indices,
        ))
    }
    fn gather_adjoint(&self, shape: &[usize], axis: usize, index: &[usize]) -> Result<Self> {
        Ok(crate::tensor::gather_adjoint(self, shape, axis, index))
    }
}

impl<'t, T: Element> RuleValue<T> for super::Var<'t, T> {
    fn shape(&self) -> Shape {
        super::Var::shape(self)
    }
    fn tensor(&self) -> Tensor<T> {
        self.value()
    }
    fn constant(&self, t: Tensor<T>) -> Self {
        self.tape.constant(t)
    }
    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        super::Var::reshape(*self, shape)
    }
    fn permute(&self, perm: &[usize]) -> Result<Self> {
        super::Var::permute(*self, perm)
    }
    fn broadcast_to(&self, shape: &[usize]) -> Result<Self> {
        super::Var::broadcast_to(*self, shape)
    }
    fn sum_to_shape(&self, shape: &[usize]) -> Result<Self> {
        elementwise::sum_to_shape(*self, shape)
    }
    fn sum_keepdim(&self, axes: &[usize]) -> Result<Self> {
        self.sum(axes, true)
    }
    fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        super::Var::narrow(*self, axis, start, len)
    }
    fn mul(&self, other: &Self) -> Result<Self> {
        super::Var::mul(*self, *other)
    }
    fn sub(&self, other: &Self) -> Result<Self> {
        super::Var::sub(*self, *other)
    }
    fn exp(&self) -> Self {
        super::Var::exp(*self)
    }
    fn mul_scalar(&self, k: f64) -> Self {
        super::Var::mul_scalar(*self, k)
    }
    fn matmul_transposed(&self, other: &Self, ta: bool, tb: bool) -> Result<Self> {
        if self.shape().len() == 2 && other.shape().len() == 2 {
            return self.matmul_in_layouts(*other, ta, tb);
        }
        let swap = |v: Self, t: bool| -> Result<Self> {
            let nd = v.shape().len();
            if t {
                v.transpose(nd - 2, nd - 1)
            } else {
                Ok(v)
            }
        };
        swap(*self, ta)?.matmul(swap(*other, tb)?)
    }
    fn narrow_adjoint(&self, shape: &[usize], axis: usize, start: usize) -> Result<Self> {
        shape::narrow_adjoint_recorded(*self, shape, axis, start)
    }
    fn index_select_adjoint(
        &self,
        shape: &[usize],
        axis: usize,
        indices: &[usize],
    ) -> Result<Self> {
        shape::index_select_adjoint_recorded(*self, shape, axis, indices)
    }
    fn gather_adjoint(&self, shape: &[usize], axis: usize, index: &[usize]) -> Result<Self> {
        shape::gather_adjoint_recorded(*self, shape, axis, index)
    }
}

impl<T: Element> Op<T> {
    /// Whether the op is a product: its reverse rule's part for each input is linear
    /// in the gradient and in every other input, and does not depend on that input.
    pub(crate) fn is_multilinear(&self) -> bool {
        matches!(self, Op::MatMul { .. })
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Op::Leaf => "leaf",
            Op::Constant => "constant",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Where(_) => "where",
            Op::Sum { .. } => "sum",
            Op::Mean { .. } => "mean",
            Op::Max { .. } => "max",
            Op::LogSumExp { .. } => "logsumexp",
            Op::Softmax(_) => "softmax",
            Op::LogSoftmax(_) => "log_softmax",
            Op::MatMul { .. } => "matmul",
            Op::Reshape => "reshape",
            Op::Permute(_) => "permute",
            Op::BroadcastTo => "broadcast_to",
            Op::Narrow { .. } => "narrow",
            Op::Concat { .. } => "concat",
            Op::IndexSelect { .. } => "index_select",
            Op::Gather { .. } => "gather",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Attention(a) if a.heads.is_none() => "attention",
            Op::Attention(_) => "self_attention",
            Op::Conv2d(_) => "conv2d",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::Custom(c) => c.name(),
        }
    }

    /// The local derivative with respect to input `k`, as a formula.
    pub(crate) fn derivative_formula(&self, k: usize) -> String {
        match self {
            Op::Unary(u) => u.derivative_formula().to_string(),
            Op::Binary(b) => {
                let (fa, fb) = b.derivative_formulas();
                if k == 0 { fa } else { fb }.to_string()
            }
            _ => "1".to_string(),
        }
    }

    /// Forward mode for one node: the output tangent from the input tangents. Only
    /// called when at least one input has a tangent.
    pub(crate) fn jvp(
        &self,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        t: &Tangents<T>,
    ) -> Result<Tensor<T>> {
        let single = || t[0].expect("tangent present");
        match self {
            Op::Leaf | Op::Constant => unreachable!("leaves have no rule"),
            Op::Unary(_) | Op::Binary(_) | Op::Where(_) => elementwise::jvp(self, ins, out, t),
            Op::Sum { .. }
            | Op::Mean { .. }
            | Op::Max { .. }
            | Op::LogSumExp { .. }
            | Op::Softmax(_)
            | Op::LogSoftmax(_) => reduce::jvp(self, ins, out, single()),
            Op::MatMul { ta, tb } => matmul::jvp(ins, t, *ta, *tb),
            Op::LayerNorm { .. } | Op::Attention(_) => transformer::jvp(self, ins, t),
            Op::Conv2d(opts) => conv::jvp(**opts, ins, t),
            Op::MaxPool2d { .. } | Op::AvgPool2d(_) => pool::jvp(self, out, t),
            Op::Custom(c) => {
                let t = c.jvp(ins, out, t)?;
                if t.shape() != out.shape() {
                    return Err(Error::shape_detail(
                        "jvp",
                        out.shape(),
                        t.shape(),
                        format!(
                            "the forward rule of custom op '{}' returned a tangent of the second shape for an output of the first",
                            c.name()
                        ),
                    ));
                }
                Ok(t)
            }
            _ => shape::jvp(self, ins, out, t),
        }
    }

    /// The chain rule for one node recorded as ops on the tape (`g` is a variable), so
    /// that the sweep it is part of can be differentiated again.
    pub(crate) fn vjp_recorded<'t>(
        &self,
        ins: &[super::Var<'t, T>],
        out: super::Var<'t, T>,
        g: super::Var<'t, T>,
        needs: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        match self {
            Op::Leaf | Op::Constant => Ok(VarGrads::new()),
            Op::Unary(_) | Op::Binary(_) | Op::Where(_) => {
                elementwise::vjp_recorded(self, ins, out, g, needs)
            }
            Op::Sum { .. }
            | Op::Mean { .. }
            | Op::Max { .. }
            | Op::LogSumExp { .. }
            | Op::Softmax(_)
            | Op::LogSoftmax(_) => reduce::vjp(self, &refs(ins), &out, &g),
            Op::MatMul { ta, tb } => matmul::vjp(&refs(ins), &g, needs, *ta, *tb),
            Op::LayerNorm { .. } | Op::Attention(_) => transformer::vjp_recorded(self, ins, out, g),
            Op::Conv2d(opts) => {
                composition_vjp_recorded("conv2d", ins, out, g, |ins| conv::composed(**opts, ins))
            }
            Op::MaxPool2d { .. } | Op::AvgPool2d(_) => {
                let shape = out.shape();
                composition_vjp_recorded(self.name(), ins, out, g, |ins| {
                    pool::composed(self, ins[0], &shape)
                })
            }
            Op::Custom(c) => custom_vjp_recorded(c.as_ref(), ins, out, g),
            _ => shape::vjp(self, &refs(ins), &g),
        }
    }

    /// The chain rule for one node: the output gradient `g` mapped to each input.
    pub(crate) fn vjp(
        &self,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        g: &Tensor<T>,
        needs: &[bool],
    ) -> Result<Grads<T>> {
        match self {
            Op::Leaf | Op::Constant => Ok(Grads::new()),
            Op::Unary(_) | Op::Binary(_) | Op::Where(_) => {
                elementwise::vjp(self, ins, out, g, needs)
            }
            Op::Sum { .. }
            | Op::Mean { .. }
            | Op::Max { .. }
            | Op::LogSumExp { .. }
            | Op::Softmax(_)
            | Op::LogSoftmax(_) => reduce::vjp(self, ins, out, g),
            Op::MatMul { ta, tb } => matmul::vjp(ins, g, needs, *ta, *tb),
            Op::LayerNorm { .. } | Op::Attention(_) => transformer::vjp(self, ins, g, needs),
            Op::Conv2d(opts) => conv::vjp(**opts, ins, g, needs),
            Op::MaxPool2d { .. } | Op::AvgPool2d(_) => pool::vjp(self, ins, g),
            Op::Reshape
            | Op::Permute(_)
            | Op::BroadcastTo
            | Op::Narrow { .. }
            | Op::Concat { .. }
            | Op::IndexSelect { .. }
            | Op::Gather { .. } => shape::vjp(self, ins, g),
            Op::Custom(c) => {
                // a user's rule is checked here, once, so the sweep can trust every rule
                let grads = c.vjp(ins, out, g)?;
                if grads.len() != ins.len() {
                    return Err(Error::invalid(
                        "backward",
                        format!(
                            "the reverse rule of custom op '{}' returned {} gradients for {} inputs",
                            c.name(),
                            grads.len(),
                            ins.len()
                        ),
                    ));
                }
                for (k, (gr, x)) in grads.iter().zip(ins).enumerate() {
                    if gr.shape() != x.shape() {
                        return Err(Error::shape_detail(
                            "backward",
                            x.shape(),
                            gr.shape(),
                            format!(
                                "the reverse rule of custom op '{}' returned a gradient of the second shape for input {k} of the first",
                                c.name()
                            ),
                        ));
                    }
                }
                Ok(grads.into_iter().map(Some).collect())
            }
        }
    }
}

/// A custom op's reverse rule, recorded: the sweep over its composition in built-in ops.
fn custom_vjp_recorded<'t, T: Element>(
    op: &dyn CustomOp<T>,
    ins: &[super::Var<'t, T>],
    out: super::Var<'t, T>,
    g: super::Var<'t, T>,
) -> Result<VarGrads<'t, T>> {
    composition_vjp_recorded(op.name(), ins, out, g, |ins| {
        op.composed(ins).ok_or_else(|| {
            Error::invalid(
                "second order",
                format!(
                    "custom op '{}' has no composition in built-in ops (CustomOp::composed), so its gradient cannot be differentiated",
                    op.name()
                ),
            )
        })?
    })
}

/// A fused op's reverse rule, recorded: the sweep over its composition in built-in ops
/// (recorded on the tape after everything else), from the composition's output seeded
/// with `g` down to the op's inputs.
pub(crate) fn composition_vjp_recorded<'t, T: Element>(
    name: &str,
    ins: &[super::Var<'t, T>],
    out: super::Var<'t, T>,
    g: super::Var<'t, T>,
    compose: impl FnOnce(&[super::Var<'t, T>]) -> Result<super::Var<'t, T>>,
) -> Result<VarGrads<'t, T>> {
    let tape = out.tape;
    let start = u32::try_from(tape.len()).expect("a tape holds at most 2^32 nodes");
    let composed = compose(ins)?;
    if composed.shape() != out.shape() {
        return Err(Error::shape_detail(
            "second order",
            &out.shape(),
            &composed.shape(),
            format!(
                "the composition of op '{name}' has the second shape for an output of the first"
            ),
        ));
    }
    let below = if composed.id < start {
        vec![(composed.id, g)] // the composition returned one of its inputs
    } else {
        tape.sweep_recorded(composed.id, g, start, false)?.below
    };
    if let Some((id, _)) = below.iter().find(|(id, _)| ins.iter().all(|x| x.id != *id)) {
        return Err(Error::invalid(
            "second order",
            format!(
                "the composition of op '{name}' uses variable {id}, which is not among its inputs"
            ),
        ));
    }
    // an input passed twice gets its whole gradient once
    Ok(ins
        .iter()
        .enumerate()
        .map(|(k, x)| {
            let first = ins[..k].iter().all(|p| p.id != x.id);
            let grad = below.iter().find(|(id, _)| *id == x.id);
            grad.filter(|_| first).map(|(_, g)| *g)
        })
        .collect())
}

impl<'t, T: Element> super::Var<'t, T> {
    /// Records a custom op whose forward value the caller computed; an error when it
    /// has no inputs or they belong to different tapes.
    pub fn custom(
        inputs: &[super::Var<'t, T>],
        op: Arc<dyn CustomOp<T>>,
        value: Tensor<T>,
    ) -> Result<super::Var<'t, T>> {
        let tape = inputs
            .first()
            .ok_or_else(|| Error::invalid("custom", "a custom op needs at least one input"))?
            .tape;
        super::Tape::check_inputs("custom", inputs)?;
        Ok(tape.push(Op::Custom(op), inputs, value))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared helpers for the per-op gradient tests.
    use crate::autodiff::{GradcheckOptions, Tape, Var, gradcheck};
    use crate::error::Result;
    use crate::tensor::Tensor;

    /// `2x` as a custom op with a reverse rule only (no forward or second-order rule).
    pub struct Twice;

    impl crate::autodiff::CustomOp<f64> for Twice {
        fn name(&self) -> &str {
            "twice"
        }
        fn vjp(
            &self,
            _: &[&Tensor<f64>],
            _: &Tensor<f64>,
            g: &Tensor<f64>,
        ) -> Result<Vec<Tensor<f64>>> {
            Ok(vec![g.mul_scalar(2.0)])
        }
    }

    /// Checks reverse mode against central differences and fails the test above 1e-6.
    pub fn check<F>(name: &str, inputs: &[Tensor<f64>], f: F)
    where
        F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
    {
        let r = gradcheck(f, inputs, &GradcheckOptions::default()).unwrap();
        assert!(r.passed(1e-6), "{name}: {r:?}");
        assert!(r.max_rel_err <= 1e-6, "{name}: {r:?}");
        assert!(
            r.forward_rel_err.unwrap() <= 1e-6,
            "{name} forward mode: {r:?}"
        );
        assert!(
            r.forward_reverse_rel_err.unwrap() <= 1e-10,
            "{name} forward vs reverse: {r:?}"
        );
    }
}
