//! The parameter store: stable ids, names, freezing, and safetensors files.

use crate::autodiff::{Gradients, Tape, Var};
use crate::error::{Error, Result, read_file};
use crate::tensor::{Element, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A parameter's stable id in its store (its insertion index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ParamId(pub usize);

/// `prefix.part`, or `part` for a module at the top (PyTorch's names).
pub(crate) fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_string()
    } else {
        format!("{prefix}.{part}")
    }
}

/// Named parameters, kept across steps.
#[derive(Clone, Debug, Default)]
pub struct ParamStore<T: Element> {
    names: Vec<String>,
    values: Vec<Tensor<T>>,
    frozen: Vec<bool>,
    /// Parameters that weight decay leaves alone (the optimizers' parameter groups).
    no_decay: Vec<bool>,
    /// What [`ParamStore::add`] puts before a name: the open scopes, each with its dot.
    scope: String,
}

/// One step's view of the store: a variable per parameter on that step's tape.
pub struct Params<'t, T: Element> {
    tape: &'t Tape<T>,
    vars: Vec<Var<'t, T>>,
}

impl<'t, T: Element> std::ops::Index<ParamId> for Params<'t, T> {
    type Output = Var<'t, T>;
    fn index(&self, id: ParamId) -> &Var<'t, T> {
        &self.vars[id.0]
    }
}

impl<'t, T: Element> Params<'t, T> {
    /// Variables already on `tape` as the parameters, in id order (the gradient check
    /// of a whole model feeds its own).
    #[cfg(test)]
    pub(crate) fn from_vars(tape: &'t Tape<T>, vars: Vec<Var<'t, T>>) -> Self {
        Params { tape, vars }
    }

    /// The tape the parameters are on.
    pub fn tape(&self) -> &'t Tape<T> {
        self.tape
    }

    /// The variables, in id order.
    pub fn vars(&self) -> &[Var<'t, T>] {
        &self.vars
    }

    /// Names every parameter's node on the tape after the store (for exported graphs).
    pub fn label(&self, store: &ParamStore<T>) {
        for (v, (_, name, _)) in self.vars.iter().zip(store.iter()) {
            v.tape().set_label(*v, name);
        }
    }

    /// The gradient of each parameter (in id order), `None` for frozen ones; an error
    /// when `grads` are of another tape.
    pub fn grads(&self, grads: &mut Gradients<T>) -> Result<Vec<Option<Tensor<T>>>> {
        self.vars.iter().map(|&v| grads.take(v)).collect()
    }
}

impl<T: Element> ParamStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        ParamStore {
            names: Vec::new(),
            values: Vec::new(),
            frozen: Vec::new(),
            no_decay: Vec::new(),
            scope: String::new(),
        }
    }

    /// Runs `build` with `name` as a scope: every parameter it adds is named
    /// `name.<its name>` (inside the scopes already open), as PyTorch names the
    /// parameters of a submodule. For nested models: `store.scoped("blocks.0", |s|
    /// Linear::new(s, "attn", ...))` adds `blocks.0.attn.weight` and `blocks.0.attn.bias`.
    /// Names given to [`ParamStore::find`] are always whole.
    pub fn scoped<R>(&mut self, name: &str, build: impl FnOnce(&mut Self) -> R) -> R {
        let outer = self.scope.len();
        self.scope.push_str(name);
        self.scope.push('.');
        let r = build(self);
        self.scope.truncate(outer);
        r
    }

    /// Adds a parameter (named inside the open [scopes](ParamStore::scoped)); names must
    /// be unique.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor<T>) -> Result<ParamId> {
        let name = format!("{}{}", self.scope, name.into());
        if self.names.contains(&name) {
            return Err(Error::invalid(
                "ParamStore::add",
                format!("a parameter named '{name}' already exists"),
            ));
        }
        self.names.push(name);
        self.values.push(value);
        self.frozen.push(false);
        self.no_decay.push(false);
        Ok(ParamId(self.values.len() - 1))
    }

    /// Number of parameters (tensors).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the store is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.values.iter().map(|v| v.len()).sum()
    }

    /// A parameter's value.
    pub fn get(&self, id: ParamId) -> &Tensor<T> {
        &self.values[id.0]
    }

    /// Every parameter's value, mutably, in id order (the optimizers update them all in
    /// one pass).
    pub(crate) fn values_mut(&mut self) -> std::slice::IterMut<'_, Tensor<T>> {
        self.values.iter_mut()
    }

    /// A parameter's value, mutably (the optimizer updates it in place).
    pub fn get_mut(&mut self, id: ParamId) -> &mut Tensor<T> {
        &mut self.values[id.0]
    }

    /// A parameter's name.
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.0]
    }

    /// The id of the parameter called `name`.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.names.iter().position(|n| n == name).map(ParamId)
    }

    /// Stops a parameter from receiving gradients (it enters the tape as a constant).
    pub fn freeze(&mut self, id: ParamId) {
        self.frozen[id.0] = true;
    }

    /// Lets a frozen parameter train again.
    pub fn unfreeze(&mut self, id: ParamId) {
        self.frozen[id.0] = false;
    }

    /// Whether a parameter is frozen.
    pub fn is_frozen(&self, id: ParamId) -> bool {
        self.frozen[id.0]
    }

    /// Whether each parameter is frozen, in id order.
    pub(crate) fn frozen_flags(&self) -> &[bool] {
        &self.frozen
    }

    /// Sets whether the optimizer's weight decay applies to a parameter (it does unless
    /// set otherwise): PyTorch's parameter groups with and without decay.
    pub fn set_decay(&mut self, id: ParamId, decays: bool) {
        self.no_decay[id.0] = !decays;
    }

    /// Whether weight decay applies to a parameter.
    pub fn decays(&self, id: ParamId) -> bool {
        !self.no_decay[id.0]
    }

    /// Every (id, name, value).
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &str, &Tensor<T>)> {
        self.names
            .iter()
            .zip(&self.values)
            .enumerate()
            .map(|(i, (n, v))| (ParamId(i), n.as_str(), v))
    }

    /// Puts every parameter on `tape`: trainable ones as leaves, frozen ones as constants.
    pub fn leaves<'t>(&self, tape: &'t Tape<T>) -> Params<'t, T> {
        let vars = self
            .values
            .iter()
            .zip(&self.frozen)
            .map(|(v, &frozen)| {
                if frozen {
                    tape.constant(v.clone())
                } else {
                    tape.var(v.clone())
                }
            })
            .collect();
        Params { tape, vars }
    }

    /// Like [`ParamStore::leaves`] on a [forward-mode tape](Tape::forward_mode), each
    /// trainable parameter carrying its tangent from `tangents` (in id order): a
    /// Hessian-vector product of a loss of the parameters is the tangent of its
    /// [recorded gradient](Tape::backward_recorded).
    pub fn duals<'t>(&self, tape: &'t Tape<T>, tangents: &[Tensor<T>]) -> Result<Params<'t, T>> {
        if tangents.len() != self.values.len() {
            return Err(Error::invalid(
                "ParamStore::duals",
                format!(
                    "{} tangents for {} parameters",
                    tangents.len(),
                    self.values.len()
                ),
            ));
        }
        let vars = self
            .values
            .iter()
            .zip(&self.frozen)
            .zip(tangents)
            .map(|((v, &frozen), t)| {
                if frozen {
                    Ok(tape.constant(v.clone()))
                } else {
                    tape.dual(v.clone(), t.clone())
                }
            })
            .collect::<Result<_>>()?;
        Ok(Params { tape, vars })
    }

    /// Writes every parameter to a safetensors file, atomically (temporary file, then
    /// rename), with `metadata` in the file's header.
    pub fn save_safetensors(&self, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
        save_tensors(
            path,
            self.names
                .iter()
                .map(String::as_str)
                .zip(self.values.iter()),
            metadata,
        )
    }

    /// Reads parameter values from a safetensors file: every parameter of this store must
    /// be present with the same shape. Returns the file's metadata.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<HashMap<String, String>> {
        let (tensors, meta) = load_tensors::<T>(path)?;
        let mut by_name: HashMap<String, Tensor<T>> = tensors.into_iter().collect();
        let mut fresh = Vec::with_capacity(self.values.len());
        for (name, value) in self.names.iter().zip(&self.values) {
            let t = by_name.remove(name).ok_or_else(|| Error::Parse {
                line: None,
                path: path.display().to_string(),
                msg: format!("parameter '{name}' is missing"),
            })?;
            if t.shape() != value.shape() {
                return Err(Error::Parse {
                    line: None,
                    path: path.display().to_string(),
                    msg: format!(
                        "parameter '{name}' has shape {:?}, the model expects {:?}",
                        t.shape(),
                        value.shape()
                    ),
                });
            }
            fresh.push(t);
        }
        self.values = fresh;
        Ok(meta)
    }
}

/// Writes named tensors to a safetensors file atomically.
pub fn save_tensors<'a, T: Element>(
    path: &Path,
    tensors: impl Iterator<Item = (&'a str, &'a Tensor<T>)>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let dtype = if T::NAME == "f32" {
        safetensors::Dtype::F32
    } else {
        safetensors::Dtype::F64
    };
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .map(|(n, t)| {
            let bytes: Vec<u8> = t.data().iter().flat_map(|v| to_le_bytes(*v)).collect();
            (n.to_string(), t.shape().to_vec(), bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(owned.len());
    for (n, shape, bytes) in &owned {
        let view =
            safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).map_err(|e| {
                Error::Parse {
                    line: None,
                    path: path.display().to_string(),
                    msg: e.to_string(),
                }
            })?;
        views.push((n.as_str(), view));
    }
    let bytes =
        safetensors::serialize(views, Some(metadata.clone())).map_err(|e| Error::Parse {
            line: None,
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
    write_atomically(path, &bytes)
}

fn to_le_bytes<T: Element>(v: T) -> Vec<u8> {
    if T::NAME == "f32" {
        (v.as_f64() as f32).to_le_bytes().to_vec()
    } else {
        v.as_f64().to_le_bytes().to_vec()
    }
}

/// Named tensors and the string metadata of a safetensors file.
pub type NamedTensors<T> = (Vec<(String, Tensor<T>)>, HashMap<String, String>);

/// Reads every tensor of a safetensors file (f32 or f64, converted to `T`).
pub fn load_tensors<T: Element>(path: &Path) -> Result<NamedTensors<T>> {
    let (name, bytes) = (path.display().to_string(), read_file(path)?);
    tensors_from_bytes(&bytes, &name)
}

/// Parses the bytes of a safetensors file; `name` is used in messages. Never panics on
/// malformed input.
pub fn tensors_from_bytes<T: Element>(bytes: &[u8], name: &str) -> Result<NamedTensors<T>> {
    let fmt = |msg: String| Error::Parse {
        line: None,
        path: name.to_string(),
        msg,
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| fmt(format!("not a valid safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| fmt(format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (n, view) in st.tensors() {
        let data: Vec<T> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| T::of(f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64))
                .collect(),
            safetensors::Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| T::of(f64::from_le_bytes(c.try_into().expect("8 bytes"))))
                .collect(),
            other => {
                return Err(fmt(format!(
                    "tensor '{n}' has dtype {other:?}; only F32 and F64 are supported"
                )));
            }
        };
        let t =
            Tensor::from_vec(data, view.shape()).map_err(|e| fmt(format!("tensor '{n}': {e}")))?;
        out.push((n, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta))
}

/// Removes the temporary files that [`write_atomically`] leaves beside `path` when its
/// process is killed mid-write (a file name with another process id never gets renamed).
pub fn remove_stale_temporaries(path: &Path) {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over
/// `path`: a reader sees the old file or the new one, never a partial one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        cause: e,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    // make the rename itself durable (a crash of the machine, not only of the process)
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_parameters_as_pytorch_names_submodules() {
        let mut store = ParamStore::<f32>::new();
        let mut rng = crate::nn::rng(0);
        let init = crate::nn::Init::TorchDefault;
        for block in 0..2 {
            store.scoped("blocks", |s| {
                s.scoped(&block.to_string(), |s| {
                    crate::nn::Linear::new(s, "attn", 2, 2, init, &mut rng).unwrap();
                })
            });
        }
        store.add("head", Tensor::zeros(&[2]).unwrap()).unwrap();
        let names: Vec<&str> = store.iter().map(|(_, n, _)| n).collect();
        assert_eq!(
            names,
            [
                "blocks.0.attn.weight",
                "blocks.0.attn.bias",
                "blocks.1.attn.weight",
                "blocks.1.attn.bias",
                "head"
            ]
        );
        assert!(store.find("blocks.1.attn.bias").is_some());
    }

    #[test]
    fn safetensors_roundtrip_and_mismatch_errors() {
        let dir = std::env::temp_dir().join(format!("chainrule-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.safetensors");
        let mut s = ParamStore::<f32>::new();
        let w = s.add("w", Tensor::randn(&[3, 2], 1).unwrap()).unwrap();
        let b = s
            .add("b", Tensor::from_vec(vec![1.5, -2.25], &[2]).unwrap())
            .unwrap();
        assert!(s.add("w", Tensor::zeros(&[1]).unwrap()).is_err());
        let meta = HashMap::from([("step".to_string(), "7".to_string())]);
        s.save_safetensors(&path, &meta).unwrap();
        let mut t = ParamStore::<f32>::new();
        t.add("w", Tensor::zeros(&[3, 2]).unwrap()).unwrap();
        let tb = t.add("b", Tensor::zeros(&[2]).unwrap()).unwrap();
        assert_eq!(t.load_safetensors(&path).unwrap()["step"], "7");
        assert_eq!(t.get(w), s.get(w));
        assert_eq!(t.get(tb).data(), &[1.5, -2.25]);
        assert_eq!(t.get(tb), s.get(b));
        // matched by name, not by position
        let mut r = ParamStore::<f32>::new();
        let rb = r.add("b", Tensor::zeros(&[2]).unwrap()).unwrap();
        let rw = r.add("w", Tensor::zeros(&[3, 2]).unwrap()).unwrap();
        r.load_safetensors(&path).unwrap();
        assert_eq!(r.get(rb).data(), &[1.5, -2.25]);
        assert_eq!(r.get(rw), s.get(w));
        let mut wrong = ParamStore::<f32>::new();
        wrong.add("w", Tensor::zeros(&[2, 3]).unwrap()).unwrap();
        let e = wrong.load_safetensors(&path).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("[3, 2]"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            t.load_safetensors(&path)
                .unwrap_err()
                .to_string()
                .contains("not a valid safetensors")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn frozen_parameters_get_no_gradient() {
        let mut s = ParamStore::<f64>::new();
        let a = s.add("a", Tensor::ones(&[2]).unwrap()).unwrap();
        let b = s.add("b", Tensor::ones(&[2]).unwrap()).unwrap();
        s.freeze(b);
        let tape = Tape::new();
        let p = s.leaves(&tape);
        let loss = (p[a] * p[b]).sum_all();
        let mut g = tape.backward(loss).unwrap();
        let grads = p.grads(&mut g).unwrap();
        assert!(grads[a.0].is_some() && grads[b.0].is_none());
    }
}
