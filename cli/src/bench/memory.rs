//! Peak memory: fresh processes that train for a while and report their peak RSS
//! (W7, and flat memory over many steps of the MLP and of the character model).

use super::*;

/// Peak resident memory of this process in bytes (`VmHWM`), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The body of `w7_memory`, run in a fresh process: 200 W1 steps, then the peak RSS and
/// the last loss as one JSON object.
pub fn w7_child() -> Result<serde_json::Value> {
    w1_steps_child(200)
}

/// `steps` W1 training steps in this (fresh) process, then one JSON object: `steps`, the
/// peak RSS (`VmHWM`, bytes) at the start, after building the model and data, and at the
/// end (`peak_rss_bytes`), and the loss returned by the last step (`loss_after_{steps}`).
/// The body of `w7_memory` (200 steps) and of `memory_flat`.
pub fn w1_steps_child(steps: usize) -> Result<serde_json::Value> {
    let before = peak_rss_bytes();
    let mut step = AnchorStep::w1();
    let built = peak_rss_bytes();
    let mut loss = f32::NAN;
    for _ in 0..steps {
        loss = step.step()?;
    }
    Ok(steps_report(steps, before, built, f64::from(loss)))
}

/// The JSON object a training child prints: `steps`, the peak RSS at the end
/// (`peak_rss_bytes`), after start and after building, and the last step's loss.
pub(super) fn steps_report(
    steps: usize,
    before: Option<u64>,
    built: Option<u64>,
    loss: f64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("steps".into(), steps.into());
    out.insert("peak_rss_bytes".into(), peak_rss_bytes().into());
    out.insert("peak_after_start".into(), before.into());
    out.insert("peak_after_build".into(), built.into());
    out.insert(format!("loss_after_{steps}"), loss.into());
    out.into()
}

/// `steps` training steps of a character LSTM (embedding 32, 2 layers of 128, 32 streams
/// × 64 characters of the embedded Macbeth, Adam 2e-3, clipping at 1.0, the state carried
/// and reset at each epoch) through `Trainer::fit` in this (fresh) process, then the same
/// JSON object as [`w1_steps_child`] (`loss_after_{steps}`: the last step's loss).
pub fn lm_steps_child(steps: usize) -> Result<serde_json::Value> {
    use chainrule::autodiff::CellKind;
    use chainrule::data::{Streams, TextCorpus};
    use chainrule::nn::CharModel;
    use chainrule::train::LanguageModel;
    let before = peak_rss_bytes();
    let corpus = TextCorpus::macbeth()?;
    let mut store = ParamStore::new();
    let model = CharModel::new(
        &mut store,
        CellKind::Lstm,
        corpus.vocab().len(),
        32,
        128,
        2,
        &mut chainrule::nn::rng(0),
    )?;
    let mut objective = LanguageModel::new(
        &model,
        Streams::new(corpus.train(), 32, 64)?,
        Streams::new(corpus.val(), 32, 64)?,
    );
    let trainer = Trainer::new(TrainConfig {
        batch_size: 32,
        schedule: LrSchedule::constant(2e-3),
        clip_norm: Some(1.0),
        max_epochs: None,
        max_steps: Some(steps),
        eval_every: Some(steps.max(1)),
        keep_a_worker_awake: true, // as the program runs
        ..Default::default()
    })?;
    let mut optimizer = OptimizerKind::Adam.build::<f32>(2e-3, None)?;
    let built = peak_rss_bytes();
    let report = trainer.fit_from_start(&mut objective, &mut store, optimizer.as_mut())?;
    let loss = report.step_losses.last().copied().unwrap_or(f64::NAN);
    Ok(steps_report(steps, before, built, loss))
}

/// `steps` training steps of the W11 GPT (the recipe's model, batches, AdamW and
/// schedule over the steps, on the embedded tragedies) through `Trainer::fit` in this
/// (fresh) process, evaluated once at the end, then the same JSON object as
/// [`w1_steps_child`].
pub fn gpt_steps_child(steps: usize) -> Result<serde_json::Value> {
    use chainrule::data::TextCorpus;
    use chainrule::train::GptLanguageModel;
    let before = peak_rss_bytes();
    let corpus = TextCorpus::tragedies()?;
    let (model, mut store) = super::lm::w11_model(corpus.vocab().len())?;
    let mut objective = GptLanguageModel::new(&model, corpus.train(), corpus.val(), 12, 64)?;
    let trainer = Trainer::new(TrainConfig {
        max_epochs: None,
        max_steps: Some(steps),
        eval_every: Some(steps.max(1)),
        ..super::lm::w11_config(steps)
    })?;
    let mut optimizer = super::lm::w11_optimizer();
    let built = peak_rss_bytes();
    let report = trainer.fit_from_start(&mut objective, &mut store, &mut optimizer)?;
    let loss = report.step_losses.last().copied().unwrap_or(f64::NAN);
    Ok(steps_report(steps, before, built, loss))
}

/// Runs `chainrule <args>` in a fresh process with two rayon threads and returns the
/// JSON object it prints and the seconds it took.
pub(super) fn child_json(
    cfg: &BenchConfig,
    workload: &'static str,
    args: &[&str],
) -> Result<(serde_json::Value, f64)> {
    let exe = cfg.exe.clone().ok_or_else(|| {
        Error::invalid(
            workload,
            "needs the chainrule executable to start a fresh process",
        )
    })?;
    let t0 = Instant::now();
    let out = std::process::Command::new(&exe)
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .map_err(|e| Error::Io {
            path: exe.display().to_string(),
            cause: e,
        })?;
    let secs = t0.elapsed().as_secs_f64();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    match parsed {
        Some(v) if out.status.success() && v.is_object() => Ok((v, secs)),
        _ => Err(Error::invalid(
            workload,
            format!(
                "the child process `{} {}` failed ({}) or printed no result: {}",
                exe.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
    }
}

/// A row for a fresh-process workload: the child's wall time, one call.
pub(super) fn once(name: &str, secs: f64) -> BenchRow {
    BenchRow::new(
        name,
        Timing {
            median_s: secs,
            min_s: secs,
            reps: 1,
        },
    )
}

pub(super) fn w7_memory(cfg: &BenchConfig) -> Result<BenchRow> {
    let (v, secs) = child_json(cfg, "w7_memory", &["bench", "--w7-child"])?;
    let mut row = once("w7_memory", secs);
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            row = row.with(k, val.clone());
        }
    }
    row.verify_extra("loss_after_200", W7_LOSS_200, LOSS_TOL)
}

/// Training in two fresh processes, 1,000 and 10,000 steps (`child_flag`: W1, the
/// character LSTM of [`lm_steps_child`] or the GPT of [`gpt_steps_child`]): the peak RSS must not grow with the number of
/// steps (at most 5% more after 10,000 than after 1,000).
pub(super) fn memory_flat(
    cfg: &BenchConfig,
    name: &'static str,
    child_flag: &str,
) -> Result<BenchRow> {
    const STEPS: [usize; 2] = [1_000, 10_000];
    let mut row = once(name, 0.0);
    let mut peaks = [0u64; 2];
    let mut total = 0.0;
    for (peak, steps) in peaks.iter_mut().zip(STEPS) {
        let (v, secs) = child_json(cfg, name, &["bench", child_flag, &steps.to_string()])?;
        total += secs;
        let field = |key: &str| v.get(key).and_then(|x| x.as_u64());
        *peak = field("peak_rss_bytes")
            .ok_or_else(|| Error::invalid(name, format!("the child reported no peak RSS: {v}")))?;
        let built = field("peak_after_build").unwrap_or(0);
        let loss = v.get(format!("loss_after_{steps}")).cloned();
        row = row
            .with(&format!("peak_rss_{steps}_steps"), *peak)
            .with(
                &format!("growth_during_{steps}_steps"),
                peak.saturating_sub(built),
            )
            .with(&format!("loss_after_{steps}"), loss.unwrap_or_default())
            .with(&format!("seconds_{steps}_steps"), secs);
    }
    (row.median_s, row.min_s) = (total, total);
    let ratio = peaks[1] as f64 / peaks[0] as f64;
    row.with("peak_ratio", ratio)
        .verify_at_most("peak_ratio", 1.05, ratio)
}
