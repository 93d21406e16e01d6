//! Helpers shared by the command-line tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Held by the tests that load or time the machine (the servers' load tests, the cost
/// measurements), so that they do not run at once and skew each other's figures.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`HEAVY`] (a test that failed while holding it does not block the others).
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A run's `metrics.jsonl` (a row per step and a row per evaluation), without the
/// wall-clock column (the only one that differs between two runs of the same seed).
pub fn metric_rows(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// The evaluation rows of [`metric_rows`] (the step rows have no `val_loss`).
#[allow(dead_code)]
pub fn eval_rows(dir: &Path) -> Vec<serde_json::Value> {
    metric_rows(dir)
        .into_iter()
        .filter(|r| r.get("val_loss").is_some())
        .collect()
}

/// Runs the binary; a training run gets `--max-time none` unless it sets a time limit,
/// so that no test depends on how fast a loaded machine is.
#[allow(dead_code)]
pub fn chainrule(args: &[&str]) -> Output {
    let mut args = args.to_vec();
    let trains = !matches!(
        args.first(),
        Some(&"eval") | Some(&"sample") | Some(&"clipping") | Some(&"curvature")
    );
    if trains && !args.contains(&"--max-time") {
        args.extend(["--max-time", "none"]);
    }
    Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(&args)
        .output()
        .expect("binary runs")
}

/// A fresh folder for one test's files.
#[allow(dead_code)]
pub fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chainrule-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A run's standard error, as text.
#[allow(dead_code)]
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run's standard output as JSON (the test fails if it is not).
#[allow(dead_code)]
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A short text (the first 30,000 characters of the embedded Macbeth) in a file.
#[allow(dead_code)]
pub fn short_text(dir: &Path) -> String {
    let corpus = chainrule::data::TextCorpus::macbeth().unwrap();
    let ids: Vec<u32> = corpus
        .train()
        .iter()
        .chain(corpus.val())
        .copied()
        .take(30_000)
        .collect();
    let path = dir.join("short.txt");
    std::fs::write(&path, corpus.decode(&ids)).unwrap();
    format!("text:{}", path.display())
}

/// A `chainrule serve` process on a free port of 127.0.0.1, stopped when dropped.
#[allow(dead_code)]
pub struct Server {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

#[allow(dead_code)]
impl Server {
    /// Starts the server over the runs folder `runs`, in the folder `cwd`.
    pub fn start(runs: &Path, cwd: &Path) -> Server {
        let runs = runs.to_str().expect("a UTF-8 path").to_string();
        Server::start_with(&["serve".into(), "--runs".into(), runs], cwd)
    }

    /// Runs `chainrule ARGS --port 0` (ARGS starting with `serve`) in the folder `cwd`.
    pub fn start_with(args: &[String], cwd: &Path) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_chainrule"))
            .args(args)
            .args(["--port", "0"])
            .current_dir(cwd)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("binary runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// The process id (to read its memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) as given and
    /// returns the status and the body.
    pub fn raw(&self, request: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("the server answers in time");
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// `GET path` with the path sent exactly as given.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
