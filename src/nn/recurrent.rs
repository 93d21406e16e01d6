//! Recurrent layers: Elman RNN (tanh), GRU and LSTM, multi-layer and batch-first, with
//! PyTorch's gate orders, parameter names and shapes, so weights exported from PyTorch
//! load unchanged.
//!
//! Speed comes from structure. Per layer, the input projection of the whole window is
//! one product (`x` as `[T·B, in]` times `W_ihᵀ`, plus `b_ih`; rows are time-major so
//! each step's slice is contiguous). The recurrence over the window is then one recorded
//! node ([`crate::autodiff::recurrent_sequence`], running the step rules of
//! [`crate::autodiff::rnn_cell`], `gru_cell` and `lstm_cell`) whose backward sweep visits
//! each step once and forms `∂W_hh` as one product over the window.

use super::store::{ParamId, ParamStore, Params};
use crate::autodiff::{CellKind, Var, recurrent_sequence};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use rand_chacha::ChaCha8Rng;

/// The parameters of one layer, PyTorch's names and shapes.
#[derive(Clone, Debug)]
pub struct RecurrentLayer {
    /// `weight_ih_l{k}`: `[G·H, in]`.
    pub weight_ih: ParamId,
    /// `weight_hh_l{k}`: `[G·H, H]`.
    pub weight_hh: ParamId,
    /// `bias_ih_l{k}`: `[G·H]`.
    pub bias_ih: ParamId,
    /// `bias_hh_l{k}`: `[G·H]`.
    pub bias_hh: ParamId,
}

/// A multi-layer, batch-first recurrent stack of one cell kind.
#[derive(Clone, Debug)]
pub struct Recurrent {
    /// The cell.
    pub kind: CellKind,
    /// Features per input step.
    pub input_size: usize,
    /// State size `H`.
    pub hidden_size: usize,
    /// The layers, input first.
    pub layers: Vec<RecurrentLayer>,
}

/// What a forward pass of a recurrent stack returns.
pub struct RecurrentOutput<'t, T: Element> {
    /// Every step's output of the last layer, `[B, T, H]`.
    pub y: Var<'t, T>,
    /// The final hidden state of every layer, `[L, B, H]`.
    pub h_n: Var<'t, T>,
    /// The final cell state of every layer, `[L, B, H]` (LSTM only).
    pub c_n: Option<Var<'t, T>>,
}

impl Recurrent {
    /// Adds `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` for each
    /// layer (as `{prefix}.weight_ih_l{k}`... when `prefix` is not empty), every one
    /// drawn from U(−1/√H, 1/√H) as PyTorch does, from `rng`.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        kind: CellKind,
        prefix: &str,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        if input_size == 0 || hidden_size == 0 || num_layers == 0 {
            return Err(Error::invalid(
                "Recurrent::new",
                format!(
                    "input size {input_size}, hidden size {hidden_size} and {num_layers} layers must all be positive"
                ),
            ));
        }
        let k = 1.0 / (hidden_size as f64).sqrt();
        let gh = kind.gates() * hidden_size;
        let name = |n: &str, l: usize| {
            if prefix.is_empty() {
                format!("{n}_l{l}")
            } else {
                format!("{prefix}.{n}_l{l}")
            }
        };
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let fan_in = if l == 0 { input_size } else { hidden_size };
            let mut add = |n: &str, shape: &[usize]| {
                store.add(name(n, l), Tensor::rand_uniform_with(shape, -k, k, rng)?)
            };
            layers.push(RecurrentLayer {
                weight_ih: add("weight_ih", &[gh, fan_in])?,
                weight_hh: add("weight_hh", &[gh, hidden_size])?,
                bias_ih: add("bias_ih", &[gh])?,
                bias_hh: add("bias_hh", &[gh])?,
            });
        }
        Ok(Recurrent {
            kind,
            input_size,
            hidden_size,
            layers,
        })
    }

    /// Number of layers `L`.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs the stack on `x: [B, T, in]` from `h0` (and `c0` for the LSTM), each
    /// `[L, B, H]` (zeros when absent).
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        h0: Option<Var<'t, T>>,
        c0: Option<Var<'t, T>>,
    ) -> Result<RecurrentOutput<'t, T>> {
        self.forward_with(|id| p[id], x, h0, c0)
    }

    /// [`Recurrent::forward`] with each parameter's variable given by `param` (for
    /// gradient checks and functional transforms that supply their own leaves).
    pub fn forward_with<'t, T: Element>(
        &self,
        param: impl Fn(ParamId) -> Var<'t, T>,
        x: Var<'t, T>,
        h0: Option<Var<'t, T>>,
        c0: Option<Var<'t, T>>,
    ) -> Result<RecurrentOutput<'t, T>> {
        let op = "Recurrent::forward";
        let xs = x.shape();
        if xs.len() != 3 || xs[2] != self.input_size || xs[1] == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "the input has shape {xs:?}, expected [batch, time ≥ 1, {}]",
                    self.input_size
                ),
            ));
        }
        let (bsz, steps) = (xs[0], xs[1]);
        // time-major rows: step t of the window is rows t·B .. (t+1)·B
        let x = x
            .permute(&[1, 0, 2])?
            .reshape(&[steps * bsz, self.input_size])?;
        let o = self.forward_time_major_with(param, x, bsz, h0, c0)?;
        Ok(RecurrentOutput {
            y: o.y
                .reshape(&[steps, bsz, self.hidden_size])?
                .permute(&[1, 0, 2])?,
            ..o
        })
    }

    /// The stack on a time-major input `x: [T·B, in]` (rows `t·B .. (t+1)·B` are step
    /// `t`), returning a time-major `y: [T·B, H]`: no transposition of the input or the
    /// output (a language model gathers its embeddings in this order directly).
    pub fn forward_time_major<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        bsz: usize,
        h0: Option<Var<'t, T>>,
        c0: Option<Var<'t, T>>,
    ) -> Result<RecurrentOutput<'t, T>> {
        self.forward_time_major_with(|id| p[id], x, bsz, h0, c0)
    }

    fn forward_time_major_with<'t, T: Element>(
        &self,
        param: impl Fn(ParamId) -> Var<'t, T>,
        x: Var<'t, T>,
        bsz: usize,
        h0: Option<Var<'t, T>>,
        c0: Option<Var<'t, T>>,
    ) -> Result<RecurrentOutput<'t, T>> {
        let op = "Recurrent::forward";
        let xs = x.shape();
        if xs.len() != 2
            || xs[1] != self.input_size
            || bsz == 0
            || xs[0] == 0
            || !xs[0].is_multiple_of(bsz)
        {
            return Err(Error::invalid(
                op,
                format!(
                    "the time-major input has shape {xs:?}, expected [steps·{bsz}, {}] with at least one step",
                    self.input_size
                ),
            ));
        }
        let (steps, hid, nl) = (xs[0] / bsz, self.hidden_size, self.layers.len());
        let state = |s: Option<Var<'t, T>>, what: &str| -> Result<Option<Var<'t, T>>> {
            match s {
                Some(s) if s.shape().as_slice() != [nl, bsz, hid] => Err(Error::invalid(
                    op,
                    format!(
                        "{what} has shape {:?}, expected [{nl}, {bsz}, {hid}]",
                        s.shape()
                    ),
                )),
                Some(s) => Ok(Some(s.reshape(&[nl * bsz, hid])?)),
                None => Ok(None),
            }
        };
        let h0 = state(h0, "h0")?;
        let lstm = self.kind == CellKind::Lstm;
        let c0 = if lstm { state(c0, "c0")? } else { None };
        if !lstm && c0.is_some() {
            return Err(Error::invalid(op, "only an LSTM takes a cell state c0"));
        }
        let tape = x.tape();
        let initial = |s: Option<Var<'t, T>>, l: usize| -> Result<Var<'t, T>> {
            match s {
                Some(s) => s.narrow(0, l * bsz, bsz),
                None => Ok(tape.constant(Tensor::zeroed(&[bsz, hid]))),
            }
        };
        let mut input = x;
        let (mut h_last, mut c_last) = (Vec::with_capacity(nl), Vec::with_capacity(nl));
        for (l, lp) in self.layers.iter().enumerate() {
            // x·W_ihᵀ read in place (a transposed copy of W_ih, and of its gradient on
            // the way back, was a serial 1% of W9's step)
            let xp = input.matmul_in_layouts(param(lp.weight_ih), false, true)?;
            let (w, b_ih, b_hh) = (param(lp.weight_hh), param(lp.bias_ih), param(lp.bias_hh));
            // An RNN's and an LSTM's gates add both biases to the same sums, so they are
            // added once, `[G·H]`, for the window's steps to start from, rather than
            // `b_ih` to every row of `xp` (a pass over `[T·B, G·H]` each way). A GRU
            // multiplies `b_hh`'s n block by its reset gate, so there `b_ih` goes to `xp`.
            let (xp, b) = if self.kind == CellKind::Gru {
                (xp.add(b_ih)?, b_hh)
            } else {
                (xp, b_ih.add(b_hh)?)
            };
            let c = if lstm { Some(initial(c0, l)?) } else { None };
            let seq = recurrent_sequence(self.kind, xp, initial(h0, l)?, c, w, b)?;
            // an LSTM's final cell state comes as B rows after the steps' outputs
            let ys = if lstm {
                seq.narrow(0, 0, steps * bsz)?
            } else {
                seq
            };
            h_last.push(ys.narrow(0, (steps - 1) * bsz, bsz)?);
            if lstm {
                c_last.push(seq.narrow(0, steps * bsz, bsz)?);
            }
            input = ys;
        }
        let stack = |s: &[Var<'t, T>]| Var::concat(s, 0)?.reshape(&[nl, bsz, hid]);
        Ok(RecurrentOutput {
            y: input,
            h_n: stack(&h_last)?,
            c_n: if lstm { Some(stack(&c_last)?) } else { None },
        })
    }
}

macro_rules! cell_layer {
    ($name:ident, $kind:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug)]
        pub struct $name(pub Recurrent);

        impl $name {
            /// Adds the parameters of `num_layers` layers (PyTorch's names, under
            /// `prefix.` when `prefix` is not empty), initialised U(−1/√H, 1/√H) from `rng`.
            pub fn new<T: Element>(
                store: &mut ParamStore<T>,
                prefix: &str,
                input_size: usize,
                hidden_size: usize,
                num_layers: usize,
                rng: &mut ChaCha8Rng,
            ) -> Result<Self> {
                Recurrent::new(
                    store,
                    $kind,
                    prefix,
                    input_size,
                    hidden_size,
                    num_layers,
                    rng,
                )
                .map($name)
            }
        }

        impl std::ops::Deref for $name {
            type Target = Recurrent;
            fn deref(&self) -> &Recurrent {
                &self.0
            }
        }
    };
}

cell_layer!(
    Rnn,
    CellKind::Rnn,
    "A multi-layer Elman RNN with tanh, batch-first (PyTorch's `nn.RNN`)."
);
cell_layer!(
    Gru,
    CellKind::Gru,
    "A multi-layer GRU, batch-first (PyTorch's `nn.GRU`, gates r, z, n)."
);
cell_layer!(
    Lstm,
    CellKind::Lstm,
    "A multi-layer LSTM, batch-first (PyTorch's `nn.LSTM`, gates i, f, g, o)."
);

/// `forward` of the cells whose only state is `h` (RNN and GRU).
macro_rules! hidden_state_forward {
    ($($name:ident),*) => {$(
        impl $name {
            /// `x: [B, T, in]`, `h0: [L, B, H]` (zeros when absent) → (`y: [B, T, H]`,
            /// `h_n: [L, B, H]`).
            pub fn forward<'t, T: Element>(
                &self,
                p: &Params<'t, T>,
                x: Var<'t, T>,
                h0: Option<Var<'t, T>>,
            ) -> Result<(Var<'t, T>, Var<'t, T>)> {
                let o = self.0.forward(p, x, h0, None)?;
                Ok((o.y, o.h_n))
            }
        }
    )*};
}

hidden_state_forward!(Rnn, Gru);

impl Lstm {
    /// `x: [B, T, in]`, `state = (h0, c0)`, each `[L, B, H]` (zeros when absent) →
    /// (`y: [B, T, H]`, `h_n`, `c_n`, each `[L, B, H]`).
    #[allow(clippy::type_complexity)]
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        state: Option<(Var<'t, T>, Var<'t, T>)>,
    ) -> Result<(Var<'t, T>, Var<'t, T>, Var<'t, T>)> {
        let (h0, c0) = state.unzip();
        let o = self.0.forward(p, x, h0, c0)?;
        let c_n = o.c_n.expect("an LSTM returns a cell state");
        Ok((o.y, o.h_n, c_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::{GradcheckOptions, Tape, gradcheck};
    use crate::autodiff::{gru_cell, rnn_cell};
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// max |a − b| / max(max |b|, 1e-3); NaN when either holds a non-finite value or the
    /// shapes differ.
    fn rel_err(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
        if a.shape() != b.shape() || !a.all_finite() || !b.all_finite() {
            return f64::NAN;
        }
        let scale = b.data().iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        a.max_abs_diff(b).unwrap() / scale
    }

    fn fixture(kind: &str) -> HashMap<String, Tensor<f64>> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/recurrent")
            .join(format!("{kind}.safetensors"));
        let (tensors, meta) = crate::nn::load_tensors::<f64>(&path).unwrap();
        assert_eq!(meta["batch_first"], "true");
        tensors.into_iter().collect()
    }

    /// Loads a PyTorch-made fixture, runs forward and backward in f64 and compares every
    /// output, final state and gradient within 1e-10 relative.
    fn matches_pytorch(kind: CellKind, file: &str) {
        let fx = fixture(file);
        let mut store = ParamStore::<f64>::new();
        let net = Recurrent::new(&mut store, kind, "", 5, 7, 2, &mut crate::nn::rng(0)).unwrap();
        let names: Vec<String> = store.iter().map(|(_, n, _)| n.to_string()).collect();
        assert_eq!(names.len(), 8);
        for (i, n) in names.iter().enumerate() {
            let v = &fx[n];
            assert_eq!(v.shape(), store.get(ParamId(i)).shape(), "{n}");
            *store.get_mut(ParamId(i)) = v.clone();
        }
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let x = tape.var(fx["x"].clone());
        let h0 = tape.var(fx["h0"].clone());
        let lstm = kind == CellKind::Lstm;
        let c0 = lstm.then(|| tape.var(fx["c0"].clone()));
        let out = net.forward(&p, x, Some(h0), c0).unwrap();
        let r = tape.constant(fx["r"].clone());
        let mut loss = out
            .y
            .mul(r)
            .unwrap()
            .sum_all()
            .add(out.h_n.sum_all())
            .unwrap();
        if let Some(c_n) = out.c_n {
            loss = loss.add(c_n.sum_all()).unwrap();
        }
        let mut checks: Vec<(String, Tensor<f64>)> =
            vec![("y".into(), out.y.value()), ("h_n".into(), out.h_n.value())];
        if let Some(c_n) = out.c_n {
            checks.push(("c_n".into(), c_n.value()));
        }
        let g = tape.backward(loss).unwrap();
        for (i, n) in names.iter().enumerate() {
            checks.push((format!("grad.{n}"), g.wrt(p[ParamId(i)]).unwrap()));
        }
        checks.push(("grad.x".into(), g.wrt(x).unwrap()));
        checks.push(("grad.h0".into(), g.wrt(h0).unwrap()));
        if let Some(c0) = c0 {
            checks.push(("grad.c0".into(), g.wrt(c0).unwrap()));
        }
        assert_eq!(checks.len(), if lstm { 14 } else { 12 });
        for (n, got) in &checks {
            let e = rel_err(got, &fx[n]);
            assert!(e <= 1e-10, "{file} {n}: relative error {e}");
        }
    }

    #[test]
    fn rnn_matches_pytorch() {
        matches_pytorch(CellKind::Rnn, "rnn");
    }

    #[test]
    fn gru_matches_pytorch() {
        matches_pytorch(CellKind::Gru, "gru");
    }

    #[test]
    fn lstm_matches_pytorch() {
        matches_pytorch(CellKind::Lstm, "lstm");
    }

    fn assert_passes(name: &str, r: &crate::autodiff::GradcheckReport) {
        assert!(r.passed(1e-6) && r.failure.is_none(), "{name}: {r:?}");
        assert!(r.max_rel_err <= 1e-6, "{name}: {r:?}");
        assert!(r.forward_rel_err.unwrap() <= 1e-6, "{name} forward: {r:?}");
        assert!(
            r.forward_reverse_rel_err.unwrap() <= 1e-10,
            "{name} forward vs reverse: {r:?}"
        );
    }

    #[test]
    fn two_layer_lstm_over_eight_steps_passes_gradcheck() {
        let (bsz, steps, inp, hid, nl) = (2, 8, 3, 4, 2);
        let mut store = ParamStore::<f64>::new();
        let net = Lstm::new(&mut store, "lstm", inp, hid, nl, &mut crate::nn::rng(11)).unwrap();
        let mut inputs = vec![
            Tensor::randn(&[bsz, steps, inp], 1).unwrap(),
            Tensor::randn(&[nl, bsz, hid], 2).unwrap().mul_scalar(0.5),
            Tensor::randn(&[nl, bsz, hid], 3).unwrap().mul_scalar(0.5),
        ];
        inputs.extend(store.iter().map(|(_, _, v)| v.clone()));
        assert!(inputs.iter().map(|t| t.len()).sum::<usize>() <= 512);
        let f: crate::autodiff::CaseFn = Box::new(move |_, v| {
            let o = net.forward_with(|id| v[3 + id.0], v[0], Some(v[1]), Some(v[2]))?;
            // every output in one tensor: y, h_n and c_n flattened
            let parts = [
                o.y.reshape(&[bsz * steps * hid])?,
                o.h_n.reshape(&[nl * bsz * hid])?,
                o.c_n.unwrap().reshape(&[nl * bsz * hid])?,
            ];
            Var::concat(&parts, 0)
        });
        let r = gradcheck(f, &inputs, &GradcheckOptions::default()).unwrap();
        assert_eq!(r.mode, crate::autodiff::GradcheckMode::PerElement);
        assert_passes("lstm 2 layers × 8 steps", &r);
    }

    #[test]
    fn names_shapes_init_and_errors() {
        let mut s = ParamStore::<f32>::new();
        let g = Gru::new(&mut s, "enc", 5, 6, 2, &mut crate::nn::rng(3)).unwrap();
        assert_eq!(s.name(g.layers[1].weight_ih), "enc.weight_ih_l1");
        assert_eq!(s.get(g.layers[0].weight_ih).shape(), &[18, 5]);
        assert_eq!(s.get(g.layers[1].weight_ih).shape(), &[18, 6]);
        assert_eq!(s.get(g.layers[1].weight_hh).shape(), &[18, 6]);
        assert_eq!(s.get(g.layers[1].bias_hh).shape(), &[18]);
        let bound = 1.0 / 6f64.sqrt();
        let max = s
            .iter()
            .flat_map(|(_, _, v)| v.data().iter().map(|x| x.abs() as f64))
            .fold(0.0, crate::tensor::nan_max);
        assert!(max <= bound * (1.0 + 1e-6) && max > bound / 2.0, "{max}");
        let mut s2 = ParamStore::<f32>::new();
        Gru::new(&mut s2, "enc", 5, 6, 2, &mut crate::nn::rng(3)).unwrap();
        assert_eq!(s.get(ParamId(0)), s2.get(ParamId(0)));
        let mut s3 = ParamStore::<f32>::new();
        let r = Rnn::new(&mut s3, "", 2, 3, 1, &mut crate::nn::rng(0)).unwrap();
        assert_eq!(s3.name(r.layers[0].bias_ih), "bias_ih_l0");
        assert!(Lstm::new(&mut s3, "", 2, 0, 1, &mut crate::nn::rng(0)).is_err());

        // shape errors are errors, not panics
        let tape = Tape::new();
        let p = s.leaves(&tape);
        assert!(
            g.forward(&p, tape.constant(Tensor::zeros(&[2, 3, 4]).unwrap()), None)
                .is_err()
        );
        assert!(
            g.forward(&p, tape.constant(Tensor::zeros(&[2, 0, 5]).unwrap()), None)
                .is_err()
        );
        let x = tape.constant(Tensor::zeros(&[2, 3, 5]).unwrap());
        let bad_h0 = tape.constant(Tensor::zeros(&[1, 2, 6]).unwrap());
        assert!(g.forward(&p, x, Some(bad_h0)).is_err());
        let (y, h_n) = g.forward(&p, x, None).unwrap();
        assert_eq!(y.shape().as_slice(), &[2, 3, 6]);
        assert_eq!(h_n.shape().as_slice(), &[2, 2, 6]);
        let (w, b) = (p[g.layers[0].weight_hh], p[g.layers[0].bias_hh]);
        let xp = tape.constant(Tensor::zeros(&[2, 18]).unwrap());
        let h = tape.constant(Tensor::zeros(&[2, 6]).unwrap());
        assert!(gru_cell(xp, h, w, b).is_ok());
        assert!(rnn_cell(xp, h, w, b).is_err());
        assert!(gru_cell(h, h, w, b).is_err());
    }

    #[test]
    fn f32_agrees_with_f64_and_the_last_step_is_the_final_state() {
        for kind in [CellKind::Rnn, CellKind::Gru, CellKind::Lstm] {
            let mut s64 = ParamStore::<f64>::new();
            let net = Recurrent::new(&mut s64, kind, "", 3, 5, 2, &mut crate::nn::rng(4)).unwrap();
            let mut s32 = ParamStore::<f32>::new();
            for (_, n, v) in s64.iter() {
                s32.add(n, v.cast()).unwrap();
            }
            let x = Tensor::<f64>::randn(&[2, 6, 3], 9).unwrap();
            let t64 = Tape::new();
            let o64 = net
                .forward(&s64.leaves(&t64), t64.constant(x.clone()), None, None)
                .unwrap();
            let t32 = Tape::new();
            let o32 = net
                .forward(&s32.leaves(&t32), t32.constant(x.cast()), None, None)
                .unwrap();
            let e = rel_err(&o32.y.value().cast(), &o64.y.value());
            assert!(e < 1e-5, "{kind:?}: f32 vs f64 {e}");
            // y's last step equals the last layer's final hidden state
            let last = o64
                .y
                .value()
                .narrow(1, 5, 1)
                .unwrap()
                .reshape(&[2, 5])
                .unwrap();
            let hn = o64
                .h_n
                .value()
                .narrow(0, 1, 1)
                .unwrap()
                .reshape(&[2, 5])
                .unwrap();
            assert_eq!(last, hn);
            assert_eq!(o64.c_n.is_some(), kind == CellKind::Lstm);
        }
    }
}
