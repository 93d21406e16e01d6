//! A convolutional classifier in the shape of PyTorch's MNIST example (W12): 3×3
//! convolutions with ReLU, one max pooling, dropout, then fully connected layers. Its
//! parameters carry PyTorch's names (`conv1`, `conv2`, `fc1`, `fc2`), so the example's
//! state dict saved as safetensors loads unchanged.

use super::conv::{Conv2d, MaxPool2d};
use super::layers::{Classifier, Dropout, ForwardCtx, Init, Linear};
use super::store::{ParamStore, Params};
use crate::autodiff::{Conv2dOptions, Pool2dOptions, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, checked_len};
use rand_chacha::ChaCha8Rng;

/// The shape of a [`Cnn`].
#[derive(Clone, Debug, PartialEq)]
pub struct CnnConfig {
    /// Channels of the input images.
    pub in_channels: usize,
    /// Height and width of the input images.
    pub image: [usize; 2],
    /// Output channels of each convolution (`conv1`, `conv2`, ...), each followed by ReLU.
    pub channels: Vec<usize>,
    /// Side of the square kernels (stride 1, no padding).
    pub kernel: usize,
    /// Side and stride of the max pooling after the last convolution (1: none).
    pub pool: usize,
    /// Widths of the hidden fully connected layers (`fc1`, ...), each followed by ReLU.
    pub hidden: Vec<usize>,
    /// Classes: the width of the last layer.
    pub classes: usize,
    /// Dropout after the pooling and after each hidden fully connected layer.
    pub dropout: [f64; 2],
}

impl CnnConfig {
    /// The W12 network (PyTorch's MNIST example) for `image` inputs of one channel and
    /// `classes` classes: 32 and 64 channels of 3×3, pooling 2, a hidden layer of 128,
    /// dropout 0.25 and 0.5. For 28×28 images that is 1,199,882 parameters.
    pub fn w12(image: [usize; 2], classes: usize) -> Self {
        CnnConfig {
            in_channels: 1,
            image,
            channels: vec![32, 64],
            kernel: 3,
            pool: 2,
            hidden: vec![128],
            classes,
            dropout: [0.25, 0.5],
        }
    }

    /// Height and width after the convolutions and the pooling, or an error naming the
    /// size that does not fit.
    pub fn feature_map(&self) -> Result<[usize; 2]> {
        let bad = |why: String| Err(Error::invalid("CnnConfig", why));
        let sizes = [self.in_channels, self.kernel, self.pool, self.classes];
        if sizes.contains(&0) || self.channels.contains(&0) || self.hidden.contains(&0) {
            return bad(format!(
                "channels, kernel, pooling, widths and classes must be positive: {self:?}"
            ));
        }
        if self.channels.is_empty() {
            return bad("a convolutional network needs at least one convolution".into());
        }
        if !self.dropout.iter().all(|p| (0.0..1.0).contains(p)) {
            return bad(format!("dropout {:?} is not in [0, 1)", self.dropout));
        }
        let shrink = (self.kernel - 1) * self.channels.len();
        let mut out = [0; 2];
        for (o, &side) in out.iter_mut().zip(&self.image) {
            *o = side.saturating_sub(shrink) / self.pool;
            if *o == 0 {
                return bad(format!(
                    "images of {:?} are too small for {} convolutions of {}×{} and pooling {}",
                    self.image,
                    self.channels.len(),
                    self.kernel,
                    self.kernel,
                    self.pool
                ));
            }
        }
        Ok(out)
    }

    /// Inputs of the first fully connected layer: the last convolution's channels times
    /// the pooled feature map (9216 for W12).
    pub fn flat_features(&self) -> Result<usize> {
        let [h, w] = self.feature_map()?;
        let c = *self.channels.last().unwrap_or(&0);
        checked_len("CnnConfig", &[c, h, w])
    }

    /// Parameter values of the network (`None` on overflow or a shape that does not fit).
    pub fn param_count(&self) -> Option<usize> {
        let k2 = self.kernel.checked_mul(self.kernel)?;
        let mut total = 0usize;
        let mut c_in = self.in_channels;
        for &c in &self.channels {
            total = total.checked_add(c.checked_mul(c_in.checked_mul(k2)?.checked_add(1)?)?)?;
            c_in = c;
        }
        let mut f_in = self.flat_features().ok()?;
        for &f in self.hidden.iter().chain([&self.classes]) {
            total = total.checked_add(f.checked_mul(f_in.checked_add(1)?)?)?;
            f_in = f;
        }
        Some(total)
    }
}

/// A convolutional classifier of flattened images: rows `[batch, C·H·W]` to logits.
#[derive(Clone, Debug)]
pub struct Cnn {
    /// Its shape.
    pub config: CnnConfig,
    /// The convolutions, `conv1` first.
    pub convs: Vec<Conv2d>,
    /// The fully connected layers, `fc1` first; the last gives the logits.
    pub fcs: Vec<Linear>,
}

impl Cnn {
    /// Adds the layers in PyTorch's order of creation and initialisation (each
    /// U(±1/√fan_in), PyTorch's default), drawn from `rng`.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        config: CnnConfig,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let flat = config.flat_features()?;
        let mut convs = Vec::new();
        let mut c_in = config.in_channels;
        for (i, &c) in config.channels.iter().enumerate() {
            let k = [config.kernel; 2];
            let (name, opts) = (format!("conv{}", i + 1), Conv2dOptions::default());
            convs.push(Conv2d::new(store, &name, (c_in, c), k, opts, true, rng)?);
            c_in = c;
        }
        let mut fcs = Vec::new();
        let mut f_in = flat;
        for (i, &f) in config.hidden.iter().chain([&config.classes]).enumerate() {
            let name = format!("fc{}", i + 1);
            fcs.push(Linear::new(store, &name, f_in, f, Init::TorchDefault, rng)?);
            f_in = f;
        }
        Ok(Cnn { config, convs, fcs })
    }

    /// The logits of `x: [batch, C·H·W]` (or `[batch, C, H, W]`).
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        let c = &self.config;
        let batch = x.shape().first().copied().unwrap_or(0);
        let tape = x.tape();
        let mut h = x.reshape(&[batch, c.in_channels, c.image[0], c.image[1]])?;
        for (i, conv) in self.convs.iter().enumerate() {
            h = tape.scoped(&format!("conv{}", i + 1), || {
                Ok::<_, Error>(conv.forward(p, h)?.relu())
            })?;
        }
        h = tape.scoped("pool", || -> Result<Var<'t, T>> {
            if c.pool > 1 {
                h = MaxPool2d(Pool2dOptions::square(c.pool)).forward(h)?;
            }
            Dropout { p: c.dropout[0] }.forward(h, ctx)?.flatten(1)
        })?;
        let last = self.fcs.len() - 1;
        for (i, fc) in self.fcs.iter().enumerate() {
            h = tape.scoped(&format!("fc{}", i + 1), || -> Result<Var<'t, T>> {
                let y = fc.forward(p, h)?;
                if i == last {
                    return Ok(y);
                }
                Dropout { p: c.dropout[1] }.forward(y.relu(), ctx)
            })?;
        }
        Ok(h)
    }
}

impl<T: Element> Classifier<T> for Cnn {
    fn logits<'t>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        self.forward(p, x, ctx)
    }

    fn replay_graph(&self) -> Option<String> {
        let c = &self.config;
        (c.dropout == [0.0, 0.0]).then(|| format!("cnn {c:?}"))
    }

    /// A chunk's activations are about 150 KiB an image at W12; 128 images keep each
    /// buffer under the 32 MiB that the program's allocator reuses instead of mapping
    /// afresh (`keep_freed_memory` in main.rs).
    fn eval_chunk(&self) -> usize {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::Tape;
    use crate::nn::rel_err;
    use crate::tensor::Tensor;

    #[test]
    fn the_w12_shape_has_pytorchs_parameter_count() {
        let c = CnnConfig::w12([28, 28], 10);
        assert_eq!(c.flat_features().unwrap(), 9216);
        assert_eq!(c.param_count(), Some(1_199_882));
        let mut store = ParamStore::<f32>::new();
        Cnn::new(&mut store, c, &mut crate::nn::rng(0)).unwrap();
        assert_eq!(store.num_elements(), 1_199_882);
        let names: Vec<&str> = store.iter().map(|(_, n, _)| n).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "fc1.weight",
                "fc1.bias",
                "fc2.weight",
                "fc2.bias"
            ]
        );
        // the digits' 8×8 images fit the same network: 6×6, 4×4, pooled to 2×2
        let d = CnnConfig::w12([8, 8], 10);
        assert_eq!(d.flat_features().unwrap(), 256);
    }

    #[test]
    fn pytorchs_w12_state_dict_loads_unchanged_and_reproduces_its_numbers() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conv");
        let (fx, _) = crate::nn::load_tensors::<f64>(&dir.join("w12.safetensors")).unwrap();
        let fx: std::collections::HashMap<String, Tensor<f64>> = fx.into_iter().collect();
        let mut store = ParamStore::<f64>::new();
        let cnn = Cnn::new(
            &mut store,
            CnnConfig::w12([28, 28], 10),
            &mut crate::nn::rng(0),
        )
        .unwrap();
        store
            .load_safetensors(&dir.join("w12_state.safetensors"))
            .unwrap();
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let x = tape.var(fx["x"].clone());
        let labels: Vec<usize> = fx["labels"].data().iter().map(|&l| l as usize).collect();
        let logits = cnn.forward(&p, x, &mut ForwardCtx::eval()).unwrap();
        let logp = logits.log_softmax(1).unwrap();
        let loss = crate::nn::cross_entropy(logits, &labels).unwrap();
        let g = tape.backward(loss).unwrap();
        let mut checks = vec![
            ("logp".to_string(), logp.value()),
            ("grad.x".into(), g.wrt(x).unwrap()),
        ];
        for (id, name, _) in store.iter() {
            let grad = g.wrt(p[id]).unwrap();
            if name == "fc1.weight" {
                checks.push((format!("grad.{name}.sum1"), grad.sum(&[1], false).unwrap()));
                checks.push((format!("grad.{name}.sum0"), grad.sum(&[0], false).unwrap()));
            } else {
                checks.push((format!("grad.{name}"), grad));
            }
        }
        assert_eq!(checks.len(), 11);
        for (k, v) in checks {
            let e = rel_err(&v, &fx[&k]);
            assert!(e <= 1e-10, "{k} differs from PyTorch's by {e:e}");
        }
        // in evaluation mode, inference without a tape gives the taped numbers
        let flat = fx["x"].reshape(&[3, 784]).unwrap();
        let inferred = Classifier::infer(&cnn, &store, &flat).unwrap();
        assert_eq!(inferred.max_abs_diff(&logits.value()).unwrap(), 0.0);
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let mut store = ParamStore::<f32>::new();
        assert!(
            Cnn::new(
                &mut store,
                CnnConfig::w12([4, 4], 10),
                &mut crate::nn::rng(0)
            )
            .is_err()
        );
        let mut c = CnnConfig::w12([28, 28], 10);
        c.channels.clear();
        assert!(c.flat_features().is_err());
        let mut c = CnnConfig::w12([28, 28], 10);
        c.dropout = [1.0, 0.0];
        assert!(Cnn::new(&mut store, c, &mut crate::nn::rng(0)).is_err());
        let mut c = CnnConfig::w12([28, 28], 10);
        c.hidden = vec![usize::MAX];
        assert_eq!(c.param_count(), None);
    }
}
