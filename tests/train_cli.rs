//! Training from the command line: the default run, resuming, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn chainrule(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chainrule-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn default_run_reaches_the_target_on_embedded_digits() {
    let out = temp("default");
    let o = chainrule(&["--json", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["stopped_by"], "target");
    assert!(r["best_val_metric"].as_f64().unwrap() >= 0.97);
    for k in [
        "final_val_metric",
        "epochs",
        "steps",
        "seconds",
        "samples_per_second",
        "clipping",
    ] {
        assert!(r.get(k).is_some(), "{k} missing");
    }
    for f in [
        "metrics.jsonl",
        "curves.svg",
        "report.json",
        "checkpoint/params.safetensors",
        "checkpoint/optimizer.safetensors",
        "checkpoint/meta.json",
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

fn metric_rows(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
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
    assert_eq!(ra.len(), 5);
    assert_eq!(ra, rb, "the loss sequence after resuming differs");
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failure_status() {
    let dir = temp("bad");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        format!("csv:{}", p.display())
    };
    let good = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--data".into(),
                write("nonnum.csv", "a,b,y\n1,2,0\n3,oops,1\n"),
            ],
            "row 3, column 1 ('b'): 'oops' is not a number",
        ),
        (
            vec!["--data".into(), write("short.csv", "1,2,0\n3,4,1\n5,6\n")],
            "row 3: has 2 fields",
        ),
        (
            vec![
                "--data".into(),
                write("label.csv", good),
                "--label".into(),
                "class".into(),
            ],
            "no column named 'class'",
        ),
        (
            vec![
                "--data".into(),
                write("strlabel.csv", "a,b,y\n1,2,cat\n3,4,dog\n"),
            ],
            "label column 2 ('y') holds 'cat'",
        ),
        (
            vec!["--data".into(), write("empty.csv", "")],
            "holds no rows",
        ),
        (
            vec!["--data".into(), write("header.csv", "a,b,y\n")],
            "no data rows",
        ),
        (
            vec!["--data".into(), "mnist:/no/such/dir".into()],
            "no train-images-idx3-ubyte",
        ),
        (
            vec!["--data".into(), "imagenet".into()],
            "unknown dataset 'imagenet'",
        ),
        (
            vec!["--optimizer".into(), "adamx".into()],
            "unknown optimizer 'adamx'",
        ),
        (
            vec!["--lr".into(), "-0.1".into()],
            "--lr must be a non-negative number, got -0.1",
        ),
        (
            vec!["--batch-size".into(), "0".into()],
            "--batch-size must be at least 1",
        ),
        (vec!["--frobnicate".into()], "--frobnicate"),
    ];
    for (args, want) in cases {
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = dir.join("out");
        a.extend_from_slice(&["--out", out.to_str().unwrap(), "--json"]);
        let o = chainrule(&a);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: expected '{want}' in:\n{e}");
        assert!(!e.contains("panicked"), "{args:?} panicked:\n{e}");
    }
    // a truncated IDX file in an MNIST folder
    let mn = dir.join("mnist");
    std::fs::create_dir_all(&mn).unwrap();
    std::fs::write(
        mn.join("train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2],
    )
    .unwrap();
    let o = chainrule(&["--data", &format!("mnist:{}", mn.display()), "--json"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("need 1568 bytes of data, the file has 2"),
        "{}",
        stderr(&o)
    );
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
            && (e.contains("NaN") || e.contains("inf") || e.contains("exceeds")),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let ev = chainrule(&["eval", "--checkpoint", d, "--json"]);
    assert!(ev.status.success(), "{}", stderr(&ev));
    assert_eq!(json(&ev)["step"].as_u64().unwrap(), step);
    // a corrupted checkpoint is refused with its file named
    std::fs::write(dir.join("checkpoint/params.safetensors"), b"garbage").unwrap();
    let ev = chainrule(&["eval", "--checkpoint", d]);
    assert!(!ev.status.success());
    assert!(
        stderr(&ev).contains("params.safetensors: not a valid safetensors file"),
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
