//! The learner's page in a real browser: Debian's Chromium, headless, driven through
//! WebDriver (chromedriver). It types `tanh(w*x + b)` at x=2, w=−0.5, b=1.5, steps through
//! the whole reverse sweep and reads the gradient of `w` off the page; opens a shared
//! URL; and watches a run's curve grow when a row is appended to its metrics.jsonl.
//! Screenshots of both views go to `target/tmp/screenshots/`.
//!
//! Without `chromium` and `chromium-driver` installed the test says so and passes,
//! unless `CHAINRULE_BROWSER_TEST=require` (which `.ci/run` sets, after installing them).

use crate::common::Server;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free port, stopped when dropped.
pub(crate) struct Driver {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Driver {
    pub(crate) fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `script` (a function body returning a value) until `done` holds for its result.
pub(crate) async fn until(
    c: &Client,
    script: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        if done(&v) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "waited 20 s for {what}: last {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub(crate) async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The number in `shown` (e.g. "grad 1.5729") agrees with `exact` to the digits shown:
/// within half a unit of its last digit.
fn agrees(shown: &str, exact: f64) -> bool {
    let num = shown.trim().rsplit(' ').next().unwrap();
    let value: f64 = num.parse().unwrap_or(f64::NAN);
    let mantissa = num.split(['e', 'E']).next().unwrap();
    let exponent: i32 = num
        .split(['e', 'E'])
        .nth(1)
        .map_or(0, |e| e.parse().unwrap());
    let decimals = mantissa.split('.').nth(1).map_or(0, str::len) as i32;
    let half_unit = 0.5 * 10f64.powi(exponent - decimals);
    let significant = mantissa.trim_start_matches('-').replace('.', "");
    let significant = significant.trim_start_matches('0').len();
    significant >= 4 && (value - exact).abs() <= half_unit * (1.0 + 1e-9)
}

pub(crate) fn screenshots() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn walk_view(c: &Client, base: &str) {
    let at = chainrule::explain::parse_assignments("x=2,w=-0.5,b=1.5").unwrap();
    let engine = chainrule::explain::explain("tanh(w*x + b)", &at).unwrap();
    c.goto(&format!("{base}/walk")).await.unwrap();
    let expr = c.wait().for_element(Locator::Css("#expr")).await.unwrap();
    // first a mistake: the error appears inline, pointing at its column
    expr.clear().await.unwrap();
    expr.send_keys("tanh(w*x +").await.unwrap();
    click(c, "#go").await;
    let error = until(
        c,
        "const e = document.getElementById('expr-error'); return e && !e.hidden ? e.textContent : null;",
        "the inline error",
        |v| v.is_string(),
    )
    .await;
    assert!(error.as_str().unwrap().contains("column 11"), "{error}");
    // then the expression and its values, as a learner types them
    expr.clear().await.unwrap();
    expr.send_keys("tanh(w*x + b)").await.unwrap();
    let values = c.find(Locator::Css("#at")).await.unwrap();
    values.clear().await.unwrap();
    values.send_keys("x=2,w=-0.5,b=1.5").await.unwrap();
    click(c, "#go").await;
    let total = until(
        c,
        "const s = document.getElementById('step-count'); const e = document.getElementById('expr-error'); return s && e.hidden ? Number(s.dataset.total) : null;",
        "the walk",
        |v| v.as_u64().is_some_and(|t| t > 0),
    )
    .await
    .as_u64()
    .unwrap() as usize;
    // forward pass node by node, the seed, then every edge of the reverse sweep
    assert_eq!(total, engine.forward.len() + 1 + engine.edges.len());
    let next = c.find(Locator::Css("#next")).await.unwrap();
    for k in 1..=total {
        next.click().await.unwrap();
        let shown = text_of(c, "#step-count").await;
        assert_eq!(shown, format!("step {k} of {total}"));
        if k == engine.forward.len() {
            // the forward pass is done: the output node shows f's value
            let out = text_of(
                c,
                &format!("g.node[data-id='{}'] .value", engine.forward.len() - 1),
            )
            .await;
            assert!(agrees(&out, engine.value), "{out} against {}", engine.value);
        }
    }
    // the gradient of w, on its node after the sweep and in the table
    let w = engine.gradient["w"];
    let on_node = text_of(c, "g.node[data-label='w'] .grad").await;
    assert!(on_node.starts_with("grad "), "{on_node}");
    assert!(agrees(&on_node, w), "node shows {on_node}, the engine {w}");
    let in_table = text_of(c, "#grad-table tr[data-var='w'] td.reverse").await;
    assert!(
        agrees(&in_table, w),
        "table shows {in_table}, the engine {w}"
    );
    // the keyboard steps too: ← goes back into the sweep, where an edge is highlighted
    let body = c.find(Locator::Css("body")).await.unwrap();
    body.send_keys("\u{E012}\u{E012}").await.unwrap();
    assert_eq!(
        text_of(c, "#step-count").await,
        format!("step {} of {total}", total - 2)
    );
    let running = text_of(c, "#edge-running").await;
    assert!(!running.is_empty());
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("walk.png"), png).unwrap();
    // a shared URL shows every variable's gradient with no click
    c.goto(&format!(
        "{base}/walk?expr=tanh(w*x%2Bb)&at=x=2,w=-0.5,b=1.5"
    ))
    .await
    .unwrap();
    c.wait()
        .for_element(Locator::Css("#grad-table"))
        .await
        .unwrap();
    for (name, g) in &engine.gradient {
        let shown = text_of(c, &format!("#grad-table tr[data-var='{name}'] td.reverse")).await;
        assert!(agrees(&shown, *g), "{name}: shown {shown}, engine {g}");
    }
}

async fn runs_view(c: &Client, base: &str, runs: &Path) {
    c.goto(&format!("{base}/runs")).await.unwrap();
    let link = c
        .wait()
        .for_element(Locator::Css("#runs-list a[href='/runs/digits']"))
        .await
        .unwrap();
    link.click().await.unwrap();
    let count = "const p = document.querySelector(\"path[data-series='batch']\"); return p ? Number(p.dataset.points) : null;";
    let before = until(c, count, "the loss curve", |v| {
        v.as_u64().is_some_and(|n| n > 0)
    })
    .await
    .as_u64()
    .unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("runs.png"), png).unwrap();
    // a row appended while the page is open: the curve grows by one point
    let log = runs.join("digits/metrics.jsonl");
    let last_step = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .max()
        .unwrap();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    // a torn line first (the page must wait for its end), then the rest of it
    write!(f, "{{\"step\":{},\"loss\":0.5,", last_step + 1).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let torn = c.execute(count, vec![]).await.unwrap().as_u64().unwrap();
    assert_eq!(torn, before, "a torn line was drawn");
    writeln!(f, "\"grad_norm\":0.25,\"clipped\":false}}").unwrap();
    f.flush().unwrap();
    until(c, count, "the appended row", |v| {
        v.as_u64() == Some(before + 1)
    })
    .await;
}

#[test]
fn the_page_walks_the_chain_rule_and_draws_a_run_in_chromium() {
    let required = std::env::var("CHAINRULE_BROWSER_TEST").is_ok_and(|v| v == "require");
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            !required,
            "CHAINRULE_BROWSER_TEST=require, but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let dir = crate::common::temp("serve-browser");
    let runs = dir.join("runs");
    // a real run for the runs view: the MLP on the embedded digits, a few steps
    let out = crate::common::chainrule(&[
        "train",
        "--out",
        runs.join("digits").to_str().unwrap(),
        "--max-steps",
        "60",
        "--seed",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&runs, &dir);
    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1200,820", "--hide-scrollbars"],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a Chromium session");
        let base = server.url();
        walk_view(&c, &base).await;
        runs_view(&c, &base, &runs).await;
        c.close().await.unwrap();
    });
    eprintln!("screenshots: {}", screenshots().display());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
