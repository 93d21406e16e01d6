//! The gradients a reverse sweep returns, looked up by the variables they belong to.

use super::Var;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use std::fmt;

/// The result of a backward sweep: one gradient per leaf that requires one.
pub struct Gradients<T: Element> {
    /// (node id, gradient), sorted by id; `None` once taken.
    grads: Vec<(u32, Option<Tensor<T>>)>,
    /// The generation of the tape swept: a `Var` of any other is refused.
    generation: u64,
}

impl<T: Element> Gradients<T> {
    /// The gradients of a sweep of the tape in `generation`, sorted by node id.
    pub(super) fn new(grads: Vec<(u32, Tensor<T>)>, generation: u64) -> Self {
        Gradients {
            grads: grads.into_iter().map(|(k, g)| (k, Some(g))).collect(),
            generation,
        }
    }

    /// The gradient with respect to `v`, or `None` if no gradient reached it; an error
    /// when `v` is a variable of another tape (or of this tape before it was cleared),
    /// whose id would name some other node.
    pub fn get(&self, v: Var<'_, T>) -> Result<Option<&Tensor<T>>> {
        self.check(v)?;
        Ok(self.by_id(v.id as usize))
    }

    /// The gradient with respect to `v`, zeros if no gradient reached it (an error for a
    /// variable of another tape, as [`get`](Self::get)).
    pub fn wrt(&self, v: Var<'_, T>) -> Result<Tensor<T>> {
        Ok(self
            .get(v)?
            .cloned()
            .unwrap_or_else(|| Tensor::zeroed(&v.shape())))
    }

    fn check(&self, v: Var<'_, T>) -> Result<()> {
        if v.tape.generation() == self.generation {
            Ok(())
        } else {
            Err(Error::OtherTape {
                op: "Gradients::get",
            })
        }
    }

    /// The gradient of the node with this id, when it was kept.
    pub fn by_id(&self, id: usize) -> Option<&Tensor<T>> {
        let i = self
            .grads
            .binary_search_by_key(&(id as u32), |(k, _)| *k)
            .ok()?;
        self.grads[i].1.as_ref()
    }

    /// Removes and returns the gradient with respect to `v` (no copy): afterwards `v` has
    /// none, as if no gradient had reached it; an error for a variable of another tape,
    /// as [`get`](Self::get).
    pub fn take(&mut self, v: Var<'_, T>) -> Result<Option<Tensor<T>>> {
        self.check(v)?;
        let Ok(i) = self.grads.binary_search_by_key(&v.id, |(k, _)| *k) else {
            return Ok(None);
        };
        Ok(self.grads[i].1.take())
    }

    /// Every (node id, gradient) pair not taken, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Tensor<T>)> {
        self.grads
            .iter()
            .filter_map(|(k, g)| Some((*k as usize, g.as_ref()?)))
    }
}

impl<T: Element> fmt::Debug for Gradients<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.grads.iter().map(|(k, g)| (k, g)))
            .finish()
    }
}

impl<T: Element> std::ops::Index<Var<'_, T>> for Gradients<T> {
    type Output = Tensor<T>;
    fn index(&self, v: Var<'_, T>) -> &Tensor<T> {
        self.get(v)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no gradient reached variable #{}", v.id))
    }
}
