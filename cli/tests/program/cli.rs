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
fn gradcheck_exits_non_zero_on_every_planted_fault() {
    for fault in [
        "nan-gradient",
        "wrong-sign",
        "wrong-broadcast-reduction",
        "unreduced-broadcast",
        "nan-tangent",
        "forward-rule-errors",
    ] {
        let out = chainrule(&["gradcheck", "--plant", fault]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fault}: {err}");
        assert!(
            err.contains(&format!("gradcheck failed for planted:{fault}")),
            "{fault}: {err}"
        );
        // only the planted op fails
        assert_eq!(err.lines().count(), 1, "{fault}: {err}");
    }
    let out = chainrule(&["gradcheck", "--plant", "nan-gradient", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
    // NaN is not a number in JSON: serde writes it as null, never as a passing 0
    assert!(v["worst_rel_err"].is_null(), "{}", v["worst_rel_err"]);
    let out = chainrule(&["gradcheck", "--plant", "no-forward-rule"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("forward mode not checked"));
}

#[test]
fn gradcheck_order_2_catches_every_planted_second_order_fault() {
    let faults = ["nan-hvp", "wrong-second-derivative", "missing-cross-term"];
    let mut args = vec!["gradcheck", "--order", "2"];
    for f in faults {
        args.extend(["--plant", f]);
    }
    let out = chainrule(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for f in faults {
        assert!(
            err.contains(&format!("second-order gradcheck failed for planted:{f}")),
            "{f}: {err}"
        );
    }
    // only the planted ops fail
    assert_eq!(err.lines().count(), faults.len(), "{err}");
    // a fault of one order asked of the other is refused with one line
    for (fault, order) in [("nan-hvp", "1"), ("wrong-sign", "2")] {
        let out = chainrule(&["gradcheck", "--order", order, "--plant", fault]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("breaks a rule of order"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
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
    assert_eq!(row["name"], "tape_chain");
    // the last line: the machine's measured peaks
    let last = out
        .stdout
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap();
    let roofline: serde_json::Value = serde_json::from_slice(last).unwrap();
    assert_eq!(roofline["name"], "roofline");
    for k in [
        "f32_one_gflops",
        "f32_all_gflops",
        "f64_all_gflops",
        "triad_all_gbps",
    ] {
        assert!(
            roofline["peaks"][k]
                .as_f64()
                .is_some_and(|v| v.is_finite() && v > 0.0),
            "{k}: {roofline}"
        );
    }
    // NaN and infinity serialise as null: a number that is finite and positive is required
    for k in ["median_s", "min_s", "ns_per_op"] {
        assert!(
            row[k].as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
            "{k} is not a positive number in {row}"
        );
    }
    assert!(row["reps"].as_u64().is_some_and(|r| r >= 1), "{row}");
    let bookkeeping = &row["extra"]["bookkeeping_ns_per_op"];
    assert!(
        bookkeeping
            .as_f64()
            .is_some_and(|v| v.is_finite() && v > 0.0),
        "bookkeeping_ns_per_op is not a positive number in {row}"
    );
}

#[test]
fn compare_quick_prints_rows_and_writes_csv_and_plot() {
    let out = std::env::temp_dir().join(format!("chainrule-compare-{}", std::process::id()));
    let o = chainrule(&[
        "compare",
        "--quick",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &rows {
        for k in ["function", "method"] {
            assert!(r[k].is_string(), "{k} missing in {r}");
        }
        assert!(r["n"].as_u64().is_some_and(|n| n >= 1), "{r}");
        if r["note"].as_str().is_some_and(|n| n.starts_with("skipped")) {
            continue; // too slow to run in --quick: no timing, and it says so
        }
        for k in ["median_s", "ratio"] {
            assert!(
                r[k].as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
                "{k} is not a positive number in {r}"
            );
        }
    }
    // the rows the table and the plot are built from (timings are checked for sanity
    // above; their ratios are the benchmark's business, not a test's)
    assert!(
        rows.iter()
            .any(|r| r["function"] == "f" && r["method"] == "reverse" && r["n"] == 1000)
    );
    assert!(
        rows.iter()
            .any(|r| r["function"] == "g" && r["method"] == "forward")
    );
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1, "{csv}");
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..80]
    );
    std::fs::remove_dir_all(out).unwrap();
}

/// Output piped into a reader that has gone (`chainrule gradcheck | head`) ends the
/// process quietly, killed by SIGPIPE like any Unix tool, not with a panic message.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_run_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(["gradcheck"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes before the first line is written
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
}
