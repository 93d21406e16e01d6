//! Faults: a training process killed (SIGKILL) at random moments, many of them while it
//! writes a checkpoint, always leaves a checkpoint that loads, and resuming after every
//! kill ends exactly where an uninterrupted run ends.

use crate::common::metric_rows;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 20;

/// A run that evaluates and checkpoints (`--checkpoint-every 1`) after every step: most
/// of its time is spent writing checkpoints, so random kills land inside writes.
fn args(dir: &Path) -> Vec<String> {
    [
        "--hidden",
        "256",
        "--eval-every",
        "1",
        "--checkpoint-every",
        "1",
        "--max-steps",
        "40",
        "--batch-size",
        "16",
        "--target",
        "none",
        "--patience",
        "none",
        "--max-time",
        "none",
        "--dropout",
        "0.1",
        "--seed",
        "7",
        "--json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect()
}

fn command(dir: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chainrule"));
    c.args(args(dir))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        c.args(["--resume", &dir.display().to_string()]);
    }
    c
}

#[test]
fn twenty_kills_at_random_moments_then_resume_ends_like_an_uninterrupted_run() {
    let root = std::env::temp_dir().join(format!("chainrule-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let reference = root.join("reference");
    let t = Instant::now();
    assert!(command(&reference, false).status().unwrap().success());
    // the uninterrupted run's duration only scales the random delays; nothing is timed
    let span = t.elapsed().as_secs_f64();
    let want = metric_rows(&reference);
    assert_eq!(want.len(), 80, "a row per step and per evaluation");

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut kills, mut completed, mut chain, mut mid_write) = (0, 0, 0, 0);
    let mut dir = root.join("chain0");
    while kills < KILLS {
        let has_checkpoint = dir.join("checkpoint.safetensors").exists();
        let mut child = command(&dir, has_checkpoint).spawn().unwrap();
        std::thread::sleep(Duration::from_secs_f64(uniform() * span));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            // a temporary file left behind: this kill landed inside a checkpoint write
            mid_write += std::fs::read_dir(&dir).map_or(0, |d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(".checkpoint.safetensors.tmp")
                    })
                    .count()
                    .min(1)
            });
            if dir.join("checkpoint.safetensors").exists() {
                // the last complete checkpoint loads
                let o = Command::new(env!("CARGO_BIN_EXE_chainrule"))
                    .args(["eval", "--checkpoint", &dir.display().to_string(), "--json"])
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "after kill {kills}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            continue;
        }
        // this run finished before the kill: it must end exactly like the reference
        assert!(child.wait().unwrap().success());
        assert_eq!(metric_rows(&dir), want, "chain {chain} after {kills} kills");
        completed += 1;
        chain += 1;
        dir = root.join(format!("chain{chain}"));
    }
    // finish the last chain by resuming without interruption
    assert!(
        command(&dir, dir.join("checkpoint.safetensors").exists())
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        metric_rows(&dir),
        want,
        "the last chain after {kills} kills"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    eprintln!(
        "{kills} kills ({mid_write} inside a checkpoint write), {completed} chains completed before the last"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
