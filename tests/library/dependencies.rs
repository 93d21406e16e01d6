//! What a crate that adopts the library compiles: the numerics and the formats, never
//! the program's web server, argument parser, progress bars or plots.

use std::process::Command;

#[test]
fn the_library_compiles_no_crate_of_the_program() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "chainrule",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--offline", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(
        crates.first() == Some(&"chainrule") && crates.contains(&"faer"),
        "{tree}"
    );
    for program_only in [
        "tokio",
        "hyper",
        "hyper-util",
        "axum",
        "clap",
        "indicatif",
        "plotters",
        "open",
        "anyhow",
    ] {
        assert!(
            !crates.contains(&program_only),
            "the library depends on {program_only}:\n{tree}"
        );
    }
}
