//! Two-dimensional convolution over NCHW as one recorded node (PyTorch's `conv2d`: weight
//! `[out, in/groups, kh, kw]`, stride, padding, dilation, groups). The patches of a chunk
//! of samples, sized to stay in a core's L2 cache, are laid out as the columns of one
//! matrix (im2col) and multiplied by the weight in faer's kernels, the product written
//! in place where a chunk is one sample; the reverse rule computes the weight gradient as
//! one product per chunk and the input gradient by scattering the columns' gradient back
//! (col2im). Second order differentiates the same convolution written in built-in ops.

use super::{Family, Grads, Op, Tangents, VarGrads, row_sum};
use crate::autodiff::suite::{Case, Domain, sample};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, MatLayout, Tensor, checked_len, matmul_into, matmul_into_serial};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The settings of a convolution, as PyTorch's `conv2d` arguments (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step between output positions.
    pub stride: [usize; 2],
    /// Zeros added on each side.
    pub padding: [usize; 2],
    /// Spacing between the kernel's taps.
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels split in this many independent parts.
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// The sizes of a convolution.
#[derive(Clone, Copy, Debug)]
struct ConvDims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    og: usize,
    opts: Conv2dOptions,
}

impl ConvDims {
    /// Rows of a group's columns: `cg·kh·kw`.
    fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }
    fn positions(&self) -> usize {
        self.ho * self.wo
    }
}

fn conv_dims(
    x: &[usize],
    wt: &[usize],
    b: Option<&[usize]>,
    opts: Conv2dOptions,
) -> Result<ConvDims> {
    let bad = |why: String| {
        Err(Error::invalid(
            "conv2d",
            format!("input {x:?}, weight {wt:?}: {why}"),
        ))
    };
    let ([n, c, h, w], [o, cg, kh, kw]) = (x, wt) else {
        return bad(
            "the input must be [N, C, H, W] and the weight [out, in/groups, kh, kw]".into(),
        );
    };
    let (n, c, h, w, o, cg, kh, kw) = (*n, *c, *h, *w, *o, *cg, *kh, *kw);
    let g = opts.groups;
    if g == 0 || opts.stride.contains(&0) || opts.dilation.contains(&0) {
        return bad(format!(
            "stride, dilation and groups must be positive, got {opts:?}"
        ));
    }
    if c % g != 0 || o % g != 0 || cg * g != c {
        return bad(format!(
            "{g} groups need in/groups = {cg} weight channels and out divisible by groups"
        ));
    }
    if let Some(b) = b
        && b != [o]
    {
        return bad(format!("the bias has shape {b:?}, it needs [{o}]"));
    }
    let out = |size: usize, pad: usize, dil: usize, k: usize, stride: usize| -> Option<usize> {
        let span = dil.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
        let padded = size.checked_add(pad.checked_mul(2)?)?;
        Some(padded.checked_sub(span)? / stride + 1)
    };
    let (Some(ho), Some(wo)) = (
        out(h, opts.padding[0], opts.dilation[0], kh, opts.stride[0]),
        out(w, opts.padding[1], opts.dilation[1], kw, opts.stride[1]),
    ) else {
        return bad("the kernel (dilated) is larger than the padded input, or empty".into());
    };
    checked_len("conv2d", &[n, o, ho, wo])?;
    checked_len("conv2d", &[cg, kh, kw, ho, wo])?;
    Ok(ConvDims {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        ho,
        wo,
        cg,
        og: o / g,
        opts,
    })
}

/// Where row `r` of group `g`'s columns (`r` = `(ci, ki, kj)`) reads output row `oh` of
/// a sample `[C, H, W]`: tap `ow` reads `base + ow·sw` for `ow` in `lo..hi` and falls in
/// the padding elsewhere; `None` when the whole row does. The one index map of
/// [`im2col`] and of its adjoint [`col2im`].
#[inline(always)]
fn tap_row(g: usize, d: &ConvDims, r: usize, oh: usize) -> Option<(usize, usize, usize)> {
    let ConvDims {
        h,
        w,
        kh,
        kw,
        wo,
        cg,
        opts,
        ..
    } = *d;
    let ([sh, sw], [ph, pw], [dh, dw]) = (opts.stride, opts.padding, opts.dilation);
    let (ci, ki, kj) = (r / (kh * kw), r / kw % kh, r % kw);
    let y = (oh * sh + ki * dh).wrapping_sub(ph);
    if y >= h {
        return None;
    }
    // x(ow) = ow·sw + kj·dw − pw must lie in 0..w
    let shift = kj * dw;
    let lo = pw.saturating_sub(shift).div_ceil(sw);
    let hi = (w + pw).saturating_sub(shift).div_ceil(sw).min(wo);
    let base = ((g * cg + ci) * h + y) * w + shift;
    Some((base.wrapping_sub(pw), lo.min(hi), hi))
}

/// Group `g` of sample `xs` (`[C, H, W]`) as columns `[cg·kh·kw, ho·wo]`, zeros where a
/// tap falls in the padding, written at `cols[r·stride + offset ..]` for row `r` (the
/// sample's place among a chunk's columns).
fn im2col<T: Element>(
    xs: &[T],
    g: usize,
    d: &ConvDims,
    cols: &mut [T],
    stride: usize,
    offset: usize,
) {
    let (ho, wo, sw) = (d.ho, d.wo, d.opts.stride[1]);
    for r in 0..d.k() {
        let row = &mut cols[r * stride + offset..][..ho * wo];
        for (oh, out) in row.chunks_exact_mut(wo).enumerate() {
            let Some((base, lo, hi)) = tap_row(g, d, r, oh) else {
                out.fill(T::zero());
                continue;
            };
            out[..lo].fill(T::zero());
            out[hi..].fill(T::zero());
            if lo == hi {
                continue;
            }
            let start = base.wrapping_add(lo * sw);
            if sw == 1 {
                out[lo..hi].copy_from_slice(&xs[start..start + (hi - lo)]);
            } else {
                for (o, v) in out[lo..hi].iter_mut().zip(xs[start..].iter().step_by(sw)) {
                    *o = *v;
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds the columns' gradient (read like `im2col` writes them)
/// into sample `dxs` (`[C, H, W]`).
fn col2im<T: Element>(
    cols: &[T],
    g: usize,
    d: &ConvDims,
    dxs: &mut [T],
    stride: usize,
    offset: usize,
) {
    let (ho, wo, sw) = (d.ho, d.wo, d.opts.stride[1]);
    for r in 0..d.k() {
        let row = &cols[r * stride + offset..][..ho * wo];
        for (oh, from) in row.chunks_exact(wo).enumerate() {
            if let Some((base, lo, hi)) = tap_row(g, d, r, oh)
                && lo < hi
            {
                let start = base.wrapping_add(lo * sw);
                if sw == 1 {
                    let to = &mut dxs[start..start + (hi - lo)];
                    for (t, v) in to.iter_mut().zip(&from[lo..hi]) {
                        *t += *v;
                    }
                } else {
                    let to = dxs[start..].iter_mut().step_by(sw);
                    for (t, v) in to.zip(&from[lo..hi]) {
                        *t += *v;
                    }
                }
            }
        }
    }
}

/// Bytes of patches one task lays out at a time: about half the L2 cache of a core of
/// today's CPUs (512 KiB to 2 MiB), so that the product reads them back from L2.
const PATCH_BYTES: usize = 512 * 1024;

/// Tasks a batch is split into at least (where it has that many samples), so that
/// small images still keep every thread of a many-core machine busy.
const MIN_TASKS: usize = 16;

impl ConvDims {
    /// Samples per task of both rules: each task lays out the patches of this many samples
    /// as the columns of one product (`[cg·kh·kw, samples·ho·wo]`), as many as fit in
    /// [`PATCH_BYTES`], at least one and at most a [`MIN_TASKS`]th of the batch. It
    /// depends on the shapes alone, so that the weight gradient's partial sums (and so its
    /// value) do not depend on the number of threads.
    fn samples_per_task<T>(&self) -> usize {
        let per_sample = (self.k() * self.positions() * std::mem::size_of::<T>()).max(1);
        (PATCH_BYTES / per_sample).clamp(1, self.n.div_ceil(MIN_TASKS).max(1))
    }
}

/// `c ⟵ a·b` (or `c += a·b`): on this thread alone when the caller's parallel loop has
/// tasks for every thread, else with threads of its own.
#[allow(clippy::too_many_arguments)]
fn product<T: Element>(
    serial: bool,
    c: &mut [T],
    (m, n, k): (usize, usize, usize),
    a: (&[T], MatLayout),
    b: (&[T], MatLayout),
    accumulate: bool,
) {
    if serial {
        matmul_into_serial(c, m, n, k, a, b, accumulate);
    } else {
        matmul_into(c, m, n, k, a, b, accumulate);
    }
}

/// `y = conv(x, w) + b`, a chunk of samples per task.
fn conv_forward<T: Element>(
    x: &Tensor<T>,
    wt: &Tensor<T>,
    b: Option<&Tensor<T>>,
    d: &ConvDims,
) -> Tensor<T> {
    let (k, pos) = (d.k(), d.positions());
    let mut y = Tensor::zeroed(&[d.n, d.o, d.ho, d.wo]);
    let (xs_len, ys_len) = (d.c * d.h * d.w, d.o * pos);
    if ys_len == 0 {
        return y;
    }
    let per_task = d.samples_per_task::<T>();
    let serial = d.n > per_task;
    // each thread's buffers serve all its chunks (the last chunk may be smaller); a task
    // of one sample writes its product in place and needs no output buffer
    let width_max = per_task * pos;
    let out_len = if per_task == 1 { 0 } else { d.og * width_max };
    let buffers = || (vec![T::zero(); k * width_max], vec![T::zero(); out_len]);
    let task = |(cols, out): &mut (Vec<T>, Vec<T>), (xs, ys): (&[T], &mut [T])| {
        let s = ys.len() / ys_len;
        let width = s * pos;
        let cols = &mut cols[..k * width];
        for g in 0..d.opts.groups {
            for si in 0..s {
                let sample = &xs[si * xs_len..(si + 1) * xs_len];
                im2col(sample, g, d, cols, width, si * pos);
            }
            let wg = &wt.data()[g * d.og * k..(g + 1) * d.og * k];
            let (nd, dims) = (MatLayout::Normal, (d.og, width, k));
            let bias = |o: usize| b.map_or(T::zero(), |b| b.data()[g * d.og + o]);
            if s == 1 {
                // the group's channels of the one sample are `[og, ho·wo]` already
                let yg = &mut ys[g * d.og * pos..][..d.og * pos];
                for (o, row) in yg.chunks_exact_mut(pos).enumerate() {
                    row.fill(bias(o));
                }
                product(serial, yg, dims, (wg, nd), (cols, nd), b.is_some());
                continue;
            }
            let out = &mut out[..d.og * width];
            product(serial, out, dims, (wg, nd), (cols, nd), false);
            for (o, row) in out.chunks_exact(width).enumerate() {
                let channel = g * d.og + o;
                for (si, from) in row.chunks_exact(pos).enumerate() {
                    let to = &mut ys[si * ys_len + channel * pos..][..pos];
                    for (t, &v) in to.iter_mut().zip(from) {
                        *t = v + bias(o);
                    }
                }
            }
        }
    };
    x.data()
        .par_chunks((per_task * xs_len).max(1))
        .zip(y.data_mut().par_chunks_mut(per_task * ys_len))
        .for_each_init(buffers, task);
    y
}

/// The reverse rule, a chunk of samples per task: with `dY` and the patches of the
/// chunk as matrices `[og, samples·ho·wo]` and `[cg·kh·kw, samples·ho·wo]`,
/// `dW_g = Σ_chunks dY·colsᵀ`, `dx = col2im(W_gᵀ·dY)`, `db = Σ dY`.
fn conv_vjp<T: Element>(
    ins: &[&Tensor<T>],
    d: &ConvDims,
    g: &Tensor<T>,
    needs: &[bool],
) -> Grads<T> {
    let (x, wt) = (ins[0], ins[1]);
    let (k, pos) = (d.k(), d.positions());
    let (xs_len, ys_len) = (d.c * d.h * d.w, d.o * pos);
    let mut dx = Tensor::zeroed(if needs[0] { x.shape() } else { &[0] });
    let (nd, tr) = (MatLayout::Normal, MatLayout::Transposed);
    let want_w = needs[1];
    let want_b = ins.len() == 3 && needs[2];
    // each task's partial sums: `dW` then `db`
    let (dw_len, db_len) = (
        if want_w { d.o * k } else { 0 },
        if want_b { d.o } else { 0 },
    );
    let per_task = d.samples_per_task::<T>();
    let serial = d.n > per_task;
    // each thread's buffers serve all its chunks (the last chunk may be smaller); a task
    // of one sample reads `dY` in place and needs no gathered copy of it
    let width_max = per_task * pos;
    let gathered_len = if per_task == 1 { 0 } else { d.og * width_max };
    let buffers = || {
        (
            vec![T::zero(); k * width_max],
            vec![T::zero(); gathered_len],
        )
    };
    let task = |(cols, gathered): &mut (Vec<T>, Vec<T>),
                (xs, gs, dxs): (&[T], &[T], Option<&mut [T]>)|
     -> Vec<T> {
        let s = gs.len() / ys_len;
        let width = s * pos;
        let mut partial = vec![T::zero(); dw_len + db_len];
        let (dw, db) = partial.split_at_mut(dw_len);
        let cols = &mut cols[..k * width];
        let mut dxs = dxs;
        for grp in 0..d.opts.groups {
            // the group's `dY` as `[og, samples·ho·wo]`
            let gc: &[T] = if s == 1 {
                &gs[grp * d.og * pos..][..d.og * pos]
            } else {
                let gc = &mut gathered[..d.og * width];
                for (o, row) in gc.chunks_exact_mut(width).enumerate() {
                    let channel = grp * d.og + o;
                    for (si, to) in row.chunks_exact_mut(pos).enumerate() {
                        to.copy_from_slice(&gs[si * ys_len + channel * pos..][..pos]);
                    }
                }
                gc
            };
            if want_b {
                let dbg = &mut db[grp * d.og..(grp + 1) * d.og];
                for (acc, row) in dbg.iter_mut().zip(gc.chunks_exact(width)) {
                    *acc += row_sum(row);
                }
            }
            if want_w {
                for si in 0..s {
                    let sample = &xs[si * xs_len..(si + 1) * xs_len];
                    im2col(sample, grp, d, cols, width, si * pos);
                }
                let dwg = &mut dw[grp * d.og * k..(grp + 1) * d.og * k];
                product(serial, dwg, (d.og, k, width), (gc, nd), (cols, tr), true);
            }
            if let Some(dxs) = dxs.as_deref_mut() {
                let wg = &wt.data()[grp * d.og * k..(grp + 1) * d.og * k];
                product(serial, cols, (k, width, d.og), (wg, tr), (gc, nd), false);
                for si in 0..s {
                    let sample = &mut dxs[si * xs_len..(si + 1) * xs_len];
                    col2im(cols, grp, d, sample, width, si * pos);
                }
            }
        }
        partial
    };
    let partials: Vec<Vec<T>> = if xs_len > 0 && ys_len > 0 {
        let chunks = x
            .data()
            .par_chunks(per_task * xs_len)
            .zip(g.data().par_chunks(per_task * ys_len));
        if needs[0] {
            let dxc = dx.data_mut().par_chunks_mut(per_task * xs_len);
            chunks
                .zip(dxc)
                .map_init(buffers, |b, ((xs, gs), dxs)| task(b, (xs, gs, Some(dxs))))
                .collect()
        } else {
            chunks
                .map_init(buffers, |b, (xs, gs)| task(b, (xs, gs, None)))
                .collect()
        }
    } else {
        Vec::new()
    };
    let mut out = Grads::new();
    out.push(needs[0].then_some(dx));
    // the tasks' partial sums added in the tasks' order, whatever thread ran each
    let total = |shape: &[usize], range: std::ops::Range<usize>| {
        let mut sum = Tensor::zeroed(shape);
        for p in &partials {
            let add = sum.data_mut().iter_mut().zip(&p[range.clone()]);
            add.for_each(|(a, &v)| *a += v);
        }
        sum
    };
    out.push(want_w.then(|| total(wt.shape(), 0..dw_len)));
    if ins.len() == 3 {
        out.push(want_b.then(|| total(&[d.o], dw_len..dw_len + db_len)));
    }
    out
}

/// The forward rule: convolution is linear in each input, so
/// `ẏ = conv(ẋ, w) + conv(x, ẇ) + ḃ`.
fn conv_jvp<T: Element>(ins: &[&Tensor<T>], d: &ConvDims, t: &Tangents<T>) -> Result<Tensor<T>> {
    let mut y = Tensor::zeroed(&[d.n, d.o, d.ho, d.wo]);
    if let Some(tx) = t[0] {
        y.add_assign(&conv_forward(tx, ins[1], None, d))?;
    }
    if let Some(tw) = t[1] {
        y.add_assign(&conv_forward(ins[0], tw, None, d))?;
    }
    if let Some(tb) = t.get(2).copied().flatten() {
        let pos = d.positions().max(1);
        for ys in y.data_mut().chunks_exact_mut((d.o * pos).max(1)) {
            for (row, &bv) in ys.chunks_exact_mut(pos).zip(tb.data()) {
                row.iter_mut().for_each(|v| *v += bv);
            }
        }
    }
    Ok(y)
}

/// The convolution in built-in ops (second order differentiates this): the input padded
/// by concatenating zeros, its patches picked by `index_select`, one product per group.
fn conv_composed<'t, T: Element>(ins: &[Var<'t, T>], d: &ConvDims) -> Result<Var<'t, T>> {
    let (x, wt) = (ins[0], ins[1]);
    let tape = x.tape;
    let ConvDims {
        n,
        c,
        h,
        w,
        kh,
        kw,
        ho,
        wo,
        cg,
        og,
        opts,
        ..
    } = *d;
    let ([sh, sw], [ph, pw], [dh, dw]) = (opts.stride, opts.padding, opts.dilation);
    let zeros = |shape: &[usize]| tape.constant(Tensor::zeroed(shape));
    let mut xp = x;
    if ph > 0 {
        xp = Var::concat(&[zeros(&[n, c, ph, w]), xp, zeros(&[n, c, ph, w])], 2)?;
    }
    let hp = h + 2 * ph;
    if pw > 0 {
        xp = Var::concat(&[zeros(&[n, c, hp, pw]), xp, zeros(&[n, c, hp, pw])], 3)?;
    }
    let wp = w + 2 * pw;
    let mut idx = Vec::with_capacity(kh * kw * ho * wo);
    for ki in 0..kh {
        for kj in 0..kw {
            for oh in 0..ho {
                for ow in 0..wo {
                    idx.push((oh * sh + ki * dh) * wp + ow * sw + kj * dw);
                }
            }
        }
    }
    let k = cg * kh * kw;
    let patches = xp
        .reshape(&[n, c, hp * wp])?
        .index_select(2, &idx)?
        .reshape(&[n, c * kh * kw, ho * wo])?;
    let mut outs = Vec::with_capacity(opts.groups);
    for g in 0..opts.groups {
        let pg = patches.narrow(1, g * k, k)?.transpose(1, 2)?;
        let wg = wt
            .narrow(0, g * og, og)?
            .reshape(&[og, k])?
            .transpose(0, 1)?;
        outs.push(pg.matmul(wg)?.transpose(1, 2)?);
    }
    let mut y = if outs.len() == 1 {
        outs[0]
    } else {
        Var::concat(&outs, 1)?
    };
    y = y.reshape(&[n, og * opts.groups, ho, wo])?;
    if ins.len() == 3 {
        y = y.add(ins[2].reshape(&[og * opts.groups, 1, 1])?)?;
    }
    Ok(y)
}

impl<'t, T: Element> Var<'t, T> {
    /// Two-dimensional convolution (`torch.nn.functional.conv2d`) of `self: [N, C, H, W]`
    /// with `weight: [out, C/groups, kh, kw]` and an optional `bias: [out]`: `[N, out, Ho,
    /// Wo]` with `Ho = (H + 2·pad − dil·(kh − 1) − 1)/stride + 1` (likewise `Wo`).
    pub fn conv2d(
        self,
        weight: Var<'t, T>,
        bias: Option<Var<'t, T>>,
        opts: Conv2dOptions,
    ) -> Result<Var<'t, T>> {
        let mut ins = vec![self, weight];
        ins.extend(bias);
        Tape::check_inputs("conv2d", &ins)?;
        let (x, w) = (self.value(), weight.value());
        let b = bias.map(|b| b.value());
        let d = conv_dims(x.shape(), w.shape(), b.as_ref().map(|b| b.shape()), opts)?;
        let y = conv_forward(&x, &w, b.as_ref(), &d);
        Ok(self.tape.push(Op::Conv2d(Box::new(opts)), &ins, y))
    }
}

/// The sizes of a recorded convolution from its inputs (checked when it was recorded).
fn dims_of<T: Element>(opts: Conv2dOptions, ins: &[&Tensor<T>]) -> Result<ConvDims> {
    conv_dims(
        ins[0].shape(),
        ins[1].shape(),
        ins.get(2).map(|b| b.shape()),
        opts,
    )
}

/// 2-D convolution.
pub(crate) struct Convolution;

fn options_of<T: Element>(op: &Op<T>) -> Conv2dOptions {
    match op {
        Op::Conv2d(opts) => **opts,
        _ => unreachable!("not a convolution"),
    }
}

impl<T: Element> Family<T> for Convolution {
    fn name(_: &Op<T>) -> &str {
        "conv2d"
    }
    fn jvp(op: &Op<T>, ins: &[&Tensor<T>], _: &Tensor<T>, t: &Tangents<T>) -> Result<Tensor<T>> {
        jvp(options_of(op), ins, t)
    }
    fn vjp(
        op: &Op<T>,
        ins: &[&Tensor<T>],
        _: &Tensor<T>,
        g: &Tensor<T>,
        needs: &[bool],
    ) -> Result<Grads<T>> {
        vjp(options_of(op), ins, g, needs)
    }
    fn vjp_recorded<'t>(
        op: &Op<T>,
        ins: &[Var<'t, T>],
        out: Var<'t, T>,
        g: Var<'t, T>,
        _: &[bool],
    ) -> Result<VarGrads<'t, T>> {
        let opts = options_of(op);
        super::composition_vjp_recorded("conv2d", ins, out, g, |ins| composed(opts, ins))
    }
    fn forward(
        op: &mut Op<T>,
        ins: &[&Tensor<T>],
        _: &[usize],
        slot: &mut Option<Tensor<T>>,
    ) -> Result<()> {
        *slot = Some(forward(options_of(op), ins)?);
        Ok(())
    }
}

/// The reverse rule of a convolution node.
pub(crate) fn vjp<T: Element>(
    opts: Conv2dOptions,
    ins: &[&Tensor<T>],
    g: &Tensor<T>,
    needs: &[bool],
) -> Result<Grads<T>> {
    Ok(conv_vjp(ins, &dims_of(opts, ins)?, g, needs))
}

/// The forward rule of a convolution node.
pub(crate) fn jvp<T: Element>(
    opts: Conv2dOptions,
    ins: &[&Tensor<T>],
    t: &Tangents<T>,
) -> Result<Tensor<T>> {
    conv_jvp(ins, &dims_of(opts, ins)?, t)
}

/// The forward kernel (replay).
pub(crate) fn forward<T: Element>(opts: Conv2dOptions, ins: &[&Tensor<T>]) -> Result<Tensor<T>> {
    let d = dims_of(opts, ins)?;
    Ok(conv_forward(ins[0], ins[1], ins.get(2).copied(), &d))
}

/// The composition that second order differentiates.
pub(crate) fn composed<'t, T: Element>(
    opts: Conv2dOptions,
    ins: &[Var<'t, T>],
) -> Result<Var<'t, T>> {
    let b = ins.get(2).map(|b| b.shape());
    let d = conv_dims(&ins[0].shape(), &ins[1].shape(), b.as_deref(), opts)?;
    conv_composed(ins, &d)
}

/// The cases of `chainrule gradcheck`: strides, padding, dilation and groups, with and
/// without a bias.
pub(crate) fn suite_cases(rng: &mut ChaCha8Rng, out: &mut Vec<Case>) {
    let settings = [
        (Conv2dOptions::default(), 1, true),
        (
            Conv2dOptions {
                stride: [2, 1],
                padding: [1, 1],
                ..Default::default()
            },
            1,
            false,
        ),
        (
            Conv2dOptions {
                dilation: [2, 1],
                padding: [0, 2],
                ..Default::default()
            },
            1,
            true,
        ),
        (
            Conv2dOptions {
                groups: 2,
                stride: [1, 2],
                ..Default::default()
            },
            2,
            true,
        ),
    ];
    for (opts, groups, bias) in settings {
        let (n, cg, og) = (
            rng.random_range(1..3),
            rng.random_range(1..3),
            rng.random_range(1..3),
        );
        let (h, w) = (rng.random_range(5..7), rng.random_range(4..6));
        let mut inputs = vec![
            sample(&[n, cg * groups, h, w], Domain::AwayFromZero, rng),
            sample(&[og * groups, cg, 3, 2], Domain::AwayFromZero, rng),
        ];
        if bias {
            inputs.push(sample(&[og * groups], Domain::AwayFromZero, rng));
        }
        out.push(Case {
            op: "conv2d".into(),
            inputs,
            f: Box::new(move |_, v| v[0].conv2d(v[1], v.get(2).copied(), opts)),
            scalar: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_case_passes_the_gradient_check_and_equals_its_composition() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut cases = Vec::new();
        suite_cases(&mut rng, &mut cases);
        for c in &cases {
            check(&c.op, &c.inputs, |tape, v| (c.f)(tape, v));
            let tape = Tape::new();
            let v: Vec<Var<'_, f64>> = c.inputs.iter().map(|x| tape.var(x.clone())).collect();
            let fused = (c.f)(&tape, &v).unwrap();
            let Op::Conv2d(opts) = tape.with_nodes(|n| n[fused.id as usize].op.clone()) else {
                panic!("not a convolution")
            };
            let comp = composed(*opts, &v).unwrap();
            assert!(fused.value().max_abs_diff(&comp.value()).unwrap() < 1e-13);
        }
    }

    #[test]
    fn chunks_of_samples_give_the_composition_s_values_and_gradients() {
        // 19 samples: nine chunks of two (a sixteenth of the batch, rounded up) and a
        // partial one, each product on its own thread; the suite's cases have one sample
        // per chunk
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let opts = Conv2dOptions {
            stride: [2, 1],
            padding: [1, 2],
            dilation: [1, 2],
            groups: 2,
        };
        let x = sample(&[19, 4, 7, 6], Domain::AwayFromZero, &mut rng);
        let w = sample(&[6, 2, 3, 2], Domain::AwayFromZero, &mut rng);
        let b = sample(&[6], Domain::AwayFromZero, &mut rng);
        let run = |fused: bool| {
            let tape = Tape::<f64>::new();
            let v = [x.clone(), w.clone(), b.clone()].map(|t| tape.var(t));
            let y = if fused {
                v[0].conv2d(v[1], Some(v[2]), opts).unwrap()
            } else {
                composed(opts, &v).unwrap()
            };
            let r = tape.constant(Tensor::<f64>::randn(&y.shape(), 3).unwrap());
            let grads = tape.backward(y.mul(r).unwrap().sum_all()).unwrap();
            let mut out = vec![y.value()];
            out.extend(v.iter().map(|&vi| grads.wrt(vi).unwrap()));
            out
        };
        for (a, b) in run(true).iter().zip(run(false)) {
            assert!(a.max_abs_diff(&b).unwrap() < 1e-12);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let tape = Tape::<f64>::new();
        let x = tape.var(Tensor::ones(&[1, 2, 3, 3]).unwrap());
        let w = tape.var(Tensor::ones(&[4, 2, 4, 1]).unwrap());
        let opts = Conv2dOptions::default();
        assert!(x.conv2d(w, None, opts).is_err()); // kernel taller than the input
        let w = tape.var(Tensor::ones(&[3, 1, 1, 1]).unwrap());
        assert!(
            x.conv2d(w, None, Conv2dOptions { groups: 2, ..opts })
                .is_err()
        );
        let w = tape.var(Tensor::ones(&[2, 2, 1, 1]).unwrap());
        assert!(
            x.conv2d(
                w,
                None,
                Conv2dOptions {
                    stride: [0, 1],
                    ..opts
                }
            )
            .is_err()
        );
        let b = tape.var(Tensor::ones(&[3]).unwrap());
        assert!(x.conv2d(w, Some(b), opts).is_err());
        assert!(x.conv2d(w, None, opts).is_ok());
    }
}
