//! `chainrule train` (the default command), `chainrule eval` and `chainrule sample`.

use crate::plot::plot_history;
use crate::progress::Progress;
use anyhow::{Context, bail};
use chainrule::autodiff::Tape;
use chainrule::data::{
    Dataset, EMBEDDED_TEXTS, LabelColumn, Standardizer, Streams, TextCorpus, gather_batch,
    load_csv, load_mnist, unigram_entropy,
};
use chainrule::nn::{
    Activation, CharModel, Classifier, ForwardCtx, Init, ParamStore, cross_entropy,
};
use chainrule::optim::{Adam, LrSchedule, Optimizer, OptimizerKind, Schedule, Warmup};
use chainrule::tensor::Tensor;
use chainrule::train::{
    CHECKPOINT_FILE, Callback, CheckpointMeta, CheckpointWriter, Classification, Collective,
    DataIdentity, GptLanguageModel, LanguageModel, MetricsLog, Objective, Position, StopReason,
    TrainConfig, Trainer, evaluate, load_checkpoint, read_evaluations,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod args;
mod build;
mod family;
mod run;
mod saved;

pub use args::*;
pub use build::*;
pub use family::*;
use run::run_with;
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
    let universe = std::rc::Rc::new(
        mpi::initialize()
            .ok_or_else(|| anyhow::anyhow!("--distributed: MPI was already started"))?,
    );
    let world = universe.world();
    let rank = world.rank();
    let collective = chainrule::train::mpi::MpiCollective::new(universe.clone());
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
    bail!(WITHOUT_MPI)
}

/// What `--distributed` says in a build without MPI (compiled in both, so that a build
/// with MPI tests it too).
#[cfg_attr(feature = "mpi", allow(dead_code))]
const WITHOUT_MPI: &str = "--distributed: this chainrule was built without MPI; build it with `cargo build --release --features mpi` (docs/distributed.md)";

/// What must be equal on every process of a data-parallel run: the configuration and a
/// hash of the training and validation data, as JSON.
pub(crate) fn run_fingerprint(
    cfg: &RunConfig,
    problem: &dyn Trained,
) -> anyhow::Result<serde_json::Value> {
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

#[cfg(test)]
mod without_mpi {
    #[test]
    fn the_message_says_how_to_build_with_mpi() {
        let m = super::WITHOUT_MPI;
        assert!(
            m.contains("built without MPI") && m.contains("--features mpi"),
            "{m}"
        );
        assert_eq!(m.lines().count(), 1);
    }
}
