//! `GET /api/optimizers`: the optimizers that train models, run on a function of two
//! variables so that their paths can be drawn. Each step records the function on the
//! tape, takes the gradient from the reverse sweep and hands it to the library's own
//! `Optimizer::step`, in f64 — the page only draws what comes back.

use super::surface::{Surface, eigenvalues};
use chainrule::autodiff::Tape;
use chainrule::nn::ParamStore;
use chainrule::optim::{Adam, Optimizer, RmsProp, Sgd, clip_grad_norm};
use chainrule::tensor::Tensor;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most steps one request may ask for.
pub(super) const MAX_STEPS: usize = 10_000;
/// Wall time all six paths of one request may take together; a path cut short says so.
const TIME_LIMIT: Duration = Duration::from_secs(2);
/// Points per side of the grid the contours are drawn from.
const GRID: usize = 64;
/// A coordinate beyond this is a path that has left the picture for good.
const DIVERGED: f64 = 1e6;
/// Longest typed expression, in bytes (as the walk's).
const MAX_EXPR_BYTES: usize = 1000;

/// The optimizers drawn, in the order of the page's table.
pub(super) const NAMES: [&str; 6] = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"];

/// One function of the menu: its formula in the walk's grammar, where to look, where to
/// start, its minimum when it has one, and the settings its lesson starts from.
struct Preset {
    formula: String,
    view: [f64; 4],
    start: [f64; 2],
    minimum: Option<[f64; 2]>,
    lr: f64,
    lr_adaptive: f64,
    momentum: f64,
    steps: usize,
}

fn preset(name: &str, kappa: f64) -> Option<Preset> {
    let p = |formula: String, view, start, minimum, lr, lr_adaptive, momentum, steps| Preset {
        formula,
        view,
        start,
        minimum,
        lr,
        lr_adaptive,
        momentum,
        steps,
    };
    Some(match name {
        // the ravine: curvature 1 along x, κ across it; lr just under 2/κ at κ = 50
        "quadratic" => p(
            format!("0.5*(x^2 + {kappa}*y^2)"),
            [-5.0, 5.0, -2.5, 2.5],
            [-4.0, 1.0],
            Some([0.0, 0.0]),
            0.038,
            0.1,
            0.7,
            100,
        ),
        "rosenbrock" => p(
            "(1 - x)^2 + 100*(y - x^2)^2".into(),
            [-2.0, 2.0, -1.0, 3.0],
            [-1.5, 2.0],
            Some([1.0, 1.0]),
            0.001,
            0.01,
            0.9,
            2000,
        ),
        "beale" => p(
            "(1.5 - x + x*y)^2 + (2.25 - x + x*y^2)^2 + (2.625 - x + x*y^3)^2".into(),
            [-4.5, 4.5, -4.5, 4.5],
            [1.0, 1.5],
            Some([3.0, 0.5]),
            0.002,
            0.02,
            0.9,
            2000,
        ),
        // a cliff: a wall 40 high within a tenth of x = 1, whose face is hundreds of times
        // steeper than the slope that leads to it (docs/clipping.md, in two dimensions)
        "cliff" => p(
            "0.5*(x - 3)^2 + 0.5*y^2 + 40*sigmoid(50*(x - 1))".into(),
            [-3.0, 5.0, -2.0, 2.0],
            [-1.0, 1.0],
            None,
            0.1,
            0.1,
            0.5,
            60,
        ),
        "saddle" => p(
            "x^2 - y^2".into(),
            [-2.0, 2.0, -2.0, 2.0],
            [-1.5, 0.01],
            None,
            0.05,
            0.05,
            0.9,
            25,
        ),
        "expr" => p(
            String::new(),
            [-3.0, 3.0, -3.0, 3.0],
            [-2.0, 2.0],
            None,
            0.01,
            0.05,
            0.9,
            200,
        ),
        _ => return None,
    })
}

/// The settings of one request, every one checked.
pub(super) struct Settings {
    pub(super) function: String,
    pub(super) formula: String,
    pub(super) kappa: f64,
    pub(super) view: [f64; 4],
    pub(super) start: [f64; 2],
    pub(super) minimum: Option<[f64; 2]>,
    pub(super) steps: usize,
    pub(super) lr: f64,
    pub(super) lr_adaptive: f64,
    pub(super) momentum: f64,
    pub(super) alpha: f64,
    pub(super) beta1: f64,
    pub(super) beta2: f64,
    pub(super) weight_decay: f64,
    /// The gradient's global norm is clipped to this before each step (0: not clipped).
    pub(super) clip: f64,
}

/// A number from the query, or the default; the error names the field and the range.
fn number(
    q: &HashMap<String, String>,
    name: &str,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, String> {
    let Some(text) = q.get(name).filter(|t| !t.trim().is_empty()) else {
        return Ok(default);
    };
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{name} is '{text}', not a number"))?;
    if !range.contains(&v) {
        return Err(format!(
            "{name} is {v}; it must be between {} and {}",
            range.start(),
            range.end()
        ));
    }
    Ok(v)
}

impl Settings {
    /// Reads the query: `f` (quadratic, rosenbrock, beale, cliff, saddle or expr),
    /// `expr`, `kappa`, `x0`, `y0`, `steps`, `lr`, `lr_adaptive`, `momentum`, `alpha`,
    /// `beta1`, `beta2`, `weight_decay`, `clip`; anything left out is the function's default.
    pub(super) fn from_query(q: &HashMap<String, String>) -> Result<Settings, String> {
        let function = q.get("f").map_or("quadratic", String::as_str).to_string();
        let kappa = number(q, "kappa", 50.0, 1.0..=1000.0)?;
        let Some(mut p) = preset(&function, kappa) else {
            return Err(format!(
                "f is '{function}'; choose quadratic, rosenbrock, beale, cliff, saddle or expr"
            ));
        };
        if function == "expr" {
            let text = q.get("expr").map_or("", String::as_str);
            if text.trim().is_empty() {
                return Err("expr is empty: type a function of x and y".into());
            }
            if text.len() > MAX_EXPR_BYTES {
                return Err(format!(
                    "expr is {} bytes long; the page takes at most {MAX_EXPR_BYTES}",
                    text.len()
                ));
            }
            p.formula = text.to_string();
        }
        let steps = number(q, "steps", p.steps as f64, 1.0..=MAX_STEPS as f64)?;
        if steps.fract() != 0.0 {
            return Err(format!("steps is {steps}; it must be a whole number"));
        }
        let (x0, x1, y0, y1) = (p.view[0], p.view[1], p.view[2], p.view[3]);
        Ok(Settings {
            kappa,
            start: [
                number(q, "x0", p.start[0], x0..=x1)?,
                number(q, "y0", p.start[1], y0..=y1)?,
            ],
            steps: steps as usize,
            lr: number(q, "lr", p.lr, 0.0..=10.0)?,
            lr_adaptive: number(q, "lr_adaptive", p.lr_adaptive, 0.0..=10.0)?,
            momentum: number(q, "momentum", p.momentum, 0.0..=0.999)?,
            alpha: number(q, "alpha", 0.99, 0.0..=0.9999)?,
            beta1: number(q, "beta1", 0.9, 0.0..=0.999)?,
            beta2: number(q, "beta2", 0.999, 0.0..=0.99999)?,
            weight_decay: number(q, "weight_decay", 0.01, 0.0..=1.0)?,
            clip: number(q, "clip", 0.0, 0.0..=1000.0)?,
            view: p.view,
            minimum: p.minimum,
            formula: p.formula,
            function,
        })
    }

    /// The optimizer `name` with these settings, as the library builds it for training.
    pub(super) fn optimizer(&self, name: &str) -> Box<dyn Optimizer<f64>> {
        match name {
            "sgd" => Box::new(Sgd::new(self.lr, 0.0, false, 0.0)),
            "momentum" => Box::new(Sgd::new(self.lr, self.momentum, false, 0.0)),
            "nesterov" => Box::new(Sgd::new(self.lr, self.momentum, true, 0.0)),
            "rmsprop" => Box::new(RmsProp::new(self.lr_adaptive, self.alpha, 0.0)),
            "adam" => Box::new(Adam::with_betas(
                self.lr_adaptive,
                0.0,
                false,
                (self.beta1, self.beta2),
            )),
            _ => Box::new(Adam::with_betas(
                self.lr_adaptive,
                self.weight_decay,
                true,
                (self.beta1, self.beta2),
            )),
        }
    }
}

/// One optimizer's path: the points (the start first), `f` at each, and why it ended
/// early if it did.
#[derive(Serialize)]
pub(super) struct Path {
    pub(super) name: &'static str,
    pub(super) points: Vec<[f64; 2]>,
    pub(super) loss: Vec<f64>,
    /// The first step after which the point is within 1e-3 of the minimum.
    pub(super) reached: Option<usize>,
    /// The longest single step.
    pub(super) largest_step: f64,
    /// The path's length, step by step.
    pub(super) length: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stopped: Option<String>,
}

/// Runs optimizer `name` from the start for the settings' steps (or until `deadline`).
pub(super) fn path(
    surface: &Surface,
    s: &Settings,
    name: &'static str,
    deadline: Instant,
) -> Result<Path, String> {
    let mut store = ParamStore::<f64>::new();
    let fail = |e: chainrule::Error| e.to_string();
    store.add("x", Tensor::scalar(s.start[0])).map_err(fail)?;
    store.add("y", Tensor::scalar(s.start[1])).map_err(fail)?;
    let mut opt = s.optimizer(name);
    let mut out = Path {
        name,
        points: Vec::with_capacity(s.steps + 1),
        loss: Vec::with_capacity(s.steps + 1),
        reached: None,
        largest_step: 0.0,
        length: 0.0,
        stopped: None,
    };
    for step in 0..=s.steps {
        let at = [0, 1].map(|i| store.get(chainrule::nn::ParamId(i)).data()[0]);
        let tape = Tape::<f64>::new();
        let params = store.leaves(&tape);
        let loss = surface
            .record(&tape, params.vars()[0], params.vars()[1])
            .map_err(fail)?;
        let value = loss.item().map_err(fail)?;
        if let Some(before) = out.points.last() {
            let step = (at[0] - before[0]).hypot(at[1] - before[1]);
            out.largest_step = out.largest_step.max(step);
            out.length += step;
        }
        out.points.push(at);
        out.loss.push(value);
        if out.reached.is_none()
            && let Some(m) = s.minimum
            && (at[0] - m[0]).hypot(at[1] - m[1]) < 1e-3
        {
            out.reached = Some(step);
        }
        if value.is_nan() {
            out.stopped = Some(format!(
                "f is not defined at step {step}, at ({}, {})",
                at[0], at[1]
            ));
            break;
        }
        if !(value.is_finite() && at.iter().all(|c| c.abs() < DIVERGED)) {
            out.stopped = Some(format!("diverged at step {step}"));
            break;
        }
        if step == s.steps {
            break;
        }
        if Instant::now() > deadline {
            out.stopped = Some(format!(
                "stopped at step {step}: the request's {} s were spent",
                TIME_LIMIT.as_secs()
            ));
            break;
        }
        let mut grads = tape.backward(loss).map_err(fail)?;
        let mut grads = params.grads(&mut grads).map_err(fail)?;
        if s.clip > 0.0 {
            clip_grad_norm(&mut grads, s.clip, false).map_err(fail)?;
        }
        // the optimizer updates the store in place: the step's tape lets go of it first
        drop(params);
        drop(tape);
        opt.step(&mut store, &grads).map_err(fail)?;
    }
    Ok(out)
}

/// The whole answer: the function, its grid, the Hessian where the lesson reads it, and
/// every optimizer's path.
pub(super) fn answer(q: &HashMap<String, String>) -> Result<serde_json::Value, String> {
    let s = Settings::from_query(q)?;
    let surface = Surface::parse(&s.formula)?;
    let grid = surface.grid(GRID, s.view).map_err(|e| e.to_string())?;
    // the curvature at the minimum where there is one, else where the paths start
    let here = s.minimum.unwrap_or(s.start);
    let hessian = surface
        .hessian(here[0], here[1])
        .map_err(|e| e.to_string())?;
    let lambda = eigenvalues(hessian);
    let deadline = Instant::now() + TIME_LIMIT;
    let paths = NAMES
        .iter()
        .map(|name| path(&surface, &s, name, deadline))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(serde_json::json!({
        "function": s.function,
        "formula": s.formula,
        "kappa": s.kappa,
        "view": s.view,
        "start": s.start,
        "minimum": s.minimum,
        "steps": s.steps,
        "settings": {
            "lr": s.lr, "lr_adaptive": s.lr_adaptive, "momentum": s.momentum,
            "alpha": s.alpha, "beta1": s.beta1, "beta2": s.beta2,
            "weight_decay": s.weight_decay, "clip": s.clip,
        },
        "grid": { "n": GRID, "values": grid },
        "curvature": {
            "at": here,
            "hessian": hessian,
            "eigenvalues": lambda,
            // gradient descent diverges along an eigenvector once lr·λ > 2
            "stable_lr": (lambda[1] > 0.0).then(|| 2.0 / lambda[1]),
            "lr_times_lambda_max": s.lr * lambda[1],
        },
        "paths": paths,
    }))
}

/// `GET /api/optimizers?f=…`: [`answer`] as JSON, or 400 with `error`, one line.
pub(super) async fn handler(
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    // six paths of up to 10,000 recorded steps: CPU work, off the tasks that answer others
    super::blocking_json(move || answer(&q)).await
}
