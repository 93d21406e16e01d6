//! The entry points of the fuzz targets (`fuzz/`, run with cargo-fuzz) and of the tests
//! that replay their corpora under `cargo test`: each feeds arbitrary bytes to one loader
//! the way the command-line program does. Any panic, overflow or unbounded allocation is
//! a bug; an `Err` is the expected answer to bad input.

use chainrule::data::{LabelColumn, Standardizer, parse_csv, parse_idx, split_from_idx};
use chainrule::nn::{Activation, Init, Mlp, ParamStore};
use chainrule::optim::OptimizerKind;
use chainrule::tensor::Tensor;
use chainrule::train::Checkpoint;
use std::collections::BTreeMap;
use std::io::Write;

/// The CSV loader; the first byte picks the label column (last, an index or a name).
pub fn csv(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let label = match pick % 4 {
        0 => LabelColumn::Last,
        1 => LabelColumn::Index(usize::from(pick / 4)),
        2 => LabelColumn::Name("y".into()),
        _ => LabelColumn::Index(usize::MAX),
    };
    if let Ok(ds) = parse_csv(text, "fuzz.csv", &label) {
        // what training does next with a loaded file
        let _ = ds.split(0.2, 0);
    }
}

/// The MNIST loader: the first byte chooses raw bytes or gzip (bit 0), the next two
/// where the rest is cut into an image file and a label file. Each is parsed as an IDX
/// file; when both parse, they become a split as `load_mnist` makes one, which is then
/// standardised with per-feature and global statistics, as training does.
pub fn idx(data: &[u8]) {
    let [pick, hi, lo, rest @ ..] = data else {
        return;
    };
    let compress = |bytes: &[u8]| {
        if pick & 1 == 0 {
            bytes.to_vec()
        } else {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(bytes).expect("writes to memory");
            gz.finish().expect("writes to memory")
        }
    };
    let cut = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
    let (images, labels) = rest.split_at(cut);
    let images = parse_idx(compress(images), "fuzz-images");
    let labels = parse_idx(compress(labels), "fuzz-labels");
    let (Ok(images), Ok(labels)) = (images, labels) else {
        return;
    };
    let Ok(split) = split_from_idx((images, "fuzz-images"), (labels, "fuzz-labels"), "fuzz") else {
        return;
    };
    for s in [Standardizer::fit(&split), Standardizer::fit_global(&split)] {
        let _ = s.apply(&split);
    }
}

/// Checkpoint loading, then what `eval` and `--resume` do with it: size the model from
/// the metadata, build it, restore its parameters.
pub fn checkpoint(data: &[u8]) {
    let Ok(ckpt) = Checkpoint::from_bytes(data, "fuzz.safetensors") else {
        return;
    };
    let sizes = ckpt.meta.sizes.clone();
    if ckpt.check_sizes(&sizes).is_err() {
        return;
    }
    // what loading the data does with the saved feature statistics
    if let (Some(s), Some(&dim)) = (&ckpt.meta.standardizer, sizes.first())
        && s.check(dim).is_ok()
        && let Ok(features) = Tensor::from_vec(vec![0.5; dim], &[1, dim])
        && let Ok(ds) = chainrule::data::Dataset::new(features, vec![0], 1, "fuzz")
    {
        let _ = s.apply(&ds);
    }
    let mut store = ParamStore::<f32>::new();
    if Mlp::new(
        &mut store,
        &sizes,
        Activation::Relu,
        Init::HeUniform,
        &mut chainrule::nn::rng(0),
    )
    .is_ok()
        && ckpt.restore_params(&mut store).is_ok()
    {
        let _ = ckpt.best_weights(&store);
        // the optimizer state, as `--resume` restores it, then one step on it
        let (state, steps) = ckpt.optimizer.clone();
        let mut opt = OptimizerKind::Adam
            .build::<f32>(1e-3, None)
            .expect("a valid rate");
        if opt.load_state(state, steps, &store).is_ok() {
            let grads: Vec<Option<Tensor<f32>>> = store
                .iter()
                .map(|(_, _, t)| Tensor::ones(t.shape()).ok())
                .collect();
            let _ = opt.step(&mut store, &grads);
        }
    }
}

/// The text corpus loader and its truncated-BPTT windows; the first two bytes pick the
/// batch and window sizes, the rest is the text (no cargo-fuzz target yet: proptest only).
pub fn text(data: &[u8]) {
    let [b, s, rest @ ..] = data else {
        return;
    };
    let Ok(corpus) = chainrule::data::TextCorpus::from_bytes(rest, "fuzz.txt") else {
        return;
    };
    let _ = corpus.encode("ab\n");
    let _ = corpus.decode(corpus.val());
    if let Ok(streams) =
        chainrule::data::Streams::new(corpus.train(), usize::from(*b % 5), usize::from(*s % 9))
    {
        for k in 0..=streams.windows() {
            let _ = streams.window(k);
        }
    }
}

/// `chainrule explain`'s parser and walk, with every variable set to 0.5.
pub fn explain(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = chainrule::explain::parse(text) else {
        return;
    };
    let at: BTreeMap<String, f64> = expr.variables().into_iter().map(|v| (v, 0.5)).collect();
    if let Ok(walk) = chainrule::explain::explain(text, &at) {
        let _ = walk.render(Some(50));
        let _ = walk.to_dot();
    }
}
