//! `chainrule curvature`: the largest Hessian eigenvalues of a saved MLP's training loss,
//! and the learning rate above which plain gradient descent diverges along them.

use super::train::SavedRun;
use anyhow::bail;
use chainrule::autodiff::Tape;
use chainrule::data::gather_batch;
use chainrule::nn::{ForwardCtx, cross_entropy};
use chainrule::optim::curvature::top_eigenvalues;
use chainrule::tensor::Tensor;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `chainrule curvature`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder (holding checkpoint.safetensors) or a checkpoint file of an MLP.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset [default: the run's]; the loss is taken over its training split.
    #[arg(long)]
    data: Option<String>,
    /// How many eigenvalues to find (largest magnitude first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    top: u64,
    /// Hessian-vector products in all (Lanczos iterations; at least --top).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    iterations: u64,
    /// Training samples the loss averages over (the first ones of the training split).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    samples: u64,
    /// Seed of the starting directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let saved = SavedRun::load(&args.checkpoint, args.data.clone())?;
    if saved.is_character_model()? {
        bail!(
            "--checkpoint {}: a character model; its recurrent cells have no second-order rules yet, so curvature needs an MLP checkpoint",
            args.checkpoint.display()
        );
    }
    let (model, store, splits) = saved.mlp()?;
    let n = splits
        .train
        .len()
        .min(usize::try_from(args.samples).unwrap_or(usize::MAX));
    let rows: Vec<usize> = (0..n).collect();
    let (x, y) = gather_batch(&splits.train, &rows);
    let shapes: Vec<Vec<usize>> = store.iter().map(|(_, _, v)| v.shape().to_vec()).collect();
    // H·v of the mean cross-entropy: the recorded gradient's tangent on a forward-mode tape
    let hv = |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
        let tape = Tape::forward_mode();
        let p = store.duals(&tape, v)?;
        let logits = model.forward(&p, tape.constant(x.clone()), &mut ForwardCtx::eval())?;
        let loss = cross_entropy(logits, &y)?;
        let grads = tape.backward_recorded(loss, p.vars())?;
        grads.iter().map(|g| g.tangent()).collect()
    };
    let eig = top_eigenvalues(
        hv,
        &shapes,
        args.top as usize,
        args.iterations as usize,
        args.seed,
    )?;
    let top = eig.values[0];
    let (lr, optimizer) = (saved.cfg_lr(), saved.cfg_optimizer());
    let stable = if top > 0.0 { 2.0 / top } else { f64::INFINITY };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": saved.file.display().to_string(),
                "step": saved.ckpt.meta.position.step,
                "samples": n,
                "eigenvalues": eig.values,
                "residuals": eig.residuals,
                "max_stable_lr": stable,
                "lr": lr,
                "optimizer": optimizer,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Hessian of the training loss (mean cross-entropy over the first {n} training samples) at step {} of {}",
        saved.ckpt.meta.position.step,
        saved.file.display()
    );
    for (k, (l, r)) in eig.values.iter().zip(&eig.residuals).enumerate() {
        println!("  λ{} = {l:>12.5}   (Lanczos residual {r:.1e})", k + 1);
    }
    println!(
        "  ({} Hessian-vector products in f32; the residual bounds the distance to an eigenvalue of that operator)",
        args.iterations
    );
    if top > 0.0 {
        println!(
            "plain gradient descent multiplies the error along the top eigenvector by (1 − lr·λ1) per step: it diverges there for lr above 2/λ1 = {stable:.5}"
        );
    } else {
        println!(
            "the largest-magnitude eigenvalue is not positive: no step size makes gradient descent diverge along it"
        );
    }
    println!(
        "this run used lr {lr} with {optimizer}: lr·λ1 = {:.3}{}",
        lr * top,
        if optimizer == "sgd" {
            ""
        } else {
            " (its steps are rescaled per coordinate, so the bound is for plain SGD)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
