//! Elementwise ops on variables. Their local derivatives come from the tables in
//! `tensor::elementwise`; reverse mode multiplies by the output gradient and, for
//! broadcasting binary ops, sums back to each input's shape.

use super::{Family, Grads, Op, VarGrads, reused_buffer};
use crate::autodiff::Tangents;
use crate::autodiff::suite::{
    Case, Domain, LARGE, ScalarForm, broadcastable, random_shape, sample,
};
use crate::autodiff::{Tape, Var};
use crate::error::Result;
use crate::tensor::{BinaryOp, Element, Number, Tensor, UnaryOp};
use rand_chacha::ChaCha8Rng;

/// Unary and binary ops of the tables, and `where`.
pub(crate) struct Elementwise;

impl<T: Element> Family<T> for Elementwise {
    fn name(op: &Op<T>) -> &str {
        match op {
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            _ => "where",
        }
    }
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        jvp(op, ins, out, t)
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        g: &Tensor<T>,
        needs: &[bool],
    ) -> Result<Grads<T>> {
        vjp(op, ins, out, g, needs)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        out: Var<'t, T>,
        g: Var<'t, T>,
        needs: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        vjp_recorded(op, ins, out, g, needs)
    }
    /// Into the node's own buffer where the shapes allow: the eager kernels, without an
    /// allocation.
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        shape: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        match op {
            Op::Unary(u) => u.apply_into(ins[0].data(), reused_buffer(slot, shape)),
            Op::Binary(b) if ins[0].shape() == ins[1].shape() && ins[0].shape() == shape => {
                b.apply_same_shape_into(ins[0].data(), ins[1].data(), reused_buffer(slot, shape))
            }
            Op::Binary(b) => *slot = Some(b.apply(ins[0], ins[1])?),
            Op::Where(mask) => *slot = Some(Tensor::where_(mask, ins[0], ins[1])?),
            _ => unreachable!("not an elementwise op"),
        }
        Ok(())
    }
}

pub(crate) fn vjp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    out: &Tensor<T>,
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    Ok(match op {
        Op::Unary(u) => smallvec::smallvec![Some(u.scale_by_derivative(ins[0], out, g))],
        Op::Binary(b) => {
            let (ga, gb) = b.scale_by_partials(ins[0], ins[1], out, g);
            let ga = if needs[0] {
                Some(ga.sum_to_shape(ins[0].shape())?)
            } else {
                None
            };
            let gb = if needs[1] {
                Some(gb.sum_to_shape(ins[1].shape())?)
            } else {
                None
            };
            smallvec::smallvec![ga, gb]
        }
        Op::Where(mask) => {
            let zero = Tensor::zeroed(&[]);
            let ga = Tensor::where_(mask, g, &zero)?.sum_to_shape(ins[0].shape())?;
            let gb = Tensor::where_(mask, &zero, g)?.sum_to_shape(ins[1].shape())?;
            smallvec::smallvec![Some(ga), Some(gb)]
        }
        _ => unreachable!("not an elementwise op"),
    })
}

/// The reverse rule recorded as ops on the tape, so that it can itself be
/// differentiated (second order): the table's derivative formula evaluated on
/// [`Recorded`] numbers. Sign and step are constants there, so the derivatives of relu,
/// abs, clamp, maximum and minimum enter as constant masks: their own derivative is zero
/// almost everywhere.
pub(crate) fn vjp_recorded<'t, T: Element>(
    op: &Op<T>,
    ins: &[Var<'t, T>],
    out: Var<'t, T>,
    g: Var<'t, T>,
    needs: &[bool],
) -> Result<VarGrads<'t, T>> {
    let (y, tape) = (Recorded::Var(out), g.tape);
    Ok(match op {
        Op::Unary(u) => {
            smallvec::smallvec![Some(scale(g, u.derivative(Recorded::Var(ins[0]), y))?)]
        }
        Op::Binary(b) => {
            let (a, c) = (ins[0], ins[1]);
            let (pa, pc) = b.partials(Recorded::Var(a), Recorded::Var(c), y);
            smallvec::smallvec![
                needs[0]
                    .then(|| sum_to_shape(scale(g, pa)?, &a.shape()))
                    .transpose()?,
                needs[1]
                    .then(|| sum_to_shape(scale(g, pc)?, &c.shape()))
                    .transpose()?
            ]
        }
        Op::Where(m) => {
            let keep = m.map(|v| if v != T::zero() { T::one() } else { T::zero() });
            let other = keep.map(|v| T::one() - v);
            smallvec::smallvec![
                Some(sum_to_shape(g.mul(tape.constant(keep))?, &ins[0].shape())?),
                Some(sum_to_shape(g.mul(tape.constant(other))?, &ins[1].shape())?)
            ]
        }
        _ => unreachable!("not an elementwise op"),
    })
}

/// `g` times a local derivative, skipping a product by the constant 1.
fn scale<'t, T: Element>(g: Var<'t, T>, d: Recorded<'t, T>) -> Result<Var<'t, T>> {
    match d {
        Recorded::Constant(1.0) => Ok(g),
        Recorded::Constant(k) => Ok(g.mul_scalar(k)),
        Recorded::Var(v) => g.mul(v),
    }
}

/// A number of the derivative table recorded on a tape: a plain constant (the `1` of
/// `1 - y²`) or a variable. Evaluating a derivative formula on these records it as ops.
#[derive(Clone, Copy)]
pub(crate) enum Recorded<'t, T: Element> {
    /// A constant, not on the tape.
    Constant(f64),
    /// A tensor on the tape.
    Var(Var<'t, T>),
}

impl<'t, T: Element> Number for Recorded<'t, T> {
    fn number(v: f64) -> Self {
        Recorded::Constant(v)
    }

    fn apply_unary(op: UnaryOp, x: Self) -> Self {
        match x {
            Recorded::Constant(k) => Recorded::Constant(op.apply_f64(k)),
            Recorded::Var(v) if op.is_piecewise_constant() => {
                Recorded::Var(v.tape.constant(op.apply(&v.value())))
            }
            Recorded::Var(v) => Recorded::Var(v.unary(op)),
        }
    }

    fn apply_binary(op: BinaryOp, a: Self, b: Self) -> Self {
        // the operands are an op's inputs and output (or constants), whose shapes
        // broadcast together: the forward op already combined them
        const SHAPES: &str = "the operands of a derivative formula broadcast together";
        use Recorded::{Constant, Var};
        Var(match (a, b) {
            (Constant(p), Constant(q)) => return Constant(op.apply_f64(p, q)),
            (Var(v), Constant(k)) => match op {
                BinaryOp::Add => v.add_scalar(k),
                BinaryOp::Sub => v.add_scalar(-k),
                BinaryOp::Mul => v.mul_scalar(k),
                BinaryOp::Div => v.mul_scalar(1.0 / k),
                BinaryOp::Pow => v.powf(k),
                _ => v.binary(op, v.tape.scalar(k)).expect(SHAPES),
            },
            (Constant(k), Var(v)) => match op {
                BinaryOp::Add => v.add_scalar(k),
                BinaryOp::Sub => v.neg().add_scalar(k),
                BinaryOp::Mul => v.mul_scalar(k),
                BinaryOp::Div => v.powf(-1.0).mul_scalar(k),
                _ => v.tape.scalar(k).binary(op, v).expect(SHAPES),
            },
            (Var(v), Var(w)) => v.binary(op, w).expect(SHAPES),
        })
    }
}

macro_rules! recorded_arithmetic {
    ($($trait:ident :: $method:ident => $op:ident),*) => {$(
        impl<'t, T: Element> std::ops::$trait for Recorded<'t, T> {
            type Output = Self;
            fn $method(self, o: Self) -> Self {
                Number::apply_binary(BinaryOp::$op, self, o)
            }
        }
    )*};
}
recorded_arithmetic!(Add::add => Add, Sub::sub => Sub, Mul::mul => Mul, Div::div => Div);

impl<'t, T: Element> std::ops::Neg for Recorded<'t, T> {
    type Output = Self;
    fn neg(self) -> Self {
        Number::apply_unary(UnaryOp::Neg, self)
    }
}

/// Sums a broadcast gradient back to `shape`, recorded (the adjoint of broadcasting).
pub(crate) fn sum_to_shape<'t, T: Element>(g: Var<'t, T>, shape: &[usize]) -> Result<Var<'t, T>> {
    let gs = g.shape();
    if gs.as_slice() == shape {
        return Ok(g);
    }
    let pad = gs.len().saturating_sub(shape.len());
    let axes: Vec<usize> = (0..gs.len())
        .filter(|&i| i < pad || (shape[i - pad] == 1 && gs[i] != 1))
        .collect();
    g.sum(&axes, true)?.reshape(shape)
}

/// Forward rule: the output tangent from the input tangents (`None` = zero).
pub(crate) fn jvp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    out: &Tensor<T>,
    t: &Tangents<T>,
) -> Result<Tensor<T>> {
    let zero = || Tensor::zeroed(&[]);
    Ok(match op {
        Op::Unary(u) => u.scale_by_derivative(
            ins[0],
            out,
            t[0].expect("a unary op's tangent comes from its input"),
        ),
        Op::Binary(b) => b.tangent(ins[0], ins[1], out, t[0], t[1]),
        Op::Where(mask) => {
            let (ta, tb) = (
                t[0].cloned().unwrap_or_else(zero),
                t[1].cloned().unwrap_or_else(zero),
            );
            Tensor::where_(mask, &ta, &tb)?.broadcast_to(out.shape())?
        }
        _ => unreachable!("not an elementwise op"),
    })
}

impl<'t, T: Element> Var<'t, T> {
    /// Records an elementwise unary op.
    pub fn unary(self, op: UnaryOp) -> Var<'t, T> {
        let y = self.tape.with_value(self.id, |x| {
            self.tape
                .build_value(x.shape(), |out| op.apply_into(x.data(), out))
        });
        self.tape.push(Op::Unary(op), &[self], y)
    }

    /// Records a broadcasting binary op; the error names the op and both shapes.
    pub fn binary(self, op: BinaryOp, other: Var<'t, T>) -> Result<Var<'t, T>> {
        Tape::check_inputs(op.name(), &[self, other])?;
        // the inputs borrowed, not cloned: a clone and its drop are two locked
        // instructions per input
        let y = self.tape.with_nodes(|nodes| {
            let (a, b) = (
                &nodes[self.id as usize].value,
                &nodes[other.id as usize].value,
            );
            if crate::tensor::same_shape(a.shape(), b.shape()) {
                Ok(self.tape.build_value(a.shape(), |out| {
                    op.apply_same_shape_into(a.data(), b.data(), out)
                }))
            } else {
                op.apply(a, b)
            }
        })?;
        Ok(self.tape.push(Op::Binary(op), &[self, other], y))
    }

    /// `mask ? self : other` elementwise; `mask` is a constant of 0s and 1s.
    pub fn where_(mask: &Tensor<T>, a: Var<'t, T>, b: Var<'t, T>) -> Result<Var<'t, T>> {
        Tape::check_inputs("where", &[a, b])?;
        let y = Tensor::where_(mask, &a.value(), &b.value())?;
        Ok(a.tape.push(Op::Where(Box::new(mask.clone())), &[a, b], y))
    }

    /// `selfᵖ` for a constant exponent.
    pub fn powf(self, p: f64) -> Var<'t, T> {
        self.unary(UnaryOp::PowF(p))
    }
    /// `self + k` for a constant.
    pub fn add_scalar(self, k: f64) -> Var<'t, T> {
        self.unary(UnaryOp::AddScalar(k))
    }
    /// `k·self` for a constant.
    pub fn mul_scalar(self, k: f64) -> Var<'t, T> {
        self.unary(UnaryOp::MulScalar(k))
    }
    /// `self` limited to `[lo, hi]` (gradient 1 inside, 0 outside).
    pub fn clamp(self, lo: f64, hi: f64) -> Var<'t, T> {
        self.unary(UnaryOp::Clamp(lo, hi))
    }
    /// Mask (constant) where `self > other`.
    pub fn gt(self, other: Var<'t, T>) -> Result<Tensor<T>> {
        self.value().gt(&other.value())
    }
    /// Mask (constant) where `self < other`.
    pub fn lt(self, other: Var<'t, T>) -> Result<Tensor<T>> {
        self.value().lt(&other.value())
    }
}

macro_rules! var_unary {
    ($($name:ident => $op:ident $doc:literal),*) => {
        #[allow(clippy::should_implement_trait)]
        impl<'t, T: Element> Var<'t, T> {
            $(
                #[doc = concat!("Elementwise ", $doc, ", recorded.")]
                pub fn $name(self) -> Var<'t, T> { self.unary(UnaryOp::$op) }
            )*
        }
    };
}
crate::tensor::elementary_functions!(var_unary);

macro_rules! var_binary {
    ($($name:ident => $op:ident, $trait:ident :: $method:ident);*) => {
        // the named methods return `Result`; the operators panic with the same message
        #[allow(clippy::should_implement_trait)]
        impl<'t, T: Element> Var<'t, T> {
            $(
                #[doc = concat!("Elementwise `", stringify!($name), "` with broadcasting, recorded.")]
                pub fn $name(self, other: Var<'t, T>) -> Result<Var<'t, T>> { self.binary(BinaryOp::$op, other) }
            )*
        }
        $(
            /// Operator form; panics with the op and both shapes if they cannot broadcast.
            impl<'t, T: Element> std::ops::$trait for Var<'t, T> {
                type Output = Var<'t, T>;
                fn $method(self, rhs: Var<'t, T>) -> Var<'t, T> {
                    self.binary(BinaryOp::$op, rhs).unwrap_or_else(|e| panic!("{e}"))
                }
            }
        )*
    };
}
var_binary!(add => Add, Add::add; sub => Sub, Sub::sub; mul => Mul, Mul::mul; div => Div, Div::div);

impl<'t, T: Element> Var<'t, T> {
    /// Elementwise maximum with broadcasting (the gradient is split evenly at ties).
    pub fn maximum(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(BinaryOp::Maximum, other)
    }
    /// Elementwise minimum with broadcasting (the gradient is split evenly at ties).
    pub fn minimum(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(BinaryOp::Minimum, other)
    }
    /// `selfᵇ` with a variable exponent, broadcasting.
    pub fn pow(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(BinaryOp::Pow, other)
    }
}

impl<'t, T: Element> std::ops::Neg for Var<'t, T> {
    type Output = Var<'t, T>;
    fn neg(self) -> Var<'t, T> {
        self.unary(UnaryOp::Neg)
    }
}

macro_rules! var_scalar_ops {
    ($($trait:ident :: $method:ident => |$v:ident, $k:ident| $e:expr);*) => {$(
        impl<'t, T: Element> std::ops::$trait<f64> for Var<'t, T> {
            type Output = Var<'t, T>;
            fn $method(self, $k: f64) -> Var<'t, T> { let $v = self; $e }
        }
    )*};
}
var_scalar_ops!(Add::add => |v, k| v.add_scalar(k); Sub::sub => |v, k| v.add_scalar(-k);
    Mul::mul => |v, k| v.mul_scalar(k); Div::div => |v, k| v.mul_scalar(1.0 / k));

/// The cases of `chainrule gradcheck` for the elementwise ops (unary, binary with
/// broadcasting, `where`).
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, out: &mut Vec<Case>) {
    let unary = UnaryOp::FUNCTIONS
        .into_iter()
        .chain(UnaryOp::WITH_CONSTANTS);
    for op in unary {
        let domain = if matches!(op, UnaryOp::Ln | UnaryOp::Sqrt | UnaryOp::PowF(_)) {
            Domain::Positive
        } else {
            Domain::AwayFromZero
        };
        for i in 0..4 {
            let shape = if i == 3 {
                LARGE.to_vec()
            } else {
                random_shape(rng, 0)
            };
            let mut x = sample(&shape, domain, rng);
            if let UnaryOp::Clamp(_, hi) = op {
                // the domain holds clamp's kinks at ±0.6: keep differences from crossing
                x = x.map(|v| {
                    if (v.abs() - hi).abs() < 0.01 {
                        v + 0.02 * v.signum()
                    } else {
                        v
                    }
                });
            }
            out.push(Case {
                op: op.name().into(),
                inputs: vec![x],
                f: Box::new(move |_, v| Ok(v[0].unary(op))),
                scalar: Some(ScalarForm::Unary(op)),
            });
        }
    }
    let binary = BinaryOp::ALL;
    for op in binary {
        let da = if op == BinaryOp::Pow {
            Domain::Positive
        } else {
            Domain::AwayFromZero
        };
        for i in 0..5 {
            let (sa, sb) = if i == 4 {
                (LARGE.to_vec(), vec![LARGE[1]])
            } else {
                let s = random_shape(rng, 0);
                let b = broadcastable(&s, rng);
                if i % 2 == 0 { (s, b) } else { (b, s) }
            };
            let inputs = vec![sample(&sa, da, rng), sample(&sb, Domain::AwayFromZero, rng)];
            out.push(Case {
                op: op.name().into(),
                inputs,
                f: Box::new(move |_, v| v[0].binary(op, v[1])),
                scalar: Some(ScalarForm::Binary(op)),
            });
        }
    }
    for i in 0..3 {
        let s = if i == 2 {
            LARGE.to_vec()
        } else {
            random_shape(rng, 1)
        };
        let b = broadcastable(&s, rng);
        let a = sample(&s, Domain::AwayFromZero, rng);
        let mask = a.gt(&Tensor::zeroed(&[])).expect("scalar broadcasts");
        out.push(Case {
            op: "where".into(),
            inputs: vec![a, sample(&b, Domain::AwayFromZero, rng)],
            f: Box::new(move |_, v| Var::where_(&mask, v[0], v[1])),
            scalar: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use crate::autodiff::Tape;
    use crate::autodiff::suite::{Domain, broadcastable, random_shape, sample};
    use crate::tensor::{BinaryOp, Tensor, UnaryOp};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn unary_ops_match_finite_differences() {
        let ops = UnaryOp::FUNCTIONS.into_iter().chain([
            UnaryOp::PowF(2.5),
            UnaryOp::PowF(-1.5),
            UnaryOp::AddScalar(3.0),
            UnaryOp::MulScalar(-2.0),
            UnaryOp::Clamp(-0.5, 0.5),
        ]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for op in ops {
            for _ in 0..4 {
                let shape = random_shape(&mut rng, 0);
                let positive = matches!(op, UnaryOp::Ln | UnaryOp::Sqrt | UnaryOp::PowF(_));
                let x = sample(
                    &shape,
                    if positive {
                        Domain::Positive
                    } else {
                        Domain::AwayFromZero
                    },
                    &mut rng,
                );
                check(op.name(), &[x], |_, v| Ok(v[0].unary(op)));
            }
        }
    }

    #[test]
    fn binary_ops_with_broadcasting_match_finite_differences() {
        let ops = BinaryOp::ALL;
        let mut fixed_rng = ChaCha8Rng::seed_from_u64(20);
        // fixed cases that always broadcast, both ways round: [3,1]·[4] → [3,4] (each
        // side expands) and [2,3,4]·[3,1] → [2,3,4] (rank and size-1 expansion)
        let fixed: [(&[usize], &[usize], &[usize]); 4] = [
            (&[3, 1], &[4], &[3, 4]),
            (&[4], &[3, 1], &[3, 4]),
            (&[2, 3, 4], &[3, 1], &[2, 3, 4]),
            (&[3, 1], &[2, 3, 4], &[2, 3, 4]),
        ];
        for op in ops {
            for &(sa, sb, out) in &fixed {
                let a_domain = if op == BinaryOp::Pow {
                    Domain::Positive
                } else {
                    Domain::AwayFromZero
                };
                let a = sample(sa, a_domain, &mut fixed_rng);
                let b = sample(sb, Domain::AwayFromZero, &mut fixed_rng);
                let tape = Tape::new();
                let y = tape.var(a.clone()).binary(op, tape.var(b.clone())).unwrap();
                assert_eq!(y.shape().as_slice(), out, "{} {sa:?} {sb:?}", op.name());
                check(op.name(), &[a, b], |_, v| v[0].binary(op, v[1]));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for op in ops {
            for trial in 0..6 {
                let sa = random_shape(&mut rng, 0);
                let sb = broadcastable(&sa, &mut rng);
                let (sa, sb) = if trial % 2 == 0 { (sa, sb) } else { (sb, sa) };
                let a = sample(
                    &sa,
                    if op == BinaryOp::Pow {
                        Domain::Positive
                    } else {
                        Domain::AwayFromZero
                    },
                    &mut rng,
                );
                let b = sample(&sb, Domain::AwayFromZero, &mut rng);
                check(op.name(), &[a, b], |_, v| v[0].binary(op, v[1]));
            }
        }
    }

    #[test]
    fn where_routes_gradients_by_mask() {
        let a = Tensor::<f64>::randn(&[3, 4], 1).unwrap();
        let b = Tensor::<f64>::randn(&[4], 2).unwrap();
        let mask = a.gt(&Tensor::zeros(&[]).unwrap()).unwrap();
        check("where", &[a, b], |_, v| {
            crate::autodiff::Var::where_(&mask, v[0], v[1])
        });
    }

    #[test]
    fn fan_out_accumulates() {
        // d/dx (x·x + x) = 2x + 1
        let tape = Tape::new();
        let x = tape.var(Tensor::<f64>::scalar(3.0));
        let y = x * x + x;
        let g = tape.backward(y).unwrap();
        assert_eq!(g[x].item().unwrap(), 7.0);
    }

    #[test]
    #[should_panic(expected = "add: incompatible shapes [2] and [3]")]
    fn operator_panics_name_op_and_shapes() {
        let tape = Tape::new();
        let a = tape.var(Tensor::<f32>::zeros(&[2]).unwrap());
        let b = tape.var(Tensor::<f32>::zeros(&[3]).unwrap());
        let _ = a + b;
    }

    #[test]
    fn no_grad_records_constants() {
        let tape = Tape::new();
        let x = tape.var(Tensor::<f64>::scalar(2.0));
        let y = tape.no_grad(|| x.exp());
        let z = x * y;
        let g = tape.backward(z).unwrap();
        // y is treated as a constant: dz/dx = y
        assert!((g[x].item().unwrap() - 2f64.exp()).abs() < 1e-12);
    }
}
