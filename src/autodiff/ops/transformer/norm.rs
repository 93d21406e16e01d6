//! Layer normalisation over the last axis as one recorded node: one pass forward and one
//! backward per row, keeping only each row's mean and 1/σ for the reverse rule.

use super::super::{Grads, Op, Tangents};
use super::super::{row_dot, row_sum};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, PARALLEL_MIN_LEN, Tensor, with_avx2};
use rayon::prelude::*;
use std::sync::Arc;

/// `(rows, n)` of a layer norm's input, checking the optional weight and bias `[n]`.
fn norm_dims(x: &[usize], w: Option<&[usize]>, b: Option<&[usize]>) -> Result<(usize, usize)> {
    let n = *x
        .last()
        .ok_or_else(|| Error::invalid("layer_norm", "the input needs at least one dimension"))?;
    for (what, s) in [("weight", w), ("bias", b)] {
        if let Some(s) = s
            && s != [n]
        {
            return Err(Error::shape_detail(
                "layer_norm",
                x,
                s,
                format!("the {what} must have the shape [{n}] of the last axis"),
            ));
        }
    }
    Ok((x.iter().product::<usize>() / n.max(1), n))
}

/// Rows per task of the parallel row loops: fixed, so that the partial sums of the weight
/// and bias gradients, and so the results, do not depend on the number of threads.
const BLOCK_ROWS: usize = 32;

/// `y = (x − μ)·rstd·w + b` per row of the last axis, with `rstd = 1/√(σ² + eps)` (σ²
/// the biased variance, as PyTorch's). Returns `y` and the saved `[rows, 2]` (μ, rstd).
fn layer_norm_forward<T: Element>(
    x: &Tensor<T>,
    w: Option<&Tensor<T>>,
    b: Option<&Tensor<T>>,
    eps: f64,
) -> Result<(Tensor<T>, Tensor<T>)> {
    let (rows, n) = norm_dims(x.shape(), w.map(|w| w.shape()), b.map(|b| b.shape()))?;
    let mut y = Tensor::zeroed(x.shape());
    let mut stats = Tensor::zeroed(&[rows, 2]);
    if n == 0 {
        return Ok((y, stats));
    }
    let (inv_n, eps) = (T::of(1.0 / n as f64), T::of(eps));
    let (ones, zeros) = (vec![T::one(); n], vec![T::zero(); n]);
    let w = w.map_or(&ones[..], |w| w.data());
    let b = b.map_or(&zeros[..], |b| b.data());
    let block = |(xs, (ys, st)): (&[T], (&mut [T], &mut [T]))| {
        with_avx2!(for ((xr, yr), st) in xs
            .chunks_exact(n)
            .zip(ys.chunks_exact_mut(n))
            .zip(st.chunks_exact_mut(2))
        {
            let mean = row_sum(xr) * inv_n;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = v - mean;
            }
            let rstd = T::one() / (row_dot(yr, yr) * inv_n + eps).sqrt();
            (st[0], st[1]) = (mean, rstd);
            for ((o, &w), &b) in yr.iter_mut().zip(w).zip(b) {
                *o = *o * rstd * w + b;
            }
        })
    };
    let span = BLOCK_ROWS * n;
    let parts = (x.data().par_chunks(span)).zip(
        y.data_mut()
            .par_chunks_mut(span)
            .zip(stats.data_mut().par_chunks_mut(2 * BLOCK_ROWS)),
    );
    if x.len() >= PARALLEL_MIN_LEN {
        parts.for_each(block);
    } else {
        let parts = (x.data().chunks(span)).zip(
            y.data_mut()
                .chunks_mut(span)
                .zip(stats.data_mut().chunks_mut(2 * BLOCK_ROWS)),
        );
        parts.for_each(block);
    }
    Ok((y, stats))
}

/// A block of rows of the reverse rule: `(x, g)` and `(stats, dx)`.
type BlockRows<'a, T> = ((&'a [T], &'a [T]), (&'a [T], &'a mut [T]));

/// The reverse rule: with `x̂ = (x − μ)·rstd` and `ĝ = g·w`,
/// `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `dw = Σ_rows g·x̂`, `db = Σ_rows g` (summed
/// per block of rows, then over the blocks in order).
fn layer_norm_vjp<T: Element>(
    ins: &[&Tensor<T>],
    (has_w, has_b): (bool, bool),
    stats: &Tensor<T>,
    g: &Tensor<T>,
    needs: &[bool],
) -> Grads<T> {
    let x = ins[0];
    let n = *x.shape().last().expect("checked when recorded");
    let mut dx = Tensor::zeroed(x.shape());
    let (mut dw, mut db) = (vec![T::zero(); n], vec![T::zero(); n]);
    if n > 0 {
        let inv_n = T::of(1.0 / n as f64);
        let ones = vec![T::one(); n];
        let w = if has_w { ins[1].data() } else { &ones[..] };
        let block = |((xs, gs), (st, dxs)): BlockRows<'_, T>| -> (Vec<T>, Vec<T>) {
            let (mut dw, mut db) = (vec![T::zero(); n], vec![T::zero(); n]);
            let mut gh = vec![T::zero(); n];
            with_avx2!(for (((xr, gr), st), dxr) in xs
                .chunks_exact(n)
                .zip(gs.chunks_exact(n))
                .zip(st.chunks_exact(2))
                .zip(dxs.chunks_exact_mut(n))
            {
                let (mean, rstd) = (st[0], st[1]);
                // dxr holds x̂ for now, gh the gradient times the weight
                for (((h, &v), (dw, db)), (&g, (&w, gh))) in dxr
                    .iter_mut()
                    .zip(xr)
                    .zip(dw.iter_mut().zip(db.iter_mut()))
                    .zip(gr.iter().zip(w.iter().zip(gh.iter_mut())))
                {
                    *h = (v - mean) * rstd;
                    *dw += g * *h;
                    *db += g;
                    *gh = g * w;
                }
                let (mg, mgx) = (row_sum(&gh) * inv_n, row_dot(&gh, dxr) * inv_n);
                for (h, &gh) in dxr.iter_mut().zip(&gh) {
                    *h = rstd * (gh - mg - *h * mgx);
                }
            });
            (dw, db)
        };
        let span = BLOCK_ROWS * n;
        let partials: Vec<(Vec<T>, Vec<T>)> = if x.len() >= PARALLEL_MIN_LEN {
            (x.data().par_chunks(span).zip(g.data().par_chunks(span)))
                .zip(
                    stats
                        .data()
                        .par_chunks(2 * BLOCK_ROWS)
                        .zip(dx.data_mut().par_chunks_mut(span)),
                )
                .map(block)
                .collect()
        } else {
            (x.data().chunks(span).zip(g.data().chunks(span)))
                .zip(
                    stats
                        .data()
                        .chunks(2 * BLOCK_ROWS)
                        .zip(dx.data_mut().chunks_mut(span)),
                )
                .map(block)
                .collect()
        };
        for (pw, pb) in partials {
            dw.iter_mut().zip(pw).for_each(|(a, v)| *a += v);
            db.iter_mut().zip(pb).for_each(|(a, v)| *a += v);
        }
    }
    let mut out = Grads::new();
    out.push(needs[0].then_some(dx));
    if has_w {
        out.push(needs[1].then(|| Tensor::with_shape(dw.into(), &[n])));
    }
    if has_b {
        out.push(needs[ins.len() - 1].then(|| Tensor::with_shape(db.into(), &[n])));
    }
    out
}

/// The forward rule: `ẏ = rstd·(ẋ − mean(ẋ) − x̂·mean(x̂·ẋ))·w + x̂·ẇ + ḃ`.
fn layer_norm_jvp<T: Element>(
    ins: &[&Tensor<T>],
    (has_w, has_b): (bool, bool),
    stats: &Tensor<T>,
    t: &Tangents<T>,
) -> Tensor<T> {
    let x = ins[0];
    let n = *x.shape().last().expect("checked when recorded");
    let w = has_w.then(|| ins[1]);
    let tw = if has_w { t[1] } else { None };
    let tb = if has_b { t[t.len() - 1] } else { None };
    let mut out = Tensor::zeroed(x.shape());
    if n == 0 {
        return out;
    }
    let inv_n = T::of(1.0 / n as f64);
    let rows = x.data().chunks_exact(n).zip(stats.data().chunks_exact(2));
    for (r, ((xr, st), o)) in rows.zip(out.data_mut().chunks_exact_mut(n)).enumerate() {
        let (mean, rstd) = (st[0], st[1]);
        if let Some(tx) = t[0] {
            let txr = &tx.data()[r * n..(r + 1) * n];
            let m_t = txr.iter().copied().sum::<T>() * inv_n;
            let m_xt = (xr.iter().zip(txr))
                .map(|(&v, &d)| (v - mean) * rstd * d)
                .sum::<T>()
                * inv_n;
            for j in 0..n {
                let xh = (xr[j] - mean) * rstd;
                let d = rstd * (txr[j] - m_t - xh * m_xt);
                o[j] = w.map_or(d, |w| d * w.data()[j]);
            }
        }
        if let Some(tw) = tw {
            for j in 0..n {
                o[j] += (xr[j] - mean) * rstd * tw.data()[j];
            }
        }
        if let Some(tb) = tb {
            o.iter_mut().zip(tb.data()).for_each(|(o, &d)| *o += d);
        }
    }
    out
}

/// Layer normalisation in built-in ops: the function second order differentiates.
fn layer_norm_composed<'t, T: Element>(
    ins: &[Var<'t, T>],
    (has_w, has_b): (bool, bool),
    eps: f64,
) -> Result<Var<'t, T>> {
    let x = ins[0];
    let last = x.shape().len() - 1;
    let centred = x.sub(x.mean(&[last], true)?)?;
    let var = centred.mul(centred)?.mean(&[last], true)?;
    let mut y = centred.div(var.add_scalar(eps).sqrt())?;
    if has_w {
        y = y.mul(ins[1])?;
    }
    if has_b {
        y = y.add(ins[ins.len() - 1])?;
    }
    Ok(y)
}

impl<'t, T: Element> Var<'t, T> {
    /// Layer normalisation over the last axis (`torch.nn.functional.layer_norm`):
    /// `(x − mean)/√(var + eps)`, the variance biased, times `weight` plus `bias` when
    /// given (each `[n]`, the last axis). One node; it keeps each row's mean and 1/σ.
    pub fn layer_norm(
        self,
        weight: Option<Var<'t, T>>,
        bias: Option<Var<'t, T>>,
        eps: f64,
    ) -> Result<Var<'t, T>> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid(
                "layer_norm",
                format!("eps must be a non-negative number, got {eps}"),
            ));
        }
        let mut ins = vec![self];
        ins.extend(weight);
        ins.extend(bias);
        Tape::check_inputs("layer_norm", &ins)?;
        let (wv, bv) = (weight.map(|w| w.value()), bias.map(|b| b.value()));
        let (y, stats) = layer_norm_forward(&self.value(), wv.as_ref(), bv.as_ref(), eps)?;
        let op = Op::LayerNorm {
            eps,
            affine: (weight.is_some(), bias.is_some()),
            stats: Arc::new(stats),
        };
        Ok(self.tape.push(op, &ins, y))
    }
}

/// The reverse rule of a layer norm node.
pub(super) fn vjp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    let Op::LayerNorm { affine, stats, .. } = op else {
        unreachable!("not a layer norm")
    };
    Ok(layer_norm_vjp(ins, *affine, stats, g, needs))
}

/// The forward rule of a layer norm node.
pub(super) fn jvp<T: Element>(op: &Op<T>, ins: &[&Tensor<T>], t: &Tangents<T>) -> Tensor<T> {
    let Op::LayerNorm { affine, stats, .. } = op else {
        unreachable!("not a layer norm")
    };
    layer_norm_jvp(ins, *affine, stats, t)
}

/// The composition in built-in ops that second order differentiates.
pub(super) fn composed<'t, T: Element>(op: &Op<T>, ins: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    let Op::LayerNorm { eps, affine, .. } = op else {
        unreachable!("not a layer norm")
    };
    layer_norm_composed(ins, *affine, *eps)
}

/// Runs the op again on new inputs (replay), refreshing the statistics it keeps.
pub(super) fn replay_forward<T: Element>(op: &mut Op<T>, ins: &[&Tensor<T>]) -> Result<Tensor<T>> {
    let Op::LayerNorm { eps, affine, stats } = op else {
        unreachable!("not a layer norm")
    };
    let w = affine.0.then(|| ins[1]);
    let b = affine.1.then(|| ins[ins.len() - 1]);
    let (y, st) = layer_norm_forward(ins[0], w, b, *eps)?;
    *stats = Arc::new(st);
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::suite::{Domain, sample};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_fused_op_equals_its_composition_and_bad_input_is_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = sample(&[2, 3, 5], Domain::AwayFromZero, &mut rng);
        let w = sample(&[5], Domain::AwayFromZero, &mut rng);
        let b = sample(&[5], Domain::AwayFromZero, &mut rng);
        let tape = Tape::new();
        let (xv, wv, bv) = (tape.var(x), tape.var(w), tape.var(b));
        let fused = xv.layer_norm(Some(wv), Some(bv), 1e-5).unwrap().value();
        let comp = layer_norm_composed(&[xv, wv, bv], (true, true), 1e-5)
            .unwrap()
            .value();
        assert!(fused.max_abs_diff(&comp).unwrap() < 1e-14);
        let x = tape.var(Tensor::ones(&[2, 3]).unwrap());
        let w = tape.var(Tensor::ones(&[2]).unwrap());
        assert!(x.layer_norm(Some(w), None, 1e-5).is_err());
        assert!(x.layer_norm(None, None, f64::NAN).is_err());
    }
}
