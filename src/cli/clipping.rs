//! `chainrule clipping`: why gradient clipping exists, as an experiment. A recurrent
//! model trained on text at a few learning rates, each once without and once with
//! global-norm clipping (everything else equal and seeded), and the gradient norm of every
//! layer of a deep tanh MLP at initialisation under three scales of initial weights.

use anyhow::{Context, bail};
use chainrule::autodiff::{CellKind, Tape};
use chainrule::data::{Dataset, EMBEDDED_TEXTS, Standardizer, Streams, TextCorpus};
use chainrule::nn::{Activation, CharModel, ForwardCtx, Linear, Mlp, ParamStore, cross_entropy};
use chainrule::optim::{LrSchedule, OptimizerKind, grad_norms};
use chainrule::tensor::Tensor;
use chainrule::train::{LanguageModel, StopReason, TrainConfig, Trainer};
use chainrule::train::{log_ticks, tick_label};
use plotters::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `chainrule clipping`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A shorter run (fewer steps and learning rates), for a first look.
    #[arg(long)]
    quick: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Folder for clipping.svg and clipping.json [default: runs/clipping-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Text to train on: `macbeth` or `tragedies` (embedded) or `text:FILE` [default:
    /// macbeth].
    #[arg(long, default_value = "macbeth")]
    data: String,
}

/// The recipe of the recurrent runs: an Elman RNN (tanh), plain SGD, long windows.
struct Recipe {
    lrs: &'static [f64],
    steps: usize,
    clip: f64,
    embed: usize,
    hidden: usize,
    batch: usize,
    seq_len: usize,
    eval_every: usize,
}

const FULL: Recipe = Recipe {
    lrs: &[0.1, 0.3, 1.0, 3.0],
    steps: 1500,
    clip: 1.0,
    embed: 32,
    hidden: 128,
    batch: 16,
    seq_len: 100,
    eval_every: 250,
};

const QUICK: Recipe = Recipe {
    lrs: &[0.3, 3.0],
    steps: 400,
    clip: 1.0,
    embed: 32,
    hidden: 128,
    batch: 16,
    seq_len: 100,
    eval_every: 200,
};

/// A run is called diverged when its training loss exceeds this multiple of its first.
const DIVERGENCE: f64 = 1.5;

const SEED: u64 = 1;

/// One training run, as reported.
#[derive(Serialize)]
struct Run {
    lr: f64,
    clip: Option<f64>,
    final_val_loss: Option<f64>,
    stopped_by: StopReason,
    diverged_at_step: Option<usize>,
    max_grad_norm: f64,
    clipped_steps: usize,
    steps: usize,
    #[serde(skip)]
    losses: Vec<f64>,
    #[serde(skip)]
    norms: Vec<(usize, f64, bool)>,
}

/// The per-layer gradient norms of the deep MLP under one initialisation.
#[derive(Serialize)]
struct Depth {
    init: String,
    weight_std_times_sqrt_fan_in: f64,
    layer_grad_norms: Vec<f64>,
}

fn train_once(corpus: &TextCorpus, r: &Recipe, lr: f64, clip: Option<f64>) -> anyhow::Result<Run> {
    let mut store = ParamStore::<f32>::new();
    let model = CharModel::new(
        &mut store,
        CellKind::Rnn,
        corpus.vocab().len(),
        r.embed,
        r.hidden,
        1,
        SEED,
    )?;
    let train = Streams::new(corpus.train(), r.batch, r.seq_len)?;
    let val = Streams::new(corpus.val(), r.batch, r.seq_len)?;
    let mut objective = LanguageModel::new(&model, train, val);
    let trainer = Trainer::new(TrainConfig {
        batch_size: r.batch,
        schedule: LrSchedule::constant(lr),
        clip_norm: clip,
        max_epochs: None,
        max_steps: Some(r.steps),
        eval_every: Some(r.eval_every),
        divergence_factor: Some(DIVERGENCE),
        seed: SEED,
        ..Default::default()
    })?;
    let mut optimizer = OptimizerKind::Sgd.build::<f32>(lr, None)?;
    let report = trainer.fit_from_start(&mut objective, &mut store, optimizer.as_mut())?;
    let failed = matches!(
        report.stopped_by,
        StopReason::Diverged | StopReason::NonFinite
    );
    Ok(Run {
        lr,
        clip,
        final_val_loss: Some(report.final_val_loss).filter(|v| v.is_finite() && !failed),
        stopped_by: report.stopped_by,
        diverged_at_step: failed.then_some(report.steps + 1),
        max_grad_norm: report.clipping.max_norm,
        clipped_steps: report.clipping.clipped_steps,
        steps: report.steps,
        losses: report.step_losses,
        norms: report.step_norms,
    })
}

/// Gradient norm of every weight of a 30-layer tanh MLP (width 128, digits in, 10
/// classes out) at initialisation, weights N(0, (gain/√fan_in)²), biases zero, on one
/// batch of 256 standardised digits.
fn depth_profile(gain: f64) -> anyhow::Result<Vec<f64>> {
    const LAYERS: usize = 30;
    const WIDTH: usize = 128;
    let digits = Dataset::digits()?;
    let digits = Standardizer::fit(&digits).apply(&digits)?;
    let rows: Vec<usize> = (0..256).collect();
    let (x, y) = chainrule::data::gather_batch(&digits, &rows);
    let mut sizes = vec![digits.dim()];
    sizes.extend([WIDTH; LAYERS - 1]);
    sizes.push(10);
    let mut store = ParamStore::<f32>::new();
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut layers = Vec::new();
    for (l, w) in sizes.windows(2).enumerate() {
        let std = gain / (w[0] as f64).sqrt();
        let weight = Tensor::randn_with(&[w[0], w[1]], &mut rng)?.mul_scalar(std);
        layers.push(Linear {
            weight: store.add(format!("layer{l}.weight"), weight)?,
            bias: store.add(format!("layer{l}.bias"), Tensor::zeros(&[w[1]])?)?,
        });
    }
    let mlp = Mlp {
        layers,
        activation: Activation::Tanh,
        dropout: None,
        sizes,
    };
    let tape = Tape::new();
    let p = store.leaves(&tape);
    let logits = mlp.forward(&p, tape.constant(x), &mut ForwardCtx::eval())?;
    let loss = cross_entropy(logits, &y)?;
    let mut g = tape.backward(loss)?;
    let norms = grad_norms(&p.grads(&mut g)?);
    Ok(norms.iter().step_by(2).copied().collect()) // the weights, not the biases
}

fn fmt_loss(v: Option<f64>) -> String {
    v.map_or("—".to_string(), |v| format!("{v:.3}"))
}

fn best(runs: &[Run], clipped: bool) -> Option<&Run> {
    runs.iter()
        .filter(|r| r.clip.is_some() == clipped && r.final_val_loss.is_some())
        .min_by(|a, b| {
            a.final_val_loss
                .unwrap()
                .total_cmp(&b.final_val_loss.unwrap())
        })
}

/// One sentence the numbers support.
fn conclusion(runs: &[Run], clip: f64) -> String {
    let mut parts = Vec::new();
    let rescued = runs.iter().filter(|r| r.clip.is_none()).find_map(|u| {
        let c = runs
            .iter()
            .find(|c| c.clip.is_some() && c.lr == u.lr && c.final_val_loss.is_some())?;
        Some((u, c)).filter(|_| u.diverged_at_step.is_some())
    });
    if let Some((u, c)) = rescued {
        parts.push(format!(
            "without clipping, SGD at learning rate {} {} at step {} (gradient norm up to {:.3e}), while the same run with the global norm clipped to {clip} trained to {:.3} nats/char",
            u.lr,
            if u.stopped_by == StopReason::NonFinite { "went non-finite" } else { "diverged" },
            u.diverged_at_step.unwrap_or(0),
            u.max_grad_norm,
            c.final_val_loss.unwrap_or(f64::NAN),
        ));
    } else {
        parts.push(
            "no learning rate here made the unclipped run diverge while the clipped one trained"
                .to_string(),
        );
    }
    match (best(runs, true), best(runs, false)) {
        (Some(c), Some(u)) => parts.push(format!(
            "the best clipped run (lr {}, {:.3}) ends {} the best unclipped run (lr {}, {:.3})",
            c.lr,
            c.final_val_loss.unwrap_or(f64::NAN),
            if c.final_val_loss < u.final_val_loss {
                "below"
            } else {
                "at or above"
            },
            u.lr,
            u.final_val_loss.unwrap_or(f64::NAN)
        )),
        (Some(c), None) => parts.push(format!(
            "only clipped runs finished (best: lr {}, {:.3})",
            c.lr,
            c.final_val_loss.unwrap_or(f64::NAN)
        )),
        _ => {}
    }
    let mut s = parts.join("; ");
    if let Some(first) = s.get(..1) {
        s = first.to_uppercase() + &s[1..];
    }
    s + "."
}

/// Training loss (left) and gradient norm (right, log scale) of the pair at `lr`.
fn plot_pair(path: &Path, u: &Run, c: &Run) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let steps = u.losses.len().max(c.losses.len()).max(2) as f64;
    let finite = |v: &[f64]| {
        v.iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect::<Vec<_>>()
    };
    let all: Vec<f64> = finite(&u.losses)
        .into_iter()
        .chain(finite(&c.losses))
        .collect();
    let max_loss = all.iter().copied().fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("training loss, lr {}", u.lr), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..steps, 0.0..max_loss)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("nats/char")
        .draw()?;
    for (run, color, label) in [(u, RED, "no clipping"), (c, BLUE, "clipped")] {
        chart
            .draw_series(LineSeries::new(
                run.losses
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, &v)| (i as f64, v.min(max_loss))),
                color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    let norms = || {
        u.norms
            .iter()
            .chain(&c.norms)
            .map(|n| n.1)
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lo = norms().fold(f64::INFINITY, f64::min).min(1.0) / 1.5;
    let hi = norms().fold(0.0, f64::max).max(1.0) * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption("gradient norm before clipping", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0.0..steps,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_label_formatter(&|v| tick_label(*v))
        .draw()?;
    for (run, color) in [(u, RED), (c, BLUE)] {
        chart.draw_series(LineSeries::new(
            run.norms
                .iter()
                .filter(|n| n.1.is_finite() && n.1 > 0.0)
                .map(|n| (n.0 as f64, n.1)),
            color,
        ))?;
    }
    root.present()?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let corpus = match args.data.as_str() {
        d if EMBEDDED_TEXTS.contains(&d) => TextCorpus::embedded(d)?,
        d => match d.strip_prefix("text:") {
            Some(file) => TextCorpus::load(Path::new(file))?,
            None => bail!("--data: expected macbeth, tragedies or text:FILE, got '{d}'"),
        },
    };
    let recipe = if args.quick { &QUICK } else { &FULL };
    // the streams are checked before anything is written
    Streams::new(corpus.val(), recipe.batch, recipe.seq_len).with_context(|| {
        format!(
            "--data {}: the validation text is too short for {} streams",
            args.data, recipe.batch
        )
    })?;
    let out = args.out.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("runs/clipping-{secs}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    let started = std::time::Instant::now();
    if !args.json {
        eprintln!(
            "an Elman RNN (tanh, embedding {}, hidden {}) on {} ({} streams × {} characters, plain SGD, {} steps), at learning rates {:?}, each without and with clipping at norm {}",
            recipe.embed,
            recipe.hidden,
            corpus.name(),
            recipe.batch,
            recipe.seq_len,
            recipe.steps,
            recipe.lrs,
            recipe.clip
        );
    }
    let mut runs = Vec::new();
    for &lr in recipe.lrs {
        for clip in [None, Some(recipe.clip)] {
            let r = train_once(&corpus, recipe, lr, clip)?;
            if !args.json {
                eprintln!(
                    "  lr {lr:<5} clip {:<5} → {:?} after {} steps",
                    clip.map_or("off".into(), |c| c.to_string()),
                    r.stopped_by,
                    r.steps
                );
            }
            runs.push(r);
        }
    }
    let mut depth = Vec::new();
    for (init, gain) in [
        ("too large (exploding)", 2.5),
        ("too small (vanishing)", 0.5),
        ("variance-preserving (steady)", 1.0),
    ] {
        depth.push(Depth {
            init: init.into(),
            weight_std_times_sqrt_fan_in: gain,
            layer_grad_norms: depth_profile(gain)?,
        });
    }
    let conclusion = conclusion(&runs, recipe.clip);
    // the most telling pair: an unclipped run that failed where the clipped one trained,
    // else the largest learning rate
    let pair_lr = runs
        .iter()
        .find(|u| {
            u.clip.is_none()
                && u.diverged_at_step.is_some()
                && runs
                    .iter()
                    .any(|c| c.clip.is_some() && c.lr == u.lr && c.final_val_loss.is_some())
        })
        .map_or(recipe.lrs[recipe.lrs.len() - 1], |u| u.lr);
    let pair = |clipped: bool| {
        runs.iter()
            .find(|r| r.lr == pair_lr && r.clip.is_some() == clipped)
            .expect("every learning rate ran both ways")
    };
    plot_pair(&out.join("clipping.svg"), pair(false), pair(true))?;
    let json = serde_json::json!({
        "runs": runs,
        "depth": depth,
        "conclusion": conclusion,
        "data": corpus.name(),
        "seconds": started.elapsed().as_secs_f64(),
        "out": out.display().to_string(),
    });
    chainrule::nn::write_atomically(
        &out.join("clipping.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    if args.json {
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6} {:>6} {:>16} {:>14} {:>16} {:>14} {:>8}",
        "lr",
        "clip",
        "final val loss",
        "stopped by",
        "diverged at step",
        "max grad norm",
        "clipped"
    );
    for r in &runs {
        println!(
            "{:>6} {:>6} {:>16} {:>14} {:>16} {:>14.3e} {:>8}",
            r.lr,
            r.clip.map_or("off".into(), |c| c.to_string()),
            fmt_loss(r.final_val_loss),
            format!("{:?}", r.stopped_by),
            r.diverged_at_step.map_or("—".into(), |s| s.to_string()),
            r.max_grad_norm,
            r.clipped_steps
        );
    }
    println!();
    println!("gradient norm of each layer's weights, 30-layer tanh MLP at initialisation:");
    print!("{:>32}", "layer");
    let shown = [1, 2, 5, 10, 15, 20, 25, 30];
    for l in shown {
        print!(" {l:>9}");
    }
    println!();
    for d in &depth {
        print!("{:>32}", d.init);
        for l in shown {
            print!(" {:>9.2e}", d.layer_grad_norms[l - 1]);
        }
        println!();
    }
    println!();
    println!("{conclusion}");
    println!(
        "written: {}/clipping.svg, clipping.json ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
