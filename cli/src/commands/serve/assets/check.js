// Check yourself: four questions on what a learner should leave with. The page checks
// each answer; every explanation links to the lesson that measures it and quotes a
// figure the server computes when the explanation is opened.
"use strict";

const QUESTIONS = [
  {
    id: "q1",
    ask: "A model has a million weights. How many evaluations of its loss do central finite differences need for one gradient?",
    choices: [["a", "2: one step up and one step down"], ["b", "about 2,000,000: two for each weight"], ["c", "about 1,000: the square root of the number of weights"], ["d", "one forward and one backward pass"]],
    right: "b",
    why: "Central differences nudge one weight at a time, up and down, and evaluate the whole loss each time: 2N evaluations for N weights, two million for a million, each of them as costly as the loss itself.",
    link: ["/cost", "Measure it on the cost page"],
    figure: async () => {
      const r = await costAt("n=1000");
      const t = (m) => r.rows.find((row) => row.method === m);
      const fd = t("finite_diff"), rev = t("reverse");
      return `Measured now on this server at N = 1000: finite differences ${seconds(fd.median_s)} per gradient (${fmt(fd.ratio)}× the loss itself), reverse mode ${seconds(rev.median_s)} (${fmt(rev.ratio)}×).`;
    },
  },
  {
    id: "q2",
    ask: "A loss is one number computed from many weights (f: Rᴺ → R). Which mode of automatic differentiation gets its gradient most cheaply, and when is the other mode the efficient one?",
    choices: [["a", "Forward mode; reverse mode when there are few inputs and many outputs"], ["b", "Reverse mode; forward mode when there are few inputs and many outputs"], ["c", "Either: both cost one pass whatever the shape"], ["d", "Neither: finite differences, since they need no derivative rules"]],
    right: "b",
    why: "Reverse mode carries the gradient of one output back to every input in one sweep: one scalar loss, many weights. Forward mode carries the derivative along one input to every output in one pass: few inputs, many outputs (g: R → Rᴹ).",
    link: ["/cost", "Compare both modes as N and M grow"],
    figure: async () => {
      const f = await costAt("n=1000");
      const g = await costAt("m=1000");
      const t = (r, m) => r.rows.find((row) => row.method === m);
      const show = (row) => (row.median_s === null ? row.note : seconds(row.median_s));
      return `Measured now: the gradient of f at N = 1000 takes ${show(t(f, "reverse"))} in reverse mode and ${show(t(f, "forward"))} in forward mode; the Jacobian of g at M = 1000 takes ${show(t(g, "forward"))} in forward mode and ${show(t(g, "reverse"))} in reverse mode.`;
    },
  },
  {
    id: "q3",
    ask: "What does clipping the gradient's norm guard against?",
    choices: [["a", "Gradients that shrink to nothing in deep networks"], ["b", "Overfitting the training data"], ["c", "A rare step whose gradient is hundreds of times larger than usual (a cliff), throwing the weights far from what was learnt"], ["d", "A learning rate that is too small"]],
    right: "c",
    why: "Where the loss has a cliff, one step lands on its face and sees a gradient hundreds of times larger than the steps before; multiplied by the learning rate, it throws the weights away. Clipping caps that step's length and keeps its direction. It does nothing for vanishing gradients.",
    link: ["/optimizers?f=cliff", "Watch SGD meet a cliff, then set the clipping slider to 1"],
    figure: async () => {
      const step = async (clip) => {
        const r = await fetch(`/api/optimizers?f=cliff&clip=${clip}`);
        const body = await r.json();
        if (body.error) throw new Error(body.error);
        return [body.paths.find((p) => p.name === "sgd").largest_step, body.settings.lr];
      };
      const [[off, lr], [on]] = [await step(0), await step(1)];
      return `Computed now: on the cliff lesson's wall, SGD's longest step is ${fmt(off)} without clipping and ${fmt(on)} with the gradient's norm clipped to 1 (η = ${fmt(lr)}). \`chainrule clipping\` shows the same on a recurrent network; its folder's figures are drawn under Runs.`;
    },
  },
  {
    id: "q4",
    ask: "Which algorithm gives every partial derivative of a scalar loss in about one backward pass?",
    choices: [["a", "Forward mode with dual numbers"], ["b", "Backpropagation: reverse-mode automatic differentiation, the chain rule applied edge by edge from the output back"], ["c", "Central finite differences"], ["d", "Symbolic differentiation of the whole formula"]],
    right: "b",
    why: "The reverse sweep visits each edge of the recorded graph once, multiplying the gradient arriving at a node by the edge's local derivative and adding it into the input: after one sweep every input holds its partial derivative.",
    link: ["/walk", "Walk it edge by edge"],
    figure: async () => {
      const r = await fetch("/api/walk?expr=tanh(w*x%20%2B%20b)&at=x=2,w=-0.5,b=1.5");
      const w = await r.json();
      if (w.error) throw new Error(w.error);
      const grads = Object.entries(w.gradient).map(([k, v]) => `∂f/∂${k} = ${fmt(v)}`).join(", ");
      return `Computed now: for f = tanh(w·x + b) at x = 2, w = −0.5, b = 1.5, one reverse sweep over ${w.edges.length} edges gives ${grads}, and forward mode and differences agree.`;
    },
  },
];

/** A cost measurement, waiting while another one holds the machine. */
async function costAt(query) {
  for (let attempt = 0; attempt < 20; attempt++) {
    const r = await fetch(`/api/cost?${query}`);
    const body = await r.json();
    if (body.busy) { await new Promise((ok) => setTimeout(ok, 1000)); continue; }
    if (body.error) throw new Error(body.error);
    return body;
  }
  throw new Error("the server stayed busy; open the cost page instead");
}

function checkView(main) {
  const answered = new Map();
  const score = el("p", { id: "check-score", class: "summary" });
  const tally = () => {
    const right = [...answered.values()].filter(Boolean).length;
    score.textContent = `${right} of ${QUESTIONS.length} right` + (answered.size < QUESTIONS.length ? ` (${QUESTIONS.length - answered.size} to go)` : "");
  };
  main.append(el("h1", {}, "Check yourself"),
    el("p", { class: "intro" }, "Four questions on what the lessons measure. Pick an answer: the page says whether it is right and why, with a figure the server computes as you read it, and a link to the lesson that measures it. You can change your answer."),
    score);
  for (const q of QUESTIONS) {
    const verdict = el("div", { class: "verdict", hidden: true });
    const choices = q.choices.map(([value, text]) => {
      const input = el("input", { type: "radio", name: q.id, value });
      input.onchange = () => {
        const right = value === q.right;
        answered.set(q.id, right);
        tally();
        for (const lab of box.querySelectorAll("label")) lab.classList.remove("right", "wrong");
        input.parentElement.classList.add(right ? "right" : "wrong");
        verdict.dataset.verdict = right ? "right" : "wrong";
        const figure = el("p", { class: "figure" }, "computing a figure…");
        verdict.replaceChildren(
          el("b", {}, right ? "Right. " : "Not quite. "),
          right ? "" : `The answer is: ${q.choices.find(([v]) => v === q.right)[1]}. `,
          q.why, figure,
          el("a", { href: q.link[0], class: "lesson-link" }, `${q.link[1]} →`));
        verdict.hidden = false;
        q.figure().then((text) => { figure.textContent = text; figure.dataset.ready = "1"; },
          (err) => { figure.textContent = `The figure could not be computed: ${err.message}`; });
      };
      return el("label", { class: "choice" }, input, ` ${text}`);
    });
    const box = el("fieldset", { id: `check-${q.id}`, class: "question" }, el("legend", {}, q.ask), choices, verdict);
    main.append(box);
  }
  tally();
}
