//! The tape (recording nodes, recycling their buffers) and the variable handle; the
//! reverse sweeps are in `sweep`.

use super::ops::Op;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;

mod sweep;

pub(crate) type Inputs = SmallVec<[u32; 2]>;

pub(crate) struct Node<T: Element> {
    pub(crate) op: Op<T>,
    pub(crate) inputs: Inputs,
    pub(crate) value: Tensor<T>,
    pub(crate) requires_grad: bool,
    /// Index into the tape's scope names (0: no scope), for grouped graph export.
    pub(crate) scope: u16,
}

/// The record of one step's computation. Create one per step (or [`Tape::clear`] it);
/// parameters live outside it and enter each step as leaves.
pub struct Tape<T: Element> {
    nodes: RefCell<Vec<Node<T>>>,
    grad_enabled: Cell<bool>,
    /// The dense gradient vector of the last sweep, kept so that the next sweep reuses
    /// memory already touched (fresh pages cost more than the sweep itself).
    scratch: RefCell<Vec<Option<Tensor<T>>>>,
    scope: Cell<u16>,
    scope_names: RefCell<Vec<String>>,
    labels: RefCell<std::collections::BTreeMap<u32, String>>,
    detect_anomaly: Cell<bool>,
    /// Forward mode: one tangent per node (`None` = zero), computed as each node is
    /// recorded; `None` when forward mode is off.
    tangents: RefCell<Option<Vec<Option<Tensor<T>>>>>,
    /// The first error of a forward-mode rule (reported by [`Var::tangent`]).
    tangent_error: RefCell<Option<TangentFault>>,
    /// Unique to this tape and renewed by [`Tape::clear`]: node ids are only meaningful
    /// with it, so a `Var` of another tape (or of this one before a clear) is refused.
    generation: Cell<u64>,
    /// The values of the nodes of the last step that nothing outside the tape held, by
    /// node id: an op recorded at the same position of the next step writes into the
    /// old buffer when it has the shape (a training step records the same shapes in the
    /// same order every time), which saves allocating and zeroing one buffer and freeing
    /// another per node. What a step leaves unused is freed at the next clear. Only the
    /// buffers are kept (16 bytes a node, where a tensor with its shape takes 56): the
    /// new value's shape comes with the op.
    spare: RefCell<Vec<Option<Arc<[T]>>>>,
}

/// A fresh tape generation: process-wide unique, so no two tapes (or one tape before and
/// after a clear) share one.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why forward mode could not give a tangent: kept apart so that a missing rule (a custom
/// op without one) is never mistaken for a rule that failed.
#[derive(Clone)]
enum TangentFault {
    NoRule(String),
    Failed(String),
}

/// A handle to a value on a tape: an integer id plus the tape it belongs to. Copying one
/// is free; ops on it record nodes.
#[derive(Clone, Copy)]
pub struct Var<'t, T: Element> {
    pub(crate) tape: &'t Tape<T>,
    pub(crate) id: u32,
}

/// A read-only view of one recorded node (for printing and export).
#[derive(Clone, Debug)]
pub struct NodeInfo<T: Element> {
    /// The node's id (its position on the tape).
    pub id: usize,
    /// The op's name (`"leaf"`, `"constant"`, `"tanh"`, `"matmul"`...).
    pub op: String,
    /// Ids of the inputs.
    pub inputs: Vec<usize>,
    /// The value computed by the forward pass.
    pub value: Tensor<T>,
    /// Whether a gradient flows through this node.
    pub requires_grad: bool,
    /// The scope it was recorded in ([`Tape::scoped`]) or the name given to it.
    pub label: Option<String>,
}

/// What a recorded reverse sweep ([`Tape::sweep_recorded`]) leaves behind.
pub(crate) struct RecordedSweep<'t, T: Element> {
    /// Indexed `i − lowest` over the nodes `lowest..=out`: the gradients the sweep left
    /// at leaves and constants (it consumed every other node's).
    pub(crate) grads: Vec<Option<Var<'t, T>>>,
    /// The gradients that flowed into nodes below `lowest`, summed per node.
    pub(crate) below: Vec<(u32, Var<'t, T>)>,
    /// With `leaf_tangents_only`: the tangents of the parts products passed to leaves,
    /// indexed like `grads` (empty when there were none), to be added to the tangents of
    /// `grads`.
    pub(crate) leaf_tangents: Vec<Option<Tensor<T>>>,
}

impl<T: Element> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> Tape<T> {
    /// An empty tape.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty tape with room for `n` nodes.
    pub fn with_capacity(n: usize) -> Self {
        Tape {
            nodes: RefCell::new(Vec::with_capacity(n)),
            grad_enabled: Cell::new(true),
            scratch: RefCell::new(Vec::new()),
            scope: Cell::new(0),
            scope_names: RefCell::new(Vec::new()),
            labels: RefCell::new(Default::default()),
            detect_anomaly: Cell::new(false),
            tangents: RefCell::new(None),
            tangent_error: RefCell::new(None),
            generation: Cell::new(next_generation()),
            spare: RefCell::new(Vec::new()),
        }
    }

    /// A leaf that receives a gradient (an input or a parameter).
    pub fn var(&self, value: Tensor<T>) -> Var<'_, T> {
        self.push_raw(Op::Leaf, Inputs::new(), value, true)
    }

    /// A leaf without a gradient (data, labels, masks).
    pub fn constant(&self, value: Tensor<T>) -> Var<'_, T> {
        self.push_raw(Op::Constant, Inputs::new(), value, false)
    }

    /// A 0-d constant.
    pub fn scalar(&self, v: f64) -> Var<'_, T> {
        self.constant(Tensor::scalar(T::of(v)))
    }

    /// Runs `f` without recording gradients: every value it computes is stored as a
    /// constant, so nothing can be differentiated through it.
    pub fn no_grad<R>(&self, f: impl FnOnce() -> R) -> R {
        // restored by a guard, so that a panic caught by the caller leaves the mode as it was
        let _restore = Restore(&self.grad_enabled, self.grad_enabled.replace(false));
        f()
    }

    /// The tape's current generation ([`Tape::clear`] renews it).
    pub(super) fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every node, keeping the arena's memory for the next step: the node list
    /// and the buffers of the values that nothing else holds, which the next step's
    /// ops write into (drop the tape to free them). Taking `&mut` guarantees that no
    /// handle into the old graph survives.
    /// Clearing a tape with nothing recorded keeps the buffers of the last clear (the
    /// trainer clears before each step and after it).
    pub fn clear(&mut self) {
        self.generation.set(next_generation());
        let nodes = self.nodes.get_mut();
        if !nodes.is_empty() {
            let spare = self.spare.get_mut();
            spare.clear();
            spare.extend(nodes.drain(..).map(|node| node.value.into_unique_buffer()));
        }
        self.labels.get_mut().clear();
        if let Some(t) = self.tangents.get_mut() {
            t.clear();
        }
        *self.tangent_error.get_mut() = None;
    }

    /// A tape in forward mode: every recorded node also gets its tangent (directional
    /// derivative), computed by the op's forward rule as the node is recorded, so one
    /// pass gives both the outputs and `J·v`. Seed inputs with [`Tape::dual`].
    pub fn forward_mode() -> Self {
        let tape = Self::new();
        *tape.tangents.borrow_mut() = Some(Vec::new());
        tape
    }

    /// An input with a tangent (forward mode); an input made with [`Tape::var`] has a
    /// zero tangent.
    pub fn dual(&self, value: Tensor<T>, tangent: Tensor<T>) -> Result<Var<'_, T>> {
        if value.shape() != tangent.shape() {
            return Err(Error::shape("dual", value.shape(), tangent.shape()));
        }
        if self.tangents.borrow().is_none() {
            return Err(Error::invalid(
                "dual",
                "this tape is not in forward mode; create it with Tape::forward_mode()",
            ));
        }
        let v = self.var(value);
        if let Some(t) = self.tangents.borrow_mut().as_mut() {
            t[v.id as usize] = Some(tangent);
        }
        Ok(v)
    }

    /// The first forward rule that failed on this tape, as an error (every tangent after
    /// it is unreliable).
    fn tangent_fault(&self) -> Result<()> {
        match self.tangent_error.borrow().as_ref() {
            Some(TangentFault::NoRule(op)) => Err(Error::NoRule { op: op.clone() }),
            Some(TangentFault::Failed(msg)) => Err(Error::invalid("jvp", msg.clone())),
            None => Ok(()),
        }
    }

    /// The tangent of node `id` (zeros if no tangent reached it).
    pub(crate) fn tangent_of(&self, id: u32) -> Result<Tensor<T>> {
        self.tangent_fault()?;
        let tangents = self.tangents.borrow();
        let t = tangents.as_ref().ok_or_else(|| {
            Error::invalid(
                "tangent",
                "this tape is not in forward mode; create it with Tape::forward_mode()",
            )
        })?;
        Ok(match &t[id as usize] {
            Some(t) => t.clone(),
            None => Tensor::zeroed(self.nodes.borrow()[id as usize].value.shape()),
        })
    }

    /// A description of every node in recording (topological) order.
    pub fn nodes(&self) -> Vec<NodeInfo<T>> {
        let labels = self.labels.borrow();
        let scopes = self.scope_names.borrow();
        self.nodes
            .borrow()
            .iter()
            .enumerate()
            .map(|(id, n)| NodeInfo {
                id,
                op: n.op.name().to_string(),
                inputs: n.inputs.iter().map(|&i| i as usize).collect(),
                value: n.value.clone(),
                requires_grad: n.requires_grad,
                label: labels
                    .get(&(id as u32))
                    .cloned()
                    .or_else(|| (n.scope > 0).then(|| scopes[n.scope as usize - 1].clone())),
            })
            .collect()
    }

    /// Records everything `f` does under the scope `name` (a layer, say), so exported
    /// graphs can group its nodes.
    pub fn scoped<R>(&self, name: &str, f: impl FnOnce() -> R) -> R {
        let index = {
            let mut scopes = self.scope_names.borrow_mut();
            match scopes.iter().position(|s| s == name) {
                Some(i) => i + 1,
                None => {
                    scopes.push(name.to_string());
                    scopes.len()
                }
            }
        };
        let before = self.scope.replace(u16::try_from(index).unwrap_or(u16::MAX));
        let _restore = Restore(&self.scope, before);
        f()
    }

    /// Names a node (a parameter, say) for printed and exported graphs.
    pub fn set_label(&self, v: Var<'_, T>, label: impl Into<String>) {
        self.labels.borrow_mut().insert(v.id, label.into());
    }

    /// With `on`, a backward pass that produces NaN or infinity fails with an error naming
    /// the first op (in forward order) whose reverse rule produced it, with its input
    /// shapes and value ranges.
    pub fn set_detect_anomaly(&self, on: bool) {
        self.detect_anomaly.set(on);
    }

    /// Runs `f` on the recorded nodes.
    pub(crate) fn with_nodes<R>(&self, f: impl FnOnce(&[Node<T>]) -> R) -> R {
        f(&self.nodes.borrow())
    }

    /// Runs `f` on a node's value without cloning it.
    pub(crate) fn with_value<R>(&self, id: u32, f: impl FnOnce(&Tensor<T>) -> R) -> R {
        f(&self.nodes.borrow()[id as usize].value)
    }

    /// For each input u of a one-element node v: (u's id, ∂v/∂u, the rule as a formula),
    /// computed by v's own reverse rule seeded with 1 — the numbers backward uses.
    pub fn local_derivatives(&self, id: usize) -> Result<Vec<(usize, f64, String)>> {
        let nodes = self.nodes.borrow();
        let node = &nodes[id];
        if node.value.len() != 1 {
            return Err(Error::invalid(
                "local_derivatives",
                format!(
                    "node {id} has shape {:?}; only one-element nodes have scalar edges",
                    node.value.shape()
                ),
            ));
        }
        let ins: Vec<&Tensor<T>> = node
            .inputs
            .iter()
            .map(|&j| &nodes[j as usize].value)
            .collect();
        if ins.iter().any(|t| t.len() != 1) {
            return Err(Error::invalid(
                "local_derivatives",
                format!("an input of node {id} is not a single element"),
            ));
        }
        let needs = vec![true; ins.len()];
        let seed = Tensor::filled(node.value.shape(), num_traits::one());
        let parts = node.op.vjp(&ins, &node.value, &seed, &needs)?;
        Ok(node
            .inputs
            .iter()
            .zip(parts)
            .enumerate()
            .map(|(k, (&j, g))| {
                (
                    j as usize,
                    g.map(|g| g.data()[0].as_f64()).unwrap_or(0.0),
                    node.op.derivative_formula(k),
                )
            })
            .collect())
    }

    /// The buffer of the node at the position about to be recorded in the last step
    /// ([`Tape::clear`]), if nothing outside the tape held it: an op writes its value
    /// over it ([`Tensor::overwrite`] checks the shape) instead of allocating one.
    pub(crate) fn take_spare(&self) -> Option<Tensor<T>> {
        let id = self.nodes.borrow().len();
        let buffer = self.spare.borrow_mut().get_mut(id).and_then(Option::take);
        buffer.map(Tensor::from_buffer)
    }

    /// The value of the node about to be recorded, of shape `shape` (valid: an input's,
    /// or checked), written by `fill`, which must write every element: it receives the
    /// spare buffer of its position ([`Tape::take_spare`]) when that has the shape,
    /// fresh zeros otherwise.
    pub(crate) fn build_value(&self, shape: &[usize], fill: impl FnOnce(&mut [T])) -> Tensor<T> {
        let id = self.nodes.borrow().len();
        let buffer = self.spare.borrow_mut().get_mut(id).and_then(Option::take);
        match buffer {
            Some(buffer) => Tensor::build_over(buffer, shape, fill),
            None => Tensor::build(shape, fill),
        }
    }

    pub(crate) fn value_of(&self, id: u32) -> Tensor<T> {
        self.nodes.borrow()[id as usize].value.clone()
    }

    // inlined into each op: through a call, the op, its inputs and its value went
    // through memory once more on their way into the node (557 against 590
    // instructions per recorded op under callgrind)
    #[inline(always)]
    pub(crate) fn push_raw(
        &self,
        op: Op<T>,
        inputs: Inputs,
        value: Tensor<T>,
        leaf_grad: bool,
    ) -> Var<'_, T> {
        let mut nodes = self.nodes.borrow_mut();
        let id = u32::try_from(nodes.len()).expect("a tape holds at most 2^32 nodes");
        if let Some(tangents) = self.tangents.borrow_mut().as_mut() {
            self.push_tangent(&nodes, tangents, &op, &inputs, &value);
        }
        let requires_grad = self.grad_enabled.get()
            && (leaf_grad || inputs.iter().any(|&i| nodes[i as usize].requires_grad));
        let constant = !requires_grad && !matches!(op, Op::Leaf);
        let scope = self.scope.get();
        let len = nodes.len();
        nodes.reserve(1);
        let slot = nodes.spare_capacity_mut()[0].as_mut_ptr();
        // The node's fields are written into the list one by one: a `Node` built first
        // and pushed went through the stack, where copying it reloaded fields that
        // narrower stores had just written (a stalled store-to-load forwarding, a
        // third of recording a node under `perf`).
        // The pattern after the block lists `Node`'s fields: it stops compiling when one is
        // added, which must then be written here too.
        // SAFETY: `reserve(1)` made room for `slot`, the first spare slot, which nothing
        // else refers to; the writes fill every field, so `len + 1` nodes are initialised.
        unsafe {
            (&raw mut (*slot).op).write(op);
            (&raw mut (*slot).inputs).write(inputs);
            (&raw mut (*slot).value).write(value);
            (&raw mut (*slot).requires_grad).write(requires_grad);
            (&raw mut (*slot).scope).write(scope);
            nodes.set_len(len + 1);
        }
        let _every_field_written = |node: Node<T>| {
            let Node {
                op: _,
                inputs: _,
                value: _,
                requires_grad: _,
                scope: _,
            } = node;
        };
        if constant {
            // nothing to differentiate: the node keeps neither its op nor its inputs
            // (patched after the push, so that the common node is written as it came)
            let node = nodes.last_mut().expect("just pushed");
            node.op = Op::Constant;
            node.inputs = Inputs::new();
        }
        Var { tape: self, id }
    }

    /// Forward mode: appends the tangent of the node being recorded (out of line: a
    /// reverse-mode tape records without it, and inlined it made every record's stack
    /// frame ten times larger).
    #[inline(never)]
    fn push_tangent(
        &self,
        nodes: &[Node<T>],
        tangents: &mut Vec<Option<Tensor<T>>>,
        op: &Op<T>,
        inputs: &Inputs,
        value: &Tensor<T>,
    ) {
        let t = self.forward_rule(nodes, tangents, op, inputs, value);
        tangents.push(t);
    }

    /// The tangent of a node being recorded, from its inputs' tangents.
    fn forward_rule(
        &self,
        nodes: &[Node<T>],
        tangents: &[Option<Tensor<T>>],
        op: &Op<T>,
        inputs: &Inputs,
        value: &Tensor<T>,
    ) -> Option<Tensor<T>> {
        if matches!(op, Op::Leaf | Op::Constant) {
            return None;
        }
        let ts: SmallVec<[Option<&Tensor<T>>; 2]> = inputs
            .iter()
            .map(|&i| tangents[i as usize].as_ref())
            .collect();
        if ts.iter().all(Option::is_none) {
            return None;
        }
        let ins: SmallVec<[&Tensor<T>; 2]> =
            inputs.iter().map(|&i| &nodes[i as usize].value).collect();
        match op.jvp(&ins, value, &ts) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut fault = self.tangent_error.borrow_mut();
                // a rule that failed outranks a missing one found earlier: the check must
                // not report "skipped" while a broken rule sits in another branch
                if matches!(*fault, Some(TangentFault::NoRule(_)))
                    && !matches!(e, Error::NoRule { .. })
                {
                    *fault = None;
                }
                fault.get_or_insert_with(|| match e {
                    Error::NoRule { op, .. } => TangentFault::NoRule(op),
                    e => TangentFault::Failed(format!("node {} ({}): {e}", nodes.len(), op.name())),
                });
                None
            }
        }
    }

    /// Records the result of an op on `inputs`.
    #[inline(always)]
    pub(crate) fn push(&self, op: Op<T>, inputs: &[Var<'_, T>], value: Tensor<T>) -> Var<'_, T> {
        // the public ops with several inputs refuse variables of other tapes first
        // (`Tape::check_inputs`): this only guards the crate's own calls
        assert!(
            inputs.iter().all(|v| std::ptr::eq(v.tape, self)),
            "variables from different tapes were combined"
        );
        self.push_raw(op, input_ids(inputs), value, false)
    }

    /// An error naming `op` when one of `inputs` belongs to another tape.
    pub(crate) fn check_inputs(op: &'static str, inputs: &[Var<'_, T>]) -> Result<()> {
        match inputs.split_first() {
            Some((first, rest)) if rest.iter().any(|v| !std::ptr::eq(v.tape, first.tape)) => {
                Err(Error::OtherTape { op })
            }
            _ => Ok(()),
        }
    }
}

/// The ids of a node's inputs, the common one and two written in place (collecting them
/// through an iterator costs as much as the rest of recording a unary node).
#[inline(always)]
fn input_ids<T: Element>(vars: &[Var<'_, T>]) -> Inputs {
    match vars {
        [a] => Inputs::from_buf_and_len([a.id, 0], 1),
        [a, b] => Inputs::from_buf([a.id, b.id]),
        _ => vars.iter().map(|v| v.id).collect(),
    }
}

impl<'t, T: Element> Var<'t, T> {
    /// The value computed by the forward pass (a cheap reference-counted copy).
    pub fn value(&self) -> Tensor<T> {
        self.tape.value_of(self.id)
    }

    /// The value's shape.
    pub fn shape(&self) -> crate::tensor::Shape {
        crate::tensor::Shape::from_slice(self.tape.nodes.borrow()[self.id as usize].value.shape())
    }

    /// The tangent carried by forward mode (zeros if none reached this value).
    pub fn tangent(&self) -> Result<Tensor<T>> {
        self.tape.tangent_of(self.id)
    }

    /// The node id on the tape.
    pub fn id(&self) -> usize {
        self.id as usize
    }

    /// The tape this variable lives on.
    pub fn tape(&self) -> &'t Tape<T> {
        self.tape
    }

    /// The single value of a one-element variable.
    pub fn item(&self) -> Result<T> {
        self.tape.nodes.borrow()[self.id as usize].value.item()
    }
}

impl<T: Element> fmt::Debug for Var<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Var#{} {:?}", self.id, self.value())
    }
}

/// Puts a cell's value back when dropped: on return and on unwinding alike.
struct Restore<'a, V: Copy>(&'a std::cell::Cell<V>, V);

impl<V: Copy> Drop for Restore<'_, V> {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_taken_gradient_is_gone() {
        let tape = Tape::<f64>::new();
        let x = tape.var(Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
        let mut g = tape.backward(x.mul(x).unwrap().sum_all()).unwrap();
        assert_eq!(g.take(x).unwrap().unwrap().data(), &[2.0, 4.0]);
        assert!(g.get(x).unwrap().is_none() && g.take(x).unwrap().is_none());
        assert_eq!(g.wrt(x).unwrap().data(), &[0.0, 0.0]);
        assert_eq!(g.iter().count(), 0);
    }

    #[test]
    fn no_grad_and_scoped_are_undone_when_their_closure_panics() {
        let tape = Tape::<f64>::new();
        let x = tape.var(Tensor::from_vec(vec![1.0], &[1]).unwrap());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tape.no_grad(|| tape.scoped("block", || panic!("a user's closure")))
        }));
        assert!(caught.is_err());
        // recording again, and outside any scope
        let y = x.mul_scalar(2.0);
        assert!(tape.len() == 2 && tape.backward(y.sum_all()).is_ok());
        assert_eq!(tape.scope.get(), 0);
    }
    use super::*;

    /// Every node is as large as the largest op's record, and the sweep walks all of
    /// them: ops that keep more (attention, convolution, pooling) box it.
    #[test]
    fn nodes_stay_small() {
        assert!(std::mem::size_of::<Op<f32>>() <= 32);
        assert!(std::mem::size_of::<Node<f64>>() <= 120);
    }

    #[test]
    fn input_ids_keep_order_for_any_count() {
        let tape = Tape::<f64>::new();
        let vars: Vec<_> = (0..4).map(|_| tape.var(Tensor::scalar(1.0))).collect();
        for n in 0..=4 {
            let ids = input_ids(&vars[..n]);
            assert_eq!(ids.as_slice(), &[0, 1, 2, 3][..n]);
        }
    }

    /// One step of a small model, its loss and its gradients, for the recycling test.
    fn step(tape: &Tape<f64>, x: &Tensor<f64>, w: &Tensor<f64>) -> (Tensor<f64>, Vec<f64>) {
        let (xv, wv) = (tape.constant(x.clone()), tape.var(w.clone()));
        let h = xv.matmul(wv).unwrap().tanh();
        let y = h.mul(h).unwrap().add_scalar(0.5).sum_all();
        let g = tape.backward(y).unwrap();
        (h.value(), g.wrt(wv).unwrap().to_vec())
    }

    /// A cleared tape writes the next step's values over the buffers of the last one
    /// (`Tape::clear`): the results are those of a fresh tape, bit for bit, when the
    /// shapes repeat and when they change, and a value held outside the tape across a
    /// clear is never written over.
    #[test]
    fn recycled_buffers_give_a_fresh_tapes_results_and_spare_held_values() {
        let w =
            Tensor::from_vec((0..12).map(|i| (i as f64 * 0.37).sin()).collect(), &[4, 3]).unwrap();
        let input = |rows: usize, seed: f64| {
            let data = (0..rows * 4).map(|i| (i as f64 * seed).cos()).collect();
            Tensor::from_vec(data, &[rows, 4]).unwrap()
        };
        let mut tape = Tape::<f64>::new();
        let (held, _) = step(&tape, &input(2, 0.3), &w);
        let held_copy = held.to_vec();
        for (rows, seed) in [(2, 0.7), (2, 1.1), (5, 0.2), (2, 0.9)] {
            tape.clear();
            let x = input(rows, seed);
            let (h, g) = step(&tape, &x, &w);
            let (h_fresh, g_fresh) = step(&Tape::new(), &x, &w);
            assert_eq!(h.to_vec(), h_fresh.to_vec());
            assert_eq!(g, g_fresh);
        }
        assert_eq!(held.to_vec(), held_copy);
    }

    #[test]
    fn clearing_an_empty_tape_keeps_the_buffers_of_the_last_step() {
        let mut tape = Tape::<f64>::new();
        let x = tape.var(Tensor::from_vec(vec![0.5, -1.0, 2.0], &[3]).unwrap());
        let y = x.tanh();
        assert_eq!(y.shape().as_slice(), &[3]);
        tape.clear();
        tape.clear(); // as the trainer does: after one step and before the next
        let kept = tape.take_spare().expect("the first node's buffer is kept");
        assert_eq!(kept.len(), 3);
    }

    /// A recycled buffer with the new node's number of elements but another shape is
    /// written over and takes the new shape.
    #[test]
    fn a_recycled_buffer_takes_the_shape_of_its_new_node() {
        let data: Vec<f64> = (0..12).map(|i| i as f64 * 0.5 - 2.0).collect();
        let mut tape = Tape::<f64>::new();
        for shape in [[2, 6], [3, 4], [12, 1], [3, 4]] {
            tape.clear();
            let x = tape.var(Tensor::from_vec(data.clone(), &shape).unwrap());
            let w = tape.var(Tensor::from_vec(data[..shape[1]].to_vec(), &[shape[1], 1]).unwrap());
            let y = x.tanh().mul_scalar(3.0);
            let z = y.matmul(w).unwrap();
            assert_eq!(y.shape().as_slice(), &shape);
            assert_eq!(z.shape().as_slice(), &[shape[0], 1]);
            let want: Vec<f64> = data.iter().map(|v| v.tanh() * 3.0).collect();
            assert_eq!(y.value().to_vec(), want);
            let g = tape.backward(z.sum_all()).unwrap();
            assert_eq!(g.wrt(x).unwrap().shape(), &shape);
        }
    }
}
