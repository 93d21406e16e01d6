//! Hessian-vector product of an MLP's loss (784-256-256-10, ReLU, cross-entropy, batch
//! 128: the network and data of the W1 benchmark workload) by forward-over-reverse on
//! the tensor engine, checked against central differences of its gradient:
//! `cargo run --release --example w1_hvp` (an argument sets a smaller batch).

use chainrule::autodiff::hvp;
use chainrule::tensor::SplitMix64;
use chainrule::{Result, Tape, Tensor, Var};

/// Mean cross-entropy of the MLP whose parameters are `[W1, b1, W2, b2, W3, b3]`.
fn loss<'t>(
    tape: &'t Tape<f64>,
    x: &Tensor<f64>,
    labels: &[usize],
    params: &[Var<'t, f64>],
) -> Result<Var<'t, f64>> {
    let mut h = tape.constant(x.clone());
    for (i, layer) in params.chunks(2).enumerate() {
        h = h.matmul(layer[0])?.add(layer[1])?;
        if i + 1 < params.len() / 2 {
            h = h.relu();
        }
    }
    chainrule::nn::cross_entropy(h, labels)
}

/// The loss's gradient at `params`, flattened in parameter order.
fn gradient(params: &[Tensor<f64>], x: &Tensor<f64>, labels: &[usize]) -> Result<Vec<f64>> {
    let tape = Tape::new();
    let vars: Vec<_> = params.iter().map(|p| tape.var(p.clone())).collect();
    let grads = tape.backward(loss(&tape, x, labels, &vars)?)?;
    Ok(vars.iter().flat_map(|&v| grads[v].to_vec()).collect())
}

/// Splits a flat vector into tensors of the parameters' shapes.
fn unflatten(flat: &[f64], like: &[Tensor<f64>]) -> Result<Vec<Tensor<f64>>> {
    let mut at = 0;
    like.iter()
        .map(|p| {
            at += p.len();
            Tensor::from_vec(flat[at - p.len()..at].to_vec(), p.shape())
        })
        .collect()
}

fn main() -> Result<()> {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(128)
        .clamp(1, 128);
    let t = std::time::Instant::now();
    // the benchmark anchors' data: splitmix64 streams, PyTorch's U(±1/√fan_in) weights
    let x = Tensor::splitmix_uniform(&[128, 784], 1, -1.0, 1.0)?.narrow(0, 0, batch)?;
    let mut g = SplitMix64::new(2);
    let labels: Vec<usize> = (0..batch).map(|_| g.int(10) as usize).collect();
    let mut params = Vec::new();
    for (i, w) in [784, 256, 256, 10].windows(2).enumerate() {
        let (bound, s) = (1.0 / (w[0] as f64).sqrt(), 11 + 2 * i as u64);
        params.push(Tensor::splitmix_uniform(&[w[0], w[1]], s, -bound, bound)?);
        params.push(Tensor::splitmix_uniform(&[w[1]], s + 1, -bound, bound)?);
    }
    let theta: Vec<f64> = params.iter().flat_map(|p| p.to_vec()).collect();
    let v = Tensor::<f64>::randn(&[theta.len()], 7)?.to_vec();

    let r = hvp(
        |t, p| loss(t, &x, &labels, p),
        &params,
        &unflatten(&v, &params)?,
    )?;
    let hv: Vec<f64> = r.hv.iter().flat_map(|t| t.to_vec()).collect();
    // a small step: ReLU's derivative jumps where a pre-activation crosses zero, and a
    // step that crosses one makes the difference of gradients meaningless there
    let h = 1e-7;
    let at = |sign: f64| -> Result<Vec<f64>> {
        let moved: Vec<f64> = theta
            .iter()
            .zip(&v)
            .map(|(t, d)| t + sign * h * d)
            .collect();
        gradient(&unflatten(&moved, &params)?, &x, &labels)
    };
    let (gp, gm) = (at(1.0)?, at(-1.0)?);
    let fd: Vec<f64> = gp
        .iter()
        .zip(&gm)
        .map(|(a, b)| (a - b) / (2.0 * h))
        .collect();
    let scale = fd.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = hv
        .iter()
        .zip(&fd)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale;

    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    println!(
        "W1 loss, batch {batch}: |Hv| = {:.6e}, |difference of gradients| = {:.6e}",
        norm(&hv),
        norm(&fd)
    );
    println!(
        "max |Hv - difference| / max |difference| = {err:.3e} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    if err.is_nan() || err >= 1e-6 {
        return Err(chainrule::Error::invalid(
            "w1_hvp",
            format!("H·v and the difference of gradients disagree: {err:.3e}"),
        ));
    }
    Ok(())
}
