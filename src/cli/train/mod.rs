//! `chainrule train` (the default command), `chainrule eval` and `chainrule sample`.

use anyhow::{Context, bail};
use chainrule::autodiff::CellKind;
use chainrule::data::{
    Dataset, EMBEDDED_TEXTS, LabelColumn, Standardizer, Streams, TextCorpus, load_csv, load_mnist,
    unigram_entropy,
};
use chainrule::nn::{Activation, CharModel, Init, Mlp, ParamStore};
use chainrule::optim::{LrSchedule, OptimizerKind, Schedule};
use chainrule::train::{
    CHECKPOINT_FILE, Callback, CheckpointMeta, CheckpointWriter, Classification, Collective,
    DataIdentity, LanguageModel, MetricsLog, Objective, Position, Progress, StopReason,
    TrainConfig, Trainer, evaluate, load_checkpoint, plot_history, read_evaluations,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod args;
mod build;
mod saved;

pub use args::*;
pub use build::*;
pub use saved::*;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.distributed {
        return run_distributed(args);
    }
    run_with(args, None)
}

/// `--distributed`: one process of an MPI job. An error on any process aborts the whole
/// job (after this process's one line), so no process waits forever on one that failed.
#[cfg(feature = "mpi")]
pub(crate) fn run_distributed(args: Args) -> anyhow::Result<ExitCode> {
    use mpi::traits::Communicator;
    let universe = mpi::initialize()
        .ok_or_else(|| anyhow::anyhow!("--distributed: MPI was already started"))?;
    let world = universe.world();
    let rank = world.rank();
    let collective = chainrule::train::mpi::MpiCollective::new(universe.world());
    match run_with(args, Some(Box::new(collective))) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: rank {rank} of {}: {e:#}", world.size());
            world.abort(1)
        }
    }
}

#[cfg(not(feature = "mpi"))]
pub(crate) fn run_distributed(_args: Args) -> anyhow::Result<ExitCode> {
    bail!(
        "--distributed: this chainrule was built without MPI; build it with `cargo build --release --features mpi` (README, \"Data-parallel training\")"
    )
}

/// What must be equal on every process of a data-parallel run: the configuration and a
/// hash of the training and validation data, as JSON.
pub(crate) fn run_fingerprint(cfg: &RunConfig, problem: &Problem) -> anyhow::Result<serde_json::Value> {
    let data = serde_json::to_value(problem.identity(&cfg.data))?;
    Ok(serde_json::json!({"configuration": serde_json::to_value(cfg)?, "data": data}))
}

/// Refuses to train unless every process has rank 0's configuration and data; the
/// process that differs names the first difference.
pub(crate) fn check_same_run(c: &dyn Collective, mine: &serde_json::Value) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec(mine)?;
    c.broadcast_bytes(&mut bytes)?;
    let theirs: serde_json::Value = serde_json::from_slice(&bytes)?;
    let mut difference = None;
    for part in ["configuration", "data"] {
        if let (Some(a), Some(b)) = (mine[part].as_object(), theirs[part].as_object()) {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            if let Some(k) = keys.into_iter().find(|k| a.get(*k) != b.get(*k)) {
                difference = Some(format!(
                    "its {part} differs from rank 0's at '{k}': {} here, {} on rank 0",
                    a.get(k).unwrap_or(&serde_json::Value::Null),
                    b.get(k).unwrap_or(&serde_json::Value::Null)
                ));
                break;
            }
        }
    }
    let any = c.any(difference.is_some())?;
    match difference {
        Some(d) => bail!("{d}; every process must train the same run"),
        None if any => {
            // the process that differs says how and aborts the job; give it the time to
            let pause = std::time::Duration::from_secs(5);
            std::thread::sleep(pause);
            bail!("another process's configuration or data differs from rank 0's")
        }
        None => Ok(()),
    }
}

pub(crate) fn run_with(args: Args, collective: Option<Box<dyn Collective>>) -> anyhow::Result<ExitCode> {
    let resumed = match &args.resume {
        Some(dir) => Some(
            load_checkpoint(&dir.join(CHECKPOINT_FILE))
                .with_context(|| format!("--resume {}", dir.display()))?,
        ),
        None => None,
    };
    let base: Option<RunConfig> = match &resumed {
        Some(c) => Some(
            serde_json::from_value(c.meta.config.clone())
                .context("the checkpoint's configuration is not readable")?,
        ),
        None => None,
    };
    let resume_context = || {
        let dir = args.resume.clone().unwrap_or_default();
        format!("--resume {}", dir.join(CHECKPOINT_FILE).display())
    };
    if let Some(saved) = &base {
        RunConfig::refuse_changes(&args, saved)?;
    }
    let cfg = RunConfig::resolve(&args, base)?;
    // everything is validated before anything is written: the data, the model, the
    // checkpoint's tensors and the trainer's settings
    let mut store = ParamStore::<f32>::new();
    let problem = match cell_kind(&cfg.model)? {
        None => {
            let splits = load_splits(
                &cfg,
                resumed.as_ref().and_then(|c| c.meta.standardizer.clone()),
            )?;
            let sizes = layer_sizes(
                &cfg,
                splits.train.dim(),
                splits.train.num_classes.max(splits.val.num_classes),
            );
            if let Some(c) = &resumed {
                c.check_sizes(&sizes).with_context(resume_context)?;
            }
            let model = build_model(&cfg, &sizes, &mut store)?;
            Problem::Classifier { splits, model }
        }
        Some(kind) => {
            let text = load_text(&cfg, resumed.as_ref().and_then(|c| c.meta.vocab.as_deref()))?;
            let vocab = text.corpus.vocab().len();
            if let Some(c) = &resumed {
                c.check_param_count(char_param_count(&cfg, kind, vocab))
                    .with_context(resume_context)?;
            }
            let model = char_model(&cfg, kind, vocab, &mut store)?;
            Problem::Text { text, model }
        }
    };
    if let Some(saved) = resumed.as_ref().and_then(|c| c.meta.data.as_ref()) {
        saved.check_same(&problem.identity(&cfg.data))?;
    }

    let mut optimizer = cfg.optimizer.build::<f32>(cfg.lr, cfg.weight_decay)?;
    let mut objective: Box<dyn Objective + '_> = match &problem {
        Problem::Classifier { splits, model } => Box::new(Classification::new(
            model,
            &splits.train,
            &splits.val,
            cfg.batch_size,
            true,
        )?),
        Problem::Text { text, model } => Box::new(LanguageModel::new(
            model,
            text.train.clone(),
            text.val.clone(),
        )),
    };
    let batches_per_epoch = objective.batches_per_epoch();
    let total_steps = cfg.max_steps.unwrap_or(usize::MAX).min(
        cfg.max_epochs
            .unwrap_or(100)
            .saturating_mul(batches_per_epoch),
    );
    let mut position = Position::default();
    if let Some(c) = &resumed {
        c.restore_params(&mut store).with_context(resume_context)?;
        optimizer
            .load_state(c.optimizer.0.clone(), c.optimizer.1, &store)
            .with_context(resume_context)?;
        position = c.meta.position.clone();
        if position.history.is_empty() {
            let log = args
                .resume
                .clone()
                .unwrap_or_default()
                .join("metrics.jsonl");
            position.history = read_evaluations(&log, position.step);
        }
        position.best_weights = c.best_weights(&store).with_context(resume_context)?;
        if position.batch > 0 {
            // checked now, before anything is written
            objective.start_epoch(position.epoch, cfg.seed)?;
            objective
                .restore_carried_state(position.carried.clone())
                .with_context(resume_context)?;
        }
    }

    let trainer = Trainer::new(TrainConfig {
        batch_size: cfg.batch_size,
        schedule: cfg.lr_schedule(total_steps)?,
        clip_norm: cfg.clip_norm,
        clip_value: cfg.clip_value,
        target: cfg.target,
        patience: cfg.patience,
        max_epochs: cfg.max_epochs,
        max_steps: cfg.max_steps,
        max_seconds: cfg.max_time,
        eval_every: cfg.eval_every,
        divergence_factor: Some(1e3),
        seed: cfg.seed,
        restore_best: cfg.restore_best,
        detect_anomaly: args.detect_anomaly,
        replay: !args.eager,
    })?;
    // rank 0 of a data-parallel run (or a single process) writes the run's files
    let writer = collective.as_ref().is_none_or(|c| c.rank() == 0);
    let trainer = match collective {
        None => trainer,
        Some(c) => {
            check_same_run(c.as_ref(), &run_fingerprint(&cfg, &problem)?)?;
            objective.shard(c.rank(), c.ranks())?;
            let trainer = trainer.with_collective(c);
            if args.overlap {
                trainer.with_overlapped_sums()
            } else {
                trainer
            }
        }
    };

    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("runs/run-{secs}"))
        }
    };
    if writer {
        std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    }
    if let Some(path) = args.graph.as_ref().filter(|_| writer) {
        let dot = chainrule::train::step_graph(objective.as_mut(), &store, cfg.seed)?;
        chainrule::nn::write_atomically(path, dot.as_bytes())?;
        if !args.json {
            eprintln!(
                "wrote one step's graph to {} (render: dot -Tsvg {} -o graph.svg)",
                path.display(),
                path.display()
            );
        }
    }
    let clipping = cfg
        .clip_norm
        .map(|c| format!("at norm {c}"))
        .unwrap_or("off".into());
    let (eval_name, sizes, vocab, standardizer) = match &problem {
        Problem::Classifier { splits, model } => {
            if writer && !args.json {
                eprintln!(
                    "training an MLP {:?} on {} ({} train / {} {} samples) with {:?}, lr {}, batch {}, clipping {clipping}; output in {}",
                    model.sizes,
                    cfg.data,
                    splits.train.len(),
                    splits.val.len(),
                    splits.eval_name,
                    cfg.optimizer,
                    cfg.lr,
                    cfg.batch_size,
                    out.display()
                );
            }
            (
                splits.eval_name,
                model.sizes.clone(),
                None,
                Some(splits.standardizer.clone()),
            )
        }
        Problem::Text { text, model } => {
            if writer && !args.json {
                eprintln!(
                    "training a character {} ({} layers of {}, embedding {}, {} parameters) on {} ({} train / {} validation characters, vocabulary {}, unigram entropy {:.3} nats) with {:?}, lr {}, {} streams × {} characters, clipping {clipping}; output in {}",
                    cfg.model.to_uppercase(),
                    cfg.layers,
                    model.rnn.hidden_size,
                    model.embed,
                    store.num_elements(),
                    text.corpus.name(),
                    text.corpus.train().len(),
                    text.corpus.val().len(),
                    model.vocab,
                    unigram_entropy(text.corpus.train()),
                    cfg.optimizer,
                    cfg.lr,
                    cfg.batch_size,
                    cfg.seq_len,
                    out.display()
                );
            }
            (
                "validation",
                Vec::new(),
                Some(text.corpus.vocab().iter().collect::<String>()),
                None,
            )
        }
    };
    let meta = CheckpointMeta {
        version: 1,
        sizes,
        activation: cfg.activation,
        dropout: cfg.dropout,
        standardizer,
        vocab,
        position: position.clone(),
        config: serde_json::to_value(&cfg)?,
        data: Some(problem.identity(&cfg.data)),
    };
    let (per_step, unit) = match &problem {
        Problem::Classifier { .. } => (cfg.batch_size, "samples"),
        Problem::Text { .. } => (cfg.batch_size.saturating_mul(cfg.seq_len), "chars"),
    };
    let mut progress = Progress::new(args.json, per_step, unit);
    let mut log = match &resumed {
        _ if !writer => None,
        Some(c) => Some(MetricsLog::resume(
            &args
                .resume
                .clone()
                .unwrap_or_default()
                .join("metrics.jsonl"),
            out.join("metrics.jsonl"),
            c.meta.position.step,
        )?),
        None => Some(MetricsLog::new(out.join("metrics.jsonl"))),
    };
    let mut ckpt = CheckpointWriter::new(out.join(CHECKPOINT_FILE), meta).every(
        args.checkpoint_every
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
    );
    let mut callbacks: Vec<&mut dyn Callback> = match &mut log {
        Some(log) => vec![&mut progress, log, &mut ckpt],
        None => Vec::new(),
    };
    let report = trainer.fit(
        objective.as_mut(),
        &mut store,
        optimizer.as_mut(),
        position,
        &mut callbacks,
    )?;
    let failed = matches!(
        report.stopped_by,
        StopReason::NonFinite | StopReason::Diverged
    );
    if !writer {
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }

    let plot_path = out.join("curves.svg");
    plot_history(&report.history, &report.step_norms, &plot_path)?;
    let mut json = serde_json::to_value(&report)?;
    json["out"] = serde_json::json!(out.display().to_string());
    json["eval_split"] = serde_json::json!(eval_name);
    json["data"] = serde_json::json!(cfg.data);
    json["model"] = serde_json::json!(cfg.model);
    let text = matches!(problem, Problem::Text { .. });
    if text {
        let best_loss = report.best_val_metric;
        json["best_val_loss"] = serde_json::json!(best_loss);
        json["best_val_bits_per_char"] = serde_json::json!(best_loss / std::f64::consts::LN_2);
    }
    chainrule::nn::write_atomically(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    if args.json {
        json.as_object_mut().expect("object").remove("history");
        println!("{}", serde_json::to_string(&json)?);
    } else {
        let c = &report.clipping;
        println!(
            "stopped by:        {:?} ({})",
            report.stopped_by, report.stop_detail
        );
        if text {
            let ln2 = std::f64::consts::LN_2;
            println!(
                "best val loss:     {:.4} nats/char = {:.4} bits/char (step {})",
                report.best_val_metric,
                report.best_val_metric / ln2,
                report.best_step
            );
            println!(
                "final val loss:    {:.4} nats/char = {:.4} bits/char",
                report.final_val_loss,
                report.final_val_loss / ln2
            );
        } else {
            println!(
                "best {} acc:   {:.4} (step {})",
                eval_name, report.best_val_metric, report.best_step
            );
            println!("final {} acc:  {:.4}", eval_name, report.final_val_metric);
        }
        println!("epochs, steps:     {}, {}", report.epochs, report.steps);
        println!(
            "training time:     {:.3} s ({:.0} {unit}/s)",
            report.seconds, report.samples_per_second
        );
        println!(
            "gradient norms:    {:.3} .. {:.3} (mean {:.3}); clipped in {} of {} steps",
            c.min_norm, c.max_norm, c.mean_norm, c.clipped_steps, c.steps
        );
        println!(
            "written:           {}/metrics.jsonl, curves.svg, report.json, {CHECKPOINT_FILE}",
            out.display()
        );
        if args.profile {
            let total: f64 = report.profile.named().iter().map(|(_, s)| s).sum();
            println!("where the time went ({total:.3} s):");
            // a single process has nothing to all-reduce: no line for it
            let phases = report.profile.named();
            for (phase, s) in phases
                .into_iter()
                .filter(|&(p, s)| p != "all-reduce" || s > 0.0)
            {
                println!(
                    "  {phase:<26} {s:>9.3} s  {:>5.1}%",
                    100.0 * s / total.max(1e-12)
                );
            }
        }
    }
    if let Some(w) = &report.clipping.first_norm_growth {
        eprintln!(
            "warning: {w}{}",
            match report.clipping.norm_growth_events {
                1 => String::new(),
                n => format!(" ({n} such growths in the run)"),
            }
        );
    }
    if failed {
        eprintln!(
            "error: training failed: {}; the last good checkpoint is {}",
            report.stop_detail,
            out.join(CHECKPOINT_FILE).display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
