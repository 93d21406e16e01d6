//! A sequence classifier: a recurrent stack reads a sequence of feature vectors and a
//! linear head classifies its final hidden state. Each sample is one row of a
//! [`crate::data::Dataset`] (`steps · features` numbers, step by step), so sequence tasks
//! train through [`crate::train::Classification`] like any other classifier.

use super::layers::{Classifier, ForwardCtx, Init, Linear};
use super::recurrent::Recurrent;
use super::store::{ParamStore, Params};
use crate::autodiff::{CellKind, Var};
use crate::error::{Error, Result};
use crate::tensor::Element;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A recurrent stack over `steps` steps of `features` inputs, then `Linear(hidden →
/// classes)` on the last layer's final state.
#[derive(Clone, Debug)]
pub struct SequenceClassifier {
    /// The recurrent stack (parameters `rnn.*`, `gru.*` or `lstm.*`).
    pub rnn: Recurrent,
    /// The head (`out.weight`, `out.bias`).
    pub head: Linear,
    /// Steps per sequence.
    pub steps: usize,
    /// Features per step.
    pub features: usize,
}

impl SequenceClassifier {
    /// Adds the parameters to `store`, drawn from `rng` (PyTorch's initialisations: the
    /// recurrent weights from U(−1/√H, 1/√H), the head's as `nn.Linear`'s).
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        kind: CellKind,
        (steps, features): (usize, usize),
        hidden: usize,
        classes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        if steps == 0 || classes < 2 {
            return Err(Error::invalid(
                "SequenceClassifier::new",
                format!(
                    "needs at least one step and two classes (got {steps} steps, {classes} classes)"
                ),
            ));
        }
        let prefix = match kind {
            CellKind::Rnn => "rnn",
            CellKind::Gru => "gru",
            CellKind::Lstm => "lstm",
        };
        let rnn = Recurrent::new(
            store,
            kind,
            prefix,
            features,
            hidden,
            1,
            &mut super::rng(rng.random()),
        )?;
        let head = Linear::new(store, "out", hidden, classes, Init::TorchDefault, rng)?;
        Ok(SequenceClassifier {
            rnn,
            head,
            steps,
            features,
        })
    }
}

impl<T: Element> Classifier<T> for SequenceClassifier {
    /// `x: [batch, steps · features]`, step `t` of sample `b` in
    /// `x[b, t·features .. (t+1)·features]`.
    fn logits<'t>(
        &self,
        p: &Params<'t, T>,
        x: Var<'t, T>,
        _ctx: &mut ForwardCtx,
    ) -> Result<Var<'t, T>> {
        let shape = x.shape();
        if shape.len() != 2 || shape[1] != self.steps * self.features {
            return Err(Error::invalid(
                "SequenceClassifier::logits",
                format!(
                    "the input has shape {shape:?}, expected [batch, {} steps × {} features]",
                    self.steps, self.features
                ),
            ));
        }
        let batch = shape[0];
        let x = x.reshape(&[batch, self.steps, self.features])?;
        let out = self.rnn.forward(p, x, None, None)?;
        // h_n is [layers, batch, hidden]: the last layer's final state
        let layers = self.rnn.num_layers();
        let last = out
            .h_n
            .reshape(&[layers * batch, self.rnn.hidden_size])?
            .index_select(
                0,
                &((layers - 1) * batch..layers * batch).collect::<Vec<_>>(),
            )?;
        self.head.forward(p, last)
    }

    fn replay_graph(&self) -> Option<String> {
        Some(format!(
            "sequence {:?} {} steps × {} features, hidden {}",
            self.rnn.kind, self.steps, self.features, self.rnn.hidden_size
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::Tape;
    use crate::nn::cross_entropy;
    use crate::tensor::Tensor;

    #[test]
    fn classifies_the_final_state_and_refuses_a_wrong_width() {
        let mut store = ParamStore::<f64>::new();
        let model = SequenceClassifier::new(
            &mut store,
            CellKind::Rnn,
            (5, 3),
            4,
            2,
            &mut crate::nn::rng(7),
        )
        .unwrap();
        let x = Tensor::<f64>::randn(&[6, 15], 1).unwrap();
        let tape = Tape::new();
        let p = store.leaves(&tape);
        let logits = model
            .logits(&p, tape.constant(x.clone()), &mut ForwardCtx::eval())
            .unwrap();
        assert_eq!(logits.shape()[..], [6, 2]);
        // the same numbers without a tape
        let inferred = model.infer(&store, &x).unwrap();
        assert_eq!(inferred.data(), logits.value().data());
        // every parameter gets a gradient, the recurrent weights through all five steps
        let loss = cross_entropy(logits, &[0, 1, 0, 1, 1, 0]).unwrap();
        let mut g = tape.backward(loss).unwrap();
        let grads = p.grads(&mut g).unwrap();
        assert!(grads.iter().all(|g| g.is_some()));
        // the final state depends on the first step's input: change it, the logits move
        let mut moved = x.clone();
        moved.data_mut()[0] += 1.0;
        let other = model.infer(&store, &moved).unwrap();
        assert_ne!(other.data()[..2], inferred.data()[..2]);
        let err = model
            .infer(&store, &Tensor::zeros(&[6, 14]).unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected [batch, 5 steps × 3 features]")
        );
    }
}
