//! Replay: a recorded step run again on new data, without a tape.
//!
//! A training step usually records the same graph every time, only on new numbers.
//! [`Trace::record`] turns one recorded graph into a program: each value gets a slot, a
//! product followed by its bias and activation becomes one fused step (its buffers kept
//! and reused from replay to replay), softmax cross-entropy becomes one step with the
//! fused gradient `softmax − onehot`, and every other op runs its own kernel and its own
//! reverse rule from the op table. [`Trace::forward`] and [`Trace::backward`] then run
//! the step on new inputs without pushing a node. The eager tape stays the reference:
//! the fused steps do the same arithmetic in the same order, so replayed values are the
//! eager ones bit for bit, except softmax cross-entropy, whose fused gradient rounds
//! differently (within a few ulp).

use super::ops::Op;
use super::tape::{Node, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{
    BinaryOp, Element, MatLayout, PARALLEL_MIN_LEN, Shape, Tensor, UnaryOp, matmul_into, with_avx2,
};
use rayon::prelude::*;
use smallvec::SmallVec;
use std::sync::Arc;

mod fused;
mod plan;

use plan::*;

/// A recorded step, ready to replay on new inputs of the same shapes.
pub struct Trace<T: Element> {
    steps: Vec<Step<T>>,
    /// Every node's value, by node id: planned once and overwritten by each replay
    /// (`None`: not needed). Constants captured when recording stay as they are.
    values: Vec<Option<Tensor<T>>>,
    /// Every node's gradient buffer, by node id, kept from sweep to sweep.
    grads: Vec<Option<Tensor<T>>>,
    /// Whether the current sweep has written a node's gradient.
    has_grad: Vec<bool>,
    /// Whether a gradient flows through each node.
    needs: Vec<bool>,
    /// Node id and shape of each parameter, in the order given to `record`.
    params: Vec<(u32, Shape)>,
    /// Node id and shape of each input.
    inputs: Vec<(u32, Shape)>,
    /// Number of indices each index slot takes (gathers and row selections, in recording
    /// order).
    index_lens: Vec<usize>,
    output: u32,
    /// For each step, the parameters (by position) whose gradient is complete once the
    /// reverse sweep has passed it (their first consumer in recording order).
    complete_after: Vec<SmallVec<[usize; 2]>>,
    /// Set by `forward`, consumed by `backward`.
    ready: bool,
}

pub(super) enum Step<T: Element> {
    Dense(Box<Dense<T>>),
    CrossEntropy(Box<CrossEntropy<T>>),
    Op {
        op: Op<T>,
        inputs: SmallVec<[u32; 2]>,
        out: u32,
        shape: Shape,
        /// The index slot of a gather or row selection.
        index_slot: Option<usize>,
    },
}

/// `act(x·W + b)` for `x` `[m, k]`, `W` `[k, n]`, `b` `[n]`: the product written into
/// the pre-activation buffer, then one pass that adds the bias and applies the
/// activation row by row (the eager ops' arithmetic in their order, so the same bits).
pub(super) struct Dense<T: Element> {
    x: u32,
    w: u32,
    /// `W` is stored `[n, k]` and read transposed (PyTorch's `nn.Linear` layout).
    w_transposed: bool,
    b: u32,
    act: Option<UnaryOp>,
    out: u32,
    m: usize,
    k: usize,
    n: usize,
    /// `x·W + b` when an activation follows (otherwise that is the output).
    pre: Tensor<T>,
    /// The gradient with respect to `pre`.
    g_pre: Tensor<T>,
}

/// `mean over rows of (logsumexp(z_i) − z_i[label_i])` for logits `z` `[m, c]`, with the
/// gradient `(softmax(z) − onehot(label)) · g / m` in one pass.
pub(super) struct CrossEntropy<T: Element> {
    z: u32,
    out: u32,
    index_slot: usize,
    labels: Vec<usize>,
    m: usize,
    c: usize,
    /// `softmax(z)` of the last forward pass.
    probs: Tensor<T>,
}

/// Reads the id of `v`, refusing a variable from another tape.
pub(super) fn id_on<T: Element>(tape: &Tape<T>, v: &Var<'_, T>, what: &str) -> Result<u32> {
    if !std::ptr::eq(v.tape, tape) {
        return Err(Error::invalid(
            "Trace::record",
            format!("{what} belongs to another tape"),
        ));
    }
    Ok(v.id)
}

impl<T: Element> Trace<T> {
    /// Turns the graph recorded on `tape` up to `output` (a one-element loss) into a
    /// replayable step. `params` are the leaves whose gradients [`Trace::backward`]
    /// returns (a constant among them is a frozen parameter: it is fed, but gets no
    /// gradient); `inputs` are the leaves fed anew at each replay, and must be made with
    /// [`Tape::var`] so that every op depending on them is recorded. Only what the
    /// output depends on is replayed. Every gather and row selection (`gather`,
    /// `index_select`) takes its indices from the replay call, in recording order. Any other constant on the tape, including values computed
    /// under `no_grad`, is captured as it is now (a dropout mask would be replayed
    /// unchanged: do not trace a step with dropout). Custom ops and `where` (whose mask
    /// depends on the data) cannot be replayed.
    pub fn record(
        tape: &Tape<T>,
        output: Var<'_, T>,
        params: &[Var<'_, T>],
        inputs: &[Var<'_, T>],
    ) -> Result<Self> {
        let out = id_on(tape, &output, "the output")?;
        let param_ids = params
            .iter()
            .map(|p| id_on(tape, p, "a parameter"))
            .collect::<Result<Vec<_>>>()?;
        let input_ids = inputs
            .iter()
            .map(|p| id_on(tape, p, "an input"))
            .collect::<Result<Vec<_>>>()?;
        tape.with_nodes(|nodes| compile(&nodes[..=out as usize], out, &param_ids, &input_ids))
    }

    /// Whether parameters, inputs and index lists of these shapes and lengths fit this
    /// trace (otherwise record a new one).
    pub fn accepts(
        &self,
        params: &[&Tensor<T>],
        inputs: &[&Tensor<T>],
        indices: &[&[usize]],
    ) -> bool {
        params.len() == self.params.len()
            && inputs.len() == self.inputs.len()
            && indices.len() == self.index_lens.len()
            && params
                .iter()
                .zip(&self.params)
                .all(|(p, (_, s))| p.shape() == s.as_slice())
            && inputs
                .iter()
                .zip(&self.inputs)
                .all(|(p, (_, s))| p.shape() == s.as_slice())
            && indices
                .iter()
                .zip(&self.index_lens)
                .all(|(i, &n)| i.len() == n)
    }

    /// The steps, by name: `dense(relu)`, `softmax_cross_entropy`, or an op's name.
    pub fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Dense(d) => match d.act {
                    Some(a) => format!("dense({})", a.name()),
                    None => "dense".to_string(),
                },
                Step::CrossEntropy(_) => "softmax_cross_entropy".to_string(),
                Step::Op { op, .. } => op.name().to_string(),
            })
            .collect()
    }

    /// Runs the recorded computation on new values and returns the output. Shapes and
    /// index counts must be those recorded ([`Trace::accepts`]).
    pub fn forward(
        &mut self,
        params: &[&Tensor<T>],
        inputs: &[&Tensor<T>],
        indices: &[&[usize]],
    ) -> Result<T> {
        if !self.accepts(params, inputs, indices) {
            return Err(Error::invalid(
                "Trace::forward",
                format!(
                    "the trace was recorded for {} parameters, {} inputs and {} index lists of other shapes: {}",
                    self.params.len(),
                    self.inputs.len(),
                    self.index_lens.len(),
                    "record a new trace for these shapes"
                ),
            ));
        }
        self.ready = false;
        for ((id, _), t) in self.params.iter().zip(params) {
            self.values[*id as usize] = Some((*t).clone());
        }
        for ((id, _), t) in self.inputs.iter().zip(inputs) {
            self.values[*id as usize] = Some((*t).clone());
        }
        let values = &mut self.values;
        for step in &mut self.steps {
            match step {
                Step::Dense(d) => d.forward(values),
                Step::CrossEntropy(ce) => ce.forward(values, indices[ce.index_slot])?,
                Step::Op {
                    op,
                    inputs,
                    out,
                    shape,
                    index_slot,
                } => {
                    if let Some(k) = index_slot {
                        set_indices(op, indices[*k]);
                    }
                    // a node's inputs come before it, so they sit below its slot
                    let (below, slot) = split(values, *out);
                    let ins: SmallVec<[&Tensor<T>; 2]> =
                        inputs.iter().map(|&i| value(below, i)).collect();
                    op.forward(&ins, shape, slot)?;
                }
            }
        }
        self.ready = true;
        value(&self.values, self.output).item()
    }

    /// The reverse sweep of the last [`Trace::forward`]: the gradient of the output with
    /// respect to each parameter, in the order given to [`Trace::record`] (`None` for a
    /// frozen parameter or one the output does not depend on), owned by the caller
    /// (give them back with [`Trace::recycle`]). Lets go of the parameters and inputs.
    pub fn backward(&mut self) -> Result<Vec<Option<Tensor<T>>>> {
        self.backward_with(&mut |_, _| Ok(()), &mut || Ok(()))
    }

    /// [`Trace::backward`], calling `complete(k, gradient)` as soon as parameter `k`'s
    /// gradient is complete (no step later in the sweep adds to it), and `between()`
    /// after every step: a data-parallel trainer starts summing a gradient across
    /// processes while the sweep goes on, and lets those sums advance in between.
    pub fn backward_with(
        &mut self,
        complete: &mut dyn FnMut(usize, &mut Tensor<T>) -> Result<()>,
        between: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<Option<Tensor<T>>>> {
        if !self.ready {
            return Err(Error::invalid(
                "Trace::backward",
                "call forward first (each forward pass allows one backward sweep)",
            ));
        }
        self.ready = false;
        let (values, needs) = (&self.values, &self.needs);
        let (grads, has) = (&mut self.grads, &mut self.has_grad);
        has.fill(false);
        let top = self.output as usize;
        buffer(&mut grads[top], value(values, self.output).shape()).fill(T::one());
        has[top] = true;
        for (s, step) in self.steps.iter_mut().enumerate().rev() {
            match step {
                Step::Dense(d) => d.backward(values, needs, grads, has)?,
                Step::CrossEntropy(ce) => ce.backward(grads, has)?,
                Step::Op {
                    op, inputs, out, ..
                } => op_backward(op, inputs, *out, values, needs, grads, has)?,
            }
            for &k in &self.complete_after[s] {
                let id = self.params[k].0 as usize;
                if needs[id]
                    && has[id]
                    && let Some(g) = grads[id].as_mut()
                {
                    complete(k, g)?;
                }
            }
            between()?;
        }
        let out = self
            .params
            .iter()
            .map(|(id, _)| {
                let id = *id as usize;
                (self.needs[id] && self.has_grad[id])
                    .then(|| self.grads[id].take())
                    .flatten()
            })
            .collect();
        // the caller's tensors are the caller's again (the optimizer updates them in place)
        for (id, _) in self.params.iter().chain(&self.inputs) {
            self.values[*id as usize] = None;
        }
        Ok(out)
    }
}

impl<T: Element> Trace<T> {
    /// Gives back gradients from [`Trace::backward`] once they are used, so that the
    /// next sweep writes into their buffers instead of allocating new ones.
    pub fn recycle(&mut self, grads: Vec<Option<Tensor<T>>>) {
        for ((id, _), g) in self.params.iter().zip(grads) {
            let slot = &mut self.grads[*id as usize];
            if slot.is_none() {
                *slot = g;
            }
        }
    }
}

/// The reverse rule of a recorded op: a unary op writes into its input's gradient
/// buffer, the others go through the op table.
pub(super) fn op_backward<T: Element>(
    op: &Op<T>,
    inputs: &[u32],
    out: u32,
    values: &[Option<Tensor<T>>],
    needs: &[bool],
    grads: &mut [Option<Tensor<T>>],
    has: &mut [bool],
) -> Result<()> {
    if !has[out as usize] {
        return Ok(());
    }
    let (below, slot) = split(grads, out);
    let g = slot.as_ref().expect("written when has_grad is set");
    let y = value(values, out);
    if let Op::Unary(u) = op {
        let j = inputs[0];
        if !needs[j as usize] {
            return Ok(());
        }
        let x = value(values, j);
        if has[j as usize] {
            let c = u.scale_by_derivative(x, y, g);
            add_grad(below, has, j, c)?;
        } else {
            let into = buffer(&mut below[j as usize], x.shape());
            u.scale_by_derivative_into(x.data(), y.data(), g.data(), into);
            has[j as usize] = true;
        }
        return Ok(());
    }
    let ins: SmallVec<[&Tensor<T>; 2]> = inputs.iter().map(|&i| value(values, i)).collect();
    if let Op::MatMul { ta, tb } = *op
        && ins[0].ndim() == 2
        && ins[1].ndim() == 2
    {
        return matmul_backward(ins[0], ins[1], g, (ta, tb), inputs, needs, below, has);
    }
    let wants: SmallVec<[bool; 2]> = inputs.iter().map(|&i| needs[i as usize]).collect();
    let parts = op.vjp(&ins, y, g, &wants)?;
    for ((&j, part), &want) in inputs.iter().zip(parts).zip(&wants) {
        if let (Some(c), true) = (part, want) {
            add_grad(below, has, j, c)?;
        }
    }
    Ok(())
}

/// The reverse rule of a product of matrices `C = op(A)·op(B)`, as
/// [`super::ops::matmul::vjp`] computes it (the same products, so the same values): an
/// operand's first gradient is written over its buffer from the last sweep, a further
/// one (fan-out) is added.
#[allow(clippy::too_many_arguments)]
fn matmul_backward<T: Element>(
    a: &Tensor<T>,
    b: &Tensor<T>,
    g: &Tensor<T>,
    (ta, tb): (bool, bool),
    inputs: &[u32],
    needs: &[bool],
    grads: &mut [Option<Tensor<T>>],
    has: &mut [bool],
) -> Result<()> {
    // d op(A) = G·op(B)ᵀ and d op(B) = op(A)ᵀ·G, transposed back where a flag is set
    let products = [
        match ta {
            true => (b, g, tb, true),
            false => (g, b, false, !tb),
        },
        match tb {
            true => (g, a, true, ta),
            false => (a, g, !ta, false),
        },
    ];
    for (&j, (x, y, fx, fy)) in inputs.iter().zip(products) {
        if !needs[j as usize] {
            continue;
        }
        if has[j as usize] {
            add_grad(grads, has, j, x.matmul_transposed(y, fx, fy)?)?;
        } else {
            let shape = if j == inputs[0] { a.shape() } else { b.shape() };
            let out = grads[j as usize].get_or_insert_with(|| Tensor::zeroed(shape));
            x.matmul_transposed_into(y, fx, fy, out)?;
            has[j as usize] = true;
        }
    }
    Ok(())
}

/// The slots below node `id` (its inputs) and its own slot.
pub(super) fn split<T>(slots: &mut [Option<T>], id: u32) -> (&mut [Option<T>], &mut Option<T>) {
    let (below, rest) = slots.split_at_mut(id as usize);
    (below, &mut rest[0])
}

/// A slot's buffer as `shape`, for overwriting (kept when it fits and is unshared).
pub(super) use super::ops::reused_buffer as buffer;

/// Adds a contribution to node `j`'s gradient (fan-out accumulates).
pub(super) fn add_grad<T: Element>(
    grads: &mut [Option<Tensor<T>>],
    has: &mut [bool],
    j: u32,
    c: Tensor<T>,
) -> Result<()> {
    let j = j as usize;
    match (&mut grads[j], has[j]) {
        (Some(g), true) => g.add_assign(&c)?,
        (slot, _) => *slot = Some(c),
    }
    has[j] = true;
    Ok(())
}

pub(super) fn value<T: Element>(values: &[Option<Tensor<T>>], id: u32) -> &Tensor<T> {
    values[id as usize]
        .as_ref()
        .expect("a trace computes every value before its use")
}

/// Puts a replay's indices into a gather or row selection.
pub(super) fn set_indices<T: Element>(op: &mut Op<T>, new: &[usize]) {
    match op {
        Op::Gather { index, .. } if index.as_ref() != new => *index = Arc::from(new),
        Op::IndexSelect { indices, .. } if indices.as_ref() != new => *indices = Arc::from(new),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MLP with a softmax cross-entropy loss, as `nn` records it.
    fn mlp_loss<'t, T: Element>(
        x: Var<'t, T>,
        labels: &[usize],
        p: &[Var<'t, T>],
        act: UnaryOp,
    ) -> Result<Var<'t, T>> {
        let mut h = x;
        for (i, layer) in p.chunks(2).enumerate() {
            // odd layers hold their weight as PyTorch does, `[out, in]`, read transposed
            h = h
                .matmul_in_layouts(layer[0], false, i % 2 == 1)?
                .add(layer[1])?;
            if i + 1 < p.len() / 2 {
                h = h.unary(act);
            }
        }
        let lse = h.logsumexp(&[1], false)?;
        let picked = h.gather(1, labels)?.reshape(&[labels.len()])?;
        Ok(lse.sub(picked)?.mean_all())
    }

    fn mlp_params<T: Element>(sizes: &[usize], seed: u64) -> Vec<Tensor<T>> {
        let mut out = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            out.push(
                Tensor::<f64>::randn(&[w[i % 2], w[1 - i % 2]], seed + 2 * i as u64)
                    .unwrap()
                    .cast(),
            );
            out.push(
                Tensor::<f64>::randn(&[w[1]], seed + 2 * i as u64 + 1)
                    .unwrap()
                    .cast(),
            );
        }
        out
    }

    fn labels(n: usize, classes: usize, seed: u64) -> Vec<usize> {
        let mut g = crate::tensor::SplitMix64::new(seed);
        (0..n).map(|_| g.int(classes as u64) as usize).collect()
    }

    /// The eager loss and gradients of the MLP on a fresh tape.
    fn eager<T: Element>(
        x: &Tensor<T>,
        y: &[usize],
        params: &[Tensor<T>],
        act: UnaryOp,
    ) -> (T, Vec<Tensor<T>>) {
        let tape = Tape::new();
        let p: Vec<Var<'_, T>> = params.iter().map(|t| tape.var(t.clone())).collect();
        let loss = mlp_loss(tape.constant(x.clone()), y, &p, act).unwrap();
        let g = tape.backward(loss).unwrap();
        (
            loss.item().unwrap(),
            p.iter().map(|&v| g.wrt(v).unwrap()).collect(),
        )
    }

    /// Records the MLP step once and returns its trace.
    fn traced<T: Element>(
        x: &Tensor<T>,
        y: &[usize],
        params: &[Tensor<T>],
        act: UnaryOp,
    ) -> Trace<T> {
        let tape = Tape::new();
        let p: Vec<Var<'_, T>> = params.iter().map(|t| tape.var(t.clone())).collect();
        let xv = tape.var(x.clone());
        let loss = mlp_loss(xv, y, &p, act).unwrap();
        Trace::record(&tape, loss, &p, &[xv]).unwrap()
    }

    fn rel(a: f64, b: f64) -> f64 {
        let d = (a - b).abs() / a.abs().max(b.abs()).max(1e-30);
        if d.is_nan() { f64::INFINITY } else { d }
    }

    fn worst<T: Element>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
        assert_eq!(a.shape(), b.shape());
        let scale = a
            .data()
            .iter()
            .fold(0.0f64, |m, v| m.max(v.as_f64().abs()))
            .max(1e-30);
        a.data().iter().zip(b.data()).fold(0.0, |m: f64, (x, y)| {
            let d = (x.as_f64() - y.as_f64()).abs() / scale;
            if d.is_nan() { f64::INFINITY } else { m.max(d) }
        })
    }

    #[test]
    fn a_replayed_mlp_step_matches_the_tape_on_new_data_and_parameters() {
        for (act, sizes, batch) in [
            (UnaryOp::Relu, [13usize, 9, 7, 5], 11usize),
            (UnaryOp::Tanh, [20, 300, 257, 10], 260),
            (UnaryOp::Sigmoid, [3, 4, 2, 2], 1),
        ] {
            let params = mlp_params::<f32>(&sizes, 1);
            let x = Tensor::<f64>::randn(&[batch, sizes[0]], 2)
                .unwrap()
                .cast::<f32>();
            let y = labels(batch, sizes[3], 3);
            let mut trace = traced(&x, &y, &params, act);
            assert_eq!(
                trace.describe(),
                [
                    format!("dense({})", act.name()),
                    format!("dense({})", act.name()),
                    "dense".to_string(),
                    "softmax_cross_entropy".to_string()
                ]
            );
            for round in 0..3u64 {
                let params = mlp_params::<f32>(&sizes, 10 + round);
                let x = Tensor::<f64>::randn(&[batch, sizes[0]], 20 + round)
                    .unwrap()
                    .cast::<f32>();
                let y = labels(batch, sizes[3], 30 + round);
                let (loss, grads) = eager(&x, &y, &params, act);
                let refs: Vec<&Tensor<f32>> = params.iter().collect();
                let l = trace.forward(&refs, &[&x], &[&y]).unwrap();
                let g = trace.backward().unwrap();
                assert!(rel(l as f64, loss as f64) <= 1e-6, "{l} vs {loss}");
                for (k, (a, b)) in g.iter().zip(&grads).enumerate() {
                    let a = a.as_ref().expect("every parameter gets a gradient");
                    let err = worst(b, a);
                    assert!(err <= 1e-6, "{act:?} parameter {k}: {err}");
                }
            }
        }
    }

    #[test]
    fn generic_ops_replay_bit_for_bit_and_fan_out_accumulates() {
        // a regression loss with broadcasting, reshape, a shared parameter and a row
        // selection: every step is an op from the table, so the bits are the eager ones
        fn f<'t>(
            x: Var<'t, f64>,
            t: Var<'t, f64>,
            p: &[Var<'t, f64>],
            rows: &[usize],
        ) -> Result<Var<'t, f64>> {
            let h = x.matmul(p[0])?.add(p[1])?.tanh();
            let h = h.mul(p[1].tanh())?.softmax(1)?; // p[1] used twice, once by a unary op
            let h = h.index_select(0, rows)?.permute(&[1, 0])?;
            let e = h.sub(t)?.powf(2.0);
            Ok(e.sum(&[0], false)?.mean_all())
        }
        let params = [
            Tensor::<f64>::randn(&[4, 3], 1).unwrap(),
            Tensor::randn(&[3], 2).unwrap(),
        ];
        let run_eager = |x: &Tensor<f64>, t: &Tensor<f64>, ps: &[Tensor<f64>], rows: &[usize]| {
            let tape = Tape::new();
            let p: Vec<_> = ps.iter().map(|v| tape.var(v.clone())).collect();
            let l = f(tape.constant(x.clone()), tape.constant(t.clone()), &p, rows).unwrap();
            let g = tape.backward(l).unwrap();
            (
                l.item().unwrap(),
                p.iter().map(|&v| g.wrt(v).unwrap()).collect::<Vec<_>>(),
            )
        };
        let tape = Tape::new();
        let p: Vec<_> = params.iter().map(|v| tape.var(v.clone())).collect();
        let x = tape.var(Tensor::randn(&[5, 4], 3).unwrap());
        let t = tape.var(Tensor::randn(&[3, 2], 4).unwrap());
        let l = f(x, t, &p, &[4, 0]).unwrap();
        let mut trace = Trace::record(&tape, l, &p, &[x, t]).unwrap();
        assert_eq!(trace.describe()[0], "dense(tanh)");
        for round in 0..3 {
            let ps = [
                Tensor::randn(&[4, 3], 10 + round).unwrap(),
                Tensor::randn(&[3], 20 + round).unwrap(),
            ];
            let xs = Tensor::randn(&[5, 4], 30 + round).unwrap();
            let ts = Tensor::randn(&[3, 2], 40 + round).unwrap();
            let rows = [round as usize, 3];
            let (le, ge) = run_eager(&xs, &ts, &ps, &rows);
            let lr = trace
                .forward(&[&ps[0], &ps[1]], &[&xs, &ts], &[&rows])
                .unwrap();
            let gr = trace.backward().unwrap();
            assert_eq!(le.to_bits(), lr.to_bits());
            for (a, b) in ge.iter().zip(&gr) {
                assert_eq!(a.data(), b.as_ref().unwrap().data());
            }
        }
    }

    #[test]
    fn pooling_replays_bit_for_bit() {
        // average pooling (padded, overlapping windows) then max pooling: the two pooling
        // paths of `Trace::forward`, each fed by a node that depends on the parameter
        use crate::autodiff::ops::pool::Pool2dOptions;
        fn f<'t>(x: Var<'t, f64>, w: Var<'t, f64>) -> Result<Var<'t, f64>> {
            let avg = Pool2dOptions {
                kernel: [3, 3],
                stride: [2, 1],
                padding: [1, 1],
            };
            let h = x.mul(w)?.avg_pool2d(avg)?.tanh();
            Ok(h.max_pool2d(Pool2dOptions::square(2))?.mean_all())
        }
        let eager = |x: &Tensor<f64>, w: &Tensor<f64>| {
            let tape = Tape::new();
            let wv = tape.var(w.clone());
            let l = f(tape.constant(x.clone()), wv).unwrap();
            let g = tape.backward(l).unwrap().wrt(wv).unwrap();
            (l.item().unwrap(), g)
        };
        let tape = Tape::new();
        let w = tape.var(Tensor::randn(&[3, 1, 1], 1).unwrap());
        let x = tape.var(Tensor::randn(&[2, 3, 7, 6], 2).unwrap());
        let l = f(x, w).unwrap();
        let mut trace = Trace::record(&tape, l, &[w], &[x]).unwrap();
        for round in 0..3 {
            let ws = Tensor::randn(&[3, 1, 1], 10 + round).unwrap();
            let xs = Tensor::randn(&[2, 3, 7, 6], 20 + round).unwrap();
            let (le, ge) = eager(&xs, &ws);
            let lr = trace.forward(&[&ws], &[&xs], &[]).unwrap();
            let gr = trace.backward().unwrap();
            assert_eq!(le.to_bits(), lr.to_bits(), "round {round}");
            assert_eq!(ge.data(), gr[0].as_ref().unwrap().data(), "round {round}");
        }
    }

    #[test]
    fn recycled_gradients_are_written_in_place_by_the_next_sweep() {
        let params = mlp_params::<f32>(&[6, 5, 4, 3], 1);
        let x = Tensor::<f64>::randn(&[7, 6], 2).unwrap().cast::<f32>();
        let y = labels(7, 3, 3);
        let mut trace = traced(&x, &y, &params, UnaryOp::Relu);
        let refs: Vec<&Tensor<f32>> = params.iter().collect();
        trace.forward(&refs, &[&x], &[&y]).unwrap();
        let mut first = trace.backward().unwrap();
        // handed over unshared: scaling in place (as clipping does) copies nothing
        let g0 = first[0].as_mut().unwrap();
        let before = g0.data().as_ptr();
        g0.data_mut()[0] *= 0.5;
        assert_eq!(before, g0.data().as_ptr());
        trace.recycle(first);
        trace.forward(&refs, &[&x], &[&y]).unwrap();
        let second = trace.backward().unwrap();
        assert_eq!(second[0].as_ref().unwrap().data().as_ptr(), before);
        let (_, eager_grads) = eager(&x, &y, &params, UnaryOp::Relu);
        assert!(worst(&eager_grads[0], second[0].as_ref().unwrap()) <= 1e-6);
    }

    #[test]
    fn each_gradient_is_announced_once_as_soon_as_it_is_complete() {
        let params = mlp_params::<f64>(&[6, 5, 4, 3], 1);
        let x = Tensor::<f64>::randn(&[7, 6], 2).unwrap();
        let y = labels(7, 3, 3);
        let mut trace = traced(&x, &y, &params, UnaryOp::Tanh);
        let refs: Vec<&Tensor<f64>> = params.iter().collect();
        trace.forward(&refs, &[&x], &[&y]).unwrap();
        let mut seen: Vec<(usize, usize, Tensor<f64>)> = Vec::new();
        let steps = std::cell::Cell::new(0);
        let grads = trace
            .backward_with(
                &mut |k, g| {
                    seen.push((k, steps.get(), g.clone()));
                    Ok(())
                },
                &mut || {
                    steps.set(steps.get() + 1);
                    Ok(())
                },
            )
            .unwrap();
        // the last layer's weight and bias first (after the loss and its own step), the
        // first layer's last
        let order: Vec<usize> = seen.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(order, [4, 5, 2, 3, 0, 1]);
        let after: Vec<usize> = seen.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(after, [1, 1, 2, 2, 3, 3]);
        for (k, _, g) in &seen {
            assert_eq!(g.data(), grads[*k].as_ref().unwrap().data());
        }
    }

    #[test]
    fn a_frozen_parameter_is_fed_but_gets_no_gradient() {
        let tape = Tape::<f64>::new();
        let w = tape.var(Tensor::randn(&[3, 2], 1).unwrap());
        let b = tape.constant(Tensor::randn(&[2], 2).unwrap()); // frozen
        let x = tape.var(Tensor::randn(&[4, 3], 3).unwrap());
        let l = x.matmul(w).unwrap().add(b).unwrap().relu().sum_all();
        let mut trace = Trace::record(&tape, l, &[w, b], &[x]).unwrap();
        let (wv, bv, xv) = (w.value(), Tensor::randn(&[2], 5).unwrap(), x.value());
        let lr = trace.forward(&[&wv, &bv], &[&xv], &[]).unwrap();
        let g = trace.backward().unwrap();
        assert!(g[0].is_some() && g[1].is_none());
        let eager = (xv.matmul(&wv).unwrap().add(&bv).unwrap().relu().sum_all())
            .item()
            .unwrap();
        assert_eq!(lr, eager);
    }

    #[test]
    fn what_cannot_be_replayed_is_refused_with_a_reason() {
        use crate::autodiff::ops::testing::Twice;
        let tape = Tape::<f64>::new();
        let w = tape.var(Tensor::randn(&[3], 1).unwrap());
        let x = tape.var(Tensor::randn(&[3], 2).unwrap());
        let c = Var::custom(&[w], Arc::new(Twice), w.value().mul_scalar(2.0)).unwrap();
        let l = c.mul(x).unwrap().sum_all();
        let e = Trace::record(&tape, l, &[w], &[x])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("twice") && e.contains("cannot be replayed"),
            "{e}"
        );
        // an input that is a constant: what depends on it only was not recorded
        let k = tape.constant(Tensor::randn(&[3], 3).unwrap());
        let l = w.mul(k).unwrap().sum_all();
        let e = Trace::record(&tape, l, &[w], &[k])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Tape::var"), "{e}");
        // a leaf neither fed nor a parameter
        let l = w.mul(x).unwrap().sum_all();
        let e = Trace::record(&tape, l, &[w], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("neither a parameter nor an input"), "{e}");
        // other shapes are not accepted, and backward needs a forward first
        let mut trace = Trace::record(&tape, l, &[w], &[x]).unwrap();
        let (wv, big) = (w.value(), Tensor::randn(&[4], 4).unwrap());
        assert!(!trace.accepts(&[&wv], &[&big], &[]));
        assert!(trace.forward(&[&wv], &[&big], &[]).is_err());
        assert!(trace.backward().is_err());
        let xv = x.value();
        trace.forward(&[&wv], &[&xv], &[]).unwrap();
        trace.backward().unwrap();
        assert!(trace.backward().is_err());
    }

    #[test]
    fn bad_labels_and_non_finite_logits_are_reported_not_hidden() {
        let params = mlp_params::<f64>(&[3, 4, 4, 3], 1);
        let x = Tensor::<f64>::randn(&[2, 3], 2).unwrap();
        let mut trace = traced(&x, &[0, 2], &params, UnaryOp::Relu);
        let refs: Vec<&Tensor<f64>> = params.iter().collect();
        let e = trace
            .forward(&refs, &[&x], &[&[0, 3]])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("label 3 out of range for 3 classes"), "{e}");
        let mut params = params.clone();
        params[5] = Tensor::from_vec(vec![f64::NAN, 0.0, 0.0], &[3]).unwrap();
        let refs: Vec<&Tensor<f64>> = params.iter().collect();
        let l = trace.forward(&refs, &[&x], &[&[0, 1]]).unwrap();
        assert!(l.is_nan());
        let g = trace.backward().unwrap();
        assert!(g[0].as_ref().unwrap().data().iter().any(|v| v.is_nan()));
    }
}
