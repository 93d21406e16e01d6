//! Convolutional layers in PyTorch's forms: `Conv2d` (`weight: [out, in/groups, kh, kw]`,
//! `bias: [out]`, PyTorch's default initialisation), `MaxPool2d`, `AvgPool2d` and
//! `Flatten`, so that a PyTorch state dict saved as safetensors loads unchanged.

use super::store::{ParamId, ParamStore, Params, join};
use crate::autodiff::{Conv2dOptions, Pool2dOptions, Var};
use crate::error::Result;
use crate::tensor::{Element, Tensor};
use rand_chacha::ChaCha8Rng;

/// PyTorch's `nn.Conv2d` over NCHW.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// `name.weight: [out, in/groups, kh, kw]`.
    pub weight: ParamId,
    /// `name.bias: [out]`.
    pub bias: Option<ParamId>,
    /// Stride, padding, dilation and groups.
    pub opts: Conv2dOptions,
}

impl Conv2d {
    /// Adds `name.weight` and, with `bias`, `name.bias`, both U(±1/√fan_in) with
    /// `fan_in = in/groups·kh·kw`: PyTorch's initialisation (Kaiming uniform with a = √5).
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        name: &str,
        (fan_in_channels, out): (usize, usize),
        kernel: [usize; 2],
        opts: Conv2dOptions,
        bias: bool,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let per_group = fan_in_channels / opts.groups.max(1);
        let fan_in = per_group * kernel[0] * kernel[1];
        let a = 1.0 / (fan_in.max(1) as f64).sqrt();
        let shape = [out, per_group, kernel[0], kernel[1]];
        let weight = store.add(
            join(name, "weight"),
            Tensor::rand_uniform_with(&shape, -a, a, rng)?,
        )?;
        let bias = match bias {
            true => Some(store.add(
                join(name, "bias"),
                Tensor::rand_uniform_with(&[out], -a, a, rng)?,
            )?),
            false => None,
        };
        Ok(Conv2d { weight, bias, opts })
    }

    /// Applies the layer to `x: [N, in, H, W]`.
    pub fn forward<'t, T: Element>(&self, p: &Params<'t, T>, x: Var<'t, T>) -> Result<Var<'t, T>> {
        x.conv2d(p[self.weight], self.bias.map(|b| p[b]), self.opts)
    }
}

/// PyTorch's `nn.MaxPool2d`.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d(pub Pool2dOptions);

impl MaxPool2d {
    /// Pools `x: [N, C, H, W]`.
    pub fn forward<'t, T: Element>(&self, x: Var<'t, T>) -> Result<Var<'t, T>> {
        x.max_pool2d(self.0)
    }
}

/// PyTorch's `nn.AvgPool2d` (padding counted in the divisor).
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d(pub Pool2dOptions);

impl AvgPool2d {
    /// Pools `x: [N, C, H, W]`.
    pub fn forward<'t, T: Element>(&self, x: Var<'t, T>) -> Result<Var<'t, T>> {
        x.avg_pool2d(self.0)
    }
}

/// PyTorch's `nn.Flatten`: the axes from `start` (1 by default there) merged.
#[derive(Clone, Copy, Debug)]
pub struct Flatten {
    /// The first axis merged.
    pub start: usize,
}

impl Flatten {
    /// Flattens `x`.
    pub fn forward<'t, T: Element>(&self, x: Var<'t, T>) -> Result<Var<'t, T>> {
        x.flatten(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::Tape;
    use crate::nn::rel_err;
    use std::collections::HashMap;

    fn fixture() -> (std::path::PathBuf, HashMap<String, Tensor<f64>>) {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/conv/layers.safetensors");
        let (tensors, _) = crate::nn::load_tensors::<f64>(&path).unwrap();
        (path, tensors.into_iter().collect())
    }

    #[test]
    fn the_layers_reproduce_pytorch_in_f64() {
        use rand::SeedableRng;
        let (path, fx) = fixture();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut store = ParamStore::<f64>::new();
        let opts = Conv2dOptions {
            stride: [2, 1],
            padding: [1, 2],
            dilation: [1, 2],
            groups: 2,
        };
        let conv = Conv2d::new(&mut store, "conv", (4, 6), [3, 2], opts, true, &mut rng).unwrap();
        let plain = Conv2dOptions::default();
        let conv2 =
            Conv2d::new(&mut store, "conv2", (6, 3), [2, 2], plain, true, &mut rng).unwrap();
        store.load_safetensors(&path).unwrap();
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let x = tape.var(fx["x"].clone());
        let maxp = MaxPool2d(Pool2dOptions {
            kernel: [2, 2],
            stride: [1, 2],
            padding: [1, 0],
        });
        let avgp = AvgPool2d(Pool2dOptions {
            kernel: [3, 2],
            stride: [2, 1],
            padding: [1, 1],
        });
        let a = conv.forward(&p, x).unwrap();
        let m = maxp.forward(a.relu()).unwrap();
        let y = Flatten { start: 1 }
            .forward(avgp.forward(conv2.forward(&p, m).unwrap()).unwrap())
            .unwrap();
        let r = tape.constant(fx["r"].clone());
        let loss = y.mul(r).unwrap().sum_all();
        let g = tape.backward(loss).unwrap();
        let mut checks = vec![("y".to_string(), y.value())];
        for (id, n, _) in store.iter() {
            checks.push((format!("grad.{n}"), g.wrt(p[id]).unwrap()));
        }
        checks.push(("grad.x".into(), g.wrt(x).unwrap()));
        for (k, v) in checks {
            let e = rel_err(&v, &fx[&k]);
            assert!(e <= 1e-10, "{k} differs from PyTorch's by {e:e}");
        }
    }
}
