//! Ops defined outside the library ([`CustomOp`]): the caller computes the forward
//! value, the op supplies its reverse rule and optionally its forward rule and a
//! composition in built-in ops (for second order). Their rules are checked here, once,
//! so that the sweep can trust every rule.

use super::{Family, Grads, Op, Tangents, VarGrads, composition_vjp_recorded};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use std::sync::Arc;

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
        let tape = Tape::forward_mode();
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
    /// [`Tape::backward_recorded`], [`hvp`](crate::autodiff::hvp))
    /// differentiates this composition where first order runs `vjp`, so an op with one
    /// gets Hessian-vector products without a second copy of its derivative. `None`, the
    /// default: the op's gradient cannot be differentiated.
    fn composed<'t>(&self, _inputs: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        None
    }
}

impl<'t, T: Element> Var<'t, T> {
    /// Records a custom op whose forward value the caller computed; an error when it
    /// has no inputs or they belong to different tapes.
    pub fn custom(
        inputs: &[Var<'t, T>],
        op: Arc<dyn CustomOp<T>>,
        value: Tensor<T>,
    ) -> Result<Var<'t, T>> {
        let tape = inputs
            .first()
            .ok_or_else(|| Error::invalid("custom", "a custom op needs at least one input"))?
            .tape;
        Tape::check_inputs("custom", inputs)?;
        Ok(tape.push(Op::Custom(op), inputs, value))
    }
}

/// A custom op's reverse rule, recorded: the sweep over its composition in built-in ops.
fn custom_vjp_recorded<'t, T: Element>(
    op: &dyn CustomOp<T>,
    ins: &[Var<'t, T>],
    out: Var<'t, T>,
    g: Var<'t, T>,
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

/// The family of every custom op: the user's rules, each result checked against the
/// shapes it must have.
pub(crate) struct Custom;

fn user_op<T: Element>(op: &Op<T>) -> &dyn CustomOp<T> {
    match op {
        Op::Custom(c) => c.as_ref(),
        _ => unreachable!("dispatched to custom ops only"),
    }
}

impl<T: Element> Family<T> for Custom {
    fn name(op: &Op<T>) -> &str {
        user_op(op).name()
    }

    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        let c = user_op(op);
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

    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        g: &Tensor<T>,
        _needs: &[bool],
    ) -> Result<Grads<T>> {
        let c = user_op(op);
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

    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        out: Var<'t, T>,
        g: Var<'t, T>,
        _needs: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        custom_vjp_recorded(user_op(op), ins, out, g)
    }

    fn forward(
        op: &mut Op<T>,
        _: &[&Tensor<T>],
        _: &[usize],
        _: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        // the caller computes a custom op's value; a replay refuses to record one
        Err(Error::invalid(
            "replay",
            format!(
                "custom op '{}' has no forward kernel to replay",
                user_op(op).name()
            ),
        ))
    }
}
