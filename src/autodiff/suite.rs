//! The built-in gradient-check suite run by `chainrule gradcheck`: every differentiable
//! op on random shapes (with broadcasting for binary ops), small cases element by
//! element and one large case along a random direction, from a fixed seed.

use super::gradcheck::nan_max;
use super::{GradcheckMode, GradcheckOptions, GradcheckReport, Tape, Var, gradcheck};
use crate::error::Result;
use crate::scalar::Real;
use crate::tensor::{BinaryOp, Tensor, UnaryOp, broadcast_shapes};
use crate::tensor::{broadcast_strides, for_each_offset};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A function checked by the suite: records an op on the tape, from the inputs' variables
/// to one output.
pub type CaseFn = Box<dyn for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>>;

/// The worst result over all cases of one op.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpCheck {
    /// The op's name.
    pub op: String,
    /// Number of cases (shapes) checked.
    pub cases: usize,
    /// The shapes of the worst case's inputs.
    pub worst_shapes: Vec<Vec<usize>>,
    /// The worst case's report.
    pub report: GradcheckReport,
    /// Worst forward-mode error against central differences over all cases.
    pub worst_forward_rel_err: f64,
    /// Worst forward-against-reverse disagreement over all cases.
    pub worst_forward_reverse_rel_err: f64,
    /// The first fault over all cases (a non-finite value, a rule or case that errored),
    /// with the shapes of that case.
    pub failure: Option<String>,
    /// No fault, and every error within its tolerance.
    pub passed: bool,
}

/// The whole suite: one entry per op and the worst errors over all of them (NaN when
/// any value was non-finite).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteReport {
    /// One entry per op, in a fixed order.
    pub ops: Vec<OpCheck>,
    /// Number of ops checked.
    pub ops_checked: usize,
    /// Worst reverse-mode relative error against central differences.
    pub worst_rel_err: f64,
    /// Worst forward-mode relative error against central differences.
    pub worst_forward_rel_err: f64,
    /// Worst forward-against-reverse disagreement.
    pub worst_forward_reverse_rel_err: f64,
    /// The tolerance against central differences.
    pub tolerance: f64,
    /// Every op passed.
    pub passed: bool,
}

/// An op to check beside the built-in ones (a custom op of yours, say): its name as the
/// report shows it, its inputs, and the function that applies it. Each case is one set
/// of shapes; give several cases of the same name to check several shapes of one op.
pub struct SuiteCase {
    /// The op's name in the report.
    pub op: String,
    /// The inputs the function is checked at.
    pub inputs: Vec<Tensor<f64>>,
    /// Records the op on the tape, from the inputs' variables to one output.
    pub f: CaseFn,
}

impl From<SuiteCase> for Case {
    fn from(c: SuiteCase) -> Case {
        Case {
            op: c.op,
            inputs: c.inputs,
            f: c.f,
            scalar: None,
        }
    }
}

/// Input domains that keep finite differences away from kinks and poles.
#[derive(Clone, Copy)]
pub(crate) enum Domain {
    /// |x| in [0.2, 1.2], either sign.
    AwayFromZero,
    /// x in [0.2, 1.2].
    Positive,
}

pub(crate) fn sample(shape: &[usize], domain: Domain, rng: &mut ChaCha8Rng) -> Tensor<f64> {
    Tensor::build(shape, |d| {
        for v in d {
            let m = rng.random_range(0.2..1.2);
            *v = match domain {
                Domain::Positive => m,
                Domain::AwayFromZero => {
                    if rng.random_bool(0.5) {
                        m
                    } else {
                        -m
                    }
                }
            };
        }
    })
}

/// A random shape of rank `min_rank` to 3 with dimensions 1 to 4.
pub(crate) fn random_shape(rng: &mut ChaCha8Rng, min_rank: usize) -> Vec<usize> {
    let rank = rng.random_range(min_rank..4);
    (0..rank).map(|_| rng.random_range(1..5)).collect()
}

/// A shape that broadcasts against `shape`: some dimensions 1, some leading ones dropped.
pub(crate) fn broadcastable(shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<usize> {
    let drop = rng.random_range(0..=shape.len());
    shape[drop..]
        .iter()
        .map(|&d| if rng.random_bool(0.5) { 1 } else { d })
        .collect()
}

pub(crate) struct Case {
    pub(crate) op: String,
    pub(crate) inputs: Vec<Tensor<f64>>,
    pub(crate) f: CaseFn,
    /// The same function for the scalar engine, where it has the op.
    pub(crate) scalar: Option<ScalarForm>,
}

/// A case's function written for the scalar engine ([`crate::scalar`]), element by
/// element, so that second order can be checked against a second, independent engine.
#[derive(Clone)]
pub(crate) enum ScalarForm {
    Unary(UnaryOp),
    /// With NumPy broadcasting.
    Binary(BinaryOp),
    /// Over these axes (the mean divides by the count).
    Sum(Vec<usize>, bool),
    Softmax(usize, bool),
    MatMul,
}

/// For each element of `shape`, the flat index of the element it reduces into when
/// `axes` are summed away.
fn reduced_index(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|flat| {
            let (mut rest, mut out, mut scale) = (flat, 0, 1);
            for d in (0..shape.len()).rev() {
                let i = rest % shape[d];
                rest /= shape[d];
                if !axes.contains(&d) {
                    out += i * scale;
                    scale *= shape[d];
                }
            }
            out
        })
        .collect()
}

impl ScalarForm {
    /// The case's outputs, flat, from its inputs (flat, one after another).
    fn outputs<R: Real>(&self, shapes: &[Vec<usize>], x: &[R]) -> Vec<R> {
        let size = |s: &[usize]| s.iter().product::<usize>();
        match self {
            ScalarForm::Unary(op) => x.iter().map(|&v| v.unary(*op)).collect(),
            ScalarForm::Binary(op) => {
                let (sa, sb) = (&shapes[0], &shapes[1]);
                let (a, b) = x.split_at(size(sa));
                let out = broadcast_shapes("scalar form", sa, sb).expect("the case broadcasts");
                let (ta, tb) = (broadcast_strides(sa, &out), broadcast_strides(sb, &out));
                let mut y = vec![R::cst(0.0); size(&out)];
                for_each_offset(&out, [&ta, &tb], |i, [ia, ib]| {
                    y[i] = a[ia].binary(*op, b[ib])
                });
                y
            }
            ScalarForm::Sum(axes, mean) => {
                let into = reduced_index(&shapes[0], axes);
                let count: usize = axes.iter().map(|&a| shapes[0][a]).product();
                let mut y = vec![R::cst(0.0); x.len() / count.max(1)];
                for (&v, &o) in x.iter().zip(&into) {
                    y[o] = y[o] + v;
                }
                if *mean {
                    y.iter_mut()
                        .for_each(|v| *v = *v * R::cst(1.0 / count as f64));
                }
                y
            }
            ScalarForm::Softmax(axis, log) => {
                let group = reduced_index(&shapes[0], &[*axis]);
                let mut total = vec![R::cst(0.0); x.len()];
                for (&v, &g) in x.iter().zip(&group) {
                    total[g] = total[g] + v.exp();
                }
                x.iter()
                    .zip(&group)
                    .map(|(&v, &g)| {
                        if *log {
                            v - total[g].ln()
                        } else {
                            v.exp() / total[g]
                        }
                    })
                    .collect()
            }
            ScalarForm::MatMul => {
                let (sa, sb) = (&shapes[0], &shapes[1]);
                let (a, b) = x.split_at(size(sa));
                let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
                let batch = size(sa) / (m * k);
                let shared = sb.len() == 2;
                let mut y = Vec::with_capacity(batch * m * n);
                for bi in 0..batch {
                    let (ao, bo) = (bi * m * k, if shared { 0 } else { bi * k * n });
                    for i in 0..m {
                        for j in 0..n {
                            let mut acc = R::cst(0.0);
                            for p in 0..k {
                                acc = acc + a[ao + i * k + p] * b[bo + p * n + j];
                            }
                            y.push(acc);
                        }
                    }
                }
                y
            }
        }
    }
}

/// Inputs of the suite's large cases (one along a random direction per op).
pub(crate) const LARGE: [usize; 2] = [24, 30];

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    // each op family lists its cases beside its rules, in this order (one random stream)
    super::ops::elementwise::suite_cases(&mut rng, &mut out);
    super::ops::reduce::suite_cases(&mut rng, &mut out);
    super::ops::matmul::suite_cases(&mut rng, seed, &mut out);
    super::ops::shape::suite_cases(&mut rng, &mut out);
    // the fused recurrent cell steps (custom ops with both rules)
    for (op, inputs, f) in super::ops::recurrent::suite_cases(&mut rng) {
        out.push(Case {
            op,
            inputs,
            f,
            scalar: None,
        });
    }
    super::ops::transformer::suite_cases(&mut rng, &mut out);
    super::ops::conv::suite_cases(&mut rng, &mut out);
    super::ops::pool::suite_cases(&mut rng, &mut out);
    out
}

/// `cases` followed by the op each planted fault breaks (`planted_add` for first-order
/// faults, `planted_mul` for second-order ones), on inputs of each number of `rows`.
/// Runs the suite with every op in a fixed order, then the `extra` cases, against central
/// differences within `tolerance`.
pub fn builtin_suite(seed: u64, tolerance: f64, extra: Vec<SuiteCase>) -> SuiteReport {
    let opts = GradcheckOptions {
        seed,
        ..Default::default()
    };
    let all = cases(seed)
        .into_iter()
        .chain(extra.into_iter().map(Case::from));
    let mut results: Vec<OpCheck> = Vec::new();
    for case in all {
        let shapes: Vec<Vec<usize>> = case.inputs.iter().map(|x| x.shape().to_vec()).collect();
        let report = gradcheck(&case.f, &case.inputs, &opts).unwrap_or_else(|e| {
            // the case itself failed to run: a failure of this op, not of the whole suite
            let mut r = GradcheckReport::empty(GradcheckMode::PerElement);
            r.fail(format!("the case did not run: {e}"));
            r
        });
        let passed = report.passed(tolerance);
        let failure = report
            .failure
            .as_ref()
            .map(|f| format!("{f} (input shapes {shapes:?})"));
        let fwd = report.forward_rel_err.unwrap_or(0.0);
        let fwd_rev = report.forward_reverse_rel_err.unwrap_or(0.0);
        match results.iter_mut().find(|r| r.op == case.op) {
            Some(r) => {
                r.cases += 1;
                r.worst_forward_rel_err = nan_max(r.worst_forward_rel_err, fwd);
                r.worst_forward_reverse_rel_err = nan_max(r.worst_forward_reverse_rel_err, fwd_rev);
                r.passed &= passed;
                if r.failure.is_none() {
                    r.failure = failure;
                }
                if !r.report.max_rel_err.is_nan()
                    && (report.max_rel_err.is_nan() || report.max_rel_err > r.report.max_rel_err)
                {
                    r.report = report;
                    r.worst_shapes = shapes;
                }
            }
            None => results.push(OpCheck {
                op: case.op,
                cases: 1,
                worst_shapes: shapes,
                worst_forward_rel_err: fwd,
                worst_forward_reverse_rel_err: fwd_rev,
                failure,
                passed,
                report,
            }),
        }
    }
    let worst = |f: fn(&OpCheck) -> f64| results.iter().map(f).fold(0.0, nan_max);
    SuiteReport {
        ops_checked: results.len(),
        worst_rel_err: worst(|r| r.report.max_rel_err),
        worst_forward_rel_err: worst(|r| r.worst_forward_rel_err),
        worst_forward_reverse_rel_err: worst(|r| r.worst_forward_reverse_rel_err),
        tolerance,
        passed: results.iter().all(|r| r.passed),
        ops: results,
    }
}

/// The second-order check of one op over its cases.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SecondOrderCheck {
    /// The op's name.
    pub op: String,
    /// Cases checked (0 when skipped).
    pub cases: usize,
    /// Worst `max |H·v − difference| / max |difference|` over the cases.
    pub max_rel_err: f64,
    /// The input shapes of the worst case.
    pub worst_shapes: Vec<Vec<usize>>,
    /// Why the op was not checked (a custom op with no composition in built-in ops).
    pub skipped: Option<String>,
    /// Worst `max |H·v − scalar H·v| / max |scalar H·v|` against the scalar engine's
    /// [`crate::scalar::hvp`] of the same function, for the ops that engine has.
    pub scalar_rel_err: Option<f64>,
    /// Whether every case is within the tolerance (a skipped op passes).
    pub passed: bool,
}

/// The second-order suite: every op of [`builtin_suite`], H·v against differences of
/// gradients.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SecondOrderReport {
    /// One entry per op.
    pub ops: Vec<SecondOrderCheck>,
    /// Worst relative error over the ops checked.
    pub worst_rel_err: f64,
    /// Worst relative difference from the scalar engine's H·v, over the ops it has.
    pub worst_scalar_rel_err: f64,
    /// How many ops were also checked against the scalar engine.
    pub scalar_ops: usize,
    /// The tolerance.
    pub tolerance: f64,
    /// Whether every op checked passed.
    pub passed: bool,
}

/// H·v of one case, `s(x) = Σ w ⊙ sin(f(x))` (the sine makes every op's first
/// derivative enter the Hessian too), against the central difference of reverse-mode
/// gradients along `v`, and against the scalar engine's H·v of the same function where
/// it has the op: the two relative errors, or why they could not be computed.
fn second_order_case(case: &Case, seed: u64) -> std::result::Result<(f64, Option<f64>), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let out_shape = {
        let tape = Tape::new();
        let vars: Vec<_> = case.inputs.iter().map(|x| tape.var(x.clone())).collect();
        let y = (case.f)(&tape, &vars).map_err(|e| e.to_string())?;
        y.shape()
    };
    let w = sample(&out_shape, Domain::AwayFromZero, &mut rng);
    let v: Vec<Tensor<f64>> = case
        .inputs
        .iter()
        .map(|x| sample(x.shape(), Domain::AwayFromZero, &mut rng))
        .collect();
    let r = super::hvp(
        |t, x| {
            let y = (case.f)(t, x)?;
            y.sin()
                .mul(t.constant(w.clone()))?
                .sum(&(0..y.shape().len()).collect::<Vec<_>>(), false)
        },
        &case.inputs,
        &v,
    )
    .map_err(|e| e.to_string())?;
    let h = 1e-5;
    let gradient_at = |sign: f64| -> Result<Vec<Tensor<f64>>> {
        let tape = Tape::new();
        let vars = case
            .inputs
            .iter()
            .zip(&v)
            .map(|(x, d)| Ok(tape.var(x.add(&d.mul_scalar(sign * h))?)))
            .collect::<Result<Vec<_>>>()?;
        let y = (case.f)(&tape, &vars)?;
        let axes: Vec<usize> = (0..y.shape().len()).collect();
        let s = y.sin().mul(tape.constant(w.clone()))?.sum(&axes, false)?;
        let g = tape.backward(s)?;
        vars.iter().map(|&x| g.wrt(x)).collect()
    };
    let (gp, gm) = (
        gradient_at(1.0).map_err(|e| e.to_string())?,
        gradient_at(-1.0).map_err(|e| e.to_string())?,
    );
    let (mut diff, mut scale) = (0f64, 0f64);
    for ((hv, p), m) in r.hv.iter().zip(&gp).zip(&gm) {
        let fd = p.sub(m).map_err(|e| e.to_string())?.mul_scalar(0.5 / h);
        diff = nan_max(diff, hv.max_abs_diff(&fd).map_err(|e| e.to_string())?);
        scale = scale.max(fd.data().iter().fold(0f64, |a, v| nan_max(a, v.abs())));
    }
    let against_scalar = case.scalar.as_ref().map(|form| {
        let shapes: Vec<Vec<usize>> = case.inputs.iter().map(|x| x.shape().to_vec()).collect();
        let flat = |ts: &[Tensor<f64>]| -> Vec<f64> {
            ts.iter().flat_map(|t| t.data().iter().copied()).collect()
        };
        let weights = w.data().to_vec();
        let scalar_hv = crate::scalar::hvp(
            |x| {
                let y = form.outputs(&shapes, x);
                let mut s = Real::cst(0.0);
                for (yi, &wi) in y.into_iter().zip(&weights) {
                    s = s + yi.sin() * Real::cst(wi);
                }
                s
            },
            &flat(&case.inputs),
            &flat(&v),
        );
        let (mut diff, mut scale) = (0f64, 0f64);
        for (a, b) in flat(&r.hv).iter().zip(&scalar_hv) {
            diff = nan_max(diff, (a - b).abs());
            scale = nan_max(scale, b.abs());
        }
        diff / scale.max(1e-8)
    });
    Ok((diff / scale.max(1e-8), against_scalar))
}

/// `chainrule gradcheck --order 2`: each op's Hessian-vector products (forward over the
/// recorded reverse sweep) against central differences of its gradients, in f64, on the
/// same random cases as the first-order suite. The recurrent cells are differentiated
/// through their compositions in built-in ops; a custom op without one would be reported
/// as skipped. NaN or infinity fails. The `extra` cases run after the built-in ones.
pub fn second_order_suite(seed: u64, tolerance: f64, extra: Vec<SuiteCase>) -> SecondOrderReport {
    let mut ops: Vec<SecondOrderCheck> = Vec::new();
    let all = cases(seed)
        .into_iter()
        .chain(extra.into_iter().map(Case::from));
    for (k, case) in all.enumerate() {
        let shapes: Vec<Vec<usize>> = case.inputs.iter().map(|x| x.shape().to_vec()).collect();
        let result = second_order_case(&case, seed.wrapping_add(1000 + k as u64));
        let entry = match ops.iter_mut().position(|r| r.op == case.op) {
            Some(i) => &mut ops[i],
            None => {
                ops.push(SecondOrderCheck {
                    op: case.op.clone(),
                    cases: 0,
                    max_rel_err: 0.0,
                    worst_shapes: shapes.clone(),
                    skipped: None,
                    scalar_rel_err: None,
                    passed: true,
                });
                ops.last_mut().expect("just pushed")
            }
        };
        match result {
            Ok((err, scalar)) => {
                entry.cases += 1;
                if let Some(e) = scalar {
                    entry.scalar_rel_err = Some(nan_max(entry.scalar_rel_err.unwrap_or(0.0), e));
                    entry.passed &= e <= tolerance;
                }
                // NaN, once seen, stays the worst
                if !entry.max_rel_err.is_nan() && (err.is_nan() || err > entry.max_rel_err) {
                    entry.max_rel_err = err;
                    entry.worst_shapes = shapes;
                }
                entry.passed &= err <= tolerance;
            }
            Err(why) if why.contains("no composition in built-in ops") => {
                entry.skipped = Some(why);
            }
            Err(why) => {
                entry.passed = false;
                entry.skipped = Some(format!("the case did not run: {why}"));
            }
        }
    }
    let worst = ops
        .iter()
        .filter(|r| r.cases > 0)
        .map(|r| r.max_rel_err)
        .fold(0.0, nan_max);
    let against_scalar: Vec<f64> = ops.iter().filter_map(|r| r.scalar_rel_err).collect();
    SecondOrderReport {
        passed: ops.iter().all(|r| r.passed),
        worst_rel_err: worst,
        worst_scalar_rel_err: against_scalar.iter().copied().fold(0.0, nan_max),
        scalar_ops: against_scalar.len(),
        tolerance,
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::FORWARD_REVERSE_TOLERANCE;

    #[test]
    fn every_op_with_a_recorded_rule_passes_the_second_order_suite() {
        let suite = second_order_suite(0, 1e-6, Vec::new());
        for r in &suite.ops {
            eprintln!(
                "{:<24} {:>3} {:.2e} {:?}",
                r.op, r.cases, r.max_rel_err, r.skipped
            );
        }
        for r in &suite.ops {
            assert!(r.passed, "{}: {r:?}", r.op);
            assert!(r.skipped.is_none(), "{}: {r:?}", r.op);
        }
        assert!(suite.passed && suite.worst_rel_err <= 1e-6);
        assert!(suite.ops.iter().filter(|r| r.cases > 0).count() >= 30);
        // the elementwise ops, sums, softmaxes and matmul also against the scalar engine
        let against_scalar = |name: &str| {
            let r = suite
                .ops
                .iter()
                .find(|r| r.op == name)
                .expect("in the suite");
            r.scalar_rel_err
        };
        for name in [
            "tanh",
            "relu",
            "pow",
            "maximum",
            "mean",
            "log_softmax",
            "matmul",
        ] {
            let e = against_scalar(name).unwrap_or_else(|| panic!("{name} has a scalar form"));
            assert!(e <= 1e-6, "{name}: {e}");
        }
        assert_eq!(against_scalar("gather"), None);
        assert!(suite.scalar_ops >= 25 && suite.worst_scalar_rel_err <= 1e-6);
    }

    /// The scalar form of each case computes the tensor op's values, so the cross-check
    /// compares the same function: outputs against the tensor engine's, elementwise.
    #[test]
    fn scalar_forms_compute_the_cases_functions() {
        let mut checked = 0;
        for case in cases(7) {
            let Some(form) = &case.scalar else { continue };
            let tape = Tape::new();
            let vars: Vec<_> = case.inputs.iter().map(|x| tape.var(x.clone())).collect();
            let y = (case.f)(&tape, &vars).unwrap().value();
            let shapes: Vec<Vec<usize>> = case.inputs.iter().map(|x| x.shape().to_vec()).collect();
            let flat: Vec<f64> = case.inputs.iter().flat_map(|t| t.data().to_vec()).collect();
            let ys = form.outputs(&shapes, &flat);
            assert_eq!(ys.len(), y.len(), "{}", case.op);
            for (a, b) in ys.iter().zip(y.data()) {
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                    "{}: {a} vs {b}",
                    case.op
                );
            }
            checked += 1;
        }
        assert!(checked > 80, "{checked}");
    }

    #[test]
    fn every_op_passes_the_builtin_suite() {
        let suite = builtin_suite(0, 1e-6, Vec::new());
        assert!(suite.ops_checked >= 36, "{}", suite.ops_checked);
        for r in &suite.ops {
            assert!(r.passed && r.failure.is_none(), "{}: {r:?}", r.op);
            assert!(r.report.max_rel_err <= 1e-6, "{}: {:?}", r.op, r.report);
            assert!(r.worst_forward_rel_err <= 1e-6, "{} forward: {r:?}", r.op);
            assert!(
                r.worst_forward_reverse_rel_err <= FORWARD_REVERSE_TOLERANCE,
                "{} forward vs reverse: {r:?}",
                r.op
            );
        }
        assert!(suite.passed && suite.worst_rel_err <= 1e-6);
    }
}
