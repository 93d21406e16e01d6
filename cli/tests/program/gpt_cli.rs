//! The GPT character model from the command line: training, resuming, sampling,
//! evaluation and curvature of its checkpoints.

use crate::common::{chainrule, eval_rows, json, metric_rows, short_text, stderr, temp};
use std::path::Path;

/// A tiny GPT: its flags after `--data`.
const TINY_GPT: &[&str] = &[
    "--model",
    "gpt",
    "--embed",
    "32",
    "--layers",
    "2",
    "--heads",
    "2",
    "--seq-len",
    "32",
    "--batch-size",
    "8",
    "--lr",
    "0.005",
    "--warmup",
    "10",
];

fn train(data: &str, out: &Path, steps: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--data", data];
    args.extend(TINY_GPT);
    args.extend(["--max-steps", steps, "--eval-every", "50"]);
    args.extend(["--out", out.to_str().unwrap(), "--json"]);
    args.extend(extra);
    let o = chainrule(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&o)
}

#[test]
fn a_tiny_gpt_learns_samples_evaluates_and_has_a_curvature() {
    let dir = temp("tiny-gpt");
    let data = short_text(&dir);
    let out = dir.join("run");
    let report = train(&data, &out, "200", &[]);
    let file = data.strip_prefix("text:").unwrap();
    let corpus = chainrule::data::TextCorpus::load(Path::new(file)).unwrap();
    let unigram = chainrule::data::unigram_entropy(corpus.train());
    let best = report["best_val_loss"].as_f64().unwrap();
    assert!(best < unigram - 0.2, "{best} nats/char, unigram {unigram}");
    let bpc = report["best_val_bits_per_char"].as_f64().unwrap();
    assert!((bpc - best / std::f64::consts::LN_2).abs() < 1e-9);
    assert_eq!(
        (report["steps"].as_u64(), eval_rows(&out).len()),
        (Some(200), 4)
    );
    // sampling: seeded, the requested length after the prompt, which may be longer than
    // the context of 32 (it is cropped)
    let prompt = "MACBETH. Whence is that knocking? How is't with me, when every noise";
    let sample = |seed: &str| {
        let args = [
            "sample",
            "--checkpoint",
            out.to_str().unwrap(),
            "--prompt",
            prompt,
        ];
        let mut args = args.to_vec();
        args.extend(["--length", "100", "--seed", seed]);
        let o = chainrule(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b, c) = (sample("1"), sample("1"), sample("2"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.starts_with(prompt));
    assert_eq!(a.trim_end_matches('\n').chars().count(), prompt.len() + 100);
    // eval recomputes the last validation loss from the checkpoint
    let o = chainrule(&["eval", "--checkpoint", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = json(&o);
    let last = report["final_val_loss"].as_f64().unwrap();
    assert!((e["loss"].as_f64().unwrap() - last).abs() < 1e-6, "{e}");
    // H·v through attention's and layer norm's second order
    let args = ["curvature", "--checkpoint", out.to_str().unwrap(), "--json"];
    let mut args = args.to_vec();
    args.extend(["--top", "2", "--iterations", "8", "--samples", "256"]);
    let o = chainrule(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    let eig: Vec<f64> = r["eigenvalues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        eig.len() == 2 && eig.iter().all(|l| l.is_finite() && *l != 0.0),
        "{r}"
    );
    assert_eq!(r["optimizer"], "adamw");
}

#[test]
fn a_gpt_run_resumed_continues_exactly_and_its_steps_replay_as_recorded() {
    let dir = temp("gpt-resume");
    let data = short_text(&dir);
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    // a constant rate: a cosine spans --max-steps, so a shorter first leg would differ
    let constant = ["--schedule", "constant"];
    let whole = train(&data, &a, "100", &constant);
    train(&data, &b, "50", &constant); // ends at an evaluation, as the whole run has one there
    let resumed = train(&data, &b, "100", &["--resume", b.to_str().unwrap()]);
    assert_eq!(metric_rows(&a), metric_rows(&b));
    assert_eq!(whole["final_val_loss"], resumed["final_val_loss"]);
    // steps recorded on the tape compute what the replayed ones do: the first steps
    // agree to rounding (the fused softmax cross-entropy gradient rounds differently,
    // and 100 steps amplify that, so only the first are compared)
    train(&data, &c, "5", &["--eager", "--schedule", "constant"]);
    let rows = |d: &Path| -> Vec<(f64, f64)> {
        metric_rows(d)
            .iter()
            .filter(|r| r.get("grad_norm").is_some())
            .take(5)
            .map(|r| {
                (
                    r["loss"].as_f64().unwrap(),
                    r["grad_norm"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(rows(&c).len(), 5);
    for ((l1, g1), (l2, g2)) in rows(&a).into_iter().zip(rows(&c)) {
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1 && (g1 - g2).abs() <= 1e-4 * g1,
            "{l1} {l2} {g1} {g2}"
        );
    }
}

#[test]
fn gpt_options_are_checked() {
    let dir = temp("gpt-bad");
    let data = short_text(&dir);
    let bad = |extra: &[&str], says: &str| {
        let mut args = vec![
            "--data",
            data.as_str(),
            "--model",
            "gpt",
            "--max-steps",
            "1",
        ];
        args.extend(extra);
        let o = chainrule(&args);
        assert!(!o.status.success(), "{extra:?} was accepted");
        let e = stderr(&o);
        assert!(e.contains(says) && e.lines().count() == 1, "{extra:?}: {e}");
    };
    bad(
        &["--heads", "3"],
        "--heads: 3 heads do not divide --embed 128",
    );
    bad(&["--hidden", "64"], "--hidden");
    bad(&["--min-lr", "-1"], "--min-lr");
    let o = chainrule(&["--data", "digits", "--model", "gpt", "--max-steps", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("text data takes lstm, gru, rnn or gpt"));
}
