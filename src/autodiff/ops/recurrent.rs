//! One time step of a recurrent cell as one recorded node: Elman RNN (tanh), GRU and
//! LSTM with PyTorch's gate orders. Each step op takes the step's slice of the input
//! projection, the previous state, `W_hh` and `b_hh`, computes `h·W_hhᵀ + b_hh` itself,
//! and carries its own reverse rule (VJP) and forward rule (JVP), written side by side
//! below, plus its composition in built-in ops, which second order differentiates. The
//! layers that run them over a window live in `nn::recurrent`.

use super::CustomOp;
use crate::autodiff::Var;
use crate::error::{Error, Result};
use crate::tensor::{Element, MatLayout, Tensor, matmul_into, with_avx2};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// Shared pieces of the step rules: the hidden projection hp = h·Wᵀ + b and its two rules.
// ---------------------------------------------------------------------------------------

// σ is the table's (`crate::tensor::sigmoid`): the compositions that second order
// differentiates use the table's op, so the gates must compute the same function. For
// f32 it is branch-free over the vectorisable `tanh_`, so the gate loops vectorise.
use crate::tensor::sigmoid;

/// `hp = h·Wᵀ + b`: `h: [B, H]`, `W: [GH, H]`, `b: [GH]`, result `[B, GH]` row-major.
fn hidden_proj<T: Element>(h: &Tensor<T>, w: &Tensor<T>, b: &Tensor<T>) -> Vec<T> {
    let (bsz, hid, gh) = (h.shape()[0], h.shape()[1], w.shape()[0]);
    let mut out = vec![T::zero(); bsz * gh];
    hidden_product(
        &mut out,
        h.data(),
        (w.data(), MatLayout::Transposed),
        b.data(),
        hid,
    );
    out
}

/// Forward rule of `hp`: `ṫhp = ḣ·Wᵀ + h·Ẇᵀ + ḃ` (absent tangents are zero).
fn hidden_proj_jvp<T: Element>(
    h: &Tensor<T>,
    w: &Tensor<T>,
    dh: Option<&Tensor<T>>,
    dw: Option<&Tensor<T>>,
    db: Option<&Tensor<T>>,
) -> Vec<T> {
    let (bsz, hid, gh) = (h.shape()[0], h.shape()[1], w.shape()[0]);
    let mut out = vec![T::zero(); bsz * gh];
    if let Some(db) = db {
        for row in out.chunks_exact_mut(gh) {
            row.copy_from_slice(db.data());
        }
    }
    if let Some(dh) = dh {
        let rhs = (w.data(), MatLayout::Transposed);
        matmul_into(
            &mut out,
            bsz,
            gh,
            hid,
            (dh.data(), MatLayout::Normal),
            rhs,
            true,
        );
    }
    if let Some(dw) = dw {
        let rhs = (dw.data(), MatLayout::Transposed);
        matmul_into(
            &mut out,
            bsz,
            gh,
            hid,
            (h.data(), MatLayout::Normal),
            rhs,
            true,
        );
    }
    out
}

/// Reverse rule of `hp`, given `ghp = ∂L/∂hp` (`[B, GH]`): `(ghp·W, ghpᵀ·h, Σ_rows ghp)`.
fn hidden_proj_vjp<T: Element>(
    h: &Tensor<T>,
    w: &Tensor<T>,
    ghp: &[T],
) -> (Tensor<T>, Tensor<T>, Tensor<T>) {
    let (bsz, hid, gh) = (h.shape()[0], h.shape()[1], w.shape()[0]);
    let dh = Tensor::build(&[bsz, hid], |d| {
        let (lhs, rhs) = ((ghp, MatLayout::Normal), (w.data(), MatLayout::Normal));
        matmul_into(d, bsz, hid, gh, lhs, rhs, false);
    });
    let dw = Tensor::build(&[gh, hid], |d| {
        let (lhs, rhs) = ((ghp, MatLayout::Transposed), (h.data(), MatLayout::Normal));
        matmul_into(d, gh, hid, bsz, lhs, rhs, false);
    });
    let db = Tensor::build(&[gh], |d| {
        for row in ghp.chunks_exact(gh) {
            for (a, &g) in d.iter_mut().zip(row) {
                *a += g;
            }
        }
    });
    (dh, dw, db)
}

/// Checks the inputs of a step: `xp: [B, G·H]`, each state `[B, H]`, `W_hh: [G·H, H]`,
/// `b_hh: [G·H]`. Returns `(B, H)`.
fn check_step(
    op: &'static str,
    gates: usize,
    xp: &[usize],
    states: &[&[usize]],
    w: &[usize],
    b: &[usize],
) -> Result<(usize, usize)> {
    let bad = |msg: String| Err(Error::invalid(op, msg));
    if w.len() != 2 || w[0] != gates * w[1] || w[1] == 0 {
        return bad(format!("W_hh has shape {w:?}, expected [{gates}·H, H]"));
    }
    let hid = w[1];
    let gh = gates * hid;
    if b != [gh] {
        return bad(format!("b_hh has shape {b:?}, expected [{gh}]"));
    }
    if xp.len() != 2 || xp[1] != gh {
        return bad(format!(
            "the input projection has shape {xp:?}, expected [B, {gh}]"
        ));
    }
    let bsz = xp[0];
    for s in states {
        if *s != [bsz, hid] {
            return bad(format!("a state has shape {s:?}, expected [{bsz}, {hid}]"));
        }
    }
    Ok((bsz, hid))
}

// ---------------------------------------------------------------------------------------
// Each step written once more in built-in ops: not used by the forward pass or the
// reverse rules above and below, but by second order, which differentiates these
// compositions (`CustomOp::composed`), so no derivative is written a second time. A test
// checks they compute the kernels' values.
// ---------------------------------------------------------------------------------------

/// `h·Wᵀ + b` in built-in ops.
fn hidden_proj_composed<'t, T: Element>(
    h: Var<'t, T>,
    w: Var<'t, T>,
    b: Var<'t, T>,
) -> Result<Var<'t, T>> {
    h.matmul(w.transpose(0, 1)?)?.add(b)
}

/// Gate block `k` (of width `hid`) of a `[B, G·H]` variable.
fn block<'t, T: Element>(v: Var<'t, T>, k: usize, hid: usize) -> Result<Var<'t, T>> {
    v.narrow(1, k * hid, hid)
}

/// The RNN step `[xp, h, W, b] ↦ tanh(xp + h·Wᵀ + b)` in built-in ops.
fn rnn_composed<'t, T: Element>(v: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    Ok(v[0].add(hidden_proj_composed(v[1], v[2], v[3])?)?.tanh())
}

/// The GRU step over `[xp, h, W, b]` in built-in ops.
fn gru_composed<'t, T: Element>(v: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    let (xp, h, hid) = (v[0], v[1], v[1].shape()[1]);
    let hp = hidden_proj_composed(h, v[2], v[3])?;
    let gate = |k| -> Result<Var<'t, T>> { block(xp, k, hid)?.add(block(hp, k, hid)?) };
    let (r, z) = (gate(0)?.sigmoid(), gate(1)?.sigmoid());
    let n = block(xp, 2, hid)?.add(r.mul(block(hp, 2, hid)?)?)?.tanh();
    // (1 − z) ⊙ n + z ⊙ h
    n.add(z.mul(h.sub(n)?)?)
}

/// The LSTM step over `[xp, h, c, W, b]` in built-in ops, `[h', c']` side by side.
fn lstm_composed<'t, T: Element>(v: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    let hid = v[1].shape()[1];
    let a = v[0].add(hidden_proj_composed(v[1], v[3], v[4])?)?;
    let (i, f) = (block(a, 0, hid)?.sigmoid(), block(a, 1, hid)?.sigmoid());
    let (g, o) = (block(a, 2, hid)?.tanh(), block(a, 3, hid)?.sigmoid());
    let c_new = f.mul(v[2])?.add(i.mul(g)?)?;
    let h_new = o.mul(c_new.tanh())?;
    Var::concat(&[h_new, c_new], 1)
}

// ---------------------------------------------------------------------------------------
// The rules of one step, row by row (one row = one sequence of the batch). The step ops
// below and the whole-window op `recurrent_sequence` both run these, so each derivative
// is written once.
// ---------------------------------------------------------------------------------------

/// RNN forward: `h' = tanh(xp + hp)`.
#[inline(always)]
fn rnn_forward_row<T: Element>(xp: &[T], hp: &[T], h_new: &mut [T]) {
    for ((o, &x), &a) in h_new.iter_mut().zip(xp).zip(hp) {
        *o = (x + a).tanh_();
    }
}

/// RNN reverse: `ḡa = g ⊙ (1 − h'²)` is the gradient of both `xp` and `hp`.
#[inline(always)]
fn rnn_backward_row<T: Element>(h_new: &[T], g: &[T], ga: &mut [T]) {
    for ((o, &y), &g) in ga.iter_mut().zip(h_new).zip(g) {
        *o = (T::one() - y * y) * g;
    }
}

/// GRU forward (PyTorch's form): `r = σ(xp_r + hp_r)`, `z = σ(xp_z + hp_z)`,
/// `n = tanh(xp_n + r ⊙ hp_n)`, `h' = (1 − z) ⊙ n + z ⊙ h`; keeps `[r, z, n, hp_n]`.
#[inline(always)]
fn gru_forward_row<T: Element>(
    hid: usize,
    xp: &[T],
    hp: &[T],
    h: &[T],
    h_new: &mut [T],
    saved: &mut [T],
) {
    let (rz, rest) = saved[..4 * hid].split_at_mut(2 * hid);
    let (n, hn) = rest.split_at_mut(hid);
    for ((v, &x), &p) in rz.iter_mut().zip(&xp[..2 * hid]).zip(&hp[..2 * hid]) {
        *v = sigmoid(x + p);
    }
    hn.copy_from_slice(&hp[2 * hid..3 * hid]);
    let (r, z) = rz.split_at(hid);
    let (xn, h, h_new) = (&xp[2 * hid..3 * hid], &h[..hid], &mut h_new[..hid]);
    for j in 0..hid {
        n[j] = (xn[j] + r[j] * hn[j]).tanh_();
        h_new[j] = (T::one() - z[j]) * n[j] + z[j] * h[j];
    }
}

/// GRU reverse: `ḡn = g(1−z)(1−n²)`, `ḡz = g(h−n) z(1−z)`, `ḡr = ḡn hp_n r(1−r)`;
/// `∂xp = [ḡr, ḡz, ḡn]`, `∂hp = [ḡr, ḡz, ḡn ⊙ r]`, and `h` gets `g z` directly (besides
/// `∂hp·W`).
#[inline(always)]
fn gru_backward_row<T: Element>(
    hid: usize,
    saved: &[T],
    h: &[T],
    g: &[T],
    gx: &mut [T],
    ghp: &mut [T],
    direct: &mut [T],
) {
    for j in 0..hid {
        let (r, z, n, hn) = (
            saved[j],
            saved[hid + j],
            saved[2 * hid + j],
            saved[3 * hid + j],
        );
        let gn = g[j] * (T::one() - z) * (T::one() - n * n);
        let gz = g[j] * (h[j] - n) * z * (T::one() - z);
        let gr = gn * hn * r * (T::one() - r);
        direct[j] = g[j] * z;
        (gx[j], gx[hid + j], gx[2 * hid + j]) = (gr, gz, gn);
        (ghp[j], ghp[hid + j], ghp[2 * hid + j]) = (gr, gz, gn * r);
    }
}

/// LSTM forward: `a = xp + hp` (given in `a`, replaced by the activated gates
/// `[i, f, g, o]`); `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`. Block by block, so that
/// every loop vectorises.
#[inline(always)]
fn lstm_forward_row<T: Element>(
    hid: usize,
    a: &mut [T],
    c: &[T],
    h_new: &mut [T],
    c_new: &mut [T],
) {
    let (ifg, o) = a[..4 * hid].split_at_mut(3 * hid);
    let (i_f, g) = ifg.split_at_mut(2 * hid);
    i_f.iter_mut().for_each(|v| *v = sigmoid(*v));
    g.iter_mut().for_each(|v| *v = v.tanh_());
    o.iter_mut().for_each(|v| *v = sigmoid(*v));
    let (i, f) = i_f.split_at(hid);
    let (c, h_new, c_new) = (&c[..hid], &mut h_new[..hid], &mut c_new[..hid]);
    for j in 0..hid {
        let cn = f[j] * c[j] + i[j] * g[j];
        h_new[j] = o[j] * cn.tanh_();
        c_new[j] = cn;
    }
}

/// LSTM reverse, given `g_h` and `g_c` of the step's outputs: `ḡc = g_c + g_h o (1 −
/// tanh² c')`; `∂a = [ḡc g i(1−i), ḡc c f(1−f), ḡc i (1−g²), g_h tanh c' o(1−o)]` (the
/// gradient of both `xp` and `hp`); `∂c = ḡc f`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lstm_backward_row<T: Element>(
    hid: usize,
    gates: &[T],
    c: &[T],
    c_new: &[T],
    g_h: &[T],
    g_c: &[T],
    da: &mut [T],
    dc: &mut [T],
) {
    for j in 0..hid {
        let (i, f, gg, o) = (
            gates[j],
            gates[hid + j],
            gates[2 * hid + j],
            gates[3 * hid + j],
        );
        let tc = c_new[j].tanh_();
        let gct = g_c[j] + g_h[j] * o * (T::one() - tc * tc);
        da[j] = gct * gg * i * (T::one() - i);
        da[hid + j] = gct * c[j] * f * (T::one() - f);
        da[2 * hid + j] = gct * i * (T::one() - gg * gg);
        da[3 * hid + j] = g_h[j] * tc * o * (T::one() - o);
        dc[j] = gct * f;
    }
}

// ---------------------------------------------------------------------------------------
// RNN (tanh): h' = tanh(xp + h·Wᵀ + b).     inputs [xp, h, W_hh, b_hh]
// ---------------------------------------------------------------------------------------

/// One Elman RNN step; the output `h'` is all its rules need.
struct RnnStep;

impl<T: Element> CustomOp<T> for RnnStep {
    fn name(&self) -> &str {
        "rnn_cell"
    }

    fn composed<'t>(&self, ins: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        Some(rnn_composed(ins))
    }

    /// `ḣ' = (1 − h'²) ⊙ (ẋp + ṫhp)`
    fn jvp(
        &self,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        t: &[Option<&Tensor<T>>],
    ) -> Result<Tensor<T>> {
        let mut da = hidden_proj_jvp(ins[1], ins[2], t[1], t[2], t[3]);
        if let Some(dx) = t[0] {
            da.iter_mut().zip(dx.data()).for_each(|(a, &d)| *a += d);
        }
        Ok(Tensor::build(out.shape(), |o| {
            rnn_backward_row(out.data(), &da, o);
        }))
    }

    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let ga = Tensor::build(out.shape(), |o| rnn_backward_row(out.data(), g.data(), o));
        let (dh, dw, db) = hidden_proj_vjp(ins[1], ins[2], ga.data());
        Ok(vec![ga, dh, dw, db])
    }
}

/// One RNN (tanh) step as one recorded node: `h' = tanh(xp + h·W_hhᵀ + b_hh)`, where `xp`
/// (`[B, H]`) is the step's slice of the input projection `x·W_ihᵀ + b_ih`.
pub fn rnn_cell<'t, T: Element>(
    xp: Var<'t, T>,
    h: Var<'t, T>,
    w_hh: Var<'t, T>,
    b_hh: Var<'t, T>,
) -> Result<Var<'t, T>> {
    let (xv, hv, wv, bv) = (xp.value(), h.value(), w_hh.value(), b_hh.value());
    let (bsz, hid) = check_step(
        "rnn_cell",
        1,
        xv.shape(),
        &[hv.shape()],
        wv.shape(),
        bv.shape(),
    )?;
    let hp = hidden_proj(&hv, &wv, &bv);
    let y = Tensor::build(&[bsz, hid], |o| rnn_forward_row(xv.data(), &hp, o));
    Var::custom(&[xp, h, w_hh, b_hh], Arc::new(RnnStep), y)
}

// ---------------------------------------------------------------------------------------
// GRU (PyTorch's form).     inputs [xp, h, W_hh, b_hh],  hp = h·Wᵀ + b = [hp_r, hp_z, hp_n]
//   r = σ(xp_r + hp_r),  z = σ(xp_z + hp_z),  n = tanh(xp_n + r ⊙ hp_n)
//   h' = (1 − z) ⊙ n + z ⊙ h
// ---------------------------------------------------------------------------------------

/// One GRU step; keeps `[r, z, n, hp_n]` (`[B, 4H]`) from the forward pass so that
/// neither rule repeats the hidden product.
struct GruStep<T: Element> {
    saved: Tensor<T>,
}

impl<T: Element> CustomOp<T> for GruStep<T> {
    fn name(&self) -> &str {
        "gru_cell"
    }

    fn composed<'t>(&self, ins: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        Some(gru_composed(ins))
    }

    /// `ṙ = r(1−r)(ẋp_r + ṫhp_r)`, `ż = z(1−z)(ẋp_z + ṫhp_z)`,
    /// `ṅ = (1−n²)(ẋp_n + ṙ ⊙ hp_n + r ⊙ ṫhp_n)`, `ḣ' = (1−z) ṅ + ż (h − n) + z ḣ`
    fn jvp(
        &self,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        t: &[Option<&Tensor<T>>],
    ) -> Result<Tensor<T>> {
        let (h, hid) = (ins[1], out.shape()[1]);
        let dhp = hidden_proj_jvp(h, ins[2], t[1], t[2], t[3]);
        let s = self.saved.data();
        Ok(Tensor::build(out.shape(), |o| {
            for (bi, orow) in o.chunks_exact_mut(hid).enumerate() {
                let (s, dhp) = (&s[bi * 4 * hid..], &dhp[bi * 3 * hid..]);
                let dx = |k: usize| t[0].map_or(T::zero(), |d| d.data()[bi * 3 * hid + k]);
                let th = |j: usize| t[1].map_or(T::zero(), |d| d.data()[bi * hid + j]);
                for (j, o) in orow.iter_mut().enumerate() {
                    let (r, z, n, hn) = (s[j], s[hid + j], s[2 * hid + j], s[3 * hid + j]);
                    let dr = r * (T::one() - r) * (dx(j) + dhp[j]);
                    let dz = z * (T::one() - z) * (dx(hid + j) + dhp[hid + j]);
                    let dn =
                        (T::one() - n * n) * (dx(2 * hid + j) + dr * hn + r * dhp[2 * hid + j]);
                    *o = (T::one() - z) * dn + dz * (h.data()[bi * hid + j] - n) + z * th(j);
                }
            }
        }))
    }

    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let (h, hid) = (ins[1], out.shape()[1]);
        let bsz = out.shape()[0];
        let s = self.saved.data();
        let mut ghp = vec![T::zero(); bsz * 3 * hid];
        let mut direct = vec![T::zero(); bsz * hid];
        let gx = Tensor::build(&[bsz, 3 * hid], |gx| {
            for bi in 0..bsz {
                let (r3, r1) = (bi * 3 * hid..(bi + 1) * 3 * hid, bi * hid..(bi + 1) * hid);
                gru_backward_row(
                    hid,
                    &s[bi * 4 * hid..(bi + 1) * 4 * hid],
                    &h.data()[r1.clone()],
                    &g.data()[r1.clone()],
                    &mut gx[r3.clone()],
                    &mut ghp[r3],
                    &mut direct[r1],
                );
            }
        });
        let (mut dh, dw, db) = hidden_proj_vjp(h, ins[2], &ghp);
        dh.data_mut()
            .iter_mut()
            .zip(&direct)
            .for_each(|(a, &d)| *a += d);
        Ok(vec![gx, dh, dw, db])
    }
}

/// One GRU step as one recorded node (PyTorch's form, gates `r, z, n`):
/// `n = tanh(xp_n + r ⊙ (h·W_hnᵀ + b_hn))`, `h' = (1 − z) ⊙ n + z ⊙ h`, where `xp`
/// (`[B, 3H]`) is the step's slice of the input projection `x·W_ihᵀ + b_ih`.
pub fn gru_cell<'t, T: Element>(
    xp: Var<'t, T>,
    h: Var<'t, T>,
    w_hh: Var<'t, T>,
    b_hh: Var<'t, T>,
) -> Result<Var<'t, T>> {
    let (xv, hv, wv, bv) = (xp.value(), h.value(), w_hh.value(), b_hh.value());
    let (bsz, hid) = check_step(
        "gru_cell",
        3,
        xv.shape(),
        &[hv.shape()],
        wv.shape(),
        bv.shape(),
    )?;
    let hp = hidden_proj(&hv, &wv, &bv);
    let mut saved = vec![T::zero(); bsz * 4 * hid];
    let y = Tensor::build(&[bsz, hid], |o| {
        for bi in 0..bsz {
            let (r3, r1) = (bi * 3 * hid..(bi + 1) * 3 * hid, bi * hid..(bi + 1) * hid);
            gru_forward_row(
                hid,
                &xv.data()[r3.clone()],
                &hp[r3],
                &hv.data()[r1.clone()],
                &mut o[r1],
                &mut saved[bi * 4 * hid..(bi + 1) * 4 * hid],
            );
        }
    });
    let saved = Tensor::from_vec(saved, &[bsz, 4 * hid])?;
    Var::custom(&[xp, h, w_hh, b_hh], Arc::new(GruStep { saved }), y)
}

// ---------------------------------------------------------------------------------------
// LSTM.     inputs [xp, h, c, W_hh, b_hh],  a = xp + h·Wᵀ + b = [a_i, a_f, a_g, a_o]
//   i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o)
//   c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c');   output [B, 2H] = [h', c']
// ---------------------------------------------------------------------------------------

/// One LSTM step; keeps the activated gates `[i, f, g, o]` (`[B, 4H]`); `tanh(c')` is
/// recomputed from the output.
struct LstmStep<T: Element> {
    gates: Tensor<T>,
}

impl<T: Element> CustomOp<T> for LstmStep<T> {
    fn name(&self) -> &str {
        "lstm_cell"
    }

    fn composed<'t>(&self, ins: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        Some(lstm_composed(ins))
    }

    /// `ȧ = ẋp + ṫhp`; `i̇ = i(1−i) ȧ_i`, `ḟ = f(1−f) ȧ_f`, `ġ = (1−g²) ȧ_g`,
    /// `ȯ = o(1−o) ȧ_o`; `ċ' = ḟ c + f ċ + i̇ g + i ġ`, `ḣ' = ȯ tanh c' + o (1 − tanh² c') ċ'`
    fn jvp(
        &self,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        t: &[Option<&Tensor<T>>],
    ) -> Result<Tensor<T>> {
        let (c, hid) = (ins[2], out.shape()[1] / 2);
        let mut da = hidden_proj_jvp(ins[1], ins[3], t[1], t[3], t[4]);
        if let Some(dx) = t[0] {
            da.iter_mut().zip(dx.data()).for_each(|(a, &d)| *a += d);
        }
        let gs = self.gates.data();
        Ok(Tensor::build(out.shape(), |o| {
            for (bi, orow) in o.chunks_exact_mut(2 * hid).enumerate() {
                let (s, da) = (&gs[bi * 4 * hid..], &da[bi * 4 * hid..]);
                let yrow = &out.data()[bi * 2 * hid..];
                for j in 0..hid {
                    let k = bi * hid + j;
                    let (i, f, g, og) = (s[j], s[hid + j], s[2 * hid + j], s[3 * hid + j]);
                    let di = i * (T::one() - i) * da[j];
                    let df = f * (T::one() - f) * da[hid + j];
                    let dg = (T::one() - g * g) * da[2 * hid + j];
                    let dog = og * (T::one() - og) * da[3 * hid + j];
                    let dc_prev = t[2].map_or(T::zero(), |d| d.data()[k]);
                    let dc = df * c.data()[k] + f * dc_prev + di * g + i * dg;
                    let tc = yrow[hid + j].tanh_();
                    orow[j] = dog * tc + og * (T::one() - tc * tc) * dc;
                    orow[hid + j] = dc;
                }
            }
        }))
    }

    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let (c, bsz, hid) = (ins[2], out.shape()[0], out.shape()[1] / 2);
        let gs = self.gates.data();
        let mut dc = vec![T::zero(); bsz * hid];
        let da = Tensor::build(&[bsz, 4 * hid], |da| {
            for bi in 0..bsz {
                let (r4, r1, r2) = (
                    bi * 4 * hid..(bi + 1) * 4 * hid,
                    bi * hid..(bi + 1) * hid,
                    bi * 2 * hid..(bi + 1) * 2 * hid,
                );
                let (grow, yrow) = (&g.data()[r2.clone()], &out.data()[r2]);
                lstm_backward_row(
                    hid,
                    &gs[r4.clone()],
                    &c.data()[r1.clone()],
                    &yrow[hid..],
                    &grow[..hid],
                    &grow[hid..],
                    &mut da[r4],
                    &mut dc[r1],
                );
            }
        });
        let (dh, dw, db) = hidden_proj_vjp(ins[1], ins[3], da.data());
        let dc = Tensor::from_vec(dc, &[bsz, hid])?;
        Ok(vec![da, dh, dc, dw, db])
    }
}

/// One LSTM step as one recorded node (gates `i, f, g, o`): `c' = f ⊙ c + i ⊙ g`,
/// `h' = o ⊙ tanh(c')`. Returns `[B, 2H] = [h', c']` (split it with `narrow` on axis 1);
/// `xp` (`[B, 4H]`) is the step's slice of the input projection `x·W_ihᵀ + b_ih`.
pub fn lstm_cell<'t, T: Element>(
    xp: Var<'t, T>,
    h: Var<'t, T>,
    c: Var<'t, T>,
    w_hh: Var<'t, T>,
    b_hh: Var<'t, T>,
) -> Result<Var<'t, T>> {
    let (xv, hv, cv) = (xp.value(), h.value(), c.value());
    let (wv, bv) = (w_hh.value(), b_hh.value());
    let (bsz, hid) = check_step(
        "lstm_cell",
        4,
        xv.shape(),
        &[hv.shape(), cv.shape()],
        wv.shape(),
        bv.shape(),
    )?;
    let mut a = hidden_proj(&hv, &wv, &bv);
    a.iter_mut().zip(xv.data()).for_each(|(a, &x)| *a += x);
    let y = Tensor::build(&[bsz, 2 * hid], |o| {
        for bi in 0..bsz {
            let (h_new, c_new) = o[bi * 2 * hid..(bi + 1) * 2 * hid].split_at_mut(hid);
            lstm_forward_row(
                hid,
                &mut a[bi * 4 * hid..(bi + 1) * 4 * hid],
                &cv.data()[bi * hid..(bi + 1) * hid],
                h_new,
                c_new,
            );
        }
    });
    let gates = Tensor::from_vec(a, &[bsz, 4 * hid])?;
    Var::custom(&[xp, h, c, w_hh, b_hh], Arc::new(LstmStep { gates }), y)
}

// ---------------------------------------------------------------------------------------
// The cells
// ---------------------------------------------------------------------------------------

/// Which recurrent cell a [`Recurrent`](crate::nn::Recurrent) stack runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    /// Elman RNN with tanh (one gate block).
    Rnn,
    /// GRU, gates `r, z, n` (three blocks).
    Gru,
    /// LSTM, gates `i, f, g, o` (four blocks).
    Lstm,
}

impl CellKind {
    /// Number of gate blocks `G` (the weights have `G·H` rows).
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Gru => 3,
            CellKind::Lstm => 4,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One step of `recurrent_sequence` on a block of batch rows. The rows of a batch are
// independent within a step, so a step splits into two blocks that run on two threads,
// each with its own single-threaded hidden product and gate loops: one fork per step
// instead of a GEMM's internal synchronisation plus serial gate loops.
// ---------------------------------------------------------------------------------------

/// A step is split across two threads from this much hidden-product work (B·G·H·H).
const PARALLEL_STEP_WORK: usize = 1 << 20;

/// Whether the steps of a window of `bsz` rows split across two threads.
fn parallel_steps(bsz: usize, gh: usize, hid: usize) -> bool {
    rayon::current_num_threads() > 1 && bsz >= 2 && bsz * gh * hid >= PARALLEL_STEP_WORK
}

/// Splits a row-major slab of `rows` rows (any width, possibly empty) after `at` rows.
fn split_ref<T>(s: &[T], rows: usize, at: usize) -> (&[T], &[T]) {
    s.split_at(s.len() / rows * at)
}

fn split_mut<T>(s: &mut [T], rows: usize, at: usize) -> (&mut [T], &mut [T]) {
    let w = s.len() / rows;
    s.split_at_mut(w * at)
}

/// Runs `run` on `block` (`rows` rows), in two halves on two threads when `parallel`.
fn in_halves<B: Send>(
    block: B,
    rows: usize,
    parallel: bool,
    split: impl Fn(B, usize, usize) -> (B, B),
    run: impl Fn(B) + Sync,
) {
    if parallel && rows >= 2 {
        let (a, b) = split(block, rows, rows / 2);
        rayon::join(|| run(a), || run(b));
    } else {
        run(block);
    }
}

/// `a = b + h·W_hhᵀ` for the rows of `h`, with `W_hh` given as itself
/// (`MatLayout::Transposed`) or as a row-major copy of `W_hhᵀ` (`MatLayout::Normal`).
fn hidden_product<T: Element>(a: &mut [T], h: &[T], w: (&[T], MatLayout), b: &[T], hid: usize) {
    let gh = b.len();
    let rows = a.len() / gh;
    for row in a.chunks_exact_mut(gh) {
        row.copy_from_slice(b);
    }
    matmul_into(a, rows, gh, hid, (h, MatLayout::Normal), w, true);
}

/// The forward pass of one step on a block of rows.
struct ForwardBlock<'a, T> {
    x: &'a [T],
    h_prev: &'a [T],
    c_prev: &'a [T],
    hp: &'a mut [T],
    h_new: &'a mut [T],
    saved: &'a mut [T],
    c_new: &'a mut [T],
}

impl<T: Element> ForwardBlock<'_, T> {
    fn split(self, rows: usize, at: usize) -> (Self, Self) {
        let (x0, x1) = split_ref(self.x, rows, at);
        let (h0, h1) = split_ref(self.h_prev, rows, at);
        let (c0, c1) = split_ref(self.c_prev, rows, at);
        let (p0, p1) = split_mut(self.hp, rows, at);
        let (n0, n1) = split_mut(self.h_new, rows, at);
        let (s0, s1) = split_mut(self.saved, rows, at);
        let (d0, d1) = split_mut(self.c_new, rows, at);
        (
            ForwardBlock {
                x: x0,
                h_prev: h0,
                c_prev: c0,
                hp: p0,
                h_new: n0,
                saved: s0,
                c_new: d0,
            },
            ForwardBlock {
                x: x1,
                h_prev: h1,
                c_prev: c1,
                hp: p1,
                h_new: n1,
                saved: s1,
                c_new: d1,
            },
        )
    }

    fn run(self, kind: CellKind, hid: usize, wt: &[T], b: &[T]) {
        let gh = b.len();
        if kind == CellKind::Lstm {
            // the gates are computed where they are kept
            hidden_product(self.saved, self.h_prev, (wt, MatLayout::Normal), b, hid);
        } else {
            hidden_product(self.hp, self.h_prev, (wt, MatLayout::Normal), b, hid);
        }
        let rows = self.h_new.len() / hid;
        // the gate loops compiled for AVX2 where the CPU has it (same results)
        with_avx2!(match kind {
            CellKind::Rnn => rnn_forward_row(self.x, self.hp, self.h_new),
            CellKind::Gru => {
                for bi in 0..rows {
                    let (r3, r1) = (bi * gh..(bi + 1) * gh, bi * hid..(bi + 1) * hid);
                    gru_forward_row(
                        hid,
                        &self.x[r3.clone()],
                        &self.hp[r3],
                        &self.h_prev[r1.clone()],
                        &mut self.h_new[r1],
                        &mut self.saved[bi * 4 * hid..(bi + 1) * 4 * hid],
                    );
                }
            }
            CellKind::Lstm => {
                let gates = &mut *self.saved;
                gates.iter_mut().zip(self.x).for_each(|(a, &x)| *a += x);
                for (bi, g) in gates.chunks_exact_mut(gh).enumerate() {
                    let r1 = bi * hid..(bi + 1) * hid;
                    lstm_forward_row(
                        hid,
                        g,
                        &self.c_prev[r1.clone()],
                        &mut self.h_new[r1.clone()],
                        &mut self.c_new[r1],
                    );
                }
            }
        })
    }
}

/// The reverse pass of one step on a block of rows: `dh` comes in as `∂L/∂h_t` from
/// the later steps and leaves as `∂L/∂h_{t−1}`.
struct BackwardBlock<'a, T> {
    g_y: &'a [T],
    h_prev: &'a [T],
    h_new: &'a [T],
    saved: &'a [T],
    c_prev: &'a [T],
    c_new: &'a [T],
    dc_in: &'a [T],
    dh: &'a mut [T],
    gsum: &'a mut [T],
    dx: &'a mut [T],
    dhp: &'a mut [T],
    direct: &'a mut [T],
    dc_out: &'a mut [T],
}

impl<T: Element> BackwardBlock<'_, T> {
    fn split(self, rows: usize, at: usize) -> (Self, Self) {
        let (a0, a1) = split_ref(self.g_y, rows, at);
        let (b0, b1) = split_ref(self.h_prev, rows, at);
        let (c0, c1) = split_ref(self.h_new, rows, at);
        let (d0, d1) = split_ref(self.saved, rows, at);
        let (e0, e1) = split_ref(self.c_prev, rows, at);
        let (f0, f1) = split_ref(self.c_new, rows, at);
        let (g0, g1) = split_ref(self.dc_in, rows, at);
        let (h0, h1) = split_mut(self.dh, rows, at);
        let (i0, i1) = split_mut(self.gsum, rows, at);
        let (j0, j1) = split_mut(self.dx, rows, at);
        let (k0, k1) = split_mut(self.dhp, rows, at);
        let (l0, l1) = split_mut(self.direct, rows, at);
        let (m0, m1) = split_mut(self.dc_out, rows, at);
        (
            BackwardBlock {
                g_y: a0,
                h_prev: b0,
                h_new: c0,
                saved: d0,
                c_prev: e0,
                c_new: f0,
                dc_in: g0,
                dh: h0,
                gsum: i0,
                dx: j0,
                dhp: k0,
                direct: l0,
                dc_out: m0,
            },
            BackwardBlock {
                g_y: a1,
                h_prev: b1,
                h_new: c1,
                saved: d1,
                c_prev: e1,
                c_new: f1,
                dc_in: g1,
                dh: h1,
                gsum: i1,
                dx: j1,
                dhp: k1,
                direct: l1,
                dc_out: m1,
            },
        )
    }

    fn run(self, kind: CellKind, hid: usize, w: &[T]) {
        let gh = kind.gates() * hid;
        let rows = self.dh.len() / hid;
        for ((a, &gy), &d) in self.gsum.iter_mut().zip(self.g_y).zip(self.dh.iter()) {
            *a = gy + d;
        }
        let gsum = &*self.gsum;
        // the gate loops compiled for AVX2 where the CPU has it (same results)
        with_avx2!(match kind {
            CellKind::Rnn => rnn_backward_row(self.h_new, gsum, self.dx),
            CellKind::Gru => {
                for bi in 0..rows {
                    let (r3, r1) = (bi * gh..(bi + 1) * gh, bi * hid..(bi + 1) * hid);
                    gru_backward_row(
                        hid,
                        &self.saved[bi * 4 * hid..(bi + 1) * 4 * hid],
                        &self.h_prev[r1.clone()],
                        &gsum[r1.clone()],
                        &mut self.dx[r3.clone()],
                        &mut self.dhp[r3],
                        &mut self.direct[r1],
                    );
                }
            }
            CellKind::Lstm => {
                for bi in 0..rows {
                    let (r4, r1) = (bi * gh..(bi + 1) * gh, bi * hid..(bi + 1) * hid);
                    lstm_backward_row(
                        hid,
                        &self.saved[r4.clone()],
                        &self.c_prev[r1.clone()],
                        &self.c_new[r1.clone()],
                        &gsum[r1.clone()],
                        &self.dc_in[r1.clone()],
                        &mut self.dx[r4],
                        &mut self.dc_out[r1],
                    );
                }
            }
        });
        // ∂h_{t−1} = ∂hp·W (+ the GRU's direct path)
        let ghp = if kind == CellKind::Gru {
            &*self.dhp
        } else {
            &*self.dx
        };
        let (lhs, rhs) = ((ghp, MatLayout::Normal), (w, MatLayout::Normal));
        matmul_into(self.dh, rows, hid, gh, lhs, rhs, false);
        if kind == CellKind::Gru {
            self.dh
                .iter_mut()
                .zip(self.direct.iter())
                .for_each(|(a, &d)| *a += d);
        }
    }
}

// ---------------------------------------------------------------------------------------
// A whole window of one layer as one recorded node.
//   inputs [xp, h0, (c0,) W_hh, b_hh];  xp: [T·B, G·H] time-major (rows t·B .. (t+1)·B
//   are step t);  output: every step's h, [T·B, H], and for an LSTM the final c appended
//   as B more rows, [(T+1)·B, H].
// ---------------------------------------------------------------------------------------

/// A recurrent layer over a window. The forward pass runs the step rules above with one
/// hidden product per step into a reused buffer; the reverse sweep visits each step once
/// (one product `∂hp·W` per step) and forms `∂W_hh` as one product over the whole window
/// (`∂HPᵀ · H_prev`, inner size `T·B`) instead of one `[G·H, H]` product per step.
struct SequenceOp<T: Element> {
    kind: CellKind,
    bsz: usize,
    /// GRU: `[r, z, n, hp_n]` per row, `[T·B, 4H]`; LSTM: the gates `[T·B, 4H]`.
    saved: Vec<T>,
    /// LSTM: every step's cell state, `[T·B, H]`.
    cells: Vec<T>,
}

impl<T: Element> SequenceOp<T> {
    /// `(T, H)`.
    fn dims(&self, ins: &[&Tensor<T>]) -> (usize, usize) {
        (ins[0].shape()[0] / self.bsz, ins[1].shape()[1])
    }

    /// The window as its steps' compositions, every `h` (and the last `c`) stacked.
    fn compose<'t>(&self, ins: &[Var<'t, T>]) -> Result<Var<'t, T>> {
        let (steps, hid) = (ins[0].shape()[0] / self.bsz, ins[1].shape()[1]);
        let (w, b) = (ins[ins.len() - 2], ins[ins.len() - 1]);
        let (mut h, mut c) = (ins[1], ins[2]); // `c` is read by an LSTM only
        let mut outs = Vec::with_capacity(steps + 1);
        for s in 0..steps {
            let xp = ins[0].narrow(0, s * self.bsz, self.bsz)?;
            h = match self.kind {
                CellKind::Rnn => rnn_composed(&[xp, h, w, b])?,
                CellKind::Gru => gru_composed(&[xp, h, w, b])?,
                CellKind::Lstm => {
                    let y = lstm_composed(&[xp, h, c, w, b])?;
                    c = y.narrow(1, hid, hid)?;
                    y.narrow(1, 0, hid)?
                }
            };
            outs.push(h);
        }
        if self.kind == CellKind::Lstm {
            outs.push(c);
        }
        Var::concat(&outs, 0)
    }
}

impl<T: Element> CustomOp<T> for SequenceOp<T> {
    fn name(&self) -> &str {
        match self.kind {
            CellKind::Rnn => "rnn_sequence",
            CellKind::Gru => "gru_sequence",
            CellKind::Lstm => "lstm_sequence",
        }
    }

    /// The steps' compositions one after another, every `h` (and the last `c`) stacked.
    fn composed<'t>(&self, ins: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        Some(self.compose(ins))
    }

    /// Step by step, the step ops' forward rules with the tangent of the previous state.
    fn jvp(
        &self,
        ins: &[&Tensor<T>],
        out: &Tensor<T>,
        t: &[Option<&Tensor<T>>],
    ) -> Result<Tensor<T>> {
        let (steps, hid) = self.dims(ins);
        let (bsz, lstm) = (self.bsz, self.kind == CellKind::Lstm);
        let gh = self.kind.gates() * hid;
        let (w, b) = (ins[ins.len() - 2], ins[ins.len() - 1]);
        let (tw, tb) = (t[t.len() - 2], t[t.len() - 1]);
        let rows = |v: &[T], t: usize, width: usize| -> Result<Tensor<T>> {
            Tensor::from_vec(
                v[t * bsz * width..(t + 1) * bsz * width].to_vec(),
                &[bsz, width],
            )
        };
        let mut dout = vec![T::zero(); out.len()];
        let mut h = ins[1].clone();
        let mut dh: Option<Tensor<T>> = t[1].cloned();
        let mut c = if lstm { Some(ins[2].clone()) } else { None };
        let mut dc: Option<Tensor<T>> = if lstm { t[2].cloned() } else { None };
        for s in 0..steps {
            let xp = rows(ins[0].data(), s, gh)?;
            let dxp = t[0].map(|d| rows(d.data(), s, gh)).transpose()?;
            let h_new = rows(out.data(), s, hid)?;
            let y = match self.kind {
                CellKind::Rnn => {
                    let ins = [&xp, &h, w, b];
                    RnnStep.jvp(&ins, &h_new, &[dxp.as_ref(), dh.as_ref(), tw, tb])?
                }
                CellKind::Gru => {
                    let op = GruStep {
                        saved: rows(&self.saved, s, 4 * hid)?,
                    };
                    op.jvp(
                        &[&xp, &h, w, b],
                        &h_new,
                        &[dxp.as_ref(), dh.as_ref(), tw, tb],
                    )?
                }
                CellKind::Lstm => {
                    let c_new = rows(&self.cells, s, hid)?;
                    let op = LstmStep {
                        gates: rows(&self.saved, s, 4 * hid)?,
                    };
                    let both = Tensor::concat(&[h_new.clone(), c_new.clone()], 1)?;
                    let cp = c.take().expect("an LSTM has a cell state");
                    let ins = [&xp, &h, &cp, w, b];
                    let y = op.jvp(
                        &ins,
                        &both,
                        &[dxp.as_ref(), dh.as_ref(), dc.as_ref(), tw, tb],
                    )?;
                    c = Some(c_new);
                    dc = Some(y.narrow(1, hid, hid)?);
                    y.narrow(1, 0, hid)?
                }
            };
            dout[s * bsz * hid..(s + 1) * bsz * hid].copy_from_slice(y.data());
            dh = Some(y);
            h = h_new;
        }
        if let (true, Some(dc)) = (lstm, dc) {
            dout[steps * bsz * hid..].copy_from_slice(dc.data());
        }
        Tensor::from_vec(dout, out.shape())
    }

    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let (steps, hid) = self.dims(ins);
        let (bsz, kind) = (self.bsz, self.kind);
        let (lstm, gru) = (kind == CellKind::Lstm, kind == CellKind::Gru);
        let gh = kind.gates() * hid;
        let w = ins[ins.len() - 2];
        let (h0, y, g) = (ins[1].data(), out.data(), g.data());
        let (bh, bg) = (bsz * hid, bsz * gh);
        // ∂xp of every step; for the GRU also ∂hp (they differ in the n block)
        let mut dhp = if gru {
            vec![T::zero(); steps * bg]
        } else {
            Vec::new()
        };
        let mut dh = vec![T::zero(); bh]; // ∂L/∂h_t from the steps after t
        let mut gsum = vec![T::zero(); bh];
        let mut direct = vec![T::zero(); bh];
        let mut dc = if lstm {
            g[steps * bh..].to_vec()
        } else {
            Vec::new()
        };
        let mut dc_prev = vec![T::zero(); if lstm { bh } else { 0 }];
        let (parallel, sw) = (
            parallel_steps(bsz, gh, hid),
            if gru || lstm { 4 * hid } else { 0 },
        );
        let dxp = Tensor::build(&[steps * bsz, gh], |dxp| {
            for s in (0..steps).rev() {
                let h_prev = if s == 0 { h0 } else { &y[(s - 1) * bh..s * bh] };
                let (c_prev, c_new): (&[T], &[T]) = if lstm {
                    let c_prev = if s == 0 {
                        ins[2].data()
                    } else {
                        &self.cells[(s - 1) * bh..s * bh]
                    };
                    (c_prev, &self.cells[s * bh..(s + 1) * bh])
                } else {
                    (&[], &[])
                };
                let block = BackwardBlock {
                    g_y: &g[s * bh..(s + 1) * bh],
                    h_prev,
                    h_new: &y[s * bh..(s + 1) * bh],
                    saved: &self.saved[s * bsz * sw..(s + 1) * bsz * sw],
                    c_prev,
                    c_new,
                    dc_in: &dc,
                    dh: &mut dh,
                    gsum: &mut gsum,
                    dx: &mut dxp[s * bg..(s + 1) * bg],
                    dhp: if gru {
                        &mut dhp[s * bg..(s + 1) * bg]
                    } else {
                        &mut []
                    },
                    direct: &mut direct,
                    dc_out: &mut dc_prev,
                };
                in_halves(block, bsz, parallel, BackwardBlock::split, |b| {
                    b.run(kind, hid, w.data())
                });
                if lstm {
                    std::mem::swap(&mut dc, &mut dc_prev);
                }
            }
        });
        // ∂W_hh = Σ_t ∂hp_tᵀ · h_{t−1}: one product over the window
        let all_dhp = if gru { &dhp[..] } else { dxp.data() };
        let mut h_prev = Vec::with_capacity(steps * bh);
        h_prev.extend_from_slice(h0);
        h_prev.extend_from_slice(&y[..(steps - 1) * bh]);
        let dw = Tensor::build(&[gh, hid], |d| {
            let lhs = (all_dhp, MatLayout::Transposed);
            matmul_into(
                d,
                gh,
                hid,
                steps * bsz,
                lhs,
                (&h_prev, MatLayout::Normal),
                false,
            );
        });
        let db = Tensor::build(&[gh], |d| {
            for row in all_dhp.chunks_exact(gh) {
                d.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
            }
        });
        let mut grads = vec![dxp, Tensor::from_vec(dh, &[bsz, hid])?];
        if lstm {
            grads.push(Tensor::from_vec(dc, &[bsz, hid])?);
        }
        grads.extend([dw, db]);
        Ok(grads)
    }
}

/// A recurrent layer over a whole window as one recorded node: `xp: [T·B, G·H]` is the
/// input projection `x·W_ihᵀ + b_ih` of every step, time-major (rows `t·B .. (t+1)·B` are
/// step `t`); `h0` (and `c0` for an LSTM, `None` otherwise) is the state before the
/// window, `[B, H]`. Returns every step's `h`, `[T·B, H]`, with an LSTM's final `c`
/// appended as `B` more rows (`[(T+1)·B, H]`). The same rules as [`rnn_cell`],
/// [`gru_cell`] and [`lstm_cell`], without a node, a gradient of `W_hh` or an allocation
/// per step.
pub fn recurrent_sequence<'t, T: Element>(
    kind: CellKind,
    xp: Var<'t, T>,
    h0: Var<'t, T>,
    c0: Option<Var<'t, T>>,
    w_hh: Var<'t, T>,
    b_hh: Var<'t, T>,
) -> Result<Var<'t, T>> {
    let op = "recurrent_sequence";
    let lstm = kind == CellKind::Lstm;
    if lstm != c0.is_some() {
        return Err(Error::invalid(
            op,
            "an LSTM needs a cell state c0, and only an LSTM takes one",
        ));
    }
    let (xv, hv, wv, bv) = (xp.value(), h0.value(), w_hh.value(), b_hh.value());
    let cv = c0.map(|c| c.value());
    let mut states = vec![hv.shape()];
    if let Some(c) = &cv {
        states.push(c.shape());
    }
    let hs = hv.shape();
    let bsz = if hs.len() == 2 { hs[0] } else { 0 };
    let xs = xv.shape();
    if bsz == 0 || xs.len() != 2 || xs[0] == 0 || !xs[0].is_multiple_of(bsz) {
        return Err(Error::invalid(
            op,
            format!("xp has shape {xs:?} and h0 {hs:?}: expected [T·B, G·H] with T ≥ 1 and [B, H]"),
        ));
    }
    let steps = xs[0] / bsz;
    let (_, hid) = check_step(
        op,
        kind.gates(),
        &[bsz, xs[1]],
        &states,
        wv.shape(),
        bv.shape(),
    )?;
    let gh = kind.gates() * hid;
    let (bh, bg) = (bsz * hid, bsz * gh);
    let rows = steps * bsz + if lstm { bsz } else { 0 };
    let mut saved = vec![
        T::zero();
        if kind == CellKind::Rnn {
            0
        } else {
            steps * bsz * 4 * hid
        }
    ];
    let mut cells = vec![T::zero(); if lstm { steps * bh } else { 0 }];
    let mut hp = vec![T::zero(); bg];
    // W_hhᵀ as a row-major [H, G·H] copy, once per window: a product with the weight's
    // columns contiguous needs no packing by the GEMM at every step
    let mut wt = vec![T::zero(); hid * gh];
    for (k, row) in wt.chunks_exact_mut(gh).enumerate() {
        for (r, v) in row.iter_mut().enumerate() {
            *v = wv.data()[r * hid + k];
        }
    }
    let parallel = parallel_steps(bsz, gh, hid);
    let sw = if kind == CellKind::Rnn { 0 } else { 4 * hid };
    let y = Tensor::build(&[rows, hid], |out| {
        for s in 0..steps {
            let (done, rest) = out.split_at_mut(s * bh);
            let h_prev = if s == 0 {
                hv.data()
            } else {
                &done[(s - 1) * bh..]
            };
            let (c_prev, c_new): (&[T], &mut [T]) = match &cv {
                Some(c0) => {
                    let (cdone, crest) = cells.split_at_mut(s * bh);
                    let c_prev = if s == 0 {
                        c0.data()
                    } else {
                        &cdone[(s - 1) * bh..]
                    };
                    (c_prev, &mut crest[..bh])
                }
                None => (&[], &mut []),
            };
            let block = ForwardBlock {
                x: &xv.data()[s * bg..(s + 1) * bg],
                h_prev,
                c_prev,
                hp: &mut hp,
                h_new: &mut rest[..bh],
                saved: &mut saved[s * bsz * sw..(s + 1) * bsz * sw],
                c_new,
            };
            in_halves(block, bsz, parallel, ForwardBlock::split, |b| {
                b.run(kind, hid, &wt, bv.data())
            });
        }
        if lstm {
            out[steps * bh..].copy_from_slice(&cells[(steps - 1) * bh..]);
        }
    });
    drop((xv, hv, wv, bv, cv));
    let mut inputs = vec![xp, h0];
    inputs.extend(c0);
    inputs.extend([w_hh, b_hh]);
    Var::custom(
        &inputs,
        Arc::new(SequenceOp {
            kind,
            bsz,
            saved,
            cells,
        }),
        y,
    )
}

// ---------------------------------------------------------------------------------------
// Gradient-check cases (the built-in suite of `chainrule gradcheck` lists them)
// ---------------------------------------------------------------------------------------

/// Random inputs of one cell step: `xp: [B, G·H]`, the states `[B, H]`, `W_hh` scaled
/// by 1/√H so the gates stay away from saturation, and `b_hh`.
fn step_inputs(kind: CellKind, bsz: usize, hid: usize, rng: &mut ChaCha8Rng) -> Vec<Tensor<f64>> {
    use crate::autodiff::suite::{Domain, sample};
    let gh = kind.gates() * hid;
    let mut v = vec![
        sample(&[bsz, gh], Domain::AwayFromZero, rng),
        sample(&[bsz, hid], Domain::AwayFromZero, rng),
    ];
    if kind == CellKind::Lstm {
        v.push(sample(&[bsz, hid], Domain::AwayFromZero, rng));
    }
    v.push(sample(&[gh, hid], Domain::AwayFromZero, rng).mul_scalar(1.0 / (hid as f64).sqrt()));
    v.push(sample(&[gh], Domain::AwayFromZero, rng).mul_scalar(0.5));
    v
}

/// The function of one step of `kind` over [`step_inputs`].
fn step_fn(kind: CellKind) -> crate::autodiff::CaseFn {
    match kind {
        CellKind::Rnn => Box::new(|_, v| rnn_cell(v[0], v[1], v[2], v[3])),
        CellKind::Gru => Box::new(|_, v| gru_cell(v[0], v[1], v[2], v[3])),
        CellKind::Lstm => Box::new(|_, v| lstm_cell(v[0], v[1], v[2], v[3], v[4])),
    }
}

/// Cases of the built-in gradient-check suite: each cell step on a small case (checked
/// element by element) and a larger one (checked along a random direction).
pub(crate) fn suite_cases(
    rng: &mut ChaCha8Rng,
) -> Vec<(String, Vec<Tensor<f64>>, crate::autodiff::CaseFn)> {
    let mut out = Vec::new();
    for (kind, name) in [
        (CellKind::Rnn, "rnn_cell"),
        (CellKind::Gru, "gru_cell"),
        (CellKind::Lstm, "lstm_cell"),
    ] {
        for (bsz, hid) in [(3, 4), (5, 16)] {
            out.push((
                name.to_string(),
                step_inputs(kind, bsz, hid, rng),
                step_fn(kind),
            ));
        }
        // the whole-window op over 3 steps (small) and 6 steps (larger)
        for (steps, bsz, hid) in [(3, 2, 3), (6, 3, 8)] {
            let mut inputs = step_inputs(kind, bsz, hid, rng);
            inputs[0] = crate::autodiff::suite::sample(
                &[steps * bsz, kind.gates() * hid],
                crate::autodiff::suite::Domain::AwayFromZero,
                rng,
            );
            let f: crate::autodiff::CaseFn = match kind {
                CellKind::Lstm => Box::new(move |_, v| {
                    recurrent_sequence(kind, v[0], v[1], Some(v[2]), v[3], v[4])
                }),
                _ => Box::new(move |_, v| recurrent_sequence(kind, v[0], v[1], None, v[2], v[3])),
            };
            out.push((format!("{}_sequence", &name[..name.len() - 5]), inputs, f));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::ops::testing::check;
    use rand::SeedableRng;

    #[test]
    fn each_cell_step_and_sequence_passes_gradcheck() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let cases = suite_cases(&mut rng);
        assert_eq!(cases.len(), 12);
        for (name, inputs, f) in &cases {
            check(name, inputs, f);
        }
    }

    /// The window op against a chain of step ops (an independent path), at sizes where
    /// each step splits across two threads: values and every gradient.
    #[test]
    fn a_window_equals_its_steps_also_when_split_across_threads() {
        use crate::autodiff::Tape;
        for (kind, hid) in [
            (CellKind::Rnn, 256),
            (CellKind::Gru, 150),
            (CellKind::Lstm, 128),
        ] {
            let (bsz, steps) = (16, 3);
            assert!(bsz * kind.gates() * hid * hid >= PARALLEL_STEP_WORK);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut inputs = step_inputs(kind, bsz, hid, &mut rng);
            inputs[0] = crate::autodiff::suite::sample(
                &[steps * bsz, kind.gates() * hid],
                crate::autodiff::suite::Domain::AwayFromZero,
                &mut rng,
            );
            let lstm = kind == CellKind::Lstm;
            let run = |window: bool| {
                let tape = Tape::<f64>::new();
                let v: Vec<_> = inputs.iter().map(|t| tape.var(t.clone())).collect();
                let (w, b) = (v[v.len() - 2], v[v.len() - 1]);
                let out = if window {
                    recurrent_sequence(kind, v[0], v[1], lstm.then(|| v[2]), w, b).unwrap()
                } else {
                    let (mut h, mut c, mut outs) = (v[1], v.get(2).copied(), Vec::new());
                    for t in 0..steps {
                        let xt = v[0].narrow(0, t * bsz, bsz).unwrap();
                        h = match kind {
                            CellKind::Rnn => rnn_cell(xt, h, w, b).unwrap(),
                            CellKind::Gru => gru_cell(xt, h, w, b).unwrap(),
                            CellKind::Lstm => {
                                let hc = lstm_cell(xt, h, c.unwrap(), w, b).unwrap();
                                c = Some(hc.narrow(1, hid, hid).unwrap());
                                hc.narrow(1, 0, hid).unwrap()
                            }
                        };
                        outs.push(h);
                    }
                    if lstm {
                        outs.push(c.unwrap());
                    }
                    crate::autodiff::Var::concat(&outs, 0).unwrap()
                };
                // a loss that weighs every output differently
                let weights = Tensor::build(&out.shape(), |d| {
                    for (i, v) in d.iter_mut().enumerate() {
                        *v = ((i % 7) as f64 - 3.0) * 0.1;
                    }
                });
                let loss = out.mul(tape.constant(weights)).unwrap().sum_all();
                let mut g = tape.backward(loss).unwrap();
                let mut res = vec![out.value()];
                res.extend(v.iter().map(|&x| g.take(x).unwrap().unwrap()));
                res
            };
            let (a, b) = (run(true), run(false));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                let scale = y.data().iter().fold(1e-12f64, |m, v| m.max(v.abs()));
                let err = x.max_abs_diff(y).unwrap() / scale;
                assert!(err < 1e-12, "{kind:?} #{i}: {err}");
            }
        }
    }

    /// The compositions that second order differentiates compute the kernels' values,
    /// for every cell and window in the suite.
    #[test]
    fn each_composition_computes_its_kernels_value() {
        use crate::autodiff::Tape;
        use crate::autodiff::ops::Op;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (name, inputs, f) in suite_cases(&mut rng) {
            let tape = Tape::<f64>::new();
            let v: Vec<_> = inputs.iter().map(|t| tape.var(t.clone())).collect();
            let y = f(&tape, &v).unwrap();
            let op = tape.with_nodes(|nodes| match &nodes[y.id as usize].op {
                Op::Custom(c) => c.clone(),
                _ => panic!("{name} is not a custom op"),
            });
            let composed = op.composed(&v).expect("a composition").unwrap();
            assert_eq!(composed.shape(), y.shape(), "{name}");
            let err = y.value().max_abs_diff(&composed.value()).unwrap();
            assert!(err <= 1e-14, "{name}: {err}");
        }
    }

    #[test]
    fn the_builtin_suite_lists_and_passes_the_cells() {
        let suite = crate::autodiff::builtin_suite(0, 1e-6, &[]);
        for name in [
            "rnn_cell",
            "gru_cell",
            "lstm_cell",
            "rnn_sequence",
            "gru_sequence",
            "lstm_sequence",
        ] {
            let r = suite.ops.iter().find(|r| r.op == name).expect(name);
            assert_eq!(r.cases, 2, "{name}");
            assert!(r.passed && r.failure.is_none(), "{name}: {r:?}");
            assert!(r.worst_forward_reverse_rel_err <= 1e-10, "{name}: {r:?}");
        }
    }
}
