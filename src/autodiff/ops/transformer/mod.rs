//! The transformer's two fused ops, each one recorded node with its own rules: layer
//! normalisation over the last axis ([`norm`]) and scaled dot-product attention
//! ([`attention`]). This module routes the op table to them and lists their gradient
//! check cases; second order differentiates each op's composition in built-in ops.

mod attention;
mod norm;

pub use attention::AttentionMask;

use super::{Family, Grads, Op, Tangents, VarGrads};
use crate::autodiff::Var;
use crate::autodiff::suite::{Case, Domain, sample};
use crate::error::Result;
use crate::tensor::{Element, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The largest value of a row, in eight lanes so that the loop vectorises (a NaN is
/// skipped here; it reaches the softmax through its sum).
#[inline(always)]
pub(super) fn row_max<T: Element>(row: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let chunks = row.chunks_exact(8);
    let mut m = chunks
        .remainder()
        .iter()
        .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Layer normalisation and attention.
pub(crate) struct Transformer;

impl<T: Element> Family<T> for Transformer {
    fn name(op: &Op<T>) -> &str {
        match op {
            Op::LayerNorm { .. } => "layer_norm",
            Op::Attention(a) if a.heads.is_none() => "attention",
            _ => "self_attention",
        }
    }
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], _: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        jvp(op, ins, t)
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        _: &Tensor<T>,
        g: &Tensor<T>,
        needs: &[bool],
    ) -> Result<Grads<T>> {
        vjp(op, ins, g, needs)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        out: Var<'t, T>,
        g: Var<'t, T>,
        _: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        vjp_recorded(op, ins, out, g)
    }
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        _: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        *slot = Some(replay_forward(op, ins)?);
        Ok(())
    }
}

/// The reverse rule of a layer norm or attention node.
pub(crate) fn vjp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    match op {
        Op::LayerNorm { .. } => norm::vjp(op, ins, g, needs),
        _ => attention::vjp(op, ins, g, needs),
    }
}

/// The forward rule of a layer norm or attention node.
pub(crate) fn jvp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    t: &Tangents<T>,
) -> Result<Tensor<T>> {
    match op {
        Op::LayerNorm { .. } => Ok(norm::jvp(op, ins, t)),
        _ => attention::jvp(op, ins, t),
    }
}

/// The composition in built-in ops that second order differentiates.
pub(crate) fn composed<'t, T: Element>(op: &Op<T>, ins: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    match op {
        Op::LayerNorm { .. } => norm::composed(op, ins),
        _ => attention::composed(op, ins),
    }
}

/// Runs the op again on new inputs (replay), refreshing what it keeps for its reverse rule.
pub(crate) fn replay_forward<T: Element>(op: &mut Op<T>, ins: &[&Tensor<T>]) -> Result<Tensor<T>> {
    match op {
        Op::LayerNorm { .. } => norm::replay_forward(op, ins),
        _ => attention::replay_forward(op, ins),
    }
}

/// Second order through the composition: see [`super::composition_vjp_recorded`].
pub(crate) fn vjp_recorded<'t, T: Element>(
    op: &Op<T>,
    ins: &[Var<'t, T>],
    out: Var<'t, T>,
    g: Var<'t, T>,
) -> Result<VarGrads<'t, T>> {
    super::composition_vjp_recorded(op.name(), ins, out, g, |ins| composed(op, ins))
}

/// The cases of `chainrule gradcheck`: layer norms with and without weight and bias on
/// random shapes, attention with each kind of mask.
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, out: &mut Vec<Case>) {
    for i in 0..4 {
        let mut shape = crate::autodiff::suite::random_shape(rng, 1);
        if i == 3 {
            shape = crate::autodiff::suite::LARGE.to_vec();
        }
        let n = *shape.last().unwrap();
        // a row of one element has zero variance and one of two is always ±1 after
        // normalising: their derivatives are (nearly) zero and the check meaningless,
        // so rows are widened to at least three
        if n < 3 {
            *shape.last_mut().unwrap() = n + 2;
        }
        let n = *shape.last().unwrap();
        let (w, b) = (i % 2 == 0, i != 1);
        let mut inputs = vec![sample(&shape, Domain::AwayFromZero, rng)];
        if w {
            inputs.push(sample(&[n], Domain::AwayFromZero, rng));
        }
        if b {
            inputs.push(sample(&[n], Domain::AwayFromZero, rng));
        }
        out.push(Case {
            op: "layer_norm".into(),
            inputs,
            f: Box::new(move |_, v| {
                let weight = w.then(|| v[1]);
                let bias = b.then(|| v[v.len() - 1]);
                v[0].layer_norm(weight, bias, 1e-5)
            }),
            scalar: None,
        });
    }
    for i in 0..4 {
        let (bsz, heads) = (rng.random_range(1..3), rng.random_range(1..3));
        let (t, d, dv) = (
            rng.random_range(1..5),
            rng.random_range(1..4),
            rng.random_range(1..4),
        );
        let s = if i == 1 {
            t
        } else {
            rng.random_range(t..t + 3)
        };
        let inputs = vec![
            sample(&[bsz, heads, t, d], Domain::AwayFromZero, rng),
            sample(&[bsz, heads, s, d], Domain::AwayFromZero, rng),
            sample(&[bsz, heads, s, dv], Domain::AwayFromZero, rng),
        ];
        let mask = match i {
            0 => AttentionMask::None,
            1 => AttentionMask::Causal,
            2 => AttentionMask::Additive(sample(&[t, s], Domain::AwayFromZero, rng)),
            _ => {
                // every query keeps its first key, so no row is all masked
                let allow: Vec<bool> = (0..heads * t * s)
                    .map(|j| j % s == 0 || rng.random_bool(0.6))
                    .collect();
                AttentionMask::Allow {
                    allow: allow.into(),
                    shape: vec![heads, t, s],
                }
            }
        };
        out.push(Case {
            op: "attention".into(),
            inputs,
            f: Box::new(move |_, v| v[0].attention(v[1], v[2], &mask.clone().cast())),
            scalar: None,
        });
    }
    // the fused projection's layout: [B, T, 3·D], heads side by side
    for causal in [true, false] {
        let (bsz, t, heads, hd) = (rng.random_range(1..3), rng.random_range(1..5), 2, 2);
        let x = sample(&[bsz, t, 3 * heads * hd], Domain::AwayFromZero, rng);
        let mask = if causal {
            AttentionMask::Causal
        } else {
            AttentionMask::None
        };
        out.push(Case {
            op: "self_attention".into(),
            inputs: vec![x],
            f: Box::new(move |_, v| v[0].self_attention(heads, &mask.clone().cast())),
            scalar: None,
        });
    }
}

impl AttentionMask<f64> {
    /// The mask in another element type.
    fn cast<T: Element>(self) -> AttentionMask<T> {
        match self {
            AttentionMask::None => AttentionMask::None,
            AttentionMask::Causal => AttentionMask::Causal,
            AttentionMask::Additive(m) => AttentionMask::Additive(m.cast()),
            AttentionMask::Allow { allow, shape } => AttentionMask::Allow { allow, shape },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_case_passes_the_gradient_check() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut cases = Vec::new();
        suite_cases(&mut rng, &mut cases);
        assert_eq!(cases.len(), 10);
        for c in cases {
            check(&c.op, &c.inputs, |tape, v| (c.f)(tape, v));
        }
    }
}
