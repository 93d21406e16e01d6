//! Helpers shared by the command-line tests.

use std::path::Path;

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
