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

/// Opens the walk of `expr` at `at` (and `step`, when given) and waits for it.
async fn open_walk(c: &Client, base: &str, expr: &str, at: &str, step: Option<usize>) {
    let enc = |t: &str| {
        t.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'=' | b',' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let step = step.map_or(String::new(), |k| format!("&step={k}"));
    c.goto(&format!(
        "{base}/walk?expr={}&at={}{step}",
        enc(expr),
        enc(at)
    ))
    .await
    .unwrap();
    until(
        c,
        "const s = document.getElementById('step-count'); const e = document.getElementById('expr-error'); return (s && e.hidden) || (e && !e.hidden) ? true : null;",
        "the walk or its error",
        |v| v == &serde_json::Value::Bool(true),
    )
    .await;
}

/// Steps through every step of the open walk and returns, for each step that shows
/// an edge label, the nodes the label's box overlaps (empty: none does).
const LABEL_OVERLAPS: &str = r#"
const out = [];
document.getElementById('first').click();
const total = Number(document.getElementById('step-count').dataset.total);
for (let k = 1; k <= total; k++) {
  document.getElementById('next').click();
  const label = document.querySelector('#graph .edge-label');
  if (label.getAttribute('visibility') !== 'visible') continue;
  const a = label.querySelector('rect').getBBox();
  const t = label.querySelector('text').getBBox();
  const hit = [];
  for (const g of document.querySelectorAll('#graph g.node')) {
    const b = g.querySelector('rect').getBBox();
    for (const r of [a, t]) {
      if (r.x < b.x + b.width && r.x + r.width > b.x && r.y < b.y + b.height && r.y + r.height > b.y) hit.push(g.dataset.id);
    }
  }
  out.push(hit);
}
return out;
"#;

/// Each of the walk's presentation fixes, on the page: rules in the operands' names,
/// one arrow per use, the exponent's edge, labels off the nodes, a kink explained, the
/// grammar's own list, the step in the URL, and v̄ defined once.
async fn walk_tells_the_truth(c: &Client, base: &str) {
    let at = chainrule::explain::parse_assignments("x=2,w=-0.5,b=1.5").unwrap();
    let engine = chainrule::explain::explain("tanh(w*x + b)", &at).unwrap();
    let n = engine.forward.len();
    // the step of the edge w → (w × x), opened from a link that names it
    let j = engine
        .edges
        .iter()
        .position(|e| engine.forward[e.from].name == "w")
        .unwrap();
    let step = n + 1 + j + 1;
    open_walk(c, base, "tanh(w*x + b)", "x=2,w=-0.5,b=1.5", Some(step)).await;
    assert_eq!(
        text_of(c, "#step-count").await,
        format!("step {step} of {}", n + 1 + engine.edges.len())
    );
    let rule = text_of(c, "#edge-rule").await;
    assert_eq!(rule, "∂v3/∂w = x = 2");
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("walk-edge.png"), png).unwrap();
    click(c, "#next").await;
    let url = c.current_url().await.unwrap();
    assert!(
        url.as_str().ends_with(&format!("&step={}", step + 1)),
        "{url}"
    );
    // the inner node's rule is about the inner node: relu(−x) at 0.7 reads v1 = −0.7
    let walk = chainrule::explain::explain(
        "relu(-x)",
        &chainrule::explain::parse_assignments("x=0.7").unwrap(),
    )
    .unwrap();
    open_walk(c, base, "relu(-x)", "x=0.7", Some(walk.forward.len() + 2)).await;
    let rule = text_of(c, "#edge-rule").await;
    assert_eq!(rule, "∂v2/∂v1 = 1 if v1 > 0 else 0, with v1 = -0.7");
    // v̄ = ∂f/∂v is said once, in the introduction
    let said = c
        .execute(
            "return document.body.innerText.split('v̄ = ∂f/∂v').length - 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(said, 1);
    // x used three times: three arrows out of x
    open_walk(c, base, "x*x + sin(x)", "x=0.7", None).await;
    let arrows = c
        .execute(
            "return document.querySelectorAll(\"#graph path.edge[data-from='0']\").length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(arrows, 3);
    c.execute(
        "document.getElementById('last').click(); document.getElementById('prev').click();",
        vec![],
    )
    .await
    .unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("walk-fanout.png"), png).unwrap();
    // x^2: the exponent is a node with its edge, the node reads as the learner wrote it
    let walk = chainrule::explain::explain(
        "x^2 + y",
        &chainrule::explain::parse_assignments("x=3,y=1").unwrap(),
    )
    .unwrap();
    let power = walk.forward.iter().find(|n| n.op == "powf").unwrap();
    open_walk(c, base, "x^2 + y", "x=3,y=1", None).await;
    let title = text_of(c, &format!("g.node[data-id='{}'] .title", power.id)).await;
    assert_eq!(title, format!("{} = x^2", power.name));
    let from_two = c
        .execute(
            &format!(
                "return document.querySelectorAll(\"#graph path.edge[data-from='{}'][data-to='{}']\").length;",
                power.inputs[1], power.id
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(from_two, 1);
    // edge labels lie off every node in every step, here and in a two-layer net
    for (expr, at) in [
        ("tanh(w*x + b)", "x=2,w=-0.5,b=1.5"),
        (
            "sigmoid(c1*tanh(w1*x + b1) + c2*tanh(w2*x + b2) + d)",
            "x=0.5,w1=1,b1=0,w2=-1,b2=0.5,c1=2,c2=-1,d=0.1",
        ),
    ] {
        open_walk(c, base, expr, at, None).await;
        let overlaps = c.execute(LABEL_OVERLAPS, vec![]).await.unwrap();
        let steps = overlaps.as_array().unwrap();
        assert!(!steps.is_empty(), "{expr}: no label shown");
        assert!(
            steps.iter().all(|h| h.as_array().unwrap().is_empty()),
            "{expr}: labels over nodes {overlaps}"
        );
    }
    c.execute(
        "document.getElementById('prev').click(); document.getElementById('prev').click();",
        vec![],
    )
    .await
    .unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("walk-net.png"), png).unwrap();
    // a kink: the table's disagreement comes with its reason
    open_walk(c, base, "relu(x) - relu(-x)", "x=0", None).await;
    let note = text_of(c, "p.disagree[data-var='x']").await;
    assert!(note.contains("relu(x) sits at its kink (x = 0)"), "{note}");
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("walk-kink.png"), png).unwrap();
    // the page lists the parser's own operators and functions, and each one parses
    let listed = until(
        c,
        "const g = document.getElementById('grammar'); return g && g.textContent !== '…' ? g.textContent : null;",
        "the grammar",
        |v| v.is_string(),
    )
    .await;
    let listed = listed.as_str().unwrap();
    for f in chainrule::explain::functions() {
        assert!(listed.contains(f), "{f} missing from {listed}");
        let expr = if f == "max" || f == "min" {
            format!("{f}(x, 1)")
        } else {
            format!("{f}(x)")
        };
        chainrule::explain::parse(&expr).unwrap();
    }
    for (op, also) in chainrule::explain::OPERATORS {
        for ch in std::iter::once(op).chain(also.iter().copied()) {
            assert!(listed.contains(ch), "{ch} missing from {listed}");
            chainrule::explain::parse(&format!("x {ch} y")).unwrap();
        }
    }
    // U+2212, as listed, walks; an unknown function from elsewhere gets a suggestion
    open_walk(c, base, "x − y", "x=1,y=2", None).await;
    assert_eq!(text_of(c, "#value").await, "-1");
    open_walk(c, base, "log(x)", "x=1", None).await;
    let e = text_of(c, "#expr-error").await;
    assert!(e.contains("ln(x)"), "{e}");
    // a missing value names the page's box, not the program's flag
    open_walk(c, base, "x*y", "x=1", None).await;
    let e = text_of(c, "#expr-error").await;
    assert!(
        e.contains("variable 'y' has no value") && e.contains("values box") && !e.contains("--at"),
        "{e}"
    );
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

/// The walk as an exercise: before each reverse edge the learner gives ∂v/∂u (here the
/// rule, typed in the walk's names) and the contribution (here a wrong number); the
/// first is accepted, the second marked with the right value and how it is made, the
/// score counts both, and the menu's exercises open in practice at the seed.
async fn exercise(c: &Client, base: &str) {
    let at = chainrule::explain::parse_assignments("x=2,w=-0.5,b=1.5").unwrap();
    let engine = chainrule::explain::explain("tanh(w*x + b)", &at).unwrap();
    let n = engine.forward.len();
    c.goto(&format!(
        "{base}/walk?expr=tanh(w*x%2Bb)&at=x=2,w=-0.5,b=1.5&mode=exercise&step={}",
        n + 1
    ))
    .await
    .unwrap();
    c.wait().for_element(Locator::Css("#graph")).await.unwrap();
    click(c, "#next").await;
    let first = &engine.edges[0];
    assert_eq!(first.rule, "1 - tanh²(v4)");
    // the edge is not shown yet, and next waits for the answers
    let held = c
        .execute(
            "return [document.getElementById('next').disabled, !!document.getElementById('edge-local')];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(held, serde_json::json!([true, false]));
    let step = text_of(c, "#step-count").await;
    c.execute(
        "document.body.dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowRight', bubbles: true })); document.getElementById('last').click();",
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        text_of(c, "#step-count").await,
        step,
        "→ and end went past the question"
    );
    let answer = c.find(Locator::Css("#answer-local")).await.unwrap();
    answer.send_keys("1 - tanh(v4)^2").await.unwrap();
    click(c, "#check-local").await;
    let mark = c
        .wait()
        .for_element(Locator::Css("#mark-local.right"))
        .await
        .unwrap();
    let text = mark.text().await.unwrap();
    assert!(text.starts_with("✓ right"), "{text}");
    let answer = c.find(Locator::Css("#answer-contribution")).await.unwrap();
    answer.send_keys("5").await.unwrap();
    click(c, "#check-contribution").await;
    let text = c
        .wait()
        .for_element(Locator::Css("#mark-contribution.wrong"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with("✗ you gave 5; it is v5̄ · ∂v5/∂v4 = 1 × "),
        "{text}"
    );
    let shown = text.rsplit(" = ").next().unwrap();
    assert!(agrees(shown, first.contribution), "{text}");
    // now the edge is shown as always, and the score counts both parts
    assert!(agrees(&text_of(c, "#edge-local").await, first.local));
    let score = text_of(c, "#score").await;
    assert_eq!(score, "score: 1 of 2 right");
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("walk-exercise.png"), png).unwrap();
    // the next edge: a number within 1% is right
    click(c, "#next").await;
    let second = &engine.edges[1];
    let answer = c.find(Locator::Css("#answer-local")).await.unwrap();
    answer
        .send_keys(&format!("{:.4}", second.local))
        .await
        .unwrap();
    click(c, "#check-local").await;
    c.wait()
        .for_element(Locator::Css("#mark-local.right"))
        .await
        .unwrap();
    // the menu's exercises, smallest first, open in practice at the seed
    let labels = c
        .execute(
            "return [...document.querySelectorAll('#examples optgroup:last-of-type option')].map((o) => o.textContent);",
            vec![],
        )
        .await
        .unwrap();
    let labels: Vec<String> = serde_json::from_value(labels).unwrap();
    assert_eq!(labels.len(), 4, "{labels:?}");
    assert!(labels[0].starts_with("1. one node") && labels[3].starts_with("4. a two-layer net"));
    c.execute(
        "const s = document.getElementById('examples'); s.value = 'x0'; s.onchange();",
        vec![],
    )
    .await
    .unwrap();
    until(
        c,
        "const s = document.getElementById('step-count'); const p = document.getElementById('practise'); return s && p && p.checked && document.getElementById('expr').value === 'sin(x)' ? s.textContent : null;",
        "the first exercise",
        |v| v.as_str() == Some("step 3 of 4"),
    )
    .await;
}

/// The titles of the charts drawn on the page, in order.
async fn chart_titles(c: &Client) -> Vec<String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll('#charts svg.chart')].map((s) => s.dataset.title);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// The run pages draw what each folder holds, as the program measured it: the
/// classifier's accuracy and the language model's bits per character (not its loss
/// again), the train loss across the steps it is the mean of, a run that never clipped
/// without "before clipping", and a folder without a training log (compare's) as a
/// folder of results: not an error, not polled every second, with its crossover
/// sentence and ratios and every tick inside its chart.
async fn run_pages(c: &Client, base: &str, runs: &Path) {
    c.goto(&format!("{base}/runs/digits")).await.unwrap();
    let titles = until(
        c,
        "const s = document.querySelectorAll('#charts svg.chart'); return s.length ? s.length : null;",
        "the charts",
        |v| v.as_u64().is_some(),
    )
    .await;
    assert!(titles.as_u64().unwrap() >= 3);
    let titles = chart_titles(c).await;
    assert_eq!(titles[1], "validation accuracy", "{titles:?}");
    let evals = crate::common::eval_rows(&runs.join("digits"));
    let train = c
        .execute(
            "return Number(document.querySelector(\"path[data-series^='train']\").dataset.points);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(train.as_u64(), Some(2 * evals.len() as u64));
    // the language model, trained with --no-clip
    c.goto(&format!("{base}/runs/text")).await.unwrap();
    until(
        c,
        "const s = document.querySelectorAll('#charts svg.chart'); return s.length ? s.length : null;",
        "the text run's charts",
        |v| v.as_u64().is_some(),
    )
    .await;
    let titles = chart_titles(c).await;
    assert_eq!(
        titles,
        [
            "loss",
            "validation bits per char",
            "learning rate",
            "gradient norm (log; no step clipped)"
        ]
    );
    // compare's folder: results, no training log
    c.goto(&format!("{base}/runs/cost")).await.unwrap();
    let status = until(
        c,
        "const s = document.getElementById('run-status'); return s && s.textContent.includes('training log') ? s.textContent : null;",
        "the folder's status",
        |v| v.is_string(),
    )
    .await;
    assert!(
        status
            .as_str()
            .unwrap()
            .contains("no training log (metrics.jsonl)"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let asked = c
        .execute(
            "return performance.getEntriesByType('resource').filter((e) => e.name.includes('/metrics')).length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        asked.as_u64(),
        Some(1),
        "the missing log was asked for again"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("cost/compare.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    // the program's crossover rule, for f: the first N at which reverse beats forward
    let mut prev = None;
    let mut expected =
        "For f, forward mode stayed faster than reverse mode at every N measured.".to_string();
    let mut sizes: Vec<u64> = rows
        .iter()
        .filter(|r| r["function"] == "f")
        .map(|r| r["n"].as_u64().unwrap())
        .collect();
    sizes.dedup();
    for n in sizes {
        let t = |m: &str| {
            rows.iter()
                .find(|r| r["function"] == "f" && r["n"] == n && r["method"] == m)
                .and_then(|r| r["median_s"].as_f64())
        };
        let wins = match (t("forward"), t("reverse")) {
            (Some(a), Some(b)) => b < a,
            (None, Some(_)) => true,
            _ => false,
        };
        if wins {
            let from = prev.unwrap_or(n);
            expected = if from == n {
                format!("For f, reverse mode is already faster than forward mode at N = {n}.")
            } else {
                format!(
                    "For f, reverse mode overtakes forward mode between N = {from} and N = {n}."
                )
            };
            break;
        }
        prev = Some(n);
    }
    assert_eq!(text_of(c, "p.crossover[data-function='f']").await, expected);
    let last = rows
        .iter()
        .rfind(|r| r["function"] == "f" && r["method"] == "reverse")
        .unwrap();
    let cell = text_of(
        c,
        "table.ratios[data-function='f'] tr[data-method='reverse'] td:last-child",
    )
    .await;
    assert!(
        agrees(&cell, last["ratio"].as_f64().unwrap()),
        "{cell} against {last}"
    );
    let cut = c
        .execute(
            "return [...document.querySelectorAll('#extras svg.chart')].flatMap((s) => [...s.querySelectorAll('text.tick')].filter((t) => { const b = t.getBBox(); return b.x < 0 || b.x + b.width > s.width.baseVal.value; }).map((t) => t.textContent));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cut, serde_json::json!([]), "tick labels cut off");
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("runs-compare.png"), png).unwrap();
    // the clipping folder's key figure: both runs' loss and norm over the steps
    c.goto(&format!("{base}/runs/clipping")).await.unwrap();
    let drawn = until(
        c,
        "const f = document.getElementById('clipping-figure'); return f ? [...f.querySelectorAll('path.line')].map((p) => [p.dataset.series, Number(p.dataset.points)]) : null;",
        "the clipping figure",
        |v| v.is_array(),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("clipping/clipping.json")).unwrap(),
    )
    .unwrap();
    let pair = &json["pair"];
    let len = |run: &str, what: &str| pair[run][what].as_array().unwrap().len();
    let clip = pair["clip"].as_f64().unwrap();
    assert_eq!(
        drawn,
        serde_json::json!([
            [
                "clipped at norm ".to_string() + &clip.to_string(),
                len("clipped", "loss")
            ],
            ["no clipping", len("unclipped", "loss")],
            [
                "clipped at norm ".to_string() + &clip.to_string(),
                len("clipped", "grad_norm")
            ],
            ["no clipping", len("unclipped", "grad_norm")],
        ])
    );
    assert!(len("unclipped", "loss") > 10);
    // no legend runs into its chart's title or out of its chart
    let crowded = c
        .execute(
            "return [...document.querySelectorAll('#extras svg.chart')].flatMap((s) => { const t = s.querySelector('.chart-title').getBBox(); return [...s.querySelectorAll('.legend-text')].filter((l) => { const b = l.getBBox(); return b.x < 0 || b.x + b.width > s.width.baseVal.value || (b.x < t.x + t.width && b.y < t.y + t.height && b.y + b.height > t.y); }).map((l) => l.textContent); });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        crowded,
        serde_json::json!([]),
        "legends over titles or cut off"
    );
    c.execute(
        "document.getElementById('clipping-figure').scrollIntoView();",
        vec![],
    )
    .await
    .unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("runs-clipping.png"), png).unwrap();
}

/// Whether Chromium and its driver are installed; without them a browser test says so and
/// passes, unless `CHAINRULE_BROWSER_TEST=require` (as in `.ci/run`), where it fails.
pub(crate) fn browser_at_hand() -> bool {
    let required = std::env::var("CHAINRULE_BROWSER_TEST").is_ok_and(|v| v == "require");
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        !required,
        "CHAINRULE_BROWSER_TEST=require, but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
    );
    eprintln!(
        "skipped: needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    );
    false
}

/// A headless Chromium session through `driver`, with a window of `[width, height]`.
pub(crate) async fn session(driver: &Driver, [width, height]: [u32; 2]) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", format!("--window-size={width},{height}"), "--hide-scrollbars"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

#[test]
fn the_page_walks_the_chain_rule_and_draws_a_run_in_chromium() {
    if !browser_at_hand() {
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
    // a language model trained without clipping, and compare's folder of results
    let out = crate::common::chainrule(&[
        "train",
        "--data",
        "macbeth",
        "--model",
        "rnn",
        "--embed",
        "8",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--seq-len",
        "16",
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        "--no-clip",
        "--out",
        runs.join("text").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    // compare takes no --max-time, which the helper adds to the commands that train
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chainrule"))
        .args(["compare", "--quick", "--json", "--out"])
        .arg(runs.join("cost"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let out = crate::common::chainrule(&[
        "clipping",
        "--quick",
        "--json",
        "--out",
        runs.join("clipping").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let server = Server::start(&runs, &dir);
    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = session(&driver, [1200, 820]).await;
        let base = server.url();
        walk_view(&c, &base).await;
        walk_tells_the_truth(&c, &base).await;
        exercise(&c, &base).await;
        runs_view(&c, &base, &runs).await;
        run_pages(&c, &base, &runs).await;
        c.close().await.unwrap();
    });
    eprintln!("screenshots: {}", screenshots().display());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
