//! `chainrule serve`: the learner's page. A small HTTP server (axum on hyper) that walks
//! an expression through the chain rule with the same engine as `explain`, and draws the
//! runs under a folder while they train. The page's HTML, script and style are compiled
//! into the binary; the server only reads, and only regular files under the runs folder.

mod cost;
mod layout;
mod optimizers;
mod runs;
mod surface;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chainrule::Error;
use chainrule::explain::{evaluate, explain, parse_assignments};
use runs::Runs;
use serde::Deserialize;
use serde_json::json;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Longest expression (and list of values) the walk endpoint takes, in bytes.
const MAX_EXPR_BYTES: usize = 1000;
/// Largest request head (request line and headers) a connection may send.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Time a client has to send a request's head before its connection is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const OPTIMIZERS_JS: &str = include_str!("assets/optimizers.js");
const COST_JS: &str = include_str!("assets/cost.js");
const CHECK_JS: &str = include_str!("assets/check.js");

/// Options of `chainrule serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Folder whose run folders the runs view lists and draws.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Open the page in the default browser.
    #[arg(long)]
    open: bool,
    /// Address to listen on. Anything but a loopback address makes the page, and every
    /// file under --runs, reachable from other machines.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot listen on {addr} (another program may hold the port: pass --port N, or --port 0 for any free one)"
        )
    })?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    if !args.bind.is_loopback() {
        eprintln!(
            "warning: listening on {}, not on a loopback address: other machines can reach the page and every file under {}",
            args.bind,
            args.runs.display()
        );
    }
    let url = format!("http://{local}/");
    println!(
        "chainrule serve: {url} (runs from {}; Ctrl-C stops)",
        args.runs.display()
    );
    std::io::stdout().flush()?;
    if args.open
        && let Err(e) = open::that_detached(&url)
    {
        eprintln!("could not open a browser ({e}); open {url} yourself");
    }
    let app = router(Runs::new(&args.runs));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        accept_loop(listener, app).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves each connection on its own task, so one slow or stuck client holds only its
/// own; a client that does not finish its request head in time is disconnected.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // out of file descriptors, say: wait for connections to close
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES);
            // a client that breaks its connection ends only its own task
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn router(runs: Runs) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/walk", get(page))
        .route("/runs", get(page))
        .route("/runs/{name}", get(page))
        .route("/optimizers", get(page))
        .route("/api/optimizers", get(optimizers::handler))
        .route("/cost", get(page))
        .route("/api/cost", get(cost::handler))
        .route("/check", get(page))
        .route("/assets/{file}", get(asset))
        .route("/api/walk", get(walk))
        .route("/api/grammar", get(grammar))
        .route("/api/evaluate", get(evaluate_answer))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{name}/metrics", get(metrics))
        .route("/files/{*path}", get(file))
        .fallback(|| async { not_found() })
        .with_state(Arc::new(runs))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The page refuses scripts, styles and frames from anywhere but this server.
const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "optimizers.js" => (OPTIMIZERS_JS, "text/javascript; charset=utf-8"),
        "cost.js" => (COST_JS, "text/javascript; charset=utf-8"),
        "check.js" => (CHECK_JS, "text/javascript; charset=utf-8"),
        _ => return not_found(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct WalkQuery {
    #[serde(default)]
    expr: String,
    #[serde(default)]
    at: String,
}

/// `GET /api/walk?expr=…&at=…`: the walk as `explain --json` gives it, with `layout`
/// (columns, rows and edge routes for drawing); or 400 with `error`, `field` (`expr` or
/// `at`) and, for an expression that does not parse, `column` (from 1).
async fn walk(Query(q): Query<WalkQuery>) -> Response {
    for (field, text) in [("expr", &q.expr), ("at", &q.at)] {
        if text.len() > MAX_EXPR_BYTES {
            let msg = format!(
                "{} is {} bytes long; the page takes at most {MAX_EXPR_BYTES}",
                if field == "expr" {
                    "the expression"
                } else {
                    "the list of values"
                },
                text.len()
            );
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": msg, "field": field})),
            )
                .into_response();
        }
    }
    // recording and checking is CPU work: off the tasks that answer other requests
    match tokio::task::spawn_blocking(move || walk_json(&q.expr, &q.at)).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(v)) => (StatusCode::BAD_REQUEST, axum::Json(v)).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn walk_json(expr: &str, at: &str) -> Result<serde_json::Value, serde_json::Value> {
    let at = parse_assignments(at).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.strip_prefix("explain: --at: ").unwrap_or(&msg);
        json!({"error": msg, "field": "at"})
    })?;
    let walk = explain(expr, &at).map_err(|e| match &e {
        Error::Expression { column, msg, .. } => {
            json!({"error": format!("column {column}: {msg}"), "column": column, "field": "expr"})
        }
        _ => {
            let msg = e.to_string();
            let msg = msg.strip_prefix("explain: ").unwrap_or(&msg).to_string();
            match missing_variable(&msg) {
                Some(name) => json!({
                    "error": format!("{msg}; give it in the values box, e.g. {name}=1"),
                    "field": "at"
                }),
                None => json!({"error": msg, "field": "expr"}),
            }
        }
    })?;
    let inputs: Vec<Vec<usize>> = walk.forward.iter().map(|n| n.inputs.clone()).collect();
    let mut v = serde_json::to_value(&walk).map_err(|e| json!({"error": e.to_string()}))?;
    v["layout"] = serde_json::to_value(layout::layout(&inputs))
        .map_err(|e| json!({"error": e.to_string()}))?;
    Ok(v)
}

/// `GET /api/evaluate?expr=…&at=…`: the value of a learner's answer (a number or a rule
/// in the walk's names, the names' values in `at`), or 400 with `error`.
async fn evaluate_answer(Query(q): Query<WalkQuery>) -> Response {
    if q.expr.len() > MAX_EXPR_BYTES || q.at.len() > MAX_EXPR_BYTES {
        let msg = format!("an answer and its values take at most {MAX_EXPR_BYTES} bytes each");
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response();
    }
    let value = parse_assignments(&q.at).and_then(|at| evaluate(&q.expr, &at));
    match value {
        // JSON has no infinity: a non-finite value is null, which the page reports
        Ok(v) => axum::Json(json!({ "value": v })).into_response(),
        Err(e) => {
            let msg = match &e {
                Error::Expression { column, msg, .. } => format!("column {column}: {msg}"),
                _ => {
                    let msg = e.to_string();
                    msg.strip_prefix("explain: ").unwrap_or(&msg).to_string()
                }
            };
            (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response()
        }
    }
}

/// The variable named by the engine's "variable 'NAME' has no value".
fn missing_variable(msg: &str) -> Option<&str> {
    msg.strip_prefix("variable '")?
        .strip_suffix("' has no value")
}

/// `GET /api/grammar`: the walk's operators (each with the characters also read as
/// it) and functions, from the parser's own lists, for the page to show.
async fn grammar() -> Response {
    let operators: Vec<serde_json::Value> = chainrule::explain::OPERATORS
        .iter()
        .map(|(op, also)| json!({"op": op.to_string(), "also": also.iter().map(char::to_string).collect::<Vec<_>>()}))
        .collect();
    axum::Json(json!({
        "operators": operators,
        "functions": chainrule::explain::functions(),
    }))
    .into_response()
}

async fn list_runs(State(runs): State<Arc<Runs>>) -> Response {
    match tokio::task::spawn_blocking(move || runs.list()).await {
        Ok(list) => axum::Json(json!({ "runs": list })).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Deserialize)]
struct MetricsQuery {
    #[serde(default)]
    from: u64,
}

/// `GET /api/runs/NAME/metrics?from=OFFSET`: the complete rows of the run's
/// metrics.jsonl from a byte offset on, and the offset to ask from next.
async fn metrics(
    State(runs): State<Arc<Runs>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<MetricsQuery>,
) -> Response {
    match tokio::task::spawn_blocking(move || runs.metrics(&name, q.from)).await {
        Ok(Some(chunk)) => {
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(chunk)).into_response()
        }
        _ => not_found(),
    }
}

/// `GET /files/RUN/FILE`: a regular file under the runs folder, nothing else.
async fn file(State(runs): State<Arc<Runs>>, UrlPath(path): UrlPath<String>) -> Response {
    let kind = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("jsonl" | "txt" | "md") => "text/plain; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    let read = tokio::task::spawn_blocking(move || runs.read(&path)).await;
    let Ok(Some(body)) = read else {
        return not_found();
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // a file is data: no script in an SVG of a run folder runs on this origin
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Runs `work` on a blocking thread: its JSON, or 400 with its one-line error.
async fn blocking_json(
    work: impl FnOnce() -> Result<serde_json::Value, String> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(msg)) => {
            (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
