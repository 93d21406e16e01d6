//! Products of a few rows with a matrix that stays the same from call to call: a
//! recurrent window multiplies each step's 16–32 rows of `h` by the same `W_hh`, 64 times
//! forward and 64 times back. The matrix is packed once into panels of 64 columns, each
//! panel contiguous, so the kernel streams it in order instead of jumping one row
//! (4 KiB at 1,024 columns) per multiply-add step, which defeats the prefetchers; a
//! tile of up to 6 rows × 64 columns stays in 24 AVX-512 registers over a block of 128
//! steps of the inner dimension. Each output element is one chain of multiply-adds in
//! the order of `k`. Without AVX-512 (or for f64) the product goes to [`matmul_into`]
//! unchanged. On W9's LSTM (`bench w9_forward`, six rounds alternating with faer's
//! kernel) the forward pass went from 65.4 to 56.3 ms, median to median.

use super::{Element, MatLayout, matmul_into, matmul_threads};

/// Columns per packed panel: four 16-lane vectors.
const NR: usize = 64;
/// Rows per tile: 6 × 4 accumulators, 24 of the 32 vector registers.
const MR: usize = 6;

/// A `k × n` right-hand side, packed for [`PackedRhs::product`] where the CPU can use it.
pub(crate) struct PackedRhs<T: Element> {
    k: usize,
    n: usize,
    /// The operand as given (`k × n` in `layout`), for the general path.
    plain: Vec<T>,
    layout: MatLayout,
    /// f32 on AVX-512: `n.div_ceil(64)` panels of `k × 64`, the last padded with zeros.
    panels: Option<Vec<f32>>,
}

impl<T: Element> PackedRhs<T> {
    /// Packs `b`, read as a `k × n` matrix in `layout`.
    pub fn new(b: &[T], k: usize, n: usize, layout: MatLayout) -> Self {
        assert!(
            k.checked_mul(n).is_some_and(|kn| b.len() >= kn),
            "packed operand: {} elements for {k}x{n}",
            b.len()
        );
        let panels = T::f32s(b).filter(|_| k > 0 && avx512()).map(|b| {
            let mut p = vec![0.0f32; n.div_ceil(NR) * k * NR];
            for (j, panel) in p.chunks_exact_mut(k * NR).enumerate() {
                let (c0, cols) = (j * NR, (n - j * NR).min(NR));
                // read `b` in its own order: a row's columns, or a column's rows
                match layout {
                    MatLayout::Normal => {
                        for (r, row) in panel.chunks_exact_mut(NR).enumerate() {
                            row[..cols].copy_from_slice(&b[r * n + c0..r * n + c0 + cols]);
                        }
                    }
                    MatLayout::Transposed => {
                        for cc in 0..cols {
                            let column = &b[(c0 + cc) * k..(c0 + cc + 1) * k];
                            for (row, &v) in panel.chunks_exact_mut(NR).zip(column) {
                                row[cc] = v;
                            }
                        }
                    }
                }
            }
            p
        });
        // the general path's operand: row-major where it is the only one (the general
        // product copies a transposed small operand on every call); beside the panels,
        // where it serves only products large enough for every thread, a copy in its
        // own layout (gathering a transposed W_hh column by column was a serial 1% of
        // W9's step)
        let (plain, layout) = if panels.is_some() || layout == MatLayout::Normal {
            (b[..k * n].to_vec(), layout)
        } else {
            let mut plain = Vec::with_capacity(k * n);
            for r in 0..k {
                plain.extend((0..n).map(|c| b[c * k + r]));
            }
            (plain, MatLayout::Normal)
        };
        PackedRhs {
            k,
            n,
            plain,
            layout,
            panels,
        }
    }

    /// `c (m×n) = a (m×k) · B`, or `c += a·B` with `accumulate`; `a` and `c` row-major.
    pub fn product(&self, c: &mut [T], a: &[T], m: usize, accumulate: bool) {
        let (k, n) = (self.k, self.n);
        let holds =
            |len: usize, rows: usize, cols: usize| rows.checked_mul(cols).is_some_and(|e| len >= e);
        assert!(
            holds(a.len(), m, k) && holds(c.len(), m, n),
            "packed product: {} and {} elements for {m}x{k} by {k}x{n}",
            a.len(),
            c.len()
        );
        // a product large enough for every thread goes to the general path, which
        // splits it; the packed kernel runs on the calling thread
        let one_thread = matmul_threads(m, n, k) == 1;
        if let (Some(panels), Some(a), Some(c), true) =
            (&self.panels, T::f32s(a), T::f32s_mut(c), one_thread)
        {
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: `panels` exists only where `avx512()` found AVX-512F on this
                // CPU (in `new`), which is all the function's target feature needs.
                unsafe { product_avx512(c, a, (m, k, n), panels, accumulate) };
                return;
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (panels, a, c);
        }
        let (l, r) = ((a, MatLayout::Normal), (&self.plain[..], self.layout));
        matmul_into(c, m, n, k, l, r, accumulate);
    }
}

/// Whether this CPU has AVX-512F (checked once per packing).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The inner dimension is taken in blocks of this many rows of a panel (32 KiB, within
/// the first-level cache), so that every tile of rows after the first reads the block
/// from there instead of from the second level.
const KC: usize = 128;

/// A tile's accumulators between blocks of the inner dimension.
type Tile = [[f32; NR]; MR];

/// The packed product on AVX-512: panel by panel, block of `k` by block, tiles of up to
/// [`MR`] rows. Each tile carries its sums from block to block, so every output is still
/// one chain of multiply-adds in `k` order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn product_avx512(
    c: &mut [f32],
    a: &[f32],
    (m, k, n): (usize, usize, usize),
    panels: &[f32],
    accumulate: bool,
) {
    let mut tiles: Vec<Tile> = vec![[[0.0; NR]; MR]; m.div_ceil(MR)];
    for (j, panel) in panels.chunks_exact(k * NR).enumerate() {
        let (c0, cols) = (j * NR, (n - j * NR).min(NR));
        tiles.iter_mut().for_each(|t| *t = [[0.0; NR]; MR]);
        for kb in (0..k).step_by(KC) {
            let kl = (k - kb).min(KC);
            let block = &panel[kb * NR..(kb + kl) * NR];
            for (t, tile) in tiles.iter_mut().enumerate() {
                let (i, rows) = (t * MR, (m - t * MR).min(MR));
                let a_rows = |r: usize| &a[(i + r) * k + kb..(i + r) * k + kb + kl];
                match rows {
                    6 => tile_rows::<6>(std::array::from_fn(a_rows), block, tile),
                    5 => tile_rows::<5>(std::array::from_fn(a_rows), block, tile),
                    4 => tile_rows::<4>(std::array::from_fn(a_rows), block, tile),
                    3 => tile_rows::<3>(std::array::from_fn(a_rows), block, tile),
                    2 => tile_rows::<2>(std::array::from_fn(a_rows), block, tile),
                    _ => tile_rows::<1>(std::array::from_fn(a_rows), block, tile),
                }
            }
        }
        for (t, tile) in tiles.iter().enumerate() {
            let i = t * MR;
            for (r, sums) in tile.iter().take((m - i).min(MR)).enumerate() {
                let out = &mut c[(i + r) * n + c0..(i + r) * n + c0 + cols];
                if accumulate {
                    out.iter_mut().zip(sums).for_each(|(o, &v)| *o += v);
                } else {
                    out.copy_from_slice(&sums[..cols]);
                }
            }
        }
    }
}

/// `tile[r] += Σ_p a[r][p] · block[p]` for `R` rows of `a` (each as long as the block
/// has rows of 64): `R × 4` accumulators, loaded from the tile, one multiply-add chain
/// per element in `p` order, stored back.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn tile_rows<const R: usize>(a: [&[f32]; R], block: &[f32], tile: &mut Tile) {
    use std::arch::x86_64::*;
    let lanes = |tile: &mut Tile, r: usize, q: usize| -> *mut f32 {
        let v: &mut [f32; 16] = (&mut tile[r][q * 16..(q + 1) * 16])
            .try_into()
            .expect("16 lanes");
        v.as_mut_ptr()
    };
    let mut acc: [[__m512; 4]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|q| {
            // SAFETY: each pointer from `lanes` addresses an array of 16 f32 inside
            // `tile`, exactly one vector's lanes; unaligned loads need no alignment.
            unsafe { _mm512_loadu_ps(lanes(tile, r, q)) }
        })
    });
    for (p, b) in block.chunks_exact(NR).enumerate() {
        let b: &[f32; NR] = b.try_into().expect("a panel row of 64");
        // SAFETY: `b` is an array of 64 f32, so 16 lanes from offsets 0, 16, 32 and 48
        // are inside it; unaligned loads need no alignment.
        let bv = unsafe {
            [
                _mm512_loadu_ps(b.as_ptr()),
                _mm512_loadu_ps(b.as_ptr().add(16)),
                _mm512_loadu_ps(b.as_ptr().add(32)),
                _mm512_loadu_ps(b.as_ptr().add(48)),
            ]
        };
        for r in 0..R {
            let x = _mm512_set1_ps(a[r][p]);
            for q in 0..4 {
                acc[r][q] = _mm512_fmadd_ps(x, bv[q], acc[r][q]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, &v) in row.iter().enumerate() {
            // SAFETY: as for the loads above, 16 f32 of `tile`.
            unsafe { _mm512_storeu_ps(lanes(tile, r, q), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 reference on shapes with every remainder (rows not a multiple of
    /// 6, columns not of 64, k not of 128) and empty ones, both layouts, accumulating or not; f32 (the packed kernel
    /// where the CPU has AVX-512) and f64 (the general path).
    #[test]
    fn packed_products_match_a_reference() {
        fn check<T: Element>(eps: f64) {
            // rows leaving tiles of 1, 3 and 5; k leaving a partial block; empty sizes
            for &(m, k, n) in &[
                (1, 1, 1),
                (7, 5, 3),
                (9, 33, 70),
                (11, 300, 129),
                (32, 256, 192),
                (0, 4, 5),
                (4, 0, 5),
                (4, 5, 0),
            ] {
                for layout in [MatLayout::Normal, MatLayout::Transposed] {
                    for accumulate in [false, true] {
                        let val =
                            |i: usize, s: usize| T::of(((i * 7919 + s) % 23) as f64 / 11.0 - 1.0);
                        let a: Vec<T> = (0..m * k).map(|i| val(i, 1)).collect();
                        let b: Vec<T> = (0..k * n).map(|i| val(i, 2)).collect();
                        let mut c: Vec<T> = (0..m * n).map(|i| val(i, 3)).collect();
                        let before = c.clone();
                        PackedRhs::new(&b, k, n, layout).product(&mut c, &a, m, accumulate);
                        for i in 0..m {
                            for j in 0..n {
                                let bij = |p: usize| match layout {
                                    MatLayout::Normal => b[p * n + j],
                                    MatLayout::Transposed => b[j * k + p],
                                };
                                let terms: Vec<f64> = (0..k)
                                    .map(|p| a[i * k + p].as_f64() * bij(p).as_f64())
                                    .chain(accumulate.then(|| before[i * n + j].as_f64()))
                                    .collect();
                                let want: f64 = terms.iter().sum();
                                // the bound of any order of k + 1 rounded additions
                                let bound: f64 = terms.iter().map(|t| t.abs()).sum::<f64>()
                                    * eps
                                    * (k as f64 + 2.0);
                                let got = c[i * n + j].as_f64();
                                let err = (got - want).abs();
                                assert!(
                                    err.is_finite() && err <= bound,
                                    "{} {m}x{k}x{n} {layout:?} acc={accumulate} at ({i},{j}): {got} vs {want}",
                                    T::NAME
                                );
                            }
                        }
                    }
                }
            }
        }
        check::<f32>(f32::EPSILON as f64);
        check::<f64>(f64::EPSILON);
    }

    /// A product large enough for every thread (8.4 M multiply-adds) takes the general
    /// path where there is more than one thread, the kernel otherwise: right either way.
    #[test]
    fn a_product_for_every_thread_is_right_too() {
        let (m, k, n) = (64, 512, 256);
        let val = |i: usize, s: usize| ((i * 7919 + s) % 23) as f32 / 11.0 - 1.0;
        let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
        let mut c = vec![0.0f32; m * n];
        PackedRhs::new(&b, k, n, MatLayout::Normal).product(&mut c, &a, m, false);
        for idx in (0..m * n).step_by(97) {
            let (i, j) = (idx / n, idx % n);
            let terms = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64);
            let (want, size): (f64, f64) = terms.fold((0.0, 0.0), |(s, z), t| (s + t, z + t.abs()));
            let err = (c[idx] as f64 - want).abs();
            assert!(
                err <= size * f32::EPSILON as f64 * (k as f64 + 2.0),
                "({i},{j}): {} vs {want}",
                c[idx]
            );
        }
    }
}
