//! `chainrule explain` from the command line.

use std::process::Command;

fn chainrule(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn json_walk_has_forward_edges_and_gradient() {
    let o = chainrule(&[
        "explain",
        "tanh(w*x + b)",
        "--at",
        "x=2,w=-0.5,b=1.5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["forward"].as_array().unwrap().len(), 6);
    assert_eq!(v["edges"].as_array().unwrap().len(), 5);
    let t = (0.5f64).tanh();
    assert!((v["gradient"]["w"].as_f64().unwrap() - 2.0 * (1.0 - t * t)).abs() < 1e-12);
    assert!((v["gradient"]["b"].as_f64().unwrap() - (1.0 - t * t)).abs() < 1e-12);
}

#[test]
fn parse_errors_and_missing_values_fail_with_the_column_or_name() {
    let o = chainrule(&["explain", "tanh(w*x + )", "--at", "w=1,x=2"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("column 12") && e.contains("^"), "{e}");
    let o = chainrule(&["explain", "foo(x)", "--at", "x=1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown function 'foo'"));
    let o = chainrule(&["explain", "x + y", "--at", "x=1"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("variable 'y' has no value") && e.contains("--at y="),
        "{e}"
    );
}

#[test]
fn the_sweep_names_the_operands_and_a_kink_is_explained() {
    let o = chainrule(&["explain", "tanh(w*x + b)", "--at", "x=2,w=-0.5,b=1.5"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("∂v3/∂w = x = 2"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("v3 ") && l.contains("w × x")),
        "{text}"
    );
    let o = chainrule(&["explain", "relu(x) - relu(-x)", "--at", "x=0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("sits at its kink"), "{text}");
}

#[test]
fn dot_output_is_a_graph() {
    let path = std::env::temp_dir().join(format!("chainrule-explain-{}.dot", std::process::id()));
    let o = chainrule(&[
        "explain",
        "x*x + x",
        "--at",
        "x=3",
        "--dot",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let dot = std::fs::read_to_string(&path).unwrap();
    assert!(dot.starts_with("digraph chainrule {") && dot.trim_end().ends_with('}'));
    // x*x + x: x → mul twice (both operands), mul → add, x → add
    assert_eq!(dot.matches("->").count(), 4, "{dot}");
    assert_eq!(
        dot.lines().filter(|l| l.contains(" -> ")).count(),
        4,
        "{dot}"
    );
    // every edge joins two declared nodes
    for line in dot.lines().filter(|l| l.contains("->")) {
        let ids: Vec<&str> = line
            .trim()
            .split(" -> ")
            .map(|p| p.split_whitespace().next().unwrap())
            .collect();
        for id in ids {
            assert!(
                dot.contains(&format!("  {id} [label=")),
                "{id} undeclared in\n{dot}"
            );
        }
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_ten_thousand_node_walk_completes() {
    let expr = vec!["x*y"; 5000].join(" + ");
    let o = chainrule(&["explain", &expr, "--at", "x=2,y=3", "--limit", "10"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("forward pass (10001 nodes)") && text.contains("more edges"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
}
