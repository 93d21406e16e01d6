//! Reductions and the softmax family on variables. A reduction's gradient is the output
//! gradient broadcast back over the reduced axes (scaled for mean, routed to the
//! maximum for max, weighted by the softmax for logsumexp).

use super::{Family, Grads, Op, RuleGrads, RuleValue, VarGrads, refs};
use crate::autodiff::Tangents;
use crate::autodiff::Var;
use crate::autodiff::suite::{Case, Domain, LARGE, ScalarForm, random_shape, sample};
use crate::error::Result;
use crate::tensor::{Element, Shape, Tensor, normalize_axes};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The input's shape with the reduced axes set to 1.
fn keepdim_shape(input: &[usize], axes: &[usize]) -> Shape {
    input
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect()
}

/// How a reduction's output depends on each input element: a plain sum (weight 1), a
/// scaled one (mean), or a weight per element (max: the maxima, split evenly at ties, a
/// constant; logsumexp: the softmax `exp(x − y)`). The reverse rule spreads the output
/// gradient times the weight; the forward rule sums the tangent times the weight.
enum Weights<V> {
    Ones,
    Scale(f64),
    Each(V),
}

fn weights<T: Element, V: RuleValue<T>>(op: &Op<T>, x: &V, out: &V) -> Result<Weights<V>> {
    let xs = x.shape();
    Ok(match op {
        Op::Sum { .. } => Weights::Ones,
        Op::Mean { axes } => {
            let count: usize = axes.iter().map(|&a| xs[a]).product();
            Weights::Scale(1.0 / count as f64)
        }
        Op::Max { axes } => {
            // piecewise constant: its own derivative is zero almost everywhere
            let mask = x
                .tensor()
                .eq_mask(&out.tensor().reshape(&keepdim_shape(&xs, axes))?)?;
            Weights::Each(x.constant(mask.div(&mask.sum(axes, true)?)?))
        }
        Op::LogSumExp { axes } => {
            Weights::Each(x.sub(&out.reshape(&keepdim_shape(&xs, axes))?)?.exp())
        }
        _ => unreachable!("not a reduction over axes"),
    })
}

/// The softmax's Jacobian times `v`: `y ⊙ (v − Σ y ⊙ v)`. It is symmetric, so this one
/// formula is both the reverse rule (`v` = the output gradient) and the forward rule
/// (`v` = the input tangent).
fn softmax_rule<T: Element, V: RuleValue<T>>(y: &V, v: &V, axis: usize) -> Result<V> {
    y.mul(&v.sub(&v.mul(y)?.sum_keepdim(&[axis])?)?)
}

/// Reductions over axes and the softmaxes.
pub(crate) struct Reductions;

impl<T: Element> Family<T> for Reductions {
    fn name(op: &Op<T>) -> &str {
        match op {
            Op::Sum { .. } => "sum",
            Op::Mean { .. } => "mean",
            Op::Max { .. } => "max",
            Op::LogSumExp { .. } => "logsumexp",
            Op::Softmax(_) => "softmax",
            _ => "log_softmax",
        }
    }
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        jvp(
            op,
            ins,
            out,
            t[0].expect("a reduction's tangent comes from its input"),
        )
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        g: &Tensor<T>,
        _: &[bool],
    ) -> Result<Grads<T>> {
        vjp(op, ins, out, g)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        out: Var<'t, T>,
        g: Var<'t, T>,
        _: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        vjp(op, &refs(ins), &out, &g)
    }
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        shape: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        let x = ins[0];
        let reduced = |t: Tensor<T>| t.reshape(shape);
        *slot = Some(match op {
            Op::Sum { axes } => reduced(x.sum(axes, false)?)?,
            Op::Mean { axes } => reduced(x.mean(axes, false)?)?,
            Op::Max { axes } => reduced(x.max(axes, false)?)?,
            Op::LogSumExp { axes } => reduced(x.logsumexp(axes, false)?)?,
            Op::Softmax(axis) => x.softmax(*axis)?,
            Op::LogSoftmax(axis) => x.log_softmax(*axis)?,
            _ => unreachable!("not a reduction"),
        });
        Ok(())
    }
}

/// The reverse rule (VJP), written once over [`RuleValue`]: first order on tensors,
/// recorded on variables for second order.
pub(crate) fn vjp<T: Element, V: RuleValue<T>>(
    op: &Op<T>,
    ins: &[&V],
    out: &V,
    g: &V,
) -> Result<RuleGrads<V>> {
    let x = ins[0];
    let xs = x.shape();
    let gx = match op {
        Op::Sum { axes } | Op::Mean { axes } | Op::Max { axes } | Op::LogSumExp { axes } => {
            let g = g.reshape(&keepdim_shape(&xs, axes))?;
            match weights(op, x, out)? {
                Weights::Ones => g.broadcast_to(&xs)?,
                Weights::Scale(k) => g.mul_scalar(k).broadcast_to(&xs)?,
                Weights::Each(w) => g.mul(&w)?,
            }
        }
        Op::Softmax(axis) => softmax_rule(out, g, *axis)?,
        // ∂yᵢ/∂xⱼ = δᵢⱼ − softmaxⱼ: the gradient minus the softmax times its sum
        Op::LogSoftmax(axis) => g.sub(&out.exp().mul(&g.sum_keepdim(&[*axis])?)?)?,
        _ => unreachable!("not a reduction"),
    };
    Ok(smallvec::smallvec![Some(gx)])
}

/// The forward rule (JVP): the tangent through the same weights and Jacobians.
pub(crate) fn jvp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    out: &Tensor<T>,
    t: &Tensor<T>,
) -> Result<Tensor<T>> {
    let x = ins[0];
    Ok(match op {
        Op::Sum { axes } | Op::Mean { axes } | Op::Max { axes } | Op::LogSumExp { axes } => {
            let weighted = match weights(op, x, out)? {
                Weights::Ones => t.clone(),
                Weights::Scale(k) => t.mul_scalar(k),
                Weights::Each(w) => t.mul(&w)?,
            };
            weighted.sum(axes, true)?.reshape(out.shape())?
        }
        Op::Softmax(axis) => softmax_rule(out, t, *axis)?,
        // the transpose of the reverse rule: the tangent minus its softmax-weighted sum
        Op::LogSoftmax(axis) => t.sub(&out.exp().mul(t)?.sum(&[*axis], true)?)?,
        _ => unreachable!("not a reduction"),
    })
}

impl<'t, T: Element> Var<'t, T> {
    fn reduction(self, axes: &[usize], keepdim: bool, name: &'static str) -> Result<Var<'t, T>> {
        let x = self.value();
        let axes: Shape = normalize_axes(name, axes, x.ndim())?.into_iter().collect();
        let (op, y) = match name {
            "sum" => (
                Op::Sum {
                    axes: axes.to_vec().into(),
                },
                x.sum(&axes, keepdim)?,
            ),
            "mean" => (
                Op::Mean {
                    axes: axes.to_vec().into(),
                },
                x.mean(&axes, keepdim)?,
            ),
            "max" => (
                Op::Max {
                    axes: axes.to_vec().into(),
                },
                x.max(&axes, keepdim)?,
            ),
            _ => (
                Op::LogSumExp {
                    axes: axes.to_vec().into(),
                },
                x.logsumexp(&axes, keepdim)?,
            ),
        };
        Ok(self.tape.push(op, &[self], y))
    }

    /// Sum over `axes` (with `keepdim`, the reduced axes stay with size 1).
    pub fn sum(self, axes: &[usize], keepdim: bool) -> Result<Var<'t, T>> {
        self.reduction(axes, keepdim, "sum")
    }

    /// Sum of every element, as a 0-d variable.
    pub fn sum_all(self) -> Var<'t, T> {
        let axes: Vec<usize> = (0..self.shape().len()).collect();
        self.sum(&axes, false).expect("all axes are valid")
    }

    /// Mean over `axes`.
    pub fn mean(self, axes: &[usize], keepdim: bool) -> Result<Var<'t, T>> {
        self.reduction(axes, keepdim, "mean")
    }

    /// Mean of every element, as a 0-d variable.
    pub fn mean_all(self) -> Var<'t, T> {
        let axes: Vec<usize> = (0..self.shape().len()).collect();
        self.mean(&axes, false).expect("all axes are valid")
    }

    /// Maximum over `axes` (the gradient goes to the maximum, split evenly at ties).
    pub fn max(self, axes: &[usize], keepdim: bool) -> Result<Var<'t, T>> {
        self.reduction(axes, keepdim, "max")
    }

    /// Stable `ln Σ exp` over `axes`.
    pub fn logsumexp(self, axes: &[usize], keepdim: bool) -> Result<Var<'t, T>> {
        self.reduction(axes, keepdim, "logsumexp")
    }

    /// Softmax along `axis`.
    pub fn softmax(self, axis: usize) -> Result<Var<'t, T>> {
        normalize_axes("softmax", &[axis], self.shape().len())?;
        let y = self.value().softmax(axis)?;
        Ok(self.tape.push(Op::Softmax(axis), &[self], y))
    }

    /// Log-softmax along `axis` (fused: stable and one node).
    pub fn log_softmax(self, axis: usize) -> Result<Var<'t, T>> {
        normalize_axes("log_softmax", &[axis], self.shape().len())?;
        let y = self.value().log_softmax(axis)?;
        Ok(self.tape.push(Op::LogSoftmax(axis), &[self], y))
    }
}

/// The cases of `chainrule gradcheck` for the reductions and softmaxes.
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, out: &mut Vec<Case>) {
    for i in 0..5 {
        let s = if i == 4 {
            LARGE.to_vec()
        } else {
            random_shape(rng, 1)
        };
        let axes: Vec<usize> = (0..s.len()).filter(|_| rng.random_bool(0.5)).collect();
        let keep = rng.random_bool(0.5);
        let axis = rng.random_range(0..s.len());
        let x = sample(&s, Domain::AwayFromZero, rng);
        let ax = axes.clone();
        out.push(Case {
            op: "sum".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].sum(&ax, keep)),
            scalar: Some(ScalarForm::Sum(axes.clone(), false)),
        });
        let ax = axes.clone();
        out.push(Case {
            op: "mean".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].mean(&ax, keep)),
            scalar: Some(ScalarForm::Sum(axes.clone(), true)),
        });
        let ax = axes.clone();
        out.push(Case {
            op: "max".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].max(&ax, keep)),
            scalar: None,
        });
        out.push(Case {
            op: "logsumexp".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].logsumexp(&axes, keep)),
            scalar: None,
        });
        out.push(Case {
            op: "softmax".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].softmax(axis)),
            scalar: Some(ScalarForm::Softmax(axis, false)),
        });
        out.push(Case {
            op: "log_softmax".into(),
            inputs: vec![x],
            f: Box::new(move |_, v| v[0].log_softmax(axis)),
            scalar: Some(ScalarForm::Softmax(axis, true)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use crate::autodiff::Tape;
    use crate::tensor::Tensor;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_case(rng: &mut ChaCha8Rng) -> (Vec<usize>, Vec<usize>, bool) {
        let rank = rng.random_range(1..4);
        let shape: Vec<usize> = (0..rank).map(|_| rng.random_range(1..5)).collect();
        let axes: Vec<usize> = (0..rank).filter(|_| rng.random_bool(0.5)).collect();
        (shape, axes, rng.random_bool(0.5))
    }

    #[test]
    fn reductions_match_finite_differences() {
        // fixed cases that always reduce real axes (size ≥ 2), kept and dropped
        let fixed: [(&[usize], &[usize], bool); 5] = [
            (&[3, 4, 2], &[0, 2], false),
            (&[3, 4, 2], &[0, 2], true),
            (&[3, 4, 2], &[1], false),
            (&[3, 4], &[0, 1], false),
            (&[5], &[0], true),
        ];
        for (i, &(shape, axes, keepdim)) in fixed.iter().enumerate() {
            let x = Tensor::<f64>::randn(shape, 100 + i as u64).unwrap();
            let expect: Vec<usize> = if keepdim {
                (0..shape.len())
                    .map(|d| if axes.contains(&d) { 1 } else { shape[d] })
                    .collect()
            } else {
                (0..shape.len())
                    .filter(|d| !axes.contains(d))
                    .map(|d| shape[d])
                    .collect()
            };
            let tape = Tape::new();
            let y = tape.var(x.clone()).sum(axes, keepdim).unwrap();
            assert_eq!(
                y.shape().as_slice(),
                &expect[..],
                "{shape:?} {axes:?} {keepdim}"
            );
            check("sum fixed", std::slice::from_ref(&x), |_, v| {
                v[0].sum(axes, keepdim)
            });
            check("mean fixed", std::slice::from_ref(&x), |_, v| {
                v[0].mean(axes, keepdim)
            });
            check("max fixed", std::slice::from_ref(&x), |_, v| {
                v[0].max(axes, keepdim)
            });
            check("logsumexp fixed", std::slice::from_ref(&x), |_, v| {
                v[0].logsumexp(axes, keepdim)
            });
        }
        let x = Tensor::<f64>::randn(&[3, 4, 2], 200).unwrap();
        for axis in 0..3 {
            check("softmax fixed", std::slice::from_ref(&x), |_, v| {
                v[0].softmax(axis)
            });
            check("log_softmax fixed", std::slice::from_ref(&x), |_, v| {
                v[0].log_softmax(axis)
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for trial in 0..8 {
            let (shape, axes, keepdim) = random_case(&mut rng);
            let x = Tensor::<f64>::randn(&shape, trial).unwrap();
            check("sum", std::slice::from_ref(&x), |_, v| {
                v[0].sum(&axes, keepdim)
            });
            check("mean", std::slice::from_ref(&x), |_, v| {
                v[0].mean(&axes, keepdim)
            });
            check("max", std::slice::from_ref(&x), |_, v| {
                v[0].max(&axes, keepdim)
            });
            check("logsumexp", std::slice::from_ref(&x), |_, v| {
                v[0].logsumexp(&axes, keepdim)
            });
            let axis = rng.random_range(0..shape.len());
            check("softmax", std::slice::from_ref(&x), |_, v| {
                v[0].softmax(axis)
            });
            check("log_softmax", &[x], |_, v| v[0].log_softmax(axis));
        }
    }

    #[test]
    fn max_splits_ties_evenly() {
        let tape = Tape::new();
        let x = tape.var(Tensor::<f64>::from_vec(vec![1.0, 3.0, 3.0], &[3]).unwrap());
        let g = tape.backward(x.max(&[0], false).unwrap()).unwrap();
        assert_eq!(g[x].data(), &[0.0, 0.5, 0.5]);
    }

    #[test]
    fn mean_all_gradient_is_uniform() {
        let tape = Tape::new();
        let x = tape.var(Tensor::<f64>::ones(&[2, 5]).unwrap());
        let g = tape.backward(x.mean_all()).unwrap();
        assert!(g[x].data().iter().all(|&v| (v - 0.1).abs() < 1e-15));
    }
}
