//! # chainrule
//!
//! Automatic differentiation and neural-network training in Rust. Every op on a tensor
//! records itself on a tape; one sweep backwards along it gives the gradient of a loss
//! with respect to every parameter (reverse mode, the chain rule edge by edge). Beside it:
//! forward mode, Jacobians, Hessian-vector products, gradient checking against finite
//! differences, layers in PyTorch's layouts, optimizers, and one descent loop for every
//! model. An MLP trained on the handwritten digits embedded in the crate:
//!
//! ```
//! use chainrule::data::Dataset;
//! use chainrule::nn::{self, Activation, Init, Mlp, ParamStore};
//! use chainrule::optim::OptimizerKind;
//! use chainrule::train::{Classification, TrainConfig, Trainer};
//!
//! let (train, val) = Dataset::digits()?.split(0.2, 0)?; // 8×8 images, 10 classes
//! let mut store = ParamStore::new(); // the parameters, by name, outside any tape
//! let mut rng = nn::rng(0); // every initial value is drawn from it: same seed, same model
//! let model = Mlp::new(&mut store, &[64, 32, 10], Activation::Relu, Init::TorchDefault, &mut rng)?;
//! let mut adam = OptimizerKind::Adam.build::<f32>(1e-2, None)?;
//! let trainer = Trainer::new(TrainConfig {
//!     batch_size: 64,
//!     clip_norm: Some(1.0), // clip the global gradient norm
//!     target: Some(0.9),    // stop at 90% validation accuracy...
//!     max_epochs: Some(30), // ...or after 30 epochs
//!     ..Default::default()
//! })?;
//! let mut task = Classification::new(&model, &train, &val, 64, true)?;
//! let report = trainer.fit_from_start(&mut task, &mut store, adam.as_mut())?;
//! assert!(report.best_val_metric >= 0.9, "{:?}", report.stopped_by);
//! # Ok::<(), chainrule::Error>(())
//! ```
//!
//! The layers, bottom to top (imports point down only): [`tensor`] (n-d arrays and
//! kernels), [`autodiff`] (the tape, reverse and forward mode, the functional API,
//! gradient checking) and [`scalar`] (the same for generic scalar code), [`nn`]
//! (parameters, layers, losses), [`data`] (datasets), [`optim`] (optimizers, schedules,
//! clipping), [`train`] (the descent loop and what it writes); beside them [`explain`]
//! (the chain rule, edge by edge). The gradient itself, without a model:
//!
//! ```
//! use chainrule::{Tape, Tensor};
//!
//! let tape = Tape::<f64>::new();
//! let x = tape.var(Tensor::from_vec(vec![0.5, -1.0], &[2])?);
//! let loss = x.tanh().mul(x)?.sum_all(); // Σ x·tanh(x)
//! let grads = tape.backward(loss)?;
//! let dx = &grads[x]; // tanh(x) + x·(1 − tanh²(x))
//! assert!((dx.data()[0] - (0.5f64.tanh() + 0.5 * (1.0 - 0.5f64.tanh().powi(2)))).abs() < 1e-15);
//! # Ok::<(), chainrule::Error>(())
//! ```
//!
//! Kernels split their work across rayon's global pool (`RAYON_NUM_THREADS` threads, one
//! per core by default). The program built on this library, `chainrule` (package
//! `chainrule-cli`), trains these models from the command line, walks the chain rule in
//! the browser and measures the library against PyTorch, JAX and NumPy.
#![warn(missing_docs)]

pub mod autodiff;
pub mod data;
pub mod error;
pub mod explain;
pub mod nn;
pub mod optim;
pub mod scalar;
pub mod tensor;
pub mod train;

pub use autodiff::{Gradients, Tape, Var};
pub use error::{Error, Result};
pub use tensor::{Element, Tensor};

/// The README's and the manual's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
mod manual {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/clipping.md")]
    struct Clipping;
    #[doc = include_str!("../docs/commands.md")]
    struct Commands;
    #[doc = include_str!("../docs/convnet.md")]
    struct Convnet;
    #[doc = include_str!("../docs/curvature.md")]
    struct Curvature;
    #[doc = include_str!("../docs/distributed.md")]
    struct Distributed;
    #[doc = include_str!("../docs/explain.md")]
    struct Explain;
    #[doc = include_str!("../docs/how-it-works.md")]
    struct HowItWorks;
    #[doc = include_str!("../docs/language-models.md")]
    struct LanguageModels;
    #[doc = include_str!("../docs/library.md")]
    struct Library;
    #[doc = include_str!("../docs/nan-policy.md")]
    struct NanPolicy;
    #[doc = include_str!("../docs/page.md")]
    struct Page;
    #[doc = include_str!("../docs/performance.md")]
    struct Performance;
    #[doc = include_str!("../docs/reliability.md")]
    struct Reliability;
}
