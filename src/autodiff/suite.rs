//! The built-in gradient-check suite run by `chainrule gradcheck`: every differentiable
//! op on random shapes (with broadcasting for binary ops), small cases element by
//! element and one large case along a random direction, from a fixed seed.

use super::{GradcheckOptions, GradcheckReport, Tape, Var, gradcheck};
use crate::error::Result;
use crate::tensor::{BinaryOp, Tensor, UnaryOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type CaseFn = Box<dyn for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>>;

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

struct Case {
    op: String,
    inputs: Vec<Tensor<f64>>,
    f: CaseFn,
}

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let large = [24, 30];
    let unary = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Ln,
        UnaryOp::Sqrt,
        UnaryOp::Abs,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::PowF(2.5),
        UnaryOp::AddScalar(0.5),
        UnaryOp::MulScalar(-1.5),
        UnaryOp::Clamp(-0.6, 0.6),
    ];
    for op in unary {
        let domain = if matches!(op, UnaryOp::Ln | UnaryOp::Sqrt | UnaryOp::PowF(_)) {
            Domain::Positive
        } else {
            Domain::AwayFromZero
        };
        for i in 0..4 {
            let shape = if i == 3 {
                large.to_vec()
            } else {
                random_shape(&mut rng, 0)
            };
            out.push(Case {
                op: op.name().into(),
                inputs: vec![sample(&shape, domain, &mut rng)],
                f: Box::new(move |_, v| Ok(v[0].unary(op))),
            });
        }
    }
    let binary = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
    ];
    for op in binary {
        let da = if op == BinaryOp::Pow {
            Domain::Positive
        } else {
            Domain::AwayFromZero
        };
        for i in 0..5 {
            let (sa, sb) = if i == 4 {
                (large.to_vec(), vec![large[1]])
            } else {
                let s = random_shape(&mut rng, 0);
                let b = broadcastable(&s, &mut rng);
                if i % 2 == 0 { (s, b) } else { (b, s) }
            };
            let inputs = vec![
                sample(&sa, da, &mut rng),
                sample(&sb, Domain::AwayFromZero, &mut rng),
            ];
            out.push(Case {
                op: op.name().into(),
                inputs,
                f: Box::new(move |_, v| v[0].binary(op, v[1])),
            });
        }
    }
    for i in 0..3 {
        let s = if i == 2 {
            large.to_vec()
        } else {
            random_shape(&mut rng, 1)
        };
        let b = broadcastable(&s, &mut rng);
        let a = sample(&s, Domain::AwayFromZero, &mut rng);
        let mask = a.gt(&Tensor::zeros(&[])).expect("scalar broadcasts");
        out.push(Case {
            op: "where".into(),
            inputs: vec![a, sample(&b, Domain::AwayFromZero, &mut rng)],
            f: Box::new(move |_, v| Var::where_(&mask, v[0], v[1])),
        });
    }
    for i in 0..5 {
        let s = if i == 4 {
            large.to_vec()
        } else {
            random_shape(&mut rng, 1)
        };
        let axes: Vec<usize> = (0..s.len()).filter(|_| rng.random_bool(0.5)).collect();
        let keep = rng.random_bool(0.5);
        let axis = rng.random_range(0..s.len());
        let x = sample(&s, Domain::AwayFromZero, &mut rng);
        let ax = axes.clone();
        out.push(Case {
            op: "sum".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].sum(&ax, keep)),
        });
        let ax = axes.clone();
        out.push(Case {
            op: "mean".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].mean(&ax, keep)),
        });
        let ax = axes.clone();
        out.push(Case {
            op: "max".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].max(&ax, keep)),
        });
        out.push(Case {
            op: "logsumexp".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].logsumexp(&axes, keep)),
        });
        out.push(Case {
            op: "softmax".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].softmax(axis)),
        });
        out.push(Case {
            op: "log_softmax".into(),
            inputs: vec![x],
            f: Box::new(move |_, v| v[0].log_softmax(axis)),
        });
    }
    for (sa, sb) in [
        (vec![3, 4], vec![4, 2]),
        (vec![2, 3, 4], vec![2, 4, 5]),
        (vec![2, 3, 4], vec![4, 3]),
        (vec![16, 24], vec![24, 12]),
    ] {
        let inputs = vec![
            sample(&sa, Domain::AwayFromZero, &mut rng),
            sample(&sb, Domain::AwayFromZero, &mut rng),
        ];
        out.push(Case {
            op: "matmul".into(),
            inputs,
            f: Box::new(|_, v| v[0].matmul(v[1])),
        });
    }
    for s in [vec![2, 3, 4], vec![4, 6, 5]] {
        let x = sample(&s, Domain::AwayFromZero, &mut rng);
        let (n, last) = (s.iter().product::<usize>(), s[2]);
        out.push(Case {
            op: "reshape".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].reshape(&[n / last, last])),
        });
        out.push(Case {
            op: "permute".into(),
            inputs: vec![x.clone()],
            f: Box::new(|_, v| v[0].permute(&[2, 0, 1])),
        });
        out.push(Case {
            op: "narrow".into(),
            inputs: vec![x.clone()],
            f: Box::new(|_, v| v[0].narrow(2, 1, 2)),
        });
        out.push(Case {
            op: "index_select".into(),
            inputs: vec![x.clone()],
            f: Box::new(|_, v| v[0].index_select(1, &[2, 0, 2])),
        });
        let rows = s[0] * s[1];
        let index: Vec<usize> = (0..rows * 2).map(|_| rng.random_range(0..s[2])).collect();
        out.push(Case {
            op: "gather".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].gather(2, &index)),
        });
        let other = sample(&[s[0], 1, s[2]], Domain::AwayFromZero, &mut rng);
        out.push(Case {
            op: "concat".into(),
            inputs: vec![x, other],
            f: Box::new(|_, v| Var::concat(&[v[0], v[1]], 1)),
        });
        let b = sample(&[s[1], 1], Domain::AwayFromZero, &mut rng);
        let target = s.clone();
        out.push(Case {
            op: "broadcast_to".into(),
            inputs: vec![b],
            f: Box::new(move |_, v| v[0].broadcast_to(&target)),
        });
    }
    out
}

/// Runs the suite; one entry per op, in a fixed order, with its worst case.
pub fn builtin_suite(seed: u64) -> Result<Vec<OpCheck>> {
    let opts = GradcheckOptions {
        seed,
        ..Default::default()
    };
    let mut results: Vec<OpCheck> = Vec::new();
    for case in cases(seed) {
        let report = gradcheck(&case.f, &case.inputs, &opts)?;
        let shapes: Vec<Vec<usize>> = case.inputs.iter().map(|x| x.shape().to_vec()).collect();
        match results.iter_mut().find(|r| r.op == case.op) {
            Some(r) => {
                r.cases += 1;
                r.worst_forward_rel_err = r
                    .worst_forward_rel_err
                    .max(report.forward_rel_err.unwrap_or(f64::NAN));
                r.worst_forward_reverse_rel_err = r
                    .worst_forward_reverse_rel_err
                    .max(report.forward_reverse_rel_err.unwrap_or(f64::NAN));
                if report.max_rel_err > r.report.max_rel_err {
                    r.report = report;
                    r.worst_shapes = shapes;
                }
            }
            None => results.push(OpCheck {
                op: case.op,
                cases: 1,
                worst_shapes: shapes,
                worst_forward_rel_err: report.forward_rel_err.unwrap_or(f64::NAN),
                worst_forward_reverse_rel_err: report.forward_reverse_rel_err.unwrap_or(f64::NAN),
                report,
            }),
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_op_passes_the_builtin_suite() {
        let results = super::builtin_suite(0).unwrap();
        assert!(results.len() >= 36, "{}", results.len());
        for r in results {
            assert!(r.report.max_rel_err <= 1e-6, "{}: {:?}", r.op, r.report);
            assert!(
                r.worst_forward_rel_err <= 1e-6,
                "{} forward: {:?}",
                r.op,
                r.worst_forward_rel_err
            );
            assert!(
                r.worst_forward_reverse_rel_err <= 1e-10,
                "{} forward vs reverse: {:?}",
                r.op,
                r.worst_forward_reverse_rel_err
            );
        }
    }
}
