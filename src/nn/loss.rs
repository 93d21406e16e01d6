//! Losses, composed from primitive ops so that both derivative rules come for free.

use crate::autodiff::Var;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};

/// Mean squared error `mean((pred − target)²)`.
pub fn mse<'t, T: Element>(pred: Var<'t, T>, target: Var<'t, T>) -> Result<Var<'t, T>> {
    if pred.shape() != target.shape() {
        return Err(Error::shape("mse", &pred.shape(), &target.shape()));
    }
    Ok(pred.sub(target)?.powf(2.0).mean_all())
}

/// Softmax cross-entropy from logits `[batch, classes]` and class indices, averaged over
/// the batch: `mean(logsumexp(z) − z[label])`, stable for large logits.
pub fn cross_entropy<'t, T: Element>(logits: Var<'t, T>, labels: &[usize]) -> Result<Var<'t, T>> {
    let shape = logits.shape();
    if shape.len() != 2 || shape[0] != labels.len() {
        return Err(Error::shape_detail(
            "cross_entropy",
            &shape,
            &[labels.len()],
            "logits must be [batch, classes] with one label per row",
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= shape[1]) {
        return Err(Error::invalid(
            "cross_entropy",
            format!("label {bad} out of range for {} classes", shape[1]),
        ));
    }
    let lse = logits.logsumexp(&[1], false)?;
    let picked = logits.gather(1, labels)?.reshape(&[labels.len()])?;
    Ok(lse.sub(picked)?.mean_all())
}

/// [`cross_entropy`] on plain values (evaluation, no tape): the mean over the rows of
/// `logsumexp(z) − z[label]`, by the same kernels.
pub fn cross_entropy_values<T: Element>(logits: &Tensor<T>, labels: &[usize]) -> Result<T> {
    let shape = logits.shape();
    if shape.len() != 2 || shape[0] != labels.len() {
        return Err(Error::shape_detail(
            "cross_entropy",
            shape,
            &[labels.len()],
            "logits must be [batch, classes] with one label per row",
        ));
    }
    let lse = logits.logsumexp(&[1], false)?;
    let picked = logits.gather(1, labels)?.reshape(&[labels.len()])?;
    lse.sub(&picked)?.mean(&[0], false)?.item()
}

/// [`mse`] on plain values (evaluation, no tape).
pub fn mse_values<T: Element>(pred: &Tensor<T>, target: &Tensor<T>) -> Result<T> {
    if pred.shape() != target.shape() {
        return Err(Error::shape("mse", pred.shape(), target.shape()));
    }
    let squares = pred.sub(target)?.powf(2.0);
    let axes: Vec<usize> = (0..squares.ndim()).collect();
    squares.mean(&axes, false)?.item()
}

/// Binary cross-entropy from logits `z` and targets `y` in [0, 1], averaged:
/// `mean(max(z, 0) − z·y + ln(1 + e^{−|z|}))`, stable for large |z|.
pub fn bce_with_logits<'t, T: Element>(
    logits: Var<'t, T>,
    targets: Var<'t, T>,
) -> Result<Var<'t, T>> {
    if logits.shape() != targets.shape() {
        return Err(Error::shape(
            "bce_with_logits",
            &logits.shape(),
            &targets.shape(),
        ));
    }
    let softplus_tail = logits.abs().neg().exp().add_scalar(1.0).ln();
    Ok(logits
        .relu()
        .sub(logits.mul(targets)?)?
        .add(softplus_tail)?
        .mean_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::{GradcheckOptions, Tape, gradcheck};
    use crate::tensor::Tensor;

    #[test]
    fn cross_entropy_known_value_and_gradient() {
        let tape = Tape::<f64>::new();
        let z = tape.var(Tensor::from_vec(vec![0.0, 0.0, 1000.0, 0.0], &[2, 2]).unwrap());
        let l = cross_entropy(z, &[0, 1]).unwrap();
        // row 0: ln 2; row 1: 1000 (stable, no overflow)
        assert!((l.item().unwrap() - (2f64.ln() + 1000.0) / 2.0).abs() < 1e-9);
        let r = gradcheck(
            |_, v| cross_entropy(v[0], &[2, 0, 1]),
            &[Tensor::randn(&[3, 4], 1).unwrap()],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
        assert!(cross_entropy(z, &[0, 5]).is_err());
    }

    #[test]
    fn bce_and_mse_match_their_formulas_and_gradients() {
        let tape = Tape::<f64>::new();
        let z = tape.var(Tensor::from_vec(vec![0.0, 50.0], &[2]).unwrap());
        let y = tape.constant(Tensor::from_vec(vec![1.0, 0.0], &[2]).unwrap());
        let l = bce_with_logits(z, y).unwrap().item().unwrap();
        assert!((l - (2f64.ln() + 50.0) / 2.0).abs() < 1e-9, "{l}");
        let targets = Tensor::rand_uniform(&[5], 0.0, 1.0, 4).unwrap();
        let r = gradcheck(
            |t, v| bce_with_logits(v[0], t.constant(targets.clone())),
            &[Tensor::randn(&[5], 3).unwrap()],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
        // mse is the mean of squares: ((1-0)² + (2-0)²) / 2 = 2.5
        let p = tape.var(Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
        let t0 = tape.constant(Tensor::from_vec(vec![0.0, 0.0], &[2]).unwrap());
        let m = mse(p, t0).unwrap().item().unwrap();
        assert!((m - 2.5).abs() < 1e-12, "{m}");
        // a non-symmetric case: ((3-1)² + (-1-1)² + (0.5-2)²) / 3 = (4 + 4 + 2.25) / 3
        let p = tape.var(Tensor::from_vec(vec![3.0, -1.0, 0.5], &[3]).unwrap());
        let t1 = tape.constant(Tensor::from_vec(vec![1.0, 1.0, 2.0], &[3]).unwrap());
        let m = mse(p, t1).unwrap().item().unwrap();
        assert!((m - 10.25 / 3.0).abs() < 1e-12, "{m}");
        let r = gradcheck(
            |_, v| mse(v[0], v[1]),
            &[
                Tensor::randn(&[4, 2], 5).unwrap(),
                Tensor::randn(&[4, 2], 6).unwrap(),
            ],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(r.max_rel_err < 1e-6, "{r:?}");
    }
}
