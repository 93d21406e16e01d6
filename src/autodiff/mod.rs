//! Reverse-mode automatic differentiation on a tape.
//!
//! Every op on a [`Var`] appends one node to the [`Tape`]: an append-only arena (a
//! Wengert list) whose recording order is already a topological order. `backward` is
//! therefore one reverse loop: each node passes its gradient to its inputs through the
//! op's vector-Jacobian product (the chain rule, one edge at a time), and a value used
//! several times accumulates the contributions of all its consumers.

mod export;
mod functional;
mod gradcheck;
mod gradients;
pub mod ops;
mod replay;
pub(crate) mod suite;
mod tape;

pub use export::graph_dot;
pub use functional::{
    HvpResult, JacobianMode, func, grad, hessian, hvp, hvp_only, jacfwd, jacobian, jacrev, jvp,
    value_and_grad, vjp,
};
pub use gradcheck::{
    FORWARD_REVERSE_TOLERANCE, GradcheckMode, GradcheckOptions, GradcheckReport, gradcheck, nan_max,
};
pub use gradients::Gradients;
pub use ops::conv::Conv2dOptions;
pub use ops::pool::Pool2dOptions;
pub use ops::recurrent::{CellKind, gru_cell, lstm_cell, recurrent_sequence, rnn_cell};
pub use ops::{AttentionMask, CustomOp, Tangents};
pub use replay::Trace;
pub use suite::{
    CaseFn, OpCheck, SecondOrderCheck, SecondOrderReport, SuiteCase, SuiteReport, builtin_suite,
    second_order_suite,
};
pub use tape::{NodeInfo, Tape, Var};
