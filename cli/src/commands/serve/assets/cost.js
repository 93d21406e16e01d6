// The cost of a gradient: the server times chainrule compare's functions at the size the
// learner asks for (reverse mode, forward mode, central differences); this page keeps
// every point it was sent and draws seconds against the size on log-log axes.
"use strict";

const COST_KINDS = {
  f: {
    key: "n", size: "N", methods: [["f", "f", "#5b6575"], ["reverse", "reverse", "#d0421b"], ["forward", "forward", "#1f5fbf"], ["finite_diff", "differences", "#2a8a3e"]],
    title: "The gradient of f: Rᴺ → R",
    what: "f(x) = Σ sin(xᵢ)·xᵢ² + Σ 100(xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)², one output and N inputs, as a loss of N weights. Reverse mode gets all N partial derivatives from one forward pass and one backward sweep; forward mode needs one pass per input (N passes); central differences need two evaluations per input (2N).",
    crossing: ["forward", "reverse"],
  },
  g: {
    key: "m", size: "M", methods: [["f", "g", "#5b6575"], ["forward", "forward", "#1f5fbf"], ["reverse", "reverse", "#d0421b"]],
    title: "The Jacobian of g: R → Rᴹ",
    what: "g(t)ₖ = sin(k·t)·exp(−t/k), k = 1..M: one input and M outputs. Now forward mode gets the whole Jacobian column in one pass, and reverse mode needs one backward sweep per output (M sweeps).",
    crossing: ["reverse", "forward"],
  },
};
/** The measurements a shared URL asked for of f, which g's wait for (one at a time). */
let costQueue = Promise.resolve();

const METHOD_NAMES = { f: "the function", reverse: "reverse mode", forward: "forward mode", finite_diff: "finite differences" };

function costView(main) {
  main.append(
    el("h1", {}, "The cost of a gradient"),
    el("p", { class: "intro" },
      "How long does a gradient take, by each way of computing it, as the problem grows? Pick a size and measure: the server times chainrule compare's own functions on this machine, now, ",
      "and each point is added to the chart (seconds per call, log-log). A measurement takes about a second and one runs at a time; a method whose single call would take too long is skipped and says so."));
  for (const kind of ["f", "g"]) main.append(costSection(kind));
}

function costSection(kind) {
  const spec = COST_KINDS[kind];
  const points = new Map(); // size → rows
  const size = el("input", { id: `cost-${spec.key}`, type: "number", min: 1, max: kind === "f" ? 1000000 : 100000, value: 1000, class: "size", "aria-label": spec.size });
  const go = el("button", { id: `cost-measure-${kind}`, type: "button" }, "Measure");
  const sweep = el("button", { id: `cost-sweep-${kind}`, type: "button" }, `Measure ${spec.size} = 10, 100, …, 10⁵`);
  const status = el("span", { id: `cost-status-${kind}`, class: "note" });
  const error = el("div", { id: `cost-error-${kind}`, class: "error", hidden: true });
  const chartBox = el("div", { id: `cost-chart-${kind}` });
  const sentence = el("p", { id: `cost-crossover-${kind}`, class: "summary" });
  const tableBox = el("div", { id: `cost-table-${kind}` });
  const redraw = () => {
    const sizes = [...points.keys()].sort((a, b) => a - b);
    const series = spec.methods.map(([m, label, color]) => ({
      label, color, dots: true,
      points: sizes.map((n) => [n, points.get(n).find((r) => r.method === m)?.median_s ?? NaN]),
    }));
    const lines = spec.methods.map(([m, , color]) => ({
      label: "", color, thin: true,
      points: sizes.map((n) => [n, points.get(n).find((r) => r.method === m)?.median_s ?? NaN]),
    }));
    const c = chart({ title: `seconds per ${kind === "f" ? "gradient" : "Jacobian"}`, xLabel: spec.size, logX: true, logY: true, series: [...lines, ...series] });
    chartBox.replaceChildren(c);
    sentence.textContent = crossoverSentence(kind, sizes, points);
    tableBox.replaceChildren(el("table", { class: "edge-table" },
      el("tr", {}, el("th", {}, spec.size), spec.methods.map(([m, label]) => el("th", {}, m === "f" ? `${label} itself` : METHOD_NAMES[m]))),
      sizes.map((n) => el("tr", { "data-n": n }, el("td", { class: "num" }, String(n)),
        spec.methods.map(([m]) => {
          const r = points.get(n).find((row) => row.method === m);
          if (!r || r.median_s === null) return el("td", { class: `num ${m}`, title: r?.note ?? "" }, r?.note ?? "—");
          return el("td", { class: `num ${m}`, "data-seconds": r.median_s }, `${seconds(r.median_s)}${m === "f" ? "" : ` (${fmt(r.ratio)}× f)`}`);
        })))));
  };
  const measure = async (n) => {
    error.hidden = true;
    status.textContent = `measuring ${spec.size} = ${n}…`;
    go.disabled = sweep.disabled = true;
    try {
      for (let attempt = 0; ; attempt++) {
        let r, body;
        try {
          r = await fetch(`/api/cost?${spec.key}=${encodeURIComponent(n)}`);
          body = await r.json();
        } catch (err) {
          body = { error: `the server did not answer (${err})` };
        }
        // another measurement holds the machine: wait for it, as the answer asks
        if (body.busy && attempt < 20) { status.textContent = `${body.error} (waiting)`; await new Promise((ok) => setTimeout(ok, 1000)); continue; }
        if (body.error) { error.textContent = body.error; error.hidden = false; status.textContent = ""; return false; }
        points.set(body.n, body.rows);
        status.textContent = `${spec.size} = ${body.n} measured in ${fmt(body.took_s)} s`;
        redraw();
        return true;
      }
    } finally {
      go.disabled = sweep.disabled = false;
    }
  };
  go.onclick = () => measure(size.value);
  size.onkeydown = (ev) => { if (ev.key === "Enter") measure(size.value); };
  const series = async (sizes) => { for (const n of sizes) if (!(await measure(n))) break; };
  sweep.onclick = () => series([10, 100, 1000, 10000, 100000]);
  redraw();
  // a shared URL (/cost?n=10,100,1000) measures its sizes in turn; f's before g's
  const asked = new URLSearchParams(location.search).get(spec.key);
  if (asked) {
    const sizes = asked.split(",").filter((v) => v.trim() !== "");
    const before = kind === "g" && new URLSearchParams(location.search).get("n") ? costQueue : Promise.resolve();
    const done = before.then(() => series(sizes));
    if (kind === "f") costQueue = done;
  }
  return el("section", { class: "cost", id: `cost-${kind}` },
    el("h2", {}, spec.title),
    el("p", { class: "intro" }, spec.what),
    el("div", { class: "walk-form" }, el("label", {}, `${spec.size} = `, size), go, sweep, status),
    error, el("div", { class: "charts" }, chartBox, el("div", {}, sentence, tableBox)));
}

function seconds(s) {
  if (s < 1e-3) return `${fmt(s * 1e6)} µs`;
  if (s < 1) return `${fmt(s * 1e3)} ms`;
  return `${fmt(s)} s`;
}

/** As `chainrule compare` says it: the first measured size where the method that starts
 * slower is faster, and the size measured before it. */
function crossoverSentence(kind, sizes, points) {
  const [slow, fast] = COST_KINDS[kind].crossing;
  const S = COST_KINDS[kind].size;
  const t = (n, m) => points.get(n).find((r) => r.method === m)?.median_s ?? null;
  const both = sizes.filter((n) => t(n, fast) !== null);
  if (both.length === 0) return "Measure a size to compare the two modes.";
  let prev = null;
  for (const n of both) {
    const a = t(n, slow), b = t(n, fast);
    if (a === null || b < a) {
      const how = a === null ? `(${METHOD_NAMES[slow]} was skipped there: too slow)` : `(${seconds(b)} against ${seconds(a)})`;
      return prev === null
        ? `${capital(METHOD_NAMES[fast])} is already faster than ${METHOD_NAMES[slow]} at ${S} = ${n} ${how}.`
        : `${capital(METHOD_NAMES[fast])} overtakes ${METHOD_NAMES[slow]} between ${S} = ${prev} and ${S} = ${n} ${how}.`;
    }
    prev = n;
  }
  return `${capital(METHOD_NAMES[slow])} stayed faster than ${METHOD_NAMES[fast]} at every ${S} measured so far; try a larger ${S}.`;
}

const capital = (s) => s[0].toUpperCase() + s.slice(1);
