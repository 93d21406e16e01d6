//! Gradient checking: reverse mode against central finite differences in f64.
//!
//! A non-scalar output `y` is reduced to `L = Σ u ⊙ y` with a fixed random `u`, so one
//! reverse sweep gives `∂L/∂x = uᵀ J`. Small inputs are checked element by element;
//! large ones along one random direction `v`, comparing `⟨∂L/∂x, v⟩` with the
//! directional difference `⟨u, f(x + h v) − f(x − h v)⟩ / 2h`.

use super::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, dot_all};

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
    /// Largest |reverse − finite difference| (NaN when any value was non-finite).
    pub max_abs_err: f64,
    /// Largest |reverse − finite difference| / max(|reverse|, |finite difference|, 1e-3)
    /// (NaN when any value was non-finite, so `max_rel_err <= tol` fails).
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
    /// of `f` has no forward rule: see `forward_skipped`).
    pub forward_rel_err: Option<f64>,
    /// Forward against reverse mode: |⟨u, J v⟩ − ⟨Jᵀ u, v⟩|, relative.
    pub forward_reverse_rel_err: Option<f64>,
    /// Why forward mode was not checked (an op without a forward rule), if it was not.
    pub forward_skipped: Option<String>,
    /// The first fault that fails the check whatever the tolerance: a non-finite
    /// gradient, difference or tangent, a rule that returned an error or a wrongly shaped
    /// gradient. Names the op where the tape can tell, and the input and index.
    pub failure: Option<String>,
}

/// Forward and reverse mode compute the same numbers by different routes, so they must
/// agree far more tightly than either agrees with finite differences.
pub const FORWARD_REVERSE_TOLERANCE: f64 = 1e-10;

impl GradcheckReport {
    /// True when nothing failed: no fault, and reverse and forward mode within `tolerance`
    /// of the central differences and within [`FORWARD_REVERSE_TOLERANCE`] of each other.
    /// NaN anywhere fails.
    pub fn passed(&self, tolerance: f64) -> bool {
        self.failure.is_none()
            && self.max_rel_err <= tolerance
            && self.forward_rel_err.is_none_or(|e| e <= tolerance)
            && self
                .forward_reverse_rel_err
                .is_none_or(|e| e <= FORWARD_REVERSE_TOLERANCE)
    }

    /// A report before any comparison.
    pub(crate) fn empty(mode: GradcheckMode) -> Self {
        GradcheckReport {
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            worst_input: 0,
            worst_index: None,
            worst_reverse: 0.0,
            worst_numeric: 0.0,
            mode,
            evaluations: 0,
            forward_rel_err: None,
            forward_reverse_rel_err: None,
            forward_skipped: None,
            failure: None,
        }
    }

    /// Records one comparison of reverse mode `r` with the difference `n`.
    fn record(&mut self, input: usize, index: Option<Vec<usize>>, r: f64, n: f64, first: bool) {
        let (abs, rel) = ((r - n).abs(), rel_err(r, n));
        if !(r.is_finite() && n.is_finite()) && self.failure.is_none() {
            let at = index
                .as_ref()
                .map(|i| format!(" at {i:?}"))
                .unwrap_or_else(|| " along a random direction".into());
            self.failure = Some(format!(
                "input {input}{at}: reverse mode gives {r}, the central difference {n}; both must be finite"
            ));
        }
        self.max_abs_err = nan_max(self.max_abs_err, abs);
        // the first NaN stays the worst case: nothing compares above it
        let worse = !self.max_rel_err.is_nan() && (rel.is_nan() || rel > self.max_rel_err);
        if worse || first {
            self.max_rel_err = nan_max(self.max_rel_err, rel);
            self.worst_input = input;
            self.worst_index = index;
            self.worst_reverse = r;
            self.worst_numeric = n;
        }
    }

    /// A reverse-mode fault: the check fails, and so does any `max_rel_err <= tol`.
    pub(crate) fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
        self.max_rel_err = f64::NAN;
        self.max_abs_err = f64::NAN;
    }
}

pub use crate::tensor::nan_max;

/// The denominator floor of the relative error: below this magnitude the error is
/// effectively absolute (scaled by 1000), so exact zeros do not divide by zero.
const REL_FLOOR: f64 = 1e-3;

/// Relative error; NaN when either value is non-finite (infinity is never "close").
fn rel_err(a: f64, b: f64) -> f64 {
    if !(a.is_finite() && b.is_finite()) {
        return f64::NAN;
    }
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

/// One standard normal direction per input, from `seed` onwards.
fn random_directions(inputs: &[Tensor<f64>], seed: u64) -> Result<Vec<Tensor<f64>>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, x)| Tensor::randn(x.shape(), seed.wrapping_add(i as u64)))
        .collect()
}

/// The first non-finite element among `tensors`: (which tensor, its multi-index, value).
fn first_non_finite(tensors: &[Tensor<f64>]) -> Option<(usize, Vec<usize>, f64)> {
    tensors.iter().enumerate().find_map(|(i, t)| {
        t.data()
            .iter()
            .position(|v| !v.is_finite())
            .map(|k| (i, unravel(k, t.shape()), t.data()[k]))
    })
}

/// Checks the reverse-mode gradient of `f` at `inputs` against central differences, and
/// forward mode against both. An error of `f` itself is returned as `Err`; everything
/// that makes the check fail (a wrong value, a non-finite value, a rule that errors) is
/// in the report: call [`GradcheckReport::passed`].
pub fn gradcheck<F>(
    f: F,
    inputs: &[Tensor<f64>],
    opts: &GradcheckOptions,
) -> Result<GradcheckReport>
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
{
    let total: usize = inputs.iter().map(|x| x.len()).sum();
    let mut report = GradcheckReport::empty(if total <= opts.per_element_limit {
        GradcheckMode::PerElement
    } else {
        GradcheckMode::Direction
    });
    if let Some((i, at, v)) = first_non_finite(inputs) {
        report.fail(format!(
            "input {i} at {at:?} is {v}: check at a finite point"
        ));
        return Ok(report);
    }
    let Some((reverse, u)) = reverse_mode(&f, inputs, opts, &mut report)? else {
        return Ok(report);
    };
    let diffs = Differences::new(&f, inputs, &u, opts.eps);
    if report.mode == GradcheckMode::PerElement {
        diffs.per_element(&reverse, opts.eps, &mut report)?;
    } else {
        let dirs = random_directions(inputs, opts.seed.wrapping_add(1))?;
        let numeric = diffs.directional(&dirs)?;
        report.evaluations = 2;
        report.record(0, None, dot_all(&reverse, &dirs), numeric, true);
    }
    forward_mode(&f, &diffs, &reverse, opts, &mut report)?;
    Ok(report)
}

/// Reverse mode's `Jᵀu` per input, and the output weighting `u`.
type Reverse = (Vec<Tensor<f64>>, Tensor<f64>);

/// `Jᵀu` for each input, `u` a random output weighting (returned too); `None` when the
/// check already failed (a non-finite output or gradient, a sweep that errs), which
/// `report` then says, naming the op that made a non-finite gradient.
fn reverse_mode<F>(
    f: &F,
    inputs: &[Tensor<f64>],
    opts: &GradcheckOptions,
    report: &mut GradcheckReport,
) -> Result<Option<Reverse>>
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
{
    let tape = Tape::new();
    let vars: Vec<Var<'_, f64>> = inputs.iter().map(|x| tape.var(x.clone())).collect();
    let y = f(&tape, &vars)?;
    if let Some((_, at, v)) = first_non_finite(std::slice::from_ref(&y.value())) {
        report.fail(format!("f(x) is {v} at output index {at:?}"));
        return Ok(None);
    }
    let u = Tensor::<f64>::randn(&y.shape(), opts.seed ^ 0x5EED)?;
    let reverse: Vec<Tensor<f64>> = match tape.backward_with(y, u.clone()) {
        Ok(grads) => vars.iter().map(|&v| grads.wrt(v)).collect::<Result<_>>()?,
        Err(e) => {
            report.fail(format!("reverse mode: {e}"));
            return Ok(None);
        }
    };
    if let Some((i, at, v)) = first_non_finite(&reverse) {
        // run the sweep again with anomaly detection to name the op that made it
        tape.set_detect_anomaly(true);
        let culprit = match tape.backward_with(y, u.clone()) {
            Err(e) => format!("; {e}"),
            Ok(_) => String::new(),
        };
        report.fail(format!(
            "reverse mode: the gradient of input {i} at {at:?} is {v}{culprit}"
        ));
        (report.worst_input, report.worst_index, report.worst_reverse) = (i, Some(at), v);
        return Ok(None);
    }
    Ok(Some((reverse, u)))
}

/// Central differences of `⟨u, f(x)⟩`, `f` evaluated without recording gradients.
struct Differences<'a, F> {
    f: &'a F,
    inputs: &'a [Tensor<f64>],
    u: &'a Tensor<f64>,
    /// The step along a direction, scaled by the largest input magnitude.
    h: f64,
}

impl<'a, F> Differences<'a, F>
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
{
    fn new(f: &'a F, inputs: &'a [Tensor<f64>], u: &'a Tensor<f64>, eps: f64) -> Self {
        let scale = inputs
            .iter()
            .flat_map(|x| x.data())
            .fold(1.0f64, |m, v| m.max(v.abs()));
        Differences {
            f,
            inputs,
            u,
            h: eps * scale,
        }
    }

    /// `f(xs)`, of the output's shape.
    fn eval(&self, xs: &[Tensor<f64>]) -> Result<Tensor<f64>> {
        let tape = Tape::new();
        tape.no_grad(|| {
            let vs: Vec<Var<'_, f64>> = xs.iter().map(|x| tape.constant(x.clone())).collect();
            let y = (self.f)(&tape, &vs)?.value();
            if y.shape() != self.u.shape() {
                return Err(Error::shape("gradcheck", self.u.shape(), y.shape()));
            }
            Ok(y)
        })
    }

    /// ⟨u, f(x⁺) − f(x⁻)⟩ / 2h: subtracting before projecting keeps the outputs that the
    /// perturbation does not touch exactly zero, so their rounding error does not count.
    fn central(&self, plus: &Tensor<f64>, minus: &Tensor<f64>, h: f64) -> f64 {
        plus.data()
            .iter()
            .zip(minus.data())
            .zip(self.u.data())
            .map(|((p, m), w)| (p - m) * w)
            .sum::<f64>()
            / (2.0 * h)
    }

    /// The central difference along `dirs` (one direction per input).
    fn directional(&self, dirs: &[Tensor<f64>]) -> Result<f64> {
        let shifted = |sign: f64| -> Result<Vec<Tensor<f64>>> {
            self.inputs
                .iter()
                .zip(dirs)
                .map(|(x, d)| x.add(&d.mul_scalar(sign * self.h)))
                .collect()
        };
        let (plus, minus) = (self.eval(&shifted(1.0)?)?, self.eval(&shifted(-1.0)?)?);
        Ok(self.central(&plus, &minus, self.h))
    }

    /// Every input element's central difference against its reverse-mode gradient.
    fn per_element(
        &self,
        reverse: &[Tensor<f64>],
        eps: f64,
        report: &mut GradcheckReport,
    ) -> Result<()> {
        let mut xs = self.inputs.to_vec();
        for (i, x) in self.inputs.iter().enumerate() {
            for k in 0..x.len() {
                let x0 = x.data()[k];
                let h = eps * x0.abs().max(1.0);
                xs[i].data_mut()[k] = x0 + h;
                let plus = self.eval(&xs)?;
                xs[i].data_mut()[k] = x0 - h;
                let minus = self.eval(&xs)?;
                xs[i].data_mut()[k] = x0;
                let first = report.evaluations == 0;
                report.evaluations += 2;
                let numeric = self.central(&plus, &minus, h);
                report.record(
                    i,
                    Some(unravel(k, x.shape())),
                    reverse[i].data()[k],
                    numeric,
                    first,
                );
            }
        }
        Ok(())
    }
}

/// Forward mode along a random direction, against the directional difference and,
/// through ⟨u, J v⟩ = ⟨Jᵀ u, v⟩, against reverse mode.
fn forward_mode<F>(
    f: &F,
    diffs: &Differences<'_, F>,
    reverse: &[Tensor<f64>],
    opts: &GradcheckOptions,
    report: &mut GradcheckReport,
) -> Result<()>
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
{
    let (inputs, u) = (diffs.inputs, diffs.u);
    let dirs = random_directions(inputs, opts.seed.wrapping_add(1000))?;
    let ftape = Tape::forward_mode();
    let fvars = inputs
        .iter()
        .zip(&dirs)
        .map(|(x, d)| ftape.dual(x.clone(), d.clone()))
        .collect::<Result<Vec<_>>>()?;
    let jv = match f(&ftape, &fvars)?.tangent() {
        Ok(t) => t,
        // an op without a forward rule (a custom op that defines none): said, not hidden
        Err(e @ Error::NoRule { .. }) => {
            report.forward_skipped = Some(e.to_string());
            return Ok(());
        }
        Err(e) => {
            report.forward_rel_err = Some(f64::NAN);
            report.failure.get_or_insert(format!("forward mode: {e}"));
            return Ok(());
        }
    };
    if let Some((_, at, v)) = first_non_finite(std::slice::from_ref(&jv)) {
        report.forward_rel_err = Some(f64::NAN);
        report.failure.get_or_insert(format!(
            "forward mode: the tangent of the output at {at:?} is {v}"
        ));
        return Ok(());
    }
    let u_jv = dot_all(std::slice::from_ref(&jv), std::slice::from_ref(u));
    let jtu_v = dot_all(reverse, &dirs);
    let numeric = diffs.directional(&dirs)?;
    let forward = rel_err(u_jv, numeric);
    report.forward_rel_err = Some(forward);
    if forward.is_nan() {
        report.failure.get_or_insert(format!(
            "forward mode gives {u_jv}, the central difference {numeric}; both must be finite"
        ));
    }
    // both sides are sums of products: when they cancel to nearly zero, only the
    // magnitude of their terms says how much rounding to expect
    let terms = |a: &[Tensor<f64>], b: &[Tensor<f64>]| -> f64 {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.data().iter().zip(y.data()).map(|(p, q)| (p * q).abs()))
            .sum()
    };
    let floor =
        terms(std::slice::from_ref(&jv), std::slice::from_ref(u)).max(terms(reverse, &dirs));
    report.forward_reverse_rel_err = Some(if u_jv == jtu_v {
        0.0
    } else {
        (u_jv - jtu_v).abs() / u_jv.abs().max(jtu_v.abs()).max(floor)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_function_value_fails() {
        let x = Tensor::<f64>::from_vec(vec![-1.0, 2.0], &[2]).unwrap();
        let r = gradcheck(|_, v| Ok(v[0].ln()), &[x], &GradcheckOptions::default()).unwrap();
        assert!(!r.passed(1e-6) && r.failure.unwrap().contains("NaN"));
    }

    #[test]
    fn nan_max_propagates_nan() {
        assert!(nan_max(0.0, f64::NAN).is_nan() && nan_max(f64::NAN, 1.0).is_nan());
        assert_eq!(nan_max(1.0, 2.0), 2.0);
        assert!([0.5, f64::NAN, 0.1].into_iter().fold(0.0, nan_max).is_nan());
    }

    #[test]
    fn forward_mode_agrees_with_reverse_and_differences() {
        let x = Tensor::<f64>::randn(&[3, 4], 5).unwrap();
        let w = Tensor::<f64>::randn(&[4, 2], 6).unwrap();
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
        let x = Tensor::<f64>::randn(&[40, 30], 2).unwrap();
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
