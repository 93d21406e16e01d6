//! Scalar automatic differentiation for generic Rust code. Write a function once as
//! `fn f<T: Real>(x: &[T]) -> T`; then [`grad_reverse`] runs it on tape variables
//! (reverse mode), [`grad_forward`] on dual numbers (forward mode, one pass per input),
//! [`grad_central`] on plain `f64` (finite differences), and [`hvp`] on tape variables
//! over dual numbers (forward-over-reverse: a Hessian-vector product).

// Soundness here rests on the compiler alone: the tape is safe code over cells.
#![forbid(unsafe_code)]

mod dual;
mod tape;

pub use dual::Dual;
pub use tape::{STape, SVar};

use crate::tensor::{BinaryOp, Number, UnaryOp};

/// The table's elementary functions as methods of [`Real`], but `neg`: the `-` operator
/// (`Neg`, a supertrait) is that one, and a second `neg` would make `x.neg()` ambiguous.
macro_rules! real_functions {
    (neg => Neg $neg_doc:literal, $($name:ident => $op:ident $doc:literal),*) => {
        $(
            #[doc = $doc]
            fn $name(self) -> Self {
                Self::apply_unary(UnaryOp::$op, self)
            }
        )*
    };
}

/// The private supertrait that seals [`Real`]: public inside a private module, so no
/// code outside this crate can name it, hence none can implement `Real`.
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A number that generic differentiable code can compute with: `f32`, `f64`,
/// [`Dual`] and [`SVar`] implement it. Write functions generic over it
/// (`fn f<T: Real>(x: &[T]) -> T`) and run them on any of those.
///
/// Every function here and every operator is an op of the library's one derivative
/// table ([`UnaryOp`], [`BinaryOp`]): its value and its local derivative are the ones the
/// tensor kernels use, so the scalar engines cannot disagree with the tensor engine on
/// a rule.
///
/// The trait is **sealed**: only this crate implements it (for `f32`, `f64`, `Dual<F>`
/// and `SVar<F>` over any `F: Real`); users write generic code over it, not new number
/// types. The reason: [`STape`] calls `F`'s arithmetic (constants, `+`, `*`, copies)
/// in the middle of recording a node and of the backward sweep. A foreign type whose
/// arithmetic recorded on that same tape (say through a thread-local handle) would
/// change the node list under those calls; the tape's storage keeps that memory-safe
/// (it has no `unsafe`), but the recording would be garbage. Sealed, every line of code
/// that runs inside the tape is ours. Implementing it outside the crate does not
/// compile:
///
/// ```compile_fail,E0277
/// use chainrule::scalar::Real;
/// use std::ops::{Add, Div, Mul, Neg, Sub};
///
/// #[derive(Clone, Copy, Debug)]
/// struct Mine(f64);
/// impl Add for Mine { type Output = Mine; fn add(self, o: Mine) -> Mine { Mine(self.0 + o.0) } }
/// impl Sub for Mine { type Output = Mine; fn sub(self, o: Mine) -> Mine { Mine(self.0 - o.0) } }
/// impl Mul for Mine { type Output = Mine; fn mul(self, o: Mine) -> Mine { Mine(self.0 * o.0) } }
/// impl Div for Mine { type Output = Mine; fn div(self, o: Mine) -> Mine { Mine(self.0 / o.0) } }
/// impl Neg for Mine { type Output = Mine; fn neg(self) -> Mine { Mine(-self.0) } }
///
/// impl Real for Mine {
///     fn value(self) -> f64 { self.0 }
/// }
/// ```
///
/// [`UnaryOp`]: crate::tensor::UnaryOp
/// [`BinaryOp`]: crate::tensor::BinaryOp
pub trait Real: sealed::Sealed + Number + std::fmt::Debug {
    /// The plain value (the primal part).
    fn value(self) -> f64;
    /// A constant.
    fn cst(v: f64) -> Self {
        Self::number(v)
    }
    crate::tensor::elementary_functions!(real_functions);
    /// `xᵖ` for a constant `p`
    fn powf(self, p: f64) -> Self {
        Self::apply_unary(UnaryOp::PowF(p), self)
    }
    /// Any elementwise op of the table (`clamp`, `sign`, ...).
    fn unary(self, op: UnaryOp) -> Self {
        Self::apply_unary(op, self)
    }
    /// Any binary op of the table (`maximum`, `pow`, ...).
    fn binary(self, op: BinaryOp, other: Self) -> Self {
        Self::apply_binary(op, self, other)
    }
}

macro_rules! real_float {
    ($t:ty) => {
        impl Real for $t {
            fn value(self) -> f64 {
                self as f64
            }
        }
    };
}
real_float!(f32);
real_float!(f64);

/// The gradient of `f` at `x` by reverse mode: one recording, one reverse sweep.
pub fn grad_reverse<F>(f: F, x: &[f64]) -> (f64, Vec<f64>)
where
    F: for<'t> Fn(&[SVar<'t, f64>]) -> SVar<'t, f64>,
{
    let tape = STape::<f64>::with_capacity(x.len() * 4);
    let vars: Vec<SVar<'_, f64>> = x.iter().map(|&v| tape.var(v)).collect();
    let y = f(&vars);
    let adj = tape.backward(y, 1.0);
    (y.value, vars.iter().map(|v| adj[v.id()]).collect())
}

/// The gradient of `f` at `x` by forward mode: one pass per input, each seeding one
/// input's tangent with 1.
pub fn grad_forward<F>(f: F, x: &[f64]) -> Vec<f64>
where
    F: Fn(&[Dual<f64>]) -> Dual<f64>,
{
    let mut xs: Vec<Dual<f64>> = x.iter().map(|&v| Dual::new(v, 0.0)).collect();
    (0..x.len())
        .map(|i| {
            xs[i].d = 1.0;
            let d = f(&xs).d;
            xs[i].d = 0.0;
            d
        })
        .collect()
}

/// The gradient of `f` at `x` by central differences: 2 evaluations per input.
pub fn grad_central<F>(f: F, x: &[f64], eps: f64) -> Vec<f64>
where
    F: Fn(&[f64]) -> f64,
{
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = eps * x[i].abs().max(1.0);
            xs[i] = x[i] + h;
            let plus = f(&xs);
            xs[i] = x[i] - h;
            let minus = f(&xs);
            xs[i] = x[i];
            (plus - minus) / (2.0 * h)
        })
        .collect()
}

/// The Hessian-vector product `H v` of `f` at `x`, by forward-over-reverse: the reverse
/// sweep runs on dual numbers whose tangents carry the direction `v`, so the tangent of
/// the gradient is `H v`. Costs about one gradient.
pub fn hvp<F>(f: F, x: &[f64], v: &[f64]) -> Vec<f64>
where
    F: for<'t> Fn(&[SVar<'t, Dual<f64>>]) -> SVar<'t, Dual<f64>>,
{
    let tape = STape::<Dual<f64>>::with_capacity(x.len() * 4);
    let vars: Vec<SVar<'_, Dual<f64>>> = x
        .iter()
        .zip(v)
        .map(|(&a, &b)| tape.var(Dual::new(a, b)))
        .collect();
    let y = f(&vars);
    let adj = tape.backward(y, Dual::new(1.0, 0.0));
    vars.iter().map(|var| adj[var.id()].d).collect()
}

/// The full Hessian for small inputs: one Hessian-vector product per basis vector.
pub fn hessian<F>(f: F, x: &[f64]) -> Vec<Vec<f64>>
where
    F: for<'t> Fn(&[SVar<'t, Dual<f64>>]) -> SVar<'t, Dual<f64>>,
{
    let n = x.len();
    (0..n)
        .map(|i| {
            let mut e = vec![0.0; n];
            e[i] = 1.0;
            hvp(&f, x, &e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rosenbrock function, written once for every number type.
    fn rosenbrock<T: Real>(x: &[T]) -> T {
        let mut s = T::cst(0.0);
        for i in 0..x.len() - 1 {
            let a = x[i + 1] - x[i] * x[i];
            let b = T::cst(1.0) - x[i];
            s = s + T::cst(100.0) * a * a + b * b;
        }
        s
    }

    fn every_function<T: Real>(x: &[T]) -> T {
        let (a, b) = (x[0], x[1]);
        (a * b).exp()
            + (a + T::cst(2.0)).ln()
            + (a * a + b).sqrt()
            + (a - b).abs()
            + a.sin() * b.cos()
            + (a * b).tanh()
            + (a - b).sigmoid()
            + (b - a).relu()
            + a.powf(3.0)
            + b / (T::cst(1.0) + a * a)
    }

    /// Every op of the table at points away from its kinks and poles.
    fn table_points() -> (Vec<UnaryOp>, Vec<BinaryOp>, Vec<f64>) {
        let unary: Vec<UnaryOp> = UnaryOp::FUNCTIONS
            .into_iter()
            .chain(UnaryOp::WITH_CONSTANTS)
            .chain([UnaryOp::PowF(3.0), UnaryOp::Sign, UnaryOp::Step])
            .collect();
        let binary = BinaryOp::ALL.to_vec();
        (unary, binary, vec![0.3, 0.77, 1.4, 2.9])
    }

    /// One rule, four engines: the tensor kernel's reverse rule, the dual numbers, the
    /// scalar tape and the explainer's `derivative_f64` give the same bits, because all
    /// of them evaluate the table's one derivative formula.
    #[test]
    fn every_engine_takes_the_same_derivative_from_the_table() {
        use crate::tensor::Tensor;
        let (unary, binary, points) = table_points();
        for op in unary {
            for x in points.iter().flat_map(|&p| [p, -p]) {
                let xt = Tensor::from_vec(vec![x], &[1]).unwrap();
                let kernel =
                    op.scale_by_derivative(&xt, &op.apply(&xt), &Tensor::ones(&[1]).unwrap());
                let dual = Dual::new(x, 1.0).unary(op);
                let tape = STape::<f64>::with_capacity(4);
                let v = tape.var(x);
                let y = v.unary(op);
                let reverse = tape.backward(y, 1.0)[v.id()];
                let want = op.derivative_f64(x);
                let name = op.name();
                assert_eq!(
                    kernel.data()[0].to_bits(),
                    want.to_bits(),
                    "{name} kernel at {x}"
                );
                assert_eq!(dual.d.to_bits(), want.to_bits(), "{name} dual at {x}");
                assert_eq!(reverse.to_bits(), want.to_bits(), "{name} tape at {x}");
                assert_eq!(dual.v.to_bits(), op.apply_f64(x).to_bits(), "{name} value");
                assert_eq!(y.value.to_bits(), op.apply_f64(x).to_bits(), "{name} value");
            }
        }
        for op in binary {
            for &a in &points {
                for b in points.iter().flat_map(|&p| [p, -p]) {
                    let (at, bt) = (
                        Tensor::from_vec(vec![a], &[1]).unwrap(),
                        Tensor::from_vec(vec![b], &[1]).unwrap(),
                    );
                    let yt = op.apply(&at, &bt).unwrap();
                    let (ka, kb) =
                        op.scale_by_partials(&at, &bt, &yt, &Tensor::ones(&[1]).unwrap());
                    let (wa, wb) = op.partials_f64(a, b);
                    let da = Dual::new(a, 1.0).binary(op, Dual::new(b, 0.0)).d;
                    let db = Dual::new(a, 0.0).binary(op, Dual::new(b, 1.0)).d;
                    let tape = STape::<f64>::with_capacity(4);
                    let (va, vb) = (tape.var(a), tape.var(b));
                    let adj = tape.backward(va.binary(op, vb), 1.0);
                    let name = op.name();
                    for (got, want, engine) in [
                        (ka.data()[0], wa, "kernel"),
                        (kb.data()[0], wb, "kernel"),
                        (da, wa, "dual"),
                        (db, wb, "dual"),
                        (adj[va.id()], wa, "tape"),
                        (adj[vb.id()], wb, "tape"),
                    ] {
                        assert!(
                            got.to_bits() == want.to_bits(),
                            "{name} {engine} at ({a}, {b}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The table's derivative formulas are themselves made of table ops, so nesting dual
    /// numbers differentiates them again: each op's second derivative against central
    /// differences of its first.
    #[test]
    fn nested_duals_give_every_ops_second_derivative() {
        let (unary, binary, points) = table_points();
        let h = 1e-6;
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-6 * want.abs().max(1.0);
        for op in unary {
            for x in points.iter().flat_map(|&p| [p, -p]) {
                if x < 0.0 && matches!(op, UnaryOp::Ln | UnaryOp::Sqrt | UnaryOp::PowF(_)) {
                    continue;
                }
                let dd = Dual::new(Dual::new(x, 1.0), Dual::new(1.0, 0.0)).unary(op);
                let fd = (op.derivative_f64(x + h) - op.derivative_f64(x - h)) / (2.0 * h);
                assert!(
                    close(dd.d.d, fd),
                    "{} at {x}: {} vs {fd}",
                    op.name(),
                    dd.d.d
                );
            }
        }
        for op in binary {
            for &a in &points {
                for b in points.iter().flat_map(|&p| [p, -p]) {
                    if a == b && matches!(op, BinaryOp::Maximum | BinaryOp::Minimum) {
                        continue; // the kink
                    }
                    // ∂²y/∂a∂b by nesting along a then b, against differences in b of ∂y/∂a
                    let y = Dual::new(Dual::new(a, 1.0), Dual::new(0.0, 0.0))
                        .binary(op, Dual::new(Dual::new(b, 0.0), Dual::new(1.0, 0.0)));
                    let fd =
                        (op.partials_f64(a, b + h).0 - op.partials_f64(a, b - h).0) / (2.0 * h);
                    assert!(
                        close(y.d.d, fd),
                        "{} at ({a}, {b}): {} vs {fd}",
                        op.name(),
                        y.d.d
                    );
                }
            }
        }
    }

    #[test]
    fn three_methods_agree_on_generic_code() {
        let x = [1.3, 0.7];
        let (v, rev) = grad_reverse(|x| every_function(x), &x);
        let fwd = grad_forward(every_function, &x);
        let fd = grad_central(every_function, &x, 1e-6);
        assert!((v - every_function(&x)).abs() < 1e-15);
        for i in 0..2 {
            assert!((rev[i] - fwd[i]).abs() < 1e-12, "{rev:?} {fwd:?}");
            assert!((rev[i] - fd[i]).abs() < 1e-7, "{rev:?} {fd:?}");
        }
    }

    #[test]
    fn hvp_matches_differences_of_the_gradient_on_rosenbrock() {
        let x = [-1.2, 1.0, 0.5, 2.0];
        let v = [0.3, -0.7, 1.1, 0.2];
        let hv = hvp(|x| rosenbrock(x), &x, &v);
        let h = 1e-5;
        let plus: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + h * b).collect();
        let minus: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a - h * b).collect();
        let (gp, gm) = (
            grad_reverse(|x| rosenbrock(x), &plus).1,
            grad_reverse(|x| rosenbrock(x), &minus).1,
        );
        for i in 0..4 {
            let fd = (gp[i] - gm[i]) / (2.0 * h);
            assert!(
                (hv[i] - fd).abs() <= 1e-5 * fd.abs().max(1.0),
                "{hv:?} vs {fd}"
            );
        }
        // the analytic Hessian of the 2-D Rosenbrock at (1, 1): [[802, -400], [-400, 200]]
        let hs = hessian(|x| rosenbrock(x), &[1.0, 1.0]);
        assert_eq!(hs, vec![vec![802.0, -400.0], vec![-400.0, 200.0]]);
    }
}
