//! The transformer: layer normalisation, causal multi-head self-attention, a pre-norm
//! block with a 4× MLP, and a GPT-style character model (nanoGPT's). Weights keep
//! PyTorch's layouts and names (a `Linear` weight is `[out, in]`), so a state dict of the
//! equivalent PyTorch model, saved as safetensors, loads unchanged.

use super::layers::{Dropout, ForwardCtx, Linear};
use super::store::{ParamId, ParamStore, Params, join};
use crate::autodiff::{AttentionMask, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use rand_chacha::ChaCha8Rng;

/// PyTorch's `nn.LayerNorm` over the last axis: `weight` (ones) and `bias` (zeros), each
/// optional, `eps` 1e-5.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// `name.weight: [n]`, when affine.
    pub weight: Option<ParamId>,
    /// `name.bias: [n]`, when it has one.
    pub bias: Option<ParamId>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Adds `name.weight` (ones) and, with `bias`, `name.bias` (zeros) for rows of `n`.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        name: &str,
        n: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = Some(store.add(join(name, "weight"), Tensor::ones(&[n])?)?);
        let bias = match bias {
            true => Some(store.add(join(name, "bias"), Tensor::zeros(&[n])?)?),
            false => None,
        };
        Ok(LayerNorm {
            weight,
            bias,
            eps: 1e-5,
        })
    }

    /// Normalises each row of the last axis of `x`.
    pub fn forward<'t, T: Element>(&self, p: &Params<'t, T>, x: Var<'t, T>) -> Result<Var<'t, T>> {
        x.layer_norm(self.weight.map(|w| p[w]), self.bias.map(|b| p[b]), self.eps)
    }
}

/// Causal multi-head self-attention: one fused projection to queries, keys and values
/// (`qkv.weight: [3·D, D]`), `heads` heads of `D/heads`, and an output projection
/// (`proj.weight: [D, D]`).
#[derive(Clone, Debug)]
pub struct SelfAttention {
    /// The fused q, k, v projection.
    pub qkv: Linear,
    /// The output projection.
    pub proj: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl SelfAttention {
    /// Attention over `x: [B·T, D]` (rows `b·T + t`), causal within each sequence.
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        (bsz, t): (usize, usize),
    ) -> Result<Var<'t, T>> {
        let d = x.shape()[1];
        // one node reads the heads' q, k and v where the fused projection put them
        let qkv = self.qkv.forward(p, x)?.reshape(&[bsz, t, 3 * d])?;
        let y = qkv.self_attention(self.heads, &AttentionMask::Causal)?;
        self.proj.forward(p, y.reshape(&[bsz * t, d])?)
    }
}

/// A pre-norm transformer block: `x + attn(ln1(x))`, then `x + out(gelu(fc(ln2(x))))`
/// with a 4× wide MLP and exact (erf) GELU.
#[derive(Clone, Debug)]
pub struct Block {
    /// Norm before attention.
    pub ln1: LayerNorm,
    /// The attention (`qkv`, `proj` under the block's name).
    pub attn: SelfAttention,
    /// Norm before the MLP.
    pub ln2: LayerNorm,
    /// MLP input layer, `[4·D, D]`.
    pub fc: Linear,
    /// MLP output layer, `[D, 4·D]`.
    pub out: Linear,
}

impl Block {
    /// Adds a block's parameters under `name` (`ln1`, `qkv`, `proj`, `ln2`, `fc`, `out`)
    /// for width `d` and `heads` heads: weights N(0, 0.02²), the two projections into the
    /// residual stream (`proj`, `out`) N(0, residual_std²).
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        name: &str,
        (d, heads): (usize, usize),
        bias: bool,
        residual_std: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let part = |p: &str| join(name, p);
        let ln1 = LayerNorm::new(store, &part("ln1"), d, bias)?;
        let qkv = Linear::normal(store, &part("qkv"), (d, 3 * d), bias, 0.02, rng)?;
        let proj = Linear::normal(store, &part("proj"), (d, d), bias, residual_std, rng)?;
        let ln2 = LayerNorm::new(store, &part("ln2"), d, bias)?;
        let fc = Linear::normal(store, &part("fc"), (d, 4 * d), bias, 0.02, rng)?;
        let out = Linear::normal(store, &part("out"), (4 * d, d), bias, residual_std, rng)?;
        Ok(Block {
            ln1,
            attn: SelfAttention { qkv, proj, heads },
            ln2,
            fc,
            out,
        })
    }

    /// The block applied to `x: [B·T, D]`, dropout after each residual branch.
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        bt: (usize, usize),
        drop: Dropout,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        let a = self.attn.forward(p, self.ln1.forward(p, x)?, bt)?;
        let x = x.add(drop.forward(a, ctx)?)?;
        let m = self.fc.forward(p, self.ln2.forward(p, x)?)?.gelu();
        let m = self.out.forward(p, m)?;
        x.add(drop.forward(m, ctx)?)
    }
}

/// The shape of a GPT.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest context (rows of the position embedding).
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads (they divide `embed`).
    pub heads: usize,
    /// Width of the residual stream.
    pub embed: usize,
    /// Biases in the Linear layers and LayerNorms (nanoGPT's `bias`).
    pub bias: bool,
    /// The output head is the token embedding's transpose.
    pub tied: bool,
    /// Dropout after the embeddings and each residual branch.
    pub dropout: f64,
}

impl GptConfig {
    /// Checks the sizes: each positive, heads dividing the width, dropout in [0, 1).
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("GPT", msg));
        if self.vocab < 2 || self.context == 0 || self.layers == 0 || self.embed == 0 {
            return bad(format!(
                "needs a vocabulary of at least 2 and a positive context, depth and width (got {}, {}, {}, {})",
                self.vocab, self.context, self.layers, self.embed
            ));
        }
        if self.heads == 0 || !self.embed.is_multiple_of(self.heads) {
            return bad(format!(
                "{} heads do not divide a width of {}",
                self.heads, self.embed
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Number of parameter values (`None` on overflow), to check a checkpoint before a
    /// model is built.
    pub fn param_count(&self) -> Option<usize> {
        let (d, b) = (self.embed, usize::from(self.bias));
        let norm = d.checked_mul(1 + b)?;
        let block = norm
            .checked_mul(2)?
            .checked_add(d.checked_mul(d)?.checked_mul(12)?)?
            .checked_add(b.checked_mul(d.checked_mul(9)?)?)?;
        let head = if self.tied {
            0
        } else {
            self.vocab.checked_mul(d)?
        };
        self.vocab
            .checked_add(self.context)?
            .checked_mul(d)?
            .checked_add(block.checked_mul(self.layers)?)?
            .checked_add(norm)?
            .checked_add(head)
    }
}

/// A GPT-style character model: token and learned position embeddings (`wte`, `wpe`),
/// pre-norm blocks (`blocks.{i}.ln1`, `qkv`, `proj`, `ln2`, `fc`, `out`), a final
/// `ln_f`, and an output head that is the token embedding's transpose (tied) or its own
/// `head.weight: [vocab, embed]`.
#[derive(Clone, Debug)]
pub struct Gpt {
    /// Its shape.
    pub config: GptConfig,
    /// `wte.weight: [vocab, embed]`.
    pub wte: ParamId,
    /// `wpe.weight: [context, embed]`.
    pub wpe: ParamId,
    /// The blocks, input first.
    pub blocks: Vec<Block>,
    /// The final norm.
    pub ln_f: LayerNorm,
    /// The untied head.
    pub head: Option<Linear>,
}

impl Gpt {
    /// A model with GPT-2's initialisation: every Linear and Embedding weight N(0, 0.02²),
    /// the two projections into the residual stream of each block N(0, (0.02/√(2L))²),
    /// LayerNorm weights 1, biases 0.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        config: GptConfig,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        config.check()?;
        config
            .param_count()
            .filter(|&n| n <= crate::tensor::MAX_ELEMENTS)
            .ok_or_else(|| Error::invalid("GPT", "the model is too large"))?;
        let GptConfig {
            vocab,
            context,
            layers,
            heads,
            embed: d,
            bias,
            tied,
            ..
        } = config;
        let normal = |shape: &[usize], std: f64, rng: &mut ChaCha8Rng| -> Result<Tensor<T>> {
            Ok(Tensor::randn_with(shape, rng)?.mul_scalar(std))
        };
        let wte = store.add("wte.weight", normal(&[vocab, d], 0.02, rng)?)?;
        let wpe = store.add("wpe.weight", normal(&[context, d], 0.02, rng)?)?;
        let residual_std = 0.02 / (2.0 * layers as f64).sqrt();
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let name = format!("blocks.{i}");
            blocks.push(Block::new(
                store,
                &name,
                (d, heads),
                bias,
                residual_std,
                rng,
            )?);
        }
        let ln_f = LayerNorm::new(store, "ln_f", d, bias)?;
        let head = match tied {
            true => None,
            false => Some(Linear::normal(store, "head", (d, vocab), false, 0.02, rng)?),
        };
        Ok(Gpt {
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            head,
        })
    }

    /// Puts the parameters of `store` into nanoGPT's weight-decay groups: the 2-D
    /// weights (Linear layers, embeddings) decay, LayerNorm weights and biases do not.
    pub fn set_decay_groups<T: Element>(store: &mut ParamStore<T>) {
        for i in 0..store.len() {
            let id = ParamId(i);
            store.set_decay(id, store.get(id).ndim() >= 2);
        }
    }

    /// The next-character scores `[B·T, vocab]` for `ids`, `bsz` sequences of `t`
    /// characters each, row-major (`b·T + t`); `t` is at most the context.
    pub fn forward<'t, T: Element>(
        &self,
        p: &Params<'t, T>,
        ids: &[usize],
        bsz: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        let t = ids.len() / bsz.max(1);
        let c = &self.config;
        if bsz == 0 || t == 0 || t * bsz != ids.len() || t > c.context {
            return Err(Error::invalid(
                "GPT",
                format!(
                    "{} ids are not {bsz} sequences of 1 to {} characters",
                    ids.len(),
                    c.context
                ),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= c.vocab) {
            return Err(Error::invalid(
                "GPT",
                format!(
                    "character id {bad} is outside the vocabulary of {}",
                    c.vocab
                ),
            ));
        }
        let d = c.embed;
        let drop = Dropout { p: c.dropout };
        let tokens = p[self.wte].index_select(0, ids)?.reshape(&[bsz, t, d])?;
        let positions = p[self.wpe].narrow(0, 0, t)?;
        let x = tokens.add(positions)?.reshape(&[bsz * t, d])?;
        let mut x = drop.forward(x, ctx)?;
        for block in &self.blocks {
            x = block.forward(p, x, (bsz, t), drop, ctx)?;
        }
        let x = self.ln_f.forward(p, x)?;
        match &self.head {
            // the tied head reads the embedding table in place as its transpose
            None => x.matmul_in_layouts(p[self.wte], false, true),
            Some(h) => h.forward(p, x),
        }
    }
}

impl Gpt {
    /// Generates `length` ids after `prompt` (at least one id), each drawn from the
    /// softmax of the last position's scores divided by `temperature` among the `top_k`
    /// most likely (`None`: all; temperature 0 is greedy). The model reads at most its
    /// context: longer inputs are cropped to their last `context` ids. Deterministic for
    /// a given `seed`.
    pub fn sample(
        &self,
        store: &ParamStore<f32>,
        prompt: &[usize],
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    ) -> Result<Vec<usize>> {
        let mut sampler = super::language::Sampler::new(prompt, temperature, top_k, seed)?;
        let mut tape = crate::autodiff::Tape::<f32>::new();
        let mut ids: Vec<usize> = prompt.to_vec();
        let vocab = self.config.vocab;
        for _ in 0..length {
            let window = &ids[ids.len().saturating_sub(self.config.context)..];
            let scores = tape.no_grad(|| -> Result<Vec<f32>> {
                let p = store.leaves(&tape);
                let v = self
                    .forward(&p, window, 1, &mut ForwardCtx::eval())?
                    .value();
                Ok(v.data()[v.len() - vocab..].to_vec())
            })?;
            tape.clear();
            ids.push(sampler.next(&scores, ids.len() - prompt.len())?);
        }
        Ok(ids.split_off(prompt.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::{GradcheckOptions, Tape, gradcheck};
    use std::collections::HashMap;

    fn tiny(tied: bool, bias: bool) -> GptConfig {
        GptConfig {
            vocab: 7,
            context: 5,
            layers: 2,
            heads: 2,
            embed: 4,
            bias,
            tied,
            dropout: 0.0,
        }
    }

    #[test]
    fn parameter_names_shapes_and_count_follow_the_pytorch_model() {
        for (tied, bias) in [(true, false), (false, true)] {
            let mut store = ParamStore::<f64>::new();
            let cfg = tiny(tied, bias);
            Gpt::new(&mut store, cfg, &mut crate::nn::rng(0)).unwrap();
            assert_eq!(store.num_elements(), cfg.param_count().unwrap());
            let names: Vec<(String, Vec<usize>)> = store
                .iter()
                .map(|(_, n, t)| (n.to_string(), t.shape().to_vec()))
                .collect();
            assert_eq!(names[0], ("wte.weight".into(), vec![7, 4]));
            assert!(names.contains(&("blocks.1.qkv.weight".into(), vec![12, 4])));
            assert!(names.contains(&("blocks.0.out.weight".into(), vec![4, 16])));
            assert_eq!(names.iter().any(|(n, _)| n == "head.weight"), !tied);
            assert_eq!(names.iter().any(|(n, _)| n == "ln_f.bias"), bias);
        }
        assert!(
            Gpt::new(
                &mut ParamStore::<f32>::new(),
                GptConfig {
                    heads: 3,
                    ..tiny(true, false)
                },
                &mut crate::nn::rng(0)
            )
            .is_err()
        );
    }

    /// The loss of two sequences of four characters.
    fn tiny_loss<'t>(model: &Gpt, tape: &'t Tape<f64>, v: &[Var<'t, f64>]) -> Result<Var<'t, f64>> {
        let p = Params::from_vars(tape, v.to_vec());
        let logits = model.forward(&p, &[1, 4, 6, 0, 2, 3, 3, 5], 2, &mut ForwardCtx::eval())?;
        crate::nn::cross_entropy(logits, &[2, 1, 0, 6, 5, 4, 3, 2])
    }

    #[test]
    fn sampling_is_seeded_crops_the_context_and_stays_in_the_vocabulary() {
        let mut store = ParamStore::<f32>::new();
        let model = Gpt::new(&mut store, tiny(true, false), &mut crate::nn::rng(3)).unwrap();
        // a prompt longer than the context of 5 is cropped, not refused
        let a = model
            .sample(&store, &[1, 2, 3, 4, 5, 6, 0], 20, 0.8, Some(4), 7)
            .unwrap();
        let b = model
            .sample(&store, &[1, 2, 3, 4, 5, 6, 0], 20, 0.8, Some(4), 7)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.iter().all(|&i| i < 7));
        assert!(model.sample(&store, &[], 5, 1.0, None, 0).is_err());
        assert!(model.sample(&store, &[1], 5, -1.0, None, 0).is_err());
        assert!(model.sample(&store, &[9], 5, 1.0, None, 0).is_err());
    }

    #[test]
    fn the_whole_model_passes_the_gradient_check_in_f64() {
        for (tied, bias) in [(true, false), (false, true)] {
            let mut store = ParamStore::<f64>::new();
            let model = Gpt::new(&mut store, tiny(tied, bias), &mut crate::nn::rng(1)).unwrap();
            // larger weights than the initialisation's, so that every path matters
            let params: Vec<Tensor<f64>> = store
                .iter()
                .map(|(_, _, t)| t.mul_scalar(4.0).add_scalar(0.1))
                .collect();
            let opts = GradcheckOptions::default();
            let r = gradcheck(|tape, v| tiny_loss(&model, tape, v), &params, &opts).unwrap();
            assert!(r.passed(1e-6), "{r:?}");
        }
    }

    fn fixture(name: &str) -> (std::path::PathBuf, HashMap<String, Tensor<f64>>) {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/transformer")
            .join(format!("{name}.safetensors"));
        let (tensors, _) = crate::nn::load_tensors::<f64>(&path).unwrap();
        (path, tensors.into_iter().collect())
    }

    /// max |a − b| / max(max |b|, 1e-3); NaN for non-finite values or other shapes.
    fn rel_err(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
        if a.shape() != b.shape() || !a.all_finite() || !b.all_finite() {
            return f64::NAN;
        }
        let scale = b.data().iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        a.max_abs_diff(b).unwrap() / scale
    }

    /// Loads the parameters of a PyTorch-made fixture into `store` (unchanged names),
    /// runs `f` (output and loss) forward and backward in f64, and compares the output
    /// and every gradient within 1e-10 relative.
    fn matches_pytorch<F>(name: &str, mut store: ParamStore<f64>, f: F)
    where
        F: for<'t> Fn(
            &Params<'t, f64>,
            &HashMap<String, Tensor<f64>>,
            Option<Var<'t, f64>>,
        ) -> Result<(Var<'t, f64>, Var<'t, f64>)>,
    {
        let (path, fx) = fixture(name);
        store.load_safetensors(&path).unwrap();
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let x = fx.get("x").map(|x| tape.var(x.clone()));
        let (y, loss) = f(&p, &fx, x).unwrap();
        let mut checks = vec![("y".to_string(), y.value().reshape(fx["y"].shape()).unwrap())];
        let g = tape.backward(loss).unwrap();
        for (id, n, _) in store.iter() {
            checks.push((format!("grad.{n}"), g.wrt(p[id]).unwrap()));
        }
        if let Some(x) = x {
            checks.push(("grad.x".into(), g.wrt(x).unwrap()));
        }
        assert_eq!(
            checks.len(),
            fx.keys()
                .filter(|k| *k == "y" || k.starts_with("grad."))
                .count()
        );
        for (k, v) in checks {
            let e = rel_err(&v, &fx[&k]);
            assert!(e <= 1e-10, "{name}: {k} differs from PyTorch's by {e:e}");
        }
    }

    /// `sum(y·r)` of an output given as rows.
    fn weighted<'t>(y: Var<'t, f64>, r: &Tensor<f64>) -> Result<Var<'t, f64>> {
        let r = y.tape().constant(r.reshape(&y.shape())?);
        Ok(y.mul(r)?.sum_all())
    }

    #[test]
    fn each_layer_and_the_whole_model_reproduce_pytorch_in_f64() {
        let mut rng = crate::nn::rng(0);
        let mut store = ParamStore::new();
        let ln = LayerNorm::new(&mut store, "", 6, true).unwrap();
        matches_pytorch("layer_norm", store, |p, fx, x| {
            let y = ln.forward(p, x.unwrap())?;
            Ok((y, weighted(y, &fx["r"])?))
        });
        let mut store = ParamStore::new();
        let attn = SelfAttention {
            qkv: Linear::normal(&mut store, "qkv", (8, 24), true, 0.02, &mut rng).unwrap(),
            proj: Linear::normal(&mut store, "proj", (8, 8), true, 0.02, &mut rng).unwrap(),
            heads: 2,
        };
        matches_pytorch("attention", store, |p, fx, x| {
            let y = attn.forward(p, x.unwrap().reshape(&[10, 8])?, (2, 5))?;
            Ok((y, weighted(y, &fx["r"])?))
        });
        let mut store = ParamStore::new();
        let block = Block::new(&mut store, "", (8, 2), false, 0.02, &mut rng).unwrap();
        matches_pytorch("block", store, |p, fx, x| {
            let x = x.unwrap().reshape(&[10, 8])?;
            let y = block.forward(p, x, (2, 5), Dropout { p: 0.0 }, &mut ForwardCtx::eval())?;
            Ok((y, weighted(y, &fx["r"])?))
        });
        for (name, tied, bias) in [("gpt_tied", true, false), ("gpt_untied", false, true)] {
            let mut store = ParamStore::new();
            let cfg = GptConfig {
                vocab: 11,
                context: 6,
                layers: 2,
                heads: 2,
                embed: 8,
                bias,
                tied,
                dropout: 0.0,
            };
            let model = Gpt::new(&mut store, cfg, &mut crate::nn::rng(0)).unwrap();
            matches_pytorch(name, store, |p, fx, _| {
                let ids: Vec<usize> = fx["ids"].data().iter().map(|&v| v as usize).collect();
                let targets: Vec<usize> =
                    fx["targets"].data().iter().map(|&v| v as usize).collect();
                let y = model.forward(p, &ids, 2, &mut ForwardCtx::eval())?;
                let loss = crate::nn::cross_entropy(y, &targets)?.add(weighted(y, &fx["r"])?)?;
                Ok((y, loss))
            });
        }
    }
}
