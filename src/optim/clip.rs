//! Gradient clipping, applied between the backward pass and the optimizer step.

use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};

/// The L2 norm of all gradients taken together, accumulated in f64.
pub fn global_norm<T: Element>(grads: &[Option<Tensor<T>>]) -> f64 {
    grads
        .iter()
        .flatten()
        .map(|g| {
            g.data()
                .iter()
                .map(|v| v.as_f64() * v.as_f64())
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

/// The L2 norm of each gradient (0 for an absent one), accumulated in f64.
pub fn grad_norms<T: Element>(grads: &[Option<Tensor<T>>]) -> Vec<f64> {
    grads
        .iter()
        .map(|g| {
            g.as_ref().map_or(0.0, |g| {
                g.data()
                    .iter()
                    .map(|v| v.as_f64() * v.as_f64())
                    .sum::<f64>()
                    .sqrt()
            })
        })
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
        for g in grads.iter_mut().flatten() {
            for v in g.data_mut() {
                *v *= c;
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
