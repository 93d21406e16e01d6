//! The curvature of a loss: its largest Hessian eigenvalues, found from Hessian-vector
//! products alone (the Hessian itself is never formed), by the Lanczos method. Along an eigenvector with
//! eigenvalue λ > 0, plain gradient descent with step size η multiplies the error by
//! `1 − ηλ` each step, so it diverges there once η > 2/λ: the largest eigenvalue sets
//! the largest stable learning rate.

use crate::error::{Error, Result};
use crate::tensor::{Element, SplitMix64, Tensor, dot_all};

/// Eigenvalues found by [`top_eigenvalues`], largest magnitude first, each with a bound
/// on how far it may be from an eigenvalue of the operator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Eigenvalues {
    /// The eigenvalues (Ritz values), by decreasing magnitude.
    pub values: Vec<f64>,
    /// For each, the Lanczos estimate of the residual `‖H y − λ y‖` of its Ritz vector
    /// `y` (unit length), which bounds the distance to an eigenvalue of the operator as
    /// computed (rounding in the products themselves is not included).
    pub residuals: Vec<f64>,
}

/// `a ← a + k·b`, in f64 then rounded to `T`.
fn axpy<T: Element>(a: &mut [Tensor<T>], k: f64, b: &[Tensor<T>]) {
    for (x, y) in a.iter_mut().zip(b) {
        for (p, q) in x.data_mut().iter_mut().zip(y.data()) {
            *p = T::of(p.as_f64() + k * q.as_f64());
        }
    }
}

fn scale<T: Element>(a: &mut [Tensor<T>], k: f64) {
    for x in a {
        for p in x.data_mut() {
            *p = T::of(p.as_f64() * k);
        }
    }
}

/// Eigenvalues and eigenvectors (columns) of a small symmetric matrix, by cyclic Jacobi
/// rotations.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The `k` eigenvalues of largest magnitude of the symmetric operator `hv` (a
/// Hessian-vector product over tensors of `shapes`), by the Lanczos method with full
/// reorthogonalisation: `products` applications of `hv` (at least `k`) from a seeded
/// random start build a tridiagonal matrix whose eigenvalues (Ritz values) approximate
/// the extreme eigenvalues first. A non-finite product is an error.
pub fn top_eigenvalues<T: Element>(
    mut hv: impl FnMut(&[Tensor<T>]) -> Result<Vec<Tensor<T>>>,
    shapes: &[Vec<usize>],
    k: usize,
    products: usize,
    seed: u64,
) -> Result<Eigenvalues> {
    if k == 0 || products < k {
        return Err(Error::invalid(
            "top_eigenvalues",
            format!(
                "needs at least one eigenvalue and as many products as eigenvalues (got {k} and {products})"
            ),
        ));
    }
    let mut rng = SplitMix64::new(seed);
    let mut q: Vec<Tensor<T>> = shapes
        .iter()
        .map(|s| {
            Tensor::build(s, |d| {
                for x in d {
                    *x = T::of(f64::from(rng.uniform_f32(-1.0, 1.0)));
                }
            })
        })
        .collect();
    let norm = dot_all(&q, &q).sqrt();
    scale(&mut q, 1.0 / norm.max(f64::MIN_POSITIVE));
    let (mut basis, mut alpha, mut beta) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..products {
        let mut w = hv(&q)?;
        let a = dot_all(&q, &w);
        if !a.is_finite() {
            return Err(Error::NonFinite(format!("Lanczos: v·Hv became {a}")));
        }
        basis.push(q);
        // full reorthogonalisation against every basis vector (twice is enough)
        for _ in 0..2 {
            for u in &basis {
                let c = dot_all(&w, u);
                axpy(&mut w, -c, u);
            }
        }
        alpha.push(a);
        let b = dot_all(&w, &w).sqrt();
        if !b.is_finite() {
            return Err(Error::NonFinite(format!(
                "Lanczos: a residual norm became {b}"
            )));
        }
        if b <= 1e-10 * a.abs().max(1.0) {
            break; // an invariant subspace: its eigenvalues are exact
        }
        beta.push(b);
        scale(&mut w, 1.0 / b);
        q = w;
    }
    let m = alpha.len();
    let mut t = vec![0.0; m * m];
    for i in 0..m {
        t[i * m + i] = alpha[i];
        if i + 1 < m {
            t[i * m + i + 1] = beta[i];
            t[(i + 1) * m + i] = beta[i];
        }
    }
    let (theta, s) = symmetric_eigen(t, m);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| theta[j].abs().total_cmp(&theta[i].abs()));
    let last_beta = beta.get(m - 1).copied().unwrap_or(0.0);
    let k = k.min(m);
    Ok(Eigenvalues {
        values: order[..k].iter().map(|&i| theta[i]).collect(),
        residuals: order[..k]
            .iter()
            .map(|&i| (last_beta * s[(m - 1) * m + i]).abs())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_iteration_finds_the_largest_eigenvalues_of_a_known_matrix() {
        // diag(5, −3, 2, 1, 0.5) rotated by a fixed orthogonal matrix (a reflection)
        let d = [5.0, -3.0, 2.0, 1.0, 0.5];
        let u: Vec<f64> = [1.0, 2.0, -1.0, 0.5, 3.0].to_vec();
        let un = u.iter().map(|x| x * x).sum::<f64>();
        let q = |i: usize, j: usize| f64::from(u8::from(i == j)) - 2.0 * u[i] * u[j] / un;
        let a: Vec<f64> = (0..25)
            .map(|ij| {
                let (i, j) = (ij / 5, ij % 5);
                (0..5).map(|k| q(i, k) * d[k] * q(j, k)).sum()
            })
            .collect();
        let hv = |v: &[Tensor<f64>]| -> Result<Vec<Tensor<f64>>> {
            let x = v[0].data();
            let y: Vec<f64> = (0..5)
                .map(|i| (0..5).map(|j| a[i * 5 + j] * x[j]).sum())
                .collect();
            Ok(vec![Tensor::from_vec(y, &[5])?])
        };
        let e = top_eigenvalues(hv, &[vec![5]], 3, 5, 1).unwrap();
        for (got, want) in e.values.iter().zip([5.0, -3.0, 2.0]) {
            assert!((got - want).abs() < 1e-9, "{:?}", e.values);
        }
        assert!(e.residuals.iter().all(|r| *r < 1e-9), "{:?}", e.residuals);
        // fewer products: the extreme eigenvalues converge first
        let e = top_eigenvalues(hv, &[vec![5]], 1, 3, 1).unwrap();
        assert!((e.values[0] - 5.0).abs() < 0.5, "{:?}", e.values);
        assert!(top_eigenvalues(hv, &[vec![5]], 0, 10, 1).is_err());
        assert!(top_eigenvalues(hv, &[vec![5]], 3, 2, 1).is_err());
        let nan = |_: &[Tensor<f64>]| -> Result<Vec<Tensor<f64>>> {
            Ok(vec![Tensor::full(&[5], f64::NAN).unwrap()])
        };
        assert!(top_eigenvalues(nan, &[vec![5]], 1, 5, 1).is_err());
    }
}
