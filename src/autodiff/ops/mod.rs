//! The closed set of recorded ops. Each family file holds, side by side, the `Var`
//! methods that run the forward kernel and record a node, the reverse rule (VJP) of
//! every op in the family, and its tests.

pub(crate) mod elementwise;
pub(crate) mod matmul;
pub(crate) mod recurrent;
pub(crate) mod reduce;
pub(crate) mod shape;

use crate::error::{Error, Result};
use crate::tensor::{BinaryOp, Element, Tensor, UnaryOp};
use std::sync::Arc;

/// An op defined outside the library: its forward runs eagerly (the caller supplies the
/// value), and `vjp` maps the output gradient to one gradient per input.
pub trait CustomOp<T: Element>: Send + Sync {
    /// The name shown in printed graphs.
    fn name(&self) -> &str;
    /// The output tangent given the input tangents (`None` = zero); optional.
    fn jvp(
        &self,
        _inputs: &[&Tensor<T>],
        _output: &Tensor<T>,
        _tangents: &[Option<&Tensor<T>>],
    ) -> Result<Tensor<T>> {
        Err(crate::error::Error::NoRule {
            op: self.name().to_string(),
        })
    }
    /// Gradients for each input, given the input values, the output and its gradient.
    fn vjp(
        &self,
        inputs: &[&Tensor<T>],
        output: &Tensor<T>,
        grad: &Tensor<T>,
    ) -> Result<Vec<Tensor<T>>>;
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
    Sum { axes: Box<[usize]> },
    Mean { axes: Box<[usize]> },
    Max { axes: Box<[usize]> },
    LogSumExp { axes: Box<[usize]> },
    Softmax(usize),
    LogSoftmax(usize),
    MatMul,
    Reshape,
    Permute(Box<[usize]>),
    BroadcastTo,
    Narrow { axis: usize, start: usize },
    Concat { axis: usize },
    IndexSelect { axis: usize, indices: Arc<[usize]> },
    Gather { axis: usize, index: Arc<[usize]> },
    Custom(Arc<dyn CustomOp<T>>),
}

pub(crate) type Grads<T> = smallvec::SmallVec<[Option<Tensor<T>>; 2]>;

/// Input gradients recorded on the tape (second order).
pub(crate) type VarGrads<'t, T> = smallvec::SmallVec<[Option<super::Var<'t, T>>; 2]>;

impl<T: Element> Op<T> {
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
            Op::MatMul => "matmul",
            Op::Reshape => "reshape",
            Op::Permute(_) => "permute",
            Op::BroadcastTo => "broadcast_to",
            Op::Narrow { .. } => "narrow",
            Op::Concat { .. } => "concat",
            Op::IndexSelect { .. } => "index_select",
            Op::Gather { .. } => "gather",
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
        t: &[Option<&Tensor<T>>],
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
            Op::MatMul => matmul::jvp(ins, t),
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
            | Op::LogSoftmax(_) => reduce::vjp_recorded(self, ins, out, g),
            Op::MatMul => matmul::vjp_recorded(ins, g, needs),
            Op::Custom(c) => Err(Error::invalid(
                "second order",
                format!(
                    "custom op '{}' has no reverse rule written in ops, so its gradient cannot be differentiated",
                    c.name()
                ),
            )),
            _ => shape::vjp_recorded(self, ins, g),
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
            Op::MatMul => matmul::vjp(ins, g, needs),
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

impl<'t, T: Element> super::Var<'t, T> {
    /// Records a custom op whose forward value the caller computed.
    pub fn custom(
        inputs: &[super::Var<'t, T>],
        op: Arc<dyn CustomOp<T>>,
        value: Tensor<T>,
    ) -> super::Var<'t, T> {
        let tape = inputs
            .first()
            .expect("a custom op needs at least one input")
            .tape;
        tape.push(Op::Custom(op), inputs, value)
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
