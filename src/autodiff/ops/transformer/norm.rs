//! Layer normalisation over the last axis as one recorded node: one pass forward and one
//! backward per row, keeping only each row's mean and 1/σ for the reverse rule.

use super::super::{Grads, Op, Tangents};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, PARALLEL_MIN_LEN, Tensor};
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
    let row = |(xr, (yr, st)): (&[T], (&mut [T], &mut [T]))| {
        let mean = xr.iter().copied().sum::<T>() * inv_n;
        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() * inv_n;
        let rstd = T::one() / (var + eps).sqrt();
        st[0] = mean;
        st[1] = rstd;
        for (j, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let mut h = (v - mean) * rstd;
            if let Some(w) = w {
                h *= w.data()[j];
            }
            if let Some(b) = b {
                h += b.data()[j];
            }
            *o = h;
        }
    };
    let parts = x.data().chunks_exact(n).zip(
        y.data_mut()
            .chunks_exact_mut(n)
            .zip(stats.data_mut().chunks_exact_mut(2)),
    );
    if x.len() >= PARALLEL_MIN_LEN {
        parts.par_bridge().for_each(row);
    } else {
        parts.for_each(row);
    }
    Ok((y, stats))
}

/// The reverse rule: with `x̂ = (x − μ)·rstd` and `ĝ = g·w`,
/// `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `dw = Σ_rows g·x̂`, `db = Σ_rows g`.
fn layer_norm_vjp<T: Element>(
    ins: &[&Tensor<T>],
    (has_w, has_b): (bool, bool),
    stats: &Tensor<T>,
    g: &Tensor<T>,
    needs: &[bool],
) -> Grads<T> {
    let x = ins[0];
    let w = has_w.then(|| ins[1]);
    let n = *x.shape().last().expect("checked when recorded");
    let mut dx = Tensor::zeroed(x.shape());
    let mut dw = vec![T::zero(); n];
    let mut db = vec![T::zero(); n];
    if n > 0 {
        let inv_n = T::of(1.0 / n as f64);
        let rows = x.data().chunks_exact(n).zip(g.data().chunks_exact(n));
        for ((xr, gr), (st, dxr)) in rows.zip(
            stats
                .data()
                .chunks_exact(2)
                .zip(dx.data_mut().chunks_exact_mut(n)),
        ) {
            let (mean, rstd) = (st[0], st[1]);
            let (mut sum_g, mut sum_gx) = (T::zero(), T::zero());
            for j in 0..n {
                let xh = (xr[j] - mean) * rstd;
                let gh = w.map_or(gr[j], |w| gr[j] * w.data()[j]);
                sum_g += gh;
                sum_gx += gh * xh;
                dw[j] += gr[j] * xh;
                db[j] += gr[j];
            }
            let (mg, mgx) = (sum_g * inv_n, sum_gx * inv_n);
            for j in 0..n {
                let xh = (xr[j] - mean) * rstd;
                let gh = w.map_or(gr[j], |w| gr[j] * w.data()[j]);
                dxr[j] = rstd * (gh - mg - xh * mgx);
            }
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
