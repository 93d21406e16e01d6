//! PyTorch's weights in chainrule: a 2-layer LSTM that PyTorch saved as safetensors under
//! its own parameter names (`torch.nn.LSTM`, batch-first, float64; the file also holds
//! the input PyTorch ran it on and what it computed: tests/fixtures/recurrent), loaded
//! into chainrule's `Lstm` unchanged and run on the same input.
//! `cargo run --release --example pytorch_weights`
use chainrule::nn::{Lstm, ParamStore, load_tensors};
use chainrule::{Error, Result, Tape, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn main() -> Result<()> {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recurrent/lstm.safetensors");
    // the same layers as PyTorch's `nn.LSTM(5, 7, num_layers=2, batch_first=True)`
    let mut store = ParamStore::<f64>::new();
    let lstm = Lstm::new(&mut store, "", 5, 7, 2, &mut chainrule::nn::rng(0))?;
    store.load_safetensors(&file)?; // weight_ih_l0, weight_hh_l0, bias_ih_l0, ... by name
    for (_, name, value) in store.iter() {
        println!("{name:<14} {:?}", value.shape());
    }

    // PyTorch's input and initial state, and its outputs
    let (tensors, _) = load_tensors::<f64>(&file)?;
    let torch: HashMap<String, Tensor<f64>> = tensors.into_iter().collect();
    let tape = Tape::new();
    let p = store.leaves(&tape);
    let [x, h0, c0] = ["x", "h0", "c0"].map(|k| tape.constant(torch[k].clone()));
    let (y, h_n, c_n) = lstm.forward(&p, x, Some((h0, c0)))?;
    let mut worst = 0f64;
    for (name, ours) in [("y", y), ("h_n", h_n), ("c_n", c_n)] {
        let theirs = &torch[name];
        let scale = theirs.data().iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let err = ours.value().max_abs_diff(theirs)? / scale;
        println!(
            "{name:<4} {:?}: max relative difference from PyTorch {err:.1e}",
            theirs.shape()
        );
        worst = worst.max(err);
    }
    if worst.is_nan() || worst > 1e-10 {
        return Err(Error::invalid(
            "pytorch_weights",
            format!("differs from PyTorch by {worst:.1e}"),
        ));
    }
    Ok(())
}
