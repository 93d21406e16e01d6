//! A character-level language model: an embedding, a recurrent stack and a linear head
//! that scores the next character. Windows run time-major (row `t·B + b` is step `t` of
//! stream `b`), so the embeddings are gathered in the order the recurrent stack reads
//! them and its outputs feed the head without a transposition.

use super::layers::{Embedding, Init, Linear};
use super::recurrent::Recurrent;
use super::store::{ParamStore, Params};
use crate::autodiff::{CellKind, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Embedding → recurrent stack → linear head over a vocabulary.
///
/// The embedding table is updated densely by the optimizer even though a window touches
/// only the rows of the characters it holds: a character vocabulary is small (73 × 64
/// values for the tragedies, under 1% of the model), so a sparse update would save
/// nothing measurable, and Adam's moments stay those of PyTorch's dense `nn.Embedding`.
#[derive(Clone, Debug)]
pub struct CharModel {
    /// `emb.weight: [vocab, embed]`.
    pub embedding: Embedding,
    /// The recurrent stack, parameters under `rnn.` / `gru.` / `lstm.`.
    pub rnn: Recurrent,
    /// `out.weight: [hidden, vocab]`, `out.bias: [vocab]`.
    pub head: Linear,
    /// Vocabulary size.
    pub vocab: usize,
    /// Embedding width.
    pub embed: usize,
}

/// The state a character model carries between windows: `h` (and `c` for an LSTM),
/// each `[layers, batch, hidden]`.
#[derive(Clone, Debug)]
pub struct CarriedState {
    /// Hidden state.
    pub h: Tensor<f32>,
    /// Cell state (LSTM only).
    pub c: Option<Tensor<f32>>,
}

/// What a forward pass over a window returns.
pub struct WindowOutput<'t> {
    /// Scores `[T·B, vocab]`, time-major.
    pub logits: Var<'t, f32>,
    /// The state after the window, detached (values only).
    pub state: CarriedState,
}

impl CharModel {
    /// Number of parameter values of such a model (`None` on overflow), to check a
    /// checkpoint before building one.
    pub fn param_count(
        kind: CellKind,
        vocab: usize,
        embed: usize,
        hidden: usize,
        layers: usize,
    ) -> Option<usize> {
        let gh = kind.gates().checked_mul(hidden)?;
        // layer 0 reads the embedding, the others the layer below: in closed form, so
        // that a hostile layer count cannot make this loop
        let first = gh.checked_mul(embed.checked_add(hidden)?.checked_add(2)?)?;
        let rest = gh
            .checked_mul(hidden.checked_mul(2)?.checked_add(2)?)?
            .checked_mul(layers.checked_sub(1)?)?;
        vocab
            .checked_mul(embed)?
            .checked_add(first)?
            .checked_add(rest)?
            .checked_add(hidden.checked_add(1)?.checked_mul(vocab)?)
    }

    /// A model with PyTorch's default initialisation: embedding N(0, 1), recurrent and
    /// head weights U(±1/√fan_in).
    pub fn new(
        store: &mut ParamStore<f32>,
        kind: CellKind,
        vocab: usize,
        embed: usize,
        hidden: usize,
        layers: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        if vocab < 2 || embed == 0 {
            return Err(Error::invalid(
                "CharModel::new",
                format!(
                    "needs a vocabulary of at least 2 and a positive embedding size (got {vocab} and {embed})"
                ),
            ));
        }
        let embedding = Embedding::new(store, "emb", vocab, embed, rng)?;
        let prefix = match kind {
            CellKind::Rnn => "rnn",
            CellKind::Gru => "gru",
            CellKind::Lstm => "lstm",
        };
        let rnn = Recurrent::new(
            store,
            kind,
            prefix,
            embed,
            hidden,
            layers,
            &mut super::rng(rng.random()),
        )?;
        let head = Linear::new(store, "out", hidden, vocab, Init::TorchDefault, rng)?;
        Ok(CharModel {
            embedding,
            rnn,
            head,
            vocab,
            embed,
        })
    }

    /// Runs a window of `ids` (time-major, `T·bsz` of them) from `state` (zeros when
    /// absent) and returns the scores of the next character at every position.
    pub fn forward<'t>(
        &self,
        p: &Params<'t, f32>,
        ids: &[usize],
        bsz: usize,
        state: Option<&CarriedState>,
    ) -> Result<WindowOutput<'t>> {
        if let Some(&bad) = ids.iter().find(|&&i| i >= self.vocab) {
            return Err(Error::invalid(
                "CharModel::forward",
                format!("id {bad} is outside the vocabulary of {}", self.vocab),
            ));
        }
        let tape = p.tape();
        let x = self.embedding.forward(p, ids)?;
        let (h0, c0) = match state {
            Some(s) => (
                Some(tape.constant(s.h.clone())),
                s.c.clone().map(|c| tape.constant(c)),
            ),
            None => (None, None),
        };
        let o = self.rnn.forward_time_major(p, x, bsz, h0, c0)?;
        let logits = self.head.forward(p, o.y)?;
        Ok(WindowOutput {
            logits,
            state: CarriedState {
                h: o.h_n.value().clone(),
                c: o.c_n.map(|c| c.value().clone()),
            },
        })
    }

    /// Generates `length` ids after `prompt` (at least one id): the prompt is read, then
    /// each next id is drawn from the softmax of the scores divided by `temperature`,
    /// restricted to the `top_k` most likely ids (`None`: all); a temperature of 0 picks
    /// the most likely id (greedy). Deterministic for a given `seed`.
    pub fn sample(
        &self,
        store: &ParamStore<f32>,
        prompt: &[usize],
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    ) -> Result<Vec<usize>> {
        let mut sampler = Sampler::new(prompt, temperature, top_k, seed)?;
        let mut tape = Tape::<f32>::new();
        let mut state: Option<CarriedState> = None;
        let mut out = Vec::with_capacity(length.min(1 << 16));
        let mut input: Vec<usize> = prompt.to_vec();
        while out.len() < length {
            let scores = tape.no_grad(|| -> Result<Vec<f32>> {
                let p = store.leaves(&tape);
                let o = self.forward(&p, &input, 1, state.as_ref())?;
                state = Some(o.state);
                let v = o.logits.value();
                Ok(v.data()[v.len() - self.vocab..].to_vec())
            })?;
            tape.clear();
            let next = sampler.next(&scores, out.len())?;
            out.push(next);
            input = vec![next];
        }
        Ok(out)
    }
}

/// The draws of `sample` (a character model's or a GPT's): its settings, checked once,
/// and its seeded generator.
pub(crate) struct Sampler {
    rng: ChaCha8Rng,
    temperature: f64,
    top_k: Option<usize>,
}

impl Sampler {
    /// Checks the settings: a prompt of at least one id, a finite temperature ≥ 0 and a
    /// top-k of at least 1.
    pub(crate) fn new(
        prompt: &[usize],
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::invalid("sample", "the prompt is empty"));
        }
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::invalid(
                "sample",
                format!("the temperature must be a finite number ≥ 0, got {temperature}"),
            ));
        }
        if top_k == Some(0) {
            return Err(Error::invalid("sample", "top-k must be at least 1"));
        }
        Ok(Sampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
            temperature,
            top_k,
        })
    }

    /// The next id from a model's scores, after `generated` ids; an error when a score
    /// is not finite.
    pub(crate) fn next(&mut self, scores: &[f32], generated: usize) -> Result<usize> {
        if let Some(i) = scores.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "sample: the model's score of id {i} after {generated} generated ids is {} \
                 (the checkpoint's weights are not usable)",
                scores[i]
            )));
        }
        Ok(pick(scores, self.temperature, self.top_k, &mut self.rng))
    }
}

/// Draws an index from `softmax(scores / temperature)` over the `top_k` best scores
/// (ties broken by lower index); temperature 0 is the arg max. The scores are finite
/// (`sample` refuses others before it gets here).
fn pick(scores: &[f32], temperature: f64, top_k: Option<usize>, rng: &mut ChaCha8Rng) -> usize {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    if temperature == 0.0 {
        return order[0];
    }
    order.truncate(top_k.unwrap_or(order.len()).min(order.len()));
    let top = f64::from(scores[order[0]]);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(scores[i]) - top) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i;
        }
        u -= w;
    }
    order[order.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_count_matches_the_store() {
        for kind in [CellKind::Rnn, CellKind::Gru, CellKind::Lstm] {
            let mut store = ParamStore::new();
            CharModel::new(&mut store, kind, 7, 5, 6, 2, &mut crate::nn::rng(0)).unwrap();
            assert_eq!(
                CharModel::param_count(kind, 7, 5, 6, 2),
                Some(store.num_elements())
            );
        }
        assert_eq!(
            CharModel::param_count(CellKind::Lstm, 7, 5, usize::MAX / 2, 2),
            None
        );
    }

    #[test]
    fn greedy_and_top_k_sampling() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let scores = [0.1, 3.0, 2.0, -1.0];
        assert_eq!(pick(&scores, 0.0, None, &mut rng), 1);
        for _ in 0..100 {
            let i = pick(&scores, 1.0, Some(2), &mut rng);
            assert!(i == 1 || i == 2, "{i}");
        }
        assert_eq!(pick(&scores, 5.0, Some(1), &mut rng), 1);
    }

    #[test]
    fn sampling_is_seeded_and_stays_in_the_vocabulary() {
        let mut store = ParamStore::new();
        let m = CharModel::new(
            &mut store,
            CellKind::Lstm,
            9,
            4,
            8,
            2,
            &mut crate::nn::rng(3),
        )
        .unwrap();
        let a = m.sample(&store, &[1, 2, 3], 40, 0.8, Some(5), 7).unwrap();
        let b = m.sample(&store, &[1, 2, 3], 40, 0.8, Some(5), 7).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 40);
        assert!(a.iter().all(|&i| i < 9));
        assert!(m.sample(&store, &[1], 5, -1.0, None, 0).is_err());
        assert!(m.sample(&store, &[1], 5, f64::NAN, None, 0).is_err());
        assert!(m.sample(&store, &[1], 5, 1.0, Some(0), 0).is_err());
        assert!(m.sample(&store, &[], 5, 1.0, None, 0).is_err());
    }
}
