//! The markdown of the repository (the README, the manual in `docs/`, the notes beside
//! the data and fixtures) against the program: its `chainrule explain` walks must be
//! exactly what the program prints, and its commands must run from a fresh clone.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every markdown file of the repository outside `target/`, with its path from the root.
fn markdown_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                let shown = path.strip_prefix(&root).unwrap().display().to_string();
                found.push((shown, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found.sort();
    assert!(
        found.iter().any(|(p, _)| p == "README.md") && found.len() >= 10,
        "expected the README and the manual: {:?}",
        found.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    found
}

/// Splits a command line on spaces, keeping double-quoted parts together.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn markdown_walks_match_the_program() {
    let mut checked = 0;
    for (file, text) in markdown_files() {
        checked += walks_match_the_program(&file, &text);
    }
    assert!(
        checked >= 2,
        "expected the two explain walks of docs/explain.md"
    );
}

/// The `$ chainrule ...` blocks of one file, each against what the program prints.
fn walks_match_the_program(file: &str, text: &str) -> usize {
    let mut lines = text.lines();
    let mut checked = 0;
    while let Some(line) = lines.next() {
        let Some(cmd) = line.strip_prefix("$ chainrule ") else {
            continue;
        };
        let expected: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_chainrule"))
            .args(words(cmd))
            .output()
            .unwrap();
        assert!(out.status.success());
        let got = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            got.trim_end().lines().collect::<Vec<_>>(),
            expected,
            "{file}: the block for `{cmd}` is stale"
        );
        checked += 1;
    }
    checked
}

/// The commands of a markdown file's `sh` blocks, continued lines joined.
fn shell_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        match line.trim().strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line.trim());
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// Every `cargo run --release [-- ARGS]` of the `sh` blocks of every markdown file runs
/// from an empty folder (so nothing beside a fresh clone, such as `../shared`, can be
/// read) and succeeds; the README's set-up is exactly two commands, the main job and the
/// tests. Training commands get `--max-steps 2` appended: the test checks that their
/// data, model and options resolve, not the whole run. `cargo test` is this very run;
/// the MPI block is covered by the `distributed` tests.
#[test]
fn markdown_commands_run_on_a_fresh_clone() {
    let files = markdown_files();
    let readme = &files.iter().find(|(p, _)| p == "README.md").unwrap().1;
    assert_eq!(
        shell_commands(readme),
        ["cargo run --release", "cargo test"],
        "the README's set-up: the main job and the tests"
    );
    let dir = std::env::temp_dir().join(format!("chainrule-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ran = 0;
    let commands = files
        .iter()
        .flat_map(|(file, text)| shell_commands(text).into_iter().map(move |c| (file, c)));
    for (file, cmd) in commands {
        let Some(rest) = cmd.strip_prefix("cargo run --release") else {
            assert!(
                cmd.starts_with("cargo test")
                    || cmd.starts_with("cargo build --release --features mpi")
                    || cmd.starts_with("apt-get install")
                    || cmd.starts_with("mpirun "),
                "{file}: a command this test does not know how to run: {cmd}"
            );
            continue;
        };
        let mut args = words(rest.trim().strip_prefix("--").unwrap_or(rest));
        if args.first().is_some_and(|a| a == "serve") {
            serve_answers(&args, &dir);
            ran += 1;
            continue;
        }
        if args.first().is_none_or(|a| a == "train") {
            args.extend(["--max-steps".into(), "2".into()]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_chainrule"))
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: `{cmd}` failed in a fresh folder: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        ran >= 7,
        "expected the main job, the language models and sampling, the convnet and the page"
    );
}

/// A markdown `serve` command starts a server (on a free port, no browser opened) that
/// answers the page.
fn serve_answers(args: &[String], dir: &std::path::Path) {
    let args: Vec<String> = args.iter().filter(|a| *a != "--open").cloned().collect();
    let server = crate::common::Server::start_with(&args, dir);
    let (status, page) = server.get("/");
    assert!(
        status == 200 && page.contains("/assets/app.js"),
        "`{}`: {status} {page}",
        args.join(" ")
    );
}
