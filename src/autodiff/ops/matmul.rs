//! Matrix product on variables. Reverse rule: `dA = G·Bᵀ` and `dB = Aᵀ·G`, computed
//! straight from the stored buffers with transposed operand layouts; recorded for second
//! order, those products are matmul nodes that keep reading their operands in place.

use super::{Family, Grads, Op, RuleGrads, RuleValue, VarGrads, refs};
use crate::autodiff::Tangents;
use crate::autodiff::suite::{Case, Domain, ScalarForm, sample};
use crate::autodiff::{Tape, Var};
use crate::error::Result;
use crate::tensor::{Element, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The matrix product, in any of its operands' layouts.
pub(crate) struct MatMul;

fn layouts<T: Element>(op: &Op<T>) -> (bool, bool) {
    match op {
        Op::MatMul { ta, tb } => (*ta, *tb),
        _ => unreachable!("not a product"),
    }
}

impl<T: Element> Family<T> for MatMul {
    fn name(_: &Op<T>) -> &str {
        "matmul"
    }
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], _: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        let (ta, tb) = layouts(op);
        jvp(ins, t, ta, tb)
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        _: &Tensor<T>,
        g: &Tensor<T>,
        needs: &[bool],
    ) -> Result<Grads<T>> {
        let (ta, tb) = layouts(op);
        vjp(ins, g, needs, ta, tb)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        _: Var<'t, T>,
        g: Var<'t, T>,
        needs: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        let (ta, tb) = layouts(op);
        vjp(&refs(ins), &g, needs, ta, tb)
    }
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        shape: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        // a product overwrites the node's buffer from the last replay
        let (ta, tb) = layouts(op);
        let out = slot.get_or_insert_with(|| Tensor::zeroed(shape));
        ins[0].matmul_transposed_into(ins[1], ta, tb, out)
    }
}

/// The reverse rule (VJP) of `C = op(A)·op(B)` (`op` a transpose where `ta`/`tb` is
/// set, only ever on 2-D operands), written once over [`RuleValue`]: `d op(A) = G·op(B)ᵀ`
/// and `d op(B) = op(A)ᵀ·G`, transposed back where the flag is set and summed over the
/// batch when `B` is shared by a batch of `A`s. Every product reads its operands in
/// transposed layouts (no copies), on tensors and, recorded, on 2-D variables.
pub(crate) fn vjp<T: Element, V: RuleValue<T>>(
    ins: &[&V],
    g: &V,
    needs: &[bool],
    ta: bool,
    tb: bool,
) -> Result<RuleGrads<V>> {
    let (a, b) = (ins[0], ins[1]);
    let (sa, sb) = (a.shape(), b.shape());
    let (an, bn) = (sa.len(), sb.len());
    let da = needs[0]
        .then(|| match ta {
            true => b.matmul_transposed(g, tb, true), // (G·op(B)ᵀ)ᵀ = op(B)·Gᵀ
            false => g.matmul_transposed(b, false, !tb),
        })
        .transpose()?;
    let db = needs[1]
        .then(|| -> Result<V> {
            if tb {
                g.matmul_transposed(a, true, ta) // (op(A)ᵀ·G)ᵀ = Gᵀ·op(A)
            } else if an > 2 && bn == 2 {
                // a shared B: its gradient sums over the batch, one product over all rows
                let (k, n) = (sa[an - 1], sb[1]);
                let rows = sa[..an - 1].iter().product();
                a.reshape(&[rows, k])?
                    .matmul_transposed(&g.reshape(&[rows, n])?, true, false)
            } else {
                a.matmul_transposed(g, !ta, false)
            }
        })
        .transpose()?;
    Ok(smallvec::smallvec![da, db])
}

/// Forward rule: `dC = op(dA)·op(B) + op(A)·op(dB)`, both products into one buffer.
pub(crate) fn jvp<T: Element>(
    ins: &[&Tensor<T>],
    t: &Tangents<T>,
    ta: bool,
    tb: bool,
) -> Result<Tensor<T>> {
    let (a, b) = (ins[0], ins[1]);
    match (t[0], t[1]) {
        (Some(da), Some(db)) => {
            let mut out = da.matmul_transposed(b, ta, tb)?;
            a.add_matmul_transposed(db, ta, tb, &mut out)?;
            Ok(out)
        }
        (Some(da), None) => da.matmul_transposed(b, ta, tb),
        (None, Some(db)) => a.matmul_transposed(db, ta, tb),
        (None, None) => unreachable!("called only with a tangent"),
    }
}

impl<'t, T: Element> Var<'t, T> {
    /// Matrix product (2-D, batched, or batched times a shared matrix).
    pub fn matmul(self, rhs: Var<'t, T>) -> Result<Var<'t, T>> {
        self.matmul_recycling(rhs, false, false)
    }

    /// `op(self)·op(rhs)` recorded, written over the spare buffer of its position on the
    /// tape when there is one ([`Tape::take_spare`]).
    fn matmul_recycling(self, rhs: Var<'t, T>, ta: bool, tb: bool) -> Result<Var<'t, T>> {
        Tape::check_inputs("matmul", &[self, rhs])?;
        let y = self.tape.with_nodes(|nodes| {
            let (a, b) = (
                &nodes[self.id as usize].value,
                &nodes[rhs.id as usize].value,
            );
            match self.tape.take_spare() {
                Some(mut y) => a.matmul_transposed_into(b, ta, tb, &mut y).map(|()| y),
                None => a.matmul_transposed(b, ta, tb),
            }
        })?;
        Ok(self.tape.push(Op::MatMul { ta, tb }, &[self, rhs], y))
    }

    /// `op(self)·op(rhs)` of two matrices, `op` a transpose where the flag is set, read
    /// in place (the recorded matmul rule's products).
    pub(crate) fn matmul_in_layouts(
        self,
        rhs: Var<'t, T>,
        ta: bool,
        tb: bool,
    ) -> Result<Var<'t, T>> {
        let (sa, sb) = (self.shape(), rhs.shape());
        if sa.len() != 2 || sb.len() != 2 {
            // the rule of a flagged product is written for matrices only
            return Err(crate::error::Error::shape_detail(
                "matmul",
                &sa,
                &sb,
                "products in transposed layouts take two matrices",
            ));
        }
        self.matmul_recycling(rhs, ta, tb)
    }
}

/// The cases of `chainrule gradcheck` for the product, in every layout (the layouts from
/// their own stream, so that the other cases keep their numbers).
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, seed: u64, out: &mut Vec<Case>) {
    for (sa, sb) in [
        (vec![3, 4], vec![4, 2]),
        (vec![2, 3, 4], vec![2, 4, 5]),
        (vec![2, 3, 4], vec![4, 3]),
        (vec![16, 24], vec![24, 12]),
    ] {
        let inputs = vec![
            sample(&sa, Domain::AwayFromZero, rng),
            sample(&sb, Domain::AwayFromZero, rng),
        ];
        out.push(Case {
            op: "matmul".into(),
            inputs,
            f: Box::new(|_, v| v[0].matmul(v[1])),
            scalar: Some(ScalarForm::MatMul),
        });
    }
    // products reading an operand in its transposed layout (what the recorded matmul
    // rule records), from their own stream so the other cases keep their numbers
    let mut layouts = ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_746d_756c);
    let flags = [(true, false), (false, true), (true, true)];
    for ((ta, tb), (m, k, n)) in flags
        .into_iter()
        .flat_map(|f| [(f, (3, 4, 2)), (f, (16, 24, 12))])
    {
        let sa = if ta { [k, m] } else { [m, k] };
        let sb = if tb { [n, k] } else { [k, n] };
        out.push(Case {
            op: "matmul_transposed".into(),
            inputs: vec![
                sample(&sa, Domain::AwayFromZero, &mut layouts),
                sample(&sb, Domain::AwayFromZero, &mut layouts),
            ],
            f: Box::new(move |_, v| v[0].matmul_in_layouts(v[1], ta, tb)),
            scalar: None,
        });
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
            let a = Tensor::<f64>::randn(&sa, 1).unwrap();
            let b = Tensor::<f64>::randn(&sb, 2).unwrap();
            check("matmul", &[a, b], |_, v| v[0].matmul(v[1]));
        }
    }
}
