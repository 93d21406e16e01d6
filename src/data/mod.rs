//! Datasets for training: the UCI digits embedded in the binary, CSV files, MNIST IDX
//! files; seeded train/validation splits, standardisation with training statistics only,
//! and shuffled minibatches.

mod csv_file;
mod mnist;
mod text;

pub use csv_file::{LabelColumn, load_csv, parse_csv};
pub use mnist::{IdxFile, MAX_IDX_BYTES, load_mnist, parse_idx, read_idx, split_from_idx};
pub use text::{EMBEDDED_TEXTS, Streams, TextCorpus, unigram_entropy};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::io::Read;

/// A classification dataset: one row of features per sample and a class index.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Features, `[n, d]`.
    pub features: Tensor<f32>,
    /// Class index of each sample.
    pub labels: Vec<usize>,
    /// Number of classes (labels are `0..num_classes`).
    pub num_classes: usize,
    /// Where it came from, for messages.
    pub name: String,
}

static DIGITS_GZ: &[u8] = include_bytes!("../../data/digits/digits.csv.gz");

impl Dataset {
    /// Builds a dataset, checking that rows and labels agree.
    pub fn new(
        features: Tensor<f32>,
        labels: Vec<usize>,
        num_classes: usize,
        name: impl Into<String>,
    ) -> Result<Self> {
        let name = name.into();
        if features.ndim() != 2 || features.shape()[0] != labels.len() {
            return Err(Error::Parse {
                line: None,
                path: name,
                msg: format!(
                    "features of shape {:?} do not match {} labels",
                    features.shape(),
                    labels.len()
                ),
            });
        }
        if features.shape()[0] == 0 {
            return Err(Error::Parse {
                line: None,
                path: name,
                msg: "the dataset is empty".into(),
            });
        }
        if features.shape()[1] == 0 {
            return Err(Error::Parse {
                line: None,
                path: name,
                msg: "the samples have no features".into(),
            });
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= num_classes) {
            return Err(Error::Parse {
                line: None,
                path: name,
                msg: format!("label {bad} is not below the class count {num_classes}"),
            });
        }
        Ok(Dataset {
            features,
            labels,
            num_classes,
            name,
        })
    }

    /// The UCI optical digits (1797 8×8 images, pixel values 0..16), embedded in the binary.
    pub fn digits() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_GZ)
            .read_to_string(&mut text)
            .map_err(|e| Error::Parse {
                line: None,
                path: "embedded digits".into(),
                msg: e.to_string(),
            })?;
        let reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        csv_file::parse_records(reader, "embedded digits", &LabelColumn::Last)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of features per sample.
    pub fn dim(&self) -> usize {
        self.features.shape()[1]
    }

    /// The samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            features: self
                .features
                .index_select(0, idx)
                .expect("indices come from 0..len"),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
            name: self.name.clone(),
        }
    }

    /// A seeded shuffle split into (train, validation) with `val_fraction` of the samples
    /// (at least one) held out.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::invalid(
                "split",
                format!("validation fraction {val_fraction} is not in [0, 1)"),
            ));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let n_val = ((self.len() as f64 * val_fraction).round() as usize)
            .clamp(1, self.len().saturating_sub(1).max(1));
        if self.len() < 2 {
            return Err(Error::Parse {
                line: None,
                path: self.name.clone(),
                msg: "a split needs at least 2 samples".into(),
            });
        }
        let (val, train) = idx.split_at(n_val);
        Ok((self.subset(train), self.subset(val)))
    }
}

/// Per-feature mean and standard deviation, fitted on the training split only.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Standard deviation of each feature (1 where a feature is constant).
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Statistics of `train`'s features.
    pub fn fit(train: &Dataset) -> Self {
        let (n, d) = (train.len(), train.dim());
        let x = train.features.data();
        let mut mean = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for row in x.chunks_exact(d) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
        let mut std = vec![0f32; d];
        for j in 0..d {
            mean[j] /= n as f64;
            let var = (sq[j] / n as f64 - mean[j] * mean[j]).max(0.0);
            std[j] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        }
        Standardizer {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// One mean and standard deviation over all features of `train`, repeated per
    /// feature: for images, where per-pixel statistics would blow up near-constant
    /// border pixels.
    pub fn fit_global(train: &Dataset) -> Self {
        let x = train.features.data();
        let n = x.len().max(1) as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let std = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        Standardizer {
            mean: vec![mean as f32; train.dim()],
            std: vec![std; train.dim()],
        }
    }

    /// Checks that these statistics fit data of `dim` features (they may come from a
    /// checkpoint file): one mean and one positive, finite deviation per feature.
    pub fn check(&self, dim: usize) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Parse {
                line: None,
                path: "checkpoint".into(),
                msg,
            })
        };
        if self.mean.len() != dim || self.std.len() != dim {
            return bad(format!(
                "the checkpoint's model expects {} features, the data has {dim}",
                self.mean.len()
            ));
        }
        if let Some(j) = (0..dim)
            .find(|&j| !(self.mean[j].is_finite() && self.std[j].is_finite() && self.std[j] > 0.0))
        {
            return bad(format!(
                "feature {j}'s statistics (mean {}, deviation {}) are not usable",
                self.mean[j], self.std[j]
            ));
        }
        Ok(())
    }

    /// `(x − mean) / std`, feature by feature; an error when the statistics do not fit
    /// the data's features (see [`check`](Self::check)).
    pub fn apply(&self, ds: &Dataset) -> Result<Dataset> {
        if self.mean.len() != ds.dim() || self.std.len() != ds.dim() {
            return Err(Error::Parse {
                line: None,
                path: ds.name.clone(),
                msg: format!(
                    "{} features, the standardiser was fitted on {}",
                    ds.dim(),
                    self.mean.len()
                ),
            });
        }
        let d = ds.dim();
        let mut f = ds.features.clone();
        for row in f.data_mut().chunks_exact_mut(d) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - self.mean[j]) / self.std[j];
            }
        }
        Ok(Dataset {
            features: f,
            ..ds.clone()
        })
    }
}

/// The sample order of one epoch: a permutation of `0..n` determined by `(seed, epoch)`,
/// so a resumed run sees the same batches as an uninterrupted one.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let stream = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(stream));
    idx
}

/// Copies the rows `idx` of `ds` into a batch `([len, d], labels)`.
pub fn gather_batch(ds: &Dataset, idx: &[usize]) -> (Tensor<f32>, Vec<usize>) {
    (
        ds.features
            .index_select(0, idx)
            .expect("indices come from 0..len"),
        idx.iter().map(|&i| ds.labels[i]).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_have_the_documented_shape_and_counts() {
        let d = Dataset::digits().unwrap();
        assert_eq!(d.features.shape(), &[1797, 64]);
        assert_eq!(d.num_classes, 10);
        let mut counts = [0; 10];
        for &l in &d.labels {
            counts[l] += 1;
        }
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        assert!(d.features.data().iter().all(|&v| (0.0..=16.0).contains(&v)));
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        // rows made unique by their index, so a row's features say where it came from
        let n = 50;
        let d = Dataset::new(
            Tensor::from_vec((0..n * 2).map(|v| v as f32).collect(), &[n, 2]).unwrap(),
            (0..n).map(|i| i % 3).collect(),
            3,
            "rows",
        )
        .unwrap();
        let origin = |ds: &Dataset| -> Vec<usize> {
            ds.features
                .data()
                .chunks_exact(2)
                .map(|r| r[0] as usize / 2)
                .collect()
        };
        let (a, b) = d.split(0.2, 1).unwrap();
        let (a2, b2) = d.split(0.2, 1).unwrap();
        assert_eq!((origin(&a), origin(&b)), (origin(&a2), origin(&b2)));
        assert_eq!(b.len(), 10);
        // disjoint, and together every row exactly once, each with its own label
        let mut all: Vec<usize> = origin(&a).into_iter().chain(origin(&b)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        for ds in [&a, &b] {
            for (i, &l) in origin(ds).iter().zip(&ds.labels) {
                assert_eq!(l, i % 3);
            }
        }
        // another seed gives another split
        assert_ne!(origin(&d.split(0.2, 2).unwrap().1), origin(&b));
        let digits = Dataset::digits().unwrap();
        let (t, v) = digits.split(0.2, 1).unwrap();
        assert_eq!((t.len(), v.len()), (1438, 359));
    }

    #[test]
    fn standardizer_uses_training_statistics() {
        // train rows have mean (2, 10) and deviation (1, 0: constant); validation rows differ
        let train = Dataset::new(
            Tensor::from_vec(vec![1.0, 10.0, 3.0, 10.0, 1.0, 10.0, 3.0, 10.0], &[4, 2]).unwrap(),
            vec![0, 1, 0, 1],
            2,
            "train",
        )
        .unwrap();
        let val = Dataset::new(
            Tensor::from_vec(vec![5.0, 12.0, 7.0, 8.0], &[2, 2]).unwrap(),
            vec![0, 1],
            2,
            "val",
        )
        .unwrap();
        let s = Standardizer::fit(&train);
        assert_eq!(s.mean, vec![2.0, 10.0]);
        assert_eq!(s.std, vec![1.0, 1.0]); // a constant feature is left unscaled
        assert_eq!(
            s.apply(&train).unwrap().features.data(),
            &[-1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0]
        );
        // the validation split is transformed with the training statistics, not its own
        // (its own would give [-1, 1, 1, -1])
        assert_eq!(
            s.apply(&val).unwrap().features.data(),
            &[3.0, 2.0, 5.0, -2.0]
        );
        let g = Standardizer::fit_global(&train);
        assert_eq!(g.mean, vec![6.0, 6.0]);
        assert!((g.std[0] - 16.5f32.sqrt()).abs() < 1e-6, "{:?}", g.std);
    }

    #[test]
    fn epoch_orders_differ_by_epoch_and_repeat_by_seed() {
        let order = epoch_order(50, 3, 1);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "not a permutation");
        assert_ne!(order, sorted, "not shuffled");
        assert_eq!(order, epoch_order(50, 3, 1));
        assert_ne!(order, epoch_order(50, 3, 2));
        assert_ne!(order, epoch_order(50, 4, 1));
    }
}
