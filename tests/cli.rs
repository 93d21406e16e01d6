//! The `chainrule` binary, run as a user would.

use std::process::Command;

fn chainrule(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn gradcheck_lists_every_op_and_passes() {
    let out = chainrule(&["gradcheck", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["ops_checked"].as_u64().unwrap() >= 36);
    assert!(v["worst_rel_err"].as_f64().unwrap() <= 1e-6);
    let table = chainrule(&["gradcheck"]);
    let text = String::from_utf8_lossy(&table.stdout);
    for op in ["matmul", "log_softmax", "gather", "tanh", "broadcast_to"] {
        assert!(
            text.lines().any(|l| l.starts_with(op)),
            "{op} missing:\n{text}"
        );
    }
    assert!(text.contains("ops checked, worst relative error"));
}

#[test]
fn unknown_flags_and_workloads_fail_with_a_message() {
    let out = chainrule(&["bench", "no_such_workload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload 'no_such_workload'"));
    let out = chainrule(&["gradcheck", "--frobnicate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

#[test]
fn bench_json_rows_have_the_required_fields() {
    let out = chainrule(&["bench", "tape_chain", "--json", "--budget", "0.05"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    for k in ["name", "median_s", "min_s", "reps", "ns_per_op"] {
        assert!(row.get(k).is_some(), "{k} missing in {row}");
    }
}

#[test]
fn compare_quick_prints_rows_and_writes_csv_and_plot() {
    let out = std::env::temp_dir().join(format!("chainrule-compare-{}", std::process::id()));
    let t = std::time::Instant::now();
    let o = chainrule(&[
        "compare",
        "--quick",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed().as_secs() < 30);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &rows {
        for k in ["function", "n", "method", "median_s", "ratio"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
    let rev = rows
        .iter()
        .find(|r| r["function"] == "f" && r["method"] == "reverse" && r["n"] == 1000)
        .unwrap();
    assert!(rev["ratio"].as_f64().unwrap() > 1.0);
    assert!(
        rows.iter()
            .any(|r| r["function"] == "g" && r["method"] == "forward")
    );
    assert!(out.join("compare.csv").exists() && out.join("compare.svg").exists());
    std::fs::remove_dir_all(out).unwrap();
}
