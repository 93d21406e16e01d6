//! Training from the command line: the default run, resuming, and bad input.

use crate::common::{chainrule, eval_rows, json, metric_rows, short_text, stderr, temp};
use std::path::Path;
use std::process::Output;

/// One epoch of plain SGD into `out`: a run with a checkpoint that a huge learning rate
/// can then blow up.
fn one_sgd_epoch(out: &str) -> Output {
    chainrule(&[
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--max-epochs",
        "1",
        "--target",
        "2",
        "--no-clip",
        "--out",
        out,
        "--json",
    ])
}

/// `chainrule curvature --json --checkpoint RUN ARGS`, which must succeed: its report and
/// its eigenvalues.
fn curvature(run: &Path, args: &[&str]) -> (serde_json::Value, Vec<f64>) {
    let mut all = vec!["curvature", "--checkpoint", run.to_str().unwrap(), "--json"];
    all.extend(args);
    let o = chainrule(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    let list = r["eigenvalues"].as_array().expect("eigenvalues");
    let eig = list.iter().map(|v| v.as_f64().unwrap()).collect();
    (r, eig)
}

#[test]
fn curvature_of_a_saved_run_gives_the_largest_eigenvalues_and_the_stable_step() {
    let dir = temp("curvature");
    let out = dir.join("run");
    let o = one_sgd_epoch(out.to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let (r, eig) = curvature(&out, &["--top", "2", "--iterations", "40"]);
    assert_eq!(eig.len(), 2);
    assert!(eig.iter().all(|l| l.is_finite()), "{r}");
    // a cross-entropy Hessian near a minimum: positive, largest first
    assert!(eig[0] > 0.0 && eig[0].abs() >= eig[1].abs(), "{r}");
    let stable = r["max_stable_lr"].as_f64().unwrap();
    assert!((stable - 2.0 / eig[0]).abs() <= 1e-12 * stable, "{r}");
    assert_eq!(r["lr"].as_f64(), Some(0.01));
    assert_eq!(r["optimizer"], "sgd");
    let o = chainrule(&[
        "curvature",
        "--checkpoint",
        dir.join("none").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn default_run_reaches_the_target_on_embedded_digits() {
    let out = temp("default");
    let o = chainrule(&["--json", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["stopped_by"], "target");
    assert!(r["best_val_metric"].as_f64().unwrap() >= 0.97);
    for k in ["final_val_metric", "seconds", "samples_per_second"] {
        assert!(
            r[k].as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
            "{k} is not a positive number in {r}"
        );
    }
    for k in ["epochs", "steps"] {
        assert!(r[k].as_u64().is_some_and(|v| v >= 1), "{k} in {r}");
    }
    assert!(
        r["clipping"]["steps"].as_u64() == r["steps"].as_u64(),
        "{r}"
    );
    // where the time went: every phase a number, together the loop's time
    let phases = r["profile"].as_object().expect("a profile");
    assert_eq!(phases.len(), 8, "{r}");
    let total: f64 = phases.values().map(|v| v.as_f64().unwrap()).sum();
    assert!(phases.values().all(|v| v.as_f64().unwrap() >= 0.0), "{r}");
    assert!(
        phases["forward"].as_f64().unwrap() > 0.0 && phases["optimizer"].as_f64().unwrap() > 0.0
    );
    assert!(
        (total - r["seconds"].as_f64().unwrap()).abs() < 0.05 + 0.05 * total,
        "{r}"
    );
    for f in [
        "metrics.jsonl",
        "curves.svg",
        "report.json",
        "checkpoint.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let e = chainrule(&["eval", "--checkpoint", out.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    assert_eq!(
        json(&e)["accuracy"].as_f64(),
        r["final_val_metric"].as_f64()
    );
}

#[test]
fn resumed_run_continues_exactly_like_an_uninterrupted_one() {
    let (a, b) = (temp("resume-a"), temp("resume-b"));
    let common = [
        "--target",
        "2",
        "--patience",
        "100",
        "--dropout",
        "0.1",
        "--seed",
        "5",
        "--json",
    ];
    let run = |dir: &Path, extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", dir.to_str().unwrap()]);
        let o = chainrule(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    run(&a, &["--max-epochs", "5"]);
    run(&b, &["--max-epochs", "2"]);
    let o = chainrule(&[
        "--resume",
        b.to_str().unwrap(),
        "--max-epochs",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ra, rb) = (metric_rows(&a), metric_rows(&b));
    assert_eq!(eval_rows(&a).len(), 5);
    assert_eq!(ra.len(), 5 + 5 * 45, "five evaluations and 225 steps");
    assert_eq!(ra, rb, "the loss sequence after resuming differs");
    // the resumed report knows the whole run: its history comes back from metrics.jsonl,
    // since the checkpoint does not carry it (its metadata stays the same size)
    let report = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap()
    };
    let evals = |r: &serde_json::Value| -> Vec<(u64, f64)> {
        r["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["step"].as_u64().unwrap(),
                    h["val_metric"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (pa, pb) = (report(&a), report(&b));
    assert_eq!(evals(&pa).len(), 5);
    assert_eq!(evals(&pa), evals(&pb));
    assert_eq!(pa["best_step"], pb["best_step"]);
    assert_eq!(pa["best_val_metric"], pb["best_val_metric"]);
    let bytes = std::fs::read(b.join("checkpoint.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]);
    assert!(header.contains("chainrule_checkpoint") && !header.contains("history"));
}

#[test]
fn a_resumed_run_restores_the_same_best_weights() {
    let (a, b) = (temp("best-a"), temp("best-b"));
    let args = |dir: &Path, epochs: &'static str| -> Vec<String> {
        [
            "--restore-best",
            "--target",
            "2",
            "--patience",
            "100",
            // a seed whose best evaluation comes before the interruption (seed 1 was,
            // until the MLP's weights took PyTorch's layout and order of draws)
            "--seed",
            "0",
            "--lr",
            "0.02",
            "--json",
            "--max-epochs",
            epochs,
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect()
    };
    let run = |v: Vec<String>| {
        let o = chainrule(&v.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)
    };
    let whole = run(args(&a, "6"));
    run(args(&b, "4"));
    let mut more = args(&b, "6");
    more.extend(["--resume".to_string(), b.display().to_string()]);
    let resumed = run(more);
    // the best evaluation (step 180 of 270) came before the interruption and is better
    // than the last one, so restoring it changes the result
    let last = eval_rows(&a).last().unwrap()["val_metric"]
        .as_f64()
        .unwrap();
    assert!(whole["best_step"].as_u64().unwrap() <= 180, "{whole}");
    assert_ne!(whole["final_val_metric"].as_f64().unwrap(), last, "{whole}");
    assert_eq!(whole["final_val_metric"], whole["best_val_metric"]);
    assert_eq!(
        resumed["final_val_metric"], whole["final_val_metric"],
        "{resumed}"
    );
    assert_eq!(resumed["best_step"], whole["best_step"]);
}

/// Writes an IDX file: magic for unsigned bytes, the dimensions, then the payload.
fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(payload);
    b
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failure_status() {
    let dir = temp("bad");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let csv = |name: &str, text: &str| format!("csv:{}", write(name, text.as_bytes()));
    let good = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n";
    // an MNIST folder with a given training-image and training-label file
    let mnist = |name: &str, images: &[u8], labels: &[u8]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("train-images-idx3-ubyte"), images).unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte"), labels).unwrap();
        format!("mnist:{}", d.display())
    };
    let labels3 = idx(&[3], &[1, 2, 3]);
    // a run to resume from, and damaged copies of its checkpoint
    let run = dir.join("run");
    let o = chainrule(&[
        "--data",
        &csv("good.csv", good),
        "--hidden",
        "3",
        "--max-steps",
        "2",
        "--out",
        run.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let damaged = |name: &str, bytes: &[u8]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("checkpoint.safetensors"), bytes).unwrap();
        d.display().to_string()
    };
    let truncated = damaged("truncated", &ckpt[..ckpt.len() / 2]);
    // a valid safetensors file that is not a checkpoint: a header with no metadata
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut foreign = (header.len() as u64).to_le_bytes().to_vec();
    foreign.extend(header);
    foreign.extend([0, 0, 128, 63]);
    let foreign = damaged("foreign", &foreign);
    let run = run.display().to_string();
    // a character model to sample from
    let text_run = dir.join("text-run");
    let o = chainrule(&[
        "--data",
        "macbeth",
        "--hidden",
        "8",
        "--embed",
        "4",
        "--layers",
        "1",
        "--max-steps",
        "2",
        "--out",
        text_run.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text_run = text_run.display().to_string();
    let text = |name: &str, body: &str| format!("text:{}", write(name, body.as_bytes()));
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            a(&["--data", "csv:/no/such/file.csv"]),
            "/no/such/file.csv: No such file or directory",
        ),
        (
            a(&["--data", &format!("csv:{}", dir.display())]),
            "Is a directory",
        ),
        (a(&["--data", &csv("empty.csv", "")]), "holds no rows"),
        (
            a(&["--data", &csv("header.csv", "a,b,y\n")]),
            "no data rows",
        ),
        (
            a(&["--data", &csv("short.csv", "1,2,0\n3,4,1\n5,6\n")]),
            "row 3: has 2 fields",
        ),
        (
            a(&["--data", &csv("nonnum.csv", "a,b,y\n1,2,0\n3,oops,1\n")]),
            "row 3, column 1 ('b'): 'oops' is not a number",
        ),
        (
            a(&["--data", &csv("huge.csv", "a,y\n1e300,0\n2,1\n")]),
            "'1e300' is not finite",
        ),
        (
            a(&["--data", &csv("label.csv", good), "--label", "7"]),
            "label column 7 does not exist (the file has 3 columns)",
        ),
        (
            a(&["--data", &csv("named.csv", good), "--label", "class"]),
            "no column named 'class'",
        ),
        (
            a(&["--data", &csv("strlabel.csv", "a,b,y\n1,2,cat\n3,4,dog\n")]),
            "label column 2 ('y') holds 'cat'",
        ),
        (
            a(&["--data", &csv("one.csv", "a,y\n1,4\n2,4\n3,4\n")]),
            "a classifier needs at least two classes",
        ),
        (
            a(&["--data", "mnist:/no/such/dir"]),
            "no train-images-idx3-ubyte",
        ),
        (
            a(&[
                "--data",
                &mnist("trunc", &idx(&[2, 28, 28], &[1, 2]), &labels3),
            ]),
            "need 1568 bytes of data, the file has 2",
        ),
        (
            a(&["--data", &mnist("magic", b"P5 28 28 255\n", &labels3)]),
            "not an IDX file",
        ),
        (
            a(&[
                "--data",
                &mnist("wrapped", &idx(&[u32::MAX; 3], &[]), &labels3),
            ]),
            "need more bytes than a file can hold",
        ),
        (
            a(&[
                "--data",
                &mnist("counts", &idx(&[2, 2, 2], &[0; 8]), &labels3),
            ]),
            "images [2, 2, 2] and labels [3] do not match",
        ),
        (a(&["--resume", &truncated]), "not a valid safetensors file"),
        (a(&["--resume", &foreign]), "not a chainrule checkpoint"),
        (
            a(&["eval", "--checkpoint", &run, "--data", "digits"]),
            "expects 2 features, the data has 64",
        ),
        (
            a(&["--resume", &run, "--seed", "3"]),
            "--seed 3 differs from the saved run's 0",
        ),
        (
            a(&["--resume", &run, "--val-fraction", "0.5"]),
            "--val-fraction 0.5 differs",
        ),
        (
            a(&["--resume", &run, "--hidden", "4"]),
            "--hidden [4] differs from the saved run's [3]",
        ),
        (
            a(&["--resume", &run, "--batch-size", "2"]),
            "--batch-size 2 differs",
        ),
        (
            a(&["--resume", &run, "--data", "digits"]),
            "--data \"digits\" differs",
        ),
        (a(&["--batch-size", "0"]), "--batch-size must be at least 1"),
        (
            a(&["--lr", "nan"]),
            "--lr must be a non-negative number, got NaN",
        ),
        (
            a(&["--lr", "-0.1"]),
            "--lr must be a non-negative number, got -0.1",
        ),
        (
            a(&["--hidden", "0"]),
            "--hidden: layer sizes must be positive",
        ),
        // more parameters than the machine can hold: one line, not an abort
        (
            a(&["--hidden", "3000000000"]),
            "more than this machine can allocate",
        ),
        (a(&["--optimizer", "adamx"]), "unknown optimizer 'adamx'"),
        (a(&["--data", "imagenet"]), "unknown dataset 'imagenet'"),
        (
            a(&["--target", "soon"]),
            "or 'none' to switch this limit off",
        ),
        (
            a(&[
                "--patience",
                "none",
                "--max-epochs",
                "none",
                "--max-time",
                "none",
            ]),
            "keep at least one so that the run ends",
        ),
        (
            a(&["--schedule", "cosine", "--max-epochs", "none"]),
            "--schedule cosine needs --max-epochs or --max-steps",
        ),
        (a(&["--frobnicate"]), "--frobnicate"),
        // character models
        (
            a(&[
                "--data",
                &format!("text:{}", dir.join("absent.txt").display()),
            ]),
            "absent.txt",
        ),
        (a(&["--data", &text("empty.txt", "")]), "the text is empty"),
        (
            a(&["--data", &text("one.txt", &"a".repeat(500))]),
            "at least two distinct characters",
        ),
        (
            a(&["--data", &text("short.txt", &"ab".repeat(100))]),
            "too short for 32 streams",
        ),
        (
            a(&["--data", "macbeth", "--seq-len", "0"]),
            "--seq-len must be at least 1",
        ),
        (
            a(&["--data", "macbeth", "--model", "transformer"]),
            "unknown model 'transformer'",
        ),
        (a(&["--model", "lstm"]), "does not train on --data digits"),
        (
            a(&["--data", "macbeth", "--hidden", "64,64"]),
            "takes one hidden size",
        ),
        (
            a(&["sample", "--checkpoint", &run]),
            "not a character model",
        ),
        (
            a(&["sample", "--checkpoint", &text_run, "--prompt", "ROMEO: Ω"]),
            "'Ω' is not in the model's vocabulary",
        ),
        (
            a(&["sample", "--checkpoint", &text_run, "--temperature", "-1"]),
            "--temperature must be a finite number ≥ 0",
        ),
        (
            a(&["sample", "--checkpoint", &text_run, "--temperature", "nan"]),
            "--temperature must be a finite number ≥ 0",
        ),
        (
            a(&["sample", "--checkpoint", &text_run, "--top-k", "0"]),
            "--top-k must be at least 1",
        ),
    ];
    for (args, want) in cases {
        let mut v: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = dir.join("out");
        if v[0] != "eval" && v[0] != "sample" {
            v.extend_from_slice(&["--out", out.to_str().unwrap(), "--json"]);
        }
        let o = chainrule(&v);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: expected '{want}' in:\n{e}");
        assert!(!e.contains("panicked"), "{args:?} panicked:\n{e}");
        // one line, naming the cause once
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}:\n{e}");
        assert!(!e.contains("(os error 2): No such file"), "{args:?}:\n{e}");
        assert!(
            !out.exists(),
            "{args:?} wrote {} before failing",
            out.display()
        );
    }
}

#[test]
fn resume_refuses_data_edited_since_the_run() {
    let dir = temp("edited");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data.csv");
    let text = dir.join("text.txt");
    let lines: String = (0..40)
        .map(|i| format!("{},{},{}\n", i % 7, (i * 3) % 5, i % 2))
        .collect();
    std::fs::write(&file, format!("a,b,y\n{lines}")).unwrap();
    std::fs::write(
        &text,
        "to be or not to be, that is the question. ".repeat(40),
    )
    .unwrap();
    let runs = [
        (
            format!("csv:{}", file.display()),
            vec!["--hidden", "3"],
            &file,
        ),
        (
            format!("text:{}", text.display()),
            vec![
                "--hidden",
                "4",
                "--embed",
                "3",
                "--layers",
                "1",
                "--batch-size",
                "2",
            ],
            &text,
        ),
    ];
    for (i, (data, extra, path)) in runs.iter().enumerate() {
        let out = dir.join(format!("run{i}"));
        let mut args = vec!["--data", data.as_str(), "--max-steps", "2", "--json"];
        args.extend(extra.iter());
        args.extend(["--out", out.to_str().unwrap()]);
        let o = chainrule(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        // the same data resumes
        let more = [
            "--resume",
            out.to_str().unwrap(),
            "--max-steps",
            "4",
            "--json",
        ];
        let o = chainrule(&more);
        assert!(o.status.success(), "{}", stderr(&o));
        // two characters swapped: the same size and the same vocabulary
        let edited = std::fs::read_to_string(path)
            .unwrap()
            .replacen("\n0,0,0\n", "\n1,0,0\n", 1)
            .replacen("question", "qeustion", 1);
        assert_ne!(edited, std::fs::read_to_string(path).unwrap());
        std::fs::write(path, edited).unwrap();
        let o = chainrule(&["--resume", out.to_str().unwrap(), "--max-steps", "6"]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{data}: resumed on edited data");
        assert!(
            e.contains(&format!("{data}: the data differs from the run's")),
            "{data}: {e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
}

#[test]
fn nan_during_training_fails_cleanly_and_keeps_the_last_checkpoint() {
    let dir = temp("nan");
    let d = dir.to_str().unwrap();
    let o = one_sgd_epoch(d);
    assert!(o.status.success(), "{}", stderr(&o));
    let step = json(&o)["steps"].as_u64().unwrap();
    let o = chainrule(&["--resume", d, "--lr", "1e30", "--max-epochs", "3", "--json"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("training failed")
            && (e.contains("NaN") || e.contains("infinit") || e.contains("exceeds")),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let ev = chainrule(&["eval", "--checkpoint", d, "--json"]);
    assert!(ev.status.success(), "{}", stderr(&ev));
    assert_eq!(json(&ev)["step"].as_u64().unwrap(), step);
    // a corrupted checkpoint is refused with its file named
    std::fs::write(dir.join("checkpoint.safetensors"), b"garbage").unwrap();
    let ev = chainrule(&["eval", "--checkpoint", d]);
    assert!(!ev.status.success());
    assert!(
        stderr(&ev).contains("checkpoint.safetensors: not a valid safetensors file"),
        "{}",
        stderr(&ev)
    );
}

#[test]
fn graph_export_and_anomaly_mode_from_the_command_line() {
    let dir = temp("graph");
    let g = dir.join("step.dot");
    let o = chainrule(&[
        "--max-epochs",
        "1",
        "--graph",
        g.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dot = std::fs::read_to_string(&g).unwrap();
    for cluster in ["layer0", "layer1", "layer2", "loss"] {
        assert!(
            dot.contains(&format!("label=\"{cluster}\"")),
            "{cluster} missing"
        );
    }
    let d = dir.join("a");
    let ds = d.to_str().unwrap();
    let o = one_sgd_epoch(ds);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = chainrule(&[
        "--resume",
        ds,
        "--lr",
        "1e30",
        "--max-epochs",
        "3",
        "--json",
        "--detect-anomaly",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("anomaly: the backward rule of node") && e.contains("inputs: node"),
        "{e}"
    );
}

/// A tiny character LSTM, a few hundred steps: its flags after `--data`.
const TINY_LSTM: &[&str] = &[
    "--hidden",
    "64",
    "--embed",
    "16",
    "--layers",
    "1",
    "--batch-size",
    "8",
    "--seq-len",
    "32",
    "--lr",
    "0.01",
    "--schedule",
    "constant",
];

#[test]
fn a_tiny_character_model_learns_below_the_unigram_entropy() {
    let dir = temp("tiny-lm");
    let data = short_text(&dir);
    let out = dir.join("run");
    let mut args = vec!["--data", &data];
    args.extend(TINY_LSTM);
    args.extend([
        "--max-steps",
        "300",
        "--eval-every",
        "100",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let o = chainrule(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(&o);
    // the curvature of its training loss, through the recurrent cells' second order
    let args = ["--top", "2", "--iterations", "12", "--samples", "256"];
    let (r, eig) = curvature(&out, &args);
    assert!(
        eig.len() == 2 && eig.iter().all(|l| l.is_finite() && *l != 0.0),
        "{r}"
    );
    assert!(eig[0].abs() >= eig[1].abs(), "{r}");
    assert!(r["samples"].as_u64().unwrap() >= 256, "{r}");
    assert_eq!(r["optimizer"], "adam");
    let file = data.strip_prefix("text:").unwrap();
    let corpus = chainrule::data::TextCorpus::load(Path::new(file)).unwrap();
    let unigram = chainrule::data::unigram_entropy(corpus.train());
    let best = report["best_val_loss"].as_f64().unwrap();
    assert!(
        best < unigram - 0.2,
        "validation loss {best} nats/char is not below the unigram entropy {unigram}"
    );
    let bpc = report["best_val_bits_per_char"].as_f64().unwrap();
    assert!(
        (bpc - best / std::f64::consts::LN_2).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(report["steps"], 300);
    // every step's gradient norm is logged
    let steps: Vec<_> = metric_rows(&out)
        .into_iter()
        .filter(|r| r.get("grad_norm").is_some())
        .collect();
    assert_eq!(steps.len(), 300);
    assert!(steps.iter().all(|r| r["grad_norm"].as_f64().unwrap() > 0.0));
    assert_eq!(eval_rows(&out).len(), 3);
    assert!(
        eval_rows(&out)[2]["grad_norms"]["lstm.weight_hh_l0"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // sampling: seeded, the requested length, after the prompt
    let sample = |seed: &str| {
        let o = chainrule(&[
            "sample",
            "--checkpoint",
            out.to_str().unwrap(),
            "--prompt",
            "MACBETH.",
            "--length",
            "120",
            "--top-k",
            "5",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b, c) = (sample("1"), sample("1"), sample("2"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.starts_with("MACBETH."));
    assert_eq!(
        a.trim_end_matches('\n').chars().count(),
        "MACBETH.".len() + 120
    );
    // greedy decoding is deterministic whatever the seed
    let greedy = |seed: &str| {
        let o = chainrule(&[
            "sample",
            "--checkpoint",
            out.to_str().unwrap(),
            "--temperature",
            "0",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(greedy("1"), greedy("2"));
    // eval reads the character model's checkpoint
    let o = chainrule(&["eval", "--checkpoint", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = json(&o);
    assert!(
        (e["loss"].as_f64().unwrap() - report["final_val_loss"].as_f64().unwrap()).abs() < 1e-6
    );
}

#[test]
fn a_character_model_resumed_mid_epoch_continues_exactly() {
    // the hidden state carried between windows travels in the checkpoint
    let dir = temp("lm-resume");
    let data = short_text(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let run = |out: &Path, steps: &str, resume: bool| {
        let mut args = vec!["--data", &data];
        args.extend(TINY_LSTM);
        args.extend(["--model", "gru", "--max-steps", steps, "--eval-every", "25"]);
        args.extend(["--out", out.to_str().unwrap(), "--json"]);
        if resume {
            args.extend(["--resume", out.to_str().unwrap()]);
        }
        let o = chainrule(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)
    };
    let whole = run(&a, "100", false);
    run(&b, "50", false);
    let resumed = run(&b, "100", true);
    assert_eq!(metric_rows(&a), metric_rows(&b));
    assert_eq!(whole["final_val_loss"], resumed["final_val_loss"]);
    // 100 steps of 27,000 / 8 / 32 ≈ 105 windows: the resume point is mid-epoch
    assert_eq!(whole["epochs"], 0);
}

#[test]
fn clipping_carries_a_recurrent_net_over_a_cliff_that_throws_the_unclipped_run_off() {
    let dir = temp("clipping");
    let o = chainrule(&[
        "clipping",
        "--quick",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    // the memory task, one seed: the unclipped run meets a cliff after the first 10% of
    // its steps, and the clipped run (same seed, same data) ends below it
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        for key in [
            "seed",
            "lr",
            "clip",
            "final_val_loss",
            "stopped_by",
            "diverged_at_step",
            "max_grad_norm",
            "clipped_steps",
            "spike_step",
            "spike_ratio",
            "loss_jump",
        ] {
            assert!(r.get(key).is_some(), "{key} missing from {r}");
        }
        assert_eq!(r["seed"], 1);
    }
    let (unclipped, clipped) = (&runs[0], &runs[1]);
    assert!(unclipped["clip"].is_null() && clipped["clip"] == 1.0, "{v}");
    let steps = v["task"]["steps"].as_u64().unwrap();
    assert!(unclipped["spike_ratio"].as_f64().unwrap() >= 100.0, "{v}");
    assert!(
        unclipped["spike_step"].as_u64().unwrap() > steps / 10,
        "{v}"
    );
    assert!(unclipped["loss_jump"].as_f64().unwrap() > 0.0, "{v}");
    let loss = |r: &serde_json::Value| r["final_val_loss"].as_f64().unwrap_or(f64::INFINITY);
    assert!(loss(clipped) < loss(unclipped), "{v}");
    assert!(clipped["clipped_steps"].as_u64().unwrap() > 0);
    // clipping.svg's lines as data, for the page: the largest bucket of the norm is the
    // run's largest norm, and every step is in a bucket of the loss
    let pair = &v["pair"];
    assert_eq!(
        (pair["seed"].as_u64(), pair["clip"].as_f64()),
        (Some(1), Some(1.0))
    );
    for (name, run) in [("unclipped", unclipped), ("clipped", clipped)] {
        let largest = pair[name]["grad_norm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(largest, run["max_grad_norm"].as_f64().unwrap(), "{name}");
        let buckets = pair[name]["loss"].as_array().unwrap().len() as u64;
        let bucket = pair["bucket"].as_u64().unwrap();
        assert_eq!(buckets, steps.div_ceil(bucket), "{name}");
    }
    // at the cliff: clipping by norm keeps the direction, clipping by value turns it
    let angles = v["angles"]["clipped"].as_array().unwrap();
    assert_eq!(v["angles"]["step"], unclipped["spike_step"]);
    assert_eq!(angles[0]["method"], "norm");
    assert!(angles[0]["degrees"].as_f64().unwrap() < 0.01, "{v}");
    assert!((angles[0]["norm_after"].as_f64().unwrap() - 1.0).abs() < 1e-3);
    assert!(angles[1..].iter().all(|a| a["method"] == "value"));
    assert!(angles[1]["degrees"].as_f64().unwrap() > 1.0, "{v}");
    // text: a learning rate too large to step at diverges unclipped and trains clipped
    let runs = v["text_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let rescued = runs.iter().any(|u| {
        u["clip"].is_null()
            && !u["diverged_at_step"].is_null()
            && runs
                .iter()
                .any(|c| c["lr"] == u["lr"] && !c["clip"].is_null() && c["final_val_loss"].is_f64())
    });
    assert!(rescued, "{v}");
    let depth = v["depth"].as_array().unwrap();
    assert_eq!(depth.len(), 3);
    let norms = |i: usize| -> Vec<f64> {
        depth[i]["layer_grad_norms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (big, small, steady) = (norms(0), norms(1), norms(2));
    assert_eq!(big.len(), 30);
    assert!(big[0] > 100.0 * big[29], "exploding: {big:?}");
    assert!(small.iter().all(|&n| n < 1e-6), "vanishing: {small:?}");
    assert!(
        steady.iter().all(|&n| (0.01..10.0).contains(&n)),
        "steady: {steady:?}"
    );
    assert!(dir.join("clipping.svg").exists());
    assert!(v["conclusion"].as_str().unwrap().ends_with('.'));
}

#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_without_mpi_says_how_to_build_it() {
    let o = chainrule(&["--distributed", "--max-steps", "1"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("built without MPI") && err.contains("--features mpi"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn an_epoch_schedule_multiplies_the_rate_after_every_epoch() {
    let dir = temp("epoch-schedule");
    let out = dir.join("run");
    let o = chainrule(&[
        "--schedule",
        "epoch:0.5",
        "--max-epochs",
        "3",
        "--target",
        "none",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lrs: Vec<f64> = eval_rows(&out)
        .iter()
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, [1e-3, 5e-4, 2.5e-4]);
    let bad = chainrule(&["--schedule", "epoch:-1", "--max-epochs", "1"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("epoch:GAMMA"), "{}", stderr(&bad));
}
