//! Every model family's checkpoint records its model as a tagged value, and a checkpoint
//! written before it did (no `model` in its metadata) still evaluates, samples, gives
//! its curvature and resumes.

use crate::common::{chainrule, json, stderr, temp};
use std::path::Path;

/// A tiny run of each family: its `--model` and its flags.
const RUNS: &[(&str, &[&str])] = &[
    ("mlp", &["--hidden", "5"]),
    (
        "cnn",
        &["--channels", "2", "--kernel", "3", "--hidden", "4"],
    ),
    (
        "gru",
        &[
            "--data", "macbeth", "--hidden", "8", "--embed", "4", "--layers", "1",
        ],
    ),
    (
        "gpt",
        &[
            "--data",
            "macbeth",
            "--embed",
            "8",
            "--heads",
            "2",
            "--layers",
            "1",
            "--seq-len",
            "8",
        ],
    ),
];

/// The metadata of a checkpoint file, and the file rewritten with `edit` applied to it
/// (the header keeps its length, padded with spaces, so that the tensors stay in place).
fn edit_meta(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let tag = &mut header["__metadata__"]["chainrule_checkpoint"];
    let mut meta: serde_json::Value = serde_json::from_str(tag.as_str().unwrap()).unwrap();
    let before = meta.clone();
    edit(&mut meta);
    *tag = serde_json::json!(meta.to_string());
    let mut text = serde_json::to_vec(&header).unwrap();
    assert!(text.len() <= n, "the edit made the header longer");
    text.resize(n, b' ');
    let mut out = bytes[..8].to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
    before
}

#[test]
fn old_checkpoints_without_the_model_still_evaluate_sample_and_resume() {
    let dir = temp("families");
    for (model, flags) in RUNS {
        let out = dir.join(model);
        let mut args = vec!["--model", model, "--max-steps", "2", "--json"];
        args.extend(*flags);
        args.extend(["--out", out.to_str().unwrap()]);
        let o = chainrule(&args);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let run = out.to_str().unwrap();
        let text = flags.contains(&"macbeth");
        // what each command says of the checkpoint as written
        let commands: Vec<Vec<&str>> = [
            Some(vec!["eval", "--checkpoint", run, "--json"]),
            text.then(|| vec!["sample", "--checkpoint", run, "--length", "30"]),
            Some(vec![
                "curvature",
                "--checkpoint",
                run,
                "--top",
                "1",
                "--iterations",
                "3",
                "--samples",
                "64",
                "--json",
            ]),
        ]
        .into_iter()
        .flatten()
        .collect();
        let say = |args: &[&str]| {
            let o = chainrule(args);
            assert!(o.status.success(), "{model} {args:?}: {}", stderr(&o));
            String::from_utf8(o.stdout).unwrap()
        };
        let new: Vec<String> = commands.iter().map(|c| say(c)).collect();
        // the checkpoint names its family and records the model's shape
        let file = out.join("checkpoint.safetensors");
        let meta = edit_meta(&file, |m| {
            m.as_object_mut().unwrap().remove("model");
        });
        assert_eq!(
            meta["model"]["family"], *model,
            "{model}: {}",
            meta["model"]
        );
        assert_eq!(meta["config"]["model"], *model);
        // the same checkpoint as an older program wrote it: the same answers
        let old: Vec<String> = commands.iter().map(|c| say(c)).collect();
        assert_eq!(new, old, "{model}");
        let o = chainrule(&["--resume", run, "--max-steps", "3", "--json"]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        assert_eq!(json(&o)["steps"], 3, "{model}");
        // the resumed run's checkpoint records the model again
        let meta = edit_meta(&file, |_| {});
        assert_eq!(meta["model"]["family"], *model);
    }
}

#[test]
fn a_checkpoint_whose_model_disagrees_with_its_parameters_is_refused_in_one_line() {
    let dir = temp("family-mismatch");
    let out = dir.join("mlp");
    let o = chainrule(&[
        "--hidden",
        "5",
        "--max-steps",
        "1",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // a recorded model wider than the parameters the file holds
    edit_meta(&out.join("checkpoint.safetensors"), |m| {
        m["model"]["sizes"] = serde_json::json!([64, 6, 10]);
    });
    let o = chainrule(&["eval", "--checkpoint", out.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("it holds a model of layer sizes"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
}
