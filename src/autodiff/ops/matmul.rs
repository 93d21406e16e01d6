//! Matrix product on variables. Reverse rule: `dA = G·Bᵀ` and `dB = Aᵀ·G`, computed
//! straight from the stored buffers with transposed operand layouts.

use super::{Grads, Op, VarGrads};
use crate::autodiff::Var;
use crate::error::Result;
use crate::tensor::{Element, MatLayout, Tensor, matmul_into};

pub(crate) fn vjp<T: Element>(
    ins: &[&Tensor<T>],
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    let (a, b) = (ins[0], ins[1]);
    let nd = a.ndim();
    let (m, k) = (a.shape()[nd - 2], a.shape()[nd - 1]);
    let n = b.shape()[b.ndim() - 1];
    let batch: usize = a.shape()[..nd - 2].iter().product();
    let (ga, gd) = (a.data(), g.data());
    let bd = b.data();
    let da = needs[0].then(|| {
        Tensor::build(a.shape(), |out| {
            if b.ndim() == 2 {
                matmul_into(
                    out,
                    batch * m,
                    k,
                    n,
                    (gd, MatLayout::Normal),
                    (bd, MatLayout::Transposed),
                    false,
                );
            } else {
                for i in 0..batch {
                    matmul_into(
                        &mut out[i * m * k..(i + 1) * m * k],
                        m,
                        k,
                        n,
                        (&gd[i * m * n..(i + 1) * m * n], MatLayout::Normal),
                        (&bd[i * k * n..(i + 1) * k * n], MatLayout::Transposed),
                        false,
                    );
                }
            }
        })
    });
    let db = needs[1].then(|| {
        Tensor::build(b.shape(), |out| {
            if b.ndim() == 2 {
                matmul_into(
                    out,
                    k,
                    n,
                    batch * m,
                    (ga, MatLayout::Transposed),
                    (gd, MatLayout::Normal),
                    false,
                );
            } else {
                for i in 0..batch {
                    matmul_into(
                        &mut out[i * k * n..(i + 1) * k * n],
                        k,
                        n,
                        m,
                        (&ga[i * m * k..(i + 1) * m * k], MatLayout::Transposed),
                        (&gd[i * m * n..(i + 1) * m * n], MatLayout::Normal),
                        false,
                    );
                }
            }
        })
    });
    Ok(smallvec::smallvec![da, db])
}

/// The reverse rule recorded as ops (second order): `dA = G·Bᵀ`, `dB = Aᵀ·G` (summed
/// over the batch when `B` is shared by a batch of `A`s).
pub(crate) fn vjp_recorded<'t, T: Element>(
    ins: &[Var<'t, T>],
    g: Var<'t, T>,
    needs: &[bool],
) -> Result<VarGrads<'t, T>> {
    let (a, b) = (ins[0], ins[1]);
    let (an, bn) = (a.shape().len(), b.shape().len());
    let da = needs[0]
        .then(|| g.matmul(b.transpose(bn - 2, bn - 1)?))
        .transpose()?;
    let db = needs[1]
        .then(|| -> Result<Var<'t, T>> {
            if an > 2 && bn == 2 {
                let (k, n) = (a.shape()[an - 1], g.shape()[an - 1]);
                let rows = a.shape()[..an - 1].iter().product();
                a.reshape(&[rows, k])?
                    .transpose(0, 1)?
                    .matmul(g.reshape(&[rows, n])?)
            } else {
                a.transpose(an - 2, an - 1)?.matmul(g)
            }
        })
        .transpose()?;
    Ok(smallvec::smallvec![da, db])
}

/// Forward rule: `dY = dA·B + A·dB`.
pub(crate) fn jvp<T: Element>(ins: &[&Tensor<T>], t: &[Option<&Tensor<T>>]) -> Result<Tensor<T>> {
    let left = t[0].map(|ta| ta.matmul(ins[1])).transpose()?;
    let right = t[1].map(|tb| ins[0].matmul(tb)).transpose()?;
    Ok(match (left, right) {
        (Some(l), Some(r)) => l.add(&r)?,
        (Some(l), None) => l,
        (None, Some(r)) => r,
        (None, None) => unreachable!("called only with a tangent"),
    })
}

impl<'t, T: Element> Var<'t, T> {
    /// Matrix product (2-D, batched, or batched times a shared matrix).
    pub fn matmul(self, rhs: Var<'t, T>) -> Result<Var<'t, T>> {
        let y = self.value().matmul(&rhs.value())?;
        Ok(self.tape.push(Op::MatMul, &[self, rhs], y))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use crate::tensor::Tensor;

    #[test]
    fn matmul_matches_finite_differences() {
        for (sa, sb) in [
            (vec![3, 4], vec![4, 2]),
            (vec![2, 3, 4], vec![2, 4, 5]),
            (vec![2, 3, 4], vec![4, 2]),
            (vec![1, 1], vec![1, 1]),
        ] {
            let a = Tensor::<f64>::randn(&sa, 1);
            let b = Tensor::<f64>::randn(&sb, 2);
            check("matmul", &[a, b], |_, v| v[0].matmul(v[1]));
        }
    }
}
