//! One time step of a recurrent cell as one recorded node: Elman RNN (tanh), GRU and
//! LSTM with PyTorch's gate orders. Each step op takes the step's slice of the input
//! projection, the previous state, `W_hh` and `b_hh`, computes `h·W_hhᵀ + b_hh` itself,
//! and carries its own reverse rule (VJP) and forward rule (JVP), written side by side
//! below. The layers that run them over a window live in `nn::recurrent`.

use super::CustomOp;
use crate::autodiff::Var;
use crate::error::{Error, Result};
use crate::tensor::{Element, MatLayout, Tensor, matmul_into};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// Shared pieces of the step rules: the hidden projection hp = h·Wᵀ + b and its two rules.
// ---------------------------------------------------------------------------------------

#[inline(always)]
fn sigmoid<T: Element>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// `hp = h·Wᵀ + b`: `h: [B, H]`, `W: [GH, H]`, `b: [GH]`, result `[B, GH]` row-major.
fn hidden_proj<T: Element>(h: &Tensor<T>, w: &Tensor<T>, b: &Tensor<T>) -> Vec<T> {
    let (bsz, hid, gh) = (h.shape()[0], h.shape()[1], w.shape()[0]);
    let mut out = vec![T::zero(); bsz * gh];
    for row in out.chunks_exact_mut(gh) {
        row.copy_from_slice(b.data());
    }
    matmul_into(
        &mut out,
        bsz,
        gh,
        hid,
        (h.data(), MatLayout::Normal),
        (w.data(), MatLayout::Transposed),
        true,
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
    if w.len() != 2 || w[0] != gates * w[1] {
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
// RNN (tanh): h' = tanh(xp + h·Wᵀ + b).     inputs [xp, h, W_hh, b_hh]
// ---------------------------------------------------------------------------------------

/// One Elman RNN step; the output `h'` is all its rules need.
struct RnnStep;

impl<T: Element> CustomOp<T> for RnnStep {
    fn name(&self) -> &str {
        "rnn_cell"
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
            for ((o, &y), &a) in o.iter_mut().zip(out.data()).zip(&da) {
                *o = (T::one() - y * y) * a;
            }
        }))
    }

    /// `ḡa = g ⊙ (1 − h'²)`; `∂xp = ḡa`, then the hidden projection's rule.
    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let ga = Tensor::build(out.shape(), |o| {
            for ((o, &y), &g) in o.iter_mut().zip(out.data()).zip(g.data()) {
                *o = (T::one() - y * y) * g;
            }
        });
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
    let y = Tensor::build(&[bsz, hid], |o| {
        for ((o, &a), &x) in o.iter_mut().zip(&hp).zip(xv.data()) {
            *o = (a + x).tanh_();
        }
    });
    Ok(Var::custom(&[xp, h, w_hh, b_hh], Arc::new(RnnStep), y))
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

    /// `ḡn = g(1−z)(1−n²)`, `ḡz = g(h−n) z(1−z)`, `ḡr = ḡn hp_n r(1−r)`;
    /// `∂xp = [ḡr, ḡz, ḡn]`, `∂hp = [ḡr, ḡz, ḡn ⊙ r]`, `∂h = g z + ∂hp·W`
    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let (h, hid) = (ins[1], out.shape()[1]);
        let bsz = out.shape()[0];
        let s = self.saved.data();
        let mut ghp = vec![T::zero(); bsz * 3 * hid];
        let mut direct = vec![T::zero(); bsz * hid];
        let gx = Tensor::build(&[bsz, 3 * hid], |gx| {
            for bi in 0..bsz {
                let s = &s[bi * 4 * hid..(bi + 1) * 4 * hid];
                let gx = &mut gx[bi * 3 * hid..(bi + 1) * 3 * hid];
                let ghp = &mut ghp[bi * 3 * hid..(bi + 1) * 3 * hid];
                for j in 0..hid {
                    let k = bi * hid + j;
                    let (r, z, n, hn) = (s[j], s[hid + j], s[2 * hid + j], s[3 * hid + j]);
                    let g = g.data()[k];
                    let gn = g * (T::one() - z) * (T::one() - n * n);
                    let gz = g * (h.data()[k] - n) * z * (T::one() - z);
                    let gr = gn * hn * r * (T::one() - r);
                    direct[k] = g * z;
                    (gx[j], gx[hid + j], gx[2 * hid + j]) = (gr, gz, gn);
                    (ghp[j], ghp[hid + j], ghp[2 * hid + j]) = (gr, gz, gn * r);
                }
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
            let x = &xv.data()[bi * 3 * hid..(bi + 1) * 3 * hid];
            let hp = &hp[bi * 3 * hid..(bi + 1) * 3 * hid];
            let s = &mut saved[bi * 4 * hid..(bi + 1) * 4 * hid];
            for j in 0..hid {
                let r = sigmoid(x[j] + hp[j]);
                let z = sigmoid(x[hid + j] + hp[hid + j]);
                let hn = hp[2 * hid + j];
                let n = (x[2 * hid + j] + r * hn).tanh_();
                let k = bi * hid + j;
                o[k] = (T::one() - z) * n + z * hv.data()[k];
                (s[j], s[hid + j], s[2 * hid + j], s[3 * hid + j]) = (r, z, n, hn);
            }
        }
    });
    let saved = Tensor::from_vec(saved, &[bsz, 4 * hid])?;
    Ok(Var::custom(
        &[xp, h, w_hh, b_hh],
        Arc::new(GruStep { saved }),
        y,
    ))
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

    /// `ḡc = g_c + g_h o (1 − tanh² c')`; `∂a = [ḡc g i(1−i), ḡc c f(1−f), ḡc i (1−g²),
    /// g_h tanh c' o(1−o)]`; `∂xp = ∂a`, `∂c = ḡc f`, then the hidden projection's rule.
    fn vjp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, g: &Tensor<T>) -> Result<Vec<Tensor<T>>> {
        let (c, bsz, hid) = (ins[2], out.shape()[0], out.shape()[1] / 2);
        let gs = self.gates.data();
        let mut dc = vec![T::zero(); bsz * hid];
        let da = Tensor::build(&[bsz, 4 * hid], |da| {
            for bi in 0..bsz {
                let s = &gs[bi * 4 * hid..(bi + 1) * 4 * hid];
                let da = &mut da[bi * 4 * hid..(bi + 1) * 4 * hid];
                let (grow, yrow) = (&g.data()[bi * 2 * hid..], &out.data()[bi * 2 * hid..]);
                for j in 0..hid {
                    let k = bi * hid + j;
                    let (i, f, gg, og) = (s[j], s[hid + j], s[2 * hid + j], s[3 * hid + j]);
                    let (gh, gc) = (grow[j], grow[hid + j]);
                    let tc = yrow[hid + j].tanh_();
                    let gct = gc + gh * og * (T::one() - tc * tc);
                    da[j] = gct * gg * i * (T::one() - i);
                    da[hid + j] = gct * c.data()[k] * f * (T::one() - f);
                    da[2 * hid + j] = gct * i * (T::one() - gg * gg);
                    da[3 * hid + j] = gh * tc * og * (T::one() - og);
                    dc[k] = gct * f;
                }
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
            let a = &mut a[bi * 4 * hid..(bi + 1) * 4 * hid];
            let orow = &mut o[bi * 2 * hid..(bi + 1) * 2 * hid];
            for j in 0..hid {
                let i = sigmoid(a[j]);
                let f = sigmoid(a[hid + j]);
                let g = a[2 * hid + j].tanh_();
                let og = sigmoid(a[3 * hid + j]);
                let cn = f * cv.data()[bi * hid + j] + i * g;
                orow[j] = og * cn.tanh_();
                orow[hid + j] = cn;
                (a[j], a[hid + j], a[2 * hid + j], a[3 * hid + j]) = (i, f, g, og);
            }
        }
    });
    let gates = Tensor::from_vec(a, &[bsz, 4 * hid])?;
    Ok(Var::custom(
        &[xp, h, c, w_hh, b_hh],
        Arc::new(LstmStep { gates }),
        y,
    ))
}

// ---------------------------------------------------------------------------------------
// The cells
// ---------------------------------------------------------------------------------------

/// Which recurrent cell a [`Recurrent`] stack runs.
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
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::ops::testing::check;
    use rand::SeedableRng;

    #[test]
    fn each_cell_step_passes_gradcheck() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let cases = suite_cases(&mut rng);
        assert_eq!(cases.len(), 6);
        for (name, inputs, f) in &cases {
            check(name, inputs, f);
        }
    }

    #[test]
    fn the_builtin_suite_lists_and_passes_the_cells() {
        let suite = crate::autodiff::builtin_suite(0, 1e-6, &[]);
        for name in ["rnn_cell", "gru_cell", "lstm_cell"] {
            let r = suite.ops.iter().find(|r| r.op == name).expect(name);
            assert_eq!(r.cases, 2, "{name}");
            assert!(r.passed && r.failure.is_none(), "{name}: {r:?}");
            assert!(r.worst_forward_reverse_rel_err <= 1e-10, "{name}: {r:?}");
        }
    }
}
