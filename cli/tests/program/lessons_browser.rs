//! The lessons in a real browser (headless Chromium through chromedriver, as
//! `serve_browser.rs`): the ravine example draws SGD's path longer than momentum's, with
//! the first three points of each the library's own steps to the digits shown, and a
//! click on the plot starts the paths there; the cost page draws a point for each N
//! measured; the quiz marks a wrong answer and accepts a right one, whose explanation
//! quotes the engine's figures. Screenshots of each lesson go to
//! `target/tmp/screenshots/`.
//!
//! Without `chromium` and `chromium-driver` installed the test says so and passes,
//! unless `CHAINRULE_BROWSER_TEST=require`.

use crate::common::Server;
use crate::lessons::{library_optimizer, library_path};
use crate::serve_browser::{Driver, browser_at_hand, click, screenshots, session, text_of, until};
use fantoccini::{Client, Locator};

/// The number `shown` as the page prints it (six significant digits, trailing zeros
/// dropped) agrees with `exact`: within half a unit of its sixth significant digit.
fn agrees6(shown: &str, exact: f64) -> bool {
    let Ok(v) = shown.trim().parse::<f64>() else {
        return false;
    };
    if exact == 0.0 {
        return v == 0.0;
    }
    let half = 0.5 * 10f64.powi(exact.abs().log10().floor() as i32 - 5);
    (v - exact).abs() <= half * (1.0 + 1e-9)
}

/// `(x, y)` as the table shows a point.
fn point(text: &str) -> (String, String) {
    let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
    let (x, y) = inner.split_once(", ").unwrap_or_else(|| panic!("{text}"));
    (x.to_string(), y.to_string())
}

/// Waits for an answer of the optimizers page newer than `after` and returns its number.
async fn optimizers_ready(c: &Client, after: u64) -> u64 {
    until(
        c,
        "const r = document.getElementById('opt-result'); return r && r.dataset.ready ? Number(r.dataset.ready) : 0;",
        "the optimizers' paths",
        |v| v.as_u64().is_some_and(|n| n > after),
    )
    .await
    .as_u64()
    .unwrap()
}

/// The first three points of each optimizer in the table against the library's steps
/// from `start` on the gradient `grad`.
async fn first_points_agree(
    c: &Client,
    names: &[&str],
    settings: &serde_json::Value,
    start: [f64; 2],
    grad: impl Fn([f64; 2]) -> [f64; 2] + Copy,
) {
    for name in names {
        let expected = library_path(library_optimizer(name, settings), start, 2, grad);
        for (k, e) in expected.iter().enumerate() {
            let shown = text_of(
                c,
                &format!("#opt-table tr[data-optimizer='{name}'] .pt[data-k='{k}']"),
            )
            .await;
            let (x, y) = point(&shown);
            assert!(
                agrees6(&x, e[0]) && agrees6(&y, e[1]),
                "{name}, point {k}: the page shows {shown}, the library {e:?}"
            );
        }
    }
}

async fn optimizers_view(c: &Client, base: &str) {
    c.goto(&format!("{base}/optimizers")).await.unwrap();
    let first = optimizers_ready(c, 0).await;
    // the ravine: κ = 50, η = 0.038 just under 2/λ_max = 0.04, momentum 0.7
    let curvature = text_of(c, "#curvature").await;
    assert!(curvature.contains("eigenvalues 1 and 50"), "{curvature}");
    assert!(curvature.contains("2/λ_max = 0.04"), "{curvature}");
    let length = |name: &str| {
        format!(
            "const p = document.querySelector(\"path.trajectory[data-optimizer='{name}']\"); return p ? Number(p.dataset.length) : null;"
        )
    };
    let sgd = c.execute(&length("sgd"), vec![]).await.unwrap();
    let momentum = c.execute(&length("momentum"), vec![]).await.unwrap();
    let (sgd, momentum) = (sgd.as_f64().unwrap(), momentum.as_f64().unwrap());
    assert!(
        sgd > 1.5 * momentum,
        "SGD's path {sgd} is not longer than momentum's {momentum}"
    );
    let mut settings = serde_json::json!({
        "lr": 0.038, "momentum": 0.7, "lr_adaptive": 0.1, "alpha": 0.99,
        "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01,
    });
    let ravine = |[x, y]: [f64; 2]| [x, 50.0 * y];
    let all = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"];
    first_points_agree(c, &all, &settings, [-4.0, 1.0], ravine).await;
    // drawn again from the example button, nothing the page does breaks its own policy
    // (a style attribute would), and each optimizer wears its colour
    c.execute(
        "window.violations = []; document.addEventListener('securitypolicyviolation', (e) => window.violations.push(e.violatedDirective));",
        vec![],
    )
    .await
    .unwrap();
    click(c, "#example-ravine").await;
    let first = optimizers_ready(c, first).await;
    let violations = c
        .execute("return window.violations;", vec![])
        .await
        .unwrap();
    assert_eq!(violations, serde_json::json!([]));
    let colour = c
        .execute(
            "return getComputedStyle(document.querySelector(\"#opt-table tr[data-optimizer='sgd'] b\")).color;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(colour, "rgb(31, 95, 191)");
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("optimizers.png"), png).unwrap();
    // the learning rate slider past 2/λ_max = 0.04: SGD's path leaves for good
    c.execute(
        "const s = document.getElementById('opt-lr'); s.value = '0.045'; s.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await
    .unwrap();
    let first = optimizers_ready(c, first).await;
    let stopped = text_of(c, "#opt-table tr[data-optimizer='sgd'] .stopped").await;
    assert!(stopped.starts_with("diverged at step"), "{stopped}");
    let momentum = c
        .find(Locator::Css(
            "#opt-table tr[data-optimizer='momentum'] .stopped",
        ))
        .await;
    assert!(momentum.is_err(), "momentum's path stopped too");
    settings["lr"] = serde_json::json!(0.045);
    // a click on the plot starts every path there
    c.find(Locator::Css("#contour"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    optimizers_ready(c, first).await;
    let url = c.current_url().await.unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let start = [q["x0"].parse().unwrap(), q["y0"].parse().unwrap()];
    assert!(start != [-4.0, 1.0], "{url}");
    first_points_agree(c, &all, &settings, start, ravine).await;
    // Rosenbrock from the menu: its own formula and defaults
    let pick = c.find(Locator::Css("#opt-function")).await.unwrap();
    pick.select_by_value("rosenbrock").await.unwrap();
    until(
        c,
        "const e = document.getElementById('curvature'); return e ? e.textContent : '';",
        "Rosenbrock's paths",
        |v| v.as_str().is_some_and(|t| t.contains("100*(y - x^2)^2")),
    )
    .await;
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("optimizers-rosenbrock.png"), png).unwrap();
    // a typed expression: a mistake named in one line, then its own curvature
    let pick = c.find(Locator::Css("#opt-function")).await.unwrap();
    pick.select_by_value("expr").await.unwrap();
    let expr = c.find(Locator::Css("#opt-expr")).await.unwrap();
    expr.clear().await.unwrap();
    expr.send_keys("x*w").await.unwrap();
    click(c, "#opt-go").await;
    let error = until(
        c,
        "const e = document.getElementById('opt-error'); return e && !e.hidden ? e.textContent : null;",
        "the expression's error",
        |v| v.is_string(),
    )
    .await;
    assert_eq!(error, "the expression may use x and y only; it uses 'w'");
    expr.clear().await.unwrap();
    expr.send_keys("x^2 + 3*y^2").await.unwrap();
    click(c, "#opt-go").await;
    let curvature = until(
        c,
        "const e = document.getElementById('curvature'); const r = document.getElementById('opt-error'); return e && r.hidden ? e.textContent : '';",
        "the typed function's paths",
        |v| v.as_str().is_some_and(|t| t.contains("x^2 + 3*y^2")),
    )
    .await;
    assert!(
        curvature.as_str().unwrap().contains("eigenvalues 2 and 6"),
        "{curvature}"
    );
}

async fn cost_view(c: &Client, base: &str) {
    c.goto(&format!("{base}/cost")).await.unwrap();
    let n = c.wait().for_element(Locator::Css("#cost-n")).await.unwrap();
    let dots = "const g = document.querySelector(\"#cost-chart-f g.dots[data-series='reverse']\"); return g ? Number(g.dataset.points) : 0;";
    for (k, size) in ["300", "3000"].into_iter().enumerate() {
        n.clear().await.unwrap();
        n.send_keys(size).await.unwrap();
        click(c, "#cost-measure-f").await;
        until(c, dots, "a measured point", |v| {
            v.as_u64() == Some(k as u64 + 1)
        })
        .await;
        // the table's row for this N shows the server's reverse-mode time
        let cell = c
            .find(Locator::Css(&format!(
                "#cost-table-f tr[data-n='{size}'] td.reverse"
            )))
            .await
            .unwrap();
        let seconds: f64 = cell
            .attr("data-seconds")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        assert!(seconds > 0.0 && seconds < 1.0, "{seconds}");
    }
    let sentence = text_of(c, "#cost-crossover-f").await;
    assert!(sentence.contains("everse mode"), "{sentence}");
    click(c, "#cost-measure-g").await;
    until(
        c,
        "const g = document.querySelector(\"#cost-chart-g g.dots[data-series='forward']\"); return g ? Number(g.dataset.points) : 0;",
        "a Jacobian's point",
        |v| v.as_u64() == Some(1),
    )
    .await;
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("cost.png"), png).unwrap();
}

/// The number after `label` in `text` (up to a comma, a space or the end).
fn number_after(text: &str, label: &str) -> String {
    let rest = text
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        .1;
    rest.split([',', ' ']).next().unwrap().to_string()
}

async fn figure_of(c: &Client, q: &str) -> String {
    until(
        c,
        &format!(
            "const f = document.querySelector('#check-{q} .figure'); return f && f.dataset.ready ? f.textContent : null;"
        ),
        "the explanation's figure",
        |v| v.is_string(),
    )
    .await
    .as_str()
    .unwrap()
    .to_string()
}

async fn check_view(c: &Client, server: &Server) {
    c.goto(&format!("{}/check", server.url())).await.unwrap();
    c.wait()
        .for_element(Locator::Css("#check-q1"))
        .await
        .unwrap();
    let verdict = |q: &str| {
        format!(
            "const v = document.querySelector('#check-{q} .verdict'); return v && !v.hidden ? v.dataset.verdict : null;"
        )
    };
    // a wrong answer is marked, with the right one named
    click(c, "#check-q1 input[value='a']").await;
    until(c, &verdict("q1"), "the verdict", |v| v == "wrong").await;
    let text = text_of(c, "#check-q1 .verdict").await;
    assert!(text.contains("The answer is: about 2,000,000"), "{text}");
    assert_eq!(text_of(c, "#check-score").await, "0 of 4 right (3 to go)");
    // the right one is accepted, and its figure is a measurement
    click(c, "#check-q1 input[value='b']").await;
    until(c, &verdict("q1"), "the verdict", |v| v == "right").await;
    let figure = figure_of(c, "q1").await;
    assert!(
        figure.contains("at N = 1000: finite differences"),
        "{figure}"
    );
    // the walk's gradient, as the engine gives it
    click(c, "#check-q4 input[value='b']").await;
    until(c, &verdict("q4"), "the verdict", |v| v == "right").await;
    let figure = figure_of(c, "q4").await;
    let at = chainrule::explain::parse_assignments("x=2,w=-0.5,b=1.5").unwrap();
    let walk = chainrule::explain::explain("tanh(w*x + b)", &at).unwrap();
    for (name, g) in &walk.gradient {
        let shown = number_after(&figure, &format!("∂f/∂{name} = "));
        assert!(agrees6(&shown, *g), "∂f/∂{name}: {shown} against {g}");
    }
    assert!(
        figure.contains(&format!("over {} edges", walk.edges.len())),
        "{figure}"
    );
    // the cliff's longest steps, as the optimizers endpoint computes them
    click(c, "#check-q3 input[value='c']").await;
    let figure = figure_of(c, "q3").await;
    for (clip, label) in [(0, "longest step is "), (1, "without clipping and ")] {
        let (_, body) = server.get(&format!("/api/optimizers?f=cliff&clip={clip}"));
        let a = crate::lessons::json(&body);
        let exact = a["paths"][0]["largest_step"].as_f64().unwrap();
        let shown = number_after(&figure, label);
        assert!(
            agrees6(&shown, exact),
            "clip {clip}: {shown} against {exact}"
        );
    }
    assert_eq!(text_of(c, "#check-score").await, "3 of 4 right (1 to go)");
    c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join("check.png"), png).unwrap();
}

#[test]
fn the_lessons_draw_the_engines_numbers_in_chromium() {
    if !browser_at_hand() {
        return;
    }
    let dir = crate::common::temp("lessons-browser");
    let server = Server::start(&dir.join("runs"), &dir);
    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = session(&driver, [1200, 1100]).await;
        let base = server.url();
        optimizers_view(&c, &base).await;
        cost_view(&c, &base).await;
        check_view(&c, &server).await;
        c.close().await.unwrap();
    });
    eprintln!("screenshots: {}", screenshots().display());
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
