//! # chainrule
//!
//! Automatic differentiation and neural-network training in Rust.
//!
//! The layers, bottom to top: [`tensor`] (n-d arrays and kernels), [`autodiff`] (the
//! tape, reverse mode, gradient checking), and the benchmark workloads in [`bench`].
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod autodiff;
pub mod bench;
pub mod error;
pub mod tensor;

pub use autodiff::{Gradients, Tape, Var};
pub use error::{Error, Result};
pub use tensor::{Element, Tensor};
pub mod data;
pub mod explain;
pub mod nn;
pub mod optim;
pub mod scalar;
pub mod train;
