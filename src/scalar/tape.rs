//! Reverse mode on scalars: a tape of nodes holding each value's local partial
//! derivatives, computed as the node is recorded, so the backward sweep is one
//! multiply-add per edge.

use super::Real;
use std::cell::UnsafeCell;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// An edge-list node: up to two parents with their local partials.
#[derive(Clone, Copy)]
struct Node<F> {
    parents: [u32; 2],
    partials: [F; 2],
}

/// A tape of scalar operations.
pub struct STape<F> {
    // Not a RefCell: its borrow flag was a measurable share of a 10 ns op. Sound
    // because the tape is !Sync and no method hands out a reference into the vector or
    // runs user code while it holds one (see `nodes` and `nodes_mut`).
    nodes: UnsafeCell<Vec<Node<F>>>,
}

/// Parent id meaning "no parent", and the id of constants (which are not on the tape).
/// (A sink node instead of this test made the sweep slower: every edge into the sink
/// is a store to one address, which serialises the loop.)
const NONE: u32 = u32::MAX;

/// A scalar on a tape (or a constant, which has none).
#[derive(Clone, Copy)]
pub struct SVar<'t, F> {
    tape: Option<&'t STape<F>>,
    /// The node id (`u32::MAX` for constants).
    pub id: u32,
    /// The value.
    pub value: F,
}

impl<F: Real> STape<F> {
    /// An empty tape with room for `n` nodes.
    pub fn with_capacity(n: usize) -> Self {
        STape {
            nodes: UnsafeCell::new(Vec::with_capacity(n)),
        }
    }

    /// A new input variable.
    pub fn var(&self, value: F) -> SVar<'_, F> {
        self.push(value, [NONE, NONE], [F::cst(0.0), F::cst(0.0)])
    }

    fn nodes(&self) -> &Vec<Node<F>> {
        // SAFETY: see the field; the reference is dropped before any mutation.
        unsafe { &*self.nodes.get() }
    }

    #[allow(clippy::mut_from_ref)]
    fn nodes_mut(&self) -> &mut Vec<Node<F>> {
        // SAFETY: see the field; callers use it for one push or truncate and drop it.
        unsafe { &mut *self.nodes.get() }
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.nodes().len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every node after the first `n` (keeps the inputs for the next sweep).
    pub fn truncate(&self, n: usize) {
        self.nodes_mut().truncate(n);
    }

    fn push(&self, value: F, parents: [u32; 2], partials: [F; 2]) -> SVar<'_, F> {
        let nodes = self.nodes_mut();
        let id = nodes.len() as u32;
        nodes.push(Node { parents, partials });
        SVar {
            tape: Some(self),
            id,
            value,
        }
    }

    /// The adjoint of every node for output `y` seeded with `seed`: one reverse loop.
    pub fn backward(&self, y: SVar<'_, F>, seed: F) -> Vec<F> {
        let mut adj = Vec::new();
        self.backward_into(y, seed, &mut adj);
        adj
    }

    /// [`backward`](Self::backward) into a reused buffer (no fresh memory per sweep).
    pub fn backward_into(&self, y: SVar<'_, F>, seed: F, adj: &mut Vec<F>) {
        let nodes = self.nodes();
        adj.clear();
        adj.resize(nodes.len(), F::cst(0.0));
        if y.id == NONE {
            return;
        }
        adj[y.id as usize] = seed;
        for (i, n) in nodes[..=y.id as usize].iter().enumerate().rev() {
            let a = adj[i];
            for k in 0..2 {
                let p = n.parents[k];
                if p != NONE {
                    adj[p as usize] = adj[p as usize] + a * n.partials[k];
                }
            }
        }
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for SVar<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SVar#{} {:?}", self.id, self.value)
    }
}

impl<'t, F: Real> SVar<'t, F> {
    fn unary(self, value: F, partial: F) -> Self {
        match self.tape {
            Some(t) => t.push(value, [self.id, NONE], [partial, F::cst(0.0)]),
            None => SVar {
                tape: None,
                id: NONE,
                value,
            },
        }
    }
    fn binary(self, o: Self, value: F, pa: F, pb: F) -> Self {
        match self.tape.or(o.tape) {
            Some(t) => t.push(value, [self.id, o.id], [pa, pb]),
            None => SVar {
                tape: None,
                id: NONE,
                value,
            },
        }
    }
}

impl<'t, F: Real> Add for SVar<'t, F> {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        self.binary(o, self.value + o.value, F::cst(1.0), F::cst(1.0))
    }
}
impl<'t, F: Real> Sub for SVar<'t, F> {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        self.binary(o, self.value - o.value, F::cst(1.0), F::cst(-1.0))
    }
}
impl<'t, F: Real> Mul for SVar<'t, F> {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        self.binary(o, self.value * o.value, o.value, self.value)
    }
}
impl<'t, F: Real> Div for SVar<'t, F> {
    type Output = Self;
    fn div(self, o: Self) -> Self {
        let q = self.value / o.value;
        self.binary(o, q, F::cst(1.0) / o.value, -(q / o.value))
    }
}
impl<'t, F: Real> Neg for SVar<'t, F> {
    type Output = Self;
    fn neg(self) -> Self {
        self.unary(-self.value, F::cst(-1.0))
    }
}

impl<'t, F: Real> Real for SVar<'t, F> {
    fn cst(v: f64) -> Self {
        SVar {
            tape: None,
            id: NONE,
            value: F::cst(v),
        }
    }
    fn value(self) -> f64 {
        self.value.value()
    }
    fn exp(self) -> Self {
        let e = self.value.exp();
        self.unary(e, e)
    }
    fn ln(self) -> Self {
        self.unary(self.value.ln(), F::cst(1.0) / self.value)
    }
    fn sqrt(self) -> Self {
        let r = self.value.sqrt();
        self.unary(r, F::cst(0.5) / r)
    }
    fn sin(self) -> Self {
        self.unary(self.value.sin(), self.value.cos())
    }
    fn cos(self) -> Self {
        self.unary(self.value.cos(), -self.value.sin())
    }
    fn tanh(self) -> Self {
        let t = self.value.tanh();
        self.unary(t, F::cst(1.0) - t * t)
    }
    fn abs(self) -> Self {
        let s = if self.value.value() > 0.0 {
            1.0
        } else if self.value.value() < 0.0 {
            -1.0
        } else {
            0.0
        };
        self.unary(self.value.abs(), F::cst(s))
    }
    fn powf(self, p: f64) -> Self {
        self.unary(self.value.powf(p), F::cst(p) * self.value.powf(p - 1.0))
    }
}
