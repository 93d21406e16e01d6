//! Helpers shared by the command-line tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A run's `metrics.jsonl` (a row per step and a row per evaluation), without the
/// wall-clock column (the only one that differs between two runs of the same seed).
pub fn metric_rows(dir: &Path) -> Vec<serde_json::Value> {
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

/// The evaluation rows of [`metric_rows`] (the step rows have no `val_loss`).
#[allow(dead_code)]
pub fn eval_rows(dir: &Path) -> Vec<serde_json::Value> {
    metric_rows(dir)
        .into_iter()
        .filter(|r| r.get("val_loss").is_some())
        .collect()
}

/// Runs the binary; a training run gets `--max-time none` unless it sets a time limit,
/// so that no test depends on how fast a loaded machine is.
#[allow(dead_code)]
pub fn chainrule(args: &[&str]) -> Output {
    let mut args = args.to_vec();
    let trains = !matches!(
        args.first(),
        Some(&"eval") | Some(&"sample") | Some(&"clipping") | Some(&"curvature")
    );
    if trains && !args.contains(&"--max-time") {
        args.extend(["--max-time", "none"]);
    }
    Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(&args)
        .output()
        .expect("binary runs")
}

/// A fresh folder for one test's files.
#[allow(dead_code)]
pub fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chainrule-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A run's standard error, as text.
#[allow(dead_code)]
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run's standard output as JSON (the test fails if it is not).
#[allow(dead_code)]
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A short text (the first 30,000 characters of the embedded Macbeth) in a file.
#[allow(dead_code)]
pub fn short_text(dir: &Path) -> String {
    let corpus = chainrule::data::TextCorpus::macbeth().unwrap();
    let ids: Vec<u32> = corpus
        .train()
        .iter()
        .chain(corpus.val())
        .copied()
        .take(30_000)
        .collect();
    let path = dir.join("short.txt");
    std::fs::write(&path, corpus.decode(&ids)).unwrap();
    format!("text:{}", path.display())
}
