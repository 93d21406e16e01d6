//! Elementwise ops and the one table of their derivatives. Each op's forward formula
//! and its local derivative sit side by side (`unary_table!`, `binary_table!`). The
//! derivative is written once, in [`Number`] arithmetic, and every engine evaluates that
//! same text: the tensor kernels on `f32`/`f64` (reverse and forward mode), the dual
//! numbers and the scalar tape of [`crate::scalar`] (whose `exp`, `*`, ... are these ops),
//! `explain`, and the recorded reverse rules of second order, which evaluate it on
//! variables so that the derivative can be differentiated again. Adding an op here gives
//! it every rule at once.

use super::shape::{broadcast_shapes, broadcast_strides, for_each_offset};
use super::{Element, Tensor, c, same_shape};
use crate::error::Result;
use rayon::prelude::*;

pub(crate) use number::Number;

mod number {
    use super::{BinaryOp, UnaryOp};
    use std::ops::{Add, Div, Mul, Neg, Sub};

    /// The numbers the derivative table is written in: every type an engine computes a
    /// derivative in (`f32` and `f64` in the kernels, dual numbers, scalar tape
    /// variables, recorded tensors). Not nameable outside the crate: the table, not a
    /// user type, decides what each op does.
    pub trait Number:
        Copy
        + Add<Output = Self>
        + Sub<Output = Self>
        + Mul<Output = Self>
        + Div<Output = Self>
        + Neg<Output = Self>
    {
        /// A constant.
        fn number(v: f64) -> Self;
        /// A unary op of the table: on floats its formula, on differentiable numbers the
        /// op together with its derivative from the same table.
        fn apply_unary(op: UnaryOp, x: Self) -> Self;
        /// A binary op of the table (see [`Number::apply_unary`]).
        fn apply_binary(op: BinaryOp, a: Self, b: Self) -> Self;
    }
}

// The functions derivative formulas are written with: each one is an op of the table, so
// a derivative evaluated on a differentiable number is itself differentiated by the table.

#[inline(always)]
fn number<S: Number>(v: f64) -> S {
    S::number(v)
}
#[inline(always)]
fn recip<S: Number>(x: S) -> S {
    S::number(1.0) / x
}
#[inline(always)]
fn sin<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Sin, x)
}
#[inline(always)]
fn cos<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Cos, x)
}
#[inline(always)]
fn ln<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Ln, x)
}
#[inline(always)]
fn powf<S: Number>(x: S, p: f64) -> S {
    S::apply_unary(UnaryOp::PowF(p), x)
}
#[inline(always)]
fn pow<S: Number>(a: S, b: S) -> S {
    S::apply_binary(BinaryOp::Pow, a, b)
}
#[inline(always)]
fn erf<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Erf, x)
}
#[inline(always)]
fn exp<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Exp, x)
}
#[inline(always)]
fn tanh<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Tanh, x)
}
/// 2/√π, erf's derivative at 0.
const FRAC_2_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;
/// 1/√2.
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π), the standard normal density at 0.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
/// √(2/π) of GELU's tanh form.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of GELU's tanh form (PyTorch's 0.044715).
const GELU_CUBIC: f64 = 0.044715;

/// −1, 0 or 1 (a constant to every engine: its derivative is zero).
#[inline(always)]
fn sign<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Sign, x)
}
/// 1 where `x > 0`, else 0 (a constant to every engine).
#[inline(always)]
fn step<S: Number>(x: S) -> S {
    S::apply_unary(UnaryOp::Step, x)
}

macro_rules! float_number {
    ($t:ty) => {
        impl Number for $t {
            #[inline(always)]
            fn number(v: f64) -> Self {
                v as $t
            }
            /// A derivative formula's `exp` (erf's and GELU's) is the vectorisable
            /// [`Element::exp_`]: libm's scalar `expf` was a sixth of a GPT's backward
            /// sweep (f64 is unchanged; the `exp` op's own values are libm's).
            #[inline(always)]
            fn apply_unary(op: UnaryOp, x: Self) -> Self {
                match op {
                    UnaryOp::Exp => x.exp_(),
                    _ => op.value(x),
                }
            }
            #[inline(always)]
            fn apply_binary(op: BinaryOp, a: Self, b: Self) -> Self {
                op.value(a, b)
            }
        }
    };
}
float_number!(f32);
float_number!(f64);

/// Below this many elements a kernel runs on the calling thread: spawning work on the
/// rayon pool costs a few microseconds, more than a small loop.
pub(crate) const PARALLEL_MIN_LEN: usize = 1 << 16;

/// Runs `f` over matching chunks of `out` and `inputs`, in parallel for large slices.
fn chunked<T: Element, const N: usize>(
    out: &mut [T],
    inputs: [&[T]; N],
    f: impl Fn(&mut [T], [&[T]; N]) + Sync + Send,
) {
    let n = out.len();
    if n < PARALLEL_MIN_LEN {
        f(out, inputs);
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads * 4).max(4096);
    out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
        let start = i * chunk;
        let ins: [&[T]; N] = std::array::from_fn(|j| &inputs[j][start..start + o.len()]);
        f(o, ins)
    });
}

/// Runs `$call` compiled with the target feature `$feature` (a string literal, as for
/// `is_x86_feature_detected!`) when the CPU has it, and `$otherwise` when it does not or
/// off x86-64 (there, `$call` itself).
macro_rules! with_feature {
    ($feature:tt, $call:expr, $otherwise:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = $feature)]
            fn compiled_for_it<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!($feature) {
                // SAFETY: the CPU supports the feature, checked just above.
                unsafe { compiled_for_it(|| $call) }
            } else {
                $otherwise
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $call
        }
    }};
}
pub(crate) use with_feature;

/// Runs a kernel call compiled for AVX2 when the CPU has it (twice the vector width of
/// the portable x86-64 baseline; no FMA, so results are the same either way). Also used
/// by the recurrent cells' gate loops.
macro_rules! with_avx2 {
    ($call:expr) => {
        $crate::tensor::with_feature!("avx2", $call, $call)
    };
}
pub(crate) use with_avx2;

/// [`with_avx2`] with AVX-512 (16 lanes of f32) where the CPU has it, for loops bound by
/// arithmetic, such as the recurrent gates' `tanh` and `exp` polynomials. Element by
/// element the same operations as the narrower copies, so the same results (the feature
/// brings FMA with it, but Rust never fuses a multiply and an add on its own).
macro_rules! with_avx512 {
    ($call:expr) => {
        $crate::tensor::with_feature!("avx512f", $call, $crate::tensor::with_avx2!($call))
    };
}
pub(crate) use with_avx512;

/// Below this many elements the portable loop runs directly: the dispatch to the AVX2
/// copy costs more than it saves on a handful of values.
const SMALL: usize = 64;

/// Elementwise functions of one tensor (some with a scalar parameter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `eˣ`
    Exp,
    /// natural logarithm
    Ln,
    /// square root
    Sqrt,
    /// `|x|`
    Abs,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// hyperbolic tangent
    Tanh,
    /// logistic sigmoid `1 / (1 + e⁻ˣ)`
    Sigmoid,
    /// `max(x, 0)`
    Relu,
    /// `xᵖ` for a constant `p`
    PowF(f64),
    /// `x + c` for a constant `c`
    AddScalar(f64),
    /// `c·x` for a constant `c`
    MulScalar(f64),
    /// `x` limited to `[lo, hi]`
    Clamp(f64, f64),
    /// the error function `erf(x) = 2/√π ∫₀ˣ e^(−t²) dt`
    Erf,
    /// GELU as PyTorch's `gelu(x)`: `x·Φ(x) = x·(1 + erf(x/√2))/2`
    Gelu,
    /// GELU as PyTorch's `gelu(x, approximate="tanh")`:
    /// `x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2`
    GeluTanh,
    /// −1, 0 or 1 by the sign of `x` (derivative 0)
    Sign,
    /// the unit step: 1 where `x > 0`, else 0 (derivative 0)
    Step,
}

macro_rules! unary_table {
    ($dollar:tt
     functions { $( $fv:ident => $fname:ident $fdoc:literal, |$fx:ident| $ff:expr, |$fdx:ident, $fy:ident| $fd:expr, $fformula:literal; )* }
     others { $( $pat:pat => $name:literal, |$x:ident| $f:expr, |$dx:ident, $y:ident| $d:expr, $formula:literal; )* }
    ) => {
        impl UnaryOp {
            /// The table's elementary functions without a parameter, in table order:
            /// what the suites and the engines' cross-checks run over (each adds the
            /// parametrised ops it checks, with its own constants), and the functions
            /// the explainer's grammar knows.
            pub(crate) const FUNCTIONS: [UnaryOp; [$(stringify!($fv)),*].len()] = [$(UnaryOp::$fv),*];

            /// The op's name, as printed by gradcheck and explain.
            #[allow(unused_variables)]
            pub fn name(self) -> &'static str {
                match self { $(UnaryOp::$fv => stringify!($fname),)* $($pat => $name),* }
            }
            /// The local derivative ∂y/∂x as a formula in `x` and `y`.
            #[allow(unused_variables)]
            pub fn derivative_formula(self) -> &'static str {
                match self { $(UnaryOp::$fv => $fformula,)* $($pat => $formula),* }
            }
            /// `f(x)` on one float.
            #[allow(unused_variables)]
            #[inline(always)]
            pub(crate) fn value<T: Element>(self, x: T) -> T {
                match self {
                    $(UnaryOp::$fv => { let $fx = x; $ff })*
                    $($pat => { let $x = x; $f })*
                }
            }
            /// The local derivative `f'(x)`, where `y = f(x)`, in any [`Number`]: the
            /// formula every engine evaluates.
            #[allow(unused_variables)]
            #[inline(always)]
            pub(crate) fn derivative<S: Number>(self, x: S, y: S) -> S {
                match self {
                    $(UnaryOp::$fv => { let ($fdx, $fy) = (x, y); $fd })*
                    $($pat => { let ($dx, $y) = (x, y); $d })*
                }
            }
            /// `out[i] = f(x[i])`.
            #[allow(unused_variables)]
            #[inline(always)]
            pub(crate) fn map_slice<T: Element>(self, xs: &[T], out: &mut [T]) {
                match self {
                    $(UnaryOp::$fv => for (o, &$fx) in out.iter_mut().zip(xs) { *o = $ff; })*
                    $($pat => for (o, &$x) in out.iter_mut().zip(xs) { *o = $f; })*
                }
            }
            /// `out[i] = seed[i] · f'(x[i])`, where `y = f(x)`: the VJP with `seed` = the
            /// output's gradient, and the JVP with `seed` = the input's tangent. The op
            /// is matched outside the loop so that each loop vectorises.
            #[allow(unused_variables)]
            #[inline(always)]
            pub(crate) fn scale_slice<T: Element>(self, xs: &[T], ys: &[T], seed: &[T], out: &mut [T]) {
                let each = out.iter_mut().zip(xs).zip(ys).zip(seed);
                match self {
                    $(UnaryOp::$fv => for (((o, &x), &y), &s) in each { *o = s * self.derivative(x, y); })*
                    $($pat => for (((o, &x), &y), &s) in each { *o = s * self.derivative(x, y); })*
                }
            }
            /// [`UnaryOp::scale_slice`] with the seed in `out`, overwritten by the
            /// result (the same product, so the same rounding).
            #[allow(unused_variables)]
            #[inline(always)]
            pub(crate) fn scale_slice_in_place<T: Element>(self, xs: &[T], ys: &[T], out: &mut [T]) {
                let each = out.iter_mut().zip(xs).zip(ys);
                match self {
                    $(UnaryOp::$fv => for ((o, &x), &y) in each { *o *= self.derivative(x, y); })*
                    $($pat => for ((o, &x), &y) in each { *o *= self.derivative(x, y); })*
                }
            }
        }

        /// Hands the table's elementary functions, one `method => Variant "doc"` row
        /// each, to the macro named: the lists that repeat them (the methods of
        /// `Tensor`, `Var` and `Real`) are generated from the table's rows.
        macro_rules! elementary_functions {
            ($dollar then:ident) => { $dollar then! { $($fname => $fv $fdoc),* } };
        }
        pub(crate) use elementary_functions;
    };
}

// The table: each op's name, forward f(x) on floats, derivative f'(x) in `Number`
// arithmetic written in x and y = f(x), and the derivative's formula as text. The
// elementary functions (first) are also methods of `Tensor`, `Var` and `Real` under
// their name, with the doc given, and functions of the explainer's grammar; a new one
// is one row here. (The `$` lets the table define `elementary_functions!`.)
unary_table! { $
    functions {
    Neg => neg "`-x`", |x| -x, |x, y| number(-1.0), "-1";
    Exp => exp "`eˣ`", |x| x.exp(), |x, y| y, "exp(x)";
    Ln => ln "the natural logarithm", |x| x.ln(), |x, y| recip(x), "1/x";
    Sqrt => sqrt "the square root", |x| x.sqrt(), |x, y| number::<S>(0.5) / y, "1/(2·sqrt(x))";
    Abs => abs "`|x|`", |x| x.abs(), |x, y| sign(x), "sign(x)";
    Sin => sin "the sine", |x| x.sin(), |x, y| cos(x), "cos(x)";
    Cos => cos "the cosine", |x| x.cos(), |x, y| -sin(x), "-sin(x)";
    Tanh => tanh "the hyperbolic tangent", |x| x.tanh_(), |x, y| number::<S>(1.0) - y * y, "1 - tanh²(x)";
    Sigmoid => sigmoid "the logistic sigmoid `1 / (1 + e⁻ˣ)`", |x| sigmoid(x), |x, y| y * (number::<S>(1.0) - y), "σ(x)·(1 - σ(x))";
    // NaN in, NaN out (PyTorch's policy): a NaN input is returned, not replaced by 0
    Relu => relu "`max(x, 0)`", |x| if x > T::zero() || x.is_nan() { x } else { T::zero() }, |x, y| step(x),
        "1 if x > 0 else 0";
    Erf => erf "the error function", |x| erf_of(x), |x, y| number::<S>(FRAC_2_SQRT_PI) * exp(-(x * x)),
        "2/√π·exp(−x²)";
    // Φ(x) + x·φ(x), with φ the standard normal density
    Gelu => gelu "GELU, `x·Φ(x)`", |x| x * c(0.5) * (T::one() + erf_of(x * c(FRAC_1_SQRT_2))),
        |x, y| number::<S>(0.5) * (number::<S>(1.0) + erf(x * number::<S>(FRAC_1_SQRT_2)))
            + x * number::<S>(FRAC_1_SQRT_2PI) * exp(number::<S>(-0.5) * x * x),
        "Φ(x) + x·φ(x)";
    // with u = √(2/π)·(x + 0.044715·x³): (1 + tanh u)/2 + x·(1 − tanh² u)·u′/2
    GeluTanh => gelu_tanh "GELU's tanh approximation",
        |x| x * c(0.5) * (T::one() + (c::<T>(SQRT_2_OVER_PI) * (x + c::<T>(GELU_CUBIC) * x * x * x)).tanh_()),
        |x, y| {
            let t = tanh(number::<S>(SQRT_2_OVER_PI) * (x + number::<S>(GELU_CUBIC) * x * x * x));
            let du = number::<S>(SQRT_2_OVER_PI) * (number::<S>(1.0) + number::<S>(3.0 * GELU_CUBIC) * x * x);
            number::<S>(0.5) * (number::<S>(1.0) + t) + number::<S>(0.5) * x * (number::<S>(1.0) - t * t) * du
        },
        "(1 + tanh u)/2 + x·(1 − tanh² u)·u′/2, u = √(2/π)(x + 0.044715x³)";
    }
    others {
    // x⁰ is the constant 1: its derivative is 0 everywhere, 0·0⁻¹ included (PyTorch's)
    UnaryOp::PowF(p) => "powf", |x| powi_or_powf(x, p),
        |x, y| if p == 0.0 { number(0.0) } else { number::<S>(p) * powf(x, p - 1.0) },
        "p·x^(p-1)";
    UnaryOp::AddScalar(k) => "add_scalar", |x| x + c(k), |x, y| number(1.0), "1";
    UnaryOp::MulScalar(k) => "mul_scalar", |x| x * c(k), |x, y| number(k), "c";
    // 1 on [lo, hi]: neither x < lo nor x > hi
    // min(max(x, lo), hi) as PyTorch computes it (hi wins when lo > hi), without `max`
    // and `min`, which drop a NaN
    UnaryOp::Clamp(lo, hi) => "clamp", |x| { let y = if x < c(lo) { c(lo) } else { x }; if y > c(hi) { c(hi) } else { y } },
        |x, y| (number::<S>(1.0) - step(number::<S>(lo) - x)) * (number::<S>(1.0) - step(x - number::<S>(hi))),
        "1 if lo ≤ x ≤ hi else 0";
    UnaryOp::Sign => "sign", |x| sign_of(x), |x, y| number(0.0), "0";
    UnaryOp::Step => "step", |x| if x > T::zero() { T::one() } else if x.is_nan() { x } else { T::zero() },
        |x, y| number(0.0), "0";
    }
}

impl UnaryOp {
    /// The table's ops with a constant, at the constants the gradient-check suite and
    /// the engines' cross-checks use (clamp's bounds away from the suite's inputs).
    pub(crate) const WITH_CONSTANTS: [UnaryOp; 4] = [
        UnaryOp::PowF(2.5),
        UnaryOp::AddScalar(0.5),
        UnaryOp::MulScalar(-1.5),
        UnaryOp::Clamp(-0.6, 0.6),
    ];

    /// True for the ops whose derivative is zero everywhere it exists (sign, step): an
    /// engine may treat their values as constants.
    pub(crate) fn is_piecewise_constant(self) -> bool {
        matches!(self, UnaryOp::Sign | UnaryOp::Step)
    }
}

/// `xᵖ`, by repeated multiplication for small integer `p` (squares are common and
/// `powf` costs tens of cycles).
#[inline(always)]
fn powi_or_powf<T: Element>(x: T, p: f64) -> T {
    // `powi` is a library call without `-C target-cpu`; spell the common ones out
    match p {
        0.0 => T::one(),
        1.0 => x,
        2.0 => x * x,
        3.0 => x * x * x,
        4.0 => (x * x) * (x * x),
        -1.0 => x.recip(),
        -2.0 => (x * x).recip(),
        _ => x.powf(c(p)),
    }
}

/// erf: libm's in f64, a vectorisable approximation in f32 ([`Element::erf_`]).
#[inline(always)]
fn erf_of<T: Element>(x: T) -> T {
    x.erf_()
}

/// −1, 0 or 1 by the sign of `x` (0 at 0, NaN at NaN).
#[inline(always)]
fn sign_of<T: Element>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else if x == T::zero() {
        T::zero()
    } else {
        x // NaN
    }
}

/// The logistic function, computed without overflow for large |x|.
#[inline(always)]
pub(crate) fn sigmoid<T: Element>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

impl UnaryOp {
    /// Applies the op to every element.
    pub fn apply<T: Element>(self, x: &Tensor<T>) -> Tensor<T> {
        Tensor::build(x.shape(), |out| self.apply_into(x.data(), out))
    }

    /// [`UnaryOp::apply`] into a buffer of `x`'s length (replayed steps reuse theirs).
    pub(crate) fn apply_into<T: Element>(self, x: &[T], out: &mut [T]) {
        // a small tensor needs neither the pool nor the AVX2 copy: the call through
        // `chunked` and its closure cost more than the loop
        if out.len() < SMALL {
            return self.map_slice(x, out);
        }
        chunked(out, [x], |o, [xs]| {
            if o.len() < SMALL {
                self.map_slice(xs, o)
            } else {
                with_avx2!(self.map_slice(xs, o))
            }
        })
    }

    /// `seed ⊙ f'(x)` where `y = f(x)`: the op's VJP (seed = output gradient) and JVP
    /// (seed = input tangent), which coincide for elementwise functions.
    pub fn scale_by_derivative<T: Element>(
        self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        seed: &Tensor<T>,
    ) -> Tensor<T> {
        Tensor::build(x.shape(), |out| {
            self.scale_by_derivative_into(x.data(), y.data(), seed.data(), out)
        })
    }

    /// [`UnaryOp::scale_by_derivative`] taking the seed by value: when no other tensor
    /// shares its buffer, the result is written over it instead of into a new one (the
    /// reverse sweep hands each unary node's gradient on this way: one allocation and
    /// one pass over memory fewer per node).
    pub fn scale_by_derivative_owned<T: Element>(
        self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        mut seed: Tensor<T>,
    ) -> Tensor<T> {
        self.scale_by_derivative_in_place(x, y, &mut seed);
        seed
    }

    /// `seed ← seed ⊙ f'(x)` ([`UnaryOp::scale_by_derivative_owned`] through a
    /// reference: the reverse sweep's tensors are not moved in and out).
    pub(crate) fn scale_by_derivative_in_place<T: Element>(
        self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        seed: &mut Tensor<T>,
    ) {
        let same = same_shape(seed.shape(), x.shape()) && x.len() == y.len();
        match seed.data_mut_if_unique() {
            Some(out) if same && out.len() < SMALL => {
                self.scale_slice_in_place(x.data(), y.data(), out)
            }
            Some(out) if same => chunked(out, [x.data(), y.data()], |o, [xs, ys]| {
                if o.len() < SMALL {
                    self.scale_slice_in_place(xs, ys, o)
                } else {
                    with_avx2!(self.scale_slice_in_place(xs, ys, o))
                }
            }),
            _ => *seed = self.scale_by_derivative(x, y, seed),
        }
    }

    /// [`UnaryOp::scale_by_derivative`] into a buffer of the inputs' length.
    pub(crate) fn scale_by_derivative_into<T: Element>(
        self,
        x: &[T],
        y: &[T],
        seed: &[T],
        out: &mut [T],
    ) {
        if out.len() < SMALL {
            return self.scale_slice(x, y, seed, out);
        }
        chunked(out, [x, y, seed], |o, [xs, ys, ss]| {
            if o.len() < SMALL {
                self.scale_slice(xs, ys, ss, o)
            } else {
                with_avx2!(self.scale_slice(xs, ys, ss, o))
            }
        })
    }

    /// The op on one `f64` (for scalar engines and the explainer).
    pub fn apply_f64(self, x: f64) -> f64 {
        self.value(x)
    }

    /// The local derivative f'(x) on one `f64`.
    pub fn derivative_f64(self, x: f64) -> f64 {
        self.derivative(x, self.value(x))
    }
}

/// Elementwise functions of two tensors, with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`; at ties the gradient is split evenly
    Maximum,
    /// `min(a, b)`; at ties the gradient is split evenly
    Minimum,
    /// `aᵇ`
    Pow,
}

macro_rules! binary_table {
    ($( $op:ident => $name:literal, |$a:ident, $b:ident| $f:expr,
        |$pa:ident, $pb:ident, $y:ident| $d:expr, $fa:literal, $fb:literal; )*) => {
        impl BinaryOp {
            /// The op's name.
            pub fn name(self) -> &'static str {
                match self { $(Self::$op => $name),* }
            }
            /// The local derivatives (∂y/∂a, ∂y/∂b) as formulas in `a`, `b`, `y`.
            pub fn derivative_formulas(self) -> (&'static str, &'static str) {
                match self { $(Self::$op => ($fa, $fb)),* }
            }
            /// `f(a, b)` on two floats.
            #[inline(always)]
            pub(crate) fn value<T: Element>(self, a: T, b: T) -> T {
                match self { $(Self::$op => { let ($a, $b) = (a, b); $f })* }
            }
            /// The local derivatives (∂y/∂a, ∂y/∂b) at one point, where `y = f(a, b)`, in
            /// any [`Number`]: the formulas every engine evaluates.
            #[allow(unused_variables)]
            #[inline(always)]
            pub(crate) fn partials<S: Number>(self, a: S, b: S, y: S) -> (S, S) {
                match self { $(Self::$op => { let ($pa, $pb, $y) = (a, b, y); $d })* }
            }
            fn zip_slices<T: Element>(self, xa: &[T], xb: &[T], out: &mut [T]) {
                match self { $(Self::$op => {
                    for ((o, &$a), &$b) in out.iter_mut().zip(xa).zip(xb) { *o = $f; }
                })* }
            }
            fn map_broadcast<T: Element>(self, xa: &[T], xb: &[T], out: &mut [T], shape: &[usize], sa: &[usize], sb: &[usize]) {
                match self { $(Self::$op => {
                    for_each_offset(shape, [sa, sb], |i, [ia, ib]| {
                        let ($a, $b) = (xa[ia], xb[ib]);
                        out[i] = $f;
                    });
                })* }
            }
            /// Forward-mode tangent over equal-length slices, the op and which input
            /// tangents exist chosen outside the loop so that it vectorises.
            #[allow(unused_variables)]
            fn tangent_slices<T: Element>(self, (xa, xb, ys): (&[T], &[T], &[T]), (ta, tb): (Option<&[T]>, Option<&[T]>), out: &mut [T]) {
                match self { $(Self::$op => {
                    let inputs = out.iter_mut().zip(xa).zip(xb).zip(ys).enumerate();
                    match (ta, tb) {
                        (Some(ta), Some(tb)) => for (i, (((o, &a), &b), &y)) in inputs {
                            let (da, db) = self.partials(a, b, y);
                            *o = ta[i] * da + tb[i] * db;
                        },
                        (Some(ta), None) => for (i, (((o, &a), &b), &y)) in inputs {
                            *o = ta[i] * self.partials(a, b, y).0;
                        },
                        (None, Some(tb)) => for (i, (((o, &a), &b), &y)) in inputs {
                            *o = tb[i] * self.partials(a, b, y).1;
                        },
                        (None, None) => out.fill(T::zero()),
                    }
                })* }
            }
        }
    };
}

// The table: name, forward f(a, b) on floats, the partials (∂y/∂a, ∂y/∂b) in `Number`
// arithmetic written in a, b and y = f(a, b), and their formulas as text.
binary_table! {
    Add => "add", |a, b| a + b, |a, b, y| (number(1.0), number(1.0)), "1", "1";
    Sub => "sub", |a, b| a - b, |a, b, y| (number(1.0), number(-1.0)), "1", "-1";
    Mul => "mul", |a, b| a * b, |a, b, y| (b, a), "b", "a";
    Div => "div", |a, b| a / b, |a, b, y| (recip(b), -y / b), "1/b", "-a/b²";
    // sign(a - b) is 0 at a tie, which splits the gradient evenly
    // a NaN in either argument is the result (a comparison alone keeps it from one side)
    Maximum => "maximum", |a, b| if a >= b || a.is_nan() { a } else { b },
        |a, b, y| { let s = sign(a - b); (number::<S>(0.5) * (number::<S>(1.0) + s), number::<S>(0.5) * (number::<S>(1.0) - s)) },
        "1 if a > b (½ at a tie)", "1 if b > a (½ at a tie)";
    Minimum => "minimum", |a, b| if a <= b || a.is_nan() { a } else { b },
        |a, b, y| { let s = sign(a - b); (number::<S>(0.5) * (number::<S>(1.0) - s), number::<S>(0.5) * (number::<S>(1.0) + s)) },
        "1 if a < b (½ at a tie)", "1 if b < a (½ at a tie)";
    // PyTorch's exponent partial: aᵇ·ln(a), but 0 where a = 0 and b ≥ 0 (the mask z
    // moves ln's argument to 1 there, so 0·ln(0) is never formed); NaN where a < 0
    // (ln of a negative number), −∞ where a = 0 and b < 0
    Pow => "pow", |a, b| a.powf(b),
        |a, b, y| {
            let one = number::<S>(1.0);
            let z = (one - step(a) - step(-a)) * (one - step(-b));
            (b * pow(a, b - one), y * ln(a + z))
        },
        "b·a^(b-1)", "aᵇ·ln(a) (PyTorch's: 0 where a = 0 and b ≥ 0, NaN where a < 0)";
}

impl BinaryOp {
    /// Every binary op of the table, in table order.
    pub const ALL: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
    ];

    /// Applies the op with broadcasting; the error names the op and both shapes.
    pub fn apply<T: Element>(self, a: &Tensor<T>, b: &Tensor<T>) -> Result<Tensor<T>> {
        if a.shape() == b.shape() {
            return Ok(Tensor::build(a.shape(), |out| {
                self.apply_same_shape_into(a.data(), b.data(), out)
            }));
        }
        let shape = broadcast_shapes(self.name(), a.shape(), b.shape())?;
        // fast path: one operand repeats along the leading axes (a bias row, a scalar)
        let inner =
            |x: &Tensor<T>| shape.ends_with(x.shape()) && shape.len() > x.ndim() || x.len() == 1;
        if a.shape() == shape.as_slice() && inner(b) {
            let n = b.len().max(1);
            return Ok(Tensor::build(&shape, |out| {
                let rows = out.chunks_exact_mut(n).zip(a.data().chunks_exact(n));
                if n == 1 {
                    let rep = vec![b.data()[0]; a.len().min(4096)];
                    for (o, xa) in out.chunks_mut(4096).zip(a.data().chunks(4096)) {
                        self.zip_slices(xa, &rep[..xa.len()], o);
                    }
                } else {
                    for (o, xa) in rows {
                        self.zip_slices(xa, b.data(), o);
                    }
                }
            }));
        }
        let sa = broadcast_strides(a.shape(), &shape);
        let sb = broadcast_strides(b.shape(), &shape);
        Ok(Tensor::build(&shape, |out| {
            self.map_broadcast(a.data(), b.data(), out, &shape, &sa, &sb)
        }))
    }

    /// [`BinaryOp::apply`] of two operands of the same shape, into a buffer of their
    /// length (replayed steps reuse theirs).
    pub(crate) fn apply_same_shape_into<T: Element>(self, a: &[T], b: &[T], out: &mut [T]) {
        chunked(out, [a, b], |o, [xa, xb]| self.zip_slices(xa, xb, o))
    }

    /// The two local derivatives times `seed` (shaped like the output), each still in the
    /// output's (broadcast) shape: `(seed ⊙ ∂y/∂a, seed ⊙ ∂y/∂b)`. The caller sums them
    /// back to each input's shape for reverse mode.
    pub fn scale_by_partials<T: Element>(
        self,
        a: &Tensor<T>,
        b: &Tensor<T>,
        y: &Tensor<T>,
        seed: &Tensor<T>,
    ) -> (Tensor<T>, Tensor<T>) {
        match self {
            BinaryOp::Add => return (seed.clone(), seed.clone()),
            BinaryOp::Sub => return (seed.clone(), UnaryOp::Neg.apply(seed)),
            _ => {}
        }
        let shape = y.shape();
        if a.shape() == shape && b.shape() == shape {
            let mut gb = Tensor::zeroed(shape);
            let gbd = gb.data_mut();
            let ga = Tensor::build(shape, |gad| {
                for i in 0..gad.len() {
                    let (da, db) = self.partials(a.data()[i], b.data()[i], y.data()[i]);
                    gad[i] = seed.data()[i] * da;
                    gbd[i] = seed.data()[i] * db;
                }
            });
            return (ga, gb);
        }
        let sa = broadcast_strides(a.shape(), shape);
        let sb = broadcast_strides(b.shape(), shape);
        let (xa, xb, ys, gs) = (a.data(), b.data(), y.data(), seed.data());
        let mut gb = Tensor::zeroed(shape);
        let gbd = gb.data_mut();
        let ga = Tensor::build(shape, |gad| {
            for_each_offset(shape, [&sa, &sb], |i, [ia, ib]| {
                let (da, db) = self.partials(xa[ia], xb[ib], ys[i]);
                gad[i] = gs[i] * da;
                gbd[i] = gs[i] * db;
            });
        });
        (ga, gb)
    }

    /// The output tangent `ta ⊙ ∂y/∂a + tb ⊙ ∂y/∂b` (forward mode) in one pass, the input
    /// tangents broadcast like their inputs (`None` = zero).
    pub fn tangent<T: Element>(
        self,
        a: &Tensor<T>,
        b: &Tensor<T>,
        y: &Tensor<T>,
        ta: Option<&Tensor<T>>,
        tb: Option<&Tensor<T>>,
    ) -> Tensor<T> {
        let shape = y.shape();
        let zero = Tensor::zeroed(&[]);
        let (ta_t, tb_t) = (ta.unwrap_or(&zero), tb.unwrap_or(&zero));
        let sa = broadcast_strides(a.shape(), shape);
        let sb = broadcast_strides(b.shape(), shape);
        let sta = broadcast_strides(ta_t.shape(), shape);
        let stb = broadcast_strides(tb_t.shape(), shape);
        let (xa, xb, ys, da, db) = (a.data(), b.data(), y.data(), ta_t.data(), tb_t.data());
        // fast path: every operand has the output's shape or repeats it along leading
        // axes (its shape is a suffix of the output's: a bias, a single element);
        // repeating operands are read through a buffer holding them tiled, chunk by
        // chunk, and every chunk starts at a multiple of each repeat's period
        let n = y.len();
        let period = |t: &Tensor<T>| {
            let ones = t.shape().iter().take_while(|&&d| d == 1).count();
            shape.ends_with(&t.shape()[ones..]).then_some(t.len())
        };
        let periods = [a, b, ta_t, tb_t].map(period);
        if periods.iter().all(Option::is_some) {
            const CHUNK: usize = 1024;
            let longest = periods.iter().flatten().filter(|&&p| p < n).max();
            let chunk = longest
                .map_or(CHUNK, |&p| p * (CHUNK / p).max(1))
                .min(n.max(1));
            let tiled = |t: &Tensor<T>| {
                if t.len() < n {
                    t.data().iter().copied().cycle().take(chunk).collect()
                } else {
                    Vec::new()
                }
            };
            let (ra, rb) = (tiled(a), tiled(b));
            let (rta, rtb) = (
                ta.map_or_else(Vec::new, tiled),
                tb.map_or_else(Vec::new, tiled),
            );
            fn window<'s, T>(full: &'s [T], rep: &'s [T], start: usize, len: usize) -> &'s [T] {
                if rep.is_empty() {
                    &full[start..start + len]
                } else {
                    &rep[..len]
                }
            }
            return Tensor::build(shape, |out| {
                for (ci, o) in out.chunks_mut(chunk).enumerate() {
                    let (s0, len) = (ci * chunk, o.len());
                    let inputs = (
                        window(xa, &ra, s0, len),
                        window(xb, &rb, s0, len),
                        &ys[s0..s0 + len],
                    );
                    let tangents = (
                        ta.map(|_| window(da, &rta, s0, len)),
                        tb.map(|_| window(db, &rtb, s0, len)),
                    );
                    self.tangent_slices(inputs, tangents, o);
                }
            });
        }
        Tensor::build(shape, |out| match (ta.is_some(), tb.is_some()) {
            (true, false) => for_each_offset(shape, [&sa, &sb, &sta], |i, [ia, ib, it]| {
                out[i] = da[it] * self.partials(xa[ia], xb[ib], ys[i]).0;
            }),
            (false, true) => for_each_offset(shape, [&sa, &sb, &stb], |i, [ia, ib, it]| {
                out[i] = db[it] * self.partials(xa[ia], xb[ib], ys[i]).1;
            }),
            _ => for_each_offset(shape, [&sa, &sb, &sta, &stb], |i, [ia, ib, ita, itb]| {
                let (pa, pb) = self.partials(xa[ia], xb[ib], ys[i]);
                out[i] = da[ita] * pa + db[itb] * pb;
            }),
        })
    }

    /// The op on two `f64`s.
    pub fn apply_f64(self, a: f64, b: f64) -> f64 {
        self.value(a, b)
    }

    /// The local derivatives (∂y/∂a, ∂y/∂b) at one point.
    pub fn partials_f64(self, a: f64, b: f64) -> (f64, f64) {
        self.partials(a, b, self.apply_f64(a, b))
    }
}

/// Comparisons, giving masks of 0 and 1 in the element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn compare<T: Element>(
    a: &Tensor<T>,
    b: &Tensor<T>,
    cmp: Cmp,
    op: &'static str,
) -> Result<Tensor<T>> {
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let sa = broadcast_strides(a.shape(), &shape);
    let sb = broadcast_strides(b.shape(), &shape);
    let (xa, xb) = (a.data(), b.data());
    Ok(Tensor::build(&shape, |out| {
        for_each_offset(&shape, [&sa, &sb], |i, [ia, ib]| {
            let (p, q) = (xa[ia], xb[ib]);
            let t = match cmp {
                Cmp::Eq => p == q,
                Cmp::Ne => p != q,
                Cmp::Lt => p < q,
                Cmp::Le => p <= q,
                Cmp::Gt => p > q,
                Cmp::Ge => p >= q,
            };
            out[i] = if t { T::one() } else { T::zero() };
        })
    }))
}

macro_rules! tensor_methods {
    (binary: $($bname:ident => $bop:ident),*; cmp: $($cname:ident => $cop:ident),*) => {
        // fallible by design: a shape mismatch is an error, not a panic
        #[allow(clippy::should_implement_trait)]
        impl<T: Element> Tensor<T> {
            $(
                #[doc = concat!("Elementwise `", stringify!($bname), "` with broadcasting.")]
                pub fn $bname(&self, other: &Tensor<T>) -> Result<Tensor<T>> { BinaryOp::$bop.apply(self, other) }
            )*
            $(
                #[doc = concat!("Mask (1 where true, 0 elsewhere) of `self ", stringify!($cname), " other`, broadcasting.")]
                pub fn $cname(&self, other: &Tensor<T>) -> Result<Tensor<T>> { compare(self, other, Cmp::$cop, stringify!($cname)) }
            )*
        }
    };
}

macro_rules! tensor_unary_methods {
    ($($name:ident => $op:ident $doc:literal),*) => {
        #[allow(clippy::should_implement_trait)]
        impl<T: Element> Tensor<T> {
            $(
                #[doc = concat!("Elementwise ", $doc, ".")]
                pub fn $name(&self) -> Tensor<T> { UnaryOp::$op.apply(self) }
            )*
        }
    };
}
elementary_functions!(tensor_unary_methods);

tensor_methods! {
    binary: add => Add, sub => Sub, mul => Mul, div => Div, maximum => Maximum, minimum => Minimum, pow => Pow;
    cmp: eq_mask => Eq, ne_mask => Ne, lt => Lt, le => Le, gt => Gt, ge => Ge
}

impl<T: Element> Tensor<T> {
    /// `selfᵖ` elementwise.
    pub fn powf(&self, p: f64) -> Tensor<T> {
        UnaryOp::PowF(p).apply(self)
    }
    /// Adds a constant.
    pub fn add_scalar(&self, k: f64) -> Tensor<T> {
        UnaryOp::AddScalar(k).apply(self)
    }
    /// Multiplies by a constant.
    pub fn mul_scalar(&self, k: f64) -> Tensor<T> {
        UnaryOp::MulScalar(k).apply(self)
    }
    /// Limits every element to `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Tensor<T> {
        UnaryOp::Clamp(lo, hi).apply(self)
    }

    /// `mask ? a : b` elementwise, all three broadcast together (mask nonzero = true).
    pub fn where_(mask: &Tensor<T>, a: &Tensor<T>, b: &Tensor<T>) -> Result<Tensor<T>> {
        let ab = broadcast_shapes("where", a.shape(), b.shape())?;
        let shape = broadcast_shapes("where", mask.shape(), &ab)?;
        let sm = broadcast_strides(mask.shape(), &shape);
        let sa = broadcast_strides(a.shape(), &shape);
        let sb = broadcast_strides(b.shape(), &shape);
        let (m, xa, xb) = (mask.data(), a.data(), b.data());
        Ok(Tensor::build(&shape, |out| {
            for_each_offset(&shape, [&sm, &sa, &sb], |i, [im, ia, ib]| {
                out[i] = if m[im] != T::zero() { xa[ia] } else { xb[ib] };
            })
        }))
    }

    /// Adds `other` (same shape) into `self` in place, copying first only if shared.
    pub fn add_assign(&mut self, other: &Tensor<T>) -> Result<()> {
        if self.shape() != other.shape() {
            return Err(crate::error::Error::shape(
                "add_assign",
                self.shape(),
                other.shape(),
            ));
        }
        let d = self.data_mut();
        chunked(d, [other.data()], |o, [x]| {
            for (a, &b) in o.iter_mut().zip(x) {
                *a += b;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
