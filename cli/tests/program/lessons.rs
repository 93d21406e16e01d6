//! The lessons' endpoints over real HTTP: `/api/optimizers` takes the library's own
//! optimizer steps (checked against a direct call of `chainrule::optim` on the
//! quadratic's gradient written out by hand), names what is wrong with a request in one
//! line, and its Rosenbrock figures are printed as the closing note's table;
//! `/api/cost` measures within its bounds, one request at a time; and 50 clients on the
//! lessons for 10 s get no error and leave the server's memory where it was.

use crate::common::Server;
use chainrule::nn::{ParamId, ParamStore};
use chainrule::optim::{Adam, Optimizer, RmsProp, Sgd};
use chainrule::tensor::Tensor;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The points of `steps` steps of `opt` from `start` on `grad`, through the library's
/// optimizer in f64.
pub(crate) fn library_path(
    mut opt: Box<dyn Optimizer<f64>>,
    start: [f64; 2],
    steps: usize,
    grad: impl Fn([f64; 2]) -> [f64; 2],
) -> Vec<[f64; 2]> {
    let mut store = ParamStore::<f64>::new();
    store.add("x", Tensor::scalar(start[0])).unwrap();
    store.add("y", Tensor::scalar(start[1])).unwrap();
    let at = |s: &ParamStore<f64>| [0, 1].map(|i| s.get(ParamId(i)).data()[0]);
    let mut points = vec![at(&store)];
    for _ in 0..steps {
        let g = grad(at(&store));
        let grads = g.map(|g| Some(Tensor::scalar(g)));
        opt.step(&mut store, &grads).unwrap();
        points.push(at(&store));
    }
    points
}

/// The optimizer `name` of the page with its settings, built directly.
pub(crate) fn library_optimizer(
    name: &str,
    settings: &serde_json::Value,
) -> Box<dyn Optimizer<f64>> {
    let f = |k: &str| settings[k].as_f64().unwrap();
    match name {
        "sgd" => Box::new(Sgd::new(f("lr"), 0.0, false, 0.0)),
        "momentum" => Box::new(Sgd::new(f("lr"), f("momentum"), false, 0.0)),
        "nesterov" => Box::new(Sgd::new(f("lr"), f("momentum"), true, 0.0)),
        "rmsprop" => Box::new(RmsProp::new(f("lr_adaptive"), f("alpha"), 0.0)),
        "adam" => Box::new(Adam::with_betas(
            f("lr_adaptive"),
            0.0,
            false,
            (f("beta1"), f("beta2")),
        )),
        "adamw" => Box::new(Adam::with_betas(
            f("lr_adaptive"),
            f("weight_decay"),
            true,
            (f("beta1"), f("beta2")),
        )),
        other => panic!("unknown optimizer {other}"),
    }
}

#[test]
fn the_optimizers_endpoint_takes_the_librarys_steps_on_the_quadratic() {
    let dir = crate::common::temp("lessons-optim");
    let server = Server::start(&dir.join("runs"), &dir);
    // momentum 0.5 and lr 0.03 keep Nesterov from diverging within the steps compared
    let (status, body) = server.get(
        "/api/optimizers?f=quadratic&kappa=20&steps=25&x0=-3&y0=1.5&lr=0.03&momentum=0.5&lr_adaptive=0.2&beta1=0.8&beta2=0.99&alpha=0.9&weight_decay=0.05",
    );
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    assert_eq!(a["formula"], "0.5*(x^2 + 20*y^2)");
    // the Hessian of 0.5(x² + κy²) is diag(1, κ): 2/λ_max = 2/κ
    assert_eq!(
        a["curvature"]["eigenvalues"],
        serde_json::json!([1.0, 20.0])
    );
    assert_eq!(a["curvature"]["stable_lr"], 0.1);
    assert!((a["curvature"]["lr_times_lambda_max"].as_f64().unwrap() - 0.6).abs() < 1e-15);
    let paths = a["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 6);
    let mut worst: f64 = 0.0;
    for p in paths {
        let name = p["name"].as_str().unwrap();
        let opt = library_optimizer(name, &a["settings"]);
        // ∇ 0.5(x² + 20y²) written out, not taken from a tape
        let expected = library_path(opt, [-3.0, 1.5], 25, |[x, y]| [x, 20.0 * y]);
        let got: Vec<[f64; 2]> = p["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| [q[0].as_f64().unwrap(), q[1].as_f64().unwrap()])
            .collect();
        assert_eq!(got.len(), 26, "{name}: {}", p["stopped"]);
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            for i in 0..2 {
                let d = (g[i] - e[i]).abs();
                worst = worst.max(d / e[i].abs().max(1.0));
                assert!(
                    d <= 1e-12 * e[i].abs().max(1.0),
                    "{name}, step {k}: the endpoint gives {g:?}, the library {e:?}"
                );
            }
        }
        // the path's length and longest step, from the library's points
        let steps: Vec<f64> = expected
            .windows(2)
            .map(|w| (w[1][0] - w[0][0]).hypot(w[1][1] - w[0][1]))
            .collect();
        let length: f64 = steps.iter().sum();
        let shown = p["length"].as_f64().unwrap();
        assert!(
            (shown - length).abs() <= 1e-12 * length,
            "{name}: {shown} against {length}"
        );
        let longest = steps.iter().cloned().fold(0.0, f64::max);
        assert!((p["largest_step"].as_f64().unwrap() - longest).abs() <= 1e-12 * longest);
        // f at each point is the quadratic's value there
        let loss = p["loss"][25].as_f64().unwrap();
        let [x, y] = expected[25];
        assert!((loss - 0.5 * (x * x + 20.0 * y * y)).abs() <= 1e-12 * loss.abs().max(1.0));
    }
    eprintln!("optimizers: 6 × 25 steps, largest difference from the library {worst:e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_optimizers_endpoint_names_what_is_wrong_in_one_line() {
    let dir = crate::common::temp("lessons-optim-errors");
    let server = Server::start(&dir.join("runs"), &dir);
    for (query, says) in [
        (
            "f=quadratic&steps=10001",
            "steps is 10001; it must be between 1 and 10000",
        ),
        (
            "f=quadratic&steps=2.5",
            "steps is 2.5; it must be a whole number",
        ),
        ("f=quadratic&lr=fast", "lr is 'fast', not a number"),
        (
            "f=quadratic&kappa=0",
            "kappa is 0; it must be between 1 and 1000",
        ),
        (
            "f=cubic",
            "f is 'cubic'; choose quadratic, rosenbrock, beale, cliff, saddle or expr",
        ),
        (
            "f=expr&expr=x*w",
            "the expression may use x and y only; it uses 'w'",
        ),
        ("f=expr&expr=x*(y", "the expression, column 5"),
        ("f=expr", "expr is empty"),
        (
            "f=quadratic&x0=1e9",
            "x0 is 1000000000; it must be between -5 and 5",
        ),
    ] {
        let (status, body) = server.get(&format!("/api/optimizers?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let e = json(&body)["error"].as_str().unwrap().to_string();
        assert!(e.starts_with(says), "{query}: {e}");
        assert!(!e.contains('\n'), "{query}: {e}");
    }
    // a path that leaves for infinity ends and says where; the others go on
    let (status, body) = server.get("/api/optimizers?f=quadratic&lr=0.09&steps=500");
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    let sgd = &a["paths"][0];
    assert!(
        sgd["stopped"]
            .as_str()
            .is_some_and(|s| s.starts_with("diverged at step")),
        "{}",
        sgd["stopped"]
    );
    // on the cliff, SGD's step that lands on the wall is thrown far; clipping the
    // gradient's norm to 1 bounds every step by η·1
    let sgd_step = |clip: &str| {
        let (status, body) = server.get(&format!("/api/optimizers?f=cliff&clip={clip}"));
        assert_eq!(status, 200, "{body}");
        json(&body)["paths"][0]["largest_step"].as_f64().unwrap()
    };
    let (thrown, clipped) = (sgd_step("0"), sgd_step("1"));
    assert!(thrown > 10.0, "{thrown}");
    assert!(clipped <= 0.1 + 1e-12, "{clipped}");
    // a start where f is not defined says so, rather than that the path diverged
    let (status, body) = server.get("/api/optimizers?f=expr&expr=sqrt(x)&x0=-2&y0=1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["paths"][0]["stopped"],
        "f is not defined at step 0, at (-2, 1)"
    );
    // a typed expression: its grid and paths come back
    let (status, body) = server.get("/api/optimizers?f=expr&expr=x%5E2%2B3*y%5E2&steps=5");
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    assert_eq!(a["grid"]["values"].as_array().unwrap().len(), 64 * 64);
    assert_eq!(a["curvature"]["eigenvalues"], serde_json::json!([2.0, 6.0]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rosenbrock_steps_to_the_minimum_at_the_default_settings() {
    let dir = crate::common::temp("lessons-rosenbrock");
    let server = Server::start(&dir.join("runs"), &dir);
    let (status, body) = server.get("/api/optimizers?f=rosenbrock&steps=10000");
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    eprintln!(
        "Rosenbrock from {} at {}: steps to within 1e-3 of (1, 1)",
        a["start"], a["settings"]
    );
    // the Hessian at (1, 1) from the tape, as the formula gives it: [[802, −400], [−400, 200]]
    assert_eq!(
        a["curvature"]["hessian"],
        serde_json::json!([[802.0, -400.0], [-400.0, 200.0]])
    );
    let mut reached = std::collections::BTreeMap::new();
    for p in a["paths"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let points = p["points"].as_array().unwrap();
        let last = points.last().unwrap();
        let d = (last[0].as_f64().unwrap() - 1.0).hypot(last[1].as_f64().unwrap() - 1.0);
        assert!(p["stopped"].is_null(), "{name}: {}", p["stopped"]);
        assert_eq!(points.len(), 10_001, "{name}");
        eprintln!(
            "| {name:<8} | {:>24} | {d:.3e} |",
            p["reached"]
                .as_u64()
                .map_or("not in 10,000 steps".into(), |s| s.to_string())
        );
        reached.insert(name, p["reached"].as_u64());
    }
    // momentum's velocity runs along the curved valley that SGD crawls down
    let momentum = reached["momentum"].expect("momentum reaches the minimum");
    assert!(reached["sgd"].is_none_or(|s| s > momentum), "{reached:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// CPU seconds (user and system, all threads) process `pid` has used, in 1/100 s.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the command name, which may hold spaces: utime and stime are 12 and 13
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (fields[11] + fields[12]) / 100.0
}

#[test]
fn the_cost_endpoint_measures_one_size_at_a_time_within_its_bounds() {
    let _heavy = crate::common::heavy();
    let dir = crate::common::temp("lessons-cost");
    let server = Server::start(&dir.join("runs"), &dir);
    let (status, body) = server.get("/api/cost?n=100");
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    let methods: Vec<&str> = a["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["f", "reverse", "forward", "finite_diff"]);
    for r in a["rows"].as_array().unwrap() {
        assert_eq!(r["n"], 100);
        assert!(r["median_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    }
    // a million inputs: N passes of forward mode would take minutes, so they are skipped
    // with the predicted time, and the request stays near its second
    let cpu_before = cpu_seconds(server.pid());
    let (status, body) = server.get("/api/cost?n=1000000");
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    assert_eq!(status, 200, "{body}");
    let a = json(&body);
    let forward = &a["rows"][2];
    assert!(forward["median_s"].is_null(), "{forward}");
    assert!(
        forward["note"]
            .as_str()
            .unwrap()
            .starts_with("skipped: about"),
        "{forward}"
    );
    assert!(a["rows"][1]["median_s"].as_f64().is_some(), "{body}");
    // the server's own CPU time (every thread) for this one request; its wall time
    // depends on what else the machine runs
    eprintln!(
        "cost: N = 1,000,000 took {} s, {cpu:.2} s of the server's CPU",
        a["took_s"]
    );
    assert!(cpu <= 1.2, "{cpu} s of CPU for one measurement: {body}");
    let (status, body) = server.get("/api/cost?m=300");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["rows"][1]["method"], "forward");
    for (query, says) in [
        ("n=0", "n is 0; it must be between 1 and 1000000"),
        ("n=ten", "n is 'ten', not a whole number"),
        ("m=100001", "m is 100001; it must be between 1 and 100000"),
        ("n=5&m=5", "give n (the inputs of f"),
        ("", "give n (the inputs of f"),
    ] {
        let (status, body) = server.get(&format!("/api/cost?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let e = json(&body)["error"].as_str().unwrap().to_string();
        assert!(e.starts_with(says), "{query}: {e}");
    }
    // a queue of one: two at once, and one of them is told to retry
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| server.get("/api/cost?n=1000")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(busy.len(), 1, "{answers:?}");
    assert!(busy[0].1.contains("busy"), "{answers:?}");
    assert!(answers.iter().any(|(s, _)| *s == 200), "{answers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One keep-alive connection sending `GET` for each of `paths` in turn until `until`:
/// the answers 200, the answers 503 "busy" (where `busy_ok`, each followed by the
/// second's wait the answer asks for), and any failure.
fn load_client(
    addr: &str,
    until: Instant,
    paths: &[String],
    busy_ok: bool,
) -> (usize, usize, Option<String>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut ok, mut busy) = (0, 0);
    let mut buf = Vec::new();
    for path in paths.iter().cycle() {
        if Instant::now() >= until {
            break;
        }
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        if let Err(e) = s.write_all(request.as_bytes()) {
            return (ok, busy, Some(format!("write: {e}")));
        }
        buf.clear();
        let mut byte = [0u8; 16384];
        let (head_end, length, status) = loop {
            match s.read(&mut byte) {
                // a signal to the test process (a child's exit) is no failure of the server
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) => return (ok, busy, Some("closed".into())),
                Ok(n) => buf.extend_from_slice(&byte[..n]),
                Err(e) => return (ok, busy, Some(format!("read: {e}"))),
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                let status = head.split(' ').nth(1).unwrap_or("").to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                break (i + 4, len, status);
            }
        };
        while buf.len() < head_end + length {
            match s.read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) => return (ok, busy, Some("closed in a body".into())),
                Ok(n) => buf.extend_from_slice(&byte[..n]),
                Err(e) => return (ok, busy, Some(format!("read: {e}"))),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..]);
        match status.as_str() {
            "200" => ok += 1,
            "503" if busy_ok && body.contains("\"busy\":true") => {
                // as the answer's Retry-After asks, and as the page does
                busy += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => return (ok, busy, Some(format!("{path}: {status} {body}"))),
        }
    }
    (ok, busy, None)
}

#[test]
fn fifty_clients_on_the_lessons_for_ten_seconds_get_no_error_and_memory_stays_flat() {
    let _heavy = crate::common::heavy();
    let dir = crate::common::temp("lessons-load");
    let server = Server::start(&dir.join("runs"), &dir);
    let lessons: Vec<String> = [
        "/api/optimizers?f=quadratic&steps=100",
        "/api/optimizers?f=rosenbrock&steps=300&x0=-1&y0=2.5",
        "/api/optimizers?f=beale&steps=200",
        "/api/optimizers?f=cliff&clip=1",
        "/api/optimizers?f=saddle",
        "/api/optimizers?f=expr&expr=sin(x)*cos(y)%2Bx%5E2/8&steps=150",
        "/optimizers",
        "/assets/optimizers.js",
        "/cost",
        "/assets/cost.js",
        "/check",
        "/assets/check.js",
    ]
    .map(String::from)
    .to_vec();
    let cost: Vec<String> = ["/api/cost?n=100", "/api/cost?m=100", "/api/cost?n=3000"]
        .map(String::from)
        .to_vec();
    let run = |seconds: u64| {
        let until = Instant::now() + Duration::from_secs(seconds);
        // 45 clients on the optimizers and the pages, 5 asking for measurements at once
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let addr = server.addr.clone();
                let (mut paths, busy_ok) = if i < 45 {
                    (lessons.clone(), false)
                } else {
                    (cost.clone(), true)
                };
                let len = paths.len();
                paths.rotate_left(i % len);
                std::thread::spawn(move || load_client(&addr, until, &paths, busy_ok))
            })
            .collect();
        let (mut ok, mut measured, mut busy) = (0, 0, 0);
        for (i, h) in handles.into_iter().enumerate() {
            let (answered, told_busy, failure) = h.join().unwrap();
            assert!(
                failure.is_none(),
                "a client failed after {answered} answers: {failure:?}"
            );
            if i < 45 {
                ok += answered;
            } else {
                measured += answered;
            }
            busy += told_busy;
        }
        (ok, measured, busy)
    };
    // warm up for longer than the walk's load test: responses here are up to a few hundred
    // kB, and the allocator keeps the high-water mark of as many of them written at once
    let warm = run(4);
    let before = crate::serve::rss_kb(server.pid());
    let (answered, measured, busy) = run(10);
    let after = crate::serve::rss_kb(server.pid());
    eprintln!(
        "lessons load: in 10 s, 45 clients got {answered} answers (optimizers and pages) and 5 clients got {measured} measurements and {busy} busy answers ({warm:?} in the 4 s warm-up); resident memory {before} kB → {after} kB"
    );
    assert!(answered >= 500, "only {answered} answers in 10 s");
    assert!(measured >= 3, "only {measured} measurements in 10 s");
    assert!(
        after <= before + before / 5 + 2048,
        "resident memory grew from {before} kB to {after} kB under load"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
