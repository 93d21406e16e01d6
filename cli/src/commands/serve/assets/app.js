// chainrule's learner's page: the chain rule walked edge by edge, and runs drawn while
// they train. Plain JavaScript, no libraries, no build step: the server compiles this
// file into the binary.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const e = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick" || k === "onchange" || k === "onsubmit") e[k] = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return e;
}
const svg = (tag, attrs, ...children) => el("svg:" + tag, attrs, ...children);

/** A number to six significant digits, trailing zeros dropped; null (the JSON of a
 * non-finite value) as "non-finite". */
function fmt(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "non-finite";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e-4 && a < 1e6) {
    let s = v.toPrecision(6);
    if (s.includes(".")) s = s.replace(/0+$/, "").replace(/\.$/, "");
    return s === "-0" ? "0" : s;
  }
  const [m, e] = v.toExponential(5).split("e");
  const mant = m.includes(".") ? m.replace(/0+$/, "").replace(/\.$/, "") : m;
  return `${mant}e${e.replace("+", "")}`;
}

/** The lessons in their own scripts: path → [nav link, view]. */
const LESSONS = {
  "/optimizers": ["nav-optimizers", (main) => optimizersView(main)],
  "/cost": ["nav-cost", (main) => costView(main)],
  "/check": ["nav-check", (main) => checkView(main)],
};

function route() {
  const main = document.getElementById("main");
  main.replaceChildren();
  const path = location.pathname;
  for (const a of document.querySelectorAll("nav a")) a.classList.remove("here");
  const lesson = LESSONS[path];
  if (lesson) {
    document.getElementById(lesson[0]).classList.add("here");
    lesson[1](main);
  } else if (path.startsWith("/runs/")) {
    document.getElementById("nav-runs").classList.add("here");
    runView(main, decodeURIComponent(path.slice(6)));
  } else if (path === "/runs") {
    document.getElementById("nav-runs").classList.add("here");
    runsView(main);
  } else {
    document.getElementById("nav-walk").classList.add("here");
    walkView(main);
  }
}

// ---------------------------------------------------------------------------------
// The walk

const EXAMPLES = [
  ["tanh(w*x + b)", "x=2,w=-0.5,b=1.5", "a neuron"],
  ["x*x + sin(x)", "x=0.7", "x used three times: contributions add up"],
  ["ln(1 + exp(w*x)) - y*w*x", "x=0.5,w=2,y=1", "logistic loss"],
  ["sigmoid(a*b + c) * a", "a=1.5,b=-2,c=0.5", "a feeds two nodes"],
  ["max(a*b, c) / (a + 2)", "a=1,b=3,c=0.5", "max routes the gradient"],
];

const COL_W = 178;
const ROW_H = 84;
const NODE_W = 128;
const NODE_H = 58;

function walkView(main) {
  const params = new URLSearchParams(location.search);
  const expr = params.get("expr") ?? EXAMPLES[0][0];
  const at = params.get("at") ?? (params.has("expr") ? "" : EXAMPLES[0][1]);
  const exprInput = el("input", { id: "expr", type: "text", value: expr, spellcheck: "false", "aria-label": "expression", size: 40 });
  const atInput = el("input", { id: "at", type: "text", value: at, spellcheck: "false", "aria-label": "values", size: 24 });
  const pick = el("select", { id: "examples", "aria-label": "examples" },
    el("option", { value: "" }, "examples…"),
    EXAMPLES.map(([e, a, what], i) => el("option", { value: i }, `${e}   (${what})`)));
  const form = el("form", { id: "walk-form", class: "walk-form" },
    el("label", {}, "f = ", exprInput),
    el("label", {}, " at ", atInput),
    el("button", { id: "go", type: "submit" }, "Walk"),
    pick);
  const error = el("div", { id: "expr-error", class: "error", hidden: true });
  const result = el("div", { id: "walk" });
  main.append(
    el("p", { class: "intro" },
      "Type an expression in x, w, … (+ − * / ^, exp, ln, sqrt, abs, sin, cos, tanh, sigmoid, relu, erf, gelu, max, min) and the values of its variables. ",
      "The forward pass computes each node from its inputs; the reverse sweep then carries the gradient back along every edge: ",
      "the edge u → v multiplies v̄ (the gradient arriving at v) by the local derivative ∂v/∂u, and u adds up what its edges bring."),
    form, error, result);
  pick.onchange = () => {
    if (pick.value === "") return;
    const [e, a] = EXAMPLES[Number(pick.value)];
    exprInput.value = e;
    atInput.value = a;
    pick.value = "";
    go();
  };
  form.onsubmit = (ev) => { ev.preventDefault(); go(); };
  const go = async () => {
    const e = exprInput.value, a = atInput.value;
    const q = `expr=${encodeURIComponent(e)}&at=${encodeURIComponent(a).replace(/%3D/g, "=").replace(/%2C/g, ",")}`;
    history.replaceState(null, "", `/walk?${q}`);
    let body;
    try {
      const r = await fetch(`/api/walk?${q}`);
      body = await r.json();
    } catch (err) {
      body = { error: `the server did not answer (${err})` };
    }
    if (body.error) {
      showError(error, body, e, a);
      result.replaceChildren();
      return;
    }
    error.hidden = true;
    error.replaceChildren();
    showWalk(result, body);
  };
  go();
}

function showError(box, body, expr, at) {
  box.hidden = false;
  const parts = [el("div", { class: "error-msg" }, body.field === "at" ? `values: ${body.error}` : body.error)];
  if (body.column) {
    const chars = [...expr];
    const i = body.column - 1;
    parts.push(el("pre", { class: "error-at" },
      chars.slice(0, i).join(""),
      el("mark", {}, chars[i] ?? " "),
      chars.slice(i + 1).join(""),
      "\n" + " ".repeat(i) + "^"));
  }
  box.replaceChildren(...parts);
}

/** A short name for node `id`: a variable's name, a constant's value, or v<id>. */
function nodeName(walk, id) {
  const n = walk.forward[id];
  if (n.op === "leaf" || n.op === "constant") return n.label;
  return `v${id}`;
}

function showWalk(box, walk) {
  const n = walk.forward.length;
  const steps = [];
  for (let i = 0; i < n; i++) steps.push({ kind: "forward", node: i });
  steps.push({ kind: "seed", node: n - 1 });
  walk.edges.forEach((e, i) => steps.push({ kind: "edge", edge: i }));
  const incoming = new Array(n).fill(0); // how many contributions each node receives
  for (const e of walk.edges) incoming[e.from] += 1;
  const L = walk.layout;
  const width = Math.max(1, L.cols) * COL_W;
  const height = Math.max(1, L.rows) * ROW_H;
  const px = (col) => 8 + col * COL_W;
  const py = (row) => 8 + row * ROW_H;

  const graph = svg("svg", { id: "graph", width: width + 16, height: height + 16, viewBox: `0 0 ${width + 16} ${height + 16}`, role: "img", "aria-label": "computation graph" });
  graph.append(svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 10, markerHeight: 10, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
  const pathOf = new Map();
  // edges into one node end at different heights, in the order they arrive from
  const endOffset = new Map();
  const byTarget = new Map();
  for (const p of L.paths) {
    if (!byTarget.has(p.to)) byTarget.set(p.to, []);
    byTarget.get(p.to).push(p);
  }
  for (const list of byTarget.values()) {
    list.sort((a, b) => a.points[a.points.length - 2][1] - b.points[b.points.length - 2][1]);
    list.forEach((p, i) => endOffset.set(p, list.length === 1 ? 0 : (i / (list.length - 1) - 0.5) * (NODE_H - 24)));
  }
  for (const p of L.paths) {
    const pts = p.points.map(([c, r], i) => {
      const x = px(c), y = py(r) + NODE_H / 2;
      if (i === 0) return [x + NODE_W, y];
      if (i === p.points.length - 1) return [x, y + endOffset.get(p)];
      return [x + NODE_W / 2, y];
    });
    let d = `M ${pts[0][0]} ${pts[0][1]}`;
    for (let i = 1; i < pts.length; i++) {
      const [x0, y0] = pts[i - 1], [x1, y1] = pts[i];
      const dx = (x1 - x0) / 2;
      d += ` C ${x0 + dx} ${y0} ${x1 - dx} ${y1} ${x1} ${y1}`;
    }
    const path = svg("path", { d, class: "edge", "marker-end": "url(#arrow)", "data-from": p.from, "data-to": p.to });
    pathOf.set(`${p.from}-${p.to}`, path);
    graph.append(path);
  }
  const nodeBox = [];
  for (const node of walk.forward) {
    const x = px(L.col[node.id]), y = py(L.row[node.id]);
    const title = node.op === "leaf" ? node.label : node.op === "constant" ? `const ${node.label}` : `v${node.id} = ${node.op}`;
    const value = svg("text", { x: x + NODE_W / 2, y: y + 36, class: "value" });
    const grad = svg("text", { x: x + NODE_W / 2, y: y + 52, class: "grad" });
    const g = svg("g", { class: `node ${node.op === "leaf" ? "variable" : node.op === "constant" ? "constant" : "op"}`, "data-id": node.id, "data-label": node.label || `v${node.id}` },
      svg("rect", { x, y, width: NODE_W, height: NODE_H, rx: 8 }),
      svg("text", { x: x + NODE_W / 2, y: y + 18, class: "title" }, title),
      value, grad);
    nodeBox.push({ g, value, grad });
    graph.append(g);
  }
  const edgeLabel = svg("g", { class: "edge-label", visibility: "hidden" }, svg("rect", { rx: 4 }), svg("text", {}));
  graph.append(edgeLabel);

  const info = el("div", { id: "step-info", class: "step-info" });
  const count = el("span", { id: "step-count" });
  const btn = (id, label, title, f) => el("button", { id, type: "button", title, onclick: f }, label);
  let k = 0;
  let timer = null;
  const play = btn("play", "▶ play", "play (space)", () => toggle());
  const controls = el("div", { class: "controls" },
    btn("first", "« start", "start (Home)", () => show(0)),
    btn("prev", "◀ previous", "previous (←)", () => show(k - 1)),
    play,
    btn("next", "next ▶", "next (→)", () => show(k + 1)),
    btn("last", "end »", "end (End)", () => show(steps.length)),
    count);
  const toggle = () => {
    if (timer) { clearInterval(timer); timer = null; play.textContent = "▶ play"; return; }
    if (k >= steps.length) show(0);
    play.textContent = "⏸ pause";
    timer = setInterval(() => { if (k >= steps.length) toggle(); else show(k + 1); }, 700);
  };

  function show(target) {
    k = Math.max(0, Math.min(steps.length, target));
    count.textContent = `step ${k} of ${steps.length}`;
    count.dataset.step = k;
    count.dataset.total = steps.length;
    const forwardDone = Math.min(k, n);
    const running = new Array(n).fill(null);
    const received = new Array(n).fill(0);
    const reverseStarted = k > n;
    if (reverseStarted) running[n - 1] = 1;
    const edgesDone = Math.max(0, k - n - 1);
    for (let j = 0; j < edgesDone; j++) {
      const e = walk.edges[j];
      running[e.from] = e.running;
      received[e.from] = e.count;
    }
    for (const node of walk.forward) {
      const b = nodeBox[node.id];
      b.value.textContent = node.id < forwardDone ? `= ${fmt(node.value)}` : "";
      const r = running[node.id];
      b.grad.textContent = r === null ? "" : `grad ${fmt(r)}`;
      b.g.classList.toggle("computed", node.id < forwardDone);
      b.g.classList.toggle("complete", r !== null && (node.id === n - 1 || received[node.id] === incoming[node.id]));
      b.g.classList.remove("current", "source");
    }
    for (const [key, p] of pathOf) p.classList.remove("current", "swept");
    for (let j = 0; j < edgesDone; j++) {
      const e = walk.edges[j];
      pathOf.get(`${e.from}-${e.to}`)?.classList.add("swept");
    }
    edgeLabel.setAttribute("visibility", "hidden");
    const step = steps[k - 1];
    if (!step) {
      info.replaceChildren(el("p", {}, "Press ", el("kbd", {}, "→"), " or next to run the forward pass node by node, then the reverse sweep edge by edge."));
    } else if (step.kind === "forward") {
      const node = walk.forward[step.node];
      nodeBox[step.node].g.classList.add("current");
      const name = nodeName(walk, node.id);
      let text;
      if (node.op === "leaf") text = `${name} is a variable: ${name} = ${fmt(node.value)}`;
      else if (node.op === "constant") text = `a constant: ${fmt(node.value)}`;
      else text = `${name} = ${node.op}(${node.inputs.map((i) => nodeName(walk, i)).join(", ")}) = ${fmt(node.value)}`;
      info.replaceChildren(el("p", {}, el("b", {}, "Forward pass. "), text));
    } else if (step.kind === "seed") {
      nodeBox[n - 1].g.classList.add("current");
      info.replaceChildren(el("p", {}, el("b", {}, "Reverse sweep. "),
        `It starts at the output ${nodeName(walk, n - 1)} = ${fmt(walk.value)}: its gradient with respect to itself is 1. `,
        "Now every edge, from the output back to the inputs, carries gradient to its input."));
    } else {
      const e = walk.edges[step.edge];
      const u = nodeName(walk, e.from), v = nodeName(walk, e.to);
      nodeBox[e.to].g.classList.add("source");
      nodeBox[e.from].g.classList.add("current");
      const path = pathOf.get(`${e.from}-${e.to}`);
      path?.classList.add("current");
      if (path) {
        const len = path.getTotalLength();
        const mid = path.getPointAtLength(len * 0.5);
        const text = edgeLabel.querySelector("text");
        text.textContent = `∂${v}/∂${u} = ${fmt(e.local)}`;
        text.setAttribute("x", mid.x);
        text.setAttribute("y", mid.y - 8);
        edgeLabel.setAttribute("visibility", "visible");
        const bb = text.getBBox();
        const rect = edgeLabel.querySelector("rect");
        rect.setAttribute("x", bb.x - 4); rect.setAttribute("y", bb.y - 2);
        rect.setAttribute("width", bb.width + 8); rect.setAttribute("height", bb.height + 4);
      }
      const total = incoming[e.from];
      info.replaceChildren(
        el("p", {}, el("b", {}, `Edge ${u} → ${v} `), `(${e.op}, argument ${e.arg === 0 ? "a" : "b"})`),
        el("table", { class: "edge-table" },
          el("tr", {}, el("th", {}, "local derivative"), el("td", {}, `∂${v}/∂${u} = ${e.formula}`), el("td", { class: "num", id: "edge-local" }, fmt(e.local))),
          el("tr", {}, el("th", {}, "gradient arriving"), el("td", {}, `${v}̄`), el("td", { class: "num" }, fmt(e.upstream))),
          el("tr", {}, el("th", {}, "contribution"), el("td", {}, `${v}̄ · ∂${v}/∂${u} = ${fmt(e.upstream)} × ${fmt(e.local)}`), el("td", { class: "num" }, fmt(e.contribution))),
          el("tr", {}, el("th", {}, "running sum"), el("td", {}, `${u}̄ (${e.count} of ${total} contribution${total === 1 ? "" : "s"})`), el("td", { class: "num", id: "edge-running" }, fmt(e.running)))),
        el("p", { class: "note" }, e.count === total
          ? `${u} has received everything it will: ${u}̄ = ${fmt(e.running)} is final.`
          : `${u} feeds ${total} edges: its gradient is the sum of their contributions.`));
    }
  }

  const table = el("table", { id: "grad-table", class: "grads" },
    el("tr", {}, el("th", {}, "variable"), el("th", {}, "reverse mode (the tape)"), el("th", {}, "forward mode (dual numbers)"), el("th", {}, "central differences"), el("th", {}, "|reverse − differences|")),
    walk.check.map((c) => el("tr", { "data-var": c.name },
      el("td", {}, `∂f/∂${c.name}`),
      el("td", { class: "num reverse" }, fmt(c.reverse)),
      el("td", { class: "num forward" }, fmt(c.forward)),
      el("td", { class: "num fd" }, fmt(c.finite_diff)),
      el("td", { class: "num" }, c.reverse === null || c.finite_diff === null ? "non-finite" : Math.abs(c.reverse - c.finite_diff).toExponential(1)))));
  box.replaceChildren(
    el("div", { class: "summary" }, el("span", {}, "f = "), el("code", {}, walk.expression), el("span", {}, " = "), el("b", { id: "value" }, fmt(walk.value))),
    el("h2", {}, "Step through it"),
    controls,
    el("div", { class: "walk-grid" }, el("div", { class: "graph-box" }, graph), info),
    el("h2", {}, "The gradient, three ways"),
    table);
  show(0);
  document.onkeydown = (ev) => {
    if (!document.getElementById("graph")) return;
    const tag = ev.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    const keys = { ArrowRight: () => show(k + 1), ArrowLeft: () => show(k - 1), Home: () => show(0), End: () => show(steps.length), " ": toggle };
    const f = keys[ev.key];
    if (f) { ev.preventDefault(); f(); }
  };
}

// ---------------------------------------------------------------------------------
// Charts: lines on linear or log axes with round tick labels

function niceStep(span, target) {
  const raw = span / Math.max(1, target);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function linearTicks(lo, hi) {
  const step = niceStep(hi - lo, 5);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    const label = t.toFixed(Math.min(decimals, 20));
    ticks.push([t, label === "-0" || /^-0\.0*$/.test(label) ? label.slice(1) : label]);
  }
  return ticks;
}

function logLabel(t) {
  const a = Math.abs(t);
  if (a >= 1e-3 && a < 1e5) return String(Number(t.toPrecision(3)));
  const [m, e] = t.toExponential(0).split("e");
  return `${m}e${e.replace("+", "")}`;
}

function logTicks(lo, hi) {
  const out = [];
  const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
  const decades = Math.log10(hi / lo);
  const mults = decades > 4 ? [1] : decades > 1.2 ? [1, 2, 5] : [1, 1.5, 2, 3, 5, 7];
  for (let d = a; d <= b; d++) {
    for (const m of mults) {
      const t = Number((m * Math.pow(10, d)).toPrecision(3));
      if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) out.push(t);
    }
  }
  const seen = new Set();
  return out.map((t) => [t, logLabel(t)]).filter(([, l]) => !seen.has(l) && seen.add(l));
}

/** Draws series of [x, y] points. opts: title, xLabel, logX, logY, series (label, color,
 * points, dots, thin), hline (y, label). Non-finite points break a line. */
function chart(opts) {
  const W = 460, H = 250, ml = 58, mr = 12, mt = 28, mb = 36;
  const finite = (v, log) => Number.isFinite(v) && (!log || v > 0);
  const all = opts.series.flatMap((s) => s.points).filter(([x, y]) => finite(x, opts.logX) && finite(y, opts.logY));
  const root = svg("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-title": opts.title });
  root.append(svg("text", { x: ml, y: 17, class: "chart-title" }, opts.title));
  if (all.length === 0) {
    root.append(svg("text", { x: W / 2, y: H / 2, class: "empty" }, "no values yet"));
    return root;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (opts.hline !== undefined && finite(opts.hline.y, opts.logY)) { y0 = Math.min(y0, opts.hline.y); y1 = Math.max(y1, opts.hline.y); }
  const widen = (lo, hi, log) => {
    if (log) return lo === hi ? [lo / 2, hi * 2] : [lo / Math.pow(hi / lo, 0.05), hi * Math.pow(hi / lo, 0.05)];
    if (lo === hi) { const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1; return [lo - d, hi + d]; }
    const pad = (hi - lo) * 0.05;
    return [lo >= 0 && lo - pad < 0 ? 0 : lo - pad, hi + pad];
  };
  [y0, y1] = widen(y0, y1, opts.logY);
  if (x0 === x1) [x0, x1] = widen(x0, x1, opts.logX);
  const map = (v, lo, hi, log, a, b) => {
    const t = log ? (Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo)) : (v - lo) / (hi - lo);
    return a + t * (b - a);
  };
  const X = (v) => map(v, x0, x1, opts.logX, ml, W - mr);
  const Y = (v) => map(v, y0, y1, opts.logY, H - mb, mt);
  const axes = svg("g", { class: "axes" });
  for (const [t, label] of opts.logY ? logTicks(y0, y1) : linearTicks(y0, y1)) {
    const y = Y(t);
    axes.append(svg("line", { x1: ml, x2: W - mr, y1: y, y2: y, class: "grid" }),
      svg("text", { x: ml - 6, y: y + 4, class: "tick y" }, label));
  }
  for (const [t, label] of opts.logX ? logTicks(x0, x1) : linearTicks(x0, x1)) {
    const x = X(t);
    axes.append(svg("line", { x1: x, x2: x, y1: mt, y2: H - mb, class: "grid" }),
      svg("text", { x, y: H - mb + 15, class: "tick x" }, label));
  }
  axes.append(svg("rect", { x: ml, y: mt, width: W - ml - mr, height: H - mt - mb, class: "frame" }),
    svg("text", { x: (ml + W - mr) / 2, y: H - 4, class: "axis-label" }, opts.xLabel || ""));
  root.append(axes);
  const clipId = `clip-${Math.random().toString(36).slice(2)}`;
  root.append(svg("clipPath", { id: clipId }, svg("rect", { x: ml, y: mt, width: W - ml - mr, height: H - mt - mb })));
  const plot = svg("g", { "clip-path": `url(#${clipId})` });
  if (opts.hline !== undefined && finite(opts.hline.y, opts.logY)) {
    plot.append(svg("line", { x1: ml, x2: W - mr, y1: Y(opts.hline.y), y2: Y(opts.hline.y), class: "hline" }));
  }
  const legend = svg("g", { class: "legend" });
  let lx = W - mr - 4;
  for (const s of [...opts.series].reverse()) {
    const ok = s.points.filter(([x, y]) => finite(x, opts.logX) && finite(y, opts.logY));
    if (s.dots) {
      const g = svg("g", { class: "dots", "data-series": s.label, "data-points": ok.length, fill: s.color });
      for (const [x, y] of ok) g.append(svg("circle", { cx: X(x), cy: Y(y), r: 2.5 }));
      plot.append(g);
    } else {
      let d = "", pen = false;
      for (const [x, y] of s.points) {
        if (!finite(x, opts.logX) || !finite(y, opts.logY)) { pen = false; continue; }
        d += `${pen ? "L" : "M"} ${X(x).toFixed(1)} ${Y(y).toFixed(1)} `;
        pen = true;
      }
      plot.append(svg("path", { d, class: "line", stroke: s.color, "stroke-width": s.thin ? 1 : 2, "data-series": s.label, "data-points": ok.length }));
    }
    if (s.label) {
      const t = svg("text", { x: lx, y: 17, class: "legend-text", fill: s.color, "text-anchor": "end" }, s.label);
      legend.append(t);
      lx -= 9 + 7 * s.label.length;
    }
  }
  root.append(plot, legend);
  return root;
}

// ---------------------------------------------------------------------------------
// Runs

function runsView(main) {
  const list = el("div", { id: "runs-list" });
  main.append(el("h1", {}, "Runs"), el("p", { class: "intro" }, "The run folders under the server's --runs folder; a run started with --out there appears here while it trains."), list);
  const refresh = async () => {
    if (!document.body.contains(list)) return;
    const r = await fetch("/api/runs").then((r) => r.json()).catch(() => ({ runs: [] }));
    if (r.runs.length === 0) {
      list.replaceChildren(el("p", {}, "No runs yet. Start one in another terminal, e.g. ", el("code", {}, "chainrule train --out runs/digits"), "."));
    } else {
      list.replaceChildren(el("table", { class: "runs" },
        el("tr", {}, el("th", {}, "run"), el("th", {}, "status"), el("th", {}, "last change"), el("th", {}, "files")),
        r.runs.map((run) => el("tr", {},
          el("td", {}, el("a", { href: `/runs/${encodeURIComponent(run.name)}` }, run.name)),
          el("td", { class: `status ${run.status}` }, run.status),
          el("td", {}, new Date(run.modified * 1000).toLocaleString()),
          el("td", {}, run.files.join(", "))))));
    }
    setTimeout(refresh, 3000);
  };
  refresh();
}

function runView(main, name) {
  const status = el("p", { id: "run-status", class: "intro" }, "reading…");
  const charts = el("div", { id: "charts", class: "charts" });
  const extras = el("div", { id: "extras" });
  main.append(el("h1", {}, `Run ${name}`), status, charts, extras);
  const steps = [], evals = [];
  let next = 0, lastSize = -1;
  const shownExtras = new Set();
  const draw = () => {
    const metricName = evals.length && evals[evals.length - 1].metric_name ? evals[evals.length - 1].metric_name : "validation metric";
    const lrPoints = steps.some((s) => s.lr !== undefined) ? steps.map((s) => [s.step, s.lr]) : evals.map((e) => [e.step, e.lr]);
    charts.replaceChildren(
      chart({ title: "loss", xLabel: "step", series: [
        { label: "batch", color: "#b8c4d6", thin: true, points: steps.map((s) => [s.step, s.loss]) },
        { label: "train", color: "#1f5fbf", points: evals.map((e) => [e.step, e.train_loss]) },
        { label: "validation", color: "#d0421b", points: evals.map((e) => [e.step, e.val_loss]) }] }),
      chart({ title: metricName, xLabel: "step", series: [
        { label: "validation", color: "#2a8a3e", points: evals.map((e) => [e.step, e.val_metric]) }] }),
      chart({ title: "learning rate", xLabel: "step", series: [
        { label: "", color: "#7048a8", points: lrPoints }] }),
      chart({ title: "gradient norm before clipping (log)", xLabel: "step", logY: true, series: [
        { label: "norm", color: "#1f5fbf", thin: true, points: steps.map((s) => [s.step, s.grad_norm]) },
        { label: "clipped", color: "#d0421b", dots: true, points: steps.filter((s) => s.clipped).map((s) => [s.step, s.grad_norm]) }] }));
    const last = steps.length ? steps[steps.length - 1].step : evals.length ? evals[evals.length - 1].step : 0;
    const clipped = steps.filter((s) => s.clipped).length;
    status.textContent = `${steps.length} steps logged (last step ${last}), ${evals.length} evaluations, ${clipped} clipped steps`
      + (evals.length ? `; last validation loss ${fmt(evals[evals.length - 1].val_loss)}, metric ${fmt(evals[evals.length - 1].val_metric)}` : "");
  };
  const poll = async () => {
    if (!document.body.contains(charts)) return;
    let more = false;
    try {
      const r = await fetch(`/api/runs/${encodeURIComponent(name)}/metrics?from=${next}`);
      if (r.ok) {
        const chunk = await r.json();
        if (chunk.reset) { steps.length = 0; evals.length = 0; next = 0; more = true; }
        else {
          for (const row of chunk.rows) (row.val_metric !== undefined || row.val_loss !== undefined ? evals : steps).push(row);
          next = chunk.next;
          more = chunk.more;
        }
        if (steps.length + evals.length !== lastSize || chunk.reset) { draw(); lastSize = steps.length + evals.length; }
      } else if (lastSize < 0) {
        status.textContent = "this run has no metrics.jsonl";
        lastSize = 0;
      }
      await drawExtras(name, extras, shownExtras);
    } catch (err) {
      status.textContent = `the server did not answer (${err})`;
    }
    setTimeout(poll, more ? 0 : 1000);
  };
  poll();
}

/** Tables and charts of the clipping, compare and curvature results in a run folder. */
async function drawExtras(name, box, shown) {
  const r = await fetch("/api/runs").then((r) => r.json());
  const run = r.runs.find((x) => x.name === name);
  if (!run) return;
  const file = (f) => fetch(`/files/${encodeURIComponent(name)}/${f}`).then((r) => r.json());
  for (const f of run.files) {
    if (shown.has(f)) continue;
    if (f === "clipping.json") {
      shown.add(f);
      const c = await file(f);
      box.append(el("h2", {}, "Clipping"), c.conclusion ? el("p", {}, c.conclusion) : "",
        table(c.runs, ["seed", "lr", "clip", "max_grad_norm", "spike_step", "spike_ratio", "loss_jump", "final_val_loss", "stopped_by", "clipped_steps"]));
      if (Array.isArray(c.text_runs)) {
        box.append(el("h3", {}, "On text: a learning rate too large to step at"),
          table(c.text_runs, ["lr", "clip", "final_val_loss", "stopped_by", "diverged_at_step", "max_grad_norm", "clipped_steps"]));
      }
      if (Array.isArray(c.depth)) {
        const colors = ["#d0421b", "#1f5fbf", "#2a8a3e", "#7048a8"];
        box.append(chart({ title: "gradient norm by layer (log)", xLabel: "layer", logY: true,
          series: c.depth.map((d, i) => ({ label: d.init, color: colors[i % 4], points: d.layer_grad_norms.map((v, j) => [j + 1, v]) })) }));
      }
    } else if (f === "compare.json") {
      shown.add(f);
      const c = await file(f);
      const colors = { f: "#555", reverse: "#1f5fbf", forward: "#2a8a3e", finite_diff: "#d0421b" };
      box.append(el("h2", {}, "What a gradient costs"));
      for (const fn of [...new Set(c.rows.map((x) => x.function))]) {
        const rows = c.rows.filter((x) => x.function === fn);
        box.append(chart({ title: `${fn}: seconds per call`, xLabel: fn === "g" ? "outputs M" : "inputs N", logX: true, logY: true,
          series: [...new Set(rows.map((x) => x.method))].map((m) => ({ label: m, color: colors[m] || "#888", points: rows.filter((x) => x.method === m).map((x) => [x.n, x.median_s]) })) }));
      }
    } else if (f === "curvature.json") {
      shown.add(f);
      const c = await file(f);
      box.append(el("h2", {}, "Curvature"),
        el("p", {}, `Largest Hessian eigenvalues at step ${c.step}: ${c.eigenvalues.map(fmt).join(", ")}. Plain gradient descent diverges along the top one above lr = ${fmt(c.max_stable_lr)}; this run used ${fmt(c.lr)} (${c.optimizer}).`));
    }
  }
}

function table(rows, keys) {
  return el("table", { class: "runs" },
    el("tr", {}, keys.map((k) => el("th", {}, k))),
    rows.map((row) => el("tr", {}, keys.map((k) => el("td", { class: typeof row[k] === "number" ? "num" : "" },
      row[k] === null || row[k] === undefined ? "—" : typeof row[k] === "number" ? fmt(row[k]) : String(row[k]))))));
}

window.addEventListener("popstate", route);
route();
