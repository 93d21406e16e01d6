//! Reverse mode on scalars: a tape of nodes holding each value's local partial
//! derivatives, computed as the node is recorded, so the backward sweep is one
//! multiply-add per edge.
//!
//! No `unsafe`. The nodes live in segments that never move once allocated (the first
//! holds 1024 nodes, each next one twice as many as the one before), each node in a
//! [`Cell`]: recording writes one cell and bumps a length, and no reference into
//! a resizable vector exists while `F`'s arithmetic runs. [`Real`] is sealed, so that
//! arithmetic is ours and never records on the tape it is called from; and were it
//! not, re-entry could only write cells, never invalidate a borrow.

use super::Real;
use crate::tensor::{BinaryOp, Number, UnaryOp};
use std::cell::{Cell, OnceCell};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// An edge-list node: up to two parents with their local partials.
#[derive(Clone, Copy)]
struct Node<F> {
    parents: [u32; 2],
    partials: [F; 2],
}

/// Segment `k` holds `1 << (FIRST + k)` nodes, ids from `((1 << k) - 1) << FIRST` on.
const FIRST: u32 = 10;

/// Segments a tape can have: 22 hold `u32::MAX - 1023` nodes, so every id stays below
/// [`NONE`].
const SEGMENTS: usize = 22;

/// The most nodes a tape holds.
const CAPACITY: usize = ((1 << SEGMENTS) - 1) << FIRST;

/// A run of nodes that never moves once allocated, each in a cell so that recording
/// needs only `&STape`.
type Segment<F> = OnceCell<Box<[Cell<Node<F>>]>>;

/// A tape of scalar operations.
///
/// Variables remember their tape: combining variables of two tapes panics, and so does
/// [`backward`](Self::backward) with an output from another tape. A variable recorded
/// after a [`truncate`](Self::truncate) point is invalid afterwards; using it panics
/// while its id is past the end of the tape (once the tape has grown past it again it
/// denotes the newer node with that id: keep only variables recorded before the
/// truncation point).
pub struct STape<F> {
    // Not an UnsafeCell<Vec> (sound only while no `F` arithmetic can record on this
    // tape during a push or the sweep). Safe layouts measured on W3 against it: this
    // one about 10% slower, a RefCell<Vec> 25%, a Cell<Vec> taken out and put back per
    // push 25-40% (every op writes the vector's header twice).
    /// Number of recorded nodes (ids `0..len`).
    len: Cell<usize>,
    segments: [Segment<F>; SEGMENTS],
}

/// Parent id meaning "no parent", and the id of constants (which are not on the tape).
/// (A sink node instead of this test made the sweep slower: every edge into the sink
/// is a store to one address, which serialises the loop.)
const NONE: u32 = u32::MAX;

/// A scalar on a tape (or a constant, which has none).
#[derive(Clone, Copy)]
pub struct SVar<'t, F> {
    tape: Option<&'t STape<F>>,
    /// The node id ([`NONE`] for constants).
    id: u32,
    /// The value.
    pub value: F,
}

#[cold]
#[inline(never)]
#[track_caller]
fn different_tapes() -> ! {
    panic!("scalar variables from different tapes were combined")
}

#[cold]
#[inline(never)]
#[track_caller]
fn stale(id: u32, len: usize) -> ! {
    panic!(
        "scalar variable #{id} is not on its tape (which has {len} nodes): \
         it was recorded after a point the tape was truncated to"
    )
}

impl<F: Real> STape<F> {
    /// An empty tape with room for at least `n` nodes before it allocates again.
    pub fn with_capacity(n: usize) -> Self {
        let tape = STape {
            len: Cell::new(0),
            segments: std::array::from_fn(|_| OnceCell::new()),
        };
        let (last, _) = locate(n.clamp(1, CAPACITY) - 1);
        for k in 0..=last {
            tape.segment(k);
        }
        tape
    }

    /// A new input variable.
    pub fn var(&self, value: F) -> SVar<'_, F> {
        self.push(value, [NONE, NONE], [F::cst(0.0), F::cst(0.0)])
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.len.get()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every node after the first `n` (keeps the inputs for the next sweep, and
    /// the memory). Variables recorded after those `n` nodes must not be used again.
    pub fn truncate(&self, n: usize) {
        self.len.set(self.len.get().min(n));
    }

    /// Segment `k`, allocated on first use.
    #[inline(always)]
    #[track_caller]
    fn segment(&self, k: usize) -> &[Cell<Node<F>>] {
        match self.segments.get(k).and_then(OnceCell::get) {
            Some(s) => s,
            None => self.allocate(k),
        }
    }

    #[cold]
    #[inline(never)]
    #[track_caller]
    fn allocate(&self, k: usize) -> &[Cell<Node<F>>] {
        let Some(segment) = self.segments.get(k) else {
            panic!("the scalar tape is full ({} nodes)", self.len.get())
        };
        segment.get_or_init(|| {
            let blank = Node {
                parents: [NONE; 2],
                partials: [F::cst(0.0); 2],
            };
            (0..1usize << (FIRST as usize + k))
                .map(|_| Cell::new(blank))
                .collect()
        })
    }

    #[inline(always)]
    #[track_caller]
    fn push(&self, value: F, parents: [u32; 2], partials: [F; 2]) -> SVar<'_, F> {
        let id = self.len.get();
        // `p + 1 > id` ⇔ `p >= id` for a real parent, and never for NONE (which wraps to
        // 0): every edge points to an earlier node, so the sweep is a reverse loop
        let bad = |p: u32| p.wrapping_add(1) as usize > id;
        if bad(parents[0]) || bad(parents[1]) {
            refuse(parents, id)
        }
        // ids past the last segment (so never NONE) panic in `segment`
        let (k, off) = locate(id);
        self.segment(k)[off].set(Node { parents, partials });
        self.len.set(id + 1);
        SVar {
            tape: Some(self),
            id: id as u32,
            value,
        }
    }

    /// The adjoint of every node for output `y` seeded with `seed`: one reverse loop.
    #[track_caller]
    pub fn backward(&self, y: SVar<'_, F>, seed: F) -> Vec<F> {
        let mut adj = Vec::new();
        self.backward_into(y, seed, &mut adj);
        adj
    }

    /// [`backward`](Self::backward) into a reused buffer (no fresh memory per sweep).
    #[track_caller]
    pub fn backward_into(&self, y: SVar<'_, F>, seed: F, adj: &mut Vec<F>) {
        if let Some(t) = y.tape
            && !std::ptr::eq(t, self)
        {
            panic!("backward: the output was recorded on a different scalar tape");
        }
        let len = self.len.get();
        adj.clear();
        adj.resize(len, F::cst(0.0));
        if y.id == NONE {
            return;
        }
        let top = y.id as usize;
        if top >= len {
            stale(y.id, len)
        }
        adj[top] = seed;
        let (last, end) = locate(top);
        for k in (0..=last).rev() {
            let seg = self.segment(k);
            let start = ((1 << k) - 1) << FIRST;
            let seg = if k == last { &seg[..=end] } else { seg };
            for (j, n) in seg.iter().enumerate().rev() {
                let n = n.get();
                let a = adj[start + j];
                for e in 0..2 {
                    let p = n.parents[e];
                    if p != NONE {
                        adj[p as usize] = adj[p as usize] + a * n.partials[e];
                    }
                }
            }
        }
    }
}

/// The segment holding id `i` and the offset of `i` in it.
#[inline(always)]
fn locate(i: usize) -> (usize, usize) {
    let k = ((i >> FIRST) + 1).ilog2();
    (k as usize, i + (1 << FIRST) - (1 << (k + FIRST)))
}

/// A parent past the end of the tape.
#[cold]
#[inline(never)]
#[track_caller]
fn refuse(parents: [u32; 2], len: usize) -> ! {
    let p = parents
        .into_iter()
        .find(|&p| p != NONE && p as usize >= len);
    stale(p.unwrap_or(NONE), len)
}

impl<F: std::fmt::Debug> std::fmt::Debug for SVar<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.id == NONE {
            write!(f, "SVar(const) {:?}", self.value)
        } else {
            write!(f, "SVar#{} {:?}", self.id, self.value)
        }
    }
}

impl<'t, F> SVar<'t, F> {
    /// The node id: the index of this variable's adjoint in the vector
    /// [`STape::backward`] returns. Constants, which are not on a tape, have
    /// `usize::MAX` (indexing an adjoint vector with it panics).
    pub fn id(&self) -> usize {
        if self.id == NONE {
            usize::MAX
        } else {
            self.id as usize
        }
    }

    /// True for a constant (a value on no tape, e.g. from [`Real::cst`]).
    pub fn is_constant(&self) -> bool {
        self.tape.is_none()
    }
}

impl<'t, F: Real> SVar<'t, F> {
    #[inline(always)]
    #[track_caller]
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
    #[inline(always)]
    #[track_caller]
    fn binary(self, o: Self, value: F, pa: F, pb: F) -> Self {
        let tape = match (self.tape, o.tape) {
            (Some(a), Some(b)) => {
                if !std::ptr::eq(a, b) {
                    different_tapes()
                }
                Some(a)
            }
            (a, b) => a.or(b),
        };
        match tape {
            Some(t) => t.push(value, [self.id, o.id], [pa, pb]),
            None => SVar {
                tape: None,
                id: NONE,
                value,
            },
        }
    }
}

impl<F: Real> super::sealed::Sealed for SVar<'_, F> {}

impl<'t, F: Real> Number for SVar<'t, F> {
    #[inline]
    fn number(v: f64) -> Self {
        SVar {
            tape: None,
            id: NONE,
            value: F::number(v),
        }
    }
    /// A node with the op's value and its local derivative, both from the table.
    #[inline(always)]
    #[track_caller]
    fn apply_unary(op: UnaryOp, x: Self) -> Self {
        let y = F::apply_unary(op, x.value);
        x.unary(y, op.derivative(x.value, y))
    }
    /// A node with the op's value and its two local partials, both from the table.
    #[inline(always)]
    #[track_caller]
    fn apply_binary(op: BinaryOp, a: Self, b: Self) -> Self {
        let y = F::apply_binary(op, a.value, b.value);
        let (pa, pb) = op.partials(a.value, b.value, y);
        a.binary(b, y, pa, pb)
    }
}

macro_rules! svar_arithmetic {
    ($($trait:ident :: $method:ident => $op:ident),*) => {$(
        impl<'t, F: Real> $trait for SVar<'t, F> {
            type Output = Self;
            #[inline(always)]
            #[track_caller]
            fn $method(self, o: Self) -> Self {
                Number::apply_binary(BinaryOp::$op, self, o)
            }
        }
    )*};
}
svar_arithmetic!(Add::add => Add, Sub::sub => Sub, Mul::mul => Mul, Div::div => Div);

impl<'t, F: Real> Neg for SVar<'t, F> {
    type Output = Self;
    #[inline]
    #[track_caller]
    fn neg(self) -> Self {
        Number::apply_unary(UnaryOp::Neg, self)
    }
}

impl<'t, F: Real> Real for SVar<'t, F> {
    #[inline]
    fn value(self) -> f64 {
        self.value.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "scalar variables from different tapes were combined")]
    fn variables_of_two_tapes_do_not_mix() {
        let (t1, t2) = (
            STape::<f64>::with_capacity(4),
            STape::<f64>::with_capacity(4),
        );
        let (a, b) = (t1.var(1.0), t2.var(2.0));
        let _ = a * b;
    }

    #[test]
    #[should_panic(expected = "the output was recorded on a different scalar tape")]
    fn backward_refuses_an_output_of_another_tape() {
        let (t1, t2) = (
            STape::<f64>::with_capacity(4),
            STape::<f64>::with_capacity(4),
        );
        let a = t1.var(1.0);
        let y = a.exp();
        t2.var(3.0);
        let _ = t2.backward(y, 1.0);
    }

    #[test]
    #[should_panic(expected = "recorded after a point the tape was truncated to")]
    fn a_variable_cut_off_by_truncate_is_refused() {
        let tape = STape::<f64>::with_capacity(4);
        let x = tape.var(2.0);
        let y = x * x;
        tape.truncate(1);
        let _ = y + x;
    }

    #[test]
    #[should_panic(expected = "recorded after a point the tape was truncated to")]
    fn backward_from_a_truncated_output_is_refused() {
        let tape = STape::<f64>::with_capacity(4);
        let x = tape.var(2.0);
        let y = x.sin();
        tape.truncate(1);
        let _ = tape.backward(y, 1.0);
    }

    #[test]
    fn constants_mix_with_either_tape_and_have_no_id() {
        let tape = STape::<f64>::with_capacity(0);
        let c = SVar::<f64>::cst(3.0);
        assert!(c.is_constant());
        assert_eq!(c.id(), usize::MAX);
        let x = tape.var(2.0);
        let y = c * x + c;
        assert!(!y.is_constant());
        assert_eq!((x.id(), y.id()), (0, 2));
        assert_eq!(tape.backward(y, 1.0)[x.id()], 3.0);
        // a constant output: every adjoint is zero
        assert_eq!(tape.backward(c * c, 1.0), vec![0.0; 3]);
    }

    /// Many segments (the first holds 1024 nodes), truncation and re-recording, and a
    /// sweep from an output below the top of the tape.
    #[test]
    fn long_chains_cross_segments_and_truncation_reuses_them() {
        let tape = STape::<f64>::with_capacity(0);
        let x = tape.var(0.5);
        for round in 0..3 {
            tape.truncate(1);
            let n = 10_000 + 1_000 * round;
            // y = x · 1.0001ⁿ, built one multiply at a time: dy/dx = 1.0001ⁿ
            let mut y = x;
            let mut mid = x;
            for i in 0..n {
                y = y * SVar::cst(1.0001);
                if i == n / 2 {
                    mid = y;
                }
            }
            assert_eq!(tape.len(), n + 1);
            let adj = tape.backward(y, 1.0);
            let want = 1.0001f64.powi(n as i32);
            assert!(
                (adj[x.id()] - want).abs() < 1e-9 * want,
                "{} {want}",
                adj[x.id()]
            );
            let adj = tape.backward(mid, 1.0);
            let want = 1.0001f64.powi(n as i32 / 2 + 1);
            assert!((adj[x.id()] - want).abs() < 1e-9 * want);
            assert!(adj[mid.id() + 1..].iter().all(|&a| a == 0.0));
        }
    }

    #[test]
    fn ids_map_to_segments_without_gaps() {
        let mut next = (0, 0);
        for i in 0..100_000 {
            assert_eq!(locate(i), next, "id {i}");
            let (k, off) = next;
            next = if off + 1 == 1 << (FIRST as usize + k) {
                (k + 1, 0)
            } else {
                (k, off + 1)
            };
        }
        // the last id a tape hands out is in the last segment, and below NONE
        let last = CAPACITY - 1;
        assert!(last < NONE as usize);
        assert_eq!(
            locate(last),
            (SEGMENTS - 1, (1 << (FIRST as usize + SEGMENTS - 1)) - 1)
        );
        assert_eq!(locate(last + 1).0, SEGMENTS);
    }
}
