//! The functional API: derivatives of a function of one tensor, by reverse mode (one
//! sweep per output element), forward mode (one pass per input element), or whichever
//! is cheaper for a whole Jacobian.

use super::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};

/// Which mode computed a Jacobian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JacobianMode {
    /// One forward-mode pass per input element: one column each.
    Forward,
    /// One reverse sweep per output element: one row each.
    Reverse,
}

/// Gives a closure stored in a variable the signature the functional API expects (Rust
/// cannot infer the lifetimes of `let f = |tape, x| ...` on its own):
/// `let f = func(|tape, x| ...)`.
pub fn func<T: Element, F>(f: F) -> F
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    f
}

/// The value and gradient of a scalar-valued `f` at `x` (reverse mode).
pub fn value_and_grad<T: Element, F>(f: F, x: &Tensor<T>) -> Result<(T, Tensor<T>)>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    let tape = Tape::new();
    let v = tape.var(x.clone());
    let y = f(&tape, v)?;
    let value = y.item()?;
    let mut g = tape.backward(y)?;
    Ok((value, g.take(v).unwrap_or_else(|| Tensor::zeros(x.shape()))))
}

/// The gradient of a scalar-valued `f` at `x` (reverse mode).
pub fn grad<T: Element, F>(f: F, x: &Tensor<T>) -> Result<Tensor<T>>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    Ok(value_and_grad(f, x)?.1)
}

/// `(f(x), uᵀ J)`: a vector-Jacobian product, one reverse sweep.
pub fn vjp<T: Element, F>(f: F, x: &Tensor<T>, u: &Tensor<T>) -> Result<(Tensor<T>, Tensor<T>)>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    let tape = Tape::new();
    let v = tape.var(x.clone());
    let y = f(&tape, v)?;
    let mut g = tape.backward_with(y, u.clone())?;
    Ok((
        y.value(),
        g.take(v).unwrap_or_else(|| Tensor::zeros(x.shape())),
    ))
}

/// `(f(x), J v)`: a Jacobian-vector product, one forward-mode pass.
pub fn jvp<T: Element, F>(f: F, x: &Tensor<T>, v: &Tensor<T>) -> Result<(Tensor<T>, Tensor<T>)>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    let tape = Tape::forward_mode();
    let xv = tape.dual(x.clone(), v.clone())?;
    let y = f(&tape, xv)?;
    Ok((y.value(), y.tangent()?))
}

fn one_hot<T: Element>(shape: &[usize], i: usize) -> Tensor<T> {
    let mut t = Tensor::zeros(shape);
    t.data_mut()[i] = T::one();
    t
}

fn jacobian_shape(out: &[usize], inp: &[usize]) -> Vec<usize> {
    out.iter().chain(inp).copied().collect()
}

/// The Jacobian by forward mode: shape `f(x).shape ++ x.shape`, one pass per input element.
pub fn jacfwd<T: Element, F>(f: F, x: &Tensor<T>) -> Result<Tensor<T>>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    let n = x.len();
    let mut columns = Vec::with_capacity(n);
    let mut out_shape = Vec::new();
    for i in 0..n {
        let (y, col) = jvp(&f, x, &one_hot(x.shape(), i))?;
        out_shape = y.shape().to_vec();
        columns.push(col);
    }
    let m: usize = out_shape.iter().product();
    let mut jac = Tensor::zeros(&jacobian_shape(&out_shape, x.shape()));
    let d = jac.data_mut();
    for (i, col) in columns.iter().enumerate() {
        for (j, &v) in col.data().iter().enumerate().take(m) {
            d[j * n + i] = v;
        }
    }
    Ok(jac)
}

/// The Jacobian by reverse mode: shape `f(x).shape ++ x.shape`, one sweep per output
/// element over a single recording.
pub fn jacrev<T: Element, F>(f: F, x: &Tensor<T>) -> Result<Tensor<T>>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    let tape = Tape::new();
    let v = tape.var(x.clone());
    let y = f(&tape, v)?;
    let out_shape = y.shape();
    let m = y.value().len();
    let n = x.len();
    let mut jac = Tensor::zeros(&jacobian_shape(&out_shape, x.shape()));
    let d = jac.data_mut();
    for j in 0..m {
        let g = tape.backward_with(y, one_hot(&out_shape, j))?;
        if let Some(row) = g.get(v) {
            d[j * n..(j + 1) * n].copy_from_slice(row.data());
        }
    }
    Ok(jac)
}

/// The Jacobian, by forward mode when `x` has fewer elements than `f(x)` (each pass
/// gives a column: n passes) and by reverse mode otherwise (each sweep gives a row: m
/// sweeps). The output size is found by evaluating `f` once without recording.
pub fn jacobian<T: Element, F>(f: F, x: &Tensor<T>) -> Result<(Tensor<T>, JacobianMode)>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>>,
{
    let probe = Tape::new();
    let m = probe
        .no_grad(|| -> Result<usize> { Ok(f(&probe, probe.constant(x.clone()))?.value().len()) })?;
    if x.is_empty() || m == 0 {
        return Err(Error::invalid(
            "jacobian",
            "the input and the output must have at least one element",
        ));
    }
    if x.len() < m {
        Ok((jacfwd(f, x)?, JacobianMode::Forward))
    } else {
        Ok((jacrev(f, x)?, JacobianMode::Reverse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jvp_and_vjp_satisfy_the_transpose_identity() {
        let x = Tensor::<f64>::randn(&[5], 1);
        let w = Tensor::<f64>::randn(&[5, 3], 2);
        let f = func(|t: &Tape<f64>, v| {
            v.reshape(&[1, 5])?
                .matmul(t.constant(w.clone()))?
                .tanh()
                .reshape(&[3])
        });
        let v = Tensor::randn(&[5], 3);
        let u = Tensor::randn(&[3], 4);
        let (_, jv) = jvp(f, &x, &v).unwrap();
        let (_, ujt) = vjp(f, &x, &u).unwrap();
        let lhs: f64 = jv.data().iter().zip(u.data()).map(|(a, b)| a * b).sum();
        let rhs: f64 = ujt.data().iter().zip(v.data()).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0));
        // J v itself must be the directional derivative: central difference along v
        let h = 1e-6;
        let eval = |p: &Tensor<f64>| {
            let tape = Tape::new();
            f(&tape, tape.constant(p.clone())).unwrap().value()
        };
        let fp = eval(&x.add(&v.mul_scalar(h)).unwrap());
        let fm = eval(&x.sub(&v.mul_scalar(h)).unwrap());
        assert_eq!(jv.shape(), &[3]);
        for i in 0..3 {
            let fd = (fp.data()[i] - fm.data()[i]) / (2.0 * h);
            let got = jv.data()[i];
            assert!(
                (got - fd).abs() < 1e-8 * fd.abs().max(1.0),
                "jv[{i}] = {got}, central difference {fd}"
            );
        }
    }

    #[test]
    fn jacobian_picks_the_cheaper_mode_and_both_agree() {
        // R² → R⁵: forward mode (2 passes); R⁵ → R²: reverse mode (2 sweeps)
        let wide = func(|_: &Tape<f64>, v| {
            v.reshape(&[2, 1])?
                .broadcast_to(&[2, 5])?
                .sin()
                .sum(&[0], false)
        });
        let x = Tensor::<f64>::randn(&[2], 5);
        let (j, mode) = jacobian(wide, &x).unwrap();
        assert_eq!((mode, j.shape()), (JacobianMode::Forward, &[5, 2][..]));
        assert!(j.max_abs_diff(&jacrev(wide, &x).unwrap()).unwrap() < 1e-14);
        let narrow = func(|_: &Tape<f64>, v| {
            v.reshape(&[5, 1])?
                .exp()
                .sum(&[0], false)?
                .broadcast_to(&[2])
        });
        let y = Tensor::<f64>::randn(&[5], 6);
        let (j2, mode2) = jacobian(narrow, &y).unwrap();
        assert_eq!((mode2, j2.shape()), (JacobianMode::Reverse, &[2, 5][..]));
        assert!(j2.max_abs_diff(&jacfwd(narrow, &y).unwrap()).unwrap() < 1e-14);
        for (k, &v) in j2.data()[..5].iter().enumerate() {
            assert!((v - y.data()[k].exp()).abs() < 1e-14);
        }
    }

    #[test]
    fn grad_of_a_quadratic() {
        let x = Tensor::<f64>::from_vec(vec![1.0, -2.0], &[2]).unwrap();
        let (v, g) = value_and_grad(|_, v| Ok(v.mul(v)?.sum_all()), &x).unwrap();
        assert_eq!(v, 5.0);
        assert_eq!(g.data(), &[2.0, -4.0]);
    }
}
