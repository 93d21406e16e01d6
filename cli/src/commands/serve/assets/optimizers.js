// The optimizers lesson: the server runs chainrule's own optimizers on a function of x
// and y (gradients from its tape, updates from its optim module, f64); this page draws
// the contours, the paths and the loss, and reads every number from the answer.
"use strict";

const OPTIMIZERS = [
  ["sgd", "SGD", "#1f5fbf", "p ← p − η·g", "Steps straight down the gradient. Across a ravine the gradient points mostly at the far wall: with η·λ_max near 2 each step overshoots, and the path zig-zags."],
  ["momentum", "momentum", "#d0421b", "b ← μ·b + g;  p ← p − η·b", "Keeps a velocity b, a running sum of past gradients. The pushes across the ravine alternate in sign and cancel in b; the steady pull along it adds up."],
  ["nesterov", "Nesterov", "#7a3fb0", "b ← μ·b + g;  p ← p − η·(g + μ·b)", "Momentum that looks one step ahead: the step adds μ·b to the gradient once more. Its effective step is larger, so it needs a smaller η than momentum."],
  ["rmsprop", "RMSprop", "#2a8a3e", "v ← α·v + (1−α)·g²;  p ← p − η·g / (√v + ε)", "Divides each coordinate's step by the root mean square of its recent gradients: steep and flat directions move at about the same pace, η per step."],
  ["adam", "Adam", "#c27c0e", "m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − η·m̂ / (√v̂ + ε)", "Momentum (m) and RMSprop's scaling (v) together, each corrected for starting at zero: m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)."],
  ["adamw", "AdamW", "#0e8c93", "p ← p·(1 − η·λ);  then Adam's step", "Adam with decoupled weight decay λ: every step first shrinks p toward 0, so it settles where the pull of the function balances the decay, not exactly at the minimum."],
];

/** The menu: value, name, the optimizers shown at first, and what to look for. */
const FUNCTIONS = [
  ["quadratic", "ill-conditioned quadratic (a ravine)", "sgd,momentum",
    "Curvature 1 along x and κ across: a long narrow ravine. With η just under 2/λ_max, SGD's steps across the ravine overshoot and come back, and its progress along it is slow; momentum at the same η turns the zig-zag into a damped path. Drag κ to narrow the ravine, or η past 2/λ_max to watch SGD diverge."],
  ["rosenbrock", "Rosenbrock's banana valley", "",
    "A curved valley whose floor falls gently to the minimum at (1, 1). Every optimizer reaches the floor quickly; the question is how fast each then travels along it. The table counts the steps to within 1e-3 of the minimum."],
  ["beale", "Beale's function", "",
    "Flat plateaus and steep walls, with the minimum at (3, 0.5): the gradient's size varies by orders of magnitude, which the adaptive optimizers (RMSprop, Adam) divide out. Dividing it out is not always faster: the table shows which gets there first at these settings."],
  ["cliff", "a cliff (try clipping)", "sgd",
    "A wall 40 high around x = 1, its face hundreds of times steeper than the slope that leads to it. A step that lands on the face is thrown back far. Set \"clip the gradient's norm\" to 1: every step is then at most η long, in the gradient's direction."],
  ["saddle", "a saddle, x² − y²", "",
    "A point where f curves up along x and down along y. Starting almost on the x axis, the gradient along y is tiny at first: plain SGD lingers near the saddle, momentum and the adaptive optimizers leave it sooner."],
  ["expr", "your expression in x and y", "",
    "Any function of x and y in the walk's grammar (+ − * / ^, exp, ln, sqrt, sin, cos, tanh, sigmoid, relu, max, min, …), drawn over −3 ≤ x, y ≤ 3."],
];

/** The sliders: query name, label, min, max, step, and which optimizers read it. */
const SLIDERS = [
  ["lr", "learning rate η (SGD, momentum, Nesterov)", 0.0001, 0.1, 0.0001],
  ["lr_adaptive", "learning rate η (RMSprop, Adam, AdamW)", 0.001, 0.5, 0.001],
  ["momentum", "momentum μ", 0, 0.99, 0.01],
  ["alpha", "RMSprop α", 0.5, 0.999, 0.001],
  ["beta1", "Adam β₁", 0, 0.99, 0.01],
  ["beta2", "Adam β₂", 0.5, 0.9999, 0.0001],
  ["weight_decay", "AdamW weight decay λ", 0, 0.5, 0.01],
  ["clip", "clip the gradient's norm at (0: off)", 0, 10, 0.1],
];

const RAVINE = { f: "quadratic", kappa: "50", lr: "0.038", momentum: "0.7", steps: "100", show: "sgd,momentum" };

/** `e` in `color`, through the style object: the page's policy refuses style attributes. */
function colored(e, color) {
  e.style.color = color;
  return e;
}

function optimizersView(main) {
  const params = new URLSearchParams(location.search);
  if (![...params.keys()].length) for (const [k, v] of Object.entries(RAVINE)) params.set(k, v);
  const state = { params, answer: null, timer: null, seq: 0 };
  const pick = el("select", { id: "opt-function", "aria-label": "function" },
    FUNCTIONS.map(([v, label]) => el("option", { value: v }, label)));
  const about = el("p", { id: "opt-about", class: "note" });
  pick.value = params.get("f") || "quadratic";
  const expr = el("input", { id: "opt-expr", type: "text", size: 36, spellcheck: "false", "aria-label": "expression in x and y", value: params.get("expr") || "x^2 + 10*sin(y)^2" });
  const exprBox = el("label", { id: "opt-expr-box" }, " f(x, y) = ", expr, " ", el("button", { id: "opt-go", type: "button" }, "Draw"));
  const kappa = el("input", { id: "opt-kappa", type: "range", min: 1, max: 200, step: 1, value: params.get("kappa") || 50 });
  const kappaOut = el("output", { id: "opt-kappa-value" });
  const kappaBox = el("label", { id: "opt-kappa-box" }, " condition number κ ", kappa, " ", kappaOut);
  const steps = el("input", { id: "opt-steps", type: "number", min: 1, max: 10000, value: params.get("steps") || "", "aria-label": "steps" });
  const ravine = el("button", { id: "example-ravine", type: "button" }, "Example: the ravine, SGD against momentum");
  const sliders = el("div", { class: "sliders" });
  const inputs = {};
  for (const [name, label, min, max, step] of SLIDERS) {
    const input = el("input", { id: `opt-${name}`, type: "range", min, max, step });
    const out = el("output", { id: `opt-${name}-value` });
    inputs[name] = [input, out];
    input.oninput = () => { out.textContent = input.value; state.params.set(name, input.value); schedule(state, 150); };
    const limit = name === "lr" ? el("span", { id: "opt-lr-limit", class: "limit" }) : null;
    sliders.append(el("label", { class: "slider" }, el("span", {}, label, limit), input, out));
  }
  const shown = new Set((params.get("show") || OPTIMIZERS.map((o) => o[0]).join(",")).split(","));
  const boxes = el("div", { class: "optimizer-boxes" },
    OPTIMIZERS.map(([id, name, color]) => {
      const box = el("input", { type: "checkbox", id: `show-${id}`, checked: shown.has(id) });
      box.onchange = () => {
        const on = OPTIMIZERS.map((o) => o[0]).filter((o) => document.getElementById(`show-${o}`).checked);
        state.params.set("show", on.join(","));
        history.replaceState(null, "", `/optimizers?${state.params}`);
        if (state.answer) draw(state);
      };
      return colored(el("label", {}, box, ` ${name} `), color);
    }));
  const error = el("div", { id: "opt-error", class: "error", hidden: true });
  const out = el("div", { id: "opt-result" });
  main.append(
    el("h1", {}, "Optimizers on a surface"),
    el("p", { class: "intro" },
      "Every optimizer turns the gradient the chain rule gives into a step. Here the server runs chainrule's own optimizers, the code that trains its models, on a function of two variables, with gradients from its tape, in f64; ",
      "the page draws each path over the function's contours. Click the plot to start from there; move a slider to run again."),
    el("div", { class: "walk-form" }, ravine, " or ", pick, kappaBox, exprBox, el("label", {}, " steps ", steps)),
    about, sliders, boxes, error, out);
  state.els = { sliders, about, pick, expr, exprBox, kappa, kappaOut, kappaBox, steps, inputs, error, out };
  pick.onchange = () => {
    // another function, on its own default settings and with its own optimizers shown
    const keep = new URLSearchParams({ f: pick.value });
    if (pick.value === "expr") keep.set("expr", expr.value);
    const first = FUNCTIONS.find((f) => f[0] === pick.value)[2];
    if (first) keep.set("show", first);
    state.params = keep;
    for (const [id] of OPTIMIZERS) document.getElementById(`show-${id}`).checked = !first || first.split(",").includes(id);
    syncControls(state);
    schedule(state, 0);
  };
  kappa.oninput = () => { kappaOut.textContent = kappa.value; state.params.set("kappa", kappa.value); schedule(state, 150); };
  steps.onchange = () => { state.params.set("steps", steps.value); schedule(state, 0); };
  const goExpr = () => { state.params.set("expr", expr.value); state.params.delete("x0"); state.params.delete("y0"); schedule(state, 0); };
  exprBox.querySelector("button").onclick = goExpr;
  expr.onkeydown = (ev) => { if (ev.key === "Enter") goExpr(); };
  ravine.onclick = () => {
    state.params = new URLSearchParams(RAVINE);
    for (const [id] of OPTIMIZERS) document.getElementById(`show-${id}`).checked = RAVINE.show.split(",").includes(id);
    syncControls(state);
    schedule(state, 0);
  };
  for (const [id] of OPTIMIZERS) document.getElementById(`show-${id}`).checked = shown.has(id);
  syncControls(state);
  schedule(state, 0);
}

/** Shows the query's function and settings in the controls (the server's defaults fill
 * the rest once it answers). */
function syncControls(state) {
  const { pick, kappa, kappaOut, kappaBox, exprBox, steps } = state.els;
  const p = state.params;
  pick.value = p.get("f") || "quadratic";
  kappaBox.hidden = pick.value !== "quadratic";
  state.els.about.textContent = FUNCTIONS.find((f) => f[0] === pick.value)?.[3] ?? "";
  exprBox.hidden = pick.value !== "expr";
  kappa.value = p.get("kappa") || 50;
  kappaOut.textContent = kappa.value;
  steps.value = p.get("steps") || "";
  for (const [name, [input, out]] of Object.entries(state.els.inputs)) {
    if (p.has(name)) { input.value = p.get(name); out.textContent = p.get(name); }
  }
}

function schedule(state, ms) {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => load(state), ms);
}

async function load(state) {
  const p = new URLSearchParams(state.params);
  if (p.get("f") !== "expr") p.delete("expr");
  history.replaceState(null, "", `/optimizers?${p}`);
  const seq = ++state.seq;
  p.delete("show");
  let body;
  try {
    const r = await fetch(`/api/optimizers?${p}`);
    body = await r.json();
  } catch (err) {
    body = { error: `the server did not answer (${err})` };
  }
  if (seq !== state.seq) return; // a newer request is on its way
  const { error, out } = state.els;
  if (body.error) {
    error.textContent = body.error;
    error.hidden = false;
    // nothing drawn belongs to what was asked; the sliders wait for the server's values
    out.replaceChildren();
    state.answer = null;
    state.els.sliders.hidden = true;
    return;
  }
  error.hidden = true;
  state.els.sliders.hidden = false;
  state.answer = body;
  // the controls show what the server used, defaults included
  for (const [name, [input, o]] of Object.entries(state.els.inputs)) {
    input.value = body.settings[name];
    o.textContent = String(body.settings[name]);
  }
  state.els.steps.value = body.steps;
  const stable = body.curvature.stable_lr;
  document.getElementById("opt-lr-limit").textContent = stable === null ? "" : `; stable below 2/λ_max = ${fmt(stable)}`;
  draw(state);
  out.dataset.ready = String(seq);
}

function shownOptimizers() {
  return OPTIMIZERS.filter(([id]) => document.getElementById(`show-${id}`).checked);
}

function draw(state) {
  const a = state.answer;
  const out = state.els.out;
  out.replaceChildren();
  const paths = Object.fromEntries(a.paths.map((p) => [p.name, p]));
  const on = shownOptimizers();
  const c = a.curvature;
  const lam = c.eigenvalues;
  const defined = lam.every((v) => v !== null);
  const curvature = el("p", { id: "curvature", class: "summary" },
    `f(x, y) = ${a.formula}. `,
    !defined ? `Its Hessian at (${fmt(c.at[0])}, ${fmt(c.at[1])}) is not finite: f is not defined there, or not twice differentiable.`
    : `The Hessian at (${fmt(c.at[0])}, ${fmt(c.at[1])}) has eigenvalues ${fmt(lam[0])} and ${fmt(lam[1])}`,
    !defined ? "" : c.stable_lr === null
      ? ": no positive curvature there, so no learning rate is small enough to make plain gradient descent settle."
      : `. Along the eigenvector of λ_max, gradient descent multiplies the error by 1 − η·λ_max each step: it diverges once η > 2/λ_max = ${fmt(c.stable_lr)}` +
        ` (your η for SGD is ${fmt(a.settings.lr)}, η·λ_max = ${fmt(c.lr_times_lambda_max)}).`,
    defined && lam[0] < 0 ? " λ_min < 0: along its eigenvector f curves down, and gradient descent moves away from this point the faster the further it is." : "");
  out.append(curvature,
    el("div", { class: "charts" }, contour(state, a, on, paths), lossChart(a, on, paths)),
    optimizerTable(a, on, paths));
}

/** Marching squares: for each level, the segments where the grid crosses it. */
function contourPaths(grid, n, levels, X, Y) {
  const v = (i, j) => grid[j * n + i];
  return levels.map((level) => {
    let d = "";
    for (let j = 0; j + 1 < n; j++) for (let i = 0; i + 1 < n; i++) {
      const corners = [[i, j], [i + 1, j], [i + 1, j + 1], [i, j + 1]];
      const vals = corners.map(([a, b]) => v(a, b));
      if (vals.some((x) => x === null)) continue;
      const cross = [];
      for (let k = 0; k < 4; k++) {
        const [p, q] = [k, (k + 1) % 4];
        if ((vals[p] < level) !== (vals[q] < level)) {
          const t = (level - vals[p]) / (vals[q] - vals[p]);
          cross.push([corners[p][0] + t * (corners[q][0] - corners[p][0]), corners[p][1] + t * (corners[q][1] - corners[p][1])]);
        }
      }
      for (let k = 0; k + 1 < cross.length; k += 2) {
        d += `M ${X(cross[k][0]).toFixed(1)} ${Y(cross[k][1]).toFixed(1)} L ${X(cross[k + 1][0]).toFixed(1)} ${Y(cross[k + 1][1]).toFixed(1)} `;
      }
    }
    return d;
  });
}

function contour(state, a, on, paths) {
  const [x0, x1, y0, y1] = a.view;
  const W = 600, ml = 40, mr = 10, mt = 10, mb = 30;
  const pw = W - ml - mr;
  const ph = Math.max(260, Math.min(440, pw * (y1 - y0) / (x1 - x0)));
  const H = ph + mt + mb;
  const X = (x) => ml + (x - x0) / (x1 - x0) * pw;
  const Y = (y) => mt + ph - (y - y0) / (y1 - y0) * ph;
  const n = a.grid.n;
  const root = svg("svg", { id: "contour", class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  // levels at quantiles of the grid's values: as many lines in the valley as on the walls
  const finite = a.grid.values.filter((v) => v !== null).sort((p, q) => p - q);
  const levels = [];
  for (let k = 1; k < 16; k++) {
    const q = finite[Math.floor(finite.length * Math.pow(k / 16, 1.6))];
    if (q !== undefined && !levels.includes(q)) levels.push(q);
  }
  const gx = (i) => X(x0 + (x1 - x0) * i / (n - 1));
  const gy = (j) => Y(y0 + (y1 - y0) * j / (n - 1));
  const ds = contourPaths(a.grid.values, n, levels, gx, gy);
  const clipId = "contour-clip";
  root.append(svg("clipPath", { id: clipId }, svg("rect", { x: ml, y: mt, width: pw, height: ph })));
  const plot = svg("g", { "clip-path": `url(#${clipId})` });
  plot.append(svg("rect", { x: ml, y: mt, width: pw, height: ph, fill: "#fff" }));
  ds.forEach((d, k) => plot.append(svg("path", { d, class: "contour", stroke: `hsl(${215 - 190 * k / levels.length}, 45%, ${72 - 20 * k / levels.length}%)` })));
  if (a.minimum) plot.append(svg("path", { d: `M ${X(a.minimum[0]) - 6} ${Y(a.minimum[1])} h 12 M ${X(a.minimum[0])} ${Y(a.minimum[1]) - 6} v 12`, class: "minimum" }));
  for (const [id, , color] of on) {
    const p = paths[id];
    const d = p.points.map(([x, y], k) => `${k ? "L" : "M"} ${X(x).toFixed(2)} ${Y(y).toFixed(2)}`).join(" ");
    plot.append(svg("path", { d, class: "trajectory", stroke: color, "data-optimizer": id, "data-points": p.points.length, "data-length": p.length }));
  }
  plot.append(svg("circle", { cx: X(a.start[0]), cy: Y(a.start[1]), r: 5, class: "start" }));
  root.append(plot);
  const axes = svg("g", { class: "axes" });
  for (const [t, label] of linearTicks(x0, x1)) axes.append(svg("text", { x: X(t), y: H - mb + 15, class: "tick x" }, label));
  for (const [t, label] of linearTicks(y0, y1)) axes.append(svg("text", { x: ml - 5, y: Y(t) + 4, class: "tick y" }, label));
  axes.append(svg("rect", { x: ml, y: mt, width: pw, height: ph, class: "frame" }),
    svg("text", { x: ml + pw / 2, y: H - 2, class: "axis-label" }, "x   (click to start there)"));
  root.append(axes);
  root.onclick = (ev) => {
    const box = root.getBoundingClientRect();
    const px = (ev.clientX - box.left) * W / box.width, py = (ev.clientY - box.top) * H / box.height;
    if (px < ml || px > ml + pw || py < mt || py > mt + ph) return;
    const x = x0 + (px - ml) / pw * (x1 - x0), y = y0 + (mt + ph - py) / ph * (y1 - y0);
    state.params.set("x0", x.toPrecision(4));
    state.params.set("y0", y.toPrecision(4));
    schedule(state, 0);
  };
  return root;
}

function lossChart(a, on, paths) {
  // every minimum of the menu is 0: there, f itself falls toward 0 on the log axis
  const series = on.map(([id, , color]) => ({
    label: "", color, points: paths[id].loss.map((v, k) => [k, v === null ? NaN : v]),
  }));
  const positive = series.every((s) => s.points.every(([, v]) => !Number.isFinite(v) || v > 0));
  const c = chart({ title: positive ? "f at each step (log axis; colours as above)" : "f at each step (linear axis: f goes below 0)", xLabel: "step", logY: positive, series });
  c.id = "loss-chart";
  return c;
}

function optimizerTable(a, on, paths) {
  const rows = OPTIMIZERS.map(([id, name, color, update, why]) => {
    const p = paths[id];
    const last = p.points[p.points.length - 1];
    const first = p.points.slice(0, 3).map((pt, k) => el("span", { class: "pt", "data-k": k }, `(${fmt(pt[0])}, ${fmt(pt[1])})`));
    const reached = a.minimum === null ? "no minimum" : p.reached === null ? "not within these steps" : `step ${p.reached}`;
    return el("tr", { "data-optimizer": id, class: on.some((o) => o[0] === id) ? "" : "hidden-row" },
      el("td", {}, colored(el("b", {}, name), color), el("div", { class: "update" }, el("code", {}, update)), el("div", { class: "why" }, why)),
      el("td", { class: "num first" }, first.flatMap((s, k) => (k ? [el("br"), s] : [s]))),
      el("td", { class: "num last" }, `(${fmt(last[0])}, ${fmt(last[1])})`, el("br"), `f = ${fmt(p.loss[p.loss.length - 1])}`, p.stopped ? el("div", { class: "stopped" }, p.stopped) : null),
      el("td", { class: "num reached" }, reached),
      el("td", { class: "num length" }, fmt(p.length)),
      el("td", { class: "num largest" }, fmt(p.largest_step)));
  });
  return el("table", { id: "opt-table", class: "edge-table" },
    el("tr", {}, el("th", {}, "optimizer and its update (g = ∇f, the tape's gradient)"), el("th", {}, "first three points"), el("th", {}, "last point"), el("th", {}, "first within 1e-3 of the minimum"), el("th", {}, "path length"), el("th", {}, "longest step")),
    rows);
}
