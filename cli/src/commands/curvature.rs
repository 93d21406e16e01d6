//! `chainrule curvature`: the largest Hessian eigenvalues of a saved run's training loss
//! (an MLP's or a character model's), and the learning rate above which plain gradient
//! descent diverges along them.

use super::train::SavedRun;
use anyhow::bail;
use chainrule::autodiff::Tape;
use chainrule::data::gather_batch;
use chainrule::nn::{ForwardCtx, ParamStore, cross_entropy};
use chainrule::optim::curvature::{Eigenvalues, top_eigenvalues};
use chainrule::tensor::Tensor;
use chainrule::train::{GptLanguageModel, LanguageModel, Objective};
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
    // H·v of the mean loss: the recorded gradient's tangent on a forward-mode tape, alone
    if let Some((model, store, text)) = saved.gpt()? {
        // the run's first training batches (seeded windows), until `limit` characters
        let cfg = &saved.cfg;
        let (train, val) = (text.corpus.train(), text.corpus.val());
        let mut lm = GptLanguageModel::new(&model, train, val, cfg.batch_size, cfg.seq_len)?;
        let per_batch = cfg.batch_size * cfg.seq_len;
        let batches = limit.div_ceil(per_batch).min(lm.batches_per_epoch());
        let hv = |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
            let tape = Tape::forward_mode();
            let p = store.duals(&tape, v)?;
            lm.start_epoch(0, cfg.seed)?;
            let mut total = tape.scalar(0.0);
            for k in 0..batches {
                let (loss, _) = lm.batch_loss(&p, k, &mut ForwardCtx::eval())?;
                total = total.add(loss.mul_scalar(1.0 / batches as f64))?;
            }
            tape.backward_tangents(total, p.vars())
        };
        let eig = eigenvalues(&args, &store, hv)?;
        let over = format!(
            "mean cross-entropy per character over the run's first {batches} batch(es) of {} random windows of {} characters",
            cfg.batch_size, cfg.seq_len
        );
        return report(&args, &saved, eig, batches * per_batch, &over);
    }
    let (eig, n, over) = match saved.char_model()? {
        Some((model, store, text)) => {
            // the first training windows of every stream, state carried from zeros, as
            // the run's first batches; windows are added until `limit` characters
            let (streams, mut windows, mut n) = (&text.train, 0, 0);
            while windows < streams.windows() && n < limit {
                n += streams.window(windows).2 * streams.batch();
                windows += 1;
            }
            if n == 0 {
                bail!(
                    "--checkpoint {}: the run's training text has no window",
                    args.checkpoint.display()
                );
            }
            let mut lm = LanguageModel::new(&model, text.train.clone(), text.val.clone());
            let hv = |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
                let tape = Tape::forward_mode();
                let p = store.duals(&tape, v)?;
                lm.start_epoch(0, 0)?;
                let mut total = tape.scalar(0.0);
                for k in 0..windows {
                    let (loss, chars) = lm.batch_loss(&p, k, &mut ForwardCtx::eval())?;
                    total = total.add(loss.mul_scalar(chars as f64 / n as f64))?;
                }
                tape.backward_tangents(total, p.vars())
            };
            let eig = eigenvalues(&args, &store, hv)?;
            let over = format!(
                "mean cross-entropy per character over the first {windows} training window(s) of {} streams, the first from a zero state, each next from the state the one before left, as in training",
                text.train.batch()
            );
            (eig, n, over)
        }
        None => {
            let (model, store, splits) = saved.classifier()?;
            let n = splits.train.len().min(limit);
            let rows: Vec<usize> = (0..n).collect();
            let (x, y) = gather_batch(&splits.train, &rows);
            let hv = |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
                let tape = Tape::forward_mode();
                let p = store.duals(&tape, v)?;
                let logits = model.classifier().logits(
                    &p,
                    tape.constant(x.clone()),
                    &mut ForwardCtx::eval(),
                )?;
                let loss = cross_entropy(logits, &y)?;
                tape.backward_tangents(loss, p.vars())
            };
            let eig = eigenvalues(&args, &store, hv)?;
            (
                eig,
                n,
                format!("mean cross-entropy over the first {n} training samples"),
            )
        }
    };
    report(&args, &saved, eig, n, &over)
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
