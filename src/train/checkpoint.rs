//! Checkpoints: `params.safetensors`, `optimizer.safetensors` and `meta.json` in one
//! directory. Each file is written atomically and `meta.json` last; the step is stored in
//! all three, so a checkpoint interrupted between files is detected, never half-loaded.

use super::Position;
use crate::data::Standardizer;
use crate::error::{Error, Result};
use crate::nn::store::{load_tensors, save_tensors, write_atomically};
use crate::nn::{Activation, ParamStore};
use crate::optim::Optimizer;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Everything besides tensors that a run needs to continue or to be evaluated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format version of this file.
    pub version: u32,
    /// Layer sizes of the MLP, input first.
    pub sizes: Vec<usize>,
    /// Its hidden activation.
    pub activation: Activation,
    /// Its dropout probability.
    pub dropout: f64,
    /// Feature statistics of the training split.
    pub standardizer: Option<Standardizer>,
    /// Where the run stands. The random state is derived, not stored: the batch order of
    /// epoch e comes from (seed, e) and the dropout masks of step s from (seed, s).
    pub position: Position,
    /// The run's configuration (the command-line options), echoed for `--resume`.
    pub config: serde_json::Value,
}

/// A checkpoint read back from disk.
pub struct Checkpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// Parameter values by name.
    pub params: Vec<(String, Tensor<f32>)>,
    /// Optimizer state tensors and step count.
    pub optimizer: (Vec<(String, Tensor<f32>)>, u64),
}

pub(super) fn save_checkpoint(
    dir: &Path,
    meta: &CheckpointMeta,
    store: &ParamStore<f32>,
    optimizer: &dyn Optimizer<f32>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let step = meta.position.step.to_string();
    let tag = HashMap::from([("step".to_string(), step.clone())]);
    store.save_safetensors(&dir.join("params.safetensors"), &tag)?;
    let (state, steps) = optimizer.state();
    let mut otag = tag.clone();
    otag.insert("optimizer_steps".into(), steps.to_string());
    save_tensors(
        &dir.join("optimizer.safetensors"),
        state.iter().map(|(n, t)| (n.as_str(), t)),
        &otag,
    )?;
    let json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
    write_atomically(&dir.join("meta.json"), &json)
}

/// Reads a checkpoint directory, checking that its three files belong together.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read(&meta_path).map_err(|e| Error::Io {
        path: meta_path.display().to_string(),
        source: e,
    })?;
    let meta: CheckpointMeta = serde_json::from_slice(&text).map_err(|e| Error::Format {
        path: meta_path.display().to_string(),
        msg: format!("not a chainrule checkpoint: {e}"),
    })?;
    let (params, ptag) = load_tensors::<f32>(&dir.join("params.safetensors"))?;
    let (ostate, otag) = load_tensors::<f32>(&dir.join("optimizer.safetensors"))?;
    let want = meta.position.step.to_string();
    for (file, tag) in [
        ("params.safetensors", &ptag),
        ("optimizer.safetensors", &otag),
    ] {
        if tag.get("step") != Some(&want) {
            return Err(Error::Format {
                path: dir.join(file).display().to_string(),
                msg: format!(
                    "written at step {:?}, but meta.json is at step {want}: the checkpoint is inconsistent",
                    tag.get("step")
                ),
            });
        }
    }
    let steps = otag
        .get("optimizer_steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Checkpoint {
        meta,
        params,
        optimizer: (ostate, steps),
    })
}

impl Checkpoint {
    /// Copies the parameter values into `store` (names and shapes must match).
    pub fn restore_params(&self, store: &mut ParamStore<f32>) -> Result<()> {
        let by_name: HashMap<&str, &Tensor<f32>> =
            self.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let ids: Vec<_> = store
            .iter()
            .map(|(id, name, t)| (id, name.to_string(), t.shape().to_vec()))
            .collect();
        for (id, name, shape) in ids {
            let t = by_name.get(name.as_str()).ok_or_else(|| Error::Format {
                path: "checkpoint".into(),
                msg: format!("parameter '{name}' is missing"),
            })?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Format {
                    path: "checkpoint".into(),
                    msg: format!(
                        "parameter '{name}' has shape {:?}, the model expects {shape:?}",
                        t.shape()
                    ),
                });
            }
            *store.get_mut(id) = (*t).clone();
        }
        Ok(())
    }
}
