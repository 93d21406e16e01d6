//! The data of a run (classification or text), what identifies it in its checkpoint,
//! and what the classifier families share once their model is built.

use super::*;

/// Training and evaluation splits, standardised with the training split's statistics
/// (per feature for tabular data; one mean and deviation over all pixels for MNIST).
pub struct Splits {
    pub(crate) train: Dataset,
    pub(crate) val: Dataset,
    pub(crate) standardizer: Standardizer,
    pub(crate) eval_name: &'static str,
    /// The data as loaded, before standardisation.
    pub(crate) identity: DataIdentity,
}

/// The identity of a classification set: its features and labels, training and
/// validation, as loaded.
pub(crate) fn dataset_identity(source: &str, train: &Dataset, val: &Dataset) -> DataIdentity {
    let words = |d: &Dataset| {
        let features = d.features.data().iter().map(|v| v.to_bits());
        features
            .chain(d.labels.iter().map(|&l| l as u32))
            .collect::<Vec<u32>>()
    };
    let (a, b) = (words(train), words(val));
    DataIdentity::of(source, train.len() + val.len(), a.into_iter().chain(b))
}

/// The splits of a classifier's data, standardised with `standardizer` (a checkpoint's)
/// or with the training split's statistics: per feature, or over all values when the
/// model reads `images` (and always for MNIST).
pub(crate) fn load_splits(
    cfg: &RunConfig,
    standardizer: Option<Standardizer>,
    images: bool,
) -> anyhow::Result<Splits> {
    let (train, val, eval_name) = if cfg.data == "digits" {
        let (t, v) = Dataset::digits()?.split(cfg.val_fraction, cfg.seed)?;
        (t, v, "validation")
    } else if let Some(dir) = cfg.data.strip_prefix("mnist:") {
        let (t, v) = load_mnist(Path::new(dir))?;
        (t, v, "test")
    } else if let Some(file) = cfg.data.strip_prefix("csv:") {
        let label: LabelColumn = cfg
            .label
            .as_deref()
            .unwrap_or("last")
            .parse()
            .expect("infallible");
        let all = load_csv(Path::new(file), &label)?;
        if all.num_classes < 2 {
            bail!("{file}: every row has the same label; a classifier needs at least two classes");
        }
        let (t, v) = all.split(cfg.val_fraction, cfg.seed)?;
        (t, v, "validation")
    } else {
        bail!(
            "--data: unknown dataset '{}'; use digits, mnist:DIR, csv:FILE, text:FILE, macbeth or tragedies",
            cfg.data
        );
    };
    let s = standardizer.unwrap_or_else(|| {
        // images (MNIST, or any a model reads as images) share one mean and deviation
        // over all pixels
        if eval_name == "test" || images {
            Standardizer::fit_global(&train)
        } else {
            Standardizer::fit(&train)
        }
    });
    s.check(train.dim())?;
    let identity = dataset_identity(&cfg.data, &train, &val);
    Ok(Splits {
        identity,
        train: s.apply(&train)?,
        val: s.apply(&val)?,
        standardizer: s,
        eval_name,
    })
}

/// A character model's data: the corpus and its streams.
pub(crate) struct TextData {
    pub(crate) corpus: TextCorpus,
    pub(crate) train: Streams,
    pub(crate) val: Streams,
}

impl TextData {
    /// The text's identity: its characters' ids, training and validation.
    pub(crate) fn identity(&self, source: &str) -> DataIdentity {
        let (train, val) = (self.corpus.train(), self.corpus.val());
        let ids = train.iter().chain(val).copied();
        DataIdentity::of(source, train.len() + val.len(), ids)
    }
}

pub(crate) fn load_text(cfg: &RunConfig, saved_vocab: Option<&str>) -> anyhow::Result<TextData> {
    let file = cfg.data.strip_prefix("text:").unwrap_or(&cfg.data);
    let corpus = if EMBEDDED_TEXTS.contains(&cfg.data.as_str()) {
        TextCorpus::embedded(&cfg.data)?
    } else {
        TextCorpus::load(Path::new(file))?
    };
    if let Some(v) = saved_vocab {
        let now: String = corpus.vocab().iter().collect();
        if now != v {
            bail!(
                "{file}: its vocabulary ({} characters) differs from the one the checkpoint was trained on ({} characters); the text changed",
                corpus.vocab().len(),
                v.chars().count()
            );
        }
    }
    let streams = |ids: &[u32], what: &str| {
        Streams::new(ids, cfg.batch_size, cfg.seq_len).with_context(|| {
            format!(
                "{file}: the {what} text ({} characters) is too short for {} streams",
                ids.len(),
                cfg.batch_size
            )
        })
    };
    Ok(TextData {
        train: streams(corpus.train(), "training")?,
        val: streams(corpus.val(), "validation")?,
        corpus,
    })
}

/// A classifier's run: its data and its network (an MLP or a CNN), with what its family
/// says of it. The classifier families build one; everything after is the same.
pub(crate) struct Classified {
    pub(crate) splits: Splits,
    pub(crate) model: Box<dyn Classifier<f32>>,
    /// The network in words, for the line a run starts with.
    pub(crate) description: String,
    /// The checkpoint's legacy `sizes`.
    pub(crate) sizes: Vec<usize>,
    /// The network's configuration, tagged ([`tagged`]).
    pub(crate) spec: serde_json::Value,
}

impl Trained for Classified {
    fn objective(&self, cfg: &RunConfig) -> anyhow::Result<Box<dyn Objective + '_>> {
        Ok(Box::new(Classification::new(
            self.model.as_ref(),
            &self.splits.train,
            &self.splits.val,
            cfg.batch_size,
            true,
        )?))
    }

    fn data(&self) -> RunData<'_> {
        RunData::Classes(&self.splits)
    }

    fn announcement(
        &self,
        cfg: &RunConfig,
        _store: &ParamStore<f32>,
        clipping: &str,
        out: &Path,
    ) -> String {
        format!(
            "training {} on {} ({} train / {} {} samples) with {:?}, lr {}, batch {}, clipping {clipping}; output in {}",
            self.description,
            cfg.data,
            self.splits.train.len(),
            self.splits.val.len(),
            self.splits.eval_name,
            cfg.optimizer,
            cfg.lr,
            cfg.batch_size,
            out.display()
        )
    }

    fn record(&self) -> Record {
        Record {
            sizes: self.sizes.clone(),
            vocab: None,
            standardizer: Some(self.splits.standardizer.clone()),
            model: self.spec.clone(),
        }
    }

    fn evaluate(&self, _cfg: &RunConfig, store: &ParamStore<f32>) -> anyhow::Result<Evaluation> {
        let (loss, accuracy) = evaluate(self.model.as_ref(), store, &self.splits.val)?;
        Ok(Evaluation::Classes {
            loss,
            accuracy,
            samples: self.splits.val.len(),
            split: self.splits.eval_name,
        })
    }

    fn curvature<'a>(
        &'a self,
        _cfg: &'a RunConfig,
        store: &'a ParamStore<f32>,
        limit: usize,
    ) -> anyhow::Result<CurvatureLoss<'a>> {
        // the first `limit` training samples, all at once
        let n = self.splits.train.len().min(limit);
        let rows: Vec<usize> = (0..n).collect();
        let (x, y) = gather_batch(&self.splits.train, &rows);
        let hv = move |v: &[Tensor<f32>]| -> chainrule::Result<Vec<Tensor<f32>>> {
            let tape = Tape::forward_mode();
            let p = store.duals(&tape, v)?;
            let logits =
                self.model
                    .logits(&p, tape.constant(x.clone()), &mut ForwardCtx::eval())?;
            let loss = cross_entropy(logits, &y)?;
            tape.backward_tangents(loss, p.vars())
        };
        Ok(CurvatureLoss {
            hv: Box::new(hv),
            samples: n,
            over: format!("mean cross-entropy over the first {n} training samples"),
        })
    }
}
