//! The transformer's two fused ops, each one recorded node with its own rules: layer
//! normalisation over the last axis (it keeps only each row's mean and 1/σ for its
//! reverse rule) and scaled dot-product attention, `softmax(Q·Kᵀ·scale + mask)·V`
//! over `[..., T, d]` (it keeps the probabilities, `[..., T, S]`). The kernels run one
//! row or one head at a time, heads in parallel; second order differentiates each op's
//! composition in built-in ops.

use super::{Grads, Op, Tangents, VarGrads};
use crate::autodiff::suite::{Case, Domain, sample};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{
    Element, MatLayout, PARALLEL_MIN_LEN, Tensor, checked_len, matmul_into, with_avx2,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// Layer normalisation
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Scaled dot-product attention
// ---------------------------------------------------------------------------------------

/// Which query may look at which key: nothing masked, the causal mask (query `i` sees
/// keys `0..=i`), scores added to the logits, or a boolean mask (`true`: may attend, as
/// in `torch.nn.functional.scaled_dot_product_attention`). Masks broadcast to
/// `[..., T, S]`.
#[derive(Clone, Debug)]
pub enum AttentionMask<T: Element> {
    /// Every query attends every key.
    None,
    /// Query `i` attends keys `0..=i` (needs `T ≤ S`; the last `T` keys align with the queries as in PyTorch's `is_causal` when `T = S`).
    Causal,
    /// Added to the scaled scores before the softmax (`-inf` removes a key).
    Additive(Tensor<T>),
    /// `true` where a query may attend a key, with the mask's shape.
    Allow {
        /// Row-major flags.
        allow: Arc<[bool]>,
        /// Their shape.
        shape: Vec<usize>,
    },
}

/// The sizes of an attention: `batch` heads of `t` queries, `s` keys, width `d`, values
/// of width `dv`.
#[derive(Clone, Copy, Debug)]
struct AttnDims {
    batch: usize,
    t: usize,
    s: usize,
    d: usize,
    dv: usize,
}

fn attn_dims(q: &[usize], k: &[usize], v: &[usize]) -> Result<AttnDims> {
    let bad = |why: &str| Error::invalid("attention", format!("q {q:?}, k {k:?}, v {v:?}: {why}"));
    let n = q.len();
    if n < 2 || k.len() != n || v.len() != n {
        return Err(bad("q, k and v need the same number (≥ 2) of dimensions"));
    }
    if q[..n - 2] != k[..n - 2] || q[..n - 2] != v[..n - 2] {
        return Err(bad("their leading (batch, head) dimensions differ"));
    }
    if q[n - 1] != k[n - 1] || k[n - 2] != v[n - 2] {
        return Err(bad("q and k need the same width, k and v the same length"));
    }
    Ok(AttnDims {
        batch: q[..n - 2].iter().product(),
        t: q[n - 2],
        s: k[n - 2],
        d: q[n - 1],
        dv: v[n - 1],
    })
}

/// The causal mask as scores added to the logits (0, or −∞ above the diagonal).
fn causal_scores<T: Element>(t: usize, s: usize) -> Tensor<T> {
    Tensor::build(&[t, s], |m| {
        for (i, row) in m.chunks_exact_mut(s.max(1)).enumerate() {
            row[visible(i, s, true)..].fill(T::neg_infinity());
        }
    })
}

/// A mask other than the causal one as scores added to the logits: `[t, s]` shared by
/// every head, or one `[t, s]` per head; `None` when there are none.
fn additive_mask<T: Element>(
    mask: &AttentionMask<T>,
    q: &[usize],
    dims: AttnDims,
) -> Result<Option<Tensor<T>>> {
    let (t, s) = (dims.t, dims.s);
    let full: Vec<usize> = q[..q.len() - 2].iter().copied().chain([t, s]).collect();
    let shaped = |m: Tensor<T>| -> Result<Tensor<T>> {
        if m.ndim() <= 2 {
            m.broadcast_to(&[t, s])
        } else {
            m.broadcast_to(&full)
        }
    };
    Ok(match mask {
        AttentionMask::None => None,
        AttentionMask::Causal => {
            if t > s {
                return Err(Error::invalid(
                    "attention",
                    format!("a causal mask needs no more queries than keys (got {t} and {s})"),
                ));
            }
            None // the kernels skip the hidden keys instead
        }
        AttentionMask::Additive(m) => Some(shaped(m.clone())?),
        AttentionMask::Allow { allow, shape } => {
            if checked_len("attention", shape)? != allow.len() {
                return Err(Error::invalid(
                    "attention",
                    format!(
                        "a mask of shape {shape:?} needs {} flags, got {}",
                        shape.iter().product::<usize>(),
                        allow.len()
                    ),
                ));
            }
            let m = allow
                .iter()
                .map(|&a| if a { T::zero() } else { T::neg_infinity() });
            Some(shaped(Tensor::from_vec(m.collect(), shape)?)?)
        }
    })
}

/// Runs `f(head, ...)` on every head's slices: in parallel when the heads are many and
/// large enough to pay for the threads.
fn per_head<F>(dims: AttnDims, f: F)
where
    F: Fn(usize) + Sync + Send,
{
    let work = dims.batch * dims.t * dims.s * (dims.d + dims.dv);
    if dims.batch > 1 && work >= PARALLEL_MIN_LEN && rayon::current_num_threads() > 1 {
        (0..dims.batch).into_par_iter().for_each(f);
    } else {
        (0..dims.batch).for_each(f);
    }
}

/// A raw pointer to a buffer that each head writes its own disjoint part of.
#[derive(Clone, Copy)]
struct Parts<T>(*mut T);
// SAFETY: `Parts` is only built over a buffer that outlives the `per_head` call, and
// every head writes only the range `head·len .. (head+1)·len` (see `Parts::head`), so
// no two threads touch the same element.
unsafe impl<T: Send> Send for Parts<T> {}
unsafe impl<T: Send> Sync for Parts<T> {}

impl<T> Parts<T> {
    fn new(buf: &mut [T]) -> Self {
        Parts(buf.as_mut_ptr())
    }
    /// Head `h`'s part of length `len`.
    ///
    /// # Safety
    /// The buffer holds at least `(h + 1)·len` elements, and no other live slice covers
    /// this range (each head asks for its own `h` once).
    #[allow(clippy::mut_from_ref)]
    unsafe fn head(&self, h: usize, len: usize) -> &mut [T] {
        // SAFETY: by the caller's contract the range is inside the buffer and unshared
        unsafe { std::slice::from_raw_parts_mut(self.0.add(h * len), len) }
    }
}

/// The largest value of a row, in eight lanes so that the loop vectorises (a NaN is
/// skipped here; it reaches the softmax through its sum).
#[inline(always)]
fn row_max<T: Element>(row: &[T]) -> T {
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

/// The sum of a row, in eight lanes so that the loop vectorises.
#[inline(always)]
fn row_sum<T: Element>(row: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(T::zero(), |s, &v| s + v);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().fold(rest, |s, &a| s + a)
}

/// The keys query `i` of `s` sees: all of them, or `0..=i` under the causal mask.
#[inline(always)]
fn visible(i: usize, s: usize, causal: bool) -> usize {
    if causal { (i + 1).min(s) } else { s }
}

/// Scales the scores, adds the mask and replaces each row by its softmax, in place: a
/// NaN score makes its row NaN (through the sum), a row of −∞ is NaN as in PyTorch.
/// Under the causal mask a row's hidden keys get probability 0 without an exponential.
fn softmax_rows<T: Element>(p: &mut [T], s: usize, scale: T, mask: Option<&[T]>, causal: bool) {
    with_avx2!(for (i, row) in p.chunks_exact_mut(s).enumerate() {
        let (row, hidden) = row.split_at_mut(visible(i, s, causal));
        hidden.fill(T::zero());
        match mask {
            Some(mk) => {
                for (v, &m) in row.iter_mut().zip(&mk[i * s..]) {
                    *v = *v * scale + m;
                }
            }
            None => row.iter_mut().for_each(|v| *v *= scale),
        }
        let top = row_max(row);
        row.iter_mut().for_each(|v| *v = (*v - top).exp_());
        let inv = T::one() / row_sum(row);
        row.iter_mut().for_each(|v| *v *= inv);
    })
}

/// `(O, P)`: `P = softmax(Q·Kᵀ·scale + mask)` per head, `O = P·V`.
fn attention_forward<T: Element>(
    q: &Tensor<T>,
    k: &Tensor<T>,
    v: &Tensor<T>,
    (mask, causal): (Option<&Tensor<T>>, bool),
    scale: f64,
    dims: AttnDims,
) -> Result<(Tensor<T>, Tensor<T>)> {
    let AttnDims { t, s, d, dv, .. } = dims;
    let lead = &q.shape()[..q.ndim() - 2];
    let out_shape: Vec<usize> = lead.iter().copied().chain([t, dv]).collect();
    let p_shape: Vec<usize> = lead.iter().copied().chain([t, s]).collect();
    checked_len("attention", &p_shape)?;
    let mut out = Tensor::zeroed(&out_shape);
    let mut probs = Tensor::zeroed(&p_shape);
    if t == 0 || s == 0 {
        return Ok((out, probs));
    }
    let (po, pp) = (Parts::new(out.data_mut()), Parts::new(probs.data_mut()));
    let scale = T::of(scale);
    per_head(dims, |h| {
        // SAFETY: `out` holds batch·t·dv and `probs` batch·t·s elements, head h < batch
        // takes its own range of each once
        let (o, p) = unsafe { (po.head(h, t * dv), pp.head(h, t * s)) };
        let qh = (&q.data()[h * t * d..(h + 1) * t * d], MatLayout::Normal);
        let kh = (&k.data()[h * s * d..(h + 1) * s * d], MatLayout::Transposed);
        matmul_into(p, t, s, d, qh, kh, false);
        softmax_rows(p, s, scale, mask.map(|m| head_mask(m, h, t * s)), causal);
        let vh = (&v.data()[h * s * dv..(h + 1) * s * dv], MatLayout::Normal);
        matmul_into(o, t, dv, s, (p, MatLayout::Normal), vh, false);
    });
    Ok((out, probs))
}

/// Head `h`'s `[t, s]` block of a mask shared by every head or given per head.
fn head_mask<T: Element>(m: &Tensor<T>, h: usize, ts: usize) -> &[T] {
    if m.ndim() == 2 {
        m.data()
    } else {
        &m.data()[h * ts..(h + 1) * ts]
    }
}

/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`, in place of `dP`; a key hidden by the causal
/// mask has probability 0, so its entry is 0.
fn softmax_adjoint_rows<T: Element>(dp: &mut [T], p: &[T], s: usize, scale: T, causal: bool) {
    with_avx2!(
        for (i, (dr, pr)) in dp.chunks_exact_mut(s).zip(p.chunks_exact(s)).enumerate() {
            let (dr, hidden) = dr.split_at_mut(visible(i, s, causal));
            hidden.fill(T::zero());
            let mut acc = [T::zero(); 8];
            let (chunks, rest) = (dr.chunks_exact(8), dr.len() / 8 * 8);
            for (c, q) in chunks.zip(pr.chunks_exact(8)) {
                for ((a, &x), &y) in acc.iter_mut().zip(c).zip(q) {
                    *a += x * y;
                }
            }
            let tail = dr[rest..]
                .iter()
                .zip(&pr[rest..])
                .fold(T::zero(), |s, (&a, &b)| s + a * b);
            let dot = acc.iter().fold(tail, |s, &a| s + a);
            for (a, &b) in dr.iter_mut().zip(pr) {
                *a = b * (*a - dot) * scale;
            }
        }
    )
}

/// The reverse rule, per head: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`,
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`, `dQ = dS·K`, `dK = dSᵀ·Q`.
fn attention_vjp<T: Element>(
    ins: &[&Tensor<T>],
    probs: &Tensor<T>,
    (scale, causal): (f64, bool),
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let dims = attn_dims(q.shape(), k.shape(), v.shape())?;
    let AttnDims { t, s, d, dv, .. } = dims;
    let (mut dq, mut dk, mut dvv) = (
        Tensor::zeroed(q.shape()),
        Tensor::zeroed(k.shape()),
        Tensor::zeroed(v.shape()),
    );
    if t > 0 && s > 0 {
        let (pq, pk, pv) = (
            Parts::new(dq.data_mut()),
            Parts::new(dk.data_mut()),
            Parts::new(dvv.data_mut()),
        );
        let scale = T::of(scale);
        per_head(dims, |h| {
            let p = &probs.data()[h * t * s..(h + 1) * t * s];
            let go = &g.data()[h * t * dv..(h + 1) * t * dv];
            let vh = &v.data()[h * s * dv..(h + 1) * s * dv];
            // SAFETY: each gradient buffer has the shape of its input, batch heads of the
            // lengths below; head h takes its own range of each once
            let (gq, gk, gv) =
                unsafe { (pq.head(h, t * d), pk.head(h, s * d), pv.head(h, s * dv)) };
            let n = MatLayout::Normal;
            let tr = MatLayout::Transposed;
            matmul_into(gv, s, dv, t, (p, tr), (go, n), false);
            let mut ds = vec![T::zero(); t * s];
            matmul_into(&mut ds, t, s, dv, (go, n), (vh, tr), false);
            softmax_adjoint_rows(&mut ds, p, s, scale, causal);
            let qh = &q.data()[h * t * d..(h + 1) * t * d];
            let kh = &k.data()[h * s * d..(h + 1) * s * d];
            matmul_into(gq, t, d, s, (&ds, n), (kh, n), false);
            matmul_into(gk, s, d, t, (&ds, tr), (qh, n), false);
        });
    }
    Ok(smallvec::smallvec![
        needs[0].then_some(dq),
        needs[1].then_some(dk),
        needs[2].then_some(dvv),
    ])
}

/// The forward rule, per head: `Ṡ = (Q̇·Kᵀ + Q·K̇ᵀ)·scale`,
/// `Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))`, `Ȯ = Ṗ·V + P·V̇`.
fn attention_jvp<T: Element>(
    ins: &[&Tensor<T>],
    out: &Tensor<T>,
    probs: &Tensor<T>,
    (scale, causal): (f64, bool),
    tan: &Tangents<T>,
) -> Result<Tensor<T>> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let dims = attn_dims(q.shape(), k.shape(), v.shape())?;
    let AttnDims { t, s, d, dv, .. } = dims;
    let mut dout = Tensor::zeroed(out.shape());
    if t == 0 || s == 0 {
        return Ok(dout);
    }
    let po = Parts::new(dout.data_mut());
    let (n, tr) = (MatLayout::Normal, MatLayout::Transposed);
    per_head(dims, |h| {
        // SAFETY: `dout` has batch heads of t·dv elements; head h takes its own once
        let o = unsafe { po.head(h, t * dv) };
        let p = &probs.data()[h * t * s..(h + 1) * t * s];
        let qs = h * t * d..(h + 1) * t * d;
        let ks = h * s * d..(h + 1) * s * d;
        let vs = h * s * dv..(h + 1) * s * dv;
        let mut ds = vec![T::zero(); t * s];
        let mut any = false;
        if let Some(tq) = tan[0] {
            matmul_into(
                &mut ds,
                t,
                s,
                d,
                (&tq.data()[qs.clone()], n),
                (&k.data()[ks.clone()], tr),
                true,
            );
            any = true;
        }
        if let Some(tk) = tan[1] {
            matmul_into(
                &mut ds,
                t,
                s,
                d,
                (&q.data()[qs], n),
                (&tk.data()[ks], tr),
                true,
            );
            any = true;
        }
        if any {
            // Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)) with Ṡ = ds·scale: the reverse rule's row pass
            softmax_adjoint_rows(&mut ds, p, s, T::of(scale), causal);
            matmul_into(o, t, dv, s, (&ds, n), (&v.data()[vs.clone()], n), true);
        }
        if let Some(tv) = tan[2] {
            matmul_into(o, t, dv, s, (p, n), (&tv.data()[vs], n), true);
        }
    });
    Ok(dout)
}

/// Attention in built-in ops: the function second order differentiates.
fn attention_composed<'t, T: Element>(
    ins: &[Var<'t, T>],
    (mask, causal): (Option<&Tensor<T>>, bool),
    scale: f64,
) -> Result<Var<'t, T>> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let nd = q.shape().len();
    let mut scores = q.matmul(k.transpose(nd - 2, nd - 1)?)?.mul_scalar(scale);
    if let Some(m) = mask {
        scores = scores.add(q.tape.constant(m.clone()))?;
    }
    if causal {
        let (t, s) = (q.shape()[nd - 2], k.shape()[nd - 2]);
        scores = scores.add(q.tape.constant(causal_scores(t, s)))?;
    }
    scores.softmax(nd - 1)?.matmul(v)
}

impl<'t, T: Element> Var<'t, T> {
    /// Scaled dot-product attention (`torch.nn.functional.scaled_dot_product_attention`):
    /// `softmax(q·kᵀ/√d + mask)·v` for `q: [..., T, d]`, `k: [..., S, d]`,
    /// `v: [..., S, dv]` with the same leading (batch, head) dimensions. One node; it
    /// keeps the probabilities `[..., T, S]` for its reverse rule. A query whose keys
    /// are all masked gets NaN, as in PyTorch.
    pub fn attention(
        self,
        k: Var<'t, T>,
        v: Var<'t, T>,
        mask: &AttentionMask<T>,
    ) -> Result<Var<'t, T>> {
        Tape::check_inputs("attention", &[self, k, v])?;
        let (qv, kv, vv) = (self.value(), k.value(), v.value());
        let dims = attn_dims(qv.shape(), kv.shape(), vv.shape())?;
        let causal = matches!(mask, AttentionMask::Causal);
        let mask = additive_mask(mask, qv.shape(), dims)?;
        let scale = 1.0 / (dims.d.max(1) as f64).sqrt();
        let (y, probs) = attention_forward(&qv, &kv, &vv, (mask.as_ref(), causal), scale, dims)?;
        let op = Op::Attention {
            scale,
            mask: mask.map(Arc::new),
            causal,
            probs: Arc::new(probs),
        };
        Ok(self.tape.push(op, &[self, k, v], y))
    }
}

// ---------------------------------------------------------------------------------------
// The op table's entries for both ops
// ---------------------------------------------------------------------------------------

/// The reverse rule of a layer norm or attention node.
pub(crate) fn vjp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    match op {
        Op::LayerNorm { affine, stats, .. } => Ok(layer_norm_vjp(ins, *affine, stats, g, needs)),
        Op::Attention {
            scale,
            probs,
            causal,
            ..
        } => attention_vjp(ins, probs, (*scale, *causal), g, needs),
        _ => unreachable!("not a transformer op"),
    }
}

/// The forward rule of a layer norm or attention node.
pub(crate) fn jvp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    out: &Tensor<T>,
    t: &Tangents<T>,
) -> Result<Tensor<T>> {
    match op {
        Op::LayerNorm { affine, stats, .. } => Ok(layer_norm_jvp(ins, *affine, stats, t)),
        Op::Attention {
            scale,
            probs,
            causal,
            ..
        } => attention_jvp(ins, out, probs, (*scale, *causal), t),
        _ => unreachable!("not a transformer op"),
    }
}

/// The composition in built-in ops that second order differentiates.
pub(crate) fn composed<'t, T: Element>(op: &Op<T>, ins: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    match op {
        Op::LayerNorm { eps, affine, .. } => layer_norm_composed(ins, *affine, *eps),
        Op::Attention {
            scale,
            mask,
            causal,
            ..
        } => attention_composed(ins, (mask.as_deref(), *causal), *scale),
        _ => unreachable!("not a transformer op"),
    }
}

/// Runs the op again on new inputs (replay), refreshing what it keeps for its reverse rule.
pub(crate) fn replay_forward<T: Element>(op: &mut Op<T>, ins: &[&Tensor<T>]) -> Result<Tensor<T>> {
    match op {
        Op::LayerNorm { eps, affine, stats } => {
            let w = affine.0.then(|| ins[1]);
            let b = affine.1.then(|| ins[ins.len() - 1]);
            let (y, st) = layer_norm_forward(ins[0], w, b, *eps)?;
            *stats = Arc::new(st);
            Ok(y)
        }
        Op::Attention {
            scale,
            mask,
            causal,
            probs,
        } => {
            let dims = attn_dims(ins[0].shape(), ins[1].shape(), ins[2].shape())?;
            let masks = (mask.as_deref(), *causal);
            let (y, p) = attention_forward(ins[0], ins[1], ins[2], masks, *scale, dims)?;
            *probs = Arc::new(p);
            Ok(y)
        }
        _ => unreachable!("not a transformer op"),
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
    use crate::autodiff::suite::LARGE;
    use rand::SeedableRng;

    #[test]
    fn every_case_passes_the_gradient_check() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut cases = Vec::new();
        suite_cases(&mut rng, &mut cases);
        assert_eq!(cases.len(), 8);
        for c in cases {
            check(&c.op, &c.inputs, |tape, v| (c.f)(tape, v));
        }
        let _ = LARGE;
    }

    #[test]
    fn the_fused_ops_equal_their_compositions() {
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
        let q = tape.var(sample(&[2, 2, 4, 3], Domain::AwayFromZero, &mut rng));
        let k = tape.var(sample(&[2, 2, 4, 3], Domain::AwayFromZero, &mut rng));
        let v = tape.var(sample(&[2, 2, 4, 2], Domain::AwayFromZero, &mut rng));
        let fused = q.attention(k, v, &AttentionMask::Causal).unwrap();
        let Op::Attention {
            mask,
            scale,
            causal,
            ..
        } = tape.with_nodes(|n| n[fused.id as usize].op.clone())
        else {
            panic!("not an attention node")
        };
        assert!(causal && mask.is_none());
        let comp = attention_composed(&[q, k, v], (mask.as_deref(), causal), scale).unwrap();
        assert!(fused.value().max_abs_diff(&comp.value()).unwrap() < 1e-14);
        // the first query sees only the first key: its output is that key's value
        let (o, vv) = (fused.value(), v.value());
        assert_eq!(&o.data()[..2], &vv.data()[..2]);
    }

    #[test]
    fn bad_shapes_and_fully_masked_rows() {
        let tape = Tape::<f64>::new();
        let q = tape.var(Tensor::ones(&[1, 3, 2]).unwrap());
        let k = tape.var(Tensor::ones(&[1, 2, 2]).unwrap());
        let v = tape.var(Tensor::ones(&[1, 2, 4]).unwrap());
        // more queries than keys cannot be causal
        assert!(q.attention(k, v, &AttentionMask::Causal).is_err());
        assert!(q.attention(v, v, &AttentionMask::None).is_err());
        let x = tape.var(Tensor::ones(&[2, 3]).unwrap());
        let w = tape.var(Tensor::ones(&[2]).unwrap());
        assert!(x.layer_norm(Some(w), None, 1e-5).is_err());
        assert!(x.layer_norm(None, None, f64::NAN).is_err());
        // a query whose keys are all removed gets NaN, as in PyTorch
        let none = AttentionMask::Allow {
            allow: vec![false; 6].into(),
            shape: vec![3, 2],
        };
        let y = q.attention(k, v, &none).unwrap().value();
        assert!(y.data().iter().all(|v| v.is_nan()));
    }
}
