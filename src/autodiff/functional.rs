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
    Ok((
        value,
        g.take(v)?.unwrap_or_else(|| Tensor::zeroed(x.shape())),
    ))
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
        g.take(v)?.unwrap_or_else(|| Tensor::zeroed(x.shape())),
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

/// What [`hvp`] returns: the value, the gradient and the Hessian-vector product, one
/// tensor per input.
#[derive(Clone, Debug)]
pub struct HvpResult<T: Element> {
    /// `f(x)`.
    pub value: T,
    /// `∇f(x)`.
    pub grad: Vec<Tensor<T>>,
    /// `H v`.
    pub hv: Vec<Tensor<T>>,
}

/// `f(x)`, `∇f(x)` and `H v` for a scalar-valued `f` of several tensors: the
/// Hessian-vector product by forward over reverse (the reverse sweep recorded on a
/// forward-mode tape whose inputs carry `v` as their tangents).
pub fn hvp<T: Element, F>(f: F, x: &[Tensor<T>], v: &[Tensor<T>]) -> Result<HvpResult<T>>
where
    F: for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Result<Var<'t, T>>,
{
    let tape = Tape::forward_mode();
    let xs = duals("hvp", &tape, x, v)?;
    let y = f(&tape, &xs)?;
    let value = y.item()?;
    let grads = tape.backward_recorded(y, &xs)?;
    let hv = grads
        .iter()
        .map(|g| g.tangent())
        .collect::<Result<Vec<_>>>()?;
    Ok(HvpResult {
        value,
        grad: grads.iter().map(|g| g.value()).collect(),
        hv,
    })
}

/// `H v` alone for a scalar-valued `f` of several tensors: the products of
/// [`hvp`] without `f(x)` and `∇f(x)`, and without the work only `∇f(x)` needs
/// ([`Tape::backward_tangents`]). For loops that use H·v alone (Lanczos, conjugate
/// gradients). It runs on a thread of rayon's pool (so `f` is `Sync`): a matrix
/// product forked there hands its second half to the other worker directly, where one
/// forked from another thread sends both halves to the pool and sleeps until they are
/// done, three thread wake-ups per product (a tenth of W1's H·v on two cores).
pub fn hvp_only<T: Element, F>(f: F, x: &[Tensor<T>], v: &[Tensor<T>]) -> Result<Vec<Tensor<T>>>
where
    F: for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Result<Var<'t, T>> + Sync,
{
    on_pool(|| {
        let tape = Tape::forward_mode();
        let xs = duals("hvp_only", &tape, x, v)?;
        let y = f(&tape, &xs)?;
        tape.backward_tangents(y, &xs)
    })
}

/// The inputs `x` on a forward-mode `tape`, each carrying its direction from `v`.
fn duals<'t, T: Element>(
    op: &'static str,
    tape: &'t Tape<T>,
    x: &[Tensor<T>],
    v: &[Tensor<T>],
) -> Result<Vec<Var<'t, T>>> {
    if x.len() != v.len() {
        return Err(Error::invalid(
            op,
            format!("{} inputs but {} directions", x.len(), v.len()),
        ));
    }
    x.iter()
        .zip(v)
        .map(|(x, v)| tape.dual(x.clone(), v.clone()))
        .collect()
}

/// Runs `work` on a thread of rayon's pool (where the library's kernels fork cheaply)
/// and waits for it, with a second worker waiting actively meanwhile, running forked
/// halves as they appear ([`crate::tensor::with_a_worker_awake`]): woken from sleep for
/// each product it would start late (thread wake-ups cost tens of microseconds on a
/// small virtual machine, a product of W1's H·v about a hundred). On a pool thread
/// already (the `chainrule` binary runs its command on one), `work` runs in place.
fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| crate::tensor::with_a_worker_awake(work))
}

/// The Hessian of a scalar-valued `f` at `x`, `[n, n]` for `n = x.len()`: one
/// Hessian-vector product per column.
pub fn hessian<T: Element, F>(f: F, x: &Tensor<T>) -> Result<Tensor<T>>
where
    F: for<'t> Fn(&'t Tape<T>, Var<'t, T>) -> Result<Var<'t, T>> + Sync,
{
    let n = x.len();
    let mut h = vec![T::zero(); n * n];
    for j in 0..n {
        let hv = hvp_only(
            |t, v| f(t, v[0]),
            std::slice::from_ref(x),
            &[one_hot(x.shape(), j)],
        )?;
        for (i, &e) in hv[0].data().iter().enumerate() {
            h[i * n + j] = e;
        }
    }
    Tensor::from_vec(h, &[n, n])
}

fn one_hot<T: Element>(shape: &[usize], i: usize) -> Tensor<T> {
    let mut t = Tensor::zeroed(shape);
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
    let mut jac = Tensor::zeros(&jacobian_shape(&out_shape, x.shape()))?;
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
    let mut jac = Tensor::zeros(&jacobian_shape(&out_shape, x.shape()))?;
    let d = jac.data_mut();
    for j in 0..m {
        let g = tape.backward_with(y, one_hot(&out_shape, j))?;
        if let Some(row) = g.get(v)? {
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

    type Multi = for<'t> fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>;

    /// Second order through every op family, with broadcasting, checked against central
    /// differences of reverse-mode gradients (f64). Piecewise-linear ops (relu, abs, max,
    /// maximum, clamp) are evaluated away from their kinks, where their second derivative
    /// is zero.
    fn second_order_cases() -> Vec<(&'static str, Vec<Vec<usize>>, Multi)> {
        vec![
            ("unary", vec![vec![3, 4]], |_, x| {
                let a = x[0].tanh().mul(x[0].sigmoid())?;
                let b = x[0]
                    .mul_scalar(0.3)
                    .exp()
                    .add(x[0].sin())?
                    .add(x[0].cos())?;
                let c = x[0].mul(x[0])?.add_scalar(1.0);
                let d = c
                    .ln()
                    .add(c.sqrt())?
                    .add(c.powf(-1.5))?
                    .add(x[0].relu().mul(x[0])?)?;
                Ok(a.add(b)?.add(d)?.add(x[0].abs().mul(x[0])?)?.sum_all())
            }),
            (
                "binary with broadcasting",
                vec![vec![3, 4], vec![4], vec![3, 1]],
                |_, x| {
                    let s = x[0].add(x[1])?.mul(x[2])?;
                    let q = s.div(x[1].mul(x[1])?.add_scalar(2.0))?;
                    let m = x[0].maximum(x[2].mul_scalar(0.1))?.mul(x[0])?;
                    let p = x[0].mul(x[0])?.add_scalar(1.0).pow(x[2].sigmoid())?;
                    Ok(q.sub(m)?.add(p)?.mean_all())
                },
            ),
            (
                "matmul, softmax, reductions",
                vec![vec![2, 3, 4], vec![4, 5]],
                |_, x| {
                    let y = x[0].matmul(x[1])?;
                    let a = y.softmax(2)?.mul(y)?.sum(&[0, 2], false)?;
                    let b = y.log_softmax(1)?.mean(&[1], true)?.tanh().sum_all();
                    let c = y.logsumexp(&[2], false)?.max(&[1], false)?.sum_all();
                    a.sum_all().add(b)?.add(c)
                },
            ),
            (
                "cross-entropy",
                vec![vec![5, 4], vec![4, 3], vec![3]],
                |_, x| {
                    let z = x[0].matmul(x[1])?.add(x[2])?;
                    crate::nn::cross_entropy(z.tanh(), &[0, 2, 1, 1, 0])
                },
            ),
            (
                "an MLP, and products of a leaf with itself",
                vec![vec![5, 4], vec![4], vec![4, 3], vec![4, 4]],
                |t, x| {
                    let input = t.constant(Tensor::randn(&[6, 5], 99).unwrap());
                    let h = input.matmul(x[0])?.add(x[1])?.tanh();
                    let z = h.matmul(x[2])?;
                    let loss = crate::nn::cross_entropy(z, &[0, 2, 1, 1, 0, 2])?;
                    let square = x[3].matmul(x[3])?.sin().sum_all();
                    let gram = x[0].matmul(x[0].transpose(0, 1)?)?.tanh().sum_all();
                    loss.add(square)?.add(gram)
                },
            ),
            ("shape ops", vec![vec![4, 3], vec![6]], |_, x| {
                let a = x[0].permute(&[1, 0])?.reshape(&[2, 6])?.mul(x[1])?;
                let b = a.narrow(1, 1, 4)?.tanh();
                let c = Var::concat(&[b, a.narrow(1, 0, 2)?.exp()], 1)?;
                let d = c.index_select(0, &[1, 0, 1])?.gather(1, &[0, 5, 2])?;
                let e = x[1].reshape(&[1, 6])?.broadcast_to(&[3, 6])?.sin();
                d.mul(d)?
                    .sum_all()
                    .add(e.mul(c.index_select(0, &[0, 1, 0])?)?.sum_all())
            }),
        ]
    }

    /// A panic in the function reaches the caller of `hvp_only` (the pool's helper that
    /// takes forked work stops with it instead of waiting forever).
    #[test]
    fn a_panic_in_hvp_only_reaches_the_caller() {
        let x = [Tensor::<f64>::randn(&[3], 1).unwrap()];
        let caught = std::panic::catch_unwind(|| {
            hvp_only(|_, _| -> Result<Var<'_, f64>> { panic!("boom") }, &x, &x)
        });
        assert!(caught.is_err());
        // the pool still works afterwards
        let hv = hvp_only(|_, v| Ok(v[0].mul(v[0])?.sum_all()), &x, &x).unwrap();
        assert!(hv[0].max_abs_diff(&x[0].mul_scalar(2.0)).unwrap() < 1e-15);
    }

    /// A forward rule that fails is an error of `hvp_only`, also when the parameters
    /// reach the loss through a product only (whose leaves get their tangents straight
    /// from its rule, not from the tape's tangents).
    #[test]
    fn a_failing_forward_rule_is_an_error_of_hvp_only() {
        struct NoTangent;
        impl crate::autodiff::CustomOp<f64> for NoTangent {
            fn name(&self) -> &str {
                "no_tangent"
            }
            fn jvp(
                &self,
                _: &[&Tensor<f64>],
                _: &Tensor<f64>,
                _: &crate::autodiff::Tangents<f64>,
            ) -> Result<Tensor<f64>> {
                Err(Error::invalid("no_tangent", "this rule fails"))
            }
            fn vjp(
                &self,
                _: &[&Tensor<f64>],
                _: &Tensor<f64>,
                g: &Tensor<f64>,
            ) -> Result<Vec<Tensor<f64>>> {
                Ok(vec![g.clone()])
            }
            fn composed<'t>(&self, ins: &[Var<'t, f64>]) -> Option<Result<Var<'t, f64>>> {
                Some(Ok(ins[0].mul_scalar(1.0)))
            }
        }
        let x = [
            Tensor::randn(&[2, 3], 1).unwrap(),
            Tensor::randn(&[3, 2], 2).unwrap(),
        ];
        let e = hvp_only(
            |_, v| {
                let p = v[0].matmul(v[1])?;
                let y = Var::custom(&[p], std::sync::Arc::new(NoTangent), p.value())?;
                Ok(y.sin().sum_all())
            },
            &x,
            &x,
        );
        let e = e.expect_err("an error").to_string();
        assert!(e.contains("this rule fails"), "{e}");
    }

    /// `hvp_only` (products pass their leaves only tangents) gives the recorded sweep's
    /// H·v, on every case.
    #[test]
    fn hvp_only_gives_the_recorded_sweeps_products() {
        for (k, (name, shapes, f)) in second_order_cases().into_iter().enumerate() {
            let draw = |base: u64| -> Vec<Tensor<f64>> {
                let seeds = (0..shapes.len() as u64).map(|i| base + 10 * k as u64 + i);
                shapes
                    .iter()
                    .zip(seeds)
                    .map(|(s, i)| Tensor::randn(s, i).unwrap())
                    .collect()
            };
            let (x, v) = (draw(1), draw(100));
            let full = hvp(f, &x, &v).unwrap().hv;
            let only = hvp_only(f, &x, &v).unwrap();
            for (a, b) in full.iter().zip(&only) {
                let err = a.max_abs_diff(b).unwrap();
                assert!(err <= 1e-12 * (1.0 + a.norm()), "{name}: {err}");
            }
        }
    }

    #[test]
    fn hessian_vector_products_match_differences_of_gradients() {
        for (k, (name, shapes, f)) in second_order_cases().into_iter().enumerate() {
            let x: Vec<Tensor<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Tensor::randn(s, 10 * k as u64 + i as u64 + 1).unwrap())
                .collect();
            let v: Vec<Tensor<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Tensor::randn(s, 100 + 10 * k as u64 + i as u64).unwrap())
                .collect();
            let HvpResult {
                value,
                grad: grads,
                hv,
            } = hvp(f, &x, &v).unwrap();
            // the gradients of the recorded sweep are the ordinary ones
            let tape = Tape::new();
            let vars: Vec<_> = x.iter().map(|t| tape.var(t.clone())).collect();
            let y = f(&tape, &vars).unwrap();
            assert_eq!(y.item().unwrap(), value);
            let g = tape.backward(y).unwrap();
            for (a, b) in grads.iter().zip(&vars) {
                assert!(
                    a.max_abs_diff(&g.wrt(*b).unwrap()).unwrap() <= 1e-12 * (1.0 + a.norm()),
                    "{name}"
                );
            }
            let gradient_at = |sign: f64| -> Vec<Tensor<f64>> {
                let h = 1e-5;
                let tape = Tape::new();
                let vars: Vec<_> = x
                    .iter()
                    .zip(&v)
                    .map(|(x, d)| tape.var(x.add(&d.mul_scalar(sign * h)).unwrap()))
                    .collect();
                let y = f(&tape, &vars).unwrap();
                let g = tape.backward(y).unwrap();
                vars.iter().map(|&v| g.wrt(v).unwrap()).collect()
            };
            let (gp, gm) = (gradient_at(1.0), gradient_at(-1.0));
            let mut worst = 0f64;
            let mut scale = 0f64;
            for ((hv, p), m) in hv.iter().zip(&gp).zip(&gm) {
                let fd = p.sub(m).unwrap().mul_scalar(1.0 / 2e-5);
                assert!(hv.all_finite(), "{name}: H·v not finite");
                worst = crate::autodiff::nan_max(worst, hv.max_abs_diff(&fd).unwrap());
                scale = scale.max(fd.norm());
            }
            let rel = worst / scale.max(1e-12);
            eprintln!("{name}: H·v against differences {rel:.2e} (scale {scale:.3})");
            assert!(
                rel <= 1e-6,
                "{name}: H·v differs from differences of gradients by {rel:e}"
            );
        }
    }

    #[test]
    fn the_hessian_is_symmetric_and_known_for_a_quadratic() {
        // f(x) = ½ xᵀ A x with A symmetric: H = A
        let a =
            Tensor::<f64>::from_vec(vec![2.0, 1.0, 0.0, 1.0, 3.0, -1.0, 0.0, -1.0, 4.0], &[3, 3])
                .unwrap();
        let f = func(|t: &Tape<f64>, x| {
            let col = x.reshape(&[3, 1])?;
            Ok(col
                .permute(&[1, 0])?
                .matmul(t.constant(a.clone()))?
                .matmul(col)?
                .mul_scalar(0.5)
                .sum_all())
        });
        let h = hessian(f, &Tensor::randn(&[3], 1).unwrap()).unwrap();
        assert!(h.max_abs_diff(&a).unwrap() <= 1e-12, "{:?}", h.data());
        let g = func(|_: &Tape<f64>, x| Ok(x.tanh().mul(x.exp())?.sum_all()));
        let h = hessian(g, &Tensor::randn(&[4], 2).unwrap()).unwrap();
        let ht = h.t().unwrap();
        assert!(h.max_abs_diff(&ht).unwrap() <= 1e-12);
    }

    #[test]
    fn a_custom_op_without_a_recorded_rule_is_named() {
        use crate::autodiff::ops::testing::Twice;
        let e = hvp(
            |_, x| {
                let y = Var::custom(
                    &[x[0]],
                    std::sync::Arc::new(Twice),
                    x[0].value().mul_scalar(2.0),
                )?;
                Ok(y.mul(y)?.sum_all())
            },
            &[Tensor::randn(&[3], 1).unwrap()],
            &[Tensor::randn(&[3], 2).unwrap()],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("twice") && e.contains("CustomOp::composed"),
            "{e}"
        );
    }

    /// `x ⊙ y` as a custom op with a composition: second order goes through it, also
    /// when one variable is passed as both inputs.
    #[test]
    fn a_custom_op_is_differentiated_again_through_its_composition() {
        struct Product;
        impl crate::autodiff::CustomOp<f64> for Product {
            fn name(&self) -> &str {
                "product"
            }
            fn vjp(
                &self,
                ins: &[&Tensor<f64>],
                _: &Tensor<f64>,
                g: &Tensor<f64>,
            ) -> Result<Vec<Tensor<f64>>> {
                Ok(vec![g.mul(ins[1])?, g.mul(ins[0])?])
            }
            fn composed<'t>(&self, ins: &[Var<'t, f64>]) -> Option<Result<Var<'t, f64>>> {
                Some(ins[0].mul(ins[1]))
            }
        }
        fn product<'t>(a: Var<'t, f64>, b: Var<'t, f64>) -> Result<Var<'t, f64>> {
            let value = a.value().mul(&b.value())?;
            Var::custom(&[a, b], std::sync::Arc::new(Product), value)
        }
        let (x, v) = (
            Tensor::<f64>::randn(&[2, 3], 1).unwrap(),
            Tensor::randn(&[2, 3], 2).unwrap(),
        );
        let (y, w) = (
            Tensor::randn(&[2, 3], 3).unwrap(),
            Tensor::randn(&[2, 3], 4).unwrap(),
        );
        // Σ sin(x ⊙ y) and Σ sin(x ⊙ x): the custom op against the built-in product
        let pairs = [
            (vec![x.clone(), y], vec![v.clone(), w], false),
            (vec![x], vec![v], true),
        ];
        for (xs, vs, same) in pairs {
            let run = |custom: bool| {
                hvp(
                    |_, p| {
                        let b = if same { p[0] } else { p[1] };
                        let z = if custom {
                            product(p[0], b)?
                        } else {
                            p[0].mul(b)?
                        };
                        Ok(z.sin().sum_all())
                    },
                    &xs,
                    &vs,
                )
                .unwrap()
            };
            let (a, b) = (run(true), run(false));
            assert_eq!(a.value, b.value);
            for (p, q) in a.hv.iter().zip(&b.hv) {
                assert!(p.max_abs_diff(q).unwrap() <= 1e-14, "same input: {same}");
            }
        }
    }

    #[test]
    fn jvp_and_vjp_satisfy_the_transpose_identity() {
        let x = Tensor::<f64>::randn(&[5], 1).unwrap();
        let w = Tensor::<f64>::randn(&[5, 3], 2).unwrap();
        let f = func(|t: &Tape<f64>, v| {
            v.reshape(&[1, 5])?
                .matmul(t.constant(w.clone()))?
                .tanh()
                .reshape(&[3])
        });
        let v = Tensor::randn(&[5], 3).unwrap();
        let u = Tensor::randn(&[3], 4).unwrap();
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
        let x = Tensor::<f64>::randn(&[2], 5).unwrap();
        let (j, mode) = jacobian(wide, &x).unwrap();
        assert_eq!((mode, j.shape()), (JacobianMode::Forward, &[5, 2][..]));
        assert!(j.max_abs_diff(&jacrev(wide, &x).unwrap()).unwrap() < 1e-14);
        let narrow = func(|_: &Tape<f64>, v| {
            v.reshape(&[5, 1])?
                .exp()
                .sum(&[0], false)?
                .broadcast_to(&[2])
        });
        let y = Tensor::<f64>::randn(&[5], 6).unwrap();
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
