//! The model families `chainrule train` knows, each in its own file, and the one list
//! that maps a `--model` name to its family. A family owns everything that differs from
//! one model to another: its defaults, the options it takes or refuses, how its model
//! and objective are built from the settings and the data (or from a checkpoint), the
//! line a run starts with, what its checkpoint records of the model, and how a saved
//! model evaluates, samples or gives its curvature. The run loop, `eval`, `sample` and
//! `curvature` ask the family and never name a model.
//!
//! A new family: a file here, a variant of [`ModelKind`], and its line in [`family`].

use super::*;
use chainrule::tensor::Tensor;
use chainrule::train::Checkpoint;
use clap::ValueEnum;

mod cnn;
mod gpt;
mod mlp;
mod recurrent;

/// The `--model` names. Saved settings spell them in lowercase (`"model": "lstm"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A multilayer perceptron (classification).
    #[default]
    Mlp,
    /// A convolutional network (classification of square images).
    Cnn,
    /// A character-level LSTM.
    Lstm,
    /// A character-level GRU.
    Gru,
    /// A character-level Elman RNN.
    Rnn,
    /// A character-level GPT.
    Gpt,
}

/// The family of a `--model`: the one place that lists them.
pub(crate) fn family(kind: ModelKind) -> &'static dyn Family {
    match kind {
        ModelKind::Mlp => &mlp::Mlp,
        ModelKind::Cnn => &cnn::Cnn,
        ModelKind::Lstm | ModelKind::Gru | ModelKind::Rnn => &recurrent::Recurrent,
        ModelKind::Gpt => &gpt::Gpt,
    }
}

impl ModelKind {
    /// The `--model` value: clap's parser of the enum, with an error of one line that
    /// lists the choices (the program prints only the first line of clap's errors, and
    /// clap puts the possible values on a second one).
    pub(crate) fn parse(s: &str) -> Result<ModelKind, String> {
        <ModelKind as ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown model '{s}'; choose {}", models(|_| true)))
    }

    /// The model of a run on text (`text`) or on classification data when none is named.
    pub(crate) fn default_for(text: bool) -> ModelKind {
        if text {
            ModelKind::Lstm
        } else {
            ModelKind::Mlp
        }
    }

    /// The model a checkpoint records (`None` for a checkpoint written before it did:
    /// its settings name the model then).
    pub(crate) fn recorded(ckpt: &Checkpoint) -> anyhow::Result<Option<ModelKind>> {
        let Some(model) = &ckpt.meta.model else {
            return Ok(None);
        };
        let kind = model.get("family").cloned().unwrap_or_default();
        serde_json::from_value(kind)
            .map(Some)
            .context("the checkpoint's model is not readable")
    }
}

/// The `--model` names whose family `which` picks, for messages: `lstm, gru, rnn or gpt`.
pub(crate) fn models(which: impl Fn(&dyn Family) -> bool) -> String {
    let names: Vec<String> = ModelKind::value_variants()
        .iter()
        .filter(|&&k| which(family(k)))
        .map(ToString::to_string)
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().expect("no model is skipped");
        f.write_str(value.get_name())
    }
}

/// A checkpoint to rebuild a model from, and how messages name it (`--resume FILE`,
/// `--checkpoint FILE`).
pub(crate) struct Saved<'a> {
    pub(crate) ckpt: &'a Checkpoint,
    pub(crate) name: String,
}

impl Saved<'_> {
    /// The model's configuration the checkpoint records, as its family wrote it (`None`
    /// for an older checkpoint: the family reads the run's settings instead). Errors,
    /// as the others here, leave naming the checkpoint to the caller.
    pub(crate) fn spec<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<Option<T>> {
        let Some(model) = &self.ckpt.meta.model else {
            return Ok(None);
        };
        serde_json::from_value(model.clone())
            .map(Some)
            .context("the checkpoint's model is not readable")
    }

    /// The classes of a classifier's checkpoint: its layer sizes' last.
    pub(crate) fn legacy_classes(&self) -> anyhow::Result<usize> {
        match self.ckpt.meta.sizes.last() {
            Some(&classes) => Ok(classes),
            None => bail!("the checkpoint's model has no layers"),
        }
    }
}

/// The configuration a checkpoint records of a model: `spec` tagged with its `--model`.
pub(crate) fn tagged(kind: ModelKind, spec: &impl Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).expect("a model's configuration serialises");
    if let Some(fields) = value.as_object_mut() {
        fields.insert("family".into(), serde_json::json!(kind));
    }
    value
}

/// The refusal of the first option given in `a` that only a family other than `fam`
/// takes (each family lists its own; see [`Family::own_option_given`]).
pub(crate) fn foreign_option(fam: &dyn Family, a: &Args) -> Option<&'static str> {
    let id = |f: &dyn Family| (f as &dyn std::any::Any).type_id();
    ModelKind::value_variants()
        .iter()
        .map(|&k| family(k))
        .filter(|f| id(*f) != id(fam))
        .find_map(|f| f.own_option_given(a))
}

/// One family of models: what differs from one model to another.
pub(crate) trait Family: std::any::Any + Sync {
    /// Whether it is a character model (trained on text) rather than a classifier.
    fn on_text(&self) -> bool;

    /// The settings of a fresh run of `kind` before any option: the family's recipe.
    fn defaults(&self, kind: ModelKind) -> RunConfig;

    /// The refusal of the first option only this family takes, when `a` gives one to a
    /// run of another family (`--channels: only --model cnn has convolutions`).
    fn own_option_given(&self, _a: &Args) -> Option<&'static str> {
        None
    }

    /// Checks the resolved settings of a run of this family, and refuses options it
    /// does not take (`a`: what was given on the command line).
    fn check_options(&self, a: &Args, cfg: &RunConfig) -> anyhow::Result<()>;

    /// The shape of its learning-rate warm-up.
    fn warmup(&self) -> Warmup {
        Warmup::Linear
    }

    /// Loads the run's data and builds its model into `store`: from the settings, or
    /// from a checkpoint (`saved`: its recorded model, else its settings), checked
    /// against the checkpoint's parameters before it is built. The caller restores the
    /// checkpoint's values.
    fn build(
        &self,
        cfg: &RunConfig,
        saved: Option<&Saved>,
        store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Trained>>;

    /// A character model's saved model over a vocabulary of `vocab` characters, without
    /// its text, to generate with (the caller restores the checkpoint's values).
    fn sampler(
        &self,
        _cfg: &RunConfig,
        saved: &Saved,
        _vocab: usize,
        _store: &mut ParamStore<f32>,
    ) -> anyhow::Result<Box<dyn Sampler>> {
        bail!("{}: it holds no character model", saved.name)
    }
}

/// A built model with its data: what the run loop, `eval` and `curvature` use.
pub(crate) trait Trained {
    /// The objective the loop drives for this model and data.
    fn objective(&self, cfg: &RunConfig) -> anyhow::Result<Box<dyn Objective + '_>>;

    /// The data the run trains on.
    fn data(&self) -> RunData<'_>;

    /// The text of a character model's run.
    fn text(&self) -> Option<&TextData> {
        match self.data() {
            RunData::Text(text) => Some(text),
            RunData::Classes(_) => None,
        }
    }

    /// What one step trains on, and its unit: samples of a batch, or a character
    /// model's streams (windows) × their characters.
    fn step_unit(&self, cfg: &RunConfig) -> (usize, &'static str) {
        match self.data() {
            RunData::Classes(_) => (cfg.batch_size, "samples"),
            RunData::Text(_) => (cfg.batch_size.saturating_mul(cfg.seq_len), "chars"),
        }
    }

    /// The split the run evaluates on: `validation`, or `test` for MNIST.
    fn eval_name(&self) -> &'static str {
        match self.data() {
            RunData::Classes(splits) => splits.eval_name,
            RunData::Text(_) => "validation",
        }
    }

    /// What identifies the run's data (recorded in the checkpoint, compared on
    /// `--resume` and across the ranks of a data-parallel run).
    fn identity(&self, source: &str) -> DataIdentity {
        match self.data() {
            RunData::Classes(splits) => splits.identity.clone(),
            RunData::Text(text) => text.identity(source),
        }
    }

    /// The line a run starts with: what trains, on what, how, and where it writes
    /// (`clipping` in words).
    fn announcement(
        &self,
        cfg: &RunConfig,
        store: &ParamStore<f32>,
        clipping: &str,
        out: &Path,
    ) -> String;

    /// What the checkpoint holds of the model and its data.
    fn record(&self) -> Record;

    /// The loss (and accuracy) of the saved model on the evaluation split.
    fn evaluate(&self, cfg: &RunConfig, store: &ParamStore<f32>) -> anyhow::Result<Evaluation>;

    /// The training loss's Hessian-vector product over the run's first `limit`
    /// samples (characters), for `chainrule curvature`.
    fn curvature<'a>(
        &'a self,
        cfg: &'a RunConfig,
        store: &'a ParamStore<f32>,
        limit: usize,
    ) -> anyhow::Result<CurvatureLoss<'a>>;
}

/// The data of a run: a classifier's splits or a character model's text.
pub(crate) enum RunData<'a> {
    Classes(&'a Splits),
    Text(&'a TextData),
}

/// What a checkpoint holds of a model and its data besides the settings.
pub(crate) struct Record {
    /// The legacy `sizes` (the MLP's layer sizes; other classifiers' inputs and classes).
    pub(crate) sizes: Vec<usize>,
    pub(crate) vocab: Option<String>,
    pub(crate) standardizer: Option<Standardizer>,
    /// The model's configuration, tagged with its family ([`tagged`]).
    pub(crate) model: serde_json::Value,
}

/// A saved model's result on its evaluation split.
pub(crate) enum Evaluation {
    /// A character model's mean loss per character over `characters` characters.
    Text { loss: f64, characters: usize },
    /// A classifier's mean loss and accuracy over `samples` samples of `split`.
    Classes {
        loss: f64,
        accuracy: f64,
        samples: usize,
        split: &'static str,
    },
}

/// A Hessian-vector product of a saved run's training loss, over `samples` samples
/// (characters), and that loss in words.
pub(crate) struct CurvatureLoss<'a> {
    pub(crate) hv: HessianVector<'a>,
    pub(crate) samples: usize,
    pub(crate) over: String,
}

/// H·v for the parameters' directions v.
pub(crate) type HessianVector<'a> =
    Box<dyn FnMut(&[Tensor<f32>]) -> chainrule::Result<Vec<Tensor<f32>>> + 'a>;

/// A character model that writes text.
pub(crate) trait Sampler {
    /// `length` ids after `prompt`, drawn at `temperature` among the `top_k` most likely.
    fn sample(
        &self,
        store: &ParamStore<f32>,
        prompt: &[usize],
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    ) -> anyhow::Result<Vec<usize>>;
}

/// The checks every character model makes: `--embed`, `--layers` and `--seq-len` of
/// at least 1.
pub(crate) fn check_text_sizes(cfg: &RunConfig) -> anyhow::Result<()> {
    let sizes = [cfg.embed, cfg.layers, cfg.seq_len];
    for (flag, v) in ["--embed", "--layers", "--seq-len"].into_iter().zip(sizes) {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    Ok(())
}

/// The options every character model refuses: `--val-fraction` and `--init`.
pub(crate) fn refuse_text_options(a: &Args) -> anyhow::Result<()> {
    if a.val_fraction.is_some() {
        bail!("--val-fraction: text data always validates on its last 10%");
    }
    if a.init.is_some() {
        bail!("--init: a character model always starts from PyTorch's initialisation");
    }
    Ok(())
}

/// What a character model's checkpoint records: no sizes, the vocabulary.
pub(crate) fn text_record(text: &TextData, model: serde_json::Value) -> Record {
    Record {
        sizes: Vec::new(),
        vocab: Some(text.corpus.vocab().iter().collect()),
        standardizer: None,
        model,
    }
}

/// The vocabulary a checkpoint's character model was trained on, when it has one.
pub(crate) fn saved_vocab<'a>(saved: Option<&'a Saved>) -> Option<&'a str> {
    saved.and_then(|s| s.ckpt.meta.vocab.as_deref())
}

/// Checks that a recorded character model reads the vocabulary of the text now loaded.
pub(crate) fn check_vocab(saved: &Saved, recorded: usize, now: usize) -> anyhow::Result<()> {
    if recorded != now {
        bail!(
            "{}: its model reads {recorded} characters, the text has {now}",
            saved.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_is_one_line_that_lists_every_choice() {
        let e = ModelKind::parse("transformer").unwrap_err();
        assert_eq!(
            e,
            "unknown model 'transformer'; choose mlp, cnn, lstm, gru, rnn or gpt"
        );
        assert_eq!(ModelKind::parse("gru"), Ok(ModelKind::Gru));
    }

    #[test]
    fn saved_settings_spell_models_in_lowercase() {
        for &kind in ModelKind::value_variants() {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.to_string()));
            assert_eq!(serde_json::from_value::<ModelKind>(json).unwrap(), kind);
        }
        // settings saved before there was a model field were an MLP's
        assert_eq!(ModelKind::default(), ModelKind::Mlp);
    }

    #[test]
    fn each_family_defaults_to_its_own_model_and_refuses_the_others_options() {
        for &kind in ModelKind::value_variants() {
            let fam = family(kind);
            assert_eq!(fam.defaults(kind).model, kind);
            let all = Args {
                heads: Some(2),
                channels: Some(vec![4]),
                ..Args::default()
            };
            let refused = foreign_option(fam, &all).unwrap_or_default();
            match kind {
                ModelKind::Cnn => assert!(refused.starts_with("--heads"), "{refused}"),
                ModelKind::Gpt => assert!(refused.starts_with("--channels"), "{refused}"),
                _ => assert!(refused.starts_with("--channels"), "{kind}: {refused}"),
            }
            assert!(fam.own_option_given(&Args::default()).is_none());
        }
    }
}
