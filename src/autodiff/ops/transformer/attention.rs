//! Scaled dot-product attention, `softmax(Q·Kᵀ·scale + mask)·V` over `[..., T, d]`, as one
//! recorded node that keeps the probabilities `[..., T, S]` for its reverse rule. The
//! kernels run one head at a time (a product for the scores, a row pass for the softmax,
//! a product for the output), heads in parallel; under the causal mask the hidden keys
//! are skipped.

use super::super::row_sum;
use super::super::{AttentionRecord, Grads, Op, Tangents};
use super::row_max;
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{
    Element, MatLayout, PARALLEL_MIN_LEN, Tensor, checked_len, matmul_into, with_avx2,
};
use rayon::prelude::*;
use std::sync::Arc;

/// Which query may look at which key: nothing masked, the causal mask (query `i` sees
/// keys `0..=i`), scores added to the logits, or a boolean mask (`true`: may attend, as
/// in `torch.nn.functional.scaled_dot_product_attention`). Masks broadcast to
/// `[..., T, S]`.
#[derive(Clone, Debug)]
pub enum AttentionMask<T: Element> {
    /// Every query attends every key.
    None,
    /// Query `i` attends keys `0..=i` (needs `T ≤ S`): the first `T` keys align with the
    /// queries, as in PyTorch's `is_causal` (the lower triangle of a `[T, S]` matrix of
    /// ones), so with `T < S` the keys after the last query's position stay hidden.
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
// A `Parts` (private to this module) reaches its buffer only through `head` and `at`,
// whose callers guarantee that the buffer outlives the slices and that no two live slices
// overlap (each head takes its own block, rows or columns).
// SAFETY: handing the pointer to another thread is then as sound as sending those
// disjoint `&mut [T]`, which `T: Send` allows.
unsafe impl<T: Send> Send for Parts<T> {}
// SAFETY: sharing a `Parts` lets threads call only `head` and `at`, under the contract above.
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
    // SAFETY: callers uphold `# Safety` above; the body forms exactly that slice
    unsafe fn head(&self, h: usize, len: usize) -> &mut [T] {
        // SAFETY: by the caller's contract the range is inside the buffer and unshared
        unsafe { std::slice::from_raw_parts_mut(self.0.add(h * len), len) }
    }
    /// The `len` elements from `at`.
    ///
    /// # Safety
    /// The buffer holds at least `at + len` elements, and no other live slice covers
    /// this range.
    #[allow(clippy::mut_from_ref)]
    // SAFETY: callers uphold `# Safety` above; the body forms exactly that slice
    unsafe fn at(&self, at: usize, len: usize) -> &mut [T] {
        // SAFETY: by the caller's contract the range is inside the buffer and unshared
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
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
        let qkv = [
            &q.data()[h * t * d..(h + 1) * t * d],
            &k.data()[h * s * d..(h + 1) * s * d],
            &v.data()[h * s * dv..(h + 1) * s * dv],
        ];
        let mask = mask.map(|m| head_mask(m, h, t * s));
        head_forward(qkv, (p, o), dims, (scale, mask, causal));
    });
    Ok((out, probs))
}

/// One head's forward: `P = softmax(Q·Kᵀ·scale + mask)` into `p`, `O = P·V` into `o`.
fn head_forward<T: Element>(
    [q, k, v]: [&[T]; 3],
    (p, o): (&mut [T], &mut [T]),
    AttnDims { t, s, d, dv, .. }: AttnDims,
    (scale, mask, causal): (T, Option<&[T]>, bool),
) {
    let (n, tr) = (MatLayout::Normal, MatLayout::Transposed);
    matmul_into(p, t, s, d, (q, n), (k, tr), false);
    softmax_rows(p, s, scale, mask, causal);
    matmul_into(o, t, dv, s, (p, n), (v, n), false);
}

/// One head's reverse rule into `(gq, gk, gv)`, given the output gradient `go`.
fn head_backward<T: Element>(
    [q, k, v]: [&[T]; 3],
    (p, go): (&[T], &[T]),
    [gq, gk, gv]: [&mut [T]; 3],
    AttnDims { t, s, d, dv, .. }: AttnDims,
    (scale, causal): (T, bool),
) {
    let (n, tr) = (MatLayout::Normal, MatLayout::Transposed);
    matmul_into(gv, s, dv, t, (p, tr), (go, n), false);
    let mut ds = vec![T::zero(); t * s];
    matmul_into(&mut ds, t, s, dv, (go, n), (v, tr), false);
    softmax_adjoint_rows(&mut ds, p, s, scale, causal);
    matmul_into(gq, t, d, s, (&ds, n), (k, n), false);
    matmul_into(gk, s, d, t, (&ds, tr), (q, n), false);
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
            let qkv = [
                &q.data()[h * t * d..(h + 1) * t * d],
                &k.data()[h * s * d..(h + 1) * s * d],
                &v.data()[h * s * dv..(h + 1) * s * dv],
            ];
            // SAFETY: each gradient buffer has the shape of its input, batch heads of the
            // lengths below; head h takes its own range of each once
            let grads = unsafe { [pq.head(h, t * d), pk.head(h, s * d), pv.head(h, s * dv)] };
            head_backward(qkv, (p, go), grads, dims, (scale, causal));
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
    probs: &Tensor<T>,
    (scale, causal): (f64, bool),
    tan: &Tangents<T>,
) -> Result<Tensor<T>> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let dims = attn_dims(q.shape(), k.shape(), v.shape())?;
    let AttnDims { t, s, d, dv, .. } = dims;
    let lead = &q.shape()[..q.ndim() - 2];
    let mut dout = Tensor::zeroed(&lead.iter().copied().chain([t, dv]).collect::<Vec<_>>());
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
        let op = Op::Attention(Box::new(AttentionRecord {
            scale,
            mask: mask.map(Arc::new),
            causal,
            heads: None,
            probs: Arc::new(probs),
        }));
        Ok(self.tape.push(op, &[self, k, v], y))
    }

    /// Multi-head self-attention over a fused projection `self: [B, T, 3·D]` (q, k and v
    /// side by side, each `D = heads·hd` wide, head `h` in columns `h·hd..(h+1)·hd` of
    /// each): `[B, T, D]`, the heads' outputs side by side. What PyTorch computes with
    /// `q, k, v = qkv.split(D, 2)`, a view of each as `[B, heads, T, hd]`,
    /// `scaled_dot_product_attention` and the transpose back, as one node without those
    /// copies and their adjoints.
    pub fn self_attention(self, heads: usize, mask: &AttentionMask<T>) -> Result<Var<'t, T>> {
        let x = self.value();
        let (b, t, d) = packed_dims(x.shape(), heads)?;
        let hd = d / heads;
        let dims = AttnDims {
            batch: b * heads,
            t,
            s: t,
            d: hd,
            dv: hd,
        };
        let causal = matches!(mask, AttentionMask::Causal);
        let mask = additive_mask(mask, &[b, heads, t, hd], dims)?;
        let scale = 1.0 / (hd.max(1) as f64).sqrt();
        let (y, probs) = packed_forward(&x, heads, (mask.as_ref(), causal), scale)?;
        let op = Op::Attention(Box::new(AttentionRecord {
            scale,
            mask: mask.map(Arc::new),
            causal,
            heads: Some(heads),
            probs: Arc::new(probs),
        }));
        Ok(self.tape.push(op, &[self], y))
    }
}

// ---------------------------------------------------------------------------------------
// The fused projection's layout: heads side by side in each row
// ---------------------------------------------------------------------------------------

/// `(B, T, D)` of a fused projection `[B, T, 3·D]` split into `heads` heads.
fn packed_dims(x: &[usize], heads: usize) -> Result<(usize, usize, usize)> {
    match *x {
        [b, t, w] if w % 3 == 0 && heads > 0 && (w / 3).is_multiple_of(heads) => Ok((b, t, w / 3)),
        _ => Err(Error::invalid(
            "self_attention",
            format!(
                "the fused projection has shape {x:?}; it needs [batch, time, 3·D] with {heads} heads dividing D"
            ),
        )),
    }
}

/// `x: [B, T, parts·H·hd]` (the parts side by side, heads side by side in each) as
/// `parts` tensors `[B, H, T, hd]`.
fn rows_to_heads<T: Element>(x: &Tensor<T>, parts: usize, heads: usize) -> Vec<Tensor<T>> {
    let (b, t, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let hd = w / parts / heads;
    (0..parts)
        .map(|p| {
            Tensor::build(&[b, heads, t, hd], |out| {
                for (bi, rows) in x.data().chunks_exact(t * w).enumerate() {
                    for (ti, row) in rows.chunks_exact(w).enumerate() {
                        let row = &row[p * heads * hd..(p + 1) * heads * hd];
                        for (h, src) in row.chunks_exact(hd).enumerate() {
                            let at = ((bi * heads + h) * t + ti) * hd;
                            out[at..at + hd].copy_from_slice(src);
                        }
                    }
                }
            })
        })
        .collect()
}

/// The inverse of [`rows_to_heads`]: tensors `[B, H, T, hd]` side by side in the rows of
/// `[B, T, parts·H·hd]`.
fn heads_to_rows<T: Element>(parts: &[&Tensor<T>]) -> Tensor<T> {
    let [b, heads, t, hd] = parts[0].shape() else {
        unreachable!("heads are [B, H, T, hd]")
    };
    let (b, heads, t, hd) = (*b, *heads, *t, *hd);
    let w = parts.len() * heads * hd;
    Tensor::build(&[b, t, w], |out| {
        for (p, part) in parts.iter().enumerate() {
            for (bh, block) in part.data().chunks_exact(t * hd).enumerate() {
                let (bi, h) = (bh / heads, bh % heads);
                for (ti, src) in block.chunks_exact(hd).enumerate() {
                    let at = (bi * t + ti) * w + (p * heads + h) * hd;
                    out[at..at + hd].copy_from_slice(src);
                }
            }
        }
    })
}

/// Head `h` (of `heads` per sequence) of `[B, T, w]` rows: the `t` rows of its sequence,
/// `hd` columns from `col`, as offsets into the buffer.
fn head_rows(
    h: usize,
    heads: usize,
    (t, w): (usize, usize),
    col: usize,
) -> impl Iterator<Item = usize> {
    let b = h / heads;
    (0..t).map(move |ti| (b * t + ti) * w + col)
}

/// Attention over the fused projection `x: [B, T, 3·D]`: each head's q, k and v copied
/// from their columns into a small buffer, its output written into its columns of
/// `[B, T, D]`; the probabilities `[B, heads, T, T]`.
fn packed_forward<T: Element>(
    x: &Tensor<T>,
    heads: usize,
    (mask, causal): (Option<&Tensor<T>>, bool),
    scale: f64,
) -> Result<(Tensor<T>, Tensor<T>)> {
    let (b, t, d) = packed_dims(x.shape(), heads)?;
    let hd = d / heads;
    let dims = AttnDims {
        batch: b * heads,
        t,
        s: t,
        d: hd,
        dv: hd,
    };
    checked_len("self_attention", &[b, heads, t, t])?;
    let mut out = Tensor::zeroed(&[b, t, d]);
    let mut probs = Tensor::zeroed(&[b, heads, t, t]);
    if t == 0 || hd == 0 {
        return Ok((out, probs));
    }
    let (po, pp) = (Parts::new(out.data_mut()), Parts::new(probs.data_mut()));
    let scale = T::of(scale);
    per_head(dims, |h| {
        let mut buf = vec![T::zero(); 4 * t * hd];
        let (qkv, o) = buf.split_at_mut(3 * t * hd);
        for (part, dst) in qkv.chunks_exact_mut(t * hd).enumerate() {
            let col = part * d + (h % heads) * hd;
            for (row, at) in dst
                .chunks_exact_mut(hd)
                .zip(head_rows(h, heads, (t, 3 * d), col))
            {
                row.copy_from_slice(&x.data()[at..at + hd]);
            }
        }
        // SAFETY: `probs` holds B·heads·t·t elements; head h < B·heads takes its own block
        let p = unsafe { pp.head(h, t * t) };
        let mut parts = qkv.chunks_exact(t * hd);
        let qkv = [(); 3].map(|_| parts.next().expect("three parts"));
        let mask = mask.map(|m| head_mask(m, h, t * t));
        head_forward(qkv, (p, &mut *o), dims, (scale, mask, causal));
        for (row, at) in o
            .chunks_exact(hd)
            .zip(head_rows(h, heads, (t, d), (h % heads) * hd))
        {
            // SAFETY: `out` holds B·t·d elements; the hd columns of head h in row
            // (b, ti) belong to this head alone
            unsafe { po.at(at, hd) }.copy_from_slice(row);
        }
    });
    Ok((out, probs))
}

/// The reverse rule over the fused projection: the gradient `[B, T, 3·D]` of `x` from
/// the output gradient `g: [B, T, D]`, each head's parts written into its columns.
fn packed_vjp<T: Element>(
    x: &Tensor<T>,
    heads: usize,
    probs: &Tensor<T>,
    (scale, causal): (f64, bool),
    g: &Tensor<T>,
) -> Result<Tensor<T>> {
    let (b, t, d) = packed_dims(x.shape(), heads)?;
    let hd = d / heads;
    let dims = AttnDims {
        batch: b * heads,
        t,
        s: t,
        d: hd,
        dv: hd,
    };
    let mut dx = Tensor::zeroed(x.shape());
    if t == 0 || hd == 0 {
        return Ok(dx);
    }
    let px = Parts::new(dx.data_mut());
    let scale = T::of(scale);
    per_head(dims, |h| {
        let mut buf = vec![T::zero(); 7 * t * hd];
        let (ins, rest) = buf.split_at_mut(4 * t * hd);
        for (part, dst) in ins.chunks_exact_mut(t * hd).enumerate() {
            // q, k, v from x, then the output gradient from g
            let (src, w, col) = match part {
                3 => (g.data(), d, (h % heads) * hd),
                _ => (x.data(), 3 * d, part * d + (h % heads) * hd),
            };
            for (row, at) in dst
                .chunks_exact_mut(hd)
                .zip(head_rows(h, heads, (t, w), col))
            {
                row.copy_from_slice(&src[at..at + hd]);
            }
        }
        let mut parts = ins.chunks_exact(t * hd);
        let [q, k, v, go] = [(); 4].map(|_| parts.next().expect("four parts"));
        let p = &probs.data()[h * t * t..(h + 1) * t * t];
        let mut outs = rest.chunks_exact_mut(t * hd);
        let grads = [(); 3].map(|_| outs.next().expect("three gradients"));
        head_backward([q, k, v], (p, go), grads, dims, (scale, causal));
        for (part, grad) in rest.chunks_exact(t * hd).enumerate() {
            let col = part * d + (h % heads) * hd;
            for (row, at) in grad
                .chunks_exact(hd)
                .zip(head_rows(h, heads, (t, 3 * d), col))
            {
                // SAFETY: `dx` holds B·t·3d elements; the hd columns of part `part` of
                // head h in row (b, ti) belong to this head alone
                unsafe { px.at(at, hd) }.copy_from_slice(row);
            }
        }
    });
    Ok(dx)
}

/// `(q, k, v)` as `[B, H, T, hd]` tensors: the three inputs, or the fused one unpacked.
fn head_inputs<T: Element>(ins: &[&Tensor<T>], heads: Option<usize>) -> Vec<Tensor<T>> {
    match heads {
        Some(h) => rows_to_heads(ins[0], 3, h),
        None => ins.iter().map(|&t| t.clone()).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// The op table's entries
// ---------------------------------------------------------------------------------------

/// The reverse rule of an attention node.
pub(super) fn vjp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    let Op::Attention(record) = op else {
        unreachable!("not attention")
    };
    let AttentionRecord {
        scale,
        causal,
        heads,
        probs,
        ..
    } = &**record;
    let rule = (*scale, *causal);
    match heads {
        None => attention_vjp(ins, probs, rule, g, needs),
        Some(h) => {
            let dx = needs[0]
                .then(|| packed_vjp(ins[0], *h, probs, rule, g))
                .transpose()?;
            Ok(smallvec::smallvec![dx])
        }
    }
}

/// The forward rule of an attention node.
pub(super) fn jvp<T: Element>(
    op: &Op<T>,
    ins: &[&Tensor<T>],
    t: &Tangents<T>,
) -> Result<Tensor<T>> {
    let Op::Attention(record) = op else {
        unreachable!("not attention")
    };
    let AttentionRecord {
        scale,
        causal,
        heads,
        probs,
        ..
    } = &**record;
    let qkv = head_inputs(ins, *heads);
    let refs: Vec<&Tensor<T>> = qkv.iter().collect();
    let rule = (*scale, *causal);
    match heads {
        None => attention_jvp(&refs, probs, rule, t),
        Some(h) => {
            let tan = t[0].map(|t| rows_to_heads(t, 3, *h));
            let tans: Vec<Option<&Tensor<T>>> = match &tan {
                Some(v) => v.iter().map(Some).collect(),
                None => vec![None; 3],
            };
            Ok(heads_to_rows(&[&attention_jvp(&refs, probs, rule, &tans)?]))
        }
    }
}

/// The composition in built-in ops that second order differentiates.
pub(super) fn composed<'t, T: Element>(op: &Op<T>, ins: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    let Op::Attention(record) = op else {
        unreachable!("not attention")
    };
    let AttentionRecord {
        scale,
        mask,
        causal,
        heads,
        ..
    } = &**record;
    let masks = (mask.as_deref(), *causal);
    let Some(h) = *heads else {
        return attention_composed(ins, masks, *scale);
    };
    let x = ins[0];
    let (b, t, d) = packed_dims(&x.shape(), h)?;
    let part = |p: usize| -> Result<Var<'t, T>> {
        x.narrow(2, p * d, d)?
            .reshape(&[b, t, h, d / h])?
            .permute(&[0, 2, 1, 3])
    };
    let y = attention_composed(&[part(0)?, part(1)?, part(2)?], masks, *scale)?;
    y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, d])
}

/// Runs the op again on new inputs (replay), refreshing the probabilities it keeps.
pub(super) fn replay_forward<T: Element>(op: &mut Op<T>, ins: &[&Tensor<T>]) -> Result<Tensor<T>> {
    let Op::Attention(record) = op else {
        unreachable!("not attention")
    };
    let AttentionRecord {
        scale,
        mask,
        causal,
        heads,
        probs,
    } = &mut **record;
    let masks = (mask.as_deref(), *causal);
    let (y, p) = match heads {
        Some(h) => packed_forward(ins[0], *h, masks, *scale)?,
        None => {
            let dims = attn_dims(ins[0].shape(), ins[1].shape(), ins[2].shape())?;
            attention_forward(ins[0], ins[1], ins[2], masks, *scale, dims)?
        }
    };
    *probs = Arc::new(p);
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::suite::{Domain, sample};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_fused_op_equals_its_composition() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let tape = Tape::new();
        let q = tape.var(sample(&[2, 2, 4, 3], Domain::AwayFromZero, &mut rng));
        let k = tape.var(sample(&[2, 2, 4, 3], Domain::AwayFromZero, &mut rng));
        let v = tape.var(sample(&[2, 2, 4, 2], Domain::AwayFromZero, &mut rng));
        let fused = q.attention(k, v, &AttentionMask::Causal).unwrap();
        let Op::Attention(record) = tape.with_nodes(|n| n[fused.id as usize].op.clone()) else {
            panic!("not an attention node")
        };
        let AttentionRecord {
            mask,
            scale,
            causal,
            ..
        } = *record;
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
        // a query whose keys are all removed gets NaN, as in PyTorch
        let none = AttentionMask::Allow {
            allow: vec![false; 6].into(),
            shape: vec![3, 2],
        };
        let y = q.attention(k, v, &none).unwrap().value();
        assert!(y.data().iter().all(|v| v.is_nan()));
    }
}
