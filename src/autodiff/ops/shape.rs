//! Shape ops on variables. Their reverse rules move gradients without arithmetic:
//! reshape back, permute by the inverse permutation, sum over broadcast axes, scatter
//! into the slice or the selected rows.

use super::{Family, Grads, Op, RuleGrads, RuleValue, VarGrads, refs};
use crate::autodiff::Tangents;
use crate::autodiff::suite::{Case, Domain, sample};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Shape, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The permutation that undoes `perm` (a permute's reverse rule).
fn inverse(perm: &[usize]) -> Shape {
    let mut inv: Shape = smallvec::smallvec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// Ops that move values without changing them: reshapes, permutations, broadcasts,
/// slices, concatenation and selections.
pub(crate) struct ShapeOps;

impl<T: Element> Family<T> for ShapeOps {
    fn name(op: &Op<T>) -> &str {
        match op {
            Op::Reshape => "reshape",
            Op::Permute(_) => "permute",
            Op::BroadcastTo => "broadcast_to",
            Op::Narrow { .. } => "narrow",
            Op::Concat { .. } => "concat",
            Op::IndexSelect { .. } => "index_select",
            _ => "gather",
        }
    }
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        jvp(op, ins, out, t)
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        _: &Tensor<T>,
        g: &Tensor<T>,
        _: &[bool],
    ) -> Result<Grads<T>> {
        vjp(op, ins, g)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        _: Var<'t, T>,
        g: Var<'t, T>,
        _: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        vjp(op, &refs(ins), &g)
    }
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        shape: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        let x = ins[0];
        *slot = Some(match op {
            Op::Reshape => x.reshape(shape)?,
            Op::Permute(perm) => x.permute(perm)?,
            Op::BroadcastTo => x.broadcast_to(shape)?,
            Op::Narrow { axis, start } => x.narrow(*axis, *start, shape[*axis])?,
            Op::Concat { axis } => {
                let parts: Vec<Tensor<T>> = ins.iter().map(|t| (*t).clone()).collect();
                Tensor::concat(&parts, *axis)?
            }
            Op::IndexSelect { axis, indices } => x.index_select(*axis, indices)?,
            Op::Gather { axis, index } => x.gather(*axis, index)?,
            _ => unreachable!("not a shape op"),
        });
        Ok(())
    }
}

/// The reverse rule (VJP), written once over [`RuleValue`]: first order on tensors,
/// recorded on variables for second order.
pub(crate) fn vjp<T: Element, V: RuleValue<T>>(
    op: &Op<T>,
    ins: &[&V],
    g: &V,
) -> Result<RuleGrads<V>> {
    let xs = ins[0].shape();
    Ok(match op {
        Op::Reshape => smallvec::smallvec![Some(g.reshape(&xs)?)],
        Op::Permute(perm) => smallvec::smallvec![Some(g.permute(&inverse(perm))?)],
        Op::BroadcastTo => smallvec::smallvec![Some(g.sum_to_shape(&xs)?)],
        Op::Narrow { axis, start } => {
            smallvec::smallvec![Some(g.narrow_adjoint(&xs, *axis, *start)?)]
        }
        Op::Concat { axis } => {
            let mut at = 0;
            let mut out = RuleGrads::new();
            for part in ins {
                let len = part.shape()[*axis];
                out.push(Some(g.narrow(*axis, at, len)?));
                at += len;
            }
            out
        }
        Op::IndexSelect { axis, indices } => {
            smallvec::smallvec![Some(g.index_select_adjoint(&xs, *axis, indices)?)]
        }
        Op::Gather { axis, index } => {
            smallvec::smallvec![Some(g.gather_adjoint(&xs, *axis, index)?)]
        }
        _ => unreachable!("not a shape op"),
    })
}

// The scatters of the reverse rules, recorded (second order). They are linear in `g`
// and written as ops whose own reverse rules are the forward op again: zeros joined
// around the slice, and products with a constant 0/1 selection.

/// `g` placed at `start` along `axis` in zeros of `shape`, as a concat.
pub(crate) fn narrow_adjoint_recorded<'t, T: Element>(
    g: Var<'t, T>,
    shape: &[usize],
    axis: usize,
    start: usize,
) -> Result<Var<'t, T>> {
    let len = g.shape()[axis];
    let mut parts = Vec::new();
    for (at, n) in [(0, start), (start + len, shape[axis] - start - len)] {
        if n > 0 {
            let mut zs = Shape::from_slice(shape);
            zs[axis] = n;
            parts.push((at, g.tape.constant(Tensor::zeroed(&zs))));
        }
    }
    parts.push((start, g));
    parts.sort_by_key(|(at, _)| *at);
    let parts: Vec<Var<'t, T>> = parts.into_iter().map(|(_, v)| v).collect();
    Var::concat(&parts, axis)
}

/// The sizes before, at and after `axis`.
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Rows of `g` added into zeros of `shape` at `indices`: a selection matrix times `g`.
pub(crate) fn index_select_adjoint_recorded<'t, T: Element>(
    g: Var<'t, T>,
    shape: &[usize],
    axis: usize,
    indices: &[usize],
) -> Result<Var<'t, T>> {
    let (outer, size, inner) = split(shape, axis);
    let n = indices.len();
    crate::tensor::checked_len("index_select", &[size, n])?;
    let mut select = Tensor::<T>::zeroed(&[size, n]);
    for (j, &i) in indices.iter().enumerate() {
        select.data_mut()[i * n + j] += T::one();
    }
    let select = g.tape.constant(select);
    if outer == 1 {
        return select.matmul(g.reshape(&[n, inner])?)?.reshape(shape);
    }
    let rows = g
        .reshape(&[outer, n, inner])?
        .permute(&[1, 0, 2])?
        .reshape(&[n, outer * inner])?;
    select
        .matmul(rows)?
        .reshape(&[size, outer, inner])?
        .permute(&[1, 0, 2])?
        .reshape(shape)
}

/// Entries of `g` added into zeros of `shape` at the gathered positions: `g` times a
/// constant one-hot selection, summed over the gathered axis.
pub(crate) fn gather_adjoint_recorded<'t, T: Element>(
    g: Var<'t, T>,
    shape: &[usize],
    axis: usize,
    index: &[usize],
) -> Result<Var<'t, T>> {
    let (outer, size, inner) = split(shape, axis);
    let k = g.shape()[axis];
    let mut select = Tensor::<T>::zeroed(&[outer, k, size, inner]);
    let d = select.data_mut();
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                let pos = (o * k + j) * inner + i;
                d[((o * k + j) * size + index[pos]) * inner + i] = T::one();
            }
        }
    }
    g.reshape(&[outer, k, 1, inner])?
        .mul(g.tape.constant(select))?
        .sum(&[1], false)?
        .reshape(shape)
}

/// Forward rule: the same shape op applied to the tangent (`None` = zero).
pub(crate) fn jvp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    out: &Tensor<T>,
    t: &Tangents<T>,
) -> Result<Tensor<T>> {
    let first = || t[0].expect("a one-input shape op's tangent comes from its input");
    Ok(match op {
        Op::Reshape => first().reshape(out.shape())?,
        Op::Permute(perm) => first().permute(perm)?,
        Op::BroadcastTo => first().broadcast_to(out.shape())?,
        Op::Narrow { axis, start } => first().narrow(*axis, *start, out.shape()[*axis])?,
        Op::Concat { axis } => {
            let parts: Vec<Tensor<T>> = ins
                .iter()
                .zip(t)
                .map(|(x, t)| t.cloned().unwrap_or_else(|| Tensor::zeroed(x.shape())))
                .collect();
            Tensor::concat(&parts, *axis)?
        }
        Op::IndexSelect { axis, indices } => first().index_select(*axis, indices)?,
        Op::Gather { axis, index } => first().gather(*axis, index)?,
        _ => unreachable!("not a shape op"),
    })
}

impl<'t, T: Element> Var<'t, T> {
    /// Same values, new shape (no copy).
    pub fn reshape(self, shape: &[usize]) -> Result<Var<'t, T>> {
        let y = self.value().reshape(shape)?;
        Ok(self.tape.push(Op::Reshape, &[self], y))
    }

    /// Reorders the axes: output axis `i` is input axis `perm[i]`.
    pub fn permute(self, perm: &[usize]) -> Result<Var<'t, T>> {
        let y = self.value().permute(perm)?;
        Ok(self.tape.push(Op::Permute(perm.into()), &[self], y))
    }

    /// Swaps two axes.
    pub fn transpose(self, a: usize, b: usize) -> Result<Var<'t, T>> {
        let nd = self.shape().len();
        if a.max(b) >= nd {
            return Err(Error::invalid(
                "transpose",
                format!("axes {a}, {b} out of range for {nd} dimensions"),
            ));
        }
        let mut perm: Vec<usize> = (0..nd).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Repeats along broadcast dimensions to reach `shape`.
    pub fn broadcast_to(self, shape: &[usize]) -> Result<Var<'t, T>> {
        let y = self.value().broadcast_to(shape)?;
        Ok(self.tape.push(Op::BroadcastTo, &[self], y))
    }

    /// The slice `start..start+len` along `axis`.
    pub fn narrow(self, axis: usize, start: usize, len: usize) -> Result<Var<'t, T>> {
        let y = self.value().narrow(axis, start, len)?;
        Ok(self.tape.push(Op::Narrow { axis, start }, &[self], y))
    }

    /// Joins variables along `axis`.
    pub fn concat(parts: &[Var<'t, T>], axis: usize) -> Result<Var<'t, T>> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("concat", "needs at least one variable"))?;
        Tape::check_inputs("concat", parts)?;
        let values: Vec<Tensor<T>> = parts.iter().map(|p| p.value()).collect();
        let y = Tensor::concat(&values, axis)?;
        Ok(first.tape.push(Op::Concat { axis }, parts, y))
    }

    /// Picks entries along `axis` (embedding lookups use this).
    pub fn index_select(self, axis: usize, indices: &[usize]) -> Result<Var<'t, T>> {
        let y = self.value().index_select(axis, indices)?;
        Ok(self.tape.push(
            Op::IndexSelect {
                axis,
                indices: indices.into(),
            },
            &[self],
            y,
        ))
    }

    /// `torch.gather` along `axis` (see [`Tensor::gather`]).
    pub fn gather(self, axis: usize, index: &[usize]) -> Result<Var<'t, T>> {
        let y = self.value().gather(axis, index)?;
        Ok(self.tape.push(
            Op::Gather {
                axis,
                index: index.into(),
            },
            &[self],
            y,
        ))
    }
}

/// The cases of `chainrule gradcheck` for the shape ops (and an embedding lookup).
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, out: &mut Vec<Case>) {
    for s in [vec![2, 3, 4], vec![4, 6, 5]] {
        let x = sample(&s, Domain::AwayFromZero, rng);
        let (n, last) = (s.iter().product::<usize>(), s[2]);
        out.push(Case {
            op: "reshape".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].reshape(&[n / last, last])),
            scalar: None,
        });
        out.push(Case {
            op: "permute".into(),
            inputs: vec![x.clone()],
            f: Box::new(|_, v| v[0].permute(&[2, 0, 1])),
            scalar: None,
        });
        out.push(Case {
            op: "narrow".into(),
            inputs: vec![x.clone()],
            f: Box::new(|_, v| v[0].narrow(2, 1, 2)),
            scalar: None,
        });
        out.push(Case {
            op: "index_select".into(),
            inputs: vec![x.clone()],
            f: Box::new(|_, v| v[0].index_select(1, &[2, 0, 2])),
            scalar: None,
        });
        // an embedding lookup: rows of a table, some repeated (their gradients add up)
        let table = sample(&[7, 5], Domain::AwayFromZero, rng);
        let ids: Vec<usize> = (0..12).map(|_| rng.random_range(0..7)).collect();
        out.push(Case {
            op: "embedding".into(),
            inputs: vec![table],
            f: Box::new(move |_, v| v[0].index_select(0, &ids)),
            scalar: None,
        });
        let rows = s[0] * s[1];
        let index: Vec<usize> = (0..rows * 2).map(|_| rng.random_range(0..s[2])).collect();
        out.push(Case {
            op: "gather".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].gather(2, &index)),
            scalar: None,
        });
        let other = sample(&[s[0], 1, s[2]], Domain::AwayFromZero, rng);
        out.push(Case {
            op: "concat".into(),
            inputs: vec![x, other],
            f: Box::new(|_, v| Var::concat(&[v[0], v[1]], 1)),
            scalar: None,
        });
        let b = sample(&[s[1], 1], Domain::AwayFromZero, rng);
        let target = s.clone();
        out.push(Case {
            op: "broadcast_to".into(),
            inputs: vec![b],
            f: Box::new(move |_, v| v[0].broadcast_to(&target)),
            scalar: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use crate::autodiff::Var;
    use crate::tensor::Tensor;

    #[test]
    fn shape_ops_match_finite_differences() {
        let x = Tensor::<f64>::randn(&[2, 3, 4], 1).unwrap();
        check("reshape", std::slice::from_ref(&x), |_, v| {
            v[0].reshape(&[6, 4])
        });
        check("permute", std::slice::from_ref(&x), |_, v| {
            v[0].permute(&[2, 0, 1])
        });
        check("transpose", std::slice::from_ref(&x), |_, v| {
            v[0].transpose(0, 2)
        });
        check("narrow", std::slice::from_ref(&x), |_, v| {
            v[0].narrow(2, 1, 2)
        });
        check("index_select", std::slice::from_ref(&x), |_, v| {
            v[0].index_select(1, &[2, 0, 2])
        });
        check("gather", std::slice::from_ref(&x), |_, v| {
            v[0].gather(2, &[0, 3, 1, 1, 2, 0])
        });
        let b = Tensor::<f64>::randn(&[3, 1], 2).unwrap();
        check("broadcast_to", &[b], |_, v| v[0].broadcast_to(&[2, 3, 4]));
        let y = Tensor::<f64>::randn(&[2, 1, 4], 3).unwrap();
        check("concat", &[x, y], |_, v| Var::concat(&[v[0], v[1]], 1));
    }
}
