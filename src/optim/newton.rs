//! Newton-CG (truncated Newton): each step solves `H d = −g` approximately by conjugate
//! gradients that touch the Hessian only through Hessian-vector products, then takes
//! the step with a backtracking line search. On a smooth convex loss it converges in a
//! handful of steps where first-order methods need hundreds.

use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor, dot_all};

/// Settings of [`newton_cg`].
#[derive(Clone, Debug)]
pub struct NewtonCgOptions {
    /// Newton steps at most.
    pub max_iterations: usize,
    /// Conjugate-gradient iterations (Hessian-vector products) per step at most.
    pub cg_iterations: usize,
    /// A step's CG stops when the residual is below `min(cg_tolerance, √‖g‖)` times the
    /// gradient's norm (loose while far from the minimum, tight near it: the
    /// Eisenstat–Walker forcing term that keeps Newton's fast final convergence).
    pub cg_tolerance: f64,
    /// Stop when the gradient's norm is below this.
    pub gradient_tolerance: f64,
}

impl Default for NewtonCgOptions {
    fn default() -> Self {
        NewtonCgOptions {
            max_iterations: 50,
            cg_iterations: 50,
            cg_tolerance: 0.5,
            gradient_tolerance: 1e-6,
        }
    }
}

/// What [`newton_cg`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NewtonCgReport {
    /// Newton steps taken.
    pub iterations: usize,
    /// Hessian-vector products used in all.
    pub hessian_products: usize,
    /// Loss evaluations with gradients, line search included.
    pub gradient_evaluations: usize,
    /// The loss before each step, and after the last.
    pub losses: Vec<f64>,
    /// The gradient's norm at the end.
    pub gradient_norm: f64,
}

/// `a + k·b` for lists of tensors of the same shapes.
fn plus<T: Element>(a: &[Tensor<T>], k: f64, b: &[Tensor<T>]) -> Result<Vec<Tensor<T>>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.add(&y.mul_scalar(k)))
        .collect()
}

/// Minimises a loss from `x` in place. `value_grad(x)` gives the loss and its gradient;
/// `hv(x, v)` the Hessian-vector product at `x`. Each step runs conjugate gradients on
/// `H d = −g` until the residual is small enough (see [`NewtonCgOptions`]), the iteration budget is
/// spent, or a direction of non-positive curvature appears (then the step so far is
/// used, or the steepest-descent direction if there is none yet), and halves the step
/// until the loss falls by at least 10⁻⁴ of the predicted decrease (Armijo). A loss or
/// gradient that is not finite is an error.
pub fn newton_cg<T: Element>(
    mut value_grad: impl FnMut(&[Tensor<T>]) -> Result<(f64, Vec<Tensor<T>>)>,
    mut hv: impl FnMut(&[Tensor<T>], &[Tensor<T>]) -> Result<Vec<Tensor<T>>>,
    x: &mut Vec<Tensor<T>>,
    opts: &NewtonCgOptions,
) -> Result<NewtonCgReport> {
    let mut report = NewtonCgReport {
        iterations: 0,
        hessian_products: 0,
        gradient_evaluations: 0,
        losses: Vec::new(),
        gradient_norm: f64::NAN,
    };
    let (mut f, mut g) = value_grad(x)?;
    report.gradient_evaluations += 1;
    loop {
        let gnorm = dot_all(&g, &g).sqrt();
        report.losses.push(f);
        report.gradient_norm = gnorm;
        if !(f.is_finite() && gnorm.is_finite()) {
            return Err(Error::NonFinite(format!(
                "Newton-CG: the loss is {f} and the gradient norm {gnorm} at step {}",
                report.iterations
            )));
        }
        if gnorm <= opts.gradient_tolerance || report.iterations == opts.max_iterations {
            return Ok(report);
        }
        // conjugate gradients on H d = −g, from d = 0
        let mut d: Vec<Tensor<T>> = g.iter().map(Tensor::zeros_like).collect();
        let mut r: Vec<Tensor<T>> = g.iter().map(|t| t.neg()).collect();
        let mut p = r.clone();
        let mut rr = dot_all(&r, &r);
        let forcing = opts.cg_tolerance.min(gnorm.sqrt());
        for j in 0..opts.cg_iterations {
            let hp = hv(x, &p)?;
            report.hessian_products += 1;
            let php = dot_all(&p, &hp);
            if !php.is_finite() {
                return Err(Error::NonFinite(format!("Newton-CG: p·Hp became {php}")));
            }
            if php <= 0.0 {
                if j == 0 {
                    d = r.clone();
                }
                break;
            }
            let alpha = rr / php;
            d = plus(&d, alpha, &p)?;
            r = plus(&r, -alpha, &hp)?;
            let next = dot_all(&r, &r);
            if next.sqrt() <= forcing * gnorm {
                break;
            }
            p = plus(&r, next / rr, &p)?;
            rr = next;
        }
        let slope = dot_all(&g, &d);
        let mut t = 1.0;
        let (fx, gx) = loop {
            let trial = plus(x, t, &d)?;
            let (ft, gt) = value_grad(&trial)?;
            report.gradient_evaluations += 1;
            if ft.is_finite() && ft <= f + 1e-4 * t * slope {
                *x = trial;
                break (ft, gt);
            }
            t *= 0.5;
            if t < 1e-10 {
                // no decrease along d: the loss is as low as this precision allows
                report.iterations += 1;
                return Ok(report);
            }
        };
        f = fx;
        g = gx;
        report.iterations += 1;
    }
}

/// Multinomial logistic regression (softmax regression) with an L2 penalty: the convex
/// problem on which [`newton_cg`] is shown against Adam (`examples/newton_cg.rs`).
pub mod logistic {
    use crate::autodiff::{Tape, Var, hvp_only};
    use crate::error::Result;
    use crate::nn::cross_entropy;
    use crate::tensor::Tensor;

    /// Mean cross-entropy of `x·W + b` plus `l2/2 · ‖W‖²`, with `p = [W, b]`.
    pub fn loss<'t>(
        tape: &'t Tape<f64>,
        p: &[Var<'t, f64>],
        x: &Tensor<f64>,
        y: &[usize],
        l2: f64,
    ) -> Result<Var<'t, f64>> {
        let logits = tape.constant(x.clone()).matmul(p[0])?.add(p[1])?;
        let penalty = p[0].mul(p[0])?.sum_all().mul_scalar(0.5 * l2);
        cross_entropy(logits, y)?.add(penalty)
    }

    /// The loss and its gradient at `p`.
    pub fn value_grad(
        p: &[Tensor<f64>],
        x: &Tensor<f64>,
        y: &[usize],
        l2: f64,
    ) -> Result<(f64, Vec<Tensor<f64>>)> {
        let tape = Tape::new();
        let vars: Vec<_> = p.iter().map(|t| tape.var(t.clone())).collect();
        let l = loss(&tape, &vars, x, y, l2)?;
        let g = tape.backward(l)?;
        Ok((
            l.item()?,
            vars.iter().map(|&v| g.wrt(v)).collect::<Result<_>>()?,
        ))
    }

    /// The Hessian-vector product at `p` along `v`.
    pub fn hessian_vector(
        p: &[Tensor<f64>],
        v: &[Tensor<f64>],
        x: &Tensor<f64>,
        y: &[usize],
        l2: f64,
    ) -> Result<Vec<Tensor<f64>>> {
        hvp_only(|t, vars| loss(t, vars, x, y, l2), p, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, Standardizer, gather_batch};
    use crate::nn::ParamStore;
    use crate::optim::OptimizerKind;

    #[test]
    fn newton_cg_solves_logistic_regression_on_the_digits_in_a_few_steps() {
        let (train, _) = Dataset::digits().unwrap().split(0.2, 0).unwrap();
        let train = Standardizer::fit(&train).apply(&train).unwrap();
        let rows: Vec<usize> = (0..train.len()).collect();
        let (x, y) = gather_batch(&train, &rows);
        let x: Tensor<f64> = x.cast();
        let l2 = 1e-3;
        let mut p = vec![
            Tensor::zeros(&[64, 10]).unwrap(),
            Tensor::zeros(&[10]).unwrap(),
        ];
        let report = newton_cg(
            |p| logistic::value_grad(p, &x, &y, l2),
            |p, v| logistic::hessian_vector(p, v, &x, &y, l2),
            &mut p,
            &NewtonCgOptions::default(),
        )
        .unwrap();
        assert!(report.gradient_norm <= 1e-6, "{report:?}");
        assert!(report.iterations <= 20, "{report:?}");
        // the losses only fall
        assert!(report.losses.windows(2).all(|w| w[1] <= w[0]), "{report:?}");
        // Adam from the same start, 300 full-batch steps, ends above Newton's minimum
        let mut store = ParamStore::<f64>::new();
        store.add("w", Tensor::zeros(&[64, 10]).unwrap()).unwrap();
        store.add("b", Tensor::zeros(&[10]).unwrap()).unwrap();
        let mut adam = OptimizerKind::Adam.build::<f64>(0.05, None).unwrap();
        let mut last = f64::NAN;
        for _ in 0..300 {
            let q: Vec<Tensor<f64>> = store.iter().map(|(_, _, t)| t.clone()).collect();
            let (l, g) = logistic::value_grad(&q, &x, &y, l2).unwrap();
            last = l;
            let g: Vec<Option<Tensor<f64>>> = g.into_iter().map(Some).collect();
            adam.step(&mut store, &g).unwrap();
        }
        let best = *report.losses.last().unwrap();
        assert!(
            last >= best - 1e-12,
            "Adam {last} below Newton's minimum {best}"
        );
    }

    #[test]
    fn a_non_finite_loss_is_an_error() {
        let mut x = vec![Tensor::<f64>::ones(&[2]).unwrap()];
        let e = newton_cg(
            |_| Ok((f64::NAN, vec![Tensor::ones(&[2]).unwrap()])),
            |_, v| Ok(v.to_vec()),
            &mut x,
            &NewtonCgOptions::default(),
        );
        assert!(e.is_err());
    }
}
