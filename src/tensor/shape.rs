//! Shapes, broadcasting and the shape ops (reshape, permute, broadcast, narrow, concat,
//! index_select, gather). Every shape op produces a new contiguous tensor except
//! `reshape`, which shares the buffer.

use super::{Element, PARALLEL_MIN_LEN, Tensor};
use crate::error::{Dims, Error, Result};
use rayon::prelude::*;
use smallvec::SmallVec;

/// A shape: up to four dimensions are stored inline, without a heap allocation.
pub type Shape = SmallVec<[usize; 4]>;

/// `dims` as a [`Shape`]: up to four dimensions copied as one fixed block (the general
/// copy calls `memcpy`, which costs as much as the rest of a small op's bookkeeping).
#[inline]
pub(crate) fn shape_of(dims: &[usize]) -> Shape {
    if dims.len() > 4 {
        return Shape::from_slice(dims);
    }
    let dim = |i: usize| dims.get(i).copied().unwrap_or(0);
    Shape::from_buf_and_len([dim(0), dim(1), dim(2), dim(3)], dims.len())
}

/// The most elements a tensor may hold: `isize::MAX` bytes of `f64`, the most one
/// allocation can address. Kept for every element type so that a shape valid for one
/// is valid for the other (a cast never fails).
pub const MAX_ELEMENTS: usize = isize::MAX as usize / std::mem::size_of::<f64>();

/// The number of elements of `shape`, or an error naming `op` and the shape when its
/// dimensions multiply past [`MAX_ELEMENTS`]. Zero dimensions are skipped in the check,
/// so in a valid shape every product of some of its dimensions fits in `usize` too
/// (`[0, 2^40, 2^40]` is refused although it holds no elements): kernels then index
/// with plain arithmetic. Checked in release builds as in debug ones.
pub fn checked_len(op: &'static str, shape: &[usize]) -> Result<usize> {
    let mut nonzero: usize = 1;
    let mut empty = false;
    for &d in shape {
        if d == 0 {
            empty = true;
            continue;
        }
        nonzero = nonzero
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| Error::TooLarge {
                op,
                shape: Dims(shape.to_vec()),
            })?;
    }
    Ok(if empty { 0 } else { nonzero })
}

/// The NumPy broadcast of two shapes, or an error naming `op` and both shapes (or the
/// size, when the broadcast shape holds more than [`MAX_ELEMENTS`]).
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Shape> {
    let n = a.len().max(b.len());
    let mut out = Shape::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out.push(match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape_detail(
                    op,
                    a,
                    b,
                    format!("dimension {da} cannot broadcast against {db}"),
                ));
            }
        });
    }
    checked_len(op, &out)?;
    Ok(out)
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Shape {
    let mut s: Shape = SmallVec::from_elem(1, shape.len());
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` seen from the broadcast shape `out` (0 on broadcast dimensions).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Shape {
    let own = strides(shape);
    let pad = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < pad || shape[i - pad] == 1 {
                0
            } else {
                own[i - pad]
            }
        })
        .collect()
}

/// Calls `f(out_index, offsets)` for every element of `out` in row-major order, where
/// `offsets[j]` is the offset into input `j` whose strides are `strides[j]`.
/// Odometer over the outer dimensions, plain loop over the last one.
pub(crate) fn for_each_offset<const N: usize>(
    out: &[usize],
    strides: [&[usize]; N],
    mut f: impl FnMut(usize, [usize; N]),
) {
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    if out.is_empty() {
        f(0, [0; N]);
        return;
    }
    let nd = out.len();
    let last = out[nd - 1];
    let inner: [usize; N] = std::array::from_fn(|j| strides[j][nd - 1]);
    let mut idx: Shape = SmallVec::from_elem(0, nd);
    let mut base = [0usize; N];
    let mut pos = 0;
    while pos < total {
        let mut off = base;
        for _ in 0..last {
            f(pos, off);
            pos += 1;
            for j in 0..N {
                off[j] += inner[j];
            }
        }
        // advance the odometer over dimensions 0..nd-1
        let mut d = nd - 1;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            for j in 0..N {
                base[j] += strides[j][d];
            }
            if idx[d] < out[d] {
                break;
            }
            for j in 0..N {
                base[j] -= strides[j][d] * out[d];
            }
            idx[d] = 0;
        }
    }
}

fn check_axis(op: &'static str, axis: usize, ndim: usize) -> Result<()> {
    if axis >= ndim {
        Err(Error::invalid(
            op,
            format!("axis {axis} out of range for a tensor of {ndim} dimensions"),
        ))
    } else {
        Ok(())
    }
}

/// Sizes of the dimensions before, at and after `axis`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

impl<T: Element> Tensor<T> {
    /// Same data, new shape with the same number of elements (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let n = checked_len("reshape", shape)?;
        if n != self.len() {
            return Err(Error::shape_detail(
                "reshape",
                self.shape(),
                shape,
                format!("{} elements cannot be viewed as {}", self.len(), n),
            ));
        }
        Ok(Tensor::with_shape(self.buffer().clone(), shape))
    }

    /// Reorders the axes: output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Self> {
        let nd = self.ndim();
        let mut seen = vec![false; nd];
        if perm.len() != nd
            || perm
                .iter()
                .any(|&p| p >= nd || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape_detail(
                "permute",
                self.shape(),
                perm,
                "the permutation must list every axis once",
            ));
        }
        let in_strides = strides(self.shape());
        let out_shape: Shape = perm.iter().map(|&p| self.shape()[p]).collect();
        let perm_strides: Shape = perm.iter().map(|&p| in_strides[p]).collect();
        let src = self.data();
        Ok(Tensor::build(&out_shape, |d| {
            for_each_offset(&out_shape, [&perm_strides], |i, [o]| d[i] = src[o]);
        }))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Self> {
        check_axis("transpose", a.max(b), self.ndim())?;
        let mut perm: Vec<usize> = (0..self.ndim()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// The transpose of a matrix (swaps the last two axes).
    pub fn t(&self) -> Result<Self> {
        if self.ndim() < 2 {
            return Err(Error::invalid(
                "t",
                format!("needs 2 or more dimensions, got shape {:?}", self.shape()),
            ));
        }
        self.transpose(self.ndim() - 2, self.ndim() - 1)
    }

    /// Repeats the tensor along broadcast dimensions to reach `shape` (NumPy rules).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Self> {
        let out = broadcast_shapes("broadcast_to", self.shape(), shape)?;
        if out.as_slice() != shape {
            return Err(Error::shape("broadcast_to", self.shape(), shape));
        }
        if out.as_slice() == self.shape() {
            return Ok(self.clone());
        }
        let st = broadcast_strides(self.shape(), &out);
        let src = self.data();
        Ok(Tensor::build(&out, |d| {
            for_each_offset(&out, [&st], |i, [o]| d[i] = src[o]);
        }))
    }

    /// The slice `start..start+len` along `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        check_axis("narrow", axis, self.ndim())?;
        let (outer, size, inner) = split_at_axis(self.shape(), axis);
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} out of bounds for axis {axis} of size {size} (shape {:?})",
                    start as u128 + len as u128,
                    self.shape()
                ),
            ));
        }
        let mut shape = Shape::from_slice(self.shape());
        shape[axis] = len;
        let src = self.data();
        Ok(Tensor::build(&shape, |d| {
            for o in 0..outer {
                let from = (o * size + start) * inner;
                d[o * len * inner..(o + 1) * len * inner]
                    .copy_from_slice(&src[from..from + len * inner]);
            }
        }))
    }

    /// Joins tensors along `axis`; all other dimensions must agree.
    pub fn concat(parts: &[Tensor<T>], axis: usize) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))?;
        check_axis("concat", axis, first.ndim())?;
        for p in &parts[1..] {
            let same_rank = p.ndim() == first.ndim();
            if !same_rank
                || p.shape()
                    .iter()
                    .zip(first.shape())
                    .enumerate()
                    .any(|(i, (a, b))| i != axis && a != b)
            {
                return Err(Error::shape_detail(
                    "concat",
                    first.shape(),
                    p.shape(),
                    format!("all dimensions except axis {axis} must match"),
                ));
            }
        }
        let (outer, _, inner) = split_at_axis(first.shape(), axis);
        let total = parts
            .iter()
            .try_fold(0usize, |n, p| n.checked_add(p.shape()[axis]));
        let mut shape = Shape::from_slice(first.shape());
        shape[axis] = total.unwrap_or(usize::MAX);
        checked_len("concat", &shape)?;
        Ok(Tensor::build(&shape, |d| {
            let mut at = 0;
            for o in 0..outer {
                for p in parts {
                    let chunk = p.shape()[axis] * inner;
                    d[at..at + chunk].copy_from_slice(&p.data()[o * chunk..(o + 1) * chunk]);
                    at += chunk;
                }
            }
        }))
    }

    /// Picks the entries `indices` along `axis` (like `torch.index_select`).
    pub fn index_select(&self, axis: usize, indices: &[usize]) -> Result<Self> {
        check_axis("index_select", axis, self.ndim())?;
        let (_, size, inner) = split_at_axis(self.shape(), axis);
        if let Some(bad) = indices.iter().find(|&&i| i >= size) {
            return Err(Error::invalid(
                "index_select",
                format!("index {bad} out of range for axis {axis} of size {size}"),
            ));
        }
        let mut shape = Shape::from_slice(self.shape());
        shape[axis] = indices.len();
        checked_len("index_select", &shape)?;
        let src = self.data();
        Ok(Tensor::build(&shape, |d| {
            // output row `r` (of `inner` elements) is row `indices[r % n]` of block
            // `r / n` of the source, where n = indices.len(); `rows` starts at row `block`
            // (a non-empty output has n > 0 and inner > 0)
            let copy = |block: usize, rows: &mut [T]| {
                let n = indices.len();
                let (mut o, mut j) = (block / n, block % n);
                for row in rows.chunks_exact_mut(inner) {
                    let from = (o * size + indices[j]) * inner;
                    row.copy_from_slice(&src[from..from + inner]);
                    j += 1;
                    if j == n {
                        (o, j) = (o + 1, 0);
                    }
                }
            };
            // A batch of rows picked from a large dataset comes from main memory, a few
            // cache misses for each row, and two cores keep twice as many in flight:
            // MNIST's batch of 128 rows of 784 out of 188 MB took 104–111 µs of a 1.3 ms
            // training step on one core, 59–94 µs on two (2-core AMD EPYC).
            if d.is_empty() {
                // no rows, or rows of nothing (and then `copy` would divide by zero)
            } else if d.len() >= PARALLEL_MIN_LEN && rayon::current_num_threads() > 1 {
                let rows = (PARALLEL_MIN_LEN / 4).div_ceil(inner);
                d.par_chunks_mut(rows * inner)
                    .enumerate()
                    .for_each(|(c, block)| copy(c * rows, block));
            } else {
                copy(0, d);
            }
        }))
    }

    /// `out[.., j, ..] = self[.., index[.., j, ..], ..]` along `axis` (like `torch.gather`).
    /// `index` is row-major with the shape of `self` except along `axis`, where it has
    /// `index.len() / (other dimensions)` entries.
    pub fn gather(&self, axis: usize, index: &[usize]) -> Result<Self> {
        check_axis("gather", axis, self.ndim())?;
        let (outer, size, inner) = split_at_axis(self.shape(), axis);
        let rest = outer * inner;
        if rest == 0 || !index.len().is_multiple_of(rest) {
            return Err(Error::invalid(
                "gather",
                format!(
                    "{} indices do not fit shape {:?} along axis {axis}",
                    index.len(),
                    self.shape()
                ),
            ));
        }
        let k = index.len() / rest;
        if let Some(bad) = index.iter().find(|&&i| i >= size) {
            return Err(Error::invalid(
                "gather",
                format!("index {bad} out of range for axis {axis} of size {size}"),
            ));
        }
        let mut shape = Shape::from_slice(self.shape());
        shape[axis] = k;
        checked_len("gather", &shape)?;
        let src = self.data();
        Ok(Tensor::build(&shape, |d| {
            for o in 0..outer {
                for j in 0..k {
                    for i in 0..inner {
                        let pos = (o * k + j) * inner + i;
                        d[pos] = src[(o * size + index[pos]) * inner + i];
                    }
                }
            }
        }))
    }

    /// Removes every dimension of size 1 at the given axes.
    pub(crate) fn squeeze_axes(&self, axes: &[usize]) -> Self {
        let shape: Shape = self
            .shape()
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect();
        Tensor::with_shape(self.buffer().clone(), &shape)
    }
}

/// Scatter-add, the adjoint of [`Tensor::gather`]: adds `src` into a zero tensor of
/// `shape` at the gathered positions.
pub(crate) fn gather_adjoint<T: Element>(
    src: &Tensor<T>,
    shape: &[usize],
    axis: usize,
    index: &[usize],
) -> Tensor<T> {
    let (outer, size, inner) = split_at_axis(shape, axis);
    let k = src.shape()[axis];
    let s = src.data();
    Tensor::build(shape, |d| {
        for o in 0..outer {
            for j in 0..k {
                for i in 0..inner {
                    let pos = (o * k + j) * inner + i;
                    d[(o * size + index[pos]) * inner + i] += s[pos];
                }
            }
        }
    })
}

/// Index-add, the adjoint of [`Tensor::index_select`].
pub(crate) fn index_select_adjoint<T: Element>(
    src: &Tensor<T>,
    shape: &[usize],
    axis: usize,
    indices: &[usize],
) -> Tensor<T> {
    let (outer, size, inner) = split_at_axis(shape, axis);
    let s = src.data();
    Tensor::build(shape, |d| {
        let mut at = 0;
        for o in 0..outer {
            for &i in indices {
                let to = (o * size + i) * inner;
                for (dv, sv) in d[to..to + inner].iter_mut().zip(&s[at..at + inner]) {
                    *dv += *sv;
                }
                at += inner;
            }
        }
    })
}

/// Writes `src` into a zero tensor of `shape` at `start..` along `axis`: the adjoint of narrow.
pub(crate) fn narrow_adjoint<T: Element>(
    src: &Tensor<T>,
    shape: &[usize],
    axis: usize,
    start: usize,
) -> Tensor<T> {
    let (outer, size, inner) = split_at_axis(shape, axis);
    let len = src.shape()[axis];
    Tensor::build(shape, |d| {
        for o in 0..outer {
            let to = (o * size + start) * inner;
            d[to..to + len * inner]
                .copy_from_slice(&src.data()[o * len * inner..(o + 1) * len * inner]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: &[f64], shape: &[usize]) -> Tensor<f64> {
        Tensor::from_vec(data.to_vec(), shape).unwrap()
    }

    #[test]
    fn broadcast_rules() {
        assert_eq!(
            broadcast_shapes("x", &[3, 1], &[4]).unwrap().as_slice(),
            &[3, 4]
        );
        assert_eq!(
            broadcast_shapes("x", &[], &[2, 2]).unwrap().as_slice(),
            &[2, 2]
        );
        let e = broadcast_shapes("add", &[3, 2], &[3])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add") && e.contains("[3, 2]") && e.contains("[3]"),
            "{e}"
        );
    }

    #[test]
    fn permute_and_transpose() {
        let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        let y = x.t().unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(y.data(), &[1., 4., 2., 5., 3., 6.]);
        let z = Tensor::<f64>::arange(24)
            .unwrap()
            .reshape(&[2, 3, 4])
            .unwrap();
        let p = z.permute(&[2, 0, 1]).unwrap();
        assert_eq!(p.shape(), &[4, 2, 3]);
        assert_eq!(p.get(&[3, 1, 2]).unwrap(), z.get(&[1, 2, 3]).unwrap());
        assert!(z.permute(&[0, 0, 1]).is_err());
    }

    #[test]
    fn reshape_error_names_both_shapes() {
        let e = Tensor::<f32>::zeros(&[2, 3])
            .unwrap()
            .reshape(&[4, 2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reshape") && e.contains("[2, 3]") && e.contains("[4, 2]"),
            "{e}"
        );
    }

    #[test]
    fn narrow_concat_roundtrip() {
        let x = Tensor::<f64>::arange(12).unwrap().reshape(&[3, 4]).unwrap();
        let a = x.narrow(1, 0, 1).unwrap();
        let b = x.narrow(1, 1, 3).unwrap();
        assert_eq!(Tensor::concat(&[a, b], 1).unwrap(), x);
        let e = Tensor::concat(&[x.clone(), Tensor::zeros(&[3, 5]).unwrap()], 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("concat") && e.contains("[3, 4]") && e.contains("[3, 5]"),
            "{e}"
        );
        assert!(x.narrow(0, 2, 2).is_err());
    }

    #[test]
    fn index_select_and_gather() {
        let x = Tensor::<f64>::arange(6).unwrap().reshape(&[2, 3]).unwrap();
        assert_eq!(
            x.index_select(1, &[2, 0]).unwrap().data(),
            &[2., 0., 5., 3.]
        );
        assert_eq!(x.index_select(0, &[1]).unwrap().data(), &[3., 4., 5.]);
        let g = x.gather(1, &[1, 2]).unwrap();
        assert_eq!(g.shape(), &[2, 1]);
        assert_eq!(g.data(), &[1., 5.]);
        assert!(x.gather(1, &[3, 0]).is_err());
        assert!(x.index_select(0, &[2]).is_err());
    }

    #[test]
    fn index_select_on_both_cores_picks_what_one_core_picks() {
        // outputs above the parallel threshold, along the first, a middle and the last
        // axis, compared with the entries picked one at a time
        let x = Tensor::<f32>::arange(4 * 300 * 70)
            .unwrap()
            .reshape(&[4, 300, 70])
            .unwrap();
        let at = |i: usize, j: usize, k: usize| x.data()[(i * 300 + j) * 70 + k];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let idx: Vec<usize> = (0..1000).map(|r| (r * 7 + 3) % 300).collect();
            let y = x.index_select(1, &idx).unwrap();
            assert!(y.len() >= PARALLEL_MIN_LEN);
            assert_eq!(y.shape(), &[4, 1000, 70]);
            for (n, &v) in y.data().iter().enumerate() {
                let (i, j, k) = (n / 70_000, n / 70 % 1000, n % 70);
                assert_eq!(v, at(i, idx[j], k), "axis 1, entry {n}");
            }
            let idx: Vec<usize> = (0..300).map(|r| (r * 5 + 1) % 4).collect();
            let y = x.index_select(0, &idx).unwrap();
            assert!(y.len() >= PARALLEL_MIN_LEN);
            for (n, &v) in y.data().iter().enumerate() {
                let (i, j, k) = (n / 21_000, n / 70 % 300, n % 70);
                assert_eq!(v, at(idx[i], j, k), "axis 0, entry {n}");
            }
            let idx: Vec<usize> = (0..100).map(|r| (r * 3) % 70).collect();
            let y = x.index_select(2, &idx).unwrap();
            assert!(y.len() >= PARALLEL_MIN_LEN);
            for (n, &v) in y.data().iter().enumerate() {
                let (i, j, k) = (n / 30_000, n / 100 % 300, n % 100);
                assert_eq!(v, at(i, j, idx[k]), "axis 2, entry {n}");
            }
            assert_eq!(x.index_select(1, &[]).unwrap().shape(), &[4, 0, 70]);
            let rows_of_nothing = Tensor::<f32>::zeros(&[3, 0]).unwrap();
            assert_eq!(
                rows_of_nothing.index_select(0, &[2, 0]).unwrap().shape(),
                &[2, 0]
            );
        });
    }

    #[test]
    fn broadcast_to_repeats() {
        let x = t(&[1., 2.], &[2, 1]);
        let y = x.broadcast_to(&[2, 3]).unwrap();
        assert_eq!(y.data(), &[1., 1., 1., 2., 2., 2.]);
        assert!(x.broadcast_to(&[3, 3]).is_err());
    }
}
