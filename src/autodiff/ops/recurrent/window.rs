//! A whole window of one recurrent layer as one recorded node (`recurrent_sequence`):
//! the steps run over blocks of batch rows, forward and backward.

use super::*;
use crate::autodiff::Tangents;

// ---------------------------------------------------------------------------------------
// One step of `recurrent_sequence` on a block of batch rows. The rows of a batch are
// independent within a step, so a step splits into two blocks that run on two threads,
// each with its own hidden product (on `W_hh` packed once per window, `PackedRhs`) and
// gate loops: one fork per step instead of a GEMM's internal synchronisation plus
// serial gate loops.
// ---------------------------------------------------------------------------------------

/// A step is split across two threads from this much hidden-product work (B·G·H·H).
pub(super) const PARALLEL_STEP_WORK: usize = 1 << 20;

/// Whether the steps of a window of `bsz` rows split across two threads.
pub(super) fn parallel_steps(bsz: usize, gh: usize, hid: usize) -> bool {
    rayon::current_num_threads() > 1 && bsz >= 2 && bsz * gh * hid >= PARALLEL_STEP_WORK
}

/// Splits a row-major slab of `rows` rows (any width, possibly empty) after `at` rows.
pub(super) fn split_ref<T>(s: &[T], rows: usize, at: usize) -> (&[T], &[T]) {
    s.split_at(s.len() / rows * at)
}

pub(super) fn split_mut<T>(s: &mut [T], rows: usize, at: usize) -> (&mut [T], &mut [T]) {
    let w = s.len() / rows;
    s.split_at_mut(w * at)
}

/// Runs `run` on `block` (`rows` rows), in two halves on two threads when `parallel`.
pub(super) fn in_halves<B: Send>(
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
/// (`MatLayout::Transposed`, the step ops) or as a row-major copy of `W_hhᵀ`
/// (`MatLayout::Normal`).
pub(super) fn hidden_product<T: Element>(
    a: &mut [T],
    h: &[T],
    w: (&[T], MatLayout),
    b: &[T],
    hid: usize,
) {
    let gh = b.len();
    let rows = a.len() / gh;
    for row in a.chunks_exact_mut(gh) {
        row.copy_from_slice(b);
    }
    matmul_into(a, rows, gh, hid, (h, MatLayout::Normal), w, true);
}

/// The forward pass of one step on a block of rows.
pub(super) struct ForwardBlock<'a, T> {
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

    fn run(self, kind: CellKind, hid: usize, wt: &PackedRhs<T>, b: &[T]) {
        let gh = b.len();
        let rows = self.h_new.len() / hid;
        // the gates are computed where they are kept (LSTM)
        let a = if kind == CellKind::Lstm {
            &mut *self.saved
        } else {
            &mut *self.hp
        };
        for row in a.chunks_exact_mut(gh) {
            row.copy_from_slice(b);
        }
        wt.product(a, self.h_prev, rows, true);
        // the gate loops compiled for AVX-512 or AVX2 where the CPU has it (same results)
        with_avx512!(match kind {
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
pub(super) struct BackwardBlock<'a, T> {
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

    fn run(self, kind: CellKind, hid: usize, w: &PackedRhs<T>) {
        let gh = kind.gates() * hid;
        let rows = self.dh.len() / hid;
        for ((a, &gy), &d) in self.gsum.iter_mut().zip(self.g_y).zip(self.dh.iter()) {
            *a = gy + d;
        }
        let gsum = &*self.gsum;
        // the gate loops compiled for AVX-512 or AVX2 where the CPU has it (same results)
        with_avx512!(match kind {
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
        w.product(self.dh, ghp, rows, false);
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
pub(super) struct SequenceOp<T: Element> {
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
    fn jvp(&self, ins: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
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
        // W_hh packed once for the window's `∂hp·W` products
        let w_packed = PackedRhs::new(w.data(), gh, hid, MatLayout::Normal);
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
                    b.run(kind, hid, &w_packed)
                });
                if lstm {
                    std::mem::swap(&mut dc, &mut dc_prev);
                }
            }
        });
        // ∂W_hh = Σ_t ∂hp_tᵀ · h_{t−1}, over the window: h_{t−1} is h0 for the first step
        // and the outputs before the last for the rest, so two products (inner sizes
        // (T−1)·B and B) rather than one over a copy of them stacked
        let all_dhp = if gru { &dhp[..] } else { dxp.data() };
        let dw = Tensor::build(&[gh, hid], |d| {
            let (first, rest) = all_dhp.split_at(bg);
            if steps > 1 {
                let lhs = (rest, MatLayout::Transposed);
                let rhs = (&y[..(steps - 1) * bh], MatLayout::Normal);
                matmul_into(d, gh, hid, (steps - 1) * bsz, lhs, rhs, false);
            }
            let (lhs, rhs) = ((first, MatLayout::Transposed), (h0, MatLayout::Normal));
            matmul_into(d, gh, hid, bsz, lhs, rhs, true);
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
/// input projection of every step (`x·W_ihᵀ`, plus `b_ih` where `b_hh` does not hold
/// it: `nn::Recurrent` passes an RNN's and an LSTM's summed biases as `b_hh`), time-major (rows `t·B .. (t+1)·B` are
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
    let sw = if kind == CellKind::Rnn { 0 } else { 4 * hid };
    // grown a step at a time below: each step's rows are zeroed as the step begins, so
    // they are still in the cache when the step writes them (zeroing the window's
    // buffers up front sent ~10 MB to memory and back)
    let mut saved = Vec::with_capacity(steps * bsz * sw);
    let mut cells = Vec::with_capacity(if lstm { steps * bh } else { 0 });
    let mut hp = vec![T::zero(); bg];
    // W_hhᵀ packed once for the window's `h·W_hhᵀ` products
    let wt = PackedRhs::new(wv.data(), hid, gh, MatLayout::Transposed);
    let parallel = parallel_steps(bsz, gh, hid);
    let y = Tensor::build(&[rows, hid], |out| {
        for s in 0..steps {
            saved.resize((s + 1) * bsz * sw, T::zero());
            if lstm {
                cells.resize((s + 1) * bh, T::zero());
            }
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
