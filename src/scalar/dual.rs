//! Dual numbers `v + d·ε` with `ε² = 0`: carrying `d` through every operation computes
//! a directional derivative alongside the value (forward mode).

use super::Real;
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

impl<F: Real> Add for Dual<F> {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Dual::new(self.v + o.v, self.d + o.d)
    }
}
impl<F: Real> Sub for Dual<F> {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Dual::new(self.v - o.v, self.d - o.d)
    }
}
impl<F: Real> Mul for Dual<F> {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        Dual::new(self.v * o.v, self.d * o.v + self.v * o.d)
    }
}
impl<F: Real> Div for Dual<F> {
    type Output = Self;
    fn div(self, o: Self) -> Self {
        let q = self.v / o.v;
        Dual::new(q, (self.d - q * o.d) / o.v)
    }
}
impl<F: Real> Neg for Dual<F> {
    type Output = Self;
    fn neg(self) -> Self {
        Dual::new(-self.v, -self.d)
    }
}

impl<F: Real> super::sealed::Sealed for Dual<F> {}

impl<F: Real> Real for Dual<F> {
    fn cst(v: f64) -> Self {
        Dual::new(F::cst(v), F::cst(0.0))
    }
    fn value(self) -> f64 {
        self.v.value()
    }
    fn exp(self) -> Self {
        let e = self.v.exp();
        Dual::new(e, self.d * e)
    }
    fn ln(self) -> Self {
        Dual::new(self.v.ln(), self.d / self.v)
    }
    fn sqrt(self) -> Self {
        let r = self.v.sqrt();
        Dual::new(r, self.d / (F::cst(2.0) * r))
    }
    fn sin(self) -> Self {
        Dual::new(self.v.sin(), self.d * self.v.cos())
    }
    fn cos(self) -> Self {
        Dual::new(self.v.cos(), -(self.d * self.v.sin()))
    }
    fn tanh(self) -> Self {
        let t = self.v.tanh();
        Dual::new(t, self.d * (F::cst(1.0) - t * t))
    }
    fn abs(self) -> Self {
        let s = if self.v.value() > 0.0 {
            1.0
        } else if self.v.value() < 0.0 {
            -1.0
        } else {
            0.0
        };
        Dual::new(self.v.abs(), self.d * F::cst(s))
    }
    fn powf(self, p: f64) -> Self {
        Dual::new(self.v.powf(p), self.d * F::cst(p) * self.v.powf(p - 1.0))
    }
}
