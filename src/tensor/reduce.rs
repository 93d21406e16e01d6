//! Reductions over chosen axes (sum, mean, max, logsumexp) and the stable softmax family.
//! Each axis is reduced as `[outer, r, inner] → [outer, 1, inner]`, so the inner loop
//! always runs over contiguous memory.

use super::shape::{Shape, split_at_axis};
use super::{Element, Tensor};
use crate::error::{Error, Result};

/// Sorted, deduplicated axes, checked against the rank.
pub(crate) fn normalize_axes(op: &'static str, axes: &[usize], ndim: usize) -> Result<Vec<usize>> {
    let mut v = axes.to_vec();
    v.sort_unstable();
    v.dedup();
    if let Some(&a) = v.iter().find(|&&a| a >= ndim) {
        return Err(Error::invalid(
            op,
            format!("axis {a} out of range for a tensor of {ndim} dimensions"),
        ));
    }
    Ok(v)
}

#[derive(Clone, Copy)]
enum Fold {
    Sum,
    Max,
}

fn reduce_one_axis<T: Element>(x: &Tensor<T>, axis: usize, fold: Fold) -> Tensor<T> {
    let (outer, r, inner) = split_at_axis(x.shape(), axis);
    let mut shape = Shape::from_slice(x.shape());
    shape[axis] = 1;
    let src = x.data();
    Tensor::build(&shape, |out| {
        if inner == 0 {
            return; // an empty output (a zero dimension after the axis): nothing to fold
        }
        for o in 0..outer {
            let dst = &mut out[o * inner..(o + 1) * inner];
            let block = &src[o * r * inner..(o + 1) * r * inner];
            match fold {
                Fold::Sum if inner == 1 => dst[0] = block.iter().copied().sum(),
                Fold::Max if inner == 1 => {
                    // not `T::max`, which drops NaN: a NaN must reach the result
                    dst[0] = block.iter().copied().fold(T::neg_infinity(), |d, v| {
                        if v > d || v.is_nan() { v } else { d }
                    })
                }
                Fold::Sum => {
                    for row in block.chunks_exact(inner) {
                        for (d, &v) in dst.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                }
                Fold::Max => {
                    dst.fill(T::neg_infinity());
                    for row in block.chunks_exact(inner) {
                        for (d, &v) in dst.iter_mut().zip(row) {
                            *d = if v > *d || v.is_nan() { v } else { *d };
                        }
                    }
                }
            }
        }
    })
}

fn reduce<T: Element>(
    x: &Tensor<T>,
    op: &'static str,
    axes: &[usize],
    keepdim: bool,
    fold: Fold,
) -> Result<Tensor<T>> {
    let axes = normalize_axes(op, axes, x.ndim())?;
    let mut y = x.clone();
    for &a in &axes {
        y = reduce_one_axis(&y, a, fold);
    }
    Ok(if keepdim { y } else { y.squeeze_axes(&axes) })
}

impl<T: Element> Tensor<T> {
    /// Sum over `axes`; with `keepdim` the reduced axes stay with size 1.
    pub fn sum(&self, axes: &[usize], keepdim: bool) -> Result<Tensor<T>> {
        reduce(self, "sum", axes, keepdim, Fold::Sum)
    }

    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Tensor<T> {
        Tensor::scalar(self.data().iter().copied().sum())
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[usize], keepdim: bool) -> Result<Tensor<T>> {
        let s = self.sum(axes, keepdim)?;
        let count: usize = normalize_axes("mean", axes, self.ndim())?
            .iter()
            .map(|&a| self.shape()[a])
            .product();
        Ok(s.mul_scalar(1.0 / count as f64))
    }

    /// Maximum over `axes`.
    pub fn max(&self, axes: &[usize], keepdim: bool) -> Result<Tensor<T>> {
        reduce(self, "max", axes, keepdim, Fold::Max)
    }

    /// `ln Σ exp(x)` over `axes`, computed stably by shifting by the maximum.
    pub fn logsumexp(&self, axes: &[usize], keepdim: bool) -> Result<Tensor<T>> {
        let m = self.max(axes, true)?;
        // an all -inf slice has max -inf; shift by 0 there so the result is -inf, not NaN
        let m = m.map(|v| if v.is_finite() { v } else { T::zero() });
        let s = self.sub(&m)?.exp().sum(axes, true)?;
        let out = s.ln().add(&m)?;
        if keepdim {
            Ok(out)
        } else {
            Ok(out.squeeze_axes(&normalize_axes("logsumexp", axes, self.ndim())?))
        }
    }

    /// `exp(x) / Σ exp(x)` along `axis`, stable for large inputs.
    pub fn softmax(&self, axis: usize) -> Result<Tensor<T>> {
        Ok(self.log_softmax(axis)?.exp())
    }

    /// `x - logsumexp(x)` along `axis`.
    pub fn log_softmax(&self, axis: usize) -> Result<Tensor<T>> {
        let lse = self.logsumexp(&[axis], true)?;
        self.sub(&lse)
    }

    /// Index of the largest element along the last axis, for each row (the first NaN
    /// where a row has one).
    pub fn argmax_rows(&self) -> Vec<usize> {
        let n = *self.shape().last().unwrap_or(&1);
        if n == 0 {
            return Vec::new();
        }
        self.data()
            .chunks_exact(n)
            .map(|row| {
                let mut best = 0;
                // a NaN counts as the largest value (PyTorch's argmax): the first NaN
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] || (v.is_nan() && !row[best].is_nan()) {
                        best = i;
                    }
                }
                best
            })
            .collect()
    }

    /// Applies `f` to every element.
    pub fn map(&self, f: impl Fn(T) -> T) -> Tensor<T> {
        Tensor::build(self.shape(), |out| {
            for (o, &v) in out.iter_mut().zip(self.data()) {
                *o = f(v);
            }
        })
    }

    /// Sums a broadcast gradient back to `shape` (the adjoint of broadcasting).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor<T>> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let nd = self.ndim();
        if shape.len() > nd {
            return Err(Error::shape("sum_to_shape", self.shape(), shape));
        }
        let pad = nd - shape.len();
        let mut axes = Vec::new();
        for i in 0..nd {
            let target = if i < pad { 1 } else { shape[i - pad] };
            if target == 1 && self.shape()[i] != 1 {
                axes.push(i);
            } else if target != self.shape()[i] {
                return Err(Error::shape("sum_to_shape", self.shape(), shape));
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_means() {
        let x = Tensor::<f64>::arange(6).unwrap().reshape(&[2, 3]).unwrap();
        assert_eq!(x.sum(&[0], false).unwrap().data(), &[3., 5., 7.]);
        assert_eq!(x.sum(&[1], true).unwrap().shape(), &[2, 1]);
        assert_eq!(x.sum(&[1], false).unwrap().data(), &[3., 12.]);
        assert_eq!(x.sum(&[0, 1], false).unwrap().shape(), &[] as &[usize]);
        assert_eq!(x.sum(&[0, 1], false).unwrap().item().unwrap(), 15.0);
        assert_eq!(x.mean(&[1], false).unwrap().data(), &[1., 4.]);
        assert_eq!(x.max(&[0], false).unwrap().data(), &[3., 4., 5.]);
        assert!(x.sum(&[2], false).is_err());
    }

    #[test]
    fn max_keeps_a_nan_along_every_axis() {
        let x = Tensor::<f64>::from_vec(vec![1.0, f64::NAN, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        // along the last axis (one contiguous row) and along the first
        let rows = x.max(&[1], false).unwrap();
        assert!(
            rows.data()[0].is_nan() && rows.data()[1] == 6.0,
            "{:?}",
            rows.data()
        );
        let cols = x.max(&[0], false).unwrap();
        assert!(
            cols.data()[1].is_nan() && cols.data()[0] == 4.0,
            "{:?}",
            cols.data()
        );
    }

    #[test]
    fn logsumexp_is_stable() {
        let x = Tensor::<f64>::from_vec(vec![1000.0, 1000.0, -1000.0, -1000.0], &[2, 2]).unwrap();
        let l = x.logsumexp(&[1], false).unwrap();
        assert!((l.data()[0] - (1000.0 + 2f64.ln())).abs() < 1e-12);
        assert!((l.data()[1] - (-1000.0 + 2f64.ln())).abs() < 1e-12);
        let s = Tensor::<f32>::from_vec(vec![1e4, 0.0], &[2])
            .unwrap()
            .softmax(0)
            .unwrap();
        assert_eq!(s.data(), &[1.0, 0.0]);
        let inf = Tensor::<f64>::full(&[3], f64::NEG_INFINITY)
            .unwrap()
            .logsumexp(&[0], false)
            .unwrap();
        assert_eq!(inf.item().unwrap(), f64::NEG_INFINITY);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let x = Tensor::<f64>::arange(12).unwrap().reshape(&[3, 4]).unwrap();
        let s = x.softmax(1).unwrap().sum(&[1], false).unwrap();
        for v in s.data() {
            assert!((v - 1.0).abs() < 1e-12);
        }
        let ls = x.log_softmax(0).unwrap().exp().sum(&[0], false).unwrap();
        for v in ls.data() {
            assert!((v - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn sum_to_shape_undoes_broadcast() {
        let g = Tensor::<f64>::ones(&[4, 2, 3]).unwrap();
        assert_eq!(g.sum_to_shape(&[3]).unwrap().data(), &[8., 8., 8.]);
        assert_eq!(g.sum_to_shape(&[2, 1]).unwrap().data(), &[12., 12.]);
        assert_eq!(g.sum_to_shape(&[]).unwrap().item().unwrap(), 24.0);
    }
}
