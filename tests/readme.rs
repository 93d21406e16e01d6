//! The README's `chainrule explain` walks must be exactly what the program prints.

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
