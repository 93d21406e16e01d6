//! Gradient checking: reverse mode against central finite differences in f64.
//!
//! A non-scalar output `y` is reduced to `L = Σ u ⊙ y` with a fixed random `u`, so one
//! reverse sweep gives `∂L/∂x = uᵀ J`. Small inputs are checked element by element;
//! large ones along one random direction `v`, comparing `⟨∂L/∂x, v⟩` with the
//! directional difference `⟨u, f(x + h v) − f(x − h v)⟩ / 2h`.

use super::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Settings of [`gradcheck`].
#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step, scaled by `max(1, |x|)` per element.
    pub eps: f64,
    /// Inputs with at most this many elements in total are checked element by element.
    pub per_element_limit: usize,
    /// Seed of the output projection `u` and of the random direction.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            per_element_limit: 512,
            seed: 0,
        }
    }
}

/// How the check was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GradcheckMode {
    /// One central difference per input element.
    PerElement,
    /// One central difference along a random direction.
    Direction,
}

/// The outcome of a gradient check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GradcheckReport {
    /// Largest |reverse − finite difference|.
    pub max_abs_err: f64,
    /// Largest |reverse − finite difference| / max(|reverse|, |finite difference|, 1e-3).
    pub max_rel_err: f64,
    /// Which input holds the worst element.
    pub worst_input: usize,
    /// Multi-index of the worst element (per-element mode only).
    pub worst_index: Option<Vec<usize>>,
    /// Reverse-mode value at the worst element (or the directional derivative).
    pub worst_reverse: f64,
    /// Finite-difference value there.
    pub worst_numeric: f64,
    /// Per element or along a direction.
    pub mode: GradcheckMode,
    /// Number of function evaluations used by the finite differences.
    pub evaluations: usize,
    /// Forward mode against central differences along a random direction v:
    /// |⟨u, J v⟩ − ⟨u, f(x + h v) − f(x − h v)⟩ / 2h|, relative (`None` when an op
    /// of `f` has no forward rule).
    pub forward_rel_err: Option<f64>,
    /// Forward against reverse mode: |⟨u, J v⟩ − ⟨Jᵀ u, v⟩|, relative.
    pub forward_reverse_rel_err: Option<f64>,
}

/// The denominator floor of the relative error: below this magnitude the error is
/// effectively absolute (scaled by 1000), so exact zeros do not divide by zero.
const REL_FLOOR: f64 = 1e-3;

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(REL_FLOOR)
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        idx[i] = flat % d;
        flat /= d;
    }
    idx
}

/// ⟨a, b⟩ summed over a list of tensors.
fn dot(a: &[Tensor<f64>], b: &[Tensor<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.data()
                .iter()
                .zip(y.data())
                .map(|(p, q)| p * q)
                .sum::<f64>()
        })
        .sum()
}

/// One standard normal direction per input, from `seed` onwards.
fn random_directions(inputs: &[Tensor<f64>], seed: u64) -> Vec<Tensor<f64>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, x)| Tensor::randn(x.shape(), seed.wrapping_add(i as u64)))
        .collect()
}

/// Checks the reverse-mode gradient of `f` at `inputs` against central differences.
pub fn gradcheck<F>(
    f: F,
    inputs: &[Tensor<f64>],
    opts: &GradcheckOptions,
) -> Result<GradcheckReport>
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
{
    // reverse mode
    let tape = Tape::new();
    let vars: Vec<Var<'_, f64>> = inputs.iter().map(|x| tape.var(x.clone())).collect();
    let y = f(&tape, &vars)?;
    let u = Tensor::<f64>::randn(&y.shape(), opts.seed ^ 0x5EED);
    let grads = tape.backward_with(y, u.clone())?;
    let reverse: Vec<Tensor<f64>> = vars.iter().map(|&v| grads.wrt(v)).collect();

    // f(x) evaluated without recording gradients
    let eval = |xs: &[Tensor<f64>]| -> Result<Tensor<f64>> {
        let tape = Tape::new();
        tape.no_grad(|| {
            let vs: Vec<Var<'_, f64>> = xs.iter().map(|x| tape.constant(x.clone())).collect();
            let y = f(&tape, &vs)?.value();
            if y.shape() != u.shape() {
                return Err(Error::shape("gradcheck", u.shape(), y.shape()));
            }
            Ok(y)
        })
    };
    // ⟨u, f(x⁺) − f(x⁻)⟩ / 2h: subtracting before projecting keeps the outputs that the
    // perturbation does not touch exactly zero, so their rounding error does not count
    let central = |plus: &Tensor<f64>, minus: &Tensor<f64>, h: f64| -> f64 {
        plus.data()
            .iter()
            .zip(minus.data())
            .zip(u.data())
            .map(|((p, m), w)| (p - m) * w)
            .sum::<f64>()
            / (2.0 * h)
    };

    // the central difference along directions `dirs` (one per input), step scaled by
    // the largest input magnitude
    let scale = inputs
        .iter()
        .flat_map(|x| x.data())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    let h = opts.eps * scale;
    let directional = |dirs: &[Tensor<f64>]| -> Result<f64> {
        let shifted = |sign: f64| -> Result<Vec<Tensor<f64>>> {
            inputs
                .iter()
                .zip(dirs)
                .map(|(x, d)| x.add(&d.mul_scalar(sign * h)))
                .collect()
        };
        Ok(central(&eval(&shifted(1.0)?)?, &eval(&shifted(-1.0)?)?, h))
    };

    let total: usize = inputs.iter().map(|x| x.len()).sum();
    let mut report = GradcheckReport {
        max_abs_err: 0.0,
        max_rel_err: 0.0,
        worst_input: 0,
        worst_index: None,
        worst_reverse: 0.0,
        worst_numeric: 0.0,
        mode: GradcheckMode::PerElement,
        evaluations: 0,
        forward_rel_err: None,
        forward_reverse_rel_err: None,
    };
    let record =
        |report: &mut GradcheckReport, input: usize, index: Option<Vec<usize>>, r: f64, n: f64| {
            let (abs, rel) = ((r - n).abs(), rel_err(r, n));
            report.max_abs_err = report.max_abs_err.max(abs);
            if rel > report.max_rel_err || report.evaluations <= 2 {
                report.max_rel_err = report.max_rel_err.max(rel);
                report.worst_input = input;
                report.worst_index = index;
                report.worst_reverse = r;
                report.worst_numeric = n;
            }
        };

    if total <= opts.per_element_limit {
        let mut xs = inputs.to_vec();
        for (i, x) in inputs.iter().enumerate() {
            for k in 0..x.len() {
                let x0 = x.data()[k];
                let h = opts.eps * x0.abs().max(1.0);
                xs[i].data_mut()[k] = x0 + h;
                let plus = eval(&xs)?;
                xs[i].data_mut()[k] = x0 - h;
                let minus = eval(&xs)?;
                xs[i].data_mut()[k] = x0;
                report.evaluations += 2;
                let numeric = central(&plus, &minus, h);
                record(
                    &mut report,
                    i,
                    Some(unravel(k, x.shape())),
                    reverse[i].data()[k],
                    numeric,
                );
            }
        }
    } else {
        report.mode = GradcheckMode::Direction;
        let dirs = random_directions(inputs, opts.seed.wrapping_add(1));
        let numeric = directional(&dirs)?;
        report.evaluations = 2;
        record(&mut report, 0, None, dot(&reverse, &dirs), numeric);
    }
    // forward mode along a random direction, against the directional difference and,
    // through ⟨u, J v⟩ = ⟨Jᵀ u, v⟩, against reverse mode
    let dirs = random_directions(inputs, opts.seed.wrapping_add(1000));
    let ftape = Tape::forward_mode();
    let fvars = inputs
        .iter()
        .zip(&dirs)
        .map(|(x, d)| ftape.dual(x.clone(), d.clone()))
        .collect::<Result<Vec<_>>>()?;
    let jv = match f(&ftape, &fvars)?.tangent() {
        Ok(t) => t,
        // an op without a forward rule (a custom op): report reverse mode only
        Err(Error::Invalid { op: "jvp", .. }) => return Ok(report),
        Err(e) => return Err(e),
    };
    let u_jv = dot(std::slice::from_ref(&jv), std::slice::from_ref(&u));
    let jtu_v = dot(&reverse, &dirs);
    let numeric = directional(&dirs)?;
    report.forward_rel_err = Some(rel_err(u_jv, numeric));
    report.forward_reverse_rel_err = Some(if u_jv == jtu_v {
        0.0
    } else {
        (u_jv - jtu_v).abs() / u_jv.abs().max(jtu_v.abs())
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_wrong_gradient() {
        // a custom op whose VJP is deliberately off by a factor of two must fail the check
        struct Wrong;
        impl crate::autodiff::CustomOp<f64> for Wrong {
            fn name(&self) -> &str {
                "wrong_square"
            }
            fn vjp(
                &self,
                ins: &[&Tensor<f64>],
                _out: &Tensor<f64>,
                g: &Tensor<f64>,
            ) -> Result<Vec<Tensor<f64>>> {
                Ok(vec![ins[0].mul(g)?.mul_scalar(4.0)])
            }
        }
        let op = std::sync::Arc::new(Wrong);
        let x = Tensor::<f64>::randn(&[3], 1);
        let r = gradcheck(
            |_, v| {
                Ok(Var::custom(
                    &[v[0]],
                    op.clone(),
                    v[0].value().mul(&v[0].value())?,
                ))
            },
            &[x],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(r.max_rel_err > 0.4, "{r:?}");
    }

    #[test]
    fn forward_mode_agrees_with_reverse_and_differences() {
        let x = Tensor::<f64>::randn(&[3, 4], 5);
        let w = Tensor::<f64>::randn(&[4, 2], 6);
        let r = gradcheck(
            |_, v| v[0].matmul(v[1])?.tanh().log_softmax(1),
            &[x, w],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(r.forward_rel_err.unwrap() < 1e-6, "{r:?}");
        assert!(r.forward_reverse_rel_err.unwrap() < 1e-10, "{r:?}");
    }

    #[test]
    fn direction_mode_for_large_inputs() {
        let x = Tensor::<f64>::randn(&[40, 30], 2);
        let r = gradcheck(
            |_, v| Ok(v[0].tanh().sum_all()),
            &[x],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert_eq!(r.mode, GradcheckMode::Direction);
        assert!(r.max_rel_err < 1e-6, "{r:?}");
    }
}
