//! The reverse sweeps: first order (`backward`, one pass down the tape, each node's
//! reverse rule handing its gradient to its inputs), recorded (the sweep's own ops put
//! on the tape, so that gradients can be differentiated again) and the tangents of
//! gradients (forward over reverse).

use super::{Node, RecordedSweep, Tape, Var};
use crate::autodiff::Gradients;
use crate::autodiff::ops::Op;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use smallvec::SmallVec;
use std::cell::RefMut;

impl<T: Element> Tape<T> {
    /// Gradients of a one-element `output` with respect to every leaf that requires one.
    pub fn backward(&self, output: Var<'_, T>) -> Result<Gradients<T>> {
        let value = output.value();
        if value.len() != 1 {
            return Err(Error::invalid(
                "backward",
                format!(
                    "the output must hold one element, got shape {:?}; use backward_with to seed a tensor output",
                    value.shape()
                ),
            ));
        }
        self.backward_with(output, Tensor::filled(value.shape(), num_traits::one()))
    }

    /// Reverse sweep seeded with `seed` (shaped like `output`): returns `seedᵀ·J` for every
    /// leaf, i.e. a vector-Jacobian product.
    pub fn backward_with(&self, output: Var<'_, T>, seed: Tensor<T>) -> Result<Gradients<T>> {
        self.sweep(output, seed, false)
    }

    /// The gradients of a one-element `output` with respect to `wrt`, as variables on
    /// this tape: the reverse sweep records its own ops (PyTorch's `create_graph=True`),
    /// so the gradients can be differentiated again. On a [forward-mode
    /// tape](Tape::forward_mode) each gradient's tangent is then a Hessian-vector
    /// product (forward over reverse). A gradient that nothing reaches is a zero
    /// constant.
    pub fn backward_recorded(
        &self,
        output: Var<'_, T>,
        wrt: &[Var<'_, T>],
    ) -> Result<Vec<Var<'_, T>>> {
        self.check_recorded_sweep("backward_recorded", output, wrt)?;
        let seed = self.constant(Tensor::filled(&output.shape(), num_traits::one()));
        let grads = self.sweep_recorded(output.id, seed, 0, false)?.grads;
        Ok(wrt
            .iter()
            .map(|v| match grads.get(v.id as usize).copied().flatten() {
                Some(g) => g,
                None => self.constant(Tensor::zeroed(&v.shape())),
            })
            .collect())
    }

    /// On a [forward-mode tape](Tape::forward_mode): the tangents of the gradients of a
    /// one-element `output` with respect to `wrt`, which are Hessian-vector products
    /// when the inputs carry `v` as their tangents, without the gradients themselves.
    /// The same numbers as the tangents of [`backward_recorded`](Self::backward_recorded)'s
    /// gradients, less the work only the gradients' values need: a product passes each
    /// leaf just the tangent of its part (for the W1 MLP, the values of `∂L/∂W` are never
    /// multiplied out). Lanczos and conjugate gradients, which use H·v alone, call this.
    pub fn backward_tangents(
        &self,
        output: Var<'_, T>,
        wrt: &[Var<'_, T>],
    ) -> Result<Vec<Tensor<T>>> {
        self.check_recorded_sweep("backward_tangents", output, wrt)?;
        if self.tangents.borrow().is_none() {
            return Err(Error::invalid(
                "backward_tangents",
                "this tape is not in forward mode; create it with Tape::forward_mode()",
            ));
        }
        let seed = self.constant(Tensor::filled(&output.shape(), num_traits::one()));
        let sweep = self.sweep_recorded(output.id, seed, 0, true)?;
        // a forward rule that failed, before or during the sweep, left tangents missing
        self.tangent_fault()?;
        wrt.iter()
            .map(|v| {
                let id = v.id as usize;
                let recorded = sweep.grads.get(id).copied().flatten();
                let direct = sweep.leaf_tangents.get(id).cloned().flatten();
                match (recorded, direct) {
                    (Some(g), Some(t)) => g.tangent()?.add(&t),
                    (Some(g), None) => g.tangent(),
                    (None, Some(t)) => Ok(t),
                    (None, None) => Ok(Tensor::zeroed(&v.shape())),
                }
            })
            .collect()
    }

    /// The checks shared by the recorded sweeps: one tape, a one-element output.
    fn check_recorded_sweep(
        &self,
        op: &'static str,
        output: Var<'_, T>,
        wrt: &[Var<'_, T>],
    ) -> Result<()> {
        if !(std::ptr::eq(output.tape, self) && wrt.iter().all(|v| std::ptr::eq(v.tape, self))) {
            return Err(Error::OtherTape { op });
        }
        let shape = output.shape();
        if shape.iter().product::<usize>() != 1 {
            return Err(Error::invalid(
                op,
                format!("the output must hold one element, got shape {shape:?}"),
            ));
        }
        Ok(())
    }

    /// The recorded reverse sweep from node `out`, seeded with `seed`, over the nodes
    /// `lowest..=out` only (the nodes it records come after them). With
    /// `leaf_tangents_only` (on a forward-mode tape), a product passes each leaf only the
    /// tangent of its part (see [`Self::multilinear_leaf_tangents`]), not a recorded part.
    pub(crate) fn sweep_recorded<'t>(
        &'t self,
        out: u32,
        seed: Var<'t, T>,
        lowest: u32,
        leaf_tangents_only: bool,
    ) -> Result<RecordedSweep<'t, T>> {
        let (out, lowest) = (out as usize, lowest as usize);
        let mut grads: Vec<Option<Var<'t, T>>> = vec![None; out + 1 - lowest];
        let mut leaf_tangents: Vec<Option<Tensor<T>>> = Vec::new();
        let mut below: Vec<(u32, Var<'t, T>)> = Vec::new();
        grads[out - lowest] = Some(seed);
        for i in (lowest..=out).rev() {
            let Some(g) = grads[i - lowest].take() else {
                continue;
            };
            let (op, inputs, mut needs, leaves) = {
                let nodes = self.nodes.borrow();
                let node = &nodes[i];
                if matches!(node.op, Op::Leaf | Op::Constant) {
                    grads[i - lowest] = Some(g);
                    continue;
                }
                let needs: SmallVec<[bool; 2]> = node
                    .inputs
                    .iter()
                    .map(|&j| nodes[j as usize].requires_grad)
                    .collect();
                let leaves: SmallVec<[bool; 2]> = node
                    .inputs
                    .iter()
                    .zip(&needs)
                    .map(|(&j, &need)| {
                        leaf_tangents_only
                            && need
                            && j as usize >= lowest
                            && node.op.is_multilinear()
                            && matches!(nodes[j as usize].op, Op::Leaf)
                    })
                    .collect();
                (node.op.clone(), node.inputs.clone(), needs, leaves)
            };
            if leaves.contains(&true) {
                let parts =
                    self.multilinear_leaf_tangents(&op, &inputs, i as u32, g.id, &leaves)?;
                leaf_tangents.resize(out + 1 - lowest, None);
                let leaf_parts = inputs.iter().zip(parts).zip(needs.iter_mut()).zip(&leaves);
                for (((&j, part), need), &leaf) in leaf_parts {
                    *need &= !leaf; // a leaf's part without a tangent is zero: nothing to add
                    let Some(t) = part else { continue };
                    let slot = &mut leaf_tangents[j as usize - lowest];
                    *slot = Some(match slot.take() {
                        None => t,
                        Some(prev) => prev.add(&t)?,
                    });
                }
                if !needs.contains(&true) {
                    continue;
                }
            }
            let ins: SmallVec<[Var<'t, T>; 2]> =
                inputs.iter().map(|&j| Var { tape: self, id: j }).collect();
            let parts = op.vjp_recorded(
                &ins,
                Var {
                    tape: self,
                    id: i as u32,
                },
                g,
                &needs,
            )?;
            for ((&j, part), &need) in inputs.iter().zip(parts).zip(&needs) {
                let (Some(c), true) = (part, need) else {
                    continue;
                };
                if j as usize >= lowest {
                    let slot = &mut grads[j as usize - lowest];
                    *slot = Some(match slot.take() {
                        None => c,
                        Some(prev) => prev.add(c)?,
                    });
                } else if let Some((_, prev)) = below.iter_mut().find(|(id, _)| *id == j) {
                    *prev = prev.add(c)?;
                } else {
                    below.push((j, c));
                }
            }
        }
        Ok(RecordedSweep {
            grads,
            below,
            leaf_tangents,
        })
    }

    /// The tangents of the parts that node `i`, a product, passes to the inputs marked in
    /// `leaves`, from the op's first-order rule alone. A product's part for input `j` is
    /// linear in the gradient `g` and in each other input and does not depend on input
    /// `j` itself, so its tangent is the part with `g` replaced by `ġ`, plus, for each
    /// other input `k` with a tangent, the part with input `k` replaced by its tangent;
    /// the part's own value, which only the gradient needs, is never formed.
    fn multilinear_leaf_tangents(
        &self,
        op: &Op<T>,
        inputs: &[u32],
        i: u32,
        g: u32,
        leaves: &[bool],
    ) -> Result<SmallVec<[Option<Tensor<T>>; 2]>> {
        let values: SmallVec<[Tensor<T>; 2]> = inputs.iter().map(|&j| self.value_of(j)).collect();
        let (out, g_value) = (self.value_of(i), self.value_of(g));
        let tangent = |id: u32| -> Option<Tensor<T>> {
            self.tangents.borrow().as_ref()?.get(id as usize)?.clone()
        };
        let mut total: SmallVec<[Option<Tensor<T>>; 2]> = inputs.iter().map(|_| None).collect();
        let mut add = |parts: crate::autodiff::ops::Grads<T>, mask: &[bool]| -> Result<()> {
            for ((slot, part), &wanted) in total.iter_mut().zip(parts).zip(mask) {
                if let (Some(p), true) = (part, wanted) {
                    *slot = Some(match slot.take() {
                        None => p,
                        Some(prev) => prev.add(&p)?,
                    });
                }
            }
            Ok(())
        };
        let refs: SmallVec<[&Tensor<T>; 2]> = values.iter().collect();
        if let Some(g_tangent) = tangent(g) {
            add(op.vjp(&refs, &out, &g_tangent, leaves)?, leaves)?;
        }
        for (k, &input) in inputs.iter().enumerate() {
            let Some(t) = tangent(input) else { continue };
            let mut mask: SmallVec<[bool; 2]> = leaves.into();
            mask[k] = false;
            if mask.contains(&true) {
                let with_tangent: SmallVec<[&Tensor<T>; 2]> = refs
                    .iter()
                    .enumerate()
                    .map(|(m, &x)| if m == k { &t } else { x })
                    .collect();
                add(op.vjp(&with_tangent, &out, &g_value, &mask)?, &mask)?;
            }
        }
        Ok(total)
    }

    /// Like [`backward`](Self::backward) but keeps the gradient of every node, not only
    /// of the leaves (for inspection and export).
    pub fn backward_keep_all(&self, output: Var<'_, T>) -> Result<Gradients<T>> {
        let shape = output.shape();
        self.sweep(output, Tensor::filled(&shape, num_traits::one()), true)
    }

    fn sweep(&self, output: Var<'_, T>, seed: Tensor<T>, keep_all: bool) -> Result<Gradients<T>> {
        if !std::ptr::eq(output.tape, self) {
            return Err(Error::OtherTape { op: "backward" });
        }
        let nodes = self.nodes.borrow();
        let out = output.id as usize;
        if seed.shape() != nodes[out].value.shape() {
            return Err(Error::shape(
                "backward_with",
                nodes[out].value.shape(),
                seed.shape(),
            ));
        }
        // Every slot is None between sweeps (a sweep takes each gradient it reaches, and
        // one that fails or panics empties the vector), so the slots need neither
        // dropping nor rewriting: two passes over 56 bytes per node saved.
        let mut grads = Scratch {
            slots: self.scratch.borrow_mut(),
            complete: false,
        };
        if grads.slots.len() <= out {
            grads.slots.resize(out + 1, None);
        }
        if nodes[out].requires_grad {
            grads.slots[out] = Some(seed);
        }
        let anomaly = self.detect_anomaly.get();
        let kept = Self::sweep_nodes(&nodes, out, &mut grads.slots, keep_all, anomaly)?;
        grads.complete = true;
        Ok(Gradients::new(kept, self.generation.get()))
    }

    /// The reverse sweep of [`Tape::sweep`] from `out` down over the nodes: the gradients
    /// of the leaves (of every node with `keep_all`), in id order.
    fn sweep_nodes(
        nodes: &[Node<T>],
        out: usize,
        grads: &mut [Option<Tensor<T>>],
        keep_all: bool,
        anomaly: bool,
    ) -> Result<Vec<(u32, Tensor<T>)>> {
        let mut kept: Vec<(u32, Tensor<T>)> = Vec::new();
        let mut culprit: Option<usize> = None;
        let mut input_values: SmallVec<[&Tensor<T>; 2]> = SmallVec::new();
        let mut needs: SmallVec<[bool; 2]> = SmallVec::new();
        for i in (0..=out).rev() {
            let node = &nodes[i];
            if let (Op::Unary(u), false, Some(g)) = (&node.op, keep_all, &mut grads[i]) {
                // the most common node: one input, its gradient written over the one it
                // received, which becomes the input's gradient. Worked on in its slot
                // and swapped down rather than moved out and back: the moves reloaded
                // the tensor with wide loads straight after the narrower stores that
                // wrote it (a stalled store-to-load forwarding, half of the sweep)
                let j = node.inputs[0] as usize;
                let seed_finite = anomaly && g.all_finite();
                u.scale_by_derivative_in_place(&nodes[j].value, &node.value, g);
                if seed_finite && culprit.is_none_or(|k| i < k) && !g.all_finite() {
                    culprit = Some(i);
                }
                if grads[j].is_none() {
                    grads.swap(i, j);
                } else if let Some(g) = grads[i].take() {
                    accumulate(&mut grads[j], g)?;
                }
                continue;
            }
            let Some(g) = grads[i].take() else { continue };
            if matches!(node.op, Op::Leaf) {
                kept.push((i as u32, g));
                continue;
            }
            if let Op::Unary(u) = &node.op {
                // kept: the input's gradient goes to a new buffer
                let j = node.inputs[0] as usize;
                let c = u.scale_by_derivative(&nodes[j].value, &node.value, &g);
                if anomaly && culprit.is_none_or(|k| i < k) && g.all_finite() && !c.all_finite() {
                    culprit = Some(i);
                }
                kept.push((i as u32, g));
                accumulate(&mut grads[j], c)?;
                continue;
            }
            input_values.clear();
            input_values.extend(node.inputs.iter().map(|&j| &nodes[j as usize].value));
            needs.clear();
            needs.extend(node.inputs.iter().map(|&j| nodes[j as usize].requires_grad));
            let contributions = node.op.vjp(&input_values, &node.value, &g, &needs)?;
            if anomaly
                && culprit.is_none_or(|k| i < k)
                && g.all_finite()
                && contributions.iter().flatten().any(|c| !c.all_finite())
            {
                culprit = Some(i);
            }
            for ((&j, contribution), &need) in node.inputs.iter().zip(contributions).zip(&needs) {
                if let (Some(c), true) = (contribution, need) {
                    accumulate(&mut grads[j as usize], c)?;
                }
            }
            if keep_all {
                kept.push((i as u32, g));
            }
        }
        if let Some(k) = culprit {
            return Err(anomaly_report(nodes, k));
        }
        kept.reverse();
        Ok(kept)
    }
}

/// The sweep's gradient slots, emptied on the way out unless the sweep completed: one
/// that returned an error or panicked (in a user's [`CustomOp`](crate::autodiff::CustomOp)
/// rule, say) would otherwise leave gradients behind for the next sweep to add to.
struct Scratch<'a, T: Element> {
    slots: RefMut<'a, Vec<Option<Tensor<T>>>>,
    complete: bool,
}

impl<T: Element> Drop for Scratch<'_, T> {
    fn drop(&mut self) {
        if !self.complete {
            self.slots.clear();
        }
    }
}

/// Describes the node whose reverse rule turned finite gradients into NaN or infinity.
fn anomaly_report<T: Element>(nodes: &[Node<T>], k: usize) -> Error {
    let range = |t: &Tensor<T>| {
        let nan = t.data().iter().filter(|v| v.is_nan()).count();
        if nan == t.len() {
            return format!("{:?} all NaN", t.shape());
        }
        let (lo, hi) = t
            .data()
            .iter()
            .filter(|v| !v.is_nan())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v.as_f64()), hi.max(v.as_f64()))
            });
        let nan = if nan > 0 {
            format!(" and {nan} NaN")
        } else {
            String::new()
        };
        format!("{:?} in [{lo:.4e}, {hi:.4e}]{nan}", t.shape())
    };
    let inputs: Vec<String> = nodes[k]
        .inputs
        .iter()
        .map(|&j| format!("node {j} {}", range(&nodes[j as usize].value)))
        .collect();
    Error::NonFinite(format!(
        "anomaly: the backward rule of node {k} ({}) produced NaN or infinity from a finite gradient; its inputs: {}; its output: {}",
        nodes[k].op.name(),
        inputs.join(", "),
        range(&nodes[k].value)
    ))
}

/// Adds a contribution into a gradient slot: fan-out accumulates.
#[inline(always)]
fn accumulate<T: Element>(slot: &mut Option<Tensor<T>>, c: Tensor<T>) -> Result<()> {
    match slot {
        None => *slot = Some(c),
        Some(g) => add_into(g, &c)?,
    }
    Ok(())
}

/// The second and later contributions to a gradient (kept out of line: the sweep's
/// common case is a node's first and only contribution).
#[inline(never)]
fn add_into<T: Element>(g: &mut Tensor<T>, c: &Tensor<T>) -> Result<()> {
    g.add_assign(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom op whose reverse rule fails: it returns an error, or panics when `.0`.
    struct FailingRule(bool);

    impl crate::autodiff::CustomOp<f64> for FailingRule {
        fn name(&self) -> &str {
            "failing_rule"
        }
        fn vjp(
            &self,
            _: &[&Tensor<f64>],
            _: &Tensor<f64>,
            _: &Tensor<f64>,
        ) -> Result<Vec<Tensor<f64>>> {
            assert!(!self.0, "planted panic");
            Err(Error::invalid("failing_rule", "planted failure"))
        }
    }

    /// A sweep that fails half-way, by an error or by a panic, leaves no gradient behind
    /// for the next one: the sweep's scratch slots are all empty again (a later sweep
    /// would add a stale gradient to its own).
    #[test]
    fn a_failed_sweep_leaves_nothing_for_the_next() {
        for panics in [false, true] {
            let tape = Tape::<f64>::new();
            let x = tape.var(Tensor::from_vec(vec![0.5, -1.5], &[2]).unwrap());
            let y = x.mul_scalar(2.0);
            let rule = std::sync::Arc::new(FailingRule(panics));
            let bad = Var::custom(&[y], rule, y.value()).unwrap();
            // the failing node's gradient is reached after y's has been seeded below it
            let out = bad.add(y).unwrap().sum_all();
            let sweep =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tape.backward(out)));
            assert!(matches!(sweep, Ok(Err(_))) != panics);
            let g = tape.backward(y.sum_all()).unwrap();
            assert_eq!(g.wrt(x).unwrap().to_vec(), vec![2.0, 2.0]);
        }
    }
}
