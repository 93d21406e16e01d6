//! # chainrule
//!
//! Automatic differentiation and neural-network training in Rust.
//!
//! The layers, bottom to top (imports point down only): [`tensor`] (n-d arrays and
//! kernels), [`autodiff`] (the tape, reverse and forward mode, the functional API,
//! gradient checking) and [`scalar`] (the same for generic scalar code), [`nn`]
//! (parameters, layers, losses), [`data`] (datasets), [`optim`] (optimizers, schedules,
//! clipping), [`train`] (the descent loop and what it writes); beside them [`explain`]
//! (the chain rule, edge by edge).
//!
//! Kernels split their work across rayon's global pool (`RAYON_NUM_THREADS` threads, one
//! per core by default). Called from a thread outside the pool, such as `main`, each split
//! wakes a worker and the caller sleeps until that worker is done; run a training loop on
//! the pool instead, `rayon::scope(|_| train())`, as the `chainrule` binary does, and a
//! split only leaves half its work for another worker to take (W9's LSTM step: 14–20%
//! less time on two cores, with the changes of the same session). With glibc, a pool
//! thread allocates from an arena of its own that maps and unmaps memory as large
//! buffers come and go; `MALLOC_ARENA_MAX=1` in the environment (the binary sets the
//! same) keeps every thread on the main heap.
//!
//! What this documentation shows is the API. The crate also holds, public but hidden
//! from it and outside any compatibility promise, what its own binary, fuzz targets and
//! tests reach from outside the library: the benchmark workloads (`bench`), the fuzz
//! entry points (`fuzzing`) and the gradient-check suite's planted faults and case
//! types.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod autodiff;
#[doc(hidden)] // the benchmark workloads of `chainrule bench`: not part of the API
pub mod bench;
pub mod data;
pub mod error;
pub mod explain;
#[doc(hidden)] // the entry points of the fuzz targets (fuzz/) and their tests: not API
pub mod fuzzing;
pub mod nn;
pub mod optim;
pub mod scalar;
pub mod tensor;
pub mod train;

pub use autodiff::{Gradients, Tape, Var};
pub use error::{Error, Result};
pub use tensor::{Element, Tensor};
