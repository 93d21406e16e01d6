//! Gradient clipping, applied between the backward pass and the optimizer step.

use crate::error::{Error, Result};
use crate::tensor::{Element, PARALLEL_MIN_LEN, Tensor, with_avx2};
use rayon::prelude::*;

/// Elements per block of a sum of squares. Blocks are summed independently (on every
/// rayon thread for long gradients) and their sums added in order, so a norm is the
/// same on any number of threads.
const BLOCK: usize = 1 << 14;

/// Σ xᵢ² in f64.
fn sum_squares<T: Element>(x: &[T]) -> f64 {
    if x.len() <= BLOCK {
        return with_avx2!(block_sum_squares(x));
    }
    let sums: Vec<f64> = if x.len() >= PARALLEL_MIN_LEN {
        x.par_chunks(BLOCK)
            .map(|b| with_avx2!(block_sum_squares(b)))
            .collect()
    } else {
        x.chunks(BLOCK)
            .map(|b| with_avx2!(block_sum_squares(b)))
            .collect()
    };
    sums.iter().sum()
}

/// Σ xᵢ² in f64 with eight independent sums, so that the loop vectorises instead of
/// waiting on one chain of additions.
#[inline(always)]
fn block_sum_squares<T: Element>(x: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let mut lanes = x.chunks_exact(8);
    for c in &mut lanes {
        for (a, v) in acc.iter_mut().zip(c) {
            let v = v.as_f64();
            *a += v * v;
        }
    }
    let tail: f64 = lanes.remainder().iter().map(|v| v.as_f64().powi(2)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The L2 norm of all gradients taken together, accumulated in f64.
pub fn global_norm<T: Element>(grads: &[Option<Tensor<T>>]) -> f64 {
    grads
        .iter()
        .flatten()
        .map(|g| sum_squares(g.data()))
        .sum::<f64>()
        .sqrt()
}

/// The L2 norm of each gradient (0 for an absent one), accumulated in f64.
pub fn grad_norms<T: Element>(grads: &[Option<Tensor<T>>]) -> Vec<f64> {
    grads
        .iter()
        .map(|g| g.as_ref().map_or(0.0, |g| sum_squares(g.data()).sqrt()))
        .collect()
}

/// Scales all gradients together so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1).
/// Returns the norm before clipping. With `error_if_nonfinite`, a NaN or infinite norm is
/// an error and nothing is changed.
pub fn clip_grad_norm<T: Element>(
    grads: &mut [Option<Tensor<T>>],
    max_norm: f64,
    error_if_nonfinite: bool,
) -> Result<f64> {
    let norm = global_norm(grads);
    if !norm.is_finite() {
        if error_if_nonfinite {
            return Err(Error::NonFinite(format!(
                "the total gradient norm is {norm}; refusing to clip or step"
            )));
        }
        return Ok(norm);
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = T::of(coef);
        let scale = |x: &mut [T]| {
            for v in x {
                *v *= c;
            }
        };
        for g in grads.iter_mut().flatten() {
            let x = g.data_mut();
            if x.len() >= PARALLEL_MIN_LEN {
                x.par_chunks_mut(BLOCK).for_each(|b| with_avx2!(scale(b)));
            } else {
                with_avx2!(scale(x));
            }
        }
    }
    Ok(norm)
}

/// Limits every gradient element to `[-limit, limit]`. Returns how many were changed.
pub fn clip_grad_value<T: Element>(grads: &mut [Option<Tensor<T>>], limit: f64) -> usize {
    let (lo, hi) = (T::of(-limit), T::of(limit));
    let mut changed = 0;
    for g in grads.iter_mut().flatten() {
        for v in g.data_mut() {
            if *v < lo || *v > hi {
                *v = v.max(lo).min(hi);
                changed += 1;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_norm_clipping_returns_the_norm_before() {
        let mut g = vec![
            Some(Tensor::<f64>::from_vec(vec![3.0], &[1]).unwrap()),
            None,
            Some(Tensor::from_vec(vec![4.0], &[1]).unwrap()),
        ];
        let n = clip_grad_norm(&mut g, 1.0, true).unwrap();
        assert_eq!(n, 5.0);
        let after: f64 = g
            .iter()
            .flatten()
            .map(|t| t.data()[0].powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((after - 1.0).abs() < 1e-6);
        // below the limit: untouched
        let before: Vec<Vec<f64>> = g.iter().flatten().map(|t| t.to_vec()).collect();
        assert!((before[0][0] - 0.6).abs() < 1e-6 && (before[1][0] - 0.8).abs() < 1e-6);
        let n2 = clip_grad_norm(&mut g, 10.0, true).unwrap();
        assert!((n2 - after).abs() < 1e-12);
        assert!(g[1].is_none());
        let unchanged: Vec<Vec<f64>> = g.iter().flatten().map(|t| t.to_vec()).collect();
        assert_eq!(unchanged, before);
    }

    #[test]
    fn long_norms_match_a_plain_sum() {
        // long enough for several blocks on several threads, with a ragged tail
        let n = 3 * BLOCK + 5 * PARALLEL_MIN_LEN + 13;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let plain: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let g = vec![Some(Tensor::from_vec(x, &[n]).unwrap()), None];
        let n1 = global_norm(&g);
        assert!(
            (n1 * n1 - plain).abs() <= 1e-12 * plain,
            "{n1} vs {}",
            plain.sqrt()
        );
        assert_eq!(grad_norms(&g), vec![n1, 0.0]);
        // the same on one thread: fixed blocks, summed in order
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| global_norm(&g)).to_bits(), n1.to_bits());
    }

    #[test]
    fn nonfinite_norm_is_an_error_when_asked() {
        let mut g = vec![Some(
            Tensor::<f32>::from_vec(vec![f32::NAN, 1.0], &[2]).unwrap(),
        )];
        assert!(
            clip_grad_norm(&mut g, 1.0, true)
                .unwrap_err()
                .to_string()
                .contains("NaN")
        );
        assert!(clip_grad_norm(&mut g, 1.0, false).unwrap().is_nan());
        // neither call touched the gradient
        let d = g[0].as_ref().unwrap().data();
        assert!(d[0].is_nan());
        assert_eq!(d[1], 1.0);
    }

    #[test]
    fn value_clipping() {
        let mut g = vec![Some(
            Tensor::<f32>::from_vec(vec![-5.0, 0.5, 2.0], &[3]).unwrap(),
        )];
        assert_eq!(clip_grad_value(&mut g, 1.0), 2);
        assert_eq!(g[0].as_ref().unwrap().data(), &[-1.0, 0.5, 1.0]);
    }
}
