//! The README's `chainrule explain` walks must be exactly what the program prints.

mod common;

use std::process::Command;

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
fn readme_walks_match_the_program() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut lines = readme.lines();
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
            "README block for `{cmd}` is stale"
        );
        checked += 1;
    }
    assert!(checked >= 2, "expected the two explain walks in the README");
}

/// The commands of the README's `sh` blocks, continued lines joined.
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

/// Every `cargo run --release [-- ARGS]` of the README's set-up blocks runs from an empty
/// folder (so nothing beside a fresh clone, such as `../shared`, can be read) and
/// succeeds. Training commands get `--max-steps 2` appended: the test checks that their
/// data, model and options resolve, not the whole run. `cargo test` is this very run;
/// the MPI block is covered by tests/distributed.rs.
#[test]
fn readme_commands_run_on_a_fresh_clone() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = std::env::temp_dir().join(format!("chainrule-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ran = 0;
    for cmd in shell_commands(&readme) {
        let Some(rest) = cmd.strip_prefix("cargo run --release") else {
            assert!(
                cmd.starts_with("cargo test")
                    || cmd.starts_with("cargo build --release --features mpi")
                    || cmd.starts_with("apt-get install")
                    || cmd.starts_with("mpirun "),
                "a README command this test does not know how to run: {cmd}"
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
            "`{cmd}` failed in a fresh folder: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        ran >= 3,
        "expected the main job, the language model and sampling"
    );
}

/// A README `serve` command starts a server (on a free port, no browser opened) that
/// answers the page.
fn serve_answers(args: &[String], dir: &std::path::Path) {
    let args: Vec<String> = args.iter().filter(|a| *a != "--open").cloned().collect();
    let server = common::Server::start_with(&args, dir);
    let (status, page) = server.get("/");
    assert!(
        status == 200 && page.contains("/assets/app.js"),
        "`{}`: {status} {page}",
        args.join(" ")
    );
}
