//! The fused steps' kernels: a dense layer (product, bias, activation) and softmax
//! cross-entropy, forward and backward, with their buffers kept from replay to replay.

use super::*;

impl<T: Element> Dense<T> {
    pub(super) fn forward(&mut self, values: &mut [Option<Tensor<T>>]) {
        let (m, k, n) = (self.m, self.k, self.n);
        let (below, slot) = split(values, self.out);
        let (x, w, b) = (
            value(below, self.x),
            value(below, self.w),
            value(below, self.b),
        );
        let w_layout = if self.w_transposed {
            MatLayout::Transposed
        } else {
            MatLayout::Normal
        };
        let product = |pre: &mut [T]| {
            matmul_into(
                pre,
                m,
                n,
                k,
                (x.data(), MatLayout::Normal),
                (w.data(), w_layout),
                false,
            )
        };
        let bias = b.data();
        match self.act {
            // without an activation the output is the pre-activation itself
            None => {
                let out = buffer(slot, &[m, n]);
                product(out);
                rows_mut(out, n, |row, _| {
                    for (o, &bv) in row.iter_mut().zip(bias) {
                        *o += bv;
                    }
                })
            }
            Some(act) => {
                let pre = self.pre.overwrite(&[m, n]);
                product(pre);
                rows2_mut(pre, buffer(slot, &[m, n]), n, |p, o| {
                    for (v, &bv) in p.iter_mut().zip(bias) {
                        *v += bv;
                    }
                    if n < 64 {
                        act.map_slice(p, o)
                    } else {
                        with_avx2!(act.map_slice(p, o))
                    }
                })
            }
        }
    }

    pub(super) fn backward(
        &mut self,
        values: &[Option<Tensor<T>>],
        needs: &[bool],
        grads: &mut [Option<Tensor<T>>],
        has: &mut [bool],
    ) -> Result<()> {
        if !has[self.out as usize] {
            return Ok(());
        }
        let (m, k, n) = (self.m, self.k, self.n);
        let (below, slot) = split(grads, self.out);
        let g = slot.as_ref().expect("written when has_grad is set");
        if let Some(act) = self.act {
            let (pre, y) = (self.pre.data(), value(values, self.out).data());
            let gp = self.g_pre.overwrite(&[m, n]);
            let seed = g.data();
            if gp.len() >= PARALLEL_MIN_LEN {
                gp.par_chunks_mut(n * 64).enumerate().for_each(|(c, o)| {
                    let s = c * n * 64;
                    let e = s + o.len();
                    with_avx2!(act.scale_slice(&pre[s..e], &y[s..e], &seed[s..e], o))
                });
            } else if gp.len() < 64 {
                act.scale_slice(pre, y, seed, gp)
            } else {
                with_avx2!(act.scale_slice(pre, y, seed, gp))
            }
        }
        let gp = if self.act.is_some() { &self.g_pre } else { g };
        if needs[self.b as usize] {
            add_grad(below, has, self.b, gp.sum_to_shape(&[n])?)?;
        }
        // the products write straight into the gradient slots, unless a slot already
        // holds a contribution (a value used twice), which they are added to
        let product = |below: &mut [Option<Tensor<T>>],
                       has: &mut [bool],
                       j: u32,
                       shape: [usize; 2],
                       lhs,
                       rhs,
                       inner|
         -> Result<()> {
            if has[j as usize] {
                let c = Tensor::build(&shape, |out| {
                    matmul_into(out, shape[0], shape[1], inner, lhs, rhs, false)
                });
                add_grad(below, has, j, c)
            } else {
                let out = buffer(&mut below[j as usize], &shape);
                matmul_into(out, shape[0], shape[1], inner, lhs, rhs, false);
                has[j as usize] = true;
                Ok(())
            }
        };
        // W as stored: `[k, n]`, or `[n, k]` read transposed (PyTorch's layout), so that
        // its gradient is `xᵀ·g`, or `gᵀ·x`
        if needs[self.w as usize] {
            let x = value(values, self.x);
            let (shape, lhs, rhs) = if self.w_transposed {
                (
                    [n, k],
                    (gp.data(), MatLayout::Transposed),
                    (x.data(), MatLayout::Normal),
                )
            } else {
                (
                    [k, n],
                    (x.data(), MatLayout::Transposed),
                    (gp.data(), MatLayout::Normal),
                )
            };
            product(below, has, self.w, shape, lhs, rhs, m)?;
        }
        if needs[self.x as usize] {
            let w = value(values, self.w);
            let w_layout = if self.w_transposed {
                MatLayout::Normal
            } else {
                MatLayout::Transposed
            };
            product(
                below,
                has,
                self.x,
                [m, k],
                (gp.data(), MatLayout::Normal),
                (w.data(), w_layout),
                n,
            )?;
        }
        Ok(())
    }
}

/// Runs `f` on each row of `n` elements of `data`, on both cores when it is large.
pub(super) fn rows_mut<T: Element>(
    data: &mut [T],
    n: usize,
    f: impl Fn(&mut [T], usize) + Sync + Send,
) {
    if data.len() >= PARALLEL_MIN_LEN {
        data.par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, r)| f(r, i));
    } else {
        for (i, r) in data.chunks_mut(n).enumerate() {
            f(r, i)
        }
    }
}

/// Runs `f` on matching rows of `n` elements of `a` and `b`.
pub(super) fn rows2_mut<T: Element>(
    a: &mut [T],
    b: &mut [T],
    n: usize,
    f: impl Fn(&mut [T], &mut [T]) + Sync + Send,
) {
    if a.len() >= PARALLEL_MIN_LEN {
        a.par_chunks_mut(n)
            .zip(b.par_chunks_mut(n))
            .for_each(|(x, y)| f(x, y));
    } else {
        for (x, y) in a.chunks_mut(n).zip(b.chunks_mut(n)) {
            f(x, y)
        }
    }
}

impl<T: Element> CrossEntropy<T> {
    pub(super) fn forward(
        &mut self,
        values: &mut [Option<Tensor<T>>],
        labels: &[usize],
    ) -> Result<()> {
        let (m, c) = (self.m, self.c);
        if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
            return Err(Error::invalid(
                "cross_entropy",
                format!("label {bad} out of range for {c} classes"),
            ));
        }
        self.labels.clear();
        self.labels.extend_from_slice(labels);
        let z = value(values, self.z).data();
        let probs = self.probs.overwrite(&[m, c]);
        let mut total = T::zero();
        for ((row, p), &label) in z.chunks_exact(c).zip(probs.chunks_exact_mut(c)).zip(labels) {
            // as `Tensor::logsumexp`: shift by a finite maximum, NaN propagates
            let top = row.iter().copied().fold(T::neg_infinity(), |d, v| {
                if v > d || v.is_nan() { v } else { d }
            });
            let shift = if top.is_finite() { top } else { T::zero() };
            let mut s = T::zero();
            for (q, &v) in p.iter_mut().zip(row) {
                *q = (v - shift).exp();
                s += *q;
            }
            let lse = s.ln() + shift;
            let inv = s.recip();
            for q in p.iter_mut() {
                *q *= inv;
            }
            total += lse - row[label];
        }
        let mean = total * T::of(1.0 / m as f64);
        buffer(split(values, self.out).1, &[])[0] = mean;
        Ok(())
    }

    pub(super) fn backward(
        &mut self,
        grads: &mut [Option<Tensor<T>>],
        has: &mut [bool],
    ) -> Result<()> {
        if !has[self.out as usize] {
            return Ok(());
        }
        let (m, c) = (self.m, self.c);
        let (below, slot) = split(grads, self.out);
        let g = slot
            .as_ref()
            .expect("written when has_grad is set")
            .item()?;
        let w = g * T::of(1.0 / m as f64);
        let probs = self.probs.data();
        let fill = |gz: &mut [T]| {
            for ((o, p), &label) in gz
                .chunks_exact_mut(c)
                .zip(probs.chunks_exact(c))
                .zip(&self.labels)
            {
                for (q, &pv) in o.iter_mut().zip(p) {
                    *q = w * pv;
                }
                o[label] -= w;
            }
        };
        if has[self.z as usize] {
            add_grad(below, has, self.z, Tensor::build(&[m, c], fill))
        } else {
            fill(buffer(&mut below[self.z as usize], &[m, c]));
            has[self.z as usize] = true;
            Ok(())
        }
    }
}
