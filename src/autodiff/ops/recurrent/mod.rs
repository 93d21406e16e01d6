//! One time step of a recurrent cell as one recorded node: Elman RNN (tanh), GRU and
//! LSTM with PyTorch's gate orders. Each step op takes the step's slice of the input
//! projection, the previous state, `W_hh` and `b_hh`, computes `h·W_hhᵀ + b_hh` itself,
//! and carries its own reverse rule (VJP) and forward rule (JVP), written side by side
//! below, plus its composition in built-in ops, which second order differentiates. The
//! layers that run them over a window live in `nn::recurrent`.

use super::CustomOp;
use crate::autodiff::Var;
use crate::error::{Error, Result};
use crate::tensor::{Element, MatLayout, PackedRhs, Tensor, matmul_into, with_avx512};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

mod cells;
mod window;

use cells::*;
pub use cells::{gru_cell, lstm_cell, rnn_cell};
pub use window::recurrent_sequence;
use window::*;

// ---------------------------------------------------------------------------------------
// Shared pieces of the step rules: the hidden projection hp = h·Wᵀ + b and its two rules.
// ---------------------------------------------------------------------------------------

/// The gates' `σ(x) = (1 + tanh(x/2)) / 2`: branch-free over the vectorisable `tanh_`, so
/// the gate loops below vectorise (an `exp` per element was a quarter of an LSTM's
/// forward pass). The compositions that second order differentiates compute this very
/// function with the same roundings ([`gate_sigmoid`]), not the table's `sigmoid`, so
/// H·v differentiates the function that is trained.
#[inline(always)]
pub(super) fn sigmoid<T: Element>(x: T) -> T {
    let half = T::of(0.5);
    half + half * (half * x).tanh_()
}

/// [`sigmoid`] in built-in ops, bit for bit: `0.5·x`, `tanh`, `0.5·t`, `+ 0.5`.
pub(super) fn gate_sigmoid<T: Element>(v: Var<'_, T>) -> Var<'_, T> {
    v.mul_scalar(0.5).tanh().mul_scalar(0.5).add_scalar(0.5)
}

/// `hp = h·Wᵀ + b`: `h: [B, H]`, `W: [GH, H]`, `b: [GH]`, result `[B, GH]` row-major.
pub(super) fn hidden_proj<T: Element>(h: &Tensor<T>, w: &Tensor<T>, b: &Tensor<T>) -> Vec<T> {
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
pub(super) fn hidden_proj_jvp<T: Element>(
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
pub(super) fn hidden_proj_vjp<T: Element>(
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
pub(super) fn check_step(
    op: &'static str,
    gates: usize,
    xp: &[usize],
    states: &[&[usize]],
    w: &[usize],
    b: &[usize],
) -> Result<(usize, usize)> {
    let bad = |msg: String| Err(Error::invalid(op, msg));
    if w.len() != 2 || w[1].checked_mul(gates) != Some(w[0]) || w[1] == 0 {
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
pub(super) fn hidden_proj_composed<'t, T: Element>(
    h: Var<'t, T>,
    w: Var<'t, T>,
    b: Var<'t, T>,
) -> Result<Var<'t, T>> {
    h.matmul(w.transpose(0, 1)?)?.add(b)
}

/// Gate block `k` (of width `hid`) of a `[B, G·H]` variable.
pub(super) fn block<'t, T: Element>(v: Var<'t, T>, k: usize, hid: usize) -> Result<Var<'t, T>> {
    v.narrow(1, k * hid, hid)
}

/// The RNN step `[xp, h, W, b] ↦ tanh(xp + h·Wᵀ + b)` in built-in ops.
pub(super) fn rnn_composed<'t, T: Element>(v: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    Ok(v[0].add(hidden_proj_composed(v[1], v[2], v[3])?)?.tanh())
}

/// The GRU step over `[xp, h, W, b]` in built-in ops.
pub(super) fn gru_composed<'t, T: Element>(v: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    let (xp, h, hid) = (v[0], v[1], v[1].shape()[1]);
    let hp = hidden_proj_composed(h, v[2], v[3])?;
    let gate = |k| -> Result<Var<'t, T>> { block(xp, k, hid)?.add(block(hp, k, hid)?) };
    let (r, z) = (gate_sigmoid(gate(0)?), gate_sigmoid(gate(1)?));
    let n = block(xp, 2, hid)?.add(r.mul(block(hp, 2, hid)?)?)?.tanh();
    // (1 − z) ⊙ n + z ⊙ h
    n.add(z.mul(h.sub(n)?)?)
}

/// The LSTM step over `[xp, h, c, W, b]` in built-in ops, `[h', c']` side by side.
pub(super) fn lstm_composed<'t, T: Element>(v: &[Var<'t, T>]) -> Result<Var<'t, T>> {
    let hid = v[1].shape()[1];
    let a = v[0].add(hidden_proj_composed(v[1], v[3], v[4])?)?;
    let (i, f) = (
        gate_sigmoid(block(a, 0, hid)?),
        gate_sigmoid(block(a, 1, hid)?),
    );
    let (g, o) = (block(a, 2, hid)?.tanh(), gate_sigmoid(block(a, 3, hid)?));
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
pub(super) fn rnn_forward_row<T: Element>(xp: &[T], hp: &[T], h_new: &mut [T]) {
    for ((o, &x), &a) in h_new.iter_mut().zip(xp).zip(hp) {
        *o = (x + a).tanh_();
    }
}

/// RNN reverse: `ḡa = g ⊙ (1 − h'²)` is the gradient of both `xp` and `hp`.
#[inline(always)]
pub(super) fn rnn_backward_row<T: Element>(h_new: &[T], g: &[T], ga: &mut [T]) {
    for ((o, &y), &g) in ga.iter_mut().zip(h_new).zip(g) {
        *o = (T::one() - y * y) * g;
    }
}

/// GRU forward (PyTorch's form): `r = σ(xp_r + hp_r)`, `z = σ(xp_z + hp_z)`,
/// `n = tanh(xp_n + r ⊙ hp_n)`, `h' = (1 − z) ⊙ n + z ⊙ h`; keeps `[r, z, n, hp_n]`.
#[inline(always)]
pub(super) fn gru_forward_row<T: Element>(
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
pub(super) fn gru_backward_row<T: Element>(
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
pub(super) fn lstm_forward_row<T: Element>(
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
pub(super) fn lstm_backward_row<T: Element>(
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
// Gradient-check cases (the built-in suite of `chainrule gradcheck` lists them)
// ---------------------------------------------------------------------------------------

/// Random inputs of one cell step: `xp: [B, G·H]`, the states `[B, H]`, `W_hh` scaled
/// by 1/√H so the gates stay away from saturation, and `b_hh`.
pub(super) fn step_inputs(
    kind: CellKind,
    bsz: usize,
    hid: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Tensor<f64>> {
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

/// Random inputs of a whole window of `steps` steps: [`step_inputs`] with the input
/// projection of every step, `[T·B, G·H]`.
pub(super) fn window_inputs(
    kind: CellKind,
    steps: usize,
    bsz: usize,
    hid: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Tensor<f64>> {
    use crate::autodiff::suite::{Domain, sample};
    let mut inputs = step_inputs(kind, bsz, hid, rng);
    inputs[0] = sample(
        &[steps * bsz, kind.gates() * hid],
        Domain::AwayFromZero,
        rng,
    );
    inputs
}

/// The function of one step of `kind` over [`step_inputs`].
pub(super) fn step_fn(kind: CellKind) -> crate::autodiff::CaseFn {
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
            let inputs = window_inputs(kind, steps, bsz, hid, rng);
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
    /// each step splits across two threads, over three steps and over one: values and every
    /// gradient.
    #[test]
    fn a_window_equals_its_steps_also_when_split_across_threads() {
        use crate::autodiff::Tape;
        for (kind, hid, steps) in [
            (CellKind::Rnn, 256, 3),
            (CellKind::Gru, 150, 3),
            (CellKind::Lstm, 128, 3),
            // one step: ∂W_hh from h0 alone
            (CellKind::Lstm, 128, 1),
            (CellKind::Rnn, 256, 1),
        ] {
            let bsz = 16;
            assert!(bsz * kind.gates() * hid * hid >= PARALLEL_STEP_WORK);
            let inputs = window_inputs(kind, steps, bsz, hid, &mut ChaCha8Rng::seed_from_u64(3));
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

    /// The window in f32 (its step products through the packed kernel where the CPU has
    /// AVX-512) against the window in f64 (through faer): values and every gradient, at
    /// sizes with partial panels and tiles, on one block of rows and split in two.
    #[test]
    fn a_window_in_f32_agrees_with_f64() {
        use crate::autodiff::Tape;
        fn run<T: Element>(kind: CellKind, inputs: &[Tensor<f64>]) -> Vec<Tensor<f64>> {
            let tape = Tape::<T>::new();
            let v: Vec<_> = inputs.iter().map(|t| tape.var(t.cast())).collect();
            let lstm = kind == CellKind::Lstm;
            let (w, b) = (v[v.len() - 2], v[v.len() - 1]);
            let out = recurrent_sequence(kind, v[0], v[1], lstm.then(|| v[2]), w, b).unwrap();
            let weights = Tensor::build(&out.shape(), |d| {
                for (i, x) in d.iter_mut().enumerate() {
                    *x = T::of(((i % 7) as f64 - 3.0) * 0.1);
                }
            });
            let loss = out.mul(tape.constant(weights)).unwrap().sum_all();
            let mut g = tape.backward(loss).unwrap();
            let mut res = vec![out.value().cast()];
            res.extend(v.iter().map(|&x| g.take(x).unwrap().unwrap().cast()));
            res
        }
        for kind in [CellKind::Rnn, CellKind::Gru, CellKind::Lstm] {
            for (bsz, hid, steps) in [(7, 70, 3), (16, 150, 2)] {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let inputs = window_inputs(kind, steps, bsz, hid, &mut rng);
                let (a, b) = (run::<f32>(kind, &inputs), run::<f64>(kind, &inputs));
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    let scale = y.data().iter().fold(1e-12f64, |m, v| m.max(v.abs()));
                    let err = x.max_abs_diff(y).unwrap() / scale;
                    assert!(err < 1e-4, "{kind:?} {bsz}x{hid} #{i}: {err}");
                }
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

    /// One σ: the gates' kernel and the compositions second order differentiates compute
    /// the same function, bit for bit, in both element types (the table's `sigmoid`,
    /// an exponential, differs from it in the last bits).
    #[test]
    fn the_gates_and_their_compositions_compute_one_sigmoid() {
        use crate::autodiff::Tape;
        fn check<T: Element>() {
            let xs: Vec<T> = (-400..=400).map(|i| T::of(i as f64 * 0.0731)).collect();
            let n = xs.len();
            let tape = Tape::<T>::new();
            let v = tape.var(Tensor::from_vec(xs.clone(), &[n]).unwrap());
            let composed = gate_sigmoid(v).value();
            for (x, c) in xs.iter().zip(composed.data()) {
                assert_eq!(
                    sigmoid(*x).to_f64().unwrap().to_bits(),
                    c.to_f64().unwrap().to_bits(),
                    "{} at {x}",
                    T::NAME
                );
            }
        }
        check::<f32>();
        check::<f64>();
    }

    #[test]
    fn the_builtin_suite_lists_and_passes_the_cells() {
        let suite = crate::autodiff::builtin_suite(0, 1e-6, Vec::new());
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
