//! `GET /api/cost`: what a gradient costs, measured on request with `chainrule
//! compare`'s own functions and timings — W4's gradient (f: Rᴺ → R) by reverse mode,
//! forward mode and central differences, or W5's Jacobian (g: R → Rᴹ) by each mode. A
//! measurement uses the machine: one runs at a time, and each is cut to about a second.

use crate::commands::compare::{Plan, Row, run_f, run_g};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest N of f and M of g a request may ask for.
const MAX_N: usize = 1_000_000;
const MAX_M: usize = 100_000;
/// Sampling time of each method. Four methods, each its warm-up, its samples and at least
/// three calls: with calls capped at [`CAP_S`], a request stays near a second.
const BUDGET: Duration = Duration::from_millis(40);
/// A method whose one call is predicted to take longer than this is skipped, and says so.
const CAP_S: f64 = 0.06;
/// A method predicted to end past this time from the request's start is skipped too: on
/// a machine busy with other work the sampling budgets alone could add up to more.
const TIME_LIMIT: Duration = Duration::from_secs(1);

/// Whether a measurement is running: a second one would time the first's load too.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Clears [`BUSY`] when the measurement ends, however it ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// The size asked for: `n` (f's inputs) or `m` (g's outputs), exactly one of them.
fn size(q: &HashMap<String, String>) -> Result<(&'static str, usize), String> {
    let read = |key: &str, max: usize| -> Result<Option<usize>, String> {
        let Some(text) = q.get(key) else {
            return Ok(None);
        };
        let v: usize = text
            .trim()
            .parse()
            .map_err(|_| format!("{key} is '{text}', not a whole number"))?;
        if !(1..=max).contains(&v) {
            return Err(format!("{key} is {v}; it must be between 1 and {max}"));
        }
        Ok(Some(v))
    };
    match (read("n", MAX_N)?, read("m", MAX_M)?) {
        (Some(n), None) => Ok(("f", n)),
        (None, Some(m)) => Ok(("g", m)),
        _ => Err("give n (the inputs of f, for its gradient) or m (the outputs of g, for its Jacobian), one of them".into()),
    }
}

/// Measures one size; the rows as `compare --json` writes them.
fn measure(function: &'static str, n: usize) -> serde_json::Value {
    let start = Instant::now();
    let plan = Plan {
        deadline: Some(start + TIME_LIMIT),
        budget: BUDGET,
        cap_s: CAP_S,
        f_sizes: if function == "f" { vec![n] } else { vec![] },
        g_sizes: if function == "g" { vec![n] } else { vec![] },
    };
    let mut rows: Vec<Row> = Vec::new();
    run_f(&plan, &mut rows);
    let picked = run_g(&plan, &mut rows);
    serde_json::json!({
        "function": function,
        "n": n,
        "rows": rows,
        "jacobian_picks": picked.first().map(|(_, mode)| format!("{mode:?}").to_lowercase()),
        "took_s": start.elapsed().as_secs_f64(),
    })
}

/// `GET /api/cost?n=N` or `?m=M`: the measurement, 400 with one line for a bad size, or
/// 503 with `busy` while another measurement runs.
pub(super) async fn handler(
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let (function, n) = match size(&q) {
        Ok(s) => s,
        Err(msg) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": msg })),
            )
                .into_response();
        }
    };
    if BUSY.swap(true, Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({
                "error": "busy: another measurement is running on this server; retry in a second",
                "busy": true,
            })),
        )
            .into_response();
    }
    let running = Running;
    super::blocking_json(move || {
        let _running = running;
        Ok(measure(function, n))
    })
    .await
}
