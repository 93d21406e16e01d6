//! The faults `chainrule gradcheck --plant` adds to the suite: custom ops with a
//! deliberately broken rule, to watch the check reject each one. They are the program's
//! (and its tests'), not the library's: the library's suite takes them as extra cases.

use chainrule::autodiff::{CaseFn, CustomOp, SuiteCase, Tangents};
use chainrule::error::{Error, Result};
use chainrule::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deliberately broken rule, planted to show that the check rejects it. Each breaks
/// `a + b` (`b` broadcast over the rows of `a`, then `tanh`), a custom op, in one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedFault {
    /// The reverse rule returns NaN for `a`.
    NanGradient,
    /// The reverse rule flips the sign of `b`'s gradient.
    WrongSign,
    /// The reverse rule averages `b`'s gradient over the rows instead of summing it.
    WrongBroadcastReduction,
    /// The reverse rule does not reduce `b`'s gradient at all (wrong shape).
    UnreducedBroadcast,
    /// The forward rule returns NaN.
    NanTangent,
    /// The forward rule returns an error.
    ForwardRuleErrors,
    /// Not a fault: the op defines no forward rule, so forward mode is skipped and the
    /// report says so.
    NoForwardRule,
    /// Second order (`a ⊙ b`, whose first-order rules are right): the composition's
    /// gradient is NaN at the point (`ab + √((a − a₀)²)`), so its H·v is NaN.
    NanHvp,
    /// Second order: the composition `ab + (a − a₀)²` has the right value and gradient
    /// at the point but a second derivative in `a` of 2 instead of 0.
    WrongSecondDerivative,
    /// Second order: the composition `a·b₀ + a₀·b − a₀·b₀` has the right value and
    /// gradient at the point but lacks the cross term ∂²/∂a∂b = 1.
    MissingCrossTerm,
}

impl PlantedFault {
    /// Every planted fault, in the order of `--plant`'s help.
    pub const ALL: [PlantedFault; 10] = [
        PlantedFault::NanGradient,
        PlantedFault::WrongSign,
        PlantedFault::WrongBroadcastReduction,
        PlantedFault::UnreducedBroadcast,
        PlantedFault::NanTangent,
        PlantedFault::ForwardRuleErrors,
        PlantedFault::NoForwardRule,
        PlantedFault::NanHvp,
        PlantedFault::WrongSecondDerivative,
        PlantedFault::MissingCrossTerm,
    ];

    /// The order of derivative the fault breaks: 1 for the rules of the gradient and
    /// the tangent, 2 for the composition that second order differentiates.
    pub fn order(self) -> u8 {
        match self {
            PlantedFault::NanHvp
            | PlantedFault::WrongSecondDerivative
            | PlantedFault::MissingCrossTerm => 2,
            _ => 1,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PlantedFault::NanGradient => "nan-gradient",
            PlantedFault::WrongSign => "wrong-sign",
            PlantedFault::WrongBroadcastReduction => "wrong-broadcast-reduction",
            PlantedFault::UnreducedBroadcast => "unreduced-broadcast",
            PlantedFault::NanTangent => "nan-tangent",
            PlantedFault::ForwardRuleErrors => "forward-rule-errors",
            PlantedFault::NoForwardRule => "no-forward-rule",
            PlantedFault::NanHvp => "nan-hvp",
            PlantedFault::WrongSecondDerivative => "wrong-second-derivative",
            PlantedFault::MissingCrossTerm => "missing-cross-term",
        }
    }
}

impl std::str::FromStr for PlantedFault {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        PlantedFault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = PlantedFault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault '{s}'; choose one of {}", names.join(", "))
            })
    }
}

struct PlantedAdd(Option<PlantedFault>);

impl CustomOp<f64> for PlantedAdd {
    fn name(&self) -> &str {
        "planted_add"
    }
    fn jvp(
        &self,
        ins: &[&Tensor<f64>],
        out: &Tensor<f64>,
        t: &Tangents<f64>,
    ) -> Result<Tensor<f64>> {
        let mut sum = Tensor::zeros(out.shape())?;
        for tangent in t.iter().flatten() {
            sum = sum.add(tangent)?;
        }
        match self.0 {
            Some(PlantedFault::NanTangent) => Ok(sum.mul_scalar(f64::NAN)),
            Some(PlantedFault::ForwardRuleErrors) => {
                Err(Error::shape("planted_add", ins[0].shape(), &[]))
            }
            Some(PlantedFault::NoForwardRule) => Err(Error::NoRule {
                op: self.name().into(),
            }),
            _ => Ok(sum),
        }
    }
    fn vjp(
        &self,
        _ins: &[&Tensor<f64>],
        _out: &Tensor<f64>,
        g: &Tensor<f64>,
    ) -> Result<Vec<Tensor<f64>>> {
        let gb = g.sum(&[0], false)?;
        Ok(match self.0 {
            Some(PlantedFault::NanGradient) => vec![g.mul_scalar(f64::NAN), gb],
            Some(PlantedFault::WrongSign) => vec![g.clone(), gb.neg()],
            Some(PlantedFault::WrongBroadcastReduction) => vec![g.clone(), g.mean(&[0], false)?],
            Some(PlantedFault::UnreducedBroadcast) => vec![g.clone(), g.clone()],
            _ => vec![g.clone(), gb],
        })
    }
}

/// The planted op's inputs (`a` of shape `[rows, 4]`, `b` of shape `[4]`) and function
/// `tanh(a + b)`, with `fault` in its rules (`None`: correct rules).
pub fn planted_add(fault: Option<PlantedFault>, rows: usize) -> (Vec<Tensor<f64>>, CaseFn) {
    let op = std::sync::Arc::new(PlantedAdd(fault));
    let inputs = vec![
        Tensor::randn(&[rows, 4], 1).expect("a planted case's own shape"),
        Tensor::randn(&[4], 2).expect("a planted case's own shape"),
    ];
    let f: CaseFn = Box::new(move |_, v| {
        let value = v[0].value().add(&v[1].value())?;
        Ok(Var::custom(&[v[0], v[1]], op.clone(), value)?.tanh())
    });
    (inputs, f)
}

/// `a ⊙ b` (`b` broadcast over the rows of `a`) with correct first-order rules and a
/// composition (what second order differentiates) broken by a second-order fault.
struct PlantedMul(Option<PlantedFault>);

impl CustomOp<f64> for PlantedMul {
    fn name(&self) -> &str {
        "planted_mul"
    }
    fn jvp(
        &self,
        ins: &[&Tensor<f64>],
        out: &Tensor<f64>,
        t: &Tangents<f64>,
    ) -> Result<Tensor<f64>> {
        let mut sum = Tensor::zeros(out.shape())?;
        if let Some(ta) = t[0] {
            sum = sum.add(&ta.mul(ins[1])?)?;
        }
        if let Some(tb) = t[1] {
            sum = sum.add(&ins[0].mul(tb)?)?;
        }
        Ok(sum)
    }
    fn vjp(
        &self,
        ins: &[&Tensor<f64>],
        _out: &Tensor<f64>,
        g: &Tensor<f64>,
    ) -> Result<Vec<Tensor<f64>>> {
        Ok(vec![g.mul(ins[1])?, g.mul(ins[0])?.sum(&[0], false)?])
    }
    fn composed<'t>(&self, v: &[Var<'t, f64>]) -> Option<Result<Var<'t, f64>>> {
        let (a, b) = (v[0], v[1]);
        let tape = a.tape();
        // the inputs' values as constants: terms that vanish at the point, with their
        // first derivatives, but not with their second
        let (a0, b0) = (tape.constant(a.value()), tape.constant(b.value()));
        let composed = || -> Result<Var<'t, f64>> {
            let ab = a.mul(b)?;
            match self.0 {
                Some(PlantedFault::NanHvp) => {
                    let d = a.sub(a0)?;
                    ab.add(d.mul(d)?.sqrt())
                }
                Some(PlantedFault::WrongSecondDerivative) => {
                    let d = a.sub(a0)?;
                    ab.add(d.mul(d)?)
                }
                Some(PlantedFault::MissingCrossTerm) => {
                    a.mul(b0)?.add(a0.mul(b)?)?.sub(a0.mul(b0)?)
                }
                _ => Ok(ab),
            }
        };
        Some(composed())
    }
}

/// The second-order planted op's inputs (`a` of shape `[rows, 4]`, `b` of shape `[4]`)
/// and function `tanh(a ⊙ b)`, with `fault` in its composition (`None`: correct).
pub fn planted_mul(fault: Option<PlantedFault>, rows: usize) -> (Vec<Tensor<f64>>, CaseFn) {
    let op = std::sync::Arc::new(PlantedMul(fault));
    let mut rng = ChaCha8Rng::seed_from_u64(rows as u64);
    let inputs = vec![
        away_from_zero(&[rows, 4], &mut rng),
        away_from_zero(&[4], &mut rng),
    ];
    let f: CaseFn = Box::new(move |_, v| {
        let value = v[0].value().mul(&v[1].value())?;
        Ok(Var::custom(&[v[0], v[1]], op.clone(), value)?.tanh())
    });
    (inputs, f)
}

/// Values of `shape` with |x| in [0.2, 1.2] and either sign, as the suite samples them:
/// away from the kinks and poles where differences mislead.
fn away_from_zero(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    let values = (0..n)
        .map(|_| {
            let m = rng.random_range(0.2..1.2);
            if rng.random_bool(0.5) { m } else { -m }
        })
        .collect();
    Tensor::from_vec(values, shape).expect("a planted case's own shape")
}

/// The suite's extra cases for `faults`: each broken op on a small case and a large one
/// (`rows` of `[rows, 4]` inputs); a large first-order case goes along a random
/// direction, a second-order one stays small enough for differences of gradients.
pub fn cases(faults: &[PlantedFault], order: u8) -> Vec<SuiteCase> {
    let rows = if order == 2 { [3, 40] } else { [3, 200] };
    let mut out = Vec::new();
    for &fault in faults {
        for rows in rows {
            let (inputs, f) = if fault.order() == 2 {
                planted_mul(Some(fault), rows)
            } else {
                planted_add(Some(fault), rows)
            };
            out.push(SuiteCase {
                op: format!("planted:{}", fault.name()),
                inputs,
                f,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainrule::autodiff::{
        GradcheckOptions, GradcheckReport, builtin_suite, gradcheck, second_order_suite,
    };

    fn check(fault: Option<PlantedFault>, rows: usize) -> GradcheckReport {
        let (inputs, f) = planted_add(fault, rows);
        gradcheck(f, &inputs, &GradcheckOptions::default()).unwrap()
    }

    #[test]
    fn a_correct_custom_op_passes() {
        for rows in [3, 200] {
            let r = check(None, rows);
            assert!(r.passed(1e-6), "{r:?}");
            assert!(r.forward_rel_err.is_some() && r.failure.is_none());
        }
    }

    #[test]
    fn every_planted_fault_is_rejected() {
        // small inputs go element by element, large ones along a random direction
        for rows in [3, 200] {
            // the second-order faults are caught by the second-order suite (suite.rs)
            for fault in PlantedFault::ALL.into_iter().filter(|f| f.order() == 1) {
                if fault == PlantedFault::NoForwardRule {
                    continue;
                }
                let r = check(Some(fault), rows);
                assert!(!r.passed(1e-6), "{fault:?} ({rows} rows) passed: {r:?}");
                assert!(!r.passed(f64::INFINITY), "{fault:?} ({rows} rows): {r:?}");
            }
        }
    }

    #[test]
    fn faults_are_named() {
        let r = check(Some(PlantedFault::NanGradient), 3);
        let why = r.failure.clone().unwrap();
        assert!(r.max_rel_err.is_nan(), "{r:?}");
        assert!(
            why.contains("input 0 at [0, 0]") && why.contains("planted_add"),
            "{why}"
        );
        let why = check(Some(PlantedFault::UnreducedBroadcast), 3)
            .failure
            .unwrap();
        assert!(
            why.contains("planted_add") && why.contains("input 1"),
            "{why}"
        );
        let r = check(Some(PlantedFault::WrongSign), 3);
        assert!(r.failure.is_none() && r.max_rel_err > 0.5, "{r:?}");
        assert_eq!(r.worst_input, 1);
        let r = check(Some(PlantedFault::ForwardRuleErrors), 3);
        assert!(r.failure.unwrap().starts_with("forward mode"));
        assert!(r.forward_rel_err.unwrap().is_nan());
    }

    #[test]
    fn a_missing_forward_rule_is_reported_not_failed() {
        let r = check(Some(PlantedFault::NoForwardRule), 3);
        assert!(r.passed(1e-6), "{r:?}");
        assert_eq!(r.forward_rel_err, None);
        assert!(r.forward_skipped.unwrap().contains("planted_add"));
    }

    #[test]
    fn a_planted_fault_fails_the_suite_and_only_its_op() {
        let suite = builtin_suite(0, 1e-6, cases(&[PlantedFault::NanGradient], 1));
        assert!(!suite.passed && suite.worst_rel_err.is_nan());
        let bad: Vec<&str> = suite
            .ops
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.op.as_str())
            .collect();
        assert_eq!(bad, ["planted:nan-gradient"]);
        // a NaN tangent fails first order too, by forward mode's error
        let suite = builtin_suite(0, 1e-6, cases(&[PlantedFault::NanTangent], 1));
        assert!(!suite.passed && suite.worst_forward_rel_err.is_nan());
    }

    #[test]
    fn every_planted_second_order_fault_is_caught_and_the_correct_op_passes() {
        let faults: Vec<PlantedFault> = PlantedFault::ALL
            .into_iter()
            .filter(|f| f.order() == 2)
            .collect();
        assert_eq!(faults.len(), 3);
        let suite = second_order_suite(0, 1e-6, cases(&faults, 2));
        for r in &suite.ops {
            let planted = r.op.starts_with("planted:");
            assert_eq!(r.passed, !planted, "{}: {r:?}", r.op);
        }
        let nan = suite
            .ops
            .iter()
            .find(|r| r.op == "planted:nan-hvp")
            .expect("planted");
        assert!(nan.max_rel_err.is_nan(), "{nan:?}");
        assert!(!suite.passed && suite.worst_rel_err.is_nan());
        // the same op with its correct composition passes, to second and first order
        let correct = [3, 40].map(|rows| {
            let (inputs, f) = planted_mul(None, rows);
            SuiteCase {
                op: "planted_mul".into(),
                inputs,
                f,
            }
        });
        let second = second_order_suite(0, 1e-6, correct.into_iter().collect());
        let op = second.ops.iter().find(|r| r.op == "planted_mul").unwrap();
        assert!(
            op.passed && op.cases == 2 && op.max_rel_err <= 1e-6,
            "{op:?}"
        );
        for rows in [3, 40] {
            let (inputs, f) = planted_mul(None, rows);
            let report = gradcheck(&f, &inputs, &GradcheckOptions::default()).unwrap();
            assert!(report.passed(1e-6), "{report:?}");
        }
        // and the second-order faults leave first order right
        let first = builtin_suite(0, 1e-6, cases(&faults, 1));
        assert!(
            first.passed,
            "{:?}",
            first.ops.iter().filter(|r| !r.passed).collect::<Vec<_>>()
        );
    }
}
