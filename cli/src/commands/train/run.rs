//! One run of `chainrule train`, in named steps: resolve the run (a resumed one's saved
//! settings), build the data and the model, restore a resumed run's state, build the
//! trainer, train with the callbacks that write the run's files, and report. What
//! differs between models is the family's ([`Family`], [`Trained`]): nothing here
//! names a model.

use super::*;
use chainrule::optim::Optimizer;
use chainrule::train::{Checkpoint, TrainReport};

/// Trains one run: as a single process (`collective` is `None`), or as one process of a
/// data-parallel run, where rank 0 alone writes the files.
pub(crate) fn run_with(
    args: Args,
    collective: Option<Box<dyn Collective>>,
) -> anyhow::Result<ExitCode> {
    let (resumed, cfg) = resolve_run(&args)?;
    // everything is validated before anything is written: the data, the model, the
    // checkpoint's tensors and the trainer's settings
    let mut store = ParamStore::<f32>::new();
    let problem = build_problem(&cfg, &args, resumed.as_ref(), &mut store)?;
    let problem = problem.as_ref();
    let mut optimizer = cfg.build_optimizer()?;
    let mut objective = problem.objective(&cfg)?;
    let position = match &resumed {
        Some(c) => restore(
            &args,
            &cfg,
            c,
            &mut store,
            optimizer.as_mut(),
            objective.as_mut(),
        )?,
        None => Position::default(),
    };
    // rank 0 of a data-parallel run (or a single process) writes the run's files
    let writer = collective.as_ref().is_none_or(|c| c.rank() == 0);
    let trainer = build_trainer(&args, &cfg, problem, objective.as_mut(), collective)?;
    let out = output_folder(&args, writer)?;
    if writer {
        write_graph(&args, &cfg, objective.as_mut(), &store)?;
        if !args.json {
            eprintln!("{}", announcement(&cfg, problem, &store, &out));
        }
    }
    let meta = checkpoint_meta(&cfg, problem, &position)?;
    let mut files = RunFiles::new(&args, resumed.as_ref(), problem, &cfg, meta, &out, writer)?;
    let report = trainer.fit(
        objective.as_mut(),
        &mut store,
        optimizer.as_mut(),
        position,
        &mut files.callbacks(),
    )?;
    let failed = matches!(
        report.stopped_by,
        StopReason::NonFinite | StopReason::Diverged
    );
    if writer {
        write_report(&args, &cfg, problem, &report, &out)?;
        warn_and_fail(&report, &out);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The saved run of `--resume` (if any) and the run's settings: the options given,
/// refused where they would change a resumed run, over its saved ones or the defaults.
fn resolve_run(args: &Args) -> anyhow::Result<(Option<Checkpoint>, RunConfig)> {
    let resumed = match &args.resume {
        Some(dir) => Some(
            load_checkpoint(&dir.join(CHECKPOINT_FILE))
                .with_context(|| format!("--resume {}", dir.display()))?,
        ),
        None => None,
    };
    let base: Option<RunConfig> = match &resumed {
        Some(c) => Some(saved_config(c)?),
        None => None,
    };
    if let Some(saved) = &base {
        RunConfig::refuse_changes(args, saved)?;
    }
    Ok((resumed, RunConfig::resolve(args, base)?))
}

/// `--resume DIR`'s checkpoint file, for messages.
fn resume_context(args: &Args) -> String {
    let dir = args.resume.clone().unwrap_or_default();
    format!("--resume {}", dir.join(CHECKPOINT_FILE).display())
}

/// The data and the model of the run, checked against a resumed run's checkpoint (its
/// model's parameters and its data's identity).
fn build_problem(
    cfg: &RunConfig,
    args: &Args,
    resumed: Option<&Checkpoint>,
    store: &mut ParamStore<f32>,
) -> anyhow::Result<Box<dyn Trained>> {
    let saved = resumed.map(|ckpt| Saved {
        ckpt,
        name: resume_context(args),
    });
    let problem = family(cfg.model).build(cfg, saved.as_ref(), store)?;
    if let Some(saved) = resumed.and_then(|c| c.meta.data.as_ref()) {
        saved.check_same(&problem.identity(&cfg.data))?;
    }
    Ok(problem)
}

/// A resumed run's parameters, optimizer state and position (its history from the
/// metrics log when the checkpoint has none), and the state the objective carried
/// mid-epoch, checked before anything is written.
fn restore(
    args: &Args,
    cfg: &RunConfig,
    c: &Checkpoint,
    store: &mut ParamStore<f32>,
    optimizer: &mut dyn Optimizer<f32>,
    objective: &mut dyn Objective,
) -> anyhow::Result<Position> {
    let context = || resume_context(args);
    c.restore_params(store).with_context(context)?;
    optimizer
        .load_state(c.optimizer_state(store)?, c.optimizer.1, store)
        .with_context(context)?;
    let mut position = c.meta.position.clone();
    if position.history.is_empty() {
        let dir = args.resume.clone().unwrap_or_default();
        position.history = read_evaluations(&dir.join("metrics.jsonl"), position.step);
    }
    position.best_weights = c.best_weights(store).with_context(context)?;
    if position.batch > 0 {
        objective.start_epoch(position.epoch, cfg.seed)?;
        objective
            .restore_carried_state(position.carried.clone())
            .with_context(context)?;
    }
    Ok(position)
}

/// The trainer of the run's settings, joined to the other processes of a data-parallel
/// run (after checking that they train the same run on the same data).
fn build_trainer(
    args: &Args,
    cfg: &RunConfig,
    problem: &dyn Trained,
    objective: &mut dyn Objective,
    collective: Option<Box<dyn Collective>>,
) -> anyhow::Result<Trainer> {
    let batches_per_epoch = objective.batches_per_epoch();
    let total_steps = cfg.max_steps.unwrap_or(usize::MAX).min(
        cfg.max_epochs
            .unwrap_or(100)
            .saturating_mul(batches_per_epoch),
    );
    let trainer = Trainer::new(TrainConfig {
        batch_size: cfg.batch_size,
        schedule: cfg.lr_schedule(total_steps, batches_per_epoch)?,
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
        // a cosine that the clock would cut short follows the clock instead
        schedule_by_time: cfg.max_time.is_some(),
        // the program has the machine to itself
        keep_a_worker_awake: true,
    })?;
    Ok(match collective {
        None => trainer,
        Some(c) => {
            check_same_run(c.as_ref(), &run_fingerprint(cfg, problem)?)?;
            objective.shard(c.rank(), c.ranks())?;
            let trainer = trainer.with_collective(c);
            if args.overlap {
                trainer.with_overlapped_sums()
            } else {
                trainer
            }
        }
    })
}

/// `--out`, else the resumed run's folder, else `runs/run-<time>`; created by the
/// process that writes.
fn output_folder(args: &Args, writer: bool) -> anyhow::Result<PathBuf> {
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
    Ok(out)
}

/// `--graph FILE`: one training step's graph as DOT.
fn write_graph(
    args: &Args,
    cfg: &RunConfig,
    objective: &mut dyn Objective,
    store: &ParamStore<f32>,
) -> anyhow::Result<()> {
    let Some(path) = &args.graph else {
        return Ok(());
    };
    let dot = chainrule::train::step_graph(objective, store, cfg.seed)?;
    chainrule::nn::write_atomically(path, dot.as_bytes())?;
    if !args.json {
        eprintln!(
            "wrote one step's graph to {} (render: dot -Tsvg {} -o graph.svg)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The line that says what is about to train, on what, and where it writes.
fn announcement(
    cfg: &RunConfig,
    problem: &dyn Trained,
    store: &ParamStore<f32>,
    out: &Path,
) -> String {
    let clipping = cfg
        .clip_norm
        .map(|c| format!("at norm {c}"))
        .unwrap_or("off".into());
    problem.announcement(cfg, store, &clipping, out)
}

/// What the checkpoint must hold to rebuild the run: the model (its family's record,
/// and the legacy sizes), the standardiser or the vocabulary, the settings and the
/// data's identity.
fn checkpoint_meta(
    cfg: &RunConfig,
    problem: &dyn Trained,
    position: &Position,
) -> anyhow::Result<CheckpointMeta> {
    let record = problem.record();
    Ok(CheckpointMeta {
        version: chainrule::train::CHECKPOINT_VERSION,
        sizes: record.sizes,
        activation: cfg.activation,
        dropout: cfg.dropout,
        model: Some(record.model),
        standardizer: record.standardizer,
        vocab: record.vocab,
        position: position.clone(),
        config: serde_json::to_value(cfg)?,
        data: Some(problem.identity(&cfg.data)),
    })
}

/// The callbacks that show progress and write the run's files as it trains: the
/// progress line, metrics.jsonl (continued from a resumed run's) and the checkpoint.
/// A process that does not write has none.
struct RunFiles {
    progress: Progress,
    log: Option<MetricsLog>,
    ckpt: CheckpointWriter,
}

impl RunFiles {
    fn new(
        args: &Args,
        resumed: Option<&Checkpoint>,
        problem: &dyn Trained,
        cfg: &RunConfig,
        meta: CheckpointMeta,
        out: &Path,
        writer: bool,
    ) -> anyhow::Result<Self> {
        let (per_step, unit) = problem.step_unit(cfg);
        let log = match resumed {
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
        let every = args
            .checkpoint_every
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX));
        Ok(RunFiles {
            progress: Progress::new(args.json, per_step, unit),
            log,
            ckpt: CheckpointWriter::new(out.join(CHECKPOINT_FILE), meta).every(every),
        })
    }

    fn callbacks(&mut self) -> Vec<&mut dyn Callback> {
        match &mut self.log {
            Some(log) => vec![&mut self.progress, log, &mut self.ckpt],
            None => Vec::new(),
        }
    }
}

/// curves.svg, report.json, and the report on standard output (JSON with `--json`).
fn write_report(
    args: &Args,
    cfg: &RunConfig,
    problem: &dyn Trained,
    report: &TrainReport,
    out: &Path,
) -> anyhow::Result<()> {
    let eval_name = problem.eval_name();
    // a run killed while it wrote these files left a temporary beside each
    for file in ["curves.svg", "report.json"] {
        chainrule::nn::remove_stale_temporaries(&out.join(file));
    }
    plot_history(&report.history, &report.step_norms, &out.join("curves.svg"))?;
    let mut json = serde_json::to_value(report)?;
    json["out"] = serde_json::json!(out.display().to_string());
    json["eval_split"] = serde_json::json!(eval_name);
    json["data"] = serde_json::json!(cfg.data);
    json["model"] = serde_json::json!(cfg.model);
    let text = problem.text().is_some();
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
        return Ok(());
    }
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
    let (c, unit) = (&report.clipping, problem.step_unit(cfg).1);
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
    Ok(())
}

/// The warning of a gradient norm that grew, and the error line of a run that failed.
fn warn_and_fail(report: &TrainReport, out: &Path) {
    if let Some(w) = &report.clipping.first_norm_growth {
        eprintln!(
            "warning: {w}{}",
            match report.clipping.norm_growth_events {
                1 => String::new(),
                n => format!(" ({n} such growths in the run)"),
            }
        );
    }
    if matches!(
        report.stopped_by,
        StopReason::NonFinite | StopReason::Diverged
    ) {
        eprintln!(
            "error: training failed: {}; the last good checkpoint is {}",
            report.stop_detail,
            out.join(CHECKPOINT_FILE).display()
        );
    }
}
