//! The functions of W4, W5 and W10 (gradients, Jacobians, Hessian-vector products)
//! and the W1 references in f64.

use super::*;

/// W10 (`shared/bench/anchors/w10_hvp.py`): the Hessian-vector product of the W1 loss
/// at the anchors' parameters along the anchor's direction (parameter i: splitmix64
/// uniform in [−1, 1] from stream 101 + i), by forward over reverse, H·v alone as the
/// anchors time it ([`chainrule::autodiff::hvp_only`]), against one gradient (tape forward +
/// backward). `median_s`
/// is the H·v, `grad_median_s` the gradient; `v_hv` = Σ v·Hv is checked against the
/// anchor's 0.96944.
pub(super) fn w10_hvp(cfg: &BenchConfig) -> Result<BenchRow> {
    let data = W1Data::<f32>::new();
    let v: Vec<Tensor<f32>> = data
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Tensor::splitmix_uniform(p.shape(), 101 + i as u64, -1.0, 1.0)
                .expect("a workload's fixed shape")
        })
        .collect();
    let hvp = || {
        chainrule::autodiff::hvp_only(
            |t, p| w1_loss(t, &data.x, &data.labels, p),
            &data.params,
            &v,
        )
    };
    let hv = hvp()?;
    let v_hv: f64 = hv
        .iter()
        .zip(&v)
        .map(|(h, v)| {
            h.data()
                .iter()
                .zip(v.data())
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum::<f64>()
        })
        .sum();
    let mut failure = None;
    let half = cfg.budget / 2;
    let t_hvp = measure(half, 5, || {
        if let Err(e) = hvp() {
            failure = Some(e);
        }
    });
    let mut tape = Tape::<f32>::new();
    let t_grad = measure(half, 5, || {
        tape.clear();
        let ps: Vec<Var<'_, f32>> = data.params.iter().map(|p| tape.var(p.clone())).collect();
        let g = w1_loss(&tape, &data.x, &data.labels, &ps).and_then(|l| tape.backward(l));
        if let Err(e) = g {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    BenchRow::new("w10_hvp", t_hvp)
        .with("grad_median_s", t_grad.median_s)
        .with("v_hv", v_hv)
        .with("hvp_over_grad", t_hvp.median_s / t_grad.median_s)
        .verify("v_hv", 0.96944, v_hv, 5e-4)
}

/// W4's `f(x) = Σ sin(xᵢ) xᵢ² + Σ_{i<N−1} [100 (xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)²]` on a tape.
pub fn w4_f<'t, T: Element>(x: Var<'t, T>) -> Result<Var<'t, T>> {
    let n = x.shape()[0];
    let x2 = x.mul(x)?;
    let first = x.sin().mul(x2)?.sum_all();
    if n < 2 {
        return Ok(first);
    }
    let head = x.narrow(0, 0, n - 1)?;
    let tail = x.narrow(0, 1, n - 1)?;
    let a = tail
        .sub(x2.narrow(0, 0, n - 1)?)?
        .powf(2.0)
        .mul_scalar(100.0);
    let b = head.neg().add_scalar(1.0).powf(2.0);
    first.add(a.add(b)?.sum_all())
}

/// W4's input: `N` values uniform in [-1, 1) from splitmix64 stream 51.
pub fn w4_input<T: Element>(n: usize) -> Tensor<T> {
    Tensor::splitmix_uniform(&[n], 51, -1.0, 1.0).expect("a workload's fixed shape")
}

/// W5's `g(t)_k = sin(k t) exp(−t/k)`, k = 1..M, for a one-element `t`.
pub fn w5_g<'t, T: Element>(t: Var<'t, T>, m: usize) -> Result<Var<'t, T>> {
    let k = Tensor::<T>::arange(m)?.add_scalar(1.0);
    let inv_k = k.map(|v| T::one() / v);
    let tape = t.tape();
    let kt = tape.constant(k).mul(t)?;
    let decay = tape.constant(inv_k).mul(t)?.neg().exp();
    kt.sin().mul(decay)
}
