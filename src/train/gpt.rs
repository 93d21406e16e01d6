//! A GPT character model as the loop sees it: each step trains on `B` windows of `T`
//! characters at offsets drawn uniformly from the training text (nanoGPT's batches), and
//! validation is the mean loss over every non-overlapping window of the validation text,
//! each read from an empty context. No state carries between steps, so every step of a
//! given shape replays one recording.

use super::objective::{BatchData, Evaluation, Goal, MetricSpec, Objective};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::{ForwardCtx, Gpt, ParamStore, Params, cross_entropy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Windows evaluated per forward pass. PyTorch's anchor evaluates 256 at a time, but its
/// `no_grad` frees each intermediate value as soon as it is used, where a tape under
/// `no_grad` keeps them until it is cleared: 256 windows of the W11 model held 715 MB.
const EVAL_WINDOWS: usize = 32;

/// Trains a [`Gpt`] on random windows of a text given as character ids.
pub struct GptLanguageModel<'a> {
    /// The model.
    pub model: &'a Gpt,
    train: &'a [u32],
    val: &'a [u32],
    /// Windows per step (the global batch).
    batch: usize,
    /// Characters per window.
    len: usize,
    /// Seed of the current epoch's windows.
    epoch_seed: u64,
    /// (rank, ranks) of a data-parallel run: this process trains its share of the windows.
    shard: (usize, usize),
}

impl<'a> GptLanguageModel<'a> {
    /// Trains `model` on `batch` windows of `len` characters of `train` per step,
    /// validating on `val`; each text needs more than `len` characters.
    pub fn new(
        model: &'a Gpt,
        train: &'a [u32],
        val: &'a [u32],
        batch: usize,
        len: usize,
    ) -> Result<Self> {
        if batch == 0 || len == 0 || len > model.config.context {
            return Err(Error::invalid(
                "GptLanguageModel",
                format!(
                    "windows of {len} characters, {batch} per step: each needs 1 to {} characters (the model's context) and a step at least one window",
                    model.config.context
                ),
            ));
        }
        for (what, ids) in [("training", train), ("validation", val)] {
            if ids.len() <= len + 1 {
                return Err(Error::invalid(
                    "GptLanguageModel",
                    format!(
                        "the {what} text ({} characters) is too short for windows of {len}",
                        ids.len()
                    ),
                ));
            }
        }
        Ok(GptLanguageModel {
            model,
            train,
            val,
            batch,
            len,
            epoch_seed: 0,
            shard: (0, 1),
        })
    }

    /// The inputs and targets (row-major `[windows, len]`) of this process's share of
    /// step `batch`: the offsets of all windows come from the epoch's seed and the step,
    /// so every process (and a resumed run) draws the same ones.
    fn windows(&self, batch: usize) -> (Vec<usize>, Vec<usize>, usize) {
        let seed = self.epoch_seed ^ (batch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let last = self.train.len() - self.len - 1;
        let offsets: Vec<usize> = (0..self.batch).map(|_| rng.random_range(0..last)).collect();
        let mine = &offsets[super::share(self.batch, self.shard.0, self.shard.1)];
        let ids = |shift: usize| -> Vec<usize> {
            mine.iter()
                .flat_map(|&o| {
                    self.train[o + shift..o + shift + self.len]
                        .iter()
                        .map(|&c| c as usize)
                })
                .collect()
        };
        (ids(0), ids(1), mine.len())
    }

    /// Mean loss (nats per character) over every non-overlapping window of `ids`, each
    /// from an empty context, and the number of characters it is over.
    pub fn loss_over(&self, store: &ParamStore<f32>, ids: &[u32]) -> Result<(f64, usize)> {
        let n = (ids.len() - 1) / self.len;
        let mut tape = Tape::new();
        let mut sum = 0.0;
        let mut start = 0;
        while start < n {
            let count = EVAL_WINDOWS.min(n - start);
            let span = start * self.len..(start + count) * self.len;
            let x: Vec<usize> = ids[span.clone()].iter().map(|&c| c as usize).collect();
            let y: Vec<usize> = ids[span.start + 1..span.end + 1]
                .iter()
                .map(|&c| c as usize)
                .collect();
            sum += tape.no_grad(|| -> Result<f64> {
                let p = store.leaves(&tape);
                let logits = self.model.forward(&p, &x, count, &mut ForwardCtx::eval())?;
                Ok(cross_entropy(logits, &y)?.item()? as f64 * y.len() as f64)
            })?;
            tape.clear();
            start += count;
        }
        Ok((sum / (n * self.len) as f64, n * self.len))
    }
}

impl Objective for GptLanguageModel<'_> {
    fn metric(&self) -> MetricSpec {
        MetricSpec {
            name: "loss".into(),
            goal: Goal::Minimize,
        }
    }
    /// An epoch is as many steps as it takes to draw, on average, every training
    /// character once.
    fn batches_per_epoch(&self) -> usize {
        (self.train.len() / (self.batch * self.len)).max(1)
    }
    fn start_epoch(&mut self, epoch: usize, seed: u64) -> Result<()> {
        self.epoch_seed = seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        Ok(())
    }
    fn batch_loss<'t>(
        &mut self,
        p: &Params<'t, f32>,
        batch: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<(Var<'t, f32>, usize)> {
        let (x, y, windows) = self.windows(batch);
        let logits = self.model.forward(p, &x, windows, ctx)?;
        Ok((cross_entropy(logits, &y)?, y.len()))
    }
    /// Replayed unless dropout draws new masks each step.
    fn batch_data(&mut self, batch: usize) -> Result<Option<BatchData>> {
        if self.model.config.dropout > 0.0 {
            return Ok(None);
        }
        let (x, y, windows) = self.windows(batch);
        Ok(Some(BatchData {
            graph: format!("gpt {windows}×{}", self.len),
            inputs: Vec::new(),
            samples: y.len(),
            indices: vec![x, y],
        }))
    }
    fn data_loss<'t>(
        &self,
        p: &Params<'t, f32>,
        _inputs: &[Var<'t, f32>],
        indices: &[Vec<usize>],
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, f32>> {
        let windows = indices[0].len() / self.len;
        let logits = self.model.forward(p, &indices[0], windows, ctx)?;
        cross_entropy(logits, &indices[1])
    }
    /// The whole validation text on every process (it is small beside training).
    fn evaluate(&self, store: &ParamStore<f32>) -> Result<Evaluation> {
        let (loss, samples) = self.loss_over(store, self.val)?;
        Ok(Evaluation {
            loss,
            metrics: vec![("bits_per_char".into(), loss / std::f64::consts::LN_2)],
            samples,
        })
    }
    fn shard(&mut self, rank: usize, ranks: usize) -> Result<()> {
        if ranks == 0 || rank >= ranks || self.batch < ranks {
            return Err(Error::invalid(
                "distributed training",
                format!(
                    "{ranks} processes cannot share {} windows a step (--batch-size): every process needs at least one",
                    self.batch
                ),
            ));
        }
        self.shard = (rank, ranks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::GptConfig;

    fn setup() -> (Gpt, ParamStore<f32>, Vec<u32>) {
        let mut store = ParamStore::new();
        let cfg = GptConfig {
            vocab: 5,
            context: 8,
            layers: 1,
            heads: 2,
            embed: 8,
            bias: false,
            tied: true,
            dropout: 0.0,
        };
        let model = Gpt::new(&mut store, cfg, &mut crate::nn::rng(0)).unwrap();
        let text: Vec<u32> = (0..300u32).map(|i| (i * 7 + i / 3) % 5).collect();
        (model, store, text)
    }

    #[test]
    fn windows_are_seeded_shifted_by_one_and_shared_across_processes() {
        let (model, _, text) = setup();
        let mut lm = GptLanguageModel::new(&model, &text[..250], &text[250..], 4, 8).unwrap();
        lm.start_epoch(0, 7).unwrap();
        let (x, y, n) = lm.windows(3);
        assert_eq!((x.len(), y.len(), n), (32, 32, 4));
        assert_eq!(lm.windows(3).0, x);
        assert_ne!(lm.windows(4).0, x);
        // each window's targets are its inputs shifted by one character of the text
        assert_eq!(&x[1..8], &y[..7]);
        // two processes split the same windows
        let mut halves = Vec::new();
        for rank in 0..2 {
            lm.shard(rank, 2).unwrap();
            halves.extend(lm.windows(3).0);
        }
        assert_eq!(halves, x);
        assert!(lm.shard(0, 5).is_err());
        assert!(GptLanguageModel::new(&model, &text, &text[..8], 4, 8).is_err());
        assert!(GptLanguageModel::new(&model, &text, &text, 4, 9).is_err());
    }

    #[test]
    fn validation_covers_every_whole_window_once() {
        let (model, store, text) = setup();
        let lm = GptLanguageModel::new(&model, &text[..250], &text[250..], 4, 8).unwrap();
        let (loss, n) = lm.loss_over(&store, &text[250..]).unwrap();
        assert_eq!(n, 48); // (50 − 1) / 8 = 6 windows
        // an untrained model is close to uniform over 5 characters
        assert!((loss - 5f64.ln()).abs() < 0.1, "{loss}");
    }
}
