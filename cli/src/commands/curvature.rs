//! `chainrule curvature`: the largest Hessian eigenvalues of a saved run's training loss
//! (an MLP's or a character model's), and the learning rate above which plain gradient
//! descent diverges along them.

use super::train::SavedRun;
use anyhow::Context;
use chainrule::nn::ParamStore;
use chainrule::optim::curvature::{Eigenvalues, top_eigenvalues};
use chainrule::tensor::Tensor;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `chainrule curvature`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder (holding checkpoint.safetensors) or a checkpoint file.
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
    /// Training samples the loss averages over (the first ones of the training split; for
    /// a character model, characters: its first training windows, until this many).
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
    let limit = usize::try_from(args.samples).unwrap_or(usize::MAX);
    // H·v of the mean loss: the recorded gradient's tangent on a forward-mode tape, alone;
    // which loss, over which samples, is the model's family's
    let (model, store) = saved.restore()?;
    let loss = model
        .curvature(&saved.cfg, &store, limit)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    let eig = eigenvalues(&args, &store, loss.hv)?;
    report(&args, &saved, eig, loss.samples, &loss.over)
}

/// Prints the eigenvalues found over `n` samples of the loss `over` describes, and the
/// learning rate above which plain gradient descent diverges along the top one.
fn report(
    args: &Args,
    saved: &SavedRun,
    eig: Eigenvalues,
    n: usize,
    over: &str,
) -> anyhow::Result<ExitCode> {
    let top = eig.values[0];
    let (lr, optimizer) = (saved.cfg_lr(), saved.cfg_optimizer());
    let stable = if top > 0.0 { 2.0 / top } else { f64::INFINITY };
    let json = serde_json::json!({
        "checkpoint": saved.file.display().to_string(),
        "step": saved.ckpt.meta.position.step,
        "samples": n,
        "eigenvalues": eig.values,
        "residuals": eig.residuals,
        "max_stable_lr": stable,
        "lr": lr,
        "optimizer": optimizer,
    });
    // beside the checkpoint, in its run folder, where `chainrule serve` draws it
    // (a checkpoint in a folder this user cannot write to still gets its answer)
    let written = saved.file.with_file_name("curvature.json");
    let written = match chainrule::nn::write_atomically(
        &written,
        serde_json::to_string_pretty(&json)?.as_bytes(),
    ) {
        Ok(()) => Some(written),
        Err(e) => {
            eprintln!("warning: the result was not saved: {e}");
            None
        }
    };
    if args.json {
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Hessian of the training loss ({over}) at step {} of {}",
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
    if let Some(path) = written {
        println!("written: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The top eigenvalues by Lanczos on `hv`, for the parameters of `store`.
fn eigenvalues(
    args: &Args,
    store: &ParamStore<f32>,
    hv: impl FnMut(&[Tensor<f32>]) -> chainrule::Result<Vec<Tensor<f32>>>,
) -> chainrule::Result<Eigenvalues> {
    let shapes: Vec<Vec<usize>> = store.iter().map(|(_, _, v)| v.shape().to_vec()).collect();
    top_eigenvalues(
        hv,
        &shapes,
        args.top as usize,
        args.iterations as usize,
        args.seed,
    )
}
