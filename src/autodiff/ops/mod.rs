//! The closed set of recorded ops. Each family file holds, side by side, the `Var`
//! methods that run the forward kernel and record a node, the reverse rule (VJP) of
//! every op in the family, written once for first and second order (over the table's
//! `Number` for elementwise ops, over `RuleValue` for the rest), its forward rule
//! (JVP), and its tests.

pub(crate) mod conv;
pub(crate) mod custom;
pub(crate) mod elementwise;
pub(crate) mod matmul;
pub(crate) mod pool;
pub(crate) mod recurrent;
pub(crate) mod reduce;
pub(crate) mod shape;
pub(crate) mod transformer;

pub use custom::CustomOp;
pub use transformer::AttentionMask;

use crate::error::{Error, Result};
use crate::tensor::{BinaryOp, Element, Shape, Tensor, UnaryOp};
use std::sync::Arc;

/// The tangents of an op's inputs in forward mode, one per input; `None` is a zero
/// tangent (an input that does not depend on the seeded ones).
pub type Tangents<'a, T> = [Option<&'a Tensor<T>>];

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
pub(crate) fn refs<'a, 't, T: Element>(
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
}

/// The rules of one family of recorded ops, written side by side in the family's file.
/// Every engine reaches them through [`Op`]'s methods, which the list of families below
/// dispatches: a new family is a file implementing this trait and one row of the list.
pub(crate) trait Family<T: Element> {
    /// The op's name in printed graphs.
    fn name(op: &Op<T>) -> &str;
    /// Forward mode for one node: the output tangent from the input tangents (`None` =
    /// zero). Only called when at least one input has a tangent.
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>>;
    /// The chain rule for one node: the output gradient `g` mapped to each input that
    /// `needs` asks for.
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        g: &Tensor<T>,
        needs: &[bool],
    ) -> Result<Grads<T>>;
    /// The chain rule recorded as ops on the tape (`g` is a variable), so that the sweep
    /// it is part of can be differentiated again.
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[super::Var<'t, T>],
        out: super::Var<'t, T>,
        g: super::Var<'t, T>,
        needs: &[bool],
    ) -> Result<VarGrads<'t, T>>;
    /// Replay: the op run again on new inputs into `slot` (the node's value of the last
    /// replay, whose buffer the family may reuse), with the recorded output `shape`,
    /// refreshing what the op keeps for its reverse rule.
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        shape: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()>;
}

/// The list of families: which variants of [`Op`] each one's rules serve. It generates
/// `Op`'s methods, each one `match` over this list (the compiler checks that every
/// variant has its family).
macro_rules! op_families {
    ($($ops:pat => $family:ty,)*) => {
        impl<T: Element> Op<T> {
            pub(crate) fn name(&self) -> &str {
                match self { $($ops => <$family as Family<T>>::name(self),)* }
            }

            /// See [`Family::jvp`].
            pub(crate) fn jvp(
                &self,
                ins: &[&Tensor<T>],
                out: &Tensor<T>,
                t: &Tangents<T>,
            ) -> Result<Tensor<T>> {
                match self { $($ops => <$family as Family<T>>::jvp(self, ins, out, t),)* }
            }

            /// See [`Family::vjp`].
            pub(crate) fn vjp(
                &self,
                ins: &[&Tensor<T>],
                out: &Tensor<T>,
                g: &Tensor<T>,
                needs: &[bool],
            ) -> Result<Grads<T>> {
                match self { $($ops => <$family as Family<T>>::vjp(self, ins, out, g, needs),)* }
            }

            /// See [`Family::vjp_recorded`].
            pub(crate) fn vjp_recorded<'t>(
                &self,
                ins: &[super::Var<'t, T>],
                out: super::Var<'t, T>,
                g: super::Var<'t, T>,
                needs: &[bool],
            ) -> Result<VarGrads<'t, T>> {
                match self {
                    $($ops => <$family as Family<T>>::vjp_recorded(self, ins, out, g, needs),)*
                }
            }

            /// See [`Family::forward`].
            pub(crate) fn forward(
                &mut self,
                ins: &[&Tensor<T>],
                shape: &[usize],
                slot: &mut Option<Tensor<T>>,
            ) -> Result<()> {
                match self {
                    $($ops => <$family as Family<T>>::forward(self, ins, shape, slot),)*
                }
            }
        }
    };
}

op_families! {
    Op::Leaf | Op::Constant => Leaves,
    Op::Unary(_) | Op::Binary(_) | Op::Where(_) => elementwise::Elementwise,
    Op::Sum { .. }
    | Op::Mean { .. }
    | Op::Max { .. }
    | Op::LogSumExp { .. }
    | Op::Softmax(_)
    | Op::LogSoftmax(_) => reduce::Reductions,
    Op::MatMul { .. } => matmul::MatMul,
    Op::Reshape
    | Op::Permute(_)
    | Op::BroadcastTo
    | Op::Narrow { .. }
    | Op::Concat { .. }
    | Op::IndexSelect { .. }
    | Op::Gather { .. } => shape::ShapeOps,
    Op::LayerNorm { .. } | Op::Attention(_) => transformer::Transformer,
    Op::Conv2d(_) => conv::Convolution,
    Op::MaxPool2d { .. } | Op::AvgPool2d(_) => pool::Pooling,
    Op::Custom(_) => custom::Custom,
}

/// Leaves and constants: what the other ops start from. They have no rule; the sweep
/// stops at them, and a replay sets their values instead of computing them.
struct Leaves;

impl<T: Element> Family<T> for Leaves {
    fn name(op: &Op<T>) -> &str {
        match op {
            Op::Leaf => "leaf",
            _ => "constant",
        }
    }
    fn jvp(_: &Op<T>, _: &[&Tensor<T>], _: &Tensor<T>, _: &Tangents<T>) -> Result<Tensor<T>> {
        unreachable!("a leaf's tangent is seeded, not computed")
    }
    fn vjp(
        _: &Op<T>,
        _: &[&Tensor<T>],
        _: &Tensor<T>,
        _: &Tensor<T>,
        _: &[bool],
    ) -> Result<Grads<T>> {
        Ok(Grads::new())
    }
    fn vjp_recorded<'t>(
        _: &Op<T>,
        _: &[super::Var<'t, T>],
        _: super::Var<'t, T>,
        _: super::Var<'t, T>,
        _: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        Ok(VarGrads::new())
    }
    fn forward(
        _: &mut Op<T>,
        _: &[&Tensor<T>],
        _: &[usize],
        _: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        unreachable!("a replay sets its leaves' values")
    }
}

/// The node's buffer from the last replay, resized to `shape`, for a family that
/// writes its value in place (allocated on the first replay).
pub(crate) fn reused_buffer<'a, T: Element>(
    slot: &'a mut Option<Tensor<T>>,
    shape: &[usize],
) -> &'a mut [T] {
    slot.get_or_insert_with(|| Tensor::zeroed(shape))
        .overwrite(shape)
}

/// The sum of a row, in eight lanes so that the loop vectorises.
#[inline(always)]
pub(crate) fn row_sum<T: Element>(row: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(T::zero(), |s, &v| s + v);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().fold(rest, |s, &a| s + a)
}

/// `Σ a·b` of two rows, in eight lanes so that the loop vectorises.
#[inline(always)]
pub(crate) fn row_dot<T: Element>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest = (ca.remainder().iter().zip(cb.remainder())).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().fold(rest, |s, &v| s + v)
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
