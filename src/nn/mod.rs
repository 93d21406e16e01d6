//! Neural-network building blocks. Parameters live in a [`ParamStore`], outside any tape;
//! each step puts them on a fresh tape as leaves ([`ParamStore::leaves`]), the forward
//! pass records the graph, and the backward pass returns one gradient per parameter.

mod cnn;
mod conv;
mod language;
mod layers;
mod loss;
pub(crate) mod recurrent;
mod sequence;
pub(crate) mod store;
mod transformer;

pub use cnn::{Cnn, CnnConfig};
pub use conv::{AvgPool2d, Conv2d, Flatten, MaxPool2d};
pub use language::{CarriedState, CharModel, WindowOutput};
pub use layers::{Activation, Classifier, Dropout, Embedding, ForwardCtx, Init, Linear, Mlp};
pub use loss::{bce_with_logits, cross_entropy, cross_entropy_values, mse, mse_values};
pub use recurrent::{Gru, Lstm, Recurrent, RecurrentLayer, RecurrentOutput, Rnn};
pub use sequence::SequenceClassifier;
pub use store::{
    ParamId, ParamStore, Params, load_tensors, remove_stale_temporaries, save_tensors,
    tensors_from_bytes, write_atomically,
};
pub use transformer::{Block, Gpt, GptConfig, LayerNorm, SelfAttention};

/// The generator every constructor of a layer or a model draws its initial values from
/// (`Mlp::new(.., &mut nn::rng(seed))`, `Linear::new(.., &mut rng)`), and
/// [`ForwardCtx::rng`] its dropout masks: ChaCha8, re-exported so that a model of your
/// own needs no dependency of its own to build its layers. One generator passed through
/// a model's constructors draws every layer's values in turn, as `torch.manual_seed`
/// followed by the layers' constructors does.
pub use rand_chacha::ChaCha8Rng;

/// A [`ChaCha8Rng`] seeded with `seed`: the same seed, the same initial values.
pub fn rng(seed: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed)
}

/// max |a − b| / max(max |b|, 1e-3), for the fixture tests; NaN for non-finite values or
/// other shapes (so that a comparison with it fails).
#[cfg(test)]
pub(crate) fn rel_err(a: &crate::tensor::Tensor<f64>, b: &crate::tensor::Tensor<f64>) -> f64 {
    if a.shape() != b.shape() || !a.all_finite() || !b.all_finite() {
        return f64::NAN;
    }
    let scale = b.data().iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.max_abs_diff(b).unwrap() / scale
}
