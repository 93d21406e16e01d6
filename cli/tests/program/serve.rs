//! `chainrule serve` over real HTTP: the walk endpoint gives the engine's numbers, only
//! files under the runs folder are served, request sizes are bounded, a slow or
//! malformed client does not stall others, nothing is written, and 50 clients for 10 s
//! get no error and leave the server's memory where it was.

use crate::common::Server;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((
                e.path().display().to_string(),
                m.len(),
                m.modified().unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn the_walk_endpoint_gives_the_engines_numbers_and_points_at_errors() {
    let dir = crate::common::temp("serve-walk");
    let server = Server::start(&dir.join("runs"), &dir);
    let (status, body) = server.get("/api/walk?expr=tanh(w*x%2Bb)&at=x=2,w=-0.5,b=1.5");
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let at = chainrule::explain::parse_assignments("x=2,w=-0.5,b=1.5").unwrap();
    let walk = chainrule::explain::explain("tanh(w*x+b)", &at).unwrap();
    for (name, g) in &walk.gradient {
        assert_eq!(v["gradient"][name].as_f64(), Some(*g), "{name}");
    }
    assert_eq!(v["edges"].as_array().unwrap().len(), walk.edges.len());
    assert_eq!(v["layout"]["crossings"], 0);
    // a learner's answer, read in the walk's grammar and names
    let (status, body) = server.get("/api/evaluate?expr=1-tanh(v4)%5E2&at=v4=0.5");
    assert_eq!(status, 200, "{body}");
    let t = 0.5f64.tanh();
    assert_eq!(json(&body)["value"].as_f64(), Some(1.0 - t * t));
    let (status, body) = server.get("/api/evaluate?expr=q%2B1&at=v4=0.5");
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("'q'"),
        "{body}"
    );
    let (status, body) = server.get(&format!("/api/evaluate?expr={}&at=x=1", "x%2B".repeat(600)));
    assert_eq!(status, 400, "{body}");
    // the page itself and its assets
    let (status, page) = server.get("/walk?expr=x&at=x=1");
    assert!(status == 200 && page.contains("/assets/app.js"));
    assert_eq!(server.get("/assets/app.js").0, 200);
    assert_eq!(server.get("/assets/nothing.js").0, 404);
    // an expression that does not parse: 400, the message and the column
    let (status, body) = server.get("/api/walk?expr=tanh(w*x%2B&at=x=1,w=1");
    assert_eq!(status, 400);
    let e = json(&body);
    assert_eq!(
        (e["column"].as_u64(), e["field"].as_str()),
        (Some(10), Some("expr"))
    );
    assert!(e["error"].as_str().unwrap().contains("column 10"), "{e}");
    // a variable without a value, and a value that is not a number: the values' field
    let (status, body) = server.get("/api/walk?expr=x*y&at=x=1");
    assert_eq!(
        (status, json(&body)["field"].as_str()),
        (400, Some("at")),
        "{body}"
    );
    let (status, body) = server.get("/api/walk?expr=x&at=x=one");
    assert_eq!(
        (status, json(&body)["field"].as_str()),
        (400, Some("at")),
        "{body}"
    );
    // the expression's size is bounded, and so is the parser's nesting
    let long = format!("/api/walk?expr={}&at=x=1", "x%2B".repeat(600));
    let (status, body) = server.get(&long);
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("at most 1000"),
        "{body}"
    );
    let deep = format!(
        "/api/walk?expr={}x{}&at=x=1",
        "(".repeat(499),
        ")".repeat(499)
    );
    assert_eq!(server.get(&deep).0, 200);
    let deeper = format!("/api/walk?expr={}x&at=x=1", "-".repeat(600));
    let (status, body) = server.get(&deeper);
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("nesting"),
        "{body}"
    );
    // a request head past the limit is refused, and the server goes on
    let huge = format!(
        "GET /api/walk?expr=x HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let (status, _) = server.raw(&huge);
    assert!(
        status == 431 || status == 414 || status == 400 || status == 0,
        "{status}"
    );
    assert_eq!(server.get("/api/walk?expr=x&at=x=1").0, 200);
    // the page only reads
    assert_eq!(server.raw("POST /api/walk HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").0, 405);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_files_under_the_runs_folder_are_served_and_nothing_is_written() {
    let dir = crate::common::temp("serve-files");
    let runs = dir.join("runs");
    std::fs::create_dir_all(runs.join("a")).unwrap();
    std::fs::write(runs.join("a/report.json"), "{\"ok\":1}").unwrap();
    std::fs::write(
        runs.join("a/metrics.jsonl"),
        "{\"step\":1,\"loss\":2.0,\"grad_norm\":1.0,\"clipped\":false}\n{\"step\":2,\"lo",
    )
    .unwrap();
    std::fs::write(dir.join("secret.txt"), "SECRET-CONTENT").unwrap();
    // a link out of the folder, to a file and to a FIFO: opening the FIFO would block,
    // so a server that opened it before checking where it leads would stall the request
    std::os::unix::fs::symlink(dir.join("secret.txt"), runs.join("a/secret.json")).unwrap();
    std::os::unix::fs::symlink(&dir, runs.join("outside")).unwrap();
    let fifo = dir.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(&fifo, runs.join("a/fifo.json")).unwrap();
    let before = snapshot(&dir);
    let server = Server::start(&runs, &dir);
    let (status, body) = server.get("/files/a/report.json");
    assert_eq!((status, body.as_str()), (200, "{\"ok\":1}"));
    for path in [
        "/files/../secret.txt",
        "/files/a/../../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/a/%2e%2e/%2e%2e/secret.txt",
        "/files/%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/files/a/secret.json",
        "/files/outside/secret.txt",
        "/files/a/fifo.json",
        "/files/a",
        "/files/a/missing.json",
        "/files/a/report.json%00",
        "/api/runs/..%2Fruns%2Fa/metrics",
        "/api/runs/outside/metrics",
    ] {
        let t = Instant::now();
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("SECRET") && !body.contains("root:"),
            "{path}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    // the runs list holds the real run, not the link out of the folder
    let (_, list) = server.get("/api/runs");
    let names: Vec<String> = json(&list)["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a"]);
    // the metrics log: complete lines only, then the rest once the line is finished
    let (_, body) = server.get("/api/runs/a/metrics?from=0");
    let chunk = json(&body);
    assert_eq!(chunk["rows"].as_array().unwrap().len(), 1);
    let next = chunk["next"].as_u64().unwrap();
    assert_eq!(server.get("/api/runs/a/metrics?from=abc").0, 400);
    assert_eq!(snapshot(&dir), before, "the server wrote or changed a file");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(runs.join("a/metrics.jsonl"))
        .unwrap();
    f.write_all(b"ss\":1.5,\"grad_norm\":0.5,\"clipped\":false}\n")
        .unwrap();
    let (_, body) = server.get(&format!("/api/runs/a/metrics?from={next}"));
    assert_eq!(json(&body)["rows"][0]["loss"], 1.5);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_slow_or_malformed_client_does_not_stall_others() {
    let dir = crate::common::temp("serve-slow");
    let server = Server::start(&dir.join("runs"), &dir);
    // clients that send half a request and wait, one that sends garbage
    let mut slow: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
            s.write_all(b"GET /api/walk?expr=x HTTP/1.1\r\nHost: a\r\n")
                .unwrap();
            s
        })
        .collect();
    let (status, _) = server.raw("BLAH BLAH\r\n\r\n");
    assert_eq!(status, 400);
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(server.get("/api/walk?expr=sin(x)&at=x=1").0, 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "20 requests beside 20 stalled clients took {:?}",
        t.elapsed()
    );
    // the stalled clients are disconnected after the head timeout (10 s)
    let s = &mut slow[0];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Resident memory of a process, in kB.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// One keep-alive connection sending requests for `path` until `until`: the number
/// answered 200, and any failure.
fn client(addr: &str, until: Instant, path: &str) -> (usize, Option<String>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut ok = 0;
    let mut buf = Vec::new();
    while Instant::now() < until {
        if let Err(e) = s.write_all(request.as_bytes()) {
            return (ok, Some(format!("write: {e}")));
        }
        // read the head, then the body by its length
        buf.clear();
        let mut byte = [0u8; 4096];
        let (head_end, length) = loop {
            match s.read(&mut byte) {
                // a signal to the test process (a child's exit) is no failure of the server
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) => return (ok, Some("closed".into())),
                Ok(n) => buf.extend_from_slice(&byte[..n]),
                Err(e) => return (ok, Some(format!("read: {e}"))),
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return (ok, Some(head));
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                break (i + 4, len);
            }
        };
        while buf.len() < head_end + length {
            match s.read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) => return (ok, Some("closed in a body".into())),
                Ok(n) => buf.extend_from_slice(&byte[..n]),
                Err(e) => return (ok, Some(format!("read: {e}"))),
            }
        }
        ok += 1;
    }
    (ok, None)
}

#[test]
fn fifty_clients_for_ten_seconds_get_no_error_and_memory_stays_flat() {
    let _heavy = crate::common::heavy();
    let dir = crate::common::temp("serve-load");
    let server = Server::start(&dir.join("runs"), &dir);
    let mut paths: Vec<String> = [
        "tanh(w*x%2Bb)",
        "ln(1%2Bexp(w*x))-b*w*x",
        "x*x%2Bsin(x)*cos(w)",
        "max(x*w,b)/(x%2B2)",
        "sigmoid(w*x%2Bb)*x",
    ]
    .iter()
    .map(|e| format!("/api/walk?expr={e}&at=x=0.5,w=2,b=-1"))
    .collect();
    // the exercise's answers and the grammar's list
    paths.push("/api/evaluate?expr=1-tanh(v4)%5E2&at=v4=0.5".into());
    paths.push("/api/grammar".into());
    let run = |seconds: u64| {
        let until = Instant::now() + Duration::from_secs(seconds);
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let addr = server.addr.clone();
                let path = paths[i % paths.len()].clone();
                std::thread::spawn(move || client(&addr, until, &path))
            })
            .collect();
        let mut total = 0;
        for h in handles {
            let (ok, failure) = h.join().unwrap();
            assert!(
                failure.is_none(),
                "a client failed after {ok} answers: {failure:?}"
            );
            total += ok;
        }
        total
    };
    // warm up (thread stacks, allocator arenas), then ten seconds
    let warm = run(2);
    let before = rss_kb(server.pid());
    let answered = run(10);
    let after = rss_kb(server.pid());
    eprintln!(
        "load: {answered} answers in 10 s from 50 clients ({warm} in the 2 s warm-up); resident memory {before} kB → {after} kB"
    );
    assert!(answered >= 500, "only {answered} answers in 10 s");
    assert!(
        after <= before + before / 5 + 2048,
        "resident memory grew from {before} kB to {after} kB under load"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
