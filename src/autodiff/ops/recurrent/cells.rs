//! One time step of an RNN, GRU or LSTM cell as one recorded node (`rnn_cell`,
//! `gru_cell`, `lstm_cell`), with its reverse and forward rules and its composition.

use super::*;
use crate::autodiff::Tangents;

// ---------------------------------------------------------------------------------------
// RNN (tanh): h' = tanh(xp + h·Wᵀ + b).     inputs [xp, h, W_hh, b_hh]
// ---------------------------------------------------------------------------------------

/// One Elman RNN step; the output `h'` is all its rules need.
pub(super) struct RnnStep;

impl<T: Element> CustomOp<T> for RnnStep {
    fn name(&self) -> &str {
        "rnn_cell"
    }

    fn composed<'t>(&self, ins: &[Var<'t, T>]) -> Option<Result<Var<'t, T>>> {
        Some(rnn_composed(ins))
    }

    /// `ḣ' = (1 − h'²) ⊙ (ẋp + ṫhp)`
    fn jvp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
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
pub(super) struct GruStep<T: Element> {
    pub(super) saved: Tensor<T>,
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
    fn jvp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
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
pub(super) struct LstmStep<T: Element> {
    pub(super) gates: Tensor<T>,
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
    fn jvp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
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
