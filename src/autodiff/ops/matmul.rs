//! Matrix product on variables. Reverse rule: `dA = G·Bᵀ` and `dB = Aᵀ·G`, computed
//! straight from the stored buffers with transposed operand layouts.

use super::{Op, RuleGrads, RuleValue};
use crate::autodiff::Var;
use crate::error::Result;
use crate::tensor::{Element, Tensor};

/// The reverse rule (VJP), written once over [`RuleValue`]: `dA = G·Bᵀ` and `dB = Aᵀ·G`,
/// summed over the batch when `B` is shared by a batch of `A`s. On tensors the products
/// read `A` and `B` in transposed layouts (no copies); recorded, they are ops again.
pub(crate) fn vjp<T: Element, V: RuleValue<T>>(
    ins: &[&V],
    g: &V,
    needs: &[bool],
) -> Result<RuleGrads<V>> {
    let (a, b) = (ins[0], ins[1]);
    let (sa, sb) = (a.shape(), b.shape());
    let (an, bn) = (sa.len(), sb.len());
    let da = needs[0]
        .then(|| g.matmul_transposed(b, false, true))
        .transpose()?;
    let db = needs[1]
        .then(|| -> Result<V> {
            if an > 2 && bn == 2 {
                // a shared B: its gradient sums over the batch, one product over all rows
                let (k, n) = (sa[an - 1], sb[1]);
                let rows = sa[..an - 1].iter().product();
                a.reshape(&[rows, k])?
                    .matmul_transposed(&g.reshape(&[rows, n])?, true, false)
            } else {
                a.matmul_transposed(g, true, false)
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
