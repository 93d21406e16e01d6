//! The convolutional network from the command line: training on the digits' 8×8 images,
//! evaluating, resuming and the curvature of its checkpoints, and the options it refuses.

use crate::common::{chainrule, eval_rows, json, metric_rows, stderr, temp};
use std::path::Path;

/// A small CNN on the digits: W12's shape with half its channels and widths.
fn train(out: &Path, epochs: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--data", "digits", "--model", "cnn"];
    args.extend([
        "--channels",
        "16,32",
        "--hidden",
        "64",
        "--batch-size",
        "32",
    ]);
    args.extend([
        "--max-epochs",
        epochs,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    args.extend(extra);
    let o = chainrule(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&o)
}

#[test]
fn a_cnn_learns_the_digits_evaluates_resumes_exactly_and_has_a_curvature() {
    let dir = temp("cnn-digits");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let whole = train(&a, "4", &[]);
    let accuracy = whole["final_val_metric"].as_f64().unwrap();
    assert!(accuracy > 0.93, "{whole}");
    assert_eq!(eval_rows(&a).len(), 4);
    // the recipe's schedule: Adadelta at 1.0, ×0.7 after each epoch
    let lrs: Vec<f64> = eval_rows(&a)
        .iter()
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert!((lrs[3] - 0.7f64.powi(3)).abs() < 1e-9, "{lrs:?}");
    // eval recomputes the last accuracy from the checkpoint
    let o = chainrule(&["eval", "--checkpoint", a.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["accuracy"], whole["final_val_metric"]);
    // a run stopped after 2 epochs and resumed to 4 is the whole run (dropout included)
    train(&b, "2", &[]);
    let resumed = train(&b, "4", &["--resume", b.to_str().unwrap()]);
    assert_eq!(metric_rows(&a), metric_rows(&b));
    assert_eq!(whole["final_val_metric"], resumed["final_val_metric"]);
    // H·v through convolution and max pooling (their second order)
    let args = ["curvature", "--checkpoint", a.to_str().unwrap(), "--json"];
    let mut args = args.to_vec();
    args.extend(["--top", "2", "--iterations", "8", "--samples", "200"]);
    let o = chainrule(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    let eig = r["eigenvalues"].as_array().unwrap();
    assert!(
        eig.len() == 2 && eig.iter().all(|l| l.as_f64().unwrap() > 0.0),
        "{r}"
    );
    assert_eq!(r["optimizer"], "adadelta");
}

#[test]
fn cnn_options_are_checked() {
    let dir = temp("cnn-bad");
    let out = dir.join("out");
    let bad = |args: &[&str], says: &str| {
        let mut all = args.to_vec();
        all.extend(["--max-steps", "1", "--out", out.to_str().unwrap()]);
        let o = chainrule(&all);
        assert!(!o.status.success(), "{args:?} was accepted");
        let e = stderr(&o);
        assert!(e.contains(says) && e.lines().count() == 1, "{args:?}: {e}");
        assert!(!out.exists(), "{args:?} wrote its output folder");
        // a fresh run has no checkpoint for the message to name
        assert!(!e.contains("--resume"), "{args:?}: {e}");
    };
    let cnn = ["--data", "digits", "--model", "cnn"];
    bad(&[&cnn[..], &["--channels", "8,0"]].concat(), "--channels");
    bad(&[&cnn[..], &["--kernel", "0"]].concat(), "--kernel");
    bad(&[&cnn[..], &["--kernel", "9"]].concat(), "too small");
    bad(
        &[&cnn[..], &["--conv-dropout", "1"]].concat(),
        "--conv-dropout",
    );
    bad(&[&cnn[..], &["--activation", "tanh"]].concat(), "ReLU");
    bad(&[&cnn[..], &["--init", "he"]].concat(), "--init");
    // 8×8 images cannot take four 3×3 convolutions and a pooling of 2
    bad(
        &[&cnn[..], &["--channels", "4,4,4,4"]].concat(),
        "too small for 4 convolutions",
    );
    bad(
        &["--data", "digits", "--channels", "8"],
        "--channels: only --model cnn has convolutions",
    );
    let csv = dir.join("three.csv");
    std::fs::write(&csv, "a,b,c,label\n1,2,3,0\n4,5,6,1\n7,8,9,0\n1,1,1,1\n").unwrap();
    let data = format!("csv:{}", csv.display());
    bad(
        &["--data", &data, "--model", "cnn"],
        "3 features (not a square number)",
    );
}
