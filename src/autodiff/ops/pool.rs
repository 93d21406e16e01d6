//! Pooling over the two last axes of NCHW, PyTorch's `max_pool2d` and `avg_pool2d`
//! (kernel, stride, padding; no ceil mode), each one recorded node. Max pooling keeps the
//! index of each window's first maximum (its gradient goes there, as PyTorch's); average
//! pooling divides by the whole window, padding included (PyTorch's default). Second order
//! differentiates their compositions: each window's taps selected and masked to the kept
//! one, and a depthwise convolution with constant weights.

use super::conv::Conv2dOptions;
use super::{Family, Grads, Op, Tangents, VarGrads};
use crate::autodiff::Var;
use crate::autodiff::suite::{Case, Domain, sample};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// A pooling window: kernel, stride and padding (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dOptions {
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows (PyTorch's default is the kernel).
    pub stride: [usize; 2],
    /// Padding on each side (at most half the kernel).
    pub padding: [usize; 2],
}

impl Pool2dOptions {
    /// A `k×k` window moved by `k`, no padding (PyTorch's `max_pool2d(x, k)`).
    pub fn square(k: usize) -> Self {
        Pool2dOptions {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
        }
    }
}

/// `(n·c, h, w, ho, wo)` of a pooling, checked.
fn pool_dims(x: &[usize], p: &Pool2dOptions, op: &'static str) -> Result<[usize; 5]> {
    let bad = |why: String| Err(Error::invalid(op, format!("input {x:?}, {p:?}: {why}")));
    let [n, c, h, w] = *x else {
        return bad("the input must be [N, C, H, W]".into());
    };
    if p.kernel.contains(&0) || p.stride.contains(&0) {
        return bad("kernel and stride must be positive".into());
    }
    if h == 0 || w == 0 {
        // PyTorch refuses these too: padding alone would make windows of nothing
        return bad("the input's height and width must be positive".into());
    }
    if p.padding[0] * 2 > p.kernel[0] || p.padding[1] * 2 > p.kernel[1] {
        return bad("padding must be at most half the kernel".into());
    }
    let out = |size: usize, k: usize, pad: usize, s: usize| {
        (size + 2 * pad).checked_sub(k).map(|v| v / s + 1)
    };
    match (
        out(h, p.kernel[0], p.padding[0], p.stride[0]),
        out(w, p.kernel[1], p.padding[1], p.stride[1]),
    ) {
        (Some(ho), Some(wo)) => Ok([n * c, h, w, ho, wo]),
        _ => bad("the window is larger than the padded input".into()),
    }
}

/// Calls `f(output index, input index)` for every in-bounds tap of every window, windows
/// in output order, taps in row-major order within a window.
fn for_each_tap(
    p: &Pool2dOptions,
    [planes, h, w, ho, wo]: [usize; 5],
    mut f: impl FnMut(usize, usize),
) {
    let ([kh, kw], [sh, sw], [ph, pw]) = (p.kernel, p.stride, p.padding);
    for plane in 0..planes {
        for oh in 0..ho {
            for ow in 0..wo {
                let o = (plane * ho + oh) * wo + ow;
                for i in 0..kh {
                    let y = (oh * sh + i).wrapping_sub(ph);
                    if y >= h {
                        continue;
                    }
                    for j in 0..kw {
                        let x = (ow * sw + j).wrapping_sub(pw);
                        if x < w {
                            f(o, (plane * h + y) * w + x);
                        }
                    }
                }
            }
        }
    }
}

/// The first maximum among a window's taps (in-plane indices, in row-major order) and its
/// index: a strict comparison keeps the first; selects, not branches, since which tap wins
/// is data (unpredictable). A NaN counts as the maximum, so it propagates: the first one.
#[inline(always)]
fn first_max<T: Element>(xp: &[T], taps: impl Iterator<Item = usize> + Clone) -> (T, usize) {
    let mut rest = taps.clone();
    let first = rest.next().expect("a window has a tap inside the input");
    let (mut b, mut i_b, mut nan) = (xp[first], first, xp[first].is_nan());
    for i in rest {
        let v = xp[i];
        let take = v > b;
        b = if take { v } else { b };
        i_b = if take { i } else { i_b };
        nan |= v.is_nan();
    }
    if nan {
        i_b = taps.into_iter().find(|&i| xp[i].is_nan()).unwrap_or(i_b);
        b = xp[i_b];
    }
    (b, i_b)
}

/// Max pooling: the output and, per output element, the input index of its window's
/// first maximum (a NaN counts as the maximum, so it propagates).
fn max_forward<T: Element>(x: &Tensor<T>, p: &Pool2dOptions) -> Result<(Tensor<T>, Arc<[usize]>)> {
    let d = pool_dims(x.shape(), p, "max_pool2d")?;
    let len = d[0] * d[3] * d[4];
    let mut best = vec![T::zero(); len];
    let mut at = vec![0usize; len];
    let xs = x.data();
    let [_, h, w, ho, wo] = d;
    let ([kh, kw], [sh, sw], [ph, pw]) = (p.kernel, p.stride, p.padding);
    // the in-bounds taps of a window starting at `start` (never empty: the padding is at
    // most half the window, and padding is never the maximum)
    let span = |start: usize, pad: usize, k: usize, size: usize| {
        (
            start.saturating_sub(pad),
            (start + k).saturating_sub(pad).min(size),
        )
    };
    let plane = |(plane, (bo, ao)): (usize, (&mut [T], &mut [usize]))| {
        let xp = &xs[plane * h * w..(plane + 1) * h * w];
        // the common 2×2 window without padding gets its four taps unrolled
        let two_by_two = (kh, kw, ph, pw) == (2, 2, 0, 0);
        for oh in 0..ho {
            let (y0, y1) = span(oh * sh, ph, kh, h);
            for ow in 0..wo {
                let (b, i_b) = if two_by_two {
                    let (r0, r1, c) = (oh * sh * w, (oh * sh + 1) * w, ow * sw);
                    first_max(xp, [r0 + c, r0 + c + 1, r1 + c, r1 + c + 1].into_iter())
                } else {
                    let (x0, x1) = span(ow * sw, pw, kw, w);
                    first_max(xp, (y0..y1).flat_map(move |y| y * w + x0..y * w + x1))
                };
                let o = oh * wo + ow;
                (bo[o], ao[o]) = (b, plane * h * w + i_b);
            }
        }
    };
    let per_plane = (ho * wo).max(1);
    best.par_chunks_mut(per_plane)
        .zip(at.par_chunks_mut(per_plane))
        .enumerate()
        .for_each(plane);
    let n_c = x.shape()[..2].to_vec();
    let shape = [n_c[0], n_c[1], d[3], d[4]];
    Ok((Tensor::from_vec(best, &shape)?, at.into()))
}

/// Average pooling: each window's sum over `kh·kw` (padding counted).
pub(crate) fn avg_forward<T: Element>(x: &Tensor<T>, p: &Pool2dOptions) -> Result<Tensor<T>> {
    let d = pool_dims(x.shape(), p, "avg_pool2d")?;
    let mut out = vec![T::zero(); d[0] * d[3] * d[4]];
    let xs = x.data();
    for_each_tap(p, d, |o, i| out[o] += xs[i]);
    let inv = T::of(1.0 / (p.kernel[0] * p.kernel[1]) as f64);
    out.iter_mut().for_each(|v| *v *= inv);
    Tensor::from_vec(out, &[x.shape()[0], x.shape()[1], d[3], d[4]])
}

/// The adjoint of average pooling: each output's gradient over `kh·kw` to its window.
fn avg_adjoint<T: Element>(g: &Tensor<T>, shape: &[usize], p: &Pool2dOptions) -> Result<Tensor<T>> {
    let d = pool_dims(shape, p, "avg_pool2d")?;
    let inv = T::of(1.0 / (p.kernel[0] * p.kernel[1]) as f64);
    let gs = g.data();
    Ok(Tensor::build(shape, |dx| {
        for_each_tap(p, d, |o, i| dx[i] += gs[o] * inv)
    }))
}

impl<'t, T: Element> Var<'t, T> {
    /// Max pooling over the two last axes of `[N, C, H, W]` (`max_pool2d`); the gradient
    /// goes to each window's first maximum.
    pub fn max_pool2d(self, opts: Pool2dOptions) -> Result<Var<'t, T>> {
        let (y, argmax) = max_forward(&self.value(), &opts)?;
        Ok(self.tape.push(
            Op::MaxPool2d {
                opts: Box::new(opts),
                argmax,
            },
            &[self],
            y,
        ))
    }

    /// Average pooling over the two last axes of `[N, C, H, W]` (`avg_pool2d`, padding
    /// counted in the divisor).
    pub fn avg_pool2d(self, opts: Pool2dOptions) -> Result<Var<'t, T>> {
        let y = avg_forward(&self.value(), &opts)?;
        Ok(self.tape.push(Op::AvgPool2d(Box::new(opts)), &[self], y))
    }

    /// Every axis from `start` on merged into one (`torch.flatten(x, start)`).
    pub fn flatten(self, start: usize) -> Result<Var<'t, T>> {
        let shape = self.shape();
        if start >= shape.len() {
            return Err(Error::invalid(
                "flatten",
                format!("axis {start} of a tensor of shape {shape:?}"),
            ));
        }
        let mut to: Vec<usize> = shape[..start].to_vec();
        to.push(shape[start..].iter().product());
        self.reshape(&to)
    }
}

/// Max and average pooling.
pub(crate) struct Pooling;

impl<T: Element> Family<T> for Pooling {
    fn name(op: &Op<T>) -> &str {
        match op {
            Op::MaxPool2d { .. } => "max_pool2d",
            _ => "avg_pool2d",
        }
    }
    fn jvp(op: &Op<T>, _: &[&Tensor<T>], out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        jvp(op, out, t)
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        _: &Tensor<T>,
        g: &Tensor<T>,
        _: &[bool],
    ) -> Result<Grads<T>> {
        vjp(op, ins, g)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        out: Var<'t, T>,
        g: Var<'t, T>,
        _: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        let shape = out.shape();
        let name = <Self as Family<T>>::name(op);
        super::composition_vjp_recorded(name, ins, out, g, |ins| composed(op, ins[0], &shape))
    }
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        _: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        *slot = Some(match op {
            Op::AvgPool2d(p) => avg_forward(ins[0], p)?,
            _ => replay_forward(op, ins[0])?,
        });
        Ok(())
    }
}

/// The reverse rule of a pooling node.
pub(crate) fn vjp<T: Element>(op: &Op<T>, ins: &[&Tensor<T>], g: &Tensor<T>) -> Result<Grads<T>> {
    let x = ins[0];
    let dx = match op {
        Op::MaxPool2d { argmax, .. } => Tensor::build(x.shape(), |dx| {
            // a plane's kept indices all fall in that plane: one task per plane
            let gs = g.shape();
            let (planes, plane_out) = (gs[0] * gs[1], gs[2] * gs[3]);
            let plane_in = dx.len() / planes.max(1);
            if plane_in == 0 || plane_out == 0 {
                return;
            }
            let per_plane = argmax
                .par_chunks(plane_out)
                .zip(g.data().par_chunks(plane_out));
            dx.par_chunks_mut(plane_in)
                .zip(per_plane)
                .enumerate()
                .for_each(|(plane, (dxp, (kept, gp)))| {
                    for (&i, &gv) in kept.iter().zip(gp) {
                        dxp[i - plane * plane_in] += gv;
                    }
                });
        }),
        Op::AvgPool2d(p) => avg_adjoint(g, x.shape(), p)?,
        _ => unreachable!("not a pooling"),
    };
    Ok(smallvec::smallvec![Some(dx)])
}

/// The forward rule: the tangent pooled the same way (max: at the kept indices).
pub(crate) fn jvp<T: Element>(op: &Op<T>, out: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
    let t = t[0].expect("called only with a tangent");
    match op {
        Op::MaxPool2d { argmax, .. } => {
            Tensor::from_vec(argmax.iter().map(|&i| t.data()[i]).collect(), out.shape())
        }
        Op::AvgPool2d(p) => avg_forward(t, p),
        _ => unreachable!("not a pooling"),
    }
}

/// Runs max pooling again (replay), refreshing the kept indices (average pooling keeps
/// nothing: replay calls [`avg_forward`]).
pub(crate) fn replay_forward<T: Element>(op: &mut Op<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
    let Op::MaxPool2d { opts, argmax } = op else {
        unreachable!("not a max pooling")
    };
    let (y, at) = max_forward(x, opts)?;
    *argmax = at;
    Ok(y)
}

/// Max pooling in built-in ops, with memory proportional to the input (a selection of
/// the whole flattened input at `argmax` would make its recorded adjoint a dense
/// `[len, outputs]` matrix): every window's taps picked by one `index_select` within
/// each plane, `[N, C, kh·kw, ho·wo]`, times a constant 0/1 mask of the kept tap, summed
/// over the taps.
fn max_composed<'t, T: Element>(
    x: Var<'t, T>,
    p: &Pool2dOptions,
    argmax: &[usize],
    out: &[usize],
) -> Result<Var<'t, T>> {
    let [n, c, h, w] = *x.shape() else {
        unreachable!("checked when recorded")
    };
    let ([kh, kw], [sh, sw], [ph, pw]) = (p.kernel, p.stride, p.padding);
    let (ho, wo) = (out[2], out[3]);
    let (taps, positions) = (kh * kw, ho * wo);
    // the in-plane index of tap t of window o (0 where it falls in the padding)
    let mut idx = vec![0usize; taps * positions];
    let mut valid = vec![false; taps * positions];
    for (t, (i, j)) in (0..kh)
        .flat_map(|i| (0..kw).map(move |j| (i, j)))
        .enumerate()
    {
        for oh in 0..ho {
            for ow in 0..wo {
                let (y, xx) = (
                    (oh * sh + i).wrapping_sub(ph),
                    (ow * sw + j).wrapping_sub(pw),
                );
                if y < h && xx < w {
                    let k = t * positions + oh * wo + ow;
                    (idx[k], valid[k]) = (y * w + xx, true);
                }
            }
        }
    }
    let mask = Tensor::build(&[n, c, taps, positions], |m| {
        for plane in 0..n * c {
            for o in 0..positions {
                let kept = argmax[plane * positions + o];
                for t in 0..taps {
                    let k = t * positions + o;
                    if valid[k] && plane * h * w + idx[k] == kept {
                        m[(plane * taps + t) * positions + o] = T::one();
                    }
                }
            }
        }
    });
    x.reshape(&[n, c, h * w])?
        .index_select(2, &idx)?
        .reshape(&[n, c, taps, positions])?
        .mul(x.tape.constant(mask))?
        .sum(&[2], false)?
        .reshape(out)
}

/// The composition that second order differentiates: [`max_composed`], or a depthwise
/// convolution with weights 1/(kh·kw) (average).
pub(crate) fn composed<'t, T: Element>(
    op: &Op<T>,
    x: Var<'t, T>,
    out: &[usize],
) -> Result<Var<'t, T>> {
    match op {
        Op::MaxPool2d { opts, argmax } => max_composed(x, opts, argmax, out),
        Op::AvgPool2d(p) => {
            let c = x.shape()[1];
            let k = p.kernel[0] * p.kernel[1];
            let w = Tensor::filled(&[c, 1, p.kernel[0], p.kernel[1]], T::of(1.0 / k as f64));
            let opts = Conv2dOptions {
                stride: p.stride,
                padding: p.padding,
                groups: c,
                ..Default::default()
            };
            x.conv2d(x.tape.constant(w), None, opts)
        }
        _ => unreachable!("not a pooling"),
    }
}

/// The cases of `chainrule gradcheck`: windows that overlap, with padding, and not.
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, out: &mut Vec<Case>) {
    let windows = [
        Pool2dOptions::square(2),
        Pool2dOptions {
            kernel: [3, 2],
            stride: [1, 2],
            padding: [1, 0],
        },
    ];
    for p in windows {
        let (n, c) = (rng.random_range(1..3), rng.random_range(1..3));
        let (h, w) = (rng.random_range(4..6), rng.random_range(4..6));
        // distinct values: a tie in a max window has no derivative
        let x = sample(&[n, c, h, w], Domain::AwayFromZero, rng);
        out.push(Case {
            op: "max_pool2d".into(),
            inputs: vec![x.clone()],
            f: Box::new(move |_, v| v[0].max_pool2d(p)),
            scalar: None,
        });
        out.push(Case {
            op: "avg_pool2d".into(),
            inputs: vec![x],
            f: Box::new(move |_, v| v[0].avg_pool2d(p)),
            scalar: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use super::*;
    use crate::autodiff::Tape;
    use rand::SeedableRng;

    #[test]
    fn every_case_passes_the_gradient_check() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut cases = Vec::new();
        suite_cases(&mut rng, &mut cases);
        for c in &cases {
            check(&c.op, &c.inputs, |tape, v| (c.f)(tape, v));
            let tape = Tape::new();
            let v: Vec<Var<'_, f64>> = c.inputs.iter().map(|x| tape.var(x.clone())).collect();
            let fused = (c.f)(&tape, &v).unwrap();
            let op = tape.with_nodes(|n| n[fused.id as usize].op.clone());
            let comp = composed(&op, v[0], &fused.shape()).unwrap();
            assert!(fused.value().max_abs_diff(&comp.value()).unwrap() < 1e-13);
        }
    }

    #[test]
    fn the_second_order_composition_of_max_pooling_stays_the_size_of_its_input() {
        // a batch of W12's pooled maps: a selection of the flattened input would record a
        // dense [4.7 M, 1.2 M] adjoint here; the composition's largest tensor is the mask
        let tape = Tape::<f32>::new();
        let x = tape.var(
            Tensor::<f64>::randn(&[8, 64, 24, 24], 1)
                .unwrap()
                .cast::<f32>(),
        );
        let y = x.max_pool2d(Pool2dOptions::square(2)).unwrap();
        let op = tape.with_nodes(|n| n[y.id as usize].op.clone());
        let z = composed(&op, x, &y.shape()).unwrap();
        let g = tape.backward(z.sum_all()).unwrap();
        let g = g.wrt(x).unwrap();
        assert_eq!(
            g.data().iter().filter(|&&v| v == 1.0).count(),
            y.value().len()
        );
    }

    #[test]
    fn ties_go_to_the_first_maximum_nan_propagates_and_averages_count_padding() {
        let tape = Tape::<f64>::new();
        let x = tape.var(Tensor::from_vec(vec![1.0, 3.0, 3.0, 2.0], &[1, 1, 2, 2]).unwrap());
        let y = x.max_pool2d(Pool2dOptions::square(2)).unwrap();
        assert_eq!(y.value().data(), [3.0]);
        let g = tape.backward(y.sum_all()).unwrap();
        assert_eq!(g.wrt(x).unwrap().data(), [0.0, 1.0, 0.0, 0.0]);
        let z = tape.var(Tensor::from_vec(vec![1.0, f64::NAN, 3.0, 2.0], &[1, 1, 2, 2]).unwrap());
        assert!(
            z.max_pool2d(Pool2dOptions::square(2))
                .unwrap()
                .value()
                .data()[0]
                .is_nan()
        );
        // a 3×3 window at a corner, padded by 1: four taps over nine
        let ones = tape.var(Tensor::ones(&[1, 1, 2, 2]).unwrap());
        let p = Pool2dOptions {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        assert_eq!(ones.avg_pool2d(p).unwrap().value().data(), [4.0 / 9.0; 4]);
        assert!(ones.max_pool2d(Pool2dOptions::square(3)).is_err());
        // an empty plane, padded: an error, not windows of nothing
        let empty = tape.var(Tensor::zeros(&[1, 1, 0, 0]).unwrap());
        let padded = Pool2dOptions {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [1, 1],
        };
        assert!(empty.max_pool2d(padded).is_err() && empty.avg_pool2d(padded).is_err());
        assert_eq!(ones.flatten(1).unwrap().shape().as_slice(), [1, 4]);
    }
}
