//! Checkpoints: one safetensors file holding the parameters (`param:NAME`), the optimizer
//! state (`optimizer:NAME`) and the metadata (JSON in the file's header), written
//! atomically (temporary file, sync, rename). A process killed at any moment leaves the
//! previous complete checkpoint or the new one, never a mixture. Other tools read the
//! parameters as ordinary safetensors.

use super::Position;
use crate::data::Standardizer;
use crate::error::{Error, Result, read_file};
use crate::nn::store::{save_tensors, tensors_from_bytes};
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
    /// The MLP's layer sizes, input first (a legacy field: written for every model, as
    /// before [`CheckpointMeta::model`], so that older readers keep working; other models
    /// put what they like here, e.g. their inputs and classes).
    pub sizes: Vec<usize>,
    /// The MLP's hidden activation (legacy, as `sizes`).
    pub activation: Activation,
    /// The MLP's dropout probability (legacy, as `sizes`).
    pub dropout: f64,
    /// The model's configuration as a tagged value, `{"family": "cnn", "channels": [32,
    /// 64], ...}`, written by the program that trained it, so that any model can be
    /// rebuilt from the checkpoint alone (absent in checkpoints written before it was
    /// recorded: their readers fall back to `sizes` and `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<serde_json::Value>,
    /// Feature statistics of the training split.
    pub standardizer: Option<Standardizer>,
    /// The vocabulary of a character model, in id order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<String>,
    /// Where the run stands. The random state is derived, not stored: the batch order of
    /// epoch e comes from (seed, e) and the dropout masks of step s from (seed, s).
    pub position: Position,
    /// The run's configuration (the command-line options), echoed for `--resume`.
    pub config: serde_json::Value,
    /// The data the run trained on, so that `--resume` can refuse other data (absent in
    /// checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
}

/// What identifies a run's data: where it came from (a file, a folder or the name of an
/// embedded set), how many values it holds and a hash of them as loaded (before any
/// standardisation), so that an edited file is noticed even at the same size.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataIdentity {
    /// The `--data` value: `digits`, `mnist:DIR`, `csv:FILE`, `text:FILE`, `tragedies`...
    pub source: String,
    /// Samples (features and labels) or characters, training and validation together.
    pub size: usize,
    /// FNV-1a of the training and validation values ([`crate::train::fingerprint`]), hex.
    pub hash: String,
}

impl DataIdentity {
    /// The identity of `size` values whose bit patterns `words` yields, from `source`.
    pub fn of(source: &str, size: usize, words: impl Iterator<Item = u32>) -> Self {
        DataIdentity {
            source: source.to_string(),
            size,
            hash: format!("{:016x}", super::fingerprint(words)),
        }
    }

    /// An error naming the source when `now` is not the data these were made from.
    pub fn check_same(&self, now: &DataIdentity) -> Result<()> {
        if self == now {
            return Ok(());
        }
        Err(Error::invalid(
            "resume",
            format!(
                "{}: the data differs from the run's ({} values, hash {}; the checkpoint's: {} values, hash {} from {}); resume with the data it trained on, or start a new run",
                now.source, now.size, now.hash, self.size, self.hash, self.source
            ),
        ))
    }
}

/// A checkpoint read back from disk.
pub struct Checkpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// Parameter values by name.
    pub params: Vec<(String, Tensor<f32>)>,
    /// Optimizer state tensors and step count.
    pub optimizer: (Vec<(String, Tensor<f32>)>, u64),
    /// The parameters at the best evaluation so far, by name (empty unless the run
    /// restores its best weights at the end).
    pub best: Vec<(String, Tensor<f32>)>,
}

/// The format version this library writes. Version 2 stores every [`crate::nn::Linear`]
/// weight as PyTorch does, `[out, in]`; version 1 stored those of the built-in models
/// (`layerN.weight` of an MLP, `out.weight` of a recurrent model's head) as `[in, out]`,
/// and reading one transposes them back (with their best values and optimizer state).
pub const CHECKPOINT_VERSION: u32 = 2;

/// Whether a version-1 checkpoint held the parameter `name` as `[in, out]`: the weights
/// of the built-in models' `Linear` layers before they took PyTorch's layout.
fn stored_as_in_out(version: u32, name: &str) -> bool {
    let layer_weight = |name: &str| {
        name.strip_prefix("layer")
            .and_then(|r| r.strip_suffix(".weight"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    version < 2 && (name == "out.weight" || layer_weight(name))
}

/// `t` in the current layout: transposed when the checkpoint held it as `[in, out]`.
fn current_layout(version: u32, name: &str, t: &Tensor<f32>) -> Result<Tensor<f32>> {
    match t.shape() {
        [_, _] if stored_as_in_out(version, name) => t.t(),
        _ => Ok(t.clone()),
    }
}

/// The file name of a run's checkpoint inside its output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

const META_KEY: &str = "chainrule_checkpoint";
const PARAM: &str = "param:";
const OPTIMIZER: &str = "optimizer:";
const BEST: &str = "best:";
const STATE: &str = "state:";

pub(super) fn save_checkpoint(
    path: &Path,
    meta: &CheckpointMeta,
    store: &ParamStore<f32>,
    optimizer: &dyn Optimizer<f32>,
) -> Result<()> {
    let (state, steps) = optimizer.state();
    let mut named: Vec<(String, &Tensor<f32>)> = store
        .iter()
        .map(|(_, n, t)| (format!("{PARAM}{n}"), t))
        .collect();
    named.extend(state.iter().map(|(n, t)| (format!("{OPTIMIZER}{n}"), t)));
    // the best weights so far, when the run restores them at the end
    named.extend(
        store
            .iter()
            .zip(&meta.position.best_weights)
            .map(|((_, n, _), t)| (format!("{BEST}{n}"), t)),
    );
    named.extend(
        meta.position
            .carried
            .iter()
            .map(|(n, t)| (format!("{STATE}{n}"), t)),
    );
    let metadata = HashMap::from([
        (
            META_KEY.to_string(),
            serde_json::to_string(meta).expect("metadata serialises"),
        ),
        ("optimizer_steps".to_string(), steps.to_string()),
    ]);
    save_tensors(path, named.iter().map(|(n, t)| (n.as_str(), *t)), &metadata)
}

/// Reads a checkpoint file.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let (name, bytes) = (path.display().to_string(), read_file(path)?);
    Checkpoint::from_bytes(&bytes, &name)
}

impl Checkpoint {
    /// Parses the bytes of a checkpoint file; `name` is used in messages. Malformed or
    /// foreign files are an error, never a panic.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Checkpoint> {
        let fmt = |msg: String| Error::Parse {
            line: None,
            path: name.to_string(),
            msg,
        };
        let (tensors, tags) = tensors_from_bytes::<f32>(bytes, name)?;
        let text = tags.get(META_KEY).ok_or_else(|| {
            fmt("a safetensors file, but not a chainrule checkpoint (no metadata)".into())
        })?;
        let meta: CheckpointMeta = serde_json::from_str(text)
            .map_err(|e| fmt(format!("not a chainrule checkpoint: {e}")))?;
        let steps = match tags.get("optimizer_steps").map(|s| s.parse::<u64>()) {
            Some(Ok(n)) => n,
            _ => {
                return Err(fmt(
                    "the optimizer's step count is missing or malformed".into()
                ));
            }
        };
        let (mut params, mut ostate, mut best) = (Vec::new(), Vec::new(), Vec::new());
        let mut meta = meta;
        for (n, t) in tensors {
            if let Some(p) = n.strip_prefix(PARAM) {
                params.push((p.to_string(), t));
            } else if let Some(o) = n.strip_prefix(OPTIMIZER) {
                ostate.push((o.to_string(), t));
            } else if let Some(b) = n.strip_prefix(BEST) {
                best.push((b.to_string(), t));
            } else if let Some(c) = n.strip_prefix(STATE) {
                meta.position.carried.push((c.to_string(), t));
            } else {
                return Err(fmt(format!("unexpected tensor '{n}'")));
            }
        }
        Ok(Checkpoint {
            meta,
            params,
            optimizer: (ostate, steps),
            best,
        })
    }

    /// Number of parameter values a model of these layer sizes has (weights and biases),
    /// `None` on overflow.
    pub fn mlp_param_count(sizes: &[usize]) -> Option<usize> {
        sizes.windows(2).try_fold(0usize, |acc, w| {
            w[0].checked_mul(w[1])?.checked_add(w[1])?.checked_add(acc)
        })
    }

    /// Checks, before a model is built, that this checkpoint holds exactly `expected`
    /// parameter values (`None`: the model's size overflows), so that a hostile or
    /// foreign file cannot make the caller allocate more than the file itself holds.
    pub fn check_param_count(&self, expected: Option<usize>) -> Result<()> {
        let held: usize = self.params.iter().map(|(_, t)| t.len()).sum();
        if expected != Some(held) {
            return Err(Error::invalid(
                "checkpoint",
                format!(
                    "it holds {held} parameter values; the model it describes needs {}",
                    expected.map_or("more than can be counted".to_string(), |e| e.to_string())
                ),
            ));
        }
        Ok(())
    }

    /// Checks, before a model of `sizes` is built, that this checkpoint holds exactly its
    /// parameters: a hostile or foreign file cannot make the caller allocate more than
    /// the file itself holds.
    pub fn check_sizes(&self, sizes: &[usize]) -> Result<()> {
        let held: usize = self.params.iter().map(|(_, t)| t.len()).sum();
        if self.meta.sizes != sizes || Self::mlp_param_count(sizes) != Some(held) {
            return Err(Error::invalid(
                "checkpoint",
                format!(
                    "it holds a model of layer sizes {:?} ({held} values); this run needs {sizes:?}",
                    self.meta.sizes
                ),
            ));
        }
        Ok(())
    }

    /// The best weights so far in the order of `store`'s parameters (names and shapes
    /// must match), ready for [`Position::best_weights`]; empty when the checkpoint has
    /// none.
    pub fn best_weights(&self, store: &ParamStore<f32>) -> Result<Vec<Tensor<f32>>> {
        if self.best.is_empty() {
            return Ok(Vec::new());
        }
        let by_name: HashMap<&str, &Tensor<f32>> =
            self.best.iter().map(|(n, t)| (n.as_str(), t)).collect();
        store
            .iter()
            .map(|(_, name, t)| {
                let best = by_name.get(name);
                match best
                    .map(|b| current_layout(self.meta.version, name, b))
                    .transpose()?
                {
                    Some(b) if b.shape() == t.shape() => Ok(b),
                    _ => Err(Error::invalid(
                        "checkpoint",
                        format!("its best weights lack '{name}' of shape {:?}", t.shape()),
                    )),
                }
            })
            .collect()
    }

    /// The optimizer's state (entries named by parameter index, as
    /// [`Optimizer::state`] writes them) for the parameters of `store`, in the current
    /// layout.
    pub fn optimizer_state(&self, store: &ParamStore<f32>) -> Result<Vec<(String, Tensor<f32>)>> {
        let names: Vec<&str> = store.iter().map(|(_, n, _)| n).collect();
        self.optimizer
            .0
            .iter()
            .map(|(entry, t)| {
                let param = entry
                    .split_once('.')
                    .and_then(|(i, _)| i.parse::<usize>().ok())
                    .and_then(|i| names.get(i));
                Ok((
                    entry.clone(),
                    match param {
                        Some(name) => current_layout(self.meta.version, name, t)?,
                        None => t.clone(),
                    },
                ))
            })
            .collect()
    }

    /// Copies the parameter values into `store` (names and shapes must match).
    pub fn restore_params(&self, store: &mut ParamStore<f32>) -> Result<()> {
        let by_name: HashMap<&str, &Tensor<f32>> =
            self.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let ids: Vec<_> = store
            .iter()
            .map(|(id, name, t)| (id, name.to_string(), t.shape().to_vec()))
            .collect();
        for (id, name, shape) in ids {
            let t = by_name.get(name.as_str()).ok_or_else(|| Error::Parse {
                line: None,
                path: "checkpoint".into(),
                msg: format!("parameter '{name}' is missing"),
            })?;
            let t = current_layout(self.meta.version, &name, t)?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Parse {
                    line: None,
                    path: "checkpoint".into(),
                    msg: format!(
                        "parameter '{name}' has shape {:?}, the model expects {shape:?}",
                        t.shape()
                    ),
                });
            }
            *store.get_mut(id) = t;
        }
        Ok(())
    }
}

#[cfg(test)]
mod model_field {
    use super::*;

    /// A checkpoint written before `model` was recorded has no such key; it must read
    /// as `None`, and a recorded model must read back as written.
    #[test]
    fn checkpoint_meta_reads_with_and_without_the_model() {
        let meta = CheckpointMeta {
            version: CHECKPOINT_VERSION,
            sizes: vec![2, 3, 2],
            activation: Activation::Relu,
            dropout: 0.0,
            model: Some(serde_json::json!({"family": "mlp", "sizes": [2, 3, 2]})),
            standardizer: None,
            vocab: None,
            position: Position::default(),
            config: serde_json::json!({"data": "digits"}),
            data: None,
        };
        let mut json = serde_json::to_value(&meta).unwrap();
        let back: CheckpointMeta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.model, meta.model);
        json.as_object_mut().unwrap().remove("model");
        let old: CheckpointMeta = serde_json::from_value(json).unwrap();
        assert_eq!(old.model, None);
        assert_eq!(old.sizes, vec![2, 3, 2]);
        let none = CheckpointMeta { model: None, ..old };
        assert!(serde_json::to_value(&none).unwrap().get("model").is_none());
    }
}
