//! Finding a cliff in a run's record, and what the two kinds of clipping do to the
//! gradient met there.

use chainrule::tensor::Tensor;
use serde::Serialize;

/// Steps of the loss averaged before a spike, and looked through after it.
const BEFORE: usize = 20;
const AFTER: usize = 20;

/// The step whose gradient norm stands furthest above the norms before it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spike {
    /// The step, numbered as the trainer numbers it (from 1, as in metrics.jsonl).
    pub step: usize,
    /// Its position in the record (the number of steps taken before it).
    pub index: usize,
    /// Its gradient norm before clipping.
    pub norm: f64,
    /// That norm over the median norm of every earlier step.
    pub ratio: f64,
    /// The highest training loss of the next 20 steps minus the mean of the 20 before
    /// the spike (nats; `None` when a loss after it is not finite).
    pub loss_jump: Option<f64>,
}

/// The record's entry `s ≥ from` with the largest ratio of its gradient norm to the
/// running median (the median of the finite norms of entries `0..s`). `norms[i]` is the
/// trainer's `(step, norm before clipping, clipped)` and `losses[i]` the same step's loss.
/// Non-finite norms are skipped (the trainer stops at the first of them).
pub fn find_spike(norms: &[(usize, f64, bool)], losses: &[f64], from: usize) -> Option<Spike> {
    let mut seen: Vec<f64> = Vec::with_capacity(norms.len());
    let mut best: Option<Spike> = None;
    for (s, &(step, norm, _)) in norms.iter().enumerate() {
        if !norm.is_finite() {
            continue;
        }
        if s >= from.max(1) && !seen.is_empty() {
            let mid = seen.len() / 2;
            let median = if seen.len() % 2 == 1 {
                seen[mid]
            } else {
                (seen[mid - 1] + seen[mid]) / 2.0
            };
            let ratio = norm / median;
            if ratio.is_finite() && best.as_ref().is_none_or(|b| ratio > b.ratio) {
                best = Some(Spike {
                    step,
                    index: s,
                    norm,
                    ratio,
                    loss_jump: loss_jump(losses, s),
                });
            }
        }
        // keep `seen` sorted: insert after every equal value
        let at = seen.partition_point(|&v| v <= norm);
        seen.insert(at, norm);
    }
    best
}

fn loss_jump(losses: &[f64], s: usize) -> Option<f64> {
    let before = &losses[s.saturating_sub(BEFORE)..s.min(losses.len())];
    let after = losses.get(s + 1..(s + 1 + AFTER).min(losses.len()))?;
    if before.is_empty() || after.is_empty() {
        return None;
    }
    let mean = before.iter().sum::<f64>() / before.len() as f64;
    let mut high = f64::NEG_INFINITY;
    for &l in after {
        if !l.is_finite() {
            return None;
        }
        high = high.max(l);
    }
    Some(high - mean).filter(|j| j.is_finite())
}

/// How a clipping method changed one gradient.
#[derive(Clone, Debug, Serialize)]
pub struct Angle {
    /// `norm` (scale the whole gradient) or `value` (cap each element).
    pub method: &'static str,
    /// The norm cap, or the cap on each element's magnitude.
    pub threshold: f64,
    /// The angle between the clipped and the raw gradient, in degrees.
    pub degrees: f64,
    /// The global norm after clipping.
    pub norm_after: f64,
    /// The share of elements the method changed.
    pub changed: f64,
}

/// The angle between two gradients (all parameters taken together), in degrees, in f64;
/// NaN when either is zero or not finite.
pub fn angle_degrees(a: &[Option<Tensor<f32>>], b: &[Option<Tensor<f32>>]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (Some(x), Some(y)) = (x, y) else { continue };
        for (&u, &v) in x.data().iter().zip(y.data()) {
            let (u, v) = (f64::from(u), f64::from(v));
            dot += u * v;
            aa += u * u;
            bb += v * v;
        }
    }
    let cos = dot / (aa.sqrt() * bb.sqrt());
    if !cos.is_finite() {
        return f64::NAN;
    }
    cos.clamp(-1.0, 1.0).acos().to_degrees()
}

/// The share of elements that differ between two gradients.
pub fn changed_share(a: &[Option<Tensor<f32>>], b: &[Option<Tensor<f32>>]) -> f64 {
    let (mut changed, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (Some(x), Some(y)) = (x, y) else { continue };
        total += x.len();
        changed += x
            .data()
            .iter()
            .zip(y.data())
            .filter(|(u, v)| u != v)
            .count();
    }
    changed as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainer's record of these norms: steps numbered from 1, none clipped.
    fn record(norms: &[f64]) -> Vec<(usize, f64, bool)> {
        norms
            .iter()
            .enumerate()
            .map(|(i, &n)| (i + 1, n, false))
            .collect()
    }

    #[test]
    fn the_spike_is_measured_against_the_median_of_the_steps_before_it() {
        // norms 1, 2, 3, ... then 500 at step 10; the median of steps 0..10 is 5.5
        let mut norms: Vec<f64> = (1..=10).map(f64::from).collect();
        norms.push(500.0);
        norms.extend([1.0; 30]);
        let mut losses = vec![2.0; norms.len()];
        losses[15] = 6.0;
        let s = find_spike(&record(&norms), &losses, 4).unwrap();
        assert_eq!((s.index, s.step), (10, 11));
        assert_eq!(s.ratio, 500.0 / 5.5);
        assert_eq!(s.loss_jump, Some(4.0));
        // before `from` nothing counts: the same spike at step 2 is not seen
        let s = find_spike(&record(&[1.0, 1.0, 500.0, 1.0, 2.0]), &[1.0; 5], 3).unwrap();
        assert_eq!((s.index, s.ratio), (4, 2.0));
        // a NaN norm is skipped, not a spike and not a median
        let s = find_spike(&record(&[1.0, f64::NAN, 1.0, 3.0]), &[1.0; 4], 1).unwrap();
        assert_eq!((s.index, s.ratio), (3, 3.0));
        // a loss that goes non-finite after the spike leaves the jump unknown
        let losses = [1.0, 1.0, 1.0, f64::INFINITY];
        let s = find_spike(&record(&[1.0, 1.0, 9.0, 1.0]), &losses, 1).unwrap();
        assert_eq!((s.index, s.loss_jump), (2, None));
        assert_eq!(find_spike(&record(&[1.0]), &[1.0], 0), None);
    }

    #[test]
    fn angles_between_gradients() {
        let t = |v: Vec<f32>| Some(Tensor::from_vec(v.clone(), &[v.len()]).unwrap());
        let raw = vec![t(vec![3.0, 0.0]), t(vec![0.0]), None];
        let scaled = vec![t(vec![0.3, 0.0]), t(vec![0.0]), None];
        let turned = vec![t(vec![3.0, 3.0]), t(vec![0.0]), None];
        assert_eq!(angle_degrees(&raw, &scaled), 0.0);
        assert!((angle_degrees(&raw, &turned) - 45.0).abs() < 1e-12);
        assert!(angle_degrees(&raw, &[t(vec![0.0, 0.0]), t(vec![0.0]), None]).is_nan());
        assert_eq!(changed_share(&raw, &turned), 1.0 / 3.0);
    }
}
