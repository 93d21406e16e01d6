//! Matrix products through `faer`, which picks AVX-512 or AVX2 kernels at run time.
//! Operands are raw row-major buffers read either as they are or transposed, so the
//! backward products `Aᵀ·G` and `G·Bᵀ` never materialise a transpose.

use super::{Element, Tensor};
use crate::error::{Error, Result};
use faer::{Accum, MatMut, MatRef, Par};

/// How a row-major buffer is read as a matrix operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatLayout {
    /// The buffer is the operand (`[rows, cols]`, row-major).
    Normal,
    /// The buffer holds the operand's transpose (`[cols, rows]`, row-major).
    Transposed,
}

/// Products with fewer multiply-adds than this run on one thread: handing a small
/// product to the thread pool costs more than it saves. Measured with
/// `chainrule bench mlp_gemm` (docs/performance.md).
const PARALLEL_MIN_MNK: usize = 8 * 1024 * 1024;

/// The threads [`Tensor::matmul`] (and the reverse rule of `matmul`) uses for an
/// `m×k · k×n` product: one for small products and below the parallel threshold, every
/// rayon thread of the calling context above it. The kernel calls this very function, so
/// what it reports (benchmarks print it) cannot drift from what ran.
pub fn matmul_threads(m: usize, n: usize, k: usize) -> usize {
    let mnk = m.saturating_mul(n).saturating_mul(k);
    // PARALLEL_MIN_MNK is above SMALL_MNK: the small-product path is always serial
    if mnk >= PARALLEL_MIN_MNK {
        rayon::current_num_threads()
    } else {
        1
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn faer_gemm<T: Element + faer::traits::ComplexField>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[T], MatLayout),
    rhs: (&[T], MatLayout),
    accumulate: bool,
    threads: usize,
) {
    // Checked products (a wrapped one could pass a plain `>=`), and dimensions that fit
    // in `isize` (the strides below are `isize`). Checked in release builds too.
    let fits = |buf: usize, rows: usize, cols: usize| {
        rows <= isize::MAX as usize
            && cols <= isize::MAX as usize
            && rows.checked_mul(cols).is_some_and(|n| n <= buf)
    };
    assert!(
        fits(dst.len(), m, n) && fits(lhs.0.len(), m, k) && fits(rhs.0.len(), k, n),
        "matmul: buffers of {}, {} and {} elements cannot hold a {m}x{k} by {k}x{n} product",
        dst.len(),
        lhs.0.len(),
        rhs.0.len()
    );
    let view = |buf: &[T], rows: usize, cols: usize, layout: MatLayout| -> MatRef<'_, T> {
        let (rs, cs) = match layout {
            MatLayout::Normal => (cols as isize, 1),
            MatLayout::Transposed => (1, rows as isize),
        };
        // SAFETY: `buf` holds at least rows·cols elements, a product checked without
        // overflow by the assert above (whatever the caller passed), and the strides
        // address element (i, j) at i·cols + j (row-major) or j·rows + i (transposed),
        // both below rows·cols; rows and cols fit in isize, so the strides do not wrap.
        unsafe { MatRef::from_raw_parts(buf.as_ptr(), rows, cols, rs, cs) }
    };
    let a = view(lhs.0, m, k, lhs.1);
    let b = view(rhs.0, k, n, rhs.1);
    // SAFETY: dst holds at least m·n elements (checked product, asserted above), is
    // addressed row-major below m·n, and is borrowed mutably for the view's lifetime.
    let c = unsafe { MatMut::from_raw_parts_mut(dst.as_mut_ptr(), m, n, n as isize, 1) };
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    if threads > 1
        && m >= threads * SPLIT_MIN_ROWS
        && m.saturating_mul(n).saturating_mul(k) <= SPLIT_MAX_MNK
    {
        split_rows(c, accum, a, b, threads);
        return;
    }
    let par = if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    };
    faer_product(c, accum, a, b, par);
}

/// faer's product, then [`clear_upper_state`] on this thread.
fn faer_product<T: Element + faer::traits::ComplexField>(
    c: MatMut<'_, T>,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    par: Par,
) {
    faer::linalg::matmul::matmul(c, accum, a, b, T::one(), par);
    clear_upper_state();
}

/// Zeroes the upper halves of the vector registers (`vzeroupper`) where the CPU has AVX.
/// faer's AVX-512 kernels return with them dirty, and until they are cleared every SSE
/// instruction this thread runs pays for it: a loop calling libm's `expf` over a GPT's
/// 768×73 logits took 6.9 ms after a product and 0.27 ms after this (the CPU switches
/// register states at each call between the SSE loop and the VEX-encoded `expf`).
#[inline]
pub(crate) fn clear_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // The instruction zeroes bits 128 and up of the vector registers; the compiler
        // knows the intrinsic clobbers them and keeps no live value there across it.
        // SAFETY: the CPU has AVX (checked just above), so the instruction exists.
        unsafe { std::arch::x86_64::_mm256_zeroupper() }
    }
}

/// Up to this many multiply-adds a parallel product gives each thread a block of output
/// rows and runs one single-threaded product per block, which measured faster than
/// faer's own parallel product at the MLP's batch-128 shapes (`bench mlp_gemm`: 15–20%
/// less time for most of them, on a 2-core Zen 4) and at 256³; at 1024³ faer's split
/// is as fast or faster, so larger products keep it.
const SPLIT_MAX_MNK: usize = 1 << 28;

/// The fewest output rows per thread worth a block of their own.
const SPLIT_MIN_ROWS: usize = 16;

/// `c ⟵ a·b` (or `c += a·b`) with `threads` single-threaded products on disjoint blocks
/// of rows of `c` (and `a`), forked in halves.
fn split_rows<T: Element + faer::traits::ComplexField>(
    c: MatMut<'_, T>,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    threads: usize,
) {
    if threads <= 1 {
        faer_product(c, accum, a, b, Par::Seq);
        return;
    }
    let left = threads / 2;
    let rows = c.nrows() * left / threads;
    let (c0, c1) = c.split_at_row_mut(rows);
    let (a0, a1) = a.split_at_row(rows);
    rayon::join(
        || split_rows(c0, accum, a0, b, left),
        || split_rows(c1, accum, a1, b, threads - left),
    );
}

/// Products with fewer multiply-adds than this use [`small_gemm`]: a GEMM library's
/// packing and dispatch cost microseconds, more than a tiny product itself.
const SMALL_MNK: usize = 16 * 1024;

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, or `dst += ...` with `accumulate`; the thread
/// count follows the size of the product. A raw kernel of the crate: the sizes come from
/// valid shapes ([`super::checked_len`]); buffers too small for them panic (a bug of the
/// caller), they are never read past their ends.
pub(crate) fn matmul_into<T: Element>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[T], MatLayout),
    rhs: (&[T], MatLayout),
    accumulate: bool,
) {
    matmul_into_threads(
        dst,
        (m, n, k),
        lhs,
        rhs,
        accumulate,
        matmul_threads(m, n, k),
    );
}

/// [`matmul_into`] with `threads` threads for the products that are not tiny.
fn matmul_into_threads<T: Element>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    lhs: (&[T], MatLayout),
    rhs: (&[T], MatLayout),
    accumulate: bool,
    threads: usize,
) {
    if n == 0 {
        return; // no outputs (and the row loops below take rows of n)
    }
    if m.saturating_mul(n).saturating_mul(k) <= SMALL_MNK {
        small_gemm(dst, m, n, k, lhs, rhs, accumulate);
    } else {
        T::gemm(dst, m, n, k, lhs, rhs, accumulate, threads);
    }
}

/// [`matmul_into`] on the calling thread alone, for products that run inside a parallel
/// loop of their own (a convolution's chunks of samples).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into_serial<T: Element>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[T], MatLayout),
    rhs: (&[T], MatLayout),
    accumulate: bool,
) {
    matmul_into_threads(dst, (m, n, k), lhs, rhs, accumulate, 1);
}

/// `dst += A·B` for rows of exactly `N` outputs: the accumulator is a fixed-size array
/// the compiler keeps in vector registers across the whole k loop.
#[inline(always)]
fn fixed_width_rows<T: Element, const N: usize>(
    dst: &mut [T],
    m: usize,
    k: usize,
    a_at: &impl Fn(usize, usize) -> T,
    b: &[T],
) {
    for i in 0..m {
        let mut acc = [T::zero(); N];
        for p in 0..k {
            let aip = a_at(i, p);
            let brow: &[T; N] = b[p * N..(p + 1) * N].try_into().expect("row of N");
            for j in 0..N {
                acc[j] += aip * brow[j];
            }
        }
        for (o, x) in dst[i * N..(i + 1) * N].iter_mut().zip(acc) {
            *o += x;
        }
    }
}

/// Plain loops for tiny products, compiled twice: for AVX2 (picked at run time) and for
/// the baseline x86-64 SSE2 that a portable build targets.
fn small_gemm<T: Element>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[T], MatLayout),
    rhs: (&[T], MatLayout),
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { small_gemm_avx2(dst, m, n, k, lhs, rhs, accumulate) };
            return;
        }
    }
    small_gemm_loops(dst, m, n, k, lhs, rhs, accumulate)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn small_gemm_avx2<T: Element>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[T], MatLayout),
    rhs: (&[T], MatLayout),
    accumulate: bool,
) {
    small_gemm_loops(dst, m, n, k, lhs, rhs, accumulate)
}

/// The loops, ordered so the innermost runs over contiguous memory (and vectorises) in
/// every layout.
#[inline(always)]
fn small_gemm_loops<T: Element>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    (a, la): (&[T], MatLayout),
    (b, lb): (&[T], MatLayout),
    accumulate: bool,
) {
    let dst = &mut dst[..m * n];
    if !accumulate {
        dst.fill(T::zero());
    }
    // read Bᵀ through a small contiguous copy: the Normal loop order then vectorises,
    // where dot products along k would be one dependent add per element
    let b_normal: std::borrow::Cow<'_, [T]> = match lb {
        MatLayout::Normal => std::borrow::Cow::Borrowed(&b[..k * n]),
        MatLayout::Transposed => {
            let mut t = vec![T::zero(); k * n];
            for j in 0..n {
                for p in 0..k {
                    t[p * n + j] = b[j * k + p];
                }
            }
            std::borrow::Cow::Owned(t)
        }
    };
    let a_at = |i: usize, p: usize| match la {
        MatLayout::Normal => a[i * k + p],
        MatLayout::Transposed => a[p * m + i],
    };
    if n == 1 {
        // a matrix-vector product: one dot product per row, four partial sums
        for (i, o) in dst.iter_mut().enumerate() {
            let mut acc = [T::zero(); 4];
            for p in 0..k {
                acc[p % 4] += a_at(i, p) * b_normal[p];
            }
            *o += (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
        return;
    }
    // narrow rows of a known width accumulate in registers
    match n {
        8 => return fixed_width_rows::<T, 8>(dst, m, k, &a_at, &b_normal),
        16 => return fixed_width_rows::<T, 16>(dst, m, k, &a_at, &b_normal),
        32 => return fixed_width_rows::<T, 32>(dst, m, k, &a_at, &b_normal),
        _ => {}
    }
    // other rows of up to 64 outputs accumulate in a local buffer that does not alias
    // `dst`
    const LOCAL: usize = 64;
    let mut acc = [T::zero(); LOCAL];
    for (i, row) in dst.chunks_exact_mut(n).enumerate() {
        for (j0, part) in row.chunks_mut(LOCAL).enumerate() {
            let (start, w) = (j0 * LOCAL, part.len());
            let acc = &mut acc[..w];
            acc.fill(T::zero());
            for p in 0..k {
                let aip = a_at(i, p);
                for (x, &bv) in acc
                    .iter_mut()
                    .zip(&b_normal[p * n + start..p * n + start + w])
                {
                    *x += aip * bv;
                }
            }
            for (o, &x) in part.iter_mut().zip(acc.iter()) {
                *o += x;
            }
        }
    }
}

/// `(batch, m, k, n)` of a product, or an error naming both shapes.
pub(crate) fn matmul_dims(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize, usize)> {
    let err = |why: &str| Error::shape_detail("matmul", a, b, why);
    if a.len() < 2 || b.len() < 2 {
        return Err(err("both operands need at least 2 dimensions"));
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 {
        return Err(err(&format!("inner dimensions {k} and {k2} differ")));
    }
    let batch_a = &a[..a.len() - 2];
    let batch_b = &b[..b.len() - 2];
    if !batch_b.is_empty() && batch_a != batch_b {
        return Err(err("batch dimensions differ"));
    }
    Ok((batch_a.iter().product(), m, k, n))
}

impl<T: Element> Tensor<T> {
    /// Matrix product. `[m,k]·[k,n]`, batched `[..,m,k]·[..,k,n]` with equal batch
    /// dimensions, or `[..,m,k]·[k,n]` (the right operand shared by every batch).
    pub fn matmul(&self, rhs: &Tensor<T>) -> Result<Tensor<T>> {
        self.matmul_transposed(rhs, false, false)
    }

    /// `op(self)·op(rhs)`, where `op` swaps the last two axes of an operand whose flag is
    /// set: the product reads the stored buffer in the transposed layout, no copy is
    /// made. Shapes as for [`Tensor::matmul`] after the swaps.
    pub fn matmul_transposed(
        &self,
        rhs: &Tensor<T>,
        transpose_self: bool,
        transpose_rhs: bool,
    ) -> Result<Tensor<T>> {
        let (shape, dims) = self.product_dims(rhs, transpose_self, transpose_rhs)?;
        Ok(Tensor::build(&shape, |out| {
            self.product_into(rhs, (transpose_self, transpose_rhs), dims, out, false)
        }))
    }

    /// [`matmul_transposed`](Self::matmul_transposed) written over `out`, a buffer of
    /// the product's shape (a replayed step reuses its buffers instead of allocating).
    pub(crate) fn matmul_transposed_into(
        &self,
        rhs: &Tensor<T>,
        transpose_self: bool,
        transpose_rhs: bool,
        out: &mut Tensor<T>,
    ) -> Result<()> {
        let (shape, dims) = self.product_dims(rhs, transpose_self, transpose_rhs)?;
        let flags = (transpose_self, transpose_rhs);
        self.product_into(rhs, flags, dims, out.overwrite(&shape), false);
        Ok(())
    }

    /// `acc += op(self)·op(rhs)` (as [`matmul_transposed`](Self::matmul_transposed)),
    /// into `acc`'s buffer: a sum of products without a second buffer or an add pass.
    pub(crate) fn add_matmul_transposed(
        &self,
        rhs: &Tensor<T>,
        transpose_self: bool,
        transpose_rhs: bool,
        acc: &mut Tensor<T>,
    ) -> Result<()> {
        let (shape, dims) = self.product_dims(rhs, transpose_self, transpose_rhs)?;
        if acc.shape() != shape.as_slice() {
            return Err(Error::shape("matmul (accumulate)", acc.shape(), &shape));
        }
        let flags = (transpose_self, transpose_rhs);
        self.product_into(rhs, flags, dims, acc.data_mut(), true);
        Ok(())
    }

    /// The product's shape and `(batch, m, k, n)` after the swaps the flags ask for.
    fn product_dims(
        &self,
        rhs: &Tensor<T>,
        transpose_self: bool,
        transpose_rhs: bool,
    ) -> Result<(super::Shape, (usize, usize, usize, usize))> {
        let swapped = |t: &Tensor<T>, swap: bool| {
            let mut s = super::Shape::from_slice(t.shape());
            let nd = s.len();
            if swap && nd >= 2 {
                s.swap(nd - 2, nd - 1);
            }
            s
        };
        let (sa, sb) = (swapped(self, transpose_self), swapped(rhs, transpose_rhs));
        let dims = matmul_dims(&sa, &sb)?;
        let mut shape = sa;
        let nd = shape.len();
        shape[nd - 1] = dims.3;
        super::checked_len("matmul", &shape)?;
        Ok((shape, dims))
    }

    /// Writes (or with `accumulate`, adds) the product into `out`.
    fn product_into(
        &self,
        rhs: &Tensor<T>,
        (transpose_self, transpose_rhs): (bool, bool),
        (batch, m, k, n): (usize, usize, usize, usize),
        out: &mut [T],
        accumulate: bool,
    ) {
        let layout = |t: bool| {
            if t {
                MatLayout::Transposed
            } else {
                MatLayout::Normal
            }
        };
        let (la, lb) = (layout(transpose_self), layout(transpose_rhs));
        let shared_rhs = rhs.ndim() == 2;
        if shared_rhs && !transpose_self {
            // fold the batch into the rows: one larger product
            let (lhs, rhs) = ((self.data(), la), (rhs.data(), lb));
            matmul_into(out, batch * m, n, k, lhs, rhs, accumulate);
        } else {
            for bi in 0..batch {
                let r = if shared_rhs { 0 } else { bi * k * n };
                matmul_into(
                    &mut out[bi * m * n..(bi + 1) * m * n],
                    m,
                    n,
                    k,
                    (&self.data()[bi * m * k..(bi + 1) * m * k], la),
                    (&rhs.data()[r..r + k * n], lb),
                    accumulate,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::sealed::Sealed as _;

    fn naive(a: &Tensor<f64>, b: &Tensor<f64>) -> Vec<f64> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    out[i * n + j] += a.data()[i * k + p] * b.data()[p * n + j];
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_product_in_every_layout() {
        let a = Tensor::<f64>::randn(&[7, 5], 1).unwrap();
        let b = Tensor::<f64>::randn(&[5, 3], 2).unwrap();
        let want = naive(&a, &b);
        let got = a.matmul(&b).unwrap();
        for (x, y) in got.data().iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // the same product from transposed buffers
        let at = a.t().unwrap();
        let bt = b.t().unwrap();
        let mut out = vec![0.0; 21];
        matmul_into(
            &mut out,
            7,
            3,
            5,
            (at.data(), MatLayout::Transposed),
            (bt.data(), MatLayout::Transposed),
            false,
        );
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // accumulate adds
        matmul_into(
            &mut out,
            7,
            3,
            5,
            (a.data(), MatLayout::Normal),
            (b.data(), MatLayout::Normal),
            true,
        );
        for (x, y) in out.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-12);
        }
    }

    #[test]
    fn small_kernel_matches_faer_in_every_layout() {
        // widths that take the matrix-vector, fixed-width and general paths
        for (m, n, k) in [
            (5, 7, 3),
            (4, 1, 9),
            (3, 8, 5),
            (6, 16, 4),
            (2, 32, 3),
            (3, 70, 2),
        ] {
            let a = Tensor::<f64>::randn(&[m, k], 7).unwrap();
            let b = Tensor::<f64>::randn(&[k, n], 8).unwrap();
            let (at, bt) = (a.t().unwrap(), b.t().unwrap());
            for (lhs, rhs) in [
                ((a.data(), MatLayout::Normal), (b.data(), MatLayout::Normal)),
                (
                    (at.data(), MatLayout::Transposed),
                    (b.data(), MatLayout::Normal),
                ),
                (
                    (a.data(), MatLayout::Normal),
                    (bt.data(), MatLayout::Transposed),
                ),
                (
                    (at.data(), MatLayout::Transposed),
                    (bt.data(), MatLayout::Transposed),
                ),
            ] {
                for accumulate in [false, true] {
                    let mut want = vec![1.0; m * n];
                    let mut got = want.clone();
                    f64::gemm(&mut want, m, n, k, lhs, rhs, accumulate, 1);
                    small_gemm(&mut got, m, n, k, lhs, rhs, accumulate);
                    for (x, y) in got.iter().zip(&want) {
                        assert!((x - y).abs() < 1e-12, "{m}x{n}x{k}");
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_product_matches_serial() {
        // row blocks per thread (2 and 3 threads), both layouts of each operand, with and
        // without accumulation, and the faer split beyond SPLIT_MAX_MNK's reach is the
        // same call with more rows
        let (m, n, k) = (301, 250, 200);
        let a = Tensor::<f32>::randn(&[m, k], 3).unwrap();
        let b = Tensor::<f32>::randn(&[k, n], 4).unwrap();
        let at = Tensor::from_vec(
            (0..m * k).map(|i| a.data()[(i % m) * k + i / m]).collect(),
            &[k, m],
        )
        .unwrap();
        let bt = Tensor::from_vec(
            (0..k * n).map(|i| b.data()[(i % k) * n + i / k]).collect(),
            &[n, k],
        )
        .unwrap();
        let start: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
        for accumulate in [false, true] {
            let mut serial = start.clone();
            let lhs = (a.data(), MatLayout::Normal);
            let rhs = (b.data(), MatLayout::Normal);
            f32::gemm(&mut serial, m, n, k, lhs, rhs, accumulate, 1);
            for threads in [2, 3] {
                for lhs in [
                    (a.data(), MatLayout::Normal),
                    (at.data(), MatLayout::Transposed),
                ] {
                    for rhs in [
                        (b.data(), MatLayout::Normal),
                        (bt.data(), MatLayout::Transposed),
                    ] {
                        let mut par = start.clone();
                        f32::gemm(&mut par, m, n, k, lhs, rhs, accumulate, threads);
                        for (x, y) in serial.iter().zip(&par) {
                            assert!(
                                (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                                "{threads} threads, {:?}·{:?}, accumulate {accumulate}: {x} vs {y}",
                                lhs.1,
                                rhs.1
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products_have_their_shape_and_zeros() {
        let t = |r: usize, c: usize| Tensor::<f64>::from_vec(vec![1.0; r * c], &[r, c]).unwrap();
        assert_eq!(t(2, 3).matmul(&t(3, 0)).unwrap().shape(), &[2, 0]);
        assert_eq!(t(0, 3).matmul(&t(3, 2)).unwrap().shape(), &[0, 2]);
        let z = t(2, 0).matmul(&t(0, 4)).unwrap();
        assert_eq!((z.shape(), z.data()), (&[2, 4][..], &[0.0; 8][..]));
    }

    #[test]
    fn batched_and_shared_rhs() {
        let a = Tensor::<f64>::randn(&[2, 4, 3], 5).unwrap();
        let b = Tensor::<f64>::randn(&[2, 3, 2], 6).unwrap();
        let y = a.matmul(&b).unwrap();
        assert_eq!(y.shape(), &[2, 4, 2]);
        assert_eq!(y.len(), 16);
        let slice = |t: &Tensor<f64>, i: usize, shape: &[usize]| {
            t.narrow(0, i, 1).unwrap().reshape(shape).unwrap()
        };
        let b1 = slice(&b, 1, &[3, 2]);
        let shared = a.matmul(&b1).unwrap();
        assert_eq!(shared.shape(), &[2, 4, 2]);
        assert_eq!(shared.len(), 16);
        for i in 0..2 {
            let ai = slice(&a, i, &[4, 3]);
            // batch i of the batched product: a[i] · b[i]
            let want = naive(&ai, &slice(&b, i, &[3, 2]));
            assert_eq!(want.len(), 8);
            for (j, (x, w)) in y.data()[i * 8..(i + 1) * 8].iter().zip(&want).enumerate() {
                assert!((x - w).abs() < 1e-12, "batch {i} entry {j}: {x} vs {w}");
            }
            // batch i of the shared-rhs product: a[i] · b[1]
            let want = naive(&ai, &b1);
            for (j, (x, w)) in shared.data()[i * 8..(i + 1) * 8]
                .iter()
                .zip(&want)
                .enumerate()
            {
                assert!(
                    (x - w).abs() < 1e-12,
                    "shared batch {i} entry {j}: {x} vs {w}"
                );
            }
        }
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let e = Tensor::<f32>::zeros(&[2, 3])
            .unwrap()
            .matmul(&Tensor::zeros(&[4, 5]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"),
            "{e}"
        );
        assert!(
            Tensor::<f32>::zeros(&[3])
                .unwrap()
                .matmul(&Tensor::zeros(&[3, 1]).unwrap())
                .is_err()
        );
    }
}
