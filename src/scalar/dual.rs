//! Dual numbers `v + d·ε` with `ε² = 0`: carrying `d` through every operation computes
//! a directional derivative alongside the value (forward mode). Every operation is an op
//! of the derivative table: the value from its formula, the tangent from its derivative.

use super::Real;
use crate::tensor::{BinaryOp, Number, UnaryOp};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A value and its derivative along one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dual<F> {
    /// The value.
    pub v: F,
    /// The derivative (tangent).
    pub d: F,
}

impl<F> Dual<F> {
    /// `v + d·ε`.
    pub fn new(v: F, d: F) -> Self {
        Dual { v, d }
    }
}

impl<F: Real> Number for Dual<F> {
    #[inline]
    fn number(v: f64) -> Self {
        Dual::new(F::number(v), F::number(0.0))
    }
    /// `f(v) + d·f'(v)·ε`.
    #[inline]
    fn apply_unary(op: UnaryOp, x: Self) -> Self {
        let y = F::apply_unary(op, x.v);
        Dual::new(y, x.d * op.derivative(x.v, y))
    }
    /// `f(a, b) + (a.d·∂f/∂a + b.d·∂f/∂b)·ε`.
    #[inline]
    fn apply_binary(op: BinaryOp, a: Self, b: Self) -> Self {
        let y = F::apply_binary(op, a.v, b.v);
        let (pa, pb) = op.partials(a.v, b.v, y);
        Dual::new(y, a.d * pa + b.d * pb)
    }
}

macro_rules! dual_arithmetic {
    ($($trait:ident :: $method:ident => $op:ident),*) => {$(
        impl<F: Real> $trait for Dual<F> {
            type Output = Self;
            #[inline]
            fn $method(self, o: Self) -> Self {
                Number::apply_binary(BinaryOp::$op, self, o)
            }
        }
    )*};
}
dual_arithmetic!(Add::add => Add, Sub::sub => Sub, Mul::mul => Mul, Div::div => Div);

impl<F: Real> Neg for Dual<F> {
    type Output = Self;
    #[inline]
    fn neg(self) -> Self {
        Number::apply_unary(UnaryOp::Neg, self)
    }
}

impl<F: Real> super::sealed::Sealed for Dual<F> {}

impl<F: Real> Real for Dual<F> {
    fn value(self) -> f64 {
        self.v.value()
    }
}
