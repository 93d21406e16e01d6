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

// Exercises, smallest first: the learner works out each edge before it is shown.
const EXERCISES = [
  ["sin(x)", "x=0.5", "one node"],
  ["x*x + sin(x)", "x=0.7", "fan-out: x feeds three edges"],
  ["tanh(w*x + b)", "x=2,w=-0.5,b=1.5", "a neuron"],
  ["sigmoid(c1*tanh(w1*x + b1) + c2*tanh(w2*x + b2) + d)", "x=0.5,w1=1,b1=0,w2=-1,b2=0.5,c1=2,c2=-1,d=0.1", "a two-layer net"],
];

function walkView(main) {
  const params = new URLSearchParams(location.search);
  const expr = params.get("expr") ?? EXAMPLES[0][0];
  const at = params.get("at") ?? (params.has("expr") ? "" : EXAMPLES[0][1]);
  const exprInput = el("input", { id: "expr", type: "text", value: expr, spellcheck: "false", "aria-label": "expression", size: 40 });
  const atInput = el("input", { id: "at", type: "text", value: at, spellcheck: "false", "aria-label": "values", size: 24 });
  const pick = el("select", { id: "examples", "aria-label": "examples" },
    el("option", { value: "" }, "examples and exercises…"),
    el("optgroup", { label: "examples" },
      EXAMPLES.map(([e, a, what], i) => el("option", { value: `e${i}` }, `${e}   (${what})`))),
    el("optgroup", { label: "exercises: work out each edge first" },
      EXERCISES.map(([e, a, what], i) => el("option", { value: `x${i}` }, `${i + 1}. ${what}: ${e}`))));
  const form = el("form", { id: "walk-form", class: "walk-form" },
    el("label", {}, "f = ", exprInput),
    el("label", {}, " at ", atInput),
    el("button", { id: "go", type: "submit" }, "Walk"),
    pick);
  const error = el("div", { id: "expr-error", class: "error", hidden: true });
  const result = el("div", { id: "walk" });
  // the parser's own lists, so the page never offers what it would reject
  const grammar = el("span", { id: "grammar" }, "…");
  fetch("/api/grammar").then((r) => r.json()).then((g) => {
    const ops = g.operators.map((o) => o.also.length ? `${o.op} (or ${o.also.join(" ")})` : o.op);
    grammar.textContent = `operators ${ops.join("  ")}; functions ${g.functions.join(", ")}`;
  }).catch(() => { grammar.textContent = "the grammar of chainrule explain"; });
  main.append(
    el("p", { class: "intro" },
      "Type an expression in x, w, … (", grammar, ") and the values of its variables. ",
      "The forward pass computes each node from its inputs; the reverse sweep then carries the gradient back along every edge. ",
      "Throughout, ", el("b", { id: "vbar" }, "v̄ = ∂f/∂v"), ", the gradient of the output f with respect to the node v: ",
      "the edge u → v multiplies v̄ by the local derivative ∂v/∂u, and u adds up what its edges bring."),
    form, error, result);
  let practise = params.get("mode") === "exercise";
  pick.onchange = () => {
    if (pick.value === "") return;
    const exercise = pick.value.startsWith("x");
    const [e, a] = (exercise ? EXERCISES : EXAMPLES)[Number(pick.value.slice(1))];
    exprInput.value = e;
    atInput.value = a;
    pick.value = "";
    practise = exercise;
    // an exercise starts at the reverse sweep, where the questions are
    startStep = exercise ? -1 : 0;
    go();
  };
  form.onsubmit = (ev) => { ev.preventDefault(); go(); };
  // a shared link's step is shown once, on the first walk
  let startStep = Number(params.get("step")) || 0;
  const go = async () => {
    const e = exprInput.value, a = atInput.value;
    const q = `expr=${encodeURIComponent(e)}&at=${encodeURIComponent(a).replace(/%3D/g, "=").replace(/%2C/g, ",")}`;
    history.replaceState(null, "", `/walk?${q}${practise ? "&mode=exercise" : ""}${startStep > 0 ? `&step=${startStep}` : ""}`);
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
    showWalk(result, body, q, startStep, practise, (on) => { practise = on; });
    startStep = 0;
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

/** What the walk calls node `id`: a variable's name, a constant's value, or the engine's
 * name for an op node (v3, or another prefix where a variable is spelt v3). */
function nodeName(walk, id) {
  return walk.forward[id].name;
}

/** The rule of edge `e` in its operands' names with their values: "x = 2" where the rule
 * is one operand, "1 - tanh²(v4), with v4 = 0.5" otherwise. */
function ruleText(e) {
  const others = e.operands.filter((o) => o.name !== e.rule);
  const one = e.operands.find((o) => o.name === e.rule);
  if (one) return `${e.rule} = ${fmt(one.value)}`;
  return others.length ? `${e.rule}, with ${others.map((o) => `${o.name} = ${fmt(o.value)}`).join(", ")}` : e.rule;
}

function showWalk(box, walk, query, startStep, practiseAtStart, onPractise) {
  const n = walk.forward.length;
  const steps = [];
  for (let i = 0; i < n; i++) steps.push({ kind: "forward", node: i });
  steps.push({ kind: "seed", node: n - 1 });
  walk.edges.forEach((e, i) => steps.push({ kind: "edge", edge: i }));
  const incoming = new Array(n).fill(0); // how many contributions each node receives
  for (const e of walk.edges) incoming[e.from] += 1;
  const L = walk.layout;
  const G = L.geometry;
  const [COL_W, ROW_H, NODE_W, NODE_H] = [G.col_w, G.row_h, G.node_w, G.node_h];
  const width = Math.max(L.width, NODE_W + 2 * G.margin);
  const height = L.height;
  const px = (col) => G.margin + col * COL_W;
  const py = (row) => G.top + row * ROW_H;

  const graph = svg("svg", { id: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "computation graph" });
  graph.append(svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 10, markerHeight: 10, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
  // one path per use of an input (x·x: two), keyed by the consumer's argument
  const pathOf = new Map();
  const labelAt = new Map();
  for (const p of L.paths) {
    const pts = p.points.map(([c, r], i) => {
      const x = px(c), y = py(r) + NODE_H / 2;
      if (i === 0) return [x + NODE_W, y];
      if (i === p.points.length - 1) return [x, y + p.end_dy];
      return [x + NODE_W / 2, y];
    });
    let d = `M ${pts[0][0]} ${pts[0][1]}`;
    for (let i = 1; i < pts.length; i++) {
      const [x0, y0] = pts[i - 1], [x1, y1] = pts[i];
      const dx = (x1 - x0) / 2;
      d += ` C ${x0 + dx} ${y0} ${x1 - dx} ${y1} ${x1} ${y1}`;
    }
    // a constant's edge carries its value in but no gradient back
    const fromConstant = walk.forward[p.from].op === "constant";
    const path = svg("path", { d, class: fromConstant ? "edge constant-edge" : "edge", "marker-end": "url(#arrow)", "data-from": p.from, "data-to": p.to, "data-arg": p.arg });
    pathOf.set(`${p.from}-${p.to}-${p.arg}`, path);
    labelAt.set(`${p.from}-${p.to}-${p.arg}`, p.label);
    graph.append(path);
  }
  const nodeBox = [];
  for (const node of walk.forward) {
    const x = px(L.col[node.id]), y = py(L.row[node.id]);
    const full = `${node.name} = ${node.text}`;
    const title = node.op === "leaf" ? node.name : node.op === "constant" ? `constant ${node.name}` : full.length <= 16 ? full : node.name;
    const value = svg("text", { x: x + NODE_W / 2, y: y + 36, class: "value" });
    const grad = svg("text", { x: x + NODE_W / 2, y: y + 52, class: "grad" });
    const g = svg("g", { class: `node ${node.op === "leaf" ? "variable" : node.op === "constant" ? "constant" : "op"}`, "data-id": node.id, "data-label": node.name },
      svg("rect", { x, y, width: NODE_W, height: NODE_H, rx: 8 }),
      svg("title", {}, node.op === "leaf" || node.op === "constant" ? title : full),
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
  // the exercise: each edge's two answers (the local derivative, then the contribution)
  let practise = practiseAtStart;
  const answers = new Map();
  const score = el("span", { id: "score" });
  const practiseBox = el("input", { type: "checkbox", id: "practise", checked: practise, onchange: () => {
    practise = practiseBox.checked;
    onPractise(practise);
    show(k);
  } });
  const play = btn("play", "▶ play", "play (space)", () => toggle());
  const controls = el("div", { class: "controls" },
    btn("first", "« start", "start (Home)", () => show(0)),
    btn("prev", "◀ previous", "previous (←)", () => show(k - 1)),
    play,
    btn("next", "next ▶", "next (→)", () => show(k + 1)),
    btn("last", "end »", "end (End)", () => show(steps.length)),
    count,
    el("label", { class: "practise", title: "before each edge of the reverse sweep is shown, work out its local derivative and its contribution" },
      practiseBox, " practise"),
    score);
  const toggle = () => {
    if (timer) { clearInterval(timer); timer = null; play.textContent = "▶ play"; return; }
    if (k >= steps.length) show(0);
    play.textContent = "⏸ pause";
    timer = setInterval(() => { if (k >= steps.length) toggle(); else show(k + 1); }, 700);
  };

  /** Whether step j is an edge still waiting for the learner's answers. */
  const waiting = (j) => practise && steps[j - 1]?.kind === "edge" && !answers.get(steps[j - 1].edge)?.contribution;

  function show(target) {
    // practice holds every way forward (next, →, end, play) at an unanswered edge
    if (target > k && waiting(k)) target = k;
    k = Math.max(0, Math.min(steps.length, target));
    if (location.pathname === "/walk") history.replaceState(null, "", `/walk?${query}${practise ? "&mode=exercise" : ""}${k ? `&step=${k}` : ""}`);
    const asked = [...answers.values()].flatMap((a) => [a.local, a.contribution]).filter(Boolean);
    score.textContent = practise || asked.length ? `score: ${asked.filter((a) => a.right).length} of ${asked.length} right` : "";
    score.dataset.right = asked.filter((a) => a.right).length;
    score.dataset.asked = asked.length;
    count.textContent = `step ${k} of ${steps.length}`;
    count.dataset.step = k;
    count.dataset.total = steps.length;
    const forwardDone = Math.min(k, n);
    const running = new Array(n).fill(null);
    const received = new Array(n).fill(0);
    const reverseStarted = k > n;
    if (reverseStarted) running[n - 1] = 1;
    // in practice an edge stays hidden (its sum not yet added) until both answers are in
    const pending = waiting(k);
    if (pending && timer) toggle();
    document.getElementById("next")?.toggleAttribute("disabled", !!pending);
    const edgesDone = Math.max(0, k - n - 1) - (pending ? 1 : 0);
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
      pathOf.get(`${e.from}-${e.to}-${e.arg}`)?.classList.add("swept");
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
      else text = `${name} = ${node.text} = ${fmt(node.value)}`;
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
      const key = `${e.from}-${e.to}-${e.arg}`;
      const path = pathOf.get(key);
      path?.classList.add("current");
      if (pending) {
        info.replaceChildren(...quiz(step.edge));
        info.querySelector("input:not([disabled])")?.focus();
        return;
      }
      if (path) {
        // the layout placed the label off every node, near its edge
        const [lx, ly] = labelAt.get(key);
        const text = edgeLabel.querySelector("text");
        text.textContent = `∂${v}/∂${u} = ${fmt(e.local)}`;
        text.removeAttribute("textLength");
        text.setAttribute("x", lx);
        text.setAttribute("y", ly + 4);
        edgeLabel.setAttribute("visibility", "visible");
        if (text.getComputedTextLength() > G.label_w - 8) {
          text.setAttribute("textLength", G.label_w - 8);
          text.setAttribute("lengthAdjust", "spacingAndGlyphs");
        }
        const rect = edgeLabel.querySelector("rect");
        rect.setAttribute("x", lx - G.label_w / 2); rect.setAttribute("y", ly - G.label_h / 2);
        rect.setAttribute("width", G.label_w); rect.setAttribute("height", G.label_h);
      }
      const total = incoming[e.from];
      const consumer = walk.forward[e.to];
      const which = consumer.inputs.length === 1 ? "" : `, ${["first", "second"][e.arg] ?? `argument ${e.arg + 1}`} operand`;
      info.replaceChildren(
        el("p", {}, el("b", {}, `Edge ${u} → ${v} `), `(${v} = ${consumer.text}${which})`),
        ...(answers.has(step.edge) ? marks(step.edge) : []),
        el("table", { class: "edge-table" },
          el("tr", {}, el("th", {}, "local derivative"), el("td", { id: "edge-rule" }, `∂${v}/∂${u} = ${ruleText(e)}`), el("td", { class: "num", id: "edge-local" }, fmt(e.local))),
          el("tr", {}, el("th", {}, "gradient arriving"), el("td", {}, `${v}̄`), el("td", { class: "num" }, fmt(e.upstream))),
          el("tr", {}, el("th", {}, "contribution"), el("td", {}, `${v}̄ · ∂${v}/∂${u} = ${fmt(e.upstream)} × ${fmt(e.local)}`), el("td", { class: "num" }, fmt(e.contribution))),
          el("tr", {}, el("th", {}, "running sum"), el("td", {}, `${u}̄ (${e.count} of ${total} contribution${total === 1 ? "" : "s"})`), el("td", { class: "num", id: "edge-running" }, fmt(e.running)))),
        el("p", { class: "note" }, e.count === total
          ? `${u} has received everything it will: ${u}̄ = ${fmt(e.running)} is final.`
          : `${u} feeds ${total} edges: its gradient is the sum of their contributions.`));
    }
  }

  /** Whether `given` is right for `truth`: within 1% of it, or 0.001 near 0. */
  const close = (given, truth) => Number.isFinite(given) && truth !== null && Math.abs(given - truth) <= Math.max(1e-3, 0.01 * Math.abs(truth));

  /** The marks of edge j's answers: right, or wrong with the right value and its rule. */
  function marks(j) {
    const e = walk.edges[j], a = answers.get(j);
    const u = nodeName(walk, e.from), v = nodeName(walk, e.to);
    const out = [];
    if (a.local) {
      out.push(el("p", { id: "mark-local", class: `mark ${a.local.right ? "right" : "wrong"}` },
        a.local.right ? `✓ right: ∂${v}/∂${u} = ${ruleText(e)}` + (e.operands.length ? ` → ${fmt(e.local)}` : "")
          : a.local.given === undefined ? `shown: ∂${v}/∂${u} = ${ruleText(e)} → ${fmt(e.local)}`
            : `✗ you gave ${fmt(a.local.given)}; it is ∂${v}/∂${u} = ${ruleText(e)} → ${fmt(e.local)} (the rule of ${v} = ${walk.forward[e.to].text} for its input ${u})`));
    }
    if (a.contribution) {
      const how = `${v}̄ · ∂${v}/∂${u} = ${fmt(e.upstream)} × ${fmt(e.local)} = ${fmt(e.contribution)}`;
      out.push(el("p", { id: "mark-contribution", class: `mark ${a.contribution.right ? "right" : "wrong"}` },
        a.contribution.right ? `✓ right: ${how}`
          : a.contribution.given === undefined ? `shown: ${how}` : `✗ you gave ${fmt(a.contribution.given)}; it is ${how}`));
    }
    return out;
  }

  /** Reads an answer: a number as typed, or an expression in the walk's names, which
   * the server evaluates with the walk's own grammar at this point. */
  async function read(text) {
    const t = text.trim();
    if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t)) return { value: Number(t) };
    const names = [...new Set(t.match(/[A-Za-z_][A-Za-z0-9_]*/g) || [])];
    const at = names.map((nm) => walk.forward.find((f) => f.name === nm))
      .filter((f) => f && f.value !== null).map((f) => `${f.name}=${f.value}`).join(",");
    try {
      const r = await fetch(`/api/evaluate?expr=${encodeURIComponent(t)}&at=${encodeURIComponent(at)}`);
      const body = await r.json();
      return body.error ? { error: body.error } : { value: body.value === null ? NaN : body.value };
    } catch (err) {
      return { error: `the server did not answer (${err})` };
    }
  }

  /** The questions of edge j: first ∂v/∂u, then (once that is marked) the contribution. */
  function quiz(j) {
    const e = walk.edges[j], a = answers.get(j) || {};
    const u = nodeName(walk, e.from), v = nodeName(walk, e.to);
    const consumer = walk.forward[e.to];
    const problem = el("p", { id: "answer-error", class: "error", hidden: true });
    const ask = (key, label, truth) => {
      const input = el("input", { id: `answer-${key}`, type: "text", size: 18, spellcheck: "false", "aria-label": label });
      const form = el("form", { class: "answer", id: `form-${key}` }, el("label", {}, label, " ", input), " ", el("button", { id: `check-${key}`, type: "submit" }, "check"));
      form.onsubmit = async (ev) => {
        ev.preventDefault();
        if (input.value.trim() === "") return;
        const got = await read(input.value);
        if (got.error) { problem.hidden = false; problem.textContent = `your answer: ${got.error}`; return; }
        const entry = answers.get(j) || {};
        entry[key] = { given: got.value, right: close(got.value, truth) };
        answers.set(j, entry);
        show(k);
      };
      return form;
    };
    const parts = [
      el("p", {}, el("b", {}, `Edge ${u} → ${v} `), `(${v} = ${consumer.text}). Work it out before it is shown.`),
      ...(a.local ? marks(j) : [ask("local", `1. the local derivative ∂${v}/∂${u} =`, e.local)]),
    ];
    if (a.local) parts.push(ask("contribution", `2. the contribution ${v}̄ · ∂${v}/∂${u}, with ${v}̄ = ${fmt(e.upstream)}:`, e.contribution));
    parts.push(problem,
      el("p", { class: "note" }, "A number, or the rule as an expression in the walk's names (e.g. 1 - tanh(v4)^2); right within 1%. ",
        el("button", { id: "reveal", type: "button", onclick: () => {
          const entry = answers.get(j) || {};
          entry.local = entry.local || { right: false };
          entry.contribution = { right: false };
          answers.set(j, entry);
          show(k);
        } }, "show me")));
    return parts;
  }

  const table = el("table", { id: "grad-table", class: "grads" },
    el("tr", {}, el("th", {}, "variable"), el("th", {}, "reverse mode (the tape)"), el("th", {}, "forward mode (dual numbers)"), el("th", {}, "central differences"), el("th", {}, "|reverse − differences|")),
    walk.check.map((c) => el("tr", { "data-var": c.name, class: c.note ? "disagrees" : null, title: c.note || null },
      el("td", {}, `∂f/∂${c.name}`),
      el("td", { class: "num reverse" }, fmt(c.reverse)),
      el("td", { class: "num forward" }, fmt(c.forward)),
      el("td", { class: "num fd" }, fmt(c.finite_diff)),
      el("td", { class: "num" }, c.reverse === null || c.finite_diff === null ? "non-finite" : Math.abs(c.reverse - c.finite_diff).toExponential(1)))));
  const notes = walk.check.filter((c) => c.note).map((c) =>
    el("p", { class: "disagree", "data-var": c.name }, el("b", {}, `∂f/∂${c.name}: `), c.note));
  box.replaceChildren(
    el("div", { class: "summary" }, el("span", {}, "f = "), el("code", {}, walk.expression), el("span", {}, " = "), el("b", { id: "value" }, fmt(walk.value))),
    el("h2", {}, "Step through it"),
    controls,
    el("div", { class: "walk-grid" }, el("div", { class: "graph-box" }, graph), info),
    el("h2", {}, "The gradient, three ways"),
    table, ...notes);
  // an exercise opens at the seed, the step before its first question
  show(startStep < 0 ? n + 1 : startStep || 0);
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
  const W = 460, ml = 58, mr = 12, mb = 36;
  // the legend, right-aligned: beside the title where it fits, else on lines of its own
  // below it, as many as its labels need
  const widthOf = (s) => 9 + 7 * s.label.length;
  const named = [...opts.series].reverse().filter((s) => s.label);
  const right = W - mr - 4;
  const legendLines = [];
  if (right - named.reduce((w, s) => w + widthOf(s), 0) >= ml + 7.5 * opts.title.length + 12) {
    legendLines.push({ y: 17, labels: named });
  } else {
    let room = 0;
    for (const s of named) {
      if (widthOf(s) > room || !legendLines.length) {
        legendLines.push({ y: 34 + 14 * legendLines.length, labels: [] });
        room = right - 8;
      }
      legendLines[legendLines.length - 1].labels.push(s);
      room -= widthOf(s);
    }
  }
  const below = legendLines.length && legendLines[0].y > 17 ? legendLines.length : 0;
  const mt = 28 + 14 * below, H = 250 + 14 * below;
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
  // from the right, so the last tick keeps its label: a label at either end of the axis
  // is anchored inward (never cut off), and one that would touch its right neighbour's
  // is left out (its grid line stays)
  let leftmost = Infinity;
  for (const [t, label] of (opts.logX ? logTicks(x0, x1) : linearTicks(x0, x1)).reverse()) {
    const x = X(t);
    const anchor = x > W - mr - 20 ? "end" : x < ml + 20 ? "start" : "middle";
    const w = 6.5 * label.length;
    const [l, r] = anchor === "end" ? [x - w, x] : anchor === "start" ? [x, x + w] : [x - w / 2, x + w / 2];
    axes.append(svg("line", { x1: x, x2: x, y1: mt, y2: H - mb, class: "grid" }));
    if (r + 4 > leftmost) continue;
    leftmost = l;
    axes.append(svg("text", { x, y: H - mb + 15, class: "tick x", "text-anchor": anchor }, label));
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
  for (const line of legendLines) {
    let lx = right;
    for (const s of line.labels) {
      legend.append(svg("text", { x: lx, y: line.y, class: "legend-text", fill: s.color, "text-anchor": "end" }, s.label));
      lx -= widthOf(s);
    }
  }
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

/** The validation metric worth its own chart, as [name, value of an evaluation row]:
 * the objective's metric where it is not the loss (a classifier's accuracy), else the
 * first other named metric (a language model's bits per character), else none. */
function metricOf(evals) {
  const last = evals[evals.length - 1];
  if (!last) return null;
  const named = Object.entries(last.metrics || {});
  if (last.val_metric !== last.val_loss) {
    const hit = named.find(([, v]) => v === last.val_metric);
    return [hit ? hit[0].replace(/_/g, " ") : "metric", (e) => e.val_metric];
  }
  if (named.length) return [named[0][0].replace(/_/g, " "), (e) => (e.metrics || {})[named[0][0]]];
  return null;
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
    const metric = metricOf(evals);
    const lrPoints = steps.some((s) => s.lr !== undefined) ? steps.map((s) => [s.step, s.lr]) : evals.map((e) => [e.step, e.lr]);
    // train_loss is the mean over the steps since the previous evaluation: drawn across
    // them, not as a point at their end
    const trainPoints = [];
    evals.forEach((e, i) => {
      const from = i === 0 ? (steps.length ? steps[0].step - 1 : 0) : evals[i - 1].step;
      trainPoints.push([from, e.train_loss], [e.step, e.train_loss], [NaN, NaN]);
    });
    const clipped = steps.filter((s) => s.clipped).length;
    const list = [
      chart({ title: "loss", xLabel: "step", series: [
        { label: "batch", color: "#b8c4d6", thin: true, points: steps.map((s) => [s.step, s.loss]) },
        { label: "train (mean since last eval)", color: "#1f5fbf", points: trainPoints },
        { label: "validation", color: "#d0421b", points: evals.map((e) => [e.step, e.val_loss]) }] })];
    if (metric) {
      list.push(chart({ title: `validation ${metric[0]}`, xLabel: "step", series: [
        { label: "validation", color: "#2a8a3e", points: evals.map((e) => [e.step, metric[1](e)]) }] }));
    }
    list.push(
      chart({ title: "learning rate", xLabel: "step", series: [
        { label: "", color: "#7048a8", points: lrPoints }] }),
      // a run that never clipped (--no-clip among them) has no "before clipping"
      chart({ title: clipped ? "gradient norm before clipping (log)" : "gradient norm (log; no step clipped)", xLabel: "step", logY: true, series: [
        { label: "norm", color: "#1f5fbf", thin: true, points: steps.map((s) => [s.step, s.grad_norm]) },
        ...(clipped ? [{ label: "clipped", color: "#d0421b", dots: true, points: steps.filter((s) => s.clipped).map((s) => [s.step, s.grad_norm]) }] : [])] }));
    charts.replaceChildren(...list);
    const last = steps.length ? steps[steps.length - 1].step : evals.length ? evals[evals.length - 1].step : 0;
    const lastEval = evals[evals.length - 1];
    status.textContent = `${steps.length} steps logged (last step ${last}), ${evals.length} evaluations, ${clipped} clipped steps`
      + (lastEval ? `; last validation loss ${fmt(lastEval.val_loss)}` + (metric ? `, ${metric[0]} ${fmt(metric[1](lastEval))}` : "") : "");
  };
  const poll = async () => {
    if (!document.body.contains(charts)) return;
    let more = false, wait = 1000;
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
        await drawExtras(name, extras, shownExtras);
      } else {
        // no training log: a folder of results (compare, clipping), not an error; its
        // files are drawn, and the log is looked for again only once the list shows it
        const run = await drawExtras(name, extras, shownExtras);
        status.textContent = run
          ? `This folder has no training log (metrics.jsonl); it holds ${run.files.join(", ")}.`
          : "There is no run of this name under the runs folder.";
        status.classList.add("no-log");
        while (document.body.contains(charts)) {
          await new Promise((done) => setTimeout(done, 3000));
          const again = await fetch("/api/runs").then((x) => x.json()).catch(() => ({ runs: [] }));
          const now = again.runs.find((x) => x.name === name);
          if (now && now.files.includes("metrics.jsonl")) break;
          if (now) await drawExtras(name, extras, shownExtras);
        }
        status.classList.remove("no-log");
        wait = 0;
      }
    } catch (err) {
      status.textContent = `the server did not answer (${err})`;
    }
    setTimeout(poll, more ? 0 : wait);
  };
  poll();
}

/** The crossover sentence of `compare`, from its rows: the first size at which
 * `fast` beats `slow`, and the size before it (the program's own rule). */
function crossover(rows, fn, slow, fast, size, slowName, fastName) {
  const sizes = [...new Set(rows.filter((r) => r.function === fn).map((r) => r.n))];
  let prev = null;
  for (const n of sizes) {
    const t = (m) => rows.find((r) => r.function === fn && r.n === n && r.method === m)?.median_s ?? null;
    const a = t(slow), b = t(fast);
    if ((a !== null && b !== null && b < a) || (a === null && b !== null)) {
      const from = prev ?? n;
      return from === n
        ? `For ${fn}, ${fastName} is already faster than ${slowName} at ${size} = ${n}.`
        : `For ${fn}, ${fastName} overtakes ${slowName} between ${size} = ${from} and ${size} = ${n}.`;
    }
    prev = n;
  }
  return `For ${fn}, ${slowName} stayed faster than ${fastName} at every ${size} measured.`;
}

/** Tables and charts of the clipping, compare and curvature results in a run folder. */
async function drawExtras(name, box, shown) {
  const r = await fetch("/api/runs").then((r) => r.json());
  const run = r.runs.find((x) => x.name === name);
  if (!run) return null;
  const file = (f) => fetch(`/files/${encodeURIComponent(name)}/${f}`).then((r) => r.json());
  for (const f of run.files) {
    if (shown.has(f)) continue;
    if (f === "clipping.json") {
      shown.add(f);
      const c = await file(f);
      box.append(el("h2", {}, "Clipping"), c.conclusion ? el("p", {}, c.conclusion) : "");
      if (c.pair) {
        // clipping.svg's two panels, from the same numbers: one seed without and with clipping
        const p = c.pair;
        const runs = [[p.unclipped, "no clipping", "#d0421b"], [p.clipped, `clipped at norm ${fmt(p.clip)}`, "#1f5fbf"]];
        box.append(el("div", { id: "clipping-figure", class: "charts" },
          chart({ title: `training loss (mean of ${p.bucket} steps), seed ${p.seed}`, xLabel: "step",
            series: runs.map(([r, label, color]) => ({ label, color, points: r.loss })) }),
          chart({ title: "gradient norm before clipping (log)", xLabel: "step", logY: true, hline: { y: p.clip, label: "clip" },
            series: runs.map(([r, label, color]) => ({ label, color, thin: true, points: r.grad_norm })) })));
      }
      box.append(
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
        const methods = [...new Set(rows.map((x) => x.method))];
        const size = fn === "g" ? "M" : "N";
        box.append(chart({ title: `${fn}: seconds per call`, xLabel: fn === "g" ? "outputs M" : "inputs N", logX: true, logY: true,
          series: methods.map((m) => ({ label: m, color: colors[m] || "#888", points: rows.filter((x) => x.method === m).map((x) => [x.n, x.median_s]) })) }));
        box.append(el("p", { class: "crossover", "data-function": fn }, fn === "g"
          ? crossover(c.rows, "g", "reverse", "forward", size, "reverse mode", "forward mode")
          : crossover(c.rows, fn, "forward", "reverse", size, "forward mode", "reverse mode")));
        const sizes = [...new Set(rows.map((x) => x.n))];
        box.append(el("table", { class: "runs ratios", "data-function": fn },
          el("tr", {}, el("th", {}, `${size}: time ÷ ${fn}'s`), sizes.map((n) => el("th", {}, String(n)))),
          methods.map((m) => el("tr", { "data-method": m }, el("td", {}, m), sizes.map((n) => {
            const row = rows.find((x) => x.method === m && x.n === n);
            return el("td", { class: "num" }, row && row.ratio !== null && row.ratio !== undefined ? fmt(row.ratio) : "—");
          })))));
      }
    } else if (f === "curvature.json") {
      shown.add(f);
      const c = await file(f);
      box.append(el("h2", {}, "Curvature"),
        el("p", {}, `Largest Hessian eigenvalues at step ${c.step}: ${c.eigenvalues.map(fmt).join(", ")}. Plain gradient descent diverges along the top one above lr = ${fmt(c.max_stable_lr)}; this run used ${fmt(c.lr)} (${c.optimizer}).`));
    }
  }
  return run;
}

function table(rows, keys) {
  return el("table", { class: "runs" },
    el("tr", {}, keys.map((k) => el("th", {}, k))),
    rows.map((row) => el("tr", {}, keys.map((k) => el("td", { class: typeof row[k] === "number" ? "num" : "" },
      row[k] === null || row[k] === undefined ? "—" : typeof row[k] === "number" ? fmt(row[k]) : String(row[k]))))));
}

window.addEventListener("popstate", route);
route();
