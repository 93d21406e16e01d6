//! `chainrule clipping`: why gradient clipping exists, as an experiment. An Elman RNN
//! learns to remember the first of 15 symbols, three seeds, each once without and once
//! with global-norm clipping (everything else equal): without it, a step meets a cliff
//! (a gradient hundreds of times larger than the ones before) and the run is thrown off;
//! with it, the same cliffs cost one bounded step. Beside it: the same RNN on text at a
//! learning rate too large to step at, and the gradient norm of every layer of a deep
//! tanh MLP under three scales of initial weights.

mod plot;
mod spike;

use anyhow::{Context, bail};
use chainrule::autodiff::{CellKind, Tape};
use chainrule::data::{Dataset, EMBEDDED_TEXTS, Standardizer, Streams, TextCorpus};
use chainrule::nn::{
    Activation, CharModel, ForwardCtx, Linear, Mlp, ParamStore, SequenceClassifier, cross_entropy,
};
use chainrule::optim::{
    LrSchedule, OptimizerKind, clip_grad_norm, clip_grad_value, global_norm, grad_norms,
};
use chainrule::tensor::Tensor;
use chainrule::train::{
    Classification, LanguageModel, Objective, StopReason, TrainConfig, TrainReport, Trainer,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use spike::{Angle, Spike, angle_degrees, changed_share, find_spike};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `chainrule clipping`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A shorter run (one seed of the memory task, fewer text steps), for a first look.
    #[arg(long)]
    quick: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Folder for clipping.svg and clipping.json [default: runs/clipping-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seeds of the memory task, each trained without and with clipping [default: 1,2,3;
    /// with --quick: 1].
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Text for the too-large-step runs: `macbeth` or `tragedies` (embedded) or
    /// `text:FILE` [default: macbeth].
    #[arg(long, default_value = "macbeth")]
    data: String,
}

/// The memory task: sequences of `length` symbols (one-hot, `symbols` of them, drawn
/// uniformly), the label the first symbol, so the RNN must carry it through every later
/// step. An Elman RNN (tanh) of `hidden` units, plain SGD, minibatches of `batch`.
struct Memory<'a> {
    seeds: &'a [u64],
    length: usize,
    symbols: usize,
    hidden: usize,
    train: usize,
    val: usize,
    batch: usize,
    lr: f64,
    steps: usize,
    eval_every: usize,
}

const MEMORY: Memory<'static> = Memory {
    seeds: &[1, 2, 3],
    length: 15,
    symbols: 8,
    hidden: 32,
    train: 4096,
    val: 1024,
    batch: 32,
    lr: 0.1,
    steps: 5000,
    eval_every: 500,
};

const MEMORY_QUICK: Memory<'static> = Memory {
    seeds: &[1],
    ..MEMORY
};

/// The text runs: an Elman RNN on characters, plain SGD, at learning rates up to one
/// too large to step at.
struct Text {
    lrs: &'static [f64],
    steps: usize,
    embed: usize,
    hidden: usize,
    batch: usize,
    seq_len: usize,
    eval_every: usize,
}

const TEXT: Text = Text {
    lrs: &[0.3, 1.0, 3.0],
    steps: 800,
    embed: 32,
    hidden: 128,
    batch: 16,
    seq_len: 100,
    eval_every: 400,
};

const TEXT_QUICK: Text = Text {
    lrs: &[0.3, 3.0],
    steps: 400,
    eval_every: 200,
    ..TEXT
};

/// The global norm both tasks clip to.
const CLIP: f64 = 1.0;

/// A spike counts as a cliff at this many times the running median.
const CLIFF: f64 = 100.0;

/// A text run is called diverged when its training loss exceeds this multiple of its
/// first (the memory runs go on, to show whether they recover).
const DIVERGENCE: f64 = 1.5;

/// The seed of the text runs and the depth profiles.
const SEED: u64 = 1;

/// Caps on each element's magnitude whose effect on the cliff's gradient is shown.
const VALUE_CAPS: [f64; 3] = [1.0, 0.1, 0.01];

/// One training run, as reported.
#[derive(Serialize)]
pub struct Run {
    seed: u64,
    lr: f64,
    clip: Option<f64>,
    final_val_loss: Option<f64>,
    /// Accuracy on the validation sequences (memory task only).
    final_val_accuracy: Option<f64>,
    stopped_by: StopReason,
    diverged_at_step: Option<usize>,
    max_grad_norm: f64,
    max_grad_norm_step: Option<usize>,
    /// The step of the largest norm over its running median, after the first 10% of
    /// the steps.
    spike_step: Option<usize>,
    spike_ratio: Option<f64>,
    loss_jump: Option<f64>,
    clipped_steps: usize,
    steps: usize,
    #[serde(skip)]
    spike: Option<Spike>,
    #[serde(skip)]
    losses: Vec<f64>,
    #[serde(skip)]
    norms: Vec<(usize, f64, bool)>,
}

impl Run {
    fn new(seed: u64, lr: f64, clip: Option<f64>, report: TrainReport, accuracy: bool) -> Run {
        let failed = matches!(
            report.stopped_by,
            StopReason::Diverged | StopReason::NonFinite
        );
        let spike = find_spike(&report.step_norms, &report.step_losses, report.steps / 10);
        let max_step = report
            .step_norms
            .iter()
            .filter(|n| n.1.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|n| n.0);
        Run {
            seed,
            lr,
            clip,
            final_val_loss: Some(report.final_val_loss).filter(|v| v.is_finite() && !failed),
            final_val_accuracy: accuracy
                .then_some(report.final_val_metric)
                .filter(|v| v.is_finite() && !failed),
            stopped_by: report.stopped_by,
            diverged_at_step: failed.then_some(report.steps + 1),
            max_grad_norm: report.clipping.max_norm,
            max_grad_norm_step: max_step,
            spike_step: spike.as_ref().map(|s| s.step),
            spike_ratio: spike.as_ref().map(|s| s.ratio),
            loss_jump: spike.as_ref().and_then(|s| s.loss_jump),
            clipped_steps: report.clipping.clipped_steps,
            steps: report.steps,
            spike,
            losses: report.step_losses,
            norms: report.step_norms,
        }
    }

    /// Lower final validation loss; a run that failed counts as worst.
    fn ends_below(&self, other: &Run) -> bool {
        match (self.final_val_loss, other.final_val_loss) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// The per-layer gradient norms of the deep MLP under one initialisation.
#[derive(Serialize)]
struct Depth {
    init: String,
    weight_std_times_sqrt_fan_in: f64,
    layer_grad_norms: Vec<f64>,
}

/// `n` sequences of the memory task, drawn from `seed`.
fn memory_data(m: &Memory, n: usize, seed: u64) -> anyhow::Result<Dataset> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let width = m.length * m.symbols;
    let mut x = vec![0f32; n * width];
    let mut labels = Vec::with_capacity(n);
    for row in x.chunks_mut(width) {
        for (t, step) in row.chunks_mut(m.symbols).enumerate() {
            let symbol = rng.random_range(0..m.symbols);
            step[symbol] = 1.0;
            if t == 0 {
                labels.push(symbol);
            }
        }
    }
    let name = format!("remember the first of {} symbols", m.length);
    Ok(Dataset::new(
        Tensor::from_vec(x, &[n, width])?,
        labels,
        m.symbols,
        name,
    )?)
}

/// A seed's model, data and trainer: the same for the clipped and the unclipped run
/// and for the replay to a spike.
struct MemorySetup {
    store: ParamStore<f32>,
    model: SequenceClassifier,
    train: Dataset,
    val: Dataset,
}

impl MemorySetup {
    fn new(m: &Memory, seed: u64) -> anyhow::Result<MemorySetup> {
        let mut store = ParamStore::<f32>::new();
        let model = SequenceClassifier::new(
            &mut store,
            CellKind::Rnn,
            (m.length, m.symbols),
            m.hidden,
            m.symbols,
            &mut chainrule::nn::rng(seed),
        )?;
        Ok(MemorySetup {
            store,
            model,
            train: memory_data(m, m.train, 100 + seed)?,
            val: memory_data(m, m.val, 200 + seed)?,
        })
    }

    fn objective(&self, m: &Memory<'_>) -> anyhow::Result<Classification<'_>> {
        Ok(Classification::new(
            &self.model,
            &self.train,
            &self.val,
            m.batch,
            true,
        )?)
    }

    /// Trains for `steps` steps; returns the report and the parameters reached.
    fn train(
        &self,
        m: &Memory,
        seed: u64,
        clip: Option<f64>,
        steps: usize,
    ) -> anyhow::Result<(TrainReport, ParamStore<f32>)> {
        let mut store = self.store.clone();
        let mut objective = self.objective(m)?;
        let trainer = Trainer::new(TrainConfig {
            batch_size: m.batch,
            schedule: LrSchedule::constant(m.lr),
            clip_norm: clip,
            max_epochs: None,
            max_steps: Some(steps),
            eval_every: Some(m.eval_every),
            divergence_factor: None,
            seed,
            ..Default::default()
        })?;
        let mut optimizer = OptimizerKind::Sgd.build::<f32>(m.lr, None)?;
        let report = trainer.fit_from_start(&mut objective, &mut store, optimizer.as_mut())?;
        Ok((report, store))
    }
}

/// The raw gradient of the unclipped run at its spike: the run replayed to the step
/// before, then that step's batch. Checks that its norm is the one the run recorded.
fn gradient_at(
    m: &Memory,
    setup: &MemorySetup,
    run: &Run,
    spike: &Spike,
) -> anyhow::Result<Vec<Option<Tensor<f32>>>> {
    let (_, store) = setup.train(m, run.seed, None, spike.index)?;
    let mut objective = setup.objective(m)?;
    let per_epoch = objective.batches_per_epoch();
    objective.start_epoch(spike.index / per_epoch, run.seed)?;
    let tape = Tape::new();
    let p = store.leaves(&tape);
    let (loss, _) = objective.batch_loss(&p, spike.index % per_epoch, &mut ForwardCtx::eval())?;
    let mut g = tape.backward(loss)?;
    let grads = p.grads(&mut g)?;
    let norm = global_norm(&grads);
    let off = (norm - spike.norm).abs() / spike.norm;
    if off.is_nan() || off > 1e-4 {
        bail!(
            "replaying the run to step {} gave a gradient norm of {norm:.6e}, not the {:.6e} it recorded",
            spike.step,
            spike.norm
        );
    }
    Ok(grads)
}

/// What clipping by norm and clipping by value do to the direction of `raw`.
fn angles(raw: &[Option<Tensor<f32>>]) -> anyhow::Result<Vec<Angle>> {
    let compare = |method, threshold, clipped: &[Option<Tensor<f32>>]| Angle {
        method,
        threshold,
        degrees: angle_degrees(raw, clipped),
        norm_after: global_norm(clipped),
        changed: changed_share(raw, clipped),
    };
    let mut by_norm = raw.to_vec();
    clip_grad_norm(&mut by_norm, CLIP, true)?;
    let mut out = vec![compare("norm", CLIP, &by_norm)];
    for cap in VALUE_CAPS {
        let mut by_value = raw.to_vec();
        clip_grad_value(&mut by_value, cap);
        out.push(compare("value", cap, &by_value));
    }
    Ok(out)
}

fn train_text(corpus: &TextCorpus, r: &Text, lr: f64, clip: Option<f64>) -> anyhow::Result<Run> {
    let mut store = ParamStore::<f32>::new();
    let model = CharModel::new(
        &mut store,
        CellKind::Rnn,
        corpus.vocab().len(),
        r.embed,
        r.hidden,
        1,
        &mut chainrule::nn::rng(SEED),
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
    Ok(Run::new(SEED, lr, clip, report, false))
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
        // drawn `[in, out]` as before PyTorch's layout, so that the profile stays the same
        let weight = Tensor::randn_with(&[w[0], w[1]], &mut rng)?
            .mul_scalar(std)
            .t()?;
        layers.push(Linear {
            weight: store.add(format!("layer{l}.weight"), weight)?,
            bias: Some(store.add(format!("layer{l}.bias"), Tensor::zeros(&[w[1]])?)?),
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

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".to_string(), |v| format!("{v:.digits$}"))
}

/// What the memory runs show, in sentences the numbers support.
fn memory_conclusion(runs: &[Run], m: &Memory) -> String {
    let pairs: Vec<(&Run, &Run)> = m
        .seeds
        .iter()
        .filter_map(|&s| {
            let u = runs.iter().find(|r| r.seed == s && r.clip.is_none())?;
            let c = runs.iter().find(|r| r.seed == s && r.clip.is_some())?;
            Some((u, c))
        })
        .collect();
    let n = pairs.len();
    let cliffs: Vec<&Run> = pairs
        .iter()
        .map(|p| p.0)
        .filter(|u| u.spike_ratio.is_some_and(|r| r >= CLIFF))
        .collect();
    let better = pairs.iter().filter(|(u, c)| c.ends_below(u)).count();
    let list = |clipped: bool| {
        pairs
            .iter()
            .map(|p| fmt_opt(if clipped { p.1 } else { p.0 }.final_val_loss, 3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "In {} of {n} seeds the unclipped run met a cliff after the first 10% of training: a step whose gradient norm was at least {CLIFF:.0}× the median of the steps before it",
        cliffs.len()
    );
    if let Some(worst) = cliffs.iter().max_by(|a, b| {
        a.spike_ratio
            .unwrap_or(0.0)
            .total_cmp(&b.spike_ratio.unwrap_or(0.0))
    }) {
        s += &format!(
            " (largest {:.0}× at step {} of seed {}, the loss then up by {} nats)",
            worst.spike_ratio.unwrap_or(f64::NAN),
            worst.spike_step.unwrap_or(0),
            worst.seed,
            fmt_opt(worst.loss_jump, 2)
        );
    }
    let largest_clipped = pairs.iter().map(|p| p.1.max_grad_norm).fold(0.0, f64::max);
    let steepest_clipped = pairs
        .iter()
        .filter_map(|p| p.1.spike_ratio)
        .fold(0.0, f64::max);
    s += &format!(
        ". The clipped runs met steep steps too (norms up to {largest_clipped:.0}, up to {steepest_clipped:.0}× their running median) but moved at most lr × {CLIP} = {} at each, and {better} of {n} ended with the lower validation loss: {} clipped against {} unclipped (chance is ln {} = {:.3}).",
        m.lr * CLIP,
        list(true),
        list(false),
        m.symbols,
        (m.symbols as f64).ln()
    );
    s
}

/// What the text runs show: a learning rate too large to step at.
fn text_conclusion(runs: &[Run]) -> String {
    let rescued = runs.iter().filter(|r| r.clip.is_none()).find_map(|u| {
        let c = runs
            .iter()
            .find(|c| c.clip.is_some() && c.lr == u.lr && c.final_val_loss.is_some())?;
        Some((u, c)).filter(|_| u.diverged_at_step.is_some())
    });
    match rescued {
        Some((u, c)) => format!(
            "On text, SGD at learning rate {} {} at step {} without clipping (gradient norm up to {:.2}: not a cliff, a step too long), while the same run clipped to {CLIP} trained to {:.3} nats/char.",
            u.lr,
            if u.stopped_by == StopReason::NonFinite {
                "went non-finite"
            } else {
                "diverged"
            },
            u.diverged_at_step.unwrap_or(0),
            u.max_grad_norm,
            c.final_val_loss.unwrap_or(f64::NAN),
        ),
        None => {
            "On text, no learning rate here made the unclipped run diverge while the clipped one trained."
                .to_string()
        }
    }
}

fn print_runs(runs: &[Run], accuracy: bool) {
    println!(
        "{:>5} {:>5} {:>5} {:>10} {:>7} {:>11} {:>9} {:>9} {:>10} {:>9} {:>12} {:>8}",
        "seed",
        "lr",
        "clip",
        "max norm",
        "at step",
        "spike step",
        "× median",
        "loss jump",
        "val loss",
        if accuracy { "val acc" } else { "" },
        "stopped by",
        "clipped"
    );
    for r in runs {
        println!(
            "{:>5} {:>5} {:>5} {:>10.3e} {:>7} {:>11} {:>9} {:>9} {:>10} {:>9} {:>12} {:>8}",
            r.seed,
            r.lr,
            r.clip.map_or("off".into(), |c| c.to_string()),
            r.max_grad_norm,
            r.max_grad_norm_step.map_or("—".into(), |s| s.to_string()),
            r.spike_step.map_or("—".into(), |s| s.to_string()),
            fmt_opt(r.spike_ratio, 0),
            fmt_opt(r.loss_jump, 2),
            fmt_opt(r.final_val_loss, 3),
            if accuracy {
                fmt_opt(r.final_val_accuracy, 3)
            } else {
                String::new()
            },
            match r.diverged_at_step {
                Some(s) => format!("{:?} @{s}", r.stopped_by),
                None => format!("{:?}", r.stopped_by),
            },
            r.clipped_steps
        );
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let corpus = match args.data.as_str() {
        d if EMBEDDED_TEXTS.contains(&d) => TextCorpus::embedded(d)?,
        d => match d.strip_prefix("text:") {
            Some(file) => TextCorpus::load(Path::new(file))?,
            None => bail!("--data: expected macbeth, tragedies or text:FILE, got '{d}'"),
        },
    };
    let (memory, text) = if args.quick {
        (&MEMORY_QUICK, &TEXT_QUICK)
    } else {
        (&MEMORY, &TEXT)
    };
    let seeds: Vec<u64> = args.seeds.clone().unwrap_or_else(|| memory.seeds.to_vec());
    if seeds.is_empty() {
        bail!("--seeds: give at least one seed");
    }
    let memory = &Memory {
        seeds: &seeds,
        ..*memory
    };
    // the streams are checked before anything is written
    Streams::new(corpus.val(), text.batch, text.seq_len).with_context(|| {
        format!(
            "--data {}: the validation text is too short for {} streams",
            args.data, text.batch
        )
    })?;
    let out = super::out_dir(args.out.clone(), "clipping");
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    let started = std::time::Instant::now();
    let say = |line: String| {
        if !args.json {
            eprintln!("{line}");
        }
    };
    say(format!(
        "the memory task: an Elman RNN (tanh, hidden {}) reads {} one-hot symbols (of {}) and must name the first; plain SGD at lr {}, batch {}, {} steps; seeds {:?}, each without and with clipping at norm {CLIP}",
        memory.hidden,
        memory.length,
        memory.symbols,
        memory.lr,
        memory.batch,
        memory.steps,
        memory.seeds
    ));
    let mut runs = Vec::new();
    let mut angle_rows = None;
    for &seed in memory.seeds {
        let setup = MemorySetup::new(memory, seed)?;
        for clip in [None, Some(CLIP)] {
            let (report, _) = setup.train(memory, seed, clip, memory.steps)?;
            let r = Run::new(seed, memory.lr, clip, report, true);
            say(format!(
                "  seed {seed} clip {:<4} → val loss {}, largest norm {:.3e}",
                clip.map_or("off".into(), |c| c.to_string()),
                fmt_opt(r.final_val_loss, 3),
                r.max_grad_norm
            ));
            runs.push(r);
        }
        // the plotted seed's cliff: what each kind of clipping does to its gradient
        if angle_rows.is_none() {
            let u = &runs[runs.len() - 2];
            if let Some(spike) = &u.spike {
                let raw = gradient_at(memory, &setup, u, spike)?;
                angle_rows = Some((u.seed, spike.clone(), angles(&raw)?));
            }
        }
    }
    say(format!(
        "text: an Elman RNN (embedding {}, hidden {}) on {}, {} streams × {} characters, plain SGD, {} steps, at learning rates {:?}, each without and with clipping",
        text.embed,
        text.hidden,
        corpus.name(),
        text.batch,
        text.seq_len,
        text.steps,
        text.lrs
    ));
    let mut text_runs = Vec::new();
    for &lr in text.lrs {
        for clip in [None, Some(CLIP)] {
            let r = train_text(&corpus, text, lr, clip)?;
            say(format!(
                "  lr {lr:<4} clip {:<4} → {:?} after {} steps",
                clip.map_or("off".into(), |c| c.to_string()),
                r.stopped_by,
                r.steps
            ));
            text_runs.push(r);
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
    let conclusion = format!(
        "{} {}",
        memory_conclusion(&runs, memory),
        text_conclusion(&text_runs)
    );
    let seed = memory.seeds[0];
    let pair = |clipped: bool| {
        runs.iter()
            .find(|r| r.seed == seed && r.clip.is_some() == clipped)
            .expect("every seed ran both ways")
    };
    plot::plot_pair(&out.join("clipping.svg"), pair(false), pair(true), CLIP)?;
    let pair_json = plot::pair_json(pair(false), pair(true), CLIP);
    let angle_json = angle_rows.as_ref().map(|(seed, spike, rows)| {
        serde_json::json!({ "seed": seed, "step": spike.step, "norm": spike.norm, "clipped": rows })
    });
    let json = serde_json::json!({
        "task": {
            "name": format!("remember the first of {} symbols", memory.length),
            "symbols": memory.symbols,
            "length": memory.length,
            "hidden": memory.hidden,
            "batch": memory.batch,
            "lr": memory.lr,
            "steps": memory.steps,
            "clip": CLIP,
        },
        "runs": runs,
        "pair": pair_json,
        "angles": angle_json,
        "text_runs": text_runs,
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
        "the memory task (remember the first of {} symbols), lr {}, {} steps; a spike is the step (after the first 10%) whose gradient norm is the largest multiple of the median of all steps before it:",
        memory.length, memory.lr, memory.steps
    );
    print_runs(&runs, true);
    if let Some((seed, spike, rows)) = &angle_rows {
        println!();
        println!(
            "the gradient at seed {seed}'s spike (step {}, norm {:.3e}), clipped two ways:",
            spike.step, spike.norm
        );
        println!(
            "{:>28} {:>14} {:>16} {:>18}",
            "", "norm after", "elements changed", "angle to the raw"
        );
        for a in rows {
            let name = match a.method {
                "norm" => format!("by norm, to {}", a.threshold),
                _ => format!("by value, to ±{}", a.threshold),
            };
            println!(
                "{name:>28} {:>14.3e} {:>15.1}% {:>17.2}°",
                a.norm_after,
                100.0 * a.changed,
                a.degrees
            );
        }
    }
    println!();
    println!(
        "text ({}), a learning rate too large to step at:",
        corpus.name()
    );
    print_runs(&text_runs, false);
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
