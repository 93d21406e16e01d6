//! Seeded random tensors (ChaCha8: the same seed gives the same numbers on every
//! platform) and the splitmix64 streams that the benchmark anchors use for their data.

use super::{Element, Tensor};
use crate::error::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

impl<T: Element> Tensor<T> {
    /// Standard normal samples from a seeded generator.
    pub fn randn(shape: &[usize], seed: u64) -> Result<Self> {
        Self::randn_with(shape, &mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// Standard normal samples drawn from `rng`.
    pub fn randn_with(shape: &[usize], rng: &mut impl Rng) -> Result<Self> {
        super::allocatable::<T>("randn", shape)?;
        Ok(Tensor::build(shape, |d| {
            for v in d {
                let s: f64 = StandardNormal.sample(rng);
                *v = T::of(s);
            }
        }))
    }

    /// Uniform samples in `[lo, hi)` from a seeded generator.
    pub fn rand_uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Result<Self> {
        Self::rand_uniform_with(shape, lo, hi, &mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform samples in `[lo, hi)` drawn from `rng`; an error when the bounds are not
    /// finite or the shape holds more than [`crate::tensor::MAX_ELEMENTS`].
    pub fn rand_uniform_with(
        shape: &[usize],
        lo: f64,
        hi: f64,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        super::allocatable::<T>("rand_uniform", shape)?;
        let dist = Uniform::new(lo, hi)
            .or_else(|_| Uniform::new_inclusive(lo, lo))
            .map_err(|_| {
                crate::error::Error::invalid(
                    "rand_uniform",
                    format!("bounds [{lo}, {hi}) must be finite"),
                )
            })?;
        Ok(Tensor::build(shape, |d| {
            for v in d {
                *v = T::of(dist.sample(rng));
            }
        }))
    }

    /// Uniform `[lo, hi)` values from splitmix64 stream `stream` (the anchors' data).
    pub fn splitmix_uniform(shape: &[usize], stream: u64, lo: f64, hi: f64) -> Result<Self> {
        super::allocatable::<T>("splitmix_uniform", shape)?;
        let mut g = SplitMix64::new(stream);
        Ok(Tensor::build(shape, |d| {
            for v in d {
                *v = T::of(g.uniform_f32(lo, hi) as f64);
            }
        }))
    }
}

/// One output of splitmix64 seeded with `state` after `k + 1` steps.
pub fn splitmix64(state: u64, k: u64) -> u64 {
    let mut z = state.wrapping_add((k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A splitmix64 stream: a deterministic generator that is easy to reproduce in any
/// language (the benchmark anchors in Python draw their data from the same streams, so
/// both sides train on identical numbers; [`Tensor::splitmix_uniform`] fills a tensor).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    seed: u64,
    k: u64,
}

impl SplitMix64 {
    /// Stream number `seed`, starting at element 0.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { seed, k: 0 }
    }
    /// The next raw output.
    pub fn next_u64(&mut self) -> u64 {
        let z = splitmix64(self.seed, self.k);
        self.k += 1;
        z
    }
    /// `f32(lo + (hi - lo) * (z >> 40) * 2^-24)`, computed in f64 then rounded.
    pub fn uniform_f32(&mut self, lo: f64, hi: f64) -> f32 {
        let z = self.next_u64();
        (lo + (hi - lo) * ((z >> 40) as f64 * (1.0 / (1u64 << 24) as f64))) as f32
    }
    /// `(z >> 32) % upper`.
    pub fn int(&mut self, upper: u64) -> u64 {
        (self.next_u64() >> 32) % upper
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_anchor_check_value() {
        assert_eq!(splitmix64(0, 0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn same_seed_same_tensor() {
        assert_eq!(
            Tensor::<f32>::randn(&[5], 7).unwrap(),
            Tensor::<f32>::randn(&[5], 7).unwrap()
        );
        assert_ne!(
            Tensor::<f32>::randn(&[5], 7).unwrap(),
            Tensor::<f32>::randn(&[5], 8).unwrap()
        );
        let u = Tensor::<f64>::rand_uniform(&[1000], -2.0, 3.0, 1).unwrap();
        assert!(u.data().iter().all(|&v| (-2.0..3.0).contains(&v)));
    }
}
